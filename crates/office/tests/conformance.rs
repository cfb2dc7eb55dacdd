//! The conformance suite: every scenario runs on SQLite and on PostgreSQL (when configured).

use iccard_office::audit::Outcome;
use iccard_office::ledger::{self, LineSpec};
use iccard_office::machines::{MachineKind, NewMachine};
use iccard_office::{
    Action, LoadCard, NewOperator, Office, OfficeError, OpenCard, Password, Role, SettlePurchase,
    Store,
};

use crate::support::{self, world, Backend, TestDb, ADMIN_PASSWORD, CLERK_PASSWORD};

/// Generates `sqlite::NAME` and `postgres::NAME` tests for each scenario `NAME(Store)`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::new(super::Backend::Sqlite).await.unwrap();
                    let store = db.store().await;
                    super::$name(store.clone()).await;
                    db.cleanup(&store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::TestDb::new(super::Backend::Postgres).await else {
                        eprintln!("ICCARD_TEST_POSTGRES_URL not set: PostgreSQL conformance skipped");
                        return;
                    };
                    let store = db.store().await;
                    super::$name(store.clone()).await;
                    db.cleanup(&store).await;
                }
            )*
        }
    };
}

conformance!(
    init_creates_chart_admin_and_audit,
    migrations_are_idempotent_and_open_needs_init,
    login_refusals_are_uniform_and_audited,
    roles_decide_what_runs,
    money_flow_posts_balanced_entries_and_history,
    failed_load_leaves_nothing_but_an_audit_record,
    ledger_refuses_unbalanced_and_bad_entries,
    amounts_are_checked,
    purchases_are_idempotent_and_bounded,
    operators_lifecycle,
    machines_register_and_retire,
    check_detects_tampered_ledger,
    audit_chain_names_first_broken_link,
);

async fn raw(store: &Store, sql: &str) {
    let mut tx = store.write().await.unwrap();
    tx.execute(sql, &[]).await.unwrap();
    tx.commit().await.unwrap();
}

async fn count(store: &Store, table: &str) -> i64 {
    let mut tx = store.read().await.unwrap();
    let (n,): (i64,) = tx
        .fetch_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
        .await
        .unwrap();
    n
}

async fn balance(office: &Office, code: &str) -> i64 {
    office
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.code == code)
        .unwrap_or_else(|| panic!("account {code}"))
        .balance_minor
}

fn open(serial: &str, deposit: i64, fee: i64) -> OpenCard {
    OpenCard {
        application_serial: serial.into(),
        deposit_minor: deposit,
        fee_minor: fee,
    }
}

fn load(serial: &str, amount: i64, balance: i64, online_serial: i64) -> LoadCard {
    LoadCard {
        application_serial: serial.into(),
        amount_minor: amount,
        card_balance_minor: balance,
        card_online_serial: online_serial,
    }
}

async fn init_creates_chart_admin_and_audit(store: Store) {
    let office =
        Office::init_with_clock(store.clone(), support::init_config(), support::test_clock())
            .await
            .unwrap();
    let settings = office.settings().await.unwrap();
    assert_eq!(settings.issuer_number, "1234567890");
    assert_eq!(settings.mode, iccard_office::Mode::Development);
    let codes: Vec<String> = office
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.code)
        .collect();
    let mut expected: Vec<String> = ledger::CHART.iter().map(|c| c.0.to_string()).collect();
    expected.sort();
    assert_eq!(codes, expected);
    assert!(office
        .accounts()
        .await
        .unwrap()
        .iter()
        .all(|a| a.balance_minor == 0));
    let ops = office.operators().await.unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(
        (ops[0].login.as_str(), ops[0].role),
        ("admin", Role::Administrator)
    );
    // The password hash is argon2id, never the password.
    let mut tx = store.read().await.unwrap();
    let (hash,): (String,) = tx
        .fetch_one(
            "SELECT password_hash FROM operators WHERE login = 'admin'",
            &[],
        )
        .await
        .unwrap();
    drop(tx);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(ADMIN_PASSWORD));

    let again = Office::init(store.clone(), support::init_config()).await;
    assert!(
        matches!(again, Err(OfficeError::AlreadyInitialized { .. })),
        "{again:?}"
    );

    let records = office.audit_records(0, 100).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].action.as_str(), records[0].outcome.as_str()),
        ("init", "ok")
    );
    assert_eq!(records[0].operator_login, "admin");
    assert_eq!(records[0].machine_number, "CONSOLE-1");
    let report = iccard_office::check::check(&store).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.audit.records, 1);
}

