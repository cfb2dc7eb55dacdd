//! `iccard terminal run ...`: the offline point of use on the command line — sales and metered
//! use journaled in the terminal's SQLite file, the loss list kept current (from a delta file or
//! the back office), records uploaded store-and-forward or exported to a file carried by hand,
//! and the journal shown. The work is `iccard-pos`'s; this module parses, talks HTTP and prints.
//!
//! Exit codes: 0 done; 1 the operation ran and failed (a listed card, a stale loss list, a card
//! or PSAM refusal, a lost answer, the back office unreachable or refusing, a suspicious
//! record); 2 usage or input errors (bad options, unreadable files, a missing token).
//!
//! One journal belongs to one PSAM (terminal id): a sale with another PSAM is refused, and the
//! upload and export find the terminal id in the journal. Docs: `docs/TERMINAL.md`.

use super::reader::OpenCard;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use iccard_apdu::hex;
use iccard_pos::{
    seconds_of, Batch, BatchResults, DeltaOutcome, Journal, JournalRecord, LossList, LossListDelta,
    PointOfUse, PosConfig, PosError, RecordStatus, Resolution, Stop, Tick, UploadState,
    UploadSummary,
};
use iccard_terminal::{Psam, TerminalError, TransactionTime};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// The environment variable holding the terminal's token for the back office, by default.
pub const DEFAULT_TOKEN_ENV: &str = "ICCARD_TERMINAL_TOKEN";

/// `iccard terminal run` subcommands.
#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// Sell once: the card checked against the loss list (refused when listed, or when the
    /// list is too old), its purchases left pending by an interruption settled first, then one
    /// purchase journaled before the debit leaves.
    Sell(SellArgs),
    /// A metered session (a phone call): one purchase of the tariff per unit, up to --units or
    /// until the balance no longer covers the next unit.
    Meter(MeterArgs),
    /// Bring the loss list forward: a delta file (`iccard office loss list --since N --json`)
    /// or the back office over HTTP (`GET {URL}/v1/loss-list?since=N`).
    List(ListArgs),
    /// Store and forward: send the journal's finished records in batches to the back office
    /// (`POST {URL}/v1/batches`) until none is left, applying its answers.
    Upload(UploadArgs),
    /// For a terminal never online: write every unanswered batch to a file carried by hand.
    Export(ExportArgs),
    /// Apply the back office's answers carried back by hand (one `BatchResults` or a list).
    ImportAnswers(ImportArgs),
    /// The journal: every purchase with its status and upload state.
    Journal(ShowArgs),
    /// Counts, the loss list's version and age, pending rows, batches not yet answered.
    Status(StatusArgs),
}

/// Where the card and the PSAM are.
#[derive(Debug, Args)]
pub struct Devices {
    /// Card image file.
    #[arg(long, value_name = "IMG", required_unless_present = "reader")]
    card: Option<PathBuf>,
    /// PC/SC reader holding the card, in place of --card (see `iccard reader list`).
    #[arg(long, value_name = "NAME", conflicts_with = "card")]
    reader: Option<String>,
    /// The terminal's PSAM image file (it gives the terminal id).
    #[arg(long, value_name = "IMG", required_unless_present = "sam_reader")]
    sam: Option<PathBuf>,
    /// PC/SC reader holding the PSAM, in place of --sam.
    #[arg(long, value_name = "NAME", conflicts_with = "sam")]
    sam_reader: Option<String>,
}

/// How the point of use works.
#[derive(Debug, Args)]
pub struct Policy {
    /// The loss list's maximum age for selling offline, in seconds: an older list (or one
    /// never updated) refuses every sale until `run list` brings it forward.
    #[arg(long, value_name = "SECS", default_value_t = 86_400)]
    max_list_age: u64,
    /// The purse key index for purchases.
    #[arg(long, value_name = "N", default_value_t = 1)]
    key_index: u8,
}

/// A transaction's date and time.
#[derive(Debug, Args)]
pub struct When {
    /// Date YYYYMMDD (default: today, UTC).
    #[arg(long)]
    date: Option<String>,
    /// Time HHMMSS (default: now, UTC).
    #[arg(long)]
    time: Option<String>,
}

/// The back office's address and this terminal's credentials.
#[derive(Debug, Args)]
pub struct Server {
    /// The environment variable holding this terminal's token (sent as `Authorization:
    /// Bearer`); the token is never taken on the command line.
    #[arg(long, value_name = "VAR", default_value = DEFAULT_TOKEN_ENV)]
    token_env: String,
    /// Seconds to wait for the back office (connect and each read or write).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
}

