//! The end of a personal card's life, on the card: what the issuer does to a returned card once
//! its purse has been unloaded.
//!
//! - [`block_purse`]: APPLICATION BLOCK for good (`84 1E 00 01`, MAC with the purse's
//!   maintenance key DAMK): the purse answers `9303` from then on, to every terminal.
//! - [`terminate_card`]: TERMINATE CARD USAGE (`84 FE 00 00`, MAC with the card-level
//!   maintenance key): irreversible; the card erases its secrets and answers GET DATA only. The
//!   card is then destroyed.
//! - [`erase_card`]: EXTERNAL AUTHENTICATE with the card master key at the MF, then ERASE DF at
//!   the MF: every application, file and key goes (nothing of the holder stays); the chip keeps
//!   its chip data and must be coded again (a transport key written by the card maker's
//!   equipment) before it can be personalized again: refurbishment.
//!
//! Keys come from [`IssuerKeys`] (the office's keystore), diversified by the card number as in
//! personalization; no master key is held here.

use crate::devkeys;
use crate::keys::IssuerKeys;
use crate::personalize::{alg_byte, keyed, CardNumber, Domain, PURSE_AID};
use crate::script::{Admin, ScriptError};
use iccard_apdu::Command as Apdu;
use iccard_cos::keys::alg;
use iccard_crypto::PurseAlg;
use iccard_link::CardChannel;

/// Blocks the purse application of card `card_number` for good. `purse_alg` is the purse's
/// algorithm generation (its maintenance key's).
pub fn block_purse<C: CardChannel>(
    admin: &mut Admin<C>,
    card_number: &str,
    purse_alg: PurseAlg,
    keys: &dyn IssuerKeys,
) -> Result<(), ScriptError> {
    let d = CardNumber::diversifier(&CardNumber::serial(card_number)?);
    admin.select_aid(PURSE_AID)?;
    let damk = keyed(keys, &devkeys::MAMK, purse_alg, &d, Domain::Purse)?;
    admin.ok_mac(
        "APPLICATION BLOCK purse for good",
        &Apdu::new(0x80, 0x1E, 0x00, 0x01),
        alg_byte(purse_alg),
        &damk,
    )?;
    Ok(())
}

/// Terminates card `card_number` for good (TERMINATE CARD USAGE under the card-level
/// maintenance key's MAC).
pub fn terminate_card<C: CardChannel>(
    admin: &mut Admin<C>,
    card_number: &str,
    keys: &dyn IssuerKeys,
) -> Result<(), ScriptError> {
    let d = CardNumber::diversifier(&CardNumber::serial(card_number)?);
    admin.select_mf()?;
    let maintenance = keyed(keys, &devkeys::MAMK, PurseAlg::TripleDes, &d, Domain::Card)?;
    admin.ok_mac(
        "TERMINATE CARD USAGE",
        &Apdu::new(0x80, 0xFE, 0x00, 0x00),
        alg::TDES,
        &maintenance,
    )?;
    Ok(())
}

/// Erases everything below the MF of card `card_number` (card master key, then ERASE DF).
pub fn erase_card<C: CardChannel>(
    admin: &mut Admin<C>,
    card_number: &str,
    keys: &dyn IssuerKeys,
) -> Result<(), ScriptError> {
    let d = CardNumber::diversifier(&CardNumber::serial(card_number)?);
    admin.select_mf()?;
    let cmk = keyed(keys, &devkeys::MCMK, PurseAlg::TripleDes, &d, Domain::Card)?;
    admin.external_authenticate(0, alg::TDES, &cmk)?;
    admin.ok("ERASE DF at the MF", &Apdu::new(0x80, 0x0E, 0x00, 0x00))?;
    Ok(())
}
