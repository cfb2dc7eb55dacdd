//! Uploads and settlement of offline purchases, with real purchases: cards personalized for
//! this office and loaded through `Office::recharge`, sold to at an `iccard_pos::PointOfUse`
//! with a real PSAM, batches taken from its journal. Resends, conflicting records, forged
//! TACs, unknown and listed cards, a cloned card, a counter gap, a broken chain, the daily
//! postings with `check` clean, a case resolved and audited, the HTTP service round trip.
//! Every scenario on SQLite and on PostgreSQL.

use std::sync::Arc;

use iccard_cos::{Card, SeededRandom};
use iccard_crypto::PurseAlg;
use iccard_issuer::keys::DevIssuerKeys;
use iccard_office::keystore::{DevKeystore, Keystore};
use iccard_office::machines::{MachineKind, NewMachine};
use iccard_office::recharge::{issuer_id_of, RechargeRequest};
use iccard_office::settlement::CaseKind;
use iccard_office::upload::UploadError;
use iccard_office::{Mode, OpenCard, Store};
use iccard_pos::record::{Batch, BatchFile, PurchaseRecord};
use iccard_pos::{LossListDelta, PointOfUse, PosConfig, ResultCode};
use iccard_terminal::{Psam, PurseCard, TransactionTime};
use iccard_testkit::{issued_card, psam_card, MemCard};

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
                        eprintln!("ICCARD_TEST_POSTGRES_URL not set: PostgreSQL settlement tests skipped");
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
    a_batch_settles_once_and_a_resend_answers_the_same,
    conflicts_forgeries_unknown_and_malformed_records_are_answered_and_cased,
    a_listed_card_is_answered_and_still_settled,
    a_cloned_card_is_caught,
    a_counter_gap_opens_a_case_and_the_late_record_fills_it,
    a_broken_chain_is_refused_and_nothing_is_stored,
    a_case_resolved_with_a_reason_is_audited,
    a_batch_file_is_imported_by_an_administrator,
    the_http_service_round_trip,
);

const CARD: &str = "31000000000000000042";
const OTHER_CARD: &str = "31000000000000000077";
const T1: [u8; 6] = [0x12, 0x34, 0x56, 0x78, 0x90, 0x01];
const T1_HEX: &str = "123456789001";
const T2: [u8; 6] = [0x12, 0x34, 0x56, 0x78, 0x90, 0x02];
const T2_HEX: &str = "123456789002";
const DAY: &str = "2026-03-14";

fn when(time: &str) -> TransactionTime {
    TransactionTime::parse("20260314", time).unwrap()
}

fn keys() -> DevKeystore {
    DevKeystore::new(Mode::Development).unwrap()
}

fn chip(card_number: &str, seed: u64) -> MemCard {
    let issuer = issuer_id_of(&init_config().issuer_number).unwrap();
    issued_card(
        card_number,
        PurseAlg::TripleDes,
        seed,
        issuer,
        &DevIssuerKeys,
    )
}

/// A card of this office with an account, loaded with `amount` through `Office::recharge`.
async fn loaded_card(w: &World, seed: u64, amount: i64) -> MemCard {
    w.office
        .open_card(
            &w.issuer_clerk,
            OpenCard {
                application_serial: CARD.into(),
                deposit_minor: 1_000,
                fee_minor: 0,
            },
        )
        .await
        .expect("open the card's account");
    let mut purse = PurseCard::open(chip(CARD, seed)).unwrap();
    w.office
        .recharge(
            &w.recharge_clerk,
            &keys(),
            &mut purse,
            RechargeRequest {
                amount_minor: amount,
                when: when("070000"),
            },
        )
        .await
        .expect("recharge");
    purse.into_inner()
}

/// Merchant M1 with T-1 as terminal T1; returns T-1's upload token.
async fn merchant_and_terminal(w: &World) -> String {
    w.office
        .add_merchant(&w.admin, "M1", "Canteen")
        .await
        .unwrap();
    w.office
        .assign_terminal(&w.admin, "T-1", T1_HEX, "M1")
        .await
        .unwrap()
        .token
}

