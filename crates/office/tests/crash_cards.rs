//! SIGKILL crash tests of issuance and recharge on cards, on SQLite and on PostgreSQL.
//!
//! The parent makes a production batch of stocked cards and writes each card's EEPROM to an
//! image file in a temporary directory. Each round spawns this test binary again with
//! `ICCARD_CARDS_CRASH_URL` set; its entry point [`child_issues_and_recharges_until_killed`]
//! opens the office, logs an issuance clerk and a cashier in and loops: it issues a stocked card
//! ([`Office::issue_card`] with the development keystore through an [`ImageCard`]) or recharges
//! an issued one ([`Office::recharge`]), printing `BEGIN` before the card is touched and an
//! `ACK` line only after the call returned `Ok`. An [`ImageCard`] saves the card atomically
//! after each command that wrote, so a killed process leaves each card as a real card is left
//! after a power cut: with or without the last command, never half of it. The parent kills the
//! child with SIGKILL at a seeded moment: after the spawn, after `READY`, inside an issuance
//! (after a `BEGIN issue` line: personalization APDUs, the job commits), inside a recharge (after
//! `BEGIN load`: load APDUs, the pending row, the posting) or after the n-th acknowledgement.
//!
//! After every kill the parent proves:
//! - `Office::check` is clean (balanced entries, float = shadows, audit chain);
//! - every acknowledged issuance (inventory `issued` with its card number, job `done`) and
//!   every acknowledged load (its `card_loads` row) is in the database;
//! - every card image agrees with the office, or the difference is on a pending list the next
//!   contact resolves: a stocked card without an open job is still blank; a card with an open
//!   issuance job (`personalizing`) may be in any state; an issued card is SECURED with its
//!   card number and its balance and online serial equal the shadow's proven balance and
//!   online serial, unless a pending load of the card explains it (the card has either not
//!   executed it or executed exactly it); a voided card's job was rolled back and it has no
//!   account.
//!
//! Then, every other round and at the end, the parent resolves the pending cases through the
//! real API (`issue_card` again on the same image: resumed or rolled back; `settle_pending_load`
//! on the image) and proves that every card then matches exactly, nothing is pending, check is
//! clean and the sum of the issued cards' balances equals the float (no load credited twice).
//! The rounds left unresolved let the child meet pending cases itself (a recharge settles an
//! earlier load first; an issuance resumes its job).
//!
//! `ICCARD_CRASH_SEED` replays a seed (printed on failure), `ICCARD_CRASH_KILLS` changes the
//! number of kills per database.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iccard_apdu::{tlv, Command as Apdu};
use iccard_cos::CardState;
use iccard_issuer::script::Admin;
use iccard_link::{save_image, ImageCard};
use iccard_office::issuance::IssueRequest;
use iccard_office::keystore::DevKeystore;
use iccard_office::products::{CardType, ProductProfile};
use iccard_office::recharge::{PendingResolution, RechargeRequest};
use iccard_office::{Mode, Office, OfficeError, Password, Session, Store};
use iccard_terminal::{PurseCard, TransactionTime};
use zeroize::Zeroizing;

use crate::support::{self, Backend, TestDb, CLERK_PASSWORD};

