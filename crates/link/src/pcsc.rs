//! The reader side of PC/SC: a [`CardChannel`] to a card in a reader that pcscd manages.
//!
//! [`list_readers`] names the readers and whether a card is in each; [`PcscCard::connect`]
//! opens a shared connection to the card in a reader (chosen by exact name, or by a fragment
//! that names exactly one reader); [`PcscCard::transaction`] takes the card exclusively for a
//! sequence of commands that must not be interleaved with another application's (a purse
//! flow). [`transmit_full`] adds what a terminal does with `61xx` (GET RESPONSE) and `6Cxx`
//! (send again with the right Le) to any channel.
//!
//! Architecture invariant: moves bytes; knows nothing of what the APDUs mean.

use crate::{CardChannel, LinkError};
use pcsc::{Context, Disposition, Protocols, Scope, ShareMode};
use std::ffi::CString;

/// A reader pcscd knows of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderInfo {
    /// The reader's name, as PC/SC spells it.
    pub name: String,
    /// The ATR of the card in the reader, `None` when no card is present.
    pub atr: Option<Vec<u8>>,
}

/// A hint on what to do about a PC/SC error, for the messages users see.
fn hint(e: pcsc::Error) -> &'static str {
    match e {
        pcsc::Error::NoService | pcsc::Error::ServiceStopped | pcsc::Error::CommError => {
            " (is pcscd running? for the virtual reader: scripts/pcsc-netns up)"
        }
        pcsc::Error::NoReadersAvailable => " (pcscd has no reader: is vsmartcard-vpcd installed?)",
        pcsc::Error::NoSmartcard | pcsc::Error::RemovedCard => {
            " (no card: for a virtual card run `iccard card serve --image FILE`)"
        }
        _ => "",
    }
}

fn err(what: impl Into<String>) -> impl FnOnce(pcsc::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError::Pcsc {
        what: format!("{what}{}", hint(source)),
        source,
    }
}

fn context() -> Result<Context, LinkError> {
    Context::establish(Scope::User).map_err(err("cannot reach pcscd"))
}

/// The readers pcscd knows, each with the ATR of the card in it (if any).
pub fn list_readers() -> Result<Vec<ReaderInfo>, LinkError> {
    let ctx = context()?;
    reader_infos(&ctx)
}

fn reader_infos(ctx: &Context) -> Result<Vec<ReaderInfo>, LinkError> {
    let names = match ctx.list_readers_owned() {
        Ok(n) => n,
        Err(pcsc::Error::NoReadersAvailable) => return Ok(Vec::new()),
        Err(e) => return Err(err("cannot list the readers")(e)),
    };
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut states: Vec<pcsc::ReaderState> = names
        .iter()
        .map(|n| pcsc::ReaderState::new(n.clone(), pcsc::State::UNAWARE))
        .collect();
    ctx.get_status_change(std::time::Duration::ZERO, &mut states)
        .map_err(err("cannot read the readers' states"))?;
    Ok(states
        .iter()
        .map(|s| ReaderInfo {
            name: s.name().to_string_lossy().into_owned(),
            atr: s
                .event_state()
                .contains(pcsc::State::PRESENT)
                .then(|| s.atr().to_vec()),
        })
        .collect())
}

/// Picks the reader `wanted` names: the exact name, else the one reader whose name contains it
/// (case-insensitively).
pub fn resolve_reader(names: &[String], wanted: &str) -> Result<String, LinkError> {
    if let Some(n) = names.iter().find(|n| *n == wanted) {
        return Ok(n.clone());
    }
    let w = wanted.to_lowercase();
    let matches: Vec<&String> = names
        .iter()
        .filter(|n| n.to_lowercase().contains(&w))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(LinkError::NoSuchReader {
            wanted: wanted.to_string(),
            known: names.join(", "),
        }),
        many => Err(LinkError::NoSuchReader {
            wanted: format!("{wanted} (ambiguous)"),
            known: many
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// A connection to the card in a PC/SC reader.
pub struct PcscCard {
    // Field order matters: the card is disconnected before the context is released. `None`
    // only inside `drop`, which disconnects with the chosen disposition.
    card: Option<pcsc::Card>,
    atr: Vec<u8>,
    reader: String,
    disposition: Disposition,
    _ctx: Context,
}

impl std::fmt::Debug for PcscCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcscCard")
            .field("reader", &self.reader)
            .field("atr", &self.atr)
            .finish()
    }
}

impl PcscCard {
    /// Connects (shared, T=0 or T=1) to the card in the reader `reader` names (see
    /// [`resolve_reader`]).
    pub fn connect(reader: &str) -> Result<Self, LinkError> {
        let ctx = context()?;
        let names: Vec<String> = match ctx.list_readers_owned() {
            Ok(n) => n
                .into_iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect(),
            Err(pcsc::Error::NoReadersAvailable) => Vec::new(),
            Err(e) => return Err(err("cannot list the readers")(e)),
        };
        let name = resolve_reader(&names, reader)?;
        let cname = CString::new(name.clone()).map_err(|_| LinkError::NoSuchReader {
            wanted: reader.to_string(),
            known: names.join(", "),
        })?;
        let card = ctx
            .connect(&cname, ShareMode::Shared, Protocols::ANY)
            .map_err(err(format!("cannot connect to the card in {name:?}")))?;
        let atr = card_atr(&card, &name)?;
        Ok(Self {
            card: Some(card),
            atr,
            reader: name,
            disposition: Disposition::ResetCard,
            _ctx: ctx,
        })
    }

    /// The reader's full name.
    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// The card's ATR (as of the connection or the last reset).
    pub fn atr(&self) -> &[u8] {
        &self.atr
    }

    /// What happens to the card when this connection is dropped: reset (the default, so no
    /// security state outlives the connection) or left as it is.
    pub fn reset_on_drop(&mut self, reset: bool) {
        self.disposition = if reset {
            Disposition::ResetCard
        } else {
            Disposition::LeaveCard
        };
    }

    /// Takes the card exclusively until the returned channel is dropped: no other application
    /// can send it anything in between (`SCardBeginTransaction`).
    pub fn transaction(&mut self) -> Result<PcscTransaction<'_>, LinkError> {
        let reader = self.reader.clone();
        let card = self.card.as_mut().ok_or(LinkError::PowerLost)?;
        let tx = card.transaction().map_err(err(format!(
            "cannot take the card in {reader:?} exclusively"
        )))?;
        Ok(PcscTransaction {
            tx,
            atr: &mut self.atr,
            reader,
        })
    }
}

