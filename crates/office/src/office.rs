//! The back office façade: every business operation, with its role check, its one write
//! transaction, its history rows, its ledger entry and its audit record.
//!
//! Shape of every operation: `Office::begin` takes the write lock, re-reads the operator and
//! the machine (a role changed or an operator disabled since login takes effect at once) and,
//! if the role does not permit the action, commits a `denied` audit record and returns the
//! refusal. Otherwise the operation's body runs in that transaction; `Office::finish` appends
//! the `ok` audit record and commits, or rolls everything back and records `failed` in a
//! transaction of its own.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::args;
use crate::audit::{self, AuditDraft, AuditRecord, ChainReport, Outcome};
use crate::check::{self, CheckReport};
use crate::error::{OfficeError, Result};
use crate::ledger::{self, Account, CardAccount, LineSpec};
use crate::machines::{self, Branch, Machine, MachineKind, NewMachine};
use crate::operators::{validate_login, Action, Operator, Password, Role, Session};
use crate::store::{Store, Tx};

/// Milliseconds since the Unix epoch; injectable for deterministic tests and simulation.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    })
}

/// Production or development: a production back office refuses the development key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Real money, real keys.
    Production,
    /// Tests and demos.
    Development,
}

impl Mode {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Production => "production",
            Mode::Development => "development",
        }
    }
}

/// What `init` needs.
#[derive(Debug)]
pub struct InitConfig {
    /// The issuer number (1 to 16 decimal digits).
    pub issuer_number: String,
    /// Production or development.
    pub mode: Mode,
    /// The first branch's code.
    pub branch_code: String,
    /// The first branch's name.
    pub branch_name: String,
    /// The number of the office console `init` runs on.
    pub console_machine_number: String,
    /// The first administrator's login.
    pub admin_login: String,
    /// The first administrator's display name.
    pub admin_display_name: String,
    /// The first administrator's password.
    pub admin_password: Password,
}

/// The back office's settings, as stored by `init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// Issuer number.
    pub issuer_number: String,
    /// Production or development.
    pub mode: Mode,
}

/// A new operator.
#[derive(Debug)]
pub struct NewOperator {
    /// Login.
    pub login: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Initial password.
    pub password: Password,
}

/// Issuing a card: open its shadow account and take deposit and card fee in cash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenCard {
    /// The card's application serial (1 to 20 hex digits).
    pub application_serial: String,
    /// Deposit, minor units (may be 0).
    pub deposit_minor: i64,
    /// Card fee, minor units (may be 0).
    pub fee_minor: i64,
}

/// Loading a card against cash at a recharge point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadCard {
    /// The card.
    pub application_serial: String,
    /// Amount, minor units, positive.
    pub amount_minor: i64,
    /// The balance the card reported before the load (INITIALIZE FOR LOAD).
    pub card_balance_minor: i64,
    /// The online serial the card reported before the load.
    pub card_online_serial: i64,
}

/// What a load produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadReceipt {
    /// The business record's id.
    pub operation_id: i64,
    /// The journal entry's id.
    pub entry_id: i64,
    /// The card's shadow account after the load.
    pub card: CardAccount,
}

/// Settling an uploaded offline purchase (stand-in until the settlement slice verifies TACs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlePurchase {
    /// The card.
    pub application_serial: String,
    /// The terminal's machine number.
    pub terminal_machine_number: String,
    /// Amount, minor units, positive.
    pub amount_minor: i64,
    /// The card's offline serial for the purchase.
    pub offline_serial: i64,
    /// The terminal's transaction serial.
    pub terminal_serial: i64,
}

fn validate_amount(what: &str, amount_minor: i64, allow_zero: bool) -> Result<()> {
    if amount_minor < 0 || (!allow_zero && amount_minor == 0) {
        return Err(OfficeError::AmountOutOfRange(format!(
            "{what} is {amount_minor}"
        )));
    }
    Ok(())
}

fn validate_application_serial(s: &str) -> Result<()> {
    let ok = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(OfficeError::Invalid {
            what: "application serial",
            why: format!("{s:?}: use 1 to 20 hexadecimal digits"),
        })
    }
}

fn overflow(what: &str) -> OfficeError {
    OfficeError::AmountOutOfRange(what.to_owned())
}

/// An open back office.
#[derive(Clone)]
pub struct Office {
    store: Store,
    clock: Clock,
}

impl std::fmt::Debug for Office {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Office")
            .field("dialect", &self.store.dialect())
            .finish_non_exhaustive()
    }
}

/// One office setting (`office_settings`) parsed as `T`; `default` when it is not set. A value
/// that does not parse is stored data contradicting itself.
pub(crate) async fn setting<T: std::str::FromStr>(
    tx: &mut Tx,
    name: &str,
    default: T,
) -> Result<T> {
    let row: Option<(String,)> = tx
        .fetch_optional(
            "SELECT value FROM office_settings WHERE name = $1",
            &args![name],
        )
        .await?;
    match row {
        None => Ok(default),
        Some((v,)) => v
            .parse()
            .map_err(|_| OfficeError::Corrupt(format!("setting {name} is {v:?}"))),
    }
}

