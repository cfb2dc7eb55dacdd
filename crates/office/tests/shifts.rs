//! Cashier shifts: opening and closing with the cash counted, the expected cash read from the
//! ledger (a real recharge on a card OS in memory, a bank deposit, another clerk's issuance at
//! the same drawer), over and short posted and `check` clean after them, the refusals (a
//! second shift, another's shift, no role, the database's own unique indexes) and the
//! `shifts_required` rule. Every scenario on SQLite and on PostgreSQL.

use iccard_crypto::PurseAlg;
use iccard_issuer::keys::DevIssuerKeys;
use iccard_office::keystore::DevKeystore;
use iccard_office::machines::{MachineKind, NewMachine};
use iccard_office::recharge::{issuer_id_of, RechargeRequest};
use iccard_office::shifts::{CloseShift, ShiftReport, ShiftState, CASH_OVER_SHORT, REFUSAL};
use iccard_office::{Action, Mode, OfficeError, OpenCard, Password, Role, Session, Store};
use iccard_terminal::{PurseCard, TransactionTime};
use iccard_testkit::issued_card;

use crate::support::{init_config, world, World, CLERK_PASSWORD};

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::support::TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
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
                    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
                        eprintln!("ICCARD_TEST_POSTGRES_URL not set: PostgreSQL shift tests skipped");
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

on_both!(
    a_shift_opens_and_closes_even,
    over_and_short_are_posted_and_the_books_stay_clean,
    a_second_open_shift_is_refused_by_the_office_and_the_database,
    only_the_cashier_or_an_administrator_closes_a_shift,
    roles_without_shifts_are_refused,
    expected_cash_follows_a_real_recharge_and_the_ledger,
    the_shifts_required_setting_decides_whether_cash_needs_a_shift,
);

const CARD: &str = "31000000000000000042";

async fn clean(w: &World) {
    let r = w.office.check(&w.auditor).await.unwrap();
    assert!(r.is_clean(), "check: {:?}", r.problems);
}

async fn balance(w: &World, code: &str) -> Option<i64> {
    w.office
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.code == code)
        .map(|a| a.balance_minor)
}

async fn count(store: &Store, sql: &str) -> i64 {
    let mut tx = store.read().await.unwrap();
    let (n,): (i64,) = tx.fetch_one(sql, &[]).await.unwrap();
    tx.rollback().await.unwrap();
    n
}

/// The last audit record's (action, outcome).
async fn last_audit(w: &World) -> (String, String) {
    let all = w.office.audit_records(0, 100_000).await.unwrap();
    let r = all.last().unwrap();
    (r.action.clone(), r.outcome.clone())
}

fn is_shift_refusal(e: &OfficeError) -> bool {
    matches!(e, OfficeError::Invalid { what, .. } if *what == REFUSAL)
}

async fn add_recharge_point(w: &World, number: &str) {
    w.office
        .register_machine(
            &w.admin,
            NewMachine {
                machine_number: number.into(),
                kind: MachineKind::RechargePoint,
                branch_code: "HQ".into(),
                psam_serial: None,
            },
        )
        .await
        .unwrap();
}

async fn login(w: &World, login: &str, machine: &str) -> Session {
    w.office
        .login(login, &Password::new(CLERK_PASSWORD), machine)
        .await
        .unwrap()
}

fn counted(minor: i64) -> CloseShift {
    CloseShift {
        counted_cash_minor: minor,
        reason: None,
    }
}

