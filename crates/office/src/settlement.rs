//! Settlement of accepted offline purchases, cases, and the reconciliation report.
//!
//! [`Office::settle_day`] takes every accepted record not yet settled whose purchase date is
//! on or before the day, and per card, in offline-serial order:
//!
//! - a second record with the card's offline serial already settled (or seen earlier in the
//!   run): the same purchase (same amount, date, time, TAC) is a `duplicate` and is dropped;
//!   another purchase is a **cloned card** — two purses spent the same serial — and is held
//!   (`held`, not posted) with a `cloned_card` case;
//! - an offline serial above the next one expected: the serials between are a **gap**
//!   (`gap` case, once per hole); the record is still applied: the shadow balance moves for
//!   what is proven;
//! - the card's balance before the purchase (its own proof) is compared with the shadow
//!   balance: above it — the card holds money the books never loaded — or, with no gap and no
//!   load since the last proof, different from it, is a **mismatch** (`mismatch` case); a
//!   purchase the shadow balance cannot cover is held;
//! - otherwise the shadow balance goes down, the offline serial up, and the card's proof
//!   (balance after, purchase time) becomes its last proven balance.
//!
//! Applied records are posted Dr float / Cr merchant payable, one entry per merchant, terminal
//! and purchase day, all under one `settlement_run` operation; the float stays equal to the
//! sum of the card shadow balances, so `check` stays clean. A second run of the same day
//! settles only what arrived since: nothing is posted twice.
//!
//! Cases ([`CaseKind`]) open automatically at ingest or settlement, once per cause; an
//! operator resolves one with a reason ([`Office::resolve_case`], audited). Resolving decides
//! nothing about money: a held record stays held.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::args;
use crate::error::{OfficeError, Result};
use crate::ledger::{self, LineSpec};
use crate::office::Office;
use crate::operators::{Action, Session};
use crate::store::Tx;
use crate::upload::validate_date;

/// What a case is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseKind {
    /// The card's proven balance and the shadow balance disagree.
    Mismatch,
    /// Offline serials of a card are missing between settled purchases.
    Gap,
    /// A terminal sent a record under a key it had used for other content.
    DuplicateDifferentContent,
    /// A debited purchase whose TAC does not verify.
    TacInvalid,
    /// Two different purchases with one card and one offline serial.
    ClonedCard,
    /// A purchase on a card that was on the loss list at the time.
    ListedCard,
}

impl CaseKind {
    /// Every kind.
    pub const ALL: [CaseKind; 6] = [
        CaseKind::Mismatch,
        CaseKind::Gap,
        CaseKind::DuplicateDifferentContent,
        CaseKind::TacInvalid,
        CaseKind::ClonedCard,
        CaseKind::ListedCard,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CaseKind::Mismatch => "mismatch",
            CaseKind::Gap => "gap",
            CaseKind::DuplicateDifferentContent => "duplicate_different_content",
            CaseKind::TacInvalid => "tac_invalid",
            CaseKind::ClonedCard => "cloned_card",
            CaseKind::ListedCard => "listed_card",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<CaseKind> {
        CaseKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| OfficeError::Corrupt(format!("unknown case kind {s:?}")))
    }
}

impl std::fmt::Display for CaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A case to open.
#[derive(Debug, Clone)]
pub(crate) struct NewCase {
    pub kind: CaseKind,
    /// Opens the case once: a second cause with the same key opens nothing.
    pub key: String,
    pub terminal_id: Option<String>,
    pub card_id: Option<i64>,
    pub application_serial: Option<String>,
    pub record_id: Option<i64>,
    pub evidence: Option<String>,
    pub detail: String,
    pub business_date: String,
    pub at_ms: i64,
}

