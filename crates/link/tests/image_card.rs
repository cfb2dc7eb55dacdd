//! Card image files: atomic saves, corrupt images refused, the card persisted per command.

use iccard_cos::nvm::{decode_image, encode_image, SimEeprom};
use iccard_cos::{Card, ChipData, Manufacture, SeededRandom};
use iccard_link::{load_image, save_image, CardChannel, ImageCard, ImageFileError};
use zeroize::Zeroizing;

fn blank(path: &std::path::Path) {
    let spec = Manufacture {
        chip: ChipData {
            chip_maker: 1,
            chip_serial: [1, 2, 3, 4, 5, 6, 7, 8],
            production_date: [0x20, 0x26, 0x11, 0x25],
            batch: 7,
            os_version: 0x0100,
        },
        transport_key: Zeroizing::new([0x42; 16]),
        transport_key_version: 1,
        attack_threshold: 10,
    };
    let card = Card::manufacture(
        SimEeprom::new(8 * 1024, 100_000).unwrap(),
        SeededRandom::new(1),
        &spec,
    )
    .unwrap();
    save_image(path, card.nvm().eeprom()).unwrap();
}

#[test]
fn save_and_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.img");
    blank(&path);
    let e = load_image(&path).unwrap();
    assert_eq!(encode_image(&e), std::fs::read(&path).unwrap());
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn truncated_and_corrupt_images_are_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.img");
    blank(&path);
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..1000]).unwrap();
    let err = ImageCard::open(&path)
        .err()
        .expect("truncated image accepted");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap().len(),
        1000,
        "a refused image must not be rewritten"
    );
    let mut bad = good.clone();
    bad[500] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    match load_image(&path) {
        Err(ImageFileError::Invalid { .. }) => {}
        other => panic!("corrupt image: {other:?}"),
    }
    assert!(decode_image(&good).is_ok());
}

#[test]
fn a_committing_command_is_on_disk_before_its_answer_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.img");
    blank(&path);
    let before = std::fs::read(&path).unwrap();
    let mut card = ImageCard::open(&path).unwrap();
    // GET DATA changes nothing: the file stays byte for byte.
    let r = card.transmit(&[0x80, 0xCA, 0x9F, 0x7F, 0x00]).unwrap();
    assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // A failed EXTERNAL AUTHENTICATE commits its retry counter: the file changes at once.
    card.transmit(&[0x00, 0x84, 0x00, 0x00, 0x04]).unwrap();
    let r = card
        .transmit(&[0x00, 0x82, 0x00, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    assert_eq!(&r[r.len() - 2..], &[0x63, 0xCE]);
    let after = std::fs::read(&path).unwrap();
    assert_ne!(after, before);
    let reopened = ImageCard::open(&path).unwrap();
    assert_eq!(reopened.card().header().attack_counter, 1);
}