impl Drop for PcscCard {
    fn drop(&mut self) {
        // pcsc::Card's own drop resets; honour the chosen disposition instead. A failure here
        // has no one to be reported to: pcscd cleans up after a gone client anyway.
        if let Some(card) = self.card.take() {
            let _ = card.disconnect(self.disposition);
        }
    }
}

fn card_atr(card: &pcsc::Card, reader: &str) -> Result<Vec<u8>, LinkError> {
    let status = card
        .status2_owned()
        .map_err(err(format!("cannot read the card status in {reader:?}")))?;
    Ok(status.atr().to_vec())
}

fn transmit_on(card: &pcsc::Card, reader: &str, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
    let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
    let r = card
        .transmit(apdu, &mut buf)
        .map_err(err(format!("the card in {reader:?} did not answer")))?;
    Ok(r.to_vec())
}

impl CardChannel for PcscCard {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        let card = self.card.as_ref().ok_or(LinkError::PowerLost)?;
        transmit_on(card, &self.reader, apdu)
    }

    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        let card = self.card.as_mut().ok_or(LinkError::PowerLost)?;
        card.reconnect(ShareMode::Shared, Protocols::ANY, Disposition::ResetCard)
            .map_err(err(format!("cannot reset the card in {:?}", self.reader)))?;
        self.atr = card_atr(card, &self.reader)?;
        Ok(self.atr.clone())
    }
}

/// The card taken exclusively (see [`PcscCard::transaction`]); released when dropped.
pub struct PcscTransaction<'a> {
    tx: pcsc::Transaction<'a>,
    atr: &'a mut Vec<u8>,
    reader: String,
}

impl CardChannel for PcscTransaction<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        transmit_on(&self.tx, &self.reader, apdu)
    }

    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        self.tx
            .reconnect(ShareMode::Shared, Protocols::ANY, Disposition::ResetCard)
            .map_err(err(format!("cannot reset the card in {:?}", self.reader)))?;
        *self.atr = card_atr(&self.tx, &self.reader)?;
        Ok(self.atr.clone())
    }
}

/// Sends `apdu` and completes the answer as a terminal does: on `61xx` GET RESPONSE (`00 C0 00
/// 00 xx`, repeated while the card has more, the data concatenated), on `6Cxx` the same command
/// again with Le = `xx`. At most 64 follow-ups, so a card that keeps asking cannot hang the
/// caller.
pub fn transmit_full(
    channel: &mut (impl CardChannel + ?Sized),
    apdu: &[u8],
) -> Result<Vec<u8>, LinkError> {
    let mut data = Vec::new();
    let mut r = channel.transmit(apdu)?;
    for _ in 0..64 {
        let n = r.len();
        if n < 2 {
            break;
        }
        let (sw1, sw2) = (r[n - 2], r[n - 1]);
        match sw1 {
            0x61 => {
                data.extend_from_slice(&r[..n - 2]);
                let cla = apdu.first().map_or(0, |c| c & 0x03);
                r = channel.transmit(&[cla, 0xC0, 0x00, 0x00, sw2])?;
            }
            0x6C if apdu.len() >= 5 => {
                let mut again = apdu.to_vec();
                // Case 2 short: header ‖ Le; case 4 short: header ‖ Lc ‖ data ‖ Le.
                let last = again.len() - 1;
                if again.len() == 5 || again.len() == 5 + usize::from(again[4]) + 1 {
                    again[last] = sw2;
                } else {
                    break;
                }
                r = channel.transmit(&again)?;
            }
            _ => break,
        }
    }
    data.extend_from_slice(&r);
    Ok(data)
}
