//! APDU round trips per second through pcscd and vpcd, client side the `pcsc` crate, for
//! iccard's card ([`vpcd::serve`] over an [`ImageCard`]) and, in the same run on the same path,
//! a minimal echo card (answers `9000` to everything) as the transport floor. Also: iccard's
//! card with `TCP_QUICKACK` off (the delayed-ACK stall), and the card in-process with no
//! transport at all.
//!
//! Needs what the PC/SC tests need (root, pcscd, vsmartcard-vpcd; `scripts/pcsc-netns up` is run
//! from here). `cargo bench -p iccard-link --bench vpcd`. The served cards run inside the
//! `iccard` namespace as this same binary re-executed in a serving role.

use iccard_cos::nvm::SimEeprom;
use iccard_cos::{Card, ChipData, Manufacture, SeededRandom};
use iccard_link::vpcd::{self, ServeConfig};
use iccard_link::{list_readers, save_image, CardChannel, ImageCard, PcscCard};
use socket2::SockRef;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const ROLE: &str = "ICCARD_VPCD_BENCH_ROLE";
const ADDR: &str = "ICCARD_VPCD_BENCH_ADDR";
const IMAGE: &str = "ICCARD_VPCD_BENCH_IMAGE";
const QUICKACK: &str = "ICCARD_VPCD_BENCH_QUICKACK";
const CARD_READER: &str = "Virtual PCD 00 00";
const ECHO_READER: &str = "Virtual PCD 00 01";
/// SELECT MF, no answer data: `9000` from both cards.
const SELECT_MF: [u8; 7] = [0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00];
const GET_CHALLENGE: [u8; 5] = [0x00, 0x84, 0x00, 0x00, 0x08];
/// The echo card's ATR: T=1, no historical bytes, TCK.
const ECHO_ATR: [u8; 4] = [0x3B, 0x80, 0x01, 0x81];

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("card") => serve_card(),
        Ok("echo") => echo_card(),
        _ => harness(),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}

/// Role `card`: iccard's card on one vpcd slot, as `iccard card serve` runs it.
fn serve_card() {
    let image = PathBuf::from(env(IMAGE));
    let config = ServeConfig {
        addr: env(ADDR),
        quickack: env(QUICKACK) == "1",
        ..ServeConfig::default()
    };
    let stop = AtomicBool::new(false);
    vpcd::serve(&config, || ImageCard::open(&image), &stop, &mut |_| {}).expect("serving the card");
}

/// Role `echo`: the smallest card the protocol allows, with quick ACKs re-armed before reads.
fn echo_card() {
    let addr = env(ADDR);
    loop {
        let Ok(mut s) = TcpStream::connect(&addr) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        s.set_nodelay(true).unwrap();
        let mut head = [0u8; 2];
        let mut body = vec![0u8; 0];
        loop {
            SockRef::from(&s).set_tcp_quickack(true).unwrap();
            if s.read_exact(&mut head).is_err() {
                break;
            }
            body.resize(u16::from_be_bytes(head) as usize, 0);
            SockRef::from(&s).set_tcp_quickack(true).unwrap();
            if s.read_exact(&mut body).is_err() {
                break;
            }
            let answer: &[u8] = match body.as_slice() {
                [0x04] => &ECHO_ATR,
                [_] => continue,
                _ => &[0x90, 0x00],
            };
            if s.write_all(&vpcd::frame(answer)).is_err() {
                break;
            }
        }
    }
}

/// A serving role running inside the namespace; killed when dropped.
struct Role(Child);

