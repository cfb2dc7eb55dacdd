//! The PSAM application through APDUs: MAC1 against an independent computation with
//! `iccard_crypto` (both generations, one and two diversification levels), key choice by
//! version and algorithm, MAC2 verification and its refusals, the terminal transaction serial
//! across power cycles, and power cuts at every write of MAC1 generation: no two MAC1s ever
//! share a serial.
//!
//! The PSAM is built here with the card OS's own administrative APDUs (this crate cannot use the
//! issuer's script, which depends on it); `crates/issuer/src/psam.rs` does the same for real.

use iccard_apdu::{tlv, Command as Apdu, Response, StatusWord};
use iccard_cos::keys::{KeyRecord, KeyType};
use iccard_cos::nvm::{Eeprom, FaultyEeprom, SimEeprom, DEFAULT_ENDURANCE, DEFAULT_SIZE};
use iccard_cos::security::{sm_mac, wrap_key};
use iccard_cos::{Card, ChipData, Manufacture, SeededRandom};
use iccard_crypto::{diversify, ecb_encrypt, pboc_mac, session_key, Cipher, PurseAlg};
use zeroize::Zeroizing;

const TRANSPORT: [u8; 16] = *b"transport-key-01";
const APP_MASTER: [u8; 16] = *b"psam-adf-master!";
/// Purchase master keys installed in the test PSAM.
const MPK_1: [u8; 16] = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10,
];
const MPK_2: [u8; 16] = *b"another-MPK-v02!";
const PSAM_AID: [u8; 9] = [0xA0, 0x00, 0x00, 0x00, 0x03, 0x86, 0x98, 0x07, 0x02];
const TERMINAL_ID: [u8; 6] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66];

type TestCard<E> = Card<E, SeededRandom>;

fn send<E: Eeprom>(card: &mut TestCard<E>, apdu: &Apdu) -> Response {
    Response::parse(&card.process(&apdu.to_bytes())).expect("a well-formed response")
}

fn ok<E: Eeprom>(card: &mut TestCard<E>, what: &str, apdu: &Apdu) -> Vec<u8> {
    let r = send(card, apdu);
    assert_eq!(r.sw, StatusWord::OK, "{what}");
    r.data
}

fn challenge<E: Eeprom>(card: &mut TestCard<E>) -> [u8; 8] {
    let c = ok(card, "GET CHALLENGE", &Apdu::new(0, 0x84, 0, 0).with_ne(4));
    let mut iv = [0u8; 8];
    iv[..4].copy_from_slice(&c);
    iv
}

fn authenticate<E: Eeprom>(card: &mut TestCard<E>, key: &[u8; 16]) {
    let iv = challenge(card);
    let cryptogram = ecb_encrypt(Cipher::TripleDes, key, &iv).unwrap();
    ok(
        card,
        "EXTERNAL AUTHENTICATE",
        &Apdu::new(0, 0x82, 0, 0).with_data(cryptogram),
    );
}

fn write_key<E: Eeprom>(card: &mut TestCard<E>, kek: &[u8; 16], k: &KeyRecord) {
    let wrapped = wrap_key(0x00, kek, &k.to_write_key_data()).unwrap();
    let iv = challenge(card);
    let mut input = vec![0x84, 0xD4, 0, 0, (wrapped.len() + 4) as u8];
    input.extend_from_slice(&wrapped);
    let mac = sm_mac(0x00, kek, &iv, &input).unwrap();
    let mut data = wrapped;
    data.extend_from_slice(&mac);
    ok(
        card,
        "WRITE KEY",
        &Apdu::new(0x84, 0xD4, 0, 0).with_data(data),
    );
}

fn fcp(descriptor: &[u8], fid: u16, extra: &[(u32, &[u8])]) -> Vec<u8> {
    let mut b = tlv::encode(0x82, descriptor);
    tlv::encode_into(&mut b, 0x83, &fid.to_be_bytes());
    for (tag, v) in extra {
        tlv::encode_into(&mut b, *tag, v);
    }
    tlv::encode(0x62, &b)
}

fn create<E: Eeprom>(card: &mut TestCard<E>, what: &str, fcp: Vec<u8>) {
    ok(card, what, &Apdu::new(0x80, 0xE0, 0, 0).with_data(fcp));
}

fn purchase_key(index: u8, version: u8, alg: PurseAlg, value: &[u8; 16]) -> KeyRecord {
    KeyRecord {
        record: 0,
        key_type: KeyType::PsamPurchaseMaster,
        index,
        version,
        alg: alg.id(),
        use_ac: iccard_cos::fs::Access::FREE,
        change_ac: iccard_cos::fs::Access(0xFF),
        grants: 0,
        max_tries: 0,
        tries_left: 0,
        value: Zeroizing::new(value.to_vec()),
    }
}

