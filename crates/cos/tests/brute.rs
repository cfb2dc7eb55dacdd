//! Brute force: wrong PINs until the PIN blocks, failed EXTERNAL AUTHENTICATEs until the key
//! locks, and past the card's attack threshold the self-destruct, proven on the raw EEPROM
//! bytes (journal included): no key written to the card is left anywhere. Resets and power
//! cycles never restore a security state, and replayed cryptograms and MACs are refused.

use crate::tear::{snapshot, torn_offsets, Recorder};
use crate::transcript::{cryptogram, mac_apdu, Key};
use iccard_apdu::{hex, Command as Apdu};
use iccard_cos::fs::{CardState, FileKind};
use iccard_cos::fuzzing::{self, keys};
use iccard_cos::keys::alg;
use iccard_cos::nvm::{Eeprom, FaultyEeprom, SimEeprom};
use iccard_cos::{Card, RandomSource, SeededRandom};

type TestCard = Card<SimEeprom, SeededRandom>;

const APP1: &str = "00A4040C07F0544553543031";
const MF: &str = "00A4000C023F00";

/// Sends hex, returns (data, SW).
fn send<E: Eeprom, R: RandomSource>(card: &mut Card<E, R>, apdu: &str) -> (Vec<u8>, u16) {
    let r = card.process(&hex::decode(apdu).unwrap());
    let (data, sw) = r.split_at(r.len() - 2);
    (data.to_vec(), u16::from_be_bytes([sw[0], sw[1]]))
}

fn sw<E: Eeprom, R: RandomSource>(card: &mut Card<E, R>, apdu: &str) -> u16 {
    send(card, apdu).1
}

fn tdes(value: [u8; 16]) -> Key {
    Key {
        alg: alg::TDES,
        value,
    }
}

fn challenge<E: Eeprom, R: RandomSource>(card: &mut Card<E, R>) -> [u8; 8] {
    let (c, s) = send(card, "0084000004");
    assert_eq!(s, 0x9000);
    let mut iv = [0u8; 8];
    iv[..4].copy_from_slice(&c);
    iv
}

/// GET CHALLENGE + EXTERNAL AUTHENTICATE; returns the SW and the command (for replays).
fn auth<E: Eeprom, R: RandomSource>(card: &mut Card<E, R>, index: u8, key: Key) -> (u16, Vec<u8>) {
    let iv = challenge(card);
    let cmd = Apdu::new(0x00, 0x82, 0x00, index)
        .with_data(cryptogram(&key, &iv))
        .to_bytes();
    (sw(card, &hex::encode(&cmd)), cmd)
}

/// GET CHALLENGE + the APDU under secure messaging; returns the SW and the command.
fn mac<E: Eeprom, R: RandomSource>(card: &mut Card<E, R>, apdu: &str, key: Key) -> (u16, Vec<u8>) {
    let iv = challenge(card);
    let plain = Apdu::parse(&hex::decode(apdu).unwrap()).unwrap();
    let cmd = mac_apdu(&plain, &key, &iv).to_bytes();
    (sw(card, &hex::encode(&cmd)), cmd)
}

/// Attack counter and card state from GET DATA 9F70.
fn card_state<E: Eeprom, R: RandomSource>(card: &mut Card<E, R>) -> (u8, u8) {
    let (d, s) = send(card, "80CA9F7000");
    assert_eq!(s, 0x9000);
    (d[3], d[4])
}

/// Every place in `bytes` where a key the reference card was given appears, or its PIN record
/// (`used type index version alg use change grants max tries len rfu value`, any tries).
fn secrets_in(bytes: &[u8]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for key in keys::ALL.iter().chain([&keys::TRANSPORT]) {
        for (at, w) in bytes.windows(16).enumerate() {
            if w == key {
                found.push((String::from_utf8_lossy(key).into_owned(), at));
            }
        }
    }
    let pin_record = [
        1, 0x3A, 0, 1, 0, 0xF0, 0xF0, 1, 3, 0xFF, 3, 0, 0x12, 0x34, 0x56,
    ];
    for (at, w) in bytes.windows(pin_record.len()).enumerate() {
        if w.iter()
            .zip(&pin_record)
            .enumerate()
            .all(|(i, (b, p))| i == 9 || b == p)
        {
            found.push(("PIN record".into(), at));
        }
    }
    found
}

/// The key files' bodies are all zero.
fn key_files_zeroed<E: Eeprom, R: RandomSource>(card: &Card<E, R>) -> bool {
    snapshot(card)
        .files
        .iter()
        .filter(|(f, _)| f.kind == FileKind::KeyFile)
        .all(|(_, body)| body.iter().all(|&b| b == 0))
}

