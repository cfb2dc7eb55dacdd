//! Ledger postings per second beside a TPC-B-like baseline on the same database.
//!
//! `cargo bench -p iccard-office --bench ledger` prints one table. Each Office row runs the real
//! [`Office::load_card`] (write lock, role re-check, business record, `card_loads` row, card
//! shadow update and history row, balanced journal entry with two lines and account updates,
//! hash-chained audit record, commit) from 1 and from 4 concurrent clients (tokio tasks sharing
//! one `Office`, each loading its own card). Its baselines run on the same database in the same
//! run:
//!
//! - `sqlx TPC-B`: the TPC-B-like transaction pgbench runs (update an account, read it back,
//!   update a teller, update the branch, insert a history row, commit) through sqlx on the
//!   office's own pool; on SQLite it starts with `BEGIN IMMEDIATE` like every office write.
//! - `pgbench` (PostgreSQL only, when `pgbench` is on `PATH`): `pgbench -i -s 1` into a scratch
//!   database on the same server, then `pgbench -c N -j N -T 10 -n`.
//!
//! SQLite runs on a temporary file (WAL, `synchronous = FULL`, as the office opens it).
//! PostgreSQL runs when `ICCARD_BENCH_POSTGRES_URL` (or else `ICCARD_TEST_POSTGRES_URL`) names a
//! server whose role may create databases: the bench creates scratch databases and drops them.
//!
//! `ICCARD_BENCH_SECONDS` sets the seconds per row (default 3), `ICCARD_BENCH_PGBENCH_SECONDS`
//! pgbench's `-T` (default 10). Without `--bench` (as `cargo test --benches` runs it) every row
//! lasts 200 ms and pgbench is skipped: a smoke test of the bench itself.

use std::process::Command;
use std::time::{Duration, Instant};

use iccard_office::machines::{MachineKind, NewMachine};
use iccard_office::{
    InitConfig, LoadCard, Mode, NewOperator, Office, OpenCard, Password, Role, Session, Store,
};
use sqlx::{PgPool, SqlitePool};

/// TPC-B scale 1: one branch, ten tellers, 100,000 accounts.
const BRANCHES: i64 = 1;
const TELLERS: i64 = 10;
const ACCOUNTS: i64 = 100_000;
const CLIENT_COUNTS: [usize; 2] = [1, 4];

fn env_secs(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number of seconds")),
        _ => default,
    }
}

/// SplitMix64, for the baseline's random account, teller and delta.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `1..=n`.
    fn one_to(&mut self, n: i64) -> i64 {
        1 + (self.next() % n as u64) as i64
    }
}

/// One measured row.
struct Measured {
    ops: u64,
    elapsed: Duration,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `clients` copies of `client` for `secs` seconds; each returns how many operations it
/// completed before the deadline.
async fn drive<F, Fut>(clients: usize, length: Duration, client: F) -> Measured
where
    F: Fn(usize, Instant) -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + length;
    let tasks: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(client(c, deadline)))
        .collect();
    let mut ops = 0;
    for t in tasks {
        ops += t.await.expect("bench client");
    }
    Measured {
        ops,
        elapsed: started.elapsed(),
    }
}

// ----- the office -----

