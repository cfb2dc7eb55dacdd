//! A card personalized by the issuer script, then used as a purse by an independent host that
//! knows only the published development master keys and `iccard_crypto`: diversification by
//! the card number, load and purchase MACs, TACs; the public application file, EF.DIR, the
//! PIN-guarded passbook, the limits and the MAC-failure limit chosen at personalization.

use iccard_apdu::{tlv, Command as Apdu};
use iccard_cos::fs::CardState;
use iccard_cos::nvm::{SimEeprom, DEFAULT_ENDURANCE};
use iccard_cos::{Card, SeededRandom};
use iccard_crypto::{diversify, pboc_mac, session_key, tac_key, PurseAlg};
use iccard_issuer::manufacture::{self, BlankCard};
use iccard_issuer::personalize::{
    add_years, personalize, public_application_file, CardNumber, Personalization, PURSE_AID,
};
use iccard_link::{CardChannel, LinkError};

/// The card in memory, as a channel.
struct MemCard(Card<SimEeprom, SeededRandom>);

impl CardChannel for MemCard {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        Ok(self.0.process(apdu))
    }
    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        Ok(self.0.reset())
    }
}

const CARD_NUMBER: &str = "8860000000000001";
const TERMINAL: [u8; 6] = [0x00, 0x00, 0x00, 0x00, 0x10, 0x01];
const DATE_TIME: [u8; 7] = [0x20, 0x26, 0x11, 0x26, 0x09, 0x30, 0x00];

// The development master keys, as published in docs/KEYS.md and devkeys.rs.
const MLK: &str = "1112131415161718191A1B1C1D1E1F20";
const MPK: &str = "0102030405060708090A0B0C0D0E0F10";
const MTK: &str = "2122232425262728292A2B2C2D2E2F30";

fn master(hex: &str) -> [u8; 16] {
    iccard_apdu::hex::decode(hex).unwrap().try_into().unwrap()
}

fn blank(seed: u64) -> MemCard {
    let spec = BlankCard {
        chip_serial: seed.to_be_bytes(),
        production_date: [0x20, 0x26, 0x11, 0x01],
        batch: 1,
        transport_key_version: 1,
        attack_threshold: 64,
    };
    let eeprom = manufacture::eeprom(32, DEFAULT_ENDURANCE).unwrap();
    MemCard(manufacture::make_blank(eeprom, SeededRandom::new(seed), &spec).unwrap())
}

fn personalized(p: &Personalization, seed: u64) -> MemCard {
    personalize(blank(seed), p).expect("personalization succeeds")
}

