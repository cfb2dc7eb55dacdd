//! Branches and machines: office consoles, recharge points (each with its own cash account) and
//! terminals (each with its PSAM). Every operation names the machine it ran on.

use serde::Serialize;

use crate::args;
use crate::error::{OfficeError, Result};
use crate::store::Tx;

/// What a machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineKind {
    /// A back-office workstation (administration, audit).
    OfficeConsole,
    /// A recharge point: takes cash, loads and issues cards.
    RechargePoint,
    /// A merchant terminal with a PSAM.
    Terminal,
}

impl MachineKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineKind::OfficeConsole => "office_console",
            MachineKind::RechargePoint => "recharge_point",
            MachineKind::Terminal => "terminal",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Result<MachineKind> {
        match s {
            "office_console" => Ok(MachineKind::OfficeConsole),
            "recharge_point" => Ok(MachineKind::RechargePoint),
            "terminal" => Ok(MachineKind::Terminal),
            other => Err(OfficeError::Invalid {
                what: "machine kind",
                why: format!("{other:?}: use office_console, recharge_point or terminal"),
            }),
        }
    }
}

/// A branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Branch {
    /// Id.
    pub id: i64,
    /// Short code.
    pub code: String,
    /// Name.
    pub name: String,
}

/// A machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// Id.
    pub id: i64,
    /// The machine number (printed on it; unique).
    pub machine_number: String,
    /// Kind.
    pub kind: MachineKind,
    /// Its branch's code.
    pub branch_code: String,
    /// A terminal's PSAM serial.
    pub psam_serial: Option<String>,
    /// Whether it is in service.
    pub active: bool,
}

/// A machine to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMachine {
    /// The machine number.
    pub machine_number: String,
    /// Kind.
    pub kind: MachineKind,
    /// The branch's code.
    pub branch_code: String,
    /// The PSAM serial: required for a terminal, refused otherwise.
    pub psam_serial: Option<String>,
}

/// Checks a code-like name (branch code, machine number, PSAM serial): 1 to 32 characters of
/// `A-Z`, `a-z`, `0-9`, `-`, `_`.
pub fn validate_code(what: &'static str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(OfficeError::Invalid {
            what,
            why: format!("{s:?}: use 1 to 32 characters of letters, digits, '-' and '_'"),
        })
    }
}

type MachineRow = (i64, String, String, String, Option<String>, String);

const SELECT_MACHINE: &str = "SELECT m.id, m.machine_number, m.kind, b.code, m.psam_serial, \
     m.state FROM machines m JOIN branches b ON b.id = m.branch_id";

fn machine_from(r: MachineRow) -> Result<Machine> {
    Ok(Machine {
        id: r.0,
        machine_number: r.1,
        kind: MachineKind::parse(&r.2)?,
        branch_code: r.3,
        psam_serial: r.4,
        active: r.5 == "active",
    })
}

/// A machine by number.
pub async fn machine(tx: &mut Tx, machine_number: &str) -> Result<Machine> {
    let row: Option<MachineRow> = tx
        .fetch_optional(
            &format!("{SELECT_MACHINE} WHERE m.machine_number = $1"),
            &args![machine_number],
        )
        .await?;
    machine_from(row.ok_or_else(|| OfficeError::NotFound {
        what: "machine",
        key: machine_number.into(),
    })?)
}

/// Every machine, by number.
pub async fn machines(tx: &mut Tx) -> Result<Vec<Machine>> {
    let rows: Vec<MachineRow> = tx
        .fetch_all(&format!("{SELECT_MACHINE} ORDER BY m.machine_number"), &[])
        .await?;
    rows.into_iter().map(machine_from).collect()
}

/// A branch by code.
pub async fn branch(tx: &mut Tx, code: &str) -> Result<Branch> {
    let row: Option<(i64, String, String)> = tx
        .fetch_optional(
            "SELECT id, code, name FROM branches WHERE code = $1",
            &args![code],
        )
        .await?;
    let (id, code, name) = row.ok_or_else(|| OfficeError::NotFound {
        what: "branch",
        key: code.into(),
    })?;
    Ok(Branch { id, code, name })
}

/// Inserts a branch.
pub async fn insert_branch(tx: &mut Tx, code: &str, name: &str, at_ms: i64) -> Result<Branch> {
    validate_code("branch code", code)?;
    if branch(tx, code).await.is_ok() {
        return Err(OfficeError::Duplicate {
            what: "branch",
            key: code.into(),
        });
    }
    let id = tx.next_id("branch").await?;
    tx.execute(
        "INSERT INTO branches (id, code, name, created_at_ms) VALUES ($1, $2, $3, $4)",
        &args![id, code, name, at_ms],
    )
    .await?;
    Ok(Branch {
        id,
        code: code.into(),
        name: name.into(),
    })
}

/// Inserts a machine and its first history row.
pub async fn insert_machine(
    tx: &mut Tx,
    new: &NewMachine,
    at_ms: i64,
    by_operator_id: Option<i64>,
) -> Result<Machine> {
    validate_code("machine number", &new.machine_number)?;
    match (new.kind, &new.psam_serial) {
        (MachineKind::Terminal, Some(psam)) => validate_code("PSAM serial", psam)?,
        (MachineKind::Terminal, None) => {
            return Err(OfficeError::Invalid {
                what: "terminal",
                why: "a terminal needs the serial of its PSAM".into(),
            })
        }
        (_, Some(_)) => {
            return Err(OfficeError::Invalid {
                what: "PSAM serial",
                why: "only terminals have a PSAM".into(),
            })
        }
        (_, None) => {}
    }
    let branch = branch(tx, &new.branch_code).await?;
    if machine(tx, &new.machine_number).await.is_ok() {
        return Err(OfficeError::Duplicate {
            what: "machine",
            key: new.machine_number.clone(),
        });
    }
    if let Some(psam) = &new.psam_serial {
        let used: Option<(String,)> = tx
            .fetch_optional(
                "SELECT machine_number FROM machines WHERE psam_serial = $1",
                &args![psam],
            )
            .await?;
        if let Some((other,)) = used {
            return Err(OfficeError::Duplicate {
                what: "PSAM serial",
                key: format!("{psam} (in terminal {other})"),
            });
        }
    }
    let id = tx.next_id("machine").await?;
    tx.execute(
        "INSERT INTO machines (id, machine_number, kind, branch_id, psam_serial, state, \
         created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, 'active', $6, $6)",
        &args![
            id,
            &new.machine_number,
            new.kind.as_str(),
            branch.id,
            new.psam_serial.clone(),
            at_ms
        ],
    )
    .await?;
    let machine = Machine {
        id,
        machine_number: new.machine_number.clone(),
        kind: new.kind,
        branch_code: branch.code,
        psam_serial: new.psam_serial.clone(),
        active: true,
    };
    machine_history(tx, &machine, at_ms, by_operator_id, "registered").await?;
    Ok(machine)
}

/// Appends a machine history row with its current state.
pub async fn machine_history(
    tx: &mut Tx,
    machine: &Machine,
    at_ms: i64,
    by_operator_id: Option<i64>,
    change: &str,
) -> Result<()> {
    let id = tx.next_id("history").await?;
    tx.execute(
        "INSERT INTO machine_history (id, machine_id, at_ms, changed_by_operator_id, change, \
         state, psam_serial) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &args![
            id,
            machine.id,
            at_ms,
            by_operator_id,
            change,
            if machine.active { "active" } else { "retired" },
            machine.psam_serial.clone()
        ],
    )
    .await?;
    Ok(())
}