/// A back office with a recharge point, a clerk logged in there and one card per client.
async fn office(store: Store) -> (Office, Session) {
    let admin_password = "bench-admin-password";
    let clerk_password = "bench-clerk-password";
    let office = Office::init(
        store,
        InitConfig {
            issuer_number: "1234567890".into(),
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
    for c in 0..*CLIENT_COUNTS.iter().max().unwrap_or(&1) {
        office
            .open_card(
                &issuer,
                OpenCard {
                    application_serial: card_serial(c),
                    deposit_minor: 0,
                    fee_minor: 0,
                },
            )
            .await
            .expect("open card");
    }
    let cashier = office
        .login("cashier", &Password::new(clerk_password), "RP-1")
        .await
        .expect("cashier login");
    (office, cashier)
}

fn card_serial(client: usize) -> String {
    format!("{:04X}", 0xBE00 + client)
}

/// `clients` recharge clerks' worth of loads, each client on its own card (no serial clashes).
async fn office_loads(
    office: &Office,
    session: &Session,
    clients: usize,
    length: Duration,
) -> Measured {
    drive(clients, length, |c, deadline| {
        let office = office.clone();
        let session = session.clone();
        async move {
            let serial = card_serial(c);
            let mut card = office.card(&serial).await.expect("card");
            let mut ops = 0;
            while Instant::now() < deadline {
                let receipt = office
                    .load_card(
                        &session,
                        LoadCard {
                            application_serial: serial.clone(),
                            amount_minor: 100,
                            card_balance_minor: card.balance_minor,
                            card_online_serial: card.online_serial,
                        },
                    )
                    .await
                    .expect("load");
                card = receipt.card;
                ops += 1;
            }
            ops
        }
    })
    .await
}

// ----- the TPC-B-like baseline through sqlx -----

/// The baseline's tables (pgbench's, renamed), created in the office's database. One SQL text
/// for both databases.
const TPCB_SCHEMA: [&str; 4] = [
    "CREATE TABLE bench_branches (bid BIGINT PRIMARY KEY, bbalance BIGINT NOT NULL, filler TEXT)",
    "CREATE TABLE bench_tellers (tid BIGINT PRIMARY KEY, bid BIGINT NOT NULL, \
     tbalance BIGINT NOT NULL, filler TEXT)",
    "CREATE TABLE bench_accounts (aid BIGINT PRIMARY KEY, bid BIGINT NOT NULL, \
     abalance BIGINT NOT NULL, filler TEXT)",
    "CREATE TABLE bench_history (tid BIGINT, bid BIGINT, aid BIGINT, delta BIGINT, \
     mtime BIGINT, filler TEXT)",
];

/// Fills the baseline's tables at scale 1 (recursive CTEs run on both databases).
fn tpcb_fill() -> [String; 3] {
    let filler = "x".repeat(84);
    let series = |n: i64| {
        format!("WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {n})")
    };
    [
        format!(
            "{} INSERT INTO bench_branches (bid, bbalance, filler) SELECT n, 0, '' FROM s",
            series(BRANCHES)
        ),
        format!(
            "{} INSERT INTO bench_tellers (tid, bid, tbalance, filler) \
             SELECT n, (n - 1) / {} + 1, 0, '' FROM s",
            series(TELLERS),
            TELLERS / BRANCHES
        ),
        format!(
            "{} INSERT INTO bench_accounts (aid, bid, abalance, filler) \
             SELECT n, (n - 1) / {} + 1, 0, '{filler}' FROM s",
            series(ACCOUNTS),
            ACCOUNTS / BRANCHES
        ),
    ]
}

/// One TPC-B-like transaction's random inputs.
fn tpcb_draw(rng: &mut Rng) -> (i64, i64, i64, i64) {
    let aid = rng.one_to(ACCOUNTS);
    let tid = rng.one_to(TELLERS);
    let bid = rng.one_to(BRANCHES);
    let delta = rng.one_to(10_001) - 5_001;
    (aid, tid, bid, delta)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The TPC-B statements, in pgbench's order.
const TPCB_UPDATE_ACCOUNT: &str =
    "UPDATE bench_accounts SET abalance = abalance + $1 WHERE aid = $2";
const TPCB_SELECT_ACCOUNT: &str = "SELECT abalance FROM bench_accounts WHERE aid = $1";
const TPCB_UPDATE_TELLER: &str = "UPDATE bench_tellers SET tbalance = tbalance + $1 WHERE tid = $2";
const TPCB_UPDATE_BRANCH: &str =
    "UPDATE bench_branches SET bbalance = bbalance + $1 WHERE bid = $2";
const TPCB_INSERT_HISTORY: &str =
    "INSERT INTO bench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, $5)";

async fn tpcb_sqlite_one(pool: &SqlitePool, rng: &mut Rng) -> sqlx::Result<()> {
    let (aid, tid, bid, delta) = tpcb_draw(rng);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(TPCB_UPDATE_ACCOUNT)
        .bind(delta)
        .bind(aid)
        .execute(&mut *tx)
        .await?;
    let _: (i64,) = sqlx::query_as(TPCB_SELECT_ACCOUNT)
        .bind(aid)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(TPCB_UPDATE_TELLER)
        .bind(delta)
        .bind(tid)
        .execute(&mut *tx)
        .await?;
    sqlx::query(TPCB_UPDATE_BRANCH)
        .bind(delta)
        .bind(bid)
        .execute(&mut *tx)
        .await?;
    sqlx::query(TPCB_INSERT_HISTORY)
        .bind(tid)
        .bind(bid)
        .bind(aid)
        .bind(delta)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

async fn tpcb_pg_one(pool: &PgPool, rng: &mut Rng) -> sqlx::Result<()> {
    let (aid, tid, bid, delta) = tpcb_draw(rng);
    let mut tx = pool.begin().await?;
    sqlx::query(TPCB_UPDATE_ACCOUNT)
        .bind(delta)
        .bind(aid)
        .execute(&mut *tx)
        .await?;
    let _: (i64,) = sqlx::query_as(TPCB_SELECT_ACCOUNT)
        .bind(aid)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(TPCB_UPDATE_TELLER)
        .bind(delta)
        .bind(tid)
        .execute(&mut *tx)
        .await?;
    sqlx::query(TPCB_UPDATE_BRANCH)
        .bind(delta)
        .bind(bid)
        .execute(&mut *tx)
        .await?;
    sqlx::query(TPCB_INSERT_HISTORY)
        .bind(tid)
        .bind(bid)
        .bind(aid)
        .bind(delta)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Creates and fills the baseline's tables in the office's database.
async fn tpcb_setup(store: &Store) {
    let statements = TPCB_SCHEMA.iter().map(|s| s.to_string()).chain(tpcb_fill());
    match store {
        Store::Sqlite(p) => {
            let mut tx = p.begin().await.expect("begin");
            for s in statements {
                sqlx::query(&s).execute(&mut *tx).await.expect(&s);
            }
            tx.commit().await.expect("commit");
        }
        Store::Postgres(p) => {
            let mut tx = p.begin().await.expect("begin");
            for s in statements {
                sqlx::query(&s).execute(&mut *tx).await.expect(&s);
            }
            tx.commit().await.expect("commit");
            sqlx::query("VACUUM ANALYZE")
                .execute(p)
                .await
                .expect("vacuum");
        }
    }
}

async fn tpcb_sqlx(store: &Store, clients: usize, length: Duration) -> Measured {
    drive(clients, length, |c, deadline| {
        let store = store.clone();
        async move {
            let mut rng = Rng(0x7C_B000 + c as u64);
            let mut ops = 0;
            while Instant::now() < deadline {
                match &store {
                    Store::Sqlite(p) => tpcb_sqlite_one(p, &mut rng).await,
                    Store::Postgres(p) => tpcb_pg_one(p, &mut rng).await,
                }
                .expect("TPC-B transaction");
                ops += 1;
            }
            ops
        }
    })
    .await
}

// ----- pgbench -----

/// Runs pgbench against a scratch database; `None` (with a message) if it cannot.
fn pgbench(url: &str, clients: usize, secs: u64) -> Option<f64> {
    let out = Command::new("pgbench")
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.to_string(),
            "-T",
            &secs.to_string(),
            "-n",
            url,
        ])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "pgbench -c {clients} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            eprintln!("pgbench not run: {e}");
            return None;
        }
    };
    // "tps = 1234.567890 (without initial connection time)"
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tps = "))
        .find_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok());
    if tps.is_none() {
        eprintln!("no tps line in pgbench's output:\n{text}");
    }
    tps
}