/// `run sell`.
#[derive(Debug, Args)]
pub struct SellArgs {
    /// The terminal's journal (an SQLite file, created on first use).
    #[arg(long, value_name = "DB")]
    journal: PathBuf,
    #[command(flatten)]
    devices: Devices,
    /// Amount in fen (1 yuan = 100 fen).
    #[arg(long, value_name = "FEN")]
    amount: u32,
    #[command(flatten)]
    when: When,
    #[command(flatten)]
    policy: Policy,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `run meter`.
#[derive(Debug, Args)]
pub struct MeterArgs {
    /// The terminal's journal (an SQLite file, created on first use).
    #[arg(long, value_name = "DB")]
    journal: PathBuf,
    #[command(flatten)]
    devices: Devices,
    /// The price of one unit, in fen.
    #[arg(long, value_name = "FEN")]
    tariff: u32,
    /// The most units to charge (the call's length in units).
    #[arg(long, value_name = "N")]
    units: u32,
    /// A unit's length in seconds: unit k is charged at its start, the session's start plus
    /// (k - 1) units (with --live: the meter waits that long between units).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    unit_secs: u64,
    /// Run in real time: wait --unit-secs between units, take each unit's time from the
    /// clock, and end the session at Ctrl-C (the units charged so far stand).
    #[arg(long, conflicts_with_all = ["date", "time"])]
    live: bool,
    #[command(flatten)]
    when: When,
    #[command(flatten)]
    policy: Policy,
    /// Print JSON (one document at the end).
    #[arg(long)]
    json: bool,
}

/// `run list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The terminal's journal (an SQLite file, created on first use).
    #[arg(long, value_name = "DB")]
    journal: PathBuf,
    /// A delta file: the JSON of `iccard office loss list --since N --json` (`-`: standard
    /// input). N must be at most the version this terminal holds (see `run status`).
    #[arg(
        long,
        value_name = "DELTA.json",
        required_unless_present = "server",
        conflicts_with = "server"
    )]
    from_file: Option<PathBuf>,
    /// The back office's base URL (`http://host:port`): asks for the changes after the
    /// version held.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    #[command(flatten)]
    auth: Server,
    /// When the update is received (default: now, UTC); the list's age counts from it.
    #[command(flatten)]
    when: When,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `run upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The terminal's journal.
    #[arg(long, value_name = "DB")]
    journal: PathBuf,
    /// The back office's base URL (`http://host:port`).
    #[arg(long, value_name = "URL")]
    server: String,
    #[command(flatten)]
    auth: Server,
    /// The most records in one batch.
    #[arg(long, value_name = "N", default_value_t = 500)]
    max: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `run export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The terminal's journal.
    #[arg(long, value_name = "DB")]
    journal: PathBuf,
    /// The batch file to write (replaced atomically).
    #[arg(long, value_name = "OUT")]
    file: PathBuf,
    /// The most records in one batch.
    #[arg(long, value_name = "N", default_value_t = 500)]
    max: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `run import-answers`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The terminal's journal.
    #[arg(long, value_name = "DB")]
    journal: PathBuf,
    /// The back office's answers: one `BatchResults` JSON object or an array of them.
    #[arg(long, value_name = "RESULTS.json")]
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `run journal`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The terminal's journal.
    #[arg(long, value_name = "DB")]
    journal: PathBuf,
    /// Only the records in this status (pending, normal, recovered, failed, suspicious).
    #[arg(long, value_name = "STATUS", value_parser = parse_status)]
    status: Option<RecordStatus>,
    /// Print JSON: an array of records.
    #[arg(long)]
    json: bool,
}

/// `run status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The terminal's journal.
    #[arg(long, value_name = "DB")]
    journal: PathBuf,
    /// The loss list's maximum age (as for `sell`), to say whether sales would be refused.
    #[arg(long, value_name = "SECS", default_value_t = 86_400)]
    max_list_age: u64,
    /// The moment the age is measured at (default: now, UTC).
    #[command(flatten)]
    when: When,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_status(s: &str) -> std::result::Result<RecordStatus, String> {
    RecordStatus::parse(s).ok_or_else(|| {
        format!("{s:?} is not a status (pending, normal, recovered, failed, suspicious)")
    })
}

/// Runs `iccard terminal run ...`. Usage and input errors come back as `Err` (exit 2); an
/// operation that ran and failed ends the process with exit 1.
pub fn run(c: &RunCmd) -> Result<()> {
    match c {
        RunCmd::Sell(a) => sell(a),
        RunCmd::Meter(a) => meter(a),
        RunCmd::List(a) => list(a),
        RunCmd::Upload(a) => upload(a),
        RunCmd::Export(a) => export(a),
        RunCmd::ImportAnswers(a) => import_answers(a),
        RunCmd::Journal(a) => show_journal(a),
        RunCmd::Status(a) => status(a),
    }
}

// ---------------------------------------------------------------------------------------------
// shared helpers

fn yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

fn now() -> TransactionTime {
    TransactionTime::from_unix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

fn when(w: &When) -> Result<TransactionTime> {
    let now = now();
    let date = w.date.clone().unwrap_or_else(|| now.date_string());
    let time = w.time.clone().unwrap_or_else(|| now.time_string());
    Ok(TransactionTime::parse(&date, &time)?)
}

/// Seconds since 1970-01-01 of a transaction time (UTC), for the meter's clock.
fn unix_of(t: &TransactionTime) -> u64 {
    let epoch = TransactionTime::from_unix(0);
    u64::try_from(seconds_of(t).saturating_sub(seconds_of(&epoch))).unwrap_or(0)
}

/// Prints a document as pretty JSON.
fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The kind of a point-of-use error, for `--json`.
fn kind_of(e: &PosError) -> &'static str {
    match e {
        PosError::Journal { .. } => "journal",
        PosError::Corrupt { .. } => "journal_corrupt",
        PosError::Terminal(TerminalError::AnswerLost { .. }) => "answer_lost",
        PosError::Terminal(TerminalError::Undetermined(_)) => "undetermined",
        PosError::Terminal(TerminalError::Refused { .. }) => "refused",
        PosError::Terminal(_) => "terminal",
        PosError::ListedCard { .. } => "listed_card",
        PosError::LossListStale { .. } => "loss_list_stale",
        PosError::LossListGap { .. } => "loss_list_gap",
        PosError::LossListInvalid(_) => "loss_list_invalid",
        PosError::Record(_) => "record",
        PosError::Results(_) => "results",
        PosError::File { .. } => "file",
        PosError::Input(_) => "input",
    }
}

