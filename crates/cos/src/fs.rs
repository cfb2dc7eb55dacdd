//! The file system in EEPROM: the card header, the file table and file bodies.
//!
//! Layout of the NVM user area (addresses are NVM user addresses, see [`crate::nvm`]):
//!
//! ```text
//! 0x0000  card header, 64 bytes   magic "ICOS", layout version, card life cycle, attack counter
//!                                 and threshold, chip production data, file-table capacity,
//!                                 ERASE DF in progress
//! 0x0040  file table              `capacity` file control blocks (FCB) of 48 bytes each
//! ....    heap                    file bodies, allocated first-fit between the bodies the
//!                                 table records (the table *is* the allocation map)
//! ```
//!
//! An FCB describes one file: MF, DF (application area), transparent / linear-fixed / cyclic
//! EF, key file or internal purse file. Files form a tree through the parent index. Every change
//! here is staged in the NVM transaction of the command that makes it; the command commits or
//! rolls back as a whole, so a torn write never leaves a half-created file.
//!
//! Cyclic files keep a 4-byte sequence number in front of every record slot: the newest record
//! is the slot with the highest number, so appending writes one slot and nothing else; writes
//! rotate over the slots, which levels the wear of a transaction log for free.

use crate::nvm::{Eeprom, Nvm};
use iccard_apdu::StatusWord;

/// Result of card operations: the error is the status word the card answers.
pub type CardResult<T> = Result<T, StatusWord>;

/// NVM errors become "memory failure" (6581), the answer of a card whose EEPROM fails.
pub(crate) fn nv<T>(r: Result<T, crate::nvm::NvmError>) -> CardResult<T> {
    r.map_err(|_| StatusWord::MEMORY_FAILURE)
}

/// Address of the card header.
pub const HEADER_ADDR: usize = 0;
/// Size of the card header.
pub const HEADER_LEN: usize = 64;
/// Size of one file control block.
pub const FCB_LEN: usize = 48;
/// Index meaning "no parent" (the MF).
pub const NO_PARENT: u8 = 0xFF;
/// File identifier of the master file.
pub const MF_FID: u16 = 0x3F00;
/// Longest DF name (AID) the card stores.
pub const MAX_DF_NAME: usize = 16;
const MAGIC: &[u8; 4] = b"ICOS";
const LAYOUT_VERSION: u8 = 1;

/// The card life cycle (GlobalPlatform card states, with their GP codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CardState {
    /// Manufactured: chip data and transport key, nothing else.
    OpReady = 0x01,
    /// File structure being created by the issuer.
    Initialized = 0x07,
    /// Personalized and issued: normal use.
    Secured = 0x0F,
    /// Blocked by the issuer (CARD BLOCK); only the card manager answers.
    CardLocked = 0x7F,
    /// Irreversibly terminated; only identification commands answer.
    Terminated = 0xFF,
}

impl CardState {
    /// Decodes a GP life-cycle code.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x01 => Self::OpReady,
            0x07 => Self::Initialized,
            0x0F => Self::Secured,
            0x7F => Self::CardLocked,
            0xFF => Self::Terminated,
            _ => return None,
        })
    }

    /// The name GlobalPlatform gives the state.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpReady => "OP_READY",
            Self::Initialized => "INITIALIZED",
            Self::Secured => "SECURED",
            Self::CardLocked => "CARD_LOCKED",
            Self::Terminated => "TERMINATED",
        }
    }
}

/// Chip production data written at manufacture (GET DATA tag 9F7F, a CPLC-like record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChipData {
    /// Chip maker code.
    pub chip_maker: u16,
    /// Chip serial number.
    pub chip_serial: [u8; 8],
    /// Production date, BCD YYYYMMDD.
    pub production_date: [u8; 4],
    /// Production batch.
    pub batch: u16,
    /// Card OS version.
    pub os_version: u16,
}

impl ChipData {
    /// Encoded length.
    pub const LEN: usize = 18;

