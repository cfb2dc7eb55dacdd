//! The issuer's keys behind one trait, [`Keystore`]: everything that needs a purse key asks
//! the keystore for a MAC or a verdict, and no master key (nor a derived card key) ever leaves it.
//!
//! Keys are handles `(name, version)` — `"MLK"` (load), `"MTK"` (TAC), `"MPK"` (purchase), … —
//! in one of three states: [`KeyState::Inactive`] (generated or imported), [`KeyState::Active`]
//! (usable) and [`KeyState::Retired`] (never usable again). Only an active key computes.
//! [`Keystore::list`] shows names, versions, states and key check values, never values.
//!
//! Two implementations:
//! - [`LocalKeystore`]: one file, encrypted as a whole with XChaCha20-Poly1305 under a key from
//!   argon2id(passphrase, random salt), a fresh random nonce per save, written atomically (temp
//!   file, fsync, rename). It also holds the key ceremony log (created, imported, activated,
//!   retired, with time and operator; never a key). Master keys live in memory only in
//!   zeroizing buffers; `Debug` shows no key.
//! - [`DevKeystore`]: the published development key set (`docs/KEYS.md`), only through
//!   [`DevKeystore::new`] with [`Mode::Development`]; a production configuration is refused.
//!
//! The formulas (DESIGN §4, PBOC ED/EP; both generations through `iccard_crypto`):
//! `DLK = diversify(MLK, D)`; `SESLK = session_key(DLK, random ‖ online serial ‖ 8000)`;
//! MAC1 = MAC(SESLK, old balance ‖ amount ‖ 02 ‖ terminal id); MAC2 = MAC(SESLK, amount ‖ 02 ‖
//! terminal id ‖ date ‖ time); load TAC = MAC(tac_key(diversify(MTK, D)), new balance ‖ online
//! serial ‖ amount ‖ 02 ‖ terminal id ‖ date ‖ time); purchase TAC = MAC(same TAC key, amount ‖
//! 06 ‖ terminal id ‖ terminal serial ‖ date ‖ time). The unload of a returned card uses the
//! same formulas with type `13` in place of `02` (project-defined), and its MAC3 =
//! MAC(SESLK, the bytes of its TAC).
//!
//! A third implementation, [`crate::pkcs11::Pkcs11Keystore`], keeps the master keys in a PKCS#11
//! token (3DES generation only).
//!
//! Not done yet: a passphrase prompt (callers pass the passphrase or name the environment
//! variable), key export under a transport key.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use iccard_crypto::{ct_eq, diversify, kcv, pboc_mac, session_key, tac_key, PurseAlg, SessionKey};
use iccard_terminal::OnlineKind;
use serde::Serialize;
use zeroize::{Zeroize, Zeroizing};

use crate::office::Mode;

/// Transaction type byte of an electronic-purse load (PBOC).
const TX_EP_LOAD: u8 = 0x02;
const TX_EP_UNLOAD: u8 = 0x13;
/// Transaction type byte of an electronic-purse purchase (PBOC).
const TX_EP_PURCHASE: u8 = 0x06;

/// Name of the load master key.
pub const MLK: &str = "MLK";
/// Name of the TAC master key.
pub const MTK: &str = "MTK";

