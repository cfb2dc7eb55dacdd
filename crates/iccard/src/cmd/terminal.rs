//! `iccard terminal ...`: a recharge point (load) and a point of sale (purchase with a PSAM)
//! over card image files, plus balance and log. The flows live in `iccard-terminal`; this module
//! parses, keeps the pending-transaction file next to the card image, and prints.
//!
//! Exit codes: 0 done; 1 the operation ran and failed (a card or PSAM refused, a lost answer,
//! an undecidable recovery) or succeeded but is *suspicious* (MAC2 rejected by the PSAM, TAC not
//! verified: the money moved and the record must reach the issuer); 2 usage or input errors.
//!
//! Tear recovery: before CREDIT FOR LOAD or DEBIT FOR PURCHASE leaves, `<card>.pending.json` is
//! written and fsynced; it is removed once the answer is in. Running the same command again
//! while it exists finishes that transaction (completed earlier, or repeated once) instead of
//! starting a new one.

use super::reader::OpenCard;
use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use iccard_apdu::hex;
use iccard_issuer::devkeys;
use iccard_terminal::{
    read_balance, read_log, LoadOutcome, MasterKeyHost, PendingFile, PendingTransaction, Psam,
    Purchase, PurchaseOutcome, PurseCard, Recharge, TerminalError, TransactionKind,
    TransactionTime,
};
use std::path::PathBuf;

/// `iccard terminal` subcommands.
#[derive(Debug, Subcommand)]
pub enum TerminalCmd {
    /// Recharge: load money onto the card's purse (the recharge point's host side: checks the
    /// card's MAC1, computes MAC2, verifies the TAC).
    Load(LoadArgs),
    /// Pay: an offline purchase with the terminal's PSAM.
    Purchase(PurchaseArgs),
    /// The purse balance.
    Balance(CardArgs),
    /// The transaction log, newest first.
    Log(CardArgs),
    /// The offline point of use: sales and metered use journaled in the terminal's own
    /// database, the loss list kept, records uploaded (or exported for carrying by hand).
    #[command(subcommand)]
    Run(super::pos::RunCmd),
}

/// Date and time options shared by the money-moving commands.
#[derive(Debug, Args)]
pub struct WhenArgs {
    /// Transaction date YYYYMMDD (default: today, UTC).
    #[arg(long)]
    date: Option<String>,
    /// Transaction time HHMMSS (default: now, UTC).
    #[arg(long)]
    time: Option<String>,
}

/// `terminal load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Card image file.
    #[arg(long, required_unless_present = "reader")]
    card: Option<PathBuf>,
    /// PC/SC reader holding the card, in place of --card (see `iccard reader list`).
    #[arg(long, conflicts_with = "card")]
    reader: Option<String>,
    /// Amount in fen (1 yuan = 100 fen).
    #[arg(long)]
    amount: u32,
    /// The recharge point's terminal id, 6 bytes of hex.
    #[arg(long)]
    terminal_id: String,
    /// Use the published development key set as host keys (demos and tests only; required
    /// until a keystore exists).
    #[arg(long)]
    dev_keys: bool,
    #[command(flatten)]
    when: WhenArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `terminal purchase`.
