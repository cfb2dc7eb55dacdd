//! Test databases: a fresh SQLite file or a fresh PostgreSQL database per test, and a back
//! office with a recharge point and one operator per role; cards put in stock through a whole
//! production batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use iccard_issuer::devkeys;
use iccard_issuer::functional::test_card;
use iccard_issuer::manufacture;
use iccard_office::machines::{MachineKind, NewMachine};
use iccard_office::manufacture::{
    CodedCard, InventoryState, NewChipLot, NewProductionOrder, Stage, TestedCard,
};
use iccard_office::products::{
    Algorithm, ApplicationKind, CardType, NewProduct, ProductApplication, ProductProfile,
};
use iccard_office::{InitConfig, Mode, NewOperator, Office, Password, Role, Session, Store};
use iccard_testkit::MemCard;

/// Where a test database lives.
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database for one test.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_admin: Option<(String, String)>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// The PostgreSQL URL from the environment, or `None` (then PostgreSQL tests are skipped,
/// unless `ICCARD_TEST_REQUIRE_POSTGRES=1`, which turns the skip into a failure).
pub fn postgres_url() -> Option<String> {
    match std::env::var("ICCARD_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("ICCARD_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "ICCARD_TEST_REQUIRE_POSTGRES=1 but ICCARD_TEST_POSTGRES_URL is not set: run scripts/postgres-test-setup"
            );
            None
        }
    }
}

impl TestDb {
    pub async fn new(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("office.db").display());
                Some(TestDb {
                    url,
                    _dir: Some(dir),
                    pg_admin: None,
                })
            }
            Backend::Postgres => {
                let base = postgres_url()?;
                let name = format!(
                    "iccard_t_{}_{}_{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .subsec_nanos()
                );
                let admin = sqlx::PgPool::connect(&base)
                    .await
                    .expect("connect to ICCARD_TEST_POSTGRES_URL");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin)
                    .await
                    .expect("create test database (the role needs CREATEDB)");
                admin.close().await;
                let (prefix, _) = base.rsplit_once('/').expect("URL ends in /DATABASE");
                Some(TestDb {
                    url: format!("{prefix}/{name}"),
                    _dir: None,
                    pg_admin: Some((base, name)),
                })
            }
        }
    }

    pub async fn store(&self) -> Store {
        Store::connect(&self.url).await.expect("connect")
    }

    /// Drops a PostgreSQL test database (SQLite's goes with its temp dir).
    pub async fn cleanup(self, store: &Store) {
        store.close().await;
        if let Some((base, name)) = &self.pg_admin {
            let admin = sqlx::PgPool::connect(base).await.expect("connect");
            // A leftover database is not a test failure (an autovacuum worker of another role
            // can refuse FORCE); say so and go on.
            if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&admin)
                .await
            {
                eprintln!("test database {name} left behind: {e}");
            }
            admin.close().await;
        }
    }
}

pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const CLERK_PASSWORD: &str = "clerk-password-1";

/// A clock that starts at 1_700_000_000_000 ms and moves 1 ms per reading.
pub fn test_clock() -> iccard_office::Clock {
    let t = Arc::new(AtomicU64::new(1_700_000_000_000));
    Arc::new(move || t.fetch_add(1, Ordering::Relaxed) as i64)
}

pub fn init_config() -> InitConfig {
    InitConfig {
        issuer_number: "1234567890".into(),
        mode: Mode::Development,
        branch_code: "HQ".into(),
        branch_name: "Head office".into(),
        console_machine_number: "CONSOLE-1".into(),
        admin_login: "admin".into(),
        admin_display_name: "First Administrator".into(),
        admin_password: Password::new(ADMIN_PASSWORD),
    }
}

/// A back office with recharge point RP-1, terminal T-1 (PSAM P-1) and one operator per role.
pub struct World {
    pub office: Office,
    pub admin: Session,
    pub issuer_clerk: Session,
    pub recharge_clerk: Session,
    pub auditor: Session,
}

