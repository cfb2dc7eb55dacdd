//! The PBOC electronic purse (EP, P2=02) and electronic passbook (ED, P2=01) application:
//! load, purchase, unload, balance and transaction proof, with the purse state, limits and
//! MAC-failure lock it keeps in the application's internal file.
//!
//! # Commands (JR/T 0025 family; `docs/COS.md` § "Electronic purse" is the reference)
//!
//! | command | APDU | answer |
//! |---|---|---|
//! | INITIALIZE FOR LOAD | `80 50 00 01/02 0B` key index ‖ amount ‖ terminal id | balance ‖ online serial ‖ key version ‖ alg ‖ random ‖ MAC1 |
//! | CREDIT FOR LOAD | `80 52 00 00 0B` date ‖ time ‖ MAC2 | TAC |
//! | INITIALIZE FOR PURCHASE | `80 50 01 01/02 0B` key index ‖ amount ‖ terminal id | balance ‖ offline serial ‖ overdraft ‖ key version ‖ alg ‖ random |
//! | DEBIT FOR PURCHASE | `80 54 01 00 0F` terminal serial ‖ date ‖ time ‖ MAC1 | TAC ‖ MAC2 |
//! | INITIALIZE FOR UNLOAD | `80 50 05 01/02 0B` key index ‖ amount ‖ terminal id | as INITIALIZE FOR LOAD |
//! | DEBIT FOR UNLOAD | `80 54 03 00 0B` date ‖ time ‖ MAC2 | MAC3 ‖ TAC |
//! | GET BALANCE | `80 5C 00 01/02 04` | balance |
//! | GET TRANSACTION PROOF | `80 5A 00 <type> 02` serial | MAC ‖ TAC |
//! | PUT DATA purse settings | `84 DA 00 01 11` settings ‖ MAC | — |
//!
//! The passbook (ED) shares the code: its own balance and serials, and every ED command but
//! GET TRANSACTION PROOF needs the application PIN verified (`6982` otherwise).
//!
//! # Where the state lives
//!
//! The application DF's internal file (`FileKind::Internal`, created by CREATE FILE with a
//! size from [`internal_file_size`]) holds:
//!
//! - at offset 0, the **settings** ([`PurseSettings`], [`SETTINGS_LEN`] bytes, rewritten only by
//!   PUT DATA under the maintenance key's secure messaging): maximum balance, per-purchase and
//!   daily offline limits, MAC-failure limit;
//! - from the first page boundary after [`SETTINGS_AREA`] bytes, the **state** ([`PurseState`],
//!   [`STATE_LEN`] bytes) as a wear-levelled [`HotRecord`] over as many page-sized slots as the
//!   file has room for (at most [`MAX_STATE_SLOTS`]): both balances and their online and offline
//!   serials, the MAC-failure counter, the day's offline total and its date, and the proofs
//!   (MAC and TAC) of the last online and the last offline transaction.
//!
//! # Atomicity
//!
//! A completing command (CREDIT FOR LOAD, DEBIT FOR PURCHASE, DEBIT FOR UNLOAD) stages the new
//! state (balance, serial, proof) and the log record (cyclic EF SFI 0x18), and the card loop
//! commits them in one NVM transaction after the handler returns: a power cut leaves all of it
//! before or all of it after. A wrong MAC stages the incremented MAC-failure counter (and, at the
//! limit, the permanent lock of the application) and commits it *before* the card answers
//! `9302`; the success path commits too, so cutting power at the first EEPROM write tells an
//! attacker nothing about the MAC. A power cut during a transaction is not counted as a MAC
//! failure: a card pulled from the reader three times must not lock for good.
//!
//! # Transaction state
//!
//! INITIALIZE opens a transaction in volatile memory ([`PurseSession`]); the next purse command
//! must be its completion, else `6901`. Every purse command (CLA 80/84 in the purse DF) ends the
//! open transaction, whatever it answers; so do a reset and selecting another DF. ISO commands
//! (READ RECORD, VERIFY, GET RESPONSE) in between leave it open.

use crate::card::Card;
use crate::command::has_mac;
use crate::fs::{app_state, nv, CardResult, Fcb, FileKind};
use crate::keys::{KeyFile, KeyRecord, KeyType};
use crate::nvm::{Eeprom, HotRecord, PAGE_SIZE};
use crate::platform::RandomSource;
use iccard_apdu::{Command as Apdu, Response, StatusWord};
use iccard_crypto::{ct_eq, pboc_mac, session_key, tac_key, PurseAlg, SessionKey};

