//! The terminal's journal: one row per purchase in the terminal's SQLite file, keyed by
//! (terminal id, terminal serial from the PSAM).
//!
//! The row is written as `pending` — exactly what [`PendingTransaction`] holds — *before*
//! DEBIT FOR PURCHASE leaves (the journal is the purchase's [`PendingStore`]), and made final
//! (`normal`, `recovered`, `failed`, `suspicious`) when the answer is in. `save` commits
//! (WAL, `synchronous=FULL`) before it returns; `clear` writes nothing: a row leaves `pending`
//! only when its outcome is written, so a crash at any instant — before the debit, after it,
//! between the card's answer and the outcome's write — leaves a pending row that
//! [`crate::PointOfUse::resolve`] settles with the same card (serial unchanged: repeated once;
//! serial + 1: the proof fetched). Nothing is ever deleted.
//!
//! A repeated purchase gets a new terminal serial from the PSAM: its row is written and the
//! row it repeats is marked `failed` ("never executed; repeated as …") in the same SQLite
//! transaction, so the two can never both count.

use crate::db;
use crate::error::{PosError, Result};
use crate::record::{PurchaseRecord, RecordStatus, ResultCode};
use iccard_apdu::hex;
use iccard_terminal::{
    PendingStore, PendingTransaction, PurchaseOutcome, TerminalError, TransactionKind,
};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::{Path, PathBuf};

/// Where a record is in the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    /// Not in a batch yet.
    Local,
    /// In a batch not yet answered.
    Batched,
    /// The back office answered (the result code says how).
    Acknowledged,
}

impl UploadState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadState::Local => "local",
            UploadState::Batched => "batched",
            UploadState::Acknowledged => "acknowledged",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "local" => UploadState::Local,
            "batched" => UploadState::Batched,
            "acknowledged" => UploadState::Acknowledged,
            _ => return None,
        })
    }
}

/// A journal row: the record as uploaded, plus what only the terminal keeps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JournalRecord {
    /// The record.
    pub record: PurchaseRecord,
    /// The purse key index used.
    pub key_index: u8,
    /// Why the record has its status, when that needs saying (failure, suspicion, recovery).
    pub note: Option<String>,
    /// Upload state.
    pub upload: UploadState,
    /// The batch holding it.
    pub batch_sequence: Option<u64>,
    /// The back office's answer.
    pub result: Option<ResultCode>,
}

/// A record's key: terminal id (hex) and terminal serial.
pub(crate) type Key = (String, u32);

/// The journal of one terminal.
pub struct Journal {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    /// The key of the row the last `save` wrote.
    last_saved: Option<Key>,
    /// A pending row the next `save` supersedes (its purchase is being repeated).
    repeating: Option<Key>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "terminal_id, terminal_serial, application_serial, card_number, \
    offline_serial, amount_fen, tx_type, date, time, balance_before_fen, key_index, key_version, \
    alg_id, tac, mac2, status, note, upload_state, batch_sequence, result_code";

fn small<T: TryFrom<i64>>(r: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let v: i64 = r.get(i)?;
    T::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}

fn bad_text(i: usize, what: &str, v: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        i,
        rusqlite::types::Type::Text,
        format!("unknown {what} {v:?}").into(),
    )
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<JournalRecord> {
    let status: String = r.get(15)?;
    let upload: String = r.get(17)?;
    let result: Option<String> = r.get(19)?;
    let result = match result {
        None => None,
        Some(s) => Some(ResultCode::parse(&s).ok_or_else(|| bad_text(19, "result code", &s))?),
    };
    let batch: Option<i64> = r.get(18)?;
    Ok(JournalRecord {
        record: PurchaseRecord {
            terminal_id: r.get(0)?,
            terminal_serial: small(r, 1)?,
            application_serial: r.get(2)?,
            card_number: r.get(3)?,
            offline_serial: small(r, 4)?,
            amount_fen: small(r, 5)?,
            tx_type: small(r, 6)?,
            date: r.get(7)?,
            time: r.get(8)?,
            balance_before_fen: small(r, 9)?,
            key_version: small(r, 11)?,
            alg_id: small(r, 12)?,
            tac: r.get(13)?,
            mac2: r.get(14)?,
            status: RecordStatus::parse(&status).ok_or_else(|| bad_text(15, "status", &status))?,
        },
        key_index: small(r, 10)?,
        note: r.get(16)?,
        upload: UploadState::parse(&upload).ok_or_else(|| bad_text(17, "upload state", &upload))?,
        batch_sequence: batch.and_then(|b| u64::try_from(b).ok()),
        result,
    })
}

/// The key of a pending transaction.
pub(crate) fn key_of(p: &PendingTransaction) -> Option<Key> {
    p.terminal_serial.map(|s| (hex::encode(&p.terminal_id), s))
}

impl Journal {
    /// Opens (creating if needed) the journal in the terminal's database file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        Ok(Self {
            conn: db::open(&path)?,
            path,
            last_saved: None,
            repeating: None,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn err(&self, e: impl std::fmt::Display) -> PosError {
        db::err(&self.path, e)
    }

