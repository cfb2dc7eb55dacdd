//! Cashier shifts at recharge points: the cash in one drawer, per operator and shift.
//!
//! A recharge or issuance clerk **opens** a shift at a recharge point with the cash counted in
//! the drawer ([`Office::open_shift`]); at most one shift is open per machine and per operator
//! (checked here with a clear refusal, and enforced by two partial unique indexes in the
//! database). While it is open, every cash posting of that operator's operations on the
//! machine's cash account (`cash:<machine>`) belongs to the shift: cash loads, deposits and
//! card fees taken at issuance, cash handed to the bank, refunds paid out, and whatever later
//! operation posts to that account. The shift does not know those operations: it reads the
//! ledger, so a new kind of cash movement counts without any change here.
//!
//! Operations are ordered exactly by their ids (writers are serialized), so a shift's
//! movements are the cash lines of the operator's operations with ids between the opening and
//! the closing operation. **Expected cash** is the opening count plus cash in minus cash out.
//! **Closing** ([`Office::close_shift`]) records the count, the expected cash and the
//! difference (counted − expected); a difference is posted in the same transaction against
//! `cash_over_short` (an income account, created by the first shift): an over is Dr cash / Cr
//! over-short, a short Dr over-short / Cr cash, so the books follow the drawer and `check`
//! stays clean. A clerk closes only their own shift, at its machine; an administrator may
//! close anyone's (a supervisor close) and must say why. Opening and closing are audited
//! operations like every other.
//!
//! The opening count is not posted: it is the cash already in the drawer, which the books
//! hold in the machine's cash account (the shift records that book balance beside the count,
//! so cash that moved between shifts shows).
//!
//! Whether cash operations are refused without an open shift is the office setting
//! `shifts_required` (off unless an administrator turns it on); [`require_open_shift`] is the
//! check the cash operations call inside their transaction.
//!
//! Refusals that come from a shift's state (a second shift, a shift already closed, no open
//! shift when one is required) are [`OfficeError::Invalid`] with `what` = [`REFUSAL`], so a
//! front end can tell them from malformed input.

use serde::Serialize;

use crate::args;
use crate::audit::{self, Outcome};
use crate::error::{OfficeError, Result};
use crate::ledger::{self, AccountKind, LineSpec};
use crate::machines::MachineKind;
use crate::office::Office;
use crate::operators::{Action, Role, Session};
use crate::reports::day_start_ms;
use crate::store::Tx;

/// Account code: cash over and short (income kind: overs credit it, shorts debit it).
pub const CASH_OVER_SHORT: &str = "cash_over_short";

/// The `what` of every [`OfficeError::Invalid`] that refuses an operation because of a shift's
/// state (as opposed to malformed input).
pub const REFUSAL: &str = "shift";

const REQUIRED_SETTING: &str = "shifts_required";
const DAY_MS: i64 = 86_400_000;
const MAX_REASON_CHARS: usize = 500;

/// Whether a shift is open or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShiftState {
    /// Open: its operator's cash postings at its machine belong to it.
    Open,
    /// Closed with a count.
    Closed,
}

impl ShiftState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ShiftState::Open => "open",
            ShiftState::Closed => "closed",
        }
    }

    fn parse(s: &str) -> Result<ShiftState> {
        match s {
            "open" => Ok(ShiftState::Open),
            "closed" => Ok(ShiftState::Closed),
            other => Err(OfficeError::Corrupt(format!(
                "unknown shift state {other:?}"
            ))),
        }
    }
}

/// A shift as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shift {
    /// Id.
    pub id: i64,
    /// The cashier's login.
    pub operator: String,
    /// The recharge point.
    pub machine_number: String,
    /// Open or closed.
    pub state: ShiftState,
    /// The opening operation.
    pub open_operation_id: i64,
    /// When it opened, ms since the epoch.
    pub opened_at_ms: i64,
    /// The cash counted in the drawer at the opening, minor units.
    pub opening_cash_minor: i64,
    /// The machine's cash account balance in the books at the opening, minor units.
    pub book_cash_at_open_minor: i64,
    /// The closing operation.
    pub close_operation_id: Option<i64>,
    /// When it closed.
    pub closed_at_ms: Option<i64>,
    /// Who closed it (the cashier, or an administrator for a supervisor close).
    pub closed_by: Option<String>,
    /// What the books expected in the drawer at the close, minor units.
    pub expected_cash_minor: Option<i64>,
    /// What was counted at the close, minor units.
    pub counted_cash_minor: Option<i64>,
    /// Counted − expected: positive over, negative short.
    pub difference_minor: Option<i64>,
    /// The over/short journal entry (none when the count matched).
    pub difference_entry_id: Option<i64>,
    /// The reason given at the close (required for a supervisor close).
    pub close_reason: Option<String>,
}

