//! Recharges and issuances per second on cards, end to end, beside what they are made of.
//!
//! `cargo bench -p iccard-office --bench cards` prints one table:
//!
//! - card only (no database): the load APDUs of `iccard-terminal`'s [`Recharge`] with a
//!   [`MasterKeyHost`] on an in-memory card (INITIALIZE FOR LOAD, MAC1/MAC2, CREDIT FOR LOAD,
//!   TAC), and the personalization script alone on blank in-memory cards;
//! - per database (SQLite on a temporary file; PostgreSQL when `ICCARD_BENCH_POSTGRES_URL` or
//!   else `ICCARD_TEST_POSTGRES_URL` names a server whose role may create databases):
//!   [`Office::recharge`] on an in-memory card with the [`DevKeystore`] and with a
//!   [`LocalKeystore`] (checks, pending row committed before CREDIT FOR LOAD, posting with the
//!   card's record and the audit record), the TPC-B-like transaction through sqlx on the same
//!   database (as `benches/ledger.rs`), `pgbench` (PostgreSQL, when on `PATH`), and
//!   [`Office::issue_card`] of stocked cards (a production batch made first, untimed) with each
//!   keystore.
//!
//! Recharge rows show their ratio to the card-only load (what the office and the database add)
//! and to the TPC-B baseline (what one database transaction costs here).
//!
//! `ICCARD_BENCH_SECONDS` sets the seconds per timed row (default 2), `ICCARD_BENCH_ISSUES` the
//! cards issued per issuance row (default 16), `ICCARD_BENCH_PGBENCH_SECONDS` pgbench's `-T`
//! (default 5). Without `--bench` (as `cargo test --benches` runs it) rows are tiny and pgbench
//! is skipped: a smoke test of the bench itself.

use std::process::Command;
use std::time::{Duration, Instant};

use iccard_crypto::PurseAlg;
use iccard_issuer::keys::DevIssuerKeys;
use iccard_issuer::personalize::{self, Personalization};
use iccard_issuer::{devkeys, functional::test_card, manufacture};
use iccard_office::issuance::IssueRequest;
use iccard_office::keystore::{DevKeystore, KdfParams, Keystore, LocalKeystore, Passphrase};
use iccard_office::machines::{MachineKind, NewMachine};
use iccard_office::manufacture::{CodedCard, NewChipLot, NewProductionOrder, Stage, TestedCard};
use iccard_office::products::{
    Algorithm, ApplicationKind, CardType, NewProduct, ProductApplication, ProductProfile,
};
use iccard_office::recharge::{issuer_id_of, RechargeRequest};
use iccard_office::{
    InitConfig, Mode, NewOperator, Office, OpenCard, Password, Role, Session, Store,
};
use iccard_terminal::{MasterKeyHost, PurseCard, Recharge, TransactionTime};
use iccard_testkit::{blank, issued_card, MemCard};
use sqlx::{PgPool, SqlitePool};
use zeroize::Zeroizing;

const ISSUER_NUMBER: &str = "1234567890";

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

fn when() -> TransactionTime {
    TransactionTime::parse("20260314", "120000").expect("time")
}

/// Operations per second of a measured row.
fn rate(ops: u64, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64()
}

// ----- card only -----

fn issuer_id() -> [u8; 8] {
    issuer_id_of(ISSUER_NUMBER).expect("issuer id")
}

/// Loads of 1 on an in-memory card for `length`: the terminal library and the card, no office.
fn card_only_loads(length: Duration) -> f64 {
    let host = MasterKeyHost::new(devkeys::MLK.value(), devkeys::MTK.value());
    let rc = Recharge::new(&host, [0, 0, 0, 0, 0, 1]);
    let card = issued_card(
        "12345678900000000001",
        PurseAlg::TripleDes,
        1,
        issuer_id(),
        &DevIssuerKeys,
    );
    let mut purse = PurseCard::open(card).expect("open");
    let started = Instant::now();
    let mut ops = 0;
    while started.elapsed() < length {
        let prepared = rc.prepare(&mut purse, 1, &when()).expect("prepare");
        rc.complete(&mut purse, &prepared).expect("complete");
        ops += 1;
    }
    rate(ops, started.elapsed())
}

