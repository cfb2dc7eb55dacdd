//! The point of use's errors: what the journal, the loss list, the upload and the card flows
//! can answer. Messages name the card by its number, never a key.

use crate::record::RecordError;
use iccard_terminal::TerminalError;

/// What went wrong at the point of use.
#[derive(Debug, thiserror::Error)]
pub enum PosError {
    /// The journal database failed (the message names the file).
    #[error("journal {path}: {message}")]
    Journal {
        /// The database file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The journal holds data this version cannot read.
    #[error("journal {path}: {message}")]
    Corrupt {
        /// The database file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The card, the PSAM or the purchase flow failed.
    #[error(transparent)]
    Terminal(#[from] TerminalError),
    /// The card is on the loss list: refused. The caller may lock it (APPLICATION BLOCK).
    #[error("card {card_number} is on the loss list (version {list_version}): refused")]
    ListedCard {
        /// Card number.
        card_number: String,
        /// Application serial (hex).
        application_serial: String,
        /// The loss-list version that lists it.
        list_version: i64,
    },
    /// The loss list is too old to work offline.
    #[error("the loss list (version {version}) was last updated {updated}; the maximum age offline is {max_age_secs} s: update it before selling")]
    LossListStale {
        /// The version held.
        version: i64,
        /// When it was last updated (`never` or `YYYYMMDD HHMMSS`).
        updated: String,
        /// The configured maximum age.
        max_age_secs: u64,
    },
    /// A loss-list delta does not start at the version held.
    #[error("loss-list delta from version {from} to {to} does not follow version {have}: fetch the changes after {have}")]
    LossListGap {
        /// The version held.
        have: i64,
        /// The delta's start.
        from: i64,
        /// The delta's end.
        to: i64,
    },
    /// A loss-list delta is inconsistent.
    #[error("loss-list delta: {0}")]
    LossListInvalid(String),
    /// A batch or record cannot be encoded or does not verify.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The back office's answer does not fit the batch.
    #[error("upload results: {0}")]
    Results(String),
    /// A batch file could not be written or read.
    #[error("batch file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The caller's input is unusable.
    #[error("{0}")]
    Input(String),
}

/// Results of this crate.
pub type Result<T, E = PosError> = std::result::Result<T, E>;
