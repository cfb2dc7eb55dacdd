//! The upload: batches chained by SHA-256 (tampering, gaps and reordering show), resent
//! unchanged until answered, answered per record; the batch file for terminals never online.

use crate::support::*;
use iccard_pos::record::{sha256_hex, RecordError};
use iccard_pos::{
    read_batch_file, verify_chain, Batch, BatchResults, PointOfUse, PosError, RecordResult,
    RecordStatus, ResultCode, UploadState, GENESIS_HASH,
};

/// A point of use with `n` sales on one card (and one torn, still pending).
fn with_sales(dir: &tempfile::TempDir, seed: u64, n: u32) -> PointOfUse<MemCard> {
    let mut pos = pos_in(dir, seed);
    let mut card = loaded("3000000000000060", seed, 100_000);
    for i in 0..n {
        pos.sell(&mut card, 100 + i, &at(&format!("1800{:02}", i)))
            .unwrap();
    }
    let mut torn = loaded("3000000000000061", seed + 1000, 1_000);
    let mut flaky = Flaky::new(&mut torn, 0x54, Fault::LoseAnswer);
    pos.sell(&mut flaky, 50, &at("185900")).unwrap_err();
    pos
}

fn all_ok(b: &Batch) -> Vec<RecordResult> {
    b.records
        .iter()
        .map(|r| RecordResult {
            terminal_serial: r.terminal_serial,
            code: ResultCode::Ok,
        })
        .collect()
}

fn chain(pos: &mut PointOfUse<MemCard>) -> Vec<Batch> {
    let mut out = Vec::new();
    while let Some(b) = pos.journal_mut().next_batch(&TERMINAL_ID, 2).unwrap() {
        // Unanswered: the same batch again, byte for byte.
        let again = pos
            .journal_mut()
            .next_batch(&TERMINAL_ID, 2)
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::to_string(&again).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        let summary = pos.journal_mut().mark_uploaded(&b, &all_ok(&b)).unwrap();
        assert_eq!(summary.accepted, b.records.len());
        out.push(b);
    }
    out
}

#[test]
fn batches_chain_and_a_tampered_batch_breaks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut pos = with_sales(&dir, 160, 5);
    let batches = chain(&mut pos);
    assert_eq!(
        batches.iter().map(|b| b.records.len()).collect::<Vec<_>>(),
        [2, 2, 1],
        "the pending record waits"
    );
    assert_eq!(batches[0].sequence, 1);
    assert_eq!(batches[0].previous_hash, GENESIS_HASH);
    assert_eq!(batches[1].previous_hash, batches[0].hash);
    assert_eq!(batches[2].previous_hash, batches[1].hash);
    assert_eq!(batches[0].terminal_id, TERMINAL_HEX);
    verify_chain(&batches, None).unwrap();
    verify_chain(&batches[1..], Some((1, &batches[0].hash))).unwrap();
    let serials: Vec<u32> = batches
        .iter()
        .flat_map(|b| b.records.iter().map(|r| r.terminal_serial))
        .collect();
    assert_eq!(serials, [1, 2, 3, 4, 5]);

    // An altered amount: the batch's own hash fails.
    let mut forged = batches.clone();
    forged[1].records[0].amount_fen += 1;
    assert_eq!(
        verify_chain(&forged, None).unwrap_err(),
        RecordError::HashMismatch { sequence: 2 }
    );
    // Re-hashed by the forger: the next batch's link fails.
    forged[1].hash = forged[1].compute_hash().unwrap();
    assert!(matches!(
        verify_chain(&forged, None).unwrap_err(),
        RecordError::Chain { sequence: 3, .. }
    ));
    // A missing batch, a reordering, a repeat, a wrong anchor.
    let gap = [batches[0].clone(), batches[2].clone()];
    assert!(matches!(
        verify_chain(&gap, None),
        Err(RecordError::Chain { sequence: 3, .. })
    ));
    let swapped = [batches[1].clone(), batches[0].clone()];
    assert!(verify_chain(&swapped, None).is_err());
    let repeated = [batches[0].clone(), batches[0].clone()];
    assert!(verify_chain(&repeated, None).is_err());
    assert!(verify_chain(&batches[1..], Some((1, GENESIS_HASH))).is_err());
    assert!(verify_chain(&batches[1..], None).is_err());

    // Every answered record is acknowledged with its code; the pending one is local.
    let rows = pos.journal().records().unwrap();
    for r in &rows {
        if r.record.status == RecordStatus::Pending {
            assert_eq!(r.upload, UploadState::Local);
            assert_eq!(r.result, None);
        } else {
            assert_eq!(r.upload, UploadState::Acknowledged);
            assert_eq!(r.result, Some(ResultCode::Ok));
        }
    }
    assert_eq!(
        pos.journal().last_batch(&TERMINAL_ID).unwrap(),
        Some((3, batches[2].hash.clone()))
    );
}