async fn a_shift_opens_and_closes_even(store: Store) {
    let w = world(store.clone()).await;
    let entries = "SELECT COUNT(*) FROM journal_entries";
    let entries_before = count(&store, entries).await;
    assert_eq!(w.office.current_shift_of("cashier").await.unwrap(), None);
    let sh = w
        .office
        .open_shift(&w.recharge_clerk, 10_000)
        .await
        .unwrap();
    assert_eq!(
        (sh.operator.as_str(), sh.machine_number.as_str(), sh.state),
        ("cashier", "RP-1", ShiftState::Open)
    );
    assert_eq!(
        (sh.opening_cash_minor, sh.book_cash_at_open_minor),
        (10_000, 0)
    );
    assert_eq!(sh.closed_at_ms, None);
    assert_eq!(
        w.office.current_shift_of("cashier").await.unwrap().as_ref(),
        Some(&sh)
    );
    assert_eq!(
        w.office.current_shift_at("RP-1").await.unwrap().as_ref(),
        Some(&sh)
    );
    assert_eq!(w.office.current_shift_of("issuer").await.unwrap(), None);
    assert_eq!(last_audit(&w).await, ("open_shift".into(), "ok".into()));
    // Opening posts nothing: the count is the drawer's own cash.
    assert_eq!(count(&store, entries).await, entries_before);
    let open_report = w.office.shift_report(sh.id).await.unwrap();
    assert_eq!(open_report.expected_cash_minor, 10_000);
    assert!(open_report.movements.is_empty());

    let r = w
        .office
        .close_shift(&w.recharge_clerk, sh.id, counted(10_000))
        .await
        .unwrap();
    assert_eq!(r.shift.state, ShiftState::Closed);
    assert_eq!(
        (
            r.shift.expected_cash_minor,
            r.shift.counted_cash_minor,
            r.shift.difference_minor,
            r.shift.difference_entry_id
        ),
        (Some(10_000), Some(10_000), Some(0), None)
    );
    assert_eq!(r.shift.closed_by.as_deref(), Some("cashier"));
    assert!(r.shift.closed_at_ms.unwrap() > r.shift.opened_at_ms);
    assert_eq!(last_audit(&w).await, ("close_shift".into(), "ok".into()));
    // An even count posts nothing either.
    assert_eq!(count(&store, entries).await, entries_before);
    assert_eq!(balance(&w, CASH_OVER_SHORT).await, Some(0));
    assert_eq!(w.office.current_shift_of("cashier").await.unwrap(), None);
    assert_eq!(w.office.current_shift_at("RP-1").await.unwrap(), None);
    // Closed once, never again.
    let err = w
        .office
        .close_shift(&w.recharge_clerk, sh.id, counted(10_000))
        .await
        .unwrap_err();
    assert!(is_shift_refusal(&err), "{err}");
    assert_eq!(
        last_audit(&w).await,
        ("close_shift".into(), "failed".into())
    );
    // The day's shifts (the test clock runs on 2023-11-14, UTC).
    let day: Vec<i64> = w
        .office
        .shifts_of_day("20231114")
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(day, [sh.id]);
    assert!(w.office.shifts_of_day("20231115").await.unwrap().is_empty());
    assert!(w.office.shifts_of_day("2023-11-14").await.is_err());
    assert!(matches!(
        w.office.shift(sh.id + 100).await,
        Err(OfficeError::NotFound { .. })
    ));
    clean(&w).await;
}

async fn over_and_short_are_posted_and_the_books_stay_clean(store: Store) {
    let w = world(store.clone()).await;
    let first = w
        .office
        .open_shift(&w.recharge_clerk, 10_000)
        .await
        .unwrap();
    let over = w
        .office
        .close_shift(&w.recharge_clerk, first.id, counted(10_250))
        .await
        .unwrap();
    assert_eq!(over.shift.difference_minor, Some(250));
    let entry = over.shift.difference_entry_id.expect("an over is posted");
    // The entry: Dr cash 250 / Cr over-short 250.
    let mut tx = store.read().await.unwrap();
    let lines: Vec<(String, i64, i64)> = tx
        .fetch_all(
            "SELECT a.code, l.debit_minor, l.credit_minor FROM journal_lines l \
             JOIN accounts a ON a.id = l.account_id WHERE l.entry_id = $1 ORDER BY a.code",
            &[iccard_office::store::Arg::I64(entry)],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        lines,
        [
            ("cash:RP-1".to_string(), 250, 0),
            (CASH_OVER_SHORT.to_string(), 0, 250)
        ]
    );
    assert_eq!(balance(&w, "cash:RP-1").await, Some(250));
    assert_eq!(balance(&w, CASH_OVER_SHORT).await, Some(250));
    clean(&w).await;

    // The next shift finds the books at 250 and comes up 400 short.
    let second = w
        .office
        .open_shift(&w.recharge_clerk, 10_250)
        .await
        .unwrap();
    assert_eq!(second.book_cash_at_open_minor, 250);
    let short = w
        .office
        .close_shift(&w.recharge_clerk, second.id, counted(9_850))
        .await
        .unwrap();
    assert_eq!(
        (short.expected_cash_minor, short.shift.difference_minor),
        (10_250, Some(-400))
    );
    assert!(short.shift.difference_entry_id.is_some());
    assert_eq!(balance(&w, "cash:RP-1").await, Some(-150));
    assert_eq!(balance(&w, CASH_OVER_SHORT).await, Some(-150));
    // Over/short postings are not cash movements of the next shift.
    let third = w.office.open_shift(&w.recharge_clerk, 9_850).await.unwrap();
    let r = w.office.shift_report(third.id).await.unwrap();
    assert!(r.movements.is_empty(), "{:?}", r.movements);
    assert_eq!((r.expected_cash_minor, r.others_net_minor), (9_850, 0));
    // Their reports still add up after the close.
    let again = w.office.shift_report(second.id).await.unwrap();
    assert_eq!(again, short);
    clean(&w).await;
}

