//! `iccard card ...`: make card images, send them APDUs, show what is on them.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use iccard_apdu::hex;
use iccard_cos::RandomSource;
use iccard_issuer::manufacture::{self, BlankCard};
use iccard_link::{save_image, CardChannel, ImageCard, OsRandom};
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// `iccard card` subcommands.
#[derive(Debug, Subcommand)]
pub enum CardCmd {
    /// Manufacture a blank card (OP_READY, chip data, transport key) into an image file.
    New(NewArgs),
    /// Send APDUs to a card image: each response printed as one line of hex. Without APDU
    /// arguments, reads one APDU per line from standard input (a line `reset` resets the card
    /// and prints the ATR) and answers each line at once.
    Apdu(ApduArgs),
    /// Show life cycle, applications, files, key references, counters and EEPROM wear.
    Info(InfoArgs),
    /// Personalize a blank card into a user card (MF, purse, access application) through the
    /// real APDU script.
    Personalize(super::perso::PersonalizeArgs),
    /// Serve card images to pcscd through the vpcd virtual reader (one card per vpcd slot)
    /// until SIGINT/SIGTERM; each committing command is saved before its answer leaves.
    Serve(super::serve::ServeArgs),
}

/// `card new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// Image file to create.
    #[arg(long)]
    out: PathBuf,
    /// EEPROM size in KiB (8..=128).
    #[arg(long, default_value_t = 32)]
    nvm_kib: usize,
    /// Chip serial, 8 bytes of hex (default: random).
    #[arg(long)]
    chip_serial: Option<String>,
    /// Production batch number.
    #[arg(long, default_value_t = 1)]
    batch: u16,
    /// Failed authentications across the card before it erases its secrets and terminates.
    #[arg(long, default_value_t = manufacture::DEFAULT_ATTACK_THRESHOLD)]
    attack_threshold: u8,
    /// Write cycles each EEPROM page endures.
    #[arg(long, default_value_t = iccard_cos::nvm::DEFAULT_ENDURANCE)]
    endurance: u32,
    /// Replace the file if it exists.
    #[arg(long)]
    force: bool,
    /// What the card becomes: `blank` (OP_READY, for personalization later) or `psam` (a
    /// terminal security module, personalized at once; needs --terminal-id and --dev-keys).
    #[arg(long, value_parser = ["blank", "psam"], default_value = "blank")]
    profile: String,
    /// PSAM: the terminal id, 6 bytes of hex.
    #[arg(long)]
    terminal_id: Option<String>,
    /// Use the published development key set (demos and tests only).
    #[arg(long)]
    dev_keys: bool,
}

/// `card apdu`.
#[derive(Debug, Args)]
pub struct ApduArgs {
    /// Card image file.
    #[arg(long)]
    image: PathBuf,
    /// APDUs in hex (spaces inside an argument are allowed).
    apdus: Vec<String>,
}

/// `card info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Card image file.
    #[arg(long)]
    image: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs one card subcommand, printing as it goes.
pub fn run(cmd: &CardCmd) -> Result<()> {
    match cmd {
        CardCmd::New(a) => new(a),
        CardCmd::Apdu(a) => apdu(a),
        CardCmd::Info(a) => info(a),
        CardCmd::Personalize(a) => super::perso::run(a),
        CardCmd::Serve(a) => super::serve::run(a),
    }
}

fn parse_hex(what: &str, s: &str, len: Option<usize>) -> Result<Vec<u8>> {
    let b = hex::decode(s).map_err(|e| anyhow::anyhow!("{what} is not valid hex: {e}"))?;
    if let Some(len) = len {
        if b.len() != len {
            bail!("{what} must be {len} bytes, got {}", b.len());
        }
    }
    Ok(b)
}

fn today_bcd() -> [u8; 4] {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    manufacture::bcd_date_from_unix_days(days as i64)
}

