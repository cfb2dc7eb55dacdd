//! The recharge (load) flow at an online recharge point: the host side of a PBOC load.
//!
//! 1. The card is opened ([`PurseCard::open`]) and checked for validity on the date.
//! 2. INITIALIZE FOR LOAD; the host keys check the card's MAC1 (a card that cannot produce it is
//!    not one of ours: nothing is loaded).
//! 3. The host keys compute MAC2; the pending record is saved.
//! 4. CREDIT FOR LOAD; the pending record is cleared once the answer (TAC or a refusal) is in.
//! 5. The host keys verify the TAC; a wrong TAC makes the load *suspicious* (the card was loaded).
//!
//! A lost answer to CREDIT FOR LOAD ends in [`TerminalError::AnswerLost`] with the record left
//! pending; [`Recharge::resume`] finishes it exactly once.
//!
//! The same host runs the **unload** of a returned card ([`Recharge::prepare_unload`],
//! [`Recharge::complete`]): INITIALIZE FOR UNLOAD, MAC1 checked, MAC2 computed, DEBIT FOR UNLOAD
//! answering MAC3 ‖ TAC, both verified (type `13`, project-defined: docs/COS.md). A pending
//! unload settles from the card's online serial like a pending load.

use crate::card::{alg_of, PurseCard, DEFAULT_KEY_INDEX};
use crate::error::TerminalError;
use crate::host::{CardKeyRef, HostKeys, LoadContext, OnlineKind, TacInput};
use crate::outcome::{LoadOutcome, RecoveryNote};
use crate::pending::{PendingStore, PendingTransaction, TransactionKind, PENDING_FORMAT};
use crate::recovery::{recover, Recovery};
use crate::time::TransactionTime;
use iccard_link::CardChannel;

/// A load (or unload) checked and authorized by the host, not yet sent to the card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedLoad {
    /// What must be recorded before CREDIT FOR LOAD (DEBIT FOR UNLOAD) leaves.
    pub pending: PendingTransaction,
    /// The host's MAC2.
    pub mac2: [u8; 4],
    /// The balance after the load (unload).
    pub new_balance_fen: u32,
    /// What MAC1 and MAC2 covered (the unload's MAC3 is checked against it).
    pub context: LoadContext,
}

/// A purse balance the card proved with its MAC1 ([`Recharge::proven_balance`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvenBalance {
    /// The balance.
    pub balance_fen: u32,
    /// The online serial the next load or unload uses.
    pub online_serial: u16,
    /// The key version the card announced.
    pub key_version: u8,
    /// The purse's algorithm generation.
    pub alg: iccard_crypto::PurseAlg,
}

/// A recharge point: its terminal id and the host keys.
pub struct Recharge<'h, H: HostKeys + ?Sized> {
    host: &'h H,
    terminal_id: [u8; 6],
    key_index: u8,
}

impl<'h, H: HostKeys + ?Sized> Recharge<'h, H> {
    /// A recharge point with terminal id `terminal_id`, using purse key index 01.
    pub fn new(host: &'h H, terminal_id: [u8; 6]) -> Self {
        Self {
            host,
            terminal_id,
            key_index: DEFAULT_KEY_INDEX,
        }
    }

    /// Uses another purse key index.
    pub fn with_key_index(mut self, key_index: u8) -> Self {
        self.key_index = key_index;
        self
    }