/// What goes into the test PSAM.
struct Build {
    /// Set the ADF PERSONALIZED at the end.
    personalize: bool,
    /// Size of the internal (serial) file.
    serial_file: u16,
}

impl Default for Build {
    fn default() -> Self {
        Self {
            personalize: true,
            serial_file: 320,
        }
    }
}

/// A PSAM with the terminal id under the MF and three purchase master keys: MPK_1 3DES v01
/// (index 01), MPK_1 SM4 v01 (index 02), MPK_2 3DES v02 (index 03). Left with the ADF selected.
fn build_psam(b: &Build) -> TestCard<SimEeprom> {
    let spec = Manufacture {
        chip: ChipData {
            chip_maker: 0x4943,
            chip_serial: [1, 2, 3, 4, 5, 6, 7, 8],
            production_date: [0x20, 0x26, 0x01, 0x01],
            batch: 1,
            os_version: 0x0100,
        },
        transport_key: Zeroizing::new(TRANSPORT),
        transport_key_version: 1,
        attack_threshold: 64,
    };
    let eeprom = SimEeprom::new(DEFAULT_SIZE, DEFAULT_ENDURANCE).unwrap();
    let mut card = Card::manufacture(eeprom, SeededRandom::new(7), &spec).unwrap();
    authenticate(&mut card, &TRANSPORT);
    create(
        &mut card,
        "terminal id EF",
        fcp(
            &[0x01],
            0x0016,
            &[
                (0x80, &[0x00, 0x06]),
                (0x88, &[0x16 << 3]),
                (0x86, &[0xF0, 0xFF, 0xFF, 0xFF, 0x00]),
            ],
        ),
    );
    ok(
        &mut card,
        "UPDATE BINARY terminal id",
        &Apdu::new(0, 0xD6, 0x96, 0).with_data(TERMINAL_ID),
    );
    create(
        &mut card,
        "PSAM ADF",
        fcp(
            &[0x38],
            0x1001,
            &[
                (0x84, &PSAM_AID),
                (0x86, &[0xF0, 0xFF, 0xFF, 0xFF, 0x00]),
                (0xC0, &[0x02]),
            ],
        ),
    );
    create(
        &mut card,
        "key file",
        fcp(
            &[0x0A, 0x21, 0x00, 0x20, 0x06],
            0x0000,
            &[(0x86, &[0x0F, 0xFF, 0xFF, 0xFF, 0x00])],
        ),
    );
    let mut master = purchase_key(0, 1, PurseAlg::TripleDes, &APP_MASTER);
    master.key_type = KeyType::Master;
    master.grants = 0x0F;
    master.max_tries = 15;
    master.tries_left = 15;
    write_key(&mut card, &TRANSPORT, &master);
    for k in [
        purchase_key(1, 1, PurseAlg::TripleDes, &MPK_1),
        purchase_key(2, 1, PurseAlg::Sm4, &MPK_1),
        purchase_key(3, 2, PurseAlg::TripleDes, &MPK_2),
    ] {
        write_key(&mut card, &APP_MASTER, &k);
    }
    authenticate(&mut card, &APP_MASTER);
    create(
        &mut card,
        "serial file",
        fcp(
            &[0x09],
            0x0009,
            &[
                (0x80, &b.serial_file.to_be_bytes()),
                (0x86, &[0x0F, 0x0F, 0xFF, 0xFF, 0x00]),
            ],
        ),
    );
    if b.personalize {
        ok(
            &mut card,
            "SET STATUS PERSONALIZED",
            &Apdu::new(0x80, 0xF0, 0x40, 0x0F),
        );
    }
    card.reset();
    select_psam(&mut card);
    card
}

fn select_psam<E: Eeprom>(card: &mut TestCard<E>) {
    ok(
        card,
        "SELECT PSAM",
        &Apdu::new(0, 0xA4, 0x04, 0x0C).with_data(PSAM_AID),
    );
}

/// One purchase as the terminal presents it to the PSAM.
#[derive(Clone, Copy)]
struct Purchase {
    random: [u8; 4],
    offline_serial: u16,
    amount: u32,
    date: [u8; 4],
    time: [u8; 3],
    key_version: u8,
    alg: PurseAlg,
    card_factor: [u8; 8],
    issuer_factor: Option<[u8; 8]>,
}