/// The personalization script alone on blank in-memory cards (blanks made untimed).
fn card_only_personalizations(count: u64) -> f64 {
    let blanks: Vec<MemCard> = (0..count).map(|i| blank(0x5000 + i)).collect();
    let started = Instant::now();
    for (i, card) in blanks.into_iter().enumerate() {
        let number = format!("1234567890{:010}", 900_000 + i);
        let mut p = Personalization::new(&number, "123456", PurseAlg::TripleDes);
        p.purse = iccard_testkit::profile();
        p.purse.issuer_id = issuer_id();
        personalize::personalize_with(card, &p, &DevIssuerKeys).expect("personalize");
    }
    rate(count, started.elapsed())
}

// ----- the office -----

struct Bench {
    office: Office,
    admin: Session,
    issuer: Session,
    cashier: Session,
}

async fn office(store: Store) -> Bench {
    let admin_password = "bench-admin-password";
    let clerk_password = "bench-clerk-password";
    let office = Office::init(
        store,
        InitConfig {
            issuer_number: ISSUER_NUMBER.into(),
            mode: Mode::Development,
            branch_code: "HQ".into(),
            branch_name: "Head office".into(),
            console_machine_number: "CONSOLE-1".into(),
            admin_login: "admin".into(),
            admin_display_name: "Bench Administrator".into(),
            admin_password: Password::new(admin_password),
        },
    )
    .await
    .expect("init");
    let admin = office
        .login("admin", &Password::new(admin_password), "CONSOLE-1")
        .await
        .expect("admin login");
    office
        .register_machine(
            &admin,
            NewMachine {
                machine_number: "RP-1".into(),
                kind: MachineKind::RechargePoint,
                branch_code: "HQ".into(),
                psam_serial: None,
            },
        )
        .await
        .expect("register RP-1");
    for (login, role) in [
        ("issuer", Role::IssuanceClerk),
        ("cashier", Role::RechargeClerk),
    ] {
        office
            .create_operator(
                &admin,
                NewOperator {
                    login: login.into(),
                    display_name: login.into(),
                    role,
                    password: Password::new(clerk_password),
                },
            )
            .await
            .expect("create operator");
    }
    let issuer = office
        .login("issuer", &Password::new(clerk_password), "RP-1")
        .await
        .expect("issuer login");
    let cashier = office
        .login("cashier", &Password::new(clerk_password), "RP-1")
        .await
        .expect("cashier login");
    Bench {
        office,
        admin,
        issuer,
        cashier,
    }
}

/// A local keystore file holding the development master keys (the cards here are made with
/// them), activated.
fn local_keystore(dir: &std::path::Path) -> LocalKeystore {
    let mut ks = LocalKeystore::create(
        &dir.join("bench.icks"),
        &Passphrase::new("bench"),
        KdfParams::insecure_for_tests(),
    )
    .expect("create keystore");
    // Personalization asks the keystore for the transport key too.
    for k in devkeys::ALL.iter() {
        ks.import(k.name, 1, PurseAlg::TripleDes, &k.value()[..], "bench")
            .expect("import");
        ks.activate(k.name, 1, "bench").expect("activate");
    }
    ks
}

/// Recharges of 1 on one in-memory card (with its account) for `length`.
async fn office_recharges(b: &Bench, keys: &dyn Keystore, card_no: u64, length: Duration) -> f64 {
    let number = format!("1234567890{card_no:010}");
    b.office
        .open_card(
            &b.issuer,
            OpenCard {
                application_serial: number.clone(),
                deposit_minor: 0,
                fee_minor: 0,
            },
        )
        .await
        .expect("open the card's account");
    let card = issued_card(
        &number,
        PurseAlg::TripleDes,
        card_no,
        issuer_id(),
        &DevIssuerKeys,
    );
    let mut purse = PurseCard::open(card).expect("open");
    let started = Instant::now();
    let mut ops = 0;
    while started.elapsed() < length {
        b.office
            .recharge(
                &b.cashier,
                keys,
                &mut purse,
                RechargeRequest {
                    amount_minor: 1,
                    when: when(),
                },
            )
            .await
            .expect("recharge");
        ops += 1;
    }
    rate(ops, started.elapsed())
}

