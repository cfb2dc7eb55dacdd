//! The pending transaction: what a terminal knows right before it sends the command that moves
//! money (CREDIT FOR LOAD, DEBIT FOR PURCHASE, DEBIT FOR UNLOAD), written durably *before* that command leaves,
//! and removed once the outcome is known.
//!
//! If the answer is lost (card pulled, power cut, crash), the record survives and
//! [`crate::recovery::recover`] decides with the same card whether the transaction happened.
//! [`PendingFile`] keeps it next to a card image as JSON (`<card>.pending.json`), replaced
//! atomically (write, fsync, rename, fsync the directory); [`MemoryPending`] keeps it in memory
//! for tests and embedding.

use crate::error::TerminalError;
use crate::time::TransactionTime;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of the pending-record format.
pub const PENDING_FORMAT: u32 = 1;

/// Which money-moving command is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransactionKind {
    /// CREDIT FOR LOAD.
    Load,
    /// DEBIT FOR PURCHASE.
    Purchase,
    /// DEBIT FOR UNLOAD (the return of a card).
    Unload,
}

impl std::fmt::Display for TransactionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransactionKind::Load => "load",
            TransactionKind::Purchase => "purchase",
            TransactionKind::Unload => "unload",
        })
    }
}

/// What the terminal knew before sending the completing command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingTransaction {
    /// Format version ([`PENDING_FORMAT`]).
    pub format: u32,
    /// Load, purchase or unload.
    pub kind: TransactionKind,
    /// Card number (for people).
    pub card_number: String,
    /// The card's application serial (the identity recovery checks).
    #[serde(with = "crate::hexser")]
    pub application_serial: [u8; 10],
    /// The card's serial this transaction uses (online for a load, offline for a purchase),
    /// before the card increments it.
    pub serial: u16,
    /// Amount.
    pub amount_fen: u32,
    /// Balance before.
    pub balance_before_fen: u32,
    /// Terminal id.
    #[serde(with = "crate::hexser")]
    pub terminal_id: [u8; 6],
    /// Terminal transaction serial from the PSAM (purchases).
    pub terminal_serial: Option<u32>,
    /// Date and time sent to the card.
    pub when: TransactionTime,
    /// Key index used.
    pub key_index: u8,
    /// Key version the card announced.
    pub key_version: u8,
    /// Algorithm id the card announced.
    pub alg_id: u8,
}

impl PendingTransaction {
    /// The PBOC transaction type byte.
    pub fn tx_type(&self) -> u8 {
        match self.kind {
            TransactionKind::Load => crate::card::tx_type::EP_LOAD,
            TransactionKind::Purchase => crate::card::tx_type::EP_PURCHASE,
            TransactionKind::Unload => crate::card::tx_type::EP_UNLOAD,
        }
    }
}

/// Where pending records are kept. `save` must be durable when it returns.
pub trait PendingStore {
    /// Records `p` durably (replacing any earlier record).
    fn save(&mut self, p: &PendingTransaction) -> Result<(), TerminalError>;
    /// Forgets the record: its outcome is known.
    fn clear(&mut self) -> Result<(), TerminalError>;
}

/// Pending records in memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryPending {
    /// The record, if one is pending.
    pub current: Option<PendingTransaction>,
    /// How many times a record was saved (for tests).
    pub saves: usize,
}

impl PendingStore for MemoryPending {
    fn save(&mut self, p: &PendingTransaction) -> Result<(), TerminalError> {
        self.current = Some(p.clone());
        self.saves += 1;
        Ok(())
    }

    fn clear(&mut self) -> Result<(), TerminalError> {
        self.current = None;
        Ok(())
    }
}

/// A pending record in a JSON file.
#[derive(Debug, Clone)]
pub struct PendingFile {
    path: PathBuf,
}

impl PendingFile {
    /// The record file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The record file kept next to a card image: `<card image>.pending.json`.
    pub fn beside(card_image: &Path) -> Self {
        let mut name = card_image.as_os_str().to_owned();
        name.push(".pending.json");
        Self::new(PathBuf::from(name))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, message: impl std::fmt::Display) -> TerminalError {
        TerminalError::PendingStore {
            path: self.path.display().to_string(),
            message: message.to_string(),
        }
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn sync_dir(&self) {
        if let Ok(d) = File::open(self.dir()) {
            // Some filesystems refuse fsync on a directory; the rename is atomic there anyway.
            let _ = d.sync_all();
        }
    }

    /// Reads the record, if there is one.
    pub fn load(&self) -> Result<Option<PendingTransaction>, TerminalError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let p: PendingTransaction = serde_json::from_str(&text)
            .map_err(|e| self.err(format!("unreadable ({e}); keep it for the back office")))?;
        if p.format != PENDING_FORMAT {
            return Err(self.err(format!("format {} is not {PENDING_FORMAT}", p.format)));
        }
        Ok(Some(p))
    }
}

impl PendingStore for PendingFile {
    fn save(&mut self, p: &PendingTransaction) -> Result<(), TerminalError> {
        let json = serde_json::to_vec_pretty(p).map_err(|e| self.err(e))?;
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pending".into());
        let tmp = self
            .dir()
            .join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(self.err(e));
        }
        self.sync_dir();
        Ok(())
    }

    fn clear(&mut self) -> Result<(), TerminalError> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.err(e)),
        }
        self.sync_dir();
        Ok(())
    }
}
