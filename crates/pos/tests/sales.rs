//! Sales: journaled before money moves, completed with the card's proof; refusals, suspicious
//! MAC2, tears resumed on the next contact, crashes resolved after a restart.

use crate::support::*;
use iccard_pos::{Journal, PosError, RecordStatus, Resolution, UploadState};
use iccard_terminal::{Psam, Purchase, PurseCard, TerminalError};

#[test]
fn purchases_are_journaled_with_their_proof() {
    let dir = tempfile::tempdir().unwrap();
    let mut pos = pos_in(&dir, 101);
    let mut card = loaded("3000000000000001", 1, 10_000);
    let first = pos.sell(&mut card, 1_200, &at("100000")).unwrap();
    let second = pos.sell(&mut card, 300, &at("100500")).unwrap();
    assert_eq!(first.balance_after_fen, 8_800);
    assert_eq!(second.balance_after_fen, 8_500);
    assert_eq!(balance(&mut card), 8_500);
    assert!(first.resolved.is_empty());

    let r = &first.record.record;
    assert_eq!(r.status, RecordStatus::Normal);
    assert_eq!(r.terminal_id, TERMINAL_HEX);
    assert_eq!(r.terminal_serial + 1, second.record.record.terminal_serial);
    assert_eq!(r.amount_fen, 1_200);
    assert_eq!(r.balance_before_fen, 10_000);
    assert_eq!(r.card_number, "3000000000000001");
    assert_eq!(r.application_serial, serial_hex(&mut card));
    assert_eq!(r.tx_type, 0x06);
    assert_eq!((r.date.as_str(), r.time.as_str()), ("20260314", "100000"));
    assert_eq!(r.offline_serial + 1, second.record.record.offline_serial);
    for proof in [&r.tac, &r.mac2] {
        let p = proof.as_deref().expect("the card's proof is journaled");
        assert_eq!(p.len(), 8);
        assert!(p.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    assert_ne!(r.tac, second.record.record.tac);
    assert_eq!(first.record.upload, UploadState::Local);

    // Durable: another connection to the file sees both rows, none pending.
    drop(pos);
    let journal = Journal::open(db_in(&dir)).unwrap();
    let rows = journal.records().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0], first.record);
    assert_eq!(rows[1], second.record);
    assert!(journal.pending().unwrap().is_empty());
}

#[test]
fn a_refused_amount_journals_nothing_and_a_refused_debit_is_failed() {
    let dir = tempfile::tempdir().unwrap();
    let mut pos = pos_in(&dir, 102);
    let mut card = loaded("3000000000000002", 2, 1_000);

    // INITIALIZE FOR PURCHASE refuses (9401): no PSAM serial, no row.
    let e = pos.sell(&mut card, 1_001, &at("100000")).unwrap_err();
    assert!(
        matches!(&e, PosError::Terminal(t) if t.status() == Some(iccard_apdu::StatusWord::INSUFFICIENT_BALANCE)),
        "{e}"
    );
    assert!(pos.journal().records().unwrap().is_empty());

    // DEBIT FOR PURCHASE refused (MAC1 altered in transit): the row is failed, no money.
    let mut bad = BadMac1(&mut card, false);
    let e = pos.sell(&mut bad, 400, &at("100100")).unwrap_err();
    assert!(bad.1, "the fault fired");
    assert!(
        matches!(e, PosError::Terminal(TerminalError::Refused { .. })),
        "{e}"
    );
    let rows = pos.journal().records().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].record.status, RecordStatus::Failed);
    assert!(rows[0].record.tac.is_none());
    assert!(rows[0].note.as_deref().unwrap().contains("refused"));
    assert_eq!(balance(&mut card), 1_000);

    // The next sale works and uses the next PSAM serial.
    let sale = pos.sell(&mut card, 400, &at("100200")).unwrap();
    assert_eq!(
        sale.record.record.terminal_serial,
        rows[0].record.terminal_serial + 1
    );
    assert_eq!(balance(&mut card), 600);
    assert_eq!(journaled_debits(&pos), 400);
}

#[test]
fn a_mac2_the_psam_rejects_makes_a_suspicious_record_that_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut pos = pos_in(&dir, 103);
    let mut card = loaded("3000000000000003", 3, 2_000);
    // Byte 4 of the answer is MAC2's first byte (answer: TAC ‖ MAC2).
    let mut flaky = Flaky::new(&mut card, 0x54, Fault::Corrupt(4));
    let sale = pos.sell(&mut flaky, 700, &at("110000")).unwrap();
    assert!(flaky.fired);
    assert_eq!(sale.record.record.status, RecordStatus::Suspicious);
    assert!(sale.record.note.as_deref().unwrap().contains("MAC2"));
    assert!(sale.record.record.tac.is_some());
    assert_eq!(balance(&mut card), 1_300, "the card was debited");
    assert_eq!(journaled_debits(&pos), 700, "and the journal counts it");
}

fn answer_lost(e: PosError) {
    assert!(
        matches!(e, PosError::Terminal(TerminalError::AnswerLost { .. })),
        "expected a lost answer, got {e}"
    );
}

