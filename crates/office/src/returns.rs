//! The return of a card: a holder hands the card back at a recharge point and gets the money
//! it stands for; the card leaves circulation (terminated and destroyed, or erased and sent to
//! refurbishment, then back to stock).
//!
//! ## The quote, from rules, before anything moves
//!
//! [`Office::return_quote`] reads the card and applies the rules, line by line:
//! 1. **card balance**: the purse's balance *proven by the card* (INITIALIZE FOR UNLOAD of 0,
//!    its MAC1 checked by the keystore: a forged or foreign card fails) is refunded. It may be
//!    below the shadow balance: purchases made offline and not uploaded yet; they stay on the
//!    shadow account and settle later. A card balance above the shadow balance is refused
//!    (money the office never sold: open a case).
//! 2. **deposit**: the deposit held for the card is refunded when the card comes back
//!    undamaged ([`Condition::Good`]) and forfeited (to fee income) when it is damaged.
//! 3. **return fee**: the office setting `return_fee_minor` (default 0), never more than lines
//!    1 and 2 together.
//!
//! The operator shows the quote; [`Office::return_card`] recomputes it and goes on only if the
//! refund is the one the holder accepted ([`OfficeError::QuoteChanged`] otherwise).
//!
//! ## Exactly once, whatever breaks
//!
//! 1. Checks and the quote (no transaction open while the card is talked to).
//! 2. INITIALIZE FOR UNLOAD of the whole card balance; the keystore checks MAC1, computes MAC2.
//! 3. The return is journaled (`card_returns`, state `unloading`, with the terminal's pending
//!    record) **before** DEBIT FOR UNLOAD leaves.
//! 4. DEBIT FOR UNLOAD; MAC3 and TAC verified. One transaction then posts it: Dr float (card
//!    balance) + Dr deposits held (deposit) / Cr cash of the recharge point (refund) + Cr card
//!    fee income (fee and forfeited deposit); the shadow account is unloaded and its deposit
//!    cleared; the card's status becomes `returned`, its inventory state `returned`; the
//!    journal row `unloaded`.
//! 5. On the card: APPLICATION BLOCK of the purse for good; then TERMINATE CARD USAGE
//!    ([`Disposition::Destroy`]: inventory `destroyed`) or ERASE DF at the MF
//!    ([`Disposition::Refurbish`]: inventory `refurbished`, back to stock after re-coding and a
//!    passing functional test, [`Office::refurbished_to_stock`]). The journal row `finished`.
//!
//! ## Expiry
//!
//! Every card issued by the office has the last day of its validity on record (the date
//! written on the card). [`Office::expire_cards`] marks the active cards past it `expired`
//! (audited, one operation): recharge points refuse them (the card refuses a load past its
//! date too), and their holders still get their money back through a return. The report
//! names each card with the balance and deposit still owed.
//!
//! A lost answer to DEBIT FOR UNLOAD leaves the row `unloading`
//! ([`OfficeError::ReturnAnswerLost`]); [`Office::resume_return`] asks the card (its online
//! serial): executed → posted (step 4); never executed → the row goes, nothing was paid. A
//! crash after step 4 leaves `unloaded`: resuming runs step 5. A card with a balance of 0 skips
//! the unload (the proven balance suffices) and is posted at once.

use iccard_apdu::hex as apdu_hex;
use iccard_issuer::functional::FunctionalReport;
use iccard_issuer::recycle;
use iccard_issuer::script::Admin;
use iccard_link::CardChannel;
use iccard_terminal::{
    LoadOutcome, PendingTransaction, PurseCard, Recharge, RecoveryNote, TerminalError,
    TransactionTime,
};
use serde::Serialize;

use crate::args;
use crate::error::{OfficeError, Result};
use crate::issuance::KeystoreIssuerKeys;
use crate::keystore::Keystore;
use crate::ledger::{self, CardAccount, LineSpec};
use crate::losslist::{self, CardStatus};
use crate::machines::MachineKind;
use crate::manufacture::{self, InventoryChange, InventoryState};
use crate::office::Office;
use crate::operators::{Action, Session};
use crate::recharge::{issuer_id_of, terminal_id_of, KeystoreHost};
use crate::store::Tx;

const FEE_SETTING: &str = "return_fee_minor";

/// The state the card comes back in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Undamaged: the deposit is refunded.
    Good,
    /// Damaged (bent, scratched, printing gone): the deposit is forfeited.
    Damaged,
}

impl Condition {
    fn as_str(self) -> &'static str {
        match self {
            Condition::Good => "good",
            Condition::Damaged => "damaged",
        }
    }

    fn parse(s: &str) -> Result<Condition> {
        match s {
            "good" => Ok(Condition::Good),
            "damaged" => Ok(Condition::Damaged),
            other => Err(OfficeError::Corrupt(format!("return condition {other:?}"))),
        }
    }
}

/// What becomes of the card once its purse is unloaded and blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Erased (every application and key) and sent to refurbishment, then back to stock.
    Refurbish,
    /// Terminated for good (TERMINATE CARD USAGE) and destroyed.
    Destroy,
}

impl Disposition {
    fn as_str(self) -> &'static str {
        match self {
            Disposition::Refurbish => "refurbish",
            Disposition::Destroy => "destroy",
        }
    }

    fn parse(s: &str) -> Result<Disposition> {
        match s {
            "refurbish" => Ok(Disposition::Refurbish),
            "destroy" => Ok(Disposition::Destroy),
            other => Err(OfficeError::Corrupt(format!(
                "return disposition {other:?}"
            ))),
        }
    }
}

/// One line of a quote: which rule, and its amount (positive: paid to the holder; negative:
/// kept by the issuer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuoteLine {
    /// The rule.
    pub rule: String,
    /// Signed amount, minor units.
    pub amount_minor: i64,
}

