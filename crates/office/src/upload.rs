//! Uploads of offline purchases: merchants, terminals allowed to upload (terminal id, merchant,
//! upload token) and the ingest of [`Batch`]es, the wire format of `iccard_pos::record`.
//!
//! **Terminals.** A registered terminal machine is assigned the terminal id of its PSAM
//! (12 hex digits) and a merchant ([`Office::assign_terminal`]). The assignment draws a random
//! upload token, shown once (`<terminal id>.<64 hex digits>`); only its SHA-256 is stored, and
//! [`Office::authenticate_terminal`] compares hashes in constant time. Assigning again rotates
//! the token and keeps the terminal's batch chain.
//!
//! **Ingest** ([`Office::ingest_batch`], one write transaction per batch): the batch's own hash
//! ([`Batch::verify`]), then its link to the terminal's last accepted batch — the next
//! sequence and its predecessor's hash. A gap, a reordering or a fork is refused with a precise
//! [`UploadError::Chain`] and nothing is stored; a batch received before (same sequence, same
//! hash) answers the results it was answered then, byte for byte. Each record is then answered
//! one [`ResultCode`], checked in this order (the first that applies wins, which is the order
//! of precedence of `ResultCode`'s declaration):
//!
//! 1. the key (terminal id, terminal serial) is held already: same content → `exists` (or, if
//!    the record held was not accepted, the code it was answered); other content →
//!    `exists_with_different_content` and a `duplicate_different_content` case;
//! 2. the record does not read (`malformed`: bad hex, date, time, type, algorithm, a pending
//!    status, an amount above the balance) — checked before the TAC because nothing can be
//!    verified on an unreadable record;
//! 3. a debited record (normal, recovered, suspicious) whose TAC does not verify through the
//!    keystore, or that has none → `tac_invalid` and a `tac_invalid` case;
//! 4. the application serial has no account here → `unknown_card`;
//! 5. the card was on the loss list at the purchase's time → `listed_card` and a
//!    `listed_card` case; **the record is still settled** when its TAC verified: the money
//!    left the card, the merchant gave the goods, and the late-record window exists for these;
//! 6. otherwise `ok`.
//!
//! `failed` records (no money moved) are answered `ok` once readable and kept as witnesses of
//! the terminal serials; they are never settled.

use std::collections::BTreeMap;

use iccard_crypto::{ct_eq, PurseAlg};
use iccard_pos::record::{Batch, BatchFile, BatchResults, PurchaseRecord, RecordResult};
use iccard_pos::{RecordStatus, ResultCode, GENESIS_HASH};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::args;
use crate::audit::{self, AuditDraft, Outcome};
use crate::error::OfficeError;
use crate::keystore::{CardKey, Keystore, TacInput};
use crate::machines::{self, MachineKind};
use crate::office::Office;
use crate::operators::{Action, Session};
use crate::settlement::{open_case, CaseKind, NewCase};
use crate::store::Tx;

/// Why an upload was refused as a whole (nothing of it was stored).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No terminal holds this token.
    #[error("the upload token is not a terminal's: check the token shown by `iccard office settlement terminal assign`")]
    Unauthorized,
    /// The batch names a terminal that may not upload (unknown, retired, or not the token's).
    #[error("terminal {terminal_id}: {why}")]
    Terminal {
        /// The terminal id.
        terminal_id: String,
        /// What is wrong.
        why: String,
    },
    /// The batch does not follow the terminal's last accepted batch.
    #[error("terminal {terminal_id} batch {sequence}: {why}; nothing was stored")]
    Chain {
        /// The terminal id.
        terminal_id: String,
        /// The batch.
        sequence: u64,
        /// What is wrong.
        why: String,
    },
    /// The batch cannot be read or its hash does not match its content.
    #[error("batch not accepted: {0}; nothing was stored")]
    Malformed(String),
    /// The back office failed.
    #[error(transparent)]
    Office(#[from] OfficeError),
}

/// A merchant: the owner of terminals, paid from the merchant payable account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Merchant {
    /// Id.
    pub id: i64,
    /// Short code.
    pub code: String,
    /// Name.
    pub name: String,
}