fn product_profile() -> ProductProfile {
    ProductProfile {
        card_type: CardType::Anonymous,
        deposit_minor: 2_000,
        fee_minor: 500,
        validity_months: 36,
        max_balance_minor: 100_000,
        offline_purchase_limit_minor: 10_000,
        offline_cumulative_limit_minor: 20_000,
        algorithm: Algorithm::TripleDes,
        applications: vec![ProductApplication {
            application: ApplicationKind::Purse,
            rights: vec!["load".into(), "purchase".into()],
        }],
    }
}

/// `n` cards of a new product through a whole production batch (untimed); in stock.
async fn stock(b: &Bench, code: &str, first_chip: &str, n: i64) -> Vec<MemCard> {
    let (o, a) = (&b.office, &b.admin);
    o.create_product(
        a,
        NewProduct {
            code: code.into(),
            name: format!("{code} card"),
            profile: product_profile(),
        },
    )
    .await
    .expect("product");
    let lot = format!("LOT-{code}");
    o.receive_chip_lot(
        a,
        NewChipLot {
            lot_number: lot.clone(),
            chip_maker: "Icmaker".into(),
            chip_model: "IC-32K".into(),
            quantity: n,
            first_chip_serial: first_chip.into(),
            transport_key_version: 1,
        },
    )
    .await
    .expect("lot");
    let order = o
        .open_production_order(
            a,
            NewProductionOrder {
                product_code: code.into(),
                lot_number: lot,
                quantity: n,
            },
        )
        .await
        .expect("order");
    let batch = o.start_batch(a, order.id, n).await.expect("batch");
    o.record_printing(a, batch.id, "printer P-1", 0)
        .await
        .expect("printing");
    let plan = o.coding_plan(batch.id).await.expect("coding plan");
    let specs = plan.blank_cards([0x20, 0x26, 0x01, 0x05]).expect("specs");
    let mut cards: Vec<MemCard> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let eeprom =
                manufacture::eeprom(32, iccard_cos::nvm::DEFAULT_ENDURANCE).expect("eeprom");
            MemCard(
                manufacture::make_blank(eeprom, iccard_cos::SeededRandom::new(i as u64), spec)
                    .expect("blank"),
            )
        })
        .collect();
    let coded: Vec<CodedCard> = plan
        .chip_serials
        .iter()
        .map(|s| CodedCard {
            chip_serial: s.clone(),
            failure: None,
        })
        .collect();
    o.record_coding(a, batch.id, "coder C-1", &coded)
        .await
        .expect("coding");
    for stage in [Stage::Bronzing, Stage::Packaging, Stage::Gluing] {
        o.record_finishing(a, batch.id, stage, "line L-1", &[])
            .await
            .expect("finishing");
    }
    let tested: Vec<TestedCard> = cards
        .iter_mut()
        .zip(specs.iter().zip(&plan.chip_serials))
        .map(|(card, (spec, serial))| TestedCard {
            chip_serial: serial.clone(),
            report: test_card(
                card,
                &manufacture::transport_key(&devkeys::TRANSPORT.value(), &spec.chip_serial),
            ),
        })
        .collect();
    o.record_testing(a, batch.id, "tester T-9", &tested)
        .await
        .expect("testing");
    cards
}

/// Issues every card of `cards`; issuances per second.
async fn office_issues(b: &Bench, keys: &dyn Keystore, cards: Vec<MemCard>) -> f64 {
    let req = IssueRequest {
        pin: Zeroizing::new("123456".into()),
        holder: None,
        date: [0x20, 0x26, 0x03, 0x14],
    };
    let n = cards.len() as u64;
    let started = Instant::now();
    for mut card in cards {
        b.office
            .issue_card(&b.issuer, keys, &mut card, &req)
            .await
            .expect("issue");
    }
    rate(n, started.elapsed())
}

