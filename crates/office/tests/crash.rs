//! SIGKILL crash tests of ledger postings, on SQLite and on PostgreSQL (same code).
//!
//! The parent builds a back office, then runs rounds on the same database: each round spawns
//! this test binary again with `ICCARD_OFFICE_CRASH_URL` set, whose entry point
//! [`child_posts_until_killed`] opens the office, logs three operators in (argon2) and posts
//! business operations in a loop (loads to several cards, card openings, bank deposits, settled
//! purchases), printing an `ACK` line to stdout only after an operation returned `Ok`. The
//! parent kills the child with SIGKILL after a seeded pseudo-random delay, measured either from
//! the spawn (the kill lands in process start, migrations or a login) or from the child's
//! `READY` line (it lands in the posting loop: mid-transaction, in a commit, between an
//! operation and its acknowledgement).
//!
//! After every kill the parent opens the office again and proves:
//! - `Office::check` is clean: every entry balanced, float = sum of shadows, deposits held =
//!   card deposits, audit chain intact;
//! - every acknowledged operation of every round so far is in the database with its fields;
//! - nothing is half-applied: every business operation has exactly its typed row, its history
//!   row, its exact journal lines and an `ok` audit record, and no such row exists without its
//!   operation; every card's shadow and every account equals what the business rows add up to;
//!   acknowledged loads sum to at most the float's load movement;
//! - a round committed at most one operation it did not acknowledge (the one in flight).
//!
//! `ICCARD_CRASH_SEED` replays a seed (printed on failure), `ICCARD_CRASH_KILLS` changes the
//! number of kills per database.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iccard_office::ledger;
use iccard_office::{LoadCard, Office, OfficeError, OpenCard, Password, SettlePurchase, Store};

use crate::support::{self, Backend, TestDb, ADMIN_PASSWORD, CLERK_PASSWORD};

/// The seed used unless `ICCARD_CRASH_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x1CCA_2D0F_F1CE_0001;
/// Kills per run on SQLite and on PostgreSQL unless `ICCARD_CRASH_KILLS` says otherwise.
const SQLITE_KILLS: u32 = 40;
const POSTGRES_KILLS: u32 = 20;
/// Cards the parent opens before the first round.
const INITIAL_CARDS: i64 = 4;
/// How long a child may take to reach `READY` before the test gives up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// SplitMix64: a small, seedable generator (enough to spread kill delays and operations).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in `[lo, hi)` microseconds, from bounds in milliseconds: as many short
    /// delays as long ones.
    fn delay(&mut self, lo_ms: f64, hi_ms: f64) -> Duration {
        Duration::from_micros((1000.0 * lo_ms * (hi_ms / lo_ms).powf(self.unit())) as u64)
    }
}