/// DF name (AID) of the purse application (PBOC: RID A000000003, PIX 86980701).
pub const PURSE_AID: [u8; 9] = [0xA0, 0x00, 0x00, 0x00, 0x03, 0x86, 0x98, 0x07, 0x01];
/// File identifier of the purse application DF.
pub const PURSE_FID: u16 = 0x1001;
/// SFI of the cardholder file (optional).
pub const SFI_HOLDER: u8 = 0x16;
/// SFI of the transaction log (cyclic, [`LOG_RECORD_LEN`]-byte records).
pub const SFI_LOG: u8 = 0x18;
/// Length of a transaction log record:
/// `serial(2) ‖ overdraft(3) ‖ amount(4) ‖ type(1) ‖ terminal id(6) ‖ date(4) ‖ time(3)`.
pub const LOG_RECORD_LEN: usize = 23;
/// Length of the public application file (SFI 0x15).
pub const PUBLIC_FILE_LEN: usize = 30;

/// Bytes reserved for the settings at the start of the internal file.
pub const SETTINGS_AREA: usize = 32;
/// Encoded length of [`PurseSettings`] in the internal file (version byte included).
pub const SETTINGS_LEN: usize = 14;
/// Length of the PUT DATA payload carrying [`PurseSettings`] (before the MAC).
pub const SETTINGS_DATA_LEN: usize = 13;
/// Encoded length of [`PurseState`].
pub const STATE_LEN: u16 = 47;
/// Most slots the state record rotates over.
pub const MAX_STATE_SLOTS: u16 = 32;
/// P2 of PUT DATA that writes the purse settings.
pub const PUT_DATA_SETTINGS: u8 = 0x01;
/// Version byte that marks the settings as written.
const SETTINGS_VERSION: u8 = 0x01;

/// Transaction type identifiers (PBOC), as MACs, TACs and log records carry them.
pub mod tx_type {
    /// Passbook load.
    pub const ED_LOAD: u8 = 0x01;
    /// Purse load.
    pub const EP_LOAD: u8 = 0x02;
    /// Passbook unload (PBOC).
    pub const ED_UNLOAD: u8 = 0x03;
    /// Passbook purchase.
    pub const ED_PURCHASE: u8 = 0x05;
    /// Purse purchase.
    pub const EP_PURCHASE: u8 = 0x06;
    /// Purse unload (project-defined: PBOC defines unload for the passbook only; `0x10 | 03`
    /// marks the purse).
    pub const EP_UNLOAD: u8 = 0x13;
}

/// Size of an internal file that holds the settings and a state record of `slots` slots,
/// wherever the card places its body (bodies are 4-byte aligned; the state starts on a page).
pub const fn internal_file_size(slots: u16) -> u16 {
    (SETTINGS_AREA + PAGE_SIZE + HotRecord::footprint(slots, STATE_LEN)) as u16
}

/// Which of the two balances a command addresses (P2 of INITIALIZE and GET BALANCE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurseKind {
    /// Electronic passbook, P2=01: needs the PIN.
    Passbook,
    /// Electronic purse, P2=02.
    Purse,
}

impl PurseKind {
    /// From P2.
    pub fn from_p2(p2: u8) -> Option<Self> {
        match p2 {
            0x01 => Some(Self::Passbook),
            0x02 => Some(Self::Purse),
            _ => None,
        }
    }

    fn load_type(self) -> u8 {
        match self {
            Self::Passbook => tx_type::ED_LOAD,
            Self::Purse => tx_type::EP_LOAD,
        }
    }

    fn purchase_type(self) -> u8 {
        match self {
            Self::Passbook => tx_type::ED_PURCHASE,
            Self::Purse => tx_type::EP_PURCHASE,
        }
    }

    fn unload_type(self) -> u8 {
        match self {
            Self::Passbook => tx_type::ED_UNLOAD,
            Self::Purse => tx_type::EP_UNLOAD,
        }
    }
}

/// The issuer's limits, written by PUT DATA (`84 DA 00 01`) under the maintenance key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurseSettings {
    /// Highest balance a load may reach (each of EP and ED), in fen.
    pub max_balance: u32,
    /// Highest amount of one purchase, in fen.
    pub purchase_limit: u32,
    /// Highest total of purchases on one terminal date (EP and ED together), in fen.
    pub daily_limit: u32,
    /// Consecutive MAC failures after which the application locks for good (1..=15).
    pub mac_failure_limit: u8,
}

impl PurseSettings {
    /// The PUT DATA payload: `max balance(4) ‖ purchase limit(4) ‖ daily limit(4) ‖
    /// MAC-failure limit(1)`.
    pub fn to_put_data(&self) -> [u8; SETTINGS_DATA_LEN] {
        let mut b = [0u8; SETTINGS_DATA_LEN];
        b[0..4].copy_from_slice(&self.max_balance.to_be_bytes());
        b[4..8].copy_from_slice(&self.purchase_limit.to_be_bytes());
        b[8..12].copy_from_slice(&self.daily_limit.to_be_bytes());
        b[12] = self.mac_failure_limit;
        b
    }