fn send(card: &mut MemCard, apdu: &Apdu) -> (Vec<u8>, u16) {
    let r = card.transmit(&apdu.to_bytes()).unwrap();
    let (d, sw) = r.split_at(r.len() - 2);
    (d.to_vec(), u16::from_be_bytes([sw[0], sw[1]]))
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The host: card keys from the master keys and the card number, nothing else.
struct Host {
    alg: PurseAlg,
    dlk: [u8; 16],
    dpk: [u8; 16],
    dtk: [u8; 16],
}

impl Host {
    fn new(alg: PurseAlg, card_number: &str) -> Self {
        // D = the rightmost 8 bytes of the 10-byte BCD application serial.
        let digits = format!("{card_number:0>20}");
        let serial = iccard_apdu::hex::decode(&digits).unwrap();
        let d: [u8; 8] = serial[2..].try_into().unwrap();
        Self {
            alg,
            dlk: *diversify(alg, &master(MLK), &d),
            dpk: *diversify(alg, &master(MPK), &d),
            dtk: *diversify(alg, &master(MTK), &d),
        }
    }

    fn load(&self, card: &mut MemCard, p2: u8, amount: u32) -> Result<u32, u16> {
        let (d, sw) = send(
            card,
            &Apdu::new(0x80, 0x50, 0x00, p2)
                .with_data(cat(&[&[0x01], &amount.to_be_bytes(), &TERMINAL]))
                .with_ne(16),
        );
        if sw != 0x9000 {
            return Err(sw);
        }
        assert_eq!(d[6..8], [0x01, self.alg.id()], "key version and algorithm");
        let balance = u32::from_be_bytes(d[0..4].try_into().unwrap());
        let serial = [d[4], d[5]];
        let input = [d[8], d[9], d[10], d[11], serial[0], serial[1], 0x80, 0x00];
        let sk = session_key(self.alg, &self.dlk, &input);
        let tx = if p2 == 0x01 { 0x01 } else { 0x02 };
        let mac1 = pboc_mac(
            &sk,
            &cat(&[
                &balance.to_be_bytes(),
                &amount.to_be_bytes(),
                &[tx],
                &TERMINAL,
            ]),
        );
        assert_eq!(d[12..16], mac1, "MAC1");
        let mac2 = pboc_mac(
            &sk,
            &cat(&[&amount.to_be_bytes(), &[tx], &TERMINAL, &DATE_TIME]),
        );
        let (tac, sw) = send(
            card,
            &Apdu::new(0x80, 0x52, 0, 0)
                .with_data(cat(&[&DATE_TIME, &mac2]))
                .with_ne(4),
        );
        if sw != 0x9000 {
            return Err(sw);
        }
        let new_balance = balance + amount;
        let expected = pboc_mac(
            &tac_key(self.alg, &self.dtk),
            &cat(&[
                &new_balance.to_be_bytes(),
                &serial,
                &amount.to_be_bytes(),
                &[tx],
                &TERMINAL,
                &DATE_TIME,
            ]),
        );
        assert_eq!(tac, expected, "TAC of the load");
        Ok(new_balance)
    }

    /// A purchase; `tamper` spoils MAC1.
    fn purchase(&self, card: &mut MemCard, amount: u32, tamper: bool) -> Result<u32, u16> {
        let (d, sw) = send(
            card,
            &Apdu::new(0x80, 0x50, 0x01, 0x02)
                .with_data(cat(&[&[0x01], &amount.to_be_bytes(), &TERMINAL]))
                .with_ne(15),
        );
        if sw != 0x9000 {
            return Err(sw);
        }
        let balance = u32::from_be_bytes(d[0..4].try_into().unwrap());
        let terminal_serial = [0x00, 0x00, 0x00, 0x07];
        let input = [d[11], d[12], d[13], d[14], d[4], d[5], 0x00, 0x07];
        let sk = session_key(self.alg, &self.dpk, &input);
        let mut mac1 = pboc_mac(
            &sk,
            &cat(&[&amount.to_be_bytes(), &[0x06], &TERMINAL, &DATE_TIME]),
        );
        if tamper {
            mac1[0] ^= 0x80;
        }
        let (r, sw) = send(
            card,
            &Apdu::new(0x80, 0x54, 0x01, 0x00)
                .with_data(cat(&[&terminal_serial, &DATE_TIME, &mac1]))
                .with_ne(8),
        );
        if sw != 0x9000 {
            return Err(sw);
        }
        let tac = pboc_mac(
            &tac_key(self.alg, &self.dtk),
            &cat(&[
                &amount.to_be_bytes(),
                &[0x06],
                &TERMINAL,
                &terminal_serial,
                &DATE_TIME,
            ]),
        );
        assert_eq!(r, cat(&[&tac, &pboc_mac(&sk, &amount.to_be_bytes())]));
        Ok(balance - amount)
    }
}

fn select_purse(card: &mut MemCard) -> (Vec<u8>, u16) {
    send(
        card,
        &Apdu::new(0x00, 0xA4, 0x04, 0x00)
            .with_data(PURSE_AID.to_vec())
            .with_ne(256),
    )
}

fn flow(alg: PurseAlg) {
    let p = Personalization::new(CARD_NUMBER, "123456", alg);
    let mut card = personalized(&p, 1);
    assert_eq!(card.0.state(), CardState::Secured);

    // EF.DIR lists the purse first.
    let (dir, sw) = send(&mut card, &Apdu::new(0x00, 0xB2, 0x01, 0x0C).with_ne(256));
    assert_eq!(sw, 0x9000);
    let entry = tlv::find(&dir, 0x61).expect("an application template");
    assert_eq!(tlv::find(entry, 0x4F), Some(PURSE_AID));

    // The FCI carries the public application file: issuer id, type 03, version 01, the BCD
    // card number, validity.
    let (fci, sw) = select_purse(&mut card);
    assert_eq!(sw, 0x9000);
    let a5 = tlv::find(tlv::find(&fci, 0x6F).unwrap(), 0xA5).unwrap();
    let public = tlv::find(a5, 0x9F0C).expect("9F0C");
    let serial = CardNumber::serial(CARD_NUMBER).unwrap();
    assert_eq!(public, public_application_file(&p.purse, &serial));
    assert_eq!(public[8..20], cat(&[&[0x03, 0x01], &serial])[..]);
    assert_eq!(
        public[10..20],
        [0x00, 0x00, 0x88, 0x60, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01]
    );
    let (read, sw) = send(&mut card, &Apdu::new(0x00, 0xB0, 0x95, 0x00).with_ne(30));
    assert_eq!((read.as_slice(), sw), (public, 0x9000));
    // The holder file exists, empty.
    let (holder, sw) = send(&mut card, &Apdu::new(0x00, 0xB0, 0x96, 0x00).with_ne(256));
    assert_eq!(sw, 0x9000);
    assert!(holder.iter().all(|&b| b == 0));

    let host = Host::new(alg, CARD_NUMBER);
    assert_eq!(host.load(&mut card, 0x02, 10_000), Ok(10_000));
    assert_eq!(host.purchase(&mut card, 2_500, false), Ok(7_500));
    let (bal, sw) = send(&mut card, &Apdu::new(0x80, 0x5C, 0x00, 0x02).with_ne(4));
    assert_eq!((bal, sw), (7_500u32.to_be_bytes().to_vec(), 0x9000));

    // The log (SFI 18) has both, newest first.
    let (rec, sw) = send(&mut card, &Apdu::new(0x00, 0xB2, 0x01, 0xC4).with_ne(23));
    assert_eq!(sw, 0x9000);
    assert_eq!(rec[5..10], [0, 0, 0x09, 0xC4, 0x06]);
    let (rec, _) = send(&mut card, &Apdu::new(0x00, 0xB2, 0x02, 0xC4).with_ne(23));
    assert_eq!(rec[5..10], [0, 0, 0x27, 0x10, 0x02]);

    // The passbook needs the PIN given at personalization.
    assert_eq!(host.load(&mut card, 0x01, 100), Err(0x6982));
    let (_, sw) = send(
        &mut card,
        &Apdu::new(0x00, 0x20, 0x00, 0x00).with_data(vec![0x12, 0x34, 0x56]),
    );
    assert_eq!(sw, 0x9000);
    assert_eq!(host.load(&mut card, 0x01, 100), Ok(100));

    // Default limits: maximum balance 1,000,000 fen.
    assert_eq!(host.load(&mut card, 0x02, 992_501), Err(0x6985));
    assert_eq!(host.load(&mut card, 0x02, 992_500), Ok(1_000_000));
    // Per purchase 100,000.
    assert_eq!(host.purchase(&mut card, 100_001, false), Err(0x6985));

    // Survives a power cycle.
    let eeprom = card.0.into_eeprom();
    let mut card = MemCard(Card::power_on(eeprom, SeededRandom::new(9)).unwrap());
    select_purse(&mut card);
    assert_eq!(host.purchase(&mut card, 100_000, false), Ok(900_000));
}

#[test]
fn issuer_personalized_purse_3des() {
    flow(PurseAlg::TripleDes);
}

#[test]
fn issuer_personalized_purse_sm4() {
    flow(PurseAlg::Sm4);
}

#[test]
fn profile_settings_reach_the_card() {
    let mut p = Personalization::new("123", "1234", PurseAlg::TripleDes);
    p.purse.settings.max_balance = 5_000;
    p.purse.settings.purchase_limit = 300;
    p.purse.settings.daily_limit = 500;
    p.purse.settings.mac_failure_limit = 2;
    p.purse.issuer_id = *b"ISSUER01";
    p.purse.start_date = [0x20, 0x24, 0x02, 0x29];
    p.purse.expiry_date = add_years(p.purse.start_date, 10);
    assert_eq!(p.purse.expiry_date, [0x20, 0x34, 0x02, 0x28]);
    let mut card = personalized(&p, 2);
    let (settings, state) = card.0.purse_state(PURSE_AID).unwrap().unwrap();
    assert_eq!(settings, Some(p.purse.settings));
    assert_eq!(state.purse.balance, 0);
    let (public, _) = {
        select_purse(&mut card);
        send(&mut card, &Apdu::new(0x00, 0xB0, 0x95, 0x00).with_ne(30))
    };
    assert_eq!(&public[0..8], b"ISSUER01");
    assert_eq!(public[10..20], [0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x23]);
    assert_eq!(
        public[20..28],
        [0x20, 0x24, 0x02, 0x29, 0x20, 0x34, 0x02, 0x28]
    );

    let host = Host::new(PurseAlg::TripleDes, "123");
    assert_eq!(host.load(&mut card, 0x02, 5_001), Err(0x6985));
    assert_eq!(host.load(&mut card, 0x02, 5_000), Ok(5_000));
    assert_eq!(host.purchase(&mut card, 301, false), Err(0x6985));
    assert_eq!(host.purchase(&mut card, 300, false), Ok(4_700));
    assert_eq!(
        host.purchase(&mut card, 201, false),
        Err(0x6985),
        "daily limit"
    );
    // Two MAC failures lock the purse for good.
    assert_eq!(host.purchase(&mut card, 1, true), Err(0x9302));
    assert_eq!(host.purchase(&mut card, 1, true), Err(0x9302));
    assert_eq!(host.purchase(&mut card, 1, false), Err(0x9303));
    assert_eq!(select_purse(&mut card).1, 0x9303);
}

#[test]
fn bad_inputs_are_refused_before_the_card_is_touched() {
    for (number, pin) in [
        ("123456789012345678901", "1234"),
        ("12a4", "1234"),
        ("", "1234"),
        ("1234", "12"),
        ("1234", "12345x"),
    ] {
        let mut card = blank(3);
        let p = Personalization::new(number, pin, PurseAlg::TripleDes);
        assert!(
            personalize(&mut card, &p).is_err(),
            "{number:?} / PIN refused"
        );
        assert_eq!(card.0.state(), CardState::OpReady, "the card is untouched");
    }
    // A card already personalized refuses a second run (the transport key is gone).
    let p = Personalization::new(CARD_NUMBER, "123456", PurseAlg::TripleDes);
    let mut card = personalized(&p, 4);
    assert!(personalize(&mut card, &p).is_err());
    assert_eq!(card.0.state(), CardState::Secured);
}

#[test]
fn default_profile_is_valid_for_ten_years() {
    let p = Personalization::new(CARD_NUMBER, "123456", PurseAlg::TripleDes);
    assert_eq!(p.purse.expiry_date, add_years(p.purse.start_date, 10));
    assert_eq!(p.purse.settings.max_balance, 1_000_000);
    assert_eq!(p.purse.settings.purchase_limit, 100_000);
    assert_eq!(p.purse.settings.daily_limit, 200_000);
    assert_eq!(p.purse.settings.mac_failure_limit, 3);
    let start = iccard_apdu::bcd::decode(&p.purse.start_date).unwrap();
    let end = iccard_apdu::bcd::decode(&p.purse.expiry_date).unwrap();
    assert_eq!(
        end[..4].parse::<u32>().unwrap(),
        start[..4].parse::<u32>().unwrap() + 10
    );
}

#[test]
fn a_returned_card_is_blocked_terminated_or_erased() {
    use iccard_issuer::keys::DevIssuerKeys;
    use iccard_issuer::recycle::{block_purse, erase_card, terminate_card};
    use iccard_issuer::script::Admin;
    for (alg, seed) in [(PurseAlg::TripleDes, 71u64), (PurseAlg::Sm4, 72)] {
        let p = Personalization::new(CARD_NUMBER, "123456", alg);

        // The purse blocked for good: every terminal gets 9303 from then on.
        let mut admin = Admin::new(personalized(&p, seed));
        block_purse(&mut admin, CARD_NUMBER, alg, &DevIssuerKeys).unwrap();
        let mut card = admin.into_inner();
        assert_eq!(select_purse(&mut card).1, 0x9303, "{alg}");
        // A wrong card number means a wrong key: the card refuses the MAC.
        let mut admin = Admin::new(personalized(&p, seed));
        assert!(block_purse(&mut admin, "8860000000000002", alg, &DevIssuerKeys).is_err());
        assert_eq!(select_purse(&mut admin.into_inner()).1, 0x9000);

        // Terminated: GET DATA only.
        let mut admin = Admin::new(personalized(&p, seed));
        terminate_card(&mut admin, CARD_NUMBER, &DevIssuerKeys).unwrap();
        let mut card = admin.into_inner();
        let (state, sw) = send(&mut card, &Apdu::new(0x80, 0xCA, 0x9F, 0x70).with_ne(256));
        assert_eq!(sw, 0x9000);
        assert_eq!(state[3], CardState::Terminated as u8, "{state:02X?}");
        assert_ne!(select_purse(&mut card).1, 0x9000);

        // Erased: no application, no key; the chip data stays.
        let mut admin = Admin::new(personalized(&p, seed));
        erase_card(&mut admin, CARD_NUMBER, &DevIssuerKeys).unwrap();
        let mut card = admin.into_inner();
        assert_eq!(select_purse(&mut card).1, 0x6A82, "{alg}");
        let (_, sw) = send(&mut card, &Apdu::new(0x80, 0xCA, 0x9F, 0x7F).with_ne(256));
        assert_eq!(sw, 0x9000, "the chip data answers");
    }
}
