//! The double-entry ledger: chart of accounts, journal entries and per-card shadow accounts.
//!
//! Accounts keep `net_debit_minor` (debits minus credits) in step with their journal lines;
//! [`AccountKind::natural_balance`] turns it into the balance a person expects (assets are
//! debit-normal, liabilities and income credit-normal). [`post_entry`] is the only way lines are
//! written: it refuses an entry that does not balance, has fewer than two lines or a
//! non-positive amount, before writing anything, and all arithmetic is checked.
//!
//! Architecture invariant: a journal entry is always posted inside the write transaction that
//! writes its business record (`operations` row), so both commit or neither does.

use serde::Serialize;

use crate::args;
use crate::error::{OfficeError, Result};
use crate::store::Tx;

/// The kind of an account, which decides its normal side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// Debit-normal (cash, bank).
    Asset,
    /// Credit-normal (float, deposits held, payables).
    Liability,
    /// Credit-normal (card fees).
    Income,
}

impl AccountKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Asset => "asset",
            AccountKind::Liability => "liability",
            AccountKind::Income => "income",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<AccountKind> {
        match s {
            "asset" => Ok(AccountKind::Asset),
            "liability" => Ok(AccountKind::Liability),
            "income" => Ok(AccountKind::Income),
            other => Err(OfficeError::Corrupt(format!(
                "unknown account kind {other:?}"
            ))),
        }
    }

    /// The balance on the normal side, from debits minus credits.
    pub fn natural_balance(self, net_debit_minor: i64) -> Result<i64> {
        match self {
            AccountKind::Asset => Ok(net_debit_minor),
            AccountKind::Liability | AccountKind::Income => net_debit_minor
                .checked_neg()
                .ok_or_else(|| OfficeError::AmountOutOfRange("account balance".into())),
        }
    }
}

/// The issuer-wide accounts created by `init` (code, name, kind). Cash accounts are one per
/// recharge point, named by [`cash_account_code`].
pub const CHART: [(&str, &str, AccountKind); 6] = [
    (BANK, "Bank", AccountKind::Asset),
    (FLOAT, "Stored-value float", AccountKind::Liability),
    (DEPOSITS_HELD, "Card deposits held", AccountKind::Liability),
    (CARD_FEE_INCOME, "Card fee income", AccountKind::Income),
    (REFUNDS_PAYABLE, "Refunds payable", AccountKind::Liability),
    (MERCHANT_PAYABLE, "Merchant payable", AccountKind::Liability),
];

/// Account code: the bank.
pub const BANK: &str = "bank";
/// Account code: the stored-value float (what the issuer owes card holders).
pub const FLOAT: &str = "float";
/// Account code: card deposits held.
pub const DEPOSITS_HELD: &str = "deposits_held";
/// Account code: card fee income.
pub const CARD_FEE_INCOME: &str = "card_fee_income";
/// Account code: refunds payable.
pub const REFUNDS_PAYABLE: &str = "refunds_payable";
/// Account code: merchant payable (settled purchases owed to merchants).
pub const MERCHANT_PAYABLE: &str = "merchant_payable";

/// The code of a recharge point's cash account.
pub fn cash_account_code(machine_number: &str) -> String {
    format!("cash:{machine_number}")
}

/// Which side of an entry a line is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Debit.
    Debit,
    /// Credit.
    Credit,
}

/// One line of an entry to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineSpec {
    /// The account code.
    pub account: String,
    /// Debit or credit.
    pub side: Side,
    /// A positive amount in minor units.
    pub amount_minor: i64,
}

impl LineSpec {
    /// A debit line.
    pub fn debit(account: impl Into<String>, amount_minor: i64) -> LineSpec {
        LineSpec {
            account: account.into(),
            side: Side::Debit,
            amount_minor,
        }
    }

    /// A credit line.
    pub fn credit(account: impl Into<String>, amount_minor: i64) -> LineSpec {
        LineSpec {
            account: account.into(),
            side: Side::Credit,
            amount_minor,
        }
    }
}

/// An account and its balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    /// Id.
    pub id: i64,
    /// Code (`float`, `cash:RP-001`, …).
    pub code: String,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: AccountKind,
    /// Balance on the normal side, minor units.
    pub balance_minor: i64,
}

/// Creates an account with a zero balance.
pub async fn create_account(
    tx: &mut Tx,
    code: &str,
    name: &str,
    kind: AccountKind,
    machine_id: Option<i64>,
) -> Result<i64> {
    let exists: Option<(i64,)> = tx
        .fetch_optional("SELECT id FROM accounts WHERE code = $1", &args![code])
        .await?;
    if exists.is_some() {
        return Err(OfficeError::Duplicate {
            what: "account",
            key: code.into(),
        });
    }
    let id = tx.next_id("account").await?;
    tx.execute(
        "INSERT INTO accounts (id, code, name, kind, machine_id, net_debit_minor) \
         VALUES ($1, $2, $3, $4, $5, 0)",
        &args![id, code, name, kind.as_str(), machine_id],
    )
    .await?;
    Ok(id)
}

