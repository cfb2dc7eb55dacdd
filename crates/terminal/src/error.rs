//! What can go wrong at a terminal, with the status word and its meaning where a card or PSAM
//! answered. No variant ever carries key material: errors go to logs and screens.

use crate::pending::PendingTransaction;
use iccard_apdu::StatusWord;
use iccard_link::LinkError;

/// Which device an exchange was with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The user's card (purse).
    Card,
    /// The terminal's PSAM.
    Psam,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Card => "the card",
            Device::Psam => "the PSAM",
        })
    }
}

/// Why the host keys could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyError {
    /// No master key for this key version and algorithm.
    #[error(
        "the host has no {purpose} master key of version {version:02X} for algorithm {alg_id:02X}"
    )]
    UnknownKey {
        /// Load or TAC.
        purpose: &'static str,
        /// Key version the card announced.
        version: u8,
        /// Algorithm id the card announced.
        alg_id: u8,
    },
    /// The key store is unavailable (a keystore or HSM implementation's failure).
    #[error("the host key store is unavailable: {0}")]
    Unavailable(String),
}

/// A terminal operation that did not complete normally.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// The transport to a device failed before an answer arrived.
    #[error("{device}: no answer to {step}: {source}")]
    Link {
        /// The device.
        device: Device,
        /// The command that was sent.
        step: &'static str,
        /// The transport error.
        source: LinkError,
    },
    /// A device answered an error status.
    #[error("{device} refused {step}: {sw}")]
    Refused {
        /// The device.
        device: Device,
        /// The command.
        step: &'static str,
        /// The status word (its Display carries the meaning).
        sw: StatusWord,
    },
    /// A device answered data of the wrong shape.
    #[error("{device} answered {step} with {len} bytes, expected {expected}")]
    Malformed {
        /// The device.
        device: Device,
        /// The command.
        step: &'static str,
        /// Bytes received.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// A file on the card holds something this terminal cannot use.
    #[error("{device}: {what}")]
    BadData {
        /// The device.
        device: Device,
        /// What is wrong.
        what: String,
    },
    /// The card's MAC1 of INITIALIZE FOR LOAD does not verify: the card is not one of this
    /// issuer's, or the host holds other keys. Nothing was loaded.
    #[error("the card's MAC1 does not verify with the host keys: not a card of this issuer or the wrong key set; nothing was loaded")]
    Mac1Invalid,
    /// The card is outside its validity period.
    #[error("the card is not valid on {date}: valid from {start} to {expiry}")]
    NotValid {
        /// Transaction date (YYYYMMDD).
        date: String,
        /// Start date.
        start: String,
        /// Expiry date.
        expiry: String,
    },
    /// The balance would overflow the card's 4-byte balance.
    #[error("a load of {amount_fen} fen onto a balance of {balance_fen} fen does not fit the card's balance")]
    BalanceOverflow {
        /// Current balance.
        balance_fen: u32,
        /// Requested amount.
        amount_fen: u32,
    },
    /// The host keys failed.
    #[error(transparent)]
    HostKeys(#[from] HostKeyError),
    /// The card announced data (`61xx`: the command completed) but fetching it with GET
    /// RESPONSE failed: the command ran and its answer is lost.
    #[error("{device} completed {step} but its answer could not be fetched (GET RESPONSE answered {sw})")]
    IncompleteAnswer {
        /// Card or PSAM.
        device: Device,
        /// What was being done.
        step: &'static str,
        /// What GET RESPONSE answered.
        sw: StatusWord,
    },
    /// The answer to the completing command (CREDIT FOR LOAD, DEBIT FOR PURCHASE) was lost: the
    /// card may or may not have executed it. The pending record is saved; recovery decides.
    #[error("the answer to {step} was lost ({cause}); the transaction is pending: present the same card again to finish it")]
    AnswerLost {
        /// The command whose answer was lost.
        step: &'static str,
        /// What the terminal knew before sending it.
        pending: Box<PendingTransaction>,
        /// What happened instead of an answer.
        cause: String,
    },
    /// Recovery was asked for with another card than the pending transaction's.
    #[error("this is card {found}, but the pending transaction is on card {expected}")]
    WrongCard {
        /// The pending transaction's card number.
        expected: String,
        /// The card presented.
        found: String,
    },
    /// Recovery could not decide whether the pending transaction happened; the pending record
    /// is kept for the back office to settle.
    #[error("cannot tell whether the pending transaction happened: {0}; it stays pending for settlement")]
    Undetermined(String),
    /// The pending-transaction record could not be written or read.
    #[error("pending-transaction record {path}: {message}")]
    PendingStore {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The caller's input is unusable.
    #[error("{0}")]
    Input(String),
}

impl TerminalError {
    /// The status word, when a device refused.
    pub fn status(&self) -> Option<StatusWord> {
        match self {
            TerminalError::Refused { sw, .. } => Some(*sw),
            _ => None,
        }
    }
}
