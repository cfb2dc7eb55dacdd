//! Tear recovery: did the card execute the pending CREDIT FOR LOAD, DEBIT FOR PURCHASE or DEBIT
//! FOR UNLOAD whose answer was lost?
//!
//! The card moves its serial, its balance, its log record and its proof in one atomic commit
//! (DESIGN §4), so its serial tells:
//! 1. the card must be the same (application serial);
//! 2. its current serial is read with INITIALIZE FOR LOAD/PURCHASE/UNLOAD (the PBOC way; with amount 0
//!    when the pending amount is now refused, e.g. `9401` because the debit did happen);
//! 3. serial unchanged → the command never ran: [`Recovery::NotDone`], repeat it;
//! 4. serial + 1 → it ran: GET TRANSACTION PROOF for the pending serial gives MAC2 ‖ TAC:
//!    [`Recovery::Completed`];
//! 5. anything else (the card was used elsewhere since) → the transaction log, when readable, is
//!    the witness: a record with the pending serial and type that matches amount, terminal,
//!    date and time means completed, one that differs means another transaction took the
//!    serial (ours can never run); without a witness, [`TerminalError::Undetermined`] and the
//!    record stays pending for settlement.
//!
//! The log is also checked in case 4 when readable: a record for the serial that is not ours
//! means the serial was taken by another terminal's transaction, not ours. A repeated
//! transaction keeps the pending record's date and time, so the log recognizes it under any
//! later serial and a stale pending record can never be charged twice.

use crate::card::{LogRecord, PurseCard, TransactionProof};
use crate::error::TerminalError;
use crate::pending::{PendingTransaction, TransactionKind};
use iccard_apdu::StatusWord;
use iccard_link::CardChannel;

/// What recovery found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The card executed the pending command. The proof, when the card still has it.
    Completed {
        /// MAC2 ‖ TAC from GET TRANSACTION PROOF.
        proof: Option<TransactionProof>,
    },
    /// The card never executed it (and never will): it may be repeated.
    NotDone,
}

/// What the transaction log says about the pending serial.
enum Witness {
    Matches,
    Differs,
    Absent,
    Unreadable,
}

fn witness<C: CardChannel>(card: &mut PurseCard<C>, p: &PendingTransaction) -> Witness {
    let Ok(records) = card.log() else {
        return Witness::Unreadable;
    };
    // A repeat of the pending transaction is the same transaction (same amount, terminal, date
    // and time; the flows repeat with the pending record's time), possibly under a later serial.
    let ours = |r: &LogRecord| {
        r.tx_type == p.tx_type()
            && r.serial >= p.serial
            && r.amount_fen == p.amount_fen
            && r.terminal_id == p.terminal_id
            && r.date == p.when.date_string()
            && r.time == p.when.time_string()
    };
    if records.iter().any(ours) {
        Witness::Matches
    } else if records
        .iter()
        .any(|r| r.serial == p.serial && r.tx_type == p.tx_type())
    {
        Witness::Differs
    } else {
        Witness::Absent
    }
}

/// The card's current serial of the pending transaction's kind.
fn current_serial<C: CardChannel>(
    card: &mut PurseCard<C>,
    p: &PendingTransaction,
) -> Result<u16, TerminalError> {
    let read = |card: &mut PurseCard<C>, amount: u32| match p.kind {
        TransactionKind::Load => card
            .initialize_load(p.key_index, amount, &p.terminal_id)
            .map(|i| i.online_serial),
        TransactionKind::Purchase => card
            .initialize_purchase(p.key_index, amount, &p.terminal_id)
            .map(|i| i.offline_serial),
        TransactionKind::Unload => card
            .initialize_unload(p.key_index, amount, &p.terminal_id)
            .map(|i| i.online_serial),
    };
    match read(card, p.amount_fen) {
        Err(e)
            if matches!(
                e.status(),
                Some(StatusWord::INSUFFICIENT_BALANCE | StatusWord::CONDITIONS_NOT_SATISFIED)
            ) =>
        {
            // The amount itself is refused now (a debit that happened leaves too little, a load
            // that happened may reach the maximum balance): amount 0 still shows the serial.
            read(card, 0)
        }
        other => other,
    }
}

/// Finds out whether the pending transaction happened on this card.
pub fn recover<C: CardChannel>(
    card: &mut PurseCard<C>,
    p: &PendingTransaction,
) -> Result<Recovery, TerminalError> {
    let identity = card.reselect()?.clone();
    if identity.application_serial != p.application_serial {
        return Err(TerminalError::WrongCard {
            expected: p.card_number.clone(),
            found: identity.card_number(),
        });
    }
    let current = current_serial(card, p)?;
    let next = p.serial.checked_add(1);
    if current == p.serial {
        return Ok(Recovery::NotDone);
    }
    if Some(current) == next {
        let proof = card.transaction_proof(p.tx_type(), p.serial)?;
        return match (proof, witness(card, p)) {
            (_, Witness::Differs) => Ok(Recovery::NotDone),
            (Some(proof), _) => Ok(Recovery::Completed { proof: Some(proof) }),
            (None, Witness::Matches) => Ok(Recovery::Completed { proof: None }),
            (None, _) => Err(TerminalError::Undetermined(format!(
                "the card's serial moved from {} to {current} but it holds no proof for {} and \
                 its log does not show the transaction",
                p.serial, p.serial
            ))),
        };
    }
    if current < p.serial {
        return Err(TerminalError::Undetermined(format!(
            "the card's serial {current} is behind the pending transaction's {} (an older copy \
             of the card?)",
            p.serial
        )));
    }
    match witness(card, p) {
        Witness::Matches => Ok(Recovery::Completed { proof: None }),
        Witness::Differs => Ok(Recovery::NotDone),
        Witness::Absent | Witness::Unreadable => Err(TerminalError::Undetermined(format!(
            "the card has made other transactions since (serial {current}, pending {}) and its \
             log does not say whether serial {} was this one",
            p.serial, p.serial
        ))),
    }
}
