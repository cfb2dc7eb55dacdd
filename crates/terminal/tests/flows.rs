//! Load and purchase end to end on personalized cards and PSAMs (both generations), the card
//! log and balance, refusals with their status words, the suspicious-MAC2 path, the pending
//! file, and keys kept out of every output.

use crate::support::*;
use iccard_apdu::StatusWord;
use iccard_crypto::PurseAlg;
use iccard_terminal::{
    read_balance, read_log, CardKeyRef, HostKeys, MasterKeyHost, MemoryPending, PendingFile,
    PendingStore, Purchase, Recharge, TacInput, TerminalError, TransactionTime,
};

#[test]
fn load_then_purchase_in_both_generations() {
    for (alg, seed) in [(PurseAlg::TripleDes, 1u64), (PurseAlg::Sm4, 2)] {
        let mut card = user_card("6228480012345678", alg, seed);
        let mut psam = open_psam(psam_card(TERMINAL_ID, seed + 100));
        assert_eq!(psam.terminal_id(), TERMINAL_ID);
        let host = host();
        let mut store = MemoryPending::default();

        let mut purse = open(&mut card);
        assert_eq!(purse.identity().card_number(), "6228480012345678");
        let load = Recharge::new(&host, TERMINAL_ID)
            .load(&mut purse, 10_000, &at("090000"), &mut store)
            .unwrap();
        assert_eq!(load.balance_before_fen, 0);
        assert_eq!(load.balance_after_fen, 10_000);
        assert_eq!(load.online_serial, 0);
        assert_eq!(load.tac_verified, Some(true), "{alg}");
        assert_eq!(load.suspicious, None);
        assert_eq!(load.alg, alg.to_string());
        assert_eq!(
            store.saves, 1,
            "the pending record was written before CREDIT"
        );
        assert!(store.current.is_none(), "and cleared after it");

        let mut pos = Purchase::new(&mut psam);
        let p1 = pos
            .pay(&mut purse, 1_250, &at("120000"), &mut store)
            .unwrap();
        assert_eq!(
            (p1.balance_before_fen, p1.balance_after_fen),
            (10_000, 8_750)
        );
        assert_eq!((p1.offline_serial, p1.terminal_serial), (0, 1));
        assert_eq!(p1.mac2_verified, Some(true), "{alg}");
        assert_eq!(p1.suspicious, None);
        let p2 = pos.pay(&mut purse, 750, &at("120500"), &mut store).unwrap();
        assert_eq!((p2.offline_serial, p2.terminal_serial), (1, 2));
        assert_eq!(p2.balance_after_fen, 8_000);
        assert!(store.current.is_none());

        // The purchase TAC is the card's: the back office can verify it with the host keys.
        let card_ref = CardKeyRef {
            diversifier: purse.identity().diversifier(),
            key_index: 1,
            key_version: p1.key_version,
            alg,
        };
        let input = TacInput::Purchase {
            amount_fen: 1_250,
            terminal_id: TERMINAL_ID,
            terminal_serial: 1,
            when: at("120000"),
        };
        let tac: [u8; 4] = iccard_apdu::hex::decode(p1.tac.as_deref().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        assert!(host.verify_tac(&card_ref, &input, &tac).unwrap());
        let other = TacInput::Purchase {
            amount_fen: 1_251,
            terminal_id: TERMINAL_ID,
            terminal_serial: 1,
            when: at("120000"),
        };
        assert!(!host.verify_tac(&card_ref, &other, &tac).unwrap());

        assert_eq!(read_balance(&mut card).unwrap().balance_fen, 8_000);
        let log = read_log(&mut card).unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(
            (log[0].kind, log[0].amount_fen, log[0].serial),
            ("purchase", 750, 1)
        );
        assert_eq!(log[1].kind, "purchase");
        assert_eq!(log[1].time, "120000");
        assert_eq!(
            (log[2].kind, log[2].amount_fen, log[2].terminal_id),
            ("load", 10_000, TERMINAL_ID)
        );
        assert_eq!(log[2].date, "20260314");
    }
}

#[test]
fn refusals_carry_the_status_word_and_move_no_money() {
    let mut card = user_card("1000000000000001", PurseAlg::TripleDes, 3);
    let mut psam = open_psam(psam_card(TERMINAL_ID, 103));
    let host = host();
    let mut store = MemoryPending::default();
    let mut purse = open(&mut card);
    // Empty purse.
    let e = Purchase::new(&mut psam)
        .pay(&mut purse, 100, &at("100000"), &mut store)
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusWord::INSUFFICIENT_BALANCE));
    assert!(e.to_string().contains("9401 (insufficient balance)"), "{e}");
    assert_eq!(store.saves, 0, "nothing pending before MAC1");
    Recharge::new(&host, TERMINAL_ID)
        .load(&mut purse, 500, &at("100100"), &mut store)
        .unwrap();
    // Above the maximum balance.
    let e = Recharge::new(&host, TERMINAL_ID)
        .load(&mut purse, 1_000_000, &at("100200"), &mut store)
        .unwrap_err();
    assert!(e.status().is_some(), "{e}");
    // The wrong host keys: MAC1 does not verify, nothing is loaded or left pending.
    let wrong = MasterKeyHost::new(
        zeroize::Zeroizing::new([0x55; 16]),
        zeroize::Zeroizing::new([0x66; 16]),
    );
    let e = Recharge::new(&wrong, TERMINAL_ID)
        .load(&mut purse, 100, &at("100300"), &mut store)
        .unwrap_err();
    assert!(matches!(e, TerminalError::Mac1Invalid), "{e}");
    // A PSAM diversifying two levels deep computes a MAC1 this card refuses (9302): the card
    // answered, so nothing stays pending and no money moved.
    let saves = store.saves;
    let e = Purchase::new(&mut psam)
        .with_issuer_factor(Some([0x88, 0x60, 0, 0, 0, 0, 0, 0]))
        .pay(&mut purse, 100, &at("100400"), &mut store)
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusWord::MAC_INVALID), "{e}");
    assert_eq!(store.saves, saves + 1);
    assert!(store.current.is_none());
    // Zero amounts and dates outside the card's validity are refused before any command.
    let e = Purchase::new(&mut psam)
        .pay(&mut purse, 0, &at("100500"), &mut store)
        .unwrap_err();
    assert!(matches!(e, TerminalError::Input(_)));
    let late = TransactionTime::parse("20360101", "000000").unwrap();
    let e = Purchase::new(&mut psam)
        .pay(&mut purse, 100, &late, &mut store)
        .unwrap_err();
    assert!(matches!(e, TerminalError::NotValid { .. }), "{e}");
    assert_eq!(read_balance(&mut card).unwrap().balance_fen, 500);
}