fn pgbench_on_path() -> bool {
    Command::new("pgbench")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A scratch PostgreSQL database on the server of `base`, dropped by [`drop_database`].
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

/// One printed line.
struct Row {
    database: &'static str,
    workload: &'static str,
    clients: usize,
    ops_per_second: f64,
    /// Office rows: (baseline name, baseline ops/s).
    against: Vec<(&'static str, f64)>,
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<11} {:<28} {:>7} {:>10} {:>10}  ratio Office/baseline",
        "database", "workload", "clients", "ops/s", "ms/op"
    );
    for r in rows {
        let ms_per_op = 1000.0 * r.clients as f64 / r.ops_per_second;
        let ratios: Vec<String> = r
            .against
            .iter()
            .map(|(name, b)| format!("{:.2} of {name}", r.ops_per_second / b))
            .collect();
        println!(
            "{:<11} {:<28} {:>7} {:>10.0} {:>10.2}  {}",
            r.database,
            r.workload,
            r.clients,
            r.ops_per_second,
            ms_per_op,
            ratios.join(", ")
        );
    }
}

const OFFICE_LOAD: &str = "Office::load_card";
const SQLX_TPCB: &str = "sqlx TPC-B-like";
const PGBENCH: &str = "pgbench TPC-B (built-in)";