#[test]
fn answers_must_fit_the_batch_and_are_kept_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut pos = with_sales(&dir, 170, 3);
    let b = pos
        .journal_mut()
        .next_batch(&TERMINAL_ID, 10)
        .unwrap()
        .unwrap();
    assert_eq!(b.records.len(), 3);
    let j = pos.journal_mut();
    // Missing a record, a stranger, twice the same, another batch's hash.
    let mut short = all_ok(&b);
    short.pop();
    assert!(matches!(
        j.mark_uploaded(&b, &short),
        Err(PosError::Results(_))
    ));
    let mut stranger = all_ok(&b);
    stranger[0].terminal_serial = 99;
    assert!(matches!(
        j.mark_uploaded(&b, &stranger),
        Err(PosError::Results(_))
    ));
    let mut twice = all_ok(&b);
    twice[1].terminal_serial = twice[0].terminal_serial;
    assert!(matches!(
        j.mark_uploaded(&b, &twice),
        Err(PosError::Results(_))
    ));
    let mut other = b.clone();
    other.hash = GENESIS_HASH.into();
    assert!(matches!(
        j.mark_uploaded(&other, &all_ok(&b)),
        Err(PosError::Results(_))
    ));
    assert!(j
        .records()
        .unwrap()
        .iter()
        .filter(|r| r.record.status != RecordStatus::Pending)
        .all(|r| r.upload == UploadState::Batched));

    let mut answer = all_ok(&b);
    answer[1].code = ResultCode::TacInvalid;
    answer[2].code = ResultCode::Exists;
    let summary = j.mark_uploaded(&b, &answer).unwrap();
    assert_eq!(summary.accepted, 2);
    assert_eq!(
        summary.rejected,
        [(answer[1].terminal_serial, ResultCode::TacInvalid)]
    );
    // The same answer again is harmless; a different one is refused.
    assert_eq!(j.mark_uploaded(&b, &answer).unwrap(), summary);
    assert!(j.mark_uploaded(&b, &all_ok(&b)).is_err());
    let rec = j
        .record(&TERMINAL_ID, answer[1].terminal_serial)
        .unwrap()
        .unwrap();
    assert_eq!(rec.result, Some(ResultCode::TacInvalid));
    assert_eq!(rec.upload, UploadState::Acknowledged);
    assert_eq!(rec.batch_sequence, Some(1));
    assert_eq!(
        j.next_batch(&TERMINAL_ID, 10).unwrap(),
        None,
        "nothing left but the pending one"
    );
}