/// An operation that ran and failed: reported (JSON on stdout with `--json`, the message on
/// stderr) and the process ends with exit 1. Input errors come back for `main` (exit 2).
fn pos_failed(e: PosError, json_out: bool, extra: Option<Value>) -> anyhow::Error {
    if matches!(
        e,
        PosError::Input(_) | PosError::Terminal(TerminalError::Input(_))
    ) {
        return anyhow!(e);
    }
    let mut body = json!({ "error": e.to_string(), "kind": kind_of(&e) });
    match &e {
        PosError::ListedCard {
            card_number,
            application_serial,
            list_version,
        } => {
            body["card_number"] = json!(card_number);
            body["application_serial"] = json!(application_serial);
            body["list_version"] = json!(list_version);
        }
        PosError::LossListStale {
            version,
            updated,
            max_age_secs,
        } => {
            body["list_version"] = json!(version);
            body["list_updated"] = json!(updated);
            body["max_list_age_secs"] = json!(max_age_secs);
        }
        PosError::Terminal(t) => {
            let sw = t.status();
            body["status"] = json!(sw.map(|s| hex::encode(&s.to_bytes())));
            body["meaning"] = json!(sw.map(|s| s.meaning()));
            body["pending"] = json!(matches!(
                t,
                TerminalError::AnswerLost { .. } | TerminalError::Undetermined(_)
            ));
        }
        _ => {}
    }
    if let (Some(Value::Object(extra)), Value::Object(b)) = (extra, &mut body) {
        b.extend(extra);
    }
    exit_failed(&body, json_out, &e.to_string())
}

/// Prints a failure and ends the process with exit 1.
fn exit_failed(body: &Value, json_out: bool, message: &str) -> ! {
    if json_out {
        if let Ok(text) = serde_json::to_string_pretty(body) {
            println!("{text}");
        }
    }
    let _ = std::io::stdout().flush();
    eprintln!("iccard: {message}");
    std::process::exit(1);
}

/// Opens an existing journal (the commands that only read or forward it never create one).
fn existing_journal(path: &Path) -> Result<Journal> {
    if !path.is_file() {
        bail!(
            "no journal at {}: a terminal's journal is made by its first `run sell`, `run \
             meter` or `run list`",
            path.display()
        );
    }
    Journal::open(path).with_context(|| format!("cannot open the journal {}", path.display()))
}

/// The terminal whose records the journal holds (one journal per PSAM).
fn journal_terminal(j: &Journal) -> Result<Option<[u8; 6]>> {
    let ids: BTreeSet<String> = j
        .records()?
        .into_iter()
        .map(|r| r.record.terminal_id)
        .collect();
    let mut ids = ids.into_iter();
    let Some(first) = ids.next() else {
        return Ok(None);
    };
    if let Some(second) = ids.next() {
        bail!(
            "journal {} holds records of terminals {first} and {second}: one journal belongs \
             to one PSAM",
            j.path().display()
        );
    }
    let bytes = hex::decode(&first)
        .ok()
        .and_then(|b| <[u8; 6]>::try_from(b).ok())
        .ok_or_else(|| anyhow!("journal {}: bad terminal id {first}", j.path().display()))?;
    Ok(Some(bytes))
}

/// A journal record as JSON: the uploaded record's fields plus what only the terminal keeps.
fn record_json(r: &JournalRecord) -> Result<Value> {
    let mut v = serde_json::to_value(&r.record)?;
    v["key_index"] = json!(r.key_index);
    v["note"] = json!(r.note);
    v["upload"] = json!(r.upload);
    v["batch_sequence"] = json!(r.batch_sequence);
    v["result"] = json!(r.result);
    Ok(v)
}

fn upload_text(r: &JournalRecord) -> String {
    match (r.upload, r.batch_sequence, r.result) {
        (UploadState::Local, _, _) if r.record.status == RecordStatus::Pending => {
            "waits for its card".into()
        }
        (UploadState::Local, _, _) => "not uploaded".into(),
        (UploadState::Batched, Some(b), _) => format!("in batch {b}, not answered"),
        (UploadState::Acknowledged, Some(b), Some(code)) => format!("batch {b}: {code}"),
        (state, _, _) => state.as_str().into(),
    }
}

fn record_line(r: &JournalRecord) -> String {
    let p = &r.record;
    format!(
        "{:>6}  {} {}  card {:<20} {:>10} yuan  {:<10} {}",
        p.terminal_serial,
        p.date,
        p.time,
        p.card_number,
        yuan(u64::from(p.amount_fen)),
        p.status.as_str(),
        upload_text(r)
    )
}

// ---------------------------------------------------------------------------------------------
// sell and meter

/// Opens the PSAM, checks that the journal is its own, and opens the point of use.
fn open_pos<C: iccard_link::CardChannel>(
    sam: C,
    journal: &Path,
    policy: &Policy,
    json_out: bool,
) -> Result<PointOfUse<C>> {
    let psam = Psam::open(sam).map_err(|e| pos_failed(e.into(), json_out, None))?;
    let config = PosConfig {
        max_list_age_secs: policy.max_list_age,
        key_index: policy.key_index,
        ..PosConfig::default()
    };
    let pos = PointOfUse::open(psam, journal, config)
        .with_context(|| format!("cannot open the journal {}", journal.display()))?;
    if let Some(owner) = journal_terminal(pos.journal())? {
        if owner != pos.terminal_id() {
            bail!(
                "journal {} belongs to terminal {} and this PSAM is terminal {}: use one \
                 journal per PSAM",
                journal.display(),
                hex::encode(&owner),
                hex::encode(&pos.terminal_id())
            );
        }
    }
    Ok(pos)
}

