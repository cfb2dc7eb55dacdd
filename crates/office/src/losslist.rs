//! Card status and the loss list.
//!
//! A holder reports a card lost: the card becomes `lost` and is added to the loss list; found
//! again, the report is withdrawn and the card removed. Every change is a new loss-list
//! *version* (monotone, one per change), so a terminal holding version N fetches only the changes
//! after N ([`Office::loss_list_since`]) and ends with the same list as the office. A recharge
//! point refuses a card that is not `active`.
//!
//! Card status: `active`, `lost`, `replaced` (its balance moved to another card; it stays on
//! the loss list), `returned`, `expired`. Every change appends a `card_history` row, in the
//! same transaction as the list entry, the operation record and the audit record.

use serde::Serialize;

use crate::args;
use crate::error::{OfficeError, Result};
use crate::ledger::{self, CardAccount};
use crate::office::Office;
use crate::operators::{Action, Session};
use crate::store::Tx;

/// What the issuer says of a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CardStatus {
    /// In use.
    Active,
    /// Reported lost: on the loss list.
    Lost,
    /// Replaced by another card that received its balance; stays on the loss list.
    Replaced,
    /// Returned and refunded.
    Returned,
    /// Past its validity.
    Expired,
}

impl CardStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CardStatus::Active => "active",
            CardStatus::Lost => "lost",
            CardStatus::Replaced => "replaced",
            CardStatus::Returned => "returned",
            CardStatus::Expired => "expired",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<CardStatus> {
        Ok(match s {
            "active" => CardStatus::Active,
            "lost" => CardStatus::Lost,
            "replaced" => CardStatus::Replaced,
            "returned" => CardStatus::Returned,
            "expired" => CardStatus::Expired,
            other => {
                return Err(OfficeError::Corrupt(format!(
                    "unknown card status {other:?}"
                )))
            }
        })
    }
}

impl std::fmt::Display for CardStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of the loss list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LossListEntry {
    /// The list version this change made.
    pub version: i64,
    /// The card.
    pub application_serial: String,
    /// `add` or `remove`.
    pub action: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at_ms: i64,
}

/// The changes after a version, for a terminal's download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LossListDelta {
    /// The version the terminal holds.
    pub from_version: i64,
    /// The version it holds after applying `changes`.
    pub to_version: i64,
    /// The changes, oldest first.
    pub changes: Vec<LossListEntry>,
}

/// The status of a card, inside a transaction.
pub async fn status(tx: &mut Tx, card_id: i64) -> Result<CardStatus> {
    let row: Option<(String,)> = tx
        .fetch_optional(
            "SELECT status FROM card_status WHERE card_id = $1",
            &args![card_id],
        )
        .await?;
    match row {
        Some((s,)) => CardStatus::parse(&s),
        None => Err(OfficeError::Corrupt(format!(
            "card {card_id} has no status row"
        ))),
    }
}

/// Records a card's first status (`active`) when its account opens.
pub(crate) async fn insert_active(tx: &mut Tx, card_id: i64, at_ms: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO card_status (card_id, status, since_ms) VALUES ($1, 'active', $2)",
        &args![card_id, at_ms],
    )
    .await?;
    Ok(())
}

/// Changes a card's status with its history row (inside the caller's operation).
pub(crate) async fn set_status(
    tx: &mut Tx,
    card: &CardAccount,
    to: CardStatus,
    replaced_by: Option<i64>,
    operation_id: i64,
    at_ms: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE card_status SET status = $1, since_ms = $2, replaced_by_card_id = $3 \
         WHERE card_id = $4",
        &args![to.as_str(), at_ms, replaced_by, card.id],
    )
    .await?;
    ledger::card_history(tx, card, operation_id, at_ms, to.as_str()).await?;
    Ok(())
}

/// Appends a loss-list change; returns its version.
pub(crate) async fn append(
    tx: &mut Tx,
    card: &CardAccount,
    action: &str,
    reason: &str,
    operation_id: i64,
    at_ms: i64,
) -> Result<i64> {
    let version = tx.next_id("loss_list").await?;
    tx.execute(
        "INSERT INTO loss_list (version, card_id, application_serial, action, reason, \
         operation_id, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &args![
            version,
            card.id,
            &card.application_serial,
            action,
            reason,
            operation_id,
            at_ms
        ],
    )
    .await?;
    Ok(version)
}

fn validate_reason(reason: &str) -> Result<()> {
    let n = reason.chars().count();
    if n == 0 || n > 200 || reason.chars().any(char::is_control) {
        return Err(OfficeError::Invalid {
            what: "reason",
            why: "give 1 to 200 characters, no control characters".into(),
        });
    }
    Ok(())
}

type EntryRow = (i64, String, String, String, i64);

fn entry((version, application_serial, action, reason, at_ms): EntryRow) -> LossListEntry {
    LossListEntry {
        version,
        application_serial,
        action,
        reason,
        at_ms,
    }
}