    /// The 18-byte encoding used in the header and in GET DATA.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..2].copy_from_slice(&self.chip_maker.to_be_bytes());
        b[2..10].copy_from_slice(&self.chip_serial);
        b[10..14].copy_from_slice(&self.production_date);
        b[14..16].copy_from_slice(&self.batch.to_be_bytes());
        b[16..18].copy_from_slice(&self.os_version.to_be_bytes());
        b
    }

    /// Decodes the 18-byte encoding.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        let mut chip_serial = [0u8; 8];
        chip_serial.copy_from_slice(&b[2..10]);
        let mut production_date = [0u8; 4];
        production_date.copy_from_slice(&b[10..14]);
        Some(Self {
            chip_maker: u16::from_be_bytes([b[0], b[1]]),
            chip_serial,
            production_date,
            batch: u16::from_be_bytes([b[14], b[15]]),
            os_version: u16::from_be_bytes([b[16], b[17]]),
        })
    }
}

/// The card header at NVM address 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Card life cycle.
    pub state: CardState,
    /// Failed authentications across the whole card, over its life.
    pub attack_counter: u8,
    /// Past this many failed authentications the card erases its secrets and terminates.
    pub attack_threshold: u8,
    /// Chip production data.
    pub chip: ChipData,
    /// Number of file control blocks in the file table.
    pub table_capacity: u8,
}

// Header field offsets.
const H_STATE: usize = 5;
const H_ATTACKS: usize = 6;
const H_THRESHOLD: usize = 7;
const H_CHIP: usize = 8;
const H_CAPACITY: usize = 26;
/// ERASE DF in progress: the DF's slot + 1 (0: none). Set in a commit of its own before the
/// removal, which may take several commits; power-up finishes it.
const H_ERASING: usize = 27;

impl Header {
    /// Reads and checks the header.
    pub fn read<E: Eeprom>(nvm: &Nvm<E>) -> CardResult<Self> {
        let b = nv(nvm.read_vec(HEADER_ADDR, HEADER_LEN))?;
        if &b[0..4] != MAGIC || b[4] != LAYOUT_VERSION {
            return Err(StatusWord::MEMORY_FAILURE);
        }
        Ok(Self {
            state: CardState::from_code(b[H_STATE]).ok_or(StatusWord::MEMORY_FAILURE)?,
            attack_counter: b[H_ATTACKS],
            attack_threshold: b[H_THRESHOLD],
            chip: ChipData::from_bytes(&b[H_CHIP..H_CHIP + ChipData::LEN])
                .ok_or(StatusWord::MEMORY_FAILURE)?,
            table_capacity: b[H_CAPACITY],
        })
    }

    /// Stages the whole header (used once, at manufacture).
    pub fn write<E: Eeprom>(&self, nvm: &mut Nvm<E>) -> CardResult<()> {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4] = LAYOUT_VERSION;
        b[H_STATE] = self.state as u8;
        b[H_ATTACKS] = self.attack_counter;
        b[H_THRESHOLD] = self.attack_threshold;
        b[H_CHIP..H_CHIP + ChipData::LEN].copy_from_slice(&self.chip.to_bytes());
        b[H_CAPACITY] = self.table_capacity;
        nv(nvm.write(HEADER_ADDR, &b))
    }

    /// Stages a new card life-cycle state.
    pub fn set_state<E: Eeprom>(nvm: &mut Nvm<E>, state: CardState) -> CardResult<()> {
        nv(nvm.write(HEADER_ADDR + H_STATE, &[state as u8]))
    }

    /// Stages a new attack counter.
    pub fn set_attack_counter<E: Eeprom>(nvm: &mut Nvm<E>, value: u8) -> CardResult<()> {
        nv(nvm.write(HEADER_ADDR + H_ATTACKS, &[value]))
    }

    /// The DF whose ERASE DF was interrupted, if any.
    pub fn erasing<E: Eeprom>(nvm: &Nvm<E>) -> CardResult<Option<u8>> {
        let v = nv(nvm.read_u8(HEADER_ADDR + H_ERASING))?;
        Ok(v.checked_sub(1))
    }

    /// Stages the ERASE DF mark (`None` clears it).
    pub fn set_erasing<E: Eeprom>(nvm: &mut Nvm<E>, df: Option<u8>) -> CardResult<()> {
        let v = df.map_or(0, |d| d.saturating_add(1));
        nv(nvm.write(HEADER_ADDR + H_ERASING, &[v]))
    }

    /// Table capacity suited to an NVM of `user_len` bytes: one FCB per 512 bytes, 24..=128.
    pub fn capacity_for(user_len: usize) -> u8 {
        (user_len / 512).clamp(24, 128) as u8
    }

    /// First heap address.
    pub fn heap_start(&self) -> usize {
        HEADER_LEN + self.table_capacity as usize * FCB_LEN
    }
}

