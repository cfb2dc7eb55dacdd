//! Replacement of a lost card: its balance moves to a new card.
//!
//! The holder reported the card lost ([`crate::losslist`]); a new card was issued to them
//! ([`crate::issuance`]). Once the **late-record window** (an office setting, 7 days unless an
//! administrator changes it) has passed since the loss report, purchases the lost card made
//! before terminals blocked it have been uploaded and settled, and its shadow balance is what
//! it really holds. [`Office::replace_card`] then loads that balance onto the new card through
//! the exactly-once load path of [`crate::recharge`], funded by the lost card's share of the
//! float instead of cash: no journal entry (both shares are inside `float`), the lost card's
//! share goes to zero, it becomes `replaced` (and stays on the loss list), and a
//! `card_transfers` row links the two, all in the transaction that posts the load.

use serde::Serialize;

use crate::args;
use crate::error::{OfficeError, Result};
use crate::keystore::Keystore;
use crate::ledger::{self, CardAccount};
use crate::losslist::{self, CardStatus};
use crate::office::Office;
use crate::operators::{Action, Session};
use crate::recharge::{RechargeReceipt, RechargeRequest};
use crate::store::Tx;
use iccard_link::CardChannel;
use iccard_terminal::{PurseCard, TransactionTime};

const WINDOW_SETTING: &str = "late_record_window_days";
const DAY_MS: i64 = 86_400_000;

/// A replacement done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplacementReceipt {
    /// The lost card.
    pub lost_card: String,
    /// The new card.
    pub new_card: String,
    /// The balance moved, minor units.
    pub amount_minor: i64,
    /// The load onto the new card (None when there was nothing to move).
    pub load: Option<RechargeReceipt>,
}

/// Moves `amount` of the lost card's share of the float to `to` (inside the caller's posting):
/// the lost card's shadow balance goes down, it becomes `replaced`, the transfer is recorded.
pub(crate) async fn transfer_out(
    tx: &mut Tx,
    from_card_id: i64,
    to: &CardAccount,
    amount: i64,
    operation_id: i64,
    at_ms: i64,
) -> Result<()> {
    let (serial,): (String,) = tx
        .fetch_one(
            "SELECT application_serial FROM cards WHERE id = $1",
            &args![from_card_id],
        )
        .await?;
    let mut from = ledger::card(tx, &serial).await?;
    from.balance_minor = from
        .balance_minor
        .checked_sub(amount)
        .filter(|b| *b >= 0)
        .ok_or_else(|| OfficeError::ShadowBalanceShort {
            application_serial: from.application_serial.clone(),
            balance_minor: from.balance_minor,
            amount_minor: amount,
        })?;
    ledger::update_card(tx, &from, operation_id, at_ms, "balance transferred").await?;
    losslist::set_status(
        tx,
        &from,
        CardStatus::Replaced,
        Some(to.id),
        operation_id,
        at_ms,
    )
    .await?;
    tx.execute(
        "INSERT INTO card_transfers (operation_id, from_card_id, to_card_id, amount_minor, at_ms) \
         VALUES ($1, $2, $3, $4, $5)",
        &args![operation_id, from_card_id, to.id, amount, at_ms],
    )
    .await?;
    Ok(())
}

async fn window_days(tx: &mut Tx) -> Result<i64> {
    crate::office::setting(tx, WINDOW_SETTING, 7).await
}

impl Office {
    /// The late-record window, days.
    pub async fn late_record_window_days(&self) -> Result<i64> {
        let mut tx = self.store().read().await?;
        let d = window_days(&mut tx).await?;
        tx.rollback().await?;
        Ok(d)
    }

    /// Sets the late-record window (0 to 365 days); administrators only.
    pub async fn set_late_record_window(&self, s: &Session, days: i64) -> Result<()> {
        let subject = format!("setting {WINDOW_SETTING}");
        let (mut tx, at) = self.begin(s, Action::ChangeSettings, &subject).await?;
        let result = async {
            if !(0..=365).contains(&days) {
                return Err(OfficeError::Invalid {
                    what: "late-record window",
                    why: format!("{days} days: give 0 to 365"),
                });
            }
            let before = window_days(&mut tx).await?;
            crate::office::put_setting(&mut tx, WINDOW_SETTING, &days.to_string()).await?;
            Ok(((), format!("{before} -> {days} days")))
        }
        .await;
        self.finish(s, Action::ChangeSettings, &subject, at, tx, result)
            .await
    }