/// Replaces one office setting's value.
pub(crate) async fn put_setting(tx: &mut Tx, name: &str, value: &str) -> Result<()> {
    tx.execute("DELETE FROM office_settings WHERE name = $1", &args![name])
        .await?;
    tx.execute(
        "INSERT INTO office_settings (name, value) VALUES ($1, $2)",
        &args![name, value],
    )
    .await?;
    Ok(())
}

/// Reads the settings inside a transaction; `None` before `init`.
pub(crate) async fn read_settings(tx: &mut Tx) -> Result<Option<Settings>> {
    let rows: Vec<(String, String)> = tx
        .fetch_all("SELECT name, value FROM office_settings", &[])
        .await?;
    let get = |n: &str| rows.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let (Some(issuer_number), Some(mode)) = (get("issuer_number"), get("mode")) else {
        return Ok(None);
    };
    let mode = match mode.as_str() {
        "production" => Mode::Production,
        "development" => Mode::Development,
        other => return Err(OfficeError::Corrupt(format!("unknown mode {other:?}"))),
    };
    Ok(Some(Settings {
        issuer_number,
        mode,
    }))
}

impl Office {
    /// Creates a back office in an empty database: migrations, settings, the chart of accounts,
    /// the first branch, its office console and the first administrator, audited as `init`.
    pub async fn init(store: Store, config: InitConfig) -> Result<Office> {
        Self::init_with_clock(store, config, system_clock()).await
    }