/// What a keystore refuses or fails with. Messages never contain a key or a passphrase.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// The file could not be read or written.
    #[error("keystore file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Decryption failed: wrong passphrase or an altered file.
    #[error("cannot open keystore file {path}: wrong passphrase, or the file was altered")]
    WrongPassphrase {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a keystore file (or of an unknown format version).
    #[error("{path} is not an iccard keystore file ({why})")]
    NotAKeystore {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// `create` on a path that exists.
    #[error("keystore file {path} already exists: open it, or choose another path")]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// The passphrase environment variable is not set or empty.
    #[error("environment variable {var} holds no keystore passphrase: set it")]
    NoPassphrase {
        /// The variable name.
        var: String,
    },
    /// The development key set was asked for in production.
    #[error("the development key set is refused in production mode: use a real keystore")]
    DevKeysInProduction,
    /// The development key set cannot be changed.
    #[error("the development key set is fixed: {what} is only possible in a real keystore")]
    DevKeysFixed {
        /// The refused operation.
        what: &'static str,
    },
    /// No such key.
    #[error("no key {name} version {version} in the keystore")]
    UnknownKey {
        /// Key name.
        name: String,
        /// Key version.
        version: u8,
    },
    /// The key exists but is not active.
    #[error("key {name} version {version} is {state}, not active: activate it (retired keys stay unusable)")]
    NotActive {
        /// Key name.
        name: String,
        /// Key version.
        version: u8,
        /// Its state.
        state: KeyState,
    },
    /// The key belongs to the other algorithm generation.
    #[error("key {name} version {version} is a {key_alg} key, the card uses {card_alg}")]
    AlgMismatch {
        /// Key name.
        name: String,
        /// Key version.
        version: u8,
        /// The key's generation.
        key_alg: PurseAlg,
        /// The card's generation.
        card_alg: PurseAlg,
    },
    /// A state change that is not allowed.
    #[error("key {name} version {version} is {state}: cannot {what}")]
    BadTransition {
        /// Key name.
        name: String,
        /// Key version.
        version: u8,
        /// Its state.
        state: KeyState,
        /// The refused change.
        what: &'static str,
    },
    /// An input is malformed.
    #[error("{what} is not valid: {why}")]
    Invalid {
        /// What.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// The operating system's random generator failed.
    #[error("random generator failed: {0}")]
    Random(String),
    /// A PKCS#11 call failed: the function and its return value (never a key or a PIN).
    #[error("PKCS#11 token: {0}")]
    Token(String),
    /// No initialized token carries this label in the PKCS#11 module.
    #[error("no PKCS#11 token labelled {label:?} in module {module}: check the label (softhsm2-util --show-slots, pkcs11-tool -L)")]
    TokenNotFound {
        /// The label asked for.
        label: String,
        /// The module searched.
        module: PathBuf,
    },
    /// The token refused the user PIN.
    #[error("the user PIN of PKCS#11 token {label:?} was refused")]
    WrongPin {
        /// The token's label.
        label: String,
    },
    /// A key generation this keystore cannot hold or use.
    #[error("{alg} keys are not supported by this keystore: {why}")]
    AlgUnsupported {
        /// The refused generation.
        alg: PurseAlg,
        /// Why.
        why: &'static str,
    },
}

/// Result with [`KeystoreError`].
pub type KsResult<T> = std::result::Result<T, KeystoreError>;

/// A key's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Generated or imported, not yet usable.
    Inactive,
    /// Usable.
    Active,
    /// Never usable again.
    Retired,
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyState::Inactive => "inactive",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
        })
    }
}

impl KeyState {
    fn id(self) -> u8 {
        match self {
            KeyState::Inactive => 0,
            KeyState::Active => 1,
            KeyState::Retired => 2,
        }
    }
    fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(KeyState::Inactive),
            1 => Some(KeyState::Active),
            2 => Some(KeyState::Retired),
            _ => None,
        }
    }
}

/// What [`Keystore::list`] shows of a key: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Key name (`MLK`, `MTK`, …).
    pub name: String,
    /// Key version.
    pub version: u8,
    /// The generation it serves; `None` for the development set (both).
    #[serde(skip)]
    pub alg: Option<PurseAlg>,
    /// Its state.
    pub state: KeyState,
    /// Key check value: first 3 bytes of the key's encryption of a zero block (3DES when
    /// `alg` is `None`), upper-case hex.
    pub kcv: String,
}

/// A ceremony event's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CeremonyKind {
    /// Generated inside the keystore.
    Created,
    /// Imported from outside.
    Imported,
    /// Made usable.
    Activated,
    /// Made unusable for good.
    Retired,
}

impl CeremonyKind {
    pub(crate) fn id(self) -> u8 {
        match self {
            CeremonyKind::Created => 0,
            CeremonyKind::Imported => 1,
            CeremonyKind::Activated => 2,
            CeremonyKind::Retired => 3,
        }
    }
    pub(crate) fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(CeremonyKind::Created),
            1 => Some(CeremonyKind::Imported),
            2 => Some(CeremonyKind::Activated),
            3 => Some(CeremonyKind::Retired),
            _ => None,
        }
    }
}

/// One entry of the key ceremony log: what happened to which key, when, by whom (never a key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CeremonyEvent {
    /// Seconds since the Unix epoch.
    pub at_unix: i64,
    /// What happened.
    pub kind: CeremonyKind,
    /// Key name.
    pub name: String,
    /// Key version.
    pub version: u8,
    /// The operator's name.
    pub operator: String,
    /// The key check value at the time.
    pub kcv: String,
}

/// Which of a card's keys a computation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardKey {
    /// Rightmost 8 bytes of the application serial.
    pub diversifier: [u8; 8],
    /// Key version the card announced (selects the master key version).
    pub key_version: u8,
    /// Algorithm generation the card announced.
    pub alg: PurseAlg,
}

/// Everything a load's (or an unload's) MAC1 and MAC2 cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadRequest {
    /// Load (type `02`) or unload (type `13`).
    pub kind: OnlineKind,
    /// The card's keys.
    pub card: CardKey,
    /// Card random from INITIALIZE FOR LOAD.
    pub random: [u8; 4],
    /// Online serial from INITIALIZE FOR LOAD.
    pub online_serial: u16,
    /// Balance before the load, minor units.
    pub balance_before: u32,
    /// Amount, minor units.
    pub amount: u32,
    /// Terminal id.
    pub terminal_id: [u8; 6],
}

