//! Recharge on real cards (the card OS in memory, personalized by the real script): the load
//! APDUs, MAC1/MAC2/TAC through the keystore, the posting with the card's own record, the
//! refusals that change nothing, and a lost CREDIT FOR LOAD answer settled exactly once from
//! the card's own serial. Every scenario on SQLite and on PostgreSQL.

use iccard_crypto::PurseAlg;
use iccard_issuer::keys::DevIssuerKeys;
use iccard_link::CardChannel;
use iccard_office::keystore::{DevKeystore, KdfParams, Keystore, LocalKeystore, Passphrase};
use iccard_office::recharge::{issuer_id_of, terminal_id_of, PendingResolution, RechargeRequest};
use iccard_office::{Mode, OfficeError, OpenCard, Store};
use iccard_terminal::{read_balance, PurseCard, RecoveryNote, TransactionTime};
use iccard_testkit::{issued_card, user_card, Fault, Flaky, MemCard};

use crate::support::{init_config, world, World};

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
                        eprintln!("ICCARD_TEST_POSTGRES_URL not set: PostgreSQL recharge tests skipped");
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
    recharges_post_the_cards_own_record,
    refusals_change_nothing,
    a_lost_answer_is_settled_from_the_cards_serial,
    a_lost_command_is_cancelled_and_the_card_loads_again,
    the_loss_list_blocks_recharges_and_versions_every_change,
    a_lost_card_is_replaced_after_the_late_record_window,
    the_daily_report_sums_each_operator_at_each_machine,
);

const CARD: &str = "31000000000000000042";

fn when(time: &str) -> TransactionTime {
    TransactionTime::parse("20260314", time).unwrap()
}

fn our_card(seed: u64) -> MemCard {
    let issuer = issuer_id_of(&init_config().issuer_number).unwrap();
    issued_card(CARD, PurseAlg::TripleDes, seed, issuer, &DevIssuerKeys)
}

async fn with_account(w: &World) {
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
        .expect("open the card's account");
}

fn dev_keys() -> DevKeystore {
    DevKeystore::new(Mode::Development).unwrap()
}

async fn clean(w: &World) {
    let r = w.office.check(&w.auditor).await.unwrap();
    assert!(r.is_clean(), "check: {:?}", r.problems);
}

async fn count(store: &Store, sql: &str) -> i64 {
    let mut tx = store.read().await.unwrap();
    let (n,): (i64,) = tx.fetch_one(sql, &[]).await.unwrap();
    tx.rollback().await.unwrap();
    n
}

async fn recharges_post_the_cards_own_record(store: Store) {
    let w = world(store.clone()).await;
    with_account(&w).await;
    let keys = dev_keys();
    let mut card = PurseCard::open(our_card(1)).unwrap();
    let r = w
        .office
        .recharge(
            &w.recharge_clerk,
            &keys,
            &mut card,
            RechargeRequest {
                amount_minor: 5_000,
                when: when("101500"),
            },
        )
        .await
        .expect("recharge");
    assert!(r.earlier.is_none());
    let l = &r.load;
    assert_eq!(l.card_number, CARD);
    assert_eq!((l.balance_before_minor, l.balance_after_minor), (0, 5_000));
    assert_eq!(l.online_serial, 0);
    assert_eq!((l.date.as_str(), l.time.as_str()), ("20260314", "101500"));
    assert_eq!(
        (l.operator.as_str(), l.machine_number.as_str()),
        ("cashier", "RP-1")
    );
    assert_eq!(l.tac_verified, Some(true), "the keystore verified the TAC");
    let rp = w
        .office
        .machines()
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.machine_number == "RP-1")
        .unwrap();
    assert_eq!(
        l.terminal_id,
        iccard_apdu::hex::encode(&terminal_id_of(rp.id).unwrap())
    );
    assert_eq!(l.card.balance_minor, 5_000);
    assert_eq!(l.card.online_serial, 1);
    let second = w
        .office
        .recharge(
            &w.recharge_clerk,
            &keys,
            &mut card,
            RechargeRequest {
                amount_minor: 2_500,
                when: when("101600"),
            },
        )
        .await
        .unwrap();
    assert_eq!(second.load.online_serial, 1);
    assert_eq!(second.load.balance_after_minor, 7_500);
    assert_eq!(read_balance(card.into_inner()).unwrap().balance_fen, 7_500);
    // The card's record is stored beside the posting.
    let mut tx = store.read().await.unwrap();
    let rows: Vec<(i64, String, String, String, i64, i64)> = tx
        .fetch_all(
            "SELECT online_serial, terminal_id, tx_date, tac, tac_verified, balance_after_minor \
             FROM card_loads ORDER BY online_serial",
            &[],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].2, "20260314");
    assert_eq!(rows[0].3.len(), 8, "a 4-byte TAC in hex");
    assert_eq!((rows[0].4, rows[1].5), (1, 7_500));
    assert_eq!(count(&store, "SELECT COUNT(*) FROM pending_loads").await, 0);
    let float = w
        .office
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.code == "float")
        .unwrap();
    assert_eq!(float.balance_minor, 7_500);
    clean(&w).await;
}

