//! Wear-levelled hot records: [`HotRecord`] keeps a small record that every transaction
//! rewrites (purse balance, transaction counters) in several slots, so the cycles spread over
//! several pages instead of burning one.
//!
//! ## Layout
//!
//! A record of `len` bytes kept in `slots` slots starts at user address `addr`. Slot `i` lies at
//! `addr + i * stride` and holds `seq u32 (big-endian) ‖ data[len]`. The newest slot is the one
//! with the highest `seq` (the lowest index on a tie, so a freshly formatted, all-zero area
//! reads as zeros); a write goes to the slot after the newest with `seq + 1`.
//!
//! The stride is one page when a slot fits in a page, else the slot size rounded up to whole
//! pages. With `addr` page-aligned (user addresses have the same alignment as physical ones),
//! every slot then has page(s) of its own, and `n` writes cost each slot page about
//! `n / slots` cycles. The price is space: the footprint is about `slots` pages even for a
//! 4-byte balance. Packing slots densely would save space but put several slots on one page,
//! and that page would take the cycles of all of them: no better than fewer slots. The bytes
//! between slots are free for data that is rarely written (every write there costs the slot's
//! page a cycle).
//!
//! Slots need no checksum: they are written through [`Nvm`] transactions, which are atomic
//! with everything else in the commit.

use super::eeprom::{Eeprom, PAGE_SIZE};
use super::{Nvm, NvmError};

const SEQ_LEN: usize = 4;

/// A small record rewritten on every transaction (purse balance and counters): stored in
/// `slots` copies with a sequence number; a write goes to the slot after the newest, so wear
/// spreads over the slots' pages. Reads return the newest. Works inside [`Nvm`] transactions
/// (atomic with everything else in the commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotRecord {
    /// User address of slot 0 (best page-aligned).
    pub addr: usize,
    /// Number of slots (at least 1).
    pub slots: u16,
    /// Record length in bytes.
    pub len: u16,
}

impl HotRecord {
    /// Bytes of one slot: sequence number and data.
    pub const fn slot_size(len: u16) -> usize {
        SEQ_LEN + len as usize
    }

    /// Distance between consecutive slots: a page if a slot fits in one, else whole pages.
    pub const fn stride(len: u16) -> usize {
        let size = Self::slot_size(len);
        if size <= PAGE_SIZE {
            PAGE_SIZE
        } else {
            size.div_ceil(PAGE_SIZE) * PAGE_SIZE
        }
    }

    /// Bytes of NVM it occupies, from `addr` to the end of the last slot.
    pub const fn footprint(slots: u16, len: u16) -> usize {
        if slots == 0 {
            0
        } else {
            (slots as usize - 1) * Self::stride(len) + Self::slot_size(len)
        }
    }

    fn slot_addr(&self, slot: usize) -> usize {
        self.addr + slot * Self::stride(self.len)
    }

    fn check<E: Eeprom>(&self, nvm: &Nvm<E>) -> Result<(), NvmError> {
        if self.slots == 0 {
            return Err(NvmError::BadConfig(
                "a hot record needs at least one slot".into(),
            ));
        }
        let footprint = Self::footprint(self.slots, self.len);
        match self.addr.checked_add(footprint) {
            Some(end) if end <= nvm.user_len() => Ok(()),
            _ => Err(NvmError::OutOfRange {
                addr: self.addr,
                len: footprint,
            }),
        }
    }

    fn check_data(&self, data: &[u8]) -> Result<(), NvmError> {
        if data.len() == usize::from(self.len) {
            Ok(())
        } else {
            Err(NvmError::BadConfig(format!(
                "hot record at {} holds {} bytes, got {}",
                self.addr,
                self.len,
                data.len()
            )))
        }
    }

    /// The newest slot: `(index, seq)`.
    fn newest<E: Eeprom>(&self, nvm: &Nvm<E>) -> Result<(usize, u32), NvmError> {
        let mut best = (0, 0);
        for slot in 0..usize::from(self.slots) {
            let seq = nvm.read_u32(self.slot_addr(slot))?;
            if seq > best.1 {
                best = (slot, seq);
            }
        }
        Ok(best)
    }