#[derive(Debug, Args)]
pub struct PurchaseArgs {
    /// Card image file.
    #[arg(long, required_unless_present = "reader")]
    card: Option<PathBuf>,
    /// PC/SC reader holding the card, in place of --card (see `iccard reader list`).
    #[arg(long, conflicts_with = "card")]
    reader: Option<String>,
    /// The terminal's PSAM image file.
    #[arg(long, required_unless_present = "sam_reader")]
    sam: Option<PathBuf>,
    /// PC/SC reader holding the PSAM, in place of --sam.
    #[arg(long, conflicts_with = "sam")]
    sam_reader: Option<String>,
    /// Amount in fen.
    #[arg(long)]
    amount: u32,
    #[command(flatten)]
    when: WhenArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `terminal balance` and `terminal log`.
#[derive(Debug, Args)]
pub struct CardArgs {
    /// Card image file.
    #[arg(long, required_unless_present = "reader")]
    card: Option<PathBuf>,
    /// PC/SC reader holding the card, in place of --card (see `iccard reader list`).
    #[arg(long, conflicts_with = "card")]
    reader: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs one terminal subcommand. Usage and input errors come back as `Err` (exit 2); an
/// operation that ran and failed, or succeeded suspiciously, ends the process with exit 1.
pub fn run(c: &TerminalCmd) -> Result<()> {
    match c {
        TerminalCmd::Load(a) => load(a),
        TerminalCmd::Purchase(a) => purchase(a),
        TerminalCmd::Balance(a) => balance(a),
        TerminalCmd::Log(a) => log(a),
        TerminalCmd::Run(c) => super::pos::run(c),
    }
}

fn yuan(fen: u32) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

fn when(w: &WhenArgs) -> Result<TransactionTime> {
    let now = TransactionTime::from_unix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    let date = w.date.clone().unwrap_or_else(|| now.date_string());
    let time = w.time.clone().unwrap_or_else(|| now.time_string());
    Ok(TransactionTime::parse(&date, &time)?)
}

/// Reports an operation that ran and failed, and exits 1. Input errors go back to `main`
/// (exit 2).
fn failed(e: TerminalError, json: bool) -> Result<()> {
    if let TerminalError::Input(_) = e {
        return Err(anyhow!(e));
    }
    if json {
        let sw = e.status();
        let pending = matches!(
            e,
            TerminalError::AnswerLost { .. } | TerminalError::Undetermined(_)
        );
        let body = serde_json::json!({
            "error": e.to_string(),
            "status": sw.map(|s| hex::encode(&s.to_bytes())),
            "meaning": sw.map(|s| s.meaning()),
            "pending": pending,
        });
        println!("{}", serde_json::to_string_pretty(&body)?);
    }
    eprintln!("iccard: {e}");
    std::process::exit(1);
}

/// Refuses to start a new transaction while another is pending on the card, unless it is the
/// same one (then it is finished instead).
fn check_pending(
    file: &PendingFile,
    kind: TransactionKind,
    amount: u32,
) -> Result<Option<PendingTransaction>> {
    let Some(p) = file.load()? else {
        return Ok(None);
    };
    if p.kind != kind || p.amount_fen != amount {
        anyhow::bail!(
            "an interrupted {} of {} fen on card {} is pending ({}): finish it first with \
             `iccard terminal {}` and --amount {}",
            p.kind,
            p.amount_fen,
            p.card_number,
            file.path().display(),
            if p.kind == TransactionKind::Load {
                "load"
            } else {
                "purchase"
            },
            p.amount_fen
        );
    }
    Ok(Some(p))
}

fn load(a: &LoadArgs) -> Result<()> {
    if !a.dev_keys {
        anyhow::bail!(
            "no keystore configured yet: pass --dev-keys to use the published development keys"
        );
    }
    let terminal_id = iccard_issuer::psam::parse_terminal_id(&a.terminal_id)?;
    let when = when(&a.when)?;
    let mut opened = OpenCard::open(a.card.as_deref(), a.reader.as_deref(), "card")?;
    let mut file = opened.pending_file();
    let pending = check_pending(&file, TransactionKind::Load, a.amount)?;
    if let Some(p) = &pending {
        if p.terminal_id != terminal_id {
            anyhow::bail!(
                "the pending load was started by terminal {}: finish it with --terminal-id {}",
                hex::encode(&p.terminal_id),
                hex::encode(&p.terminal_id)
            );
        }
    }
    let host = MasterKeyHost::new(devkeys::MLK.value(), devkeys::MTK.value());
    let channel = opened.channel()?;
    let result = PurseCard::open(channel).and_then(|mut card| {
        let recharge = Recharge::new(&host, terminal_id);
        match &pending {
            Some(p) => recharge.resume(&mut card, p, &mut file),
            None => recharge.load(&mut card, a.amount, &when, &mut file),
        }
    });
    match result {
        Ok(out) => print_load(&out, a.json),
        Err(e) => failed(e, a.json),
    }
}

fn print_load(out: &LoadOutcome, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(out)?);
    } else {
        if let Some(note) = out.recovery {
            println!("interrupted load finished: {}", note_text(note));
        }
        println!(
            "loaded {} yuan ({} fen) onto card {}: balance {} -> {} fen",
            yuan(out.amount_fen),
            out.amount_fen,
            out.card_number,
            out.balance_before_fen,
            out.balance_after_fen
        );
        println!(
            "  online serial {}, terminal {}, {} {}, {} key version {:02X}, TAC {} {}",
            out.online_serial,
            hex::encode(&out.terminal_id),
            out.when.date_string(),
            out.when.time_string(),
            out.alg,
            out.key_version,
            out.tac.as_deref().unwrap_or("(not available)"),
            match out.tac_verified {
                Some(true) => "verified",
                Some(false) => "DOES NOT VERIFY",
                None => "",
            }
        );
    }
    suspicious(out.suspicious.as_deref())
}