/// One kind of cash movement in a shift (the operation kind that posted it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CashMovement {
    /// The operation kind (`load_card`, `open_card`, `issue_card`, `bank_deposit`, …).
    pub kind: String,
    /// How many postings.
    pub count: i64,
    /// Cash into the drawer, minor units.
    pub in_minor: i64,
    /// Cash out of the drawer, minor units.
    pub out_minor: i64,
}

/// A shift's report: the shift, its cash movements summed by kind, what the drawer should hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShiftReport {
    /// The shift.
    pub shift: Shift,
    /// The operator's cash movements at the machine during the shift, by kind.
    pub movements: Vec<CashMovement>,
    /// Their cash in, minor units.
    pub cash_in_minor: i64,
    /// Their cash out, minor units.
    pub cash_out_minor: i64,
    /// Opening count + in − out (for an open shift: so far).
    pub expected_cash_minor: i64,
    /// Net cash (in − out) other operators posted on the machine's cash account during the
    /// shift: not in the expected cash, and 0 when the drawer had one keeper.
    pub others_net_minor: i64,
}

/// Closing a shift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseShift {
    /// The cash counted in the drawer, minor units.
    pub counted_cash_minor: i64,
    /// Why (required when an administrator closes another operator's shift; a note otherwise).
    pub reason: Option<String>,
}