impl Purchase {
    fn new(alg: PurseAlg) -> Self {
        Self {
            random: [0xDE, 0xAD, 0xBE, 0xEF],
            offline_serial: 0x0007,
            amount: 1_250,
            date: [0x20, 0x26, 0x03, 0x14],
            time: [0x12, 0x34, 0x56],
            key_version: 1,
            alg,
            card_factor: [0x00, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x78],
            issuer_factor: None,
        }
    }

    fn mac1_apdu(&self) -> Apdu {
        let mut d = self.random.to_vec();
        d.extend_from_slice(&self.offline_serial.to_be_bytes());
        d.extend_from_slice(&self.amount.to_be_bytes());
        d.push(0x06);
        d.extend_from_slice(&self.date);
        d.extend_from_slice(&self.time);
        d.push(self.key_version);
        d.push(self.alg.id());
        d.extend_from_slice(&self.card_factor);
        if let Some(f) = self.issuer_factor {
            d.extend_from_slice(&f);
        }
        Apdu::new(0x80, 0x70, 0, 0).with_data(d).with_ne(8)
    }

    /// The independent computation: DPK, SESPK, MAC1 and MAC2 with `iccard_crypto` only.
    fn expected(&self, master: &[u8; 16], terminal_serial: u32) -> ([u8; 4], [u8; 4]) {
        let dpk = match self.issuer_factor {
            Some(f) => diversify(
                self.alg,
                &diversify(self.alg, master, &f),
                &self.card_factor,
            ),
            None => diversify(self.alg, master, &self.card_factor),
        };
        let mut input = [0u8; 8];
        input[..4].copy_from_slice(&self.random);
        input[4..6].copy_from_slice(&self.offline_serial.to_be_bytes());
        input[6..].copy_from_slice(&terminal_serial.to_be_bytes()[2..]);
        let sespk = session_key(self.alg, &dpk, &input);
        let mut m = self.amount.to_be_bytes().to_vec();
        m.push(0x06);
        m.extend_from_slice(&TERMINAL_ID);
        m.extend_from_slice(&self.date);
        m.extend_from_slice(&self.time);
        (
            pboc_mac(&sespk, &m),
            pboc_mac(&sespk, &self.amount.to_be_bytes()),
        )
    }
}

/// Sends MAC1; returns (terminal serial, MAC1).
fn mac1<E: Eeprom>(card: &mut TestCard<E>, p: &Purchase) -> (u32, [u8; 4]) {
    let r = ok(card, "MAC1", &p.mac1_apdu());
    assert_eq!(r.len(), 8, "serial ‖ MAC1");
    (
        u32::from_be_bytes([r[0], r[1], r[2], r[3]]),
        [r[4], r[5], r[6], r[7]],
    )
}

fn mac2_apdu(mac2: [u8; 4]) -> Apdu {
    Apdu::new(0x80, 0x72, 0, 0).with_data(mac2)
}

#[test]
fn mac1_and_mac2_match_an_independent_computation() {
    let mut card = build_psam(&Build::default());
    let mut expected_serial = 1;
    for alg in [PurseAlg::TripleDes, PurseAlg::Sm4] {
        for issuer in [None, Some(*b"ISSUER01")] {
            let p = Purchase {
                issuer_factor: issuer,
                ..Purchase::new(alg)
            };
            let (serial, got) = mac1(&mut card, &p);
            assert_eq!(serial, expected_serial, "serials count up from 1");
            expected_serial += 1;
            let (want_mac1, want_mac2) = p.expected(&MPK_1, serial);
            assert_eq!(got, want_mac1, "{alg} issuer factor {issuer:?}");
            assert_eq!(
                send(&mut card, &mac2_apdu(want_mac2)).sw,
                StatusWord::OK,
                "MAC2 of the same session"
            );
        }
    }
    // The two levels really are two levels: a one-level key gives another MAC1.
    let one = Purchase::new(PurseAlg::TripleDes);
    let two = Purchase {
        issuer_factor: Some(*b"ISSUER01"),
        ..one
    };
    assert_ne!(one.expected(&MPK_1, 9).0, two.expected(&MPK_1, 9).0);
}

