//! `iccard office ...`: the issuer's back office from the command line. The work is done by
//! `iccard-office`; this module finds the office directory, logs the operator in, reads
//! secrets from the environment or a hidden prompt, and prints text or `--json`.
//!
//! Every command except `init` and `status` logs an operator in at a machine: `--operator`
//! (or `ICCARD_OPERATOR`), the password from `ICCARD_OPERATOR_PASSWORD` or a prompt, and
//! `--machine` (or `ICCARD_MACHINE`, default the office console `init` registered). Secrets
//! are never taken as command-line arguments (they would show in `ps` and shell history).
//!
//! Exit codes: 0 done; 1 the back office refused or failed (no role, login refused, `check`
//! found problems, a broken audit chain); 2 usage, input or configuration errors.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use iccard_crypto::PurseAlg;
use iccard_office::config::{ConfigError, KeystoreConfig, OfficeConfig, PASSPHRASE_ENV, PIN_ENV};
use iccard_office::keystore::{KdfParams, Keystore, KeystoreError, LocalKeystore, Passphrase};
use iccard_office::machines::{MachineKind, NewMachine};
use iccard_office::recharge::{PendingResolution, RechargeReceipt, RechargeRequest};
use iccard_office::{
    InitConfig, Mode, NewOperator, Office, OfficeError, Password, Role, Session, Store,
};
use iccard_terminal::{PurseCard, TransactionTime};
use serde::Serialize;
use zeroize::Zeroizing;

/// Environment variable naming the office directory.
pub const OFFICE_ENV: &str = "ICCARD_OFFICE";
/// Environment variable with the operator's password.
pub const PASSWORD_ENV: &str = "ICCARD_OPERATOR_PASSWORD";
/// Environment variable with a new operator's password (`operator add`).
pub const NEW_PASSWORD_ENV: &str = "ICCARD_NEW_OPERATOR_PASSWORD";
/// Environment variable with a key value to import (hex).
pub const KEY_VALUE_ENV: &str = "ICCARD_KEY_VALUE";

/// `iccard office` and its options shared by every subcommand.
#[derive(Debug, Args)]
pub struct OfficeArgs {
    /// The office directory (holds office.toml; with the embedded default also office.db and
    /// keys.iks).
    #[arg(long, global = true, env = OFFICE_ENV, default_value = "iccard-office")]
    office: PathBuf,
    /// The operator to log in as.
    #[arg(long, global = true, env = "ICCARD_OPERATOR")]
    operator: Option<String>,
    /// The machine the operator works at (default: the office console made by `init`).
    #[arg(long, global = true, env = "ICCARD_MACHINE")]
    machine: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: OfficeCmd,
}

/// `iccard office` subcommands.
#[derive(Debug, Subcommand)]
pub enum OfficeCmd {
    /// Create a back office: configuration, database (schema, chart of accounts, first branch,
    /// office console, first administrator) and keystore.
    Init(InitArgs),
    /// What this office is: issuer, mode, database, keystore, schema version.
    Status,
    /// Operators: add, list, change role, disable, history.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Branches.
    #[command(subcommand)]
    Branch(BranchCmd),
    /// Machines: recharge points, terminals with their PSAM, office consoles.
    #[command(subcommand)]
    Machine(MachineCmd),
    /// The issuer's keys: list, generate, import, activate, retire, the ceremony log.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Verify the books: every entry balanced, float = sum of card balances, deposits, the
    /// audit chain. Exit 1 and the problems listed when anything is wrong.
    Check,
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Ledger accounts and card shadow accounts.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Recharge a card at a recharge point (log in there with --machine): the load APDUs, MAC1
    /// checked and MAC2 computed by the keystore, the TAC verified, the cash posted.
    Recharge(RechargeArgs),
    /// Loads whose card answer was lost, waiting for the card to come back.
    Pending,
    /// The return of a card: the refund quoted from rules, the purse unloaded on the card, the
    /// refund paid, the card terminated or erased for refurbishment.
    #[command(subcommand)]
    Return(super::office_return::ReturnCmd),
    /// Move a lost card's balance onto its replacement (in the reader at a recharge point),
    /// once the late-record window since the loss report has passed.
    Replace(ReplaceArgs),
    /// Office settings: the late-record window (administrators).
    #[command(subcommand)]
    Settings(SettingsCmd),
    /// Reports: `daily` — each operator's operations at each machine and each recharge
    /// point's cash on one day (auditors).
    #[command(subcommand)]
    Report(ReportCmd),
    /// Card products and their profile versions.
    #[command(subcommand)]
    Product(super::office_life::ProductCmd),
    /// Chip lots received from a chip maker.
    #[command(subcommand)]
    Lot(super::office_life::LotCmd),
    /// Production orders and batches through every stage.
    #[command(subcommand)]
    Batch(super::office_life::BatchCmd),
    /// The inventory of physical cards: counts, one card, allocation, return to stock.
    Inventory(super::office_life::InventoryArgs),
    /// Issue a card from stock at a recharge point (personalization), with its first recharge.
    Issue(super::office_life::IssueArgs),
    /// The loss list: report, withdraw, the changes since a version.
    #[command(subcommand)]
    Loss(super::office_life::LossCmd),
    /// A card's status.
    #[command(subcommand)]
    Card(super::office_life::CardCmd),
    /// Cashier shifts at a recharge point: open with the cash in the drawer, close with the
    /// cash counted; the difference from what the books expect is recorded.
    #[command(subcommand)]
    Shift(super::office_shift::ShiftCmd),
    /// Offline purchases: uploads (a batch file, or the upload service terminals post to),
    /// settlement with every TAC verified, cases, the reconciliation report.
    #[command(subcommand)]
    Settlement(super::office_settle::SettlementCmd),
}

/// `office replace`.
#[derive(Debug, Args)]
pub struct ReplaceArgs {
    /// The lost card's number.
    #[arg(long)]
    lost: String,
    /// The replacement card's image file.
    #[arg(long, required_unless_present = "reader")]
    card: Option<PathBuf>,
    /// PC/SC reader holding the replacement card, in place of --card.
    #[arg(long, conflicts_with = "card")]
    reader: Option<String>,
}

