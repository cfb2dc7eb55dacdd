//! The return of a card, on real cards (the card OS in memory, made through a production batch
//! and issued by the real script): the rule-driven quote, the unload on the card with MAC3 and
//! TAC verified, the refund posted, the purse blocked, the card erased for refurbishment (and
//! back to stock after coding and testing) or terminated; the refusals that change nothing; an
//! unload whose answer is lost, resumed exactly once. Every scenario on SQLite and PostgreSQL.

use iccard_apdu::Command as Apdu;
use iccard_issuer::functional::test_card;
use iccard_issuer::manufacture::{self, BlankCard};
use iccard_link::CardChannel;
use iccard_office::issuance::IssueRequest;
use iccard_office::keystore::DevKeystore;
use iccard_office::losslist::CardStatus;
use iccard_office::manufacture::InventoryState;
use iccard_office::products::CardType;
use iccard_office::recharge::RechargeRequest;
use iccard_office::returns::{Condition, Disposition, ReturnRequest, ReturnResumed};
use iccard_office::{Mode, OfficeError, Store};
use iccard_terminal::{
    read_balance, MemoryPending, Psam, Purchase, PurseCard, RecoveryNote, TransactionTime,
};
use iccard_testkit::{psam_card, Fault, Flaky, MemCard};
use zeroize::Zeroizing;

use crate::support::{stock_with, world, World};

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
                        eprintln!("ICCARD_TEST_POSTGRES_URL not set: PostgreSQL return tests skipped");
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
    a_returned_card_is_refunded_erased_and_back_in_stock,
    a_damaged_card_forfeits_its_deposit_and_is_destroyed,
    refusals_change_nothing,
    a_lost_unload_answer_is_resumed_exactly_once,
    expired_cards_take_no_load_and_are_still_refunded,
    with_shifts_required_cash_moves_only_in_an_open_shift,
);

const TERMINAL: [u8; 6] = [0, 0, 0, 0, 0x77, 0x01];

fn when(time: &str) -> TransactionTime {
    TransactionTime::parse("20260320", time).unwrap()
}

fn keys() -> DevKeystore {
    DevKeystore::new(Mode::Development).unwrap()
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
        .map(|a| a.balance_minor)
        .unwrap_or(0)
}

/// One card of product `code` made, issued (deposit 2,000, fee 500) and loaded with `load`.
async fn issued(w: &World, code: &str, first_chip: &str, load: i64) -> (String, String, MemCard) {
    let mut cards = stock_with(
        w,
        code,
        crate::support::product(CardType::Anonymous),
        first_chip,
        1,
    )
    .await;
    let (chip, mut card) = cards.remove(0);
    let receipt = w
        .office
        .issue_card(
            &w.issuer_clerk,
            &keys(),
            &mut card,
            &IssueRequest {
                pin: Zeroizing::new("123456".into()),
                holder: None,
                date: [0x20, 0x26, 0x03, 0x14],
            },
        )
        .await
        .expect("issue");
    let mut purse = PurseCard::open(card).unwrap();
    w.office
        .recharge(
            &w.recharge_clerk,
            &keys(),
            &mut purse,
            RechargeRequest {
                amount_minor: load,
                when: when("090000"),
            },
        )
        .await
        .expect("recharge");
    (receipt.card_number, chip, purse.into_inner())
}

