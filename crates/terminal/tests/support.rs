//! Cards, PSAMs and misbehaving channels for the terminal tests.

use iccard_issuer::devkeys;
use iccard_link::CardChannel;
use iccard_terminal::{MasterKeyHost, Psam, PurseCard, TransactionTime};

/// The terminal id of the test PSAM and recharge point.
pub const TERMINAL_ID: [u8; 6] = [0x12, 0x34, 0x56, 0x78, 0x90, 0x01];
/// Another terminal.
pub const OTHER_TERMINAL_ID: [u8; 6] = [0x99, 0x88, 0x77, 0x66, 0x55, 0x44];

pub use iccard_testkit::{psam_card, user_card, Fault, Flaky, MemCard};

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