    /// [`Office::init`] with an injected clock.
    pub async fn init_with_clock(store: Store, config: InitConfig, clock: Clock) -> Result<Office> {
        let ok = !config.issuer_number.is_empty()
            && config.issuer_number.len() <= 16
            && config.issuer_number.bytes().all(|b| b.is_ascii_digit());
        if !ok {
            return Err(OfficeError::Invalid {
                what: "issuer number",
                why: format!("{:?}: use 1 to 16 decimal digits", config.issuer_number),
            });
        }
        validate_login(&config.admin_login)?;
        let password_hash = config.admin_password.hash_new()?;
        store.migrate().await?;
        let at = clock();
        let mut tx = store.write().await?;
        if let Some(s) = read_settings(&mut tx).await? {
            return Err(OfficeError::AlreadyInitialized {
                issuer_number: s.issuer_number,
            });
        }
        tx.execute(
            "INSERT INTO office_settings (name, value) VALUES ('issuer_number', $1), ('mode', $2)",
            &args![&config.issuer_number, config.mode.as_str()],
        )
        .await?;
        for (code, name, kind) in ledger::CHART {
            ledger::create_account(&mut tx, code, name, kind, None).await?;
        }
        machines::insert_branch(&mut tx, &config.branch_code, &config.branch_name, at).await?;
        let console = machines::insert_machine(
            &mut tx,
            &NewMachine {
                machine_number: config.console_machine_number.clone(),
                kind: MachineKind::OfficeConsole,
                branch_code: config.branch_code.clone(),
                psam_serial: None,
            },
            at,
            None,
        )
        .await?;
        let admin_id = insert_operator(
            &mut tx,
            &config.admin_login,
            &config.admin_display_name,
            Role::Administrator,
            &password_hash,
            at,
            None,
        )
        .await?;
        let _ = admin_id;
        audit::append(
            &mut tx,
            &AuditDraft {
                at_ms: at,
                operator_login: config.admin_login.clone(),
                machine_number: console.machine_number.clone(),
                action: Action::Init.as_str().into(),
                subject: format!("issuer {}", config.issuer_number),
                outcome: Outcome::Ok,
                detail: format!(
                    "mode {}, schema {}",
                    config.mode.as_str(),
                    Store::schema_version()
                ),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Office { store, clock })
    }

    /// Opens an existing back office (applying any pending migration).
    pub async fn open(store: Store) -> Result<Office> {
        Self::open_with_clock(store, system_clock()).await
    }

    /// [`Office::open`] with an injected clock.
    pub async fn open_with_clock(store: Store, clock: Clock) -> Result<Office> {
        store.migrate().await?;
        let mut tx = store.read().await?;
        let settings = read_settings(&mut tx).await?;
        tx.rollback().await?;
        if settings.is_none() {
            return Err(OfficeError::NotInitialized);
        }
        Ok(Office { store, clock })
    }

    /// Commits a `failed` audit record for `action` on its own and returns `err`: for
    /// refusals that come after the operation's checks (a card that refused, a lost answer).
    pub(crate) async fn refuse<T>(
        &self,
        s: &Session,
        action: Action,
        subject: &str,
        err: OfficeError,
    ) -> Result<T> {
        let at = self.now_ms();
        let mut tx = self.store.write().await?;
        audit::append(
            &mut tx,
            &self.draft(s, action, subject, at, Outcome::Failed, err.to_string()),
        )
        .await?;
        tx.commit().await?;
        Err(err)
    }

    /// The office clock's current time, ms since the epoch.
    pub(crate) fn now_ms(&self) -> i64 {
        (self.clock)()
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The settings.
    pub async fn settings(&self) -> Result<Settings> {
        let mut tx = self.store.read().await?;
        let s = read_settings(&mut tx).await?;
        tx.rollback().await?;
        s.ok_or(OfficeError::NotInitialized)
    }

    /// Logs an operator in at a machine (an office console or a recharge point). A refused
    /// login is audited with the login typed; the error does not say whether the login or the
    /// password was wrong.
    pub async fn login(
        &self,
        login: &str,
        password: &Password,
        machine_number: &str,
    ) -> Result<Session> {
        let at = (self.clock)();
        let mut tx = self.store.read().await?;
        let row: Option<(i64, String, String, String)> = tx
            .fetch_optional(
                "SELECT id, role, password_hash, state FROM operators WHERE login = $1",
                &args![login],
            )
            .await?;
        let machine = machines::machine(&mut tx, machine_number).await;
        tx.rollback().await?;
        let (refusal, session) = match (row, machine) {
            (_, Err(_)) => (format!("unknown machine {machine_number}"), None),
            (_, Ok(m)) if !m.active => ("machine retired".into(), None),
            (_, Ok(m)) if m.kind == MachineKind::Terminal => {
                ("operators do not log in at terminals".into(), None)
            }
            (None, _) => ("unknown operator".into(), None),
            (Some((_, _, _, state)), _) if state != "active" => ("operator disabled".into(), None),
            (Some((id, role, hash, _)), Ok(m)) => {
                if password.verify(&hash) {
                    (
                        String::new(),
                        Some(Session {
                            operator_id: id,
                            login: login.into(),
                            role: Role::parse(&role)?,
                            machine_id: m.id,
                            machine_number: m.machine_number,
                        }),
                    )
                } else {
                    ("wrong password".into(), None)
                }
            }
        };
        let (outcome, detail) = match &session {
            Some(s) => (Outcome::Ok, format!("role {}", s.role)),
            None => (Outcome::Denied, refusal),
        };
        let mut tx = self.store.write().await?;
        audit::append(
            &mut tx,
            &AuditDraft {
                at_ms: at,
                operator_login: login.into(),
                machine_number: machine_number.into(),
                action: Action::Login.as_str().into(),
                subject: format!("operator {login}"),
                outcome,
                detail,
            },
        )
        .await?;
        tx.commit().await?;
        session.ok_or(OfficeError::LoginRefused)
    }

    /// Starts an operation: write lock, operator and machine re-read, role check (a refusal is
    /// committed as a `denied` audit record). Returns the transaction and the operation's time.
    pub(crate) async fn begin(
        &self,
        s: &Session,
        action: Action,
        subject: &str,
    ) -> Result<(Tx, i64)> {
        let at = (self.clock)();
        let mut tx = self.store.write().await?;
        let row: Option<(String, String)> = tx
            .fetch_optional(
                "SELECT role, state FROM operators WHERE id = $1",
                &args![s.operator_id],
            )
            .await?;
        let machine_active: Option<(String,)> = tx
            .fetch_optional(
                "SELECT state FROM machines WHERE id = $1",
                &args![s.machine_id],
            )
            .await?;
        let refusal = match row {
            Some((_, state)) if state != "active" => Some(OfficeError::OperatorDisabled {
                login: s.login.clone(),
            }),
            None => Some(OfficeError::OperatorDisabled {
                login: s.login.clone(),
            }),
            Some((role, _)) => {
                let role = Role::parse(&role)?;
                if !role.permits(action) {
                    Some(OfficeError::Denied {
                        login: s.login.clone(),
                        role,
                        action,
                    })
                } else if machine_active.as_ref().map(|(st,)| st.as_str()) != Some("active") {
                    Some(OfficeError::Invalid {
                        what: "machine",
                        why: format!(
                            "{} is retired or unknown; log in at a machine in service",
                            s.machine_number
                        ),
                    })
                } else {
                    None
                }
            }
        };
        if let Some(err) = refusal {
            audit::append(
                &mut tx,
                &self.draft(s, action, subject, at, Outcome::Denied, err.to_string()),
            )
            .await?;
            tx.commit().await?;
            return Err(err);
        }
        Ok((tx, at))
    }

    pub(crate) fn draft(
        &self,
        s: &Session,
        action: Action,
        subject: &str,
        at_ms: i64,
        outcome: Outcome,
        detail: String,
    ) -> AuditDraft {
        AuditDraft {
            at_ms,
            operator_login: s.login.clone(),
            machine_number: s.machine_number.clone(),
            action: action.as_str().into(),
            subject: subject.into(),
            outcome,
            detail,
        }
    }

    /// Ends an operation: on success the `ok` audit record joins its transaction and it
    /// commits; on failure it is rolled back and a `failed` record committed on its own.
    pub(crate) async fn finish<T>(
        &self,
        s: &Session,
        action: Action,
        subject: &str,
        at: i64,
        mut tx: Tx,
        result: Result<(T, String)>,
    ) -> Result<T> {
        match result {
            Ok((value, detail)) => {
                audit::append(
                    &mut tx,
                    &self.draft(s, action, subject, at, Outcome::Ok, detail),
                )
                .await?;
                tx.commit().await?;
                Ok(value)
            }
            Err(err) => {
                tx.rollback().await?;
                let mut tx = self.store.write().await?;
                audit::append(
                    &mut tx,
                    &self.draft(s, action, subject, at, Outcome::Failed, err.to_string()),
                )
                .await?;
                tx.commit().await?;
                Err(err)
            }
        }
    }

    pub(crate) async fn record_operation(
        &self,
        tx: &mut Tx,
        s: &Session,
        kind: &str,
        at: i64,
        card_id: Option<i64>,
        amount_minor: Option<i64>,
    ) -> Result<i64> {
        let id = tx.next_id("operation").await?;
        tx.execute(
            "INSERT INTO operations (id, kind, operator_id, machine_id, at_ms, card_id, amount_minor) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &args![id, kind, s.operator_id, s.machine_id, at, card_id, amount_minor],
        )
        .await?;
        Ok(id)
    }

    pub(crate) async fn require_machine(
        &self,
        tx: &mut Tx,
        s: &Session,
        kind: MachineKind,
    ) -> Result<Machine> {
        let m = machines::machine(tx, &s.machine_number).await?;
        if m.kind != kind {
            return Err(OfficeError::WrongMachine {
                machine_number: m.machine_number,
                actual: m.kind.as_str(),
                needed: kind.as_str(),
            });
        }
        Ok(m)
    }

    // ----- operators -----

    /// Creates an operator.
    pub async fn create_operator(&self, s: &Session, new: NewOperator) -> Result<Operator> {
        let subject = format!("operator {}", new.login);
        let (mut tx, at) = self.begin(s, Action::CreateOperator, &subject).await?;
        let result = async {
            validate_login(&new.login)?;
            let hash = new.password.hash_new()?;
            let exists: Option<(i64,)> = tx
                .fetch_optional(
                    "SELECT id FROM operators WHERE login = $1",
                    &args![&new.login],
                )
                .await?;
            if exists.is_some() {
                return Err(OfficeError::Duplicate {
                    what: "operator",
                    key: new.login.clone(),
                });
            }
            let id = insert_operator(
                &mut tx,
                &new.login,
                &new.display_name,
                new.role,
                &hash,
                at,
                Some(s.operator_id),
            )
            .await?;
            let op = Operator {
                id,
                login: new.login.clone(),
                display_name: new.display_name.clone(),
                role: new.role,
                active: true,
            };
            Ok((op, format!("role {}", new.role)))
        }
        .await;
        self.finish(s, Action::CreateOperator, &subject, at, tx, result)
            .await
    }

    /// Changes an operator's role (the last active administrator keeps theirs).
    pub async fn change_operator_role(
        &self,
        s: &Session,
        login: &str,
        role: Role,
    ) -> Result<Operator> {
        let subject = format!("operator {login}");
        let (mut tx, at) = self.begin(s, Action::ChangeOperatorRole, &subject).await?;
        let result = async {
            let mut op = operator(&mut tx, login).await?;
            let old = op.role;
            if old == Role::Administrator && role != Role::Administrator && op.active {
                ensure_other_admin(&mut tx, &op).await?;
            }
            op.role = role;
            update_operator(&mut tx, &op, at, s.operator_id, "role_changed").await?;
            Ok((op, format!("role {old} -> {role}")))
        }
        .await;
        self.finish(s, Action::ChangeOperatorRole, &subject, at, tx, result)
            .await
    }

    /// Disables an operator (the last active administrator cannot be disabled).
    pub async fn disable_operator(&self, s: &Session, login: &str) -> Result<Operator> {
        let subject = format!("operator {login}");
        let (mut tx, at) = self.begin(s, Action::DisableOperator, &subject).await?;
        let result = async {
            let mut op = operator(&mut tx, login).await?;
            if op.role == Role::Administrator && op.active {
                ensure_other_admin(&mut tx, &op).await?;
            }
            op.active = false;
            update_operator(&mut tx, &op, at, s.operator_id, "disabled").await?;
            Ok((op, String::from("disabled")))
        }
        .await;
        self.finish(s, Action::DisableOperator, &subject, at, tx, result)
            .await
    }

    /// Every operator, by login.
    pub async fn operators(&self) -> Result<Vec<Operator>> {
        let mut tx = self.store.read().await?;
        let rows: Vec<(i64, String, String, String, String)> = tx
            .fetch_all(
                "SELECT id, login, display_name, role, state FROM operators ORDER BY login",
                &[],
            )
            .await?;
        tx.rollback().await?;
        rows.into_iter()
            .map(|(id, login, display_name, role, state)| {
                Ok(Operator {
                    id,
                    login,
                    display_name,
                    role: Role::parse(&role)?,
                    active: state == "active",
                })
            })
            .collect()
    }

    /// An operator's history: (time, change, role, active), oldest first.
    pub async fn operator_history(&self, login: &str) -> Result<Vec<(i64, String, Role, bool)>> {
        let mut tx = self.store.read().await?;
        let op = operator(&mut tx, login).await?;
        let rows: Vec<(i64, String, String, String)> = tx
            .fetch_all(
                "SELECT at_ms, change, role, state FROM operator_history WHERE operator_id = $1 ORDER BY id",
                &args![op.id],
            )
            .await?;
        tx.rollback().await?;
        rows.into_iter()
            .map(|(at, change, role, state)| {
                Ok((at, change, Role::parse(&role)?, state == "active"))
            })
            .collect()
    }

    // ----- branches and machines -----

    /// Creates a branch.
    pub async fn create_branch(&self, s: &Session, code: &str, name: &str) -> Result<Branch> {
        let subject = format!("branch {code}");
        let (mut tx, at) = self.begin(s, Action::CreateBranch, &subject).await?;
        let result = machines::insert_branch(&mut tx, code, name, at)
            .await
            .map(|b| (b, name.to_owned()));
        self.finish(s, Action::CreateBranch, &subject, at, tx, result)
            .await
    }

    /// Registers a machine; a recharge point gets its cash account.
    pub async fn register_machine(&self, s: &Session, new: NewMachine) -> Result<Machine> {
        let subject = format!("machine {}", new.machine_number);
        let (mut tx, at) = self.begin(s, Action::RegisterMachine, &subject).await?;
        let result = async {
            let m = machines::insert_machine(&mut tx, &new, at, Some(s.operator_id)).await?;
            if m.kind == MachineKind::RechargePoint {
                ledger::create_account(
                    &mut tx,
                    &ledger::cash_account_code(&m.machine_number),
                    &format!("Cash at recharge point {}", m.machine_number),
                    ledger::AccountKind::Asset,
                    Some(m.id),
                )
                .await?;
            }
            let detail = match &m.psam_serial {
                Some(p) => format!("{} in branch {}, PSAM {p}", m.kind.as_str(), m.branch_code),
                None => format!("{} in branch {}", m.kind.as_str(), m.branch_code),
            };
            Ok((m, detail))
        }
        .await;
        self.finish(s, Action::RegisterMachine, &subject, at, tx, result)
            .await
    }

    /// Retires a machine (its history keeps it; no one logs in at it again).
    pub async fn retire_machine(&self, s: &Session, machine_number: &str) -> Result<Machine> {
        let subject = format!("machine {machine_number}");
        let (mut tx, at) = self.begin(s, Action::RetireMachine, &subject).await?;
        let result = async {
            let mut m = machines::machine(&mut tx, machine_number).await?;
            if !m.active {
                return Err(OfficeError::Invalid {
                    what: "machine",
                    why: format!("{machine_number} is already retired"),
                });
            }
            tx.execute(
                "UPDATE machines SET state = 'retired', updated_at_ms = $1 WHERE id = $2",
                &args![at, m.id],
            )
            .await?;
            m.active = false;
            machines::machine_history(&mut tx, &m, at, Some(s.operator_id), "retired").await?;
            Ok((m, String::from("retired")))
        }
        .await;
        self.finish(s, Action::RetireMachine, &subject, at, tx, result)
            .await
    }

    /// Every machine.
    pub async fn machines(&self) -> Result<Vec<Machine>> {
        let mut tx = self.store.read().await?;
        let m = machines::machines(&mut tx).await?;
        tx.rollback().await?;
        Ok(m)
    }

    // ----- money -----

    /// Issues a card at a recharge point: opens its shadow account and posts
    /// Dr cash (deposit + fee) / Cr deposits held (deposit) / Cr card fee income (fee).
    pub async fn open_card(&self, s: &Session, req: OpenCard) -> Result<CardAccount> {
        let subject = format!("card {}", req.application_serial);
        let (mut tx, at) = self.begin(s, Action::OpenCard, &subject).await?;
        let result = async {
            let rp = self
                .require_machine(&mut tx, s, MachineKind::RechargePoint)
                .await?;
            let (card, _) = self.open_card_in(&mut tx, s, at, &rp, &req).await?;
            let detail = format!("deposit {}, fee {}", req.deposit_minor, req.fee_minor);
            Ok((card, detail))
        }
        .await;
        self.finish(s, Action::OpenCard, &subject, at, tx, result)
            .await
    }

    /// Opens a card's shadow account inside the caller's transaction at recharge point `rp`:
    /// the account, its status, its history row, and the cash taken for deposit and fee (Dr
    /// cash / Cr deposits held + card fee income). Returns the account and the operation id.
    pub(crate) async fn open_card_in(
        &self,
        tx: &mut Tx,
        s: &Session,
        at: i64,
        rp: &Machine,
        req: &OpenCard,
    ) -> Result<(CardAccount, i64)> {
        validate_application_serial(&req.application_serial)?;
        validate_amount("deposit", req.deposit_minor, true)?;
        validate_amount("card fee", req.fee_minor, true)?;
        let total = req
            .deposit_minor
            .checked_add(req.fee_minor)
            .ok_or_else(|| overflow("deposit + fee"))?;
        if ledger::card(tx, &req.application_serial).await.is_ok() {
            return Err(OfficeError::Duplicate {
                what: "card",
                key: req.application_serial.clone(),
            });
        }
        let card_id = tx.next_id("card").await?;
        tx.execute(
            "INSERT INTO cards (id, application_serial, state, balance_minor, deposit_minor, \
             online_serial, offline_serial, proven_balance_minor, proven_at_ms, opened_at_ms, \
             updated_at_ms) VALUES ($1, $2, 'active', 0, $3, 0, 0, 0, $4, $4, $4)",
            &args![card_id, &req.application_serial, req.deposit_minor, at],
        )
        .await?;
        let op = self
            .record_operation(tx, s, "open_card", at, Some(card_id), Some(total))
            .await?;
        crate::losslist::insert_active(tx, card_id, at).await?;
        let card = ledger::card(tx, &req.application_serial).await?;
        ledger::card_history(tx, &card, op, at, "opened").await?;
        if total > 0 {
            let mut lines = vec![LineSpec::debit(
                ledger::cash_account_code(&rp.machine_number),
                total,
            )];
            if req.deposit_minor > 0 {
                lines.push(LineSpec::credit(ledger::DEPOSITS_HELD, req.deposit_minor));
            }
            if req.fee_minor > 0 {
                lines.push(LineSpec::credit(ledger::CARD_FEE_INCOME, req.fee_minor));
            }
            ledger::post_entry(tx, op, at, "card issued", &lines).await?;
        }
        Ok((card, op))
    }

    /// Loads a card against cash: checks the card's online serial against the shadow account,
    /// posts Dr cash / Cr float, and advances the shadow account (balance, online serial, last
    /// proven balance), all in one transaction.
    pub async fn load_card(&self, s: &Session, req: LoadCard) -> Result<LoadReceipt> {
        let subject = format!("card {}", req.application_serial);
        let (mut tx, at) = self.begin(s, Action::LoadCard, &subject).await?;
        let result = async {
            validate_amount("load amount", req.amount_minor, false)?;
            validate_amount("card balance", req.card_balance_minor, true)?;
            let rp = self
                .require_machine(&mut tx, s, MachineKind::RechargePoint)
                .await?;
            let mut card = ledger::card(&mut tx, &req.application_serial).await?;
            if req.card_online_serial != card.online_serial {
                return Err(OfficeError::OnlineSerialMismatch {
                    application_serial: card.application_serial.clone(),
                    card: req.card_online_serial,
                    expected: card.online_serial,
                });
            }
            card.balance_minor = card
                .balance_minor
                .checked_add(req.amount_minor)
                .ok_or_else(|| overflow("shadow balance"))?;
            card.online_serial = card
                .online_serial
                .checked_add(1)
                .ok_or_else(|| overflow("online serial"))?;
            card.proven_balance_minor = req
                .card_balance_minor
                .checked_add(req.amount_minor)
                .ok_or_else(|| overflow("card balance"))?;
            card.proven_at_ms = at;
            let op = self
                .record_operation(
                    &mut tx,
                    s,
                    "load_card",
                    at,
                    Some(card.id),
                    Some(req.amount_minor),
                )
                .await?;
            tx.execute(
                "INSERT INTO card_loads (operation_id, card_id, amount_minor, \
                 card_balance_before_minor, online_serial) VALUES ($1, $2, $3, $4, $5)",
                &args![
                    op,
                    card.id,
                    req.amount_minor,
                    req.card_balance_minor,
                    req.card_online_serial
                ],
            )
            .await?;
            ledger::update_card(&mut tx, &card, op, at, "loaded").await?;
            let entry_id = ledger::post_entry(
                &mut tx,
                op,
                at,
                "card load",
                &[
                    LineSpec::debit(
                        ledger::cash_account_code(&rp.machine_number),
                        req.amount_minor,
                    ),
                    LineSpec::credit(ledger::FLOAT, req.amount_minor),
                ],
            )
            .await?;
            let detail = format!(
                "amount {}, online serial {}, balance {}",
                req.amount_minor, req.card_online_serial, card.balance_minor
            );
            Ok((
                LoadReceipt {
                    operation_id: op,
                    entry_id,
                    card,
                },
                detail,
            ))
        }
        .await;
        self.finish(s, Action::LoadCard, &subject, at, tx, result)
            .await
    }

    /// Settles an uploaded offline purchase: Dr float / Cr merchant payable, the shadow balance
    /// goes down and the offline serial up. A serial at or below the last settled one is
    /// refused (idempotent upload); gap detection and TAC verification come with settlement.
    pub async fn settle_purchase(&self, s: &Session, req: SettlePurchase) -> Result<CardAccount> {
        let subject = format!("card {}", req.application_serial);
        let (mut tx, at) = self.begin(s, Action::SettlePurchase, &subject).await?;
        let result = async {
            validate_amount("purchase amount", req.amount_minor, false)?;
            let terminal = machines::machine(&mut tx, &req.terminal_machine_number).await?;
            if terminal.kind != MachineKind::Terminal {
                return Err(OfficeError::WrongMachine {
                    machine_number: terminal.machine_number,
                    actual: terminal.kind.as_str(),
                    needed: MachineKind::Terminal.as_str(),
                });
            }
            let mut card = ledger::card(&mut tx, &req.application_serial).await?;
            // The shadow account's offline serial is the next one the card will use (like its
            // online serial): the card's first purchase uses 0.
            if req.offline_serial < card.offline_serial {
                return Err(OfficeError::OfflineSerialSettled {
                    application_serial: card.application_serial.clone(),
                    offline_serial: req.offline_serial,
                    last: card.offline_serial - 1,
                });
            }
            card.balance_minor = card
                .balance_minor
                .checked_sub(req.amount_minor)
                .filter(|b| *b >= 0)
                .ok_or_else(|| OfficeError::ShadowBalanceShort {
                    application_serial: card.application_serial.clone(),
                    balance_minor: card.balance_minor,
                    amount_minor: req.amount_minor,
                })?;
            card.offline_serial = req
                .offline_serial
                .checked_add(1)
                .ok_or_else(|| overflow("offline serial"))?;
            let op = self
                .record_operation(&mut tx, s, "settle_purchase", at, Some(card.id), Some(req.amount_minor))
                .await?;
            tx.execute(
                "INSERT INTO card_purchases (operation_id, card_id, terminal_machine_id, amount_minor, \
                 offline_serial, terminal_serial) VALUES ($1, $2, $3, $4, $5, $6)",
                &args![op, card.id, terminal.id, req.amount_minor, req.offline_serial, req.terminal_serial],
            )
            .await?;
            ledger::update_card(&mut tx, &card, op, at, "purchase_settled").await?;
            ledger::post_entry(
                &mut tx,
                op,
                at,
                "purchase settled",
                &[
                    LineSpec::debit(ledger::FLOAT, req.amount_minor),
                    LineSpec::credit(ledger::MERCHANT_PAYABLE, req.amount_minor),
                ],
            )
            .await?;
            let detail = format!(
                "amount {}, offline serial {}, terminal {} serial {}",
                req.amount_minor, req.offline_serial, terminal.machine_number, req.terminal_serial
            );
            Ok((card, detail))
        }
        .await;
        self.finish(s, Action::SettlePurchase, &subject, at, tx, result)
            .await
    }

    /// Hands cash from the session's recharge point to the bank: Dr bank / Cr cash. Refused if
    /// the recharge point holds less cash.
    pub async fn bank_deposit(&self, s: &Session, amount_minor: i64) -> Result<i64> {
        let subject = format!("machine {}", s.machine_number);
        let (mut tx, at) = self.begin(s, Action::BankDeposit, &subject).await?;
        let result = async {
            validate_amount("bank deposit", amount_minor, false)?;
            let rp = self.require_machine(&mut tx, s, MachineKind::RechargePoint).await?;
            let cash_code = ledger::cash_account_code(&rp.machine_number);
            let cash = ledger::account(&mut tx, &cash_code).await?;
            if cash.balance_minor < amount_minor {
                return Err(OfficeError::Invalid {
                    what: "bank deposit",
                    why: format!(
                        "recharge point {} holds {} but {amount_minor} was asked; count the cash again",
                        rp.machine_number, cash.balance_minor
                    ),
                });
            }
            let op = self
                .record_operation(&mut tx, s, "bank_deposit", at, None, Some(amount_minor))
                .await?;
            ledger::post_entry(
                &mut tx,
                op,
                at,
                "cash to bank",
                &[
                    LineSpec::debit(ledger::BANK, amount_minor),
                    LineSpec::credit(cash_code, amount_minor),
                ],
            )
            .await?;
            Ok((op, format!("amount {amount_minor}")))
        }
        .await;
        self.finish(s, Action::BankDeposit, &subject, at, tx, result)
            .await
    }

    /// A card's shadow account.
    pub async fn card(&self, application_serial: &str) -> Result<CardAccount> {
        let mut tx = self.store.read().await?;
        let c = ledger::card(&mut tx, application_serial).await?;
        tx.rollback().await?;
        Ok(c)
    }

    /// A card's history rows, oldest first.
    pub async fn card_history(
        &self,
        application_serial: &str,
    ) -> Result<Vec<ledger::CardHistoryRow>> {
        let mut tx = self.store.read().await?;
        let c = ledger::card(&mut tx, application_serial).await?;
        let rows = ledger::card_history_rows(&mut tx, c.id).await?;
        tx.rollback().await?;
        Ok(rows)
    }

    /// Every account with its balance.
    pub async fn accounts(&self) -> Result<Vec<Account>> {
        let mut tx = self.store.read().await?;
        let a = ledger::accounts(&mut tx).await?;
        tx.rollback().await?;
        Ok(a)
    }

    // ----- keys -----

    /// Runs one key ceremony step (the caller's closure generates, imports, activates or
    /// retires a key in the keystore) for an administrator, under the write lock, and records
    /// its outcome in the audit chain: `ok` with the closure's detail (a version and a KCV,
    /// never a key), or `failed` with its message. A refused role runs nothing.
    pub async fn key_ceremony<T>(
        &self,
        s: &Session,
        subject: &str,
        step: impl FnOnce() -> std::result::Result<(T, String), String>,
    ) -> Result<T> {
        let (tx, at) = self.begin(s, Action::KeyCeremony, subject).await?;
        let result = step().map_err(OfficeError::Keystore);
        self.finish(s, Action::KeyCeremony, subject, at, tx, result)
            .await
    }

    // ----- verification -----

    /// Runs `check` for an auditor or administrator, audited with its result.
    pub async fn check(&self, s: &Session) -> Result<CheckReport> {
        let (tx, at) = self.begin(s, Action::Check, "ledger").await?;
        // The check reads its own snapshot; release the write lock while it runs.
        tx.rollback().await?;
        let report = check::check(&self.store).await?;
        let detail = if report.is_clean() {
            format!("clean: {} entries, {} cards", report.entries, report.cards)
        } else {
            format!(
                "{} problem(s): {}",
                report.problems.len(),
                report.problems.join("; ")
            )
        };
        let mut tx = self.store.write().await?;
        audit::append(
            &mut tx,
            &self.draft(s, Action::Check, "ledger", at, Outcome::Ok, detail),
        )
        .await?;
        tx.commit().await?;
        Ok(report)
    }

    /// Verifies the audit chain (read-only; not itself audited, so verifying changes nothing).
    pub async fn verify_audit(&self) -> Result<ChainReport> {
        let mut tx = self.store.read().await?;
        let r = audit::verify(&mut tx).await?;
        tx.rollback().await?;
        Ok(r)
    }

    /// Audit records after `after_seq`, oldest first, at most `limit`.
    pub async fn audit_records(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        let mut tx = self.store.read().await?;
        let r = audit::list(&mut tx, after_seq, limit).await?;
        tx.rollback().await?;
        Ok(r)
    }
}

async fn insert_operator(
    tx: &mut Tx,
    login: &str,
    display_name: &str,
    role: Role,
    password_hash: &str,
    at: i64,
    by: Option<i64>,
) -> Result<i64> {
    let id = tx.next_id("operator").await?;
    tx.execute(
        "INSERT INTO operators (id, login, display_name, role, password_hash, state, \
         created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, 'active', $6, $6)",
        &args![id, login, display_name, role.as_str(), password_hash, at],
    )
    .await?;
    let hid = tx.next_id("history").await?;
    tx.execute(
        "INSERT INTO operator_history (id, operator_id, at_ms, changed_by_operator_id, change, role, state) \
         VALUES ($1, $2, $3, $4, 'created', $5, 'active')",
        &args![hid, id, at, by, role.as_str()],
    )
    .await?;
    Ok(id)
}

async fn operator(tx: &mut Tx, login: &str) -> Result<Operator> {
    let row: Option<(i64, String, String, String)> = tx
        .fetch_optional(
            "SELECT id, display_name, role, state FROM operators WHERE login = $1",
            &args![login],
        )
        .await?;
    let (id, display_name, role, state) = row.ok_or_else(|| OfficeError::NotFound {
        what: "operator",
        key: login.into(),
    })?;
    Ok(Operator {
        id,
        login: login.into(),
        display_name,
        role: Role::parse(&role)?,
        active: state == "active",
    })
}

async fn update_operator(tx: &mut Tx, op: &Operator, at: i64, by: i64, change: &str) -> Result<()> {
    let state = if op.active { "active" } else { "disabled" };
    tx.execute(
        "UPDATE operators SET role = $1, state = $2, updated_at_ms = $3 WHERE id = $4",
        &args![op.role.as_str(), state, at, op.id],
    )
    .await?;
    let hid = tx.next_id("history").await?;
    tx.execute(
        "INSERT INTO operator_history (id, operator_id, at_ms, changed_by_operator_id, change, role, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &args![hid, op.id, at, by, change, op.role.as_str(), state],
    )
    .await?;
    Ok(())
}

async fn ensure_other_admin(tx: &mut Tx, op: &Operator) -> Result<()> {
    let (others,): (i64,) = tx
        .fetch_one(
            "SELECT COUNT(*) FROM operators WHERE role = 'administrator' AND state = 'active' AND id <> $1",
            &args![op.id],
        )
        .await?;
    if others == 0 {
        return Err(OfficeError::LastAdministrator {
            login: op.login.clone(),
        });
    }
    Ok(())
}