/// The refund a return would pay, line by line, before anything moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReturnQuote {
    /// Card number (application serial).
    pub card_number: String,
    /// The card's product code, when it came from the inventory.
    pub card_type: Option<String>,
    /// Chip serial, when the card came from the inventory.
    pub chip_serial: Option<String>,
    /// The card's status now.
    pub status: &'static str,
    /// The balance the card proved (MAC1 checked), minor units.
    pub card_balance_minor: i64,
    /// The shadow balance.
    pub shadow_balance_minor: i64,
    /// Shadow − card: offline purchases not uploaded yet (they settle later).
    pub unsettled_minor: i64,
    /// The card's online serial.
    pub online_serial: i64,
    /// Deposit held for the card.
    pub deposit_held_minor: i64,
    /// Deposit refunded.
    pub deposit_refund_minor: i64,
    /// Deposit forfeited (damaged card).
    pub deposit_forfeit_minor: i64,
    /// Return fee charged (capped at what would be refunded).
    pub fee_minor: i64,
    /// Paid to the holder in cash.
    pub refund_minor: i64,
    /// The condition the quote assumed.
    pub condition: Condition,
    /// The rules applied, in order.
    pub lines: Vec<QuoteLine>,
}

/// A return asked for at the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnRequest {
    /// The card's condition.
    pub condition: Condition,
    /// What becomes of the card.
    pub disposition: Disposition,
    /// The refund the holder was quoted and accepted.
    pub accepted_refund_minor: i64,
    /// Date and time sent to the card.
    pub when: TransactionTime,
}

/// A return done, or as far as it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReturnReceipt {
    /// The return's journal id.
    pub return_id: i64,
    /// Card number.
    pub card_number: String,
    /// Chip serial (inventory cards).
    pub chip_serial: Option<String>,
    /// Unloaded from the card, minor units.
    pub unloaded_minor: i64,
    /// Deposit refunded.
    pub deposit_refund_minor: i64,
    /// Deposit forfeited.
    pub deposit_forfeit_minor: i64,
    /// Fee kept.
    pub fee_minor: i64,
    /// Cash paid to the holder.
    pub refund_minor: i64,
    /// The online serial the unload used (none for a card with nothing to unload).
    pub online_serial: Option<i64>,
    /// The card's TAC of the unload (hex).
    pub tac: Option<String>,
    /// Whether the keystore verified TAC (and MAC3).
    pub tac_verified: Option<bool>,
    /// Set when the unload was finished after an interruption.
    pub recovery: Option<RecoveryNote>,
    /// The posting's business operation.
    pub operation_id: i64,
    /// The journal entry.
    pub entry_id: i64,
    /// What became of the card.
    pub disposition: Disposition,
    /// The card's inventory state at the end (inventory cards).
    pub inventory_state: Option<&'static str>,
    /// The operator.
    pub operator: String,
    /// The recharge point.
    pub machine_number: String,
}

/// How [`Office::resume_return`] ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReturnResumed {
    /// The return is complete.
    Finished {
        /// The return.
        receipt: Box<ReturnReceipt>,
    },
    /// The card never executed the unload: the return is cancelled and nothing was paid.
    Cancelled {
        /// The journal id of the cancelled return.
        return_id: i64,
        /// The unload that never happened.
        amount_minor: i64,
    },
}

/// A return that has not finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenReturn {
    /// Journal id.
    pub return_id: i64,
    /// Card number.
    pub card_number: String,
    /// `unloading` (the card decides) or `unloaded` (paid; the card is still to be blocked).
    pub state: String,
    /// The refund.
    pub refund_minor: i64,
    /// Started.
    pub started_at_ms: i64,
    /// The operator who started it.
    pub operator: String,
    /// Where.
    pub machine_number: String,
}

fn card_error(e: TerminalError) -> OfficeError {
    OfficeError::Card(e.to_string())
}

fn script_error(e: iccard_issuer::script::ScriptError) -> OfficeError {
    OfficeError::Card(e.to_string())
}

/// The journal row of a return.
struct Job {
    id: i64,
    card_id: i64,
    state: String,
    condition: Condition,
    disposition: Disposition,
    chip_serial: Option<String>,
    card_balance_minor: i64,
    deposit_refund_minor: i64,
    deposit_forfeit_minor: i64,
    fee_minor: i64,
    refund_minor: i64,
    online_serial: i64,
    record: Option<String>,
    posted_operation_id: Option<i64>,
}

type JobRow = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<String>,
    Option<i64>,
);

const SELECT_JOB: &str = "SELECT id, card_id, state, condition, disposition, chip_serial, \
     card_balance_minor, deposit_refund_minor, deposit_forfeit_minor, fee_minor, refund_minor, \
     online_serial, record, posted_operation_id FROM card_returns";

fn job_from(r: JobRow) -> Result<Job> {
    Ok(Job {
        id: r.0,
        card_id: r.1,
        state: r.2,
        condition: Condition::parse(&r.3)?,
        disposition: Disposition::parse(&r.4)?,
        chip_serial: r.5,
        card_balance_minor: r.6,
        deposit_refund_minor: r.7,
        deposit_forfeit_minor: r.8,
        fee_minor: r.9,
        refund_minor: r.10,
        online_serial: r.11,
        record: r.12,
        posted_operation_id: r.13,
    })
}

async fn open_job(tx: &mut Tx, card_id: i64) -> Result<Option<Job>> {
    let row: Option<JobRow> = tx
        .fetch_optional(
            &format!("{SELECT_JOB} WHERE card_id = $1 AND state <> 'finished'"),
            &args![card_id],
        )
        .await?;
    row.map(job_from).transpose()
}

async fn fee_setting(tx: &mut Tx) -> Result<i64> {
    crate::office::setting(tx, FEE_SETTING, 0).await
}