async fn refusals_change_nothing(store: Store) {
    let w = world(store.clone()).await;
    with_account(&w).await;
    let keys = dev_keys();
    let loads = "SELECT COUNT(*) FROM card_loads";
    let go = |amount: i64| RechargeRequest {
        amount_minor: amount,
        when: when("120000"),
    };
    // Another issuer's card (the default issuer id of the development profile).
    let mut foreign = PurseCard::open(user_card(CARD, PurseAlg::TripleDes, 2)).unwrap();
    let err = w
        .office
        .recharge(&w.recharge_clerk, &keys, &mut foreign, go(100))
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::ForeignCard { .. }), "{err}");

    let mut card = PurseCard::open(our_card(3)).unwrap();
    // The wrong role.
    let err = w
        .office
        .recharge(&w.issuer_clerk, &keys, &mut card, go(100))
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::Denied { .. }), "{err}");
    // Amounts: zero, negative, beyond the card's 4 bytes.
    for bad in [0, -5, i64::from(u32::MAX) + 1] {
        let err = w
            .office
            .recharge(&w.recharge_clerk, &keys, &mut card, go(bad))
            .await
            .unwrap_err();
        assert!(
            matches!(err, OfficeError::AmountOutOfRange(_)),
            "{bad}: {err}"
        );
    }
    // A keystore whose MLK is not the card's: MAC1 fails, the card is not credited.
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let mut other = LocalKeystore::create(
        &dir.path().join("k"),
        &pass,
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
    for name in ["MLK", "MTK"] {
        other.generate(name, PurseAlg::TripleDes, "admin").unwrap();
        other.activate(name, 1, "admin").unwrap();
    }
    let err = w
        .office
        .recharge(&w.recharge_clerk, &other, &mut card, go(100))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("MAC1"), "{err}");
    // An unknown card (no account).
    let issuer = issuer_id_of(&init_config().issuer_number).unwrap();
    let mut stranger = PurseCard::open(issued_card(
        "31000000000000000099",
        PurseAlg::TripleDes,
        4,
        issuer,
        &DevIssuerKeys,
    ))
    .unwrap();
    assert!(w
        .office
        .recharge(&w.recharge_clerk, &keys, &mut stranger, go(100))
        .await
        .is_err());
    assert_eq!(count(&store, loads).await, 0);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM pending_loads").await, 0);
    assert_eq!(read_balance(card.into_inner()).unwrap().balance_fen, 0);
    // Each refusal left an audit record.
    let failed = count(
        &store,
        "SELECT COUNT(*) FROM audit_log WHERE action = 'load_card' AND outcome <> 'ok'",
    )
    .await;
    assert!(failed >= 6, "{failed} refusals audited");
    clean(&w).await;
}

async fn lost_credit(
    w: &World,
    keys: &dyn Keystore,
    card: MemCard,
    fault: Fault,
) -> (PurseCard<Flaky<MemCard>>, OfficeError) {
    let mut purse = PurseCard::open(Flaky::new(card, 0x52, fault)).unwrap();
    let err = w
        .office
        .recharge(
            &w.recharge_clerk,
            keys,
            &mut purse,
            RechargeRequest {
                amount_minor: 3_000,
                when: when("140000"),
            },
        )
        .await
        .unwrap_err();
    assert!(purse.channel().fired);
    (purse, err)
}