/// Every account with its balance, by code.
pub async fn accounts(tx: &mut Tx) -> Result<Vec<Account>> {
    let rows: Vec<(i64, String, String, String, i64)> = tx
        .fetch_all(
            "SELECT id, code, name, kind, net_debit_minor FROM accounts ORDER BY code",
            &[],
        )
        .await?;
    rows.into_iter()
        .map(|(id, code, name, kind, net)| {
            let kind = AccountKind::parse(&kind)?;
            Ok(Account {
                id,
                code,
                name,
                kind,
                balance_minor: kind.natural_balance(net)?,
            })
        })
        .collect()
}

/// One account by code.
pub async fn account(tx: &mut Tx, code: &str) -> Result<Account> {
    let row: Option<(i64, String, String, String, i64)> = tx
        .fetch_optional(
            "SELECT id, code, name, kind, net_debit_minor FROM accounts WHERE code = $1",
            &args![code],
        )
        .await?;
    let (id, code, name, kind, net) = row.ok_or_else(|| OfficeError::NotFound {
        what: "account",
        key: code.into(),
    })?;
    let kind = AccountKind::parse(&kind)?;
    Ok(Account {
        id,
        code,
        name,
        kind,
        balance_minor: kind.natural_balance(net)?,
    })
}

/// Posts a balanced entry for `operation_id`; returns the entry id. Validates everything before
/// writing; the caller's transaction makes it all-or-nothing with the business record.
pub async fn post_entry(
    tx: &mut Tx,
    operation_id: i64,
    at_ms: i64,
    memo: &str,
    lines: &[LineSpec],
) -> Result<i64> {
    if lines.len() < 2 {
        return Err(OfficeError::Invalid {
            what: "journal entry",
            why: "an entry needs at least two lines".into(),
        });
    }
    let mut debit_minor = 0i64;
    let mut credit_minor = 0i64;
    for line in lines {
        if line.amount_minor <= 0 {
            return Err(OfficeError::AmountOutOfRange(format!(
                "line on {} has amount {}",
                line.account, line.amount_minor
            )));
        }
        let total = match line.side {
            Side::Debit => &mut debit_minor,
            Side::Credit => &mut credit_minor,
        };
        *total = total
            .checked_add(line.amount_minor)
            .ok_or_else(|| OfficeError::AmountOutOfRange("entry total".into()))?;
    }
    if debit_minor != credit_minor {
        return Err(OfficeError::Unbalanced {
            debit_minor,
            credit_minor,
        });
    }
    // Resolve every account and compute its new balance before writing anything.
    let mut resolved = Vec::with_capacity(lines.len());
    for line in lines {
        let (account_id,): (i64,) = tx
            .fetch_optional(
                "SELECT id FROM accounts WHERE code = $1",
                &args![&line.account],
            )
            .await?
            .ok_or_else(|| OfficeError::NotFound {
                what: "account",
                key: line.account.clone(),
            })?;
        resolved.push((account_id, line));
    }
    let entry_id = tx.next_id("journal_entry").await?;
    tx.execute(
        "INSERT INTO journal_entries (id, operation_id, at_ms, memo) VALUES ($1, $2, $3, $4)",
        &args![entry_id, operation_id, at_ms, memo],
    )
    .await?;
    for (account_id, line) in &resolved {
        let (debit, credit) = match line.side {
            Side::Debit => (line.amount_minor, 0),
            Side::Credit => (0, line.amount_minor),
        };
        let line_id = tx.next_id("journal_line").await?;
        tx.execute(
            "INSERT INTO journal_lines (id, entry_id, account_id, debit_minor, credit_minor) \
             VALUES ($1, $2, $3, $4, $5)",
            &args![line_id, entry_id, *account_id, debit, credit],
        )
        .await?;
        // Re-read: the same account may appear on several lines of one entry.
        let (net,): (i64,) = tx
            .fetch_one(
                "SELECT net_debit_minor FROM accounts WHERE id = $1",
                &args![*account_id],
            )
            .await?;
        let change = match line.side {
            Side::Debit => line.amount_minor,
            Side::Credit => line
                .amount_minor
                .checked_neg()
                .ok_or_else(|| OfficeError::AmountOutOfRange("line amount".into()))?,
        };
        let new_net = net.checked_add(change).ok_or_else(|| {
            OfficeError::AmountOutOfRange(format!("balance of account {}", line.account))
        })?;
        let updated = tx
            .execute(
                "UPDATE accounts SET net_debit_minor = $1 WHERE id = $2 AND net_debit_minor = $3",
                &args![new_net, *account_id, net],
            )
            .await?;
        if updated != 1 {
            // Cannot happen while writers hold the write lock; refuse rather than lose an update.
            return Err(OfficeError::Corrupt(format!(
                "account {} changed under a posting",
                line.account
            )));
        }
    }
    Ok(entry_id)
}