/// Applies the rules (module docs) to what the card proved and the office holds.
fn quote_lines(
    card_balance: i64,
    deposit_held: i64,
    condition: Condition,
    fee_setting: i64,
) -> Result<(i64, i64, i64, i64, Vec<QuoteLine>)> {
    let overflow = || OfficeError::AmountOutOfRange("refund".into());
    let mut lines = vec![QuoteLine {
        rule: "card balance (proven by the card), refunded".into(),
        amount_minor: card_balance,
    }];
    let (deposit_refund, deposit_forfeit) = match condition {
        Condition::Good => (deposit_held, 0),
        Condition::Damaged => (0, deposit_held),
    };
    if deposit_held > 0 {
        lines.push(QuoteLine {
            rule: match condition {
                Condition::Good => "deposit, refunded: the card is returned undamaged".into(),
                Condition::Damaged => "deposit, forfeited: the card is damaged".into(),
            },
            amount_minor: deposit_refund,
        });
    }
    let gross = card_balance
        .checked_add(deposit_refund)
        .ok_or_else(overflow)?;
    let fee = fee_setting.min(gross);
    if fee_setting > 0 {
        lines.push(QuoteLine {
            rule: if fee < fee_setting {
                format!("return fee {fee_setting}, capped at the refund")
            } else {
                "return fee".into()
            },
            amount_minor: fee.checked_neg().ok_or_else(overflow)?,
        });
    }
    let refund = gross.checked_sub(fee).ok_or_else(overflow)?;
    Ok((deposit_refund, deposit_forfeit, fee, refund, lines))
}

/// What the checks found before the card is touched.
struct Checked {
    card: CardAccount,
    status: CardStatus,
    machine_id: i64,
    card_type: Option<String>,
    chip_serial: Option<String>,
    fee_setting: i64,
    open: Option<Job>,
}

impl Office {
    /// The return fee setting, minor units.
    pub async fn return_fee_minor(&self) -> Result<i64> {
        let mut tx = self.store().read().await?;
        let f = fee_setting(&mut tx).await?;
        tx.rollback().await?;
        Ok(f)
    }

    /// Sets the return fee (0 to 1,000,000 minor units); administrators only.
    pub async fn set_return_fee(&self, s: &Session, fee_minor: i64) -> Result<()> {
        let subject = format!("setting {FEE_SETTING}");
        let (mut tx, at) = self.begin(s, Action::ChangeSettings, &subject).await?;
        let result = async {
            if !(0..=1_000_000).contains(&fee_minor) {
                return Err(OfficeError::Invalid {
                    what: "return fee",
                    why: format!("{fee_minor}: give 0 to 1000000 minor units"),
                });
            }
            let before = fee_setting(&mut tx).await?;
            crate::office::put_setting(&mut tx, FEE_SETTING, &fee_minor.to_string()).await?;
            Ok(((), format!("{before} -> {fee_minor}")))
        }
        .await;
        self.finish(s, Action::ChangeSettings, &subject, at, tx, result)
            .await
    }

    async fn return_checks<C: CardChannel>(
        &self,
        s: &Session,
        card: &PurseCard<C>,
        subject: &str,
    ) -> Result<Checked> {
        let identity = card.identity().clone();
        let serial = apdu_hex::encode(&identity.application_serial);
        let (mut tx, at) = self.begin(s, Action::ReturnCard, subject).await?;
        let result: Result<Checked> = async {
            let rp = self
                .require_machine(&mut tx, s, MachineKind::RechargePoint)
                .await?;
            // A refund leaves the clerk's drawer.
            crate::shifts::require_open_shift(&mut tx, s).await?;
            let settings = crate::office::read_settings(&mut tx)
                .await?
                .ok_or(OfficeError::NotInitialized)?;
            if identity.issuer_id != issuer_id_of(&settings.issuer_number)? {
                return Err(OfficeError::ForeignCard {
                    application_serial: serial.clone(),
                    issuer_id: apdu_hex::encode(&identity.issuer_id),
                });
            }
            let account = ledger::card(&mut tx, &serial).await?;
            let status = losslist::status(&mut tx, account.id).await?;
            let open = open_job(&mut tx, account.id).await?;
            let pending: Option<(i64,)> = tx
                .fetch_optional(
                    "SELECT online_serial FROM pending_loads WHERE card_id = $1",
                    &args![account.id],
                )
                .await?;
            if pending.is_some() {
                return Err(OfficeError::CardStatus {
                    application_serial: serial.clone(),
                    status: "waiting for a pending load to settle",
                    needed: "without a pending load (`iccard office recharge --settle` first)",
                });
            }
            let product: Option<(String, String)> = tx
                .fetch_optional(
                    "SELECT p.code, i.chip_serial FROM inventory_cards i \
                     JOIN products p ON p.id = i.product_id \
                     WHERE i.application_serial = $1 AND i.state IN ('issued', 'returned')",
                    &args![&serial],
                )
                .await?;
            Ok(Checked {
                card: account,
                status,
                machine_id: rp.id,
                card_type: product.as_ref().map(|(c, _)| c.clone()),
                chip_serial: product.map(|(_, c)| c),
                fee_setting: fee_setting(&mut tx).await?,
                open,
            })
        }
        .await;
        match result {
            Ok(c) => {
                tx.rollback().await?;
                Ok(c)
            }
            Err(e) => {
                self.finish(s, Action::ReturnCard, subject, at, tx, Err(e))
                    .await
            }
        }
    }

