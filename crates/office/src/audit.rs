//! The append-only, hash-chained audit log.
//!
//! Every record names who (operator login), where (machine number), what (action and subject),
//! when (milliseconds since the epoch), the outcome (`ok`, `denied`, `failed`) and a detail.
//! Its hash is SHA-256 over a length-prefixed encoding of all those fields, its sequence number
//! and the previous record's hash; the first record's previous hash is 64 zeros. `audit_head`
//! keeps the last sequence number and hash, so removing records from the tail is detected like
//! any other change. [`verify`] walks the chain and names the first broken link.
//!
//! A record is appended inside the transaction of the operation it describes, so an operation
//! and its audit record commit together; a refused or failed operation is recorded in a
//! transaction of its own after the operation's was rolled back.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::args;
use crate::error::{OfficeError, Result};
use crate::store::Tx;

/// The previous hash of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused before anything happened (role, login).
    Denied,
    /// Attempted and rolled back.
    Failed,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// What to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDraft {
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    /// Who (a login; for a refused login, the login typed).
    pub operator_login: String,
    /// From which machine.
    pub machine_number: String,
    /// The action name.
    pub action: String,
    /// What it was about (a card, an operator, a machine…).
    pub subject: String,
    /// How it ended.
    pub outcome: Outcome,
    /// A human-readable detail (never a secret).
    pub detail: String,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    /// Who.
    pub operator_login: String,
    /// From which machine.
    pub machine_number: String,
    /// The action name.
    pub action: String,
    /// What it was about.
    pub subject: String,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    /// Detail.
    pub detail: String,
    /// The previous record's hash (hex).
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
}

type AuditRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

const SELECT_RECORDS: &str = "SELECT seq, at_ms, operator_login, machine_number, action, subject, \
     outcome, detail, prev_hash, hash FROM audit_log";

impl From<AuditRow> for AuditRecord {
    fn from(r: AuditRow) -> Self {
        AuditRecord {
            seq: r.0,
            at_ms: r.1,
            operator_login: r.2,
            machine_number: r.3,
            action: r.4,
            subject: r.5,
            outcome: r.6,
            detail: r.7,
            prev_hash: r.8,
            hash: r.9,
        }
    }
}

/// The hash of a record with these fields (hex SHA-256 over `u32` big-endian length-prefixed
/// fields, in column order, ending with the previous hash).
#[allow(clippy::too_many_arguments)]
pub fn record_hash(
    seq: i64,
    at_ms: i64,
    operator_login: &str,
    machine_number: &str,
    action: &str,
    subject: &str,
    outcome: &str,
    detail: &str,
    prev_hash: &str,
) -> String {
    let mut h = Sha256::new();
    let seq = seq.to_string();
    let at = at_ms.to_string();
    for field in [
        b"iccard-audit-v1".as_slice(),
        seq.as_bytes(),
        at.as_bytes(),
        operator_login.as_bytes(),
        machine_number.as_bytes(),
        action.as_bytes(),
        subject.as_bytes(),
        outcome.as_bytes(),
        detail.as_bytes(),
        prev_hash.as_bytes(),
    ] {
        // Fields are bounded by the database; a field over 4 GiB cannot be stored.
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        h.update(len.to_be_bytes());
        h.update(field);
    }
    hex::encode(h.finalize())
}

impl AuditRecord {
    fn expected_hash(&self) -> String {
        record_hash(
            self.seq,
            self.at_ms,
            &self.operator_login,
            &self.machine_number,
            &self.action,
            &self.subject,
            &self.outcome,
            &self.detail,
            &self.prev_hash,
        )
    }
}

