//! The PBOC electronic purse / passbook application (being written).

use crate::card::Card;
use crate::fs::CardResult;
use crate::nvm::Eeprom;
use crate::platform::RandomSource;
use iccard_apdu::{Command as Apdu, Response, StatusWord};

/// The purse's volatile state: the transaction initialized and not yet completed.
#[derive(Debug, Default, Clone)]
pub struct PurseSession {}

impl<E: Eeprom, R: RandomSource> Card<E, R> {
    /// Purse commands (CLA 80/84).
    pub(crate) fn purse_command(&mut self, apdu: &Apdu) -> CardResult<Response> {
        let _ = apdu;
        Err(StatusWord::INS_NOT_SUPPORTED)
    }
}