/// The seed used unless `ICCARD_CRASH_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x1CCA_2D0F_CA2D_0001;
/// Kills per run unless `ICCARD_CRASH_KILLS` says otherwise.
const SQLITE_KILLS: u32 = 24;
const POSTGRES_KILLS: u32 = 20;
/// Cards put in stock before the first round.
const CARDS: i64 = 40;
const FIRST_CHIP: &str = "4943000000007000";
const PRODUCT: &str = "TRANSIT";
/// Loads are 1 to this many minor units.
const MAX_LOAD: u64 = 900;
/// Share (percent) of issuances among the child's operations after its first.
const ISSUE_PERCENT: u64 = 15;
/// How long a child may take to reach `READY`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after `READY` the parent waits for the line a kill waits for before killing anyway
/// (the stock may have run out of cards to issue).
const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// SplitMix64: a small, seedable generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in `[lo, hi)` milliseconds.
    fn delay(&mut self, lo_ms: f64, hi_ms: f64) -> Duration {
        Duration::from_micros((1000.0 * lo_ms * (hi_ms / lo_ms).powf(self.unit())) as u64)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

fn profile() -> ProductProfile {
    ProductProfile {
        max_balance_minor: 5_000_000,
        ..support::product(CardType::Anonymous)
    }
}

fn request() -> IssueRequest {
    IssueRequest {
        pin: Zeroizing::new("123456".into()),
        holder: None,
        date: [0x20, 0x26, 0x03, 0x14],
    }
}

fn keys() -> DevKeystore {
    DevKeystore::new(Mode::Development).expect("development keystore")
}

fn when() -> TransactionTime {
    TransactionTime::parse("20260314", "120000").expect("time")
}

/// The chip serials of the card images in `dir` (temporary files of a killed save ignored).
fn chips(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("card directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// (chip serial, inventory state, application serial) of every inventory card.
async fn inventory(office: &Office) -> Result<Vec<(String, String, Option<String>)>, OfficeError> {
    let mut tx = office.store().read().await?;
    let rows = tx
        .fetch_all(
            "SELECT chip_serial, state, application_serial FROM inventory_cards ORDER BY chip_serial",
            &[],
        )
        .await?;
    tx.rollback().await?;
    Ok(rows)
}

// ----- the child -----

/// The child's work: issues and recharges until killed. A no-op unless spawned by [`run`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_issues_and_recharges_until_killed() {
    let Ok(url) = std::env::var("ICCARD_CARDS_CRASH_URL") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("ICCARD_CARDS_CRASH_DIR").expect("card directory"));
    let seed = env_u64("ICCARD_CARDS_CRASH_SEED").expect("seed");
    let issue_first = std::env::var("ICCARD_CARDS_CRASH_FIRST").as_deref() == Ok("issue");
    let mut rng = Rng(seed);
    let ks = keys();
    println!("PHASE connect");
    let store = Store::connect(&url).await.expect("connect");
    println!("PHASE open");
    let office = Office::open(store).await.expect("open");
    println!("PHASE login");
    let issuer = office
        .login("issuer", &Password::new(CLERK_PASSWORD), "RP-1")
        .await
        .expect("issuer login");
    let cashier = office
        .login("cashier", &Password::new(CLERK_PASSWORD), "RP-1")
        .await
        .expect("cashier login");
    let images = chips(&dir);
    println!("READY");
    for i in 0u64.. {
        let inv = inventory(&office).await.expect("inventory");
        let stocked: Vec<&String> = inv
            .iter()
            .filter(|(c, s, _)| s == "in_stock" && images.contains(c))
            .map(|(c, _, _)| c)
            .collect();
        let issued: Vec<(&String, &String)> = inv
            .iter()
            .filter(|(_, s, _)| s == "issued")
            .filter_map(|(c, _, a)| Some((c, a.as_ref()?)))
            .collect();
        let want_issue = if i == 0 {
            issue_first
        } else {
            rng.below(100) < ISSUE_PERCENT
        };
        if (want_issue || issued.is_empty()) && !stocked.is_empty() {
            let chip = stocked[rng.below(stocked.len() as u64) as usize];
            println!("BEGIN issue {chip}");
            let mut card = ImageCard::open(&dir.join(chip)).expect("card image");
            match office.issue_card(&issuer, &ks, &mut card, &request()).await {
                Ok(r) => println!("ACK issue {chip} {} {}", r.card_number, r.resumed),
                // A card left half-personalized by an earlier kill cannot be finished.
                Err(e) if e.to_string().contains("rolled back") => println!("ROLLED {chip}"),
                Err(e) => panic!("issue {chip}: {e}"),
            }
        } else if let Some(&(chip, number)) =
            issued.get(rng.below(issued.len().max(1) as u64) as usize)
        {
            let amount = 1 + rng.below(MAX_LOAD) as i64;
            println!("BEGIN load {number}");
            let image = ImageCard::open(&dir.join(chip)).expect("card image");
            let mut purse = PurseCard::open(image).expect("an issued card opens");
            let r = office
                .recharge(
                    &cashier,
                    &ks,
                    &mut purse,
                    RechargeRequest {
                        amount_minor: amount,
                        when: when(),
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("recharge {number}: {e}"));
            if let Some(PendingResolution::Posted { load }) = &r.earlier {
                println!(
                    "ACK load {} {number} {} {}",
                    load.operation_id, load.amount_minor, load.online_serial
                );
            }
            println!(
                "ACK load {} {number} {amount} {}",
                r.load.operation_id, r.load.online_serial
            );
        } else {
            panic!("no card left to issue or recharge: {inv:?}");
        }
    }
}

// ----- what the child acknowledged -----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ack {
    Issue {
        chip: String,
        number: String,
    },
    Load {
        op: i64,
        number: String,
        amount: i64,
        online_serial: i64,
    },
}

fn parse_ack(line: &str) -> Option<Ack> {
    let w: Vec<&str> = line.strip_prefix("ACK ")?.split(' ').collect();
    let n = |i: usize| -> i64 {
        w.get(i)
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("bad ACK line {line:?}"))
    };
    let s = |i: usize| -> String { w.get(i).map(|x| x.to_string()).expect("ACK field") };
    Some(match w[0] {
        "issue" => Ack::Issue {
            chip: s(1),
            number: s(2),
        },
        "load" => Ack::Load {
            op: n(1),
            number: s(2),
            amount: n(3),
            online_serial: n(4),
        },
        other => panic!("unknown ACK kind {other:?} in {line:?}"),
    })
}

