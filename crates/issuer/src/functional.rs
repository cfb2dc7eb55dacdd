//! The functional test at the end of production: every blank card is exercised through APDUs
//! before it may enter stock.
//!
//! [`test_card`] runs, in order, stopping at the first failure (later steps depend on earlier
//! ones, and the first failure is the reason the card is voided):
//!
//! 1. **ATR**: a reset answers an ATR that is well-formed by ISO/IEC 7816-3 §8.2 (TS `3B`/`3F`,
//!    interface bytes as announced by T0 and TDi, the historical bytes T0 counts, TCK present
//!    exactly when a protocol other than T=0 is announced and XOR-ing T0..TCK to zero, nothing
//!    after it, at most 33 bytes).
//! 2. **SELECT MF** answers `9000`.
//! 3. **Chip data**: GET DATA `9F7F` answers the 18-byte chip production data (the chip serial
//!    is reported, so the back office can match the card to its record).
//! 4. **Card state**: GET DATA `9F70` says OP_READY (a blank) with an attack counter of 0 (no
//!    authentication has ever failed on a card fresh from coding).
//! 5. **GET CHALLENGE** twice: 8 bytes each, and the two differ.
//! 6. **EXTERNAL AUTHENTICATE** at the MF with the transport key answers `9000`.
//!
//! Not done: presenting a wrong key to see `63Cx`. On this card OS a failed EXTERNAL
//! AUTHENTICATE costs the transport key a try (given back by the next success) *and* counts on
//! the card's attack counter, which nothing ever lowers (docs/COS.md, security model): every
//! card would leave the factory one step nearer to self-destruction, so the test does not do it.
//!
//! Transport errors (no card, lost power) are reported as a failed step, never as a panic.

use crate::script::{Admin, ScriptError};
use iccard_apdu::{tlv, Command as Apdu};
use iccard_cos::fs::{CardState, ChipData};
use iccard_cos::keys::alg;
use iccard_link::CardChannel;

/// One step of the functional test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Reset and check the answer to reset.
    Atr,
    /// SELECT the MF.
    SelectMf,
    /// GET DATA chip production data.
    ChipData,
    /// GET DATA card life-cycle state and attack counter.
    CardState,
    /// Two GET CHALLENGEs.
    GetChallenge,
    /// EXTERNAL AUTHENTICATE with the transport key.
    ExternalAuthenticate,
}

impl Step {
    /// Every step, in the order the test runs them.
    pub const ALL: [Step; 6] = [
        Step::Atr,
        Step::SelectMf,
        Step::ChipData,
        Step::CardState,
        Step::GetChallenge,
        Step::ExternalAuthenticate,
    ];

    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Atr => "ATR",
            Step::SelectMf => "SELECT MF",
            Step::ChipData => "GET DATA chip data",
            Step::CardState => "GET DATA card state",
            Step::GetChallenge => "GET CHALLENGE",
            Step::ExternalAuthenticate => "EXTERNAL AUTHENTICATE",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    /// The step.
    pub step: Step,
    /// Whether it passed.
    pub passed: bool,
    /// What was seen (on failure: why it failed).
    pub detail: String,
}

/// The outcome of [`test_card`] for one card.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FunctionalReport {
    /// The answer to reset (empty if the reset failed).
    pub atr: Vec<u8>,
    /// The chip serial the card reported (GET DATA `9F7F`), if it got that far.
    pub chip_serial: Option<[u8; 8]>,
    /// The steps run, in order; the test stops after the first failure.
    pub steps: Vec<StepResult>,
}

impl FunctionalReport {
    /// Whether every step ran and passed.
    pub fn passed(&self) -> bool {
        self.steps.len() == Step::ALL.len()
            && self
                .steps
                .iter()
                .zip(Step::ALL)
                .all(|(r, step)| r.passed && r.step == step)
    }

    /// Why the card failed: the first failed step and its detail (`None` if it passed).
    pub fn failure(&self) -> Option<String> {
        if self.passed() {
            return None;
        }
        Some(match self.steps.iter().find(|r| !r.passed) {
            Some(r) => format!("{}: {}", r.step, r.detail),
            None => format!(
                "incomplete test: {} of {} steps ran",
                self.steps.len(),
                Step::ALL.len()
            ),
        })
    }

