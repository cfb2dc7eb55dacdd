//! Personalization: a blank card (OP_READY, transport key) becomes a personal card, through the
//! same APDUs a personalization machine sends.
//!
//! The script, in order (each step checked for 9000):
//! 1. SELECT MF; EXTERNAL AUTHENTICATE with the transport key.
//! 2. WRITE KEY the card master key (replaces the transport key), encrypted and MACed under the
//!    transport key; re-authenticate with it.
//! 3. Card-level files: EF.DIR (SFI 01, the application list) and EF.ICC (SFI 05, card number).
//! 4. The access-control application area ([`ACCESS_AID`]): key file, keys written under secure
//!    messaging, PIN, and its files (access rights readable only after a terminal authenticates).
//! 5. The purse application ([`PURSE_AID`], FID 1001): key file (master, maintenance DAMK,
//!    purchase DPK and load DLK with index 01, TAC key DTK index 00, PIN unblock and reload
//!    keys, PIN), the public application file (SFI 15), the holder file (SFI 16), the
//!    transaction log (SFI 18), the internal state file, and the purse settings (maximum
//!    balance, offline limits, MAC-failure limit) by PUT DATA under the maintenance key.
//! 6. SET STATUS: the applications PERSONALIZED, the card SECURED.
//!
//! Card keys are diversified from the development master keys by the rightmost 8 bytes of the
//! application serial (the card number as 10-byte BCD).

use crate::devkeys;
use crate::keys::{DevIssuerKeys, IssuerKeys};
use crate::script::{key, Admin, FileSpec, ScriptError};
use iccard_apdu::{bcd, tlv, Command as Apdu};
use iccard_cos::app::purse::{self, PurseSettings, PURSE_FID};
use iccard_cos::fs::{app_state, AppKind};
use iccard_cos::keys::{alg, KeyType};
use iccard_cos::MF_ADMIN_STATE;
use iccard_crypto::PurseAlg;
use iccard_link::CardChannel;
use zeroize::Zeroizing;

/// DF name of the access-control application area (proprietary RID F0, "ICCARD", 01).
pub const ACCESS_AID: &[u8] = &[0xF0, b'I', b'C', b'C', b'A', b'R', b'D', 0x01];
/// FID of the access-control application area.
pub const ACCESS_FID: u16 = 0x1002;
/// Security state a verified PIN grants in an application.
pub const PIN_STATE: u8 = 0x01;
/// Security state a terminal's EXTERNAL AUTHENTICATE grants in the access application.
pub const TERMINAL_STATE: u8 = 0x02;
/// Security state the application master key grants.
pub const APP_ADMIN_STATE: u8 = 0x0F;
/// PIN tries.
pub const PIN_TRIES: u8 = 3;
/// Index of the door/phone terminal key in the access application.
pub const TERMINAL_KEY_INDEX: u8 = 0x01;
/// DF name of the purse application.
pub const PURSE_AID: &[u8] = &purse::PURSE_AID;
/// Index of the purse's load key (DLK) and purchase key (DPK).
pub const PURSE_KEY_INDEX: u8 = 0x01;
/// Index of the purse's TAC key (DTK): the card takes the DTK of the transaction key's index,
/// else the one of index 00.
pub const TAC_KEY_INDEX: u8 = 0x00;
/// Version of the purse keys written at personalization (INITIALIZE answers it).
pub const PURSE_KEY_VERSION: u8 = 0x01;
/// Application type byte of the public application file: ED and EP (PBOC `03`).
pub const PURSE_APP_TYPE: u8 = 0x03;
/// Application version byte of the public application file.
pub const PURSE_APP_VERSION: u8 = 0x01;
/// Size of the purse's holder file (SFI 16): name (20) ‖ id number (18) ‖ id type (1) ‖
/// holder type (1), written by the issuer later.
pub const HOLDER_FILE_LEN: u16 = 40;

