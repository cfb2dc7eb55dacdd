//! # iccard-link: how APDUs reach a card
//!
//! One trait, [`CardChannel`], that every transport implements and all terminal logic is
//! written against: an in-process card whose EEPROM lives in an image file ([`ImageCard`]),
//! the card side of vsmartcard's vpcd protocol ([`vpcd::serve`]: any channel served to pcscd
//! as a virtual reader's card) and the reader side of PC/SC ([`PcscCard`]).
//!
//! Architecture invariant: this crate moves APDU bytes and card images; it knows nothing of
//! what the APDUs mean.

pub mod image;
pub mod local;
pub mod pcsc;
pub mod vpcd;

pub use crate::pcsc::{list_readers, transmit_full, PcscCard, PcscTransaction, ReaderInfo};
pub use image::{load_image, save_image, ImageFileError};
pub use local::{ImageCard, OsRandom};

/// Why a channel could not deliver an APDU.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The card image could not be read or written.
    #[error(transparent)]
    Image(#[from] ImageFileError),
    /// The card could not be powered up.
    #[error("card: {0}")]
    Card(#[from] iccard_cos::CardError),
    /// The card lost power in the middle of a command.
    #[error("the card lost power during the command")]
    PowerLost,
    /// A PC/SC call failed.
    #[error("PC/SC: {what}: {source}")]
    Pcsc {
        /// What was being done, and what may help.
        what: String,
        /// pcsc-lite's error.
        source: ::pcsc::Error,
    },
    /// No reader matches the name given.
    #[error("no PC/SC reader matches {wanted:?} (readers: {known})")]
    NoSuchReader {
        /// The name asked for.
        wanted: String,
        /// The readers there are.
        known: String,
    },
    /// The connection to vpcd failed.
    #[error("vpcd: {what}: {source}")]
    Vpcd {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A connection to one card: APDU bytes in, response APDU bytes out.
pub trait CardChannel {
    /// Sends one command APDU and returns the response APDU (data ‖ SW1 SW2).
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError>;
    /// Resets the card and returns its ATR.
    fn reset(&mut self) -> Result<Vec<u8>, LinkError>;
}

impl<C: CardChannel + ?Sized> CardChannel for &mut C {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        (**self).transmit(apdu)
    }
    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        (**self).reset()
    }
}