async fn migrations_are_idempotent_and_open_needs_init(store: Store) {
    let fresh = Office::open(store.clone()).await;
    assert!(
        matches!(fresh, Err(OfficeError::NotInitialized)),
        "{fresh:?}"
    );
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert!(Store::schema_version() >= 1);
    Office::init(store.clone(), support::init_config())
        .await
        .unwrap();
    let office = Office::open(store.clone()).await.unwrap();
    assert_eq!(office.settings().await.unwrap().issuer_number, "1234567890");
    // The write lock counts one generation per write transaction.
    let mut tx = store.read().await.unwrap();
    let (generation,): (i64,) = tx
        .fetch_one("SELECT generation FROM write_lock WHERE id = 1", &[])
        .await
        .unwrap();
    assert!(generation >= 1);
}

async fn login_refusals_are_uniform_and_audited(store: Store) {
    let w = world(store.clone()).await;
    let before = w.office.audit_records(0, 1000).await.unwrap().len();
    let wrong = w
        .office
        .login("admin", &Password::new("not-the-password"), "CONSOLE-1")
        .await;
    let unknown = w
        .office
        .login("nobody", &Password::new(ADMIN_PASSWORD), "CONSOLE-1")
        .await;
    let at_terminal = w
        .office
        .login("admin", &Password::new(ADMIN_PASSWORD), "T-1")
        .await;
    let no_machine = w
        .office
        .login("admin", &Password::new(ADMIN_PASSWORD), "NOPE")
        .await;
    for r in [&wrong, &unknown, &at_terminal, &no_machine] {
        let e = r.as_ref().unwrap_err();
        assert!(matches!(e, OfficeError::LoginRefused), "{e:?}");
        assert!(!e.to_string().contains(ADMIN_PASSWORD));
    }
    let records = w.office.audit_records(0, 1000).await.unwrap();
    let new = &records[before..];
    assert_eq!(new.len(), 4);
    assert!(new
        .iter()
        .all(|r| r.action == "login" && r.outcome == "denied"));
    assert_eq!(new[0].detail, "wrong password");
    assert_eq!(new[1].operator_login, "nobody");
    assert_eq!(new[2].machine_number, "T-1");
    assert!(!records
        .iter()
        .any(|r| r.detail.contains(ADMIN_PASSWORD) || r.detail.contains(CLERK_PASSWORD)));
}