impl Role {
    fn start(role: &str, addr: &str, image: &Path, quickack: bool) -> Role {
        let exe = std::env::current_exe().unwrap();
        // iproute2's ip lives in /usr/sbin on Debian, not on every PATH.
        let ip = Path::new("/usr/sbin/ip");
        let child = Command::new(if ip.is_file() { ip } else { Path::new("ip") })
            .args(["netns", "exec", "iccard"])
            .arg(exe)
            .env(ROLE, role)
            .env(ADDR, addr)
            .env(IMAGE, image)
            .env(QUICKACK, if quickack { "1" } else { "0" })
            .stdin(Stdio::null())
            .spawn()
            .expect("ip netns exec starts the serving role");
        Role(child)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_card(reader: &str, present: bool) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let there = list_readers()
            .unwrap()
            .iter()
            .any(|r| r.name == reader && r.atr.is_some());
        if there == present {
            return;
        }
        assert!(
            Instant::now() < end,
            "{reader}: card {} within 10 s",
            if present {
                "did not appear"
            } else {
                "did not go"
            }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn blank_card(path: &Path) {
    let spec = Manufacture {
        chip: ChipData {
            chip_maker: 1,
            chip_serial: [1, 2, 3, 4, 5, 6, 7, 8],
            production_date: [0x20, 0x26, 0x11, 0x26],
            batch: 1,
            os_version: 0x0100,
        },
        transport_key: zeroize::Zeroizing::new([0x42; 16]),
        transport_key_version: 1,
        attack_threshold: 10,
    };
    let card = Card::manufacture(
        SimEeprom::new(32 * 1024, 100_000).unwrap(),
        SeededRandom::new(1),
        &spec,
    )
    .unwrap();
    save_image(path, card.nvm().eeprom()).unwrap();
}

/// Round trips per second of `n` transmissions of `apdu`, each answered `9000`.
fn rate(ch: &mut dyn CardChannel, apdu: &[u8], n: u32) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        let r = ch.transmit(apdu).unwrap();
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00], "{r:02X?}");
    }
    f64::from(n) / t.elapsed().as_secs_f64()
}

/// Median, lowest and highest of the rounds.
fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn line(what: &str, apdu: &str, (median, low, high): (f64, f64, f64)) {
    println!("  {what:<38} {apdu:<14} {median:>8.0} /s  (rounds {low:.0}..{high:.0})");
}

fn harness() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pcsc-netns");
    let up = Command::new("bash")
        .arg(&script)
        .arg("up")
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "this benchmark needs pcscd with vpcd in the iccard namespace: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("iccard-pcsc-tests.lock"))
        .unwrap();
    lock.lock().unwrap();
    wait_card(CARD_READER, false);
    wait_card(ECHO_READER, false);

    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.img");
    blank_card(&image);
    let rounds = 5;
    let n = 2_000;

    let card_role = Role::start("card", "127.0.0.1:35963", &image, true);
    let _echo_role = Role::start("echo", "127.0.0.1:35964", &image, true);
    wait_card(CARD_READER, true);
    wait_card(ECHO_READER, true);
    let mut card = PcscCard::connect(CARD_READER).unwrap();
    let mut echo = PcscCard::connect(ECHO_READER).unwrap();
    rate(&mut card, &SELECT_MF, 200);
    rate(&mut echo, &SELECT_MF, 200);
    let (mut e, mut c, mut g) = (Vec::new(), Vec::new(), Vec::new());
    // Interleaved rounds, so both see the same machine load.
    for _ in 0..rounds {
        e.push(rate(&mut echo, &SELECT_MF, n));
        c.push(rate(&mut card, &SELECT_MF, n));
        g.push(rate(&mut card, &GET_CHALLENGE, n));
    }
    let (echo_rate, card_rate, challenge_rate) = (summary(e), summary(c), summary(g));
    drop(card);
    drop(card_role);
    wait_card(CARD_READER, false);

    // The stall TCP_QUICKACK avoids.
    let stall_n = 40;
    let slow_role = Role::start("card", "127.0.0.1:35963", &image, false);
    wait_card(CARD_READER, true);
    let mut card = PcscCard::connect(CARD_READER).unwrap();
    rate(&mut card, &SELECT_MF, 5);
    let slow_rate = rate(&mut card, &SELECT_MF, stall_n);
    drop(card);
    drop(slow_role);
    drop(echo);

    // No transport: the same card in-process.
    let mut local = ImageCard::open(&image).unwrap();
    let local_rate = rate(&mut local, &SELECT_MF, 100_000);

    println!("vpcd round trips per second, pcsc crate -> pcscd -> vpcd -> card, same run");
    println!("(median of {rounds} interleaved rounds of {n} round trips each)");
    line("echo card (answers 9000)", "SELECT MF", echo_rate);
    line("iccard card (card OS, image card)", "SELECT MF", card_rate);
    line("iccard card", "GET CHALLENGE", challenge_rate);
    println!(
        "  ratio iccard / echo (SELECT MF, medians)              {:>8.2}",
        card_rate.0 / echo_rate.0
    );
    println!(
        "  iccard card, TCP_QUICKACK off ({stall_n} trips)      SELECT MF      {slow_rate:>8.1} /s"
    );
    println!("  iccard card in-process, no transport   SELECT MF      {local_rate:>8.0} /s");
}