fn initial_serial(card: i64) -> String {
    format!("{:04X}", 0xCA00 + card)
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

// ----- the child -----

/// The child's work: posts until killed. A no-op unless this process was spawned by [`run`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_posts_until_killed() {
    let Ok(url) = std::env::var("ICCARD_OFFICE_CRASH_URL") else {
        return;
    };
    let seed = env_u64("ICCARD_OFFICE_CRASH_SEED").expect("seed");
    let round = env_u64("ICCARD_OFFICE_CRASH_ROUND").expect("round");
    let mut rng = Rng(seed);
    println!("PHASE connect");
    let store = Store::connect(&url).await.expect("connect");
    println!("PHASE open");
    let office = Office::open(store).await.expect("open");
    println!("PHASE login");
    let login = |login: &'static str, password: &'static str, machine: &'static str| {
        let office = office.clone();
        async move {
            office
                .login(login, &Password::new(password), machine)
                .await
                .unwrap_or_else(|e| panic!("login {login}: {e}"))
        }
    };
    let cashier = login("cashier", CLERK_PASSWORD, "RP-1").await;
    let issuer = login("issuer", CLERK_PASSWORD, "RP-1").await;
    let admin = login("admin", ADMIN_PASSWORD, "CONSOLE-1").await;
    let mut serials: Vec<String> = {
        let mut tx = office.store().read().await.expect("read");
        let cards = ledger::cards(&mut tx).await.expect("cards");
        tx.rollback().await.expect("rollback");
        cards.into_iter().map(|c| c.application_serial).collect()
    };
    assert!(!serials.is_empty(), "the parent opens cards before round 0");
    println!("READY");
    for i in 0u64.. {
        // The first four operations of a round are one of each kind, then the mix is random.
        let pick = match i {
            0..=3 => [10, 55, 70, 90][((round + i) % 4) as usize],
            _ => rng.below(100),
        };
        let card = serials[rng.below(serials.len() as u64) as usize].clone();
        if pick < 50 {
            // A load, the way a recharge point does it: read the card, then load it.
            let now = office.card(&card).await.expect("card");
            let amount = 1 + rng.below(5000) as i64;
            let receipt = office
                .load_card(
                    &cashier,
                    LoadCard {
                        application_serial: card.clone(),
                        amount_minor: amount,
                        card_balance_minor: now.balance_minor,
                        card_online_serial: now.online_serial,
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("load {card}: {e}"));
            println!(
                "ACK load {} {card} {amount} {}",
                receipt.operation_id, now.online_serial
            );
        } else if pick < 62 {
            let serial = format!("{:06X}{:06X}", round + 1, i);
            let deposit = rng.below(1000) as i64;
            let fee = rng.below(300) as i64;
            let opened = office
                .open_card(
                    &issuer,
                    OpenCard {
                        application_serial: serial.clone(),
                        deposit_minor: deposit,
                        fee_minor: fee,
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("open {serial}: {e}"));
            println!("ACK open {} {serial} {deposit} {fee}", opened.id);
            serials.push(serial);
        } else if pick < 75 {
            let cash = office
                .accounts()
                .await
                .expect("accounts")
                .into_iter()
                .find(|a| a.code == ledger::cash_account_code("RP-1"))
                .expect("cash account")
                .balance_minor;
            if cash <= 0 {
                continue;
            }
            let amount = 1 + rng.below(cash.min(20_000) as u64) as i64;
            let op = office
                .bank_deposit(&cashier, amount)
                .await
                .unwrap_or_else(|e| panic!("bank deposit {amount}: {e}"));
            println!("ACK deposit {op} {amount}");
        } else {
            let now = office.card(&card).await.expect("card");
            if now.balance_minor <= 0 {
                continue;
            }
            let amount = 1 + rng.below(now.balance_minor.min(4000) as u64) as i64;
            let offline = now.offline_serial + 1 + rng.below(3) as i64;
            office
                .settle_purchase(
                    &admin,
                    SettlePurchase {
                        application_serial: card.clone(),
                        terminal_machine_number: "T-1".into(),
                        amount_minor: amount,
                        offline_serial: offline,
                        terminal_serial: i as i64,
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("settle {card}/{offline}: {e}"));
            println!("ACK settle {card} {offline} {amount}");
        }
    }
}

// ----- what the child acknowledged -----

/// One acknowledged operation, as the child printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ack {
    Load {
        op: i64,
        card: String,
        amount: i64,
        online_serial: i64,
    },
    Open {
        card_id: i64,
        card: String,
        deposit: i64,
        fee: i64,
    },
    Deposit {
        op: i64,
        amount: i64,
    },
    Settle {
        card: String,
        offline_serial: i64,
        amount: i64,
    },
}

fn parse_ack(line: &str) -> Option<Ack> {
    let words: Vec<&str> = line.strip_prefix("ACK ")?.split(' ').collect();
    let n = |i: usize| -> i64 {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("bad ACK line {line:?}"))
    };
    let s = |i: usize| -> String { words.get(i).map(|w| w.to_string()).expect("ACK field") };
    Some(match words[0] {
        "load" => Ack::Load {
            op: n(1),
            card: s(2),
            amount: n(3),
            online_serial: n(4),
        },
        "open" => Ack::Open {
            card_id: n(1),
            card: s(2),
            deposit: n(3),
            fee: n(4),
        },
        "deposit" => Ack::Deposit {
            op: n(1),
            amount: n(2),
        },
        "settle" => Ack::Settle {
            card: s(1),
            offline_serial: n(2),
            amount: n(3),
        },
        other => panic!("unknown ACK kind {other:?} in {line:?}"),
    })
}

/// Where a kill landed, judged from the child's last complete line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Nothing printed yet: process start, runtime, test harness.
    Start,
    /// Connecting to the database.
    Connect,
    /// `Office::open` (migrations).
    Open,
    /// The argon2 logins.
    Login,
    /// Posting, before the first acknowledgement.
    Ready,
    /// Posting, after at least one acknowledgement.
    Posting,
}

