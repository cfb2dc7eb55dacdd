//! Many OS processes posting loads to the same cards at once: no lost update, every entry
//! balanced. The parent spawns this test binary again with `ICCARD_OFFICE_CHILD_URL` set; the
//! child entry point `concurrency::child_posts_loads` then posts its share and exits.

use std::process::Command;
use std::time::Instant;

use iccard_office::{LoadCard, Office, OfficeError, OpenCard, Password, Store};

use crate::support::{self, Backend, TestDb, CLERK_PASSWORD};

const PROCESSES: usize = 4;
const LOADS_PER_PROCESS: i64 = 25;
const CARDS: i64 = 3;
const AMOUNT: i64 = 100;

fn serial(card: i64) -> String {
    format!("{:04X}", 0xC000 + card)
}

/// The child's work; a no-op unless this process was spawned by [`run`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_posts_loads() {
    let Ok(url) = std::env::var("ICCARD_OFFICE_CHILD_URL") else {
        return;
    };
    let child: i64 = std::env::var("ICCARD_OFFICE_CHILD_ID")
        .unwrap()
        .parse()
        .unwrap();
    let office = Office::open(Store::connect(&url).await.unwrap())
        .await
        .unwrap();
    let session = office
        .login("cashier", &Password::new(CLERK_PASSWORD), "RP-1")
        .await
        .unwrap();
    let mut retries = 0;
    for i in 0..LOADS_PER_PROCESS {
        let card = serial((child + i) % CARDS);
        loop {
            // Read the "card" (its shadow stands in for it), then load: another process may load
            // the same card in between, which the serial check refuses; read again and retry.
            let now = office.card(&card).await.unwrap();
            let r = office
                .load_card(
                    &session,
                    LoadCard {
                        application_serial: card.clone(),
                        amount_minor: AMOUNT,
                        card_balance_minor: now.balance_minor,
                        card_online_serial: now.online_serial,
                    },
                )
                .await;
            match r {
                Ok(_) => break,
                Err(OfficeError::OnlineSerialMismatch { .. }) => retries += 1,
                Err(e) => panic!("child {child} load {i}: {e}"),
            }
        }
    }
    eprintln!("child {child}: {LOADS_PER_PROCESS} loads, {retries} retries");
}

async fn run(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        eprintln!("ICCARD_TEST_POSTGRES_URL not set: PostgreSQL concurrency skipped");
        return;
    };
    let store = db.store().await;
    let w = support::world(store.clone()).await;
    for c in 0..CARDS {
        w.office
            .open_card(
                &w.issuer_clerk,
                OpenCard {
                    application_serial: serial(c),
                    deposit_minor: 0,
                    fee_minor: 0,
                },
            )
            .await
            .unwrap();
    }
    let started = Instant::now();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "concurrency::child_posts_loads",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("ICCARD_OFFICE_CHILD_URL", &db.url)
                .env("ICCARD_OFFICE_CHILD_ID", i.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a child process failed");
    }
    eprintln!(
        "{PROCESSES} processes x {LOADS_PER_PROCESS} loads in {:?}",
        started.elapsed()
    );

    let total_loads = PROCESSES as i64 * LOADS_PER_PROCESS;
    let mut serial_sum = 0;
    let mut balance_sum = 0;
    let mut tx = store.read().await.unwrap();
    for c in 0..CARDS {
        let card = w.office.card(&serial(c)).await.unwrap();
        // Every load of this card is recorded with serials 0..n, none lost or doubled.
        let serials: Vec<(i64,)> = tx
            .fetch_all(
                "SELECT l.online_serial FROM card_loads l JOIN cards c ON c.id = l.card_id \
                 WHERE c.application_serial = $1 ORDER BY l.online_serial",
                &iccard_office::args![serial(c)],
            )
            .await
            .unwrap();
        let serials: Vec<i64> = serials.into_iter().map(|s| s.0).collect();
        assert_eq!(serials, (0..card.online_serial).collect::<Vec<_>>());
        assert_eq!(card.balance_minor, card.online_serial * AMOUNT);
        serial_sum += card.online_serial;
        balance_sum += card.balance_minor;
    }
    drop(tx);
    assert_eq!(serial_sum, total_loads);
    assert_eq!(balance_sum, total_loads * AMOUNT);
    let accounts = w.office.accounts().await.unwrap();
    let get = |code: &str| {
        accounts
            .iter()
            .find(|a| a.code == code)
            .unwrap()
            .balance_minor
    };
    assert_eq!(get("float"), total_loads * AMOUNT);
    assert_eq!(get("cash:RP-1"), total_loads * AMOUNT);
    let report = iccard_office::check::check(&store).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.entries, total_loads);
    assert!(report.audit.is_intact());
    db.cleanup(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_processes_post_loads_sqlite() {
    run(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_processes_post_loads_postgres() {
    run(Backend::Postgres).await;
}
