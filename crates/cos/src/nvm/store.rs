//! The logical NVM: [`Nvm`] stages writes, commits them atomically through the redo journal,
//! recovers on mount, and reports statistics and wear.
//!
//! See the [module documentation](super) for the layout and the commit protocol.

use std::collections::BTreeMap;
use std::fmt;

use super::eeprom::{check_geometry, touched_pages, Eeprom, EepromError, PAGE_SIZE};
use super::journal::{
    self, Encoded, Run, Span, ENTRY_OVERHEAD, MAX_TRANSACTION_BYTES, MIN_JOURNAL_PAGES,
    RANGE_OVERHEAD,
};
use super::NvmError;

const HEADER_MAGIC: [u8; 4] = *b"ICNV";
const LAYOUT_VERSION: u16 = 1;
const HEADER_LEN: usize = 28;
/// The journal ring starts right after the system header page.
const JOURNAL_FIRST_PAGE: usize = 1;
/// Upper bound of the journal ring on large EEPROMs.
const MAX_JOURNAL_PAGES: usize = 64;

/// Where things are in the EEPROM: system header, journal ring, user area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// EEPROM size in bytes.
    pub size: usize,
    /// First page of the journal ring.
    pub journal_first_page: usize,
    /// Pages in the journal ring.
    pub journal_pages: usize,
    /// Physical address of user address 0 (page-aligned).
    pub user_start: usize,
    /// Bytes of user area.
    pub user_len: usize,
}

impl Layout {
    /// The layout `format` gives an EEPROM of `size` bytes: one header page, a journal ring of
    /// `max(20, min(64, pages / 16))` pages, the rest user area.
    pub fn for_size(size: usize) -> Self {
        let journal_pages = (size / PAGE_SIZE / 16).clamp(MIN_JOURNAL_PAGES, MAX_JOURNAL_PAGES);
        let user_start = (JOURNAL_FIRST_PAGE + journal_pages) * PAGE_SIZE;
        Self {
            size,
            journal_first_page: JOURNAL_FIRST_PAGE,
            journal_pages,
            user_start,
            user_len: size - user_start,
        }
    }

    fn ring_start(&self) -> usize {
        self.journal_first_page * PAGE_SIZE
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&HEADER_MAGIC);
        h[4..6].copy_from_slice(&LAYOUT_VERSION.to_be_bytes());
        h[6..8].copy_from_slice(&(PAGE_SIZE as u16).to_be_bytes());
        h[8..12].copy_from_slice(&(self.size as u32).to_be_bytes());
        h[12..14].copy_from_slice(&(self.journal_first_page as u16).to_be_bytes());
        h[14..16].copy_from_slice(&(self.journal_pages as u16).to_be_bytes());
        h[16..20].copy_from_slice(&(self.user_start as u32).to_be_bytes());
        h[20..24].copy_from_slice(&(self.user_len as u32).to_be_bytes());
        let crc = crc32fast::hash(&h[..24]);
        h[24..28].copy_from_slice(&crc.to_be_bytes());
        h
    }

    fn decode(h: &[u8; HEADER_LEN], eeprom_len: usize) -> Result<Self, NvmError> {
        if h[0..4] != HEADER_MAGIC {
            return Err(NvmError::NotFormatted);
        }
        let u16_at = |i: usize| usize::from(u16::from_be_bytes([h[i], h[i + 1]]));
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        if u32_at(24) != crc32fast::hash(&h[..24]) {
            return Err(NvmError::Corrupt(
                "NVM system header checksum mismatch".into(),
            ));
        }
        let version = u16_at(4);
        if version != usize::from(LAYOUT_VERSION) {
            return Err(NvmError::Corrupt(format!(
                "NVM layout version {version} is not supported (this build reads version {LAYOUT_VERSION})"
            )));
        }
        let layout = Self {
            size: u32_at(8) as usize,
            journal_first_page: u16_at(12),
            journal_pages: u16_at(14),
            user_start: u32_at(16) as usize,
            user_len: u32_at(20) as usize,
        };
        if u16_at(6) != PAGE_SIZE || layout.size != eeprom_len {
            return Err(NvmError::Corrupt(format!(
                "NVM header describes {} bytes in pages of {}, but the EEPROM has {eeprom_len} bytes in pages of {PAGE_SIZE}",
                layout.size,
                u16_at(6)
            )));
        }
        let consistent = layout.journal_first_page >= 1
            && layout.journal_pages >= MIN_JOURNAL_PAGES
            && layout.user_start == (layout.journal_first_page + layout.journal_pages) * PAGE_SIZE
            && layout.user_len > 0
            && layout.user_start.checked_add(layout.user_len) == Some(layout.size);
        if !consistent {
            return Err(NvmError::Corrupt(format!(
                "NVM header layout is inconsistent: {layout:?}"
            )));
        }
        Ok(layout)
    }
}