/// What the purse application gets at personalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurseProfile {
    /// Issuer identifier (8 bytes) in the public application file.
    pub issuer_id: [u8; 8],
    /// Start of validity, BCD YYYYMMDD.
    pub start_date: [u8; 4],
    /// End of validity, BCD YYYYMMDD.
    pub expiry_date: [u8; 4],
    /// Limits and the MAC-failure limit, stored on the card.
    pub settings: PurseSettings,
    /// Records of the cyclic transaction log.
    pub log_records: u8,
    /// Slots the wear-levelled purse state rotates over.
    pub state_slots: u16,
}

/// Default maximum balance: 10,000.00 yuan (1,000,000 fen).
pub const DEFAULT_MAX_BALANCE: u32 = 1_000_000;
/// Default per-purchase offline limit: 1,000.00 yuan.
pub const DEFAULT_PURCHASE_LIMIT: u32 = 100_000;
/// Default daily offline limit: 2,000.00 yuan.
pub const DEFAULT_DAILY_LIMIT: u32 = 200_000;
/// Default number of consecutive MAC failures that lock the purse for good.
pub const DEFAULT_MAC_FAILURE_LIMIT: u8 = 3;
/// Default issuer identifier: BCD `8860000000000000`.
pub const DEFAULT_ISSUER_ID: [u8; 8] = [0x88, 0x60, 0, 0, 0, 0, 0, 0];

impl Default for PurseProfile {
    /// The default limits, valid from today (host clock) for ten years.
    fn default() -> Self {
        let days = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() / 86_400)
            .unwrap_or(0);
        let start_date = crate::manufacture::bcd_date_from_unix_days(days as i64);
        Self {
            issuer_id: DEFAULT_ISSUER_ID,
            start_date,
            expiry_date: add_years(start_date, 10),
            settings: PurseSettings {
                max_balance: DEFAULT_MAX_BALANCE,
                purchase_limit: DEFAULT_PURCHASE_LIMIT,
                daily_limit: DEFAULT_DAILY_LIMIT,
                mac_failure_limit: DEFAULT_MAC_FAILURE_LIMIT,
            },
            log_records: 10,
            state_slots: 8,
        }
    }
}

/// A BCD YYYYMMDD date `years` later (29 February becomes 28 February).
pub fn add_years(date: [u8; 4], years: u16) -> [u8; 4] {
    let digits = bcd::decode(&date).unwrap_or_default();
    let (Ok(year), Some(month_day)) = (
        digits.get(..4).unwrap_or("").parse::<u16>(),
        digits.get(4..8),
    ) else {
        return date;
    };
    let month_day = if month_day == "0229" {
        "0228"
    } else {
        month_day
    };
    let shifted = format!("{:04}{month_day}", (year + years).min(9999));
    match bcd::encode_digits(&shifted, 4) {
        Ok(v) => [v[0], v[1], v[2], v[3]],
        Err(_) => date,
    }
}

/// What to personalize.
#[derive(Clone)]
pub struct Personalization {
    /// Card number: up to 20 decimal digits.
    pub card_number: String,
    /// The holder's PIN: decimal digits.
    pub pin: Zeroizing<String>,
    /// Key algorithm of the applications.
    pub alg: PurseAlg,
    /// The purse application's settings and public data.
    pub purse: PurseProfile,
}

impl Personalization {
    /// A personalization with the default purse profile.
    pub fn new(card_number: &str, pin: &str, alg: PurseAlg) -> Self {
        Self {
            card_number: card_number.into(),
            pin: Zeroizing::new(pin.into()),
            alg,
            purse: PurseProfile::default(),
        }
    }
}

/// Card-number checks and encodings.
pub struct CardNumber;

