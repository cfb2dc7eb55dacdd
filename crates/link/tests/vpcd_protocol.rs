//! The vpcd card side against a stand-in for vpcd (a TCP listener in the test playing the
//! driver's part, byte for byte as Debian 12's vpcd sends): framing, control messages, volatile
//! state cleared by power and reset, persistence before the answer, reconnection, stopping,
//! and the delayed-ACK stall that `TCP_QUICKACK` avoids.

use iccard_cos::nvm::SimEeprom;
use iccard_cos::{Card, ChipData, Manufacture, SeededRandom, ATR};
use iccard_link::vpcd::{self, Event, Message, ServeConfig, ServeStats};
use iccard_link::{save_image, ImageCard, LinkError};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

fn blank(path: &Path) {
    let spec = Manufacture {
        chip: ChipData {
            chip_maker: 1,
            chip_serial: [8, 7, 6, 5, 4, 3, 2, 1],
            production_date: [0x20, 0x26, 0x11, 0x25],
            batch: 3,
            os_version: 0x0100,
        },
        transport_key: Zeroizing::new([0x42; 16]),
        transport_key_version: 1,
        attack_threshold: 10,
    };
    let card = Card::manufacture(
        SimEeprom::new(8 * 1024, 100_000).unwrap(),
        SeededRandom::new(7),
        &spec,
    )
    .unwrap();
    save_image(path, card.nvm().eeprom()).unwrap();
}

/// The driver's end of one connection.
struct FakeVpcd {
    s: TcpStream,
    /// Send the length and the body in two writes with Nagle on, as Debian 12's vpcd does.
    split: bool,
}

impl FakeVpcd {
    fn accept(l: &TcpListener, split: bool) -> Self {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(!split).unwrap();
        Self { s, split }
    }

    fn send(&mut self, body: &[u8]) {
        let len = (body.len() as u16).to_be_bytes();
        if self.split {
            self.s.write_all(&len).unwrap();
            self.s.write_all(body).unwrap();
        } else {
            self.s.write_all(&vpcd::frame(body)).unwrap();
        }
    }

    fn recv(&mut self) -> Vec<u8> {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h).unwrap();
        let mut b = vec![0u8; u16::from_be_bytes(h) as usize];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    fn apdu(&mut self, c: &[u8]) -> Vec<u8> {
        self.send(c);
        let r = self.recv();
        assert!(!r.is_empty(), "empty answer to {c:02X?}");
        r
    }

    fn atr(&mut self) -> Vec<u8> {
        self.send(&[0x04]);
        self.recv()
    }
}

/// What a serving thread returns: its result and the events it logged.
type Outcome = (Result<ServeStats, LinkError>, Vec<String>);

struct Served {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Outcome>>,
}