async fn a_lost_answer_is_settled_from_the_cards_serial(store: Store) {
    let w = world(store.clone()).await;
    with_account(&w).await;
    let keys = dev_keys();
    let (mut purse, err) = lost_credit(&w, &keys, our_card(5), Fault::LoseAnswer).await;
    assert!(matches!(err, OfficeError::LoadAnswerLost { .. }), "{err}");
    // The card was credited; the office holds the load as pending, not yet posted.
    let pending = w.office.pending_loads().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].amount_minor, pending[0].online_serial),
        (3_000, 0)
    );
    assert_eq!(w.office.card(CARD).await.unwrap().balance_minor, 0);
    clean(&w).await;
    // The card comes back: its serial says the load happened; posted once, with the TAC the
    // card still holds.
    purse.channel().reset().unwrap();
    let mut purse = PurseCard::open(purse.into_inner()).unwrap();
    let settled = w
        .office
        .settle_pending_load(&w.recharge_clerk, &keys, &mut purse)
        .await
        .unwrap();
    let Some(PendingResolution::Posted { load }) = settled else {
        panic!("expected a posted load, got {settled:?}");
    };
    assert_eq!(load.recovery, Some(RecoveryNote::CompletedEarlier));
    assert_eq!(load.tac_verified, Some(true));
    assert_eq!(load.balance_after_minor, 3_000);
    assert!(w.office.pending_loads().await.unwrap().is_empty());
    // Settling again finds nothing; the next recharge goes on from serial 1.
    assert!(w
        .office
        .settle_pending_load(&w.recharge_clerk, &keys, &mut purse)
        .await
        .unwrap()
        .is_none());
    let next = w
        .office
        .recharge(
            &w.recharge_clerk,
            &keys,
            &mut purse,
            RechargeRequest {
                amount_minor: 1_000,
                when: when("141000"),
            },
        )
        .await
        .unwrap();
    assert_eq!(next.load.online_serial, 1);
    assert_eq!(next.load.card.balance_minor, 4_000);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM card_loads").await, 2);
    clean(&w).await;
}

