//! `iccard office check`: the ledger's and the audit log's invariants, verified from the data.
//!
//! Checked, in one consistent read snapshot: every journal entry has at least two lines and
//! balances; every line is on exactly one side with a positive amount; every account's stored
//! balance equals the sum of its lines; the stored-value float equals the sum of the card shadow
//! balances and the deposits held equal the sum of the card deposits; the audit chain is intact.
//! Sums are computed with checked arithmetic (an overflow is reported, not wrapped).

use serde::Serialize;

use crate::audit::{self, ChainReport};
use crate::error::Result;
use crate::ledger::{self, AccountKind};
use crate::store::{Dialect, Store};

/// What `check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Which database was checked.
    pub dialect: Dialect,
    /// Journal entries examined.
    pub entries: i64,
    /// Accounts examined.
    pub accounts: i64,
    /// Card shadow accounts examined.
    pub cards: i64,
    /// The float's balance, minor units.
    pub float_minor: i64,
    /// The sum of the card shadow balances, minor units (None if it overflowed).
    pub shadow_total_minor: Option<i64>,
    /// The audit chain.
    pub audit: ChainReport,
    /// Every violated invariant, in words; empty when all is well.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether every invariant holds.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

fn checked_sum(values: impl IntoIterator<Item = i64>) -> Option<i64> {
    values
        .into_iter()
        .try_fold(0i64, |acc, v| acc.checked_add(v))
}

/// Runs every check on `store` (read-only).
pub async fn check(store: &Store) -> Result<CheckReport> {
    let mut tx = store.read().await?;
    let mut problems = Vec::new();

    let entries: Vec<(i64, i64, i64, i64)> = tx
        .fetch_all(
            "SELECT e.id, COUNT(l.id), \
             COALESCE(CAST(SUM(l.debit_minor) AS BIGINT), 0), \
             COALESCE(CAST(SUM(l.credit_minor) AS BIGINT), 0) \
             FROM journal_entries e LEFT JOIN journal_lines l ON l.entry_id = e.id \
             GROUP BY e.id ORDER BY e.id",
            &[],
        )
        .await?;
    for (id, lines, debit, credit) in &entries {
        if *lines < 2 {
            problems.push(format!(
                "journal entry {id} has {lines} line(s), needs at least 2"
            ));
        }
        if debit != credit {
            problems.push(format!(
                "journal entry {id} does not balance: debits {debit}, credits {credit}"
            ));
        }
    }
    let bad_lines: Vec<(i64, i64, i64, i64)> = tx
        .fetch_all(
            "SELECT id, entry_id, debit_minor, credit_minor FROM journal_lines \
             WHERE NOT ((debit_minor > 0 AND credit_minor = 0) \
                     OR (debit_minor = 0 AND credit_minor > 0)) ORDER BY id",
            &[],
        )
        .await?;
    for (id, entry, debit, credit) in bad_lines {
        problems.push(format!(
            "journal line {id} of entry {entry} must have exactly one positive side (debit {debit}, credit {credit})"
        ));
    }

    let accounts: Vec<(String, String, i64, i64)> = tx
        .fetch_all(
            "SELECT a.code, a.kind, a.net_debit_minor, \
             COALESCE(CAST(SUM(l.debit_minor - l.credit_minor) AS BIGINT), 0) \
             FROM accounts a LEFT JOIN journal_lines l ON l.account_id = a.id \
             GROUP BY a.id, a.code, a.kind, a.net_debit_minor ORDER BY a.code",
            &[],
        )
        .await?;
    let mut float_minor = 0i64;
    let mut deposits_held_minor = 0i64;
    for (code, kind, stored, from_lines) in &accounts {
        if stored != from_lines {
            problems.push(format!(
                "account {code} stores net debit {stored} but its lines sum to {from_lines}"
            ));
        }
        let natural = AccountKind::parse(kind)?.natural_balance(*from_lines)?;
        if code == ledger::FLOAT {
            float_minor = natural;
        } else if code == ledger::DEPOSITS_HELD {
            deposits_held_minor = natural;
        }
    }

    let cards = ledger::cards(&mut tx).await?;
    let shadow_total_minor = checked_sum(cards.iter().map(|c| c.balance_minor));
    match shadow_total_minor {
        Some(total) if total == float_minor => {}
        Some(total) => problems.push(format!(
            "the float is {float_minor} but the card shadow balances sum to {total}"
        )),
        None => problems.push("the card shadow balances overflow when summed".into()),
    }
    match checked_sum(cards.iter().map(|c| c.deposit_minor)) {
        Some(total) if total == deposits_held_minor => {}
        Some(total) => problems.push(format!(
            "deposits held are {deposits_held_minor} but the card deposits sum to {total}"
        )),
        None => problems.push("the card deposits overflow when summed".into()),
    }
    for c in &cards {
        if c.balance_minor < 0 {
            problems.push(format!(
                "card {} has a negative shadow balance {}",
                c.application_serial, c.balance_minor
            ));
        }
    }

    let audit = audit::verify(&mut tx).await?;
    if let Some(b) = &audit.broken {
        problems.push(format!(
            "the audit chain is broken at record {}: {}",
            b.seq, b.reason
        ));
    }
    problems.extend(crate::manufacture::check_inventory(&mut tx).await?);
    tx.rollback().await?;
    Ok(CheckReport {
        dialect: store.dialect(),
        entries: i64::try_from(entries.len()).unwrap_or(i64::MAX),
        accounts: i64::try_from(accounts.len()).unwrap_or(i64::MAX),
        cards: i64::try_from(cards.len()).unwrap_or(i64::MAX),
        float_minor,
        shadow_total_minor,
        audit,
        problems,
    })
}