impl CardNumber {
    /// The 10-byte BCD application serial, left-padded with zeros.
    pub fn serial(card_number: &str) -> Result<[u8; 10], ScriptError> {
        if card_number.is_empty()
            || card_number.len() > 20
            || !card_number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ScriptError::Invalid(format!(
                "card number must be 1 to 20 decimal digits, got {card_number:?}"
            )));
        }
        let v =
            bcd::encode_digits(card_number, 10).map_err(|e| ScriptError::Invalid(e.to_string()))?;
        let mut out = [0u8; 10];
        out.copy_from_slice(&v);
        Ok(out)
    }

    /// The diversification data: the rightmost 8 bytes of the application serial.
    pub fn diversifier(serial: &[u8; 10]) -> [u8; 8] {
        let mut d = [0u8; 8];
        d.copy_from_slice(&serial[2..]);
        d
    }
}

/// Key algorithm byte stored on the card for a purse algorithm generation.
pub fn alg_byte(a: PurseAlg) -> u8 {
    match a {
        PurseAlg::TripleDes => alg::TDES,
        PurseAlg::Sm4 => alg::SM4,
    }
}

/// Which part of the card a key belongs to. Keys of different domains are diversified from
/// different data (D XOR a domain constant), so no key of one application or of the card
/// level opens another, even where the development set has one master for several roles.
/// The purse keeps the PBOC diversification (D itself): terminals and PSAMs derive its keys
/// from D alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// The MF: card master key and card-level maintenance key.
    Card,
    /// The electronic purse (PBOC: plain D).
    Purse,
    /// The access-control application.
    Access,
    /// The access terminals' authentication key.
    AccessTerminal,
}

impl Domain {
    /// The 8-byte constant XORed into D ("MF", 0, "AC", "AT" in the first two bytes).
    pub fn constant(self) -> [u8; 8] {
        let tag: [u8; 2] = match self {
            Domain::Card => *b"MF",
            Domain::Purse => [0, 0],
            Domain::Access => *b"AC",
            Domain::AccessTerminal => *b"AT",
        };
        [tag[0], tag[1], 0, 0, 0, 0, 0, 0]
    }

    /// The diversification data of this domain for card data D.
    pub fn data(self, d: &[u8; 8]) -> [u8; 8] {
        let c = self.constant();
        std::array::from_fn(|i| d[i] ^ c[i])
    }
}

/// A card key of a domain, diversified from a development master key.
pub fn domain_key(
    master: &devkeys::DevKey,
    a: PurseAlg,
    d: &[u8; 8],
    domain: Domain,
) -> Zeroizing<[u8; 16]> {
    card_key(master, a, &domain.data(d))
}

/// The card-level maintenance key: MACs updates of the MF's files (EF.ICC, a PSAM's terminal
/// id), so that bad MACs there can never wear out the card master key.
pub fn mf_maintenance_key(d: &[u8; 8]) -> Zeroizing<[u8; 16]> {
    domain_key(&devkeys::MAMK, PurseAlg::TripleDes, d, Domain::Card)
}

/// A card key diversified from a development master key.
pub fn card_key(master: &devkeys::DevKey, a: PurseAlg, d: &[u8; 8]) -> Zeroizing<[u8; 16]> {
    let k = iccard_crypto::diversify(a, &master.value(), d);
    Zeroizing::new(*k)
}

/// The PIN as stored and as VERIFY carries it (packed BCD, F-padded when odd).
pub fn pin_bytes(pin: &str) -> Result<Zeroizing<Vec<u8>>, ScriptError> {
    if !(4..=12).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ScriptError::Invalid(
            "the PIN must be 4 to 12 decimal digits".into(),
        ));
    }
    bcd::encode_pin(pin)
        .map(Zeroizing::new)
        .map_err(|e| ScriptError::Invalid(e.to_string()))
}

/// Authenticates at the MF with the transport key and replaces it with the card master key.
/// Returns the card master key.
pub fn take_ownership<C: CardChannel>(
    admin: &mut Admin<C>,
    chip_serial: &[u8; 8],
    d: &[u8; 8],
) -> Result<Zeroizing<[u8; 16]>, ScriptError> {
    take_ownership_with(admin, chip_serial, d, &DevIssuerKeys)
}