/// Where a kill landed, judged from the child's last complete line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Start,
    Connect,
    Open,
    Login,
    Ready,
    /// After `BEGIN issue`, before its answer.
    Issuing,
    /// After `BEGIN load`, before its answer.
    Loading,
    /// After an acknowledgement, before the next `BEGIN`.
    Between,
}

#[derive(Debug, Clone)]
enum KillAt {
    Spawn(Duration),
    Ready(Duration),
    /// This long after the n-th line starting with the prefix.
    Line(&'static str, usize, Duration),
}

impl KillAt {
    fn for_round(round: u64, rng: &mut Rng) -> KillAt {
        match round % 8 {
            7 if round % 16 == 7 => KillAt::Spawn(rng.delay(2.0, 500.0)),
            7 => KillAt::Ready(rng.delay(0.5, 300.0)),
            0 | 1 | 4 => KillAt::Line("BEGIN issue", 1, rng.delay(0.2, 1500.0)),
            3 => KillAt::Line("ACK ", 1 + rng.below(6) as usize, rng.delay(0.05, 40.0)),
            _ => KillAt::Line(
                "BEGIN load",
                1 + rng.below(4) as usize,
                rng.delay(0.3, 60.0),
            ),
        }
    }

    fn issue_first(&self) -> bool {
        matches!(self, KillAt::Line("BEGIN issue", ..))
    }
}

struct RoundOutput {
    acks: Vec<Ack>,
    rolled: usize,
    phase: Phase,
    tail: Vec<String>,
}

fn run_child(url: &str, dir: &Path, seed: u64, round: u64, kill_at: &KillAt) -> RoundOutput {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_cards::child_issues_and_recharges_until_killed",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("ICCARD_CARDS_CRASH_URL", url)
        .env("ICCARD_CARDS_CRASH_DIR", dir)
        .env("ICCARD_CARDS_CRASH_SEED", seed.to_string())
        .env(
            "ICCARD_CARDS_CRASH_FIRST",
            if kill_at.issue_first() || round & 1 == 0 {
                "issue"
            } else {
                "load"
            },
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                // A line cut short by the kill has no newline: it was never acknowledged.
                Ok(_) if buf.last() != Some(&b'\n') => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut lines: Vec<String> = Vec::new();
    let (wait_for, delay) = match kill_at {
        KillAt::Spawn(d) => (None, *d),
        KillAt::Ready(d) => (Some(("READY", 1)), *d),
        KillAt::Line(p, n, d) => (Some((*p, *n)), *d),
    };
    if let Some((prefix, mut n)) = wait_for {
        let started = Instant::now();
        let mut ready_at: Option<Instant> = None;
        loop {
            let deadline = match ready_at {
                Some(t) => t + LINE_TIMEOUT,
                None => started + READY_TIMEOUT,
            };
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if line == "READY" {
                        ready_at = Some(Instant::now());
                    }
                    let hit = line.starts_with(prefix);
                    lines.push(line);
                    if hit {
                        if n <= 1 {
                            break;
                        }
                        n -= 1;
                    }
                }
                // Working, but the awaited line did not come (no card left to issue): kill now.
                Err(_) if ready_at.is_some() => break,
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().expect("wait");
                    panic!(
                        "round {round}: the child never got READY ({status}); its output: {lines:?}"
                    );
                }
            }
        }
    }
    std::thread::sleep(delay);
    child.kill().expect("kill the child");
    let status = child.wait().expect("wait for the child");
    reader.join().expect("reader thread");
    lines.extend(rx.try_iter());
    assert_eq!(
        status.signal(),
        Some(9),
        "round {round}: the child ended on its own ({status}) before the kill; its output: {:?}",
        &lines[lines.len().saturating_sub(20)..]
    );
    let mut acks = Vec::new();
    let mut rolled = 0;
    let mut phase = Phase::Start;
    for line in &lines {
        if let Some(a) = parse_ack(line) {
            acks.push(a);
            phase = Phase::Between;
        } else if line.starts_with("ROLLED ") {
            rolled += 1;
            phase = Phase::Between;
        } else if line.starts_with("BEGIN issue") {
            phase = Phase::Issuing;
        } else if line.starts_with("BEGIN load") {
            phase = Phase::Loading;
        } else {
            phase = match line.as_str() {
                "PHASE connect" => Phase::Connect,
                "PHASE open" => Phase::Open,
                "PHASE login" => Phase::Login,
                "READY" => Phase::Ready,
                _ => phase,
            };
        }
    }
    RoundOutput {
        acks,
        rolled,
        phase,
        tail: lines[lines.len().saturating_sub(5)..].to_vec(),
    }
}