    /// Parses and checks a PUT DATA payload.
    pub fn from_put_data(b: &[u8]) -> CardResult<Self> {
        if b.len() != SETTINGS_DATA_LEN {
            return Err(StatusWord::WRONG_LENGTH);
        }
        let s = Self {
            max_balance: be32(&b[0..4]),
            purchase_limit: be32(&b[4..8]),
            daily_limit: be32(&b[8..12]),
            mac_failure_limit: b[12],
        };
        if !(1..=15).contains(&s.mac_failure_limit) {
            return Err(StatusWord::WRONG_DATA);
        }
        Ok(s)
    }
}

/// One balance with its transaction serials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    /// Balance in fen.
    pub balance: u32,
    /// Online transaction serial (loads, unloads): the next transaction uses this value.
    pub online_serial: u16,
    /// Offline transaction serial (purchases): the next purchase uses this value.
    pub offline_serial: u16,
}

/// The proof of a completed transaction (GET TRANSACTION PROOF).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Proof {
    /// Transaction type (0: none yet).
    pub tx_type: u8,
    /// The serial the transaction used (before the increment).
    pub serial: u16,
    /// MAC2 (load: the host's; purchase: the card's) or MAC3 (unload).
    pub mac: [u8; 4],
    /// TAC.
    pub tac: [u8; 4],
}

impl Proof {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.tx_type);
        out.extend_from_slice(&self.serial.to_be_bytes());
        out.extend_from_slice(&self.mac);
        out.extend_from_slice(&self.tac);
    }

    fn decode(b: &[u8]) -> Self {
        Self {
            tx_type: b[0],
            serial: u16::from_be_bytes([b[1], b[2]]),
            mac: [b[3], b[4], b[5], b[6]],
            tac: [b[7], b[8], b[9], b[10]],
        }
    }
}

/// The purse state every transaction rewrites ([`STATE_LEN`] bytes in a [`HotRecord`]):
/// `ED balance(4) ‖ ED online serial(2) ‖ ED offline serial(2) ‖ EP balance(4) ‖ EP online
/// serial(2) ‖ EP offline serial(2) ‖ MAC failures(1) ‖ offline date(4) ‖ offline total(4) ‖
/// last online proof(11) ‖ last offline proof(11)`, a proof being `type(1) ‖ serial(2) ‖ MAC(4)
/// ‖ TAC(4)`. A fresh (all-zero) record is an empty purse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurseState {
    /// The passbook.
    pub passbook: Balance,
    /// The purse.
    pub purse: Balance,
    /// MAC failures since the last successful transaction.
    pub mac_failures: u8,
    /// Terminal date (BCD YYYYMMDD) of the offline total.
    pub offline_date: [u8; 4],
    /// Purchases on `offline_date`, in fen.
    pub offline_total: u32,
    /// Proof of the last load or unload.
    pub online_proof: Proof,
    /// Proof of the last purchase.
    pub offline_proof: Proof,
}

