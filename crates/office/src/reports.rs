//! The daily report: what each operator did at each machine on one day (UTC), and the cash
//! each recharge point took in and handed out, from the business records and the journal.
//! Read-only; auditors (the role that reads the ledger).

use serde::Serialize;

use crate::args;
use crate::error::{OfficeError, Result};
use crate::office::Office;
use crate::operators::{Action, Session};

const DAY_MS: i64 = 86_400_000;

/// One operator's operations of one kind at one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DailyRow {
    /// The operator's login.
    pub operator: String,
    /// The machine number.
    pub machine_number: String,
    /// The operation kind (`open_card`, `load_card`, `bank_deposit`, …).
    pub kind: String,
    /// How many.
    pub count: i64,
    /// Their amounts, minor units.
    pub amount_minor: i64,
}

/// A recharge point's cash over the day, from its cash account's journal lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineCash {
    /// The cash account (`cash:<machine>`).
    pub account: String,
    /// Cash taken in, minor units.
    pub in_minor: i64,
    /// Cash handed out (to the bank, refunds), minor units.
    pub out_minor: i64,
}

/// The daily report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DailyReport {
    /// The day, `YYYYMMDD` (UTC).
    pub date: String,
    /// Per operator, machine and kind.
    pub rows: Vec<DailyRow>,
    /// Per recharge point.
    pub cash: Vec<MachineCash>,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The first millisecond of `YYYYMMDD` (UTC).
pub fn day_start_ms(date: &str) -> Result<i64> {
    let bad = || OfficeError::Invalid {
        what: "date",
        why: format!("{date:?}: give YYYYMMDD"),
    };
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n = |r: std::ops::Range<usize>| date[r].parse::<i64>().map_err(|_| bad());
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    Ok(days_from_civil(y, m, d) * DAY_MS)
}

impl Office {
    /// The daily report of `date` (`YYYYMMDD`, UTC).
    pub async fn daily_report(&self, s: &Session, date: &str) -> Result<DailyReport> {
        let from = day_start_ms(date)?;
        let to = from + DAY_MS;
        // The role check (a refusal is audited); the report itself reads a snapshot.
        let (tx, _) = self
            .begin(s, Action::ReadLedger, &format!("daily report {date}"))
            .await?;
        tx.rollback().await?;
        let mut tx = self.store().read().await?;
        let rows: Vec<(String, String, String, i64, i64)> = tx
            .fetch_all(
                "SELECT p.login, m.machine_number, o.kind, COUNT(*), \
                 CAST(COALESCE(SUM(o.amount_minor), 0) AS BIGINT) \
                 FROM operations o JOIN operators p ON p.id = o.operator_id \
                 JOIN machines m ON m.id = o.machine_id \
                 WHERE o.at_ms >= $1 AND o.at_ms < $2 \
                 GROUP BY p.login, m.machine_number, o.kind ORDER BY p.login, m.machine_number, o.kind",
                &args![from, to],
            )
            .await?;
        let cash: Vec<(String, i64, i64)> = tx
            .fetch_all(
                "SELECT a.code, CAST(COALESCE(SUM(l.debit_minor), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(l.credit_minor), 0) AS BIGINT) \
                 FROM journal_lines l JOIN journal_entries e ON e.id = l.entry_id \
                 JOIN accounts a ON a.id = l.account_id \
                 WHERE a.code LIKE 'cash:%' AND e.at_ms >= $1 AND e.at_ms < $2 \
                 GROUP BY a.code ORDER BY a.code",
                &args![from, to],
            )
            .await?;
        tx.rollback().await?;
        Ok(DailyReport {
            date: date.to_owned(),
            rows: rows
                .into_iter()
                .map(
                    |(operator, machine_number, kind, count, amount_minor)| DailyRow {
                        operator,
                        machine_number,
                        kind,
                        count,
                        amount_minor,
                    },
                )
                .collect(),
            cash: cash
                .into_iter()
                .map(|(account, in_minor, out_minor)| MachineCash {
                    account,
                    in_minor,
                    out_minor,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_counted_from_the_epoch() {
        assert_eq!(day_start_ms("19700101").unwrap(), 0);
        assert_eq!(day_start_ms("20231114").unwrap(), 19_675 * DAY_MS);
        assert_eq!(day_start_ms("20000301").unwrap(), 11_017 * DAY_MS);
        assert!(day_start_ms("2023111").is_err());
        assert!(day_start_ms("20231301").is_err());
    }
}