// ----- the cards against the office -----

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn db(e: OfficeError) -> String {
    format!("database: {e}")
}

/// What a card image holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OnCard {
    /// Not SECURED (or its purse cannot be read): the life-cycle state byte.
    Unissued(u8),
    /// A personalized card: card number, balance, next online serial.
    Purse {
        number: String,
        balance: i64,
        online_serial: i64,
    },
}

/// Reads a card image without changing it (a copy is powered up, so a recovery the card
/// might run at power-on does not count as the check's doing).
fn read_card(path: &Path, scratch: &Path) -> Result<OnCard, String> {
    std::fs::copy(path, scratch).map_err(|e| format!("copy {}: {e}", path.display()))?;
    let mut image = ImageCard::open(scratch).map_err(|e| format!("{}: {e}", path.display()))?;
    let state = {
        let mut admin = Admin::new(&mut image);
        let data = admin
            .ok(
                "GET DATA card state",
                &Apdu::new(0x80, 0xCA, 0x9F, 0x70).with_ne(256),
            )
            .map_err(|e| format!("{}: card state: {e}", path.display()))?;
        tlv::find(&data, 0x9F70)
            .and_then(|v| v.first().copied())
            .ok_or("no 9F70 in the card state answer")?
    };
    if state != CardState::Secured as u8 {
        return Ok(OnCard::Unissued(state));
    }
    let mut purse = PurseCard::open(image).map_err(|e| format!("{}: {e}", path.display()))?;
    let number = iccard_apdu::hex::encode(&purse.identity().application_serial);
    let balance = i64::from(purse.balance().map_err(|e| e.to_string())?);
    // The card's next online serial: one past its newest load (the log is newest first).
    let online_serial = purse
        .log()
        .map_err(|e| e.to_string())?
        .iter()
        .find(|r| r.kind == "load")
        .map_or(0, |r| i64::from(r.serial) + 1);
    Ok(OnCard::Purse {
        number,
        balance,
        online_serial,
    })
}