/// Counters since this [`Nvm`] was formatted or mounted (including the writes of the format
/// itself or of the mount's recovery).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NvmStats {
    /// Successful commits of a non-empty transaction (one whose bytes all matched the EEPROM
    /// already counts, though it writes nothing).
    pub commits: u64,
    /// Physical EEPROM write calls (journal and home).
    pub physical_writes: u64,
    /// Bytes those writes carried (journal and home).
    pub physical_bytes: u64,
    /// User bytes staged by the committed transactions (what the OS asked to write).
    pub user_bytes: u64,
}

/// How worn the EEPROM is.
#[derive(Debug, Clone, PartialEq)]
pub struct WearReport {
    /// Cycles a page survives.
    pub endurance: u32,
    /// Highest page cycle count.
    pub max_cycles: u32,
    /// Mean page cycle count over all pages.
    pub mean_cycles: f64,
    /// Pages that have reached the endurance (they refuse writes).
    pub failed_pages: Vec<usize>,
    /// Up to five most-cycled pages `(page, cycles)`, hottest first (pages never written are
    /// left out).
    pub hottest: Vec<(usize, u32)>,
}

/// The card's non-volatile memory: a user area whose writes are staged and committed
/// atomically through a redo journal.
pub struct Nvm<E: Eeprom> {
    eeprom: E,
    layout: Layout,
    /// Staged writes: disjoint, non-adjacent ranges keyed by user address.
    staged: BTreeMap<usize, Vec<u8>>,
    /// Journal bytes the staged ranges would need (sum of `len + RANGE_OVERHEAD`).
    staged_cost: usize,
    /// Span of the newest entry in the ring: kept intact until a newer one is complete.
    last: Option<Span>,
    /// Ring page where the next entry should start.
    next: usize,
    next_seq: u32,
    stats: NvmStats,
    /// Set when a physical write failed mid-commit: the EEPROM may hold a half-applied
    /// transaction that only a mount (power-up) repairs.
    failed: Option<NvmError>,
}

