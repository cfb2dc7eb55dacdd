//! Operators, roles and what each role may do; argon2id password hashes.
//!
//! An operator has exactly one [`Role`]; [`Role::permits`] is the single table that decides
//! which [`Action`]s a role may run. It encodes separation of duties: administrators manage
//! people and machines but move no money, clerks move money but manage nobody, auditors only
//! read and verify.
//!
//! Cashier shifts: recharge and issuance clerks open and close their own shift at a recharge
//! point; an administrator may close another operator's shift (a supervisor close, with a
//! reason) but opens none, so administrators still move no money of their own.
//!
//! Card products and manufacture belong to administrators: defining and revising products,
//! receiving chip lots, opening production orders and batches, recording every production stage
//! and allocating stock to branches and operators. No money moves in any of them, and the
//! issue's four roles stay four: the production line is run from an office console by an
//! administrator (the person who manages the issuer's equipment and people already). Clerks and
//! auditors read products and inventory (reads are not role-gated) but change none of it.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::error::{OfficeError, Result};

/// An operator's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages operators, branches and machines; defines card products and runs manufacture.
    Administrator,
    /// Issues cards (deposit and card fee).
    IssuanceClerk,
    /// Loads cards at a recharge point and hands cash to the bank.
    RechargeClerk,
    /// Reads and verifies: ledger check, audit chain.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [
        Role::Administrator,
        Role::IssuanceClerk,
        Role::RechargeClerk,
        Role::Auditor,
    ];

    /// The name stored in the database and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::IssuanceClerk => "issuance_clerk",
            Role::RechargeClerk => "recharge_clerk",
            Role::Auditor => "auditor",
        }
    }

    /// Parses a stored or typed role name.
    pub fn parse(s: &str) -> Result<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| OfficeError::Invalid {
                what: "role",
                why: format!(
                    "{s:?} is not a role; use administrator, issuance_clerk, recharge_clerk or auditor"
                ),
            })
    }

    /// Whether this role may run `action`.
    pub fn permits(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Administrator => matches!(
                action,
                CreateOperator
                    | ChangeOperatorRole
                    | DisableOperator
                    | CreateBranch
                    | RegisterMachine
                    | RetireMachine
                    | KeyCeremony
                    | ChangeSettings
                    | SettlePurchase
                    | Check
                    | VerifyAudit
                    | DefineProduct
                    | ReviseProduct
                    | ReceiveChipLot
                    | OpenProductionOrder
                    | StartProductionBatch
                    | RecordProductionStage
                    | AllocateCards
                    | ReturnCardsToStock
                    | ExpireCards
                    | CloseShift
                    | ManageMerchants
                    | ImportBatches
                    | RunSettlement
                    | ResolveCase
            ),
            Role::IssuanceClerk => matches!(
                action,
                OpenCard
                    | IssueCard
                    | ReportLoss
                    | WithdrawLoss
                    | ReturnCard
                    | OpenShift
                    | CloseShift
            ),
            Role::RechargeClerk => {
                matches!(action, LoadCard | BankDeposit | OpenShift | CloseShift)
            }
            Role::Auditor => matches!(action, Check | VerifyAudit | ReadLedger),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something an operator can ask the back office to do (the audit log's `action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Create the back office.
    Init,
    /// Log in.
    Login,
    /// Create an operator.
    CreateOperator,
    /// Change an operator's role.
    ChangeOperatorRole,
    /// Disable an operator.
    DisableOperator,
    /// Create a branch.
    CreateBranch,
    /// Register a recharge point, terminal or console.
    RegisterMachine,
    /// Retire a machine.
    RetireMachine,
    /// Issue a card: open its shadow account, take deposit and card fee.
    OpenCard,
    /// Load (recharge) a card against cash.
    LoadCard,
    /// Hand a recharge point's cash to the bank.
    BankDeposit,
    /// Settle an uploaded offline purchase (stand-in until settlement lands).
    SettlePurchase,
    /// A key ceremony step in the keystore (generate, import, activate, retire).
    KeyCeremony,
    /// Issue a card: personalize a stocked card and open its account.
    IssueCard,
    /// Change an office setting (the late-record window).
    ChangeSettings,
    /// Report a card lost (loss list).
    ReportLoss,
    /// Withdraw a loss report.
    WithdrawLoss,
    /// Run the consistency check.
    Check,
    /// Verify the audit chain.
    VerifyAudit,
    /// Read balances and entries.
    ReadLedger,
    /// Create a card product (its profile version 1).
    DefineProduct,
    /// Change a card product's profile (a new version).
    ReviseProduct,
    /// Receive a chip lot from a chip maker.
    ReceiveChipLot,
    /// Open a production order for a product from a chip lot.
    OpenProductionOrder,
    /// Start a production batch of an order.
    StartProductionBatch,
    /// Record a production stage of a batch (printing, coding, …, testing).
    RecordProductionStage,
    /// Allocate cards in stock to a branch or an operator.
    AllocateCards,
    /// Take allocated cards back into stock.
    ReturnCardsToStock,
    /// Take back a holder's card: unload its purse, refund, block or erase it.
    ReturnCard,
    /// Mark the cards whose validity has ended as expired.
    ExpireCards,
    /// Open a cashier shift at a recharge point with the cash counted in the drawer.
    OpenShift,
    /// Close a cashier shift with the cash counted (one's own; an administrator closes
    /// another's as a supervisor, with a reason).
    CloseShift,
    /// Add a merchant, or assign a terminal its terminal id, merchant and upload token.
    ManageMerchants,
    /// Import a batch file of offline purchases carried by hand.
    ImportBatches,
    /// A terminal's upload of a batch (by its token; no operator role runs it).
    UploadBatch,
    /// Settle the accepted offline purchases of a day.
    RunSettlement,
    /// Resolve a settlement case with a reason.
    ResolveCase,
}

impl Action {
    /// The name written to the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Init => "init",
            Action::Login => "login",
            Action::CreateOperator => "create_operator",
            Action::ChangeOperatorRole => "change_operator_role",
            Action::DisableOperator => "disable_operator",
            Action::CreateBranch => "create_branch",
            Action::RegisterMachine => "register_machine",
            Action::RetireMachine => "retire_machine",
            Action::OpenCard => "open_card",
            Action::LoadCard => "load_card",
            Action::BankDeposit => "bank_deposit",
            Action::SettlePurchase => "settle_purchase",
            Action::KeyCeremony => "key_ceremony",
            Action::IssueCard => "issue_card",
            Action::ChangeSettings => "change_settings",
            Action::ReportLoss => "report_loss",
            Action::WithdrawLoss => "withdraw_loss",
            Action::Check => "check",
            Action::VerifyAudit => "verify_audit",
            Action::ReadLedger => "read_ledger",
            Action::DefineProduct => "define_product",
            Action::ReviseProduct => "revise_product",
            Action::ReceiveChipLot => "receive_chip_lot",
            Action::OpenProductionOrder => "open_production_order",
            Action::StartProductionBatch => "start_production_batch",
            Action::RecordProductionStage => "record_production_stage",
            Action::AllocateCards => "allocate_cards",
            Action::ReturnCardsToStock => "return_cards_to_stock",
            Action::ReturnCard => "return_card",
            Action::ExpireCards => "expire_cards",
            Action::OpenShift => "open_shift",
            Action::CloseShift => "close_shift",
            Action::ManageMerchants => "manage_merchants",
            Action::ImportBatches => "import_batches",
            Action::UploadBatch => "upload_batch",
            Action::RunSettlement => "run_settlement",
            Action::ResolveCase => "resolve_case",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A password typed by a person: zeroized on drop, never printed.
pub struct Password(Zeroizing<String>);

impl Password {
    /// The least length accepted for a new password.
    pub const MIN_LEN: usize = 12;

    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Password {
        Password(Zeroizing::new(s.into()))
    }

    fn check_new(&self) -> Result<()> {
        if self.0.chars().count() < Self::MIN_LEN {
            return Err(OfficeError::Invalid {
                what: "password",
                why: format!(
                    "it must have at least {} characters; choose a longer one",
                    Self::MIN_LEN
                ),
            });
        }
        Ok(())
    }

    /// Hashes a new password with argon2id (default parameters, random 16-byte salt) into a PHC
    /// string, after checking the length policy.
    pub fn hash_new(&self) -> Result<String> {
        self.check_new()?;
        let mut salt_bytes = [0u8; 16];
        getrandom::getrandom(&mut salt_bytes)
            .map_err(|e| OfficeError::PasswordHash(format!("no randomness for the salt: {e}")))?;
        let salt = SaltString::encode_b64(&salt_bytes)
            .map_err(|e| OfficeError::PasswordHash(e.to_string()))?;
        let hash = Argon2::default()
            .hash_password(self.0.as_bytes(), &salt)
            .map_err(|e| OfficeError::PasswordHash(e.to_string()))?;
        Ok(hash.to_string())
    }

    /// Whether this password matches a stored PHC hash (argon2's comparison is constant-time).
    pub fn verify(&self, phc: &str) -> bool {
        match PasswordHash::new(phc) {
            Ok(parsed) => Argon2::default()
                .verify_password(self.0.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        }
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A logged-in operator at a machine: what every operation names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    /// The operator's id.
    pub operator_id: i64,
    /// The operator's login.
    pub login: String,
    /// The role at login time (re-checked against the database by every operation).
    pub role: Role,
    /// The machine's id.
    pub machine_id: i64,
    /// The machine's number.
    pub machine_number: String,
}

/// An operator as stored (without the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operator {
    /// Id.
    pub id: i64,
    /// Login name.
    pub login: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Whether the operator may log in.
    pub active: bool,
}

/// Checks a login name: 1 to 32 characters of `a-z`, `0-9`, `.`, `_`, `-`.
pub fn validate_login(login: &str) -> Result<()> {
    let ok = !login.is_empty()
        && login.len() <= 32
        && login
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(OfficeError::Invalid {
            what: "login",
            why: format!("{login:?}: use 1 to 32 characters of a-z, 0-9, '.', '_' and '-'"),
        })
    }
}
