//! Settlement bench: TAC verifications per second through the keystore beside raw single-DES
//! block encryptions per second in the same run (the floor: a 3DES TAC costs a diversification
//! and a MAC over two blocks, a few DES blocks each), and offline records ingested per second
//! on SQLite (and PostgreSQL when `ICCARD_TEST_POSTGRES_URL` is set): batches of 100 records
//! whose TACs all verify, chain checked, every record stored and answered.
//!
//! Run: `cargo bench -p iccard-office --bench settlement`. Prints a table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use iccard_crypto::{diversify, pboc_mac, tac_key, BlockCipher, Cipher, PurseAlg};
use iccard_office::keystore::{CardKey, DevKeystore, Keystore, TacInput};
use iccard_office::machines::{MachineKind, NewMachine};
use iccard_office::{InitConfig, Mode, NewOperator, Office, OpenCard, Password, Role, Store};
use iccard_pos::record::{Batch, PurchaseRecord};
use iccard_pos::{RecordStatus, ResultCode, GENESIS_HASH};

const TERMINAL_HEX: &str = "123456789001";
const TERMINAL: [u8; 6] = [0x12, 0x34, 0x56, 0x78, 0x90, 0x01];
const CARD: &str = "31000000000000000042";
const PASSWORD: &str = "bench-password-123";

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Runs `f` in rounds until at least `min` has passed; returns operations and time.
fn timed(min: Duration, round: u64, mut f: impl FnMut()) -> (u64, Duration) {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < min {
        for _ in 0..round {
            f();
        }
        n += round;
    }
    (n, start.elapsed())
}

fn card_key() -> CardKey {
    let serial = hex::decode(CARD).unwrap();
    let mut diversifier = [0u8; 8];
    diversifier.copy_from_slice(&serial[2..]);
    CardKey {
        diversifier,
        key_version: 1,
        alg: PurseAlg::TripleDes,
    }
}