    fn quote_from(
        checked: &Checked,
        card_balance: u32,
        online_serial: u16,
        condition: Condition,
    ) -> Result<ReturnQuote> {
        let serial = checked.card.application_serial.clone();
        match checked.status {
            CardStatus::Active | CardStatus::Expired => {}
            other => return Err(OfficeError::CardStatus {
                application_serial: serial,
                status: other.as_str(),
                needed:
                    "active or expired (a lost card found again: withdraw the loss report first)",
            }),
        }
        if let Some(job) = &checked.open {
            return Err(OfficeError::CardStatus {
                application_serial: serial,
                status: if job.state == "unloading" {
                    "in an interrupted return (unloading)"
                } else {
                    "in an interrupted return (refunded, not yet blocked)"
                },
                needed: "without an open return (`iccard office return --resume`)",
            });
        }
        let online = i64::from(online_serial);
        if online != checked.card.online_serial {
            return Err(OfficeError::OnlineSerialMismatch {
                application_serial: serial,
                card: online,
                expected: checked.card.online_serial,
            });
        }
        let card_balance = i64::from(card_balance);
        let shadow = checked.card.balance_minor;
        if card_balance > shadow {
            return Err(OfficeError::ShadowBalanceShort {
                application_serial: serial,
                balance_minor: shadow,
                amount_minor: card_balance,
            });
        }
        let (deposit_refund, deposit_forfeit, fee, refund, lines) = quote_lines(
            card_balance,
            checked.card.deposit_minor,
            condition,
            checked.fee_setting,
        )?;
        Ok(ReturnQuote {
            card_number: serial,
            card_type: checked.card_type.clone(),
            chip_serial: checked.chip_serial.clone(),
            status: checked.status.as_str(),
            card_balance_minor: card_balance,
            shadow_balance_minor: shadow,
            unsettled_minor: shadow - card_balance,
            online_serial: online,
            deposit_held_minor: checked.card.deposit_minor,
            deposit_refund_minor: deposit_refund,
            deposit_forfeit_minor: deposit_forfeit,
            fee_minor: fee,
            refund_minor: refund,
            condition,
            lines,
        })
    }

    /// The refund a return of this card would pay (module docs): read from the card, rules
    /// applied, nothing moved. Refusals are audited.
    pub async fn return_quote<C: CardChannel>(
        &self,
        s: &Session,
        keys: &dyn Keystore,
        card: &mut PurseCard<C>,
        condition: Condition,
    ) -> Result<ReturnQuote> {
        let serial = apdu_hex::encode(&card.identity().application_serial);
        let subject = format!("card {serial}");
        let checked = self.return_checks(s, card, &subject).await?;
        let (quote, _) = self
            .quote_on_card(s, keys, card, &checked, condition, &subject)
            .await?;
        Ok(quote)
    }

    async fn quote_on_card<C: CardChannel>(
        &self,
        s: &Session,
        keys: &dyn Keystore,
        card: &mut PurseCard<C>,
        checked: &Checked,
        condition: Condition,
        subject: &str,
    ) -> Result<(ReturnQuote, [u8; 6])> {
        let terminal_id = terminal_id_of(checked.machine_id)?;
        let host = KeystoreHost(keys);
        let proven = Recharge::new(&host, terminal_id).proven_balance(card);
        let quote = proven
            .map_err(card_error)
            .and_then(|p| Self::quote_from(checked, p.balance_fen, p.online_serial, condition));
        match quote {
            Ok(q) => Ok((q, terminal_id)),
            Err(e) => self.refuse(s, Action::ReturnCard, subject, e).await,
        }
    }

    /// Takes the card back (module docs): the quote recomputed and matched against the one
    /// the holder accepted, the purse unloaded on the card, the refund posted, the purse
    /// blocked, the card terminated or erased.
    pub async fn return_card<C: CardChannel>(
        &self,
        s: &Session,
        keys: &dyn Keystore,
        card: &mut PurseCard<C>,
        req: ReturnRequest,
    ) -> Result<ReturnReceipt> {
        let serial = apdu_hex::encode(&card.identity().application_serial);
        let subject = format!("card {serial}");
        let checked = self.return_checks(s, card, &subject).await?;
        let (quote, terminal_id) = self
            .quote_on_card(s, keys, card, &checked, req.condition, &subject)
            .await?;
        if quote.refund_minor != req.accepted_refund_minor {
            return self
                .refuse(
                    s,
                    Action::ReturnCard,
                    &subject,
                    OfficeError::QuoteChanged {
                        quoted_minor: req.accepted_refund_minor,
                        now_minor: quote.refund_minor,
                    },
                )
                .await;
        }
        let host = KeystoreHost(keys);
        let rc = Recharge::new(&host, terminal_id);
        if quote.card_balance_minor == 0 {
            let job = self
                .journal_return(s, &checked, &quote, req.disposition, None)
                .await?;
            self.post_return(s, &subject, &job, None).await?;
            return self.finish_on_card(s, keys, card, job.id).await;
        }
        let amount = u32::try_from(quote.card_balance_minor)
            .map_err(|_| OfficeError::AmountOutOfRange("unload amount".into()))?;
        let prepared = match rc.prepare_unload(card, amount, &req.when) {
            Ok(p) => p,
            Err(e) => {
                return self
                    .refuse(s, Action::ReturnCard, &subject, card_error(e))
                    .await
            }
        };
        let job = self
            .journal_return(
                s,
                &checked,
                &quote,
                req.disposition,
                Some(&prepared.pending),
            )
            .await?;
        match rc.complete(card, &prepared) {
            Ok(outcome) => {
                self.post_return(s, &subject, &job, Some(&outcome)).await?;
                self.finish_on_card(s, keys, card, job.id).await
            }
            Err(e @ TerminalError::Refused { .. }) => {
                let mut tx = self.store().write().await?;
                tx.execute(
                    "DELETE FROM card_returns WHERE id = $1 AND state = 'unloading'",
                    &args![job.id],
                )
                .await?;
                tx.commit().await?;
                self.refuse(s, Action::ReturnCard, &subject, card_error(e))
                    .await
            }
            Err(e) => {
                let err = OfficeError::ReturnAnswerLost {
                    application_serial: serial,
                    cause: e.to_string(),
                };
                self.refuse(s, Action::ReturnCard, &subject, err).await
            }
        }
    }