// ----- the TPC-B-like baseline (as benches/ledger.rs) -----

const ACCOUNTS: i64 = 100_000;
const TELLERS: i64 = 10;

const TPCB_SCHEMA: [&str; 4] = [
    "CREATE TABLE bench_branches (bid BIGINT PRIMARY KEY, bbalance BIGINT NOT NULL, filler TEXT)",
    "CREATE TABLE bench_tellers (tid BIGINT PRIMARY KEY, bid BIGINT NOT NULL, \
     tbalance BIGINT NOT NULL, filler TEXT)",
    "CREATE TABLE bench_accounts (aid BIGINT PRIMARY KEY, bid BIGINT NOT NULL, \
     abalance BIGINT NOT NULL, filler TEXT)",
    "CREATE TABLE bench_history (tid BIGINT, bid BIGINT, aid BIGINT, delta BIGINT, \
     mtime BIGINT, filler TEXT)",
];

fn tpcb_fill() -> [String; 3] {
    let series = |n: i64| {
        format!("WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {n})")
    };
    [
        format!(
            "{} INSERT INTO bench_branches (bid, bbalance, filler) SELECT n, 0, '' FROM s",
            series(1)
        ),
        format!(
            "{} INSERT INTO bench_tellers (tid, bid, tbalance, filler) SELECT n, 1, 0, '' FROM s",
            series(TELLERS)
        ),
        format!(
            "{} INSERT INTO bench_accounts (aid, bid, abalance, filler) SELECT n, 1, 0, '{}' FROM s",
            series(ACCOUNTS),
            "x".repeat(84)
        ),
    ]
}

const TPCB: [&str; 5] = [
    "UPDATE bench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "SELECT abalance FROM bench_accounts WHERE aid = $2 AND $1 = $1",
    "UPDATE bench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE bench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "INSERT INTO bench_history (tid, bid, aid, delta, mtime) VALUES ($2, 1, $2, $1, 0)",
];

async fn tpcb_setup(store: &Store) {
    let statements: Vec<String> = TPCB_SCHEMA
        .iter()
        .map(|s| s.to_string())
        .chain(tpcb_fill())
        .collect();
    match store {
        Store::Sqlite(p) => {
            let mut tx = p.begin().await.expect("begin");
            for s in &statements {
                sqlx::query(s).execute(&mut *tx).await.expect(s);
            }
            tx.commit().await.expect("commit");
        }
        Store::Postgres(p) => {
            let mut tx = p.begin().await.expect("begin");
            for s in &statements {
                sqlx::query(s).execute(&mut *tx).await.expect(s);
            }
            tx.commit().await.expect("commit");
            sqlx::query("VACUUM ANALYZE")
                .execute(p)
                .await
                .expect("vacuum");
        }
    }
}

/// One TPC-B-like transaction: account, its read-back, teller, branch, history row.
async fn tpcb_one(store: &Store, i: i64) -> sqlx::Result<()> {
    let aid = 1 + (i.wrapping_mul(7919)).rem_euclid(ACCOUNTS);
    let args = |j: usize| match j {
        2 => (1i64, 1 + i.rem_euclid(TELLERS)),
        3 => (1, 1),
        _ => (1, aid),
    };
    match store {
        Store::Sqlite(p) => tpcb_sqlite(p, args).await,
        Store::Postgres(p) => tpcb_pg(p, args).await,
    }
}

async fn tpcb_sqlite(p: &SqlitePool, args: impl Fn(usize) -> (i64, i64)) -> sqlx::Result<()> {
    let mut tx = p.begin_with("BEGIN IMMEDIATE").await?;
    for (j, sql) in TPCB.iter().enumerate() {
        let (a, b) = args(j);
        sqlx::query(sql).bind(a).bind(b).execute(&mut *tx).await?;
    }
    tx.commit().await
}