/// One round's child output.
struct RoundOutput {
    acks: Vec<Ack>,
    phase: Phase,
    kill_at: KillAt,
    tail: Vec<String>,
}

/// Spawns the child, kills it after the round's delay, and collects its complete lines.
/// When a round's kill comes.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after the spawn: process start, connection, migrations, argon2 logins or the
    /// first operations.
    Spawn(Duration),
    /// This long after `READY`: the first operations (new pool connections, first commits).
    Ready(Duration),
    /// This long after the n-th acknowledgement: in the middle of the posting loop.
    Ack(usize, Duration),
}

impl KillAt {
    /// Round `round`'s kill: four in ten after an acknowledgement, three after `READY`, three
    /// after the spawn (a fixed share, so every run covers every phase), with seeded delays.
    fn for_round(round: u64, rng: &mut Rng) -> KillAt {
        match round % 10 {
            0..=3 => KillAt::Ack(1 + rng.below(12) as usize, rng.delay(0.05, 40.0)),
            4..=6 => KillAt::Ready(rng.delay(1.0, 300.0)),
            _ => KillAt::Spawn(rng.delay(2.0, 500.0)),
        }
    }
}

fn run_child(url: &str, seed: u64, round: u64, kill_at: KillAt) -> RoundOutput {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash::child_posts_until_killed",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("ICCARD_OFFICE_CRASH_URL", url)
        .env("ICCARD_OFFICE_CRASH_SEED", seed.to_string())
        .env("ICCARD_OFFICE_CRASH_ROUND", round.to_string())
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
    let mut lines = Vec::new();
    let (wait_for, delay) = match kill_at {
        KillAt::Spawn(d) => (None, d),
        KillAt::Ready(d) => (Some((0, "READY")), d),
        KillAt::Ack(n, d) => (Some((n, "ACK ")), d),
    };
    if let Some((mut n, prefix)) = wait_for {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.starts_with(prefix);
                    lines.push(line);
                    if hit {
                        if n <= 1 {
                            break;
                        }
                        n -= 1;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().expect("wait");
                    panic!(
                        "round {round}: the child never printed what {kill_at:?} waits for ({status}); its output: {lines:?}"
                    );
                }
            }
        }
    }
    std::thread::sleep(delay);
    // std's kill is SIGKILL on Unix.
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
    let mut phase = Phase::Start;
    for line in &lines {
        if let Some(a) = parse_ack(line) {
            acks.push(a);
            phase = Phase::Posting;
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
    let tail = lines[lines.len().saturating_sub(5)..].to_vec();
    RoundOutput {
        acks,
        phase,
        kill_at,
        tail,
    }
}

// ----- what the database holds -----

/// The business rows, read in one snapshot.
struct Snapshot {
    /// id -> (kind, card id, amount).
    operations: BTreeMap<i64, (String, Option<i64>, Option<i64>)>,
    /// operation id -> (card id, amount, online serial).
    loads: HashMap<i64, (i64, i64, i64)>,
    /// operation id -> (card id, amount, offline serial).
    purchases: HashMap<i64, (i64, i64, i64)>,
    /// operation id -> sorted journal lines (account code, debit, credit), over all its entries.
    lines: HashMap<i64, Vec<(String, i64, i64)>>,
    /// operation id -> journal entries.
    entries: HashMap<i64, i64>,
    /// operation id -> (card id, change) history rows.
    history: HashMap<i64, Vec<(i64, String)>>,
    /// action -> number of `ok` audit records.
    audit_ok: HashMap<String, i64>,
    cards: Vec<ledger::CardAccount>,
    /// account code -> natural balance.
    accounts: HashMap<String, i64>,
}

fn db(e: OfficeError) -> String {
    format!("database: {e}")
}

async fn snapshot(office: &Office) -> Result<Snapshot, String> {
    let mut tx = office.store().read().await.map_err(db)?;
    let ops: Vec<(i64, String, Option<i64>, Option<i64>)> = tx
        .fetch_all(
            "SELECT id, kind, card_id, amount_minor FROM operations ORDER BY id",
            &[],
        )
        .await
        .map_err(db)?;
    let loads: Vec<(i64, i64, i64, i64)> = tx
        .fetch_all(
            "SELECT operation_id, card_id, amount_minor, online_serial FROM card_loads",
            &[],
        )
        .await
        .map_err(db)?;
    let purchases: Vec<(i64, i64, i64, i64)> = tx
        .fetch_all(
            "SELECT operation_id, card_id, amount_minor, offline_serial FROM card_purchases",
            &[],
        )
        .await
        .map_err(db)?;
    let entries: Vec<(i64, i64)> = tx
        .fetch_all(
            "SELECT operation_id, COUNT(*) FROM journal_entries GROUP BY operation_id",
            &[],
        )
        .await
        .map_err(db)?;
    let lines: Vec<(i64, String, i64, i64)> = tx
        .fetch_all(
            "SELECT e.operation_id, a.code, l.debit_minor, l.credit_minor \
             FROM journal_entries e JOIN journal_lines l ON l.entry_id = e.id \
             JOIN accounts a ON a.id = l.account_id",
            &[],
        )
        .await
        .map_err(db)?;
    let history: Vec<(i64, i64, String)> = tx
        .fetch_all(
            "SELECT operation_id, card_id, change FROM card_history ORDER BY id",
            &[],
        )
        .await
        .map_err(db)?;
    let audit: Vec<(String, i64)> = tx
        .fetch_all(
            "SELECT action, COUNT(*) FROM audit_log WHERE outcome = 'ok' GROUP BY action",
            &[],
        )
        .await
        .map_err(db)?;
    let cards = ledger::cards(&mut tx).await.map_err(db)?;
    let accounts = ledger::accounts(&mut tx).await.map_err(db)?;
    tx.rollback().await.map_err(db)?;

    let mut by_op: HashMap<i64, Vec<(String, i64, i64)>> = HashMap::new();
    for (op, code, debit, credit) in lines {
        by_op.entry(op).or_default().push((code, debit, credit));
    }
    for v in by_op.values_mut() {
        v.sort();
    }
    let mut hist: HashMap<i64, Vec<(i64, String)>> = HashMap::new();
    for (op, card, change) in history {
        hist.entry(op).or_default().push((card, change));
    }
    Ok(Snapshot {
        operations: ops
            .into_iter()
            .map(|(id, k, c, a)| (id, (k, c, a)))
            .collect(),
        loads: loads
            .into_iter()
            .map(|(o, c, a, s)| (o, (c, a, s)))
            .collect(),
        purchases: purchases
            .into_iter()
            .map(|(o, c, a, s)| (o, (c, a, s)))
            .collect(),
        lines: by_op,
        entries: entries.into_iter().collect(),
        history: hist,
        audit_ok: audit.into_iter().collect(),
        cards,
        accounts: accounts
            .into_iter()
            .map(|a| (a.code, a.balance_minor))
            .collect(),
    })
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn sorted_lines(mut v: Vec<(&str, i64, i64)>) -> Vec<(String, i64, i64)> {
    v.sort();
    v.into_iter()
        .map(|(c, d, k)| (c.to_owned(), d, k))
        .collect()
}

/// Every business operation is whole, nothing exists without its operation, and the card
/// shadows and accounts equal what the business rows add up to. Returns the sum of all loads.
fn check_nothing_half_applied(s: &Snapshot) -> Result<i64, String> {
    let cash = ledger::cash_account_code("RP-1");
    let card_by_id: HashMap<i64, &ledger::CardAccount> =
        s.cards.iter().map(|c| (c.id, c)).collect();
    let mut kinds: HashMap<&str, i64> = HashMap::new();
    let (mut loads, mut purchases, mut deposits, mut opened_cash, mut fees) = (0i64, 0, 0, 0, 0);
    for (id, (kind, card_id, amount)) in &s.operations {
        *kinds.entry(kind.as_str()).or_default() += 1;
        let amount = amount.ok_or_else(|| format!("operation {id} ({kind}) has no amount"))?;
        let lines = s.lines.get(id).cloned().unwrap_or_default();
        let history = s.history.get(id).cloned().unwrap_or_default();
        let entries = s.entries.get(id).copied().unwrap_or(0);
        match kind.as_str() {
            "load_card" => {
                let card = card_id.ok_or_else(|| format!("load {id} names no card"))?;
                ensure!(
                    s.loads.get(id).map(|l| (l.0, l.1)) == Some((card, amount)),
                    "load {id} (card {card}, {amount}) has card_loads row {:?}",
                    s.loads.get(id)
                );
                ensure!(
                    entries == 1
                        && lines == sorted_lines(vec![(&cash, amount, 0), ("float", 0, amount)]),
                    "load {id} of {amount} has {entries} entries with lines {lines:?}"
                );
                ensure!(
                    history == [(card, "loaded".to_owned())],
                    "load {id} has history {history:?}"
                );
                loads += amount;
            }
            "settle_purchase" => {
                let card = card_id.ok_or_else(|| format!("purchase {id} names no card"))?;
                ensure!(
                    s.purchases.get(id).map(|p| (p.0, p.1)) == Some((card, amount)),
                    "purchase {id} (card {card}, {amount}) has card_purchases row {:?}",
                    s.purchases.get(id)
                );
                ensure!(
                    entries == 1
                        && lines
                            == sorted_lines(vec![
                                ("float", amount, 0),
                                ("merchant_payable", 0, amount)
                            ]),
                    "purchase {id} of {amount} has {entries} entries with lines {lines:?}"
                );
                ensure!(
                    history == [(card, "purchase_settled".to_owned())],
                    "purchase {id} has history {history:?}"
                );
                purchases += amount;
            }
            "bank_deposit" => {
                ensure!(card_id.is_none(), "bank deposit {id} names a card");
                ensure!(
                    entries == 1
                        && lines == sorted_lines(vec![("bank", amount, 0), (&cash, 0, amount)]),
                    "bank deposit {id} of {amount} has {entries} entries with lines {lines:?}"
                );
                ensure!(
                    history.is_empty(),
                    "bank deposit {id} has card history {history:?}"
                );
                deposits += amount;
            }
            "open_card" => {
                let card = card_id.ok_or_else(|| format!("opening {id} names no card"))?;
                let c = card_by_id
                    .get(&card)
                    .ok_or_else(|| format!("opening {id} names card {card}, which is missing"))?;
                let fee = amount - c.deposit_minor;
                let mut want = vec![];
                if amount > 0 {
                    want.push((cash.as_str(), amount, 0));
                }
                if c.deposit_minor > 0 {
                    want.push(("deposits_held", 0, c.deposit_minor));
                }
                if fee > 0 {
                    want.push(("card_fee_income", 0, fee));
                }
                ensure!(
                    fee >= 0,
                    "opening {id} took {amount} but the card holds a deposit of {}",
                    c.deposit_minor
                );
                ensure!(
                    entries == i64::from(amount > 0) && lines == sorted_lines(want),
                    "opening {id} of {amount} has {entries} entries with lines {lines:?}"
                );
                ensure!(
                    history == [(card, "opened".to_owned())],
                    "opening {id} has history {history:?}"
                );
                opened_cash += amount;
                fees += fee;
            }
            other => return Err(format!("operation {id} has unexpected kind {other:?}")),
        }
    }
    // Nothing without its operation.
    let known = |op: &i64| s.operations.contains_key(op);
    for op in s
        .loads
        .keys()
        .chain(s.purchases.keys())
        .chain(s.entries.keys())
        .chain(s.history.keys())
    {
        ensure!(
            known(op),
            "a row names operation {op}, which does not exist"
        );
    }
    ensure!(
        s.loads.len() as i64 == kinds.get("load_card").copied().unwrap_or(0)
            && s.purchases.len() as i64 == kinds.get("settle_purchase").copied().unwrap_or(0),
        "{} card_loads and {} card_purchases rows for operations {kinds:?}",
        s.loads.len(),
        s.purchases.len()
    );
    // One `ok` audit record per business operation.
    for kind in ["load_card", "settle_purchase", "bank_deposit", "open_card"] {
        let ops = kinds.get(kind).copied().unwrap_or(0);
        let audited = s.audit_ok.get(kind).copied().unwrap_or(0);
        ensure!(
            ops == audited,
            "{ops} {kind} operations but {audited} ok audit records"
        );
    }
    // Card shadows from the business rows.
    let mut per_card: HashMap<i64, (i64, Vec<i64>, i64)> = HashMap::new();
    for (card, amount, serial) in s.loads.values() {
        let e = per_card.entry(*card).or_default();
        e.0 += amount;
        e.1.push(*serial);
    }
    for (card, amount, offline) in s.purchases.values() {
        let e = per_card.entry(*card).or_default();
        e.0 -= amount;
        // The shadow holds the next offline serial the card will use.
        e.2 = e.2.max(*offline + 1);
    }
    for c in &s.cards {
        let (balance, mut serials, offline) = per_card.remove(&c.id).unwrap_or_default();
        serials.sort_unstable();
        ensure!(
            c.balance_minor == balance,
            "card {} shadow balance {} but its loads minus purchases are {balance}",
            c.application_serial,
            c.balance_minor
        );
        ensure!(
            serials == (0..c.online_serial).collect::<Vec<_>>(),
            "card {} online serial {} but its loads carry serials {serials:?}",
            c.application_serial,
            c.online_serial
        );
        ensure!(
            c.offline_serial == offline,
            "card {} next offline serial {} but its settled purchases say {offline}",
            c.application_serial,
            c.offline_serial
        );
    }
    ensure!(
        per_card.is_empty(),
        "loads or purchases of unknown cards {:?}",
        per_card.keys()
    );
    // Accounts from the business rows.
    let deposits_held: i64 = s.cards.iter().map(|c| c.deposit_minor).sum();
    let want = [
        ("float", loads - purchases),
        ("merchant_payable", purchases),
        ("bank", deposits),
        (cash.as_str(), loads + opened_cash - deposits),
        ("deposits_held", deposits_held),
        ("card_fee_income", fees),
    ];
    for (code, balance) in want {
        let got = s.accounts.get(code).copied();
        ensure!(
            got == Some(balance),
            "account {code} holds {got:?} but the business rows add up to {balance}"
        );
    }
    Ok(loads)
}

/// Every acknowledged operation is in the database, as acknowledged.
fn check_acks_kept(s: &Snapshot, acks: &[Ack]) -> Result<(), String> {
    let by_serial: HashMap<&str, &ledger::CardAccount> = s
        .cards
        .iter()
        .map(|c| (c.application_serial.as_str(), c))
        .collect();
    let purchases: HashSet<(i64, i64, i64)> = s.purchases.values().copied().collect();
    let card = |serial: &str| {
        by_serial
            .get(serial)
            .copied()
            .ok_or_else(|| format!("acknowledged card {serial} is missing"))
    };
    for ack in acks {
        match ack {
            Ack::Load {
                op,
                card: serial,
                amount,
                online_serial,
            } => {
                let c = card(serial)?;
                ensure!(
                    s.loads.get(op) == Some(&(c.id, *amount, *online_serial)),
                    "acknowledged {ack:?} is stored as {:?}",
                    s.loads.get(op)
                );
            }
            Ack::Open {
                card_id,
                card: serial,
                deposit,
                fee,
            } => {
                let c = card(serial)?;
                ensure!(
                    c.id == *card_id && c.deposit_minor == *deposit,
                    "acknowledged {ack:?} is stored as {c:?}"
                );
                let opened = s.operations.values().any(|(k, cid, amount)| {
                    k == "open_card" && *cid == Some(c.id) && *amount == Some(deposit + fee)
                });
                ensure!(opened, "acknowledged {ack:?} has no open_card operation");
            }
            Ack::Deposit { op, amount } => {
                let stored = s.operations.get(op);
                ensure!(
                    stored == Some(&("bank_deposit".to_owned(), None, Some(*amount))),
                    "acknowledged {ack:?} is stored as {stored:?}"
                );
            }
            Ack::Settle {
                card: serial,
                offline_serial,
                amount,
            } => {
                let c = card(serial)?;
                ensure!(
                    purchases.contains(&(c.id, *amount, *offline_serial)),
                    "acknowledged {ack:?} is not among the card's settled purchases"
                );
            }
        }
    }
    Ok(())
}

/// What the parent verifies after a kill; returns the number of operations the database holds.
async fn verify_after_kill(
    url: &str,
    auditor: &iccard_office::Session,
    acked: &[Ack],
    ops_before: usize,
    acked_this_round: usize,
) -> Result<(usize, bool), String> {
    let store = Store::connect(url).await.map_err(db)?;
    let office = Office::open(store.clone()).await.map_err(db)?;
    let report = office.check(auditor).await.map_err(db)?;
    ensure!(
        report.is_clean() && report.audit.is_intact(),
        "check after the kill: {:?}",
        report.problems
    );
    let s = snapshot(&office).await?;
    let loads_in_db = check_nothing_half_applied(&s)?;
    check_acks_kept(&s, acked)?;
    let acked_loads: i64 = acked
        .iter()
        .map(|a| match a {
            Ack::Load { amount, .. } => *amount,
            _ => 0,
        })
        .sum();
    ensure!(
        acked_loads <= loads_in_db,
        "acknowledged loads sum to {acked_loads} but the float was credited {loads_in_db} by loads"
    );
    let new_ops = s.operations.len() - ops_before;
    ensure!(
        new_ops == acked_this_round || new_ops == acked_this_round + 1,
        "the round committed {new_ops} operations but acknowledged {acked_this_round} (at most one may be in flight)"
    );
    store.close().await;
    Ok((s.operations.len(), new_ops > acked_this_round))
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
                "crash test on {} FAILED with seed {:#x}: replay with ICCARD_CRASH_SEED={:#x}",
                self.backend, self.seed, self.seed
            );
        }
    }
}

