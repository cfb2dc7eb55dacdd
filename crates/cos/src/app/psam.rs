//! The PSAM application: the purchase security module of an offline terminal, a second card
//! profile on the same card OS (DESIGN §4, PBOC PSAM conventions).
//!
//! A PSAM holds the issuer's purchase master keys and never lets one out. For each purchase it
//! derives the card's purchase key (DPK) from the card's diversification data, allocates the next
//! *terminal transaction serial*, derives the purchase session key and answers MAC1; then it
//! checks the card's MAC2.
//!
//! Files the PSAM uses (see `docs/COS.md`, "PSAM"):
//! - the terminal id: a transparent EF with SFI `16` (6 bytes), in the PSAM ADF or, as on PBOC
//!   PSAMs, in the MF;
//! - its key file: keys of type [`KeyType::PsamPurchaseMaster`], found by the key version and
//!   algorithm id the card announced in INITIALIZE FOR PURCHASE (not by index: the terminal
//!   only knows what the card told it);
//! - its internal file: the last terminal transaction serial (4 bytes, big-endian), kept as a
//!   wear-levelled [`HotRecord`] inside the file's body.
//!
//! Commands (CLA `80`):
//! - MAC1 generation `80 70 00 00 1C|24`: card random(4) ‖ card offline serial(2) ‖ amount(4) ‖
//!   transaction type(1) ‖ date(4) ‖ time(3) ‖ key version(1) ‖ algorithm id(1) ‖ card
//!   diversification data(8) [‖ issuer factor(8)]. Answers terminal transaction serial(4) ‖
//!   MAC1(4). With the issuer factor the card key is two levels deep:
//!   `DPK = diversify(diversify(MPK, issuer factor), card data)`.
//! - MAC2 verification `80 72 00 00 04 MAC2`: checks the card's MAC2 against the session the
//!   last MAC1 opened. `9302` when it is wrong, `6901` without a MAC1 before it.
//!
//! Anti-tearing: the new serial is committed to the NVM *before* the session key and MAC1 are
//! even computed. A power cut can burn a serial but never lets two MAC1s share one.

use crate::card::Card;
use crate::fs::{app_state, CardResult, Fcb};
use crate::keys::{KeyFile, KeyType};
use crate::nvm::{Eeprom, HotRecord, PAGE_SIZE};
use crate::platform::RandomSource;
use iccard_apdu::{Command as Apdu, Response, StatusWord};
use iccard_crypto::{ct_eq, diversify, pboc_mac, session_key, PurseAlg, SessionKey};

/// SFI of the terminal id file (6 bytes).
pub const SFI_TERMINAL_ID: u8 = 0x16;
/// Length of a terminal id.
pub const TERMINAL_ID_LEN: usize = 6;
/// MAC1 command data with one diversification level (card data only).
pub const MAC1_DATA_ONE_LEVEL: usize = 0x1C;
/// MAC1 command data with two levels (card data, then the issuer factor applied first).
pub const MAC1_DATA_TWO_LEVELS: usize = 0x24;
/// Transaction types a PSAM computes MAC1 for: passbook purchase (05), purse purchase (06)
/// and compound purchase (09).
pub const PURCHASE_TYPES: [u8; 3] = [0x05, 0x06, 0x09];
/// Length of the terminal transaction serial record.
const SERIAL_LEN: u16 = 4;

/// The PSAM's volatile state: the purchase whose MAC1 it computed, waiting for the card's MAC2.
/// Cleared on reset, on DF change, by any non-PSAM command (the card loop), by the next MAC1
/// and by the MAC2 verification (good or bad).
#[derive(Default, Clone)]
pub struct PsamSession {
    purchase: Option<PsamPurchase>,
}

impl std::fmt::Debug for PsamSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PsamSession")
            .field(
                "terminal_serial",
                &self.purchase.as_ref().map(|p| p.terminal_serial),
            )
            .finish()
    }
}

/// One purchase between MAC1 and MAC2: the session key (zeroized on drop by its type) and
/// the amount MAC2 covers.
#[derive(Clone)]
struct PsamPurchase {
    sespk: SessionKey,
    amount: [u8; 4],
    terminal_serial: u32,
}