impl<E: Eeprom> fmt::Debug for Nvm<E> {
    // Contents may be secret: geometry and counters only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nvm")
            .field("layout", &self.layout)
            .field("staged_ranges", &self.staged.len())
            .field("stats", &self.stats)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<E: Eeprom> Nvm<E> {
    fn with_layout(eeprom: E, layout: Layout) -> Self {
        Self {
            eeprom,
            layout,
            staged: BTreeMap::new(),
            staged_cost: 0,
            last: None,
            next: 0,
            next_seq: 1,
            stats: NvmStats::default(),
            failed: None,
        }
    }

    /// Formats the EEPROM: writes the system header and an empty journal; the user area is
    /// erased to `0x00`. Bytes already holding their target value are not rewritten. A torn
    /// format leaves an EEPROM that [`Nvm::mount`] refuses ([`NvmError::NotFormatted`], or
    /// [`NvmError::Corrupt`] if the cut tore the header itself): format again.
    pub fn format(eeprom: E) -> Result<Self, NvmError> {
        check_geometry(eeprom.len(), eeprom.endurance())?;
        let layout = Layout::for_size(eeprom.len());
        let mut nvm = Self::with_layout(eeprom, layout);
        let mut old = [0u8; HEADER_LEN];
        nvm.eeprom.read(0, &mut old)?;
        if old[..4] == HEADER_MAGIC {
            // Unformat first, so a cut below cannot leave an old header over a new layout.
            nvm.phys_write(0, &[0u8; HEADER_LEN])?;
        }
        nvm.fill(layout.ring_start(), layout.journal_pages * PAGE_SIZE, 0xFF)?;
        nvm.fill(layout.user_start, layout.user_len, 0x00)?;
        nvm.phys_write(0, &layout.encode())?;
        Ok(nvm)
    }

    /// Mounts a formatted EEPROM (the card's power-up): checks the system header, then
    /// recovers: the newest complete journal entry is re-applied (redo is idempotent; bytes
    /// already right are not rewritten), a torn one is ignored.
    ///
    /// Errors: [`NvmError::BadConfig`] for an impossible geometry, [`NvmError::NotFormatted`]
    /// without a system header, [`NvmError::Corrupt`] for a damaged header or an impossible
    /// journal entry, [`EepromError::PowerLost`] if the power is cut during recovery (mount
    /// again), [`EepromError::WornOut`] if recovery must rewrite a page that has failed. The
    /// EEPROM is consumed; pass `&mut eeprom` (every `&mut E` is an [`Eeprom`]) to keep it
    /// after an error.
    pub fn mount(eeprom: E) -> Result<Self, NvmError> {
        check_geometry(eeprom.len(), eeprom.endurance())?;
        let mut header = [0u8; HEADER_LEN];
        eeprom.read(0, &mut header)?;
        let layout = Layout::decode(&header, eeprom.len())?;
        let mut ring = vec![0u8; layout.journal_pages * PAGE_SIZE];
        eeprom.read(layout.ring_start(), &mut ring)?;
        let mut nvm = Self::with_layout(eeprom, layout);
        if let Some(found) = journal::newest(&ring) {
            nvm.check_runs(&found.runs)?;
            for (addr, data) in nvm.plan_home(&found.runs)? {
                nvm.phys_write(addr, &data)?;
            }
            nvm.last = Some(found.span);
            nvm.next = (found.span.start + found.span.pages) % layout.journal_pages;
            nvm.next_seq = found
                .seq
                .checked_add(1)
                .ok_or_else(|| NvmError::Corrupt("journal sequence number exhausted".into()))?;
        }
        Ok(nvm)
    }

    /// Bytes of user area: user addresses are `0..user_len()`.
    pub fn user_len(&self) -> usize {
        self.layout.user_len
    }

    /// Where the header, journal and user area are.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Reads user bytes, seeing this transaction's staged writes.
    pub fn read(&self, addr: usize, buf: &mut [u8]) -> Result<(), NvmError> {
        self.check_alive()?;
        self.check_range(addr, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        self.eeprom.read(self.layout.user_start + addr, buf)?;
        let end = addr + buf.len();
        for (&start, data) in self.staged.range(..end).rev() {
            let stop = start + data.len();
            if stop <= addr {
                break;
            }
            let (from, to) = (start.max(addr), stop.min(end));
            buf[from - addr..to - addr].copy_from_slice(&data[from - start..to - start]);
        }
        Ok(())
    }

    /// Reads `len` user bytes at `addr` into a new vector.
    pub fn read_vec(&self, addr: usize, len: usize) -> Result<Vec<u8>, NvmError> {
        self.check_range(addr, len)?;
        let mut v = vec![0; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    /// Reads one byte.
    pub fn read_u8(&self, addr: usize) -> Result<u8, NvmError> {
        let mut b = [0; 1];
        self.read(addr, &mut b)?;
        Ok(b[0])
    }

    /// Reads a big-endian `u16`.
    pub fn read_u16(&self, addr: usize) -> Result<u16, NvmError> {
        let mut b = [0; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    /// Reads a big-endian `u32`.
    pub fn read_u32(&self, addr: usize) -> Result<u32, NvmError> {
        let mut b = [0; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    /// Stages `data` at user address `addr` in the open transaction; nothing physical happens
    /// until [`Nvm::commit`]. Overlapping and adjacent staged writes merge (the later wins).
    ///
    /// Refused with [`NvmError::OutOfRange`] outside the user area, and with
    /// [`NvmError::TransactionTooLarge`] if the transaction would then need more than
    /// [`MAX_TRANSACTION_BYTES`] of journal; either way the staged set is left as it was.
    pub fn write(&mut self, addr: usize, data: &[u8]) -> Result<(), NvmError> {
        self.check_alive()?;
        self.check_range(addr, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let end = addr + data.len();
        // Staged ranges overlapping or touching [addr, end), highest first.
        let merged: Vec<usize> = self
            .staged
            .range(..=end)
            .rev()
            .take_while(|(&start, d)| start + d.len() >= addr)
            .map(|(&start, _)| start)
            .collect();
        let new_start = merged.last().map_or(addr, |&s| s.min(addr));
        let new_end = merged
            .first()
            .map_or(end, |&s| (s + self.staged[&s].len()).max(end));
        let removed: usize = merged
            .iter()
            .map(|s| self.staged[s].len() + RANGE_OVERHEAD)
            .sum();
        let cost = self.staged_cost - removed + (new_end - new_start) + RANGE_OVERHEAD;
        if cost > MAX_TRANSACTION_BYTES {
            return Err(NvmError::TransactionTooLarge { bytes: cost });
        }
        let mut range = vec![0u8; new_end - new_start];
        for start in merged {
            if let Some(old) = self.staged.remove(&start) {
                range[start - new_start..start - new_start + old.len()].copy_from_slice(&old);
            }
        }
        range[addr - new_start..end - new_start].copy_from_slice(data);
        self.staged.insert(new_start, range);
        self.staged_cost = cost;
        Ok(())
    }

    /// Stages one byte.
    pub fn write_u8(&mut self, addr: usize, value: u8) -> Result<(), NvmError> {
        self.write(addr, &[value])
    }

    /// Stages a big-endian `u16`.
    pub fn write_u16(&mut self, addr: usize, value: u16) -> Result<(), NvmError> {
        self.write(addr, &value.to_be_bytes())
    }

    /// Stages a big-endian `u32`.
    pub fn write_u32(&mut self, addr: usize, value: u32) -> Result<(), NvmError> {
        self.write(addr, &value.to_be_bytes())
    }

    /// Commits the staged writes atomically: after a power cut at any point, the next mount
    /// sees either all of them or none.
    ///
    /// Only bytes that differ from the EEPROM are journaled and written home (plus, within
    /// one page, the few unchanged bytes between two changes, where one write wears less than
    /// two). Before anything is written, every page the commit would write (journal and home)
    /// is checked against its endurance: if one has failed, the commit returns
    /// [`EepromError::WornOut`], writes nothing and drops the staged writes. An empty
    /// transaction, or one that changes nothing, writes nothing. The staged set is empty
    /// afterwards in every case.
    pub fn commit(&mut self) -> Result<(), NvmError> {
        self.check_alive()?;
        if self.staged.is_empty() {
            return Ok(());
        }
        let result = self.commit_staged();
        self.rollback();
        result
    }

    /// Erases the journal's history: old entries hold copies of every byte ever committed,
    /// secrets included, so a card that erases its secrets (self-destruct) must erase them too.
    ///
    /// Order, safe at any power cut: first an empty checkpoint entry is written with a new,
    /// highest sequence number (redo of it changes nothing), then every other ring page is
    /// erased to `FF`. A cut in between leaves the checkpoint as the newest entry, so no older
    /// entry is ever replayed. Pages already at their endurance cannot be erased and are left
    /// as they are. Nothing may be staged.
    ///
    /// When every ring page outside the newest entry is already erased (or worn out) there is
    /// no history left and nothing is written: scrubbing again is free, so a card can repeat
    /// it at every power-up to finish a scrub that a power cut interrupted.
    pub fn scrub_journal(&mut self) -> Result<(), NvmError> {
        self.check_alive()?;
        if !self.staged.is_empty() {
            return Err(NvmError::Corrupt(
                "scrub_journal called with writes staged".into(),
            ));
        }
        if self.journal_is_clean()? {
            return Ok(());
        }
        // A one-page entry always fits beside the last entry, so no checkpoint is needed.
        let span = self.place(1)?.span;
        let seq = self.take_seq()?;
        // The checkpoint fills its whole page: the page's old tail may hold an older entry.
        let mut checkpoint = journal::encode(seq, &[]);
        checkpoint.bytes.resize(PAGE_SIZE, 0xFF);
        self.write_entry(span, &checkpoint)?;
        self.last = Some(span);
        self.next = (span.start + 1) % self.layout.journal_pages;
        let endurance = self.eeprom.endurance();
        for p in 0..self.layout.journal_pages {
            let page = self.layout.journal_first_page + p;
            if p == span.start || self.eeprom.page_cycles(page) >= endurance {
                continue;
            }
            self.fill(page * PAGE_SIZE, PAGE_SIZE, 0xFF)?;
        }
        Ok(())
    }

    /// True if no ring page outside the newest entry holds anything (all `FF`, or worn out).
    fn journal_is_clean(&self) -> Result<bool, NvmError> {
        let ring = self.layout.journal_pages;
        let endurance = self.eeprom.endurance();
        let mut page = [0u8; PAGE_SIZE];
        for p in 0..ring {
            let addr_page = self.layout.journal_first_page + p;
            if self.last.is_some_and(|l| l.contains(p, ring))
                || self.eeprom.page_cycles(addr_page) >= endurance
            {
                continue;
            }
            self.eeprom.read(addr_page * PAGE_SIZE, &mut page)?;
            if page.iter().any(|&b| b != 0xFF) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Drops the staged writes.
    pub fn rollback(&mut self) {
        self.staged.clear();
        self.staged_cost = 0;
    }

    /// True if the open transaction has staged writes.
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Journal bytes the open transaction needs so far (compare with
    /// [`MAX_TRANSACTION_BYTES`]).
    pub fn staged_journal_bytes(&self) -> usize {
        self.staged_cost
    }

    /// True if user bytes `addr..addr + len` all lie inside one staged range.
    pub(crate) fn is_staged(&self, addr: usize, len: usize) -> bool {
        self.staged
            .range(..=addr)
            .next_back()
            .is_some_and(|(&start, d)| addr + len <= start + d.len())
    }

    /// The physical EEPROM.
    pub fn eeprom(&self) -> &E {
        &self.eeprom
    }

    /// The physical EEPROM, mutably (tests age pages through it; writing through it bypasses
    /// the journal).
    pub fn eeprom_mut(&mut self) -> &mut E {
        &mut self.eeprom
    }

    /// Gives the EEPROM back (staged writes are lost).
    pub fn into_eeprom(self) -> E {
        self.eeprom
    }

    /// Counters since format or mount.
    pub fn stats(&self) -> NvmStats {
        self.stats
    }

    /// Wear of every page of the EEPROM.
    pub fn wear(&self) -> WearReport {
        let pages = self.eeprom.len() / PAGE_SIZE;
        let endurance = self.eeprom.endurance();
        let cycles: Vec<u32> = (0..pages).map(|p| self.eeprom.page_cycles(p)).collect();
        let total: u64 = cycles.iter().map(|&c| u64::from(c)).sum();
        let mut hottest: Vec<(usize, u32)> = cycles
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, c)| c > 0)
            .collect();
        hottest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        hottest.truncate(5);
        WearReport {
            endurance,
            max_cycles: cycles.iter().copied().max().unwrap_or(0),
            mean_cycles: if pages == 0 {
                0.0
            } else {
                total as f64 / pages as f64
            },
            failed_pages: (0..pages).filter(|&p| cycles[p] >= endurance).collect(),
            hottest,
        }
    }

    fn check_alive(&self) -> Result<(), NvmError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn check_range(&self, addr: usize, len: usize) -> Result<(), NvmError> {
        match addr.checked_add(len) {
            Some(end) if end <= self.layout.user_len => Ok(()),
            _ => Err(NvmError::OutOfRange { addr, len }),
        }
    }

    /// One physical write, counted; a failure poisons this handle until the next mount.
    fn phys_write(&mut self, addr: usize, data: &[u8]) -> Result<(), NvmError> {
        match self.eeprom.write(addr, data) {
            Ok(()) => {
                self.stats.physical_writes += 1;
                self.stats.physical_bytes += data.len() as u64;
                Ok(())
            }
            Err(e) => {
                let e = NvmError::Eeprom(e);
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Sets `len` bytes at physical `addr` to `value`, writing only from the first to the last
    /// byte that differs.
    fn fill(&mut self, addr: usize, len: usize, value: u8) -> Result<(), NvmError> {
        let mut cur = vec![0u8; len];
        self.eeprom.read(addr, &mut cur)?;
        if let (Some(first), Some(last)) = (
            cur.iter().position(|&b| b != value),
            cur.iter().rposition(|&b| b != value),
        ) {
            self.phys_write(addr + first, &vec![value; last + 1 - first])?;
        }
        Ok(())
    }

    /// The runs a commit of the staged set must journal: the bytes that differ from the
    /// EEPROM, runs closer than [`RANGE_OVERHEAD`] joined (so the entry is never bigger than
    /// the staged set's journal cost).
    fn staged_runs(&self) -> Result<Vec<Run>, NvmError> {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut home = Vec::new();
        for (&addr, data) in &self.staged {
            home.resize(data.len(), 0);
            self.eeprom.read(self.layout.user_start + addr, &mut home)?;
            let mut i = 0;
            while i < data.len() {
                if data[i] == home[i] {
                    i += 1;
                    continue;
                }
                let from = i;
                while i < data.len() && data[i] != home[i] {
                    i += 1;
                }
                let (s, e) = (addr + from, addr + i);
                match spans.last_mut() {
                    Some(last) if s - last.1 <= RANGE_OVERHEAD => last.1 = e,
                    _ => spans.push((s, e)),
                }
            }
        }
        spans
            .into_iter()
            .map(|(s, e)| {
                Ok(Run {
                    addr: s,
                    data: self.read_vec(s, e - s)?,
                })
            })
            .collect()
    }

    /// Checks the runs of a journal entry read back from the EEPROM: sorted, disjoint,
    /// non-empty, inside the user area.
    fn check_runs(&self, runs: &[Run]) -> Result<(), NvmError> {
        let mut end = 0;
        for r in runs {
            if r.data.is_empty() || r.addr < end || r.addr + r.data.len() > self.layout.user_len {
                return Err(NvmError::Corrupt(format!(
                    "journal entry writes {} bytes at user address {}, outside the user area or out of order",
                    r.data.len(),
                    r.addr
                )));
            }
            end = r.addr + r.data.len();
        }
        Ok(())
    }

    /// The physical writes that bring the home addresses of `runs` (sorted, disjoint) to their
    /// values: each run trimmed to its first..last differing byte, then runs sharing a page
    /// joined into one write (one cycle instead of two), the bytes between them kept as they
    /// are.
    fn plan_home(&self, runs: &[Run]) -> Result<Vec<(usize, Vec<u8>)>, NvmError> {
        let base = self.layout.user_start;
        let mut spans: Vec<(usize, usize)> = Vec::new(); // physical [start, end)
        let mut home = Vec::new();
        for r in runs {
            home.resize(r.data.len(), 0);
            self.eeprom.read(base + r.addr, &mut home)?;
            let differs = |i: &usize| r.data[*i] != home[*i];
            let Some(first) = (0..r.data.len()).find(differs) else {
                continue;
            };
            let last = (0..r.data.len()).rev().find(differs).unwrap_or(first);
            let (s, e) = (base + r.addr + first, base + r.addr + last + 1);
            match spans.last_mut() {
                Some(prev) if s / PAGE_SIZE == (prev.1 - 1) / PAGE_SIZE => prev.1 = e,
                _ => spans.push((s, e)),
            }
        }
        let mut writes = Vec::with_capacity(spans.len());
        for (s, e) in spans {
            let mut buf = vec![0u8; e - s];
            self.eeprom.read(s, &mut buf)?;
            for r in runs {
                let (rs, re) = (base + r.addr, base + r.addr + r.data.len());
                let (from, to) = (rs.max(s), re.min(e));
                if from < to {
                    buf[from - s..to - s].copy_from_slice(&r.data[from - rs..to - rs]);
                }
            }
            writes.push((s, buf));
        }
        Ok(writes)
    }

    fn commit_staged(&mut self) -> Result<(), NvmError> {
        let user_bytes: usize = self.staged.values().map(Vec::len).sum();
        let runs = self.staged_runs()?;
        if !runs.is_empty() {
            let stream = journal::stream_len(&runs);
            if stream - ENTRY_OVERHEAD > MAX_TRANSACTION_BYTES {
                return Err(NvmError::TransactionTooLarge {
                    bytes: stream - ENTRY_OVERHEAD,
                });
            }
            let home = self.plan_home(&runs)?;
            let placement = self.place(journal::pages_for(stream))?;
            let endurance = self.eeprom.endurance();
            for (addr, data) in &home {
                if let Some(page) = touched_pages(*addr, data.len())
                    .find(|&p| self.eeprom.page_cycles(p) >= endurance)
                {
                    return Err(EepromError::WornOut { page }.into());
                }
            }
            if let Some(page) = placement.checkpoint {
                let seq = self.take_seq()?;
                let span = Span {
                    start: page,
                    pages: 1,
                };
                self.write_entry(span, &journal::encode(seq, &[]))?;
            }
            let seq = self.take_seq()?;
            self.write_entry(placement.span, &journal::encode(seq, &runs))?;
            // The commit point has passed: from here a cut is repaired by redo at mount.
            for (addr, data) in home {
                self.phys_write(addr, &data)?;
            }
        }
        self.stats.commits += 1;
        self.stats.user_bytes += user_bytes as u64;
        Ok(())
    }

    fn take_seq(&mut self) -> Result<u32, NvmError> {
        let seq = self.next_seq;
        self.next_seq = seq
            .checked_add(1)
            .ok_or_else(|| NvmError::Corrupt("journal sequence number exhausted".into()))?;
        Ok(seq)
    }

    /// Chooses journal pages for an entry of `pages` pages; `WornOut` if worn pages leave no
    /// room.
    fn place(&self, pages: usize) -> Result<journal::Placement, NvmError> {
        let ring = self.layout.journal_pages;
        let first = self.layout.journal_first_page;
        let endurance = self.eeprom.endurance();
        let usable = |p: usize| self.eeprom.page_cycles(first + p) < endurance;
        journal::place(ring, self.next, self.last, pages, &usable).ok_or_else(|| {
            let worn = (0..ring)
                .map(|k| (self.next + k) % ring)
                .find(|&p| !usable(p))
                .unwrap_or(self.next);
            EepromError::WornOut { page: first + worn }.into()
        })
    }

    /// Writes an encoded entry into `span` (two physical writes if it wraps round the ring).
    fn write_entry(&mut self, span: Span, entry: &Encoded) -> Result<(), NvmError> {
        debug_assert_eq!(span.pages, entry.pages);
        let ring = self.layout.journal_pages;
        let head_pages = span.pages.min(ring - span.start);
        let split = (head_pages * PAGE_SIZE).min(entry.bytes.len());
        let addr = self.layout.ring_start() + span.start * PAGE_SIZE;
        self.phys_write(addr, &entry.bytes[..split])?;
        if split < entry.bytes.len() {
            self.phys_write(self.layout.ring_start(), &entry.bytes[split..])?;
        }
        self.last = Some(span);
        self.next = (span.start + span.pages) % ring;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::eeprom::{SimEeprom, MIN_SIZE};
    use super::*;

    fn fresh() -> Nvm<SimEeprom> {
        Nvm::format(SimEeprom::new(MIN_SIZE, 1000).unwrap()).unwrap()
    }

    #[test]
    fn layouts_stay_small() {
        for (size, ring) in [(8 * 1024, 20), (32 * 1024, 32), (128 * 1024, 64)] {
            let l = Layout::for_size(size);
            assert_eq!(l.journal_pages, ring);
            assert_eq!(l.user_start + l.user_len, size);
            // Header + journal: at most a sixth of the smallest card.
            assert!(l.user_start * 6 <= size, "{l:?}");
        }
    }

    #[test]
    fn header_round_trip_and_rejections() {
        let l = Layout::for_size(MIN_SIZE);
        let h = l.encode();
        assert_eq!(Layout::decode(&h, MIN_SIZE), Ok(l));
        assert!(matches!(
            Layout::decode(&h, MIN_SIZE * 2),
            Err(NvmError::Corrupt(_))
        ));
        let mut bad = h;
        bad[15] ^= 1;
        assert!(matches!(
            Layout::decode(&bad, MIN_SIZE),
            Err(NvmError::Corrupt(_))
        ));
        bad[0] = 0;
        assert_eq!(Layout::decode(&bad, MIN_SIZE), Err(NvmError::NotFormatted));
    }

    #[test]
    fn staged_ranges_merge_and_cost_is_tracked() {
        let mut nvm = fresh();
        nvm.write(10, &[1; 4]).unwrap();
        nvm.write(20, &[2; 4]).unwrap();
        assert_eq!(nvm.staged_journal_bytes(), 2 * (4 + RANGE_OVERHEAD));
        nvm.write(14, &[3; 6]).unwrap(); // bridges both
        assert_eq!(nvm.staged.len(), 1);
        assert_eq!(nvm.staged_journal_bytes(), 14 + RANGE_OVERHEAD);
        assert!(nvm.is_staged(12, 10));
        assert!(!nvm.is_staged(12, 13));
        let mut expect = vec![1; 4];
        expect.extend([3; 6]);
        expect.extend([2; 4]);
        assert_eq!(nvm.read_vec(10, 14).unwrap(), expect);
    }

    #[test]
    fn too_large_is_refused_without_changing_the_stage() {
        let mut nvm = fresh();
        let max = MAX_TRANSACTION_BYTES - RANGE_OVERHEAD;
        nvm.write(0, &vec![7; max]).unwrap();
        assert_eq!(
            nvm.write(max + 100, &[1]),
            Err(NvmError::TransactionTooLarge {
                bytes: MAX_TRANSACTION_BYTES + 1 + RANGE_OVERHEAD
            })
        );
        nvm.write(max, &[9]).unwrap_err();
        nvm.write(5, &[8]).unwrap(); // inside: still fits
        nvm.commit().unwrap();
        assert_eq!(nvm.read_u8(5).unwrap(), 8);
        assert_eq!(nvm.read_u8(max - 1).unwrap(), 7);
        assert_eq!(nvm.read_u8(max).unwrap(), 0);
    }

    #[test]
    fn diff_joins_close_runs_and_home_writes_share_pages() {
        let mut nvm = fresh();
        let mut data = vec![0u8; 40];
        data[0] = 1;
        data[5] = 1; // gap of 4 <= overhead: one run
        data[30] = 1; // gap of 24: second run
        nvm.write(0, &data).unwrap();
        let runs = nvm.staged_runs().unwrap();
        assert_eq!(
            runs.iter()
                .map(|r| (r.addr, r.data.len()))
                .collect::<Vec<_>>(),
            vec![(0, 6), (30, 1)]
        );
        // Both runs lie in one page: a single home write.
        let home = nvm.plan_home(&runs).unwrap();
        assert_eq!(home.len(), 1);
        assert_eq!(home[0].0, nvm.layout.user_start);
        assert_eq!(home[0].1.len(), 31);
    }

    #[test]
    fn a_checkpoint_lets_the_largest_entry_follow_the_largest() {
        let mut nvm = fresh();
        let biggest = MAX_TRANSACTION_BYTES - RANGE_OVERHEAD;
        nvm.write(0, &vec![1; biggest]).unwrap();
        nvm.commit().unwrap();
        assert_eq!(
            nvm.last,
            Some(Span {
                start: 0,
                pages: 19
            })
        );
        nvm.write(0, &vec![2; biggest]).unwrap();
        nvm.commit().unwrap();
        // Checkpoint (seq 2) on ring page 19, then the entry (seq 3) over the old one.
        assert_eq!(
            nvm.last,
            Some(Span {
                start: 0,
                pages: 19
            })
        );
        let mut ring = vec![0u8; nvm.layout.journal_pages * PAGE_SIZE];
        nvm.eeprom.read(nvm.layout.ring_start(), &mut ring).unwrap();
        let checkpoint = journal::parse_at(&ring, 19).unwrap();
        assert_eq!((checkpoint.seq, checkpoint.runs.len()), (2, 0));
        assert_eq!(journal::newest(&ring).unwrap().seq, 3);
        let nvm = Nvm::mount(nvm.into_eeprom()).unwrap();
        assert_eq!(nvm.read_vec(0, biggest).unwrap(), vec![2; biggest]);
    }

    #[test]
    fn unchanged_commit_writes_nothing() {
        let mut nvm = fresh();
        let before = nvm.stats();
        nvm.write(100, &[0; 50]).unwrap();
        nvm.commit().unwrap();
        let after = nvm.stats();
        assert_eq!(after.physical_writes, before.physical_writes);
        assert_eq!(after.commits, before.commits + 1);
        assert!(!nvm.has_staged());
    }
}