    /// Finishes an interrupted return of this card from where it stopped (module docs).
    pub async fn resume_return<C: CardChannel>(
        &self,
        s: &Session,
        keys: &dyn Keystore,
        card: &mut PurseCard<C>,
    ) -> Result<ReturnResumed> {
        let serial = apdu_hex::encode(&card.identity().application_serial);
        let subject = format!("card {serial}");
        let checked = self.return_checks(s, card, &subject).await?;
        let Some(job) = checked.open else {
            return self
                .refuse(
                    s,
                    Action::ReturnCard,
                    &subject,
                    OfficeError::NotFound {
                        what: "open return of card",
                        key: serial,
                    },
                )
                .await;
        };
        if job.state == "unloading" {
            let record = job.record.as_deref().ok_or_else(|| {
                OfficeError::Corrupt(format!("return {} is unloading without a record", job.id))
            })?;
            let pending: PendingTransaction = serde_json::from_str(record)
                .map_err(|e| OfficeError::Corrupt(format!("return {}: {e}", job.id)))?;
            let terminal_id = pending.terminal_id;
            let host = KeystoreHost(keys);
            let rc = Recharge::new(&host, terminal_id);
            let settled = match rc.settle_pending(card, &pending) {
                Ok(s) => s,
                Err(e) => {
                    return self
                        .refuse(s, Action::ReturnCard, &subject, card_error(e))
                        .await
                }
            };
            match settled {
                Some(outcome) => {
                    self.post_return(s, &subject, &job, Some(&outcome)).await?;
                }
                None => {
                    let (mut tx, at) = self.begin(s, Action::ReturnCard, &subject).await?;
                    let result = async {
                        let n = tx
                            .execute(
                                "DELETE FROM card_returns WHERE id = $1 AND state = 'unloading'",
                                &args![job.id],
                            )
                            .await?;
                        if n != 1 {
                            return Err(OfficeError::Corrupt(format!(
                                "return {} vanished while it was resumed",
                                job.id
                            )));
                        }
                        Ok((
                            ReturnResumed::Cancelled {
                                return_id: job.id,
                                amount_minor: job.card_balance_minor,
                            },
                            format!(
                                "return {} cancelled: the card never executed the unload of {} at online serial {}; nothing was paid",
                                job.id, job.card_balance_minor, job.online_serial
                            ),
                        ))
                    }
                    .await;
                    return self
                        .finish(s, Action::ReturnCard, &subject, at, tx, result)
                        .await;
                }
            }
        }
        let receipt = self.finish_on_card(s, keys, card, job.id).await?;
        Ok(ReturnResumed::Finished {
            receipt: Box::new(receipt),
        })
    }

