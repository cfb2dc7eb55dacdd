//! # iccard-issuer: the issuer's side of making cards
//!
//! - [`devkeys`]: the published development key set (demos and tests only).
//! - [`manufacture`]: blank cards as a card maker delivers them: chip data, a transport key
//!   diversified from the transport master key by the chip serial, state OP_READY.
//! - [`functional`]: the end-of-production functional test of a blank card (ATR, SELECT MF,
//!   chip data, OP_READY, GET CHALLENGE, EXTERNAL AUTHENTICATE with the transport key).
//! - [`psam`]: PSAM personalization (terminal id, purchase master keys, serial file).
//! - [`recycle`]: a returned card's purse blocked for good, the card terminated or erased for
//!   refurbishment.
//!
//! Architecture invariant: host-side logic only; it talks to cards through APDUs (or, for
//! manufacture, by formatting a fresh EEPROM as the chip maker's equipment would).

pub mod devkeys;
pub mod functional;
pub mod keys;
pub mod manufacture;
pub mod personalize;
pub mod psam;
pub mod recycle;
pub mod script;