pub async fn world(store: Store) -> World {
    let office = Office::init_with_clock(store, init_config(), test_clock())
        .await
        .expect("init");
    let admin = office
        .login("admin", &Password::new(ADMIN_PASSWORD), "CONSOLE-1")
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
    office
        .register_machine(
            &admin,
            NewMachine {
                machine_number: "T-1".into(),
                kind: MachineKind::Terminal,
                branch_code: "HQ".into(),
                psam_serial: Some("P-1".into()),
            },
        )
        .await
        .expect("register T-1");
    let mut sessions = Vec::new();
    for (login, role, machine) in [
        ("issuer", Role::IssuanceClerk, "RP-1"),
        ("cashier", Role::RechargeClerk, "RP-1"),
        ("auditor", Role::Auditor, "CONSOLE-1"),
    ] {
        office
            .create_operator(
                &admin,
                NewOperator {
                    login: login.into(),
                    display_name: login.to_uppercase(),
                    role,
                    password: Password::new(CLERK_PASSWORD),
                },
            )
            .await
            .expect("create operator");
        sessions.push(
            office
                .login(login, &Password::new(CLERK_PASSWORD), machine)
                .await
                .expect("login"),
        );
    }
    let auditor = sessions.pop().unwrap();
    let recharge_clerk = sessions.pop().unwrap();
    let issuer_clerk = sessions.pop().unwrap();
    World {
        office,
        admin,
        issuer_clerk,
        recharge_clerk,
        auditor,
    }
}

/// The product profile the issuance tests use (deposit 2,000, fee 500, 36 months, maximum
/// balance 50,000, 3DES).
pub fn product(card_type: CardType) -> ProductProfile {
    ProductProfile {
        card_type,
        deposit_minor: 2_000,
        fee_minor: 500,
        validity_months: 36,
        max_balance_minor: 50_000,
        offline_purchase_limit_minor: 10_000,
        offline_cumulative_limit_minor: 20_000,
        algorithm: Algorithm::TripleDes,
        applications: vec![ProductApplication {
            application: ApplicationKind::Purse,
            rights: vec!["load".into(), "purchase".into()],
        }],
    }
}

/// Makes `n` cards of product `code` through a whole production batch; returns them (in
/// memory, as coded) with their chip serials. Cards are all in stock afterwards.
pub async fn stock(
    w: &World,
    code: &str,
    card_type: CardType,
    first: &str,
    n: i64,
) -> Vec<MemCard> {
    stock_with(w, code, product(card_type), first, n)
        .await
        .into_iter()
        .map(|(_, card)| card)
        .collect()
}

/// [`stock`] with the product's profile given; returns each card with its chip serial (as the
/// inventory writes it), in chip serial order.
pub async fn stock_with(
    w: &World,
    code: &str,
    profile: ProductProfile,
    first: &str,
    n: i64,
) -> Vec<(String, MemCard)> {
    w.office
        .create_product(
            &w.admin,
            NewProduct {
                code: code.into(),
                name: format!("{code} card"),
                profile,
            },
        )
        .await
        .unwrap();
    let lot = format!("LOT-{code}");
    w.office
        .receive_chip_lot(
            &w.admin,
            NewChipLot {
                lot_number: lot.clone(),
                chip_maker: "Icmaker".into(),
                chip_model: "IC-32K".into(),
                quantity: n,
                first_chip_serial: first.into(),
                transport_key_version: 1,
            },
        )
        .await
        .unwrap();
    let order = w
        .office
        .open_production_order(
            &w.admin,
            NewProductionOrder {
                product_code: code.into(),
                lot_number: lot,
                quantity: n,
            },
        )
        .await
        .unwrap();
    let batch = w.office.start_batch(&w.admin, order.id, n).await.unwrap();
    w.office
        .record_printing(&w.admin, batch.id, "printer P-1", 0)
        .await
        .unwrap();
    let plan = w.office.coding_plan(batch.id).await.unwrap();
    let specs = plan.blank_cards([0x20, 0x26, 0x01, 0x05]).unwrap();
    let mut cards: Vec<MemCard> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let eeprom = manufacture::eeprom(32, iccard_cos::nvm::DEFAULT_ENDURANCE).unwrap();
            MemCard(
                manufacture::make_blank(
                    eeprom,
                    iccard_cos::SeededRandom::new(1_000 + i as u64),
                    spec,
                )
                .unwrap(),
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
    w.office
        .record_coding(&w.admin, batch.id, "coder C-1", &coded)
        .await
        .unwrap();
    for stage in [Stage::Bronzing, Stage::Packaging, Stage::Gluing] {
        w.office
            .record_finishing(&w.admin, batch.id, stage, "line L-1", &[])
            .await
            .unwrap();
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
    w.office
        .record_testing(&w.admin, batch.id, "tester T-9", &tested)
        .await
        .unwrap();
    for s in &plan.chip_serials {
        assert_eq!(
            w.office.inventory_card(s).await.unwrap().state,
            InventoryState::InStock
        );
    }
    plan.chip_serials.iter().cloned().zip(cards).collect()
}