/// `office settings`.
#[derive(Debug, Subcommand)]
pub enum SettingsCmd {
    /// Show the settings.
    Show,
    /// Days after a loss report before the lost card's balance may move (0 to 365).
    LateRecordWindow {
        /// Days.
        days: i64,
    },
    /// The fee kept when a card is returned, minor units (0 to 1,000,000; never more than
    /// the refund).
    ReturnFee {
        /// Minor units.
        minor: i64,
    },
}

/// `office report`.
#[derive(Debug, Subcommand)]
pub enum ReportCmd {
    /// One day's operations per operator and machine, and each recharge point's cash.
    Daily {
        /// The day, YYYYMMDD (UTC; default today).
        #[arg(long)]
        date: Option<String>,
    },
}

/// `office recharge`.
#[derive(Debug, Args)]
pub struct RechargeArgs {
    /// Card image file.
    #[arg(long, required_unless_present = "reader")]
    card: Option<PathBuf>,
    /// PC/SC reader holding the card, in place of --card.
    #[arg(long, conflicts_with = "card")]
    reader: Option<String>,
    /// Amount in minor units (fen).
    #[arg(long, required_unless_present = "settle")]
    amount: Option<i64>,
    /// Only settle a load left pending by a lost answer (the card's serial decides).
    #[arg(long, conflicts_with = "amount")]
    settle: bool,
    /// Transaction date YYYYMMDD (default: today, UTC).
    #[arg(long)]
    date: Option<String>,
    /// Transaction time HHMMSS (default: now, UTC).
    #[arg(long)]
    time: Option<String>,
}

/// Where the keys go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeystoreKind {
    /// An encrypted keystore file in the office directory (the default).
    Local,
    /// A PKCS#11 token (an HSM, SoftHSM2).
    Pkcs11,
    /// The published development key set (development mode only).
    Dev,
}

/// `office init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The issuer number (1 to 16 digits).
    #[arg(long)]
    issuer_number: String,
    /// A production back office (real money; development keys refused).
    #[arg(
        long,
        conflicts_with = "development",
        required_unless_present = "development"
    )]
    production: bool,
    /// A development back office (demos and tests).
    #[arg(long)]
    development: bool,
    /// Database URL: `sqlite://PATH` (relative to the office directory) or
    /// `postgres://USER@HOST/DB`. Default: `sqlite://office.db`.
    #[arg(long, conflicts_with = "database_env")]
    database: Option<String>,
    /// Name of an environment variable holding the database URL (for URLs with a password).
    #[arg(long)]
    database_env: Option<String>,
    /// The keystore kind.
    #[arg(long, value_enum, default_value_t = KeystoreKind::Local)]
    keystore: KeystoreKind,
    /// Shorthand for `--keystore dev`: the development key set.
    #[arg(long, conflicts_with = "keystore")]
    dev_keys: bool,
    /// Local keystore file (relative to the office directory).
    #[arg(long, default_value = "keys.iks")]
    keystore_file: PathBuf,
    /// Environment variable with the local keystore passphrase.
    #[arg(long, default_value = PASSPHRASE_ENV)]
    passphrase_env: String,
    /// PKCS#11 module.
    #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
    pkcs11_module: PathBuf,
    /// PKCS#11 token label.
    #[arg(long, default_value = "iccard")]
    token_label: String,
    /// Environment variable with the PKCS#11 user PIN.
    #[arg(long, default_value = PIN_ENV)]
    pin_env: String,
    /// The first administrator's login (password from ICCARD_OPERATOR_PASSWORD or a prompt).
    #[arg(long)]
    admin: String,
    /// The first administrator's display name.
    #[arg(long)]
    admin_name: Option<String>,
    /// The first branch's code.
    #[arg(long, default_value = "HQ")]
    branch_code: String,
    /// The first branch's name.
    #[arg(long, default_value = "Head office")]
    branch_name: String,
    /// The office console's machine number.
    #[arg(long, default_value = "C0001")]
    console: String,
}

/// `office operator`.
#[derive(Debug, Subcommand)]
pub enum OperatorCmd {
    /// Add an operator (password from ICCARD_NEW_OPERATOR_PASSWORD or a prompt).
    Add {
        /// Login (a-z, 0-9, `.`, `_`, `-`).
        login: String,
        /// Role.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Display name (default: the login).
        #[arg(long)]
        name: Option<String>,
    },
    /// Every operator.
    List,
    /// Change an operator's role.
    Role {
        /// Login.
        login: String,
        /// The new role.
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// Disable an operator for good.
    Disable {
        /// Login.
        login: String,
    },
    /// An operator's history rows.
    History {
        /// Login.
        login: String,
    },
}

/// A role on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Operators, branches, machines, keys.
    Administrator,
    /// Issues cards.
    IssuanceClerk,
    /// Recharges cards, hands cash to the bank.
    RechargeClerk,
    /// Checks and reads, changes nothing.
    Auditor,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Administrator => Role::Administrator,
            RoleArg::IssuanceClerk => Role::IssuanceClerk,
            RoleArg::RechargeClerk => Role::RechargeClerk,
            RoleArg::Auditor => Role::Auditor,
        }
    }
}

/// `office branch`.
#[derive(Debug, Subcommand)]
pub enum BranchCmd {
    /// Add a branch.
    Add {
        /// Short code.
        code: String,
        /// Name.
        #[arg(long)]
        name: String,
    },
}

/// A machine kind on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MachineKindArg {
    /// A recharge point (takes cash, loads and issues cards).
    RechargePoint,
    /// A merchant terminal with a PSAM.
    Terminal,
    /// A back-office console.
    OfficeConsole,
}

/// `office machine`.
#[derive(Debug, Subcommand)]
pub enum MachineCmd {
    /// Register a machine.
    Add {
        /// The machine number.
        number: String,
        /// Kind.
        #[arg(long, value_enum)]
        kind: MachineKindArg,
        /// Its branch's code.
        #[arg(long)]
        branch: String,
        /// A terminal's PSAM serial (required for terminals).
        #[arg(long)]
        psam: Option<String>,
    },
    /// Every machine.
    List,
    /// Take a machine out of service.
    Retire {
        /// The machine number.
        number: String,
    },
}