    fn push(&mut self, step: Step, outcome: Result<String, String>) -> bool {
        let passed = outcome.is_ok();
        let detail = match outcome {
            Ok(d) | Err(d) => d,
        };
        self.steps.push(StepResult {
            step,
            passed,
            detail,
        });
        passed
    }
}

/// What an ATR announces (ISO/IEC 7816-3 §8.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtrInfo {
    /// Inverse convention (TS = `3F`) rather than direct (`3B`).
    pub inverse: bool,
    /// The protocols announced by TD1, TD2, … (empty: T=0 only, implicitly).
    pub protocols: Vec<u8>,
    /// The historical bytes.
    pub historical: Vec<u8>,
    /// Whether a TCK byte is present (and correct).
    pub has_tck: bool,
}

/// Parses and checks an ATR: structure, length and TCK. Returns why it is malformed.
pub fn parse_atr(atr: &[u8]) -> Result<AtrInfo, String> {
    const MAX_ATR: usize = 33;
    if atr.len() > MAX_ATR {
        return Err(format!("{} bytes, an ATR has at most {MAX_ATR}", atr.len()));
    }
    let inverse = match atr.first() {
        Some(0x3B) => false,
        Some(0x3F) => true,
        Some(ts) => return Err(format!("TS is {ts:02X}, must be 3B or 3F")),
        None => return Err("empty answer to reset".into()),
    };
    let t0 = *atr.get(1).ok_or("no T0 byte")?;
    let historical_len = usize::from(t0 & 0x0F);
    let mut pos = 2;
    let mut y = t0 >> 4;
    let mut protocols = Vec::new();
    loop {
        // Y bits: b5 TA, b6 TB, b7 TC, b8 TD (ISO/IEC 7816-3 §8.2.2).
        let present = (y & 1) + ((y >> 1) & 1) + ((y >> 2) & 1);
        pos += usize::from(present);
        if y & 0x08 == 0 {
            break;
        }
        let td = *atr
            .get(pos)
            .ok_or_else(|| format!("announced TD byte at offset {pos} is missing"))?;
        protocols.push(td & 0x0F);
        y = td >> 4;
        pos += 1;
    }
    if pos > atr.len() {
        return Err(format!(
            "announced interface bytes run past the end ({} bytes)",
            atr.len()
        ));
    }
    let historical_end = pos + historical_len;
    let historical = atr
        .get(pos..historical_end)
        .ok_or_else(|| {
            format!(
                "T0 announces {historical_len} historical bytes, only {} follow",
                atr.len() - pos
            )
        })?
        .to_vec();
    let has_tck = protocols.iter().any(|&t| t != 0);
    let expected_len = historical_end + usize::from(has_tck);
    if atr.len() != expected_len {
        return Err(format!(
            "{} bytes, the structure announces {expected_len}{}",
            atr.len(),
            if has_tck { " (with TCK)" } else { "" }
        ));
    }
    if has_tck {
        let x = atr[1..].iter().fold(0u8, |acc, b| acc ^ b);
        if x != 0 {
            return Err(format!("TCK is wrong (T0..TCK XOR to {x:02X}, not 00)"));
        }
    }
    Ok(AtrInfo {
        inverse,
        protocols,
        historical,
        has_tck,
    })
}

fn hex(bytes: &[u8]) -> String {
    iccard_apdu::hex::encode(bytes)
}

fn script_error(e: ScriptError) -> String {
    e.to_string()
}

