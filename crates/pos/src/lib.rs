//! # iccard-pos: the offline point of use
//!
//! A terminal that sells without the back office — a phone, a POS, a gate — with its PSAM
//! (the purchase keys stay in it), a journal and a loss list in one SQLite file, and the
//! client side of the upload:
//!
//! - [`journal`]: one row per purchase keyed by (terminal id, terminal serial), written as
//!   `pending` before DEBIT FOR PURCHASE leaves, made `normal`, `recovered`, `failed` or
//!   `suspicious` when the answer is in ([`Journal`], the purchase's
//!   [`iccard_terminal::PendingStore`]);
//! - [`pos`]: [`PointOfUse::sell`] (loss list, list age, earlier interruptions settled, the PBOC
//!   purchase) and metered use ([`MeteredSession`]: one purchase per tariff unit);
//! - [`losslist`]: the local loss list, brought forward by the back office's deltas;
//! - [`upload`]: records sealed into batches chained by SHA-256, exported to a file for a
//!   terminal never online, answered per record;
//! - [`record`]: the wire types (records, batches, result codes) the back office shares.
//!
//! Invariants:
//! - the library reads no clock: every time (sale, meter tick, list update) is passed in;
//! - the journal row is durable (WAL, `synchronous=FULL`, committed) before the command that
//!   moves money leaves, and a row never leaves `pending` except with its outcome, so a crash
//!   at any instant loses no purchase and none is counted twice (a repeat supersedes the row
//!   it repeats in the same SQLite transaction);
//! - nothing is deleted from the journal; every PSAM terminal serial used appears once;
//! - no key is seen: MAC1 and MAC2 are the PSAM's; TACs are checked by the back office.

mod db;
pub mod error;
pub mod journal;
pub mod losslist;
pub mod pos;
pub mod record;
pub mod upload;

pub use db::SCHEMA_VERSION;
pub use error::{PosError, Result};
pub use journal::{Journal, JournalRecord, UploadState};
pub use losslist::{seconds_of, DeltaOutcome, LossAction, LossList, LossListChange, LossListDelta};
pub use pos::{
    MeteredSession, MeteredSummary, PointOfUse, PosConfig, Resolution, Sale, Stop, Tick,
};
pub use record::{
    verify_chain, Batch, BatchFile, BatchResults, PurchaseRecord, RecordError, RecordResult,
    RecordStatus, ResultCode, BATCH_FILE_FORMAT, BATCH_FORMAT, GENESIS_HASH,
};
pub use upload::{read_batch_file, UploadSummary};
