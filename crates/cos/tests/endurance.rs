//! EEPROM endurance seen through the card: a page past its write cycles fails like real
//! EEPROM; commands that would write it answer 6581 and nothing else is corrupted.

use iccard_cos::nvm::{SimEeprom, PAGE_SIZE};
use iccard_cos::{Card, ChipData, Manufacture, SeededRandom};
use iccard_crypto::{ecb_encrypt, Cipher};
use zeroize::Zeroizing;

const TRANSPORT: [u8; 16] = [0x5A; 16];
const ENDURANCE: u32 = 1_000;

fn sw(r: &[u8]) -> u16 {
    u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]])
}

fn send(card: &mut Card<SimEeprom, SeededRandom>, hex: &str) -> Vec<u8> {
    card.process(&iccard_apdu::hex::decode(hex).unwrap())
}

/// A blank card, authenticated with its transport key at the MF, with two 64-byte EFs.
fn card_with_two_files() -> Card<SimEeprom, SeededRandom> {
    let spec = Manufacture {
        chip: ChipData {
            chip_maker: 0x4943,
            chip_serial: [9; 8],
            production_date: [0x20, 0x26, 0x11, 0x25],
            batch: 1,
            os_version: 0x0100,
        },
        transport_key: Zeroizing::new(TRANSPORT),
        transport_key_version: 1,
        attack_threshold: 0,
    };
    let eeprom = SimEeprom::new(8 * 1024, ENDURANCE).unwrap();
    let mut card = Card::manufacture(eeprom, SeededRandom::new(7), &spec).unwrap();
    let challenge = send(&mut card, "0084000004");
    assert_eq!(sw(&challenge), 0x9000);
    let mut block = [0u8; 8];
    block[..4].copy_from_slice(&challenge[..4]);
    let cryptogram = ecb_encrypt(Cipher::TripleDes, &TRANSPORT, &block).unwrap();
    let auth = format!("0082000008{}", iccard_apdu::hex::encode(&cryptogram));
    assert_eq!(sw(&send(&mut card, &auth)), 0x9000);
    // Two transparent EFs of 64 bytes, SFI 1 and 2, free access.
    for (fid, sfi) in [("0101", 0x08), ("0102", 0x10)] {
        let inner =
            format!("820101 8302{fid} 80020040 8801{sfi:02X} 8605F0F0F0F000").replace(' ', "");
        let fcp = format!("62{:02X}{inner}", inner.len() / 2);
        assert_eq!(
            sw(&send(
                &mut card,
                &format!("80E00000{:02X}{fcp}", fcp.len() / 2)
            )),
            0x9000,
            "create {fid}"
        );
    }
    card
}

fn body_page(card: &Card<SimEeprom, SeededRandom>, fid: u16) -> usize {
    let f = card
        .files()
        .unwrap()
        .into_iter()
        .find(|f| f.fid == fid)
        .unwrap();
    (card.nvm().layout().user_start + f.body as usize) / PAGE_SIZE
}

#[test]
fn a_worn_page_fails_with_6581_and_corrupts_nothing() {
    let mut card = card_with_two_files();
    assert_eq!(sw(&send(&mut card, "00D6810004AABBCCDD")), 0x9000);
    assert_eq!(
        sw(&send(
            &mut card,
            "00D6820004 11223344".replace(' ', "").as_str()
        )),
        0x9000
    );
    let page1 = body_page(&card, 0x0101);
    let page2 = body_page(&card, 0x0102);
    assert_ne!(
        page1, page2,
        "the two bodies must sit on different pages for this test"
    );

    // Age EF 0101's page to its last cycle, then power the card up again on that EEPROM.
    let mut eeprom = card.into_eeprom();
    eeprom.set_cycles(page1, ENDURANCE - 1);
    let mut card = Card::power_on(eeprom, SeededRandom::new(8)).unwrap();

    // One more write is allowed, the next one is refused: the page has failed.
    assert_eq!(sw(&send(&mut card, "00D6810004A1A2A3A4")), 0x9000);
    let r = send(&mut card, "00D6810004B1B2B3B4");
    assert_eq!(
        sw(&r),
        0x6581,
        "a write to a worn page answers memory failure"
    );
    // The data is what the last good write left; the other file still works.
    let r = send(&mut card, "00B0810004");
    assert_eq!(&r[..], &[0xA1, 0xA2, 0xA3, 0xA4, 0x90, 0x00]);
    assert_eq!(sw(&send(&mut card, "00D6820004CAFEBABE")), 0x9000);
    let r = send(&mut card, "00B0820004");
    assert_eq!(&r[..], &[0xCA, 0xFE, 0xBA, 0xBE, 0x90, 0x00]);
    assert!(card.nvm().wear().failed_pages.contains(&page1));

    // After a power cycle the card mounts, the worn file still reads, and still refuses writes.
    let mut card = Card::power_on(card.into_eeprom(), SeededRandom::new(9)).unwrap();
    let r = send(&mut card, "00B0810004");
    assert_eq!(&r[..], &[0xA1, 0xA2, 0xA3, 0xA4, 0x90, 0x00]);
    assert_eq!(sw(&send(&mut card, "00D6810004C1C2C3C4")), 0x6581);
    let info = card.info().unwrap();
    assert!(info.nvm.failed_pages.contains(&page1));
}

#[test]
fn a_cyclic_log_levels_its_own_wear() {
    // A cyclic file of 10 records of 60 bytes: each slot (64 bytes with its sequence number)
    // is a page of its own (cyclic bodies are page-aligned), so 1000 appends cost each page
    // 100 cycles, where updating one record in place would cost one page 1000.
    let mut card = card_with_two_files();
    let inner = "8205062100 3C0A 83020103 8801D8 8605F0F0F0F000".replace(' ', "");
    let fcp = format!("62{:02X}{inner}", inner.len() / 2);
    assert_eq!(
        sw(&send(
            &mut card,
            &format!("80E00000{:02X}{fcp}", fcp.len() / 2)
        )),
        0x9000
    );
    let before = card.nvm().eeprom().cycles().to_vec();
    for i in 0..1000u32 {
        let mut rec = vec![0u8; 60];
        rec[..4].copy_from_slice(&i.to_be_bytes());
        let apdu = format!("00E200D83C{}", iccard_apdu::hex::encode(&rec));
        assert_eq!(sw(&send(&mut card, &apdu)), 0x9000);
    }
    let r = send(&mut card, "00B201DC00");
    assert_eq!(
        &r[..4],
        &999u32.to_be_bytes(),
        "record 1 is the newest: {}",
        iccard_apdu::hex::encode(&r)
    );
    let f = card
        .files()
        .unwrap()
        .into_iter()
        .find(|f| f.fid == 0x0103)
        .unwrap();
    let start = (card.nvm().layout().user_start + f.body as usize) / PAGE_SIZE;
    let end = (card.nvm().layout().user_start + f.body as usize + f.size as usize - 1) / PAGE_SIZE;
    let after = card.nvm().eeprom().cycles();
    let max_body = (start..=end).map(|p| after[p] - before[p]).max().unwrap();
    assert_eq!(
        max_body, 100,
        "hottest log page took {max_body} cycles for 1000 appends"
    );
}