async fn a_lost_command_is_cancelled_and_the_card_loads_again(store: Store) {
    let w = world(store.clone()).await;
    with_account(&w).await;
    let keys = dev_keys();
    let (purse, err) = lost_credit(&w, &keys, our_card(6), Fault::LoseCommand).await;
    assert!(matches!(err, OfficeError::LoadAnswerLost { .. }), "{err}");
    assert_eq!(w.office.pending_loads().await.unwrap().len(), 1);
    // The next recharge settles the pending one first: never executed, so cancelled.
    let mut purse = PurseCard::open(purse.into_inner()).unwrap();
    let r = w
        .office
        .recharge(
            &w.recharge_clerk,
            &keys,
            &mut purse,
            RechargeRequest {
                amount_minor: 2_000,
                when: when("150000"),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        r.earlier,
        Some(PendingResolution::Cancelled {
            amount_minor: 3_000,
            online_serial: 0
        })
    );
    assert_eq!(
        r.load.online_serial, 0,
        "the serial the lost load never used"
    );
    assert_eq!(r.load.balance_after_minor, 2_000);
    assert_eq!(read_balance(purse.into_inner()).unwrap().balance_fen, 2_000);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM card_loads").await, 1);
    let cancelled = count(
        &store,
        "SELECT COUNT(*) FROM audit_log WHERE action = 'load_card' AND detail LIKE 'cancelled%'",
    )
    .await;
    assert_eq!(cancelled, 1);
    clean(&w).await;
}

async fn the_loss_list_blocks_recharges_and_versions_every_change(store: Store) {
    let w = world(store.clone()).await;
    with_account(&w).await;
    let keys = dev_keys();
    let mut card = PurseCard::open(our_card(7)).unwrap();
    let go = RechargeRequest {
        amount_minor: 500,
        when: when("160000"),
    };
    // Only the counter staff report losses.
    let err = w
        .office
        .report_loss(&w.recharge_clerk, CARD, "holder called")
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::Denied { .. }), "{err}");
    for bad in ["", "line\nbreak"] {
        let err = w
            .office
            .report_loss(&w.issuer_clerk, CARD, bad)
            .await
            .unwrap_err();
        assert!(matches!(err, OfficeError::Invalid { .. }), "{bad:?}: {err}");
    }
    let e1 = w
        .office
        .report_loss(&w.issuer_clerk, CARD, "holder called at 15:55")
        .await
        .unwrap();
    assert_eq!((e1.version, e1.action.as_str()), (1, "add"));
    assert_eq!(
        w.office.card_status(CARD).await.unwrap(),
        iccard_office::losslist::CardStatus::Lost
    );
    let err = w
        .office
        .report_loss(&w.issuer_clerk, CARD, "twice")
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::CardStatus { .. }), "{err}");
    // A lost card is not recharged; the card is untouched.
    let err = w
        .office
        .recharge(&w.recharge_clerk, &keys, &mut card, go)
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::CardStatus { .. }), "{err}");
    assert_eq!(w.office.loss_list().await.unwrap(), [CARD.to_string()]);
    // Found again: withdrawn, a new version; a terminal at version 1 gets only that change.
    let e2 = w
        .office
        .withdraw_loss(&w.issuer_clerk, CARD, "found in the car")
        .await
        .unwrap();
    assert_eq!((e2.version, e2.action.as_str()), (2, "remove"));
    let delta = w.office.loss_list_since(1).await.unwrap();
    assert_eq!((delta.from_version, delta.to_version), (1, 2));
    assert_eq!(delta.changes, [e2]);
    let at_terminal = iccard_office::losslist::apply(&[CARD.to_string()], &delta.changes);
    assert!(at_terminal.is_empty());
    assert!(w.office.loss_list().await.unwrap().is_empty());
    assert!(
        w.office.loss_list_since(3).await.is_err(),
        "a version from the future"
    );
    let r = w
        .office
        .recharge(&w.recharge_clerk, &keys, &mut card, go)
        .await
        .unwrap();
    assert_eq!(r.load.balance_after_minor, 500);
    // Every status change left a history row.
    let mut tx = store.read().await.unwrap();
    let changes: Vec<(String,)> = tx
        .fetch_all(
            "SELECT h.change FROM card_history h JOIN cards c ON c.id = h.card_id \
             WHERE c.application_serial = $1 ORDER BY h.id",
            &[iccard_office::store::Arg::Text(CARD.into())],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let changes: Vec<&str> = changes.iter().map(|(c,)| c.as_str()).collect();
    assert_eq!(changes, ["opened", "lost", "active", "loaded"]);
    clean(&w).await;
}