async fn a_second_open_shift_is_refused_by_the_office_and_the_database(store: Store) {
    let w = world(store.clone()).await;
    add_recharge_point(&w, "RP-2").await;
    let sh = w.office.open_shift(&w.recharge_clerk, 5_000).await.unwrap();
    // The same operator at the same machine, another operator at that machine, the same
    // operator at another machine: all refused.
    let err = w
        .office
        .open_shift(&w.recharge_clerk, 5_000)
        .await
        .unwrap_err();
    assert!(is_shift_refusal(&err), "{err}");
    assert_eq!(last_audit(&w).await, ("open_shift".into(), "failed".into()));
    let err = w.office.open_shift(&w.issuer_clerk, 0).await.unwrap_err();
    assert!(
        is_shift_refusal(&err) && err.to_string().contains("RP-1"),
        "{err}"
    );
    let cashier_rp2 = login(&w, "cashier", "RP-2").await;
    let err = w.office.open_shift(&cashier_rp2, 0).await.unwrap_err();
    assert!(
        is_shift_refusal(&err) && err.to_string().contains("cashier"),
        "{err}"
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM shifts").await, 1);
    // Another operator at another machine is fine.
    let issuer_rp2 = login(&w, "issuer", "RP-2").await;
    let other = w.office.open_shift(&issuer_rp2, 0).await.unwrap();
    assert_eq!(other.machine_number, "RP-2");

    // The database refuses a second open shift at a machine or of an operator by itself.
    let ids: Vec<(i64, i64)> = {
        let mut tx = store.read().await.unwrap();
        let v = tx
            .fetch_all(
                "SELECT operator_id, machine_id FROM shifts ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        v
    };
    let (cashier_id, rp1_id) = ids[0];
    for sql in [
        format!(
            "UPDATE shifts SET machine_id = {rp1_id} WHERE id = {}",
            other.id
        ),
        format!(
            "UPDATE shifts SET operator_id = {cashier_id} WHERE id = {}",
            other.id
        ),
    ] {
        let mut tx = store.write().await.unwrap();
        let res = tx.execute(&sql, &[]).await;
        assert!(res.is_err(), "the database let {sql:?} through");
        tx.rollback().await.unwrap();
    }
    // Once closed, the machine and the operator are free again.
    w.office
        .close_shift(&w.recharge_clerk, sh.id, counted(5_000))
        .await
        .unwrap();
    w.office
        .close_shift(&issuer_rp2, other.id, counted(0))
        .await
        .unwrap();
    let next = w.office.open_shift(&cashier_rp2, 100).await.unwrap();
    assert_eq!(next.machine_number, "RP-2");
    w.office.open_shift(&w.issuer_clerk, 0).await.unwrap();
    clean(&w).await;
}

async fn only_the_cashier_or_an_administrator_closes_a_shift(store: Store) {
    let w = world(store.clone()).await;
    add_recharge_point(&w, "RP-2").await;
    let sh = w.office.open_shift(&w.recharge_clerk, 2_000).await.unwrap();
    // Another clerk, at the same machine: denied, and the denial is audited as such.
    let err = w
        .office
        .close_shift(&w.issuer_clerk, sh.id, counted(2_000))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OfficeError::Denied {
                role: Role::IssuanceClerk,
                action: Action::CloseShift,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        last_audit(&w).await,
        ("close_shift".into(), "denied".into())
    );
    assert_eq!(w.office.shift(sh.id).await.unwrap().state, ShiftState::Open);
    // The cashier closes only at the shift's machine.
    let cashier_rp2 = login(&w, "cashier", "RP-2").await;
    let err = w
        .office
        .close_shift(&cashier_rp2, sh.id, counted(2_000))
        .await
        .unwrap_err();
    assert!(is_shift_refusal(&err), "{err}");
    // An administrator needs a reason.
    let err = w
        .office
        .close_shift(&w.admin, sh.id, counted(1_900))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OfficeError::Invalid { what: "reason", .. }),
        "{err}"
    );
    assert_eq!(w.office.shift(sh.id).await.unwrap().state, ShiftState::Open);
    let r = w
        .office
        .close_shift(
            &w.admin,
            sh.id,
            CloseShift {
                counted_cash_minor: 1_900,
                reason: Some("  cashier went home ill  ".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.shift.closed_by.as_deref(), Some("admin"));
    assert_eq!(
        r.shift.close_reason.as_deref(),
        Some("cashier went home ill")
    );
    assert_eq!(r.shift.difference_minor, Some(-100));
    let records = w.office.audit_records(0, 100_000).await.unwrap();
    let last = records.last().unwrap();
    assert_eq!(
        (
            last.action.as_str(),
            last.outcome.as_str(),
            last.operator_login.as_str()
        ),
        ("close_shift", "ok", "admin")
    );
    assert!(last.detail.contains("supervisor close") && last.detail.contains("went home ill"));
    assert_eq!(balance(&w, CASH_OVER_SHORT).await, Some(-100));
    clean(&w).await;
}

async fn roles_without_shifts_are_refused(store: Store) {
    let w = world(store.clone()).await;
    for s in [&w.auditor, &w.admin] {
        let err = w.office.open_shift(s, 1_000).await.unwrap_err();
        assert!(
            matches!(
                err,
                OfficeError::Denied {
                    action: Action::OpenShift,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(last_audit(&w).await, ("open_shift".into(), "denied".into()));
    }
    // An administrator logged in at the recharge point moves no money either.
    let admin_rp = w
        .office
        .login(
            "admin",
            &Password::new(crate::support::ADMIN_PASSWORD),
            "RP-1",
        )
        .await
        .unwrap();
    assert!(matches!(
        w.office.open_shift(&admin_rp, 0).await,
        Err(OfficeError::Denied { .. })
    ));
    // A clerk at the office console: a shift is kept at a recharge point.
    let issuer_console = login(&w, "issuer", "CONSOLE-1").await;
    let err = w.office.open_shift(&issuer_console, 0).await.unwrap_err();
    assert!(matches!(err, OfficeError::WrongMachine { .. }), "{err}");
    // A negative count is not an amount.
    let err = w
        .office
        .open_shift(&w.recharge_clerk, -1)
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::AmountOutOfRange(_)), "{err}");
    assert_eq!(count(&store, "SELECT COUNT(*) FROM shifts").await, 0);
    // An auditor closes nothing.
    let sh = w.office.open_shift(&w.recharge_clerk, 0).await.unwrap();
    let err = w
        .office
        .close_shift(&w.auditor, sh.id, counted(0))
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::Denied { .. }), "{err}");
    let err = w
        .office
        .close_shift(&w.recharge_clerk, sh.id, counted(-5))
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::AmountOutOfRange(_)), "{err}");
    assert_eq!(w.office.shift(sh.id).await.unwrap().state, ShiftState::Open);
    clean(&w).await;
}

