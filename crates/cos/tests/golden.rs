//! The golden card image `tests/golden/card-v1.img`: the reference card manufactured and
//! personalized (fixed chip serial, seeded randomness) by the first layout of the card OS. It
//! must keep loading, mounting and answering `tests/golden/card-v1.apdu` exactly as a card
//! personalized by this build does: that pins the file-system and key-record layout on top of
//! the NVM format (pinned by `golden/nvm-v1.img`). `ICCARD_BLESS=1` regenerates it.

use crate::transcript::{Runner, Transcript};
use iccard_cos::fuzzing;
use iccard_cos::nvm::{decode_image, encode_image, SimEeprom};
use iccard_cos::{Card, CardState, SeededRandom};
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn transcript() -> Transcript {
    let path = golden_dir().join("card-v1.apdu");
    let text = std::fs::read_to_string(&path).unwrap();
    Transcript::parse("golden/card-v1.apdu", &text).unwrap()
}

fn run(eeprom: SimEeprom, t: &Transcript) {
    let mut runner = Runner::new(eeprom);
    for step in &t.steps {
        if let Err(e) = runner.step(step) {
            panic!("{}:{}: {e}", t.name, step.line);
        }
    }
}

fn load_golden() -> SimEeprom {
    let path = golden_dir().join("card-v1.img");
    if std::env::var("ICCARD_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, encode_image(&fuzzing::personalized_eeprom())).unwrap();
    }
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (ICCARD_BLESS=1 regenerates it)", path.display()));
    decode_image(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn golden_card_v1_loads_mounts_and_answers_its_transcript() {
    let golden = load_golden();
    // It mounts with nothing to repair, and reads as the personalized reference card.
    let card = Card::power_on(golden.clone(), SeededRandom::new(1)).unwrap();
    assert_eq!(card.nvm().stats().physical_writes, 0);
    assert_eq!(card.state(), CardState::Secured);
    assert_eq!(card.header().chip.chip_serial, fuzzing::CHIP_SERIAL);
    let old = card.info().unwrap();
    let new = fuzzing::personalized_card(1).info().unwrap();
    let files = |i: &iccard_cos::info::CardInfo| {
        i.files
            .iter()
            .map(|f| {
                format!(
                    "{} {} {:?} {:?} {} {:?} {:?} {:?}",
                    f.path, f.kind, f.sfi, f.name, f.size, f.records, f.access, f.keys
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(files(&old), files(&new), "the golden card's files and keys");
    assert_eq!(old.files.len(), 15);
    // The same answers, byte for byte, from the old image and from a new card.
    let t = transcript();
    run(golden, &t);
    run(fuzzing::personalized_eeprom(), &t);
}