impl LoadRequest {
    /// Session-key input: random ‖ online serial ‖ 8000.
    pub fn session_input(&self) -> [u8; 8] {
        let mut i = [0u8; 8];
        i[..4].copy_from_slice(&self.random);
        i[4..6].copy_from_slice(&self.online_serial.to_be_bytes());
        i[6..].copy_from_slice(&[0x80, 0x00]);
        i
    }

    /// MAC1 input: old balance ‖ amount ‖ type ‖ terminal id.
    pub fn mac1_input(&self) -> Vec<u8> {
        let mut m = self.balance_before.to_be_bytes().to_vec();
        m.extend_from_slice(&self.amount.to_be_bytes());
        m.push(self.kind.tx_type());
        m.extend_from_slice(&self.terminal_id);
        m
    }

    /// MAC2 input: amount ‖ type ‖ terminal id ‖ date ‖ time (`when` = 4 BCD date bytes ‖ 3
    /// BCD time bytes).
    pub fn mac2_input(&self, when: &[u8; 7]) -> Vec<u8> {
        let mut m = self.amount.to_be_bytes().to_vec();
        m.push(self.kind.tx_type());
        m.extend_from_slice(&self.terminal_id);
        m.extend_from_slice(when);
        m
    }

    /// Unload MAC3 input: new balance ‖ online serial ‖ amount ‖ type ‖ terminal id ‖ date ‖
    /// time.
    pub fn mac3_input(&self, new_balance: u32, when: &[u8; 7]) -> Vec<u8> {
        online_bytes(
            self.kind.tx_type(),
            new_balance,
            self.online_serial,
            self.amount,
            &self.terminal_id,
            when,
        )
    }
}

/// new balance ‖ online serial ‖ amount ‖ type ‖ terminal id ‖ date ‖ time.
fn online_bytes(
    tx_type: u8,
    new_balance: u32,
    online_serial: u16,
    amount: u32,
    terminal_id: &[u8; 6],
    when: &[u8; 7],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(24);
    m.extend_from_slice(&new_balance.to_be_bytes());
    m.extend_from_slice(&online_serial.to_be_bytes());
    m.extend_from_slice(&amount.to_be_bytes());
    m.push(tx_type);
    m.extend_from_slice(terminal_id);
    m.extend_from_slice(when);
    m
}

/// What a TAC covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TacInput {
    /// A purse load.
    Load {
        /// Balance after the load.
        new_balance: u32,
        /// Online serial the load used.
        online_serial: u16,
        /// Amount.
        amount: u32,
        /// Terminal id.
        terminal_id: [u8; 6],
        /// Date (4 BCD bytes) ‖ time (3 BCD bytes).
        when: [u8; 7],
    },
    /// A purse unload (the return of a card; type `13`).
    Unload {
        /// Balance after the unload.
        new_balance: u32,
        /// Online serial the unload used.
        online_serial: u16,
        /// Amount.
        amount: u32,
        /// Terminal id.
        terminal_id: [u8; 6],
        /// Date (4 BCD bytes) ‖ time (3 BCD bytes).
        when: [u8; 7],
    },
    /// A purse purchase.
    Purchase {
        /// Amount.
        amount: u32,
        /// Terminal id.
        terminal_id: [u8; 6],
        /// Terminal transaction serial (from the PSAM).
        terminal_serial: u32,
        /// Date (4 BCD bytes) ‖ time (3 BCD bytes).
        when: [u8; 7],
    },
}

impl TacInput {
    /// The bytes the TAC is computed over.
    pub fn bytes(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(24);
        match self {
            TacInput::Load {
                new_balance,
                online_serial,
                amount,
                terminal_id,
                when,
            } => {
                return online_bytes(
                    TX_EP_LOAD,
                    *new_balance,
                    *online_serial,
                    *amount,
                    terminal_id,
                    when,
                )
            }
            TacInput::Unload {
                new_balance,
                online_serial,
                amount,
                terminal_id,
                when,
            } => {
                return online_bytes(
                    TX_EP_UNLOAD,
                    *new_balance,
                    *online_serial,
                    *amount,
                    terminal_id,
                    when,
                )
            }
            TacInput::Purchase {
                amount,
                terminal_id,
                terminal_serial,
                when,
            } => {
                m.extend_from_slice(&amount.to_be_bytes());
                m.push(TX_EP_PURCHASE);
                m.extend_from_slice(terminal_id);
                m.extend_from_slice(&terminal_serial.to_be_bytes());
                m.extend_from_slice(when);
            }
        }
        m
    }
}