async fn roles_decide_what_runs(store: Store) {
    // The table itself: every (role, action) pair, spelled out.
    use Action::*;
    let all = [
        Init,
        Login,
        CreateOperator,
        ChangeOperatorRole,
        DisableOperator,
        CreateBranch,
        RegisterMachine,
        RetireMachine,
        OpenCard,
        LoadCard,
        BankDeposit,
        SettlePurchase,
        Check,
        VerifyAudit,
        ReadLedger,
        OpenShift,
        CloseShift,
        ReturnCard,
        ManageMerchants,
        ImportBatches,
        UploadBatch,
        RunSettlement,
        ResolveCase,
    ];
    let allowed =
        |role: Role| -> Vec<Action> { all.iter().copied().filter(|a| role.permits(*a)).collect() };
    assert_eq!(
        allowed(Role::Administrator),
        vec![
            CreateOperator,
            ChangeOperatorRole,
            DisableOperator,
            CreateBranch,
            RegisterMachine,
            RetireMachine,
            SettlePurchase,
            Check,
            VerifyAudit,
            CloseShift,
            ManageMerchants,
            ImportBatches,
            RunSettlement,
            ResolveCase
        ]
    );
    assert_eq!(
        allowed(Role::IssuanceClerk),
        vec![OpenCard, OpenShift, CloseShift, ReturnCard]
    );
    assert_eq!(
        allowed(Role::RechargeClerk),
        vec![LoadCard, BankDeposit, OpenShift, CloseShift]
    );
    assert_eq!(allowed(Role::Auditor), vec![Check, VerifyAudit, ReadLedger]);

    let w = world(store.clone()).await;
    // A recharge clerk may not create operators; an administrator may not move money.
    let denied = w
        .office
        .create_operator(
            &w.recharge_clerk,
            NewOperator {
                login: "mallory".into(),
                display_name: "M".into(),
                role: Role::Administrator,
                password: Password::new("mallory-password"),
            },
        )
        .await;
    assert!(
        matches!(
            denied,
            Err(OfficeError::Denied {
                role: Role::RechargeClerk,
                action: CreateOperator,
                ..
            })
        ),
        "{denied:?}"
    );
    assert!(w
        .office
        .operators()
        .await
        .unwrap()
        .iter()
        .all(|o| o.login != "mallory"));
    let denied = w.office.open_card(&w.admin, open("0001", 0, 0)).await;
    assert!(
        matches!(denied, Err(OfficeError::Denied { .. })),
        "{denied:?}"
    );
    let denied = w
        .office
        .open_card(&w.recharge_clerk, open("0001", 0, 0))
        .await;
    assert!(
        matches!(denied, Err(OfficeError::Denied { .. })),
        "{denied:?}"
    );
    let denied = w.office.check(&w.issuer_clerk).await;
    assert!(
        matches!(denied, Err(OfficeError::Denied { .. })),
        "{denied:?}"
    );
    assert_eq!(count(&store, "cards").await, 0);

    let records = w.office.audit_records(0, 1000).await.unwrap();
    let denials: Vec<_> = records.iter().filter(|r| r.outcome == "denied").collect();
    assert_eq!(denials.len(), 4);
    assert_eq!(denials[0].operator_login, "cashier");
    assert_eq!(denials[0].machine_number, "RP-1");
    assert_eq!(denials[0].action, "create_operator");
    assert_eq!(denials[0].subject, "operator mallory");

    // The permitted ones run.
    w.office
        .open_card(&w.issuer_clerk, open("0001", 0, 0))
        .await
        .unwrap();
    assert!(w.office.check(&w.auditor).await.unwrap().is_clean());
    // An issuance clerk at the console (not a recharge point) is refused by machine kind.
    let at_console = w
        .office
        .login("issuer", &Password::new(CLERK_PASSWORD), "CONSOLE-1")
        .await
        .unwrap();
    let wrong = w.office.open_card(&at_console, open("0002", 100, 0)).await;
    assert!(
        matches!(wrong, Err(OfficeError::WrongMachine { .. })),
        "{wrong:?}"
    );
    assert_eq!(count(&store, "cards").await, 1);
}

async fn money_flow_posts_balanced_entries_and_history(store: Store) {
    let w = world(store.clone()).await;
    let card = w
        .office
        .open_card(&w.issuer_clerk, open("00A1", 2_000, 500))
        .await
        .unwrap();
    assert_eq!(
        (card.balance_minor, card.deposit_minor, card.online_serial),
        (0, 2_000, 0)
    );
    let r1 = w
        .office
        .load_card(&w.recharge_clerk, load("00A1", 10_000, 0, 0))
        .await
        .unwrap();
    assert_eq!((r1.card.balance_minor, r1.card.online_serial), (10_000, 1));
    let r2 = w
        .office
        .load_card(&w.recharge_clerk, load("00A1", 5_000, 10_000, 1))
        .await
        .unwrap();
    assert_eq!(
        (
            r2.card.balance_minor,
            r2.card.online_serial,
            r2.card.proven_balance_minor
        ),
        (15_000, 2, 15_000)
    );
    let after = w
        .office
        .settle_purchase(
            &w.admin,
            SettlePurchase {
                application_serial: "00A1".into(),
                terminal_machine_number: "T-1".into(),
                amount_minor: 3_000,
                offline_serial: 1,
                terminal_serial: 77,
            },
        )
        .await
        .unwrap();
    assert_eq!((after.balance_minor, after.offline_serial), (12_000, 2));
    w.office
        .bank_deposit(&w.recharge_clerk, 16_000)
        .await
        .unwrap();

    assert_eq!(
        balance(&w.office, "cash:RP-1").await,
        2_500 + 15_000 - 16_000
    );
    assert_eq!(balance(&w.office, ledger::BANK).await, 16_000);
    assert_eq!(balance(&w.office, ledger::FLOAT).await, 12_000);
    assert_eq!(balance(&w.office, ledger::DEPOSITS_HELD).await, 2_000);
    assert_eq!(balance(&w.office, ledger::CARD_FEE_INCOME).await, 500);
    assert_eq!(balance(&w.office, ledger::MERCHANT_PAYABLE).await, 3_000);

    let history = w.office.card_history("00A1").await.unwrap();
    let changes: Vec<(&str, i64, i64, i64)> = history
        .iter()
        .map(|h| {
            (
                h.change.as_str(),
                h.balance_minor,
                h.online_serial,
                h.offline_serial,
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            ("opened", 0, 0, 0),
            ("loaded", 10_000, 1, 0),
            ("loaded", 15_000, 2, 0),
            ("purchase_settled", 12_000, 2, 2)
        ]
    );
    // Every operation names its operator and machine.
    let mut tx = store.read().await.unwrap();
    let ops: Vec<(String, String, String)> = tx
        .fetch_all(
            "SELECT o.kind, p.login, m.machine_number FROM operations o \
             JOIN operators p ON p.id = o.operator_id JOIN machines m ON m.id = o.machine_id ORDER BY o.id",
            &[],
        )
        .await
        .unwrap();
    drop(tx);
    let ops: Vec<(&str, &str, &str)> = ops
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("open_card", "issuer", "RP-1"),
            ("load_card", "cashier", "RP-1"),
            ("load_card", "cashier", "RP-1"),
            ("settle_purchase", "admin", "CONSOLE-1"),
            ("bank_deposit", "cashier", "RP-1"),
        ]
    );
    assert_eq!(count(&store, "journal_entries").await, 5);
    let report = w.office.check(&w.auditor).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(
        (report.float_minor, report.shadow_total_minor),
        (12_000, Some(12_000))
    );
    let last = w
        .office
        .audit_records(0, 1000)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (last.action.as_str(), last.operator_login.as_str()),
        ("check", "auditor")
    );
    assert!(last.detail.starts_with("clean"), "{}", last.detail);
}

