//! The offline purchase flow: card and PSAM, no host keys (the PSAM holds the purchase keys).
//!
//! 1. The card is opened and checked for validity on the date; the PSAM gave its terminal id.
//! 2. INITIALIZE FOR PURCHASE (card): balance, offline serial, key version, algorithm, random.
//! 3. MAC1 generation (PSAM): the PSAM allocates and commits the terminal transaction serial and
//!    answers it with MAC1. The pending record is saved.
//! 4. DEBIT FOR PURCHASE (card): TAC ‖ MAC2. The pending record is cleared once the answer (or a
//!    refusal) is in.
//! 5. MAC2 verification (PSAM). A MAC2 the PSAM rejects makes the purchase *suspicious*: the card
//!    was debited, so the record is kept and reported, never dropped.
//!
//! A lost answer to DEBIT FOR PURCHASE ends in [`TerminalError::AnswerLost`] with the record left
//! pending; [`Purchase::resume`] finishes it exactly once.

use crate::card::{alg_of, tx_type, PurseCard, DEFAULT_KEY_INDEX};
use crate::error::TerminalError;
use crate::outcome::{PurchaseOutcome, RecoveryNote};
use crate::pending::{PendingStore, PendingTransaction, TransactionKind, PENDING_FORMAT};
use crate::psam::{Mac1Request, Psam};
use crate::recovery::{recover, Recovery};
use crate::time::TransactionTime;
use iccard_apdu::hex;
use iccard_link::CardChannel;

/// A point of sale: its PSAM.
pub struct Purchase<'p, P: CardChannel> {
    psam: &'p mut Psam<P>,
    key_index: u8,
    issuer_factor: Option<[u8; 8]>,
}

impl<'p, P: CardChannel> Purchase<'p, P> {
    /// A point of sale with this PSAM, using purse key index 01 and one diversification level.
    pub fn new(psam: &'p mut Psam<P>) -> Self {
        Self {
            psam,
            key_index: DEFAULT_KEY_INDEX,
            issuer_factor: None,
        }
    }

    /// Uses another purse key index.
    pub fn with_key_index(mut self, key_index: u8) -> Self {
        self.key_index = key_index;
        self
    }

    /// Two-level diversification in the PSAM: the issuer factor applied before the card's.
    pub fn with_issuer_factor(mut self, factor: Option<[u8; 8]>) -> Self {
        self.issuer_factor = factor;
        self
    }