/// A second terminal machine T-2 (terminal T2) of merchant M1.
async fn second_terminal(w: &World) -> String {
    w.office
        .register_machine(
            &w.admin,
            NewMachine {
                machine_number: "T-2".into(),
                kind: MachineKind::Terminal,
                branch_code: "HQ".into(),
                psam_serial: Some("P-2".into()),
            },
        )
        .await
        .unwrap();
    w.office
        .assign_terminal(&w.admin, "T-2", T2_HEX, "M1")
        .await
        .unwrap()
        .token
}

/// A point of use with a fresh PSAM, its loss list brought current from the office.
async fn pos(
    w: &World,
    dir: &tempfile::TempDir,
    name: &str,
    id: [u8; 6],
    seed: u64,
) -> PointOfUse<MemCard> {
    let psam = Psam::open(psam_card(id, seed)).unwrap();
    let mut p = PointOfUse::open(psam, dir.path().join(name), PosConfig::default()).unwrap();
    let delta = w.office.loss_list_since(0).await.unwrap();
    let delta: LossListDelta =
        serde_json::from_value(serde_json::to_value(&delta).unwrap()).unwrap();
    p.update_loss_list(&delta, &when("060000")).unwrap();
    p
}

fn batch_of(p: &mut PointOfUse<MemCard>) -> Batch {
    let id = p.terminal_id();
    p.journal_mut().next_batch(&id, 100).unwrap().unwrap()
}

fn codes(r: &iccard_pos::BatchResults) -> Vec<ResultCode> {
    r.results.iter().map(|r| r.code).collect()
}

async fn count(store: &Store, sql: &str) -> i64 {
    let mut tx = store.read().await.unwrap();
    let (n,): (i64,) = tx.fetch_one(sql, &[]).await.unwrap();
    tx.rollback().await.unwrap();
    n
}

async fn clean(w: &World) {
    let r = w.office.check(&w.auditor).await.unwrap();
    assert!(r.is_clean(), "check: {:?}", r.problems);
}

async fn balance_of(w: &World, code: &str) -> i64 {
    w.office
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.code == code)
        .unwrap()
        .balance_minor
}

fn card_balance(card: &mut MemCard) -> i64 {
    i64::from(iccard_terminal::read_balance(card).unwrap().balance_fen)
}

async fn a_batch_settles_once_and_a_resend_answers_the_same(store: Store) {
    let w = world(store.clone()).await;
    let _token = merchant_and_terminal(&w).await;
    let mut card = loaded_card(&w, 1, 10_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = pos(&w, &dir, "t1.sqlite", T1, 101).await;
    p.sell(&mut card, 1_200, &when("100000")).unwrap();
    p.sell(&mut card, 300, &when("100500")).unwrap();
    let batch = batch_of(&mut p);
    let ks = keys();
    let first = w.office.ingest_batch(&ks, &batch).await.unwrap();
    assert_eq!(codes(&first), vec![ResultCode::Ok, ResultCode::Ok]);
    assert_eq!(
        (first.sequence, first.hash.as_str()),
        (1, batch.hash.as_str())
    );
    let again = w.office.ingest_batch(&ks, &batch).await.unwrap();
    assert_eq!(again, first, "a batch sent again answers the same");
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM offline_records").await,
        2
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM upload_batches").await,
        1
    );
    p.journal_mut()
        .mark_uploaded(&batch, &first.results)
        .unwrap();
    // Ingest moves no money; the run does.
    assert_eq!(balance_of(&w, "float").await, 10_000);
    let run = w.office.settle_day(&w.admin, DAY).await.unwrap();
    assert_eq!((run.records_settled, run.amount_minor), (2, 1_500));
    assert_eq!(run.postings.len(), 1);
    let post = &run.postings[0];
    assert_eq!(
        (
            post.merchant_code.as_str(),
            post.terminal_id.as_str(),
            post.business_date.as_str()
        ),
        ("M1", T1_HEX, DAY)
    );
    assert_eq!((post.records, post.amount_minor), (2, 1_500));
    assert_eq!(balance_of(&w, "float").await, 8_500);
    assert_eq!(balance_of(&w, "merchant_payable").await, 1_500);
    let shadow = w.office.card(CARD).await.unwrap();
    assert_eq!(shadow.balance_minor, card_balance(&mut card));
    assert_eq!(
        (shadow.proven_balance_minor, shadow.offline_serial),
        (8_500, 2)
    );
    assert!(
        w.office.cases(false).await.unwrap().is_empty(),
        "nothing to look at"
    );
    // A second run of the day settles nothing twice.
    let second = w.office.settle_day(&w.admin, DAY).await.unwrap();
    assert_eq!((second.records_settled, second.postings.len()), (0, 0));
    assert_eq!(balance_of(&w, "merchant_payable").await, 1_500);
    let report = w.office.reconciliation_report(DAY).await.unwrap();
    assert_eq!(report.lines.len(), 1);
    let l = &report.lines[0];
    assert_eq!((l.records, l.amount_minor, l.accepted), (2, 1_500, 2));
    assert_eq!((l.settled, l.settled_minor, l.unsettled), (2, 1_500, 0));
    assert_eq!(l.by_code.get("ok"), Some(&2));
    assert_eq!(report.posted_minor, 1_500);
    // A clerk may not run settlement.
    assert!(w.office.settle_day(&w.recharge_clerk, DAY).await.is_err());
    clean(&w).await;
}

