//! Tear recovery: the answer to DEBIT FOR PURCHASE or CREDIT FOR LOAD is lost (the card executed
//! the command) or the command itself is lost (it did not); resuming with the same card
//! finishes the transaction exactly once, in memory and with image cards reopened as after a
//! crash.

use crate::support::*;
use iccard_crypto::PurseAlg;
use iccard_link::{save_image, ImageCard};
use iccard_terminal::{
    read_balance, read_log, MemoryPending, PendingFile, Purchase, Recharge, Recovery, RecoveryNote,
    TerminalError, TransactionKind,
};

fn loaded(card_number: &str, alg: PurseAlg, seed: u64, amount: u32) -> MemCard {
    let mut card = user_card(card_number, alg, seed);
    let mut purse = open(&mut card);
    Recharge::new(&host(), TERMINAL_ID)
        .load(
            &mut purse,
            amount,
            &at("080000"),
            &mut MemoryPending::default(),
        )
        .unwrap();
    card
}

fn lost(e: TerminalError) -> iccard_terminal::PendingTransaction {
    match e {
        TerminalError::AnswerLost { pending, .. } => *pending,
        other => panic!("expected a lost answer, got {other}"),
    }
}

#[test]
fn a_lost_debit_answer_is_completed_not_charged_again() {
    for alg in [PurseAlg::TripleDes, PurseAlg::Sm4] {
        let mut card = loaded("2000000000000001", alg, 11, 5_000);
        let mut psam = open_psam(psam_card(TERMINAL_ID, 111));
        let mut store = MemoryPending::default();
        let mut flaky = Flaky::new(&mut card, 0x54, Fault::LoseAnswer);
        let mut purse = open(&mut flaky);
        let pending = lost(
            Purchase::new(&mut psam)
                .pay(&mut purse, 1_200, &at("100000"), &mut store)
                .unwrap_err(),
        );
        assert!(purse.channel().fired);
        assert_eq!(store.current.as_ref(), Some(&pending), "still pending");
        assert_eq!(pending.terminal_serial, Some(1));
        // Resume twice (a crash after the first resume, before it cleared the record): the
        // card is charged once, and both answers say so.
        for _ in 0..2 {
            let out = Purchase::new(&mut psam)
                .resume(&mut purse, &pending, &mut store)
                .unwrap();
            assert_eq!(out.recovery, Some(RecoveryNote::CompletedEarlier));
            assert_eq!(out.balance_after_fen, 3_800);
            assert_eq!(out.terminal_serial, 1);
            assert_eq!(out.mac2_verified, None, "the PSAM session is gone");
            assert!(
                out.tac.is_some() && out.mac2.is_some(),
                "the proof came back"
            );
            assert!(store.current.is_none());
        }
        assert_eq!(read_balance(&mut card).unwrap().balance_fen, 3_800, "{alg}");
        assert_eq!(read_log(&mut card).unwrap().len(), 2);
    }
}

#[test]
fn a_lost_debit_command_is_repeated_once() {
    let mut card = loaded("2000000000000002", PurseAlg::TripleDes, 12, 5_000);
    let mut psam = open_psam(psam_card(TERMINAL_ID, 112));
    let mut store = MemoryPending::default();
    let mut flaky = Flaky::new(&mut card, 0x54, Fault::LoseCommand);
    let mut purse = open(&mut flaky);
    let pending = lost(
        Purchase::new(&mut psam)
            .pay(&mut purse, 700, &at("110000"), &mut store)
            .unwrap_err(),
    );
    let out = Purchase::new(&mut psam)
        .resume(&mut purse, &pending, &mut store)
        .unwrap();
    assert_eq!(out.recovery, Some(RecoveryNote::Repeated));
    assert_eq!(out.mac2_verified, Some(true));
    assert_eq!(out.offline_serial, pending.serial, "the same card serial");
    assert_eq!(out.terminal_serial, 2, "a fresh PSAM serial");
    assert_eq!(out.balance_after_fen, 4_300);
    // Resuming the old record again finds it completed by the repeat: no second charge.
    let again = Purchase::new(&mut psam)
        .resume(&mut purse, &pending, &mut store)
        .unwrap();
    assert_eq!(again.recovery, Some(RecoveryNote::CompletedEarlier));
    assert_eq!(again.balance_after_fen, 4_300);
    assert_eq!(read_balance(&mut card).unwrap().balance_fen, 4_300);
}