/// MAC1 generation command data, parsed.
struct Mac1Request {
    random: [u8; 4],
    offline_serial: [u8; 2],
    amount: [u8; 4],
    transaction_type: u8,
    date: [u8; 4],
    time: [u8; 3],
    key_version: u8,
    alg_id: u8,
    card_factor: [u8; 8],
    issuer_factor: Option<[u8; 8]>,
}

impl Mac1Request {
    fn parse(d: &[u8]) -> CardResult<Self> {
        if d.len() != MAC1_DATA_ONE_LEVEL && d.len() != MAC1_DATA_TWO_LEVELS {
            return Err(StatusWord::WRONG_LENGTH);
        }
        let take = |from: usize, to: usize| &d[from..to];
        let arr4 = |s: &[u8]| [s[0], s[1], s[2], s[3]];
        let arr8 = |s: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            a
        };
        Ok(Self {
            random: arr4(take(0, 4)),
            offline_serial: [d[4], d[5]],
            amount: arr4(take(6, 10)),
            transaction_type: d[10],
            date: arr4(take(11, 15)),
            time: [d[15], d[16], d[17]],
            key_version: d[18],
            alg_id: d[19],
            card_factor: arr8(take(20, 28)),
            issuer_factor: (d.len() == MAC1_DATA_TWO_LEVELS).then(|| arr8(take(28, 36))),
        })
    }
}

/// Where the terminal transaction serial lives inside the PSAM's internal file: a hot record
/// starting at the first page boundary of the body, with as many slots as the body holds.
fn serial_record(file: &Fcb) -> CardResult<HotRecord> {
    let body = file.body as usize;
    let end = body + file.size as usize;
    let addr = body.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let one = HotRecord::footprint(1, SERIAL_LEN);
    if addr + one > end {
        // Too small to align: one slot at the start of the body still works.
        if body + one > end {
            return Err(StatusWord::MEMORY_FAILURE);
        }
        return Ok(HotRecord {
            addr: body,
            slots: 1,
            len: SERIAL_LEN,
        });
    }
    let room = end - addr - one;
    let slots = 1 + room / HotRecord::stride(SERIAL_LEN);
    Ok(HotRecord {
        addr,
        slots: slots.min(u16::MAX as usize) as u16,
        len: SERIAL_LEN,
    })
}

impl<E: Eeprom, R: RandomSource> Card<E, R> {
    /// PSAM commands (CLA 80).
    pub(crate) fn psam_command(&mut self, apdu: &Apdu) -> CardResult<Response> {
        match (apdu.cla, apdu.ins) {
            (0x80, 0x70) => self.psam_mac1(apdu),
            (0x80, 0x72) => self.psam_mac2(apdu),
            (_, 0x70 | 0x72) => Err(StatusWord::CLA_NOT_SUPPORTED),
            _ => Err(StatusWord::INS_NOT_SUPPORTED),
        }
    }