fn note_text(note: iccard_terminal::RecoveryNote) -> &'static str {
    match note {
        iccard_terminal::RecoveryNote::CompletedEarlier => {
            "the card had completed it; nothing was charged again"
        }
        iccard_terminal::RecoveryNote::Repeated => "the card had not completed it; run again once",
    }
}

fn suspicious(why: Option<&str>) -> Result<()> {
    if let Some(why) = why {
        eprintln!("iccard: SUSPICIOUS: {why}");
        std::process::exit(1);
    }
    Ok(())
}

fn purchase(a: &PurchaseArgs) -> Result<()> {
    let when = when(&a.when)?;
    let mut card_opened = OpenCard::open(a.card.as_deref(), a.reader.as_deref(), "card")?;
    let mut sam_opened = OpenCard::open(a.sam.as_deref(), a.sam_reader.as_deref(), "PSAM")?;
    let mut file = card_opened.pending_file();
    let pending = check_pending(&file, TransactionKind::Purchase, a.amount)?;
    let card_channel = card_opened.channel()?;
    let sam_channel = sam_opened.channel()?;
    let result = Psam::open(sam_channel).and_then(|mut psam| {
        let mut card = PurseCard::open(card_channel)?;
        let mut pos = Purchase::new(&mut psam);
        match &pending {
            Some(p) => pos.resume(&mut card, p, &mut file),
            None => pos.pay(&mut card, a.amount, &when, &mut file),
        }
    });
    match result {
        Ok(out) => print_purchase(&out, a.json),
        Err(e) => failed(e, a.json),
    }
}

fn print_purchase(out: &PurchaseOutcome, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(out)?);
    } else {
        if let Some(note) = out.recovery {
            println!("interrupted purchase finished: {}", note_text(note));
        }
        println!(
            "paid {} yuan ({} fen) with card {}: balance {} -> {} fen",
            yuan(out.amount_fen),
            out.amount_fen,
            out.card_number,
            out.balance_before_fen,
            out.balance_after_fen
        );
        println!(
            "  offline serial {}, terminal {} serial {}, {} {}, {} key version {:02X}",
            out.offline_serial,
            hex::encode(&out.terminal_id),
            out.terminal_serial,
            out.when.date_string(),
            out.when.time_string(),
            out.alg,
            out.key_version
        );
        println!(
            "  TAC {}, MAC2 {} {}",
            out.tac.as_deref().unwrap_or("(not available)"),
            out.mac2.as_deref().unwrap_or("(not available)"),
            match out.mac2_verified {
                Some(true) => "verified by the PSAM",
                Some(false) => "REJECTED by the PSAM",
                None => "(not checked: the PSAM session ended with the interruption)",
            }
        );
    }
    suspicious(out.suspicious.as_deref())
}

fn balance(a: &CardArgs) -> Result<()> {
    let mut opened = OpenCard::open(a.card.as_deref(), a.reader.as_deref(), "card")?;
    let channel = opened.channel()?;
    match read_balance(channel) {
        Ok(b) if a.json => {
            println!("{}", serde_json::to_string_pretty(&b)?);
            Ok(())
        }
        Ok(b) => {
            println!(
                "card {}: balance {} yuan ({} fen)",
                b.card_number,
                yuan(b.balance_fen),
                b.balance_fen
            );
            Ok(())
        }
        Err(e) => failed(e, a.json),
    }
}

fn log(a: &CardArgs) -> Result<()> {
    let mut opened = OpenCard::open(a.card.as_deref(), a.reader.as_deref(), "card")?;
    let channel = opened.channel()?;
    match read_log(channel) {
        Ok(records) if a.json => {
            println!("{}", serde_json::to_string_pretty(&records)?);
            Ok(())
        }
        Ok(records) => {
            if records.is_empty() {
                println!("no transactions on the card");
            }
            for r in &records {
                println!(
                    "{} {}  {:<9} {:>10} fen  serial {:>5}  terminal {}",
                    r.date,
                    r.time,
                    r.kind,
                    r.amount_fen,
                    r.serial,
                    hex::encode(&r.terminal_id)
                );
            }
            Ok(())
        }
        Err(e) => failed(e, a.json),
    }
}
