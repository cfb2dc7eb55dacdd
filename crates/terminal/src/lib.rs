//! # iccard-terminal: recharge and purchase flows, written once against `CardChannel`
//!
//! The terminal side of the PBOC electronic purse (DESIGN §4), over any transport that
//! implements [`iccard_link::CardChannel`] (an image card in-process today; vpcd and PC/SC
//! later):
//!
//! - [`card`]: the purse commands as typed calls ([`PurseCard`]), the card's identity, the
//!   transaction log, [`read_balance`] and [`read_log`];
//! - [`psam`]: the terminal's PSAM: terminal id, MAC1 generation, MAC2 verification ([`Psam`]);
//! - [`host`]: what a recharge host needs from the issuer's keys ([`HostKeys`]), implemented in
//!   memory by [`MasterKeyHost`] (development keys) until the keystore does it;
//! - [`recharge`]: the online load ([`Recharge`]) and the unload of a returned card; [`purchase`]: the offline purchase with the
//!   PSAM ([`Purchase`]);
//! - [`pending`] and [`recovery`]: tear recovery. The terminal records what it knows before the
//!   money-moving command leaves ([`PendingTransaction`]); when its answer is lost, the same card
//!   tells whether it happened (serial unchanged: repeat; serial + 1: fetch the proof), so a
//!   transaction is never charged twice and never lost.
//!
//! The library reads no clock (the caller passes [`TransactionTime`]) and never sees a purchase
//! key; host keys stay behind [`HostKeys`]. Errors carry the status word and its meaning, never
//! a key.
//!
//! Architecture invariant: no SQL, no knowledge of the back office; APDUs only through
//! `CardChannel`.

pub mod card;
pub mod error;
mod hexser;
pub mod host;
mod io;
pub mod outcome;
pub mod pending;
pub mod psam;
pub mod purchase;
pub mod recharge;
pub mod recovery;
pub mod time;

pub use card::{read_balance, read_log, BalanceReport, CardIdentity, LogRecord, PurseCard};
pub use error::{Device, HostKeyError, TerminalError};
pub use host::{CardKeyRef, HostKeys, LoadContext, MasterKeyHost, OnlineKind, TacInput};
pub use outcome::{LoadOutcome, PurchaseOutcome, RecoveryNote};
pub use pending::{MemoryPending, PendingFile, PendingStore, PendingTransaction, TransactionKind};
pub use psam::{Mac1Request, Psam};
pub use purchase::Purchase;
pub use recharge::{PreparedLoad, ProvenBalance, Recharge};
pub use recovery::{recover, Recovery};
pub use time::TransactionTime;