#[test]
fn a_debit_that_spent_most_of_the_balance_is_found_with_amount_zero() {
    let mut card = loaded("2000000000000003", PurseAlg::Sm4, 13, 1_000);
    let mut psam = open_psam(psam_card(TERMINAL_ID, 113));
    let mut store = MemoryPending::default();
    let mut flaky = Flaky::new(&mut card, 0x54, Fault::LoseAnswer);
    let mut purse = open(&mut flaky);
    let pending = lost(
        Purchase::new(&mut psam)
            .pay(&mut purse, 800, &at("120000"), &mut store)
            .unwrap_err(),
    );
    // INITIALIZE FOR PURCHASE of 800 now answers 9401: recovery reads the serial with 0.
    match iccard_terminal::recover(&mut purse, &pending).unwrap() {
        Recovery::Completed { proof } => assert!(proof.is_some()),
        Recovery::NotDone => panic!("the debit happened"),
    }
    assert_eq!(read_balance(&mut card).unwrap().balance_fen, 200);
}

#[test]
fn loads_recover_both_ways() {
    let host = host();
    for (fault, note, balance) in [
        (Fault::LoseAnswer, RecoveryNote::CompletedEarlier, 2_500),
        (Fault::LoseCommand, RecoveryNote::Repeated, 2_500),
    ] {
        let mut card = loaded("2000000000000004", PurseAlg::TripleDes, 14, 1_000);
        let mut store = MemoryPending::default();
        let mut flaky = Flaky::new(&mut card, 0x52, fault);
        let mut purse = open(&mut flaky);
        let pending = lost(
            Recharge::new(&host, TERMINAL_ID)
                .load(&mut purse, 1_500, &at("130000"), &mut store)
                .unwrap_err(),
        );
        assert_eq!(pending.serial, 1, "the second load");
        let out = Recharge::new(&host, TERMINAL_ID)
            .resume(&mut purse, &pending, &mut store)
            .unwrap();
        assert_eq!(out.recovery, Some(note), "{fault:?}");
        assert_eq!(
            out.tac_verified,
            Some(true),
            "{fault:?}: the TAC checks either way"
        );
        assert_eq!(out.balance_after_fen, balance);
        assert!(store.current.is_none());
        assert_eq!(
            read_balance(&mut card).unwrap().balance_fen,
            balance,
            "{fault:?}"
        );
    }
}

#[test]
fn the_log_decides_when_the_card_was_used_elsewhere_since() {
    // Our debit happened, then another terminal's purchase: the proof of our serial is gone,
    // the log still shows ours.
    let mut card = loaded("2000000000000005", PurseAlg::TripleDes, 15, 5_000);
    let mut psam = open_psam(psam_card(TERMINAL_ID, 115));
    let mut other = open_psam(psam_card(OTHER_TERMINAL_ID, 215));
    let mut store = MemoryPending::default();
    let pending = {
        let mut flaky = Flaky::new(&mut card, 0x54, Fault::LoseAnswer);
        let mut purse = open(&mut flaky);
        lost(
            Purchase::new(&mut psam)
                .pay(&mut purse, 1_000, &at("140000"), &mut store)
                .unwrap_err(),
        )
    };
    let mut purse = open(&mut card);
    Purchase::new(&mut other)
        .pay(
            &mut purse,
            100,
            &at("140500"),
            &mut MemoryPending::default(),
        )
        .unwrap();
    let out = Purchase::new(&mut psam)
        .resume(&mut purse, &pending, &mut store)
        .unwrap();
    assert_eq!(out.recovery, Some(RecoveryNote::CompletedEarlier));
    assert_eq!(out.tac, None, "no proof any more");
    assert_eq!(read_balance(&mut card).unwrap().balance_fen, 3_900);

    // Our debit never reached the card, and another terminal took the serial: ours is repeated.
    let mut card = loaded("2000000000000006", PurseAlg::TripleDes, 16, 5_000);
    let pending = {
        let mut flaky = Flaky::new(&mut card, 0x54, Fault::LoseCommand);
        let mut purse = open(&mut flaky);
        lost(
            Purchase::new(&mut psam)
                .pay(&mut purse, 1_000, &at("150000"), &mut store)
                .unwrap_err(),
        )
    };
    let mut purse = open(&mut card);
    Purchase::new(&mut other)
        .pay(
            &mut purse,
            100,
            &at("150500"),
            &mut MemoryPending::default(),
        )
        .unwrap();
    let out = Purchase::new(&mut psam)
        .resume(&mut purse, &pending, &mut store)
        .unwrap();
    assert_eq!(out.recovery, Some(RecoveryNote::Repeated));
    assert_eq!(out.offline_serial, pending.serial + 1);
    assert_eq!(read_balance(&mut card).unwrap().balance_fen, 3_900);
}