    fn corrupt(&self, message: impl Into<String>) -> PosError {
        PosError::Corrupt {
            path: self.path.display().to_string(),
            message: message.into(),
        }
    }

    /// One record.
    pub fn record(
        &self,
        terminal_id: &[u8; 6],
        terminal_serial: u32,
    ) -> Result<Option<JournalRecord>> {
        self.record_by(&(hex::encode(terminal_id), terminal_serial))
    }

    pub(crate) fn record_by(&self, key: &Key) -> Result<Option<JournalRecord>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM purchase WHERE terminal_id = ?1 AND terminal_serial = ?2"
                ),
                params![key.0, i64::from(key.1)],
                from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub(crate) fn query(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<JournalRecord>> {
        self.query_limited(filter, "", args)
    }

    /// Rows matching `filter` (a WHERE clause), by key, then `limit` (a LIMIT clause).
    pub(crate) fn query_limited(
        &self,
        filter: &str,
        limit: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<JournalRecord>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM purchase {filter} ORDER BY terminal_id, terminal_serial \
                 {limit}"
            ))
            .map_err(|e| self.err(e))?;
        let rows = st.query_map(args, from_row).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Every record, by terminal id and terminal serial.
    pub fn records(&self) -> Result<Vec<JournalRecord>> {
        self.query("", &[])
    }

    /// The records of one card (application serial), by terminal serial.
    pub fn records_of(&self, application_serial: &[u8; 10]) -> Result<Vec<JournalRecord>> {
        self.query(
            "WHERE application_serial = ?1",
            &[&hex::encode(application_serial)],
        )
    }