impl Served {
    fn start(addr: String, image: PathBuf, quickack: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let config = ServeConfig {
                addr,
                retry: Duration::from_millis(20),
                poll: Duration::from_millis(20),
                quickack,
            };
            let mut log = Vec::new();
            let r = vpcd::serve(&config, || ImageCard::open(&image), &s2, &mut |e| {
                log.push(match e {
                    Event::Connected(_) => "connected".to_string(),
                    Event::Disconnected(_) => "disconnected".to_string(),
                    Event::Waiting(_) => "waiting".to_string(),
                    Event::Power(m) => format!("{m:?}"),
                    Event::Apdu { .. } => "apdu".to_string(),
                    Event::CardFailed(_) => "failed".to_string(),
                })
            });
            (r, log)
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Outcome {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn setup() -> (tempfile::TempDir, PathBuf, TcpListener, String) {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.img");
    blank(&image);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (dir, image, l, addr)
}

/// SELECT MF, no answer data (P2 `0C`).
const SELECT_MF: [u8; 7] = [0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00];
const GET_CHALLENGE: [u8; 5] = [0x00, 0x84, 0x00, 0x00, 0x08];
/// EXTERNAL AUTHENTICATE with the transport key (index 0) and a wrong cryptogram.
const BAD_EXTERNAL_AUTH: [u8; 13] = [0x00, 0x82, 0x00, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];

fn sw(r: &[u8]) -> [u8; 2] {
    [r[r.len() - 2], r[r.len() - 1]]
}

#[test]
fn messages_are_classified_and_framed() {
    assert_eq!(Message::parse(&[0x00]), Message::PowerOff);
    assert_eq!(Message::parse(&[0x01]), Message::PowerOn);
    assert_eq!(Message::parse(&[0x02]), Message::Reset);
    assert_eq!(Message::parse(&[0x04]), Message::GetAtr);
    assert_eq!(Message::parse(&[0x03]), Message::UnknownControl(3));
    assert_eq!(Message::parse(&[]), Message::Empty);
    assert_eq!(Message::parse(&[0x00, 0x84]), Message::Apdu(&[0x00, 0x84]));
    assert_eq!(vpcd::frame(&[0x90, 0x00]), vec![0x00, 0x02, 0x90, 0x00]);
    assert_eq!(vpcd::frame(&[0xAB; 300])[..2], [0x01, 0x2C]);
    assert_eq!(
        vpcd::slot_addr("127.0.0.1:35963", 1).unwrap(),
        "127.0.0.1:35964"
    );
    assert_eq!(vpcd::slot_addr("[::1]:100", 2).unwrap(), "[::1]:102");
    assert!(vpcd::slot_addr("localhost", 0).is_err());
    assert!(vpcd::slot_addr("h:65535", 1).is_err());
}

#[test]
fn atr_apdus_and_power_control_clear_volatile_state() {
    let (_d, image, l, addr) = setup();
    let served = Served::start(addr, image, true);
    let mut v = FakeVpcd::accept(&l, true);
    // GET ATR is answered (and is how vpcd polls for the card) without touching the state.
    v.send(&[0x01]);
    assert_eq!(v.atr(), ATR.to_vec());
    assert_eq!(sw(&v.apdu(&SELECT_MF)), [0x90, 0x00]);

    // A challenge survives GET ATR; a wrong cryptogram is then judged (63Cx), not refused
    // for want of a challenge (6984).
    for (control, name) in [
        (None, "get atr"),
        (Some(0x02u8), "reset"),
        (Some(0x00), "power off"),
    ] {
        let r = v.apdu(&GET_CHALLENGE);
        assert_eq!(sw(&r), [0x90, 0x00]);
        assert_eq!(r.len(), 10);
        match control {
            None => assert_eq!(v.atr(), ATR.to_vec()),
            Some(c) => {
                v.send(&[c]);
                if c == 0x00 {
                    v.send(&[0x01]);
                }
            }
        }
        let r = v.apdu(&BAD_EXTERNAL_AUTH);
        if control.is_none() {
            assert_eq!(sw(&r)[0], 0x63, "after {name}: {r:02X?}");
        } else {
            assert_eq!(
                sw(&r),
                [0x69, 0x84],
                "after {name} the challenge must be gone"
            );
        }
    }
    // The listener goes first: a card server that sees vpcd go away reconnects at once, and
    // the listen backlog would accept it before `finish` stops the server (a second
    // connection, counted or not depending on timing).
    drop(l);
    drop(v);
    let (r, log) = served.finish();
    let stats = r.unwrap();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.apdus, 7);
    assert!(log.contains(&"PowerOn".to_string()), "{log:?}");
    assert!(log.contains(&"Reset".to_string()), "{log:?}");
    assert!(log.contains(&"PowerOff".to_string()), "{log:?}");
}

#[test]
fn a_committing_command_is_saved_before_its_answer_is_sent() {
    let (_d, image, l, addr) = setup();
    let before = std::fs::read(&image).unwrap();
    let served = Served::start(addr, image.clone(), true);
    let mut v = FakeVpcd::accept(&l, false);
    assert_eq!(sw(&v.apdu(&SELECT_MF)), [0x90, 0x00]);
    assert_eq!(
        std::fs::read(&image).unwrap(),
        before,
        "SELECT wrote the image"
    );
    v.apdu(&GET_CHALLENGE);
    let r = v.apdu(&BAD_EXTERNAL_AUTH);
    assert_eq!(sw(&r), [0x63, 0xCE]);
    // The answer is here: the retry counter and attack counter must already be on disk.
    let reopened = ImageCard::open(&image).unwrap();
    assert_eq!(reopened.card().header().attack_counter, 1);
    drop(v);
    drop(served);
}

#[test]
fn it_waits_for_vpcd_and_reconnects_after_it_goes_away_with_power_lost() {
    let (_d, image, l, addr) = setup();
    // vpcd is not listening yet.
    drop(l);
    let served = Served::start(addr.clone(), image, true);
    std::thread::sleep(Duration::from_millis(150));
    let l = TcpListener::bind(&addr).unwrap();
    let mut v = FakeVpcd::accept(&l, true);
    v.send(&[0x01]);
    assert_eq!(sw(&v.apdu(&GET_CHALLENGE)), [0x90, 0x00]);
    // pcscd restarts: the connection drops, the card loses power, and connects again.
    drop(v);
    let mut v = FakeVpcd::accept(&l, true);
    assert_eq!(v.atr(), ATR.to_vec());
    assert_eq!(sw(&v.apdu(&BAD_EXTERNAL_AUTH)), [0x69, 0x84]);
    // And once more with the listener itself gone for a while.
    drop(v);
    drop(l);
    std::thread::sleep(Duration::from_millis(100));
    let l = TcpListener::bind(&addr).unwrap();
    let mut v = FakeVpcd::accept(&l, true);
    assert_eq!(sw(&v.apdu(&SELECT_MF)), [0x90, 0x00]);
    drop(v);
    let (r, log) = served.finish();
    // Three connections served (a fourth may have been made to the listener still open).
    assert!(r.unwrap().connections >= 3, "{log:?}");
    assert_eq!(log.first().map(String::as_str), Some("waiting"), "{log:?}");
    assert!(
        log.iter().filter(|e| *e == "disconnected").count() >= 2,
        "{log:?}"
    );
}

#[test]
fn a_card_that_cannot_save_answers_6581_never_an_empty_reply() {
    let (d, image, l, addr) = setup();
    let served = Served::start(addr, image.clone(), true);
    let mut v = FakeVpcd::accept(&l, true);
    assert_eq!(sw(&v.apdu(&GET_CHALLENGE)), [0x90, 0x00]);
    // The image's directory disappears: the committing command cannot be saved.
    std::fs::remove_dir_all(d.path()).unwrap();
    v.send(&BAD_EXTERNAL_AUTH);
    assert_eq!(v.recv(), vec![0x65, 0x81]);
    // The card cannot be reopened from a missing image: the slot stops with that error.
    let (r, log) = served.finish();
    assert!(r.is_err(), "{log:?}");
    assert!(log.contains(&"failed".to_string()), "{log:?}");
}

#[test]
fn stopping_ends_a_waiting_or_connected_server_promptly() {
    let (_d, image, l, addr) = setup();
    let served = Served::start(addr.clone(), image.clone(), true);
    let _v = FakeVpcd::accept(&l, true);
    let t = Instant::now();
    let (r, _) = served.finish();
    assert!(r.is_ok());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    drop(l);
    let served = Served::start(addr, image, true);
    std::thread::sleep(Duration::from_millis(60));
    let t = Instant::now();
    assert_eq!(served.finish().0.unwrap().connections, 0);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

/// Round trips of SELECT MF with the length and body sent apart (Nagle on at the driver).
fn split_round_trips(quickack: bool, n: u32) -> Duration {
    let (_d, image, l, addr) = setup();
    let served = Served::start(addr, image, quickack);
    let mut v = FakeVpcd::accept(&l, true);
    for _ in 0..5 {
        v.apdu(&SELECT_MF);
    }
    let t = Instant::now();
    for _ in 0..n {
        assert_eq!(sw(&v.apdu(&SELECT_MF)), [0x90, 0x00]);
    }
    let e = t.elapsed();
    drop(v);
    drop(served);
    e
}

#[test]
fn quickack_avoids_the_delayed_ack_stall_of_split_sends() {
    let n = 20;
    let fast = split_round_trips(true, n);
    let slow = split_round_trips(false, n);
    // Without quick ACKs each round trip waits for the delayed ACK (~40 ms on Linux).
    assert!(
        slow > Duration::from_millis(15) * n,
        "no stall without TCP_QUICKACK? {slow:?}"
    );
    assert!(
        fast * 4 < slow,
        "TCP_QUICKACK did not help: {fast:?} with, {slow:?} without"
    );
}
