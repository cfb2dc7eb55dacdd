//! The wire types a point of use uploads and the back office answers: purchase records, batches
//! chained by SHA-256, per-record result codes. Plain data (serde, JSON), shared by both sides:
//! the back office depends on this crate for them.
//!
//! Conventions: amounts are minor units (`u32`, as on the card); bytes are uppercase hex strings
//! (terminal id 12 digits, application serial 20, TAC and MAC2 8); dates `YYYYMMDD`, times
//! `HHMMSS`; hashes lowercase hex (64 digits).
//!
//! ## Canonical encoding of a batch (what [`Batch::hash`] covers)
//!
//! UTF-8 text, one item per line, every line ended by `\n`, no other whitespace:
//!
//! ```text
//! iccard-pos-batch 1
//! terminal_id <12 hex>
//! sequence <decimal>
//! previous_hash <64 hex>
//! records <count>
//! record <terminal_serial>|<application_serial>|<card_number>|<offline_serial>|<amount_fen>|<tx_type>|<date>|<time>|<balance_before_fen>|<key_version>|<alg_id>|<tac or ->|<mac2 or ->|<status>
//! … one `record` line per record, in the batch's order
//! ```
//!
//! Numbers are decimal without leading zeros, hex as stored (uppercase), `-` for an absent TAC
//! or MAC2, status in its snake_case name. A record field holding `|`, a line break or a space
//! makes the batch [`RecordError`] instead of being encoded ambiguously. The hash is SHA-256 of
//! those bytes, lowercase hex. The first batch of a terminal (sequence 1) has the previous hash
//! [`GENESIS_HASH`] (64 zeros); every later batch carries its predecessor's hash, so a missing,
//! repeated, reordered or altered batch breaks the chain ([`verify_chain`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Version of the batch format (the first line of the canonical encoding).
pub const BATCH_FORMAT: u32 = 1;

/// The previous hash of a terminal's first batch.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What became of a purchase, as the terminal knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Written before DEBIT FOR PURCHASE left; the outcome is not known yet (never uploaded).
    Pending,
    /// The card was debited and proved it (MAC2 accepted by the PSAM).
    Normal,
    /// Finished after an interruption: the card had executed it, or it was repeated once.
    Recovered,
    /// The card refused, or never executed it: no money moved.
    Failed,
    /// The card was debited but its MAC2 was rejected (or could not be checked) by the PSAM.
    Suspicious,
}

impl RecordStatus {
    /// The stored and encoded name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Pending => "pending",
            RecordStatus::Normal => "normal",
            RecordStatus::Recovered => "recovered",
            RecordStatus::Failed => "failed",
            RecordStatus::Suspicious => "suspicious",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => RecordStatus::Pending,
            "normal" => RecordStatus::Normal,
            "recovered" => RecordStatus::Recovered,
            "failed" => RecordStatus::Failed,
            "suspicious" => RecordStatus::Suspicious,
            _ => return None,
        })
    }

    /// Whether money moved on the card (normal, recovered, suspicious).
    pub fn debited(self) -> bool {
        matches!(
            self,
            RecordStatus::Normal | RecordStatus::Recovered | RecordStatus::Suspicious
        )
    }
}

impl std::fmt::Display for RecordStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One purchase as the terminal journaled it: the three witnesses' terminal side (card serial
/// and TAC, terminal serial).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRecord {
    /// Terminal id (12 hex digits): with the terminal serial, the record's key.
    pub terminal_id: String,
    /// Terminal transaction serial from the PSAM.
    pub terminal_serial: u32,
    /// The card's application serial (20 hex digits).
    pub application_serial: String,
    /// The card number (decimal digits).
    pub card_number: String,
    /// The card's offline serial this purchase used (before the card incremented it).
    pub offline_serial: u16,
    /// Amount, minor units.
    pub amount_fen: u32,
    /// PBOC transaction type byte (06: purse purchase).
    pub tx_type: u8,
    /// Date sent to the card, `YYYYMMDD`.
    pub date: String,
    /// Time sent to the card, `HHMMSS`.
    pub time: String,
    /// The card's balance before, minor units.
    pub balance_before_fen: u32,
    /// Key version the card announced (for TAC verification).
    pub key_version: u8,
    /// Algorithm id the card announced (00 3DES, 04 SM4).
    pub alg_id: u8,
    /// The card's TAC (8 hex digits), when known.
    pub tac: Option<String>,
    /// The card's MAC2 (8 hex digits), when known.
    pub mac2: Option<String>,
    /// What became of it.
    pub status: RecordStatus,
}

