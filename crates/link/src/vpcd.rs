//! The card side of vsmartcard's vpcd protocol: a card served to pcscd over TCP.
//!
//! vpcd, the virtual-reader driver loaded by pcscd, *listens* on a TCP port per slot (35963,
//! 35964, ... as `/etc/reader.conf.d/vpcd` configures); the virtual card *connects* to it. Every
//! message either way is a 2-byte big-endian length and that many bytes. From vpcd, a 1-byte
//! message is a control code ([`PowerOff`](Message::PowerOff) `00`,
//! [`PowerOn`](Message::PowerOn) `01`, [`Reset`](Message::Reset) `02`,
//! [`GetAtr`](Message::GetAtr) `04`) and anything longer is a command APDU. The card answers
//! GET ATR with its ATR and each APDU with its response; power and reset get no answer. An
//! answer is never empty: vpcd takes an empty answer for a dead card.
//!
//! [`serve`] runs one slot: it connects, answers until vpcd goes away (pcscd stopped or
//! restarted), treats that as the reader losing power (volatile card state cleared), and
//! connects again, until asked to stop. Power off and reset clear the card's volatile state;
//! whatever the card commits is persisted by the [`CardChannel`] before its answer is sent
//! ([`crate::ImageCard`] saves its image atomically after each committing command).
//!
//! Latency: Debian 12's vpcd sends an APDU's length and its body in two `send` calls. With
//! Nagle's algorithm on vpcd's side, the body waits until the length is acknowledged, and a
//! receiver in delayed-ACK mode acknowledges only after about 40 ms. [`serve`] therefore
//! re-arms `TCP_QUICKACK` before every read (Linux clears it again on its own) and sends each
//! answer as one segment with `TCP_NODELAY`.
//!
//! Architecture invariant: moves bytes; knows nothing of what the APDUs mean.

use crate::{CardChannel, LinkError};
use socket2::SockRef;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// vpcd's first slot port (`CHANNELID 0x8C7B` in Debian's `/etc/reader.conf.d/vpcd`); slot n
/// listens on this port + n.
pub const DEFAULT_PORT: u16 = 35963;

/// The address [`ServeConfig::default`] connects to.
pub const DEFAULT_ADDR: &str = "127.0.0.1:35963";

/// Status word sent when the card could not answer a command at all (its image could not be
/// saved): `6581` memory failure, so the terminal knows the command did not happen.
pub const SW_MEMORY_FAILURE: [u8; 2] = [0x65, 0x81];

/// Status word sent in place of an empty answer: `6F00` no precise diagnosis.
pub const SW_NO_DIAGNOSIS: [u8; 2] = [0x6F, 0x00];

/// Largest message body the protocol can carry (the length field is 16 bits).
pub const MAX_MESSAGE: usize = 0xFFFF;

/// One message from vpcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// `00`: the reader switched the card off.
    PowerOff,
    /// `01`: the reader switched the card on.
    PowerOn,
    /// `02`: the reader reset the card.
    Reset,
    /// `04`: the reader asks for the ATR (also its way of checking the card is there).
    GetAtr,
    /// A one-byte message with another code (not sent by any known vpcd; ignored).
    UnknownControl(u8),
    /// Any message of two bytes or more: a command APDU.
    Apdu(&'a [u8]),
    /// An empty message (not sent by any known vpcd; ignored).
    Empty,
}

impl<'a> Message<'a> {
    /// Classifies a message body.
    pub fn parse(body: &'a [u8]) -> Self {
        match body {
            [] => Message::Empty,
            [0x00] => Message::PowerOff,
            [0x01] => Message::PowerOn,
            [0x02] => Message::Reset,
            [0x04] => Message::GetAtr,
            [c] => Message::UnknownControl(*c),
            apdu => Message::Apdu(apdu),
        }
    }
}

/// Frames a message body: its 2-byte big-endian length, then the bytes.
///
/// Panics if `body` is longer than [`MAX_MESSAGE`] (a card answer never is).
pub fn frame(body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len()).expect("vpcd message longer than 65535 bytes");
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The address of vpcd slot `slot` given slot 0's `host:port`: the same host, port + `slot`.
pub fn slot_addr(base: &str, slot: u16) -> Result<String, LinkError> {
    let bad = || LinkError::Vpcd {
        what: format!("vpcd address {base:?}"),
        source: io::Error::new(io::ErrorKind::InvalidInput, "expected HOST:PORT"),
    };
    let (host, port) = base.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let port = port.checked_add(slot).ok_or_else(bad)?;
    Ok(format!("{host}:{port}"))
}

/// How [`serve`] connects and waits.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// vpcd's `host:port` for this slot.
    pub addr: String,
    /// Pause between connection attempts while vpcd is not listening.
    pub retry: Duration,
    /// How long a blocked read waits before looking at the stop flag again.
    pub poll: Duration,
    /// Re-arm `TCP_QUICKACK` before every read (see the module documentation). Only turned off
    /// to measure what it saves.
    pub quickack: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR.to_string(),
            retry: Duration::from_millis(200),
            poll: Duration::from_millis(100),
            quickack: true,
        }
    }
}