#[test]
fn the_key_is_chosen_by_version_and_algorithm() {
    let mut card = build_psam(&Build::default());
    let v2 = Purchase {
        key_version: 2,
        ..Purchase::new(PurseAlg::TripleDes)
    };
    let (serial, got) = mac1(&mut card, &v2);
    assert_eq!(got, v2.expected(&MPK_2, serial).0, "version 02 is MPK_2");
    assert_ne!(got, v2.expected(&MPK_1, serial).0);
    // No SM4 key of version 02, no key of version 03, no algorithm 01.
    for p in [
        Purchase {
            key_version: 2,
            ..Purchase::new(PurseAlg::Sm4)
        },
        Purchase {
            key_version: 3,
            ..Purchase::new(PurseAlg::TripleDes)
        },
    ] {
        assert_eq!(
            send(&mut card, &p.mac1_apdu()).sw,
            StatusWord::KEY_INDEX_NOT_FOUND
        );
    }
    let mut bad_alg = Purchase::new(PurseAlg::TripleDes).mac1_apdu();
    bad_alg.data[19] = 0x01;
    assert_eq!(
        send(&mut card, &bad_alg).sw,
        StatusWord::KEY_INDEX_NOT_FOUND
    );
    // Refusals burn no serial.
    let (next, _) = mac1(&mut card, &Purchase::new(PurseAlg::TripleDes));
    assert_eq!(next, serial + 1);
}

#[test]
fn mac2_needs_a_preceding_mac1_and_is_checked_once() {
    let mut card = build_psam(&Build::default());
    // Never a MAC1.
    assert_eq!(
        send(&mut card, &mac2_apdu([0; 4])).sw,
        StatusWord::INVALID_STATE
    );
    let p = Purchase::new(PurseAlg::TripleDes);
    let (serial, _) = mac1(&mut card, &p);
    let (_, good) = p.expected(&MPK_1, serial);
    // A forged MAC2 is refused and spends the session: the right one cannot follow it.
    let mut forged = good;
    forged[3] ^= 0x01;
    assert_eq!(
        send(&mut card, &mac2_apdu(forged)).sw,
        StatusWord::MAC_INVALID
    );
    assert_eq!(
        send(&mut card, &mac2_apdu(good)).sw,
        StatusWord::INVALID_STATE
    );
    // A good MAC2 is accepted once.
    let (serial, _) = mac1(&mut card, &p);
    let (_, good) = p.expected(&MPK_1, serial);
    assert_eq!(send(&mut card, &mac2_apdu(good)).sw, StatusWord::OK);
    assert_eq!(
        send(&mut card, &mac2_apdu(good)).sw,
        StatusWord::INVALID_STATE
    );
    // A reset forgets the session.
    let (serial, _) = mac1(&mut card, &p);
    let (_, good) = p.expected(&MPK_1, serial);
    card.reset();
    select_psam(&mut card);
    assert_eq!(
        send(&mut card, &mac2_apdu(good)).sw,
        StatusWord::INVALID_STATE
    );
    // So does leaving the PSAM ADF.
    let (serial, _) = mac1(&mut card, &p);
    let (_, good) = p.expected(&MPK_1, serial);
    ok(
        &mut card,
        "SELECT MF",
        &Apdu::new(0, 0xA4, 0, 0x0C).with_data([0x3F, 0x00]),
    );
    select_psam(&mut card);
    assert_eq!(
        send(&mut card, &mac2_apdu(good)).sw,
        StatusWord::INVALID_STATE
    );
    // Any other command between MAC1 and MAC2 ends the session (PBOC).
    let (serial, _) = mac1(&mut card, &p);
    let (_, good) = p.expected(&MPK_1, serial);
    ok(
        &mut card,
        "GET CHALLENGE",
        &Apdu::new(0, 0x84, 0, 0).with_ne(4),
    );
    assert_eq!(
        send(&mut card, &mac2_apdu(good)).sw,
        StatusWord::INVALID_STATE
    );
    // A second MAC1 replaces the first session: the first MAC2 no longer verifies.
    let (s1, _) = mac1(&mut card, &p);
    let (_, mac2_first) = p.expected(&MPK_1, s1);
    let (s2, _) = mac1(&mut card, &p);
    assert_eq!(s2, s1 + 1);
    assert_eq!(
        send(&mut card, &mac2_apdu(mac2_first)).sw,
        StatusWord::MAC_INVALID
    );
}

#[test]
fn malformed_commands_are_refused() {
    let mut card = build_psam(&Build::default());
    let good = Purchase::new(PurseAlg::TripleDes).mac1_apdu();
    let mut short = good.clone();
    short.data.truncate(27);
    assert_eq!(send(&mut card, &short).sw, StatusWord::WRONG_LENGTH);
    let mut p1 = good.clone();
    p1.p1 = 1;
    assert_eq!(send(&mut card, &p1).sw, StatusWord::INCORRECT_P1P2);
    let mut load_type = good.clone();
    load_type.data[10] = 0x02;
    assert_eq!(send(&mut card, &load_type).sw, StatusWord::WRONG_DATA);
    let mut mac2_long = mac2_apdu([0; 4]);
    mac2_long.data.push(0);
    assert_eq!(send(&mut card, &mac2_long).sw, StatusWord::WRONG_LENGTH);
    assert_eq!(
        send(&mut card, &Apdu::new(0x80, 0x74, 0, 0)).sw,
        StatusWord::INS_NOT_SUPPORTED
    );
    // None of these allocated a serial.
    assert_eq!(mac1(&mut card, &Purchase::new(PurseAlg::TripleDes)).0, 1);
}