impl Office {
    /// Reports a card lost: `active` → `lost`, added to the loss list (a new version).
    pub async fn report_loss(
        &self,
        s: &Session,
        application_serial: &str,
        reason: &str,
    ) -> Result<LossListEntry> {
        let subject = format!("card {application_serial}");
        let (mut tx, at) = self.begin(s, Action::ReportLoss, &subject).await?;
        let result = async {
            validate_reason(reason)?;
            let card = ledger::card(&mut tx, application_serial).await?;
            let now = status(&mut tx, card.id).await?;
            if now != CardStatus::Active {
                return Err(OfficeError::CardStatus {
                    application_serial: application_serial.into(),
                    status: now.as_str(),
                    needed: "active",
                });
            }
            let op = self
                .record_operation(&mut tx, s, "report_loss", at, Some(card.id), None)
                .await?;
            set_status(&mut tx, &card, CardStatus::Lost, None, op, at).await?;
            let version = append(&mut tx, &card, "add", reason, op, at).await?;
            Ok((
                LossListEntry {
                    version,
                    application_serial: card.application_serial.clone(),
                    action: "add".into(),
                    reason: reason.into(),
                    at_ms: at,
                },
                format!("on the loss list at version {version}: {reason}"),
            ))
        }
        .await;
        self.finish(s, Action::ReportLoss, &subject, at, tx, result)
            .await
    }

    /// Withdraws a loss report (the card was found): `lost` → `active`, removed from the list.
    pub async fn withdraw_loss(
        &self,
        s: &Session,
        application_serial: &str,
        reason: &str,
    ) -> Result<LossListEntry> {
        let subject = format!("card {application_serial}");
        let (mut tx, at) = self.begin(s, Action::WithdrawLoss, &subject).await?;
        let result = async {
            validate_reason(reason)?;
            let card = ledger::card(&mut tx, application_serial).await?;
            let now = status(&mut tx, card.id).await?;
            if now != CardStatus::Lost {
                return Err(OfficeError::CardStatus {
                    application_serial: application_serial.into(),
                    status: now.as_str(),
                    needed: "lost",
                });
            }
            let op = self
                .record_operation(&mut tx, s, "withdraw_loss", at, Some(card.id), None)
                .await?;
            set_status(&mut tx, &card, CardStatus::Active, None, op, at).await?;
            let version = append(&mut tx, &card, "remove", reason, op, at).await?;
            Ok((
                LossListEntry {
                    version,
                    application_serial: card.application_serial.clone(),
                    action: "remove".into(),
                    reason: reason.into(),
                    at_ms: at,
                },
                format!("off the loss list at version {version}: {reason}"),
            ))
        }
        .await;
        self.finish(s, Action::WithdrawLoss, &subject, at, tx, result)
            .await
    }

    /// The loss-list changes after `from_version` (0: the whole history), oldest first.
    pub async fn loss_list_since(&self, from_version: i64) -> Result<LossListDelta> {
        if from_version < 0 {
            return Err(OfficeError::Invalid {
                what: "loss list version",
                why: format!("{from_version}: versions start at 0"),
            });
        }
        let mut tx = self.store().read().await?;
        let rows: Vec<EntryRow> = tx
            .fetch_all(
                "SELECT version, application_serial, action, reason, at_ms FROM loss_list \
                 WHERE version > $1 ORDER BY version",
                &args![from_version],
            )
            .await?;
        let (latest,): (Option<i64>,) = tx
            .fetch_one("SELECT MAX(version) FROM loss_list", &[])
            .await?;
        tx.rollback().await?;
        let latest = latest.unwrap_or(0);
        if from_version > latest {
            return Err(OfficeError::Invalid {
                what: "loss list version",
                why: format!("{from_version} is newer than the office's {latest}"),
            });
        }
        Ok(LossListDelta {
            from_version,
            to_version: latest,
            changes: rows.into_iter().map(entry).collect(),
        })
    }

    /// The cards on the loss list now, by application serial.
    pub async fn loss_list(&self) -> Result<Vec<String>> {
        Ok(apply(&[], &self.loss_list_since(0).await?.changes))
    }

    /// A card's status.
    pub async fn card_status(&self, application_serial: &str) -> Result<CardStatus> {
        let mut tx = self.store().read().await?;
        let card = ledger::card(&mut tx, application_serial).await?;
        let st = status(&mut tx, card.id).await?;
        tx.rollback().await?;
        Ok(st)
    }
}

/// Applies loss-list changes to a list (what a terminal does with a delta): sorted, no
/// duplicates.
pub fn apply(list: &[String], changes: &[LossListEntry]) -> Vec<String> {
    let mut set: std::collections::BTreeSet<String> = list.iter().cloned().collect();
    for c in changes {
        if c.action == "add" {
            set.insert(c.application_serial.clone());
        } else {
            set.remove(&c.application_serial);
        }
    }
    set.into_iter().collect()
}
