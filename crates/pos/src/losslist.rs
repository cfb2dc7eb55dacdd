//! The terminal's local copy of the loss list: a version and the set of listed application
//! serials, kept in the terminal's SQLite file and brought forward with the back office's
//! deltas ([`LossListDelta`], the JSON the office's `loss_list_since` answers).
//!
//! - A delta must start at or before the version held and end at or after it; one that starts
//!   after it is a gap ([`PosError::LossListGap`]): nothing is applied.
//! - A delta already applied (it ends at or before the version held) changes nothing; the
//!   changes of an overlapping delta that the list already holds (version ≤ held) are skipped,
//!   so applying a delta twice is harmless.
//! - The age: the time of the last successful update is the time the caller passes to
//!   [`LossList::apply_delta`] (the library reads no clock). A delta that brings the list to
//!   the office's latest version (or confirms it: `from = to =` held) counts as an update; a
//!   replayed older delta does not.
//!
//! Application serials are uppercase hex (20 digits), as the office stores them.

use crate::db;
use crate::error::{PosError, Result};
use iccard_terminal::TransactionTime;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Add to or remove from the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossAction {
    /// The card is listed (reported lost, replaced).
    Add,
    /// The card is off the list (found again).
    Remove,
}

/// One change of the list (the office's `LossListEntry`; fields the terminal does not use,
/// such as the reason, are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossListChange {
    /// The list version this change made.
    pub version: i64,
    /// The card's application serial (hex).
    pub application_serial: String,
    /// Add or remove.
    pub action: LossAction,
}

/// The changes after a version (the office's `LossListDelta`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossListDelta {
    /// The version the changes start after.
    pub from_version: i64,
    /// The version the list has after them.
    pub to_version: i64,
    /// The changes, oldest first.
    pub changes: Vec<LossListChange>,
}

/// What applying a delta did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// The list moved to this version (changes applied, possibly none).
    Applied {
        /// The version now held.
        version: i64,
        /// How many changes were applied (those the list already held were skipped).
        changes: usize,
    },
    /// The delta was older than the list: nothing changed, the age neither.
    AlreadyApplied {
        /// The version held.
        version: i64,
    },
}

/// The loss list held by a terminal.
pub struct LossList {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for LossList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossList")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Seconds since 0000-03-01 of a transaction time (a monotone count in the caller's time zone,
/// for ages only).
pub fn seconds_of(t: &TransactionTime) -> i64 {
    let d = t.date_string();
    let h = t.time_string();
    let n = |s: &str| s.parse::<i64>().unwrap_or(0);
    let (mut y, m, day) = (n(&d[0..4]), n(&d[4..6]), n(&d[6..8]));
    // Days from civil (H. Hinnant's algorithm), shifted to a March-based year.
    if m <= 2 {
        y -= 1;
    }
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe;
    days * 86_400 + n(&h[0..2]) * 3600 + n(&h[2..4]) * 60 + n(&h[4..6])
}

fn normalize(serial: &str) -> Result<String> {
    let bytes = iccard_apdu::hex::decode(serial)
        .map_err(|e| PosError::LossListInvalid(format!("application serial {serial:?}: {e}")))?;
    if bytes.len() != 10 {
        return Err(PosError::LossListInvalid(format!(
            "application serial {serial:?} is not 10 bytes"
        )));
    }
    Ok(iccard_apdu::hex::encode(&bytes))
}

impl LossList {
    /// Opens the loss list in the terminal's database file (created empty at version 0).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        Ok(Self {
            conn: db::open(&path)?,
            path,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> PosError {
        db::err(&self.path, e)
    }

    /// The version held (0: never updated).
    pub fn version(&self) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT version FROM loss_list_state WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// When the list was last updated (`None`: never), as the caller's time and its seconds.
    pub fn updated_at(&self) -> Result<Option<(String, i64)>> {
        let row: (Option<String>, Option<i64>) = self
            .conn
            .query_row(
                "SELECT updated_at, updated_secs FROM loss_list_state WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        Ok(match row {
            (Some(at), Some(secs)) => Some((at, secs)),
            _ => None,
        })
    }

    /// Whether the card with this application serial (hex, any case) is listed.
    pub fn contains(&self, application_serial: &str) -> Result<bool> {
        let s = normalize(application_serial)?;
        self.conn
            .query_row(
                "SELECT 1 FROM loss_list WHERE application_serial = ?1",
                [s],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    /// The listed application serials, sorted.
    pub fn entries(&self) -> Result<BTreeSet<String>> {
        let mut st = self
            .conn
            .prepare("SELECT application_serial FROM loss_list ORDER BY application_serial")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Refuses when the list is older than `max_age_secs` at `now` (or was never updated).
    pub fn check_fresh(&self, now: &TransactionTime, max_age_secs: u64) -> Result<()> {
        let version = self.version()?;
        let stale = |updated: String| PosError::LossListStale {
            version,
            updated,
            max_age_secs,
        };
        match self.updated_at()? {
            None => Err(stale("never".into())),
            Some((at, secs)) => {
                let age = seconds_of(now).saturating_sub(secs);
                // A clock set back (negative age) is not trusted either.
                if age < 0 || u64::try_from(age).map_or(true, |a| a > max_age_secs) {
                    Err(stale(at))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Applies a delta of the back office received at `at` (module documentation).
    pub fn apply_delta(
        &mut self,
        delta: &LossListDelta,
        at: &TransactionTime,
    ) -> Result<DeltaOutcome> {
        if delta.from_version < 0 || delta.to_version < delta.from_version {
            return Err(PosError::LossListInvalid(format!(
                "versions {} to {}",
                delta.from_version, delta.to_version
            )));
        }
        let mut last = delta.from_version;
        let mut changes = Vec::with_capacity(delta.changes.len());
        for c in &delta.changes {
            if c.version <= last || c.version > delta.to_version {
                return Err(PosError::LossListInvalid(format!(
                    "change version {} out of order or outside {}..={}",
                    c.version, delta.from_version, delta.to_version
                )));
            }
            last = c.version;
            changes.push((c.version, normalize(&c.application_serial)?, c.action));
        }
        let path = self.path.clone();
        let e = |e: rusqlite::Error| db::err(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        let have: i64 = tx
            .query_row(
                "SELECT version FROM loss_list_state WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .map_err(e)?;
        if delta.from_version > have {
            return Err(PosError::LossListGap {
                have,
                from: delta.from_version,
                to: delta.to_version,
            });
        }
        if delta.to_version < have || (delta.to_version == have && delta.from_version < have) {
            return Ok(DeltaOutcome::AlreadyApplied { version: have });
        }
        let mut applied = 0;
        for (_, serial, action) in changes.iter().filter(|c| c.0 > have) {
            match action {
                LossAction::Add => tx.execute(
                    "INSERT OR IGNORE INTO loss_list (application_serial) VALUES (?1)",
                    [serial],
                ),
                LossAction::Remove => tx.execute(
                    "DELETE FROM loss_list WHERE application_serial = ?1",
                    [serial],
                ),
            }
            .map_err(e)?;
            applied += 1;
        }
        let when = format!("{} {}", at.date_string(), at.time_string());
        tx.execute(
            "UPDATE loss_list_state SET version = ?1, updated_at = ?2, updated_secs = ?3 \
             WHERE id = 1",
            params![delta.to_version, when, seconds_of(at)],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(DeltaOutcome::Applied {
            version: delta.to_version,
            changes: applied,
        })
    }
}