/// A terminal allowed to upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadTerminal {
    /// The terminal machine's number.
    pub machine_number: String,
    /// Its machine id.
    pub machine_id: i64,
    /// The PSAM's terminal id (12 uppercase hex digits).
    pub terminal_id: String,
    /// The merchant's code.
    pub merchant_code: String,
    /// The merchant's id.
    pub merchant_id: i64,
    /// The last batch accepted (0 before any).
    pub last_sequence: u64,
    /// Its hash ([`GENESIS_HASH`] before any).
    pub last_hash: String,
}

/// What an assignment returns: the terminal and its upload token, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TerminalAssignment {
    /// The terminal.
    pub terminal: UploadTerminal,
    /// The bearer token (never stored; only its SHA-256 is).
    pub token: String,
}

/// How a batch reached the office.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /v1/batches`.
    Http,
    /// A batch file carried by hand, imported by an operator.
    File,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::File => "file",
        }
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a terminal id: 12 hex digits; returns it uppercase.
pub fn normalize_terminal_id(s: &str) -> Result<String, OfficeError> {
    if is_hex(s, 12) {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(OfficeError::Invalid {
            what: "terminal id",
            why: format!("{s:?}: use the PSAM's 6-byte terminal id as 12 hexadecimal digits"),
        })
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (`YYYY-MM-DD`) of a time in ms since the epoch (UTC).
pub(crate) fn date_of_ms(ms: i64) -> String {
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Checks a business date `YYYY-MM-DD`.
pub fn validate_date(s: &str) -> Result<(), OfficeError> {
    let b = s.as_bytes();
    let ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && parse_ymd(&format!("{}{}{}", &s[0..4], &s[5..7], &s[8..10])).is_some();
    if ok {
        Ok(())
    } else {
        Err(OfficeError::Invalid {
            what: "date",
            why: format!("{s:?}: use YYYY-MM-DD"),
        })
    }
}

fn parse_ymd(date: &str) -> Option<(i64, i64, i64)> {
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = date[0..4].parse().ok()?;
    let m: i64 = date[4..6].parse().ok()?;
    let d: i64 = date[6..8].parse().ok()?;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (y >= 1 && (1..=days).contains(&d)).then_some((y, m, d))
}

/// A record's fields, read and checked.
struct Readable {
    terminal_id: [u8; 6],
    serial: [u8; 10],
    when: [u8; 7],
    tac: Option<[u8; 4]>,
    alg: PurseAlg,
    at_ms: i64,
    business_date: String,
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    if !is_hex(s, N * 2) {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

/// Reads a record, or says why it is malformed.
fn read_record(r: &PurchaseRecord) -> Result<Readable, String> {
    let terminal_id = hex_array::<6>(&r.terminal_id).ok_or("terminal id is not 12 hex digits")?;
    let serial =
        hex_array::<10>(&r.application_serial).ok_or("application serial is not 20 hex digits")?;
    if r.card_number.is_empty()
        || r.card_number.len() > 20
        || !r.card_number.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("card number is not 1 to 20 decimal digits".into());
    }
    let (y, m, d) = parse_ymd(&r.date).ok_or("date is not a YYYYMMDD date")?;
    let t = &r.time;
    let time_ok = t.len() == 6
        && t.bytes().all(|b| b.is_ascii_digit())
        && t[0..2].parse::<u8>().is_ok_and(|h| h < 24)
        && t[2..4].parse::<u8>().is_ok_and(|m| m < 60)
        && t[4..6].parse::<u8>().is_ok_and(|s| s < 60);
    if !time_ok {
        return Err("time is not an HHMMSS time".into());
    }
    if r.tx_type != 0x06 {
        return Err(format!(
            "transaction type {:02X} is not a purse purchase (06)",
            r.tx_type
        ));
    }
    let alg = PurseAlg::from_id(r.alg_id)
        .ok_or_else(|| format!("algorithm id {:02X} is not 00 (3DES) or 04 (SM4)", r.alg_id))?;
    let tac = match &r.tac {
        None => None,
        Some(t) => Some(hex_array::<4>(t).ok_or("TAC is not 8 hex digits")?),
    };
    if r.mac2.as_deref().is_some_and(|m| !is_hex(m, 8)) {
        return Err("MAC2 is not 8 hex digits".into());
    }
    match r.status {
        RecordStatus::Pending => return Err("a pending record has no outcome yet".into()),
        s if s.debited() => {
            if r.amount_fen == 0 {
                return Err("a debited purchase of 0".into());
            }
            if r.amount_fen > r.balance_before_fen {
                return Err(format!(
                    "amount {} above the card's balance before {}",
                    r.amount_fen, r.balance_before_fen
                ));
            }
        }
        _ => {}
    }
    let mut when = [0u8; 7];
    when[..4].copy_from_slice(&hex::decode(&r.date).map_err(|e| e.to_string())?);
    when[4..].copy_from_slice(&hex::decode(&r.time).map_err(|e| e.to_string())?);
    let secs = i64::from(t[0..2].parse::<u8>().unwrap_or(0)) * 3600
        + i64::from(t[2..4].parse::<u8>().unwrap_or(0)) * 60
        + i64::from(t[4..6].parse::<u8>().unwrap_or(0));
    let at_ms = (days_from_civil(y, m, d) * 86_400 + secs) * 1000;
    Ok(Readable {
        terminal_id,
        serial,
        when,
        tac,
        alg,
        at_ms,
        business_date: format!("{y:04}-{m:02}-{d:02}"),
    })
}

/// Whether the TAC of a debited record verifies (`Err`: why it cannot be verified).
fn tac_verifies<K: Keystore + ?Sized>(
    keys: &K,
    r: &PurchaseRecord,
    x: &Readable,
) -> Result<bool, String> {
    let Some(tac) = x.tac else {
        return Err("a debited purchase without a TAC".into());
    };
    let mut diversifier = [0u8; 8];
    diversifier.copy_from_slice(&x.serial[2..]);
    let card = CardKey {
        diversifier,
        key_version: r.key_version,
        alg: x.alg,
    };
    let input = TacInput::Purchase {
        amount: r.amount_fen,
        terminal_id: x.terminal_id,
        terminal_serial: r.terminal_serial,
        when: x.when,
    };
    keys.verify_tac(&card, &input, &tac)
        .map_err(|e| e.to_string())
}

/// The terminal row behind a terminal id.
pub(crate) async fn terminal_by_id(
    tx: &mut Tx,
    terminal_id: &str,
) -> Result<Option<UploadTerminal>, OfficeError> {
    let row: Option<(String, i64, String, String, i64, i64, String)> = tx
        .fetch_optional(
            "SELECT m.machine_number, t.machine_id, t.terminal_id, me.code, t.merchant_id, \
             t.last_sequence, t.last_hash FROM settlement_terminals t \
             JOIN machines m ON m.id = t.machine_id JOIN merchants me ON me.id = t.merchant_id \
             WHERE t.terminal_id = $1",
            &args![terminal_id],
        )
        .await?;
    Ok(row.map(|r| UploadTerminal {
        machine_number: r.0,
        machine_id: r.1,
        terminal_id: r.2,
        merchant_code: r.3,
        merchant_id: r.4,
        last_sequence: u64::try_from(r.5).unwrap_or(0),
        last_hash: r.6,
    }))
}

/// Whether the card was on the loss list at `at_ms` (its last change at or before then is an
/// `add`).
async fn listed_at(tx: &mut Tx, card_id: i64, at_ms: i64) -> Result<bool, OfficeError> {
    let row: Option<(String,)> = tx
        .fetch_optional(
            "SELECT action FROM loss_list WHERE card_id = $1 AND at_ms <= $2 \
             ORDER BY version DESC LIMIT 1",
            &args![card_id, at_ms],
        )
        .await?;
    Ok(row.is_some_and(|(a,)| a == "add"))
}

fn to_i64(v: u64, what: &str) -> Result<i64, OfficeError> {
    i64::try_from(v).map_err(|_| OfficeError::AmountOutOfRange(format!("{what} {v}")))
}

impl Office {
    /// Adds a merchant (administrators).
    pub async fn add_merchant(
        &self,
        s: &Session,
        code: &str,
        name: &str,
    ) -> Result<Merchant, OfficeError> {
        let subject = format!("merchant {code}");
        let (mut tx, at) = self.begin(s, Action::ManageMerchants, &subject).await?;
        let result = async {
            machines::validate_code("merchant code", code)?;
            let n = name.chars().count();
            if n == 0 || n > 100 || name.chars().any(char::is_control) {
                return Err(OfficeError::Invalid {
                    what: "merchant name",
                    why: "give 1 to 100 characters, no control characters".into(),
                });
            }
            let exists: Option<(i64,)> = tx
                .fetch_optional("SELECT id FROM merchants WHERE code = $1", &args![code])
                .await?;
            if exists.is_some() {
                return Err(OfficeError::Duplicate {
                    what: "merchant",
                    key: code.into(),
                });
            }
            let id = tx.next_id("merchant").await?;
            tx.execute(
                "INSERT INTO merchants (id, code, name, created_at_ms) VALUES ($1, $2, $3, $4)",
                &args![id, code, name, at],
            )
            .await?;
            Ok((
                Merchant {
                    id,
                    code: code.into(),
                    name: name.into(),
                },
                format!("name {name}"),
            ))
        }
        .await;
        self.finish(s, Action::ManageMerchants, &subject, at, tx, result)
            .await
    }

    /// Every merchant, by code.
    pub async fn merchants(&self) -> Result<Vec<Merchant>, OfficeError> {
        let mut tx = self.store().read().await?;
        let rows: Vec<(i64, String, String)> = tx
            .fetch_all("SELECT id, code, name FROM merchants ORDER BY code", &[])
            .await?;
        tx.rollback().await?;
        Ok(rows
            .into_iter()
            .map(|(id, code, name)| Merchant { id, code, name })
            .collect())
    }

    /// Every terminal allowed to upload, by terminal id.
    pub async fn upload_terminals(&self) -> Result<Vec<UploadTerminal>, OfficeError> {
        let mut tx = self.store().read().await?;
        let ids: Vec<(String,)> = tx
            .fetch_all(
                "SELECT terminal_id FROM settlement_terminals ORDER BY terminal_id",
                &[],
            )
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id,) in ids {
            if let Some(t) = terminal_by_id(&mut tx, &id).await? {
                out.push(t);
            }
        }
        tx.rollback().await?;
        Ok(out)
    }

    /// Assigns a registered terminal machine its PSAM's terminal id and a merchant, and draws a
    /// new upload token (shown once; a second assignment rotates it and keeps the chain).
    pub async fn assign_terminal(
        &self,
        s: &Session,
        machine_number: &str,
        terminal_id: &str,
        merchant_code: &str,
    ) -> Result<TerminalAssignment, OfficeError> {
        let subject = format!("machine {machine_number}");
        let (mut tx, at) = self.begin(s, Action::ManageMerchants, &subject).await?;
        let result =
            async {
                let terminal_id = normalize_terminal_id(terminal_id)?;
                let m = machines::machine(&mut tx, machine_number).await?;
                if m.kind != MachineKind::Terminal {
                    return Err(OfficeError::WrongMachine {
                        machine_number: m.machine_number,
                        actual: m.kind.as_str(),
                        needed: MachineKind::Terminal.as_str(),
                    });
                }
                if !m.active {
                    return Err(OfficeError::Invalid {
                        what: "machine",
                        why: format!("{machine_number} is retired"),
                    });
                }
                let merchant: Option<(i64,)> = tx
                    .fetch_optional(
                        "SELECT id FROM merchants WHERE code = $1",
                        &args![merchant_code],
                    )
                    .await?;
                let (merchant_id,) = merchant.ok_or_else(|| OfficeError::NotFound {
                    what: "merchant",
                    key: merchant_code.into(),
                })?;
                let other: Option<(i64,)> = tx
                    .fetch_optional(
                        "SELECT machine_id FROM settlement_terminals WHERE terminal_id = $1",
                        &args![&terminal_id],
                    )
                    .await?;
                if other.is_some_and(|(id,)| id != m.id) {
                    return Err(OfficeError::Duplicate {
                        what: "terminal id",
                        key: terminal_id.clone(),
                    });
                }
                let mut secret = [0u8; 32];
                getrandom::getrandom(&mut secret).map_err(|e| OfficeError::Invalid {
                    what: "upload token",
                    why: format!("no randomness: {e}"),
                })?;
                let token = format!("{terminal_id}.{}", hex::encode(secret));
                let token_hash = sha256_hex(token.as_bytes());
                let held: Option<(String,)> = tx
                    .fetch_optional(
                        "SELECT terminal_id FROM settlement_terminals WHERE machine_id = $1",
                        &args![m.id],
                    )
                    .await?;
                match held {
                    Some((old,)) if old != terminal_id => {
                        return Err(OfficeError::Invalid {
                            what: "terminal id",
                            why: format!(
                                "machine {machine_number} already uploads as terminal {old}; \
                             register a new machine for a new PSAM"
                            ),
                        })
                    }
                    Some(_) => {
                        tx.execute(
                            "UPDATE settlement_terminals SET merchant_id = $1, token_hash = $2, \
                         assigned_at_ms = $3 WHERE machine_id = $4",
                            &args![merchant_id, &token_hash, at, m.id],
                        )
                        .await?;
                    }
                    None => {
                        tx.execute(
                        "INSERT INTO settlement_terminals (machine_id, terminal_id, merchant_id, \
                         token_hash, assigned_at_ms, last_sequence, last_hash) \
                         VALUES ($1, $2, $3, $4, $5, 0, $6)",
                        &args![m.id, &terminal_id, merchant_id, &token_hash, at, GENESIS_HASH],
                    )
                    .await?;
                    }
                }
                let terminal = terminal_by_id(&mut tx, &terminal_id)
                    .await?
                    .ok_or_else(|| OfficeError::Corrupt("terminal row just written".into()))?;
                let detail = format!(
                    "terminal id {terminal_id}, merchant {merchant_code}, new upload token"
                );
                Ok((TerminalAssignment { terminal, token }, detail))
            }
            .await;
        self.finish(s, Action::ManageMerchants, &subject, at, tx, result)
            .await
    }

    /// The terminal an upload token belongs to (hashes compared in constant time).
    pub async fn authenticate_terminal(&self, token: &str) -> Result<UploadTerminal, UploadError> {
        let Some((terminal_id, _)) = token.split_once('.') else {
            return Err(UploadError::Unauthorized);
        };
        if !is_hex(terminal_id, 12) {
            return Err(UploadError::Unauthorized);
        }
        let mut tx = self.store().read().await.map_err(UploadError::Office)?;
        let row: Option<(String, String)> = tx
            .fetch_optional(
                "SELECT t.token_hash, m.state FROM settlement_terminals t \
                 JOIN machines m ON m.id = t.machine_id WHERE t.terminal_id = $1",
                &args![terminal_id],
            )
            .await?;
        let t = terminal_by_id(&mut tx, terminal_id).await?;
        tx.rollback().await?;
        let presented = sha256_hex(token.as_bytes());
        match (row, t) {
            (Some((stored, state)), Some(t))
                if ct_eq(stored.as_bytes(), presented.as_bytes()) && state == "active" =>
            {
                Ok(t)
            }
            _ => Err(UploadError::Unauthorized),
        }
    }

    /// Ingests a terminal's batch (module documentation): chain checked, every record answered,
    /// cases opened, all in one transaction. The batch's terminal must be assigned.
    pub async fn ingest_batch<K: Keystore + ?Sized>(
        &self,
        keys: &K,
        batch: &Batch,
    ) -> Result<BatchResults, UploadError> {
        self.ingest(keys, batch, Source::Http, None).await
    }

    /// Imports a batch file carried by hand (administrators): its batches in order, each as
    /// [`Office::ingest_batch`] would (a batch answered before answers the same again). Stops
    /// at the first batch refused as a whole.
    pub async fn import_batch_file<K: Keystore + ?Sized>(
        &self,
        s: &Session,
        keys: &K,
        file: &BatchFile,
    ) -> Result<Vec<BatchResults>, UploadError> {
        let subject = format!("terminal {}", file.terminal_id);
        let (tx, _) = self.begin(s, Action::ImportBatches, &subject).await?;
        tx.rollback().await?;
        if file.format != iccard_pos::BATCH_FILE_FORMAT {
            return Err(UploadError::Malformed(format!(
                "batch file format {} is not {}",
                file.format,
                iccard_pos::BATCH_FILE_FORMAT
            )));
        }
        let mut out = Vec::with_capacity(file.batches.len());
        for b in &file.batches {
            if b.terminal_id != file.terminal_id {
                return Err(UploadError::Malformed(format!(
                    "batch {} belongs to terminal {}, the file to {}",
                    b.sequence, b.terminal_id, file.terminal_id
                )));
            }
            out.push(self.ingest(keys, b, Source::File, Some(s)).await?);
        }
        Ok(out)
    }

    async fn ingest<K: Keystore + ?Sized>(
        &self,
        keys: &K,
        batch: &Batch,
        source: Source,
        by: Option<&Session>,
    ) -> Result<BatchResults, UploadError> {
        batch
            .verify()
            .map_err(|e| UploadError::Malformed(e.to_string()))?;
        let at = self.now_ms();
        let mut tx = self.store().write().await?;
        let terminal = terminal_by_id(&mut tx, &batch.terminal_id.to_ascii_uppercase())
            .await?
            .filter(|t| t.terminal_id == batch.terminal_id)
            .ok_or_else(|| UploadError::Terminal {
                terminal_id: batch.terminal_id.clone(),
                why: "not assigned to a terminal machine (`iccard office settlement terminal assign`)"
                    .into(),
            })?;
        let chain = |why: String| UploadError::Chain {
            terminal_id: batch.terminal_id.clone(),
            sequence: batch.sequence,
            why,
        };
        if batch.sequence <= terminal.last_sequence {
            let seq = to_i64(batch.sequence, "sequence")?;
            let stored: Option<(String, String)> = tx
                .fetch_optional(
                    "SELECT hash, results FROM upload_batches WHERE terminal_id = $1 AND sequence = $2",
                    &args![&terminal.terminal_id, seq],
                )
                .await?;
            return match stored {
                Some((hash, results)) if hash == batch.hash => {
                    tx.rollback().await?;
                    serde_json::from_str(&results).map_err(|e| {
                        UploadError::Office(OfficeError::Corrupt(format!(
                            "stored results of batch {seq}: {e}"
                        )))
                    })
                }
                Some((hash, _)) => Err(chain(format!(
                    "batch {seq} was received before with hash {hash}, this one has {} (a fork: \
                     the terminal rebuilt a batch it had sent)",
                    batch.hash
                ))),
                None => Err(chain(format!(
                    "sequence {seq} is at or below the last accepted {} but was never received",
                    terminal.last_sequence
                ))),
            };
        }
        let expected = terminal.last_sequence + 1;
        if batch.sequence != expected {
            return Err(chain(format!(
                "expected sequence {expected} (the last accepted is {}): a batch is missing \
                 or the batches arrive out of order; send batch {expected} first",
                terminal.last_sequence
            )));
        }
        if batch.previous_hash != terminal.last_hash {
            return Err(chain(format!(
                "its previous hash {} is not the hash {} of batch {} (the chain is broken)",
                batch.previous_hash, terminal.last_hash, terminal.last_sequence
            )));
        }
        let mut keys_seen = BTreeMap::new();
        for r in &batch.records {
            if keys_seen.insert(r.terminal_serial, ()).is_some() {
                return Err(UploadError::Malformed(format!(
                    "terminal serial {} appears twice in batch {}",
                    r.terminal_serial, batch.sequence
                )));
            }
        }
        let batch_id = tx.next_id("upload_batch").await?;
        tx.execute(
            "INSERT INTO upload_batches (id, terminal_id, sequence, hash, previous_hash, \
             record_count, results, source, received_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, '', $7, $8)",
            &args![
                batch_id,
                &terminal.terminal_id,
                to_i64(batch.sequence, "sequence")?,
                &batch.hash,
                &batch.previous_hash,
                to_i64(batch.records.len() as u64, "record count")?,
                source.as_str(),
                at
            ],
        )
        .await?;
        let mut results = Vec::with_capacity(batch.records.len());
        let mut counts: BTreeMap<ResultCode, usize> = BTreeMap::new();
        let mut cases = 0usize;
        let received_date = crate::upload::date_of_ms(at);
        for r in &batch.records {
            let (code, opened) = self
                .ingest_record(&mut tx, keys, &terminal, batch_id, r, at, &received_date)
                .await?;
            cases += opened;
            *counts.entry(code).or_default() += 1;
            results.push(RecordResult {
                terminal_serial: r.terminal_serial,
                code,
            });
        }
        let answer = BatchResults {
            terminal_id: batch.terminal_id.clone(),
            sequence: batch.sequence,
            hash: batch.hash.clone(),
            results,
        };
        let answer_json = serde_json::to_string(&answer)
            .map_err(|e| OfficeError::Corrupt(format!("results do not encode: {e}")))?;
        tx.execute(
            "UPDATE upload_batches SET results = $1 WHERE id = $2",
            &args![answer_json, batch_id],
        )
        .await?;
        tx.execute(
            "UPDATE settlement_terminals SET last_sequence = $1, last_hash = $2 WHERE machine_id = $3",
            &args![
                to_i64(batch.sequence, "sequence")?,
                &batch.hash,
                terminal.machine_id
            ],
        )
        .await?;
        let summary = counts
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (login, action) = match by {
            Some(s) => (s.login.clone(), Action::ImportBatches),
            None => (
                format!("terminal:{}", terminal.terminal_id),
                Action::UploadBatch,
            ),
        };
        audit::append(
            &mut tx,
            &AuditDraft {
                at_ms: at,
                operator_login: login,
                machine_number: terminal.machine_number.clone(),
                action: action.as_str().into(),
                subject: format!("terminal {} batch {}", terminal.terminal_id, batch.sequence),
                outcome: Outcome::Ok,
                detail: format!(
                    "{} record(s) via {}: {summary}; {cases} case(s) opened",
                    batch.records.len(),
                    source.as_str()
                ),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(answer)
    }

    /// Answers one record, stores it and opens its case; returns the code and cases opened.
    #[allow(clippy::too_many_arguments)]
    async fn ingest_record<K: Keystore + ?Sized>(
        &self,
        tx: &mut Tx,
        keys: &K,
        terminal: &UploadTerminal,
        batch_id: i64,
        r: &PurchaseRecord,
        at: i64,
        received_date: &str,
    ) -> Result<(ResultCode, usize), UploadError> {
        let content = serde_json::to_string(r)
            .map_err(|e| OfficeError::Corrupt(format!("record does not encode: {e}")))?;
        let serial = i64::from(r.terminal_serial);
        let held: Option<(i64, String, String, String)> = tx
            .fetch_optional(
                "SELECT id, content, code, business_date FROM offline_records \
                 WHERE terminal_id = $1 AND terminal_serial = $2",
                &args![&terminal.terminal_id, serial],
            )
            .await?;
        if let Some((id, held_content, held_code, date)) = held {
            if held_content == content {
                let code = ResultCode::parse(&held_code).unwrap_or(ResultCode::Malformed);
                let code = if code.accepted() || code == ResultCode::ListedCard {
                    ResultCode::Exists
                } else {
                    code
                };
                return Ok((code, 0));
            }
            let opened = open_case(
                tx,
                &NewCase {
                    kind: CaseKind::DuplicateDifferentContent,
                    key: format!(
                        "ddc:{}:{}:{}",
                        terminal.terminal_id,
                        r.terminal_serial,
                        &sha256_hex(content.as_bytes())[..16]
                    ),
                    terminal_id: Some(terminal.terminal_id.clone()),
                    card_id: None,
                    application_serial: Some(r.application_serial.clone()),
                    record_id: Some(id),
                    evidence: Some(content.clone()),
                    detail: format!(
                        "terminal {} serial {} was received before with other content",
                        terminal.terminal_id, r.terminal_serial
                    ),
                    business_date: date,
                    at_ms: at,
                },
            )
            .await?;
            return Ok((ResultCode::ExistsWithDifferentContent, usize::from(opened)));
        }
        let readable = read_record(r);
        let (code, why, card_id, state, date, at_ms) = match &readable {
            Err(why) => (
                ResultCode::Malformed,
                Some(why.clone()),
                None,
                "refused",
                received_date.to_owned(),
                None,
            ),
            Ok(x) => {
                let card: Option<(i64,)> = tx
                    .fetch_optional(
                        "SELECT id FROM cards WHERE application_serial = $1",
                        &args![r.application_serial.to_ascii_uppercase()],
                    )
                    .await?;
                let card_id = card.map(|(id,)| id);
                let debited = r.status.debited();
                let tac = if debited {
                    match tac_verifies(keys, r, x) {
                        Ok(true) => None,
                        Ok(false) => Some("the TAC does not verify".to_owned()),
                        Err(why) => Some(format!("the TAC cannot be verified: {why}")),
                    }
                } else {
                    None
                };
                let (code, why, state) = if let Some(why) = tac {
                    (ResultCode::TacInvalid, Some(why), "refused")
                } else if let Some(id) = card_id {
                    if debited && listed_at(tx, id, x.at_ms).await? {
                        (
                            ResultCode::ListedCard,
                            Some("the card was on the loss list at the purchase's time; the TAC verified, so it is settled".into()),
                            "unsettled",
                        )
                    } else if debited {
                        (ResultCode::Ok, None, "unsettled")
                    } else {
                        (ResultCode::Ok, None, "no_money")
                    }
                } else {
                    (
                        ResultCode::UnknownCard,
                        Some("no account for this application serial".into()),
                        "refused",
                    )
                };
                (
                    code,
                    why,
                    card_id,
                    state,
                    x.business_date.clone(),
                    Some(x.at_ms),
                )
            }
        };
        let id = tx.next_id("offline_record").await?;
        tx.execute(
            "INSERT INTO offline_records (id, terminal_id, terminal_serial, batch_id, machine_id, \
             merchant_id, content, code, card_id, application_serial, offline_serial, \
             amount_minor, balance_before_minor, status, business_date, purchase_at_ms, state, \
             received_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15, $16, $17, $18)",
            &args![
                id,
                &terminal.terminal_id,
                serial,
                batch_id,
                terminal.machine_id,
                terminal.merchant_id,
                &content,
                code.as_str(),
                card_id,
                r.application_serial.to_ascii_uppercase(),
                i64::from(r.offline_serial),
                i64::from(r.amount_fen),
                i64::from(r.balance_before_fen),
                r.status.as_str(),
                &date,
                at_ms,
                state,
                at
            ],
        )
        .await?;
        let kind = match code {
            ResultCode::TacInvalid => Some(CaseKind::TacInvalid),
            ResultCode::ListedCard => Some(CaseKind::ListedCard),
            _ => None,
        };
        let mut opened = 0;
        if let Some(kind) = kind {
            let new = NewCase {
                kind,
                key: format!("{}:{id}", kind.as_str()),
                terminal_id: Some(terminal.terminal_id.clone()),
                card_id,
                application_serial: Some(r.application_serial.clone()),
                record_id: Some(id),
                evidence: None,
                detail: format!(
                    "terminal {} serial {}: {}",
                    terminal.terminal_id,
                    r.terminal_serial,
                    why.unwrap_or_default()
                ),
                business_date: date,
                at_ms: at,
            };
            opened = usize::from(open_case(tx, &new).await?);
        }
        Ok((code, opened))
    }
}