fn power_cycle(card: TestCard, seed: u64) -> TestCard {
    Card::power_on(card.into_eeprom(), SeededRandom::new(seed)).unwrap()
}

#[test]
fn wrong_pin_until_blocked() {
    let mut card = fuzzing::personalized_card(3);
    assert_eq!(sw(&mut card, APP1), 0x9000);
    assert_eq!(sw(&mut card, "00200000"), 0x63C3);
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(sw(&mut card, "0020000003999999"));
    }
    assert_eq!(answers, [0x63C2, 0x63C1, 0x6983, 0x6983, 0x6983]);
    // Only the three real tries counted as attacks.
    assert_eq!(card_state(&mut card), (0x0F, 3));
    for _ in 0..2 {
        assert_eq!(sw(&mut card, "0020000003123456"), 0x6983);
        card.reset();
        assert_eq!(sw(&mut card, APP1), 0x9000);
    }
    let mut card = power_cycle(card, 4);
    assert_eq!(sw(&mut card, APP1), 0x9000);
    assert_eq!(sw(&mut card, "0020000003123456"), 0x6983);
    assert_eq!(sw(&mut card, "00200000"), 0x6983);
    assert_eq!(sw(&mut card, "00B0820000"), 0x6982);
    let info = card.info().unwrap();
    let pin = info
        .files
        .iter()
        .flat_map(|f| &f.keys)
        .find(|k| k.key_type == "Pin")
        .unwrap();
    assert_eq!(pin.tries, (0, 3), "the blocked counter is in the NVM");
}

#[test]
fn failed_external_authenticate_until_the_key_locks() {
    let mut card = fuzzing::personalized_card(5);
    let wrong = tdes(*b"not-the-real-key");
    // The card master key allows 15 tries: 63CE ... 63C1, then blocked.
    let answers: Vec<u16> = (0..16).map(|_| auth(&mut card, 0, wrong).0).collect();
    let expected: Vec<u16> = (1..=14u16)
        .rev()
        .map(|n| 0x63C0 | n)
        .chain([0x6983, 0x6983])
        .collect();
    assert_eq!(answers, expected);
    assert_eq!(auth(&mut card, 0, tdes(keys::MF_MASTER)).0, 0x6983);
    assert_eq!(card_state(&mut card), (0x0F, 15));
    // Blocked for good: the MF can no longer be administered, even after a power cycle...
    let mut card = power_cycle(card, 6);
    assert_eq!(auth(&mut card, 0, tdes(keys::MF_MASTER)).0, 0x6983);
    assert_eq!(sw(&mut card, "80F0807F"), 0x6982);
    // ... but the holder's application is untouched.
    assert_eq!(sw(&mut card, APP1), 0x9000);
    assert_eq!(sw(&mut card, "0020000003123456"), 0x9000);
    // The application's terminal key (3 tries) locks the same way.
    let answers: Vec<u16> = (0..4).map(|_| auth(&mut card, 1, wrong).0).collect();
    assert_eq!(answers, [0x63C2, 0x63C1, 0x6983, 0x6983]);
    assert_eq!(auth(&mut card, 1, tdes(keys::APP1_EXTERNAL)).0, 0x6983);
}