async fn tpcb_pg(p: &PgPool, args: impl Fn(usize) -> (i64, i64)) -> sqlx::Result<()> {
    let mut tx = p.begin().await?;
    for (j, sql) in TPCB.iter().enumerate() {
        let (a, b) = args(j);
        sqlx::query(sql).bind(a).bind(b).execute(&mut *tx).await?;
    }
    tx.commit().await
}

async fn tpcb_sqlx(store: &Store, length: Duration) -> f64 {
    let started = Instant::now();
    let mut ops = 0;
    while started.elapsed() < length {
        tpcb_one(store, ops as i64).await.expect("TPC-B");
        ops += 1;
    }
    rate(ops, started.elapsed())
}

/// pgbench (TPC-B built in, 1 client) on a scratch database of the same server.
async fn pgbench(base: &str, secs: u64) -> Option<f64> {
    let ok = Command::new("pgbench")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("pgbench is not on PATH: its row is skipped");
        return None;
    }
    let name = format!("iccard_cards_pgbench_{}", std::process::id());
    let url = create_database(base, &name).await;
    let init = Command::new("pgbench")
        .args(["-i", "-s", "1", "-q", &url])
        .output();
    let tps = match init {
        Ok(o) if o.status.success() => {
            let out = Command::new("pgbench")
                .args(["-c", "1", "-j", "1", "-T", &secs.to_string(), "-n", &url])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().strip_prefix("tps = "))
                .find_map(|r| r.split_whitespace().next()?.parse::<f64>().ok())
        }
        _ => {
            eprintln!("pgbench -i failed: its row is skipped");
            None
        }
    };
    drop_database(base, &name).await;
    tps
}

async fn create_database(base: &str, name: &str) -> String {
    let admin = PgPool::connect(base).await.expect("connect to PostgreSQL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop old scratch database");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create scratch database (the role needs CREATEDB)");
    admin.close().await;
    let (prefix, _) = base.rsplit_once('/').expect("URL ends in /DATABASE");
    format!("{prefix}/{name}")
}

async fn drop_database(base: &str, name: &str) {
    let admin = PgPool::connect(base).await.expect("connect to PostgreSQL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop scratch database");
    admin.close().await;
}

// ----- the table -----

struct Row {
    database: &'static str,
    workload: &'static str,
    ops_per_second: f64,
    against: Vec<(&'static str, f64)>,
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<11} {:<38} {:>9} {:>9}  ratio",
        "database", "workload (1 client)", "ops/s", "ms/op"
    );
    for r in rows {
        let ratios: Vec<String> = r
            .against
            .iter()
            .map(|(name, b)| format!("{:.3} of {name}", r.ops_per_second / b))
            .collect();
        println!(
            "{:<11} {:<38} {:>9.1} {:>9.3}  {}",
            r.database,
            r.workload,
            r.ops_per_second,
            1000.0 / r.ops_per_second,
            ratios.join(", ")
        );
    }
}

const CARD_LOAD: &str = "card only: load APDUs (MasterKeyHost)";
const CARD_PERSO: &str = "card only: personalization script";
const SQLX_TPCB: &str = "sqlx TPC-B-like";
const PGBENCH: &str = "pgbench TPC-B";

struct Lengths {
    timed: Duration,
    issues: i64,
}