async fn failed_load_leaves_nothing_but_an_audit_record(store: Store) {
    let w = world(store.clone()).await;
    w.office
        .open_card(&w.issuer_clerk, open("00B2", 0, 0))
        .await
        .unwrap();
    w.office
        .load_card(&w.recharge_clerk, load("00B2", 1_000, 0, 0))
        .await
        .unwrap();
    let entries = count(&store, "journal_entries").await;
    let history = count(&store, "card_history").await;
    let operations = count(&store, "operations").await;
    // The card says serial 0 again: a replayed or lost load. Refused, nothing written.
    let e = w
        .office
        .load_card(&w.recharge_clerk, load("00B2", 1_000, 0, 0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            OfficeError::OnlineSerialMismatch {
                card: 0,
                expected: 1,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("open a case"), "{e}");
    assert_eq!(count(&store, "journal_entries").await, entries);
    assert_eq!(count(&store, "card_history").await, history);
    assert_eq!(count(&store, "operations").await, operations);
    assert_eq!(count(&store, "card_loads").await, 1);
    assert_eq!(balance(&w.office, ledger::FLOAT).await, 1_000);
    let card = w.office.card("00B2").await.unwrap();
    assert_eq!((card.balance_minor, card.online_serial), (1_000, 1));
    let last = w
        .office
        .audit_records(0, 1000)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (last.action.as_str(), last.outcome.as_str()),
        ("load_card", Outcome::Failed.as_str())
    );
    assert_eq!(last.subject, "card 00B2");
    let missing = w
        .office
        .load_card(&w.recharge_clerk, load("FFFF", 1_000, 0, 0))
        .await;
    assert!(
        matches!(missing, Err(OfficeError::NotFound { what: "card", .. })),
        "{missing:?}"
    );
    assert!(iccard_office::check::check(&store)
        .await
        .unwrap()
        .is_clean());
}

async fn ledger_refuses_unbalanced_and_bad_entries(store: Store) {
    let w = world(store.clone()).await;
    w.office
        .open_card(&w.issuer_clerk, open("00C3", 100, 0))
        .await
        .unwrap();
    let entries = count(&store, "journal_entries").await;
    let lines = count(&store, "journal_lines").await;
    let (op,): (i64,) = store
        .read()
        .await
        .unwrap()
        .fetch_one("SELECT MAX(id) FROM operations", &[])
        .await
        .unwrap();
    let cases: Vec<(Vec<LineSpec>, &str)> = vec![
        (
            vec![
                LineSpec::debit(ledger::BANK, 10),
                LineSpec::credit(ledger::FLOAT, 9),
            ],
            "unbalanced",
        ),
        (vec![LineSpec::debit(ledger::BANK, 10)], "one line"),
        (
            vec![
                LineSpec::debit(ledger::BANK, 0),
                LineSpec::credit(ledger::FLOAT, 0),
            ],
            "zero",
        ),
        (
            vec![
                LineSpec::debit(ledger::BANK, -5),
                LineSpec::credit(ledger::FLOAT, -5),
            ],
            "negative",
        ),
        (
            vec![
                LineSpec::debit(ledger::BANK, i64::MAX),
                LineSpec::debit(ledger::BANK, 1),
                LineSpec::credit(ledger::FLOAT, 1),
            ],
            "overflow",
        ),
        (
            vec![
                LineSpec::debit("nope", 10),
                LineSpec::credit(ledger::FLOAT, 10),
            ],
            "unknown account",
        ),
    ];
    for (lines_spec, why) in cases {
        let mut tx = store.write().await.unwrap();
        let r = ledger::post_entry(&mut tx, op, 1, why, &lines_spec).await;
        assert!(r.is_err(), "{why}: {r:?}");
        match why {
            "unbalanced" => assert!(matches!(
                r,
                Err(OfficeError::Unbalanced {
                    debit_minor: 10,
                    credit_minor: 9
                })
            )),
            "one line" => assert!(matches!(r, Err(OfficeError::Invalid { .. }))),
            "unknown account" => assert!(matches!(r, Err(OfficeError::NotFound { .. }))),
            _ => assert!(
                matches!(r, Err(OfficeError::AmountOutOfRange(_))),
                "{why}: {r:?}"
            ),
        }
        tx.commit().await.unwrap();
    }
    assert_eq!(count(&store, "journal_entries").await, entries);
    assert_eq!(count(&store, "journal_lines").await, lines);
    // A balanced entry with the same account on two lines posts and keeps balances right.
    let mut tx = store.write().await.unwrap();
    ledger::post_entry(
        &mut tx,
        op,
        1,
        "split",
        &[
            LineSpec::debit(ledger::BANK, 30),
            LineSpec::debit(ledger::BANK, 20),
            LineSpec::credit("cash:RP-1", 50),
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(balance(&w.office, ledger::BANK).await, 50);
    assert_eq!(balance(&w.office, "cash:RP-1").await, 50);
    assert!(iccard_office::check::check(&store)
        .await
        .unwrap()
        .is_clean());
}

async fn amounts_are_checked(store: Store) {
    let w = world(store.clone()).await;
    w.office
        .open_card(&w.issuer_clerk, open("00D4", 0, 0))
        .await
        .unwrap();
    w.office
        .load_card(&w.recharge_clerk, load("00D4", 1, 0, 0))
        .await
        .unwrap();
    let e = w
        .office
        .load_card(&w.recharge_clerk, load("00D4", i64::MAX, 1, 1))
        .await
        .unwrap_err();
    assert!(matches!(e, OfficeError::AmountOutOfRange(_)), "{e:?}");
    for bad in [0, -1, i64::MIN] {
        let e = w
            .office
            .load_card(&w.recharge_clerk, load("00D4", bad, 1, 1))
            .await
            .unwrap_err();
        assert!(
            matches!(e, OfficeError::AmountOutOfRange(_)),
            "{bad}: {e:?}"
        );
    }
    let e = w
        .office
        .open_card(&w.issuer_clerk, open("00D5", i64::MAX, 1))
        .await
        .unwrap_err();
    assert!(matches!(e, OfficeError::AmountOutOfRange(_)), "{e:?}");
    let e = w
        .office
        .bank_deposit(&w.recharge_clerk, 2)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            OfficeError::Invalid {
                what: "bank deposit",
                ..
            }
        ),
        "{e:?}"
    );
    let card = w.office.card("00D4").await.unwrap();
    assert_eq!((card.balance_minor, card.online_serial), (1, 1));
    assert_eq!(balance(&w.office, ledger::FLOAT).await, 1);
    assert!(iccard_office::check::check(&store)
        .await
        .unwrap()
        .is_clean());
}

async fn purchases_are_idempotent_and_bounded(store: Store) {
    let w = world(store.clone()).await;
    w.office
        .open_card(&w.issuer_clerk, open("00E5", 0, 0))
        .await
        .unwrap();
    w.office
        .load_card(&w.recharge_clerk, load("00E5", 1_000, 0, 0))
        .await
        .unwrap();
    let purchase = |serial: i64, amount: i64, terminal: &str| SettlePurchase {
        application_serial: "00E5".into(),
        terminal_machine_number: terminal.into(),
        amount_minor: amount,
        offline_serial: serial,
        terminal_serial: serial + 100,
    };
    w.office
        .settle_purchase(&w.admin, purchase(1, 400, "T-1"))
        .await
        .unwrap();
    let again = w
        .office
        .settle_purchase(&w.admin, purchase(1, 400, "T-1"))
        .await;
    assert!(
        matches!(
            again,
            Err(OfficeError::OfflineSerialSettled {
                offline_serial: 1,
                last: 1,
                ..
            })
        ),
        "{again:?}"
    );
    let short = w
        .office
        .settle_purchase(&w.admin, purchase(2, 601, "T-1"))
        .await;
    assert!(
        matches!(
            short,
            Err(OfficeError::ShadowBalanceShort {
                balance_minor: 600,
                ..
            })
        ),
        "{short:?}"
    );
    let not_terminal = w
        .office
        .settle_purchase(&w.admin, purchase(2, 100, "RP-1"))
        .await;
    assert!(
        matches!(not_terminal, Err(OfficeError::WrongMachine { .. })),
        "{not_terminal:?}"
    );
    w.office
        .settle_purchase(&w.admin, purchase(2, 600, "T-1"))
        .await
        .unwrap();
    assert_eq!(w.office.card("00E5").await.unwrap().balance_minor, 0);
    assert_eq!(count(&store, "card_purchases").await, 2);
    assert_eq!(balance(&w.office, ledger::FLOAT).await, 0);
    assert_eq!(balance(&w.office, ledger::MERCHANT_PAYABLE).await, 1_000);
    assert!(iccard_office::check::check(&store)
        .await
        .unwrap()
        .is_clean());
}

async fn operators_lifecycle(store: Store) {
    let w = world(store.clone()).await;
    let short = w
        .office
        .create_operator(
            &w.admin,
            NewOperator {
                login: "bob".into(),
                display_name: "Bob".into(),
                role: Role::Auditor,
                password: Password::new("short"),
            },
        )
        .await;
    assert!(
        matches!(
            short,
            Err(OfficeError::Invalid {
                what: "password",
                ..
            })
        ),
        "{short:?}"
    );
    let dup = w
        .office
        .create_operator(
            &w.admin,
            NewOperator {
                login: "cashier".into(),
                display_name: "C".into(),
                role: Role::Auditor,
                password: Password::new(CLERK_PASSWORD),
            },
        )
        .await;
    assert!(matches!(dup, Err(OfficeError::Duplicate { .. })), "{dup:?}");
    let bad = w
        .office
        .create_operator(
            &w.admin,
            NewOperator {
                login: "Bad Name".into(),
                display_name: "B".into(),
                role: Role::Auditor,
                password: Password::new(CLERK_PASSWORD),
            },
        )
        .await;
    assert!(
        matches!(bad, Err(OfficeError::Invalid { what: "login", .. })),
        "{bad:?}"
    );

    // A role change takes effect on the next operation of an existing session.
    w.office
        .change_operator_role(&w.admin, "cashier", Role::Auditor)
        .await
        .unwrap();
    w.office
        .open_card(&w.issuer_clerk, open("00F6", 0, 0))
        .await
        .unwrap();
    let e = w
        .office
        .load_card(&w.recharge_clerk, load("00F6", 100, 0, 0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            OfficeError::Denied {
                role: Role::Auditor,
                ..
            }
        ),
        "{e:?}"
    );
    w.office
        .change_operator_role(&w.admin, "cashier", Role::RechargeClerk)
        .await
        .unwrap();
    w.office
        .load_card(&w.recharge_clerk, load("00F6", 100, 0, 0))
        .await
        .unwrap();

    // Disabling ends sessions and logins.
    w.office
        .disable_operator(&w.admin, "cashier")
        .await
        .unwrap();
    let e = w
        .office
        .load_card(&w.recharge_clerk, load("00F6", 100, 100, 1))
        .await
        .unwrap_err();
    assert!(matches!(e, OfficeError::OperatorDisabled { .. }), "{e:?}");
    let login = w
        .office
        .login("cashier", &Password::new(CLERK_PASSWORD), "RP-1")
        .await;
    assert!(matches!(login, Err(OfficeError::LoginRefused)), "{login:?}");

    // The last administrator stays.
    let e = w
        .office
        .disable_operator(&w.admin, "admin")
        .await
        .unwrap_err();
    assert!(matches!(e, OfficeError::LastAdministrator { .. }), "{e:?}");
    let e = w
        .office
        .change_operator_role(&w.admin, "admin", Role::Auditor)
        .await
        .unwrap_err();
    assert!(matches!(e, OfficeError::LastAdministrator { .. }), "{e:?}");

    let history = w.office.operator_history("cashier").await.unwrap();
    let changes: Vec<(&str, Role, bool)> = history
        .iter()
        .map(|(_, c, r, a)| (c.as_str(), *r, *a))
        .collect();
    assert_eq!(
        changes,
        vec![
            ("created", Role::RechargeClerk, true),
            ("role_changed", Role::Auditor, true),
            ("role_changed", Role::RechargeClerk, true),
            ("disabled", Role::RechargeClerk, false),
        ]
    );
    assert_eq!(w.office.card("00F6").await.unwrap().online_serial, 1);
}

async fn machines_register_and_retire(store: Store) {
    let w = world(store.clone()).await;
    let terminal = |number: &str, psam: Option<&str>| NewMachine {
        machine_number: number.into(),
        kind: MachineKind::Terminal,
        branch_code: "HQ".into(),
        psam_serial: psam.map(str::to_owned),
    };
    let e = w
        .office
        .register_machine(&w.admin, terminal("T-2", None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            OfficeError::Invalid {
                what: "terminal",
                ..
            }
        ),
        "{e:?}"
    );
    let e = w
        .office
        .register_machine(&w.admin, terminal("T-2", Some("P-1")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            OfficeError::Duplicate {
                what: "PSAM serial",
                ..
            }
        ),
        "{e:?}"
    );
    let e = w
        .office
        .register_machine(&w.admin, terminal("T-1", Some("P-9")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            OfficeError::Duplicate {
                what: "machine",
                ..
            }
        ),
        "{e:?}"
    );
    let e = w
        .office
        .register_machine(
            &w.admin,
            NewMachine {
                branch_code: "NOWHERE".into(),
                ..terminal("T-3", Some("P-3"))
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, OfficeError::NotFound { what: "branch", .. }),
        "{e:?}"
    );
    w.office
        .create_branch(&w.admin, "NORTH", "North branch")
        .await
        .unwrap();
    w.office
        .register_machine(
            &w.admin,
            NewMachine {
                machine_number: "RP-2".into(),
                kind: MachineKind::RechargePoint,
                branch_code: "NORTH".into(),
                psam_serial: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(balance(&w.office, "cash:RP-2").await, 0);
    let numbers: Vec<(String, &str, String)> = w
        .office
        .machines()
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.machine_number, m.kind.as_str(), m.branch_code))
        .collect();
    assert_eq!(
        numbers,
        vec![
            ("CONSOLE-1".to_string(), "office_console", "HQ".to_string()),
            ("RP-1".to_string(), "recharge_point", "HQ".to_string()),
            ("RP-2".to_string(), "recharge_point", "NORTH".to_string()),
            ("T-1".to_string(), "terminal", "HQ".to_string()),
        ]
    );
    w.office.retire_machine(&w.admin, "RP-1").await.unwrap();
    let login = w
        .office
        .login("cashier", &Password::new(CLERK_PASSWORD), "RP-1")
        .await;
    assert!(matches!(login, Err(OfficeError::LoginRefused)), "{login:?}");
    w.office
        .open_card(&w.issuer_clerk, open("0A07", 0, 0))
        .await
        .unwrap_err();
    let mut tx = store.read().await.unwrap();
    let rows: Vec<(String, String)> = tx
        .fetch_all(
            "SELECT h.change, h.state FROM machine_history h JOIN machines m ON m.id = h.machine_id \
             WHERE m.machine_number = 'RP-1' ORDER BY h.id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            ("registered".into(), "active".into()),
            ("retired".into(), "retired".into())
        ]
    );
}