#[test]
fn reset_never_restores_a_security_state() {
    let mut card = fuzzing::personalized_card(7);
    // Each way of gaining a state, then each way of losing it.
    for lose in ["reset", "power cycle", "select elsewhere"] {
        assert_eq!(sw(&mut card, APP1), 0x9000);
        assert_eq!(sw(&mut card, "0020000003123456"), 0x9000);
        assert_eq!(auth(&mut card, 1, tdes(keys::APP1_EXTERNAL)).0, 0x9000);
        assert_eq!(sw(&mut card, "00B0860000"), 0x9000);
        assert_eq!(sw(&mut card, "00B0820000"), 0x9000);
        match lose {
            "reset" => {
                card.reset();
            }
            "power cycle" => card = power_cycle(card, 8),
            _ => assert_eq!(sw(&mut card, "00A4040C07F0544553543032"), 0x9000),
        }
        assert_eq!(sw(&mut card, APP1), 0x9000);
        assert_eq!(sw(&mut card, "00B0860000"), 0x6982, "{lose}");
        assert_eq!(sw(&mut card, "00B0820000"), 0x6982, "{lose}");
        assert_eq!(sw(&mut card, "00B2012400"), 0x6982, "{lose}");
    }
    // The card master key's state at the MF, likewise.
    assert_eq!(sw(&mut card, MF), 0x9000);
    let (s, replay) = auth(&mut card, 0, tdes(keys::MF_MASTER));
    assert_eq!(s, 0x9000);
    let create = "80E0000014621282010183020009800200108605F0F0F0F000";
    card.reset();
    assert_eq!(sw(&mut card, create), 0x6982);
    // Replaying the recorded EXTERNAL AUTHENTICATE: no challenge (6984); after a fresh
    // challenge the old cryptogram is simply wrong (63Cx).
    assert_eq!(sw(&mut card, &hex::encode(&replay)), 0x6984);
    challenge(&mut card);
    assert_eq!(sw(&mut card, &hex::encode(&replay)), 0x63CE);
    assert_eq!(sw(&mut card, create), 0x6982);
    // Replaying a MACed update: the challenge it was made for is spent.
    assert_eq!(sw(&mut card, APP1), 0x9000);
    let (s, replay) = mac(&mut card, "00D6820002AABB", tdes(keys::APP1_MAINTENANCE));
    assert_eq!(s, 0x9000);
    assert_eq!(sw(&mut card, &hex::encode(&replay)), 0x6984);
    challenge(&mut card);
    assert_eq!(sw(&mut card, &hex::encode(&replay)), 0x6988);
}

/// A reference card with a small attack threshold.
fn card_with_threshold(threshold: u8) -> TestCard {
    let mut card = fuzzing::manufacture(threshold);
    fuzzing::personalize(&mut card).unwrap();
    card
}

/// One failed authentication of a kind chosen by `i`: PIN, EXTERNAL AUTHENTICATE or MAC.
fn fail_once<E: Eeprom, R: RandomSource>(card: &mut Card<E, R>, i: usize) -> u16 {
    assert_eq!(sw(card, APP1), 0x9000);
    match i % 3 {
        0 => sw(card, "0020000003999999"),
        1 => auth(card, 0, tdes(*b"not-the-real-key")).0,
        _ => mac(card, "00D6820002AABB", tdes(*b"not-the-real-key")).0,
    }
}

#[test]
fn past_the_threshold_the_card_destroys_its_secrets() {
    let threshold = 10;
    let mut card = card_with_threshold(threshold);
    // Before: every key is in the EEPROM (the scan sees them).
    let found = secrets_in(card.nvm().eeprom().bytes());
    for key in keys::ALL {
        let name = String::from_utf8_lossy(&key).into_owned();
        assert!(found.iter().any(|(n, _)| *n == name), "{name} not found");
    }
    assert!(
        found.iter().any(|(n, _)| n == "PIN record"),
        "the PIN not found"
    );
    for i in 0..threshold as usize - 1 {
        let s = fail_once(&mut card, i);
        assert!(s != 0x9000, "attempt {i} answered {s:04X}");
        // Mix in resets and power cycles: the counter is persistent.
        if i % 4 == 3 {
            card = power_cycle(card, i as u64);
        }
    }
    assert_eq!(card_state(&mut card), (0x0F, threshold - 1));
    // The PIN is blocked by now (a refused blocked PIN is no attempt): a wrong key finishes it.
    assert_eq!(fail_once(&mut card, 0), 0x6983);
    assert_eq!(card_state(&mut card), (0x0F, threshold - 1));
    assert_eq!(fail_once(&mut card, 1), 0x6983);
    assert_eq!(card.state(), CardState::Terminated);
    assert_eq!(card_state(&mut card), (0xFF, threshold));
    check_destroyed(card);
}

/// A terminated card: no key in any byte of the EEPROM, key files zeroed, only GET DATA
/// answers, after power cycles too.
fn check_destroyed(mut card: TestCard) {
    let found = secrets_in(card.nvm().eeprom().bytes());
    assert!(found.is_empty(), "keys left in the EEPROM: {found:?}");
    assert!(key_files_zeroed(&card));
    for _ in 0..2 {
        for apdu in [
            MF,
            APP1,
            "0084000004",
            "0020000003123456",
            "00B0850000",
            "80F0800F",
        ] {
            assert_eq!(sw(&mut card, apdu), 0x6A81, "{apdu}");
        }
        let (counter_before, _) = (card_state(&mut card).1, ());
        assert_eq!(sw(&mut card, "0082000008 0000000000000000"), 0x6A81);
        assert_eq!(card_state(&mut card), (0xFF, counter_before), "not counted");
        card = power_cycle(card, 77);
        assert_eq!(card.state(), CardState::Terminated);
        assert_eq!(
            card.nvm().stats().physical_writes,
            0,
            "a scrubbed journal is not scrubbed again"
        );
    }
}

