//! The local loss list: deltas, gaps, idempotence, age; listed cards and a stale list refused.

use crate::support::*;
use iccard_pos::{
    DeltaOutcome, LossAction, LossList, LossListChange, LossListDelta, PointOfUse, PosConfig,
    PosError,
};
use iccard_terminal::Psam;

fn change(version: i64, serial: &str, action: LossAction) -> LossListChange {
    LossListChange {
        version,
        application_serial: serial.into(),
        action,
    }
}

fn delta(from: i64, to: i64, changes: Vec<LossListChange>) -> LossListDelta {
    LossListDelta {
        from_version: from,
        to_version: to,
        changes,
    }
}

const A: &str = "00003000000000000040";
const B: &str = "00003000000000000041";
const C: &str = "00003000000000000042";

#[test]
fn a_listed_card_is_refused_until_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut pos = pos_in(&dir, 140);
    let mut card = loaded("3000000000000040", 40, 2_000);
    let serial = serial_hex(&mut card);
    assert_eq!(serial, A);
    pos.update_loss_list(
        &delta(0, 1, vec![change(1, &serial, LossAction::Add)]),
        &at("090000"),
    )
    .unwrap();
    let e = pos.sell(&mut card, 100, &at("100000")).unwrap_err();
    match e {
        PosError::ListedCard {
            card_number,
            application_serial,
            list_version,
        } => {
            assert_eq!(card_number, "3000000000000040");
            assert_eq!(application_serial, serial);
            assert_eq!(list_version, 1);
        }
        other => panic!("expected a listed card, got {other}"),
    }
    let e = pos
        .start_metered(&mut card, 10, &at("100001"))
        .err()
        .expect("a metered session is refused too");
    assert!(matches!(e, PosError::ListedCard { .. }), "{e}");
    assert_eq!(balance(&mut card), 2_000);
    assert!(pos.journal().records().unwrap().is_empty());

    pos.update_loss_list(
        &delta(1, 2, vec![change(2, &serial, LossAction::Remove)]),
        &at("110000"),
    )
    .unwrap();
    pos.sell(&mut card, 100, &at("110100")).unwrap();
    assert_eq!(balance(&mut card), 1_900);
}

#[test]
fn a_stale_or_never_updated_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut card = loaded("3000000000000043", 43, 2_000);
    {
        // Never updated.
        let psam = Psam::open(psam_card(TERMINAL_ID, 143)).unwrap();
        let mut pos = PointOfUse::open(psam, db_in(&dir), PosConfig::default()).unwrap();
        let e = pos.sell(&mut card, 100, &at("090000")).unwrap_err();
        assert!(
            matches!(&e, PosError::LossListStale { updated, .. } if updated == "never"),
            "{e}"
        );
    }
    // Updated at 2026-03-14 08:00 (pos_at); the maximum age is a day.
    let mut pos = pos_at(&db_in(&dir), psam_card(TERMINAL_ID, 144));
    assert_eq!(pos.config().max_list_age_secs, 86_400);
    pos.sell(&mut card, 100, &on("20260315", "080000")).unwrap();
    let e = pos
        .sell(&mut card, 100, &on("20260315", "080001"))
        .unwrap_err();
    match e {
        PosError::LossListStale {
            version,
            updated,
            max_age_secs,
        } => {
            assert_eq!(version, 0);
            assert_eq!(updated, "20260314 080000");
            assert_eq!(max_age_secs, 86_400);
        }
        other => panic!("expected a stale list, got {other}"),
    }
    // Across a month end and a clock set back.
    let e = pos
        .sell(&mut card, 100, &on("20260401", "000000"))
        .unwrap_err();
    assert!(matches!(e, PosError::LossListStale { .. }));
    let e = pos
        .sell(&mut card, 100, &on("20260313", "235959"))
        .unwrap_err();
    assert!(
        matches!(e, PosError::LossListStale { .. }),
        "a clock set back is not trusted"
    );
    assert_eq!(balance(&mut card), 1_900);

    // An update makes it fresh again.
    pos.update_loss_list(&delta(0, 0, vec![]), &on("20260401", "000000"))
        .unwrap();
    pos.sell(&mut card, 100, &on("20260401", "120000")).unwrap();
    assert_eq!(balance(&mut card), 1_800);
}