async fn check_detects_tampered_ledger(store: Store) {
    let w = world(store.clone()).await;
    w.office
        .open_card(&w.issuer_clerk, open("0B08", 100, 0))
        .await
        .unwrap();
    w.office
        .load_card(&w.recharge_clerk, load("0B08", 700, 0, 0))
        .await
        .unwrap();
    assert!(w.office.check(&w.auditor).await.unwrap().is_clean());

    // A card's shadow balance changed behind the ledger's back.
    raw(
        &store,
        "UPDATE cards SET balance_minor = 900 WHERE application_serial = '0B08'",
    )
    .await;
    let r = iccard_office::check::check(&store).await.unwrap();
    assert_eq!(
        r.problems,
        vec!["the float is 700 but the card shadow balances sum to 900".to_string()]
    );
    raw(
        &store,
        "UPDATE cards SET balance_minor = 700 WHERE application_serial = '0B08'",
    )
    .await;

    // A journal line changed: the entry no longer balances and the account disagrees.
    let (entry, line): (i64, i64) = store
        .read()
        .await
        .unwrap()
        .fetch_one(
            "SELECT l.entry_id, l.id FROM journal_lines l JOIN accounts a ON a.id = l.account_id \
             WHERE a.code = 'float' ORDER BY l.id LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    raw(
        &store,
        &format!("UPDATE journal_lines SET credit_minor = 701 WHERE id = {line}"),
    )
    .await;
    let r = iccard_office::check::check(&store).await.unwrap();
    assert!(!r.is_clean());
    assert!(
        r.problems.contains(&format!(
            "journal entry {entry} does not balance: debits 700, credits 701"
        )),
        "{:?}",
        r.problems
    );
    assert!(r.problems.iter().any(|p| p.starts_with("account float stores net debit -700 but its lines sum to -701")), "{:?}", r.problems);
    assert!(
        r.problems.iter().any(|p| p.contains("the float is 701")),
        "{:?}",
        r.problems
    );
    // Auditing a dirty check records the problems.
    let report = w.office.check(&w.auditor).await.unwrap();
    assert!(!report.is_clean());
    let last = w
        .office
        .audit_records(0, 1000)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(last.detail.contains("problem(s)"), "{}", last.detail);
}