#[test]
fn an_unpersonalized_psam_computes_nothing() {
    let mut card = build_psam(&Build {
        personalize: false,
        ..Build::default()
    });
    assert_eq!(
        send(&mut card, &Purchase::new(PurseAlg::TripleDes).mac1_apdu()).sw,
        StatusWord::CONDITIONS_NOT_SATISFIED
    );
}

#[test]
fn no_answer_ever_carries_a_key_and_key_files_are_unreachable() {
    let mut card = build_psam(&Build::default());
    let p = Purchase::new(PurseAlg::TripleDes);
    let mut transcript = Vec::new();
    for _ in 0..3 {
        transcript.extend(card.process(&p.mac1_apdu().to_bytes()));
    }
    for fid in [0x0000u16, 0x0009] {
        let r = send(
            &mut card,
            &Apdu::new(0, 0xA4, 0x02, 0x0C).with_data(fid.to_be_bytes()),
        );
        assert_eq!(r.sw, StatusWord::FILE_NOT_FOUND, "internal file {fid:04X}");
    }
    for secret in [&MPK_1, &MPK_2, &APP_MASTER] {
        for window in secret.windows(6) {
            assert!(
                !transcript.windows(6).any(|w| w == window),
                "a key fragment appeared in an answer"
            );
        }
    }
}

#[test]
fn the_serial_survives_power_cycles_and_a_small_serial_file() {
    for size in [8u16, 64, 320] {
        let mut card = build_psam(&Build {
            personalize: true,
            serial_file: size,
        });
        let p = Purchase::new(PurseAlg::TripleDes);
        for round in 0..4u32 {
            for i in 0..3u32 {
                let (serial, got) = mac1(&mut card, &p);
                assert_eq!(serial, round * 3 + i + 1, "file of {size} bytes");
                assert_eq!(got, p.expected(&MPK_1, serial).0);
            }
            let eeprom = card.into_eeprom();
            card = Card::power_on(eeprom, SeededRandom::new(u64::from(round))).unwrap();
            select_psam(&mut card);
        }
    }
}

/// Runs MAC1 generation until it fails (power lost) or `n` succeed; returns the serials
/// answered, each checked against its MAC1.
fn run_mac1s<E: Eeprom>(card: &mut TestCard<E>, n: usize) -> Vec<u32> {
    let p = Purchase::new(PurseAlg::TripleDes);
    let mut out = Vec::new();
    for _ in 0..n {
        let r = send(card, &p.mac1_apdu());
        if r.sw != StatusWord::OK {
            assert_eq!(r.sw, StatusWord::MEMORY_FAILURE, "only the power cut fails");
            break;
        }
        let serial = u32::from_be_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]);
        assert_eq!(r.data[4..], p.expected(&MPK_1, serial).0);
        out.push(serial);
    }
    out
}

#[test]
fn a_power_cut_at_any_write_never_lets_two_mac1s_share_a_serial() {
    let base = build_psam(&Build::default()).into_eeprom();
    // Writes of three MAC1s without a cut, to know how far to cut.
    let mut clean =
        Card::power_on(FaultyEeprom::never(base.clone()), SeededRandom::new(1)).unwrap();
    select_psam(&mut clean);
    assert_eq!(run_mac1s(&mut clean, 3), vec![1, 2, 3]);
    let total = clean.into_eeprom().writes();
    assert!(total >= 3, "each MAC1 writes");
    let mut cuts = 0;
    for cut in 0..total {
        for torn in [0usize, 1, 5] {
            let faulty = FaultyEeprom::new(base.clone(), cut, torn);
            let mut card = Card::power_on(faulty, SeededRandom::new(cut)).unwrap();
            select_psam(&mut card);
            let mut seen = run_mac1s(&mut card, 3);
            assert!(card.power_lost(), "cut at write {cut} happened");
            cuts += 1;
            let wreck = card.into_eeprom().into_inner();
            let mut card = Card::power_on(wreck, SeededRandom::new(cut + 100)).unwrap();
            select_psam(&mut card);
            let after = run_mac1s(&mut card, 2);
            assert_eq!(after.len(), 2, "the PSAM works after the cut");
            seen.extend(after);
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "cut at write {cut} (+{torn} bytes): serials {seen:?} repeat"
            );
        }
    }
    assert_eq!(cuts as u64, total * 3);
}