    /// Loads `amount_fen` onto the card: [`Recharge::prepare`], the pending record saved,
    /// [`Recharge::complete`], the record cleared once the answer is in.
    pub fn load<C: CardChannel>(
        &self,
        card: &mut PurseCard<C>,
        amount_fen: u32,
        when: &TransactionTime,
        store: &mut dyn PendingStore,
    ) -> Result<LoadOutcome, TerminalError> {
        let prepared = self.prepare(card, amount_fen, when)?;
        store.save(&prepared.pending)?;
        match self.complete(card, &prepared) {
            Ok(outcome) => {
                store.clear()?;
                Ok(outcome)
            }
            Err(e @ TerminalError::Refused { .. }) => {
                store.clear()?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Steps 1–3 of a load: the card checked for validity, INITIALIZE FOR LOAD, MAC1 checked,
    /// MAC2 computed. Nothing has moved yet; the caller must record `pending` durably before
    /// [`Recharge::complete`].
    pub fn prepare<C: CardChannel>(
        &self,
        card: &mut PurseCard<C>,
        amount_fen: u32,
        when: &TransactionTime,
    ) -> Result<PreparedLoad, TerminalError> {
        self.prepare_online(OnlineKind::Load, card, amount_fen, when)
    }

    /// The card's balance and online serial, proven by the card: INITIALIZE FOR UNLOAD of 0
    /// with its MAC1 checked by the host (a card that is not ours, or a balance not its own,
    /// fails). Nothing moves; the card forgets the unfinished unload at its next command.
    pub fn proven_balance<C: CardChannel>(
        &self,
        card: &mut PurseCard<C>,
    ) -> Result<ProvenBalance, TerminalError> {
        let identity = card.identity().clone();
        let init = card.initialize_unload(self.key_index, 0, &self.terminal_id)?;
        let ctx = LoadContext {
            kind: OnlineKind::Unload,
            card: CardKeyRef {
                diversifier: identity.diversifier(),
                key_index: self.key_index,
                key_version: init.key_version,
                alg: alg_of(init.alg_id)?,
            },
            random: init.random,
            online_serial: init.online_serial,
            balance_before_fen: init.balance_fen,
            amount_fen: 0,
            terminal_id: self.terminal_id,
        };
        if !self.host.load_mac1_ok(&ctx, &init.mac1)? {
            return Err(TerminalError::Mac1Invalid);
        }
        Ok(ProvenBalance {
            balance_fen: init.balance_fen,
            online_serial: init.online_serial,
            key_version: init.key_version,
            alg: ctx.card.alg,
        })
    }

    /// The same steps for an unload (the return of a card): INITIALIZE FOR UNLOAD, MAC1
    /// checked, MAC2 computed. The card's validity date is not checked: an expired card is
    /// returned too.
    pub fn prepare_unload<C: CardChannel>(
        &self,
        card: &mut PurseCard<C>,
        amount_fen: u32,
        when: &TransactionTime,
    ) -> Result<PreparedLoad, TerminalError> {
        self.prepare_online(OnlineKind::Unload, card, amount_fen, when)
    }

    fn prepare_online<C: CardChannel>(
        &self,
        kind: OnlineKind,
        card: &mut PurseCard<C>,
        amount_fen: u32,
        when: &TransactionTime,
    ) -> Result<PreparedLoad, TerminalError> {
        if amount_fen == 0 {
            return Err(TerminalError::Input(format!(
                "the amount to {} must be at least 1 fen",
                match kind {
                    OnlineKind::Load => "load",
                    OnlineKind::Unload => "unload",
                }
            )));
        }
        let identity = card.identity().clone();
        let init = match kind {
            OnlineKind::Load => {
                identity.check_valid_on(when)?;
                card.initialize_load(self.key_index, amount_fen, &self.terminal_id)?
            }
            OnlineKind::Unload => {
                card.initialize_unload(self.key_index, amount_fen, &self.terminal_id)?
            }
        };
        let alg = alg_of(init.alg_id)?;
        let ctx = LoadContext {
            kind,
            card: CardKeyRef {
                diversifier: identity.diversifier(),
                key_index: self.key_index,
                key_version: init.key_version,
                alg,
            },
            random: init.random,
            online_serial: init.online_serial,
            balance_before_fen: init.balance_fen,
            amount_fen,
            terminal_id: self.terminal_id,
        };
        if !self.host.load_mac1_ok(&ctx, &init.mac1)? {
            return Err(TerminalError::Mac1Invalid);
        }
        let new_balance_fen = new_balance(kind, init.balance_fen, amount_fen)?;
        let mac2 = self.host.load_mac2(&ctx, when)?;
        Ok(PreparedLoad {
            pending: PendingTransaction {
                format: PENDING_FORMAT,
                kind: match kind {
                    OnlineKind::Load => TransactionKind::Load,
                    OnlineKind::Unload => TransactionKind::Unload,
                },
                card_number: identity.card_number(),
                application_serial: identity.application_serial,
                serial: init.online_serial,
                amount_fen,
                balance_before_fen: init.balance_fen,
                terminal_id: self.terminal_id,
                terminal_serial: None,
                when: *when,
                key_index: self.key_index,
                key_version: init.key_version,
                alg_id: init.alg_id,
            },
            mac2,
            new_balance_fen,
            context: ctx,
        })
    }

    /// Steps 4–5: CREDIT FOR LOAD (DEBIT FOR UNLOAD) and the TAC (and the unload's MAC3)
    /// verified. An error answer ([`TerminalError::Refused`]) means the card moved no money;
    /// any other failure is [`TerminalError::AnswerLost`]: the outcome is known only from the
    /// card, later ([`Recharge::settle_pending`]).
    pub fn complete<C: CardChannel>(
        &self,
        card: &mut PurseCard<C>,
        prepared: &PreparedLoad,
    ) -> Result<LoadOutcome, TerminalError> {
        let pending = &prepared.pending;
        let (step, answer) = match prepared.context.kind {
            OnlineKind::Load => (
                "CREDIT FOR LOAD",
                card.credit_for_load(&pending.when, &prepared.mac2)
                    .map(|tac| (None, tac)),
            ),
            OnlineKind::Unload => (
                "DEBIT FOR UNLOAD",
                card.debit_for_unload(&pending.when, &prepared.mac2)
                    .map(|(mac3, tac)| (Some(mac3), tac)),
            ),
        };
        let (mac3, tac) = match answer {
            Ok(a) => a,
            // An error answer: the card changed no money (card OS invariant).
            Err(e @ TerminalError::Refused { .. }) => return Err(e),
            Err(e) => {
                return Err(TerminalError::AnswerLost {
                    step,
                    pending: Box::new(pending.clone()),
                    cause: e.to_string(),
                })
            }
        };
        let mut outcome = self.outcome(pending, prepared.new_balance_fen, Some(tac), None)?;
        if let Some(mac3) = mac3 {
            let ok = self.host.unload_mac3_ok(
                &prepared.context,
                prepared.new_balance_fen,
                &pending.when,
                &mac3,
            )?;
            if !ok && outcome.suspicious.is_none() {
                outcome.suspicious = Some(
                    "the card's MAC3 does not verify: the card was unloaded, report this card \
                     to the issuer"
                        .into(),
                );
            }
        }
        Ok(outcome)
    }

    /// What became of a pending load or unload, asked of the card itself: `Some(outcome)` when
    /// the card executed it (with its TAC when the card still holds the proof), `None` when it
    /// never did (and never will: the pending MAC2 is bound to a serial the card has not used).
    pub fn settle_pending<C: CardChannel>(
        &self,
        card: &mut PurseCard<C>,
        pending: &PendingTransaction,
    ) -> Result<Option<LoadOutcome>, TerminalError> {
        let kind = match pending.kind {
            TransactionKind::Load => OnlineKind::Load,
            TransactionKind::Unload => OnlineKind::Unload,
            TransactionKind::Purchase => {
                return Err(TerminalError::Input(format!(
                    "the pending transaction is a {}, not a load or an unload",
                    pending.kind
                )))
            }
        };
        match recover(card, pending)? {
            Recovery::Completed { proof } => {
                let after = new_balance(kind, pending.balance_before_fen, pending.amount_fen)?;
                self.outcome(
                    pending,
                    after,
                    proof.map(|p| p.tac),
                    Some(RecoveryNote::CompletedEarlier),
                )
                .map(Some)
            }
            Recovery::NotDone => Ok(None),
        }
    }

    fn outcome(
        &self,
        p: &PendingTransaction,
        new_balance: u32,
        tac: Option<[u8; 4]>,
        recovery: Option<RecoveryNote>,
    ) -> Result<LoadOutcome, TerminalError> {
        let alg = alg_of(p.alg_id)?;
        let card = CardKeyRef {
            diversifier: crate::io::arr(&p.application_serial, 2),
            key_index: p.key_index,
            key_version: p.key_version,
            alg,
        };
        let input = if p.kind == TransactionKind::Unload {
            TacInput::Unload {
                new_balance_fen: new_balance,
                online_serial: p.serial,
                amount_fen: p.amount_fen,
                terminal_id: p.terminal_id,
                when: p.when,
            }
        } else {
            TacInput::Load {
                new_balance_fen: new_balance,
                online_serial: p.serial,
                amount_fen: p.amount_fen,
                terminal_id: p.terminal_id,
                when: p.when,
            }
        };
        let tac_verified = match tac {
            Some(tac) => Some(self.host.verify_tac(&card, &input, &tac)?),
            None => None,
        };
        let suspicious = (tac_verified == Some(false)).then(|| {
            format!(
                "the card's TAC does not verify: the card's {} happened, report it to the issuer",
                p.kind
            )
        });
        Ok(LoadOutcome {
            card_number: p.card_number.clone(),
            amount_fen: p.amount_fen,
            balance_before_fen: p.balance_before_fen,
            balance_after_fen: new_balance,
            online_serial: p.serial,
            terminal_id: p.terminal_id,
            when: p.when,
            alg: alg.to_string(),
            key_version: p.key_version,
            tac: tac.map(|t| iccard_apdu::hex::encode(&t)),
            tac_verified,
            recovery,
            suspicious,
        })
    }

    /// Finishes a pending load on the same card: reports it if the card executed it, else runs
    /// it again (once, with the pending amount, date and time: the same transaction).
    pub fn resume<C: CardChannel>(
        &self,
        card: &mut PurseCard<C>,
        pending: &PendingTransaction,
        store: &mut dyn PendingStore,
    ) -> Result<LoadOutcome, TerminalError> {
        if pending.kind != TransactionKind::Load {
            return Err(TerminalError::Input(format!(
                "the pending transaction is a {}, not a load: settle it with settle_pending",
                pending.kind
            )));
        }
        match self.settle_pending(card, pending)? {
            Some(outcome) => {
                store.clear()?;
                Ok(outcome)
            }
            None => {
                store.clear()?;
                let mut outcome = self.load(card, pending.amount_fen, &pending.when, store)?;
                outcome.recovery = Some(RecoveryNote::Repeated);
                Ok(outcome)
            }
        }
    }
}

/// The balance after a load or an unload of `amount_fen`.
fn new_balance(kind: OnlineKind, before: u32, amount_fen: u32) -> Result<u32, TerminalError> {
    match kind {
        OnlineKind::Load => before
            .checked_add(amount_fen)
            .ok_or(TerminalError::BalanceOverflow {
                balance_fen: before,
                amount_fen,
            }),
        OnlineKind::Unload => before.checked_sub(amount_fen).ok_or_else(|| {
            TerminalError::Input(format!(
                "cannot unload {amount_fen} fen from a balance of {before} fen"
            ))
        }),
    }
}
