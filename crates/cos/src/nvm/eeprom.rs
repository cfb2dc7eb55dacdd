//! The physical EEPROM: the [`Eeprom`] trait, the in-memory [`SimEeprom`] a card image holds, and
//! the power-cutting [`FaultyEeprom`] the tear tests drive.
//!
//! Wear model: the EEPROM is divided into pages of [`PAGE_SIZE`] bytes. One `write` call that
//! touches pages `P..=Q` costs one erase/write cycle on each of those pages, however many bytes
//! of each page it changes (real EEPROM erases and reprograms a whole page). A page that has
//! reached its endurance has failed: any write touching it is refused with
//! [`EepromError::WornOut`] before a single byte of that write lands. Reads never wear.

use super::NvmError;

/// Size of an EEPROM page in bytes: the unit of erase/write wear.
pub const PAGE_SIZE: usize = 64;
/// Default number of erase/write cycles a page survives.
pub const DEFAULT_ENDURANCE: u32 = 100_000;
/// Smallest supported EEPROM (8 KiB).
pub const MIN_SIZE: usize = 8 * 1024;
/// Largest supported EEPROM (128 KiB).
pub const MAX_SIZE: usize = 128 * 1024;
/// Default EEPROM size of a card (32 KiB).
pub const DEFAULT_SIZE: usize = 32 * 1024;

/// What a physical EEPROM access can fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EepromError {
    /// The card lost power: this write (and every later one) did not complete.
    #[error("power lost during an EEPROM write")]
    PowerLost,
    /// A page touched by the write has reached its endurance; nothing was written.
    #[error("EEPROM page {page} is worn out (reached its erase/write endurance)")]
    WornOut {
        /// Index of the failed page.
        page: usize,
    },
    /// The access does not lie inside the EEPROM.
    #[error("EEPROM access out of range: {len} bytes at address {addr}")]
    OutOfRange {
        /// First byte address of the access.
        addr: usize,
        /// Length of the access in bytes.
        len: usize,
    },
}

/// The physical EEPROM. A write of bytes touching pages P..=Q counts one cycle on each of those pages.
/// A write that would take any touched page past its endurance is refused BEFORE anything is
/// written ([`EepromError::WornOut`]): the page has failed.
pub trait Eeprom {
    /// Size in bytes.
    fn len(&self) -> usize;
    /// Reads `buf.len()` bytes starting at `addr`.
    fn read(&self, addr: usize, buf: &mut [u8]) -> Result<(), EepromError>;
    /// Writes `data` at `addr`, costing one cycle on every page it touches.
    fn write(&mut self, addr: usize, data: &[u8]) -> Result<(), EepromError>;
    /// Erase/write cycles page `page` has seen (0 for a page index past the end).
    fn page_cycles(&self, page: usize) -> u32;
    /// Cycles a page survives; a page whose count has reached this value has failed.
    fn endurance(&self) -> u32;
    /// True for a zero-sized EEPROM.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Eeprom + ?Sized> Eeprom for &mut T {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn read(&self, addr: usize, buf: &mut [u8]) -> Result<(), EepromError> {
        (**self).read(addr, buf)
    }
    fn write(&mut self, addr: usize, data: &[u8]) -> Result<(), EepromError> {
        (**self).write(addr, data)
    }
    fn page_cycles(&self, page: usize) -> u32 {
        (**self).page_cycles(page)
    }
    fn endurance(&self) -> u32 {
        (**self).endurance()
    }
}

/// Pages `first..=last` touched by `len > 0` bytes at `addr`.
pub(crate) fn touched_pages(addr: usize, len: usize) -> std::ops::RangeInclusive<usize> {
    debug_assert!(len > 0);
    addr / PAGE_SIZE..=(addr + len - 1) / PAGE_SIZE
}

/// Checks `len` bytes at `addr` lie inside `size` bytes.
fn check_range(size: usize, addr: usize, len: usize) -> Result<(), EepromError> {
    match addr.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(EepromError::OutOfRange { addr, len }),
    }
}

/// In-memory EEPROM: bytes + per-page cycle counters; this is what a card image file holds.
#[derive(Clone, PartialEq, Eq)]
pub struct SimEeprom {
    bytes: Vec<u8>,
    cycles: Vec<u32>,
    endurance: u32,
}

impl std::fmt::Debug for SimEeprom {
    // The contents may hold card secrets: show the geometry and wear only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimEeprom")
            .field("size", &self.bytes.len())
            .field("endurance", &self.endurance)
            .field(
                "max_cycles",
                &self.cycles.iter().max().copied().unwrap_or(0),
            )
            .finish_non_exhaustive()
    }
}