/// [`take_ownership`] with the keys from `keys`.
pub fn take_ownership_with<C: CardChannel>(
    admin: &mut Admin<C>,
    chip_serial: &[u8; 8],
    d: &[u8; 8],
    keys: &dyn IssuerKeys,
) -> Result<Zeroizing<[u8; 16]>, ScriptError> {
    admin.select_mf()?;
    let transport = keys.derive(devkeys::TRANSPORT.name, PurseAlg::TripleDes, chip_serial)?;
    admin.external_authenticate(0, alg::TDES, &transport)?;
    // The card master key is always 3DES: it protects the card, not an application generation.
    let cmk = keyed(keys, &devkeys::MCMK, PurseAlg::TripleDes, d, Domain::Card)?;
    admin.write_key(
        alg::TDES,
        &transport,
        &key(KeyType::Master, 0, alg::TDES, &cmk[..], MF_ADMIN_STATE, 15),
    )?;
    admin.external_authenticate(0, alg::TDES, &cmk)?;
    let maintenance = keyed(keys, &devkeys::MAMK, PurseAlg::TripleDes, d, Domain::Card)?;
    admin.write_key(
        alg::TDES,
        &cmk,
        &key(KeyType::Maintenance, 0, alg::TDES, &maintenance[..], 0, 15),
    )?;
    Ok(cmk)
}

/// Reads the chip serial (GET DATA 9F7F).
pub fn chip_serial<C: CardChannel>(admin: &mut Admin<C>) -> Result<[u8; 8], ScriptError> {
    let data = admin.ok(
        "GET DATA chip data",
        &Apdu::new(0x80, 0xCA, 0x9F, 0x7F).with_ne(256),
    )?;
    let value = tlv::find(&data, 0x9F7F).ok_or(ScriptError::Malformed {
        step: "GET DATA chip data".into(),
        len: data.len(),
    })?;
    if value.len() < 10 {
        return Err(ScriptError::Malformed {
            step: "GET DATA chip data".into(),
            len: value.len(),
        });
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&value[2..10]);
    Ok(s)
}

/// Creates the card-level files under the MF (authenticated with the card master key).
fn card_level_files<C: CardChannel>(
    admin: &mut Admin<C>,
    serial: &[u8; 10],
    applications: &[(&[u8], &str)],
    keys: &dyn IssuerKeys,
) -> Result<(), ScriptError> {
    let admin_only = 0xF0 | MF_ADMIN_STATE;
    // EF.DIR: one record per application, `61 { 4F AID, 50 label }` (ISO 7816-4 §8.2.1.1).
    let records: Vec<Vec<u8>> = applications
        .iter()
        .map(|(aid, label)| {
            let mut inner = tlv::encode(0x4F, aid);
            tlv::encode_into(&mut inner, 0x50, label.as_bytes());
            tlv::encode(0x61, &inner)
        })
        .collect();
    let len = records.iter().map(Vec::len).max().unwrap_or(16).max(16) as u8;
    admin.create(
        &FileSpec::linear(0x2F00, 0x01, len, 4).access(0xF0, admin_only, admin_only, admin_only),
    )?;
    for r in records {
        let mut padded = r.clone();
        padded.resize(len as usize, 0x00);
        admin.ok(
            "APPEND RECORD EF.DIR",
            &Apdu::new(0x00, 0xE2, 0x00, 0x00).with_data(padded),
        )?;
    }
    // EF.ICC: card number (10 bytes BCD) ‖ issuer data, readable by all, updated under MAC.
    admin.create(
        &FileSpec::binary(0x0005, 0x05, 16)
            .access(0xF0, 0xF0, admin_only, admin_only)
            .update_needs_mac(),
    )?;
    admin.ok_mac(
        "UPDATE BINARY EF.ICC",
        &Apdu::new(0x00, 0xD6, 0x85, 0x00).with_data(serial.to_vec()),
        alg::TDES,
        &*keyed(
            keys,
            &devkeys::MAMK,
            PurseAlg::TripleDes,
            &CardNumber::diversifier(serial),
            Domain::Card,
        )?,
    )?;
    Ok(())
}

