//! The upload, terminal side: journal records whose outcome is known (`normal`, `recovered`,
//! `failed`, `suspicious`; pending ones wait) are sealed into [`Batch`]es — per terminal,
//! consecutive sequence numbers, each carrying the previous batch's SHA-256 — and kept in the
//! journal's file until the back office answers. A batch not yet answered is sent again as it
//! is (byte for byte the same JSON), never rebuilt, so the chain never forks.
//!
//! Online: [`Journal::next_batch`] then, with the office's answer, [`Journal::mark_uploaded`].
//! Never online: [`Journal::export_batch_file`] writes every unanswered batch to a file
//! carried by hand ([`read_batch_file`] reads and checks it); the answers come back the same
//! way ([`BatchResults`], applied with [`Journal::mark_answered`]).
//!
//! Failed records are uploaded too: every terminal serial the PSAM gave appears once, so the
//! back office sees gaps.

use crate::error::{PosError, Result};
use crate::journal::{Journal, UploadState};
use crate::record::{
    verify_chain, Batch, BatchFile, BatchResults, PurchaseRecord, RecordError, RecordResult,
    ResultCode, BATCH_FILE_FORMAT, GENESIS_HASH,
};
use iccard_apdu::hex;
use rusqlite::{params, OptionalExtension};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// What the back office's answer to a batch did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UploadSummary {
    /// Records the office holds as sent (`ok`, `exists`).
    pub accepted: usize,
    /// Records it answered otherwise, with the code (they need the issuer's attention).
    pub rejected: Vec<(u32, ResultCode)>,
}