/// Why a record or batch cannot be encoded or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A field holds a character the canonical encoding reserves.
    #[error("record {terminal_serial}: field {field} holds a separator, space or line break")]
    Unencodable {
        /// The record.
        terminal_serial: u32,
        /// The field.
        field: &'static str,
    },
    /// A batch's stored hash is not the hash of its content.
    #[error("batch {sequence}: its hash does not match its content (altered)")]
    HashMismatch {
        /// The batch.
        sequence: u64,
    },
    /// A batch does not follow its predecessor.
    #[error("batch {sequence}: {why}")]
    Chain {
        /// The batch.
        sequence: u64,
        /// What is wrong.
        why: String,
    },
}

impl PurchaseRecord {
    fn encode_line(&self, out: &mut String) -> Result<(), RecordError> {
        let fields: [(&'static str, &str); 5] = [
            ("application_serial", &self.application_serial),
            ("card_number", &self.card_number),
            ("date", &self.date),
            ("time", &self.time),
            ("terminal_id", &self.terminal_id),
        ];
        let opt = [("tac", &self.tac), ("mac2", &self.mac2)];
        let bad = |s: &str| s.is_empty() || s.chars().any(|c| c == '|' || c.is_whitespace());
        for (field, v) in fields {
            if bad(v) {
                return Err(RecordError::Unencodable {
                    terminal_serial: self.terminal_serial,
                    field,
                });
            }
        }
        for (field, v) in opt {
            if v.as_deref().is_some_and(|v| bad(v) || v == "-") {
                return Err(RecordError::Unencodable {
                    terminal_serial: self.terminal_serial,
                    field,
                });
            }
        }
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "record {}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.terminal_serial,
            self.application_serial,
            self.card_number,
            self.offline_serial,
            self.amount_fen,
            self.tx_type,
            self.date,
            self.time,
            self.balance_before_fen,
            self.key_version,
            self.alg_id,
            self.tac.as_deref().unwrap_or("-"),
            self.mac2.as_deref().unwrap_or("-"),
            self.status.as_str(),
        );
        Ok(())
    }
}

/// A batch of records from one terminal, chained to the terminal's previous batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Format version ([`BATCH_FORMAT`]).
    pub format: u32,
    /// Terminal id (12 hex digits). Every record of the batch carries the same.
    pub terminal_id: String,
    /// Batch sequence number, from 1, consecutive per terminal.
    pub sequence: u64,
    /// SHA-256 of the previous batch ([`GENESIS_HASH`] for sequence 1).
    pub previous_hash: String,
    /// The records, by terminal serial.
    pub records: Vec<PurchaseRecord>,
    /// SHA-256 of this batch's canonical encoding (module documentation).
    pub hash: String,
}

impl Batch {
    /// A batch with its hash computed.
    pub fn new(
        terminal_id: String,
        sequence: u64,
        previous_hash: String,
        records: Vec<PurchaseRecord>,
    ) -> Result<Self, RecordError> {
        let mut b = Batch {
            format: BATCH_FORMAT,
            terminal_id,
            sequence,
            previous_hash,
            records,
            hash: String::new(),
        };
        b.hash = b.compute_hash()?;
        Ok(b)
    }

    /// The canonical encoding (module documentation).
    pub fn canonical(&self) -> Result<String, RecordError> {
        let mut out = String::new();
        let _ = writeln!(out, "iccard-pos-batch {}", self.format);
        let _ = writeln!(out, "terminal_id {}", self.terminal_id);
        let _ = writeln!(out, "sequence {}", self.sequence);
        let _ = writeln!(out, "previous_hash {}", self.previous_hash);
        let _ = writeln!(out, "records {}", self.records.len());
        for r in &self.records {
            r.encode_line(&mut out)?;
        }
        for (what, v) in [
            ("terminal_id", &self.terminal_id),
            ("previous_hash", &self.previous_hash),
        ] {
            if v.is_empty() || v.chars().any(char::is_whitespace) {
                return Err(RecordError::Chain {
                    sequence: self.sequence,
                    why: format!("{what} is empty or holds whitespace"),
                });
            }
        }
        Ok(out)
    }

    /// SHA-256 of the canonical encoding, lowercase hex.
    pub fn compute_hash(&self) -> Result<String, RecordError> {
        Ok(sha256_hex(self.canonical()?.as_bytes()))
    }

    /// Checks that the stored hash is the content's and that every record is this terminal's.
    pub fn verify(&self) -> Result<(), RecordError> {
        if self.format != BATCH_FORMAT {
            return Err(RecordError::Chain {
                sequence: self.sequence,
                why: format!("format {} is not {BATCH_FORMAT}", self.format),
            });
        }
        if self.compute_hash()? != self.hash {
            return Err(RecordError::HashMismatch {
                sequence: self.sequence,
            });
        }
        if let Some(r) = self
            .records
            .iter()
            .find(|r| r.terminal_id != self.terminal_id)
        {
            return Err(RecordError::Chain {
                sequence: self.sequence,
                why: format!(
                    "record {} belongs to terminal {}, not {}",
                    r.terminal_serial, r.terminal_id, self.terminal_id
                ),
            });
        }
        Ok(())
    }
}