/// Creates and keys the access-control application area.
fn access_application<C: CardChannel>(
    admin: &mut Admin<C>,
    p: &Personalization,
    d: &[u8; 8],
    pin: &[u8],
    keys: &dyn IssuerKeys,
) -> Result<(), ScriptError> {
    let a = alg_byte(p.alg);
    let admin_state = 0xF0 | APP_ADMIN_STATE;
    admin.select_mf()?;
    // The new DF is created under the MF's authority, then keyed under the card master key
    // until its own master key exists.
    admin.create(
        &FileSpec::df(ACCESS_FID, ACCESS_AID, AppKind::Plain).access(
            0xF0,
            admin_state,
            admin_state,
            admin_state,
        ),
    )?;
    admin.create(&FileSpec::key_file(8))?;
    let cmk = keyed(keys, &devkeys::MCMK, PurseAlg::TripleDes, d, Domain::Card)?;
    let app_master = keyed(keys, &devkeys::MCMK, p.alg, d, Domain::Access)?;
    admin.write_key(
        alg::TDES,
        &cmk,
        &key(KeyType::Master, 0, a, &app_master[..], APP_ADMIN_STATE, 15),
    )?;
    let maintenance = keyed(keys, &devkeys::MAMK, p.alg, d, Domain::Access)?;
    let terminal = keyed(keys, &devkeys::MAMK, p.alg, d, Domain::AccessTerminal)?;
    let unblock = keyed(keys, &devkeys::MPUK, p.alg, d, Domain::Access)?;
    let reload = keyed(keys, &devkeys::MRPK, p.alg, d, Domain::Access)?;
    for k in [
        key(KeyType::Maintenance, 0, a, &maintenance[..], 0, 15),
        key(
            KeyType::ExternalAuth,
            TERMINAL_KEY_INDEX,
            a,
            &terminal[..],
            TERMINAL_STATE,
            15,
        ),
        key(KeyType::PinUnblock, 0, a, &unblock[..], 0, 15),
        key(KeyType::PinReload, 0, a, &reload[..], 0, 15),
        key(KeyType::Pin, 0, a, pin, PIN_STATE, PIN_TRIES),
    ] {
        admin.write_key(a, &app_master, &k)?;
    }
    let pin_or_terminal = 0xF0 | PIN_STATE;
    let terminal_only = 0xF0 | TERMINAL_STATE;
    admin.external_authenticate(0, a, &app_master)?;
    // Files updated under secure messaging take the MAC (maintenance key) as their update
    // right: the update condition itself is free.
    // Access rights (doors, phones): readable only once a terminal has authenticated.
    admin.create(
        &FileSpec::linear(0x0001, 0x01, 16, 8)
            .access(terminal_only, 0xF0, admin_state, admin_state)
            .update_needs_mac(),
    )?;
    // Holder name: readable after the PIN.
    admin.create(
        &FileSpec::binary(0x0002, 0x02, 32)
            .access(pin_or_terminal, 0xF0, admin_state, admin_state)
            .update_needs_mac(),
    )?;
    // Access log: terminals append, the holder reads.
    admin.create(&FileSpec::cyclic(0x0003, 0x03, 16, 10).access(
        pin_or_terminal,
        0x0F,
        terminal_only,
        admin_state,
    ))?;
    admin.ok(
        "SET STATUS application PERSONALIZED",
        &Apdu::new(0x80, 0xF0, 0x40, app_state::PERSONALIZED),
    )?;
    Ok(())
}