#[test]
fn recovery_refuses_another_card() {
    let mut card = loaded("2000000000000007", PurseAlg::TripleDes, 17, 5_000);
    let mut psam = open_psam(psam_card(TERMINAL_ID, 117));
    let mut store = MemoryPending::default();
    let pending = {
        let mut flaky = Flaky::new(&mut card, 0x54, Fault::LoseAnswer);
        let mut purse = open(&mut flaky);
        lost(
            Purchase::new(&mut psam)
                .pay(&mut purse, 10, &at("160000"), &mut store)
                .unwrap_err(),
        )
    };
    let mut stranger = loaded("2000000000000008", PurseAlg::TripleDes, 18, 5_000);
    let mut purse = open(&mut stranger);
    let e = Purchase::new(&mut psam)
        .resume(&mut purse, &pending, &mut store)
        .unwrap_err();
    assert!(matches!(e, TerminalError::WrongCard { .. }), "{e}");
    assert!(store.current.is_some(), "the record stays pending");
    assert_eq!(read_balance(&mut stranger).unwrap().balance_fen, 5_000);
}

#[test]
fn image_cards_survive_a_crash_between_debit_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let card_path = dir.path().join("card.img");
    let psam_path = dir.path().join("psam.img");
    save_image(
        &card_path,
        loaded("3000000000000001", PurseAlg::TripleDes, 21, 9_000)
            .0
            .nvm()
            .eeprom(),
    )
    .unwrap();
    save_image(&psam_path, psam_card(TERMINAL_ID, 121).0.nvm().eeprom()).unwrap();
    let mut file = PendingFile::beside(&card_path);
    // First "process": the debit runs on the image, its answer is lost, the process dies.
    {
        let flaky = Flaky::new(
            ImageCard::open(&card_path).unwrap(),
            0x54,
            Fault::LoseAnswer,
        );
        let mut purse = open(flaky);
        let mut psam = open_psam(ImageCard::open(&psam_path).unwrap());
        let e = Purchase::new(&mut psam)
            .pay(&mut purse, 2_500, &at("170000"), &mut file)
            .unwrap_err();
        assert!(matches!(e, TerminalError::AnswerLost { .. }), "{e}");
    }
    // Second "process": cards powered up again from their images, the record read from disk.
    let pending = file.load().unwrap().expect("pending on disk");
    let mut purse = open(ImageCard::open(&card_path).unwrap());
    let mut psam = open_psam(ImageCard::open(&psam_path).unwrap());
    let out = Purchase::new(&mut psam)
        .resume(&mut purse, &pending, &mut file)
        .unwrap();
    assert_eq!(out.recovery, Some(RecoveryNote::CompletedEarlier));
    assert_eq!(file.load().unwrap(), None);
    assert_eq!(
        read_balance(ImageCard::open(&card_path).unwrap())
            .unwrap()
            .balance_fen,
        6_500
    );
    // The PSAM's serial survived on its image too.
    let out = Purchase::new(&mut psam)
        .pay(
            &mut open(ImageCard::open(&card_path).unwrap()),
            500,
            &at("171000"),
            &mut file,
        )
        .unwrap();
    assert_eq!(out.terminal_serial, 2);
}