fn tampered(r: &PurchaseRecord) -> PurchaseRecord {
    let mut r = r.clone();
    let tac = r.tac.clone().unwrap();
    let last = u8::from_str_radix(&tac[6..], 16).unwrap() ^ 0x01;
    r.tac = Some(format!("{}{last:02X}", &tac[..6]));
    r
}

async fn conflicts_forgeries_unknown_and_malformed_records_are_answered_and_cased(store: Store) {
    let w = world(store.clone()).await;
    merchant_and_terminal(&w).await;
    let mut card = loaded_card(&w, 2, 10_000).await;
    let mut stranger = chip(OTHER_CARD, 3);
    {
        // A card of this issuer's keys whose account was never opened here.
        let mut purse = PurseCard::open(&mut stranger).unwrap();
        let host = iccard_terminal::MasterKeyHost::new(
            iccard_issuer::devkeys::MLK.value(),
            iccard_issuer::devkeys::MTK.value(),
        );
        iccard_terminal::Recharge::new(&host, [9, 9, 9, 9, 9, 9])
            .load(
                &mut purse,
                5_000,
                &when("070000"),
                &mut iccard_terminal::MemoryPending::default(),
            )
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut p = pos(&w, &dir, "t1.sqlite", T1, 102).await;
    let a = p
        .sell(&mut card, 1_000, &when("100000"))
        .unwrap()
        .record
        .record;
    let b = p
        .sell(&mut card, 700, &when("100100"))
        .unwrap()
        .record
        .record;
    let u = p
        .sell(&mut stranger, 400, &when("100200"))
        .unwrap()
        .record
        .record;
    let first = batch_of(&mut p);
    let ks = keys();
    let answered = w.office.ingest_batch(&ks, &first).await.unwrap();
    assert_eq!(
        codes(&answered),
        vec![ResultCode::Ok, ResultCode::Ok, ResultCode::UnknownCard]
    );
    // A second batch: record a again (exists), record b altered (same key, other content),
    // a forged TAC under a new serial, an unreadable date.
    let mut other_b = b.clone();
    other_b.amount_fen = 7;
    let mut forged = tampered(&a);
    forged.terminal_serial = u.terminal_serial + 10;
    let mut bad_date = a.clone();
    bad_date.terminal_serial = u.terminal_serial + 11;
    bad_date.date = "20261399".into();
    let second = Batch::new(
        T1_HEX.into(),
        2,
        first.hash.clone(),
        vec![a.clone(), other_b, forged, bad_date],
    )
    .unwrap();
    let answered = w.office.ingest_batch(&ks, &second).await.unwrap();
    assert_eq!(
        codes(&answered),
        vec![
            ResultCode::Exists,
            ResultCode::ExistsWithDifferentContent,
            ResultCode::TacInvalid,
            ResultCode::Malformed
        ]
    );
    let cases = w.office.cases(true).await.unwrap();
    let kinds: Vec<CaseKind> = cases.iter().rev().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        vec![CaseKind::DuplicateDifferentContent, CaseKind::TacInvalid]
    );
    let ddc = &cases[1];
    assert!(
        ddc.evidence
            .as_deref()
            .unwrap()
            .contains("\"amount_fen\":7"),
        "the conflicting content is kept: {:?}",
        ddc.evidence
    );
    // Only the two real purchases of our card settle.
    let run = w.office.settle_day(&w.admin, DAY).await.unwrap();
    assert_eq!((run.records_settled, run.amount_minor), (2, 1_700));
    assert_eq!(
        w.office.card(CARD).await.unwrap().balance_minor,
        card_balance(&mut card)
    );
    let report = w.office.reconciliation_report(DAY).await.unwrap();
    let l = &report.lines[0];
    // Three records of the first batch and the forged one; the unreadable date counts on the
    // day it was received.
    assert_eq!(l.records, 4);
    assert_eq!(l.by_code.get("unknown_card"), Some(&1));
    assert_eq!(l.by_code.get("tac_invalid"), Some(&1));
    assert_eq!(l.accepted, 2);
    assert_eq!(l.open_cases, 2);
    clean(&w).await;
}