    fn pending_where(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<PendingTransaction>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT pending_json FROM purchase WHERE status = 'pending' {filter} \
                 ORDER BY terminal_id, terminal_serial"
            ))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(args, |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for json in rows {
            let json = json.map_err(|e| self.err(e))?;
            let p: PendingTransaction = serde_json::from_str(&json)
                .map_err(|e| self.corrupt(format!("a pending record is unreadable: {e}")))?;
            out.push(p);
        }
        Ok(out)
    }

    /// The purchases whose outcome is not known yet (to resolve when their card comes back).
    pub fn pending(&self) -> Result<Vec<PendingTransaction>> {
        self.pending_where("", &[])
    }

    /// The pending purchases of one card.
    pub fn pending_of(&self, application_serial: &[u8; 10]) -> Result<Vec<PendingTransaction>> {
        self.pending_where(
            "AND application_serial = ?1",
            &[&hex::encode(application_serial)],
        )
    }

    /// Forgets which row the last `save` wrote (before a new attempt).
    pub(crate) fn begin_attempt(&mut self, repeating: Option<Key>) {
        self.last_saved = None;
        self.repeating = repeating;
    }

    /// The row the last `save` wrote since [`Journal::begin_attempt`].
    pub(crate) fn last_saved(&self) -> Option<&Key> {
        self.last_saved.as_ref()
    }

    /// Makes a pending row final with the outcome the card gave: `normal` (or `recovered` when
    /// finished after an interruption), `suspicious` when the outcome says so. Completing a
    /// row again with the same outcome changes nothing.
    pub fn complete(
        &mut self,
        outcome: &PurchaseOutcome,
        status: RecordStatus,
        note: Option<&str>,
    ) -> Result<JournalRecord> {
        if !status.debited() {
            return Err(PosError::Input(format!(
                "a completed purchase is normal, recovered or suspicious, not {status}"
            )));
        }
        let key = (hex::encode(&outcome.terminal_id), outcome.terminal_serial);
        let row = self
            .record_by(&key)?
            .ok_or_else(|| self.corrupt(format!("no journal row for terminal serial {}", key.1)))?;
        let r = &row.record;
        if r.amount_fen != outcome.amount_fen
            || r.offline_serial != outcome.offline_serial
            || r.date != outcome.when.date_string()
            || r.time != outcome.when.time_string()
        {
            return Err(self.corrupt(format!(
                "terminal serial {}: the outcome does not match the journaled purchase",
                key.1
            )));
        }
        if r.status != RecordStatus::Pending {
            if r.status == status && r.tac == outcome.tac {
                return Ok(row);
            }
            return Err(self.corrupt(format!("terminal serial {} is already {}", key.1, r.status)));
        }
        self.conn
            .execute(
                "UPDATE purchase SET status = ?1, tac = ?2, mac2 = ?3, note = ?4 \
                 WHERE terminal_id = ?5 AND terminal_serial = ?6 AND status = 'pending'",
                params![
                    status.as_str(),
                    outcome.tac,
                    outcome.mac2,
                    note,
                    key.0,
                    i64::from(key.1)
                ],
            )
            .map_err(|e| self.err(e))?;
        self.record_by(&key)?
            .ok_or_else(|| self.corrupt("the completed row vanished"))
    }

    /// Marks a pending row `failed`: the card refused or never executed it; no money moved.
    pub fn fail(
        &mut self,
        terminal_id: &[u8; 6],
        terminal_serial: u32,
        note: &str,
    ) -> Result<JournalRecord> {
        self.fail_by(&(hex::encode(terminal_id), terminal_serial), note)
    }

    pub(crate) fn fail_by(&mut self, key: &Key, note: &str) -> Result<JournalRecord> {
        let n = self
            .conn
            .execute(
                "UPDATE purchase SET status = 'failed', note = ?1 \
                 WHERE terminal_id = ?2 AND terminal_serial = ?3 AND status = 'pending'",
                params![note, key.0, i64::from(key.1)],
            )
            .map_err(|e| self.err(e))?;
        let row = self
            .record_by(key)?
            .ok_or_else(|| self.corrupt(format!("no journal row for terminal serial {}", key.1)))?;
        if n == 0 && row.record.status != RecordStatus::Failed {
            return Err(self.corrupt(format!(
                "terminal serial {} is {}, not pending",
                key.1, row.record.status
            )));
        }
        Ok(row)
    }

    fn insert_pending(&mut self, p: &PendingTransaction) -> Result<Key> {
        let key = key_of(p).ok_or_else(|| {
            PosError::Input("a purchase without a terminal serial cannot be journaled".into())
        })?;
        if p.kind != TransactionKind::Purchase {
            return Err(PosError::Input(format!(
                "the journal keeps purchases, not a {}",
                p.kind
            )));
        }
        let json = serde_json::to_string(p).map_err(|e| self.err(e))?;
        let repeating = self.repeating.clone();
        let path = self.path.clone();
        let e = |e: rusqlite::Error| db::err(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT pending_json FROM purchase WHERE terminal_id = ?1 AND terminal_serial = ?2",
                params![key.0, i64::from(key.1)],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;
        match existing {
            Some(old) if old == json => return Ok(key),
            Some(_) => {
                return Err(PosError::Corrupt {
                    path: path.display().to_string(),
                    message: format!(
                        "terminal serial {} is journaled already with other content (a PSAM \
                         serial used twice?)",
                        key.1
                    ),
                })
            }
            None => {}
        }
        tx.execute(
            "INSERT INTO purchase (terminal_id, terminal_serial, application_serial, card_number, \
             offline_serial, amount_fen, tx_type, date, time, balance_before_fen, key_index, \
             key_version, alg_id, status, pending_json) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'pending', ?14)",
            params![
                key.0,
                i64::from(key.1),
                hex::encode(&p.application_serial),
                p.card_number,
                i64::from(p.serial),
                i64::from(p.amount_fen),
                i64::from(p.tx_type()),
                p.when.date_string(),
                p.when.time_string(),
                i64::from(p.balance_before_fen),
                i64::from(p.key_index),
                i64::from(p.key_version),
                i64::from(p.alg_id),
                json,
            ],
        )
        .map_err(e)?;
        if let Some(old) = repeating.filter(|old| *old != key) {
            tx.execute(
                "UPDATE purchase SET status = 'failed', note = ?1 \
                 WHERE terminal_id = ?2 AND terminal_serial = ?3 AND status = 'pending'",
                params![
                    format!(
                        "the card never executed it; repeated as terminal serial {}",
                        key.1
                    ),
                    old.0,
                    i64::from(old.1)
                ],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(key)
    }
}

impl PendingStore for Journal {
    fn save(&mut self, p: &PendingTransaction) -> Result<(), TerminalError> {
        match self.insert_pending(p) {
            Ok(key) => {
                self.repeating = None;
                self.last_saved = Some(key);
                Ok(())
            }
            Err(e) => Err(TerminalError::PendingStore {
                path: self.path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// Writes nothing: the row stays `pending` until its outcome is written (module docs).
    fn clear(&mut self) -> Result<(), TerminalError> {
        Ok(())
    }
}