fn resolution_json(r: &Resolution) -> Result<Value> {
    Ok(match r {
        Resolution::CompletedEarlier(rec) => {
            json!({ "resolution": "completed_earlier", "record": record_json(rec)? })
        }
        Resolution::Repeated { superseded, record } => json!({
            "resolution": "repeated",
            "superseded": record_json(superseded)?,
            "record": record_json(record)?,
        }),
        Resolution::Failed(rec) => json!({ "resolution": "failed", "record": record_json(rec)? }),
        Resolution::Undetermined { pending, why } => json!({
            "resolution": "undetermined",
            "terminal_serial": pending.terminal_serial,
            "amount_fen": pending.amount_fen,
            "date": pending.when.date_string(),
            "time": pending.when.time_string(),
            "why": why,
        }),
    })
}

fn print_resolution(r: &Resolution) {
    let head = |amount: u32, serial: Option<u32>| {
        format!(
            "pending purchase of {} yuan (terminal serial {}) resolved first:",
            yuan(u64::from(amount)),
            serial.map_or_else(|| "?".into(), |s| s.to_string())
        )
    };
    match r {
        Resolution::CompletedEarlier(rec) => println!(
            "{} the card had completed it ({}); journaled {}",
            head(rec.record.amount_fen, Some(rec.record.terminal_serial)),
            rec.note.as_deref().unwrap_or("proof fetched"),
            rec.record.status
        ),
        Resolution::Repeated { superseded, record } => println!(
            "{} the card had not executed it; charged once now as terminal serial {} ({})",
            head(
                superseded.record.amount_fen,
                Some(superseded.record.terminal_serial)
            ),
            record.record.terminal_serial,
            record.record.status
        ),
        Resolution::Failed(rec) => println!(
            "{} the card had not executed it and refused it again: failed, nothing charged",
            head(rec.record.amount_fen, Some(rec.record.terminal_serial))
        ),
        Resolution::Undetermined { pending, why } => println!(
            "{} cannot be settled with this card ({why}); it stays pending for the back office",
            head(pending.amount_fen, pending.terminal_serial)
        ),
    }
}

fn sell(a: &SellArgs) -> Result<()> {
    if a.amount == 0 {
        bail!("the amount must be at least 1 fen");
    }
    let when = when(&a.when)?;
    let d = &a.devices;
    let mut card_opened = OpenCard::open(d.card.as_deref(), d.reader.as_deref(), "card")?;
    let mut sam_opened = OpenCard::open(d.sam.as_deref(), d.sam_reader.as_deref(), "PSAM")?;
    let sam = sam_opened.channel()?;
    let mut pos = open_pos(sam, &a.journal, &a.policy, a.json)?;
    let card = card_opened.channel()?;
    let sale = pos
        .sell(card, a.amount, &when)
        .map_err(|e| pos_failed(e, a.json, None))?;
    let r = &sale.record;
    let suspicious = r.record.status == RecordStatus::Suspicious;
    if a.json {
        let mut v = record_json(r)?;
        v["balance_after_fen"] = json!(sale.balance_after_fen);
        v["resolved"] = Value::Array(
            sale.resolved
                .iter()
                .map(resolution_json)
                .collect::<Result<_>>()?,
        );
        print_json(&v)?;
    } else {
        for res in &sale.resolved {
            print_resolution(res);
        }
        println!(
            "sold {} yuan to card {}: balance {} -> {} yuan",
            yuan(u64::from(a.amount)),
            r.record.card_number,
            yuan(u64::from(r.record.balance_before_fen)),
            yuan(u64::from(sale.balance_after_fen))
        );
        println!(
            "  terminal {} serial {}, card offline serial {}, {} {}, TAC {}; journaled {}",
            r.record.terminal_id,
            r.record.terminal_serial,
            r.record.offline_serial,
            r.record.date,
            r.record.time,
            r.record.tac.as_deref().unwrap_or("(not available)"),
            r.record.status
        );
    }
    if suspicious {
        let _ = std::io::stdout().flush();
        eprintln!(
            "iccard: SUSPICIOUS: {}",
            r.note
                .as_deref()
                .unwrap_or("the card's MAC2 was not accepted")
        );
        std::process::exit(1);
    }
    Ok(())
}