/// Opens a case unless one with its key exists; returns whether it opened one.
pub(crate) async fn open_case(tx: &mut Tx, c: &NewCase) -> Result<bool> {
    let exists: Option<(i64,)> = tx
        .fetch_optional(
            "SELECT id FROM settlement_cases WHERE case_key = $1",
            &args![&c.key],
        )
        .await?;
    if exists.is_some() {
        return Ok(false);
    }
    let id = tx.next_id("settlement_case").await?;
    tx.execute(
        "INSERT INTO settlement_cases (id, kind, case_key, state, terminal_id, card_id, \
         application_serial, record_id, evidence, detail, business_date, opened_at_ms) \
         VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8, $9, $10, $11)",
        &args![
            id,
            c.kind.as_str(),
            &c.key,
            c.terminal_id.clone(),
            c.card_id,
            c.application_serial.clone(),
            c.record_id,
            c.evidence.clone(),
            &c.detail,
            &c.business_date,
            c.at_ms
        ],
    )
    .await?;
    Ok(true)
}

/// A case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Case {
    /// Id.
    pub id: i64,
    /// Kind.
    pub kind: CaseKind,
    /// `open` or `resolved`.
    pub state: String,
    /// The terminal concerned.
    pub terminal_id: Option<String>,
    /// The card concerned.
    pub application_serial: Option<String>,
    /// The record concerned.
    pub record_id: Option<i64>,
    /// What was received that conflicts (a record's JSON), when kept.
    pub evidence: Option<String>,
    /// What happened.
    pub detail: String,
    /// The business day (purchase date, or receipt date for an unreadable record).
    pub business_date: String,
    /// When it opened.
    pub opened_at_ms: i64,
    /// When it was resolved.
    pub resolved_at_ms: Option<i64>,
    /// By whom (login).
    pub resolved_by: Option<String>,
    /// The reason given.
    pub resolution: Option<String>,
}

type CaseRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
);

const SELECT_CASE: &str = "SELECT c.id, c.kind, c.state, c.terminal_id, c.application_serial, \
     c.record_id, c.evidence, c.detail, c.business_date, c.opened_at_ms, c.resolved_at_ms, \
     o.login, c.resolution FROM settlement_cases c \
     LEFT JOIN operators o ON o.id = c.resolved_by_operator_id";

fn case_from(r: CaseRow) -> Result<Case> {
    Ok(Case {
        id: r.0,
        kind: CaseKind::parse(&r.1)?,
        state: r.2,
        terminal_id: r.3,
        application_serial: r.4,
        record_id: r.5,
        evidence: r.6,
        detail: r.7,
        business_date: r.8,
        opened_at_ms: r.9,
        resolved_at_ms: r.10,
        resolved_by: r.11,
        resolution: r.12,
    })
}

/// What a settlement run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettlementRun {
    /// Id.
    pub id: i64,
    /// The day settled (purchases on or before it).
    pub business_date: String,
    /// The run's business record.
    pub operation_id: i64,
    /// Records applied to card accounts and posted.
    pub records_settled: i64,
    /// Their amount, minor units.
    pub amount_minor: i64,
    /// Records dropped as duplicates of a settled purchase.
    pub duplicates: i64,
    /// Records held for a case.
    pub held: i64,
    /// Cases opened by the run.
    pub cases_opened: i64,
    /// One entry per merchant, terminal and day.
    pub postings: Vec<Posting>,
}

/// One settlement posting: Dr float / Cr merchant payable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Posting {
    /// The journal entry.
    pub entry_id: i64,
    /// The merchant's code.
    pub merchant_code: String,
    /// The terminal id.
    pub terminal_id: String,
    /// The purchase day.
    pub business_date: String,
    /// Records in it.
    pub records: i64,
    /// Amount, minor units.
    pub amount_minor: i64,
}

