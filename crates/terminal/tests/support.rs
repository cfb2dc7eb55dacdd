//! Cards, PSAMs and misbehaving channels for the terminal tests.

use iccard_cos::nvm::SimEeprom;
use iccard_cos::{Card, SeededRandom};
use iccard_crypto::PurseAlg;
use iccard_issuer::devkeys;
use iccard_issuer::manufacture::{self, BlankCard};
use iccard_issuer::personalize::{self, Personalization, PurseProfile};
use iccard_issuer::psam::{self as psam_perso, PsamPersonalization};
use iccard_link::{CardChannel, LinkError};
use iccard_terminal::{MasterKeyHost, Psam, PurseCard, TransactionTime};

/// The terminal id of the test PSAM and recharge point.
pub const TERMINAL_ID: [u8; 6] = [0x12, 0x34, 0x56, 0x78, 0x90, 0x01];
/// Another terminal.
pub const OTHER_TERMINAL_ID: [u8; 6] = [0x99, 0x88, 0x77, 0x66, 0x55, 0x44];

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

fn blank(seed: u64) -> MemCard {
    let eeprom = manufacture::eeprom(32, iccard_cos::nvm::DEFAULT_ENDURANCE).unwrap();
    let spec = BlankCard {
        chip_serial: seed.to_be_bytes(),
        production_date: [0x20, 0x25, 0x01, 0x01],
        batch: 1,
        transport_key_version: 1,
        attack_threshold: 64,
    };
    MemCard(manufacture::make_blank(eeprom, SeededRandom::new(seed), &spec).unwrap())
}

/// A fixed purse profile: valid 2025-01-01 to 2035-12-31, default limits.
pub fn profile() -> PurseProfile {
    PurseProfile {
        start_date: [0x20, 0x25, 0x01, 0x01],
        expiry_date: [0x20, 0x35, 0x12, 0x31],
        ..PurseProfile::default()
    }
}

/// A personalized user card.
pub fn user_card(card_number: &str, alg: PurseAlg, seed: u64) -> MemCard {
    let mut p = Personalization::new(card_number, "123456", alg);
    p.purse = profile();
    personalize::personalize(blank(seed), &p).unwrap()
}

/// A personalized PSAM.
pub fn psam_card(terminal_id: [u8; 6], seed: u64) -> MemCard {
    psam_perso::personalize(blank(seed), &PsamPersonalization { terminal_id }).unwrap()
}

/// The development host keys.
pub fn host() -> MasterKeyHost {
    MasterKeyHost::new(devkeys::MLK.value(), devkeys::MTK.value())
}

/// Opens a card's purse.
pub fn open<C: CardChannel>(c: C) -> PurseCard<C> {
    PurseCard::open(c).unwrap()
}

/// Opens a PSAM.
pub fn open_psam<C: CardChannel>(c: C) -> Psam<C> {
    Psam::open(c).unwrap()
}

/// A fixed transaction time.
pub fn at(time: &str) -> TransactionTime {
    TransactionTime::parse("20260314", time).unwrap()
}

/// What a [`Flaky`] channel does to the next command with a given INS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The card executes the command; its answer is lost.
    LoseAnswer,
    /// The command never reaches the card.
    LoseCommand,
    /// The card executes it; the answer's first data byte at `offset` is flipped in transit.
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
                        r[offset] ^= 0x01;
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