/// Runs the functional test on one blank card (see the module doc) with the card's transport
/// key (already diversified for its chip: [`crate::manufacture::transport_key`]).
pub fn test_card<C: CardChannel>(channel: &mut C, transport_key: &[u8; 16]) -> FunctionalReport {
    let mut report = FunctionalReport::default();

    let atr = match channel.reset() {
        Ok(a) => a,
        Err(e) => {
            report.push(Step::Atr, Err(format!("reset failed: {e}")));
            return report;
        }
    };
    report.atr = atr.clone();
    let atr_outcome = parse_atr(&atr)
        .map(|info| {
            format!(
                "{} (protocols {:?}, {} historical bytes)",
                hex(&atr),
                info.protocols,
                info.historical.len()
            )
        })
        .map_err(|why| format!("{} is malformed: {why}", hex(&atr)));
    if !report.push(Step::Atr, atr_outcome) {
        return report;
    }

    let mut admin = Admin::new(&mut *channel);
    let outcome = admin
        .select_mf()
        .map(|()| "9000".to_string())
        .map_err(script_error);
    if !report.push(Step::SelectMf, outcome) {
        return report;
    }

    let outcome = chip_data(&mut admin).map(|chip| {
        report.chip_serial = Some(chip.chip_serial);
        format!(
            "chip serial {}, maker {:04X}, batch {}, OS {:04X}",
            hex(&chip.chip_serial),
            chip.chip_maker,
            chip.batch,
            chip.os_version
        )
    });
    if !report.push(Step::ChipData, outcome) {
        return report;
    }

    let outcome = card_state(&mut admin);
    if !report.push(Step::CardState, outcome) {
        return report;
    }

    let outcome = challenges(&mut admin);
    if !report.push(Step::GetChallenge, outcome) {
        return report;
    }

    let outcome = match admin.external_authenticate(0, alg::TDES, transport_key) {
        Ok(()) => Ok("transport key accepted (9000)".to_string()),
        Err(ScriptError::Refused { sw, .. }) if sw.tries_left().is_some() => Err(format!(
            "the card refused the transport key ({sw}): the chip was coded with another key"
        )),
        Err(e) => Err(script_error(e)),
    };
    report.push(Step::ExternalAuthenticate, outcome);
    report
}

fn chip_data<C: CardChannel>(admin: &mut Admin<C>) -> Result<ChipData, String> {
    let data = admin
        .ok(
            "GET DATA chip data",
            &Apdu::new(0x80, 0xCA, 0x9F, 0x7F).with_ne(256),
        )
        .map_err(script_error)?;
    let value = tlv::find(&data, 0x9F7F)
        .ok_or_else(|| format!("answer {} holds no tag 9F7F", hex(&data)))?;
    ChipData::from_bytes(value).ok_or_else(|| {
        format!(
            "chip data is {} bytes, expected {}",
            value.len(),
            ChipData::LEN
        )
    })
}

fn card_state<C: CardChannel>(admin: &mut Admin<C>) -> Result<String, String> {
    let data = admin
        .ok(
            "GET DATA card state",
            &Apdu::new(0x80, 0xCA, 0x9F, 0x70).with_ne(256),
        )
        .map_err(script_error)?;
    let value = tlv::find(&data, 0x9F70)
        .ok_or_else(|| format!("answer {} holds no tag 9F70", hex(&data)))?;
    let [state, attacks] = value else {
        return Err(format!("card state is {} bytes, expected 2", value.len()));
    };
    if CardState::from_code(*state) != Some(CardState::OpReady) {
        return Err(format!(
            "card state {state:02X}, a blank card must be OP_READY (01)"
        ));
    }
    if *attacks != 0 {
        return Err(format!(
            "attack counter {attacks}: an authentication already failed on this blank card"
        ));
    }
    Ok("OP_READY, attack counter 0".into())
}