#[test]
fn a_torn_debit_is_finished_exactly_once_on_the_next_contact() {
    for (i, fault) in [Fault::LoseAnswer, Fault::LoseCommand]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let mut pos = pos_in(&dir, 110 + i as u64);
        let mut card = loaded("3000000000000010", 10 + i as u64, 5_000);
        let mut flaky = Flaky::new(&mut card, 0x54, fault);
        answer_lost(pos.sell(&mut flaky, 1_200, &at("120000")).unwrap_err());
        assert!(flaky.fired);
        let pending = pos.journal().pending().unwrap();
        assert_eq!(pending.len(), 1, "{fault:?}");
        assert_eq!(pending[0].amount_fen, 1_200);
        let torn_serial = pending[0].terminal_serial.unwrap();
        let debited = if fault == Fault::LoseAnswer { 1_200 } else { 0 };
        assert_eq!(balance(&mut card), 5_000 - debited, "{fault:?}");

        // The next contact: a new sale settles the torn one first.
        let sale = pos.sell(&mut card, 500, &at("121000")).unwrap();
        assert_eq!(sale.resolved.len(), 1);
        match (&sale.resolved[0], fault) {
            (Resolution::CompletedEarlier(r), Fault::LoseAnswer) => {
                assert_eq!(r.record.terminal_serial, torn_serial);
                assert_eq!(r.record.status, RecordStatus::Recovered);
                assert!(r.record.tac.is_some(), "the proof was fetched");
            }
            (Resolution::Repeated { superseded, record }, Fault::LoseCommand) => {
                assert_eq!(superseded.record.terminal_serial, torn_serial);
                assert_eq!(superseded.record.status, RecordStatus::Failed);
                assert!(superseded.note.as_deref().unwrap().contains("repeated as"));
                assert_eq!(record.record.status, RecordStatus::Recovered);
                assert_eq!(record.record.terminal_serial, torn_serial + 1);
                assert_eq!(record.record.amount_fen, 1_200);
                assert_eq!(
                    (record.record.date.as_str(), record.record.time.as_str()),
                    ("20260314", "120000"),
                    "the repeat is the same transaction"
                );
            }
            (other, _) => panic!("{fault:?}: unexpected {other:?}"),
        }
        assert_eq!(sale.record.record.status, RecordStatus::Normal);
        assert_eq!(
            balance(&mut card),
            5_000 - 1_200 - 500,
            "{fault:?}: debited once"
        );
        assert_eq!(journaled_debits(&pos), 1_700, "{fault:?}");
        assert!(pos.journal().pending().unwrap().is_empty());

        // Nothing left to settle: another contact changes nothing.
        let mut purse = PurseCard::open(&mut card).unwrap();
        assert!(pos.resolve(&mut purse).unwrap().is_empty());
        assert_eq!(balance(&mut card), 3_300);
    }
}

#[test]
fn a_pending_row_of_another_card_does_not_block_sales() {
    let dir = tempfile::tempdir().unwrap();
    let mut pos = pos_in(&dir, 120);
    let mut torn = loaded("3000000000000020", 20, 3_000);
    let mut other = loaded("3000000000000021", 21, 3_000);
    let mut flaky = Flaky::new(&mut torn, 0x54, Fault::LoseAnswer);
    answer_lost(pos.sell(&mut flaky, 100, &at("130000")).unwrap_err());
    let sale = pos.sell(&mut other, 200, &at("130100")).unwrap();
    assert!(sale.resolved.is_empty());
    assert_eq!(
        pos.journal().pending().unwrap().len(),
        1,
        "still waiting for its card"
    );
    let mut purse = PurseCard::open(&mut torn).unwrap();
    let res = pos.resolve(&mut purse).unwrap();
    assert!(
        matches!(&res[..], [Resolution::CompletedEarlier(_)]),
        "{res:?}"
    );
    assert_eq!(balance(&mut torn), 2_900);
    assert_eq!(balance(&mut other), 2_800);
}

#[test]
fn a_crash_after_the_cards_answer_is_resolved_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let mut psam_chip = psam_card(TERMINAL_ID, 130);
    let mut card = loaded("3000000000000030", 30, 4_000);
    // The process ran the purchase with the journal as its pending store and died before
    // writing the outcome: the card was debited, the row is pending.
    let paid = {
        let mut journal = Journal::open(&db).unwrap();
        let mut psam = Psam::open(&mut psam_chip).unwrap();
        let mut purse = PurseCard::open(&mut card).unwrap();
        Purchase::new(&mut psam)
            .pay(&mut purse, 900, &at("140000"), &mut journal)
            .unwrap()
    };
    assert_eq!(balance(&mut card), 3_100);

    // Restart: the pending row is read back from the file.
    let mut pos = pos_at(&db, &mut psam_chip);
    let pending = pos.journal().pending().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].terminal_serial, Some(paid.terminal_serial));
    assert_eq!(pending[0].amount_fen, 900);
    let mut purse = PurseCard::open(&mut card).unwrap();
    let res = pos.resolve(&mut purse).unwrap();
    let [Resolution::CompletedEarlier(r)] = &res[..] else {
        panic!("expected a completed purchase, got {res:?}");
    };
    assert_eq!(r.record.status, RecordStatus::Recovered);
    assert_eq!(
        r.record.tac, paid.tac,
        "the card's proof is the one it answered"
    );
    assert_eq!(r.record.mac2, paid.mac2);
    assert_eq!(balance(&mut card), 3_100, "debited once");
    assert!(pos.journal().pending().unwrap().is_empty());
}