/// The issuer's keys. Implementations derive card and session keys inside and never return
/// a master key or a derived key: only MACs, verdicts and key descriptions leave.
pub trait Keystore {
    /// Whether the card's MAC1 of INITIALIZE FOR LOAD is right (`MLK` of the card's key
    /// version, which must be active).
    fn load_mac1_ok(&self, load: &LoadRequest, mac1: &[u8; 4]) -> KsResult<bool>;
    /// The host's MAC2 for CREDIT FOR LOAD.
    fn load_mac2(&self, load: &LoadRequest, when: &[u8; 7]) -> KsResult<[u8; 4]>;
    /// Whether a TAC is the card's for this transaction (`MTK` of the card's key version).
    fn verify_tac(&self, card: &CardKey, input: &TacInput, tac: &[u8; 4]) -> KsResult<bool>;
    /// Whether the card's MAC3 of DEBIT FOR UNLOAD is right (the unload's session key, from
    /// `MLK` of the card's key version).
    fn unload_mac3_ok(
        &self,
        unload: &LoadRequest,
        new_balance: u32,
        when: &[u8; 7],
        mac3: &[u8; 4],
    ) -> KsResult<bool>;
    /// Generates a random key `name` at the next free version (inactive); logs `created`.
    fn generate(&mut self, name: &str, alg: PurseAlg, operator: &str) -> KsResult<KeyInfo>;
    /// Imports a 16-byte key as `(name, version)` (inactive); logs `imported`.
    fn import(
        &mut self,
        name: &str,
        version: u8,
        alg: PurseAlg,
        bytes: &[u8],
        operator: &str,
    ) -> KsResult<KeyInfo>;
    /// Makes an inactive key usable; logs `activated`.
    fn activate(&mut self, name: &str, version: u8, operator: &str) -> KsResult<()>;
    /// Makes a key unusable for good; logs `retired`.
    fn retire(&mut self, name: &str, version: u8, operator: &str) -> KsResult<()>;
    /// The card key `diversify(master name version, alg, data)` that personalization writes to
    /// a card (under secure messaging, encrypted under the card's own keys). Only card keys
    /// leave, never a master key; the master must be active.
    fn card_key(
        &self,
        name: &str,
        version: u8,
        alg: PurseAlg,
        data: &[u8; 8],
    ) -> KsResult<Zeroizing<[u8; 16]>> {
        let _ = (name, version, alg, data);
        Err(KeystoreError::Invalid {
            what: "card key",
            why: "this keystore does not diversify card keys for personalization".into(),
        })
    }
    /// Every key: name, version, state, KCV (never the value), by name then version.
    fn list(&self) -> Vec<KeyInfo>;
    /// The key ceremony log, oldest first.
    fn ceremony_log(&self) -> Vec<CeremonyEvent>;
}

/// The computations shared by both implementations, given a way to find an active master key.
fn mac1_ok(mlk: &[u8; 16], load: &LoadRequest, mac1: &[u8; 4]) -> bool {
    let expected = pboc_mac(&seslk(mlk, load), &load.mac1_input());
    ct_eq(&expected, mac1)
}

fn mac3_ok(
    mlk: &[u8; 16],
    unload: &LoadRequest,
    new_balance: u32,
    when: &[u8; 7],
    mac3: &[u8; 4],
) -> bool {
    let expected = pboc_mac(&seslk(mlk, unload), &unload.mac3_input(new_balance, when));
    ct_eq(&expected, mac3)
}

fn seslk(mlk: &[u8; 16], load: &LoadRequest) -> SessionKey {
    let dlk = diversify(load.card.alg, mlk, &load.card.diversifier);
    session_key(load.card.alg, &dlk, &load.session_input())
}

fn tac_ok(mtk: &[u8; 16], card: &CardKey, input: &TacInput, tac: &[u8; 4]) -> bool {
    let dtk = diversify(card.alg, mtk, &card.diversifier);
    let expected = pboc_mac(&tac_key(card.alg, &dtk), &input.bytes());
    ct_eq(&expected, tac)
}

fn kcv_hex(alg: Option<PurseAlg>, value: &[u8; 16]) -> String {
    let cipher = alg.unwrap_or(PurseAlg::TripleDes).key_cipher();
    // A 16-byte key is valid for both 16-byte ciphers, so this cannot fail.
    kcv(cipher, value)
        .map(hex::encode_upper)
        .unwrap_or_else(|_| String::from("??????"))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn check_name(name: &str) -> KsResult<()> {
    if name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(KeystoreError::Invalid {
            what: "key name",
            why: "1 to 32 characters A-Z, 0-9 or _".into(),
        });
    }
    Ok(())
}