fn by_kind(r: &ShiftReport) -> Vec<(&str, i64, i64, i64)> {
    r.movements
        .iter()
        .map(|m| (m.kind.as_str(), m.count, m.in_minor, m.out_minor))
        .collect()
}

async fn expected_cash_follows_a_real_recharge_and_the_ledger(store: Store) {
    let w = world(store.clone()).await;
    // Before the shift: the card's account opened at RP-1 by the issuance clerk (1,200 cash).
    w.office
        .open_card(
            &w.issuer_clerk,
            OpenCard {
                application_serial: CARD.into(),
                deposit_minor: 1_000,
                fee_minor: 200,
            },
        )
        .await
        .unwrap();
    let sh = w.office.open_shift(&w.recharge_clerk, 1_200).await.unwrap();
    assert_eq!(sh.book_cash_at_open_minor, 1_200);
    // A real recharge on a card OS in memory, through the keystore.
    let issuer = issuer_id_of(&init_config().issuer_number).unwrap();
    let card = issued_card(CARD, PurseAlg::TripleDes, 7, issuer, &DevIssuerKeys);
    let mut card = PurseCard::open(card).unwrap();
    let keys = DevKeystore::new(Mode::Development).unwrap();
    for (amount, time) in [(5_000, "101500"), (2_500, "101600")] {
        w.office
            .recharge(
                &w.recharge_clerk,
                &keys,
                &mut card,
                RechargeRequest {
                    amount_minor: amount,
                    when: TransactionTime::parse("20260314", time).unwrap(),
                },
            )
            .await
            .unwrap();
    }
    // Cash out to the bank, and another clerk's issuance at the same drawer.
    w.office
        .bank_deposit(&w.recharge_clerk, 3_000)
        .await
        .unwrap();
    w.office
        .open_card(
            &w.issuer_clerk,
            OpenCard {
                application_serial: "31000000000000000043".into(),
                deposit_minor: 500,
                fee_minor: 200,
            },
        )
        .await
        .unwrap();
    let r = w.office.shift_report(sh.id).await.unwrap();
    assert_eq!(
        by_kind(&r),
        [("bank_deposit", 1, 0, 3_000), ("load_card", 2, 7_500, 0)]
    );
    assert_eq!((r.cash_in_minor, r.cash_out_minor), (7_500, 3_000));
    assert_eq!(r.expected_cash_minor, 1_200 + 7_500 - 3_000);
    assert_eq!(
        r.others_net_minor, 700,
        "the issuance clerk's cash is not the cashier's"
    );
    assert_eq!(r.shift.counted_cash_minor, None);

    let closed = w
        .office
        .close_shift(&w.recharge_clerk, sh.id, counted(5_650))
        .await
        .unwrap();
    assert_eq!(
        (
            closed.shift.expected_cash_minor,
            closed.shift.difference_minor
        ),
        (Some(5_700), Some(-50))
    );
    assert_eq!(by_kind(&closed), by_kind(&r));
    // The books: 1,200 + 7,500 - 3,000 + 700 - 50.
    assert_eq!(balance(&w, "cash:RP-1").await, Some(6_350));
    assert_eq!(balance(&w, "float").await, Some(7_500));
    assert_eq!(balance(&w, CASH_OVER_SHORT).await, Some(-50));
    // A recharge after the close belongs to no shift.
    w.office
        .recharge(
            &w.recharge_clerk,
            &keys,
            &mut card,
            RechargeRequest {
                amount_minor: 100,
                when: TransactionTime::parse("20260314", "101700").unwrap(),
            },
        )
        .await
        .unwrap();
    assert_eq!(w.office.shift_report(sh.id).await.unwrap(), closed);
    clean(&w).await;
}