impl SimEeprom {
    /// A fresh EEPROM of `size` bytes, every byte erased to `0xFF`, every page at zero cycles.
    ///
    /// `size` must be a multiple of [`PAGE_SIZE`] within [`MIN_SIZE`]`..=`[`MAX_SIZE`] and
    /// `endurance` must be non-zero, else [`NvmError::BadConfig`].
    pub fn new(size: usize, endurance: u32) -> Result<Self, NvmError> {
        check_geometry(size, endurance)?;
        Ok(Self {
            bytes: vec![0xFF; size],
            cycles: vec![0; size / PAGE_SIZE],
            endurance,
        })
    }

    /// Rebuilds an EEPROM from its parts (used by the image decoder, which checks them first).
    pub(crate) fn from_parts(bytes: Vec<u8>, cycles: Vec<u32>, endurance: u32) -> Self {
        debug_assert_eq!(bytes.len(), cycles.len() * PAGE_SIZE);
        Self {
            bytes,
            cycles,
            endurance,
        }
    }

    /// The raw contents.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The cycle counter of every page, page 0 first.
    pub fn cycles(&self) -> &[u32] {
        &self.cycles
    }

    /// Sets the cycle counter of `page` (tests use it to age a page). Out-of-range pages are
    /// ignored.
    pub fn set_cycles(&mut self, page: usize, n: u32) {
        if let Some(c) = self.cycles.get_mut(page) {
            *c = n;
        }
    }
}

/// Checks an EEPROM geometry: size a multiple of the page size within the supported range, a
/// non-zero endurance.
pub(crate) fn check_geometry(size: usize, endurance: u32) -> Result<(), NvmError> {
    // PAGE_SIZE is a power of two (and `is_multiple_of` is newer than our MSRV).
    if size & (PAGE_SIZE - 1) != 0 || !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(NvmError::BadConfig(format!(
            "EEPROM size {size} bytes is not a multiple of {PAGE_SIZE} between {MIN_SIZE} and {MAX_SIZE}"
        )));
    }
    if endurance == 0 {
        return Err(NvmError::BadConfig(
            "EEPROM endurance must be at least one cycle".into(),
        ));
    }
    Ok(())
}

impl Eeprom for SimEeprom {
    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn read(&self, addr: usize, buf: &mut [u8]) -> Result<(), EepromError> {
        check_range(self.bytes.len(), addr, buf.len())?;
        buf.copy_from_slice(&self.bytes[addr..addr + buf.len()]);
        Ok(())
    }