#[test]
fn a_crash_with_the_answer_lost_is_resolved_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let mut psam_chip = psam_card(TERMINAL_ID, 131);
    let mut card = loaded("3000000000000031", 31, 4_000);
    {
        let mut pos = pos_at(&db, &mut psam_chip);
        let mut flaky = Flaky::new(&mut card, 0x54, Fault::LoseCommand);
        answer_lost(pos.sell(&mut flaky, 650, &at("150000")).unwrap_err());
    } // the process dies here
    assert_eq!(
        balance(&mut card),
        4_000,
        "the command never reached the card"
    );
    let mut pos = pos_at(&db, &mut psam_chip);
    assert_eq!(pos.journal().pending().unwrap().len(), 1);
    let mut purse = PurseCard::open(&mut card).unwrap();
    let res = pos.resolve(&mut purse).unwrap();
    assert!(matches!(&res[..], [Resolution::Repeated { .. }]), "{res:?}");
    assert_eq!(balance(&mut card), 3_350);
    assert_eq!(journaled_debits(&pos), 650);
    let statuses: Vec<RecordStatus> = pos
        .journal()
        .records()
        .unwrap()
        .iter()
        .map(|r| r.record.status)
        .collect();
    assert_eq!(statuses, [RecordStatus::Failed, RecordStatus::Recovered]);
}

#[test]
fn the_database_is_wal_and_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    drop(Journal::open(&db).unwrap());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, iccard_pos::SCHEMA_VERSION);
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    let e = Journal::open(&db).unwrap_err();
    assert!(matches!(e, PosError::Corrupt { .. }), "{e}");
}

/// A card channel that, when DEBIT FOR PURCHASE goes out, looks into the journal file through
/// another connection and notes the pending rows it finds there.
struct Watching<'a, C> {
    inner: C,
    db: &'a std::path::Path,
    seen: Vec<Vec<u32>>,
}

impl<C: iccard_link::CardChannel> iccard_link::CardChannel for Watching<'_, C> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, iccard_link::LinkError> {
        if apdu.len() > 1 && apdu[0] == 0x80 && apdu[1] == 0x54 {
            let journal = Journal::open(self.db).unwrap();
            self.seen.push(
                journal
                    .pending()
                    .unwrap()
                    .iter()
                    .map(|p| p.terminal_serial.unwrap())
                    .collect(),
            );
        }
        self.inner.transmit(apdu)
    }
    fn reset(&mut self) -> Result<Vec<u8>, iccard_link::LinkError> {
        self.inner.reset()
    }
}

#[test]
fn the_row_is_durable_before_the_debit_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let mut pos = pos_at(&db, psam_card(TERMINAL_ID, 135));
    let mut card = loaded("3000000000000035", 35, 3_000);
    let mut watching = Watching {
        inner: &mut card,
        db: &db,
        seen: Vec::new(),
    };
    let a = pos.sell(&mut watching, 100, &at("143000")).unwrap();
    let b = pos.sell(&mut watching, 200, &at("143100")).unwrap();
    assert_eq!(
        watching.seen,
        [
            vec![a.record.record.terminal_serial],
            vec![b.record.record.terminal_serial]
        ],
        "each purchase was pending in the file when its debit left, and only it"
    );
}

#[test]
fn a_repeat_the_card_can_no_longer_pay_leaves_the_torn_row_failed() {
    let dir = tempfile::tempdir().unwrap();
    let mut pos = pos_in(&dir, 136);
    let mut card = loaded("3000000000000036", 36, 1_500);
    let mut flaky = Flaky::new(&mut card, 0x54, Fault::LoseCommand);
    answer_lost(pos.sell(&mut flaky, 1_200, &at("144000")).unwrap_err());
    // The card is used at another terminal meanwhile: its serial moves on, its balance drops.
    let other_dir = tempfile::tempdir().unwrap();
    let mut elsewhere = pos_in(&other_dir, 137);
    elsewhere.sell(&mut card, 1_000, &at("144500")).unwrap();
    // Back here: the card's log shows another purchase under the torn serial, so ours never
    // ran; the repeat is refused (9401); no money moved for it.
    let mut purse = PurseCard::open(&mut card).unwrap();
    let res = pos.resolve(&mut purse).unwrap();
    let [Resolution::Failed(r)] = &res[..] else {
        panic!("expected a failed resolution, got {res:?}");
    };
    assert_eq!(r.record.status, RecordStatus::Failed);
    assert!(
        r.note.as_deref().unwrap().contains("repeat was refused"),
        "{:?}",
        r.note
    );
    assert_eq!(balance(&mut card), 500);
    assert_eq!(journaled_debits(&pos), 0);
    assert!(pos.journal().pending().unwrap().is_empty());
}
