//! Recharge at a recharge point, on the card itself: the PBOC load APDUs through
//! `iccard-terminal`, MAC1 checked and MAC2 computed by the issuer's [`Keystore`], the TAC
//! verified by it, and the posting (Dr cash of the recharge point / Cr float) with the card's
//! own record of the load (card number, card type, amount, date and time, operator, machine
//! number, online serial, TAC).
//!
//! ## Exactly once, whatever breaks
//!
//! 1. Checks (one short transaction, then released): the operator's role, a recharge point,
//!    the card issued by this office (issuer number and shadow account), not blocked, the
//!    product's maximum balance.
//! 2. A load left pending by an earlier contact is settled first, from the card's own online
//!    serial: executed → posted now (with the TAC when the card still holds the proof);
//!    never executed → removed, and the cash handed back (audited as `cancelled`).
//! 3. INITIALIZE FOR LOAD; the keystore checks MAC1 (a card that cannot produce it is not
//!    ours: nothing happens) and computes MAC2. The card's online serial must be the one the
//!    shadow account expects.
//! 4. The pending load is committed to the database **before** CREDIT FOR LOAD leaves.
//! 5. CREDIT FOR LOAD. An error answer: the card moved nothing, the pending row goes. A lost
//!    answer: the row stays and the next contact settles it (step 2). The answer with the TAC:
//!    one transaction removes the pending row, writes the load, advances the shadow account
//!    and posts the entry. A crash between CREDIT and that transaction leaves the pending row:
//!    step 2 again. A TAC that does not verify is posted (the card was loaded) and flagged.
//!
//! The same path loads a replacement card from a lost card's share of the float
//! ([`crate::replacement`]): the pending row names the funding card, and the posting moves that
//! share instead of taking cash (no journal entry).
//!
//! The card I/O runs on the calling task (a card answers in milliseconds); no database
//! transaction is open while the card is talked to.

use iccard_apdu::hex as apdu_hex;
use iccard_link::CardChannel;
use iccard_terminal::{
    CardKeyRef, HostKeyError, HostKeys, LoadContext, LoadOutcome, PendingTransaction, PurseCard,
    Recharge, RecoveryNote, TacInput as TerminalTac, TerminalError, TransactionTime,
};
use serde::Serialize;

use crate::args;
use crate::error::{OfficeError, Result};
use crate::keystore::{CardKey, Keystore, LoadRequest, TacInput};
use crate::ledger::{self, CardAccount, LineSpec};
use crate::machines::MachineKind;
use crate::office::Office;
use crate::operators::{Action, Session};

/// The issuer's [`Keystore`] as the terminal library's [`HostKeys`].
pub struct KeystoreHost<'k>(pub &'k dyn Keystore);

fn card_key(c: &CardKeyRef) -> CardKey {
    CardKey {
        diversifier: c.diversifier,
        key_version: c.key_version,
        alg: c.alg,
    }
}

fn unavailable(e: crate::keystore::KeystoreError) -> HostKeyError {
    HostKeyError::Unavailable(e.to_string())
}

fn load_request(ctx: &LoadContext) -> LoadRequest {
    LoadRequest {
        kind: ctx.kind,
        card: card_key(&ctx.card),
        random: ctx.random,
        online_serial: ctx.online_serial,
        balance_before: ctx.balance_before_fen,
        amount: ctx.amount_fen,
        terminal_id: ctx.terminal_id,
    }
}