impl Journal {
    /// The last batch of a terminal: (sequence, hash).
    pub fn last_batch(&self, terminal_id: &[u8; 6]) -> Result<Option<(u64, String)>> {
        let row: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT sequence, hash FROM batch WHERE terminal_id = ?1 \
                 ORDER BY sequence DESC LIMIT 1",
                [hex::encode(terminal_id)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(row.map(|(s, h)| (u64::try_from(s).unwrap_or(0), h)))
    }

    /// The batches of a terminal the back office has not answered, oldest first.
    pub fn open_batches(&self, terminal_id: &[u8; 6]) -> Result<Vec<Batch>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT body FROM batch WHERE terminal_id = ?1 AND state = 'open' \
                 ORDER BY sequence",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([hex::encode(terminal_id)], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for body in rows {
            let body = body.map_err(|e| self.err(e))?;
            let batch: Batch = serde_json::from_str(&body).map_err(|e| PosError::Corrupt {
                path: self.path.display().to_string(),
                message: format!("a stored batch is unreadable: {e}"),
            })?;
            out.push(batch);
        }
        Ok(out)
    }

    /// Seals up to `max_records` of the terminal's records not yet in a batch into a new
    /// batch; `None` when there is none.
    pub fn seal_batch(
        &mut self,
        terminal_id: &[u8; 6],
        max_records: usize,
    ) -> Result<Option<Batch>> {
        if max_records == 0 {
            return Err(PosError::Input("a batch holds at least one record".into()));
        }
        let tid = hex::encode(terminal_id);
        let limit = i64::try_from(max_records).unwrap_or(i64::MAX);
        let records: Vec<PurchaseRecord> = self
            .query_limited(
                "WHERE terminal_id = ?1 AND upload_state = 'local' AND status != 'pending'",
                "LIMIT ?2",
                &[&tid, &limit],
            )?
            .into_iter()
            .map(|r| r.record)
            .collect();
        if records.is_empty() {
            return Ok(None);
        }
        let (sequence, previous_hash) = match self.last_batch(terminal_id)? {
            Some((s, h)) => (
                s.checked_add(1)
                    .ok_or_else(|| PosError::Input("batch sequence overflow".into()))?,
                h,
            ),
            None => (1, GENESIS_HASH.to_string()),
        };
        let batch = Batch::new(tid.clone(), sequence, previous_hash, records)?;
        let body = serde_json::to_string(&batch).map_err(|e| self.err(e))?;
        let seq = i64::try_from(sequence).map_err(|e| self.err(e))?;
        let path = self.path.clone();
        let e = |e: rusqlite::Error| crate::db::err(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        tx.execute(
            "INSERT INTO batch (sequence, terminal_id, hash, previous_hash, body, state) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'open')",
            params![seq, tid, batch.hash, batch.previous_hash, body],
        )
        .map_err(e)?;
        for r in &batch.records {
            let n = tx
                .execute(
                    "UPDATE purchase SET upload_state = 'batched', batch_sequence = ?1 \
                     WHERE terminal_id = ?2 AND terminal_serial = ?3 AND upload_state = 'local'",
                    params![seq, tid, i64::from(r.terminal_serial)],
                )
                .map_err(e)?;
            if n != 1 {
                return Err(PosError::Corrupt {
                    path: path.display().to_string(),
                    message: format!("record {} changed while being batched", r.terminal_serial),
                });
            }
        }
        tx.commit().map_err(e)?;
        Ok(Some(batch))
    }

    /// The batch to send now: the oldest unanswered one again, else a new one of up to
    /// `max_records` records; `None` when everything is answered.
    pub fn next_batch(
        &mut self,
        terminal_id: &[u8; 6],
        max_records: usize,
    ) -> Result<Option<Batch>> {
        if let Some(open) = self.open_batches(terminal_id)?.into_iter().next() {
            return Ok(Some(open));
        }
        self.seal_batch(terminal_id, max_records)
    }

    /// Records the back office's answer to `batch`: one result per record (by terminal
    /// serial). The batch must be the one stored (same hash). Answering an answered batch
    /// again with the same results changes nothing.
    pub fn mark_uploaded(
        &mut self,
        batch: &Batch,
        results: &[RecordResult],
    ) -> Result<UploadSummary> {
        let seq = i64::try_from(batch.sequence).map_err(|e| self.err(e))?;
        let stored: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT hash, state FROM batch WHERE terminal_id = ?1 AND sequence = ?2",
                params![batch.terminal_id, seq],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((hash, state)) = stored else {
            return Err(PosError::Results(format!(
                "no batch {} of terminal {} in the journal",
                batch.sequence, batch.terminal_id
            )));
        };
        if hash != batch.hash {
            return Err(PosError::Results(format!(
                "batch {} in the journal has hash {hash}, the answer is for {}",
                batch.sequence, batch.hash
            )));
        }
        let mut by_serial: BTreeMap<u32, ResultCode> = BTreeMap::new();
        for r in results {
            if by_serial.insert(r.terminal_serial, r.code).is_some() {
                return Err(PosError::Results(format!(
                    "two results for record {}",
                    r.terminal_serial
                )));
            }
        }
        let serials: Vec<u32> = batch.records.iter().map(|r| r.terminal_serial).collect();
        if by_serial.len() != serials.len() || serials.iter().any(|s| !by_serial.contains_key(s)) {
            return Err(PosError::Results(format!(
                "batch {} has {} records; the answer covers {} others or misses some",
                batch.sequence,
                serials.len(),
                by_serial.len()
            )));
        }
        let mut summary = UploadSummary::default();
        for (serial, code) in &by_serial {
            if code.accepted() {
                summary.accepted += 1;
            } else {
                summary.rejected.push((*serial, *code));
            }
        }
        let path = self.path.clone();
        let e = |e: rusqlite::Error| crate::db::err(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        for (serial, code) in &by_serial {
            let prior: Option<String> = tx
                .query_row(
                    "SELECT result_code FROM purchase WHERE terminal_id = ?1 \
                     AND terminal_serial = ?2 AND batch_sequence = ?3",
                    params![batch.terminal_id, i64::from(*serial), seq],
                    |r| r.get(0),
                )
                .map_err(e)?;
            if state == "acknowledged" {
                if prior.as_deref() != Some(code.as_str()) {
                    return Err(PosError::Results(format!(
                        "batch {} was answered already, record {serial} as {}",
                        batch.sequence,
                        prior.as_deref().unwrap_or("nothing")
                    )));
                }
                continue;
            }
            tx.execute(
                "UPDATE purchase SET upload_state = ?1, result_code = ?2 \
                 WHERE terminal_id = ?3 AND terminal_serial = ?4 AND batch_sequence = ?5",
                params![
                    UploadState::Acknowledged.as_str(),
                    code.as_str(),
                    batch.terminal_id,
                    i64::from(*serial),
                    seq
                ],
            )
            .map_err(e)?;
        }
        tx.execute(
            "UPDATE batch SET state = 'acknowledged' WHERE terminal_id = ?1 AND sequence = ?2",
            params![batch.terminal_id, seq],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(summary)
    }

    /// Records an answer that came without its batch (carried back by hand): the batch is
    /// the stored one with the answer's terminal id and sequence, and must have its hash.
    pub fn mark_answered(&mut self, answer: &BatchResults) -> Result<UploadSummary> {
        let seq = i64::try_from(answer.sequence).map_err(|e| self.err(e))?;
        let body: Option<String> = self
            .conn
            .query_row(
                "SELECT body FROM batch WHERE terminal_id = ?1 AND sequence = ?2",
                params![answer.terminal_id, seq],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some(body) = body else {
            return Err(PosError::Results(format!(
                "no batch {} of terminal {} in the journal",
                answer.sequence, answer.terminal_id
            )));
        };
        let batch: Batch = serde_json::from_str(&body).map_err(|e| PosError::Corrupt {
            path: self.path.display().to_string(),
            message: format!("a stored batch is unreadable: {e}"),
        })?;
        if batch.hash != answer.hash {
            return Err(PosError::Results(format!(
                "the answer is for batch hash {}, batch {} has {}",
                answer.hash, batch.sequence, batch.hash
            )));
        }
        self.mark_uploaded(&batch, &answer.results)
    }

    /// Seals every record not yet in a batch (batches of up to `max_records`) and writes all
    /// unanswered batches of the terminal to `path` as a [`BatchFile`] (JSON; written to a
    /// temporary file, synced, renamed). Returns what was written.
    pub fn export_batch_file(
        &mut self,
        terminal_id: &[u8; 6],
        max_records: usize,
        path: impl AsRef<Path>,
    ) -> Result<BatchFile> {
        while self.seal_batch(terminal_id, max_records)?.is_some() {}
        let file = BatchFile {
            format: BATCH_FILE_FORMAT,
            terminal_id: hex::encode(terminal_id),
            batches: self.open_batches(terminal_id)?,
        };
        write_atomically(path.as_ref(), &file)?;
        Ok(file)
    }
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> PosError {
    PosError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn write_atomically(path: &Path, file: &BatchFile) -> Result<()> {
    let json = serde_json::to_vec_pretty(file).map_err(|e| file_err(path, e))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "batches".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(file_err(path, e));
    }
    if let Ok(d) = File::open(&dir) {
        // Some filesystems refuse fsync on a directory; the rename is atomic there anyway.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a batch file and checks it: format, every batch's hash, and the chain between its
/// batches (the first batch's link to what the back office already holds is the office's to
/// check with [`verify_chain`]).
pub fn read_batch_file(path: impl AsRef<Path>) -> Result<BatchFile> {
    let path = path.as_ref();
    let text = fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let file: BatchFile = serde_json::from_str(&text).map_err(|e| file_err(path, e))?;
    if file.format != BATCH_FILE_FORMAT {
        return Err(file_err(
            path,
            format!("format {} is not {BATCH_FILE_FORMAT}", file.format),
        ));
    }
    if let Some(first) = file.batches.first() {
        first.verify()?;
        let before = first.sequence.checked_sub(1).ok_or(RecordError::Chain {
            sequence: 0,
            why: "sequence 0".into(),
        })?;
        verify_chain(&file.batches, Some((before, first.previous_hash.as_str())))?;
    }
    if let Some(b) = file
        .batches
        .iter()
        .find(|b| b.terminal_id != file.terminal_id)
    {
        return Err(file_err(
            path,
            format!("batch {} is terminal {}'s", b.sequence, b.terminal_id),
        ));
    }
    Ok(file)
}