/// The purse's public application file (SFI 15, 30 bytes): issuer id (8) ‖ application type (1)
/// ‖ version (1) ‖ application serial (10) ‖ start date (4) ‖ expiry date (4) ‖ issuer data (2).
pub fn public_application_file(profile: &PurseProfile, serial: &[u8; 10]) -> [u8; 30] {
    let mut b = [0u8; purse::PUBLIC_FILE_LEN];
    b[0..8].copy_from_slice(&profile.issuer_id);
    b[8] = PURSE_APP_TYPE;
    b[9] = PURSE_APP_VERSION;
    b[10..20].copy_from_slice(serial);
    b[20..24].copy_from_slice(&profile.start_date);
    b[24..28].copy_from_slice(&profile.expiry_date);
    b
}

/// Creates and keys the purse application (the MF authenticated with the card master key).
fn purse_application<C: CardChannel>(
    admin: &mut Admin<C>,
    p: &Personalization,
    serial: &[u8; 10],
    d: &[u8; 8],
    pin: &[u8],
    keys: &dyn IssuerKeys,
) -> Result<(), ScriptError> {
    let a = alg_byte(p.alg);
    let admin_state = 0xF0 | APP_ADMIN_STATE;
    let never = 0x0F;
    admin.create(&FileSpec::df(PURSE_FID, PURSE_AID, AppKind::Purse).access(
        0xF0,
        admin_state,
        admin_state,
        admin_state,
    ))?;
    admin.create(&FileSpec::key_file(10))?;
    let cmk = keyed(keys, &devkeys::MCMK, PurseAlg::TripleDes, d, Domain::Card)?;
    let app_master = keyed(keys, &devkeys::MCMK, p.alg, d, Domain::Purse)?;
    admin.write_key(
        alg::TDES,
        &cmk,
        &key(KeyType::Master, 0, a, &app_master[..], APP_ADMIN_STATE, 15),
    )?;
    let damk = keyed(keys, &devkeys::MAMK, p.alg, d, Domain::Purse)?;
    let dpk = keyed(keys, &devkeys::MPK, p.alg, d, Domain::Purse)?;
    let dlk = keyed(keys, &devkeys::MLK, p.alg, d, Domain::Purse)?;
    let dtk = keyed(keys, &devkeys::MTK, p.alg, d, Domain::Purse)?;
    let dpuk = keyed(keys, &devkeys::MPUK, p.alg, d, Domain::Purse)?;
    let drpk = keyed(keys, &devkeys::MRPK, p.alg, d, Domain::Purse)?;
    // Purse keys carry no retry counter of their own: the purse's MAC-failure counter guards
    // them, and it locks the whole application.
    for k in [
        key(KeyType::Maintenance, 0, a, &damk[..], 0, 15),
        key(KeyType::Purchase, PURSE_KEY_INDEX, a, &dpk[..], 0, 0),
        key(KeyType::Load, PURSE_KEY_INDEX, a, &dlk[..], 0, 0),
        key(KeyType::Tac, TAC_KEY_INDEX, a, &dtk[..], 0, 0),
        key(KeyType::PinUnblock, 0, a, &dpuk[..], 0, 15),
        key(KeyType::PinReload, 0, a, &drpk[..], 0, 15),
        key(KeyType::Pin, 0, a, pin, PIN_STATE, PIN_TRIES),
    ] {
        let mut k = k;
        k.version = PURSE_KEY_VERSION;
        admin.write_key(a, &app_master, &k)?;
    }
    admin.external_authenticate(0, a, &app_master)?;
    // Public application file: free read, updates under the maintenance key's MAC.
    admin.create(
        &FileSpec::binary(0x0015, 0x15, purse::PUBLIC_FILE_LEN as u16)
            .access(0xF0, 0xF0, admin_state, admin_state)
            .update_needs_mac(),
    )?;
    admin.ok_mac(
        "UPDATE BINARY public application file",
        &Apdu::new(0x00, 0xD6, 0x80 | 0x15, 0x00)
            .with_data(public_application_file(&p.purse, serial).to_vec()),
        a,
        &damk,
    )?;
    // Holder file: free read (as PBOC), updates under MAC.
    admin.create(
        &FileSpec::binary(0x0016, purse::SFI_HOLDER, HOLDER_FILE_LEN)
            .access(0xF0, 0xF0, admin_state, admin_state)
            .update_needs_mac(),
    )?;
    // Transaction log: free read; only the purse itself appends.
    admin.create(
        &FileSpec::cyclic(
            0x0018,
            purse::SFI_LOG,
            purse::LOG_RECORD_LEN as u8,
            p.purse.log_records.max(1),
        )
        .access(0xF0, never, never, admin_state),
    )?;
    admin.create(
        &FileSpec::internal(
            0x0001,
            purse::internal_file_size(p.purse.state_slots.max(1)),
        )
        .access(never, never, never, admin_state),
    )?;
    admin.ok_mac(
        "PUT DATA purse settings",
        &Apdu::new(0x80, 0xDA, 0x00, purse::PUT_DATA_SETTINGS)
            .with_data(p.purse.settings.to_put_data().to_vec()),
        a,
        &damk,
    )?;
    admin.ok(
        "SET STATUS purse PERSONALIZED",
        &Apdu::new(0x80, 0xF0, 0x40, app_state::PERSONALIZED),
    )?;
    Ok(())
}