fn challenges<C: CardChannel>(admin: &mut Admin<C>) -> Result<String, String> {
    let mut got = Vec::with_capacity(2);
    for _ in 0..2 {
        let c = admin
            .ok(
                "GET CHALLENGE",
                &Apdu::new(0x00, 0x84, 0x00, 0x00).with_ne(8),
            )
            .map_err(script_error)?;
        if c.len() != 8 {
            return Err(format!("challenge of {} bytes, asked for 8", c.len()));
        }
        got.push(c);
    }
    if got[0] == got[1] {
        return Err(format!(
            "two challenges in a row are equal ({}): the card's random generator is broken",
            hex(&got[0])
        ));
    }
    Ok(format!("{} then {}", hex(&got[0]), hex(&got[1])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devkeys;
    use crate::manufacture::{self, BlankCard};
    use iccard_apdu::StatusWord;
    use iccard_cos::nvm::{SimEeprom, DEFAULT_ENDURANCE};
    use iccard_cos::{Card, ChipData as Chip, Manufacture, SeededRandom};
    use iccard_link::LinkError;
    use zeroize::Zeroizing;

    struct MemCard(Card<SimEeprom, SeededRandom>);

    impl CardChannel for MemCard {
        fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
            Ok(self.0.process(apdu))
        }
        fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
            Ok(self.0.reset())
        }
    }

    /// A channel that answers a fixed ATR and forwards APDUs to a card.
    struct OddAtr(MemCard, Vec<u8>);

    impl CardChannel for OddAtr {
        fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
            self.0.transmit(apdu)
        }
        fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
            self.0.reset()?;
            Ok(self.1.clone())
        }
    }

    /// A card that never answers.
    struct Absent;

    impl CardChannel for Absent {
        fn transmit(&mut self, _apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
            Err(LinkError::PowerLost)
        }
        fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
            Err(LinkError::PowerLost)
        }
    }

    const SERIAL: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x01];

    fn blank(serial: [u8; 8]) -> MemCard {
        let spec = BlankCard {
            chip_serial: serial,
            production_date: [0x20, 0x26, 0x11, 0x25],
            batch: 7,
            transport_key_version: 1,
            attack_threshold: manufacture::DEFAULT_ATTACK_THRESHOLD,
        };
        let eeprom = manufacture::eeprom(32, DEFAULT_ENDURANCE).unwrap();
        MemCard(manufacture::make_blank(eeprom, SeededRandom::new(9), &spec).unwrap())
    }

    fn key_for(serial: &[u8; 8]) -> Zeroizing<[u8; 16]> {
        manufacture::transport_key(&devkeys::TRANSPORT.value(), serial)
    }

    #[test]
    fn a_good_blank_passes_every_step() {
        let mut card = blank(SERIAL);
        let report = test_card(&mut card, &key_for(&SERIAL));
        assert!(report.passed(), "{report:?}");
        assert_eq!(report.failure(), None);
        assert_eq!(report.chip_serial, Some(SERIAL));
        assert_eq!(report.atr, iccard_cos::ATR.to_vec());
        let steps: Vec<Step> = report.steps.iter().map(|r| r.step).collect();
        assert_eq!(steps, Step::ALL);
        // The test leaves the card a pristine blank: the authentication cost no try.
        assert_eq!(card.0.state(), CardState::OpReady);
        assert_eq!(card.0.header().attack_counter, 0);
        // And it passes again (nothing the test did spoils the card).
        assert!(test_card(&mut card, &key_for(&SERIAL)).passed());
    }

    #[test]
    fn a_card_coded_with_another_transport_key_fails_at_external_authenticate() {
        // The chip was coded with a key diversified from another master.
        let wrong_master = [0x55u8; 16];
        let spec = Manufacture {
            chip: Chip {
                chip_maker: manufacture::CHIP_MAKER,
                chip_serial: SERIAL,
                production_date: [0x20, 0x26, 0x11, 0x25],
                batch: 7,
                os_version: manufacture::OS_VERSION,
            },
            transport_key: manufacture::transport_key(&wrong_master, &SERIAL),
            transport_key_version: 1,
            attack_threshold: 64,
        };
        let eeprom = manufacture::eeprom(32, DEFAULT_ENDURANCE).unwrap();
        let mut card = MemCard(Card::manufacture(eeprom, SeededRandom::new(3), &spec).unwrap());
        let report = test_card(&mut card, &key_for(&SERIAL));
        assert!(!report.passed());
        let last = report.steps.last().unwrap();
        assert_eq!(last.step, Step::ExternalAuthenticate);
        assert!(!last.passed);
        let why = report.failure().unwrap();
        assert!(why.starts_with("EXTERNAL AUTHENTICATE: "), "{why}");
        assert!(why.contains("63CE"), "{why}");
        assert!(why.contains("another key"), "{why}");
        // Earlier steps did pass: the report says exactly where it broke.
        assert_eq!(report.steps.len(), 6);
        assert!(report.steps[..5].iter().all(|r| r.passed));
    }

    #[test]
    fn a_personalized_card_is_not_a_blank() {
        let mut card = blank(SERIAL);
        let mut admin = Admin::new(&mut card);
        admin.select_mf().unwrap();
        admin
            .ok(
                "SET STATUS card INITIALIZED",
                &Apdu::new(0x80, 0xF0, 0x80, CardState::Initialized as u8),
            )
            .expect_err("needs authentication");
        admin
            .external_authenticate(0, alg::TDES, &key_for(&SERIAL))
            .unwrap();
        admin
            .ok(
                "SET STATUS card INITIALIZED",
                &Apdu::new(0x80, 0xF0, 0x80, CardState::Initialized as u8),
            )
            .unwrap();
        let report = test_card(&mut card, &key_for(&SERIAL));
        assert!(!report.passed());
        let why = report.failure().unwrap();
        assert!(
            why.starts_with("GET DATA card state: card state 07"),
            "{why}"
        );
    }

    #[test]
    fn a_card_that_already_saw_a_failed_authentication_is_refused() {
        let mut card = blank(SERIAL);
        let mut admin = Admin::new(&mut card);
        admin.select_mf().unwrap();
        let err = admin
            .external_authenticate(0, alg::TDES, &[0u8; 16])
            .unwrap_err();
        assert!(
            matches!(err, ScriptError::Refused { sw, .. } if sw == StatusWord::verify_failed(14)),
            "{err}"
        );
        let report = test_card(&mut card, &key_for(&SERIAL));
        let why = report.failure().unwrap();
        assert!(why.contains("attack counter 1"), "{why}");
    }

    #[test]
    fn a_missing_card_fails_at_the_atr() {
        let report = test_card(&mut Absent, &[0u8; 16]);
        assert!(!report.passed());
        assert_eq!(report.steps.len(), 1);
        assert!(report.failure().unwrap().starts_with("ATR: reset failed"));
        assert!(report.atr.is_empty());
    }

    #[test]
    fn a_bad_atr_stops_the_test() {
        let mut atr = iccard_cos::ATR.to_vec();
        *atr.last_mut().unwrap() ^= 0x01;
        let mut card = OddAtr(blank(SERIAL), atr);
        let report = test_card(&mut card, &key_for(&SERIAL));
        assert_eq!(report.steps.len(), 1);
        assert!(report.failure().unwrap().contains("TCK is wrong"));
    }

    #[test]
    fn atr_structure() {
        let ours = parse_atr(&iccard_cos::ATR).unwrap();
        assert!(!ours.inverse);
        assert_eq!(ours.protocols, vec![0, 1]);
        assert_eq!(&ours.historical[2..], b"ICCARD01");
        assert!(ours.has_tck);
        // T=0 only, no interface bytes, no TCK: 3B 02 + 2 historical bytes.
        let t0 = parse_atr(&[0x3B, 0x02, 0x14, 0x50]).unwrap();
        assert!(t0.protocols.is_empty() && !t0.has_tck);
        // TA1 TB1 TC1 present (T0 = 7x), T=0 implicit.
        assert!(parse_atr(&[0x3F, 0x70, 0x11, 0x00, 0xFF]).unwrap().inverse);
        let bad: [&[u8]; 7] = [
            &[],
            &[0x3A, 0x00],
            &[0x3B],
            &[0x3B, 0x02, 0x14],
            &[0x3B, 0x80],
            &[0x3B, 0x00, 0x00],
            &[0x3B, 0x80, 0x01],
        ];
        for atr in bad {
            assert!(parse_atr(atr).is_err(), "{atr:02X?} accepted");
        }
        // Missing TCK when T=1 is announced.
        let cut = &iccard_cos::ATR[..iccard_cos::ATR.len() - 1];
        assert!(parse_atr(cut).unwrap_err().contains("with TCK"));
        let mut long = vec![0x3B, 0x0F];
        long.extend([0u8; 32]);
        assert!(parse_atr(&long).unwrap_err().contains("at most 33"));
    }
}