async fn a_returned_card_is_refunded_erased_and_back_in_stock(store: Store) {
    let w = world(store.clone()).await;
    let (number, chip, card) = issued(&w, "CITY", "4943000000002000", 3_000).await;
    // An offline purchase not uploaded yet: the card holds less than its shadow account.
    let mut psam = Psam::open(psam_card(TERMINAL, 901)).unwrap();
    let mut purse = PurseCard::open(card).unwrap();
    Purchase::new(&mut psam)
        .pay(
            &mut purse,
            500,
            &when("100000"),
            &mut MemoryPending::default(),
        )
        .unwrap();
    w.office.set_return_fee(&w.admin, 100).await.unwrap();
    let ks = keys();

    let quote = w
        .office
        .return_quote(&w.issuer_clerk, &ks, &mut purse, Condition::Good)
        .await
        .unwrap();
    assert_eq!(quote.card_number, number);
    assert_eq!(quote.chip_serial.as_deref(), Some(chip.as_str()));
    assert_eq!(quote.card_type.as_deref(), Some("CITY"));
    assert_eq!(
        (
            quote.card_balance_minor,
            quote.shadow_balance_minor,
            quote.unsettled_minor
        ),
        (2_500, 3_000, 500)
    );
    assert_eq!(
        (
            quote.deposit_refund_minor,
            quote.deposit_forfeit_minor,
            quote.fee_minor
        ),
        (2_000, 0, 100)
    );
    assert_eq!(quote.refund_minor, 4_400);
    assert_eq!(
        quote.lines.iter().map(|l| l.amount_minor).sum::<i64>(),
        4_400,
        "the lines add up to the refund"
    );
    assert_eq!(
        read_balance(purse.channel()).unwrap().balance_fen,
        2_500,
        "a quote moves nothing"
    );

    let cash_before = balance_of(&w, "cash:RP-1").await;
    let fees_before = balance_of(&w, "card_fee_income").await;
    let receipt = w
        .office
        .return_card(
            &w.issuer_clerk,
            &ks,
            &mut purse,
            ReturnRequest {
                condition: Condition::Good,
                disposition: Disposition::Refurbish,
                accepted_refund_minor: 4_400,
                when: when("110000"),
            },
        )
        .await
        .expect("return");
    assert_eq!(receipt.unloaded_minor, 2_500);
    assert_eq!(receipt.refund_minor, 4_400);
    assert_eq!(receipt.online_serial, Some(1), "after one load");
    assert_eq!(receipt.tac_verified, Some(true), "TAC and MAC3 verified");
    assert_eq!(receipt.inventory_state, Some("refurbished"));
    assert_eq!(cash_before - balance_of(&w, "cash:RP-1").await, 4_400);
    assert_eq!(balance_of(&w, "card_fee_income").await - fees_before, 100);
    assert_eq!(
        balance_of(&w, "float").await,
        500,
        "the unsettled purchase stays in the float until it is uploaded"
    );
    assert_eq!(balance_of(&w, "deposits_held").await, 0);
    let account = w.office.card(&number).await.unwrap();
    assert_eq!((account.balance_minor, account.deposit_minor), (500, 0));
    assert_eq!(
        w.office.card_status(&number).await.unwrap(),
        CardStatus::Returned
    );
    assert!(w.office.open_returns().await.unwrap().is_empty());
    clean(&w).await;

    // The card is erased: no purse answers any more.
    let mut card = purse.into_inner();
    assert!(PurseCard::open(&mut card).is_err());
    // Coded again (the card maker's equipment over the same chip, wear kept) and tested.
    let eeprom = card.0.into_eeprom();
    let spec = BlankCard {
        chip_serial: u64::from_str_radix(&chip, 16).unwrap().to_be_bytes(),
        production_date: [0x20, 0x26, 0x03, 0x21],
        batch: 1,
        transport_key_version: 1,
        attack_threshold: manufacture::DEFAULT_ATTACK_THRESHOLD,
    };
    let mut card =
        MemCard(manufacture::make_blank(eeprom, iccard_cos::SeededRandom::new(77), &spec).unwrap());
    let report = test_card(
        &mut card,
        &manufacture::transport_key(
            &iccard_issuer::devkeys::TRANSPORT.value(),
            &spec.chip_serial,
        ),
    );
    assert!(report.passed(), "{:?}", report.failure());
    let back = w
        .office
        .refurbished_to_stock(&w.admin, &chip, &report)
        .await
        .unwrap();
    assert_eq!(back.state, InventoryState::InStock);
    // And it is issued again, under a new card number.
    let again = w
        .office
        .issue_card(
            &w.issuer_clerk,
            &ks,
            &mut card,
            &IssueRequest {
                pin: Zeroizing::new("654321".into()),
                holder: None,
                date: [0x20, 0x26, 0x03, 0x22],
            },
        )
        .await
        .expect("reissue");
    assert_ne!(again.card_number, number);
    assert_eq!(again.chip_serial, chip);
    clean(&w).await;
}