async fn audit_chain_names_first_broken_link(store: Store) {
    let w = world(store.clone()).await;
    w.office
        .open_card(&w.issuer_clerk, open("0C09", 0, 0))
        .await
        .unwrap();
    let intact = w.office.verify_audit().await.unwrap();
    assert!(intact.is_intact(), "{intact:?}");
    let n = intact.records;
    assert!(n >= 8, "{n}");
    let records = w.office.audit_records(0, 1000).await.unwrap();
    assert_eq!(records.len() as i64, n);
    assert_eq!(records[0].prev_hash, iccard_office::audit::GENESIS_HASH);
    for pair in records.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
    assert_eq!(intact.head_hash, records.last().unwrap().hash);

    // Change record 3's outcome, and record 5's detail: 3 is named.
    raw(
        &store,
        "UPDATE audit_log SET outcome = 'denied' WHERE seq = 3",
    )
    .await;
    raw(&store, "UPDATE audit_log SET detail = 'x' WHERE seq = 5").await;
    let r = w.office.verify_audit().await.unwrap();
    let broken = r.broken.expect("broken");
    assert_eq!(broken.seq, 3);
    assert!(broken.reason.contains("changed"), "{}", broken.reason);
    let c = iccard_office::check::check(&store).await.unwrap();
    assert!(
        c.problems
            .iter()
            .any(|p| p.starts_with("the audit chain is broken at record 3")),
        "{:?}",
        c.problems
    );
    let original3 = &records[2];
    raw(
        &store,
        &format!(
            "UPDATE audit_log SET outcome = '{}' WHERE seq = 3",
            original3.outcome
        ),
    )
    .await;
    assert_eq!(
        w.office.verify_audit().await.unwrap().broken.unwrap().seq,
        5
    );
    raw(
        &store,
        &format!(
            "UPDATE audit_log SET detail = '{}' WHERE seq = 5",
            records[4].detail.replace('\'', "''")
        ),
    )
    .await;
    assert!(w.office.verify_audit().await.unwrap().is_intact());

    // A record rehashed consistently still breaks its successor's link.
    raw(&store, "UPDATE audit_log SET hash = 'ab' WHERE seq = 2").await;
    let b = w.office.verify_audit().await.unwrap().broken.unwrap();
    assert_eq!(b.seq, 2);
    raw(
        &store,
        &format!(
            "UPDATE audit_log SET hash = '{}' WHERE seq = 2",
            records[1].hash
        ),
    )
    .await;

    // A record removed from the middle, then the tail.
    raw(&store, "DELETE FROM audit_log WHERE seq = 4").await;
    let b = w.office.verify_audit().await.unwrap().broken.unwrap();
    assert_eq!(b.seq, 4);
    assert!(b.reason.contains("missing"), "{}", b.reason);
    raw(&store, "DELETE FROM audit_log WHERE seq >= 4").await;
    let b = w.office.verify_audit().await.unwrap().broken.unwrap();
    assert_eq!(b.seq, 4);
    assert!(b.reason.contains("removed"), "{}", b.reason);
}
