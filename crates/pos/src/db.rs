//! The terminal's SQLite file: opening it (WAL, `synchronous=FULL`, busy timeout) and its
//! schema, versioned with `PRAGMA user_version`. The journal, the batches and the loss list
//! live in the one file, so what belongs together commits together.

use crate::error::{PosError, Result};
use rusqlite::Connection;
use std::path::Path;

/// The schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = "
CREATE TABLE purchase (
    terminal_id TEXT NOT NULL,
    terminal_serial INTEGER NOT NULL,
    application_serial TEXT NOT NULL,
    card_number TEXT NOT NULL,
    offline_serial INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
    tx_type INTEGER NOT NULL,
    date TEXT NOT NULL,
    time TEXT NOT NULL,
    balance_before_fen INTEGER NOT NULL,
    key_index INTEGER NOT NULL,
    key_version INTEGER NOT NULL,
    alg_id INTEGER NOT NULL,
    tac TEXT,
    mac2 TEXT,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'normal', 'recovered', 'failed', 'suspicious')),
    note TEXT,
    pending_json TEXT NOT NULL,
    upload_state TEXT NOT NULL DEFAULT 'local'
        CHECK (upload_state IN ('local', 'batched', 'acknowledged')),
    batch_sequence INTEGER,
    result_code TEXT,
    PRIMARY KEY (terminal_id, terminal_serial)
);
CREATE INDEX purchase_card ON purchase (application_serial, status);
CREATE INDEX purchase_upload ON purchase (upload_state, status);
CREATE TABLE batch (
    sequence INTEGER PRIMARY KEY,
    terminal_id TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    previous_hash TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'acknowledged'))
);
CREATE TABLE loss_list_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    updated_at TEXT,
    updated_secs INTEGER
);
INSERT INTO loss_list_state (id, version) VALUES (1, 0);
CREATE TABLE loss_list (application_serial TEXT PRIMARY KEY);
";

/// An error of the file at `path`.
pub(crate) fn err(path: &Path, e: impl std::fmt::Display) -> PosError {
    PosError::Journal {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Opens (creating if needed) the terminal's database and brings its schema up to date.
pub(crate) fn open(path: &Path) -> Result<Connection> {
    let mut conn = Connection::open(path).map_err(|e| err(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| err(path, e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| err(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(err(path, format!("cannot use WAL (journal mode {mode})")));
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .map_err(|e| err(path, e))?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| err(path, e))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| err(path, e))?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA_V1).map_err(|e| err(path, e))?;
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(|e| err(path, e))?;
        }
        SCHEMA_VERSION => {}
        v => {
            return Err(PosError::Corrupt {
                path: path.display().to_string(),
                message: format!(
                    "schema version {v} is newer than this program's {SCHEMA_VERSION}"
                ),
            })
        }
    }
    tx.commit().map_err(|e| err(path, e))?;
    Ok(conn)
}