/// The cases the next contact with a card resolves.
#[derive(Debug, Default)]
struct Pending {
    /// Chips with an open issuance job.
    issues: Vec<String>,
    /// (chip, card number) of cards with a pending load.
    loads: Vec<(String, String)>,
    /// Of those loads, how many the card had executed.
    executed: usize,
}

/// Checks the office and the cards after a kill (module docs); with `exact`, nothing may be
/// pending and the cards' balances must add up to the float.
async fn verify(
    url: &str,
    auditor: &Session,
    acks: &[Ack],
    dir: &Path,
    exact: bool,
) -> Result<Pending, String> {
    let store = Store::connect(url).await.map_err(db)?;
    let office = Office::open(store.clone()).await.map_err(db)?;
    let report = office.check(auditor).await.map_err(db)?;
    ensure!(
        report.is_clean() && report.audit.is_intact(),
        "check: {:?}",
        report.problems
    );
    let inv = inventory(&office).await.map_err(db)?;
    let mut tx = office.store().read().await.map_err(db)?;
    let jobs: Vec<(String, String, String)> = tx
        .fetch_all(
            "SELECT chip_serial, card_number, state FROM issuance_jobs ORDER BY id",
            &[],
        )
        .await
        .map_err(db)?;
    let loads: Vec<(i64, String, i64, i64)> = tx
        .fetch_all(
            "SELECT l.operation_id, c.application_serial, l.amount_minor, l.online_serial \
             FROM card_loads l JOIN cards c ON c.id = l.card_id",
            &[],
        )
        .await
        .map_err(db)?;
    let accounts: Vec<(String,)> = tx
        .fetch_all("SELECT application_serial FROM cards", &[])
        .await
        .map_err(db)?;
    tx.rollback().await.map_err(db)?;
    let pending_loads: HashMap<String, (i64, i64)> = office
        .pending_loads()
        .await
        .map_err(db)?
        .into_iter()
        .map(|p| (p.application_serial, (p.online_serial, p.amount_minor)))
        .collect();
    let inv_by_chip: HashMap<&str, (&str, Option<&str>)> = inv
        .iter()
        .map(|(c, s, a)| (c.as_str(), (s.as_str(), a.as_deref())))
        .collect();
    let loads_by_op: HashMap<i64, (&str, i64, i64)> = loads
        .iter()
        .map(|(op, n, a, s)| (*op, (n.as_str(), *a, *s)))
        .collect();

    // Every acknowledged operation is kept.
    for ack in acks {
        match ack {
            Ack::Issue { chip, number } => {
                ensure!(
                    inv_by_chip.get(chip.as_str()) == Some(&("issued", Some(number.as_str()))),
                    "acknowledged {ack:?}: the inventory says {:?}",
                    inv_by_chip.get(chip.as_str())
                );
                ensure!(
                    jobs.iter()
                        .any(|(c, n, s)| c == chip && n == number && s == "done"),
                    "acknowledged {ack:?} has no done issuance job"
                );
            }
            Ack::Load {
                op,
                number,
                amount,
                online_serial,
            } => {
                ensure!(
                    loads_by_op.get(op) == Some(&(number.as_str(), *amount, *online_serial)),
                    "acknowledged {ack:?} is stored as {:?}",
                    loads_by_op.get(op)
                );
            }
        }
    }

    // Every card against the office.
    let scratch_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let scratch = scratch_dir.path().join("card");
    let mut pending = Pending::default();
    let mut on_card_total = 0i64;
    for chip in chips(dir) {
        let on_card = read_card(&dir.join(&chip), &scratch)?;
        let (state, number) = *inv_by_chip
            .get(chip.as_str())
            .ok_or_else(|| format!("card image {chip} is not in the inventory"))?;
        let chip_jobs: Vec<&(String, String, String)> =
            jobs.iter().filter(|(c, _, _)| *c == chip).collect();
        let open = chip_jobs.iter().filter(|j| j.2 == "personalizing").count();
        ensure!(open <= 1, "chip {chip} has {open} open issuance jobs");
        match state {
            "in_stock" if open == 1 => {
                // Anything may be on the card: the next issuance resumes or rolls back.
                let job_number = &chip_jobs.iter().find(|j| j.2 == "personalizing").unwrap().1;
                ensure!(
                    !accounts.iter().any(|(a,)| a == job_number),
                    "the open job of chip {chip} already has an account {job_number}"
                );
                pending.issues.push(chip.clone());
            }
            "in_stock" => ensure!(
                on_card == OnCard::Unissued(CardState::OpReady as u8),
                "chip {chip} is in stock with no open job but the card holds {on_card:?}"
            ),
            "issued" => {
                let number = number.ok_or_else(|| format!("issued chip {chip} has no number"))?;
                ensure!(
                    chip_jobs.iter().any(|(_, n, s)| n == number && s == "done"),
                    "issued chip {chip} has no done job for {number}: {chip_jobs:?}"
                );
                let OnCard::Purse {
                    number: on_number,
                    balance,
                    online_serial,
                } = &on_card
                else {
                    return Err(format!("issued chip {chip} holds {on_card:?}"));
                };
                ensure!(
                    on_number == number,
                    "issued chip {chip}: the card holds number {on_number}, the office {number}"
                );
                let shadow = office.card(number).await.map_err(db)?;
                let office_side = (shadow.proven_balance_minor, shadow.online_serial);
                let card_side = (*balance, *online_serial);
                match pending_loads.get(number) {
                    Some(&(serial, amount)) if !exact => {
                        ensure!(
                            serial == shadow.online_serial,
                            "card {number}: a pending load at online serial {serial}, the shadow expects {}",
                            shadow.online_serial
                        );
                        let done = (office_side.0 + amount, office_side.1 + 1);
                        ensure!(
                            card_side == office_side || card_side == done,
                            "card {number} holds (balance, online serial) {card_side:?}: neither the office's {office_side:?} nor that plus its pending load of {amount} {done:?}"
                        );
                        pending.executed += usize::from(card_side == done);
                        pending.loads.push((chip.clone(), number.to_owned()));
                    }
                    _ => ensure!(
                        card_side == office_side,
                        "card {number} holds (balance, online serial) {card_side:?}, the office {office_side:?}"
                    ),
                }
                on_card_total += balance;
            }
            "void" => {
                ensure!(
                    open == 0 && chip_jobs.iter().any(|j| j.2 == "rolled_back"),
                    "void chip {chip} has jobs {chip_jobs:?}"
                );
                for (_, n, _) in &chip_jobs {
                    ensure!(
                        !accounts.iter().any(|(a,)| a == n),
                        "rolled-back card number {n} of chip {chip} has an account"
                    );
                }
            }
            other => return Err(format!("chip {chip} is {other} in the inventory")),
        }
    }
    if exact {
        ensure!(
            pending.issues.is_empty() && pending_loads.is_empty(),
            "still pending after resolution: jobs of {:?}, loads {pending_loads:?}",
            pending.issues
        );
        let float = office
            .accounts()
            .await
            .map_err(db)?
            .into_iter()
            .find(|a| a.code == "float")
            .map_or(0, |a| a.balance_minor);
        ensure!(
            on_card_total == float,
            "the issued cards hold {on_card_total} but the float is {float}: a load was lost or credited twice"
        );
    }
    store.close().await;
    Ok(pending)
}

