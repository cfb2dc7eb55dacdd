//! PC/SC readers from the command line: `iccard reader list`, `iccard apdu --reader NAME
//! HEX...`, and [`OpenCard`]: the card a command names, `--card FILE` (an image, in-process) or
//! `--reader NAME` (PC/SC), handed to the command as one [`CardChannel`].

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use iccard_apdu::hex;
use iccard_link::{
    list_readers, transmit_full, CardChannel, ImageCard, LinkError, PcscCard, PcscTransaction,
};
use iccard_terminal::PendingFile;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// `iccard reader` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReaderCmd {
    /// List the PC/SC readers and the ATR of the card in each.
    List(ListArgs),
}

/// `reader list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON: `[{"name": ..., "atr": hex or null}]`.
    #[arg(long)]
    json: bool,
}

/// `iccard apdu`.
#[derive(Debug, Args)]
pub struct ApduArgs {
    /// PC/SC reader: its full name, or a part of it that names one reader.
    #[arg(long)]
    reader: String,
    /// Print the answers as the card gave them: no GET RESPONSE after 61xx, no resend after
    /// 6Cxx.
    #[arg(long)]
    raw: bool,
    /// Leave the card as it is when done (default: reset it, so no security state outlives
    /// the command).
    #[arg(long)]
    leave: bool,
    /// APDUs in hex (spaces inside an argument are allowed). Without any, one APDU per line of
    /// standard input (`reset` resets the card and prints the ATR; `#` starts a comment).
    apdus: Vec<String>,
}

/// Runs `iccard reader ...`.
pub fn run(cmd: &ReaderCmd) -> Result<()> {
    match cmd {
        ReaderCmd::List(a) => list(a),
    }
}

fn list(a: &ListArgs) -> Result<()> {
    let readers = list_readers()?;
    if a.json {
        let v: Vec<_> = readers
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "atr": r.atr.as_ref().map(|a| hex::encode(a)),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if readers.is_empty() {
        println!("no readers");
    }
    for r in &readers {
        match &r.atr {
            Some(atr) => println!("{}\tcard {}", r.name, hex::encode(atr)),
            None => println!("{}\tno card", r.name),
        }
    }
    Ok(())
}

/// Runs `iccard apdu --reader NAME ...`: every APDU in one exclusive transaction.
pub fn apdu(a: &ApduArgs) -> Result<()> {
    let commands = a
        .apdus
        .iter()
        .enumerate()
        .map(|(i, s)| {
            hex::decode(s).map_err(|e| anyhow::anyhow!("APDU #{} is not valid hex: {e}", i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut card = PcscCard::connect(&a.reader)?;
    card.reset_on_drop(!a.leave);
    let mut tx = card.transaction()?;
    let send = |ch: &mut dyn CardChannel, c: &[u8]| -> Result<Vec<u8>> {
        Ok(if a.raw {
            ch.transmit(c)?
        } else {
            transmit_full(ch, c)?
        })
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !commands.is_empty() {
        for c in &commands {
            writeln!(out, "{}", hex::encode(&send(&mut tx, c)?))?;
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
            tx.reset().map_err(anyhow::Error::from)
        } else {
            hex::decode(text)
                .map_err(|e| anyhow::anyhow!("line {} is not valid hex: {e}", n + 1))
                .and_then(|c| send(&mut tx, &c))
        };
        match answer {
            Ok(r) => writeln!(out, "{}", hex::encode(&r))?,
            Err(e) => {
                // One output line per input line keeps a driving program in step.
                failed += 1;
                eprintln!("iccard: {e:#}");
                writeln!(out, "ERROR {e}")?;
            }
        }
        out.flush()?;
    }
    if failed > 0 {
        bail!("{failed} input line(s) failed");
    }
    Ok(())
}

/// A card a command opened: an image file in-process, or the card in a PC/SC reader.
pub enum OpenCard {
    /// `--card FILE`.
    Image(Box<ImageCard>, PathBuf),
    /// `--reader NAME`.
    Reader(PcscCard),
}

impl OpenCard {
    /// Opens `--card FILE` or `--reader NAME`, exactly one of which must be given; `what`
    /// names the card in messages ("card", "PSAM").
    pub fn open(image: Option<&Path>, reader: Option<&str>, what: &str) -> Result<Self> {
        match (image, reader) {
            (Some(path), None) => {
                Ok(OpenCard::Image(
                    Box::new(ImageCard::open(path).with_context(|| {
                        format!("cannot open the {what} image {}", path.display())
                    })?),
                    path.to_path_buf(),
                ))
            }
            (None, Some(name)) => Ok(OpenCard::Reader(
                PcscCard::connect(name)
                    .with_context(|| format!("cannot reach the {what} in reader {name:?}"))?,
            )),
            (Some(_), Some(_)) => {
                bail!("the {what} is either an image file or in a reader, not both")
            }
            (None, None) => bail!("say where the {what} is: an image file or a reader"),
        }
    }

    /// The channel for one flow: the image as it is, or the reader's card taken exclusively
    /// (one PC/SC transaction, ended when the channel is dropped).
    pub fn channel(&mut self) -> Result<Channel<'_>> {
        Ok(match self {
            OpenCard::Image(card, _) => Channel::Image(card),
            OpenCard::Reader(card) => Channel::Reader(card.transaction()?),
        })
    }

    /// Where the record of an interrupted transaction is kept: beside the card image, or for
    /// a card in a reader, in the current directory under the reader's name
    /// (`iccard-reader-<name>.pending.json`), since the terminal, not the card, keeps it.
    pub fn pending_file(&self) -> PendingFile {
        match self {
            OpenCard::Image(_, path) => PendingFile::beside(path),
            OpenCard::Reader(card) => {
                let name: String = card
                    .reader()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                PendingFile::new(format!("iccard-reader-{name}.pending.json"))
            }
        }
    }
}

/// An [`OpenCard`]'s channel.
pub enum Channel<'a> {
    /// An image card.
    Image(&'a mut ImageCard),
    /// A PC/SC card inside an exclusive transaction.
    Reader(PcscTransaction<'a>),
}

impl CardChannel for Channel<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        match self {
            Channel::Image(c) => c.transmit(apdu),
            Channel::Reader(c) => c.transmit(apdu),
        }
    }

    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        match self {
            Channel::Image(c) => c.reset(),
            Channel::Reader(c) => c.reset(),
        }
    }
}