async fn a_damaged_card_forfeits_its_deposit_and_is_destroyed(store: Store) {
    let w = world(store.clone()).await;
    let (number, chip, card) = issued(&w, "CITY", "4943000000003000", 1_200).await;
    let mut purse = PurseCard::open(card).unwrap();
    let ks = keys();
    w.office.set_return_fee(&w.admin, 50).await.unwrap();
    let quote = w
        .office
        .return_quote(&w.issuer_clerk, &ks, &mut purse, Condition::Damaged)
        .await
        .unwrap();
    assert_eq!(
        (
            quote.deposit_refund_minor,
            quote.deposit_forfeit_minor,
            quote.fee_minor,
            quote.refund_minor
        ),
        (0, 2_000, 50, 1_150)
    );
    // A refund other than the one quoted is refused, and nothing moves.
    let stale = w
        .office
        .return_card(
            &w.issuer_clerk,
            &ks,
            &mut purse,
            ReturnRequest {
                condition: Condition::Damaged,
                disposition: Disposition::Destroy,
                accepted_refund_minor: 3_150,
                when: when("120000"),
            },
        )
        .await;
    assert!(
        matches!(
            stale,
            Err(OfficeError::QuoteChanged {
                quoted_minor: 3_150,
                now_minor: 1_150
            })
        ),
        "{stale:?}"
    );
    assert_eq!(read_balance(purse.channel()).unwrap().balance_fen, 1_200);
    let fees_before = balance_of(&w, "card_fee_income").await;
    let receipt = w
        .office
        .return_card(
            &w.issuer_clerk,
            &ks,
            &mut purse,
            ReturnRequest {
                condition: Condition::Damaged,
                disposition: Disposition::Destroy,
                accepted_refund_minor: 1_150,
                when: when("120100"),
            },
        )
        .await
        .expect("return");
    assert_eq!(receipt.inventory_state, Some("destroyed"));
    assert_eq!(
        balance_of(&w, "card_fee_income").await - fees_before,
        2_050,
        "the forfeited deposit and the fee"
    );
    assert_eq!(balance_of(&w, "float").await, 0);
    // Terminated: the card answers GET DATA only, its state TERMINATED.
    let mut card = purse.into_inner();
    let r = card
        .transmit(&Apdu::new(0x80, 0xCA, 0x9F, 0x70).with_ne(256).to_bytes())
        .unwrap();
    assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
    assert_eq!(r[3], iccard_cos::CardState::Terminated as u8, "{r:02X?}");
    let inv = w.office.inventory_card(&chip).await.unwrap();
    assert_eq!(inv.state, InventoryState::Destroyed);
    assert_eq!(
        w.office.card_status(&number).await.unwrap(),
        CardStatus::Returned
    );
    clean(&w).await;
}

async fn refusals_change_nothing(store: Store) {
    let w = world(store.clone()).await;
    let (number, _, card) = issued(&w, "CITY", "4943000000004000", 800).await;
    let mut purse = PurseCard::open(card).unwrap();
    let ks = keys();
    let request = ReturnRequest {
        condition: Condition::Good,
        disposition: Disposition::Refurbish,
        accepted_refund_minor: 2_800,
        when: when("130000"),
    };
    // A recharge clerk does not take cards back.
    let denied = w
        .office
        .return_card(&w.recharge_clerk, &ks, &mut purse, request)
        .await;
    assert!(
        matches!(denied, Err(OfficeError::Denied { .. })),
        "{denied:?}"
    );
    // A card on the loss list must have its report withdrawn first.
    w.office
        .report_loss(&w.issuer_clerk, &number, "reported lost by phone")
        .await
        .unwrap();
    let lost = w
        .office
        .return_card(&w.issuer_clerk, &ks, &mut purse, request)
        .await;
    assert!(
        matches!(lost, Err(OfficeError::CardStatus { status: "lost", .. })),
        "{lost:?}"
    );
    w.office
        .withdraw_loss(&w.issuer_clerk, &number, "found by the holder")
        .await
        .unwrap();
    // At an office console: not a recharge point.
    let at_console = w
        .office
        .return_card(&w.admin, &ks, &mut purse, request)
        .await;
    assert!(at_console.is_err());
    assert_eq!(read_balance(purse.channel()).unwrap().balance_fen, 800);
    assert_eq!(balance_of(&w, "float").await, 800);
    assert_eq!(balance_of(&w, "deposits_held").await, 2_000);
    assert!(w.office.open_returns().await.unwrap().is_empty());
    // Then it goes through.
    let done = w
        .office
        .return_card(&w.issuer_clerk, &ks, &mut purse, request)
        .await
        .expect("return");
    assert_eq!(done.refund_minor, 2_800);
    // And a returned card cannot be returned or recharged again.
    let twice = w
        .office
        .return_quote(&w.issuer_clerk, &ks, &mut purse, Condition::Good)
        .await;
    assert!(twice.is_err(), "{twice:?}");
    clean(&w).await;
}