#[test]
fn an_unload_empties_the_purse_with_mac3_and_tac_verified() {
    let host = host();
    for (alg, seed) in [(PurseAlg::TripleDes, 21u64), (PurseAlg::Sm4, 22)] {
        let mut card = loaded("2000000000000021", alg, seed, 3_300);
        let mut purse = open(&mut card);
        let rp = Recharge::new(&host, TERMINAL_ID);
        let prepared = rp.prepare_unload(&mut purse, 3_300, &at("170000")).unwrap();
        assert_eq!(prepared.pending.kind, TransactionKind::Unload);
        assert_eq!(
            prepared.pending.serial, 1,
            "the online serial after one load"
        );
        assert_eq!(prepared.new_balance_fen, 0);
        let out = rp.complete(&mut purse, &prepared).unwrap();
        assert_eq!((out.balance_before_fen, out.balance_after_fen), (3_300, 0));
        assert_eq!(out.tac_verified, Some(true), "{alg}");
        assert_eq!(out.suspicious, None, "{alg}: MAC3 verified");
        assert_eq!(read_balance(&mut card).unwrap().balance_fen, 0);
        let log = read_log(&mut card).unwrap();
        assert_eq!(log[0].tx_type, 0x13, "the card logged an unload");
        assert_eq!(log[0].amount_fen, 3_300);
    }
}

#[test]
fn an_unload_beyond_the_balance_is_refused_by_the_card() {
    let mut card = loaded("2000000000000022", PurseAlg::TripleDes, 23, 1_000);
    let mut purse = open(&mut card);
    let e = Recharge::new(&host(), TERMINAL_ID)
        .prepare_unload(&mut purse, 1_001, &at("170000"))
        .unwrap_err();
    assert_eq!(
        e.status(),
        Some(iccard_apdu::StatusWord::INSUFFICIENT_BALANCE),
        "{e}"
    );
    assert_eq!(read_balance(&mut card).unwrap().balance_fen, 1_000);
}

#[test]
fn unloads_settle_both_ways_after_a_lost_answer() {
    let host = host();
    for (fault, done) in [(Fault::LoseAnswer, true), (Fault::LoseCommand, false)] {
        let mut card = loaded("2000000000000023", PurseAlg::TripleDes, 24, 2_000);
        let mut flaky = Flaky::new(&mut card, 0x54, fault);
        let mut purse = open(&mut flaky);
        let rp = Recharge::new(&host, TERMINAL_ID);
        let prepared = rp.prepare_unload(&mut purse, 2_000, &at("171500")).unwrap();
        let pending = lost(rp.complete(&mut purse, &prepared).unwrap_err());
        assert_eq!(pending.kind, TransactionKind::Unload);
        // Settling twice gives the same answer: the card decides, nothing is repeated.
        for _ in 0..2 {
            let settled = rp.settle_pending(&mut purse, &pending).unwrap();
            match (done, settled) {
                (true, Some(out)) => {
                    assert_eq!(out.recovery, Some(RecoveryNote::CompletedEarlier));
                    assert_eq!(out.tac_verified, Some(true));
                    assert_eq!(out.balance_after_fen, 0);
                }
                (false, None) => {}
                (d, s) => panic!("{fault:?}: expected done={d}, settled {s:?}"),
            }
        }
        assert!(
            matches!(
                rp.resume(&mut purse, &pending, &mut MemoryPending::default()),
                Err(TerminalError::Input(_))
            ),
            "resume repeats loads only"
        );
        let expected = if done { 0 } else { 2_000 };
        assert_eq!(read_balance(&mut card).unwrap().balance_fen, expected);
    }
}
