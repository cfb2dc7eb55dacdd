//! What a recharge point needs from the issuer's keys, behind one trait: [`HostKeys`].
//!
//! The terminal software never holds a master key's bytes in its own variables: it asks the
//! host keys to check the card's MAC1, to compute MAC2 and to check the TAC, handing over only
//! the card's diversification data and the transaction's values. Today [`MasterKeyHost`]
//! implements it with master keys in memory (the development key set); a keystore or an HSM
//! implements the same trait later, keeping the keys where they are.
//!
//! The formulas (DESIGN §4, PBOC ED/EP; both generations through `iccard_crypto`):
//! - `DLK = diversify(MLK, D)`, `DTK = diversify(MTK, D)`, `D` = rightmost 8 bytes of the
//!   application serial;
//! - `SESLK = session_key(DLK, random ‖ online serial ‖ 8000)`;
//! - MAC1 = MAC(SESLK, old balance ‖ amount ‖ type ‖ terminal id);
//! - MAC2 = MAC(SESLK, amount ‖ type ‖ terminal id ‖ date ‖ time);
//! - load and unload TAC = MAC(TAC key, new balance ‖ online serial ‖ amount ‖ type ‖ terminal
//!   id ‖ date ‖ time); unload MAC3 = MAC(SESLK, the same bytes) (project-defined, docs/COS.md);
//!   purchase TAC = MAC(TAC key, amount ‖ type ‖ terminal id ‖ terminal serial ‖ date ‖
//!   time); TAC key = `tac_key(DTK)`.

use crate::card::tx_type;
use crate::error::HostKeyError;
use crate::time::TransactionTime;
use iccard_crypto::{ct_eq, diversify, pboc_mac, session_key, tac_key, PurseAlg, SessionKey};
use zeroize::Zeroizing;

/// Which of a card's keys a computation uses: the card's diversification data and what the
/// card announced about the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardKeyRef {
    /// Rightmost 8 bytes of the application serial.
    pub diversifier: [u8; 8],
    /// Key index the terminal asked for.
    pub key_index: u8,
    /// Key version the card announced.
    pub key_version: u8,
    /// Algorithm generation the card announced.
    pub alg: PurseAlg,
}

/// Which online transaction: a load (type `02`) or an unload (type `13`, project-defined: PBOC
/// defines unload for the passbook only). Both use the load key and the online serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnlineKind {
    /// CREDIT FOR LOAD.
    #[default]
    Load,
    /// DEBIT FOR UNLOAD.
    Unload,
}

impl OnlineKind {
    /// The transaction type byte.
    pub fn tx_type(self) -> u8 {
        match self {
            OnlineKind::Load => tx_type::EP_LOAD,
            OnlineKind::Unload => tx_type::EP_UNLOAD,
        }
    }
}

/// Everything a load's (or an unload's) MAC1 and MAC2 cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadContext {
    /// Load or unload.
    pub kind: OnlineKind,
    /// The card's keys.
    pub card: CardKeyRef,
    /// Card random from INITIALIZE FOR LOAD.
    pub random: [u8; 4],
    /// Online serial from INITIALIZE FOR LOAD.
    pub online_serial: u16,
    /// Balance before the load.
    pub balance_before_fen: u32,
    /// Amount.
    pub amount_fen: u32,
    /// Terminal id.
    pub terminal_id: [u8; 6],
}

impl LoadContext {
    fn session_input(&self) -> [u8; 8] {
        let mut i = [0u8; 8];
        i[..4].copy_from_slice(&self.random);
        i[4..6].copy_from_slice(&self.online_serial.to_be_bytes());
        i[6..].copy_from_slice(&[0x80, 0x00]);
        i
    }

    /// MAC1 input: old balance ‖ amount ‖ type ‖ terminal id.
    pub fn mac1_input(&self) -> Vec<u8> {
        let mut m = self.balance_before_fen.to_be_bytes().to_vec();
        m.extend_from_slice(&self.amount_fen.to_be_bytes());
        m.push(self.kind.tx_type());
        m.extend_from_slice(&self.terminal_id);
        m
    }

    /// MAC2 input: amount ‖ type ‖ terminal id ‖ date ‖ time.
    pub fn mac2_input(&self, when: &TransactionTime) -> Vec<u8> {
        let mut m = self.amount_fen.to_be_bytes().to_vec();
        m.push(self.kind.tx_type());
        m.extend_from_slice(&self.terminal_id);
        m.extend_from_slice(&when.bytes());
        m
    }

    /// Unload MAC3 input: new balance ‖ online serial ‖ amount ‖ type ‖ terminal id ‖ date ‖
    /// time (the bytes of the TAC).
    pub fn mac3_input(&self, new_balance_fen: u32, when: &TransactionTime) -> Vec<u8> {
        online_bytes(
            self.kind,
            new_balance_fen,
            self.online_serial,
            self.amount_fen,
            &self.terminal_id,
            when,
        )
    }
}

/// new balance ‖ online serial ‖ amount ‖ type ‖ terminal id ‖ date ‖ time.
fn online_bytes(
    kind: OnlineKind,
    new_balance_fen: u32,
    online_serial: u16,
    amount_fen: u32,
    terminal_id: &[u8; 6],
    when: &TransactionTime,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(24);
    m.extend_from_slice(&new_balance_fen.to_be_bytes());
    m.extend_from_slice(&online_serial.to_be_bytes());
    m.extend_from_slice(&amount_fen.to_be_bytes());
    m.push(kind.tx_type());
    m.extend_from_slice(terminal_id);
    m.extend_from_slice(&when.bytes());
    m
}