fn check_operator(operator: &str) -> KsResult<()> {
    if operator.is_empty() || operator.len() > 200 {
        return Err(KeystoreError::Invalid {
            what: "operator name",
            why: "1 to 200 bytes".into(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// DevKeystore

/// The published development key set (`iccard_issuer::devkeys`, `docs/KEYS.md`), version 1,
/// active, usable with both generations. Constructible only in development mode.
pub struct DevKeystore {
    keys: Vec<(&'static str, Zeroizing<[u8; 16]>)>,
}

impl fmt::Debug for DevKeystore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevKeystore(..)")
    }
}

/// The development key version.
pub const DEV_KEY_VERSION: u8 = 1;

impl DevKeystore {
    /// The development key set, if `mode` is [`Mode::Development`].
    ///
    /// # Errors
    /// [`KeystoreError::DevKeysInProduction`] in production mode.
    pub fn new(mode: Mode) -> KsResult<Self> {
        match mode {
            Mode::Production => Err(KeystoreError::DevKeysInProduction),
            Mode::Development => Ok(Self {
                keys: iccard_issuer::devkeys::ALL
                    .iter()
                    .map(|k| (k.name, k.value()))
                    .collect(),
            }),
        }
    }

    fn key(&self, name: &str, version: u8) -> KsResult<&[u8; 16]> {
        if version != DEV_KEY_VERSION {
            return Err(KeystoreError::UnknownKey {
                name: name.into(),
                version,
            });
        }
        self.keys
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| &**k)
            .ok_or_else(|| KeystoreError::UnknownKey {
                name: name.into(),
                version,
            })
    }
}

impl Keystore for DevKeystore {
    fn load_mac1_ok(&self, load: &LoadRequest, mac1: &[u8; 4]) -> KsResult<bool> {
        Ok(mac1_ok(self.key(MLK, load.card.key_version)?, load, mac1))
    }
    fn unload_mac3_ok(
        &self,
        unload: &LoadRequest,
        new_balance: u32,
        when: &[u8; 7],
        mac3: &[u8; 4],
    ) -> KsResult<bool> {
        let mlk = self.key(MLK, unload.card.key_version)?;
        Ok(mac3_ok(mlk, unload, new_balance, when, mac3))
    }
    fn load_mac2(&self, load: &LoadRequest, when: &[u8; 7]) -> KsResult<[u8; 4]> {
        let mlk = self.key(MLK, load.card.key_version)?;
        Ok(pboc_mac(&seslk(mlk, load), &load.mac2_input(when)))
    }
    fn verify_tac(&self, card: &CardKey, input: &TacInput, tac: &[u8; 4]) -> KsResult<bool> {
        Ok(tac_ok(self.key(MTK, card.key_version)?, card, input, tac))
    }
    fn card_key(
        &self,
        name: &str,
        version: u8,
        alg: PurseAlg,
        data: &[u8; 8],
    ) -> KsResult<Zeroizing<[u8; 16]>> {
        Ok(Zeroizing::new(*diversify(
            alg,
            self.key(name, version)?,
            data,
        )))
    }
    fn generate(&mut self, _: &str, _: PurseAlg, _: &str) -> KsResult<KeyInfo> {
        Err(KeystoreError::DevKeysFixed { what: "generate" })
    }
    fn import(&mut self, _: &str, _: u8, _: PurseAlg, _: &[u8], _: &str) -> KsResult<KeyInfo> {
        Err(KeystoreError::DevKeysFixed { what: "import" })
    }
    fn activate(&mut self, _: &str, _: u8, _: &str) -> KsResult<()> {
        Err(KeystoreError::DevKeysFixed { what: "activate" })
    }
    fn retire(&mut self, _: &str, _: u8, _: &str) -> KsResult<()> {
        Err(KeystoreError::DevKeysFixed { what: "retire" })
    }
    fn list(&self) -> Vec<KeyInfo> {
        let mut v: Vec<KeyInfo> = self
            .keys
            .iter()
            .map(|(n, k)| KeyInfo {
                name: (*n).into(),
                version: DEV_KEY_VERSION,
                alg: None,
                state: KeyState::Active,
                kcv: kcv_hex(None, k),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
    fn ceremony_log(&self) -> Vec<CeremonyEvent> {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------------
// LocalKeystore

/// A keystore passphrase, zeroized on drop, never shown by `Debug`.
pub struct Passphrase(Zeroizing<String>);

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl Passphrase {
    /// A passphrase the caller holds.
    pub fn new(p: impl Into<String>) -> Self {
        Self(Zeroizing::new(p.into()))
    }

    /// The secret itself, for a module that must hand it on (a PKCS#11 user PIN).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// The passphrase in environment variable `var`.
    ///
    /// # Errors
    /// [`KeystoreError::NoPassphrase`] when it is unset, empty or not UTF-8.
    pub fn from_env(var: &str) -> KsResult<Self> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Self(Zeroizing::new(v))),
            Ok(mut v) => {
                v.zeroize();
                Err(KeystoreError::NoPassphrase { var: var.into() })
            }
            Err(_) => Err(KeystoreError::NoPassphrase { var: var.into() }),
        }
    }
}

/// argon2id cost parameters, stored in the file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 iterations, 1 lane.
    fn default() -> Self {
        Self {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only (8 KiB, 1 iteration): never for real keys.
    pub fn insecure_for_tests() -> Self {
        Self {
            m_cost_kib: 8,
            t_cost: 1,
            p_cost: 1,
        }
    }
}

const MAGIC: &[u8; 8] = b"ICCKS\x00\x01\x00";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 8 + 12 + SALT_LEN + NONCE_LEN;

#[derive(Clone)]
struct StoredKey {
    name: String,
    version: u8,
    alg: PurseAlg,
    state: KeyState,
    value: Zeroizing<[u8; 16]>,
}

#[derive(Clone, Default)]
struct Contents {
    keys: Vec<StoredKey>,
    log: Vec<CeremonyEvent>,
}

/// The local encrypted keystore file (see the module doc).
pub struct LocalKeystore {
    path: PathBuf,
    params: KdfParams,
    salt: [u8; SALT_LEN],
    file_key: Zeroizing<[u8; 32]>,
    contents: Contents,
}

impl fmt::Debug for LocalKeystore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeystore")
            .field("path", &self.path)
            .field("keys", &self.contents.keys.len())
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> KsResult<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| KeystoreError::Random(e.to_string()))?;
    Ok(b)
}

fn derive(
    passphrase: &Passphrase,
    salt: &[u8],
    params: KdfParams,
) -> KsResult<Zeroizing<[u8; 32]>> {
    let p = argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| KeystoreError::Invalid {
            what: "argon2 parameters",
            why: e.to_string(),
        })?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(passphrase.0.as_bytes(), salt, &mut out[..])
        .map_err(|e| KeystoreError::Invalid {
            what: "argon2 input",
            why: e.to_string(),
        })?;
    Ok(out)
}

impl LocalKeystore {
    /// Creates a new, empty keystore file at `path` (refused if it exists).
    ///
    /// # Errors
    /// [`KeystoreError::AlreadyExists`], I/O errors.
    pub fn create(path: &Path, passphrase: &Passphrase, params: KdfParams) -> KsResult<Self> {
        if path.exists() {
            return Err(KeystoreError::AlreadyExists { path: path.into() });
        }
        let salt = random::<SALT_LEN>()?;
        let file_key = derive(passphrase, &salt, params)?;
        let ks = Self {
            path: path.into(),
            params,
            salt,
            file_key,
            contents: Contents::default(),
        };
        ks.save(&ks.contents)?;
        Ok(ks)
    }

    /// Opens the keystore file at `path`.
    ///
    /// # Errors
    /// [`KeystoreError::WrongPassphrase`] when it does not decrypt, [`KeystoreError::NotAKeystore`],
    /// I/O errors.
    pub fn open(path: &Path, passphrase: &Passphrase) -> KsResult<Self> {
        let io = |source| KeystoreError::Io {
            path: path.into(),
            source,
        };
        let bytes = fs::read(path).map_err(io)?;
        let bad = |why: &str| KeystoreError::NotAKeystore {
            path: path.into(),
            why: why.into(),
        };
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(bad("no keystore header"));
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let params = KdfParams {
            m_cost_kib: u32_at(8),
            t_cost: u32_at(12),
            p_cost: u32_at(16),
        };
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&bytes[20..20 + SALT_LEN]);
        let nonce = &bytes[20 + SALT_LEN..HEADER_LEN];
        let file_key = derive(passphrase, &salt, params)?;
        let aead = XChaCha20Poly1305::new((&*file_key).into());
        let plain = Zeroizing::new(
            aead.decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: &bytes[HEADER_LEN..],
                    aad: &bytes[..HEADER_LEN],
                },
            )
            .map_err(|_| KeystoreError::WrongPassphrase { path: path.into() })?,
        );
        let contents = decode(&plain).ok_or_else(|| bad("malformed contents"))?;
        Ok(Self {
            path: path.into(),
            params,
            salt,
            file_key,
            contents,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn save(&self, contents: &Contents) -> KsResult<()> {
        let io = |source| KeystoreError::Io {
            path: self.path.clone(),
            source,
        };
        let nonce = random::<NONCE_LEN>()?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&self.params.m_cost_kib.to_be_bytes());
        header.extend_from_slice(&self.params.t_cost.to_be_bytes());
        header.extend_from_slice(&self.params.p_cost.to_be_bytes());
        header.extend_from_slice(&self.salt);
        header.extend_from_slice(&nonce);
        let plain = encode(contents);
        let aead = XChaCha20Poly1305::new((&*self.file_key).into());
        let sealed = aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &header,
                },
            )
            .map_err(|_| KeystoreError::Random("encryption failed".into()))?;
        let mut tmp_name = self.path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        {
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(&header).map_err(io)?;
            f.write_all(&sealed).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            // Best effort: make the rename durable.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Applies `change` to a copy of the contents, saves it, then keeps it.
    fn commit(&mut self, change: impl FnOnce(&mut Contents) -> KsResult<()>) -> KsResult<()> {
        let mut next = self.contents.clone();
        change(&mut next)?;
        self.save(&next)?;
        self.contents = next;
        Ok(())
    }

    fn active(&self, name: &str, version: u8, alg: PurseAlg) -> KsResult<&[u8; 16]> {
        let k = self
            .contents
            .keys
            .iter()
            .find(|k| k.name == name && k.version == version)
            .ok_or_else(|| KeystoreError::UnknownKey {
                name: name.into(),
                version,
            })?;
        if k.state != KeyState::Active {
            return Err(KeystoreError::NotActive {
                name: name.into(),
                version,
                state: k.state,
            });
        }
        if k.alg != alg {
            return Err(KeystoreError::AlgMismatch {
                name: name.into(),
                version,
                key_alg: k.alg,
                card_alg: alg,
            });
        }
        Ok(&k.value)
    }

    fn add(
        &mut self,
        kind: CeremonyKind,
        name: &str,
        version: u8,
        alg: PurseAlg,
        value: Zeroizing<[u8; 16]>,
        operator: &str,
    ) -> KsResult<KeyInfo> {
        check_name(name)?;
        check_operator(operator)?;
        if self
            .contents
            .keys
            .iter()
            .any(|k| k.name == name && k.version == version)
        {
            return Err(KeystoreError::Invalid {
                what: "key version",
                why: format!("{name} version {version} already exists"),
            });
        }
        let kcv = kcv_hex(Some(alg), &value);
        let info = KeyInfo {
            name: name.into(),
            version,
            alg: Some(alg),
            state: KeyState::Inactive,
            kcv: kcv.clone(),
        };
        self.commit(|c| {
            c.keys.push(StoredKey {
                name: name.into(),
                version,
                alg,
                state: KeyState::Inactive,
                value,
            });
            c.log.push(CeremonyEvent {
                at_unix: now_unix(),
                kind,
                name: name.into(),
                version,
                operator: operator.into(),
                kcv,
            });
            Ok(())
        })?;
        Ok(info)
    }

    fn transition(
        &mut self,
        name: &str,
        version: u8,
        operator: &str,
        kind: CeremonyKind,
    ) -> KsResult<()> {
        check_operator(operator)?;
        self.commit(|c| {
            let k = c
                .keys
                .iter_mut()
                .find(|k| k.name == name && k.version == version)
                .ok_or_else(|| KeystoreError::UnknownKey {
                    name: name.into(),
                    version,
                })?;
            let (allowed, to, what) = match kind {
                CeremonyKind::Activated => {
                    (k.state == KeyState::Inactive, KeyState::Active, "activate")
                }
                _ => (k.state != KeyState::Retired, KeyState::Retired, "retire"),
            };
            if !allowed {
                return Err(KeystoreError::BadTransition {
                    name: name.into(),
                    version,
                    state: k.state,
                    what,
                });
            }
            k.state = to;
            let kcv = kcv_hex(Some(k.alg), &k.value);
            c.log.push(CeremonyEvent {
                at_unix: now_unix(),
                kind,
                name: name.into(),
                version,
                operator: operator.into(),
                kcv,
            });
            Ok(())
        })
    }
}

impl Keystore for LocalKeystore {
    fn load_mac1_ok(&self, load: &LoadRequest, mac1: &[u8; 4]) -> KsResult<bool> {
        let mlk = self.active(MLK, load.card.key_version, load.card.alg)?;
        Ok(mac1_ok(mlk, load, mac1))
    }

    fn unload_mac3_ok(
        &self,
        unload: &LoadRequest,
        new_balance: u32,
        when: &[u8; 7],
        mac3: &[u8; 4],
    ) -> KsResult<bool> {
        let mlk = self.active(MLK, unload.card.key_version, unload.card.alg)?;
        Ok(mac3_ok(mlk, unload, new_balance, when, mac3))
    }
    fn load_mac2(&self, load: &LoadRequest, when: &[u8; 7]) -> KsResult<[u8; 4]> {
        let mlk = self.active(MLK, load.card.key_version, load.card.alg)?;
        Ok(pboc_mac(&seslk(mlk, load), &load.mac2_input(when)))
    }
    fn verify_tac(&self, card: &CardKey, input: &TacInput, tac: &[u8; 4]) -> KsResult<bool> {
        let mtk = self.active(MTK, card.key_version, card.alg)?;
        Ok(tac_ok(mtk, card, input, tac))
    }
    fn card_key(
        &self,
        name: &str,
        version: u8,
        alg: PurseAlg,
        data: &[u8; 8],
    ) -> KsResult<Zeroizing<[u8; 16]>> {
        Ok(Zeroizing::new(*diversify(
            alg,
            self.active(name, version, alg)?,
            data,
        )))
    }
    fn generate(&mut self, name: &str, alg: PurseAlg, operator: &str) -> KsResult<KeyInfo> {
        let last = self
            .contents
            .keys
            .iter()
            .filter(|k| k.name == name)
            .map(|k| k.version)
            .max()
            .unwrap_or(0);
        let version = last.checked_add(1).ok_or(KeystoreError::Invalid {
            what: "key version",
            why: format!("{name} has used every version up to 255"),
        })?;
        let value = Zeroizing::new(random::<16>()?);
        self.add(CeremonyKind::Created, name, version, alg, value, operator)
    }
    fn import(
        &mut self,
        name: &str,
        version: u8,
        alg: PurseAlg,
        bytes: &[u8],
        operator: &str,
    ) -> KsResult<KeyInfo> {
        let mut value = Zeroizing::new([0u8; 16]);
        if bytes.len() != 16 {
            return Err(KeystoreError::Invalid {
                what: "imported key",
                why: format!("{} bytes, a master key has 16", bytes.len()),
            });
        }
        value.copy_from_slice(bytes);
        self.add(CeremonyKind::Imported, name, version, alg, value, operator)
    }
    fn activate(&mut self, name: &str, version: u8, operator: &str) -> KsResult<()> {
        self.transition(name, version, operator, CeremonyKind::Activated)
    }
    fn retire(&mut self, name: &str, version: u8, operator: &str) -> KsResult<()> {
        self.transition(name, version, operator, CeremonyKind::Retired)
    }
    fn list(&self) -> Vec<KeyInfo> {
        let mut v: Vec<KeyInfo> = self
            .contents
            .keys
            .iter()
            .map(|k| KeyInfo {
                name: k.name.clone(),
                version: k.version,
                alg: Some(k.alg),
                state: k.state,
                kcv: kcv_hex(Some(k.alg), &k.value),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
        v
    }
    fn ceremony_log(&self) -> Vec<CeremonyEvent> {
        self.contents.log.clone()
    }
}

// Plaintext layout (inside the AEAD only): u32 key count, then per key: u8 name length, name,
// u8 version, u8 alg id, u8 state, 16 value bytes; u32 event count, then per event: i64 time,
// u8 kind, u8 name length, name, u8 version, u16 operator length, operator, 3 KCV bytes.
fn encode(c: &Contents) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(64 + c.keys.len() * 40));
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&count(c.keys.len()));
    for k in &c.keys {
        out.push(k.name.len() as u8);
        out.extend_from_slice(k.name.as_bytes());
        out.push(k.version);
        out.push(k.alg.id());
        out.push(k.state.id());
        out.extend_from_slice(&k.value[..]);
    }
    out.extend_from_slice(&count(c.log.len()));
    for e in &c.log {
        out.extend_from_slice(&e.at_unix.to_be_bytes());
        out.push(e.kind.id());
        out.push(e.name.len() as u8);
        out.extend_from_slice(e.name.as_bytes());
        out.push(e.version);
        out.extend_from_slice(&(e.operator.len() as u16).to_be_bytes());
        out.extend_from_slice(e.operator.as_bytes());
        let mut kcv = [0u8; 3];
        let _ = hex::decode_to_slice(&e.kcv, &mut kcv);
        out.extend_from_slice(&kcv);
    }
    out
}

/// A big-endian byte reader for the keystore formats (also the PKCS#11 state object).
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn text(&mut self, n: usize) -> Option<String> {
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
    }
    pub(crate) fn kcv(&mut self) -> Option<[u8; 3]> {
        self.take(3).map(|b| [b[0], b[1], b[2]])
    }
}

fn decode(bytes: &[u8]) -> Option<Contents> {
    let mut r = Reader(bytes);
    let mut c = Contents::default();
    for _ in 0..r.u32()? {
        let n = usize::from(r.u8()?);
        let name = r.text(n)?;
        let version = r.u8()?;
        let alg = PurseAlg::from_id(r.u8()?)?;
        let state = KeyState::from_id(r.u8()?)?;
        let mut value = Zeroizing::new([0u8; 16]);
        value.copy_from_slice(r.take(16)?);
        c.keys.push(StoredKey {
            name,
            version,
            alg,
            state,
            value,
        });
    }
    for _ in 0..r.u32()? {
        let t = r.take(8)?;
        let at_unix = i64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
        let kind = CeremonyKind::from_id(r.u8()?)?;
        let n = usize::from(r.u8()?);
        let name = r.text(n)?;
        let version = r.u8()?;
        let n = usize::from(r.u16()?);
        let operator = r.text(n)?;
        let kcv = hex::encode_upper(r.take(3)?);
        c.log.push(CeremonyEvent {
            at_unix,
            kind,
            name,
            version,
            operator,
            kcv,
        });
    }
    r.0.is_empty().then_some(c)
}