type ShiftRow = (
    i64,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

const SELECT_SHIFT: &str = "SELECT s.id, p.login, m.machine_number, s.state, \
     s.open_operation_id, s.opened_at_ms, s.opening_cash_minor, s.book_cash_at_open_minor, \
     s.close_operation_id, s.closed_at_ms, c.login, s.expected_cash_minor, \
     s.counted_cash_minor, s.difference_minor, s.difference_entry_id, s.close_reason \
     FROM shifts s JOIN operators p ON p.id = s.operator_id \
     JOIN machines m ON m.id = s.machine_id \
     LEFT JOIN operators c ON c.id = s.closed_by_operator_id";

fn shift_from(r: ShiftRow) -> Result<Shift> {
    Ok(Shift {
        id: r.0,
        operator: r.1,
        machine_number: r.2,
        state: ShiftState::parse(&r.3)?,
        open_operation_id: r.4,
        opened_at_ms: r.5,
        opening_cash_minor: r.6,
        book_cash_at_open_minor: r.7,
        close_operation_id: r.8,
        closed_at_ms: r.9,
        closed_by: r.10,
        expected_cash_minor: r.11,
        counted_cash_minor: r.12,
        difference_minor: r.13,
        difference_entry_id: r.14,
        close_reason: r.15,
    })
}

async fn shift_where(tx: &mut Tx, filter: &str, args: &[crate::store::Arg]) -> Result<Vec<Shift>> {
    let rows: Vec<ShiftRow> = tx
        .fetch_all(
            &format!("{SELECT_SHIFT} WHERE {filter} ORDER BY s.id"),
            args,
        )
        .await?;
    rows.into_iter().map(shift_from).collect()
}

/// A shift by id.
pub async fn shift(tx: &mut Tx, id: i64) -> Result<Shift> {
    shift_where(tx, "s.id = $1", &args![id])
        .await?
        .pop()
        .ok_or_else(|| OfficeError::NotFound {
            what: "shift",
            key: id.to_string(),
        })
}

/// The open shift of an operator (by id), if any.
pub async fn open_shift_of_operator(tx: &mut Tx, operator_id: i64) -> Result<Option<Shift>> {
    Ok(shift_where(
        tx,
        "s.operator_id = $1 AND s.state = 'open'",
        &args![operator_id],
    )
    .await?
    .pop())
}

/// The open shift at a machine (by id), if any.
pub async fn open_shift_at_machine(tx: &mut Tx, machine_id: i64) -> Result<Option<Shift>> {
    Ok(shift_where(
        tx,
        "s.machine_id = $1 AND s.state = 'open'",
        &args![machine_id],
    )
    .await?
    .pop())
}

/// Whether cash operations need an open shift (the `shifts_required` setting; off if unset).
pub async fn shifts_required_in(tx: &mut Tx) -> Result<bool> {
    crate::office::setting(tx, REQUIRED_SETTING, false).await
}

/// The check a cash operation runs inside its write transaction, before it posts: when the
/// `shifts_required` setting is on, the session's operator must have a shift open at the
/// session's machine, else the operation is refused (`Invalid` with `what` = [`REFUSAL`]).
/// Returns the open shift's id, if there is one (also when shifts are not required).
pub(crate) async fn require_open_shift(tx: &mut Tx, s: &Session) -> Result<Option<i64>> {
    let own: Option<(i64,)> = tx
        .fetch_optional(
            "SELECT id FROM shifts WHERE operator_id = $1 AND machine_id = $2 AND state = 'open'",
            &args![s.operator_id, s.machine_id],
        )
        .await?;
    if let Some((id,)) = own {
        return Ok(Some(id));
    }
    if !shifts_required_in(tx).await? {
        return Ok(None);
    }
    Err(OfficeError::Invalid {
        what: REFUSAL,
        why: format!(
            "operator {} has no shift open at {}, and this office requires one for cash \
             operations: open it first (`iccard office shift open --cash AMOUNT`)",
            s.login, s.machine_number
        ),
    })
}

/// The cash lines on account `account_id` of operations with ids in `(after_op, before_op)`,
/// by operation kind: the operator's own when `own`, everybody else's otherwise.
async fn movements(
    tx: &mut Tx,
    account_id: i64,
    operator_id: i64,
    own: bool,
    after_op: i64,
    before_op: i64,
) -> Result<Vec<CashMovement>> {
    let who = if own {
        "o.operator_id = $2"
    } else {
        "o.operator_id <> $2"
    };
    let rows: Vec<(String, i64, i64, i64)> = tx
        .fetch_all(
            &format!(
                "SELECT o.kind, COUNT(DISTINCT e.id), \
                 CAST(COALESCE(SUM(l.debit_minor), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(l.credit_minor), 0) AS BIGINT) \
                 FROM journal_lines l JOIN journal_entries e ON e.id = l.entry_id \
                 JOIN operations o ON o.id = e.operation_id \
                 WHERE l.account_id = $1 AND {who} AND o.id > $3 AND o.id < $4 \
                 GROUP BY o.kind ORDER BY o.kind"
            ),
            &args![account_id, operator_id, after_op, before_op],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, count, in_minor, out_minor)| CashMovement {
            kind,
            count,
            in_minor,
            out_minor,
        })
        .collect())
}

fn overflow(what: &str) -> OfficeError {
    OfficeError::AmountOutOfRange(what.to_owned())
}

fn totals(movements: &[CashMovement]) -> Result<(i64, i64)> {
    movements.iter().try_fold((0i64, 0i64), |(i, o), m| {
        Ok((
            i.checked_add(m.in_minor)
                .ok_or_else(|| overflow("shift cash in"))?,
            o.checked_add(m.out_minor)
                .ok_or_else(|| overflow("shift cash out"))?,
        ))
    })
}

/// Builds a shift's report from the ledger (inside any transaction).
pub async fn report(tx: &mut Tx, shift_id: i64) -> Result<ShiftReport> {
    let sh = shift(tx, shift_id).await?;
    let (operator_id,): (i64,) = tx
        .fetch_one(
            "SELECT operator_id FROM shifts WHERE id = $1",
            &args![shift_id],
        )
        .await?;
    let cash = ledger::account(tx, &ledger::cash_account_code(&sh.machine_number)).await?;
    let before = sh.close_operation_id.unwrap_or(i64::MAX);
    let own = movements(tx, cash.id, operator_id, true, sh.open_operation_id, before).await?;
    let others = movements(
        tx,
        cash.id,
        operator_id,
        false,
        sh.open_operation_id,
        before,
    )
    .await?;
    let (cash_in_minor, cash_out_minor) = totals(&own)?;
    let expected_cash_minor = sh
        .opening_cash_minor
        .checked_add(cash_in_minor)
        .and_then(|v| v.checked_sub(cash_out_minor))
        .ok_or_else(|| overflow("expected cash"))?;
    if let Some(stored) = sh.expected_cash_minor {
        if stored != expected_cash_minor {
            return Err(OfficeError::Corrupt(format!(
                "shift {shift_id} stored expected cash {stored} but its postings give {expected_cash_minor}"
            )));
        }
    }
    let (oi, oo) = totals(&others)?;
    let others_net_minor = oi
        .checked_sub(oo)
        .ok_or_else(|| overflow("other operators' cash"))?;
    Ok(ShiftReport {
        shift: sh,
        movements: own,
        cash_in_minor,
        cash_out_minor,
        expected_cash_minor,
        others_net_minor,
    })
}