/// The reconciliation of one merchant's terminal for a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportLine {
    /// The merchant's code.
    pub merchant_code: String,
    /// The terminal id.
    pub terminal_id: String,
    /// The terminal machine.
    pub machine_number: String,
    /// Records received for the day.
    pub records: i64,
    /// Their amount (debited records only), minor units.
    pub amount_minor: i64,
    /// Records answered `ok`, `exists` or `listed_card` (held by the office as sent).
    pub accepted: i64,
    /// Records answered each code.
    pub by_code: BTreeMap<String, i64>,
    /// Records settled and their amount.
    pub settled: i64,
    /// Amount settled, minor units.
    pub settled_minor: i64,
    /// Accepted records waiting for a run.
    pub unsettled: i64,
    /// Held for a case.
    pub held: i64,
    /// Dropped as duplicates.
    pub duplicates: i64,
    /// Cases of the day naming this terminal (open and resolved).
    pub cases: i64,
    /// Of which still open.
    pub open_cases: i64,
}

/// The reconciliation report of a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReconciliationReport {
    /// The day.
    pub business_date: String,
    /// One line per merchant and terminal with records that day.
    pub lines: Vec<ReportLine>,
    /// Amount posted to merchant payable for the day's purchases.
    pub posted_minor: i64,
    /// Cases of the day (any terminal, or none).
    pub cases: Vec<Case>,
}

/// A pending record as read: id, terminal id, machine, merchant, card, offline serial, amount,
/// balance before, business date, purchase time, content.
type PendingRow = (
    i64,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    i64,
    String,
);
/// Merchant, machine, terminal id, day.
type GroupKey = (i64, i64, String, String);
/// Merchant, terminal, machine, code, state, status, count, amount.
type ReportRow = (String, String, String, String, String, String, i64, i64);

/// A record waiting for settlement.
#[derive(Debug, Clone)]
struct Pending {
    id: i64,
    terminal_id: String,
    machine_id: i64,
    merchant_id: i64,
    card_id: i64,
    offline_serial: i64,
    amount: i64,
    balance_before: i64,
    business_date: String,
    at_ms: i64,
    fingerprint: String,
}

/// The purchase a record proves, without the terminal's key: equal for two copies of one
/// purchase.
fn fingerprint(content: &str) -> String {
    match serde_json::from_str::<iccard_pos::PurchaseRecord>(content) {
        Ok(r) => format!(
            "{}|{}|{}|{}|{}|{}|{}",
            r.application_serial.to_ascii_uppercase(),
            r.offline_serial,
            r.amount_fen,
            r.date,
            r.time,
            r.balance_before_fen,
            r.tac.unwrap_or_default()
        ),
        Err(_) => content.to_owned(),
    }
}

fn overflow(what: &str) -> OfficeError {
    OfficeError::AmountOutOfRange(what.to_owned())
}

