//! Typed results of the money-moving flows, serializable for `--json`.

use crate::time::TransactionTime;

/// How a transaction came to its end after an interruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryNote {
    /// The card had executed the interrupted command: nothing was sent again.
    CompletedEarlier,
    /// The card had not executed it: it was run again, once.
    Repeated,
}

/// A load (recharge) that reached the card.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadOutcome {
    /// Card number.
    pub card_number: String,
    /// Amount loaded.
    pub amount_fen: u32,
    /// Balance before.
    pub balance_before_fen: u32,
    /// Balance after.
    pub balance_after_fen: u32,
    /// Online serial the load used.
    pub online_serial: u16,
    /// Terminal id.
    #[serde(with = "crate::hexser")]
    pub terminal_id: [u8; 6],
    /// Date and time.
    #[serde(flatten)]
    pub when: TransactionTime,
    /// Algorithm generation ("3DES" or "SM4").
    pub alg: String,
    /// Key version.
    pub key_version: u8,
    /// The card's TAC (hex), when known.
    pub tac: Option<String>,
    /// Whether the host verified the TAC (`None`: no TAC to verify).
    pub tac_verified: Option<bool>,
    /// Set when the transaction was finished after an interruption.
    pub recovery: Option<RecoveryNote>,
    /// Why this transaction needs the issuer's attention (it happened on the card).
    pub suspicious: Option<String>,
}

/// A purchase that reached the card.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PurchaseOutcome {
    /// Card number.
    pub card_number: String,
    /// Amount debited.
    pub amount_fen: u32,
    /// Balance before.
    pub balance_before_fen: u32,
    /// Balance after.
    pub balance_after_fen: u32,
    /// Offline serial the purchase used.
    pub offline_serial: u16,
    /// Terminal id.
    #[serde(with = "crate::hexser")]
    pub terminal_id: [u8; 6],
    /// Terminal transaction serial (from the PSAM).
    pub terminal_serial: u32,
    /// Date and time.
    #[serde(flatten)]
    pub when: TransactionTime,
    /// Algorithm generation ("3DES" or "SM4").
    pub alg: String,
    /// Key version.
    pub key_version: u8,
    /// The card's TAC (hex), when known: the back office verifies it at settlement.
    pub tac: Option<String>,
    /// The card's MAC2 (hex), when known.
    pub mac2: Option<String>,
    /// Whether the PSAM accepted MAC2 (`None`: not checked, e.g. recovered after the PSAM
    /// session was gone).
    pub mac2_verified: Option<bool>,
    /// Set when the transaction was finished after an interruption.
    pub recovery: Option<RecoveryNote>,
    /// Why this transaction needs the issuer's attention (the card was debited).
    pub suspicious: Option<String>,
}