impl HostKeys for KeystoreHost<'_> {
    fn load_mac1_ok(&self, ctx: &LoadContext, mac1: &[u8; 4]) -> Result<bool, HostKeyError> {
        self.0
            .load_mac1_ok(&load_request(ctx), mac1)
            .map_err(unavailable)
    }

    fn load_mac2(
        &self,
        ctx: &LoadContext,
        when: &TransactionTime,
    ) -> Result<[u8; 4], HostKeyError> {
        self.0
            .load_mac2(&load_request(ctx), &when.bytes())
            .map_err(unavailable)
    }

    fn verify_tac(
        &self,
        card: &CardKeyRef,
        input: &TerminalTac,
        tac: &[u8; 4],
    ) -> Result<bool, HostKeyError> {
        let input = match *input {
            TerminalTac::Load {
                new_balance_fen,
                online_serial,
                amount_fen,
                terminal_id,
                when,
            } => TacInput::Load {
                new_balance: new_balance_fen,
                online_serial,
                amount: amount_fen,
                terminal_id,
                when: when.bytes(),
            },
            TerminalTac::Unload {
                new_balance_fen,
                online_serial,
                amount_fen,
                terminal_id,
                when,
            } => TacInput::Unload {
                new_balance: new_balance_fen,
                online_serial,
                amount: amount_fen,
                terminal_id,
                when: when.bytes(),
            },
            TerminalTac::Purchase {
                amount_fen,
                terminal_id,
                terminal_serial,
                when,
            } => TacInput::Purchase {
                amount: amount_fen,
                terminal_id,
                terminal_serial,
                when: when.bytes(),
            },
        };
        self.0
            .verify_tac(&card_key(card), &input, tac)
            .map_err(unavailable)
    }

    fn unload_mac3_ok(
        &self,
        ctx: &LoadContext,
        new_balance_fen: u32,
        when: &TransactionTime,
        mac3: &[u8; 4],
    ) -> Result<bool, HostKeyError> {
        self.0
            .unload_mac3_ok(&load_request(ctx), new_balance_fen, &when.bytes(), mac3)
            .map_err(unavailable)
    }
}

/// A recharge asked for at the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RechargeRequest {
    /// Amount, minor units, positive.
    pub amount_minor: i64,
    /// Date and time sent to the card.
    pub when: TransactionTime,
}

/// How an earlier, interrupted load ended when the card came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PendingResolution {
    /// The card had executed it: posted now.
    Posted {
        /// The load as posted.
        load: Box<RechargeReceipt>,
    },
    /// The card never executed it: removed; the cash goes back to the customer.
    Cancelled {
        /// The amount to hand back, minor units.
        amount_minor: i64,
        /// The online serial it would have used.
        online_serial: i64,
    },
}

/// A load done on a card and posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RechargeReceipt {
    /// The business record.
    pub operation_id: i64,
    /// The journal entry (None for a load funded by a replaced card: no money enters).
    pub entry_id: Option<i64>,
    /// Card number (20 digits, the application serial).
    pub card_number: String,
    /// Card type: the product code (None for a card issued outside the inventory).
    pub card_type: Option<String>,
    /// Amount, minor units.
    pub amount_minor: i64,
    /// The card's balance before.
    pub balance_before_minor: i64,
    /// The card's balance after.
    pub balance_after_minor: i64,
    /// Online serial the load used.
    pub online_serial: i64,
    /// Date `YYYYMMDD` and time `HHMMSS` sent to the card.
    pub date: String,
    /// Time.
    pub time: String,
    /// The recharge point's terminal id (hex).
    pub terminal_id: String,
    /// The operator.
    pub operator: String,
    /// The machine number.
    pub machine_number: String,
    /// The card's TAC (hex), when known.
    pub tac: Option<String>,
    /// Whether the keystore verified the TAC.
    pub tac_verified: Option<bool>,
    /// Set when finished after an interruption.
    pub recovery: Option<RecoveryNote>,
    /// The shadow account after the load.
    pub card: CardAccount,
}

/// The outcome of [`Office::recharge`]: the load, and any earlier pending load settled first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RechargeResult {
    /// An earlier interrupted load of this card, settled before this one.
    pub earlier: Option<PendingResolution>,
    /// This load.
    pub load: RechargeReceipt,
}

/// A load waiting for its card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingLoad {
    /// The card.
    pub application_serial: String,
    /// The online serial it uses.
    pub online_serial: i64,
    /// Amount, minor units.
    pub amount_minor: i64,
    /// When it started.
    pub started_at_ms: i64,
    /// The operator who started it.
    pub operator: String,
    /// Where.
    pub machine_number: String,
}