/// How resolution went.
#[derive(Debug, Default, Clone, Copy)]
struct Resolved {
    resumed: u32,
    rolled_back: u32,
    posted: u32,
    cancelled: u32,
}

/// Resolves the pending cases through the real API: the card presented again.
async fn resolve(
    url: &str,
    issuer: &Session,
    cashier: &Session,
    dir: &Path,
    pending: &Pending,
) -> Result<Resolved, String> {
    let store = Store::connect(url).await.map_err(db)?;
    let office = Office::open(store.clone()).await.map_err(db)?;
    let ks = keys();
    let mut r = Resolved::default();
    for chip in &pending.issues {
        let mut card = ImageCard::open(&dir.join(chip)).map_err(|e| e.to_string())?;
        match office.issue_card(issuer, &ks, &mut card, &request()).await {
            Ok(receipt) => {
                ensure!(receipt.resumed, "chip {chip}: issued anew, not resumed");
                r.resumed += 1;
            }
            Err(e) if e.to_string().contains("rolled back") => r.rolled_back += 1,
            Err(e) => return Err(format!("resuming the issuance of chip {chip}: {e}")),
        }
    }
    for (chip, number) in &pending.loads {
        let image = ImageCard::open(&dir.join(chip)).map_err(|e| e.to_string())?;
        let mut purse = PurseCard::open(image).map_err(|e| e.to_string())?;
        match office
            .settle_pending_load(cashier, &ks, &mut purse)
            .await
            .map_err(|e| format!("settling card {number}: {e}"))?
        {
            Some(PendingResolution::Posted { .. }) => r.posted += 1,
            Some(PendingResolution::Cancelled { .. }) => r.cancelled += 1,
            None => return Err(format!("card {number}: nothing to settle")),
        }
    }
    store.close().await;
    Ok(r)
}