/// The office and sqlx rows on one store, 1 and 4 clients each.
async fn bench_store(
    database: &'static str,
    store: Store,
    length: Duration,
    pgbench_tps: &[(usize, f64)],
) -> Vec<Row> {
    let (office, cashier) = office(store.clone()).await;
    tpcb_setup(&store).await;
    // Warm up both paths (connections, page cache) before measuring.
    let warm_up = length / 3;
    office_loads(&office, &cashier, 1, warm_up).await;
    tpcb_sqlx(&store, 1, warm_up).await;
    let mut rows = Vec::new();
    for clients in CLIENT_COUNTS {
        let baseline = tpcb_sqlx(&store, clients, length).await.per_second();
        let measured = office_loads(&office, &cashier, clients, length).await;
        let mut against = vec![(SQLX_TPCB, baseline)];
        if let Some((_, tps)) = pgbench_tps.iter().find(|(c, _)| *c == clients) {
            against.push((PGBENCH, *tps));
        }
        rows.push(Row {
            database,
            workload: OFFICE_LOAD,
            clients,
            ops_per_second: measured.per_second(),
            against,
        });
        rows.push(Row {
            database,
            workload: SQLX_TPCB,
            clients,
            ops_per_second: baseline,
            against: vec![],
        });
        if let Some((_, tps)) = pgbench_tps.iter().find(|(c, _)| *c == clients) {
            rows.push(Row {
                database,
                workload: PGBENCH,
                clients,
                ops_per_second: *tps,
                against: vec![],
            });
        }
    }
    // Every posting above must have kept the books straight.
    let report = iccard_office::check::check(&store)
        .await
        .expect("check after the bench");
    assert!(report.is_clean(), "{:?}", report.problems);
    store.close().await;
    rows
}

async fn bench(quick: bool) {
    let length = if quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(env_secs("ICCARD_BENCH_SECONDS", 3))
    };
    let pgbench_secs = env_secs("ICCARD_BENCH_PGBENCH_SECONDS", 10);
    let mut rows = Vec::new();

    eprintln!("SQLite: {length:?} per row");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("office.db").display());
    let store = Store::connect(&url).await.expect("SQLite");
    rows.extend(bench_store("SQLite", store, length, &[]).await);

    let pg_url = ["ICCARD_BENCH_POSTGRES_URL", "ICCARD_TEST_POSTGRES_URL"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()));
    match pg_url {
        None => eprintln!(
            "PostgreSQL skipped: set ICCARD_BENCH_POSTGRES_URL or ICCARD_TEST_POSTGRES_URL \
             (scripts/postgres-test-setup prints one)"
        ),
        Some(base) => {
            let pid = std::process::id();
            let mut tps = Vec::new();
            if quick {
                eprintln!("pgbench skipped (no --bench: a quick run)");
            } else if pgbench_on_path() {
                let name = format!("iccard_pgbench_{pid}");
                let url = create_database(&base, &name).await;
                eprintln!("pgbench: -i -s 1, then -T {pgbench_secs} per client count");
                let init = Command::new("pgbench")
                    .args(["-i", "-s", "1", "-q", &url])
                    .output();
                match init {
                    Ok(o) if o.status.success() => {
                        for clients in CLIENT_COUNTS {
                            if let Some(t) = pgbench(&url, clients, pgbench_secs) {
                                tps.push((clients, t));
                            }
                        }
                    }
                    Ok(o) => eprintln!(
                        "pgbench -i failed: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                    Err(e) => eprintln!("pgbench -i not run: {e}"),
                }
                drop_database(&base, &name).await;
            } else {
                eprintln!("pgbench is not on PATH: its rows are skipped");
            }
            eprintln!("PostgreSQL: {length:?} per row");
            let name = format!("iccard_bench_{pid}");
            let url = create_database(&base, &name).await;
            let store = Store::connect(&url).await.expect("PostgreSQL");
            rows.extend(bench_store("PostgreSQL", store, length, &tps).await);
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