async fn bench_store(
    database: &'static str,
    store: Store,
    l: &Lengths,
    card_load: f64,
    card_perso: f64,
    pgbench_tps: Option<f64>,
) -> Vec<Row> {
    let b = office(store.clone()).await;
    tpcb_setup(&store).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let local = local_keystore(dir.path());
    let dev = DevKeystore::new(Mode::Development).expect("dev keystore");
    // Warm up (connections, page cache).
    office_recharges(&b, &dev, 90, l.timed / 4).await;
    tpcb_sqlx(&store, l.timed / 4).await;
    let tpcb = tpcb_sqlx(&store, l.timed).await;
    let mut baselines = vec![(SQLX_TPCB, tpcb)];
    if let Some(t) = pgbench_tps {
        baselines.push((PGBENCH, t));
    }
    let mut rows = Vec::new();
    let recharge_against = |rows: &mut Vec<Row>, name, v| {
        let mut against = vec![(CARD_LOAD, card_load)];
        against.extend(baselines.iter().copied());
        rows.push(Row {
            database,
            workload: name,
            ops_per_second: v,
            against,
        });
    };
    let v = office_recharges(&b, &dev, 91, l.timed).await;
    recharge_against(&mut rows, "Office::recharge (DevKeystore)", v);
    let v = office_recharges(&b, &local, 92, l.timed).await;
    recharge_against(&mut rows, "Office::recharge (LocalKeystore)", v);
    rows.push(Row {
        database,
        workload: SQLX_TPCB,
        ops_per_second: tpcb,
        against: vec![],
    });
    if let Some(t) = pgbench_tps {
        rows.push(Row {
            database,
            workload: PGBENCH,
            ops_per_second: t,
            against: vec![],
        });
    }
    for (code, first, keys, name) in [
        (
            "BENCHD",
            "4943000000100000",
            &dev as &dyn Keystore,
            "Office::issue_card (DevKeystore)",
        ),
        (
            "BENCHL",
            "4943000000200000",
            &local as &dyn Keystore,
            "Office::issue_card (LocalKeystore)",
        ),
    ] {
        let cards = stock(&b, code, first, l.issues).await;
        let v = office_issues(&b, keys, cards).await;
        let mut against = vec![(CARD_PERSO, card_perso)];
        against.extend(baselines.iter().copied());
        rows.push(Row {
            database,
            workload: name,
            ops_per_second: v,
            against,
        });
    }
    let report = iccard_office::check::check(&store)
        .await
        .expect("check after the bench");
    assert!(report.is_clean(), "{:?}", report.problems);
    store.close().await;
    rows
}

async fn bench(quick: bool) {
    let l = if quick {
        Lengths {
            timed: Duration::from_millis(150),
            issues: 2,
        }
    } else {
        Lengths {
            timed: Duration::from_secs(env_u64("ICCARD_BENCH_SECONDS", 2)),
            issues: env_u64("ICCARD_BENCH_ISSUES", 16) as i64,
        }
    };
    let pgbench_secs = env_u64("ICCARD_BENCH_PGBENCH_SECONDS", 5);
    eprintln!(
        "{:?} per timed row, {} cards per issuance row",
        l.timed, l.issues
    );
    let card_load = card_only_loads(l.timed);
    let card_perso = card_only_personalizations(l.issues.max(1) as u64 * 2);
    let mut rows = vec![
        Row {
            database: "-",
            workload: CARD_LOAD,
            ops_per_second: card_load,
            against: vec![],
        },
        Row {
            database: "-",
            workload: CARD_PERSO,
            ops_per_second: card_perso,
            against: vec![],
        },
    ];

    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("office.db").display());
    let store = Store::connect(&url).await.expect("SQLite");
    rows.extend(bench_store("SQLite", store, &l, card_load, card_perso, None).await);

    let pg_url = ["ICCARD_BENCH_POSTGRES_URL", "ICCARD_TEST_POSTGRES_URL"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()));
    match pg_url {
        None => eprintln!(
            "PostgreSQL skipped: set ICCARD_BENCH_POSTGRES_URL or ICCARD_TEST_POSTGRES_URL \
             (scripts/postgres-test-setup prints one)"
        ),
        Some(base) => {
            let tps = if quick {
                None
            } else {
                pgbench(&base, pgbench_secs).await
            };
            let name = format!("iccard_cards_bench_{}", std::process::id());
            let url = create_database(&base, &name).await;
            let store = Store::connect(&url).await.expect("PostgreSQL");
            rows.extend(bench_store("PostgreSQL", store, &l, card_load, card_perso, tps).await);
            drop_database(&base, &name).await;
        }
    }
    print_table(&rows);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not (then: a quick run).
    let quick = !std::env::args().any(|a| a == "--bench");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench(quick));
}