#[test]
fn a_delta_with_a_gap_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut list = LossList::open(db_in(&dir)).unwrap();
    let e = list
        .apply_delta(
            &delta(2, 3, vec![change(3, A, LossAction::Add)]),
            &at("090000"),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            PosError::LossListGap {
                have: 0,
                from: 2,
                to: 3
            }
        ),
        "{e}"
    );
    assert_eq!(list.version().unwrap(), 0);
    assert!(!list.contains(A).unwrap());
    assert_eq!(
        list.updated_at().unwrap(),
        None,
        "a refused delta is no update"
    );
}

#[test]
fn deltas_apply_once_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut list = LossList::open(db_in(&dir)).unwrap();
    let d1 = delta(
        0,
        2,
        vec![
            change(1, A, LossAction::Add),
            change(2, &B.to_lowercase(), LossAction::Add),
        ],
    );
    assert_eq!(
        list.apply_delta(&d1, &at("090000")).unwrap(),
        DeltaOutcome::Applied {
            version: 2,
            changes: 2
        }
    );
    // The same delta again: nothing changes, not even the age.
    assert_eq!(
        list.apply_delta(&d1, &at("100000")).unwrap(),
        DeltaOutcome::AlreadyApplied { version: 2 }
    );
    assert_eq!(list.updated_at().unwrap().unwrap().0, "20260314 090000");
    // An overlapping delta: only the change after version 2 is applied.
    let d2 = delta(
        1,
        4,
        vec![
            change(2, B, LossAction::Add),
            change(3, A, LossAction::Remove),
            change(4, C, LossAction::Add),
        ],
    );
    assert_eq!(
        list.apply_delta(&d2, &at("110000")).unwrap(),
        DeltaOutcome::Applied {
            version: 4,
            changes: 2
        }
    );
    drop(list);
    let list = LossList::open(db_in(&dir)).unwrap();
    assert_eq!(list.version().unwrap(), 4);
    let entries: Vec<String> = list.entries().unwrap().into_iter().collect();
    assert_eq!(
        entries,
        [B.to_string(), C.to_string()],
        "lowercase input stored as uppercase"
    );
    assert!(list.contains(&C.to_lowercase()).unwrap());
    assert!(!list.contains(A).unwrap());
    assert_eq!(list.updated_at().unwrap().unwrap().0, "20260314 110000");
}

#[test]
fn inconsistent_deltas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut list = LossList::open(db_in(&dir)).unwrap();
    for bad in [
        delta(
            0,
            2,
            vec![change(2, A, LossAction::Add), change(1, B, LossAction::Add)],
        ),
        delta(0, 1, vec![change(2, A, LossAction::Add)]),
        delta(3, 2, vec![]),
        delta(0, 1, vec![change(1, "0000", LossAction::Add)]),
        delta(0, 1, vec![change(1, "not hex at all", LossAction::Add)]),
    ] {
        let e = list.apply_delta(&bad, &at("090000")).unwrap_err();
        assert!(matches!(e, PosError::LossListInvalid(_)), "{bad:?}: {e}");
    }
    assert_eq!(list.version().unwrap(), 0);
    assert!(list.entries().unwrap().is_empty());
}

#[test]
fn the_back_offices_delta_json_is_read() {
    // The shape of the office's `LossListDelta` (with the fields the terminal ignores).
    let json = format!(
        r#"{{"from_version":0,"to_version":2,"changes":[
            {{"version":1,"application_serial":"{A}","action":"add","reason":"lost","at_ms":5}},
            {{"version":2,"application_serial":"{A}","action":"remove","reason":"found","at_ms":9}}
        ]}}"#
    );
    let d: LossListDelta = serde_json::from_str(&json).unwrap();
    assert_eq!(d.changes[1].action, LossAction::Remove);
    let dir = tempfile::tempdir().unwrap();
    let mut list = LossList::open(db_in(&dir)).unwrap();
    list.apply_delta(&d, &at("090000")).unwrap();
    assert_eq!(list.version().unwrap(), 2);
    assert!(!list.contains(A).unwrap());
}