/// A card's shadow account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardAccount {
    /// Id.
    pub id: i64,
    /// The card's application serial (hex digits).
    pub application_serial: String,
    /// What the float holds for the card: loads minus settled purchases, minor units.
    pub balance_minor: i64,
    /// The deposit taken at issuance.
    pub deposit_minor: i64,
    /// The card's online (load) serial as last known.
    pub online_serial: i64,
    /// The next offline (purchase) serial the card will use: one past the last settled
    /// purchase (0 before any).
    pub offline_serial: i64,
    /// The last balance the card itself reported.
    pub proven_balance_minor: i64,
    /// When it reported it.
    pub proven_at_ms: i64,
}

type CardRow = (i64, String, i64, i64, i64, i64, i64, i64);

const SELECT_CARD: &str = "SELECT id, application_serial, balance_minor, deposit_minor, \
     online_serial, offline_serial, proven_balance_minor, proven_at_ms FROM cards";

fn card_from(r: CardRow) -> CardAccount {
    CardAccount {
        id: r.0,
        application_serial: r.1,
        balance_minor: r.2,
        deposit_minor: r.3,
        online_serial: r.4,
        offline_serial: r.5,
        proven_balance_minor: r.6,
        proven_at_ms: r.7,
    }
}

/// A card's shadow account by application serial.
pub async fn card(tx: &mut Tx, application_serial: &str) -> Result<CardAccount> {
    let row: Option<CardRow> = tx
        .fetch_optional(
            &format!("{SELECT_CARD} WHERE application_serial = $1"),
            &args![application_serial],
        )
        .await?;
    row.map(card_from).ok_or_else(|| OfficeError::NotFound {
        what: "card",
        key: application_serial.into(),
    })
}

/// Every card's shadow account, by id.
pub async fn cards(tx: &mut Tx) -> Result<Vec<CardAccount>> {
    let rows: Vec<CardRow> = tx
        .fetch_all(&format!("{SELECT_CARD} ORDER BY id"), &[])
        .await?;
    Ok(rows.into_iter().map(card_from).collect())
}

/// Writes a card's new shadow state and its history row (`change` names the cause).
pub async fn update_card(
    tx: &mut Tx,
    card: &CardAccount,
    operation_id: i64,
    at_ms: i64,
    change: &str,
) -> Result<()> {
    let updated = tx
        .execute(
            "UPDATE cards SET balance_minor = $1, online_serial = $2, offline_serial = $3, \
             proven_balance_minor = $4, proven_at_ms = $5, updated_at_ms = $6 WHERE id = $7",
            &args![
                card.balance_minor,
                card.online_serial,
                card.offline_serial,
                card.proven_balance_minor,
                card.proven_at_ms,
                at_ms,
                card.id
            ],
        )
        .await?;
    if updated != 1 {
        return Err(OfficeError::NotFound {
            what: "card",
            key: card.application_serial.clone(),
        });
    }
    card_history(tx, card, operation_id, at_ms, change).await
}

/// Appends a history row with the card's current shadow state.
pub async fn card_history(
    tx: &mut Tx,
    card: &CardAccount,
    operation_id: i64,
    at_ms: i64,
    change: &str,
) -> Result<()> {
    let id = tx.next_id("history").await?;
    tx.execute(
        "INSERT INTO card_history (id, card_id, operation_id, at_ms, change, state, \
         balance_minor, online_serial, offline_serial, proven_balance_minor) \
         VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9)",
        &args![
            id,
            card.id,
            operation_id,
            at_ms,
            change,
            card.balance_minor,
            card.online_serial,
            card.offline_serial,
            card.proven_balance_minor
        ],
    )
    .await?;
    Ok(())
}

/// One row of a card's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardHistoryRow {
    /// The operation that caused it.
    pub operation_id: i64,
    /// When.
    pub at_ms: i64,
    /// What changed (`opened`, `loaded`, `purchase_settled`).
    pub change: String,
    /// Shadow balance after.
    pub balance_minor: i64,
    /// Online serial after.
    pub online_serial: i64,
    /// Offline serial after.
    pub offline_serial: i64,
}

/// A card's history, oldest first.
pub async fn card_history_rows(tx: &mut Tx, card_id: i64) -> Result<Vec<CardHistoryRow>> {
    let rows: Vec<(i64, i64, String, i64, i64, i64)> = tx
        .fetch_all(
            "SELECT operation_id, at_ms, change, balance_minor, online_serial, offline_serial \
             FROM card_history WHERE card_id = $1 ORDER BY id",
            &args![card_id],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| CardHistoryRow {
            operation_id: r.0,
            at_ms: r.1,
            change: r.2,
            balance_minor: r.3,
            online_serial: r.4,
            offline_serial: r.5,
        })
        .collect())
}