/// An algorithm generation on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlgArg {
    /// 3DES (PBOC 2.0 generation).
    #[value(name = "3des")]
    TripleDes,
    /// SM4 (PBOC 3.0 generation).
    Sm4,
}

impl From<AlgArg> for PurseAlg {
    fn from(a: AlgArg) -> PurseAlg {
        match a {
            AlgArg::TripleDes => PurseAlg::TripleDes,
            AlgArg::Sm4 => PurseAlg::Sm4,
        }
    }
}

/// `office key`.
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Every key: name, version, state, key check value (never a value).
    List,
    /// The key ceremony log.
    Log,
    /// Generate a key inside the keystore at the next version (inactive).
    Generate {
        /// Key name (MLK load, MTK TAC, MPK purchase, ...).
        name: String,
        /// Algorithm generation.
        #[arg(long, value_enum, default_value_t = AlgArg::TripleDes)]
        alg: AlgArg,
    },
    /// Import a 16-byte key (hex from ICCARD_KEY_VALUE or a hidden prompt) as inactive.
    Import {
        /// Key name.
        name: String,
        /// Version (1 to 255).
        #[arg(long)]
        version: u8,
        /// Algorithm generation.
        #[arg(long, value_enum, default_value_t = AlgArg::TripleDes)]
        alg: AlgArg,
        /// The key check value the key must have (hex, 6 digits): a typo is refused.
        #[arg(long)]
        kcv: Option<String>,
    },
    /// Make a key usable.
    Activate {
        /// Key name.
        name: String,
        /// Version.
        version: u8,
    },
    /// Make a key unusable for good.
    Retire {
        /// Key name.
        name: String,
        /// Version.
        version: u8,
    },
}

/// `office audit`.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain; name the first broken link.
    Verify,
    /// Show records.
    Show {
        /// Records after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

/// `office ledger`.
#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Every account with its balance.
    Accounts,
    /// A card's shadow account and history.
    Card {
        /// The card's application serial.
        serial: String,
    },
}

/// A failure of the back office (exit 1) as opposed to a usage error (exit 2).
#[derive(Debug)]
pub(super) struct Refused(pub(super) anyhow::Error);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Refused {}

pub(super) fn classify_office(e: OfficeError) -> anyhow::Error {
    match e {
        // A refusal because of a shift's state, not malformed input.
        OfficeError::Invalid { what, .. } if what == iccard_office::shifts::REFUSAL => {
            anyhow!(Refused(anyhow!(e)))
        }
        OfficeError::Invalid { .. }
        | OfficeError::AmountOutOfRange(_)
        | OfficeError::BadDatabaseUrl { .. }
        | OfficeError::NotInitialized
        | OfficeError::NotMigrated
        | OfficeError::AlreadyInitialized { .. } => anyhow!(e),
        other => anyhow!(Refused(anyhow!(other))),
    }
}

fn classify_keystore(e: KeystoreError) -> anyhow::Error {
    match e {
        KeystoreError::Invalid { .. }
        | KeystoreError::NoPassphrase { .. }
        | KeystoreError::AlreadyExists { .. }
        | KeystoreError::DevKeysInProduction => anyhow!(e),
        other => anyhow!(Refused(anyhow!(other))),
    }
}

/// Runs `iccard office ...` and prints; returns the process exit code.
pub fn run(a: &OfficeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("iccard: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(a)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iccard: {e:#}");
            if e.downcast_ref::<Refused>().is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

async fn dispatch(a: &OfficeArgs) -> Result<ExitCode> {
    match &a.command {
        OfficeCmd::Init(i) => init(a, i).await,
        OfficeCmd::Status => status(a).await,
        other => {
            let ctx = Ctx::open(a).await?;
            match other {
                OfficeCmd::Operator(c) => ctx.operator(c).await,
                OfficeCmd::Branch(c) => ctx.branch(c).await,
                OfficeCmd::Machine(c) => ctx.machine(c).await,
                OfficeCmd::Key(c) => ctx.key(c).await,
                OfficeCmd::Check => ctx.check().await,
                OfficeCmd::Audit(c) => ctx.audit(c).await,
                OfficeCmd::Ledger(c) => ctx.ledger(c).await,
                OfficeCmd::Recharge(r) => ctx.recharge(r).await,
                OfficeCmd::Pending => ctx.pending().await,
                OfficeCmd::Report(c) => ctx.report(c).await,
                OfficeCmd::Replace(r) => ctx.replace(r).await,
                OfficeCmd::Settings(c) => ctx.settings(c).await,
                OfficeCmd::Product(c) => super::office_life::product(ctx, c).await,
                OfficeCmd::Lot(c) => super::office_life::lot(ctx, c).await,
                OfficeCmd::Batch(c) => super::office_life::batch(ctx, c).await,
                OfficeCmd::Inventory(c) => super::office_life::inventory(ctx, c).await,
                OfficeCmd::Issue(c) => super::office_life::issue(ctx, c).await,
                OfficeCmd::Loss(c) => super::office_life::loss(ctx, c).await,
                OfficeCmd::Card(c) => super::office_life::card(ctx, c).await,
                OfficeCmd::Shift(c) => super::office_shift::shift(ctx, c).await,
                OfficeCmd::Return(c) => super::office_return::return_card(ctx, c).await,
                OfficeCmd::Settlement(c) => super::office_settle::settlement(ctx, c).await,
                OfficeCmd::Init(_) | OfficeCmd::Status => unreachable!("handled above"),
            }
        }
    }
}

/// Reads a secret from `var`, or from a hidden prompt when interactive (twice when `confirm`).
pub(super) fn secret(var: &str, what: &str, confirm: bool) -> Result<Zeroizing<String>> {
    if let Ok(v) = std::env::var(var) {
        if !v.is_empty() {
            return Ok(Zeroizing::new(v));
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!("no {what}: set the environment variable {var} (not interactive, so no prompt)");
    }
    let first = Zeroizing::new(rpassword::prompt_password(format!("{what}: "))?);
    if first.is_empty() {
        bail!("empty {what}");
    }
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password(format!("{what} again: "))?);
        if !iccard_crypto::ct_eq(first.as_bytes(), again.as_bytes()) {
            bail!("the two {what} entries differ");
        }
    }
    Ok(first)
}