    /// Journals the return before the card is debited.
    async fn journal_return(
        &self,
        s: &Session,
        checked: &Checked,
        quote: &ReturnQuote,
        disposition: Disposition,
        pending: Option<&PendingTransaction>,
    ) -> Result<Job> {
        let record = pending
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| OfficeError::Corrupt(format!("pending unload: {e}")))?;
        let at = self.now_ms();
        let mut tx = self.store().write().await?;
        let id = tx.next_id("card_return").await?;
        tx.execute(
            "INSERT INTO card_returns (id, card_id, state, condition, disposition, chip_serial, \
             card_balance_minor, deposit_refund_minor, deposit_forfeit_minor, fee_minor, \
             refund_minor, online_serial, record, operator_id, machine_id, started_at_ms) \
             VALUES ($1, $2, 'unloading', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            &args![
                id,
                checked.card.id,
                quote.condition.as_str(),
                disposition.as_str(),
                quote.chip_serial.clone(),
                quote.card_balance_minor,
                quote.deposit_refund_minor,
                quote.deposit_forfeit_minor,
                quote.fee_minor,
                quote.refund_minor,
                quote.online_serial,
                record,
                s.operator_id,
                s.machine_id,
                at
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Job {
            id,
            card_id: checked.card.id,
            state: "unloading".into(),
            condition: quote.condition,
            disposition,
            chip_serial: quote.chip_serial.clone(),
            card_balance_minor: quote.card_balance_minor,
            deposit_refund_minor: quote.deposit_refund_minor,
            deposit_forfeit_minor: quote.deposit_forfeit_minor,
            fee_minor: quote.fee_minor,
            refund_minor: quote.refund_minor,
            online_serial: quote.online_serial,
            record: None,
            posted_operation_id: None,
        })
    }

    /// Posts the unload and the refund (step 4), once.
    async fn post_return(
        &self,
        s: &Session,
        subject: &str,
        job: &Job,
        outcome: Option<&LoadOutcome>,
    ) -> Result<()> {
        let (mut tx, at) = self.begin(s, Action::ReturnCard, subject).await?;
        let result = async {
            let rp = self
                .require_machine(&mut tx, s, MachineKind::RechargePoint)
                .await?;
            let state: Option<(String,)> = tx
                .fetch_optional(
                    "SELECT state FROM card_returns WHERE id = $1",
                    &args![job.id],
                )
                .await?;
            if state.as_ref().map(|(s,)| s.as_str()) != Some("unloading") {
                return Err(OfficeError::Corrupt(format!(
                    "return {} is not unloading: refusing to post it twice",
                    job.id
                )));
            }
            let (application_serial,): (String,) = tx
                .fetch_one(
                    "SELECT application_serial FROM cards WHERE id = $1",
                    &args![job.card_id],
                )
                .await?;
            let mut card = ledger::card(&mut tx, &application_serial).await?;
            let unloaded = match outcome {
                Some(o) => {
                    let online = i64::from(o.online_serial);
                    if online != card.online_serial || i64::from(o.amount_fen) != job.card_balance_minor
                    {
                        return Err(OfficeError::OnlineSerialMismatch {
                            application_serial: card.application_serial.clone(),
                            card: online,
                            expected: card.online_serial,
                        });
                    }
                    card.online_serial = online
                        .checked_add(1)
                        .ok_or_else(|| OfficeError::AmountOutOfRange("online serial".into()))?;
                    job.card_balance_minor
                }
                None => 0,
            };
            card.balance_minor = card
                .balance_minor
                .checked_sub(unloaded)
                .filter(|b| *b >= 0)
                .ok_or_else(|| OfficeError::ShadowBalanceShort {
                    application_serial: card.application_serial.clone(),
                    balance_minor: card.balance_minor,
                    amount_minor: unloaded,
                })?;
            card.proven_balance_minor = 0;
            card.proven_at_ms = at;
            let deposit = job
                .deposit_refund_minor
                .checked_add(job.deposit_forfeit_minor)
                .ok_or_else(|| OfficeError::AmountOutOfRange("deposit".into()))?;
            if deposit != card.deposit_minor {
                return Err(OfficeError::Corrupt(format!(
                    "return {}: quoted a deposit of {deposit}, the card holds {}",
                    job.id, card.deposit_minor
                )));
            }
            let op = self
                .record_operation(
                    &mut tx,
                    s,
                    "return_card",
                    at,
                    Some(card.id),
                    Some(job.refund_minor),
                )
                .await?;
            tx.execute(
                "UPDATE cards SET deposit_minor = 0 WHERE id = $1",
                &args![card.id],
            )
            .await?;
            card.deposit_minor = 0;
            ledger::update_card(&mut tx, &card, op, at, "returned (unloaded, deposit settled)")
                .await?;
            losslist::set_status(&mut tx, &card, CardStatus::Returned, None, op, at).await?;
            if let Some(chip) = &job.chip_serial {
                manufacture::change_state(
                    &mut tx,
                    chip,
                    &InventoryChange {
                        to: InventoryState::Returned,
                        holder: None,
                        application_serial: None,
                        product_version: None,
                        reason: format!("returned by its holder ({})", job.condition.as_str()),
                    },
                    s,
                    op,
                    at,
                )
                .await?;
            }
            let mut lines = Vec::new();
            if unloaded > 0 {
                lines.push(LineSpec::debit(ledger::FLOAT, unloaded));
            }
            if deposit > 0 {
                lines.push(LineSpec::debit(ledger::DEPOSITS_HELD, deposit));
            }
            if job.refund_minor > 0 {
                lines.push(LineSpec::credit(
                    ledger::cash_account_code(&rp.machine_number),
                    job.refund_minor,
                ));
            }
            let kept = job
                .fee_minor
                .checked_add(job.deposit_forfeit_minor)
                .ok_or_else(|| OfficeError::AmountOutOfRange("fee".into()))?;
            if kept > 0 {
                lines.push(LineSpec::credit(ledger::CARD_FEE_INCOME, kept));
            }
            let entry = if lines.is_empty() {
                None
            } else {
                Some(ledger::post_entry(&mut tx, op, at, "card return", &lines).await?)
            };
            tx.execute(
                "UPDATE card_returns SET state = 'unloaded', posted_operation_id = $1, tac = $2, \
                 tac_verified = $3, recovery = $4 WHERE id = $5",
                &args![
                    op,
                    outcome.and_then(|o| o.tac.clone()),
                    outcome.and_then(|o| o.tac_verified.map(|_| i64::from(unload_verified(o)))),
                    outcome.and_then(|o| o.recovery).map(|r| match r {
                        RecoveryNote::CompletedEarlier => "completed_earlier".to_owned(),
                        RecoveryNote::Repeated => "repeated".to_owned(),
                    }),
                    job.id
                ],
            )
            .await?;
            let detail = format!(
                "return {}: unloaded {unloaded}{}, deposit refunded {} forfeited {}, fee {}, refund {} in cash{}",
                job.id,
                outcome
                    .map(|o| format!(
                        " (online serial {}, TAC {}{})",
                        o.online_serial,
                        o.tac.as_deref().unwrap_or("unknown"),
                        if unload_verified(o) { " verified" } else { " NOT VERIFIED" }
                    ))
                    .unwrap_or_default(),
                job.deposit_refund_minor,
                job.deposit_forfeit_minor,
                job.fee_minor,
                job.refund_minor,
                entry.map(|e| format!(", entry {e}")).unwrap_or_default()
            );
            Ok(((), detail))
        }
        .await;
        self.finish(s, Action::ReturnCard, subject, at, tx, result)
            .await
    }

    /// Step 5: the purse blocked for good, the card terminated or erased, the journal row
    /// finished and the inventory moved.
    async fn finish_on_card<C: CardChannel>(
        &self,
        s: &Session,
        keys: &dyn Keystore,
        card: &mut PurseCard<C>,
        return_id: i64,
    ) -> Result<ReturnReceipt> {
        let serial = apdu_hex::encode(&card.identity().application_serial);
        let subject = format!("card {serial}");
        let mut tx = self.store().read().await?;
        let row: Option<JobRow> = tx
            .fetch_optional(&format!("{SELECT_JOB} WHERE id = $1"), &args![return_id])
            .await?;
        tx.rollback().await?;
        let job = row
            .map(job_from)
            .transpose()?
            .ok_or_else(|| OfficeError::Corrupt(format!("return {return_id} vanished")))?;
        // The purse's generation: the card announces it with every online transaction.
        let host = KeystoreHost(keys);
        let alg = match Recharge::new(&host, [0; 6]).proven_balance(card) {
            Ok(p) => p.alg,
            Err(e) => {
                return self
                    .refuse(s, Action::ReturnCard, &subject, card_error(e))
                    .await
            }
        };
        let issuer_keys = KeystoreIssuerKeys(keys);
        let on_card = {
            let mut admin = Admin::new(card.channel());
            recycle::block_purse(&mut admin, &serial, alg, &issuer_keys)
                .and_then(|()| match job.disposition {
                    Disposition::Destroy => {
                        recycle::terminate_card(&mut admin, &serial, &issuer_keys)
                    }
                    Disposition::Refurbish => {
                        recycle::erase_card(&mut admin, &serial, &issuer_keys)
                    }
                })
                .map_err(script_error)
        };
        if let Err(e) = on_card {
            // Paid and posted; the card is still to be blocked: the return stays open.
            return self.refuse(s, Action::ReturnCard, &subject, e).await;
        }
        let (mut tx, at) = self.begin(s, Action::ReturnCard, &subject).await?;
        let result = async {
            let rp = self
                .require_machine(&mut tx, s, MachineKind::RechargePoint)
                .await?;
            let n = tx
                .execute(
                    "UPDATE card_returns SET state = 'finished', finished_at_ms = $1 \
                     WHERE id = $2 AND state = 'unloaded'",
                    &args![at, job.id],
                )
                .await?;
            if n != 1 {
                return Err(OfficeError::Corrupt(format!(
                    "return {} is not waiting for its card",
                    job.id
                )));
            }
            let op = job
                .posted_operation_id
                .ok_or_else(|| OfficeError::Corrupt(format!("return {} has no posting", job.id)))?;
            let mut inventory_state = None;
            if let Some(chip) = &job.chip_serial {
                let to = match job.disposition {
                    Disposition::Destroy => InventoryState::Destroyed,
                    Disposition::Refurbish => InventoryState::Refurbished,
                };
                manufacture::change_state(
                    &mut tx,
                    chip,
                    &InventoryChange {
                        to,
                        holder: None,
                        application_serial: None,
                        product_version: None,
                        reason: match job.disposition {
                            Disposition::Destroy => {
                                "returned card terminated on the card (TERMINATE CARD USAGE)".into()
                            }
                            Disposition::Refurbish => {
                                "returned card erased (ERASE DF at the MF); to be coded again"
                                    .into()
                            }
                        },
                    },
                    s,
                    op,
                    at,
                )
                .await?;
                inventory_state = Some(to.as_str());
            }
            let posted: (Option<String>, Option<i64>, Option<String>) = tx
                .fetch_one(
                    "SELECT tac, tac_verified, recovery FROM card_returns WHERE id = $1",
                    &args![job.id],
                )
                .await?;
            let entry: Option<(i64,)> = tx
                .fetch_optional(
                    "SELECT id FROM journal_entries WHERE operation_id = $1",
                    &args![op],
                )
                .await?;
            let receipt = ReturnReceipt {
                return_id: job.id,
                card_number: serial.clone(),
                chip_serial: job.chip_serial.clone(),
                unloaded_minor: job.card_balance_minor,
                deposit_refund_minor: job.deposit_refund_minor,
                deposit_forfeit_minor: job.deposit_forfeit_minor,
                fee_minor: job.fee_minor,
                refund_minor: job.refund_minor,
                online_serial: (job.card_balance_minor > 0).then_some(job.online_serial),
                tac: posted.0,
                tac_verified: posted.1.map(|v| v == 1),
                recovery: match posted.2.as_deref() {
                    Some("completed_earlier") => Some(RecoveryNote::CompletedEarlier),
                    Some("repeated") => Some(RecoveryNote::Repeated),
                    _ => None,
                },
                operation_id: op,
                entry_id: entry.map(|(e,)| e).unwrap_or(0),
                disposition: job.disposition,
                inventory_state,
                operator: s.login.clone(),
                machine_number: rp.machine_number.clone(),
            };
            let detail = format!(
                "return {} finished: purse blocked for good, card {}",
                job.id,
                match job.disposition {
                    Disposition::Destroy => "terminated (destroyed)",
                    Disposition::Refurbish => "erased (to refurbishment)",
                }
            );
            Ok((receipt, detail))
        }
        .await;
        self.finish(s, Action::ReturnCard, &subject, at, tx, result)
            .await
    }

    /// Every return that has not finished.
    pub async fn open_returns(&self) -> Result<Vec<OpenReturn>> {
        let mut tx = self.store().read().await?;
        let rows: Vec<(i64, String, String, i64, i64, String, String)> = tx
            .fetch_all(
                "SELECT r.id, c.application_serial, r.state, r.refund_minor, r.started_at_ms, \
                 o.login, m.machine_number FROM card_returns r \
                 JOIN cards c ON c.id = r.card_id JOIN operators o ON o.id = r.operator_id \
                 JOIN machines m ON m.id = r.machine_id WHERE r.state <> 'finished' ORDER BY r.id",
                &[],
            )
            .await?;
        tx.rollback().await?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    return_id,
                    card_number,
                    state,
                    refund_minor,
                    started_at_ms,
                    operator,
                    machine_number,
                )| {
                    OpenReturn {
                        return_id,
                        card_number,
                        state,
                        refund_minor,
                        started_at_ms,
                        operator,
                        machine_number,
                    }
                },
            )
            .collect())
    }

    /// A refurbished card (erased at its return) coded again and tested: back to stock when
    /// the functional test passed, destroyed (with the failed step) when it did not. Run at
    /// an office console, like the production stages.
    pub async fn refurbished_to_stock(
        &self,
        s: &Session,
        chip_serial: &str,
        report: &FunctionalReport,
    ) -> Result<manufacture::InventoryCard> {
        let subject = format!("chip {chip_serial}");
        let (mut tx, at) = self
            .begin(s, Action::RecordProductionStage, &subject)
            .await?;
        let result = async {
            self.require_machine(&mut tx, s, MachineKind::OfficeConsole)
                .await?;
            let serial = manufacture::parse_chip_serial(chip_serial)?;
            let normalized = manufacture::format_chip_serial(serial);
            if report.chip_serial.map(u64::from_be_bytes) != Some(serial) {
                return Err(OfficeError::Invalid {
                    what: "functional test report",
                    why: format!("it is not of chip {normalized}"),
                });
            }
            let card = manufacture::inventory_card(&mut tx, &normalized).await?;
            if card.state != InventoryState::Refurbished {
                return Err(OfficeError::InventoryTransition {
                    chip_serial: normalized,
                    from: card.state.as_str(),
                    to: InventoryState::InStock.as_str(),
                    allowed: "only a refurbished card goes back to stock this way".into(),
                });
            }
            let op = self
                .record_operation(&mut tx, s, "refurbish_card", at, None, None)
                .await?;
            let (to, reason) = match report.failure() {
                None => (
                    InventoryState::InStock,
                    "coded again after its return; functional test passed".to_owned(),
                ),
                Some(why) => (
                    InventoryState::Destroyed,
                    format!("coded again after its return; functional test failed: {why}"),
                ),
            };
            let moved = manufacture::change_state(
                &mut tx,
                &normalized,
                &InventoryChange {
                    to,
                    holder: None,
                    application_serial: None,
                    product_version: None,
                    reason: reason.clone(),
                },
                s,
                op,
                at,
            )
            .await?;
            Ok((moved, reason))
        }
        .await;
        self.finish(s, Action::RecordProductionStage, &subject, at, tx, result)
            .await
    }
}