impl PurseState {
    /// Encodes the state.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(STATE_LEN as usize);
        for p in [&self.passbook, &self.purse] {
            b.extend_from_slice(&p.balance.to_be_bytes());
            b.extend_from_slice(&p.online_serial.to_be_bytes());
            b.extend_from_slice(&p.offline_serial.to_be_bytes());
        }
        b.push(self.mac_failures);
        b.extend_from_slice(&self.offline_date);
        b.extend_from_slice(&self.offline_total.to_be_bytes());
        self.online_proof.encode(&mut b);
        self.offline_proof.encode(&mut b);
        debug_assert_eq!(b.len(), STATE_LEN as usize);
        b
    }

    /// Decodes the state.
    pub fn from_bytes(b: &[u8]) -> CardResult<Self> {
        if b.len() != STATE_LEN as usize {
            return Err(StatusWord::MEMORY_FAILURE);
        }
        let balance = |o: usize| Balance {
            balance: be32(&b[o..o + 4]),
            online_serial: u16::from_be_bytes([b[o + 4], b[o + 5]]),
            offline_serial: u16::from_be_bytes([b[o + 6], b[o + 7]]),
        };
        Ok(Self {
            passbook: balance(0),
            purse: balance(8),
            mac_failures: b[16],
            offline_date: [b[17], b[18], b[19], b[20]],
            offline_total: be32(&b[21..25]),
            online_proof: Proof::decode(&b[25..36]),
            offline_proof: Proof::decode(&b[36..47]),
        })
    }

    /// The balance a command addresses.
    pub fn of(&self, kind: PurseKind) -> &Balance {
        match kind {
            PurseKind::Passbook => &self.passbook,
            PurseKind::Purse => &self.purse,
        }
    }

    fn of_mut(&mut self, kind: PurseKind) -> &mut Balance {
        match kind {
            PurseKind::Passbook => &mut self.passbook,
            PurseKind::Purse => &mut self.purse,
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Where the settings and the state record of a purse lie in its internal file.
#[derive(Debug, Clone, Copy)]
struct Layout {
    settings: usize,
    state: HotRecord,
}

impl Layout {
    fn of(f: &Fcb) -> CardResult<Self> {
        let body = f.body as usize;
        let end = body + f.size as usize;
        let start = (body + SETTINGS_AREA).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let slot = HotRecord::slot_size(STATE_LEN);
        let stride = HotRecord::stride(STATE_LEN);
        if start + slot > end {
            // An internal file too small for one state slot is not a purse file.
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let slots = ((end - start - slot) / stride + 1).min(MAX_STATE_SLOTS as usize) as u16;
        Ok(Self {
            settings: body,
            state: HotRecord {
                addr: start,
                slots,
                len: STATE_LEN,
            },
        })
    }
}

/// An online transaction (load or unload) between INITIALIZE and its completion.
#[derive(Debug, Clone)]
struct Online {
    kind: PurseKind,
    /// The key that computes the session key (load or unload key).
    key_type: KeyType,
    key_index: u8,
    tx_type: u8,
    amount: u32,
    terminal_id: [u8; 6],
    balance: u32,
    serial: u16,
    random: [u8; 4],
}

/// A purchase between INITIALIZE FOR PURCHASE and DEBIT FOR PURCHASE.
#[derive(Debug, Clone)]
struct Offline {
    kind: PurseKind,
    key_index: u8,
    amount: u32,
    terminal_id: [u8; 6],
    balance: u32,
    serial: u16,
    random: [u8; 4],
}

#[derive(Debug, Clone)]
enum Pending {
    Load(Online),
    Unload(Online),
    Purchase(Offline),
}

/// The purse's volatile state: the transaction initialized and not yet completed. Holds no
/// key: the completion reads the key again and derives the session key anew.
#[derive(Debug, Default, Clone)]
pub struct PurseSession {
    pending: Option<Pending>,
}

impl PurseSession {
    /// Whether a transaction is open (INITIALIZE answered, completion not yet received).
    pub fn is_open(&self) -> bool {
        self.pending.is_some()
    }
}

/// The parsed data of the three INITIALIZE commands.
struct InitData {
    key_index: u8,
    amount: u32,
    terminal_id: [u8; 6],
}

fn parse_init(data: &[u8]) -> CardResult<InitData> {
    if data.len() != 11 {
        return Err(StatusWord::WRONG_LENGTH);
    }
    let mut terminal_id = [0u8; 6];
    terminal_id.copy_from_slice(&data[5..11]);
    Ok(InitData {
        key_index: data[0],
        amount: be32(&data[1..5]),
        terminal_id,
    })
}

/// Everything a purse command needs to know about its application.
struct Ctx {
    df: Fcb,
    layout: Layout,
    settings: Option<PurseSettings>,
    state: PurseState,
}

fn alg_of(key: &KeyRecord) -> CardResult<PurseAlg> {
    PurseAlg::from_id(key.alg).ok_or(StatusWord::REFERENCE_DATA_NOT_USABLE)
}

/// The session key of an online transaction: `random ‖ online serial ‖ 8000`.
fn online_session_key(key: &KeyRecord, random: &[u8; 4], serial: u16) -> CardResult<SessionKey> {
    let mut input = [0u8; 8];
    input[..4].copy_from_slice(random);
    input[4..6].copy_from_slice(&serial.to_be_bytes());
    input[6] = 0x80;
    Ok(session_key(alg_of(key)?, &*key.key16()?, &input))
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

impl<E: Eeprom, R: RandomSource> Card<E, R> {
    /// Purse commands (CLA 80/84).
    pub(crate) fn purse_command(&mut self, apdu: &Apdu) -> CardResult<Response> {
        // Every purse command ends the open transaction: the completion takes it, anything
        // else leaves nothing to complete.
        let pending = self.v.app.purse.pending.take();
        let (cla, ins, p1, p2) = (apdu.cla, apdu.ins, apdu.p1, apdu.p2);
        if cla != 0x80 && cla != 0x84 {
            return Err(StatusWord::CLA_NOT_SUPPORTED);
        }
        if cla == 0x84 && ins != 0xDA {
            return Err(StatusWord::SECURE_MESSAGING_NOT_SUPPORTED);
        }
        match ins {
            0x50 => {
                let kind = PurseKind::from_p2(p2).ok_or(StatusWord::INCORRECT_P1P2)?;
                let init = parse_init(&apdu.data)?;
                match p1 {
                    0x00 => self.initialize_online(kind, &init, false),
                    0x01 => self.initialize_purchase(kind, &init),
                    0x05 => self.initialize_online(kind, &init, true),
                    _ => Err(StatusWord::INCORRECT_P1P2),
                }
            }
            0x52 => {
                if p1 != 0 || p2 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                if apdu.data.len() != 11 {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                match pending {
                    Some(Pending::Load(t)) => self.complete_online(&t, &apdu.data, false),
                    _ => Err(StatusWord::INVALID_STATE),
                }
            }
            0x54 => match (p1, p2) {
                (0x01, 0x00) => {
                    if apdu.data.len() != 15 {
                        return Err(StatusWord::WRONG_LENGTH);
                    }
                    match pending {
                        Some(Pending::Purchase(t)) => self.debit_for_purchase(&t, &apdu.data),
                        _ => Err(StatusWord::INVALID_STATE),
                    }
                }
                (0x03, 0x00) => {
                    if apdu.data.len() != 11 {
                        return Err(StatusWord::WRONG_LENGTH);
                    }
                    match pending {
                        Some(Pending::Unload(t)) => self.complete_online(&t, &apdu.data, true),
                        _ => Err(StatusWord::INVALID_STATE),
                    }
                }
                _ => Err(StatusWord::INCORRECT_P1P2),
            },
            0x5C => {
                let kind = PurseKind::from_p2(p2).ok_or(StatusWord::INCORRECT_P1P2)?;
                if p1 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                if !apdu.data.is_empty() {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                let ctx = self.purse_ctx()?;
                if kind == PurseKind::Passbook {
                    self.require_pin(ctx.df.index)?;
                }
                Ok(Response::ok(
                    ctx.state.of(kind).balance.to_be_bytes().to_vec(),
                ))
            }
            0x5A => {
                if p1 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                if apdu.data.len() != 2 {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                self.transaction_proof(p2, u16::from_be_bytes([apdu.data[0], apdu.data[1]]))
            }
            0xDA => {
                if !has_mac(apdu) {
                    return Err(StatusWord::SM_DATA_MISSING);
                }
                if p1 != 0 || p2 != PUT_DATA_SETTINGS {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                self.put_settings(apdu)
            }
            _ => Err(StatusWord::INS_NOT_SUPPORTED),
        }
    }

    /// The purse's DF, internal file layout, settings and state.
    fn purse_ctx(&self) -> CardResult<Ctx> {
        let df = self.current_df()?;
        let file = self
            .table
            .internal_file(&self.nvm, df.index)?
            .ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let (layout, settings, state) = self.read_purse(&file)?;
        Ok(Ctx {
            df,
            layout,
            settings,
            state,
        })
    }

    /// Reads the settings and the state from a purse's internal file.
    fn read_purse(&self, file: &Fcb) -> CardResult<(Layout, Option<PurseSettings>, PurseState)> {
        let layout = Layout::of(file)?;
        let raw = nv(self.nvm.read_vec(layout.settings, SETTINGS_LEN))?;
        let settings = if raw[0] == SETTINGS_VERSION {
            Some(PurseSettings::from_put_data(&raw[1..])?)
        } else {
            None
        };
        let state = PurseState::from_bytes(&nv(layout.state.read(&self.nvm))?)?;
        Ok((layout, settings, state))
    }

    /// The settings, required before money moves; and the application must be personalized.
    fn money_settings(ctx: &Ctx) -> CardResult<PurseSettings> {
        if ctx.df.app_state != app_state::PERSONALIZED {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        ctx.settings.ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)
    }

    /// The passbook needs the application PIN (index 0) verified: the DF's security state must
    /// be at least the state the PIN grants.
    fn require_pin(&self, df: u8) -> CardResult<()> {
        let pin = KeyFile::of(&self.table, &self.nvm, df)?
            .map(|kf| kf.find(&self.nvm, KeyType::Pin, 0))
            .transpose()?
            .flatten()
            .ok_or(StatusWord::SECURITY_STATUS_NOT_SATISFIED)?;
        if self.security_of(df) < (pin.grants & 0x0F).max(1) {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        Ok(())
    }

    /// A purse key of the application by type and index (`9403` when absent, `6982` when its
    /// use condition is not met).
    fn purse_key(&self, df: u8, key_type: KeyType, index: u8) -> CardResult<Option<KeyRecord>> {
        let Some(kf) = KeyFile::of(&self.table, &self.nvm, df)? else {
            return Ok(None);
        };
        let Some(key) = kf.find(&self.nvm, key_type, index)? else {
            return Ok(None);
        };
        if !key.use_ac.allows(self.security_of(df)) {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        Ok(Some(key))
    }

    /// The DTK for a transaction made with key index `index`: the TAC key of the same index,
    /// else the one of index 00.
    fn tac_key_for(&self, df: u8, index: u8) -> CardResult<SessionKey> {
        let dtk = match self.purse_key(df, KeyType::Tac, index)? {
            Some(k) => k,
            None => self
                .purse_key(df, KeyType::Tac, 0)?
                .ok_or(StatusWord::KEY_INDEX_NOT_FOUND)?,
        };
        Ok(tac_key(alg_of(&dtk)?, &*dtk.key16()?))
    }

    /// The key of an online transaction: the load key, or for an unload the unload key of that
    /// index (the load key of that index when the application has no unload key).
    fn online_key(&self, df: u8, unload: bool, index: u8) -> CardResult<KeyRecord> {
        if unload {
            if let Some(k) = self.purse_key(df, KeyType::Unload, index)? {
                return Ok(k);
            }
        }
        self.purse_key(df, KeyType::Load, index)?
            .ok_or(StatusWord::KEY_INDEX_NOT_FOUND)
    }

    /// INITIALIZE FOR LOAD (`unload` false) and INITIALIZE FOR UNLOAD (`unload` true).
    fn initialize_online(
        &mut self,
        kind: PurseKind,
        init: &InitData,
        unload: bool,
    ) -> CardResult<Response> {
        let ctx = self.purse_ctx()?;
        let df = ctx.df.index;
        if kind == PurseKind::Passbook {
            self.require_pin(df)?;
        }
        let key = self.online_key(df, unload, init.key_index)?;
        self.tac_key_for(df, init.key_index)?;
        let settings = Self::money_settings(&ctx)?;
        let current = *ctx.state.of(kind);
        if unload {
            if init.amount > current.balance {
                return Err(StatusWord::INSUFFICIENT_BALANCE);
            }
        } else {
            match current.balance.checked_add(init.amount) {
                Some(b) if b <= settings.max_balance => {}
                _ => return Err(StatusWord::CONDITIONS_NOT_SATISFIED),
            }
        }
        if current.online_serial == u16::MAX {
            return Err(StatusWord::TRANSACTION_COUNTER_MAX);
        }
        let tx_type = if unload {
            kind.unload_type()
        } else {
            kind.load_type()
        };
        let mut random = [0u8; 4];
        self.random(&mut random);
        let sk = online_session_key(&key, &random, current.online_serial)?;
        let mac1 = pboc_mac(
            &sk,
            &concat(&[
                &current.balance.to_be_bytes(),
                &init.amount.to_be_bytes(),
                &[tx_type],
                &init.terminal_id,
            ]),
        );
        let out = concat(&[
            &current.balance.to_be_bytes(),
            &current.online_serial.to_be_bytes(),
            &[key.version, key.alg],
            &random,
            &mac1,
        ]);
        let t = Online {
            kind,
            key_type: key.key_type,
            key_index: init.key_index,
            tx_type,
            amount: init.amount,
            terminal_id: init.terminal_id,
            balance: current.balance,
            serial: current.online_serial,
            random,
        };
        self.v.app.purse.pending = Some(if unload {
            Pending::Unload(t)
        } else {
            Pending::Load(t)
        });
        Ok(Response::ok(out))
    }

    /// CREDIT FOR LOAD (`unload` false: data = date ‖ time ‖ MAC2, answer TAC) and DEBIT FOR
    /// UNLOAD (`unload` true: same data, answer MAC3 ‖ TAC).
    fn complete_online(&mut self, t: &Online, data: &[u8], unload: bool) -> CardResult<Response> {
        let ctx = self.purse_ctx()?;
        let df = ctx.df.index;
        let settings = Self::money_settings(&ctx)?;
        let current = *ctx.state.of(t.kind);
        if current.balance != t.balance || current.online_serial != t.serial {
            return Err(StatusWord::INVALID_STATE);
        }
        let key = self
            .purse_key(df, t.key_type, t.key_index)?
            .ok_or(StatusWord::KEY_INDEX_NOT_FOUND)?;
        let tac_key = self.tac_key_for(df, t.key_index)?;
        let (date_time, mac2) = data.split_at(7);
        let sk = online_session_key(&key, &t.random, t.serial)?;
        let amount = t.amount.to_be_bytes();
        let expected = pboc_mac(
            &sk,
            &concat(&[&amount, &[t.tx_type], &t.terminal_id, date_time]),
        );
        if !ct_eq(&expected, mac2) {
            return Err(self.purse_mac_failed(&ctx, settings));
        }
        let new_balance = if unload {
            current.balance.checked_sub(t.amount)
        } else {
            current
                .balance
                .checked_add(t.amount)
                .filter(|b| *b <= settings.max_balance)
        }
        .ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let proof_input = concat(&[
            &new_balance.to_be_bytes(),
            &t.serial.to_be_bytes(),
            &amount,
            &[t.tx_type],
            &t.terminal_id,
            date_time,
        ]);
        let tac = pboc_mac(&tac_key, &proof_input);
        // Unload: MAC3 proves the debit to the host (project-defined, see docs/COS.md).
        let mac = if unload {
            pboc_mac(&sk, &proof_input)
        } else {
            let mut m = [0u8; 4];
            m.copy_from_slice(mac2);
            m
        };
        let mut state = ctx.state;
        let b = state.of_mut(t.kind);
        b.balance = new_balance;
        b.online_serial = t.serial + 1;
        state.mac_failures = 0;
        state.online_proof = Proof {
            tx_type: t.tx_type,
            serial: t.serial,
            mac,
            tac,
        };
        self.stage_transaction(
            &ctx,
            &state,
            &concat(&[
                &t.serial.to_be_bytes(),
                &[0, 0, 0],
                &amount,
                &[t.tx_type],
                &t.terminal_id,
                date_time,
            ]),
        )?;
        Ok(Response::ok(if unload {
            concat(&[&mac, &tac])
        } else {
            tac.to_vec()
        }))
    }

    /// INITIALIZE FOR PURCHASE.
    fn initialize_purchase(&mut self, kind: PurseKind, init: &InitData) -> CardResult<Response> {
        let ctx = self.purse_ctx()?;
        let df = ctx.df.index;
        if kind == PurseKind::Passbook {
            self.require_pin(df)?;
        }
        let key = self
            .purse_key(df, KeyType::Purchase, init.key_index)?
            .ok_or(StatusWord::KEY_INDEX_NOT_FOUND)?;
        self.tac_key_for(df, init.key_index)?;
        let settings = Self::money_settings(&ctx)?;
        let current = *ctx.state.of(kind);
        if init.amount > current.balance {
            return Err(StatusWord::INSUFFICIENT_BALANCE);
        }
        if init.amount > settings.purchase_limit {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        if current.offline_serial == u16::MAX {
            return Err(StatusWord::TRANSACTION_COUNTER_MAX);
        }
        let mut random = [0u8; 4];
        self.random(&mut random);
        // No overdraft on this card: the overdraft limit is always zero.
        let out = concat(&[
            &current.balance.to_be_bytes(),
            &current.offline_serial.to_be_bytes(),
            &[0, 0, 0],
            &[key.version, key.alg],
            &random,
        ]);
        self.v.app.purse.pending = Some(Pending::Purchase(Offline {
            kind,
            key_index: init.key_index,
            amount: init.amount,
            terminal_id: init.terminal_id,
            balance: current.balance,
            serial: current.offline_serial,
            random,
        }));
        Ok(Response::ok(out))
    }

    /// DEBIT FOR PURCHASE: data = terminal serial(4) ‖ date(4) ‖ time(3) ‖ MAC1(4); answers
    /// TAC ‖ MAC2.
    fn debit_for_purchase(&mut self, t: &Offline, data: &[u8]) -> CardResult<Response> {
        let ctx = self.purse_ctx()?;
        let df = ctx.df.index;
        let settings = Self::money_settings(&ctx)?;
        let current = *ctx.state.of(t.kind);
        if current.balance != t.balance || current.offline_serial != t.serial {
            return Err(StatusWord::INVALID_STATE);
        }
        let key = self
            .purse_key(df, KeyType::Purchase, t.key_index)?
            .ok_or(StatusWord::KEY_INDEX_NOT_FOUND)?;
        let tac_key = self.tac_key_for(df, t.key_index)?;
        let terminal_serial = &data[0..4];
        let date = &data[4..8];
        let date_time = &data[4..11];
        let mac1 = &data[11..15];
        let mut input = [0u8; 8];
        input[..4].copy_from_slice(&t.random);
        input[4..6].copy_from_slice(&t.serial.to_be_bytes());
        input[6..8].copy_from_slice(&terminal_serial[2..4]);
        let sk = session_key(alg_of(&key)?, &*key.key16()?, &input);
        let amount = t.amount.to_be_bytes();
        let tx_type = t.kind.purchase_type();
        let expected = pboc_mac(
            &sk,
            &concat(&[&amount, &[tx_type], &t.terminal_id, date_time]),
        );
        if !ct_eq(&expected, mac1) {
            return Err(self.purse_mac_failed(&ctx, settings));
        }
        let new_balance = current
            .balance
            .checked_sub(t.amount)
            .ok_or(StatusWord::INSUFFICIENT_BALANCE)?;
        if t.amount > settings.purchase_limit {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        // The day's offline total restarts only when the terminal date is later than the day
        // it was counted on (BCD YYYYMMDD compares like the date). A purchase dated earlier
        // counts against the latest day: a terminal whose clock moves back and forth cannot
        // earn a fresh limit with every purchase.
        let later = date > &ctx.state.offline_date[..];
        let day_total = if later { 0 } else { ctx.state.offline_total };
        let day_total = day_total
            .checked_add(t.amount)
            .filter(|total| *total <= settings.daily_limit)
            .ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let mac2 = pboc_mac(&sk, &amount);
        let tac = pboc_mac(
            &tac_key,
            &concat(&[
                &amount,
                &[tx_type],
                &t.terminal_id,
                terminal_serial,
                date_time,
            ]),
        );
        let mut state = ctx.state;
        let b = state.of_mut(t.kind);
        b.balance = new_balance;
        b.offline_serial = t.serial + 1;
        state.mac_failures = 0;
        if later {
            state.offline_date.copy_from_slice(date);
        }
        state.offline_total = day_total;
        state.offline_proof = Proof {
            tx_type,
            serial: t.serial,
            mac: mac2,
            tac,
        };
        self.stage_transaction(
            &ctx,
            &state,
            &concat(&[
                &t.serial.to_be_bytes(),
                &[0, 0, 0],
                &amount,
                &[tx_type],
                &t.terminal_id,
                date_time,
            ]),
        )?;
        Ok(Response::ok(concat(&[&tac, &mac2])))
    }

    /// Stages a completed transaction: the new state and the log record. The card loop
    /// commits both in one NVM transaction when the handler returns.
    fn stage_transaction(
        &mut self,
        ctx: &Ctx,
        state: &PurseState,
        record: &[u8],
    ) -> CardResult<()> {
        debug_assert_eq!(record.len(), LOG_RECORD_LEN);
        nv(ctx.layout.state.write(&mut self.nvm, &state.to_bytes()))?;
        if let Some(log) = self.table.child_by_sfi(&self.nvm, ctx.df.index, SFI_LOG)? {
            if log.kind == FileKind::Cyclic && log.record_len as usize == LOG_RECORD_LEN {
                crate::files::append(&self.table, &mut self.nvm, &log, record)?;
            }
        }
        Ok(())
    }

    /// A wrong MAC: counts it in the purse state and on the card's attack counter, locks the
    /// application for good at the limit, and commits all of it before the answer. Returns the
    /// status word to answer (`9302`, or the memory error if the commit failed).
    fn purse_mac_failed(&mut self, ctx: &Ctx, settings: PurseSettings) -> StatusWord {
        let mut state = ctx.state;
        state.mac_failures = state.mac_failures.saturating_add(1);
        if let Err(sw) = nv(ctx.layout.state.write(&mut self.nvm, &state.to_bytes())) {
            return sw;
        }
        if state.mac_failures >= settings.mac_failure_limit {
            let mut df = ctx.df.clone();
            df.app_state = app_state::LOCKED_PERMANENTLY;
            if let Err(sw) = self.table.put(&mut self.nvm, &df) {
                return sw;
            }
        }
        // record_failure commits the staged counter and lock with the attack counter.
        match self.record_failure() {
            Ok(()) => StatusWord::MAC_INVALID,
            Err(sw) => sw,
        }
    }

    /// GET TRANSACTION PROOF: the MAC and TAC of the last transaction of type `tx_type`, when
    /// `serial` is the serial that transaction used.
    fn transaction_proof(&mut self, wanted: u8, serial: u16) -> CardResult<Response> {
        use self::tx_type as T;
        if ![
            T::ED_LOAD,
            T::EP_LOAD,
            T::ED_UNLOAD,
            T::EP_UNLOAD,
            T::ED_PURCHASE,
            T::EP_PURCHASE,
        ]
        .contains(&wanted)
        {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let ctx = self.purse_ctx()?;
        [ctx.state.online_proof, ctx.state.offline_proof]
            .into_iter()
            .find(|p| p.tx_type == wanted && p.serial == serial)
            .map(|p| Response::ok(concat(&[&p.mac, &p.tac])))
            .ok_or(StatusWord::MAC_NOT_AVAILABLE)
    }

    /// PUT DATA purse settings, under secure messaging with the application's maintenance key.
    fn put_settings(&mut self, apdu: &Apdu) -> CardResult<Response> {
        let df = self.current_df()?;
        let file = self
            .table
            .internal_file(&self.nvm, df.index)?
            .ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let layout = Layout::of(&file)?;
        let key = self.maintenance_key(df.index)?;
        let payload = self.verify_command_mac(apdu, &key)?;
        let settings = PurseSettings::from_put_data(&payload)?;
        let mut stored = [0u8; SETTINGS_LEN];
        stored[0] = SETTINGS_VERSION;
        stored[1..].copy_from_slice(&settings.to_put_data());
        nv(self.nvm.write(layout.settings, &stored))?;
        Ok(Response::sw(StatusWord::OK))
    }

    /// The settings (None until PUT DATA wrote them) and the state of the purse application
    /// with DF name `aid`, read without a command (for `card info`, tests and tools). None when
    /// no DF has that name or it has no internal file.
    pub fn purse_state(
        &self,
        aid: &[u8],
    ) -> CardResult<Option<(Option<PurseSettings>, PurseState)>> {
        let Some(df) = self
            .table
            .df_by_name(&self.nvm, aid)?
            .filter(|df| df.name == aid)
        else {
            return Ok(None);
        };
        let Some(file) = self.table.internal_file(&self.nvm, df.index)? else {
            return Ok(None);
        };
        let (_, settings, state) = self.read_purse(&file)?;
        Ok(Some((settings, state)))
    }
}