async fn a_lost_unload_answer_is_resumed_exactly_once(store: Store) {
    let w = world(store.clone()).await;
    let ks = keys();
    for (fault, first_chip) in [
        (Fault::LoseAnswer, "4943000000005000"),
        (Fault::LoseCommand, "4943000000006000"),
    ] {
        let code = format!("P{}", &first_chip[12..13]);
        let (number, _, card) = issued(&w, &code, first_chip, 1_500).await;
        let float_before = balance_of(&w, "float").await;
        let mut purse = PurseCard::open(Flaky::new(card, 0x54, fault)).unwrap();
        let request = ReturnRequest {
            condition: Condition::Good,
            disposition: Disposition::Destroy,
            accepted_refund_minor: 3_500,
            when: when("140000"),
        };
        let lost = w
            .office
            .return_card(&w.issuer_clerk, &ks, &mut purse, request)
            .await;
        assert!(
            matches!(lost, Err(OfficeError::ReturnAnswerLost { .. })),
            "{fault:?}: {lost:?}"
        );
        let open = w.office.open_returns().await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(
            (open[0].card_number.as_str(), open[0].state.as_str()),
            (number.as_str(), "unloading")
        );
        assert_eq!(
            balance_of(&w, "float").await,
            float_before,
            "nothing posted yet"
        );
        clean(&w).await;
        // A new return is refused while this one is open.
        let again = w
            .office
            .return_quote(&w.issuer_clerk, &ks, &mut purse, Condition::Good)
            .await;
        assert!(
            matches!(again, Err(OfficeError::CardStatus { .. })),
            "{again:?}"
        );

        let resumed = w
            .office
            .resume_return(&w.issuer_clerk, &ks, &mut purse)
            .await
            .expect("resume");
        match (fault, resumed) {
            (Fault::LoseAnswer, ReturnResumed::Finished { receipt }) => {
                assert_eq!(receipt.recovery, Some(RecoveryNote::CompletedEarlier));
                assert_eq!(receipt.refund_minor, 3_500);
                assert_eq!(receipt.inventory_state, Some("destroyed"));
                assert_eq!(balance_of(&w, "float").await, float_before - 1_500);
            }
            (Fault::LoseCommand, ReturnResumed::Cancelled { amount_minor, .. }) => {
                assert_eq!(amount_minor, 1_500);
                assert_eq!(read_balance(purse.channel()).unwrap().balance_fen, 1_500);
                assert_eq!(balance_of(&w, "float").await, float_before);
                // The holder starts again: this time it goes through.
                let done = w
                    .office
                    .return_card(&w.issuer_clerk, &ks, &mut purse, request)
                    .await
                    .expect("return after the cancelled one");
                assert_eq!(done.recovery, None);
                assert_eq!(balance_of(&w, "float").await, float_before - 1_500);
            }
            (f, r) => panic!("{f:?}: unexpected {r:?}"),
        }
        assert!(w.office.open_returns().await.unwrap().is_empty());
        // Resuming again finds nothing open.
        assert!(w
            .office
            .resume_return(&w.issuer_clerk, &ks, &mut purse)
            .await
            .is_err());
        clean(&w).await;
    }
}