    fn write(&mut self, addr: usize, data: &[u8]) -> Result<(), EepromError> {
        check_range(self.bytes.len(), addr, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let pages = touched_pages(addr, data.len());
        if let Some(page) = pages.clone().find(|&p| self.cycles[p] >= self.endurance) {
            return Err(EepromError::WornOut { page });
        }
        for p in pages {
            self.cycles[p] += 1;
        }
        self.bytes[addr..addr + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn page_cycles(&self, page: usize) -> u32 {
        self.cycles.get(page).copied().unwrap_or(0)
    }

    fn endurance(&self) -> u32 {
        self.endurance
    }
}

/// Fault injection for tear tests: counts physical writes; at write number `cut_at` (0-based) it
/// writes only the first `torn_bytes` bytes of that write (0 = none), then loses power: that
/// write and every later one fail with [`EepromError::PowerLost`].
///
/// A torn prefix is written through [`SimEeprom::write`], so it costs a cycle on the pages it
/// touches, as an interrupted programming pulse does on a real chip. Reads keep working after
/// the cut so a test can inspect the wreck; [`FaultyEeprom::into_inner`] hands the EEPROM to the
/// next "power-up".
#[derive(Debug, Clone)]
pub struct FaultyEeprom {
    inner: SimEeprom,
    cut_at: Option<u64>,
    torn_bytes: usize,
    writes: u64,
    bytes_written: u64,
    power_lost: bool,
}

impl FaultyEeprom {
    /// Cuts power at write number `cut_at` (0-based), after `torn_bytes` bytes of it.
    pub fn new(inner: SimEeprom, cut_at: u64, torn_bytes: usize) -> Self {
        Self {
            inner,
            cut_at: Some(cut_at),
            torn_bytes,
            writes: 0,
            bytes_written: 0,
            power_lost: false,
        }
    }

    /// Never cuts power; only counts writes and bytes.
    pub fn never(inner: SimEeprom) -> Self {
        Self {
            cut_at: None,
            ..Self::new(inner, 0, 0)
        }
    }

    /// Write calls seen so far (including the one that was cut; none after it are counted).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Bytes that actually reached the EEPROM (a torn write counts its prefix).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// True once the cut has happened.
    pub fn power_lost(&self) -> bool {
        self.power_lost
    }

    /// The EEPROM under test, as it is now.
    pub fn inner(&self) -> &SimEeprom {
        &self.inner
    }

    /// The EEPROM as the power cut left it.
    pub fn into_inner(self) -> SimEeprom {
        self.inner
    }
}

impl Eeprom for FaultyEeprom {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn read(&self, addr: usize, buf: &mut [u8]) -> Result<(), EepromError> {
        self.inner.read(addr, buf)
    }

    fn write(&mut self, addr: usize, data: &[u8]) -> Result<(), EepromError> {
        if self.power_lost {
            return Err(EepromError::PowerLost);
        }
        let index = self.writes;
        self.writes += 1;
        if self.cut_at == Some(index) {
            self.power_lost = true;
            let torn = self.torn_bytes.min(data.len());
            if torn > 0 && self.inner.write(addr, &data[..torn]).is_ok() {
                self.bytes_written += torn as u64;
            }
            return Err(EepromError::PowerLost);
        }
        self.inner.write(addr, data)?;
        self.bytes_written += data.len() as u64;
        Ok(())
    }

    fn page_cycles(&self, page: usize) -> u32 {
        self.inner.page_cycles(page)
    }

    fn endurance(&self) -> u32 {
        self.inner.endurance()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_geometry_and_is_erased() {
        assert!(SimEeprom::new(MIN_SIZE - PAGE_SIZE, 10).is_err());
        assert!(SimEeprom::new(MAX_SIZE + PAGE_SIZE, 10).is_err());
        assert!(SimEeprom::new(MIN_SIZE + 1, 10).is_err());
        assert!(SimEeprom::new(MIN_SIZE, 0).is_err());
        let e = SimEeprom::new(MIN_SIZE, 10).unwrap();
        assert!(e.bytes().iter().all(|&b| b == 0xFF));
        assert_eq!(e.cycles().len(), MIN_SIZE / PAGE_SIZE);
        assert!(!e.is_empty());
    }

    #[test]
    fn write_counts_one_cycle_per_touched_page() {
        let mut e = SimEeprom::new(MIN_SIZE, 10).unwrap();
        e.write(60, &[1; 10]).unwrap(); // pages 0 and 1
        e.write(64, &[2; 64]).unwrap(); // page 1 only
        assert_eq!(&e.cycles()[..3], &[1, 2, 0]);
        let mut buf = [0; 6];
        e.read(62, &mut buf).unwrap();
        assert_eq!(buf, [1, 1, 2, 2, 2, 2]);
        e.write(200, &[]).unwrap();
        assert_eq!(e.page_cycles(3), 0);
    }

    #[test]
    fn worn_page_refuses_before_writing() {
        let mut e = SimEeprom::new(MIN_SIZE, 3).unwrap();
        e.set_cycles(1, 3);
        let before = e.clone();
        assert_eq!(e.write(0, &[0; 100]), Err(EepromError::WornOut { page: 1 }));
        assert_eq!(e, before);
        e.write(0, &[0; 64]).unwrap();
        assert_eq!(e.page_cycles(0), 1);
    }

    #[test]
    fn out_of_range_is_refused() {
        let mut e = SimEeprom::new(MIN_SIZE, 3).unwrap();
        assert_eq!(
            e.write(MIN_SIZE - 1, &[0, 0]),
            Err(EepromError::OutOfRange {
                addr: MIN_SIZE - 1,
                len: 2
            })
        );
        let mut buf = [0; 2];
        assert!(e.read(usize::MAX, &mut buf).is_err());
    }

    #[test]
    fn faulty_tears_then_stays_dead() {
        let sim = SimEeprom::new(MIN_SIZE, 10).unwrap();
        let mut f = FaultyEeprom::new(sim, 1, 3);
        f.write(0, &[1; 8]).unwrap();
        assert_eq!(f.write(100, &[2; 8]), Err(EepromError::PowerLost));
        assert!(f.power_lost());
        assert_eq!(f.write(0, &[3; 8]), Err(EepromError::PowerLost));
        assert_eq!(f.writes(), 2);
        assert_eq!(f.bytes_written(), 11);
        let e = f.into_inner();
        assert_eq!(
            &e.bytes()[100..108],
            &[2, 2, 2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(&e.bytes()[0..8], &[1; 8]);
    }

    #[test]
    fn faulty_never_only_counts() {
        let sim = SimEeprom::new(MIN_SIZE, 10).unwrap();
        let mut f = FaultyEeprom::never(sim);
        for i in 0..5 {
            f.write(i * 10, &[7; 10]).unwrap();
        }
        assert_eq!(
            (f.writes(), f.bytes_written(), f.power_lost()),
            (5, 50, false)
        );
    }
}