/// A card marked expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiredCard {
    /// Card number.
    pub card_number: String,
    /// Last day of validity, YYYYMMDD.
    pub valid_until: String,
    /// Shadow balance still owed to the holder.
    pub balance_minor: i64,
    /// Deposit still held.
    pub deposit_minor: i64,
}

/// What [`Office::expire_cards`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiryReport {
    /// The day the run was for, YYYYMMDD.
    pub date: String,
    /// The cards marked expired by this run.
    pub expired: Vec<ExpiredCard>,
    /// Their balances together.
    pub balance_minor: i64,
    /// Their deposits together.
    pub deposit_minor: i64,
}

fn valid_day(date: &str) -> Result<()> {
    let ok = date.len() == 8
        && date.bytes().all(|b| b.is_ascii_digit())
        && (1..=12).contains(&date[4..6].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&date[6..8].parse::<u32>().unwrap_or(0));
    if ok {
        Ok(())
    } else {
        Err(OfficeError::Invalid {
            what: "date",
            why: format!("{date:?}: give YYYYMMDD"),
        })
    }
}

impl Office {
    /// Marks every active card whose validity ended before `date` (YYYYMMDD) as expired;
    /// administrators. Running it again for the same day finds nothing new.
    pub async fn expire_cards(&self, s: &Session, date: &str) -> Result<ExpiryReport> {
        let subject = format!("expiry {date}");
        let (mut tx, at) = self.begin(s, Action::ExpireCards, &subject).await?;
        let result = async {
            valid_day(date)?;
            let rows: Vec<(String, String)> = tx
                .fetch_all(
                    "SELECT c.application_serial, c.valid_until FROM cards c \
                     JOIN card_status st ON st.card_id = c.id \
                     WHERE st.status = 'active' AND c.valid_until IS NOT NULL \
                     AND c.valid_until < $1 ORDER BY c.application_serial",
                    &args![date],
                )
                .await?;
            let op = self
                .record_operation(&mut tx, s, "expire_cards", at, None, None)
                .await?;
            let mut expired = Vec::with_capacity(rows.len());
            let (mut balance, mut deposit) = (0i64, 0i64);
            for (serial, valid_until) in rows {
                let card = ledger::card(&mut tx, &serial).await?;
                losslist::set_status(&mut tx, &card, CardStatus::Expired, None, op, at).await?;
                balance = balance
                    .checked_add(card.balance_minor)
                    .ok_or_else(|| OfficeError::AmountOutOfRange("balances".into()))?;
                deposit = deposit
                    .checked_add(card.deposit_minor)
                    .ok_or_else(|| OfficeError::AmountOutOfRange("deposits".into()))?;
                expired.push(ExpiredCard {
                    card_number: serial,
                    valid_until,
                    balance_minor: card.balance_minor,
                    deposit_minor: card.deposit_minor,
                });
            }
            let detail = format!(
                "{} card(s) expired before {date}; still owed: balances {balance}, deposits {deposit}",
                expired.len()
            );
            Ok((
                ExpiryReport {
                    date: date.to_owned(),
                    expired,
                    balance_minor: balance,
                    deposit_minor: deposit,
                },
                detail,
            ))
        }
        .await;
        self.finish(s, Action::ExpireCards, &subject, at, tx, result)
            .await
    }