async fn run(backend: Backend, name: &'static str, default_kills: u32) {
    let Some(db) = TestDb::new(backend).await else {
        eprintln!("ICCARD_TEST_POSTGRES_URL not set: PostgreSQL crash test skipped");
        return;
    };
    let seed = env_u64("ICCARD_CRASH_SEED").unwrap_or(DEFAULT_SEED);
    let kills = env_u64("ICCARD_CRASH_KILLS").map_or(default_kills, |k| k as u32);
    let _guard = SeedOnFailure {
        backend: name,
        seed,
    };
    eprintln!("crash test on {name}: seed {seed:#x}, {kills} kills");
    let started = Instant::now();

    let store = db.store().await;
    let w = support::world(store.clone()).await;
    for c in 0..INITIAL_CARDS {
        w.office
            .open_card(
                &w.issuer_clerk,
                OpenCard {
                    application_serial: initial_serial(c),
                    deposit_minor: 500,
                    fee_minor: 100,
                },
            )
            .await
            .expect("open an initial card");
    }
    let auditor = w.auditor.clone();
    drop(w);
    store.close().await;

    let mut rng = Rng(seed);
    let mut acked: Vec<Ack> = Vec::new();
    let mut ops = INITIAL_CARDS as usize;
    let mut phases: BTreeMap<Phase, u32> = BTreeMap::new();
    let mut in_flight_committed = 0;
    for round in 0..u64::from(kills) {
        let child_seed = rng.next();
        let kill_at = KillAt::for_round(round, &mut rng);
        let url = db.url.clone();
        let out = tokio::task::spawn_blocking(move || run_child(&url, child_seed, round, kill_at))
            .await
            .expect("child round");
        *phases.entry(out.phase).or_default() += 1;
        acked.extend(out.acks.iter().cloned());
        match verify_after_kill(&db.url, &auditor, &acked, ops, out.acks.len()).await {
            Ok((now, committed_unacked)) => {
                ops = now;
                in_flight_committed += u32::from(committed_unacked);
            }
            Err(e) => panic!(
                "{name} seed {seed:#x} round {round} (kill at {:?}, {} acks, landed in {:?}, last lines {:?}): {e}",
                out.kill_at,
                out.acks.len(),
                out.phase,
                out.tail
            ),
        }
    }
    eprintln!(
        "crash test on {name}: {kills} kills in {:?}, {} acknowledged operations, {ops} in the database, \
         {in_flight_committed} committed but unacknowledged, kills by phase {phases:?}",
        started.elapsed(),
        acked.len()
    );
    // The kills must have landed both before and in the posting loop, or this proved little.
    let posting = phases.get(&Phase::Posting).copied().unwrap_or(0);
    let before_ready: u32 = phases.range(..Phase::Ready).map(|(_, n)| n).sum();
    assert!(
        posting >= kills * 4 / 10 && before_ready >= 1,
        "kills by phase {phases:?}: too few while posting or before READY"
    );
    assert!(
        acked.iter().any(|a| matches!(a, Ack::Settle { .. }))
            && acked.iter().any(|a| matches!(a, Ack::Deposit { .. }))
            && acked.iter().any(|a| matches!(a, Ack::Open { .. })),
        "every kind of operation should have been acknowledged at least once"
    );
    let store = db.store().await;
    db.cleanup(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_posting_sqlite() {
    run(Backend::Sqlite, "SQLite", SQLITE_KILLS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_posting_postgres() {
    run(Backend::Postgres, "PostgreSQL", POSTGRES_KILLS).await;
}