/// Waits `secs` seconds, or less when `stop` is raised.
fn wait(secs: u64, stop: &AtomicBool) {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while !stop.load(Ordering::Relaxed) {
        let now = std::time::Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

fn meter(a: &MeterArgs) -> Result<()> {
    if a.tariff == 0 {
        bail!("the tariff must be at least 1 fen a unit");
    }
    if a.units == 0 {
        bail!("--units must be at least 1");
    }
    let start = when(&a.when)?;
    let start_unix = unix_of(&start);
    let stop = Arc::new(AtomicBool::new(false));
    if a.live {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, stop.clone()).context("cannot watch for Ctrl-C")?;
        }
    }
    let d = &a.devices;
    let mut card_opened = OpenCard::open(d.card.as_deref(), d.reader.as_deref(), "card")?;
    let mut sam_opened = OpenCard::open(d.sam.as_deref(), d.sam_reader.as_deref(), "PSAM")?;
    let sam = sam_opened.channel()?;
    let mut pos = open_pos(sam, &a.journal, &a.policy, a.json)?;
    let card = card_opened.channel()?;
    let mut session = pos
        .start_metered(card, a.tariff, &start)
        .map_err(|e| pos_failed(e, a.json, None))?;
    let mut lines: Vec<Value> = Vec::new();
    let mut error: Option<PosError> = None;
    let mut ended_by_operator = false;
    for k in 0..a.units {
        if stop.load(Ordering::Relaxed) {
            ended_by_operator = true;
            break;
        }
        let at = if a.live {
            now()
        } else {
            let offset = u64::from(k).saturating_mul(a.unit_secs);
            TransactionTime::from_unix(start_unix.saturating_add(offset))
        };
        match session.tick(&at) {
            Ok(Tick::Charged {
                record,
                balance_after_fen,
                next_covered,
            }) => {
                let unit = k + 1;
                if a.json {
                    let mut v = record_json(&record)?;
                    v["unit"] = json!(unit);
                    v["balance_after_fen"] = json!(balance_after_fen);
                    lines.push(v);
                } else {
                    println!(
                        "unit {unit:>3}  {} {}  {} yuan  terminal serial {}  balance {} yuan{}",
                        record.record.date,
                        record.record.time,
                        yuan(u64::from(record.record.amount_fen)),
                        record.record.terminal_serial,
                        yuan(u64::from(balance_after_fen)),
                        if record.record.status == RecordStatus::Suspicious {
                            "  SUSPICIOUS"
                        } else {
                            ""
                        }
                    );
                    let _ = std::io::stdout().flush();
                }
                if !next_covered {
                    break;
                }
            }
            Ok(Tick::Stopped(_)) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
        if a.live && k + 1 < a.units {
            wait(a.unit_secs, &stop);
        }
    }
    let summary = session.finish();
    let charged = summary.units.len();
    let suspicious = summary
        .units
        .iter()
        .filter(|u| u.record.status == RecordStatus::Suspicious)
        .count();
    let balance_after = summary.units.last().map(|u| {
        u64::from(u.record.balance_before_fen).saturating_sub(u64::from(u.record.amount_fen))
    });
    let (stop_kind, stop_text) = match (&summary.stop, ended_by_operator) {
        (Some(Stop::InsufficientBalance { balance_fen }), _) => (
            "balance",
            format!(
                "the balance {} yuan does not cover another unit of {} yuan",
                yuan(u64::from(*balance_fen)),
                yuan(u64::from(a.tariff))
            ),
        ),
        (Some(Stop::Interrupted(why)), _) => ("interrupted", format!("interrupted: {why}")),
        (None, true) => ("operator", "ended by the operator".to_string()),
        (None, false) => ("units", format!("all {} unit(s) used", a.units)),
    };
    if a.json {
        let doc = json!({
            "tariff_fen": a.tariff,
            "units_requested": a.units,
            "units_charged": charged,
            "total_fen": summary.total_fen,
            "balance_after_fen": balance_after,
            "stop": stop_kind,
            "stop_reason": stop_text,
            "units": lines,
            "resolved": summary.resolved.iter().map(resolution_json).collect::<Result<Vec<_>>>()?,
        });
        if let Some(e) = error {
            return Err(pos_failed(e, true, Some(json!({ "session": doc }))));
        }
        print_json(&doc)?;
    } else {
        for r in &summary.resolved {
            print_resolution(r);
        }
        println!(
            "session: {charged} unit(s) of {} yuan, {} yuan charged; {stop_text}",
            yuan(u64::from(a.tariff)),
            yuan(summary.total_fen)
        );
        if let Some(e) = error {
            let pending = matches!(e, PosError::Terminal(TerminalError::AnswerLost { .. }));
            if pending {
                println!(
                    "  the last unit's purchase is pending in the journal: present the card \
                     again (run sell or run meter) to settle it"
                );
            }
            return Err(pos_failed(e, false, None));
        }
    }
    if charged == 0 {
        exit_failed(
            &Value::Null,
            false,
            &format!("nothing charged: {stop_text}"),
        );
    }
    if suspicious > 0 {
        exit_failed(
            &Value::Null,
            false,
            &format!("SUSPICIOUS: {suspicious} unit(s) whose MAC2 the PSAM did not accept"),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Why a request to the back office did not give an answer.
enum HttpFail {
    /// No answer at all (connection refused, timeout, DNS).
    Unreachable(String),
    /// An answer other than 200.
    Refused { status: u16, error: String },
    /// A 200 whose body is not the expected JSON.
    Unreadable(String),
}

impl HttpFail {
    fn text(&self) -> String {
        match self {
            HttpFail::Unreachable(why) => format!("unreachable ({why})"),
            HttpFail::Refused { status, error } => format!("answered HTTP {status}: {error}"),
            HttpFail::Unreadable(why) => format!("answered something unreadable ({why})"),
        }
    }
}

struct Office {
    agent: ureq::Agent,
    base: String,
    auth: Zeroizing<String>,
}

impl Office {
    fn new(url: &str, s: &Server) -> Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        if base.starts_with("https://") {
            bail!(
                "this build speaks plain HTTP only: reach the back office over a trusted network \
                 or a TLS tunnel and give its http:// address"
            );
        }
        if !base.starts_with("http://") {
            bail!("the back office's URL {url:?} must start with http://");
        }
        let token = match std::env::var(&s.token_env) {
            Ok(t) if !t.trim().is_empty() => Zeroizing::new(t),
            _ => bail!(
                "set the environment variable {} to this terminal's token for the back office \
                 (it is never taken on the command line)",
                s.token_env
            ),
        };
        let auth = Zeroizing::new(format!("Bearer {}", token.trim()));
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(s.timeout))
            .timeout_read(Duration::from_secs(s.timeout))
            .timeout_write(Duration::from_secs(s.timeout))
            .redirects(0)
            .build();
        Ok(Self { agent, base, auth })
    }

    fn answer<T: DeserializeOwned>(
        r: std::result::Result<ureq::Response, ureq::Error>,
    ) -> std::result::Result<T, HttpFail> {
        match r {
            Ok(resp) if resp.status() == 200 => {
                let text = resp
                    .into_string()
                    .map_err(|e| HttpFail::Unreadable(e.to_string()))?;
                serde_json::from_str(&text).map_err(|e| HttpFail::Unreadable(e.to_string()))
            }
            Ok(resp) => Err(refused(resp.status(), resp)),
            Err(ureq::Error::Status(status, resp)) => Err(refused(status, resp)),
            Err(ureq::Error::Transport(t)) => Err(HttpFail::Unreachable(t.to_string())),
        }
    }

    fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: (&str, &str),
    ) -> std::result::Result<T, HttpFail> {
        let r = self
            .agent
            .get(&format!("{}{path}", self.base))
            .query(query.0, query.1)
            .set("Authorization", &self.auth)
            .set("Accept", "application/json")
            .call();
        Self::answer(r)
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &str,
    ) -> std::result::Result<T, HttpFail> {
        let r = self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("Authorization", &self.auth)
            .set("Content-Type", "application/json")
            .set("Accept", "application/json")
            .send_string(body);
        Self::answer(r)
    }
}

/// A refusal's message: the `{"error": "..."}` body, else the body's text (shortened).
fn refused(status: u16, resp: ureq::Response) -> HttpFail {
    let text = resp.into_string().unwrap_or_default();
    let error = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| {
            let t: String = text.trim().chars().take(200).collect();
            if t.is_empty() {
                "(no message)".into()
            } else {
                t
            }
        });
    HttpFail::Refused { status, error }
}