/// The date and time now (UTC), as a card transaction carries it.
pub(super) fn now_time() -> TransactionTime {
    TransactionTime::from_unix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// `--date YYYYMMDD` and `--time HHMMSS`, each defaulting to now (UTC).
pub(super) fn transaction_time(date: Option<&str>, time: Option<&str>) -> Result<TransactionTime> {
    let now = now_time();
    Ok(TransactionTime::parse(
        &date.map_or_else(|| now.date_string(), str::to_owned),
        &time.map_or_else(|| now.time_string(), str::to_owned),
    )?)
}

pub(super) fn print<T: Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        let t = text();
        if !t.is_empty() {
            println!("{t}");
        }
    }
    Ok(())
}

pub(super) fn describe_load(l: &RechargeReceipt) -> String {
    format!(
        "loaded {} onto card {}{}: balance {} -> {}, online serial {}, {} {}, at {} by {}, TAC {}{}{}",
        yuan(l.amount_minor),
        l.card_number,
        l.card_type.as_deref().map(|t| format!(" ({t})")).unwrap_or_default(),
        yuan(l.balance_before_minor),
        yuan(l.balance_after_minor),
        l.online_serial,
        l.date,
        l.time,
        l.machine_number,
        l.operator,
        l.tac.as_deref().unwrap_or("unknown"),
        match l.tac_verified {
            Some(true) => " verified",
            Some(false) => " DOES NOT VERIFY: report this card",
            None => "",
        },
        if l.recovery.is_some() {
            " (finished after an interruption)"
        } else {
            ""
        }
    )
}

fn describe_resolution(p: &PendingResolution) -> String {
    match p {
        PendingResolution::Posted { load } => {
            format!("an interrupted load had reached the card and is now posted: {}", describe_load(load))
        }
        PendingResolution::Cancelled {
            amount_minor,
            online_serial,
        } => format!(
            "an interrupted load of {} (online serial {online_serial}) never reached the card: cancelled, hand the cash back",
            yuan(*amount_minor)
        ),
    }
}

pub(super) fn yuan(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    format!("{sign}{}.{:02}", m / 100, m % 100)
}