    /// Moves the balance of the lost card `lost_card` onto `new_card` (issued, active, in the
    /// reader at a recharge point), once the late-record window has passed.
    pub async fn replace_card<C: CardChannel>(
        &self,
        s: &Session,
        keys: &dyn Keystore,
        new_card: &mut PurseCard<C>,
        lost_card: &str,
        when: TransactionTime,
    ) -> Result<ReplacementReceipt> {
        let new_serial = iccard_apdu::hex::encode(&new_card.identity().application_serial);
        let subject = format!("card {lost_card} replaced by {new_serial}");
        let (mut tx, at) = self.begin(s, Action::LoadCard, &subject).await?;
        let checked = async {
            let lost = ledger::card(&mut tx, lost_card).await?;
            let status = losslist::status(&mut tx, lost.id).await?;
            if status != CardStatus::Lost {
                return Err(OfficeError::CardStatus {
                    application_serial: lost_card.into(),
                    status: status.as_str(),
                    needed: "lost",
                });
            }
            if new_serial == lost.application_serial {
                return Err(OfficeError::Invalid {
                    what: "replacement card",
                    why: "the lost card cannot replace itself".into(),
                });
            }
            let fresh = ledger::card(&mut tx, &new_serial).await?;
            let fresh_status = losslist::status(&mut tx, fresh.id).await?;
            if fresh_status != CardStatus::Active {
                return Err(OfficeError::CardStatus {
                    application_serial: new_serial.clone(),
                    status: fresh_status.as_str(),
                    needed: "active",
                });
            }
            let (reported,): (Option<i64>,) = tx
                .fetch_one(
                    "SELECT MAX(at_ms) FROM loss_list WHERE card_id = $1 AND action = 'add'",
                    &args![lost.id],
                )
                .await?;
            let reported = reported.ok_or_else(|| {
                OfficeError::Corrupt(format!("lost card {lost_card} has no loss report"))
            })?;
            let days = window_days(&mut tx).await?;
            let until = reported.saturating_add(days.saturating_mul(DAY_MS));
            if at < until {
                return Err(OfficeError::LateRecordWindow {
                    application_serial: lost_card.into(),
                    days,
                    remaining_hours: (until - at + 3_599_999) / 3_600_000,
                });
            }
            let (pending,): (i64,) = tx
                .fetch_one(
                    "SELECT COUNT(*) FROM pending_loads WHERE from_card_id = $1",
                    &args![lost.id],
                )
                .await?;
            if pending > 0 {
                return Err(OfficeError::Invalid {
                    what: "replacement",
                    why: format!(
                        "a transfer from card {lost_card} is pending: present its new card again (`iccard office recharge --settle`)"
                    ),
                });
            }
            Ok((lost, fresh))
        }
        .await;
        let (lost, fresh) = match checked {
            Ok(v) => {
                tx.rollback().await?;
                v
            }
            Err(e) => {
                return self
                    .finish(s, Action::LoadCard, &subject, at, tx, Err(e))
                    .await
            }
        };
        let amount = lost.balance_minor;
        if amount == 0 {
            let (mut tx, at) = self.begin(s, Action::LoadCard, &subject).await?;
            let result = async {
                let op = self
                    .record_operation(&mut tx, s, "replace_card", at, Some(lost.id), Some(0))
                    .await?;
                transfer_out(&mut tx, lost.id, &fresh, 0, op, at).await?;
                Ok(((), "nothing to transfer: the lost card held 0".to_string()))
            }
            .await;
            self.finish(s, Action::LoadCard, &subject, at, tx, result)
                .await?;
            return Ok(ReplacementReceipt {
                lost_card: lost_card.into(),
                new_card: new_serial,
                amount_minor: 0,
                load: None,
            });
        }
        let r = self
            .load_by_transfer(
                s,
                keys,
                new_card,
                RechargeRequest {
                    amount_minor: amount,
                    when,
                },
                lost.id,
            )
            .await?;
        Ok(ReplacementReceipt {
            lost_card: lost_card.into(),
            new_card: new_serial,
            amount_minor: amount,
            load: Some(r.load),
        })
    }
}