/// File structure, coded as the ISO 7816-4 file descriptor byte (FCP tag 82).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Dedicated file: the MF or an application area.
    Df = 0x38,
    /// Working EF, transparent.
    Transparent = 0x01,
    /// Working EF, linear fixed records.
    LinearFixed = 0x02,
    /// Working EF, cyclic records.
    Cyclic = 0x06,
    /// Internal EF holding the keys and PINs of its DF (records of [`crate::keys::KEY_RECORD_LEN`]).
    KeyFile = 0x0A,
    /// Internal EF holding an application's protected state (the purse balance and counters).
    Internal = 0x09,
}

impl FileKind {
    /// Decodes a file descriptor byte.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x38 => Self::Df,
            0x01 => Self::Transparent,
            0x02 => Self::LinearFixed,
            0x06 => Self::Cyclic,
            0x0A => Self::KeyFile,
            0x09 => Self::Internal,
            _ => return None,
        })
    }

    /// Record-structured EFs.
    pub fn is_record(self) -> bool {
        matches!(self, Self::LinearFixed | Self::Cyclic | Self::KeyFile)
    }

    /// EFs that no READ/UPDATE command may reach.
    pub fn is_internal(self) -> bool {
        matches!(self, Self::KeyFile | Self::Internal)
    }
}

/// An access condition as a range of security states: `0xMN` grants access when the current
/// DF's security state `s` satisfies `N <= s <= M`. `0xF0` is free, `0x0F` is never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(pub u8);

impl Access {
    /// Always allowed.
    pub const FREE: Access = Access(0xF0);
    /// Never allowed.
    pub const NEVER: Access = Access(0x0F);

    /// Allowed when the state is at least `min`.
    pub const fn at_least(min: u8) -> Access {
        Access(0xF0 | (min & 0x0F))
    }

    /// Whether security state `state` satisfies the condition.
    pub fn allows(self, state: u8) -> bool {
        let min = self.0 & 0x0F;
        let max = self.0 >> 4;
        min <= state && state <= max
    }
}

/// Per-file flags byte.
pub mod flags {
    /// UPDATE/APPEND must come under secure messaging (CLA 04/84, MAC with the DF maintenance key).
    pub const UPDATE_NEEDS_MAC: u8 = 0x01;
    /// READ answers under secure messaging is not offered; reading needs the MAC'd command.
    pub const READ_NEEDS_MAC: u8 = 0x02;
}

/// File life-cycle status byte (ISO 7816-4 FCP tag 8A).
pub mod lcs {
    /// Creation state.
    pub const CREATION: u8 = 0x01;
    /// Initialisation state.
    pub const INITIALISATION: u8 = 0x03;
    /// Operational, activated.
    pub const ACTIVATED: u8 = 0x05;
    /// Operational, deactivated.
    pub const DEACTIVATED: u8 = 0x04;
    /// Termination state.
    pub const TERMINATED: u8 = 0x0C;
}

/// Application (DF) life cycle, GlobalPlatform application state codes.
pub mod app_state {
    /// Installed.
    pub const INSTALLED: u8 = 0x03;
    /// Selectable.
    pub const SELECTABLE: u8 = 0x07;
    /// Personalized: in use.
    pub const PERSONALIZED: u8 = 0x0F;
    /// Locked by APPLICATION BLOCK (temporary: APPLICATION UNBLOCK restores it).
    pub const LOCKED: u8 = 0x83;
    /// Locked for good (APPLICATION BLOCK P2=01 or the purse MAC-failure limit).
    pub const LOCKED_PERMANENTLY: u8 = 0xFF;
}