#[test]
fn terminate_card_usage_destroys_the_secrets() {
    let mut card = fuzzing::personalized_card(9);
    assert_eq!(sw(&mut card, MF), 0x9000);
    assert_eq!(auth(&mut card, 0, tdes(keys::MF_MASTER)).0, 0x9000);
    assert_eq!(sw(&mut card, "00FE0000"), 0x9000);
    assert_eq!(card_state(&mut card), (0xFF, 0));
    check_destroyed(card);
}

#[test]
fn set_status_terminated_destroys_the_secrets() {
    let mut card = fuzzing::personalized_card(10);
    assert_eq!(sw(&mut card, MF), 0x9000);
    assert_eq!(auth(&mut card, 0, tdes(keys::MF_MASTER)).0, 0x9000);
    assert_eq!(sw(&mut card, "80F080FF"), 0x9000);
    assert_eq!(card_state(&mut card), (0xFF, 0));
    check_destroyed(card);
}

/// The commands that can take a card to its end.
#[derive(Debug, Clone, Copy)]
enum Attack {
    WrongPin,
    WrongExternalAuthenticate,
    WrongMac,
    TerminateCardUsage,
}

fn run_attack<E: Eeprom, R: RandomSource>(card: &mut Card<E, R>, attack: Attack) {
    match attack {
        Attack::WrongPin => {
            fail_once(card, 0);
        }
        Attack::WrongExternalAuthenticate => {
            fail_once(card, 1);
        }
        Attack::WrongMac => {
            fail_once(card, 2);
        }
        Attack::TerminateCardUsage => {
            assert_eq!(sw(card, MF), 0x9000);
            auth(card, 0, tdes(keys::MF_MASTER));
            sw(card, "00FE0000");
        }
    }
}

/// Power is cut at every write (and torn offsets) of the failed authentication that takes the
/// card past its threshold, and of TERMINATE CARD USAGE. After power-up the card is either as
/// before (not terminated, every key in place and working) or terminated, and then no key is
/// anywhere in the EEPROM.
#[test]
fn the_self_destruct_is_tear_safe() {
    let threshold = 4;
    let mut base = card_with_threshold(threshold);
    for i in 0..threshold as usize - 1 {
        fail_once(&mut base, i);
    }
    base.reset();
    let start = base.into_eeprom();
    let mut cuts = 0;
    let mut destroyed = 0;
    for attack in [
        Attack::WrongPin,
        Attack::WrongExternalAuthenticate,
        Attack::WrongMac,
        Attack::TerminateCardUsage,
    ] {
        let mut recording = Card::power_on(
            Recorder {
                inner: start.clone(),
                lengths: Vec::new(),
            },
            SeededRandom::new(1),
        )
        .unwrap();
        run_attack(&mut recording, attack);
        assert_eq!(recording.state(), CardState::Terminated, "{attack:?}");
        let lengths = recording.into_eeprom().lengths;
        for (k, &len) in lengths.iter().enumerate() {
            for torn in torn_offsets(len) {
                cuts += 1;
                let faulty = FaultyEeprom::new(start.clone(), k as u64, torn);
                let mut card = Card::power_on(faulty, SeededRandom::new(1)).unwrap();
                run_attack(&mut card, attack);
                assert!(
                    card.nvm().eeprom().power_lost(),
                    "{attack:?}: write {k} not reached"
                );
                let eeprom = card.into_eeprom().into_inner();
                let mut card = Card::power_on(eeprom, SeededRandom::new(2)).unwrap();
                let at = format!(
                    "{attack:?}: cut at write {k} of {}, byte {torn}",
                    lengths.len()
                );
                if card.state() == CardState::Terminated {
                    destroyed += 1;
                    let found = secrets_in(card.nvm().eeprom().bytes());
                    assert!(found.is_empty(), "{at}: terminated, keys left: {found:?}");
                    assert!(key_files_zeroed(&card), "{at}");
                } else {
                    assert_eq!(card_state(&mut card).0, 0x0F, "{at}");
                    assert!(!key_files_zeroed(&card), "{at}");
                    assert_eq!(sw(&mut card, APP1), 0x9000, "{at}");
                    assert_eq!(sw(&mut card, "0020000003123456"), 0x9000, "{at}");
                }
            }
        }
    }
    println!("self-destruct tear: {cuts} cut points, {destroyed} powered up destroyed");
    assert!(destroyed > 0 && destroyed < cuts);
}