/// Appends a record inside `tx` (which must be a write transaction); returns its sequence number.
pub async fn append(tx: &mut Tx, draft: &AuditDraft) -> Result<i64> {
    let (last_seq, last_hash): (i64, String) = tx
        .fetch_one(
            "SELECT last_seq, last_hash FROM audit_head WHERE id = 1",
            &[],
        )
        .await?;
    let seq = last_seq
        .checked_add(1)
        .ok_or_else(|| OfficeError::Corrupt("audit sequence exhausted".into()))?;
    let outcome = draft.outcome.as_str();
    let hash = record_hash(
        seq,
        draft.at_ms,
        &draft.operator_login,
        &draft.machine_number,
        &draft.action,
        &draft.subject,
        outcome,
        &draft.detail,
        &last_hash,
    );
    tx.execute(
        "INSERT INTO audit_log (seq, at_ms, operator_login, machine_number, action, subject, \
         outcome, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &args![
            seq,
            draft.at_ms,
            &draft.operator_login,
            &draft.machine_number,
            &draft.action,
            &draft.subject,
            outcome,
            &draft.detail,
            last_hash,
            &hash
        ],
    )
    .await?;
    let updated = tx
        .execute(
            "UPDATE audit_head SET last_seq = $1, last_hash = $2 WHERE id = 1 AND last_seq = $3",
            &args![seq, hash, last_seq],
        )
        .await?;
    if updated != 1 {
        return Err(OfficeError::Corrupt(
            "audit head moved during an append".into(),
        ));
    }
    Ok(seq)
}

/// The first broken link of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    /// The sequence number of the first record that fails (for a truncated tail: the first
    /// missing one).
    pub seq: i64,
    /// What is wrong.
    pub reason: String,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Records examined.
    pub records: i64,
    /// The last hash (the chain's fingerprint), if any record exists.
    pub head_hash: String,
    /// The first broken link, if the chain is not intact.
    pub broken: Option<BrokenLink>,
}

impl ChainReport {
    /// Whether the chain is intact.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Verifies the whole chain inside `tx`: contiguous sequence numbers from 1, each record's
/// previous hash equal to its predecessor's hash, each hash recomputed, and the head matching
/// the last record.
pub async fn verify(tx: &mut Tx) -> Result<ChainReport> {
    let rows: Vec<AuditRow> = tx
        .fetch_all(&format!("{SELECT_RECORDS} ORDER BY seq"), &[])
        .await?;
    let (head_seq, head_hash): (i64, String) = tx
        .fetch_one(
            "SELECT last_seq, last_hash FROM audit_head WHERE id = 1",
            &[],
        )
        .await?;
    let mut expected_prev = GENESIS_HASH.to_owned();
    let mut expected_seq = 1i64;
    let mut records = 0i64;
    let broken = |seq: i64, reason: String| Some(BrokenLink { seq, reason });
    for row in rows {
        let rec = AuditRecord::from(row);
        records += 1;
        let problem = if rec.seq != expected_seq {
            broken(
                expected_seq,
                format!(
                    "record {expected_seq} is missing (next stored is {})",
                    rec.seq
                ),
            )
        } else if rec.prev_hash != expected_prev {
            broken(
                rec.seq,
                format!(
                    "its previous hash does not match record {}'s hash",
                    rec.seq - 1
                ),
            )
        } else if rec.hash != rec.expected_hash() {
            broken(
                rec.seq,
                "its contents do not match its hash (the record was changed)".into(),
            )
        } else {
            None
        };
        if problem.is_some() {
            return Ok(ChainReport {
                records,
                head_hash,
                broken: problem,
            });
        }
        expected_prev = rec.hash;
        expected_seq += 1;
    }
    let last_seq = expected_seq - 1;
    let broken = if head_seq != last_seq {
        broken(
            last_seq + 1,
            format!("the head says {head_seq} records but {last_seq} are stored (records were removed or the head was changed)"),
        )
    } else if head_hash != expected_prev {
        broken(
            last_seq,
            "the head's hash does not match the last record's hash".into(),
        )
    } else {
        None
    };
    Ok(ChainReport {
        records,
        head_hash,
        broken,
    })
}

/// Reads records with `seq` greater than `after_seq`, oldest first, at most `limit`.
pub async fn list(tx: &mut Tx, after_seq: i64, limit: i64) -> Result<Vec<AuditRecord>> {
    let rows: Vec<AuditRow> = tx
        .fetch_all(
            &format!("{SELECT_RECORDS} WHERE seq > $1 ORDER BY seq LIMIT $2"),
            &args![after_seq, limit],
        )
        .await?;
    Ok(rows.into_iter().map(AuditRecord::from).collect())
}