async fn ensure_over_short_account(tx: &mut Tx) -> Result<()> {
    let exists: Option<(i64,)> = tx
        .fetch_optional(
            "SELECT id FROM accounts WHERE code = $1",
            &args![CASH_OVER_SHORT],
        )
        .await?;
    if exists.is_none() {
        ledger::create_account(
            tx,
            CASH_OVER_SHORT,
            "Cash over and short",
            AccountKind::Income,
            None,
        )
        .await?;
    }
    Ok(())
}

async fn current_role(tx: &mut Tx, operator_id: i64) -> Result<Role> {
    let (role,): (String,) = tx
        .fetch_one(
            "SELECT role FROM operators WHERE id = $1",
            &args![operator_id],
        )
        .await?;
    Role::parse(&role)
}

impl Office {
    /// Opens a shift for the session's operator at the session's recharge point with
    /// `opening_cash_minor` counted in the drawer (0 allowed). Refused if the machine or the
    /// operator already has an open shift.
    pub async fn open_shift(&self, s: &Session, opening_cash_minor: i64) -> Result<Shift> {
        let subject = format!("machine {}", s.machine_number);
        let (mut tx, at) = self.begin(s, Action::OpenShift, &subject).await?;
        let result = async {
            if opening_cash_minor < 0 {
                return Err(OfficeError::AmountOutOfRange(format!(
                    "opening cash is {opening_cash_minor}"
                )));
            }
            let rp = self
                .require_machine(&mut tx, s, MachineKind::RechargePoint)
                .await?;
            if let Some(other) = open_shift_at_machine(&mut tx, rp.id).await? {
                return Err(OfficeError::Invalid {
                    what: REFUSAL,
                    why: format!(
                        "machine {} has shift {} of {} open: it must be closed first",
                        rp.machine_number, other.id, other.operator
                    ),
                });
            }
            if let Some(other) = open_shift_of_operator(&mut tx, s.operator_id).await? {
                return Err(OfficeError::Invalid {
                    what: REFUSAL,
                    why: format!(
                        "operator {} has shift {} open at {}: close it first",
                        s.login, other.id, other.machine_number
                    ),
                });
            }
            ensure_over_short_account(&mut tx).await?;
            let book = ledger::account(&mut tx, &ledger::cash_account_code(&rp.machine_number))
                .await?
                .balance_minor;
            let op = self
                .record_operation(&mut tx, s, "open_shift", at, None, Some(opening_cash_minor))
                .await?;
            let id = tx.next_id("shift").await?;
            tx.execute(
                "INSERT INTO shifts (id, operator_id, machine_id, state, open_operation_id, \
                 opened_at_ms, opening_cash_minor, book_cash_at_open_minor) \
                 VALUES ($1, $2, $3, 'open', $4, $5, $6, $7)",
                &args![id, s.operator_id, rp.id, op, at, opening_cash_minor, book],
            )
            .await?;
            let sh = shift(&mut tx, id).await?;
            let detail =
                format!("shift {id}: opening cash {opening_cash_minor}, books hold {book}");
            Ok((sh, detail))
        }
        .await;
        self.finish(s, Action::OpenShift, &subject, at, tx, result)
            .await
    }