/// What kind of application a DF carries: it decides which proprietary commands it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    /// A plain application area: ISO commands only.
    Plain = 0,
    /// The PBOC electronic purse / passbook.
    Purse = 1,
    /// A PSAM (terminal security module) application.
    Psam = 2,
}

impl AppKind {
    /// Decodes the stored byte.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Plain,
            1 => Self::Purse,
            2 => Self::Psam,
            _ => return None,
        })
    }
}

/// A file control block: everything the card knows about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fcb {
    /// Slot in the file table.
    pub index: u8,
    /// File structure.
    pub kind: FileKind,
    /// File identifier.
    pub fid: u16,
    /// Parent slot, [`NO_PARENT`] for the MF.
    pub parent: u8,
    /// Short file identifier (1..=30), 0 for none.
    pub sfi: u8,
    /// File life-cycle status (FCP 8A).
    pub lcs: u8,
    /// Application kind (DFs).
    pub app: AppKind,
    /// READ access (EFs); for DFs: reserved.
    pub ac_read: Access,
    /// UPDATE access (EFs); for DFs: right to write keys into the DF's key file.
    pub ac_update: Access,
    /// APPEND RECORD (record EFs); for DFs: CREATE FILE inside it.
    pub ac_append: Access,
    /// For DFs: ERASE DF / TERMINATE DF / DELETE; for EFs: DELETE FILE.
    pub ac_delete: Access,
    /// [`flags`].
    pub flags: u8,
    /// Record length (record EFs).
    pub record_len: u8,
    /// Number of record slots (record EFs).
    pub record_count: u8,
    /// Records written so far (linear-fixed EFs).
    pub records_used: u8,
    /// Body size in bytes.
    pub size: u16,
    /// Body address.
    pub body: u32,
    /// DF name (AID), DFs only.
    pub name: Vec<u8>,
    /// Application state ([`app_state`]), DFs only.
    pub app_state: u8,
}

impl Fcb {
    /// Whether this is a DF (the MF included).
    pub fn is_df(&self) -> bool {
        self.kind == FileKind::Df
    }

    /// Whether this is the MF.
    pub fn is_mf(&self) -> bool {
        self.parent == NO_PARENT
    }

    /// Record slot length in the body: cyclic slots carry a 4-byte sequence number.
    pub fn slot_len(&self) -> usize {
        match self.kind {
            FileKind::Cyclic => self.record_len as usize + 4,
            _ => self.record_len as usize,
        }
    }

    fn encode(&self) -> [u8; FCB_LEN] {
        let mut b = [0u8; FCB_LEN];
        b[0] = 1;
        b[1] = self.kind as u8;
        b[2..4].copy_from_slice(&self.fid.to_be_bytes());
        b[4] = self.parent;
        b[5] = self.sfi;
        b[6] = self.lcs;
        b[7] = self.app as u8;
        b[8] = self.ac_read.0;
        b[9] = self.ac_update.0;
        b[10] = self.ac_append.0;
        b[11] = self.ac_delete.0;
        b[12] = self.flags;
        b[13] = self.record_len;
        b[14] = self.record_count;
        b[15] = self.records_used;
        b[16..18].copy_from_slice(&self.size.to_be_bytes());
        b[20..24].copy_from_slice(&self.body.to_be_bytes());
        let n = self.name.len().min(MAX_DF_NAME);
        b[24] = n as u8;
        b[25..25 + n].copy_from_slice(&self.name[..n]);
        b[41] = self.app_state;
        b
    }

    fn decode(index: u8, b: &[u8]) -> CardResult<Option<Self>> {
        if b[0] != 1 {
            return Ok(None);
        }
        let bad = StatusWord::MEMORY_FAILURE;
        let n = (b[24] as usize).min(MAX_DF_NAME);
        Ok(Some(Self {
            index,
            kind: FileKind::from_code(b[1]).ok_or(bad)?,
            fid: u16::from_be_bytes([b[2], b[3]]),
            parent: b[4],
            sfi: b[5],
            lcs: b[6],
            app: AppKind::from_code(b[7]).ok_or(bad)?,
            ac_read: Access(b[8]),
            ac_update: Access(b[9]),
            ac_append: Access(b[10]),
            ac_delete: Access(b[11]),
            flags: b[12],
            record_len: b[13],
            record_count: b[14],
            records_used: b[15],
            size: u16::from_be_bytes([b[16], b[17]]),
            body: u32::from_be_bytes([b[20], b[21], b[22], b[23]]),
            name: b[25..25 + n].to_vec(),
            app_state: b[41],
        }))
    }
}