async fn a_lost_card_is_replaced_after_the_late_record_window(store: Store) {
    let w = world(store.clone()).await;
    with_account(&w).await;
    let keys = dev_keys();
    let new_number = "31000000000000000043";
    w.office
        .open_card(
            &w.issuer_clerk,
            OpenCard {
                application_serial: new_number.into(),
                deposit_minor: 1_000,
                fee_minor: 200,
            },
        )
        .await
        .unwrap();
    let issuer = issuer_id_of(&init_config().issuer_number).unwrap();
    let mut old = PurseCard::open(our_card(8)).unwrap();
    w.office
        .recharge(
            &w.recharge_clerk,
            &keys,
            &mut old,
            RechargeRequest {
                amount_minor: 5_000,
                when: when("080000"),
            },
        )
        .await
        .unwrap();
    let mut fresh = PurseCard::open(issued_card(
        new_number,
        PurseAlg::TripleDes,
        9,
        issuer,
        &DevIssuerKeys,
    ))
    .unwrap();
    let replace = |card: &'static str| (card, when("090000"));
    // Only a lost card is replaced.
    let (lost, at) = replace(CARD);
    let err = w
        .office
        .replace_card(&w.recharge_clerk, &keys, &mut fresh, lost, at)
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::CardStatus { .. }), "{err}");
    w.office
        .report_loss(&w.issuer_clerk, CARD, "left on the bus")
        .await
        .unwrap();
    // Within the late-record window (7 days by default): refused, nothing moves.
    assert_eq!(w.office.late_record_window_days().await.unwrap(), 7);
    let err = w
        .office
        .replace_card(&w.recharge_clerk, &keys, &mut fresh, lost, at)
        .await
        .unwrap_err();
    assert!(
        matches!(err, OfficeError::LateRecordWindow { days: 7, .. }),
        "{err}"
    );
    assert_eq!(fresh.balance().unwrap(), 0);
    // Only an administrator changes the window.
    let err = w
        .office
        .set_late_record_window(&w.recharge_clerk, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::Denied { .. }), "{err}");
    assert!(w
        .office
        .set_late_record_window(&w.admin, 400)
        .await
        .is_err());
    w.office.set_late_record_window(&w.admin, 0).await.unwrap();
    let r = w
        .office
        .replace_card(&w.recharge_clerk, &keys, &mut fresh, lost, at)
        .await
        .unwrap();
    assert_eq!(r.amount_minor, 5_000);
    let load = r.load.expect("a load onto the new card");
    assert_eq!(
        load.entry_id, None,
        "no money enters: the float only changes hands"
    );
    assert_eq!(load.tac_verified, Some(true));
    assert_eq!(fresh.balance().unwrap(), 5_000);
    assert_eq!(w.office.card(CARD).await.unwrap().balance_minor, 0);
    assert_eq!(
        w.office.card(new_number).await.unwrap().balance_minor,
        5_000
    );
    assert_eq!(
        w.office.card_status(CARD).await.unwrap(),
        iccard_office::losslist::CardStatus::Replaced
    );
    assert_eq!(w.office.loss_list().await.unwrap(), [CARD.to_string()]);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM card_transfers").await,
        1
    );
    let float = w
        .office
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.code == "float")
        .unwrap();
    assert_eq!(float.balance_minor, 5_000, "the float is unchanged");
    // Once replaced, never again.
    let err = w
        .office
        .replace_card(&w.recharge_clerk, &keys, &mut fresh, lost, at)
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::CardStatus { .. }), "{err}");
    clean(&w).await;
}

async fn the_daily_report_sums_each_operator_at_each_machine(store: Store) {
    let w = world(store.clone()).await;
    with_account(&w).await;
    let keys = dev_keys();
    let mut card = PurseCard::open(our_card(10)).unwrap();
    for (amount, time) in [(5_000, "100000"), (2_500, "110000")] {
        w.office
            .recharge(
                &w.recharge_clerk,
                &keys,
                &mut card,
                RechargeRequest {
                    amount_minor: amount,
                    when: when(time),
                },
            )
            .await
            .unwrap();
    }
    // The test clock starts at 1_700_000_000_000 ms: 2023-11-14 (UTC).
    let r = w.office.daily_report(&w.auditor, "20231114").await.unwrap();
    let rows: Vec<(&str, &str, &str, i64, i64)> = r
        .rows
        .iter()
        .filter(|x| x.kind == "open_card" || x.kind == "load_card")
        .map(|x| {
            (
                x.operator.as_str(),
                x.machine_number.as_str(),
                x.kind.as_str(),
                x.count,
                x.amount_minor,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("cashier", "RP-1", "load_card", 2, 7_500),
            ("issuer", "RP-1", "open_card", 1, 1_200)
        ]
    );
    let cash: Vec<(&str, i64, i64)> = r
        .cash
        .iter()
        .map(|c| (c.account.as_str(), c.in_minor, c.out_minor))
        .collect();
    assert_eq!(cash, [("cash:RP-1", 8_700, 0)]);
    // Another day is empty; a clerk (or an administrator: separation of duties) may not read
    // it; a bad date is refused.
    let empty = w.office.daily_report(&w.auditor, "20231115").await.unwrap();
    assert!(empty.rows.is_empty() && empty.cash.is_empty());
    let err = w
        .office
        .daily_report(&w.recharge_clerk, "20231114")
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::Denied { .. }), "{err}");
    assert!(w
        .office
        .daily_report(&w.auditor, "2023-11-14")
        .await
        .is_err());
}