    /// Stages a fresh record holding `data`: slot 0 with seq 1, every other slot cleared.
    pub fn init<E: Eeprom>(&self, nvm: &mut Nvm<E>, data: &[u8]) -> Result<(), NvmError> {
        self.check(nvm)?;
        self.check_data(data)?;
        let mut slot = vec![0u8; Self::slot_size(self.len)];
        for i in 1..usize::from(self.slots) {
            nvm.write(self.slot_addr(i), &slot)?;
        }
        slot[..SEQ_LEN].copy_from_slice(&1u32.to_be_bytes());
        slot[SEQ_LEN..].copy_from_slice(data);
        nvm.write(self.slot_addr(0), &slot)
    }

    /// The newest value (including writes staged in the open transaction).
    pub fn read<E: Eeprom>(&self, nvm: &Nvm<E>) -> Result<Vec<u8>, NvmError> {
        self.check(nvm)?;
        let (slot, _) = self.newest(nvm)?;
        nvm.read_vec(self.slot_addr(slot) + SEQ_LEN, usize::from(self.len))
    }

    /// Stages a new value into the slot after the newest. A second write in the same
    /// transaction rewrites the slot the first one staged, so one commit costs one slot.
    pub fn write<E: Eeprom>(&self, nvm: &mut Nvm<E>, data: &[u8]) -> Result<(), NvmError> {
        self.check(nvm)?;
        self.check_data(data)?;
        let (newest, seq) = self.newest(nvm)?;
        let size = Self::slot_size(self.len);
        let (slot, seq) = if nvm.is_staged(self.slot_addr(newest), size) {
            (newest, seq)
        } else {
            let next = seq.checked_add(1).ok_or_else(|| {
                NvmError::Corrupt(format!(
                    "hot record at {} has exhausted its sequence numbers",
                    self.addr
                ))
            })?;
            ((newest + 1) % usize::from(self.slots), next)
        };
        let mut buf = Vec::with_capacity(size);
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(data);
        nvm.write(self.slot_addr(slot), &buf)
    }
}

#[cfg(test)]
mod tests {
    use super::super::eeprom::{SimEeprom, MIN_SIZE};
    use super::*;

    #[test]
    fn footprint_and_stride() {
        assert_eq!(HotRecord::stride(8), PAGE_SIZE);
        assert_eq!(HotRecord::footprint(4, 8), 3 * 64 + 12);
        assert_eq!(HotRecord::stride(60), 64);
        assert_eq!(HotRecord::stride(61), 128);
        assert_eq!(HotRecord::footprint(2, 100), 128 + 104);
        assert_eq!(HotRecord::footprint(0, 8), 0);
        assert_eq!(HotRecord::footprint(1, 8), 12);
    }

    #[test]
    fn writes_rotate_and_one_commit_costs_one_slot() {
        let mut nvm = Nvm::format(SimEeprom::new(MIN_SIZE, 1000).unwrap()).unwrap();
        let rec = HotRecord {
            addr: 128,
            slots: 3,
            len: 4,
        };
        assert_eq!(rec.read(&nvm).unwrap(), vec![0; 4]);
        rec.init(&mut nvm, &[1, 1, 1, 1]).unwrap();
        rec.write(&mut nvm, &[2, 2, 2, 2]).unwrap(); // same transaction: overwrites slot 0
        nvm.commit().unwrap();
        assert_eq!(rec.read(&nvm).unwrap(), vec![2; 4]);
        assert_eq!(nvm.read_u32(128).unwrap(), 1);
        for v in 3..=7u8 {
            rec.write(&mut nvm, &[v; 4]).unwrap();
            rec.write(&mut nvm, &[v + 100; 4]).unwrap();
            assert_eq!(rec.read(&nvm).unwrap(), vec![v + 100; 4]);
            nvm.commit().unwrap();
        }
        // Five commits after init: seqs 2..=6 went to slots 1, 2, 0, 1, 2.
        let seqs: Vec<u32> = (0..3)
            .map(|i| nvm.read_u32(128 + 64 * i).unwrap())
            .collect();
        assert_eq!(seqs, vec![4, 5, 6]);
        assert_eq!(rec.read(&nvm).unwrap(), vec![107; 4]);
        nvm.rollback();
        assert!(rec.write(&mut nvm, &[0; 3]).is_err());
        let bad = HotRecord {
            addr: nvm.user_len() - 10,
            ..rec
        };
        assert!(matches!(bad.read(&nvm), Err(NvmError::OutOfRange { .. })));
    }
}