/// The file table: reads, writes and searches FCBs, and allocates bodies.
#[derive(Debug, Clone, Copy)]
pub struct FileTable {
    capacity: u8,
    heap_start: usize,
    heap_end: usize,
}

impl FileTable {
    /// The table described by `header` on an NVM whose user area is `user_len` bytes.
    pub fn new(header: &Header, user_len: usize) -> Self {
        Self {
            capacity: header.table_capacity,
            heap_start: header.heap_start(),
            heap_end: user_len,
        }
    }

    fn addr(index: u8) -> usize {
        HEADER_LEN + index as usize * FCB_LEN
    }

    /// Reads one slot.
    pub fn get<E: Eeprom>(&self, nvm: &Nvm<E>, index: u8) -> CardResult<Option<Fcb>> {
        if index >= self.capacity {
            return Ok(None);
        }
        let b = nv(nvm.read_vec(Self::addr(index), FCB_LEN))?;
        Fcb::decode(index, &b)
    }

    /// Reads a slot that must be in use.
    pub fn load<E: Eeprom>(&self, nvm: &Nvm<E>, index: u8) -> CardResult<Fcb> {
        self.get(nvm, index)?.ok_or(StatusWord::MEMORY_FAILURE)
    }

    /// All files in use.
    pub fn all<E: Eeprom>(&self, nvm: &Nvm<E>) -> CardResult<Vec<Fcb>> {
        let raw = nv(nvm.read_vec(HEADER_LEN, self.capacity as usize * FCB_LEN))?;
        let mut out = Vec::new();
        for (i, b) in raw.chunks_exact(FCB_LEN).enumerate() {
            if let Some(f) = Fcb::decode(i as u8, b)? {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// Stages an FCB.
    pub fn put<E: Eeprom>(&self, nvm: &mut Nvm<E>, fcb: &Fcb) -> CardResult<()> {
        nv(nvm.write(Self::addr(fcb.index), &fcb.encode()))
    }

    /// Stages the removal of an FCB (its body space becomes free with it).
    pub fn remove<E: Eeprom>(&self, nvm: &mut Nvm<E>, index: u8) -> CardResult<()> {
        nv(nvm.write(Self::addr(index), &[0u8; FCB_LEN]))
    }

    /// The MF, which always sits in slot 0.
    pub fn mf<E: Eeprom>(&self, nvm: &Nvm<E>) -> CardResult<Fcb> {
        self.load(nvm, 0)
    }

    /// Children of a DF.
    pub fn children<E: Eeprom>(&self, nvm: &Nvm<E>, parent: u8) -> CardResult<Vec<Fcb>> {
        Ok(self
            .all(nvm)?
            .into_iter()
            .filter(|f| f.parent == parent)
            .collect())
    }

    /// A child of `parent` by file identifier.
    pub fn child_by_fid<E: Eeprom>(
        &self,
        nvm: &Nvm<E>,
        parent: u8,
        fid: u16,
    ) -> CardResult<Option<Fcb>> {
        Ok(self
            .children(nvm, parent)?
            .into_iter()
            .find(|f| f.fid == fid))
    }

    /// An EF of `df` by short file identifier.
    pub fn child_by_sfi<E: Eeprom>(
        &self,
        nvm: &Nvm<E>,
        df: u8,
        sfi: u8,
    ) -> CardResult<Option<Fcb>> {
        if sfi == 0 {
            return Ok(None);
        }
        Ok(self
            .children(nvm, df)?
            .into_iter()
            .find(|f| f.sfi == sfi && !f.is_df()))
    }

    /// The key file of a DF, if it has one.
    pub fn key_file<E: Eeprom>(&self, nvm: &Nvm<E>, df: u8) -> CardResult<Option<Fcb>> {
        Ok(self
            .children(nvm, df)?
            .into_iter()
            .find(|f| f.kind == FileKind::KeyFile))
    }

    /// The internal state file of an application DF, if it has one.
    pub fn internal_file<E: Eeprom>(&self, nvm: &Nvm<E>, df: u8) -> CardResult<Option<Fcb>> {
        Ok(self
            .children(nvm, df)?
            .into_iter()
            .find(|f| f.kind == FileKind::Internal))
    }

    /// A DF anywhere on the card by DF name (exact match, or the name as a prefix of a longer
    /// DF name: ISO 7816-4 partial DF name selection, first occurrence).
    pub fn df_by_name<E: Eeprom>(&self, nvm: &Nvm<E>, name: &[u8]) -> CardResult<Option<Fcb>> {
        let dfs: Vec<Fcb> = self
            .all(nvm)?
            .into_iter()
            .filter(|f| f.is_df() && !f.name.is_empty())
            .collect();
        if let Some(f) = dfs.iter().find(|f| f.name == name) {
            return Ok(Some(f.clone()));
        }
        Ok(dfs.into_iter().find(|f| f.name.starts_with(name)))
    }

    /// A free slot.
    pub fn free_slot<E: Eeprom>(&self, nvm: &Nvm<E>) -> CardResult<u8> {
        let used: Vec<u8> = self.all(nvm)?.iter().map(|f| f.index).collect();
        (0..self.capacity)
            .find(|i| !used.contains(i))
            .ok_or(StatusWord::NOT_ENOUGH_MEMORY)
    }

    /// First-fit allocation of `len` body bytes between the bodies in use, at an address that
    /// is a multiple of `align` (a power of two; user address 0 is page-aligned, so aligning to
    /// [`crate::nvm::PAGE_SIZE`] puts a body on a page boundary).
    pub fn allocate<E: Eeprom>(&self, nvm: &Nvm<E>, len: usize, align: usize) -> CardResult<u32> {
        let mut used: Vec<(usize, usize)> = self
            .all(nvm)?
            .iter()
            .filter(|f| f.size > 0)
            .map(|f| (f.body as usize, f.body as usize + f.size as usize))
            .collect();
        used.sort_unstable();
        let up = |a: usize| (a + align - 1) & !(align - 1);
        let mut cursor = up(self.heap_start);
        for (start, end) in used {
            if start >= cursor + len {
                break;
            }
            cursor = cursor.max(up(end));
        }
        if cursor + len <= self.heap_end {
            Ok(cursor as u32)
        } else {
            Err(StatusWord::NOT_ENOUGH_MEMORY)
        }
    }

    /// Free heap bytes (for `card info`).
    pub fn free_bytes<E: Eeprom>(&self, nvm: &Nvm<E>) -> CardResult<usize> {
        let used: usize = self.all(nvm)?.iter().map(|f| f.size as usize).sum();
        Ok(self.heap_end.saturating_sub(self.heap_start + used))
    }

    /// Every file below `df` (not `df` itself), deepest first, so removing in order never
    /// leaves an orphan.
    pub fn descendants<E: Eeprom>(&self, nvm: &Nvm<E>, df: u8) -> CardResult<Vec<Fcb>> {
        let all = self.all(nvm)?;
        let mut out = Vec::new();
        fn walk(all: &[Fcb], parent: u8, out: &mut Vec<Fcb>) {
            for f in all.iter().filter(|f| f.parent == parent) {
                if f.is_df() {
                    walk(all, f.index, out);
                }
                out.push(f.clone());
            }
        }
        walk(&all, df, &mut out);
        Ok(out)
    }

    /// The path of DF slots from the MF down to `index` (inclusive).
    pub fn lineage<E: Eeprom>(&self, nvm: &Nvm<E>, index: u8) -> CardResult<Vec<Fcb>> {
        let mut chain = Vec::new();
        let mut cur = self.load(nvm, index)?;
        loop {
            let parent = cur.parent;
            chain.push(cur);
            if parent == NO_PARENT || chain.len() > self.capacity as usize {
                break;
            }
            cur = self.load(nvm, parent)?;
        }
        chain.reverse();
        Ok(chain)
    }
}