fn when(i: u32) -> ([u8; 7], String, String) {
    let secs = i % 86_400;
    let time = format!("{:02}{:02}{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    let date = "20260314".to_owned();
    let mut w = [0u8; 7];
    w[..4].copy_from_slice(&hex::decode(&date).unwrap());
    w[4..].copy_from_slice(&hex::decode(&time).unwrap());
    (w, date, time)
}

/// The TAC the card would compute (development MTK, the published formula).
fn tac(input: &TacInput) -> [u8; 4] {
    let mtk = iccard_issuer::devkeys::MTK.value();
    let dtk = diversify(PurseAlg::TripleDes, &mtk, &card_key().diversifier);
    pboc_mac(&tac_key(PurseAlg::TripleDes, &dtk), &input.bytes())
}

/// Purchase records `first..first+n` of one card, with real TACs.
fn records(first: u32, n: u32, balance: &mut u32) -> Vec<PurchaseRecord> {
    (first..first + n)
        .map(|i| {
            let (w, date, time) = when(i);
            let amount = 1;
            let input = TacInput::Purchase {
                amount,
                terminal_id: TERMINAL,
                terminal_serial: i,
                when: w,
            };
            let before = *balance;
            *balance -= amount;
            PurchaseRecord {
                terminal_id: TERMINAL_HEX.into(),
                terminal_serial: i,
                application_serial: CARD.into(),
                card_number: "31000000000000000042".into(),
                offline_serial: u16::try_from(i % 65_536).unwrap(),
                amount_fen: amount,
                tx_type: 0x06,
                date,
                time,
                balance_before_fen: before,
                key_version: 1,
                alg_id: 0,
                tac: Some(hex::encode_upper(tac(&input))),
                mac2: Some("00000000".into()),
                status: RecordStatus::Normal,
            }
        })
        .collect()
}

async fn office_on(store: Store) -> Office {
    let office = Office::init(
        store,
        InitConfig {
            issuer_number: "1234567890".into(),
            mode: Mode::Development,
            branch_code: "HQ".into(),
            branch_name: "Head office".into(),
            console_machine_number: "CONSOLE-1".into(),
            admin_login: "admin".into(),
            admin_display_name: "Admin".into(),
            admin_password: Password::new(PASSWORD),
        },
    )
    .await
    .unwrap();
    let admin = office
        .login("admin", &Password::new(PASSWORD), "CONSOLE-1")
        .await
        .unwrap();
    for (number, kind, psam) in [
        ("RP-1", MachineKind::RechargePoint, None),
        ("T-1", MachineKind::Terminal, Some("P-1".to_owned())),
    ] {
        office
            .register_machine(
                &admin,
                NewMachine {
                    machine_number: number.into(),
                    kind,
                    branch_code: "HQ".into(),
                    psam_serial: psam,
                },
            )
            .await
            .unwrap();
    }
    office
        .create_operator(
            &admin,
            NewOperator {
                login: "issuer".into(),
                display_name: "Issuer".into(),
                role: Role::IssuanceClerk,
                password: Password::new(PASSWORD),
            },
        )
        .await
        .unwrap();
    let clerk = office
        .login("issuer", &Password::new(PASSWORD), "RP-1")
        .await
        .unwrap();
    office
        .open_card(
            &clerk,
            OpenCard {
                application_serial: CARD.into(),
                deposit_minor: 0,
                fee_minor: 0,
            },
        )
        .await
        .unwrap();
    office.add_merchant(&admin, "M1", "Canteen").await.unwrap();
    office
        .assign_terminal(&admin, "T-1", TERMINAL_HEX, "M1")
        .await
        .unwrap();
    office
}

/// Ingests `batches` batches of 100 records; returns records per second.
async fn ingest_rate(office: &Office, keys: &dyn Keystore, batches: u32) -> f64 {
    let mut balance = u32::MAX;
    let mut prev = GENESIS_HASH.to_owned();
    let prepared: Vec<Batch> = (0..batches)
        .map(|b| {
            let recs = records(b * 100, 100, &mut balance);
            let batch =
                Batch::new(TERMINAL_HEX.into(), u64::from(b) + 1, prev.clone(), recs).unwrap();
            prev = batch.hash.clone();
            batch
        })
        .collect();
    let start = Instant::now();
    for b in &prepared {
        let r = office.ingest_batch(keys, b).await.unwrap();
        assert!(
            r.results
                .iter()
                .all(|x| x.code == ResultCode::Ok || x.code == ResultCode::Exists),
            "every record verifies"
        );
    }
    per_sec(u64::from(batches) * 100, start.elapsed())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let min = if quick {
        Duration::from_millis(50)
    } else {
        Duration::from_secs(2)
    };
    let keys = DevKeystore::new(Mode::Development).unwrap();
    let card = card_key();
    let (w, _, _) = when(1);
    let input = TacInput::Purchase {
        amount: 100,
        terminal_id: TERMINAL,
        terminal_serial: 1,
        when: w,
    };
    let good = tac(&input);
    assert!(keys.verify_tac(&card, &input, &good).unwrap());
    let (n_tac, d_tac) = timed(min, 1_000, || {
        assert!(keys
            .verify_tac(&card, std::hint::black_box(&input), &good)
            .unwrap());
    });
    let des = BlockCipher::new(
        Cipher::Des,
        &[0x13, 0x34, 0x57, 0x79, 0x9B, 0xBC, 0xDF, 0xF1],
    )
    .unwrap();
    let mut block = [0u8; 8];
    let (n_des, d_des) = timed(min, 10_000, || {
        des.encrypt_blocks(std::hint::black_box(&mut block))
            .unwrap();
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let batches = if quick { 2 } else { 20 };
    let keys_arc: Arc<dyn Keystore + Send + Sync> = Arc::new(keys);
    let dir = tempfile::tempdir().unwrap();
    let sqlite = runtime.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("bench.sqlite").display());
        let store = Store::connect(&url).await.unwrap();
        let office = office_on(store.clone()).await;
        let rate = ingest_rate(&office, &*keys_arc, batches).await;
        store.close().await;
        rate
    });
    let postgres = match std::env::var("ICCARD_TEST_POSTGRES_URL") {
        Ok(base) if !base.is_empty() => Some(runtime.block_on(async {
            let name = format!("iccard_bench_settle_{}", std::process::id());
            let admin = sqlx::PgPool::connect(&base).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin)
                .await
                .expect("create a scratch database (the role needs CREATEDB)");
            let (prefix, _) = base.rsplit_once('/').unwrap();
            let store = Store::connect(&format!("{prefix}/{name}")).await.unwrap();
            let office = office_on(store.clone()).await;
            let rate = ingest_rate(&office, &*keys_arc, batches).await;
            store.close().await;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            rate
        })),
        _ => None,
    };

    let tac_rate = per_sec(n_tac, d_tac);
    let des_rate = per_sec(n_des, d_des);
    println!(
        "settlement bench ({} mode)",
        if quick { "quick" } else { "full" }
    );
    println!("{:<48} {:>14}", "what", "per second");
    println!(
        "{:<48} {:>14.0}",
        "single-DES block encryptions (floor)", des_rate
    );
    println!(
        "{:<48} {:>14.0}",
        "TAC verifications (keystore, 3DES)", tac_rate
    );
    println!(
        "{:<48} {:>14.1}",
        "  DES blocks per TAC verification (ratio)",
        des_rate / tac_rate
    );
    println!(
        "{:<48} {:>14.0}",
        "offline records ingested, SQLite", sqlite
    );
    match postgres {
        Some(r) => println!("{:<48} {:>14.0}", "offline records ingested, PostgreSQL", r),
        None => println!(
            "{:<48} {:>14}",
            "offline records ingested, PostgreSQL", "(no URL)"
        ),
    }
}