/// Prints the seed if the test panics.
struct SeedOnFailure {
    backend: &'static str,
    seed: u64,
}

impl Drop for SeedOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "card crash test on {} FAILED with seed {:#x}: replay with ICCARD_CRASH_SEED={:#x}",
                self.backend, self.seed, self.seed
            );
        }
    }
}

async fn run(backend: Backend, name: &'static str, default_kills: u32, require_pending_load: bool) {
    let Some(db) = TestDb::new(backend).await else {
        eprintln!("ICCARD_TEST_POSTGRES_URL not set: PostgreSQL card crash test skipped");
        return;
    };
    let seed = env_u64("ICCARD_CRASH_SEED").unwrap_or(DEFAULT_SEED);
    let kills = env_u64("ICCARD_CRASH_KILLS").map_or(default_kills, |k| k as u32);
    let _guard = SeedOnFailure {
        backend: name,
        seed,
    };
    eprintln!("card crash test on {name}: seed {seed:#x}, {kills} kills");
    let started = Instant::now();

    let store = db.store().await;
    let w = support::world(store.clone()).await;
    let cards_dir = tempfile::tempdir().expect("card directory");
    let dir = cards_dir.path().to_path_buf();
    for (chip, card) in support::stock_with(&w, PRODUCT, profile(), FIRST_CHIP, CARDS).await {
        save_image(&dir.join(chip), card.0.nvm().eeprom()).expect("save a card image");
    }
    let (issuer, cashier, auditor) = (
        w.issuer_clerk.clone(),
        w.recharge_clerk.clone(),
        w.auditor.clone(),
    );
    drop(w);
    store.close().await;
    eprintln!("{CARDS} cards in stock after {:?}", started.elapsed());

    let mut rng = Rng(seed);
    let mut acked: Vec<Ack> = Vec::new();
    let mut phases: BTreeMap<Phase, u32> = BTreeMap::new();
    let mut total = Resolved::default();
    let (mut open_jobs, mut pending_loads, mut executed, mut rolled_by_child) = (0, 0, 0, 0);
    for round in 0..u64::from(kills) {
        let child_seed = rng.next();
        let kill_at = KillAt::for_round(round, &mut rng);
        let (url, d, k) = (db.url.clone(), dir.clone(), kill_at.clone());
        let out = tokio::task::spawn_blocking(move || run_child(&url, &d, child_seed, round, &k))
            .await
            .expect("child round");
        *phases.entry(out.phase).or_default() += 1;
        rolled_by_child += out.rolled;
        acked.extend(out.acks.iter().cloned());
        let fail = |what: &str, e: String| -> ! {
            panic!(
                "{name} seed {seed:#x} round {round} (kill {kill_at:?}, {} acks, landed in {:?}, last lines {:?}) {what}: {e}",
                out.acks.len(),
                out.phase,
                out.tail
            )
        };
        let pending = verify(&db.url, &auditor, &acked, &dir, false)
            .await
            .unwrap_or_else(|e| fail("after the kill", e));
        open_jobs += pending.issues.len();
        pending_loads += pending.loads.len();
        executed += pending.executed;
        // Every other round (and the last) the parent presents the cards again; otherwise the
        // next child meets the pending cases itself.
        if round % 2 == 1 || round + 1 == u64::from(kills) {
            let r = resolve(&db.url, &issuer, &cashier, &dir, &pending)
                .await
                .unwrap_or_else(|e| fail("resolving", e));
            total.resumed += r.resumed;
            total.rolled_back += r.rolled_back;
            total.posted += r.posted;
            total.cancelled += r.cancelled;
            verify(&db.url, &auditor, &acked, &dir, true)
                .await
                .unwrap_or_else(|e| fail("after resolution", e));
        }
    }
    let issues = acked
        .iter()
        .filter(|a| matches!(a, Ack::Issue { .. }))
        .count();
    eprintln!(
        "card crash test on {name}: {kills} kills in {:?}; acknowledged {issues} issuances and {} loads; \
         found after kills {open_jobs} open issuance jobs and {pending_loads} pending loads ({executed} executed by the card); \
         the parent resolved {total:?}, children rolled back {rolled_by_child}; kills by phase {phases:?}",
        started.elapsed(),
        acked.len() - issues,
    );
    let issuing = phases.get(&Phase::Issuing).copied().unwrap_or(0);
    let loading = phases.get(&Phase::Loading).copied().unwrap_or(0);
    assert!(
        issuing >= kills / 4 && loading >= 1,
        "kills by phase {phases:?}: too few inside issuances or recharges"
    );
    assert!(
        issues >= 3 && acked.len() > issues,
        "the children acknowledged too little: {issues} issuances, {} loads",
        acked.len() - issues
    );
    // On PostgreSQL the window between the pending row's commit and the posting is narrow
    // for the seeded delays: a run without a pending load is reported, not failed.
    if pending_loads == 0 && !require_pending_load {
        eprintln!("card crash test on {name}: no kill landed while a load was pending");
    }
    assert!(
        open_jobs >= 1 && (pending_loads >= 1 || !require_pending_load),
        "no kill left an open issuance job ({open_jobs}) or a pending load ({pending_loads}): the test proved little"
    );
    let store = db.store().await;
    db.cleanup(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_issuing_and_recharging_sqlite() {
    run(Backend::Sqlite, "SQLite", SQLITE_KILLS, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_issuing_and_recharging_postgres() {
    run(Backend::Postgres, "PostgreSQL", POSTGRES_KILLS, false).await;
}