async fn the_shifts_required_setting_decides_whether_cash_needs_a_shift(store: Store) {
    let w = world(store.clone()).await;
    assert!(!w.office.shifts_required().await.unwrap());
    assert_eq!(
        w.office.shift_for_cash(&w.recharge_clerk).await.unwrap(),
        None
    );
    // Only an administrator changes it.
    let err = w
        .office
        .set_shifts_required(&w.recharge_clerk, true)
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::Denied { .. }), "{err}");
    assert!(!w.office.shifts_required().await.unwrap());
    w.office.set_shifts_required(&w.admin, true).await.unwrap();
    assert!(w.office.shifts_required().await.unwrap());
    assert_eq!(
        last_audit(&w).await,
        ("change_settings".into(), "ok".into())
    );
    let err = w
        .office
        .shift_for_cash(&w.recharge_clerk)
        .await
        .unwrap_err();
    assert!(
        is_shift_refusal(&err) && err.to_string().contains("cashier"),
        "{err}"
    );
    let sh = w.office.open_shift(&w.recharge_clerk, 0).await.unwrap();
    assert_eq!(
        w.office.shift_for_cash(&w.recharge_clerk).await.unwrap(),
        Some(sh.id)
    );
    // The cashier's shift does not cover another clerk at the same drawer.
    assert!(w.office.shift_for_cash(&w.issuer_clerk).await.is_err());
    w.office
        .close_shift(&w.recharge_clerk, sh.id, counted(0))
        .await
        .unwrap();
    assert!(w.office.shift_for_cash(&w.recharge_clerk).await.is_err());
    w.office.set_shifts_required(&w.admin, false).await.unwrap();
    assert_eq!(
        w.office.shift_for_cash(&w.recharge_clerk).await.unwrap(),
        None
    );
    clean(&w).await;
}
