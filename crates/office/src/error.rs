//! The back office's error type: every variant says what went wrong and what to do.

use crate::operators::{Action, Role};

/// Result with [`OfficeError`].
pub type Result<T, E = OfficeError> = std::result::Result<T, E>;

/// Everything a back-office operation can refuse or fail with. Messages never contain a
/// password, a key or a password hash.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfficeError {
    /// The database driver failed.
    #[error("database error: {0} (check the database URL, that the server runs and that the schema is migrated)")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0} (the database may belong to a newer iccard; do not edit applied migrations)")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The database URL is unusable.
    #[error("database URL {url} is not usable: {reason}")]
    BadDatabaseUrl {
        /// The URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The schema is missing.
    #[error("the database has no back-office schema: run `iccard office init` first")]
    NotMigrated,
    /// No back office was created in this database yet.
    #[error("no back office in this database: run `iccard office init` first")]
    NotInitialized,
    /// `init` ran on a database that already holds a back office.
    #[error("this database already holds a back office (issuer {issuer_number}); use another database URL")]
    AlreadyInitialized {
        /// The issuer number found.
        issuer_number: String,
    },
    /// The operator's role does not allow the action.
    #[error("operator {login} ({role}) may not {action}: ask an administrator to run it or to change the role")]
    Denied {
        /// The operator.
        login: String,
        /// Their role.
        role: Role,
        /// What they tried.
        action: Action,
    },
    /// Wrong login or password (deliberately not saying which).
    #[error("login refused: unknown operator, wrong password or disabled account; check the login and password or ask an administrator")]
    LoginRefused,
    /// The operator was disabled after logging in.
    #[error("operator {login} is disabled: ask an administrator")]
    OperatorDisabled {
        /// The operator.
        login: String,
    },
    /// The keystore refused or failed a step (the message names no key).
    #[error("keystore: {0}")]
    Keystore(String),
    /// The card refused, answered wrongly or could not be reached.
    #[error("card: {0}")]
    Card(String),
    /// A card of another issuer.
    #[error("card {application_serial} belongs to issuer {issuer_id}, not to this office: nothing was done")]
    ForeignCard {
        /// The card.
        application_serial: String,
        /// The issuer identifier the card carries (hex).
        issuer_id: String,
    },
    /// A lost card's balance cannot move yet: late records may still arrive.
    #[error("card {application_serial}: the late-record window of {days} days since the loss report has {remaining_hours} hour(s) to run; its balance moves to the new card after that")]
    LateRecordWindow {
        /// The lost card.
        application_serial: String,
        /// The window.
        days: i64,
        /// Hours left.
        remaining_hours: i64,
    },
    /// The card's status does not allow the operation.
    #[error("card {application_serial} is {status}; this needs a card that is {needed}")]
    CardStatus {
        /// The card.
        application_serial: String,
        /// Its status.
        status: &'static str,
        /// The status the operation needs.
        needed: &'static str,
    },
    /// CREDIT FOR LOAD left and its answer was lost: the load stays pending.
    #[error("the answer to CREDIT FOR LOAD from card {application_serial} was lost ({cause}): the load is pending; present the card again (`iccard office recharge --settle`) and the card's own serial will show whether it happened; do not hand the cash back before that")]
    LoadAnswerLost {
        /// The card.
        application_serial: String,
        /// What went wrong.
        cause: String,
    },
    /// An input is malformed.
    #[error("{what} is not valid: {why}")]
    Invalid {
        /// Which input.
        what: &'static str,
        /// What is expected.
        why: String,
    },
    /// A named thing does not exist.
    #[error("no {what} {key}: check the spelling or list them first")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its key.
        key: String,
    },
    /// A named thing exists already.
    #[error("{what} {key} exists already: choose another")]
    Duplicate {
        /// What kind of thing.
        what: &'static str,
        /// Its key.
        key: String,
    },
    /// The operation needs a machine of another kind.
    #[error("machine {machine_number} is a {actual}, but this operation must run at a {needed}: log in at the right machine")]
    WrongMachine {
        /// The machine.
        machine_number: String,
        /// Its kind.
        actual: &'static str,
        /// The kind needed.
        needed: &'static str,
    },
    /// An amount overflowed or went negative.
    #[error("amount out of range: {0} (amounts are positive integers of minor units below 2^63)")]
    AmountOutOfRange(String),
    /// A journal entry does not balance (a bug in the caller: nothing was written).
    #[error("journal entry does not balance: debits {debit_minor}, credits {credit_minor}; nothing was posted")]
    Unbalanced {
        /// Sum of debits.
        debit_minor: i64,
        /// Sum of credits.
        credit_minor: i64,
    },
    /// The card's online serial differs from the shadow account's.
    #[error("card {application_serial} reports online serial {card}, the back office expects {expected}: a load is missing or duplicated; do not load, open a case")]
    OnlineSerialMismatch {
        /// The card.
        application_serial: String,
        /// What the card said.
        card: i64,
        /// What the shadow account holds.
        expected: i64,
    },
    /// A purchase was already recorded (or is older than the last one).
    #[error("card {application_serial} offline serial {offline_serial} is already settled (last settled {last}); nothing to do")]
    OfflineSerialSettled {
        /// The card.
        application_serial: String,
        /// The record's serial.
        offline_serial: i64,
        /// The last settled serial.
        last: i64,
    },
    /// The shadow balance cannot cover a purchase.
    #[error("card {application_serial} shadow balance {balance_minor} cannot cover {amount_minor}: open a case")]
    ShadowBalanceShort {
        /// The card.
        application_serial: String,
        /// Shadow balance.
        balance_minor: i64,
        /// The purchase amount.
        amount_minor: i64,
    },
    /// The last active administrator cannot be disabled or demoted.
    #[error("{login} is the last active administrator: create another administrator first")]
    LastAdministrator {
        /// The operator.
        login: String,
    },
    /// A chip lot's serial range overlaps one already received.
    #[error("chip serials {first}..{last} overlap lot {lot_number} ({other_first}..{other_last}): check the first serial and the quantity on the delivery note")]
    ChipRangeOverlap {
        /// First serial of the new lot.
        first: String,
        /// Last serial of the new lot.
        last: String,
        /// The lot already holding some of them.
        lot_number: String,
        /// Its first serial.
        other_first: String,
        /// Its last serial.
        other_last: String,
    },
    /// More was asked than there is (chips in a lot, card bodies in an order, cards in stock).
    #[error("{what}: {asked} asked but only {available} left; {hint}")]
    Insufficient {
        /// What ran short.
        what: String,
        /// How many were asked for.
        asked: i64,
        /// How many there are.
        available: i64,
        /// What to do.
        hint: &'static str,
    },
    /// A production stage was recorded out of order or twice.
    #[error("batch {batch_id}: {stage} cannot be recorded now: {why}")]
    StageOutOfOrder {
        /// The batch.
        batch_id: i64,
        /// The stage asked for.
        stage: &'static str,
        /// Where the batch stands and what comes next.
        why: String,
    },
    /// A physical card cannot move from its inventory state to the one asked for.
    #[error("card {chip_serial} is {from} and cannot become {to} (from {from} it may become: {allowed})")]
    InventoryTransition {
        /// The card's chip serial.
        chip_serial: String,
        /// Its state.
        from: &'static str,
        /// The state asked for.
        to: &'static str,
        /// The states it may move to.
        allowed: String,
    },
    /// Password hashing failed.
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    /// A load would take the card above its product's maximum balance.
    #[error("card {application_serial} would hold {after_minor}, above its product's maximum balance {max_minor}: load less")]
    AboveMaximumBalance {
        /// The card.
        application_serial: String,
        /// The balance after the load.
        after_minor: i64,
        /// The maximum.
        max_minor: i64,
    },
    /// DEBIT FOR UNLOAD left and its answer was lost: the return stays open.
    #[error("the answer to DEBIT FOR UNLOAD from card {application_serial} was lost ({cause}): the return is open; present the card again (`iccard office return --resume`) and the card's own serial will show whether the unload happened; pay no refund before that")]
    ReturnAnswerLost {
        /// The card.
        application_serial: String,
        /// What went wrong.
        cause: String,
    },
    /// The refund the operator accepted is not the one the office computes now.
    #[error("the refund quoted was {quoted_minor} but is {now_minor} now (the card or the rules changed): show the new quote to the holder and confirm it")]
    QuoteChanged {
        /// What the operator confirmed.
        quoted_minor: i64,
        /// What the rules give now.
        now_minor: i64,
    },
    /// Stored data contradicts itself.
    #[error("stored data is inconsistent: {0}; run `iccard office check`")]
    Corrupt(String),
}