/// SHA-256, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Verifies a run of one terminal's batches: each batch's own hash, consecutive sequence
/// numbers, each previous hash equal to the predecessor's hash. `after` is the last batch the
/// verifier already holds (sequence, hash); `None` means the run must start at sequence 1 with
/// [`GENESIS_HASH`].
pub fn verify_chain(batches: &[Batch], after: Option<(u64, &str)>) -> Result<(), RecordError> {
    let (mut seq, mut hash) = match after {
        Some((s, h)) => (s, h.to_string()),
        None => (0, GENESIS_HASH.to_string()),
    };
    let mut terminal: Option<&str> = None;
    for b in batches {
        b.verify()?;
        if let Some(t) = terminal {
            if t != b.terminal_id {
                return Err(RecordError::Chain {
                    sequence: b.sequence,
                    why: format!("terminal {} among terminal {t}'s batches", b.terminal_id),
                });
            }
        }
        terminal = Some(&b.terminal_id);
        let expected = seq.checked_add(1).ok_or_else(|| RecordError::Chain {
            sequence: b.sequence,
            why: "sequence overflow".into(),
        })?;
        if b.sequence != expected {
            return Err(RecordError::Chain {
                sequence: b.sequence,
                why: format!("expected sequence {expected} (a gap or a reordering)"),
            });
        }
        if b.previous_hash != hash {
            return Err(RecordError::Chain {
                sequence: b.sequence,
                why: format!(
                    "its previous hash {} is not batch {seq}'s hash {hash}",
                    b.previous_hash
                ),
            });
        }
        seq = b.sequence;
        hash = b.hash.clone();
    }
    Ok(())
}

/// The back office's answer for one record.
///
/// The declaration order is the documented order of precedence: when several codes apply to
/// one record, the back office answers the one declared first (`Ord` follows it).
///
/// - `ok`: accepted now;
/// - `exists`: the same record (same key, same content) was accepted earlier: a resend;
/// - `exists_with_different_content`: a record with this key (terminal id, terminal serial)
///   exists with other content: kept for a case, not accepted;
/// - `tac_invalid`: the TAC does not verify;
/// - `unknown_card`: the application serial is not the issuer's;
/// - `listed_card`: the card was on the loss list when the purchase was made;
/// - `malformed`: the record cannot be read (fields out of range, bad hex).
///
/// Every code is final for the terminal: it stores the code and does not send the record again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultCode {
    /// Accepted now.
    Ok,
    /// Accepted earlier, identical.
    Exists,
    /// The key exists with different content.
    ExistsWithDifferentContent,
    /// The TAC does not verify.
    TacInvalid,
    /// Not the issuer's card.
    UnknownCard,
    /// The card was on the loss list.
    ListedCard,
    /// Unreadable.
    Malformed,
}

impl ResultCode {
    /// All codes in their order of precedence.
    pub const ALL: [ResultCode; 7] = [
        ResultCode::Ok,
        ResultCode::Exists,
        ResultCode::ExistsWithDifferentContent,
        ResultCode::TacInvalid,
        ResultCode::UnknownCard,
        ResultCode::ListedCard,
        ResultCode::Malformed,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultCode::Ok => "ok",
            ResultCode::Exists => "exists",
            ResultCode::ExistsWithDifferentContent => "exists_with_different_content",
            ResultCode::TacInvalid => "tac_invalid",
            ResultCode::UnknownCard => "unknown_card",
            ResultCode::ListedCard => "listed_card",
            ResultCode::Malformed => "malformed",
        }
    }

    /// Parses a snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Of several codes that apply, the one to answer (the first in precedence order).
    pub fn first_of(codes: impl IntoIterator<Item = ResultCode>) -> Option<ResultCode> {
        codes.into_iter().min()
    }

    /// Whether the back office holds the record as sent (`ok` or `exists`).
    pub fn accepted(self) -> bool {
        matches!(self, ResultCode::Ok | ResultCode::Exists)
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The back office's answer for one record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordResult {
    /// The record (its terminal serial; the terminal id is the batch's).
    pub terminal_serial: u32,
    /// The answer.
    pub code: ResultCode,
}

/// The back office's answer for a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResults {
    /// Terminal id.
    pub terminal_id: String,
    /// The batch answered.
    pub sequence: u64,
    /// Its hash, as received (so the answer cannot be applied to another batch).
    pub hash: String,
    /// One result per record.
    pub results: Vec<RecordResult>,
}

/// Version of the batch-file format.
pub const BATCH_FILE_FORMAT: u32 = 1;

/// A file of batches carried by hand from a terminal that is never online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchFile {
    /// Format version ([`BATCH_FILE_FORMAT`]).
    pub format: u32,
    /// Terminal id.
    pub terminal_id: String,
    /// The batches not yet acknowledged, oldest first.
    pub batches: Vec<Batch>,
}
