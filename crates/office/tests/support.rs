//! Test databases: a fresh SQLite file or a fresh PostgreSQL database per test, and a back
//! office with a recharge point and one operator per role.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use iccard_office::machines::{MachineKind, NewMachine};
use iccard_office::{InitConfig, Mode, NewOperator, Office, Password, Role, Session, Store};

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
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&admin)
                .await
                .expect("drop test database");
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