#[test]
fn a_mac2_the_psam_rejects_makes_the_purchase_suspicious_but_recorded() {
    let mut card = user_card("1000000000000002", PurseAlg::TripleDes, 4);
    let mut psam = open_psam(psam_card(TERMINAL_ID, 104));
    let mut store = MemoryPending::default();
    {
        let mut purse = open(&mut card);
        Recharge::new(&host(), TERMINAL_ID)
            .load(&mut purse, 2_000, &at("080000"), &mut store)
            .unwrap();
    }
    // DEBIT's answer is TAC ‖ MAC2 ‖ SW: flip a bit of MAC2 on its way to the terminal.
    let mut flaky = Flaky::new(&mut card, 0x54, Fault::Corrupt(5));
    let mut purse = open(&mut flaky);
    let out = Purchase::new(&mut psam)
        .pay(&mut purse, 300, &at("081500"), &mut store)
        .unwrap();
    assert!(purse.channel().fired);
    assert_eq!(out.mac2_verified, Some(false));
    let why = out.suspicious.as_deref().expect("marked suspicious");
    assert!(why.contains("9302"), "{why}");
    assert_eq!(
        out.balance_after_fen, 1_700,
        "the debit is recorded, not dropped"
    );
    assert_eq!(read_balance(&mut card).unwrap().balance_fen, 1_700);
    assert!(store.current.is_none());
}

#[test]
fn a_tac_that_does_not_verify_makes_the_load_suspicious() {
    let mut card = user_card("1000000000000003", PurseAlg::Sm4, 5);
    let mut store = MemoryPending::default();
    let mut flaky = Flaky::new(&mut card, 0x52, Fault::Corrupt(0));
    let mut purse = open(&mut flaky);
    let out = Recharge::new(&host(), TERMINAL_ID)
        .load(&mut purse, 900, &at("070000"), &mut store)
        .unwrap();
    assert_eq!(out.tac_verified, Some(false));
    assert!(out.suspicious.is_some());
    assert_eq!(read_balance(&mut card).unwrap().balance_fen, 900);
}

#[test]
fn the_pending_file_is_written_durably_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.img");
    let mut file = PendingFile::beside(&image);
    assert_eq!(file.path(), dir.path().join("card.img.pending.json"));
    assert_eq!(file.load().unwrap(), None);
    let mut card = user_card("1000000000000004", PurseAlg::TripleDes, 6);
    let mut flaky = Flaky::new(&mut card, 0x52, Fault::LoseAnswer);
    let mut purse = open(&mut flaky);
    let e = Recharge::new(&host(), TERMINAL_ID)
        .load(&mut purse, 4_200, &at("060000"), &mut file)
        .unwrap_err();
    let TerminalError::AnswerLost { pending, step, .. } = e else {
        panic!("expected a lost answer, got {e}");
    };
    assert_eq!(step, "CREDIT FOR LOAD");
    let on_disk = file.load().unwrap().expect("the record survived");
    assert_eq!(on_disk, *pending);
    assert_eq!(on_disk.amount_fen, 4_200);
    assert_eq!(on_disk.card_number, "1000000000000004");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["card.img.pending.json".to_string()],
        "no temp file left"
    );
    file.clear().unwrap();
    assert_eq!(file.load().unwrap(), None);
    file.clear().unwrap();
    std::fs::write(file.path(), "{not json").unwrap();
    assert!(matches!(
        file.load(),
        Err(TerminalError::PendingStore { .. })
    ));
}

#[test]
fn keys_never_reach_debug_output_or_errors() {
    let host = host();
    let dbg = format!("{host:?}");
    let mut texts = vec![dbg];
    let mut card = user_card("1000000000000005", PurseAlg::TripleDes, 7);
    let mut store = MemoryPending::default();
    let mut purse = open(&mut card);
    let wrong = MasterKeyHost::new(
        zeroize::Zeroizing::new([0x5A; 16]),
        zeroize::Zeroizing::new([0xA5; 16]),
    );
    texts.push(format!("{wrong:?}"));
    let e = Recharge::new(&wrong, TERMINAL_ID)
        .load(&mut purse, 1, &at("050000"), &mut store)
        .unwrap_err();
    texts.push(e.to_string());
    texts.push(format!("{e:?}"));
    for k in iccard_issuer::devkeys::ALL {
        let hex = iccard_apdu::hex::encode(&k.value()[..]);
        for t in &texts {
            assert!(!t.contains(&hex), "{} appears in {t}", k.name);
        }
    }
    for t in &texts {
        assert!(!t.contains("5A5A5A5A") && !t.contains("A5A5A5A5"), "{t}");
    }
}