/// What happened while serving, for logging.
#[derive(Debug)]
pub enum Event<'a> {
    /// Connected to vpcd.
    Connected(SocketAddr),
    /// The connection ended (vpcd closed it, or it failed); the card lost power.
    Disconnected(&'a str),
    /// vpcd is not listening; retrying every [`ServeConfig::retry`] (reported once per outage).
    Waiting(&'a io::Error),
    /// A power or reset control message.
    Power(Message<'a>),
    /// A command APDU and the answer sent.
    Apdu {
        /// The command.
        command: &'a [u8],
        /// The answer sent.
        response: &'a [u8],
    },
    /// The card failed to answer (e.g. its image could not be saved): `6581` was sent and the
    /// card reopened from its image.
    CardFailed(&'a LinkError),
}

/// Counters returned by [`serve`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Connections made to vpcd.
    pub connections: u64,
    /// APDUs answered.
    pub apdus: u64,
}

/// Serves a card on one vpcd slot until `stop` becomes true.
///
/// `open` powers the card up (at start, and again after the card failed to answer a command,
/// so that memory and image agree). Returns when `stop` is set (checked at least every
/// [`ServeConfig::poll`]), or with an error when `open` fails.
pub fn serve<C, F>(
    config: &ServeConfig,
    mut open: F,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&Event<'_>),
) -> Result<ServeStats, LinkError>
where
    C: CardChannel,
    F: FnMut() -> Result<C, LinkError>,
{
    let mut card = open()?;
    let mut atr = card.reset()?;
    let mut stats = ServeStats::default();
    let mut waiting_reported = false;
    while !stop.load(Ordering::SeqCst) {
        let stream = match connect(&config.addr, config.retry) {
            Ok(s) => s,
            Err(e) => {
                if !waiting_reported {
                    on_event(&Event::Waiting(&e));
                    waiting_reported = true;
                }
                sleep_unless_stopped(config.retry, stop);
                continue;
            }
        };
        waiting_reported = false;
        stats.connections += 1;
        if let Ok(peer) = stream.peer_addr() {
            on_event(&Event::Connected(peer));
        }
        let mut session = Session {
            stream,
            config,
            stop,
        };
        let end = session.run(&mut card, &mut atr, &mut open, &mut stats, on_event);
        // The reader is gone: the card loses power, volatile state with it.
        atr = card.reset()?;
        match end {
            Ok(SessionEnd::Stopped) => break,
            Ok(SessionEnd::Closed) => on_event(&Event::Disconnected("vpcd closed the connection")),
            Err(SessionError::Io(e)) => on_event(&Event::Disconnected(&e.to_string())),
            Err(SessionError::Card(e)) => return Err(e),
        }
    }
    Ok(stats)
}

fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout.max(Duration::from_millis(50))) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let end = Instant::now() + total;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

enum SessionEnd {
    Stopped,
    Closed,
}

enum SessionError {
    Io(io::Error),
    Card(LinkError),
}

impl From<io::Error> for SessionError {
    fn from(e: io::Error) -> Self {
        SessionError::Io(e)
    }
}

enum Read2 {
    Done,
    Closed,
    Stopped,
}

struct Session<'a> {
    stream: TcpStream,
    config: &'a ServeConfig,
    stop: &'a AtomicBool,
}

impl Session<'_> {
    fn run<C, F>(
        &mut self,
        card: &mut C,
        atr: &mut Vec<u8>,
        open: &mut F,
        stats: &mut ServeStats,
        on_event: &mut dyn FnMut(&Event<'_>),
    ) -> Result<SessionEnd, SessionError>
    where
        C: CardChannel,
        F: FnMut() -> Result<C, LinkError>,
    {
        self.stream.set_nodelay(true)?;
        self.stream.set_read_timeout(Some(self.config.poll))?;
        let mut head = [0u8; 2];
        let mut body = Vec::with_capacity(300);
        loop {
            match self.read_full(&mut head)? {
                Read2::Done => {}
                Read2::Closed => return Ok(SessionEnd::Closed),
                Read2::Stopped => return Ok(SessionEnd::Stopped),
            }
            body.resize(usize::from(u16::from_be_bytes(head)), 0);
            match self.read_full(&mut body)? {
                Read2::Done => {}
                // A message cut short is a connection gone.
                Read2::Closed | Read2::Stopped => return Ok(SessionEnd::Closed),
            }
            let message = Message::parse(&body);
            match message {
                Message::PowerOff | Message::PowerOn | Message::Reset => {
                    *atr = card.reset().map_err(SessionError::Card)?;
                    on_event(&Event::Power(message));
                }
                Message::GetAtr => self.send(atr)?,
                Message::Apdu(command) => {
                    let (response, failed) = match card.transmit(command) {
                        Ok(r) if r.is_empty() => (SW_NO_DIAGNOSIS.to_vec(), None),
                        Ok(r) => (r, None),
                        Err(e) => (SW_MEMORY_FAILURE.to_vec(), Some(e)),
                    };
                    stats.apdus += 1;
                    if let Some(e) = &failed {
                        on_event(&Event::CardFailed(e));
                    }
                    on_event(&Event::Apdu {
                        command,
                        response: &response,
                    });
                    self.send(&response)?;
                    if failed.is_some() {
                        // What the card holds in memory may be ahead of its image: start again
                        // from the image, which the answer just sent tells the truth about (the
                        // command did not happen).
                        *card = open().map_err(SessionError::Card)?;
                        *atr = card.reset().map_err(SessionError::Card)?;
                    }
                }
                Message::UnknownControl(_) | Message::Empty => {}
            }
        }
    }

    /// Fills `buf`, re-arming quick ACKs before each read and looking at the stop flag while
    /// nothing arrives.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<Read2> {
        let mut got = 0;
        while got < buf.len() {
            if self.config.quickack {
                SockRef::from(&self.stream).set_tcp_quickack(true)?;
            }
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => return Ok(Read2::Closed),
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.stop.load(Ordering::SeqCst) {
                        return Ok(Read2::Stopped);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Read2::Done)
    }

    fn send(&mut self, body: &[u8]) -> io::Result<()> {
        // One buffer, one segment: length and body never wait on each other.
        self.stream.write_all(&frame(body))
    }
}