pub(super) fn when(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let d = iccard_issuer::manufacture::bcd_date_from_unix_days(days);
    format!(
        "{:02x}{:02x}-{:02x}-{:02x} {:02}:{:02}:{:02}",
        d[0],
        d[1],
        d[2],
        d[3],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------------
// init and status

#[derive(Serialize)]
struct InitReport {
    office: PathBuf,
    config: PathBuf,
    issuer_number: String,
    mode: Mode,
    database: String,
    keystore: String,
    admin: String,
    console_machine: String,
    branch: String,
}

async fn init(a: &OfficeArgs, i: &InitArgs) -> Result<ExitCode> {
    let mode = if i.production {
        Mode::Production
    } else {
        Mode::Development
    };
    let kind = if i.dev_keys {
        KeystoreKind::Dev
    } else {
        i.keystore
    };
    if mode == Mode::Production && kind == KeystoreKind::Dev {
        bail!("a production back office cannot use the development key set: drop --dev-keys and use --keystore local or --keystore pkcs11 (nothing was created)");
    }
    let keystore = match kind {
        KeystoreKind::Local => KeystoreConfig::Local {
            path: i.keystore_file.clone(),
            passphrase_env: i.passphrase_env.clone(),
        },
        KeystoreKind::Pkcs11 => KeystoreConfig::Pkcs11 {
            module: i.pkcs11_module.clone(),
            token_label: i.token_label.clone(),
            pin_env: i.pin_env.clone(),
        },
        KeystoreKind::Dev => KeystoreConfig::Development,
    };
    let (database_url, database_url_env) = match (&i.database, &i.database_env) {
        (_, Some(var)) => (None, Some(var.clone())),
        (Some(url), None) => (Some(url.clone()), None),
        (None, None) => (Some("sqlite://office.db".to_owned()), None),
    };
    let config = OfficeConfig {
        issuer_number: i.issuer_number.clone(),
        mode,
        console_machine: i.console.clone(),
        database_url,
        database_url_env,
        keystore,
    };
    let dir = &a.office;
    let config_path = dir.join(iccard_office::config::CONFIG_FILE);
    if config_path.exists() {
        return Err(ConfigError::Exists { path: config_path }.into());
    }
    config.validate(&config_path)?;
    let url = config.database_url(dir)?;
    // Inputs the database would refuse are refused before anything is written.
    let digits = !i.issuer_number.is_empty()
        && i.issuer_number.len() <= 16
        && i.issuer_number.bytes().all(|b| b.is_ascii_digit());
    if !digits {
        bail!(
            "issuer number {:?} is not valid: use 1 to 16 decimal digits (nothing was created)",
            i.issuer_number
        );
    }
    iccard_office::operators::validate_login(&i.admin).map_err(classify_office)?;
    let admin_password = secret(PASSWORD_ENV, "administrator password", true)?;
    let keystore_secret = match config.keystore.secret_env() {
        Some(var) => Some(match &config.keystore {
            KeystoreConfig::Pkcs11 { .. } => {
                Passphrase::new(secret(var, "PKCS#11 user PIN", false)?.as_str())
            }
            _ => Passphrase::new(secret(var, "keystore passphrase", true)?.as_str()),
        }),
        None => None,
    };
    // The directory holds the database (password hashes, the books) and the keystore file:
    // owner only. Whatever this init created is removed again if a later step fails.
    let new_dir = !dir.exists();
    let mut created_keystore: Option<PathBuf> = None;
    let steps = async {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", dir.display()))?;
        }
        // The keystore first: the step most likely to be refused (a wrong PIN, an existing
        // file).
        match &config.keystore {
            KeystoreConfig::Local { .. } => {
                let path = config
                    .local_keystore_path(dir)
                    .ok_or_else(|| anyhow!("local keystore without a path"))?;
                let pass = keystore_secret
                    .as_ref()
                    .ok_or_else(|| anyhow!("no keystore passphrase"))?;
                LocalKeystore::create(&path, pass, KdfParams::default())
                    .map_err(classify_keystore)?;
                created_keystore = Some(path);
            }
            KeystoreConfig::Pkcs11 { .. } => {
                config
                    .open_keystore(dir, keystore_secret.as_ref())
                    .map_err(classify_keystore)?;
            }
            KeystoreConfig::Development => {}
        }
        let store = Store::connect(&url).await.map_err(classify_office)?;
        let office = Office::init(
            store.clone(),
            InitConfig {
                issuer_number: i.issuer_number.clone(),
                mode,
                branch_code: i.branch_code.clone(),
                branch_name: i.branch_name.clone(),
                console_machine_number: i.console.clone(),
                admin_login: i.admin.clone(),
                admin_display_name: i.admin_name.clone().unwrap_or_else(|| i.admin.clone()),
                admin_password: Password::new(admin_password.as_str()),
            },
        )
        .await
        .map_err(classify_office);
        let office = match office {
            Ok(o) => o,
            Err(e) => {
                store.close().await;
                return Err(e);
            }
        };
        let path = config.save_new(dir).map_err(anyhow::Error::from);
        store.close().await;
        drop(office);
        path
    };
    let path = match steps.await {
        Ok(p) => p,
        Err(e) => {
            if new_dir {
                let _ = std::fs::remove_dir_all(dir);
            } else if let Some(p) = &created_keystore {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
    };
    let report = InitReport {
        office: dir.clone(),
        config: path.clone(),
        issuer_number: i.issuer_number.clone(),
        mode,
        database: iccard_office::store::redact_url(&url),
        keystore: config.keystore.describe(dir),
        admin: i.admin.clone(),
        console_machine: i.console.clone(),
        branch: i.branch_code.clone(),
    };
    print(a.json, &report, || {
        format!(
            "back office created in {}\n  issuer {} ({})\n  database {}\n  keystore {}\n  administrator {} at console {} in branch {}\n  configuration {}",
            dir.display(),
            report.issuer_number,
            mode.as_str(),
            report.database,
            report.keystore,
            report.admin,
            report.console_machine,
            report.branch,
            path.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct StatusReport {
    office: PathBuf,
    issuer_number: String,
    mode: Mode,
    database: String,
    dialect: String,
    schema_version: i64,
    keystore: String,
    console_machine: String,
}

async fn status(a: &OfficeArgs) -> Result<ExitCode> {
    let dir = &a.office;
    let config = OfficeConfig::load(dir)?;
    let url = config.database_url(dir)?;
    let store = Store::connect(&url).await.map_err(classify_office)?;
    let office = Office::open(store.clone()).await.map_err(classify_office)?;
    let settings = office.settings().await.map_err(classify_office)?;
    if settings.issuer_number != config.issuer_number || settings.mode != config.mode {
        return Err(anyhow!(Refused(anyhow!(
            "{} says issuer {} ({}) but the database holds issuer {} ({}): the configuration points at another office's database",
            dir.join(iccard_office::config::CONFIG_FILE).display(),
            config.issuer_number,
            config.mode.as_str(),
            settings.issuer_number,
            settings.mode.as_str()
        ))));
    }
    let r = StatusReport {
        office: dir.clone(),
        issuer_number: settings.issuer_number,
        mode: settings.mode,
        database: iccard_office::store::redact_url(&url),
        dialect: format!("{:?}", store.dialect()).to_lowercase(),
        schema_version: Store::schema_version(),
        keystore: config.keystore.describe(dir),
        console_machine: config.console_machine.clone(),
    };
    store.close().await;
    print(a.json, &r, || {
        format!(
            "office {}\n  issuer {} ({})\n  database {} ({}, schema {})\n  keystore {}\n  console {}",
            r.office.display(),
            r.issuer_number,
            r.mode.as_str(),
            r.database,
            r.dialect,
            r.schema_version,
            r.keystore,
            r.console_machine
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// logged-in commands

/// An open office with a logged-in operator.
pub(super) struct Ctx {
    pub(super) dir: PathBuf,
    pub(super) json: bool,
    pub(super) config: OfficeConfig,
    pub(super) store: Store,
    pub(super) office: Office,
    pub(super) session: Session,
}

impl Ctx {
    async fn open(a: &OfficeArgs) -> Result<Ctx> {
        let dir = a.office.clone();
        let config = OfficeConfig::load(&dir)?;
        let url = config.database_url(&dir)?;
        let login = a.operator.clone().ok_or_else(|| {
            anyhow!("which operator? give --operator LOGIN (or set ICCARD_OPERATOR)")
        })?;
        let machine = a
            .machine
            .clone()
            .unwrap_or_else(|| config.console_machine.clone());
        let password = secret(PASSWORD_ENV, &format!("password of {login}"), false)?;
        let store = Store::connect(&url).await.map_err(classify_office)?;
        let office = Office::open(store.clone()).await.map_err(classify_office)?;
        let session = office
            .login(&login, &Password::new(password.as_str()), &machine)
            .await
            .map_err(classify_office)?;
        Ok(Ctx {
            dir,
            json: a.json,
            config,
            store,
            office,
            session,
        })
    }

    pub(super) fn done(self, code: ExitCode) -> Result<ExitCode> {
        // The pool closes when the last handle drops; nothing is pending after a commit.
        drop(self.store);
        Ok(code)
    }

    async fn operator(self, c: &OperatorCmd) -> Result<ExitCode> {
        let o = &self.office;
        let s = &self.session;
        match c {
            OperatorCmd::Add { login, role, name } => {
                let pw = secret(NEW_PASSWORD_ENV, &format!("new password for {login}"), true)?;
                let op = o
                    .create_operator(
                        s,
                        NewOperator {
                            login: login.clone(),
                            display_name: name.clone().unwrap_or_else(|| login.clone()),
                            role: (*role).into(),
                            password: Password::new(pw.as_str()),
                        },
                    )
                    .await
                    .map_err(classify_office)?;
                print(self.json, &op, || {
                    format!(
                        "operator {} ({}) added as {}",
                        op.login, op.display_name, op.role
                    )
                })?;
            }
            OperatorCmd::List => {
                let ops = o.operators().await.map_err(classify_office)?;
                print(self.json, &ops, || {
                    let mut t = format!("{:<20} {:<16} {:<8} name", "login", "role", "state");
                    for op in &ops {
                        t.push_str(&format!(
                            "\n{:<20} {:<16} {:<8} {}",
                            op.login,
                            op.role.as_str(),
                            if op.active { "active" } else { "disabled" },
                            op.display_name
                        ));
                    }
                    t
                })?;
            }
            OperatorCmd::Role { login, role } => {
                let op = o
                    .change_operator_role(s, login, (*role).into())
                    .await
                    .map_err(classify_office)?;
                print(self.json, &op, || {
                    format!("operator {} is now {}", op.login, op.role)
                })?;
            }
            OperatorCmd::Disable { login } => {
                let op = o
                    .disable_operator(s, login)
                    .await
                    .map_err(classify_office)?;
                print(self.json, &op, || format!("operator {} disabled", op.login))?;
            }
            OperatorCmd::History { login } => {
                let rows = o.operator_history(login).await.map_err(classify_office)?;
                #[derive(Serialize)]
                struct Row {
                    at_ms: i64,
                    change: String,
                    role: Role,
                    active: bool,
                }
                let rows: Vec<Row> = rows
                    .into_iter()
                    .map(|(at_ms, change, role, active)| Row {
                        at_ms,
                        change,
                        role,
                        active,
                    })
                    .collect();
                print(self.json, &rows, || {
                    rows.iter()
                        .map(|r| {
                            format!(
                                "{}  {:<20} {:<16} {}",
                                when(r.at_ms),
                                r.change,
                                r.role.as_str(),
                                if r.active { "active" } else { "disabled" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })?;
            }
        }
        self.done(ExitCode::SUCCESS)
    }

    async fn branch(self, c: &BranchCmd) -> Result<ExitCode> {
        match c {
            BranchCmd::Add { code, name } => {
                let b = self
                    .office
                    .create_branch(&self.session, code, name)
                    .await
                    .map_err(classify_office)?;
                print(self.json, &b, || {
                    format!("branch {} ({}) added", b.code, b.name)
                })?;
            }
        }
        self.done(ExitCode::SUCCESS)
    }

    async fn machine(self, c: &MachineCmd) -> Result<ExitCode> {
        let o = &self.office;
        let s = &self.session;
        match c {
            MachineCmd::Add {
                number,
                kind,
                branch,
                psam,
            } => {
                let kind = match kind {
                    MachineKindArg::RechargePoint => MachineKind::RechargePoint,
                    MachineKindArg::Terminal => MachineKind::Terminal,
                    MachineKindArg::OfficeConsole => MachineKind::OfficeConsole,
                };
                let m = o
                    .register_machine(
                        s,
                        NewMachine {
                            machine_number: number.clone(),
                            kind,
                            branch_code: branch.clone(),
                            psam_serial: psam.clone(),
                        },
                    )
                    .await
                    .map_err(classify_office)?;
                print(self.json, &m, || {
                    format!(
                        "machine {} registered: {} in branch {}{}",
                        m.machine_number,
                        m.kind.as_str(),
                        m.branch_code,
                        m.psam_serial
                            .as_deref()
                            .map(|p| format!(", PSAM {p}"))
                            .unwrap_or_default()
                    )
                })?;
            }
            MachineCmd::List => {
                let ms = o.machines().await.map_err(classify_office)?;
                print(self.json, &ms, || {
                    let mut t = format!(
                        "{:<16} {:<16} {:<10} {:<8} psam",
                        "machine", "kind", "branch", "state"
                    );
                    for m in &ms {
                        t.push_str(&format!(
                            "\n{:<16} {:<16} {:<10} {:<8} {}",
                            m.machine_number,
                            m.kind.as_str(),
                            m.branch_code,
                            if m.active { "active" } else { "retired" },
                            m.psam_serial.as_deref().unwrap_or("-")
                        ));
                    }
                    t
                })?;
            }
            MachineCmd::Retire { number } => {
                let m = o.retire_machine(s, number).await.map_err(classify_office)?;
                print(self.json, &m, || {
                    format!("machine {} retired", m.machine_number)
                })?;
            }
        }
        self.done(ExitCode::SUCCESS)
    }

    pub(super) fn open_keystore(&self) -> Result<Box<dyn Keystore + Send>> {
        let secret = match self.config.keystore.secret_env() {
            Some(var) => {
                let what = match self.config.keystore {
                    KeystoreConfig::Pkcs11 { .. } => "PKCS#11 user PIN",
                    _ => "keystore passphrase",
                };
                Some(Passphrase::new(secret(var, what, false)?.as_str()))
            }
            None => None,
        };
        self.config
            .open_keystore(&self.dir, secret.as_ref())
            .map_err(classify_keystore)
    }

    async fn key(self, c: &KeyCmd) -> Result<ExitCode> {
        let mut ks = self.open_keystore()?;
        let who = self.session.login.clone();
        match c {
            KeyCmd::List => {
                let keys = ks.list();
                print(self.json, &keys, || {
                    let mut t = format!("{:<8} {:>7} {:<9} kcv", "name", "version", "state");
                    for k in &keys {
                        t.push_str(&format!(
                            "\n{:<8} {:>7} {:<9} {}",
                            k.name, k.version, k.state, k.kcv
                        ));
                    }
                    t
                })?;
            }
            KeyCmd::Log => {
                let log = ks.ceremony_log();
                print(self.json, &log, || {
                    log.iter()
                        .map(|e| {
                            format!(
                                "{}  {:<9} {} v{} kcv {} by {}",
                                when(e.at_unix.saturating_mul(1000)),
                                format!("{:?}", e.kind).to_lowercase(),
                                e.name,
                                e.version,
                                e.kcv,
                                e.operator
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })?;
            }
            KeyCmd::Generate { name, alg } => {
                let subject = format!("key {name}");
                let info = self
                    .office
                    .key_ceremony(&self.session, &subject, || {
                        ks.generate(name, (*alg).into(), &who)
                            .map(|k| {
                                let d = format!("created v{} kcv {}", k.version, k.kcv);
                                (k, d)
                            })
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(classify_office)?;
                print(self.json, &info, || {
                    format!(
                        "key {} version {} generated ({}), kcv {}: activate it with `iccard office key activate {} {}`",
                        info.name, info.version, info.state, info.kcv, info.name, info.version
                    )
                })?;
            }
            KeyCmd::Import {
                name,
                version,
                alg,
                kcv,
            } => {
                let hex_value = secret(
                    KEY_VALUE_ENV,
                    &format!("value of {name} (32 hex digits)"),
                    false,
                )?;
                let bytes = Zeroizing::new(
                    hex::decode(hex_value.trim())
                        .map_err(|_| anyhow!("the key value is not hexadecimal"))?,
                );
                let subject = format!("key {name} v{version}");
                let expected_kcv = kcv.clone();
                let info = self
                    .office
                    .key_ceremony(&self.session, &subject, || {
                        if let Some(want) = &expected_kcv {
                            let cipher = PurseAlg::from(*alg).key_cipher();
                            let got = iccard_crypto::kcv(cipher, &bytes)
                                .map(hex::encode_upper)
                                .map_err(|e| e.to_string())?;
                            if !got.eq_ignore_ascii_case(want) {
                                return Err(format!(
                                    "the key's check value is {got}, not {want}: the value was mistyped (nothing imported)"
                                ));
                            }
                        }
                        ks.import(name, *version, (*alg).into(), &bytes, &who)
                            .map(|k| {
                                let d = format!("imported v{} kcv {}", k.version, k.kcv);
                                (k, d)
                            })
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(classify_office)?;
                print(self.json, &info, || {
                    format!(
                        "key {} version {} imported ({}), kcv {}",
                        info.name, info.version, info.state, info.kcv
                    )
                })?;
            }
            KeyCmd::Activate { name, version } => {
                let subject = format!("key {name} v{version}");
                self.office
                    .key_ceremony(&self.session, &subject, || {
                        ks.activate(name, *version, &who)
                            .map(|()| ((), "activated".to_owned()))
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(classify_office)?;
                print(
                    self.json,
                    &serde_json::json!({"name": name, "version": version, "state": "active"}),
                    || format!("key {name} version {version} is active"),
                )?;
            }
            KeyCmd::Retire { name, version } => {
                let subject = format!("key {name} v{version}");
                self.office
                    .key_ceremony(&self.session, &subject, || {
                        ks.retire(name, *version, &who)
                            .map(|()| ((), "retired".to_owned()))
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(classify_office)?;
                print(
                    self.json,
                    &serde_json::json!({"name": name, "version": version, "state": "retired"}),
                    || format!("key {name} version {version} is retired for good"),
                )?;
            }
        }
        drop(ks);
        self.done(ExitCode::SUCCESS)
    }

    async fn check(self) -> Result<ExitCode> {
        let r = self
            .office
            .check(&self.session)
            .await
            .map_err(classify_office)?;
        let clean = r.is_clean();
        print(self.json, &r, || {
            let mut t = format!(
                "check on {:?}: {} entries, {} accounts, {} cards; float {} = card balances {}; audit chain {} records, head {}",
                r.dialect,
                r.entries,
                r.accounts,
                r.cards,
                yuan(r.float_minor),
                r.shadow_total_minor.map(yuan).unwrap_or_else(|| "overflow".into()),
                r.audit.records,
                &r.audit.head_hash.get(..16).unwrap_or(&r.audit.head_hash)
            );
            if clean {
                t.push_str("\nverdict: clean");
            } else {
                for p in &r.problems {
                    t.push_str(&format!("\nPROBLEM: {p}"));
                }
                t.push_str(&format!("\nverdict: {} problem(s)", r.problems.len()));
            }
            t
        })?;
        self.done(if clean {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }

    async fn audit(self, c: &AuditCmd) -> Result<ExitCode> {
        match c {
            AuditCmd::Verify => {
                let r = self.office.verify_audit().await.map_err(classify_office)?;
                let intact = r.is_intact();
                print(self.json, &r, || match &r.broken {
                    None => format!(
                        "audit chain intact: {} records, head {}",
                        r.records, r.head_hash
                    ),
                    Some(b) => format!("audit chain BROKEN: {b:?}"),
                })?;
                self.done(if intact {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
            AuditCmd::Show { after, limit } => {
                let rows = self
                    .office
                    .audit_records(*after, *limit)
                    .await
                    .map_err(classify_office)?;
                print(self.json, &rows, || {
                    rows.iter()
                        .map(|r| {
                            format!(
                                "{:>6} {} {:<12} {:<10} {:<22} {:<7} {} {}",
                                r.seq,
                                when(r.at_ms),
                                r.operator_login,
                                r.machine_number,
                                r.action,
                                r.outcome,
                                r.subject,
                                r.detail
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })?;
                self.done(ExitCode::SUCCESS)
            }
        }
    }

    async fn recharge(self, r: &RechargeArgs) -> Result<ExitCode> {
        let ks = self.open_keystore()?;
        let when = transaction_time(r.date.as_deref(), r.time.as_deref())?;
        let mut opened =
            super::reader::OpenCard::open(r.card.as_deref(), r.reader.as_deref(), "card")?;
        let channel = opened.channel()?;
        let mut card = PurseCard::open(channel).map_err(|e| anyhow!(Refused(anyhow!(e))))?;
        if r.settle {
            let res = self
                .office
                .settle_pending_load(&self.session, &*ks, &mut card)
                .await
                .map_err(classify_office)?;
            print(self.json, &res, || match &res {
                None => "no load was pending for this card".into(),
                Some(p) => describe_resolution(p),
            })?;
        } else {
            let amount = r.amount.ok_or_else(|| anyhow!("give --amount"))?;
            let res = self
                .office
                .recharge(
                    &self.session,
                    &*ks,
                    &mut card,
                    RechargeRequest {
                        amount_minor: amount,
                        when,
                    },
                )
                .await
                .map_err(classify_office)?;
            print(self.json, &res, || {
                let mut t = String::new();
                if let Some(e) = &res.earlier {
                    t.push_str(&describe_resolution(e));
                    t.push('\n');
                }
                t.push_str(&describe_load(&res.load));
                t
            })?;
            if res.load.tac_verified == Some(false) {
                drop(card);
                drop(opened);
                return self.done(ExitCode::from(1));
            }
        }
        drop(card);
        drop(opened);
        self.done(ExitCode::SUCCESS)
    }

    async fn replace(self, r: &ReplaceArgs) -> Result<ExitCode> {
        let lost = iccard_office::issuance::parse_card_number(&self.config.issuer_number, &r.lost)
            .map_err(classify_office)?;
        let ks = self.open_keystore()?;
        let mut opened =
            super::reader::OpenCard::open(r.card.as_deref(), r.reader.as_deref(), "card")?;
        let channel = opened.channel()?;
        let mut card = PurseCard::open(channel).map_err(|e| anyhow!(Refused(anyhow!(e))))?;
        let now = now_time();
        let res = self
            .office
            .replace_card(&self.session, &*ks, &mut card, &lost, now)
            .await
            .map_err(classify_office)?;
        print(self.json, &res, || match &res.load {
            None => format!(
                "card {} replaced by {}: it held nothing to move",
                res.lost_card, res.new_card
            ),
            Some(l) => format!(
                "card {} replaced by {}: {} moved onto the new card ({})",
                res.lost_card,
                res.new_card,
                yuan(res.amount_minor),
                describe_load(l)
            ),
        })?;
        drop(card);
        drop(opened);
        self.done(ExitCode::SUCCESS)
    }

    async fn settings(self, c: &SettingsCmd) -> Result<ExitCode> {
        match c {
            SettingsCmd::LateRecordWindow { days } => self
                .office
                .set_late_record_window(&self.session, *days)
                .await
                .map_err(classify_office)?,
            SettingsCmd::ReturnFee { minor } => self
                .office
                .set_return_fee(&self.session, *minor)
                .await
                .map_err(classify_office)?,
            SettingsCmd::Show => {}
        }
        let days = self
            .office
            .late_record_window_days()
            .await
            .map_err(classify_office)?;
        let fee = self
            .office
            .return_fee_minor()
            .await
            .map_err(classify_office)?;
        print(
            self.json,
            &serde_json::json!({ "late_record_window_days": days, "return_fee_minor": fee }),
            || format!("late-record window: {days} days\nreturn fee: {}", yuan(fee)),
        )?;
        self.done(ExitCode::SUCCESS)
    }

    async fn report(self, c: &ReportCmd) -> Result<ExitCode> {
        let ReportCmd::Daily { date } = c;
        let date = date.clone().unwrap_or_else(|| now_time().date_string());
        let r = self
            .office
            .daily_report(&self.session, &date)
            .await
            .map_err(classify_office)?;
        print(self.json, &r, || {
            let mut t = format!(
                "daily report {} (UTC)\n{:<16} {:<12} {:<22} {:>6} {:>14}",
                r.date, "operator", "machine", "operation", "count", "amount"
            );
            for x in &r.rows {
                t.push_str(&format!(
                    "\n{:<16} {:<12} {:<22} {:>6} {:>14}",
                    x.operator,
                    x.machine_number,
                    x.kind,
                    x.count,
                    yuan(x.amount_minor)
                ));
            }
            for c in &r.cash {
                t.push_str(&format!(
                    "\n{}: cash in {}, out {}",
                    c.account,
                    yuan(c.in_minor),
                    yuan(c.out_minor)
                ));
            }
            t
        })?;
        self.done(ExitCode::SUCCESS)
    }

    async fn pending(self) -> Result<ExitCode> {
        let rows = self.office.pending_loads().await.map_err(classify_office)?;
        print(self.json, &rows, || {
            if rows.is_empty() {
                return "no load is pending".into();
            }
            rows.iter()
                .map(|p| {
                    format!(
                        "card {} online serial {} amount {} since {} ({} at {}): present the card (`iccard office recharge --settle`)",
                        p.application_serial,
                        p.online_serial,
                        yuan(p.amount_minor),
                        when(p.started_at_ms),
                        p.operator,
                        p.machine_number
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        self.done(ExitCode::SUCCESS)
    }

    async fn ledger(self, c: &LedgerCmd) -> Result<ExitCode> {
        match c {
            LedgerCmd::Accounts => {
                let acc = self.office.accounts().await.map_err(classify_office)?;
                print(self.json, &acc, || {
                    let mut t = format!("{:<24} {:<10} {:>14}  name", "account", "kind", "balance");
                    for x in &acc {
                        t.push_str(&format!(
                            "\n{:<24} {:<10} {:>14}  {}",
                            x.code,
                            format!("{:?}", x.kind).to_lowercase(),
                            yuan(x.balance_minor),
                            x.name
                        ));
                    }
                    t
                })?;
            }
            LedgerCmd::Card { serial } => {
                let card = self.office.card(serial).await.map_err(classify_office)?;
                let history = self
                    .office
                    .card_history(serial)
                    .await
                    .map_err(classify_office)?;
                let v = serde_json::json!({"card": card, "history": history});
                print(self.json, &v, || {
                    format!(
                        "card {}: balance {} (last proven {}), deposit {}, online serial {}, offline serial {}, {} history rows",
                        card.application_serial,
                        yuan(card.balance_minor),
                        yuan(card.proven_balance_minor),
                        yuan(card.deposit_minor),
                        card.online_serial,
                        card.offline_serial,
                        history.len()
                    )
                })?;
            }
        }
        self.done(ExitCode::SUCCESS)
    }
}