/// The access terminals' authentication key of a card: MAMK in its own domain, so it is neither
/// the access application's nor the purse's maintenance key.
pub fn terminal_key(a: PurseAlg, d: &[u8; 8]) -> Zeroizing<[u8; 16]> {
    domain_key(&devkeys::MAMK, a, d, Domain::AccessTerminal)
}

/// Personalizes a blank card with the development key set: MF, card-level files, the
/// access-control application, the purse application, card SECURED.
pub fn personalize<C: CardChannel>(channel: C, p: &Personalization) -> Result<C, ScriptError> {
    personalize_with(channel, p, &DevIssuerKeys)
}

/// A card key of `domain` for card data `d`, from `keys`.
pub(crate) fn keyed(
    keys: &dyn IssuerKeys,
    master: &devkeys::DevKey,
    a: PurseAlg,
    d: &[u8; 8],
    domain: Domain,
) -> Result<Zeroizing<[u8; 16]>, ScriptError> {
    keys.derive(master.name, a, &domain.data(d))
}

/// [`personalize`] with the card keys from `keys` (a keystore or an HSM behind
/// [`IssuerKeys`]): the same script, no master key in this process.
pub fn personalize_with<C: CardChannel>(
    channel: C,
    p: &Personalization,
    keys: &dyn IssuerKeys,
) -> Result<C, ScriptError> {
    let serial = CardNumber::serial(&p.card_number)?;
    let d = CardNumber::diversifier(&serial);
    let pin = pin_bytes(&p.pin)?;
    let mut admin = Admin::new(channel);
    admin.channel().reset()?;
    let chip = chip_serial(&mut admin)?;
    let cmk = take_ownership_with(&mut admin, &chip, &d, keys)?;
    card_level_files(
        &mut admin,
        &serial,
        &[(PURSE_AID, "PURSE"), (ACCESS_AID, "ACCESS")],
        keys,
    )?;
    access_application(&mut admin, p, &d, &pin, keys)?;
    // Leaving an application clears the MF's state: authenticate again at the MF.
    admin.select_mf()?;
    admin.external_authenticate(0, alg::TDES, &cmk)?;
    purse_application(&mut admin, p, &serial, &d, &pin, keys)?;
    admin.select_mf()?;
    admin.external_authenticate(0, alg::TDES, &cmk)?;
    admin.ok(
        "SET STATUS card SECURED",
        &Apdu::new(0x80, 0xF0, 0x80, iccard_cos::CardState::Secured as u8),
    )?;
    Ok(admin.into_inner())
}