/// A recharge point's terminal id: its machine id as 12 BCD digits (unique, stable).
pub fn terminal_id_of(machine_id: i64) -> Result<[u8; 6]> {
    let digits = format!("{machine_id:012}");
    let bytes = iccard_apdu::bcd::encode_digits(&digits, 6).map_err(|e| OfficeError::Invalid {
        what: "machine id",
        why: e.to_string(),
    })?;
    let mut t = [0u8; 6];
    t.copy_from_slice(&bytes);
    Ok(t)
}

/// The issuer number as the card's 8-byte issuer identifier: 16 BCD digits, zero-padded on
/// the left.
pub fn issuer_id_of(issuer_number: &str) -> Result<[u8; 8]> {
    let digits = format!("{issuer_number:0>16}");
    let bytes = iccard_apdu::bcd::encode_digits(&digits, 8).map_err(|e| OfficeError::Invalid {
        what: "issuer number",
        why: e.to_string(),
    })?;
    let mut t = [0u8; 8];
    t.copy_from_slice(&bytes);
    Ok(t)
}

fn card_error(e: TerminalError) -> OfficeError {
    OfficeError::Card(e.to_string())
}

/// Where the money of a load comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Funding {
    /// Cash at the recharge point (Dr cash / Cr float).
    Cash,
    /// The balance of a replaced card (inside the float: no journal entry).
    Transfer {
        /// The replaced card's account id.
        from_card_id: i64,
    },
}

impl Funding {
    fn funding_card(self) -> Option<i64> {
        match self {
            Funding::Cash => None,
            Funding::Transfer { from_card_id } => Some(from_card_id),
        }
    }
}

struct Checked {
    card: CardAccount,
    machine_id: i64,
    card_type: Option<String>,
    max_balance_minor: Option<i64>,
    pending: Option<(PendingTransaction, Funding)>,
}

impl Office {
    /// Loads `req.amount_minor` onto the card at the operator's recharge point, exactly once
    /// (module docs). The card must be open on its purse ([`PurseCard::open`]).
    pub async fn recharge<C: CardChannel>(
        &self,
        s: &Session,
        keys: &dyn Keystore,
        card: &mut PurseCard<C>,
        req: RechargeRequest,
    ) -> Result<RechargeResult> {
        self.load_onto_card(s, keys, card, req, Funding::Cash).await
    }

    /// A load funded by a replaced card's share of the float ([`crate::replacement`]).
    pub(crate) async fn load_by_transfer<C: CardChannel>(
        &self,
        s: &Session,
        keys: &dyn Keystore,
        card: &mut PurseCard<C>,
        req: RechargeRequest,
        from_card_id: i64,
    ) -> Result<RechargeResult> {
        self.load_onto_card(s, keys, card, req, Funding::Transfer { from_card_id })
            .await
    }

