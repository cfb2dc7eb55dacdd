//! The card's non-volatile memory: a wearing EEPROM, an atomic journaled commit on top of it,
//! wear-levelled hot records, and the card image codec.
//!
//! The card OS keeps all persistent state here and does no I/O: the host loads a card image
//! with [`decode_image`], hands the [`SimEeprom`] to [`Nvm::mount`], and saves
//! [`encode_image`]`(nvm.eeprom())` when it likes (replacing the file atomically).
//!
//! # Layers
//!
//! - [`Eeprom`] (module `eeprom`): bytes in pages of [`PAGE_SIZE`]; every write costs one cycle
//!   on each page it touches; a page at its endurance refuses writes. [`SimEeprom`] is the
//!   in-memory chip, [`FaultyEeprom`] cuts the power at a chosen write and byte.
//! - [`Nvm`] (module `store`): a user area whose writes are staged, read back
//!   (read-your-writes) and committed atomically through a redo journal.
//! - [`HotRecord`] (module `hot`): a small record rotated over several slots so that a value
//!   rewritten by every transaction does not wear out one page.
//! - [`encode_image`] / [`decode_image`] (module `image`): the card image file format.
//!
//! # EEPROM layout (version 1)
//!
//! | pages | contents |
//! |---|---|
//! | 0 | system header: magic `ICNV`, layout version, page size, EEPROM size, journal position and length, user area position and length, CRC-32 |
//! | 1 ..= J | journal ring, J = max(20, min(64, pages / 16)): 20 pages on 8 KiB, 32 on 32 KiB, 64 on 128 KiB |
//! | J+1 .. | user area (`Nvm::user_len` bytes; user address 0 is page-aligned) |
//!
//! Header and journal take 1344 bytes of an 8 KiB EEPROM (16 %), 2112 of 32 KiB (6 %).
//!
//! # The journal and the commit protocol
//!
//! [`Nvm::write`] only stages: a sorted map of disjoint ranges. [`Nvm::commit`]:
//!
//! 1. compares the staged bytes with the EEPROM and keeps only the runs that differ (runs
//!    closer than [`RANGE_OVERHEAD`] bytes are joined: the gap costs less than another range
//!    header); nothing differs → nothing is written;
//! 2. plans the home writes: the runs, with runs that share a page joined into one write (one
//!    cycle instead of two);
//! 3. chooses journal pages for the entry and checks every page it will write, journal and
//!    home, against its endurance: a failed page aborts the commit before any write
//!    ([`EepromError::WornOut`]);
//! 4. writes the journal entry (one physical write, two if it wraps round the ring): **the
//!    commit point is the last byte of the entry**;
//! 5. writes the runs to their home addresses.
//!
//! There is no "applied" mark: [`Nvm::mount`] always re-applies the newest complete entry.
//! Redo is idempotent, and home bytes that already hold the entry's values are not rewritten,
//! so after a clean shutdown the mount writes nothing.
//!
//! An entry is a run of ring-consecutive pages (wrapping from the last ring page to the first).
//! Each page starts with an 8-byte header `b'J' ‖ index ‖ count ‖ version ‖ seq u32`; the rest
//! of the pages carry `range_count u16 ‖ (addr u32 ‖ len u16 ‖ bytes)* ‖ crc32`. An entry is
//! valid when all its `count` pages carry the same `seq` and consecutive indexes and the CRC-32
//! over `seq ‖ count ‖ stream` matches. Mount scans every ring page for an index-0 header and
//! takes the valid entry with the highest `seq`.
//!
//! Why it is safe against a power cut at any write and any byte within a write (a torn write
//! leaves a new prefix and old bytes after it):
//!
//! - a cut before the entry's last byte leaves an entry whose CRC (or page headers) do not
//!   match: it is ignored. The previous entry is still intact, because a new entry is never
//!   placed over the pages of the newest one; its redo rewrites values that home already
//!   holds. When a large entry cannot avoid the newest one's pages, a one-page empty
//!   *checkpoint* entry is written first, elsewhere: it becomes the newest entry (its redo does
//!   nothing) and the old one may then be overwritten. The ring (at least 20 pages) always has
//!   room for the largest entry (19 pages) plus a checkpoint.
//! - a cut after the entry is complete leaves home half-written; mount redoes the entry.
//! - user data never lands at the start of a journal page (page headers occupy it), so bytes
//!   written by a terminal can never be mistaken for a journal entry and replayed.
//!
//! Wear: each commit's entry starts where the previous one ended, so the journal's cycles go
//! round the ring; journal pages at their endurance are skipped, and the commit fails with
//! [`EepromError::WornOut`] only when no room is left. A transaction may need at most
//! [`MAX_TRANSACTION_BYTES`] of journal (staged bytes plus [`RANGE_OVERHEAD`] per staged
//! range), else [`NvmError::TransactionTooLarge`] at the write that crosses it.

mod eeprom;
mod hot;
mod image;
mod journal;
mod store;

pub use eeprom::{
    Eeprom, EepromError, FaultyEeprom, SimEeprom, DEFAULT_ENDURANCE, DEFAULT_SIZE, MAX_SIZE,
    MIN_SIZE, PAGE_SIZE,
};
pub use hot::HotRecord;
pub use image::{decode_image, encode_image, image_len, ImageError, IMAGE_FORMAT_VERSION};
pub use journal::{MAX_TRANSACTION_BYTES, RANGE_OVERHEAD};
pub use store::{Layout, Nvm, NvmStats, WearReport};

/// What an NVM operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvmError {
    /// The physical EEPROM refused or lost a write.
    #[error("EEPROM failure: {0}")]
    Eeprom(#[from] EepromError),
    /// The EEPROM holds no NVM system header: format it first.
    #[error("the EEPROM is not formatted")]
    NotFormatted,
    /// The system header or the journal is damaged.
    #[error("NVM is corrupt: {0}")]
    Corrupt(String),
    /// A user access outside the user area.
    #[error("NVM access out of range: {len} bytes at user address {addr}")]
    OutOfRange {
        /// First user address of the access.
        addr: usize,
        /// Length in bytes.
        len: usize,
    },
    /// The open transaction would need more journal than a commit can hold.
    #[error("transaction too large: it would need {bytes} journal bytes, at most {MAX_TRANSACTION_BYTES} fit")]
    TransactionTooLarge {
        /// Journal bytes the transaction would need.
        bytes: usize,
    },
    /// An impossible configuration (EEPROM size, endurance, record shape).
    #[error("bad NVM configuration: {0}")]
    BadConfig(String),
}

impl NvmError {
    /// True if the card lost power during the operation (the card is dead until the next
    /// mount).
    pub fn is_power_lost(&self) -> bool {
        matches!(self, NvmError::Eeprom(EepromError::PowerLost))
    }
}