async fn expired_cards_take_no_load_and_are_still_refunded(store: Store) {
    let w = world(store.clone()).await;
    // Issued on 2026-03-14 for 36 months: valid until 2029-03-14.
    let (number, _, card) = issued(&w, "CITY", "4943000000007000", 900).await;
    let bad = w.office.expire_cards(&w.admin, "2029-03-15").await;
    assert!(matches!(bad, Err(OfficeError::Invalid { .. })), "{bad:?}");
    let clerk = w.office.expire_cards(&w.issuer_clerk, "20290315").await;
    assert!(
        matches!(clerk, Err(OfficeError::Denied { .. })),
        "{clerk:?}"
    );
    // On its last day it is still valid.
    let none = w.office.expire_cards(&w.admin, "20290314").await.unwrap();
    assert!(none.expired.is_empty(), "{none:?}");
    let run = w.office.expire_cards(&w.admin, "20290315").await.unwrap();
    assert_eq!(run.expired.len(), 1);
    assert_eq!(run.expired[0].card_number, number);
    assert_eq!(run.expired[0].valid_until, "20290314");
    assert_eq!((run.balance_minor, run.deposit_minor), (900, 2_000));
    assert_eq!(
        w.office.card_status(&number).await.unwrap(),
        CardStatus::Expired
    );
    assert_eq!(w.office.expired_cards().await.unwrap(), run.expired);
    let again = w.office.expire_cards(&w.admin, "20290316").await.unwrap();
    assert!(again.expired.is_empty(), "nothing new: {again:?}");
    // No more loads.
    let mut purse = PurseCard::open(card).unwrap();
    let refused = w
        .office
        .recharge(
            &w.recharge_clerk,
            &keys(),
            &mut purse,
            RechargeRequest {
                amount_minor: 100,
                when: when("150000"),
            },
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(OfficeError::CardStatus {
                status: "expired",
                ..
            })
        ),
        "{refused:?}"
    );
    // The holder still gets the money back.
    let quote = w
        .office
        .return_quote(&w.issuer_clerk, &keys(), &mut purse, Condition::Good)
        .await
        .unwrap();
    assert_eq!((quote.status, quote.refund_minor), ("expired", 2_900));
    w.office
        .return_card(
            &w.issuer_clerk,
            &keys(),
            &mut purse,
            ReturnRequest {
                condition: Condition::Good,
                disposition: Disposition::Destroy,
                accepted_refund_minor: 2_900,
                when: when("150100"),
            },
        )
        .await
        .expect("an expired card is returned");
    assert!(w.office.expired_cards().await.unwrap().is_empty());
    clean(&w).await;
}

async fn with_shifts_required_cash_moves_only_in_an_open_shift(store: Store) {
    let w = world(store.clone()).await;
    let (_, _, card) = issued(&w, "CITY", "4943000000008000", 600).await;
    let mut purse = PurseCard::open(card).unwrap();
    w.office.set_shifts_required(&w.admin, true).await.unwrap();
    let ks = keys();
    let refused = w
        .office
        .return_quote(&w.issuer_clerk, &ks, &mut purse, Condition::Good)
        .await;
    assert!(
        matches!(&refused, Err(OfficeError::Invalid { what: "shift", .. })),
        "{refused:?}"
    );
    let load = w
        .office
        .recharge(
            &w.recharge_clerk,
            &ks,
            &mut purse,
            RechargeRequest {
                amount_minor: 100,
                when: when("160000"),
            },
        )
        .await;
    assert!(
        matches!(&load, Err(OfficeError::Invalid { what: "shift", .. })),
        "{load:?}"
    );
    assert_eq!(read_balance(purse.channel()).unwrap().balance_fen, 600);
    // The issuance clerk opens a shift with 50.00 in the drawer and pays the refund from it.
    let shift = w.office.open_shift(&w.issuer_clerk, 5_000).await.unwrap();
    let done = w
        .office
        .return_card(
            &w.issuer_clerk,
            &ks,
            &mut purse,
            ReturnRequest {
                condition: Condition::Good,
                disposition: Disposition::Destroy,
                accepted_refund_minor: 2_600,
                when: when("160100"),
            },
        )
        .await
        .expect("return in an open shift");
    assert_eq!(done.refund_minor, 2_600);
    let report = w
        .office
        .close_shift(
            &w.issuer_clerk,
            shift.id,
            iccard_office::shifts::CloseShift {
                counted_cash_minor: 2_400,
                reason: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(report.cash_out_minor, 2_600, "the refund left the drawer");
    assert_eq!(report.expected_cash_minor, 2_400);
    clean(&w).await;
}