    async fn load_onto_card<C: CardChannel>(
        &self,
        s: &Session,
        keys: &dyn Keystore,
        card: &mut PurseCard<C>,
        req: RechargeRequest,
        funding: Funding,
    ) -> Result<RechargeResult> {
        let serial = apdu_hex::encode(&card.identity().application_serial);
        let subject = format!("card {serial}");
        let checked = self
            .recharge_checks(s, card, Some(req.amount_minor), &subject)
            .await?;
        let terminal_id = terminal_id_of(checked.machine_id)?;
        let host = KeystoreHost(keys);
        let rc = Recharge::new(&host, terminal_id);
        let earlier = match &checked.pending {
            Some((p, f)) => Some(self.settle(s, &rc, card, p, *f, &checked).await?),
            None => None,
        };
        // The shadow account may have moved with the settlement.
        let account = ledger_card(self, &serial).await?;
        if let Some(max) = checked.max_balance_minor {
            let after = account
                .proven_balance_minor
                .checked_add(req.amount_minor)
                .ok_or_else(|| OfficeError::AmountOutOfRange("balance after the load".into()))?;
            if after > max {
                return self
                    .refuse(
                        s,
                        Action::LoadCard,
                        &subject,
                        OfficeError::AboveMaximumBalance {
                            application_serial: serial.clone(),
                            after_minor: after,
                            max_minor: max,
                        },
                    )
                    .await;
            }
        }
        let amount = u32::try_from(req.amount_minor).map_err(|_| {
            OfficeError::AmountOutOfRange(format!(
                "load amount {} does not fit the card's 4-byte amount",
                req.amount_minor
            ))
        })?;
        let prepared = match rc.prepare(card, amount, &req.when) {
            Ok(p) => p,
            Err(e) => {
                return self
                    .refuse(s, Action::LoadCard, &subject, card_error(e))
                    .await
            }
        };
        let online_serial = i64::from(prepared.pending.serial);
        if online_serial != account.online_serial {
            return self
                .refuse(
                    s,
                    Action::LoadCard,
                    &subject,
                    OfficeError::OnlineSerialMismatch {
                        application_serial: serial,
                        card: online_serial,
                        expected: account.online_serial,
                    },
                )
                .await;
        }
        self.save_pending(s, account.id, &prepared.pending, req.amount_minor, funding)
            .await?;
        match rc.complete(card, &prepared) {
            Ok(outcome) => {
                let load = self
                    .post_card_load(
                        s,
                        &subject,
                        &account,
                        &outcome,
                        checked.card_type.as_deref(),
                        funding,
                    )
                    .await?;
                Ok(RechargeResult { earlier, load })
            }
            Err(e @ TerminalError::Refused { .. }) => {
                // The card moved no money: the pending row goes, the refusal is audited.
                let mut tx = self.store().write().await?;
                tx.execute(
                    "DELETE FROM pending_loads WHERE card_id = $1",
                    &args![account.id],
                )
                .await?;
                tx.commit().await?;
                self.refuse(s, Action::LoadCard, &subject, card_error(e))
                    .await
            }
            Err(e) => {
                let err = OfficeError::LoadAnswerLost {
                    application_serial: serial.clone(),
                    cause: e.to_string(),
                };
                self.refuse(s, Action::LoadCard, &subject, err).await
            }
        }
    }

    /// Settles a pending load of this card, if there is one, without loading anything new
    /// (the card presented again after a lost answer).
    pub async fn settle_pending_load<C: CardChannel>(
        &self,
        s: &Session,
        keys: &dyn Keystore,
        card: &mut PurseCard<C>,
    ) -> Result<Option<PendingResolution>> {
        let serial = apdu_hex::encode(&card.identity().application_serial);
        let subject = format!("card {serial}");
        let checked = self.recharge_checks(s, card, None, &subject).await?;
        let terminal_id = terminal_id_of(checked.machine_id)?;
        let host = KeystoreHost(keys);
        let rc = Recharge::new(&host, terminal_id);
        match &checked.pending {
            Some((p, f)) => Ok(Some(self.settle(s, &rc, card, p, *f, &checked).await?)),
            None => Ok(None),
        }
    }

