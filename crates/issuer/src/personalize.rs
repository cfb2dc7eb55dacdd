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
//! 5. SET STATUS: the applications PERSONALIZED, the card SECURED.
//!
//! Card keys are diversified from the development master keys by the rightmost 8 bytes of the
//! application serial (the card number as 10-byte BCD).

use crate::devkeys;
use crate::script::{key, Admin, FileSpec, ScriptError};
use iccard_apdu::{bcd, tlv, Command as Apdu};
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

/// What to personalize.
#[derive(Clone)]
pub struct Personalization {
    /// Card number: up to 20 decimal digits.
    pub card_number: String,
    /// The holder's PIN: decimal digits.
    pub pin: Zeroizing<String>,
    /// Key algorithm of the applications.
    pub alg: PurseAlg,
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
    admin.select_mf()?;
    let transport = crate::manufacture::transport_key(&devkeys::TRANSPORT.value(), chip_serial);
    admin.external_authenticate(0, alg::TDES, &transport)?;
    // The card master key is always 3DES: it protects the card, not an application generation.
    let cmk = card_key(&devkeys::MCMK, PurseAlg::TripleDes, d);
    admin.write_key(
        alg::TDES,
        &transport,
        &key(KeyType::Master, 0, alg::TDES, &cmk[..], MF_ADMIN_STATE, 15),
    )?;
    admin.external_authenticate(0, alg::TDES, &cmk)?;
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
    cmk: &[u8; 16],
    serial: &[u8; 10],
    applications: &[(&[u8], &str)],
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
        cmk,
    )?;
    Ok(())
}

/// Creates and keys the access-control application area.
fn access_application<C: CardChannel>(
    admin: &mut Admin<C>,
    p: &Personalization,
    d: &[u8; 8],
    pin: &[u8],
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
    let cmk = card_key(&devkeys::MCMK, PurseAlg::TripleDes, d);
    let app_master = card_key(&devkeys::MCMK, p.alg, d);
    admin.write_key(
        alg::TDES,
        &cmk,
        &key(KeyType::Master, 0, a, &app_master[..], APP_ADMIN_STATE, 15),
    )?;
    let maintenance = card_key(&devkeys::MAMK, p.alg, d);
    let terminal = terminal_key(p.alg, d);
    let unblock = card_key(&devkeys::MPUK, p.alg, d);
    let reload = card_key(&devkeys::MRPK, p.alg, d);
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

/// The access terminals' authentication key of a card: diversified from MAMK by NOT D, so it
/// differs from the maintenance key diversified from the same master by D.
pub fn terminal_key(a: PurseAlg, d: &[u8; 8]) -> Zeroizing<[u8; 16]> {
    let not_d = d.map(|b| !b);
    card_key(&devkeys::MAMK, a, &not_d)
}

/// Personalizes a blank card with the development key set: MF, card-level files, the
/// access-control application, card SECURED.
pub fn personalize<C: CardChannel>(channel: C, p: &Personalization) -> Result<C, ScriptError> {
    let serial = CardNumber::serial(&p.card_number)?;
    let d = CardNumber::diversifier(&serial);
    let pin = pin_bytes(&p.pin)?;
    let mut admin = Admin::new(channel);
    admin.channel().reset()?;
    let chip = chip_serial(&mut admin)?;
    let cmk = take_ownership(&mut admin, &chip, &d)?;
    card_level_files(&mut admin, &cmk, &serial, &[(ACCESS_AID, "ACCESS")])?;
    access_application(&mut admin, p, &d, &pin)?;
    admin.select_mf()?;
    admin.external_authenticate(0, alg::TDES, &cmk)?;
    admin.ok(
        "SET STATUS card SECURED",
        &Apdu::new(0x80, 0xF0, 0x80, iccard_cos::CardState::Secured as u8),
    )?;
    Ok(admin.into_inner())
}
