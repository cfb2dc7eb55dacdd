//! The PSAM application (being written).

use crate::card::Card;
use crate::fs::CardResult;
use crate::nvm::Eeprom;
use crate::platform::RandomSource;
use iccard_apdu::{Command as Apdu, Response, StatusWord};

/// The PSAM's volatile state: the purchase whose MAC1 it computed.
#[derive(Debug, Default, Clone)]
pub struct PsamSession {}

impl<E: Eeprom, R: RandomSource> Card<E, R> {
    /// PSAM commands (CLA 80/84).
    pub(crate) fn psam_command(&mut self, apdu: &Apdu) -> CardResult<Response> {
        let _ = apdu;
        Err(StatusWord::INS_NOT_SUPPORTED)
    }
}