    /// Every load waiting for its card.
    pub async fn pending_loads(&self) -> Result<Vec<PendingLoad>> {
        let mut tx = self.store().read().await?;
        let rows: Vec<(String, i64, i64, i64, String, String)> = tx
            .fetch_all(
                "SELECT c.application_serial, p.online_serial, p.amount_minor, p.started_at_ms, \
                 o.login, m.machine_number FROM pending_loads p \
                 JOIN cards c ON c.id = p.card_id JOIN operators o ON o.id = p.operator_id \
                 JOIN machines m ON m.id = p.machine_id ORDER BY p.started_at_ms, c.application_serial",
                &[],
            )
            .await?;
        tx.rollback().await?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    application_serial,
                    online_serial,
                    amount_minor,
                    started_at_ms,
                    operator,
                    machine_number,
                )| {
                    PendingLoad {
                        application_serial,
                        online_serial,
                        amount_minor,
                        started_at_ms,
                        operator,
                        machine_number,
                    }
                },
            )
            .collect())
    }

    async fn recharge_checks<C: CardChannel>(
        &self,
        s: &Session,
        card: &PurseCard<C>,
        amount_minor: Option<i64>,
        subject: &str,
    ) -> Result<Checked> {
        let identity = card.identity().clone();
        let serial = apdu_hex::encode(&identity.application_serial);
        let (mut tx, at) = self.begin(s, Action::LoadCard, subject).await?;
        let result: Result<Checked> = async {
            if let Some(a) = amount_minor {
                if a <= 0 {
                    return Err(OfficeError::AmountOutOfRange(format!(
                        "load amount is {a}: it must be positive"
                    )));
                }
            }
            let rp = self
                .require_machine(&mut tx, s, MachineKind::RechargePoint)
                .await?;
            if amount_minor.is_some() {
                // A new load takes cash into the clerk's drawer.
                crate::shifts::require_open_shift(&mut tx, s).await?;
            }
            let settings = crate::office::read_settings(&mut tx)
                .await?
                .ok_or(OfficeError::NotInitialized)?;
            let ours = issuer_id_of(&settings.issuer_number)?;
            if identity.issuer_id != ours {
                return Err(OfficeError::ForeignCard {
                    application_serial: serial.clone(),
                    issuer_id: apdu_hex::encode(&identity.issuer_id),
                });
            }
            let card = ledger::card(&mut tx, &serial).await?;
            let status = crate::losslist::status(&mut tx, card.id).await?;
            // A pending load is settled whatever the status (the money may be on the card).
            if amount_minor.is_some() && status != crate::losslist::CardStatus::Active {
                return Err(OfficeError::CardStatus {
                    application_serial: serial.clone(),
                    status: status.as_str(),
                    needed: "active",
                });
            }
            let product: Option<(String, i64)> = tx
                .fetch_optional(
                    "SELECT p.code, v.max_balance_minor FROM inventory_cards i \
                     JOIN products p ON p.id = i.product_id \
                     JOIN product_versions v ON v.product_id = i.product_id AND v.version = i.product_version \
                     WHERE i.application_serial = $1 AND i.state = 'issued'",
                    &args![&serial],
                )
                .await?;
            let pending: Option<(String, Option<i64>)> = tx
                .fetch_optional(
                    "SELECT record, from_card_id FROM pending_loads WHERE card_id = $1",
                    &args![card.id],
                )
                .await?;
            let pending = match pending {
                Some((record, from)) => Some((
                    serde_json::from_str::<PendingTransaction>(&record).map_err(|e| {
                        OfficeError::Corrupt(format!("pending load of card {serial}: {e}"))
                    })?,
                    match from {
                        None => Funding::Cash,
                        Some(from_card_id) => Funding::Transfer { from_card_id },
                    },
                )),
                None => None,
            };
            Ok(Checked {
                card,
                machine_id: rp.id,
                card_type: product.as_ref().map(|(c, _)| c.clone()),
                max_balance_minor: product.map(|(_, m)| m),
                pending,
            })
        }
        .await;
        match result {
            Ok(c) => {
                // Nothing written: release the write lock before talking to the card.
                tx.rollback().await?;
                let _ = at;
                Ok(c)
            }
            Err(e) => {
                self.finish(s, Action::LoadCard, subject, at, tx, Err(e))
                    .await
            }
        }
    }

    async fn save_pending(
        &self,
        s: &Session,
        card_id: i64,
        p: &PendingTransaction,
        amount_minor: i64,
        funding: Funding,
    ) -> Result<()> {
        let record = serde_json::to_string(p)
            .map_err(|e| OfficeError::Corrupt(format!("pending load: {e}")))?;
        let at = self.now_ms();
        let mut tx = self.store().write().await?;
        tx.execute(
            "INSERT INTO pending_loads (card_id, online_serial, amount_minor, record, operator_id, \
             machine_id, started_at_ms, from_card_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &args![
                card_id,
                i64::from(p.serial),
                amount_minor,
                &record,
                s.operator_id,
                s.machine_id,
                at,
                funding.funding_card()
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn settle<C: CardChannel, H: HostKeys + ?Sized>(
        &self,
        s: &Session,
        rc: &Recharge<'_, H>,
        card: &mut PurseCard<C>,
        pending: &PendingTransaction,
        funding: Funding,
        checked: &Checked,
    ) -> Result<PendingResolution> {
        let serial = apdu_hex::encode(&pending.application_serial);
        let subject = format!("card {serial}");
        match rc.settle_pending(card, pending).map_err(card_error)? {
            Some(outcome) => {
                let load = self
                    .post_card_load(
                        s,
                        &subject,
                        &checked.card,
                        &outcome,
                        checked.card_type.as_deref(),
                        funding,
                    )
                    .await?;
                Ok(PendingResolution::Posted {
                    load: Box::new(load),
                })
            }
            None => {
                let (mut tx, at) = self.begin(s, Action::LoadCard, &subject).await?;
                let amount = i64::from(pending.amount_fen);
                let result = async {
                    let n = tx
                        .execute(
                            "DELETE FROM pending_loads WHERE card_id = $1 AND online_serial = $2",
                            &args![checked.card.id, i64::from(pending.serial)],
                        )
                        .await?;
                    if n != 1 {
                        return Err(OfficeError::Corrupt(format!(
                            "pending load of card {serial} vanished while it was settled"
                        )));
                    }
                    Ok((
                        PendingResolution::Cancelled {
                            amount_minor: amount,
                            online_serial: i64::from(pending.serial),
                        },
                        format!(
                            "cancelled: the card never executed the load of {amount} at online serial {}; hand the cash back",
                            pending.serial
                        ),
                    ))
                }
                .await;
                self.finish(s, Action::LoadCard, &subject, at, tx, result)
                    .await
            }
        }
    }

    /// Posts a load the card executed: removes its pending row, writes the load with the
    /// card's record, advances the shadow account, Dr cash / Cr float; one transaction.
    async fn post_card_load(
        &self,
        s: &Session,
        subject: &str,
        before: &CardAccount,
        outcome: &LoadOutcome,
        card_type: Option<&str>,
        funding: Funding,
    ) -> Result<RechargeReceipt> {
        let (mut tx, at) = self.begin(s, Action::LoadCard, subject).await?;
        let result = async {
            let rp = self
                .require_machine(&mut tx, s, MachineKind::RechargePoint)
                .await?;
            let mut card = ledger::card(&mut tx, &before.application_serial).await?;
            let online_serial = i64::from(outcome.online_serial);
            let removed = tx
                .execute(
                    "DELETE FROM pending_loads WHERE card_id = $1 AND online_serial = $2",
                    &args![card.id, online_serial],
                )
                .await?;
            if removed != 1 {
                return Err(OfficeError::Corrupt(format!(
                    "no pending load of card {} at online serial {online_serial}: refusing to post a load twice",
                    card.application_serial
                )));
            }
            if online_serial != card.online_serial {
                return Err(OfficeError::OnlineSerialMismatch {
                    application_serial: card.application_serial.clone(),
                    card: online_serial,
                    expected: card.online_serial,
                });
            }
            let amount = i64::from(outcome.amount_fen);
            let balance_before = i64::from(outcome.balance_before_fen);
            let balance_after = i64::from(outcome.balance_after_fen);
            card.balance_minor = card
                .balance_minor
                .checked_add(amount)
                .ok_or_else(|| OfficeError::AmountOutOfRange("shadow balance".into()))?;
            card.online_serial = online_serial
                .checked_add(1)
                .ok_or_else(|| OfficeError::AmountOutOfRange("online serial".into()))?;
            card.proven_balance_minor = balance_after;
            card.proven_at_ms = at;
            let op = self
                .record_operation(&mut tx, s, "load_card", at, Some(card.id), Some(amount))
                .await?;
            let recovery = outcome.recovery.map(|r| match r {
                RecoveryNote::CompletedEarlier => "completed_earlier",
                RecoveryNote::Repeated => "repeated",
            });
            let tac_verified = outcome.tac_verified.map(i64::from);
            let terminal_id = apdu_hex::encode(&outcome.terminal_id);
            let date = outcome.when.date_string();
            let time = outcome.when.time_string();
            tx.execute(
                "INSERT INTO card_loads (operation_id, card_id, amount_minor, \
                 card_balance_before_minor, online_serial, terminal_id, tx_date, tx_time, \
                 card_type, balance_after_minor, tac, tac_verified, recovery) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                &args![
                    op,
                    card.id,
                    amount,
                    balance_before,
                    online_serial,
                    &terminal_id,
                    &date,
                    &time,
                    card_type.map(str::to_owned),
                    balance_after,
                    outcome.tac.clone(),
                    tac_verified,
                    recovery.map(str::to_owned)
                ],
            )
            .await?;
            let change = match (outcome.suspicious.is_some(), funding) {
                (true, _) => "loaded (TAC not verified)",
                (false, Funding::Cash) => "loaded",
                (false, Funding::Transfer { .. }) => "loaded (balance transferred in)",
            };
            ledger::update_card(&mut tx, &card, op, at, change).await?;
            let entry_id = match funding {
                Funding::Cash => {
                    ledger::post_entry(
                        &mut tx,
                        op,
                        at,
                        "card load",
                        &[
                            LineSpec::debit(ledger::cash_account_code(&rp.machine_number), amount),
                            LineSpec::credit(ledger::FLOAT, amount),
                        ],
                    )
                    .await
                    .map(Some)?
                }
                Funding::Transfer { from_card_id } => {
                    // Inside the float: the replaced card's share moves to this card.
                    crate::replacement::transfer_out(&mut tx, from_card_id, &card, amount, op, at)
                        .await?;
                    None
                }
            };
            let receipt = RechargeReceipt {
                operation_id: op,
                entry_id,
                card_number: card.application_serial.clone(),
                card_type: card_type.map(str::to_owned),
                amount_minor: amount,
                balance_before_minor: balance_before,
                balance_after_minor: balance_after,
                online_serial,
                date,
                time,
                terminal_id,
                operator: s.login.clone(),
                machine_number: rp.machine_number.clone(),
                tac: outcome.tac.clone(),
                tac_verified: outcome.tac_verified,
                recovery: outcome.recovery,
                card: card.clone(),
            };
            let detail = format!(
                "amount {amount}, online serial {online_serial}, card balance {balance_after}, TAC {}{}{}",
                outcome.tac.as_deref().unwrap_or("unknown"),
                match outcome.tac_verified {
                    Some(true) => " verified",
                    Some(false) => " NOT VERIFIED",
                    None => "",
                },
                recovery.map(|r| format!(", {r}")).unwrap_or_default()
            );
            Ok((receipt, detail))
        }
        .await;
        self.finish(s, Action::LoadCard, subject, at, tx, result)
            .await
    }
}

async fn ledger_card(office: &Office, serial: &str) -> Result<CardAccount> {
    office.card(serial).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_and_issuer_ids_are_bcd() {
        assert_eq!(terminal_id_of(7).unwrap(), [0, 0, 0, 0, 0, 7]);
        assert_eq!(terminal_id_of(123456).unwrap(), [0, 0, 0, 0x12, 0x34, 0x56]);
        assert_eq!(
            issuer_id_of("31000001").unwrap(),
            [0, 0, 0, 0, 0x31, 0, 0, 1]
        );
        assert!(terminal_id_of(-1).is_err());
    }
}