    /// Every expired card not yet returned, with what is still owed on it.
    pub async fn expired_cards(&self) -> Result<Vec<ExpiredCard>> {
        let mut tx = self.store().read().await?;
        let rows: Vec<(String, Option<String>, i64, i64)> = tx
            .fetch_all(
                "SELECT c.application_serial, c.valid_until, c.balance_minor, c.deposit_minor \
                 FROM cards c JOIN card_status st ON st.card_id = c.id \
                 WHERE st.status = 'expired' ORDER BY c.application_serial",
                &[],
            )
            .await?;
        tx.rollback().await?;
        Ok(rows
            .into_iter()
            .map(
                |(card_number, valid_until, balance_minor, deposit_minor)| ExpiredCard {
                    card_number,
                    valid_until: valid_until.unwrap_or_default(),
                    balance_minor,
                    deposit_minor,
                },
            )
            .collect())
    }
}

/// Whether the keystore verified both the unload's TAC and its MAC3 (a MAC3 that fails makes
/// the outcome suspicious).
fn unload_verified(o: &LoadOutcome) -> bool {
    o.tac_verified == Some(true) && o.suspicious.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_refund_balance_and_deposit_less_a_capped_fee() {
        let (refund_dep, forfeit, fee, refund, lines) =
            quote_lines(1_000, 2_000, Condition::Good, 500).unwrap();
        assert_eq!((refund_dep, forfeit, fee, refund), (2_000, 0, 500, 2_500));
        assert_eq!(lines.iter().map(|l| l.amount_minor).sum::<i64>(), refund);

        let (refund_dep, forfeit, fee, refund, _) =
            quote_lines(100, 2_000, Condition::Damaged, 500).unwrap();
        assert_eq!((refund_dep, forfeit, fee, refund), (0, 2_000, 100, 0));

        let (_, _, fee, refund, lines) = quote_lines(0, 0, Condition::Good, 0).unwrap();
        assert_eq!((fee, refund, lines.len()), (0, 0, 1));
    }
}