async fn a_listed_card_is_answered_and_still_settled(store: Store) {
    let w = world(store.clone()).await;
    merchant_and_terminal(&w).await;
    let mut card = loaded_card(&w, 4, 10_000).await;
    let dir = tempfile::tempdir().unwrap();
    // The terminal's list is current before the loss report: it sells.
    let mut p = pos(&w, &dir, "t1.sqlite", T1, 103).await;
    w.office
        .report_loss(&w.issuer_clerk, CARD, "lost on the bus")
        .await
        .unwrap();
    p.sell(&mut card, 2_000, &when("120000")).unwrap();
    let answered = w
        .office
        .ingest_batch(&keys(), &batch_of(&mut p))
        .await
        .unwrap();
    assert_eq!(codes(&answered), vec![ResultCode::ListedCard]);
    let cases = w.office.cases(true).await.unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].kind, CaseKind::ListedCard);
    let run = w.office.settle_day(&w.admin, DAY).await.unwrap();
    assert_eq!(
        run.amount_minor, 2_000,
        "the money left the card: it is settled"
    );
    assert_eq!(w.office.card(CARD).await.unwrap().balance_minor, 8_000);
    clean(&w).await;
}

async fn a_cloned_card_is_caught(store: Store) {
    let w = world(store.clone()).await;
    merchant_and_terminal(&w).await;
    second_terminal(&w).await;
    let mut card = loaded_card(&w, 5, 10_000).await;
    // The clone: the card's memory copied onto another chip.
    let image = card.0.nvm().eeprom().clone();
    let mut clone = MemCard(Card::power_on(image, SeededRandom::new(55)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut p1 = pos(&w, &dir, "t1.sqlite", T1, 104).await;
    let mut p2 = pos(&w, &dir, "t2.sqlite", T2, 105).await;
    let real = p1
        .sell(&mut card, 1_000, &when("100000"))
        .unwrap()
        .record
        .record;
    let copy = p2
        .sell(&mut clone, 2_500, &when("110000"))
        .unwrap()
        .record
        .record;
    assert_eq!(
        real.offline_serial, copy.offline_serial,
        "the same offline serial"
    );
    let ks = keys();
    assert_eq!(
        codes(
            &w.office
                .ingest_batch(&ks, &batch_of(&mut p1))
                .await
                .unwrap()
        ),
        vec![ResultCode::Ok]
    );
    assert_eq!(
        codes(
            &w.office
                .ingest_batch(&ks, &batch_of(&mut p2))
                .await
                .unwrap()
        ),
        vec![ResultCode::Ok],
        "each TAC verifies: the clone holds the card's keys"
    );
    let run = w.office.settle_day(&w.admin, DAY).await.unwrap();
    assert_eq!(
        (run.records_settled, run.amount_minor, run.held),
        (1, 1_000, 1)
    );
    let cases = w.office.cases(true).await.unwrap();
    let cloned: Vec<_> = cases
        .iter()
        .filter(|c| c.kind == CaseKind::ClonedCard)
        .collect();
    assert_eq!(cloned.len(), 1, "cases: {cases:?}");
    assert_eq!(cloned[0].terminal_id.as_deref(), Some(T2_HEX));
    assert_eq!(cloned[0].application_serial.as_deref(), Some(CARD));
    assert_eq!(w.office.card(CARD).await.unwrap().balance_minor, 9_000);
    let report = w.office.reconciliation_report(DAY).await.unwrap();
    let t2 = report
        .lines
        .iter()
        .find(|l| l.terminal_id == T2_HEX)
        .unwrap();
    assert_eq!((t2.held, t2.settled, t2.cases), (1, 0, 1));
    clean(&w).await;
}

async fn a_counter_gap_opens_a_case_and_the_late_record_fills_it(store: Store) {
    let w = world(store.clone()).await;
    merchant_and_terminal(&w).await;
    second_terminal(&w).await;
    let mut card = loaded_card(&w, 6, 10_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p1 = pos(&w, &dir, "t1.sqlite", T1, 106).await;
    let mut p2 = pos(&w, &dir, "t2.sqlite", T2, 107).await;
    p1.sell(&mut card, 1_000, &when("100000")).unwrap();
    p2.sell(&mut card, 2_000, &when("110000")).unwrap();
    p1.sell(&mut card, 500, &when("120000")).unwrap();
    let ks = keys();
    // Only T1 uploads today: offline serials 0 and 2.
    w.office
        .ingest_batch(&ks, &batch_of(&mut p1))
        .await
        .unwrap();
    let run = w.office.settle_day(&w.admin, DAY).await.unwrap();
    assert_eq!((run.records_settled, run.amount_minor), (2, 1_500));
    let gaps: Vec<_> = w
        .office
        .cases(true)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.kind == CaseKind::Gap)
        .collect();
    assert_eq!(gaps.len(), 1);
    assert!(gaps[0].detail.contains("1..=1"), "{}", gaps[0].detail);
    assert!(
        w.office
            .cases(true)
            .await
            .unwrap()
            .iter()
            .all(|c| c.kind == CaseKind::Gap),
        "a gap explains the balance: no mismatch"
    );
    let shadow = w.office.card(CARD).await.unwrap();
    assert_eq!((shadow.balance_minor, shadow.offline_serial), (8_500, 3));
    clean(&w).await;
    // T2's record arrives late: it settles in the next run and the balances meet.
    w.office
        .ingest_batch(&ks, &batch_of(&mut p2))
        .await
        .unwrap();
    let late = w.office.settle_day(&w.admin, DAY).await.unwrap();
    assert_eq!((late.records_settled, late.amount_minor), (1, 2_000));
    assert_eq!(
        w.office.card(CARD).await.unwrap().balance_minor,
        card_balance(&mut card)
    );
    assert_eq!(balance_of(&w, "merchant_payable").await, 3_500);
    clean(&w).await;
}

async fn a_broken_chain_is_refused_and_nothing_is_stored(store: Store) {
    let w = world(store.clone()).await;
    merchant_and_terminal(&w).await;
    let mut card = loaded_card(&w, 7, 10_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = pos(&w, &dir, "t1.sqlite", T1, 108).await;
    p.sell(&mut card, 100, &when("100000")).unwrap();
    let b1 = p.journal_mut().seal_batch(&T1, 100).unwrap().unwrap();
    p.sell(&mut card, 200, &when("100100")).unwrap();
    let b2 = p.journal_mut().seal_batch(&T1, 100).unwrap().unwrap();
    let ks = keys();
    let err = w.office.ingest_batch(&ks, &b2).await.unwrap_err();
    match &err {
        UploadError::Chain { sequence, why, .. } => {
            assert_eq!(*sequence, 2);
            assert!(why.contains("expected sequence 1"), "{why}");
        }
        other => panic!("not a chain error: {other:?}"),
    }
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM offline_records").await,
        0
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM upload_batches").await,
        0
    );
    // An altered batch does not verify.
    let mut altered = b1.clone();
    altered.records[0].amount_fen += 1;
    assert!(matches!(
        w.office.ingest_batch(&ks, &altered).await,
        Err(UploadError::Malformed(_))
    ));
    // In order, both go in.
    w.office.ingest_batch(&ks, &b1).await.unwrap();
    w.office.ingest_batch(&ks, &b2).await.unwrap();
    // A fork: another batch 2.
    let fork = Batch::new(T1_HEX.into(), 2, b1.hash.clone(), vec![]).unwrap();
    let err = w.office.ingest_batch(&ks, &fork).await.unwrap_err();
    assert!(
        matches!(&err, UploadError::Chain { why, .. } if why.contains("fork")),
        "{err}"
    );
    // A batch 3 that does not name batch 2's hash.
    let wrong = Batch::new(T1_HEX.into(), 3, b1.hash.clone(), vec![]).unwrap();
    let err = w.office.ingest_batch(&ks, &wrong).await.unwrap_err();
    assert!(
        matches!(&err, UploadError::Chain { why, .. } if why.contains("previous hash")),
        "{err}"
    );
    // An unassigned terminal is refused.
    let stray = Batch::new(
        "AABBCCDDEEFF".into(),
        1,
        iccard_pos::GENESIS_HASH.into(),
        vec![],
    )
    .unwrap();
    assert!(matches!(
        w.office.ingest_batch(&ks, &stray).await,
        Err(UploadError::Terminal { .. })
    ));
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM offline_records").await,
        2
    );
}

async fn a_case_resolved_with_a_reason_is_audited(store: Store) {
    let w = world(store.clone()).await;
    merchant_and_terminal(&w).await;
    let mut card = loaded_card(&w, 8, 10_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = pos(&w, &dir, "t1.sqlite", T1, 109).await;
    let r = p
        .sell(&mut card, 100, &when("100000"))
        .unwrap()
        .record
        .record;
    let forged = Batch::new(
        T1_HEX.into(),
        1,
        iccard_pos::GENESIS_HASH.into(),
        vec![tampered(&r)],
    )
    .unwrap();
    let answered = w.office.ingest_batch(&keys(), &forged).await.unwrap();
    assert_eq!(codes(&answered), vec![ResultCode::TacInvalid]);
    let case = w.office.cases(true).await.unwrap().remove(0);
    assert_eq!(case.kind, CaseKind::TacInvalid);
    // A clerk may not resolve it; a reason is required.
    assert!(w
        .office
        .resolve_case(&w.recharge_clerk, case.id, "fine")
        .await
        .is_err());
    assert!(w.office.resolve_case(&w.admin, case.id, "").await.is_err());
    let reason = "terminal swapped its PSAM mid-day; merchant confirmed no sale";
    let done = w
        .office
        .resolve_case(&w.admin, case.id, reason)
        .await
        .unwrap();
    assert_eq!(done.state, "resolved");
    assert_eq!(done.resolved_by.as_deref(), Some("admin"));
    assert_eq!(done.resolution.as_deref(), Some(reason));
    assert!(w.office.cases(true).await.unwrap().is_empty());
    assert!(
        w.office
            .resolve_case(&w.admin, case.id, reason)
            .await
            .is_err(),
        "resolved once"
    );
    let audit = w.office.audit_records(0, 10_000).await.unwrap();
    let ok: Vec<_> = audit
        .iter()
        .filter(|a| a.action == "resolve_case" && a.outcome == "ok")
        .collect();
    assert_eq!(ok.len(), 1);
    assert!(ok[0].detail.contains(reason), "{}", ok[0].detail);
    assert_eq!(ok[0].subject, format!("case {}", case.id));
    assert!(audit
        .iter()
        .any(|a| a.action == "resolve_case" && a.outcome == "denied"));
    assert!(audit
        .iter()
        .any(|a| a.action == "upload_batch" && a.operator_login == format!("terminal:{T1_HEX}")));
    assert!(w.office.verify_audit().await.unwrap().broken.is_none());
}

async fn a_batch_file_is_imported_by_an_administrator(store: Store) {
    let w = world(store.clone()).await;
    merchant_and_terminal(&w).await;
    let mut card = loaded_card(&w, 9, 10_000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = pos(&w, &dir, "t1.sqlite", T1, 110).await;
    p.sell(&mut card, 450, &when("100000")).unwrap();
    p.sell(&mut card, 550, &when("100100")).unwrap();
    let path = dir.path().join("batches.json");
    let file: BatchFile = p.journal_mut().export_batch_file(&T1, 1, &path).unwrap();
    assert_eq!(file.batches.len(), 2);
    let read = iccard_pos::read_batch_file(&path).unwrap();
    let ks = keys();
    assert!(w
        .office
        .import_batch_file(&w.recharge_clerk, &ks, &read)
        .await
        .is_err());
    let answers = w
        .office
        .import_batch_file(&w.admin, &ks, &read)
        .await
        .unwrap();
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|a| codes(a) == vec![ResultCode::Ok]));
    // Carried in twice: the same answers.
    let again = w
        .office
        .import_batch_file(&w.admin, &ks, &read)
        .await
        .unwrap();
    assert_eq!(again, answers);
    for a in &answers {
        p.journal_mut().mark_answered(a).unwrap();
    }
    let run = w.office.settle_day(&w.admin, DAY).await.unwrap();
    assert_eq!(run.amount_minor, 1_000);
    clean(&w).await;
}

async fn the_http_service_round_trip(store: Store) {
    let w = world(store.clone()).await;
    let token = merchant_and_terminal(&w).await;
    let mut card = loaded_card(&w, 10, 10_000).await;
    w.office
        .report_loss(&w.issuer_clerk, CARD, "stolen")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut p = {
        let psam = Psam::open(psam_card(T1, 111)).unwrap();
        PointOfUse::open(psam, dir.path().join("t1.sqlite"), PosConfig::default()).unwrap()
    };
    let office = Arc::new(w.office.clone());
    let ks: Arc<dyn Keystore + Send + Sync> = Arc::new(keys());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(iccard_office::upload_http::serve(listener, office, ks));

    // The loss list over HTTP, applied by the terminal.
    let (b, t) = (base.clone(), token.clone());
    let delta: LossListDelta = tokio::task::spawn_blocking(move || {
        ureq::get(&format!("{b}/v1/loss-list?since=0"))
            .set("Authorization", &format!("Bearer {t}"))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(delta.to_version, 1);
    assert_eq!(delta.changes[0].application_serial, CARD);
    p.update_loss_list(&delta, &when("060000")).unwrap();
    assert!(p.sell(&mut card, 100, &when("090000")).is_err(), "listed");
    w.office
        .withdraw_loss(&w.issuer_clerk, CARD, "found")
        .await
        .unwrap();
    let (b, t) = (base.clone(), token.clone());
    let delta: LossListDelta = tokio::task::spawn_blocking(move || {
        ureq::get(&format!("{b}/v1/loss-list?since=1"))
            .set("Authorization", &format!("Bearer {t}"))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!((delta.from_version, delta.to_version), (1, 2));
    p.update_loss_list(&delta, &when("093000")).unwrap();
    p.sell(&mut card, 900, &when("100000")).unwrap();
    let batch = batch_of(&mut p);

    let post = |token: String, body: serde_json::Value| {
        let b = base.clone();
        tokio::task::spawn_blocking(move || {
            match ureq::post(&format!("{b}/v1/batches"))
                .set("Authorization", &format!("Bearer {token}"))
                .send_json(body)
            {
                Ok(r) => (r.status(), r.into_json::<serde_json::Value>().unwrap()),
                Err(ureq::Error::Status(code, r)) => {
                    (code, r.into_json::<serde_json::Value>().unwrap())
                }
                Err(e) => panic!("transport: {e}"),
            }
        })
    };
    let body = serde_json::to_value(&batch).unwrap();
    let (status, answer) = post(token.clone(), body.clone()).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let results: iccard_pos::BatchResults = serde_json::from_value(answer).unwrap();
    assert_eq!(codes(&results), vec![ResultCode::Ok]);
    let summary = p
        .journal_mut()
        .mark_uploaded(&batch, &results.results)
        .unwrap();
    assert_eq!(summary.accepted, 1);
    // Sent again: the same answer.
    let (status, again) = post(token.clone(), body.clone()).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_value::<iccard_pos::BatchResults>(again).unwrap(),
        results
    );
    // A wrong token.
    let forged_token = format!("{T1_HEX}.{}", "0".repeat(64));
    let (status, err) = post(forged_token, body.clone()).await.unwrap();
    assert_eq!(status, 401);
    assert!(err["error"].as_str().unwrap().contains("token"), "{err}");
    // A gap in the chain.
    let gap = Batch::new(T1_HEX.into(), 5, batch.hash.clone(), vec![]).unwrap();
    let (status, err) = post(token.clone(), serde_json::to_value(&gap).unwrap())
        .await
        .unwrap();
    assert_eq!(status, 409);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("expected sequence 2"),
        "{err}"
    );
    // Not a batch.
    let (status, err) = post(token.clone(), serde_json::json!({"hello": 1}))
        .await
        .unwrap();
    assert_eq!(status, 422);
    assert!(err["error"].as_str().is_some());
    server.abort();
    let run = w.office.settle_day(&w.admin, DAY).await.unwrap();
    assert_eq!(run.amount_minor, 900);
    clean(&w).await;
}