/// What a TAC covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TacInput {
    /// A purse load.
    Load {
        /// Balance after the load.
        new_balance_fen: u32,
        /// Online serial the load used.
        online_serial: u16,
        /// Amount.
        amount_fen: u32,
        /// Terminal id.
        terminal_id: [u8; 6],
        /// Date and time.
        when: TransactionTime,
    },
    /// A purse unload (type `13`).
    Unload {
        /// Balance after the unload.
        new_balance_fen: u32,
        /// Online serial the unload used.
        online_serial: u16,
        /// Amount.
        amount_fen: u32,
        /// Terminal id.
        terminal_id: [u8; 6],
        /// Date and time.
        when: TransactionTime,
    },
    /// A purse purchase.
    Purchase {
        /// Amount.
        amount_fen: u32,
        /// Terminal id.
        terminal_id: [u8; 6],
        /// Terminal transaction serial (from the PSAM).
        terminal_serial: u32,
        /// Date and time.
        when: TransactionTime,
    },
}

impl TacInput {
    /// The bytes the TAC is computed over.
    pub fn bytes(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(24);
        match self {
            TacInput::Load {
                new_balance_fen,
                online_serial,
                amount_fen,
                terminal_id,
                when,
            } => {
                return online_bytes(
                    OnlineKind::Load,
                    *new_balance_fen,
                    *online_serial,
                    *amount_fen,
                    terminal_id,
                    when,
                )
            }
            TacInput::Unload {
                new_balance_fen,
                online_serial,
                amount_fen,
                terminal_id,
                when,
            } => {
                return online_bytes(
                    OnlineKind::Unload,
                    *new_balance_fen,
                    *online_serial,
                    *amount_fen,
                    terminal_id,
                    when,
                )
            }
            TacInput::Purchase {
                amount_fen,
                terminal_id,
                terminal_serial,
                when,
            } => {
                m.extend_from_slice(&amount_fen.to_be_bytes());
                m.push(tx_type::EP_PURCHASE);
                m.extend_from_slice(terminal_id);
                m.extend_from_slice(&terminal_serial.to_be_bytes());
                m.extend_from_slice(&when.bytes());
            }
        }
        m
    }
}

/// The issuer keys a recharge host uses. Implementations derive the card keys inside and never
/// return a master key or a derived key: only MACs and verdicts leave.
pub trait HostKeys {
    /// Whether the card's MAC1 of INITIALIZE FOR LOAD is right (the card knows its DLK).
    fn load_mac1_ok(&self, ctx: &LoadContext, mac1: &[u8; 4]) -> Result<bool, HostKeyError>;
    /// The host's MAC2 for CREDIT FOR LOAD.
    fn load_mac2(&self, ctx: &LoadContext, when: &TransactionTime)
        -> Result<[u8; 4], HostKeyError>;
    /// Whether a TAC is the card's for this transaction.
    fn verify_tac(
        &self,
        card: &CardKeyRef,
        input: &TacInput,
        tac: &[u8; 4],
    ) -> Result<bool, HostKeyError>;
    /// Whether the card's MAC3 of DEBIT FOR UNLOAD is right (session key of the unload).
    fn unload_mac3_ok(
        &self,
        ctx: &LoadContext,
        new_balance_fen: u32,
        when: &TransactionTime,
        mac3: &[u8; 4],
    ) -> Result<bool, HostKeyError>;
}

/// Host keys held in memory: one load master key (MLK) and one TAC master key (MTK), used for
/// every key version and index and both generations (the shape of the development key set; a
/// keystore keys them by version). Zeroized on drop; `Debug` shows no key.
pub struct MasterKeyHost {
    mlk: Zeroizing<[u8; 16]>,
    mtk: Zeroizing<[u8; 16]>,
}

impl std::fmt::Debug for MasterKeyHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKeyHost(..)")
    }
}

impl MasterKeyHost {
    /// Host keys from a load master key and a TAC master key.
    pub fn new(mlk: Zeroizing<[u8; 16]>, mtk: Zeroizing<[u8; 16]>) -> Self {
        Self { mlk, mtk }
    }

    fn seslk(&self, ctx: &LoadContext) -> SessionKey {
        let dlk = diversify(ctx.card.alg, &self.mlk, &ctx.card.diversifier);
        session_key(ctx.card.alg, &dlk, &ctx.session_input())
    }
}

impl HostKeys for MasterKeyHost {
    fn load_mac1_ok(&self, ctx: &LoadContext, mac1: &[u8; 4]) -> Result<bool, HostKeyError> {
        let expected = pboc_mac(&self.seslk(ctx), &ctx.mac1_input());
        Ok(ct_eq(&expected, mac1))
    }

    fn load_mac2(
        &self,
        ctx: &LoadContext,
        when: &TransactionTime,
    ) -> Result<[u8; 4], HostKeyError> {
        Ok(pboc_mac(&self.seslk(ctx), &ctx.mac2_input(when)))
    }

    fn verify_tac(
        &self,
        card: &CardKeyRef,
        input: &TacInput,
        tac: &[u8; 4],
    ) -> Result<bool, HostKeyError> {
        let dtk = diversify(card.alg, &self.mtk, &card.diversifier);
        let key = tac_key(card.alg, &dtk);
        Ok(ct_eq(&pboc_mac(&key, &input.bytes()), tac))
    }

    fn unload_mac3_ok(
        &self,
        ctx: &LoadContext,
        new_balance_fen: u32,
        when: &TransactionTime,
        mac3: &[u8; 4],
    ) -> Result<bool, HostKeyError> {
        let expected = pboc_mac(&self.seslk(ctx), &ctx.mac3_input(new_balance_fen, when));
        Ok(ct_eq(&expected, mac3))
    }
}
