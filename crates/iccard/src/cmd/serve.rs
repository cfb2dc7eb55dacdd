//! `iccard card serve`: card images served to pcscd through vsmartcard's vpcd driver, one card
//! per vpcd slot, until SIGINT or SIGTERM.
//!
//! Each image is powered up in-process ([`ImageCard`]) and saved atomically after every command
//! that commits, before the answer leaves; the protocol itself is [`iccard_link::vpcd`]. A first
//! SIGINT/SIGTERM stops the slots after the command in hand (if any) is answered; a second one
//! exits at once (the images are consistent at every instant anyway).

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use iccard_apdu::hex;
use iccard_link::vpcd::{self, Event, ServeConfig};
use iccard_link::{CardChannel, ImageCard, LinkError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `card serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Card image file. Repeat to serve several cards from one process: the n-th image (from 0)
    /// goes to vpcd slot `--slot` + n, i.e. port + n.
    #[arg(long, required = true)]
    image: Vec<PathBuf>,
    /// vpcd's HOST:PORT for slot 0 (Debian's /etc/reader.conf.d/vpcd: port 35963, slot n at
    /// 35963 + n).
    #[arg(long, default_value = vpcd::DEFAULT_ADDR)]
    vpcd: String,
    /// The slot of the first image.
    #[arg(long, default_value_t = 0)]
    slot: u16,
    /// Print every APDU and its answer (stderr).
    #[arg(long, short)]
    verbose: bool,
    /// Do not re-arm TCP_QUICKACK before reads (to measure the delayed-ACK stall it avoids).
    #[arg(long, hide = true)]
    no_quickack: bool,
    /// Test hook: kill this process (SIGKILL) after the card has processed and saved a command
    /// whose bytes start with this hex, before the answer is sent.
    #[arg(long, hide = true)]
    kill_after: Option<String>,
    /// Test hook: kill this process (SIGKILL) when a command whose bytes start with this hex
    /// arrives, before the card sees it.
    #[arg(long, hide = true)]
    kill_before: Option<String>,
}

/// A card with the test hooks around it.
struct Hooked {
    card: ImageCard,
    kill_after: Option<Vec<u8>>,
    kill_before: Option<Vec<u8>>,
}

fn die() -> ! {
    // As `kill -9` would: no destructor, no flush, the socket closed by the kernel.
    let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
    std::process::abort()
}

impl CardChannel for Hooked {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        if self
            .kill_before
            .as_ref()
            .is_some_and(|p| apdu.starts_with(p))
        {
            die();
        }
        let r = self.card.transmit(apdu)?;
        if self
            .kill_after
            .as_ref()
            .is_some_and(|p| apdu.starts_with(p))
        {
            die();
        }
        Ok(r)
    }

    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        self.card.reset()
    }
}

fn hook(what: &str, h: &Option<String>) -> Result<Option<Vec<u8>>> {
    h.as_deref()
        .map(|s| hex::decode(s).map_err(|e| anyhow!("{what} is not valid hex: {e}")))
        .transpose()
}

/// Serves the images until a signal stops it.
pub fn run(a: &ServeArgs) -> Result<()> {
    let kill_after = hook("--kill-after", &a.kill_after)?;
    let kill_before = hook("--kill-before", &a.kill_before)?;
    // Open every image first: a bad path fails before anything is served.
    for image in &a.image {
        ImageCard::open(image)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The second signal exits at once; the first asks the slots to stop.
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
            .context("cannot install the signal handlers")?;
        signal_hook::flag::register(sig, stop.clone())
            .context("cannot install the signal handlers")?;
    }
    let mut slots = Vec::new();
    for (n, image) in a.image.iter().enumerate() {
        let slot = u16::try_from(n)
            .ok()
            .and_then(|n| a.slot.checked_add(n))
            .ok_or_else(|| anyhow!("too many images"))?;
        let config = ServeConfig {
            addr: vpcd::slot_addr(&a.vpcd, slot)?,
            quickack: !a.no_quickack,
            ..ServeConfig::default()
        };
        eprintln!(
            "iccard: serving {} on vpcd slot {slot} ({})",
            image.display(),
            config.addr
        );
        let image = image.clone();
        let stop = stop.clone();
        let verbose = a.verbose;
        let (kill_after, kill_before) = (kill_after.clone(), kill_before.clone());
        let handle = std::thread::Builder::new()
            .name(format!("slot {slot}"))
            .spawn(move || {
                let open = || {
                    Ok(Hooked {
                        card: ImageCard::open(&image)?,
                        kill_after: kill_after.clone(),
                        kill_before: kill_before.clone(),
                    })
                };
                let r = vpcd::serve(&config, open, &stop, &mut |e| log(slot, verbose, e));
                // One slot failing stops the others: the process exits with its error.
                stop.store(true, Ordering::SeqCst);
                r
            })
            .context("cannot start a slot thread")?;
        slots.push((slot, handle));
    }
    let mut failures = Vec::new();
    for (slot, h) in slots {
        match h.join() {
            Ok(Ok(stats)) => eprintln!(
                "iccard: slot {slot} stopped after {} APDUs over {} connections",
                stats.apdus, stats.connections
            ),
            Ok(Err(e)) => failures.push(format!("slot {slot}: {e}")),
            Err(_) => failures.push(format!("slot {slot}: the serving thread panicked")),
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

fn log(slot: u16, verbose: bool, e: &Event<'_>) {
    match e {
        Event::Connected(peer) => eprintln!("iccard: slot {slot}: connected to vpcd at {peer}"),
        Event::Disconnected(why) => {
            eprintln!("iccard: slot {slot}: disconnected ({why}); card powered off, reconnecting")
        }
        Event::Waiting(err) => {
            eprintln!("iccard: slot {slot}: vpcd is not listening ({err}); retrying until it is")
        }
        Event::CardFailed(err) => eprintln!(
            "iccard: slot {slot}: the card could not answer ({err}); sent 6581 and reopened the image"
        ),
        Event::Power(m) if verbose => eprintln!("iccard: slot {slot}: {m:?}"),
        Event::Apdu { command, response } if verbose => eprintln!(
            "iccard: slot {slot}: > {} < {}",
            hex::encode(command),
            hex::encode(response)
        ),
        _ => {}
    }
}