fn new(a: &NewArgs) -> Result<()> {
    if a.out.exists() && !a.force {
        bail!(
            "{} already exists: choose another --out or pass --force to replace it",
            a.out.display()
        );
    }
    if !(8..=128).contains(&a.nvm_kib) {
        bail!("--nvm-kib must be between 8 and 128, got {}", a.nvm_kib);
    }
    let mut chip_serial = [0u8; 8];
    match &a.chip_serial {
        Some(s) => chip_serial.copy_from_slice(&parse_hex("--chip-serial", s, Some(8))?),
        None => OsRandom.fill(&mut chip_serial),
    }
    let eeprom = manufacture::eeprom(a.nvm_kib, a.endurance).context("cannot make the EEPROM")?;
    let spec = BlankCard {
        chip_serial,
        production_date: today_bcd(),
        batch: a.batch,
        transport_key_version: 1,
        attack_threshold: a.attack_threshold,
    };
    let card = manufacture::make_blank(eeprom, OsRandom, &spec).context("cannot code the chip")?;
    save_image(&a.out, card.nvm().eeprom())?;
    if a.profile == "psam" {
        return super::psam::personalize(&a.out, a.terminal_id.as_deref(), a.dev_keys);
    }
    println!(
        "made blank card {} (chip serial {}, {} KiB, OP_READY)",
        a.out.display(),
        hex::encode(&chip_serial),
        a.nvm_kib
    );
    Ok(())
}

fn apdu(a: &ApduArgs) -> Result<()> {
    let mut card = ImageCard::open(&a.image)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !a.apdus.is_empty() {
        let commands = a
            .apdus
            .iter()
            .enumerate()
            .map(|(i, s)| parse_hex(&format!("APDU #{}", i + 1), s, None))
            .collect::<Result<Vec<_>>>()?;
        for c in commands {
            writeln!(out, "{}", hex::encode(&card.transmit(&c)?))?;
        }
        return Ok(());
    }
    let mut failed = 0usize;
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("cannot read standard input")?;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let answer = if text.eq_ignore_ascii_case("reset") {
            Ok(card.reset()?)
        } else {
            parse_hex(&format!("line {}", n + 1), text, None).and_then(|c| Ok(card.transmit(&c)?))
        };
        match answer {
            Ok(r) => writeln!(out, "{}", hex::encode(&r))?,
            Err(e) => {
                // Keep one output line per input line so a driving program stays in step.
                failed += 1;
                eprintln!("iccard: {e:#}");
                writeln!(out, "ERROR {e}")?;
            }
        }
        out.flush()?;
    }
    if failed > 0 {
        bail!("{failed} input line(s) were not valid APDUs");
    }
    Ok(())
}

fn info(a: &InfoArgs) -> Result<()> {
    let card = ImageCard::open(&a.image)?;
    let info = card
        .card()
        .info()
        .map_err(|sw| anyhow::anyhow!("cannot read the card's file system: {sw}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("card image     {}", a.image.display());
    println!("life cycle     {}", info.life_cycle);
    println!(
        "chip           maker {} serial {} produced {} batch {} COS {}",
        info.chip_maker, info.chip_serial, info.production_date, info.batch, info.os_version
    );
    println!(
        "attacks        {} failed authentications (self-destruct at {})",
        info.attack_counter, info.attack_threshold
    );
    println!("files");
    for f in &info.files {
        let mut line = format!("  {:<20} {:<13}", f.path, f.kind);
        if let Some(sfi) = f.sfi {
            line += &format!(" SFI {sfi:02X}");
        }
        if let Some(name) = &f.name {
            line += &format!(" name {name}");
        }
        if let (Some(app), Some(state)) = (f.application, f.application_state) {
            line += &format!(" [{app}, {state}]");
        }
        if let Some((len, count)) = f.records {
            line += &format!(" {count} x {len} bytes");
        } else if f.size > 0 {
            line += &format!(" {} bytes", f.size);
        }
        line += &format!(" {} access {}", f.status, f.access.join(" "));
        println!("{line}");
        for k in &f.keys {
            println!(
                "      key {:<18} index {:02X} version {:02X} {} tries {}/{}",
                k.key_type, k.index, k.version, k.algorithm, k.tries.0, k.tries.1
            );
        }
    }
    let n = &info.nvm;
    println!(
        "eeprom         {} bytes ({} for the OS, {} free), endurance {} cycles/page",
        n.size, n.user_bytes, n.free_bytes, n.endurance
    );
    println!(
        "wear           max {} mean {:.1} cycles/page, failed pages {:?}, hottest {:?}",
        n.max_page_cycles, n.mean_page_cycles, n.failed_pages, n.hottest_pages
    );
    Ok(())
}
