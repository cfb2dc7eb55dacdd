//! Metered use: one purchase of the tariff per unit, each journaled, stopping when the balance
//! does not cover the next unit.

use crate::support::*;
use iccard_pos::{RecordStatus, Stop, Tick};

#[test]
fn a_metered_session_stops_when_the_balance_does_not_cover_the_next_unit() {
    let dir = tempfile::tempdir().unwrap();
    let mut pos = pos_in(&dir, 150);
    let mut card = loaded("3000000000000050", 50, 1_000);
    let mut session = pos.start_metered(&mut card, 300, &at("160000")).unwrap();
    let mut afters = Vec::new();
    for (i, t) in ["160000", "160100", "160200"].into_iter().enumerate() {
        match session.tick(&at(t)).unwrap() {
            Tick::Charged {
                record,
                balance_after_fen,
                next_covered,
            } => {
                assert_eq!(record.record.amount_fen, 300);
                assert_eq!(record.record.status, RecordStatus::Normal);
                assert_eq!(record.record.time, t);
                assert_eq!(next_covered, i < 2, "unit {i}");
                afters.push(balance_after_fen);
            }
            other => panic!("unit {i}: {other:?}"),
        }
    }
    assert_eq!(afters, [700, 400, 100]);
    assert_eq!(
        session.stopped(),
        Some(&Stop::InsufficientBalance { balance_fen: 100 })
    );
    assert_eq!(
        session.tick(&at("160300")).unwrap(),
        Tick::Stopped(Stop::InsufficientBalance { balance_fen: 100 })
    );
    let summary = session.finish();
    assert_eq!(summary.units.len(), 3);
    assert_eq!(summary.total_fen, 900);
    assert_eq!(balance(&mut card), 100);

    // Each unit is its own journal row: consecutive PSAM and card serials.
    let rows = pos.journal().records().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows, summary.units);
    for w in rows.windows(2) {
        assert_eq!(w[0].record.terminal_serial + 1, w[1].record.terminal_serial);
        assert_eq!(w[0].record.offline_serial + 1, w[1].record.offline_serial);
        assert_ne!(w[0].record.tac, w[1].record.tac);
    }
    assert_eq!(journaled_debits(&pos), 900);
}

#[test]
fn a_balance_below_the_tariff_charges_nothing_and_an_exact_one_is_used_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut pos = pos_in(&dir, 151);
    let mut poor = loaded("3000000000000051", 51, 250);
    let mut session = pos.start_metered(&mut poor, 300, &at("170000")).unwrap();
    assert_eq!(
        session.tick(&at("170000")).unwrap(),
        Tick::Stopped(Stop::InsufficientBalance { balance_fen: 250 })
    );
    assert_eq!(session.finish().total_fen, 0);
    assert!(pos.journal().records().unwrap().is_empty());

    let mut exact = loaded("3000000000000052", 52, 600);
    let mut session = pos.start_metered(&mut exact, 300, &at("170100")).unwrap();
    assert!(matches!(
        session.tick(&at("170100")).unwrap(),
        Tick::Charged {
            next_covered: true,
            balance_after_fen: 300,
            ..
        }
    ));
    assert!(matches!(
        session.tick(&at("170200")).unwrap(),
        Tick::Charged {
            next_covered: false,
            balance_after_fen: 0,
            ..
        }
    ));
    assert!(matches!(
        session.tick(&at("170300")).unwrap(),
        Tick::Stopped(_)
    ));
    assert_eq!(session.finish().units.len(), 2);
    assert_eq!(balance(&mut exact), 0);
    assert!(
        pos.start_metered(&mut exact, 0, &at("170400")).is_err(),
        "a zero tariff"
    );
}