    /// Debits `amount_fen` from the card.
    pub fn pay<C: CardChannel>(
        &mut self,
        card: &mut PurseCard<C>,
        amount_fen: u32,
        when: &TransactionTime,
        store: &mut dyn PendingStore,
    ) -> Result<PurchaseOutcome, TerminalError> {
        if amount_fen == 0 {
            return Err(TerminalError::Input(
                "the amount to pay must be at least 1 fen".into(),
            ));
        }
        let identity = card.identity().clone();
        identity.check_valid_on(when)?;
        let terminal_id = self.psam.terminal_id();
        let init = card.initialize_purchase(self.key_index, amount_fen, &terminal_id)?;
        let alg = alg_of(init.alg_id)?;
        let balance_after =
            init.balance_fen
                .checked_sub(amount_fen)
                .ok_or_else(|| TerminalError::BadData {
                    device: crate::error::Device::Card,
                    what: format!(
                        "accepted a purchase of {amount_fen} fen with a balance of {} fen",
                        init.balance_fen
                    ),
                })?;
        let (terminal_serial, mac1) = self.psam.mac1(&Mac1Request {
            random: init.random,
            offline_serial: init.offline_serial,
            amount_fen,
            tx_type: tx_type::EP_PURCHASE,
            when: *when,
            key_version: init.key_version,
            alg_id: init.alg_id,
            card_factor: identity.diversifier(),
            issuer_factor: self.issuer_factor,
        })?;
        let pending = PendingTransaction {
            format: PENDING_FORMAT,
            kind: TransactionKind::Purchase,
            card_number: identity.card_number(),
            application_serial: identity.application_serial,
            serial: init.offline_serial,
            amount_fen,
            balance_before_fen: init.balance_fen,
            terminal_id,
            terminal_serial: Some(terminal_serial),
            when: *when,
            key_index: self.key_index,
            key_version: init.key_version,
            alg_id: init.alg_id,
        };
        store.save(&pending)?;
        let (tac, mac2) = match card.debit_for_purchase(terminal_serial, when, &mac1) {
            Ok(answer) => answer,
            Err(e @ TerminalError::Refused { .. }) => {
                // An error answer: the card changed no money (card OS invariant).
                store.clear()?;
                return Err(e);
            }
            Err(e) => {
                return Err(TerminalError::AnswerLost {
                    step: "DEBIT FOR PURCHASE",
                    pending: Box::new(pending),
                    cause: e.to_string(),
                })
            }
        };
        store.clear()?;
        let (mac2_verified, suspicious) = match self.psam.verify_mac2(&mac2) {
            Ok(true) => (Some(true), None),
            Ok(false) => (
                Some(false),
                Some(
                    "the PSAM rejected the card's MAC2 (9302): the card was debited but did not \
                     prove it; keep this record for the issuer"
                        .to_string(),
                ),
            ),
            Err(e) => (
                None,
                Some(format!(
                    "the card was debited but the PSAM could not check its MAC2: {e}"
                )),
            ),
        };
        Ok(PurchaseOutcome {
            card_number: pending.card_number,
            amount_fen,
            balance_before_fen: init.balance_fen,
            balance_after_fen: balance_after,
            offline_serial: init.offline_serial,
            terminal_id,
            terminal_serial,
            when: *when,
            alg: alg.to_string(),
            key_version: init.key_version,
            tac: Some(hex::encode(&tac)),
            mac2: Some(hex::encode(&mac2)),
            mac2_verified,
            recovery: None,
            suspicious,
        })
    }

    /// Finishes a pending purchase on the same card: reports it if the card executed it, else
    /// runs it again (once, with the pending amount, date and time: the same transaction).
    pub fn resume<C: CardChannel>(
        &mut self,
        card: &mut PurseCard<C>,
        pending: &PendingTransaction,
        store: &mut dyn PendingStore,
    ) -> Result<PurchaseOutcome, TerminalError> {
        if pending.kind != TransactionKind::Purchase {
            return Err(TerminalError::Input(format!(
                "the pending transaction is a {}, not a purchase",
                pending.kind
            )));
        }
        match recover(card, pending)? {
            Recovery::Completed { proof } => {
                let alg = alg_of(pending.alg_id)?;
                let balance_after = pending
                    .balance_before_fen
                    .saturating_sub(pending.amount_fen);
                store.clear()?;
                Ok(PurchaseOutcome {
                    card_number: pending.card_number.clone(),
                    amount_fen: pending.amount_fen,
                    balance_before_fen: pending.balance_before_fen,
                    balance_after_fen: balance_after,
                    offline_serial: pending.serial,
                    terminal_id: pending.terminal_id,
                    terminal_serial: pending.terminal_serial.unwrap_or(0),
                    when: pending.when,
                    alg: alg.to_string(),
                    key_version: pending.key_version,
                    tac: proof.map(|p| hex::encode(&p.tac)),
                    mac2: proof.map(|p| hex::encode(&p.mac)),
                    // The PSAM's session died with the interruption: the TAC is for settlement.
                    mac2_verified: None,
                    recovery: Some(RecoveryNote::CompletedEarlier),
                    suspicious: None,
                })
            }
            Recovery::NotDone => {
                store.clear()?;
                let mut outcome = self.pay(card, pending.amount_fen, &pending.when, store)?;
                outcome.recovery = Some(RecoveryNote::Repeated);
                Ok(outcome)
            }
        }
    }
}
