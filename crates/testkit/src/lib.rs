//! # iccard-testkit: what the tests of several crates need
//!
//! Real cards, not mocks: [`MemCard`] is the card OS itself in memory behind a
//! [`CardChannel`]; [`blank`] codes a blank card the way manufacture does; [`user_card`] and
//! [`psam_card`] run the real personalization scripts. [`Flaky`] is a channel that loses one
//! command or one answer on cue, the way a card pulled from the reader does.
//!
//! Only for tests and benches (`[dev-dependencies]`).

use iccard_cos::nvm::SimEeprom;
use iccard_cos::{Card, SeededRandom};
use iccard_crypto::PurseAlg;
use iccard_issuer::keys::IssuerKeys;
use iccard_issuer::manufacture::{self, BlankCard};
use iccard_issuer::personalize::{self, Personalization, PurseProfile};
use iccard_issuer::psam::{self as psam_perso, PsamPersonalization};
use iccard_link::{CardChannel, LinkError};

/// A card in memory, powered by the test.
pub struct MemCard(pub Card<SimEeprom, SeededRandom>);

impl CardChannel for MemCard {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        Ok(self.0.process(apdu))
    }
    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        Ok(self.0.reset())
    }
}

/// A blank card (chip serial = `seed`, 32 KiB EEPROM, development transport key).
pub fn blank(seed: u64) -> MemCard {
    let eeprom = manufacture::eeprom(32, iccard_cos::nvm::DEFAULT_ENDURANCE)
        .expect("a 32 KiB EEPROM is a valid size");
    let spec = BlankCard {
        chip_serial: seed.to_be_bytes(),
        production_date: [0x20, 0x25, 0x01, 0x01],
        batch: 1,
        transport_key_version: 1,
        attack_threshold: 64,
    };
    MemCard(
        manufacture::make_blank(eeprom, SeededRandom::new(seed), &spec)
            .expect("a blank card can be coded"),
    )
}

/// A fixed purse profile: valid 2025-01-01 to 2035-12-31, default limits.
pub fn profile() -> PurseProfile {
    PurseProfile {
        start_date: [0x20, 0x25, 0x01, 0x01],
        expiry_date: [0x20, 0x35, 0x12, 0x31],
        ..PurseProfile::default()
    }
}

/// A personalized user card (PIN 123456) with the development keys.
pub fn user_card(card_number: &str, alg: PurseAlg, seed: u64) -> MemCard {
    let mut p = Personalization::new(card_number, "123456", alg);
    p.purse = profile();
    personalize::personalize(blank(seed), &p).expect("personalization runs")
}

/// A personalized user card of issuer `issuer_id`, keys from `keys`.
pub fn issued_card(
    card_number: &str,
    alg: PurseAlg,
    seed: u64,
    issuer_id: [u8; 8],
    keys: &dyn IssuerKeys,
) -> MemCard {
    let mut p = Personalization::new(card_number, "123456", alg);
    p.purse = profile();
    p.purse.issuer_id = issuer_id;
    personalize::personalize_with(blank(seed), &p, keys).expect("personalization runs")
}

/// A personalized PSAM with the development keys.
pub fn psam_card(terminal_id: [u8; 6], seed: u64) -> MemCard {
    psam_perso::personalize(blank(seed), &PsamPersonalization { terminal_id })
        .expect("PSAM personalization runs")
}

/// What a [`Flaky`] channel does to the next command with a given INS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The card executes the command; its answer is lost.
    LoseAnswer,
    /// The command never reaches the card.
    LoseCommand,
    /// The card executes it; the answer's byte at `offset` is flipped in transit.
    Corrupt(usize),
}

/// A channel that misbehaves once on the first command with INS `ins` (CLA 80).
pub struct Flaky<C> {
    /// The card behind.
    pub inner: C,
    /// Which command, and what happens to it.
    pub armed: Option<(u8, Fault)>,
    /// Whether the fault fired.
    pub fired: bool,
}

impl<C> Flaky<C> {
    /// Wraps a channel; faults once on INS `ins`.
    pub fn new(inner: C, ins: u8, fault: Fault) -> Self {
        Self {
            inner,
            armed: Some((ins, fault)),
            fired: false,
        }
    }
}

impl<C: CardChannel> CardChannel for Flaky<C> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        match self.armed {
            Some((ins, fault)) if apdu.len() > 1 && apdu[0] == 0x80 && apdu[1] == ins => {
                self.armed = None;
                self.fired = true;
                match fault {
                    Fault::LoseAnswer => {
                        self.inner.transmit(apdu)?;
                        Err(LinkError::PowerLost)
                    }
                    Fault::LoseCommand => Err(LinkError::PowerLost),
                    Fault::Corrupt(offset) => {
                        let mut r = self.inner.transmit(apdu)?;
                        if let Some(b) = r.get_mut(offset) {
                            *b ^= 0x01;
                        }
                        Ok(r)
                    }
                }
            }
            _ => self.inner.transmit(apdu),
        }
    }
    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        self.inner.reset()
    }
}