// ---------------------------------------------------------------------------------------------
// loss list

fn list(a: &ListArgs) -> Result<()> {
    let at = when(&a.when)?;
    let mut loss = LossList::open(&a.journal)
        .with_context(|| format!("cannot open the journal {}", a.journal.display()))?;
    let before = loss.version()?;
    let (delta, source): (LossListDelta, String) = match (&a.from_file, &a.server) {
        (Some(path), None) => {
            let text = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("cannot read the delta from standard input")?;
                s
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the delta file {}", path.display()))?
            };
            let delta = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a loss-list delta (the JSON of `iccard office loss list --since \
                     N --json`)",
                    path.display()
                )
            })?;
            (delta, format!("file {}", path.display()))
        }
        (None, Some(url)) => {
            let office = Office::new(url, &a.auth)?;
            match office.get::<LossListDelta>("/v1/loss-list", ("since", &before.to_string())) {
                Ok(d) => (d, format!("back office {}", office.base)),
                Err(f) => {
                    let message = format!(
                        "the back office at {} {}: the loss list stays at version {before}",
                        office.base,
                        f.text()
                    );
                    exit_failed(
                        &json!({ "error": message, "kind": "http", "version": before }),
                        a.json,
                        &message,
                    );
                }
            }
        }
        _ => bail!("give either --from-file or --server"),
    };
    let from_file = a.from_file.is_some();
    let outcome = match loss.apply_delta(&delta, &at) {
        Ok(o) => o,
        // A file that is not a valid delta is the caller's input; from the server, a failure.
        Err(e @ PosError::LossListInvalid(_)) if from_file => return Err(anyhow!(e)),
        Err(e) => return Err(pos_failed(e, a.json, None)),
    };
    let listed = loss.entries()?.len();
    let (version, applied, changed) = match outcome {
        DeltaOutcome::Applied { version, changes } => (version, changes, true),
        DeltaOutcome::AlreadyApplied { version } => (version, 0, false),
    };
    if a.json {
        print_json(&json!({
            "source": source,
            "from_version": before,
            "version": version,
            "changes_applied": applied,
            "already_applied": !changed,
            "listed": listed,
            "updated_at": if changed {
                Some(format!("{} {}", at.date_string(), at.time_string()))
            } else {
                None
            },
        }))?;
    } else if changed {
        println!(
            "loss list version {before} -> {version} from the {source}: {applied} change(s) \
             applied, {listed} card(s) listed; updated {} {}",
            at.date_string(),
            at.time_string()
        );
    } else {
        println!(
            "loss list already at version {version}: the delta ({} to {}) from the {source} is \
             older; nothing changed, its age neither",
            delta.from_version, delta.to_version
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// upload, export, answers

fn summary_json(batch_sequence: u64, records: usize, s: &UploadSummary) -> Value {
    json!({
        "sequence": batch_sequence,
        "records": records,
        "accepted": s.accepted,
        "rejected": s.rejected.iter().map(|(serial, code)| json!({
            "terminal_serial": serial, "code": code,
        })).collect::<Vec<_>>(),
    })
}

fn print_summary(what: &str, batch_sequence: u64, records: usize, s: &UploadSummary) {
    println!(
        "{what} batch {batch_sequence} ({records} record(s)): {} accepted, {} rejected",
        s.accepted,
        s.rejected.len()
    );
    for (serial, code) in &s.rejected {
        println!("  record {serial}: {code} (kept for the issuer; not sent again)");
    }
}

fn pending_count(j: &Journal) -> Result<usize> {
    Ok(j.pending()?.len())
}

fn upload(a: &UploadArgs) -> Result<()> {
    if a.max == 0 {
        bail!("--max must be at least 1");
    }
    let office = Office::new(&a.server, &a.auth)?;
    let mut journal = existing_journal(&a.journal)?;
    let pending = pending_count(&journal)?;
    let Some(tid) = journal_terminal(&journal)? else {
        if a.json {
            print_json(&json!({ "batches": [], "records": 0, "pending": pending }))?;
        } else {
            println!("nothing to upload: the journal holds no records");
        }
        return Ok(());
    };
    let mut done: Vec<Value> = Vec::new();
    let (mut records, mut accepted, mut rejected) = (0usize, 0usize, 0usize);
    let mut last_sent: Option<u64> = None;
    while let Some(batch) = journal
        .next_batch(&tid, a.max)
        .map_err(|e| pos_failed(e, a.json, Some(json!({ "batches": done }))))?
    {
        if last_sent == Some(batch.sequence) {
            bail!(
                "batch {} is still open after its answer was applied",
                batch.sequence
            );
        }
        last_sent = Some(batch.sequence);
        let body = serde_json::to_string(&batch)?;
        let answer: BatchResults = match office.post("/v1/batches", &body) {
            Ok(r) => r,
            Err(f) => {
                let left = waiting(&journal)?;
                let message = match &f {
                    HttpFail::Unreachable(_) => format!(
                        "the back office at {} is {}: {left} record(s) stay in the journal, \
                         nothing lost; run upload again later",
                        office.base,
                        f.text()
                    ),
                    _ => format!(
                        "the back office at {} {} for batch {}: the batch stays in the journal \
                         and is sent again as it is; {left} record(s) wait",
                        office.base,
                        f.text(),
                        batch.sequence
                    ),
                };
                exit_failed(
                    &json!({
                        "error": message,
                        "kind": "http",
                        "http_status": match &f { HttpFail::Refused { status, .. } => Some(*status), _ => None },
                        "batches": done,
                        "waiting": left,
                    }),
                    a.json,
                    &message,
                );
            }
        };
        if let Err(m) = check_answer(&batch, &answer) {
            let message = format!("{m}; nothing marked, the batch is sent again next time");
            exit_failed(
                &json!({ "error": message, "kind": "results", "batches": done }),
                a.json,
                &message,
            );
        }
        let s = journal
            .mark_uploaded(&batch, &answer.results)
            .map_err(|e| pos_failed(e, a.json, Some(json!({ "batches": done }))))?;
        records += batch.records.len();
        accepted += s.accepted;
        rejected += s.rejected.len();
        if !a.json {
            print_summary("uploaded", batch.sequence, batch.records.len(), &s);
        }
        done.push(summary_json(batch.sequence, batch.records.len(), &s));
    }
    if a.json {
        print_json(&json!({
            "batches": done,
            "records": records,
            "accepted": accepted,
            "rejected": rejected,
            "pending": pending,
        }))?;
    } else {
        if done.is_empty() {
            println!("nothing to upload: every finished record is answered");
        } else {
            println!(
                "uploaded {} batch(es), {records} record(s): {accepted} accepted, {rejected} \
                 rejected",
                done.len()
            );
        }
        if pending > 0 {
            println!(
                "{pending} pending record(s) wait for their card to be presented again (they \
                 are uploaded once settled)"
            );
        }
    }
    Ok(())
}

/// Records not yet answered by the back office (pending ones included).
fn waiting(j: &Journal) -> Result<usize> {
    Ok(j.records()?
        .iter()
        .filter(|r| r.upload != UploadState::Acknowledged)
        .count())
}

/// Checks that an answer is for the batch sent.
fn check_answer(batch: &Batch, answer: &BatchResults) -> std::result::Result<(), String> {
    if answer.terminal_id != batch.terminal_id
        || answer.sequence != batch.sequence
        || answer.hash != batch.hash
    {
        return Err(format!(
            "the back office answered for batch {} of terminal {} (hash {}), not for batch {} \
             of terminal {} (hash {})",
            answer.sequence,
            answer.terminal_id,
            answer.hash,
            batch.sequence,
            batch.terminal_id,
            batch.hash
        ));
    }
    Ok(())
}

fn export(a: &ExportArgs) -> Result<()> {
    if a.max == 0 {
        bail!("--max must be at least 1");
    }
    let mut journal = existing_journal(&a.journal)?;
    let Some(tid) = journal_terminal(&journal)? else {
        bail!(
            "nothing to export: the journal {} holds no records",
            a.journal.display()
        );
    };
    let file = journal
        .export_batch_file(&tid, a.max, &a.file)
        .map_err(|e| pos_failed(e, a.json, None))?;
    let records: usize = file.batches.iter().map(|b| b.records.len()).sum();
    let first = file.batches.first().map(|b| b.sequence);
    let last = file.batches.last().map(|b| b.sequence);
    if a.json {
        print_json(&json!({
            "file": a.file.display().to_string(),
            "terminal_id": file.terminal_id,
            "batches": file.batches.len(),
            "first_sequence": first,
            "last_sequence": last,
            "records": records,
            "pending": pending_count(&journal)?,
        }))?;
    } else if let (Some(first), Some(last)) = (first, last) {
        println!(
            "wrote {} batch(es) ({first} to {last}, {records} record(s)) of terminal {} to {}: \
             carry it to the back office and bring its answers back for `run import-answers`",
            file.batches.len(),
            file.terminal_id,
            a.file.display()
        );
    } else {
        println!(
            "every finished record is answered: wrote an empty batch file of terminal {} to {}",
            file.terminal_id,
            a.file.display()
        );
    }
    Ok(())
}

fn import_answers(a: &ImportArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read the answers {}", a.file.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", a.file.display()))?;
    let answers: Vec<BatchResults> = match value {
        Value::Array(_) => serde_json::from_value(value),
        other => serde_json::from_value(other).map(|one| vec![one]),
    }
    .with_context(|| {
        format!(
            "{} holds no batch answers (a BatchResults object or an array of them)",
            a.file.display()
        )
    })?;
    let mut journal = existing_journal(&a.journal)?;
    let mut done = Vec::new();
    for answer in &answers {
        let records = answer.results.len();
        let s = journal
            .mark_answered(answer)
            .map_err(|e| pos_failed(e, a.json, Some(json!({ "batches": done }))))?;
        if !a.json {
            print_summary("answered", answer.sequence, records, &s);
        }
        done.push(summary_json(answer.sequence, records, &s));
    }
    if a.json {
        print_json(&json!({ "batches": done }))?;
    } else if answers.is_empty() {
        println!("no answers in {}", a.file.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// journal and status

fn show_journal(a: &ShowArgs) -> Result<()> {
    let journal = existing_journal(&a.journal)?;
    let records: Vec<JournalRecord> = journal
        .records()?
        .into_iter()
        .filter(|r| a.status.is_none_or(|s| r.record.status == s))
        .collect();
    if a.json {
        let v = records
            .iter()
            .map(record_json)
            .collect::<Result<Vec<_>>>()?;
        return print_json(&Value::Array(v));
    }
    if records.is_empty() {
        println!("no records");
    }
    for r in &records {
        println!("{}", record_line(r));
        if let Some(note) = &r.note {
            println!("        {note}");
        }
    }
    Ok(())
}

fn status(a: &StatusArgs) -> Result<()> {
    let at = when(&a.when)?;
    let journal = existing_journal(&a.journal)?;
    let loss = LossList::open(&a.journal)
        .with_context(|| format!("cannot open the journal {}", a.journal.display()))?;
    let records = journal.records()?;
    let tid = journal_terminal(&journal)?;
    let mut by_status: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut by_upload: BTreeMap<&'static str, usize> = BTreeMap::new();
    for s in [
        RecordStatus::Pending,
        RecordStatus::Normal,
        RecordStatus::Recovered,
        RecordStatus::Failed,
        RecordStatus::Suspicious,
    ] {
        by_status.insert(s.as_str(), 0);
    }
    for u in [
        UploadState::Local,
        UploadState::Batched,
        UploadState::Acknowledged,
    ] {
        by_upload.insert(u.as_str(), 0);
    }
    let mut rejected = 0usize;
    let mut debited_fen = 0u64;
    for r in &records {
        *by_status.entry(r.record.status.as_str()).or_default() += 1;
        *by_upload.entry(r.upload.as_str()).or_default() += 1;
        if r.result.is_some_and(|c| !c.accepted()) {
            rejected += 1;
        }
        if r.record.status.debited() {
            debited_fen = debited_fen.saturating_add(u64::from(r.record.amount_fen));
        }
    }
    let (open_batches, last_batch) = match &tid {
        Some(t) => (
            journal.open_batches(t)?.len(),
            journal.last_batch(t)?.map(|(s, _)| s),
        ),
        None => (0, None),
    };
    let version = loss.version()?;
    let updated = loss.updated_at()?;
    let age = updated
        .as_ref()
        .map(|(_, secs)| seconds_of(&at).saturating_sub(*secs));
    let fresh = loss.check_fresh(&at, a.max_list_age).is_ok();
    let listed = loss.entries()?.len();
    let pending: Vec<&JournalRecord> = records
        .iter()
        .filter(|r| r.record.status == RecordStatus::Pending)
        .collect();
    if a.json {
        return print_json(&json!({
            "journal": a.journal.display().to_string(),
            "terminal_id": tid.map(|t| hex::encode(&t)),
            "records": records.len(),
            "by_status": by_status,
            "by_upload": by_upload,
            "rejected": rejected,
            "debited_fen": debited_fen,
            "open_batches": open_batches,
            "last_batch": last_batch,
            "loss_list": {
                "version": version,
                "updated_at": updated.as_ref().map(|(stamp, _)| stamp.clone()),
                "age_secs": age,
                "max_age_secs": a.max_list_age,
                "fresh": fresh,
                "listed": listed,
            },
            "pending": pending.iter().map(|r| record_json(r)).collect::<Result<Vec<_>>>()?,
        }));
    }
    println!(
        "journal {} (terminal {})",
        a.journal.display(),
        tid.map_or_else(|| "not known yet".into(), |t| hex::encode(&t))
    );
    let counts = |m: &BTreeMap<&str, usize>| {
        m.iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  {} record(s): {}; {} yuan debited",
        records.len(),
        counts(&by_status),
        yuan(debited_fen)
    );
    println!(
        "  upload: {}; {rejected} rejected by the back office; {open_batches} batch(es) not \
         answered{}",
        counts(&by_upload),
        last_batch.map_or_else(String::new, |s| format!(", last batch {s}"))
    );
    match (&updated, age) {
        (Some((stamp, _)), Some(age)) => println!(
            "  loss list version {version}, {listed} card(s) listed, updated {stamp} ({age} s \
             ago): {}",
            if fresh {
                "fresh enough to sell".to_string()
            } else {
                format!(
                    "older than {} s: sales are refused until `run list`",
                    a.max_list_age
                )
            }
        ),
        _ => println!(
            "  loss list version {version}, never updated: sales are refused until `run list`"
        ),
    }
    if pending.is_empty() {
        println!("  no pending purchase");
    } else {
        println!(
            "  {} pending purchase(s), settled when their card is presented again:",
            pending.len()
        );
        for r in pending {
            println!("  {}", record_line(r));
        }
    }
    Ok(())
}