    /// The terminal id: SFI 16 in the PSAM ADF, else in the MF.
    fn psam_terminal_id(&self, df: u8) -> CardResult<[u8; TERMINAL_ID_LEN]> {
        let file = match self.table.child_by_sfi(&self.nvm, df, SFI_TERMINAL_ID)? {
            Some(f) => Some(f),
            None => self.table.child_by_sfi(&self.nvm, 0, SFI_TERMINAL_ID)?,
        };
        // No terminal id: the PSAM is not personalized.
        let file = file.ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let bytes = self.file_bytes(&file)?;
        if bytes.len() < TERMINAL_ID_LEN {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let mut id = [0u8; TERMINAL_ID_LEN];
        id.copy_from_slice(&bytes[..TERMINAL_ID_LEN]);
        Ok(id)
    }

    /// MAC1 generation `80 70 00 00 1C|24` (see the module doc).
    fn psam_mac1(&mut self, apdu: &Apdu) -> CardResult<Response> {
        // Whatever happens next, an older session is void.
        self.v.app.psam = PsamSession::default();
        if apdu.p1 != 0 || apdu.p2 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let req = Mac1Request::parse(&apdu.data)?;
        let df = self.current_df()?;
        if df.app_state != app_state::PERSONALIZED {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        if !PURCHASE_TYPES.contains(&req.transaction_type) {
            return Err(StatusWord::WRONG_DATA);
        }
        let alg = PurseAlg::from_id(req.alg_id).ok_or(StatusWord::KEY_INDEX_NOT_FOUND)?;
        let master = KeyFile::of(&self.table, &self.nvm, df.index)?
            .ok_or(StatusWord::KEY_INDEX_NOT_FOUND)?
            .keys(&self.nvm)?
            .into_iter()
            .find(|k| {
                k.key_type == KeyType::PsamPurchaseMaster
                    && k.version == req.key_version
                    && k.alg == req.alg_id
            })
            .ok_or(StatusWord::KEY_INDEX_NOT_FOUND)?;
        if master.is_blocked() {
            return Err(StatusWord::AUTH_METHOD_BLOCKED);
        }
        if !master.use_ac.allows(self.security_of(df.index)) {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        let terminal_id = self.psam_terminal_id(df.index)?;
        let serial_file = self
            .table
            .internal_file(&self.nvm, df.index)?
            .ok_or(StatusWord::CONDITIONS_NOT_SATISFIED)?;
        let record = serial_record(&serial_file)?;

        // Allocate the terminal transaction serial and commit it before anything is computed
        // with it: MAC1 never exists for a serial the card could hand out again.
        let last = record
            .read(&self.nvm)
            .map_err(|_| StatusWord::MEMORY_FAILURE)?;
        let last = u32::from_be_bytes([last[0], last[1], last[2], last[3]]);
        let serial = last
            .checked_add(1)
            .ok_or(StatusWord::TRANSACTION_COUNTER_MAX)?;
        record
            .write(&mut self.nvm, &serial.to_be_bytes())
            .map_err(|_| StatusWord::MEMORY_FAILURE)?;
        self.commit()?;

        let key = master.key16()?;
        let dpk = match req.issuer_factor {
            Some(issuer) => {
                let level1 = diversify(alg, &key, &issuer);
                diversify(alg, &level1, &req.card_factor)
            }
            None => diversify(alg, &key, &req.card_factor),
        };
        let serial_bytes = serial.to_be_bytes();
        let mut input = [0u8; 8];
        input[..4].copy_from_slice(&req.random);
        input[4..6].copy_from_slice(&req.offline_serial);
        input[6..].copy_from_slice(&serial_bytes[2..]);
        let sespk = session_key(alg, &dpk, &input);
        let mut mac_input = Vec::with_capacity(18);
        mac_input.extend_from_slice(&req.amount);
        mac_input.push(req.transaction_type);
        mac_input.extend_from_slice(&terminal_id);
        mac_input.extend_from_slice(&req.date);
        mac_input.extend_from_slice(&req.time);
        let mac1 = pboc_mac(&sespk, &mac_input);
        self.v.app.psam = PsamSession {
            purchase: Some(PsamPurchase {
                sespk,
                amount: req.amount,
                terminal_serial: serial,
            }),
        };
        let mut out = serial_bytes.to_vec();
        out.extend_from_slice(&mac1);
        Ok(Response::ok(out))
    }

    /// MAC2 verification `80 72 00 00 04 MAC2`: MAC2 = MAC(SESPK, amount).
    fn psam_mac2(&mut self, apdu: &Apdu) -> CardResult<Response> {
        if apdu.p1 != 0 || apdu.p2 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        if apdu.data.len() != 4 {
            return Err(StatusWord::WRONG_LENGTH);
        }
        // One verification per MAC1, right or wrong: a wrong MAC2 cannot be retried.
        let purchase = self
            .v
            .app
            .psam
            .purchase
            .take()
            .ok_or(StatusWord::INVALID_STATE)?;
        let expected = pboc_mac(&purchase.sespk, &purchase.amount);
        if ct_eq(&expected, &apdu.data) {
            Ok(Response::sw(StatusWord::OK))
        } else {
            Err(StatusWord::MAC_INVALID)
        }
    }
}