impl Office {
    /// Settles accepted purchases made on or before `date` (`YYYY-MM-DD`; module
    /// documentation). Administrators; one transaction, audited.
    pub async fn settle_day(&self, s: &Session, date: &str) -> Result<SettlementRun> {
        let subject = format!("settlement {date}");
        let (mut tx, at) = self.begin(s, Action::RunSettlement, &subject).await?;
        let result = async {
            validate_date(date)?;
            let rows: Vec<PendingRow> = tx
                .fetch_all(
                    "SELECT id, terminal_id, machine_id, merchant_id, card_id, offline_serial, \
                     amount_minor, balance_before_minor, business_date, purchase_at_ms, content \
                     FROM offline_records WHERE state = 'unsettled' AND business_date <= $1 \
                     AND card_id IS NOT NULL ORDER BY card_id, offline_serial, id",
                    &args![date],
                )
                .await?;
            let pending: Vec<Pending> = rows
                .into_iter()
                .map(|r| Pending {
                    id: r.0,
                    terminal_id: r.1,
                    machine_id: r.2,
                    merchant_id: r.3,
                    card_id: r.4,
                    offline_serial: r.5,
                    amount: r.6,
                    balance_before: r.7,
                    business_date: r.8,
                    at_ms: r.9,
                    fingerprint: fingerprint(&r.10),
                })
                .collect();
            let op = self
                .record_operation(&mut tx, s, "settlement_run", at, None, None)
                .await?;
            let run_id = tx.next_id("settlement_run").await?;
            tx.execute(
                "INSERT INTO settlement_runs (id, business_date, operation_id, at_ms, \
                 records_settled, amount_minor, cases_opened) VALUES ($1, $2, $3, $4, 0, 0, 0)",
                &args![run_id, date, op, at],
            )
            .await?;
            let mut by_card: BTreeMap<i64, Vec<Pending>> = BTreeMap::new();
            for p in pending {
                by_card.entry(p.card_id).or_default().push(p);
            }
            let mut applied: Vec<Pending> = Vec::new();
            let (mut duplicates, mut held, mut cases) = (0i64, 0i64, 0i64);
            for (card_id, records) in by_card {
                let (d, h, c, a) = self
                    .settle_card(&mut tx, op, at, run_id, card_id, records)
                    .await?;
                duplicates += d;
                held += h;
                cases += c;
                applied.extend(a);
            }
            // One entry per merchant, terminal and day.
            let mut groups: BTreeMap<GroupKey, (i64, i64, Vec<i64>)> = BTreeMap::new();
            for p in &applied {
                let g = groups
                    .entry((
                        p.merchant_id,
                        p.machine_id,
                        p.terminal_id.clone(),
                        p.business_date.clone(),
                    ))
                    .or_default();
                g.0 += 1;
                g.1 =
                    g.1.checked_add(p.amount)
                        .ok_or_else(|| overflow("posting"))?;
                g.2.push(p.id);
            }
            let mut postings = Vec::with_capacity(groups.len());
            let mut total = 0i64;
            for ((merchant_id, machine_id, terminal_id, day), (n, amount, ids)) in groups {
                let (merchant_code,): (String,) = tx
                    .fetch_one(
                        "SELECT code FROM merchants WHERE id = $1",
                        &args![merchant_id],
                    )
                    .await?;
                let entry_id = ledger::post_entry(
                    &mut tx,
                    op,
                    at,
                    &format!(
                        "purchases of {day}, merchant {merchant_code}, terminal {terminal_id}"
                    ),
                    &[
                        LineSpec::debit(ledger::FLOAT, amount),
                        LineSpec::credit(ledger::MERCHANT_PAYABLE, amount),
                    ],
                )
                .await?;
                tx.execute(
                    "INSERT INTO settlement_postings (entry_id, run_id, merchant_id, machine_id, \
                     terminal_id, business_date, records, amount_minor) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &args![
                        entry_id,
                        run_id,
                        merchant_id,
                        machine_id,
                        &terminal_id,
                        &day,
                        n,
                        amount
                    ],
                )
                .await?;
                for id in ids {
                    tx.execute(
                        "UPDATE offline_records SET entry_id = $1 WHERE id = $2",
                        &args![entry_id, id],
                    )
                    .await?;
                }
                total = total
                    .checked_add(amount)
                    .ok_or_else(|| overflow("run total"))?;
                postings.push(Posting {
                    entry_id,
                    merchant_code,
                    terminal_id,
                    business_date: day,
                    records: n,
                    amount_minor: amount,
                });
            }
            let settled = i64::try_from(applied.len()).map_err(|_| overflow("records"))?;
            tx.execute(
                "UPDATE settlement_runs SET records_settled = $1, amount_minor = $2, \
                 cases_opened = $3 WHERE id = $4",
                &args![settled, total, cases, run_id],
            )
            .await?;
            tx.execute(
                "UPDATE operations SET amount_minor = $1 WHERE id = $2",
                &args![total, op],
            )
            .await?;
            let detail = format!(
                "run {run_id}: {settled} record(s) settled for {total}, {} posting(s), \
                 {duplicates} duplicate(s), {held} held, {cases} case(s) opened",
                postings.len()
            );
            Ok((
                SettlementRun {
                    id: run_id,
                    business_date: date.to_owned(),
                    operation_id: op,
                    records_settled: settled,
                    amount_minor: total,
                    duplicates,
                    held,
                    cases_opened: cases,
                    postings,
                },
                detail,
            ))
        }
        .await;
        self.finish(s, Action::RunSettlement, &subject, at, tx, result)
            .await
    }

    /// Settles one card's records (offline-serial order); returns duplicates, held, cases
    /// opened and the records applied.
    async fn settle_card(
        &self,
        tx: &mut Tx,
        op: i64,
        at: i64,
        run_id: i64,
        card_id: i64,
        records: Vec<Pending>,
    ) -> Result<(i64, i64, i64, Vec<Pending>)> {
        let (serial,): (String,) = tx
            .fetch_one(
                "SELECT application_serial FROM cards WHERE id = $1",
                &args![card_id],
            )
            .await?;
        let mut card = ledger::card(tx, &serial).await?;
        // Offline serials settled so far: from earlier runs and from the stand-in.
        let mut settled: BTreeMap<i64, String> = BTreeMap::new();
        let earlier: Vec<(i64, String)> = tx
            .fetch_all(
                "SELECT offline_serial, content FROM offline_records \
                 WHERE card_id = $1 AND state = 'settled'",
                &args![card_id],
            )
            .await?;
        for (n, content) in earlier {
            settled.insert(n, fingerprint(&content));
        }
        let standin: Vec<(i64,)> = tx
            .fetch_all(
                "SELECT offline_serial FROM card_purchases WHERE card_id = $1",
                &args![card_id],
            )
            .await?;
        for (n,) in standin {
            settled.entry(n).or_insert_with(|| format!("stand-in {n}"));
        }
        let open_gap: Option<(i64,)> = tx
            .fetch_optional(
                "SELECT id FROM settlement_cases WHERE card_id = $1 AND kind = 'gap' \
                 AND state = 'open' LIMIT 1",
                &args![card_id],
            )
            .await?;
        let mut gap_open = open_gap.is_some();
        let (mut duplicates, mut held, mut cases) = (0i64, 0i64, 0i64);
        let mut applied = Vec::new();
        let before = card.clone();
        for p in records {
            let case = |kind: CaseKind, key: String, detail: String| NewCase {
                kind,
                key,
                terminal_id: Some(p.terminal_id.clone()),
                card_id: Some(card_id),
                application_serial: Some(card.application_serial.clone()),
                record_id: Some(p.id),
                evidence: None,
                detail,
                business_date: p.business_date.clone(),
                at_ms: at,
            };
            if let Some(fp) = settled.get(&p.offline_serial) {
                let state = if *fp == p.fingerprint {
                    duplicates += 1;
                    "duplicate"
                } else {
                    held += 1;
                    let c = case(
                        CaseKind::ClonedCard,
                        format!("cloned:{}", p.id),
                        format!(
                            "card {} offline serial {} was spent twice with different \
                             purchases (record {} from terminal {}): the record is held",
                            card.application_serial, p.offline_serial, p.id, p.terminal_id
                        ),
                    );
                    cases += i64::from(open_case(tx, &c).await?);
                    "held"
                };
                tx.execute(
                    "UPDATE offline_records SET state = $1, settlement_run_id = $2 WHERE id = $3",
                    &args![state, run_id, p.id],
                )
                .await?;
                continue;
            }
            let top = settled.keys().next_back().map_or(0, |n| n + 1);
            let expected = top.max(card.offline_serial);
            if p.offline_serial > expected {
                let missing: Vec<i64> = (expected..p.offline_serial)
                    .filter(|n| !settled.contains_key(n))
                    .collect();
                if let (Some(first), Some(last)) = (missing.first(), missing.last()) {
                    gap_open = true;
                    let c = case(
                        CaseKind::Gap,
                        format!("gap:{card_id}:{first}-{last}"),
                        format!(
                            "card {} offline serials {first}..={last} are missing before {}: \
                             purchases not uploaded, or lost",
                            card.application_serial, p.offline_serial
                        ),
                    );
                    cases += i64::from(open_case(tx, &c).await?);
                }
            }
            // A record filling an earlier hole proves a balance from before purchases settled
            // since: only in-order records are compared with the shadow balance.
            let in_order = p.offline_serial >= expected;
            let short = card.balance_minor < p.amount;
            let above = in_order && p.balance_before > card.balance_minor;
            let unexplained = in_order
                && !gap_open
                && p.at_ms >= card.proven_at_ms
                && p.balance_before != card.balance_minor;
            if above || unexplained || short {
                let c = case(
                    CaseKind::Mismatch,
                    format!("mismatch:{}", p.id),
                    format!(
                        "card {} offline serial {}: the card proved {} before the purchase of \
                         {}, the shadow balance is {}{}",
                        card.application_serial,
                        p.offline_serial,
                        p.balance_before,
                        p.amount,
                        card.balance_minor,
                        if short {
                            ": it cannot cover the purchase, the record is held"
                        } else {
                            ""
                        }
                    ),
                );
                cases += i64::from(open_case(tx, &c).await?);
            }
            if short {
                held += 1;
                tx.execute(
                    "UPDATE offline_records SET state = 'held', settlement_run_id = $1 WHERE id = $2",
                    &args![run_id, p.id],
                )
                .await?;
                continue;
            }
            card.balance_minor -= p.amount;
            card.offline_serial = card.offline_serial.max(
                p.offline_serial
                    .checked_add(1)
                    .ok_or_else(|| overflow("offline serial"))?,
            );
            if p.at_ms >= card.proven_at_ms {
                card.proven_balance_minor = p.balance_before - p.amount;
                card.proven_at_ms = p.at_ms;
            }
            settled.insert(p.offline_serial, p.fingerprint.clone());
            tx.execute(
                "UPDATE offline_records SET state = 'settled', settlement_run_id = $1 WHERE id = $2",
                &args![run_id, p.id],
            )
            .await?;
            applied.push(p);
        }
        if card != before {
            ledger::update_card(tx, &card, op, at, "purchases_settled").await?;
        }
        Ok((duplicates, held, cases, applied))
    }

    /// Cases, newest first; only open ones with `open_only`.
    pub async fn cases(&self, open_only: bool) -> Result<Vec<Case>> {
        let mut tx = self.store().read().await?;
        let filter = if open_only {
            " WHERE c.state = 'open'"
        } else {
            ""
        };
        let rows: Vec<CaseRow> = tx
            .fetch_all(&format!("{SELECT_CASE}{filter} ORDER BY c.id DESC"), &[])
            .await?;
        tx.rollback().await?;
        rows.into_iter().map(case_from).collect()
    }

    /// One case.
    pub async fn case(&self, id: i64) -> Result<Case> {
        let mut tx = self.store().read().await?;
        let row: Option<CaseRow> = tx
            .fetch_optional(&format!("{SELECT_CASE} WHERE c.id = $1"), &args![id])
            .await?;
        tx.rollback().await?;
        case_from(row.ok_or_else(|| OfficeError::NotFound {
            what: "case",
            key: id.to_string(),
        })?)
    }

    /// Resolves an open case with a reason (administrators; audited with the reason).
    pub async fn resolve_case(&self, s: &Session, id: i64, reason: &str) -> Result<Case> {
        let subject = format!("case {id}");
        let (mut tx, at) = self.begin(s, Action::ResolveCase, &subject).await?;
        let result = async {
            let n = reason.chars().count();
            if n == 0 || n > 500 || reason.chars().any(char::is_control) {
                return Err(OfficeError::Invalid {
                    what: "reason",
                    why: "give 1 to 500 characters, no control characters".into(),
                });
            }
            let row: Option<(String, String)> = tx
                .fetch_optional(
                    "SELECT kind, state FROM settlement_cases WHERE id = $1",
                    &args![id],
                )
                .await?;
            let (kind, state) = row.ok_or_else(|| OfficeError::NotFound {
                what: "case",
                key: id.to_string(),
            })?;
            if state != "open" {
                return Err(OfficeError::Invalid {
                    what: "case",
                    why: format!("case {id} is resolved already"),
                });
            }
            tx.execute(
                "UPDATE settlement_cases SET state = 'resolved', resolved_at_ms = $1, \
                 resolved_by_operator_id = $2, resolution = $3 WHERE id = $4",
                &args![at, s.operator_id, reason, id],
            )
            .await?;
            let row: CaseRow = tx
                .fetch_one(&format!("{SELECT_CASE} WHERE c.id = $1"), &args![id])
                .await?;
            Ok((case_from(row)?, format!("{kind} resolved: {reason}")))
        }
        .await;
        self.finish(s, Action::ResolveCase, &subject, at, tx, result)
            .await
    }

    /// The reconciliation report of a day (`YYYY-MM-DD`): per merchant and terminal, the
    /// records received for the day, their amount, the answers by code, what was settled,
    /// held or dropped, and the cases.
    pub async fn reconciliation_report(&self, date: &str) -> Result<ReconciliationReport> {
        validate_date(date)?;
        let mut tx = self.store().read().await?;
        let rows: Vec<ReportRow> = tx
            .fetch_all(
                "SELECT me.code, r.terminal_id, m.machine_number, r.code, r.state, r.status, \
                 COUNT(*), CAST(SUM(r.amount_minor) AS BIGINT) FROM offline_records r \
                 JOIN merchants me ON me.id = r.merchant_id JOIN machines m ON m.id = r.machine_id \
                 WHERE r.business_date = $1 \
                 GROUP BY me.code, r.terminal_id, m.machine_number, r.code, r.state, r.status",
                &args![date],
            )
            .await?;
        let mut lines: BTreeMap<(String, String), ReportLine> = BTreeMap::new();
        for (merchant, terminal, machine, code, state, status, n, amount) in rows {
            let l = lines
                .entry((merchant.clone(), terminal.clone()))
                .or_insert_with(|| ReportLine {
                    merchant_code: merchant,
                    terminal_id: terminal,
                    machine_number: machine,
                    records: 0,
                    amount_minor: 0,
                    accepted: 0,
                    by_code: BTreeMap::new(),
                    settled: 0,
                    settled_minor: 0,
                    unsettled: 0,
                    held: 0,
                    duplicates: 0,
                    cases: 0,
                    open_cases: 0,
                });
            l.records += n;
            let debited = iccard_pos::RecordStatus::parse(&status).is_some_and(|s| s.debited());
            if debited {
                l.amount_minor = l
                    .amount_minor
                    .checked_add(amount)
                    .ok_or_else(|| overflow("report"))?;
            }
            *l.by_code.entry(code.clone()).or_default() += n;
            if matches!(code.as_str(), "ok" | "exists" | "listed_card") {
                l.accepted += n;
            }
            match state.as_str() {
                "settled" => {
                    l.settled += n;
                    l.settled_minor = l
                        .settled_minor
                        .checked_add(amount)
                        .ok_or_else(|| overflow("report"))?;
                }
                "unsettled" => l.unsettled += n,
                "held" => l.held += n,
                "duplicate" => l.duplicates += n,
                _ => {}
            }
        }
        let case_rows: Vec<CaseRow> = tx
            .fetch_all(
                &format!("{SELECT_CASE} WHERE c.business_date = $1 ORDER BY c.id"),
                &args![date],
            )
            .await?;
        let cases: Vec<Case> = case_rows
            .into_iter()
            .map(case_from)
            .collect::<Result<_>>()?;
        for l in lines.values_mut() {
            for c in cases
                .iter()
                .filter(|c| c.terminal_id.as_deref() == Some(&l.terminal_id))
            {
                l.cases += 1;
                if c.state == "open" {
                    l.open_cases += 1;
                }
            }
        }
        let (posted,): (Option<i64>,) = tx
            .fetch_one(
                "SELECT CAST(SUM(amount_minor) AS BIGINT) FROM settlement_postings WHERE business_date = $1",
                &args![date],
            )
            .await?;
        tx.rollback().await?;
        Ok(ReconciliationReport {
            business_date: date.to_owned(),
            lines: lines.into_values().collect(),
            posted_minor: posted.unwrap_or(0),
            cases,
        })
    }
}