    /// Closes shift `shift_id` with the cash counted: records expected, counted and the
    /// difference, and posts a difference against [`CASH_OVER_SHORT`]. A clerk closes only
    /// their own shift, logged in at its machine (another's is a `denied` refusal); an
    /// administrator closes anyone's with a reason (a supervisor close).
    pub async fn close_shift(
        &self,
        s: &Session,
        shift_id: i64,
        close: CloseShift,
    ) -> Result<ShiftReport> {
        let subject = format!("shift {shift_id}");
        let (mut tx, at) = self.begin(s, Action::CloseShift, &subject).await?;
        let owner: Result<(i64, i64)> = tx
            .fetch_optional(
                "SELECT operator_id, machine_id FROM shifts WHERE id = $1",
                &args![shift_id],
            )
            .await
            .and_then(|r| {
                r.ok_or_else(|| OfficeError::NotFound {
                    what: "shift",
                    key: shift_id.to_string(),
                })
            });
        let (owner_id, machine_id) = match owner {
            Ok(v) => v,
            Err(e) => {
                return self
                    .finish(s, Action::CloseShift, &subject, at, tx, Err(e))
                    .await
            }
        };
        let supervisor = owner_id != s.operator_id;
        if supervisor {
            let role = current_role(&mut tx, s.operator_id).await?;
            if role != Role::Administrator {
                let err = OfficeError::Denied {
                    login: s.login.clone(),
                    role,
                    action: Action::CloseShift,
                };
                audit::append(
                    &mut tx,
                    &self.draft(
                        s,
                        Action::CloseShift,
                        &subject,
                        at,
                        Outcome::Denied,
                        format!("{err} (the shift is another operator's)"),
                    ),
                )
                .await?;
                tx.commit().await?;
                return Err(err);
            }
        }
        let result = async {
            let sh = shift(&mut tx, shift_id).await?;
            if sh.state != ShiftState::Open {
                return Err(OfficeError::Invalid {
                    what: REFUSAL,
                    why: format!(
                        "shift {shift_id} was closed by {}; nothing to close",
                        sh.closed_by.as_deref().unwrap_or("?")
                    ),
                });
            }
            if close.counted_cash_minor < 0 {
                return Err(OfficeError::AmountOutOfRange(format!(
                    "counted cash is {}",
                    close.counted_cash_minor
                )));
            }
            let reason = close
                .reason
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_owned);
            if let Some(r) = &reason {
                if r.chars().count() > MAX_REASON_CHARS || r.chars().any(char::is_control) {
                    return Err(OfficeError::Invalid {
                        what: "reason",
                        why: format!("use at most {MAX_REASON_CHARS} characters on one line"),
                    });
                }
            }
            if supervisor && reason.is_none() {
                return Err(OfficeError::Invalid {
                    what: "reason",
                    why: format!(
                        "shift {shift_id} is {}'s: a supervisor close needs a reason (--reason)",
                        sh.operator
                    ),
                });
            }
            if !supervisor && s.machine_id != machine_id {
                return Err(OfficeError::Invalid {
                    what: REFUSAL,
                    why: format!(
                        "shift {shift_id} is at {}: log in there to close it",
                        sh.machine_number
                    ),
                });
            }
            let before = report(&mut tx, shift_id).await?;
            let expected = before.expected_cash_minor;
            let difference = close
                .counted_cash_minor
                .checked_sub(expected)
                .ok_or_else(|| overflow("shift difference"))?;
            let op = self
                .record_operation(&mut tx, s, "close_shift", at, None, Some(difference))
                .await?;
            let cash_code = ledger::cash_account_code(&sh.machine_number);
            let entry = if difference == 0 {
                None
            } else {
                ensure_over_short_account(&mut tx).await?;
                let amount = difference
                    .checked_abs()
                    .ok_or_else(|| overflow("shift difference"))?;
                let (memo, lines) = if difference > 0 {
                    (
                        format!("shift {shift_id} cash over"),
                        [
                            LineSpec::debit(cash_code, amount),
                            LineSpec::credit(CASH_OVER_SHORT, amount),
                        ],
                    )
                } else {
                    (
                        format!("shift {shift_id} cash short"),
                        [
                            LineSpec::debit(CASH_OVER_SHORT, amount),
                            LineSpec::credit(cash_code, amount),
                        ],
                    )
                };
                Some(ledger::post_entry(&mut tx, op, at, &memo, &lines).await?)
            };
            let updated = tx
                .execute(
                    "UPDATE shifts SET state = 'closed', close_operation_id = $1, \
                     closed_at_ms = $2, closed_by_operator_id = $3, expected_cash_minor = $4, \
                     counted_cash_minor = $5, difference_minor = $6, difference_entry_id = $7, \
                     close_reason = $8 WHERE id = $9 AND state = 'open'",
                    &args![
                        op,
                        at,
                        s.operator_id,
                        expected,
                        close.counted_cash_minor,
                        difference,
                        entry,
                        reason.clone(),
                        shift_id
                    ],
                )
                .await?;
            if updated != 1 {
                return Err(OfficeError::Corrupt(format!(
                    "shift {shift_id} changed under its close"
                )));
            }
            let after = report(&mut tx, shift_id).await?;
            let mut detail = format!(
                "expected {expected}, counted {}, difference {difference}",
                close.counted_cash_minor
            );
            if supervisor {
                detail.push_str(&format!(", supervisor close of {}'s shift", sh.operator));
            }
            if let Some(r) = &reason {
                detail.push_str(&format!(": {r}"));
            }
            Ok((after, detail))
        }
        .await;
        self.finish(s, Action::CloseShift, &subject, at, tx, result)
            .await
    }

    /// A shift by id.
    pub async fn shift(&self, id: i64) -> Result<Shift> {
        let mut tx = self.store().read().await?;
        let sh = shift(&mut tx, id).await?;
        tx.rollback().await?;
        Ok(sh)
    }

    /// A shift's report: opening cash, cash movements by kind, expected, counted, difference.
    pub async fn shift_report(&self, id: i64) -> Result<ShiftReport> {
        let mut tx = self.store().read().await?;
        let r = report(&mut tx, id).await?;
        tx.rollback().await?;
        Ok(r)
    }

    /// The open shift of operator `login`, if any.
    pub async fn current_shift_of(&self, login: &str) -> Result<Option<Shift>> {
        let mut tx = self.store().read().await?;
        let id: Option<(i64,)> = tx
            .fetch_optional("SELECT id FROM operators WHERE login = $1", &args![login])
            .await?;
        let (id,) = id.ok_or_else(|| OfficeError::NotFound {
            what: "operator",
            key: login.into(),
        })?;
        let sh = open_shift_of_operator(&mut tx, id).await?;
        tx.rollback().await?;
        Ok(sh)
    }

    /// The open shift at machine `machine_number`, if any.
    pub async fn current_shift_at(&self, machine_number: &str) -> Result<Option<Shift>> {
        let mut tx = self.store().read().await?;
        let m = crate::machines::machine(&mut tx, machine_number).await?;
        let sh = open_shift_at_machine(&mut tx, m.id).await?;
        tx.rollback().await?;
        Ok(sh)
    }

    /// The shifts of day `date` (`YYYYMMDD`, UTC): every shift open at some time that day
    /// (opened before its end, not closed before its start), by id.
    pub async fn shifts_of_day(&self, date: &str) -> Result<Vec<Shift>> {
        let from = day_start_ms(date)?;
        let to = from
            .checked_add(DAY_MS)
            .ok_or_else(|| overflow("day end"))?;
        let mut tx = self.store().read().await?;
        let v = shift_where(
            &mut tx,
            "s.opened_at_ms < $2 AND (s.closed_at_ms IS NULL OR s.closed_at_ms >= $1)",
            &args![from, to],
        )
        .await?;
        tx.rollback().await?;
        Ok(v)
    }

    /// Whether cash operations need an open shift of their operator at their machine.
    pub async fn shifts_required(&self) -> Result<bool> {
        let mut tx = self.store().read().await?;
        let r = shifts_required_in(&mut tx).await?;
        tx.rollback().await?;
        Ok(r)
    }

    /// Turns the `shifts_required` setting on or off; administrators only.
    pub async fn set_shifts_required(&self, s: &Session, required: bool) -> Result<()> {
        let subject = format!("setting {REQUIRED_SETTING}");
        let (mut tx, at) = self.begin(s, Action::ChangeSettings, &subject).await?;
        let result = async {
            let before = shifts_required_in(&mut tx).await?;
            crate::office::put_setting(&mut tx, REQUIRED_SETTING, &required.to_string()).await?;
            Ok(((), format!("{before} -> {required}")))
        }
        .await;
        self.finish(s, Action::ChangeSettings, &subject, at, tx, result)
            .await
    }

    /// Whether the session may take cash now, by the rule cash operations apply
    /// ([`require_open_shift`]): the id of its operator's open shift at its machine (`None`
    /// when there is none and shifts are not required), or the refusal a cash operation would
    /// get. Reads only.
    pub async fn shift_for_cash(&self, s: &Session) -> Result<Option<i64>> {
        let mut tx = self.store().read().await?;
        let r = require_open_shift(&mut tx, s).await;
        tx.rollback().await?;
        r
    }
}