#[test]
fn the_export_file_round_trips_and_shows_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let mut pos = with_sales(&dir, 180, 5);
    // One batch answered online first: the file continues the chain after it.
    let first = pos
        .journal_mut()
        .next_batch(&TERMINAL_ID, 2)
        .unwrap()
        .unwrap();
    pos.journal_mut()
        .mark_uploaded(&first, &all_ok(&first))
        .unwrap();
    let path = dir.path().join("batches.json");
    let file = pos
        .journal_mut()
        .export_batch_file(&TERMINAL_ID, 2, &path)
        .unwrap();
    assert_eq!(file.terminal_id, TERMINAL_HEX);
    assert_eq!(
        file.batches
            .iter()
            .map(|b| (b.sequence, b.records.len()))
            .collect::<Vec<_>>(),
        [(2, 2), (3, 1)]
    );
    let read = read_batch_file(&path).unwrap();
    assert_eq!(read, file);
    verify_chain(&read.batches, Some((1, &first.hash))).unwrap();
    // Exporting again writes the same batches (nothing new to seal).
    let again = pos
        .journal_mut()
        .export_batch_file(&TERMINAL_ID, 2, &path)
        .unwrap();
    assert_eq!(again, file);

    // An amount changed in the file is caught on reading.
    let text = std::fs::read_to_string(&path).unwrap();
    let amount = format!("\"amount_fen\": {}", file.batches[0].records[0].amount_fen);
    assert!(text.contains(&amount), "{text}");
    std::fs::write(&path, text.replacen(&amount, "\"amount_fen\": 1", 1)).unwrap();
    let e = read_batch_file(&path).unwrap_err();
    assert!(
        matches!(
            e,
            PosError::Record(RecordError::HashMismatch { sequence: 2 })
        ),
        "{e}"
    );
    // The answers come back by hand, as JSON, without their batches.
    let mut wrong = BatchResults {
        terminal_id: TERMINAL_HEX.into(),
        sequence: 2,
        hash: file.batches[1].hash.clone(),
        results: all_ok(&file.batches[0]),
    };
    assert!(matches!(
        pos.journal_mut().mark_answered(&wrong),
        Err(PosError::Results(_))
    ));
    wrong.sequence = 9;
    assert!(matches!(
        pos.journal_mut().mark_answered(&wrong),
        Err(PosError::Results(_))
    ));
    for b in &file.batches {
        let answer = BatchResults {
            terminal_id: b.terminal_id.clone(),
            sequence: b.sequence,
            hash: b.hash.clone(),
            results: all_ok(b),
        };
        let json = serde_json::to_string(&answer).unwrap();
        let back: BatchResults = serde_json::from_str(&json).unwrap();
        let summary = pos.journal_mut().mark_answered(&back).unwrap();
        assert_eq!(summary.accepted, b.records.len());
    }
    assert!(pos.journal().open_batches(&TERMINAL_ID).unwrap().is_empty());
}

#[test]
fn the_canonical_encoding_is_the_documented_one() {
    // SHA-256("abc"), FIPS 180-2 appendix B.1.
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut pos = with_sales(&dir, 190, 1);
    let b = pos
        .journal_mut()
        .next_batch(&TERMINAL_ID, 5)
        .unwrap()
        .unwrap();
    let r = &b.records[0];
    let expected = format!(
        "iccard-pos-batch 1\nterminal_id 123456789001\nsequence 1\nprevious_hash {GENESIS_HASH}\n\
         records 1\nrecord 1|00003000000000000060|3000000000000060|{}|100|6|20260314|180000|\
         100000|{}|0|{}|{}|normal\n",
        r.offline_serial,
        r.key_version,
        r.tac.as_deref().unwrap(),
        r.mac2.as_deref().unwrap()
    );
    assert_eq!(b.canonical().unwrap(), expected);
    assert_eq!(b.hash, sha256_hex(expected.as_bytes()));
    // A separator inside a field cannot be encoded ambiguously.
    let mut bad = b.clone();
    bad.records[0].card_number = "1|2".into();
    assert!(matches!(
        bad.canonical(),
        Err(RecordError::Unencodable {
            field: "card_number",
            ..
        })
    ));
}

#[test]
fn result_codes_have_their_names_and_precedence() {
    let names: Vec<String> = ResultCode::ALL
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "\"ok\"",
            "\"exists\"",
            "\"exists_with_different_content\"",
            "\"tac_invalid\"",
            "\"unknown_card\"",
            "\"listed_card\"",
            "\"malformed\""
        ]
    );
    for c in ResultCode::ALL {
        assert_eq!(ResultCode::parse(c.as_str()), Some(c));
        assert_eq!(
            serde_json::from_str::<ResultCode>(&serde_json::to_string(&c).unwrap()).unwrap(),
            c
        );
    }
    assert_eq!(
        ResultCode::first_of([
            ResultCode::Malformed,
            ResultCode::TacInvalid,
            ResultCode::ListedCard
        ]),
        Some(ResultCode::TacInvalid)
    );
    assert_eq!(
        ResultCode::first_of([
            ResultCode::UnknownCard,
            ResultCode::ExistsWithDifferentContent
        ]),
        Some(ResultCode::ExistsWithDifferentContent)
    );
    assert!(ResultCode::Exists.accepted() && !ResultCode::ListedCard.accepted());
    let status = serde_json::to_string(&RecordStatus::Suspicious).unwrap();
    assert_eq!(status, "\"suspicious\"");
}
