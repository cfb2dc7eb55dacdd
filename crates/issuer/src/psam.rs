//! PSAM personalization: a blank card (OP_READY, transport key) becomes the purchase security
//! module of one terminal, through the APDUs a personalization machine sends.
//!
//! The script, in order (each step checked for 9000):
//! 1. SELECT MF; EXTERNAL AUTHENTICATE with the transport key; WRITE KEY the card master key
//!    (diversified from MCMK by the chip serial: a PSAM has no card number).
//! 2. The terminal id file under the MF: SFI `16`, 6 bytes, free to read, updated only under
//!    secure messaging with the card master key.
//! 3. The PSAM ADF ([`PSAM_AID`], FID [`PSAM_FID`], application kind PSAM), its key file with
//!    the ADF master key and the purchase master keys ([`PURCHASE_KEYS`]), and the internal file
//!    holding the terminal transaction serial.
//! 4. SET STATUS: the ADF PERSONALIZED, the card SECURED.
//!
//! Only the development key set exists so far: the purchase master keys are the development MPK
//! in both algorithm generations.

use crate::devkeys;
use crate::personalize::{card_key, chip_serial, take_ownership, APP_ADMIN_STATE};
use crate::script::{key, Admin, FileSpec, ScriptError};
use iccard_apdu::Command as Apdu;
use iccard_cos::app::psam::{SFI_TERMINAL_ID, TERMINAL_ID_LEN};
use iccard_cos::fs::{app_state, AppKind};
use iccard_cos::keys::{alg, KeyType};
use iccard_cos::MF_ADMIN_STATE;
use iccard_crypto::PurseAlg;
use iccard_link::CardChannel;

/// DF name of the PSAM application: the PBOC ED/EP prefix `A000000003869807` with `02`
/// (the purse is `...01`). Project-chosen.
pub const PSAM_AID: &[u8] = &[0xA0, 0x00, 0x00, 0x00, 0x03, 0x86, 0x98, 0x07, 0x02];
/// FID of the PSAM ADF.
pub const PSAM_FID: u16 = 0x1001;
/// FID of the terminal id file under the MF.
pub const TERMINAL_ID_FID: u16 = 0x0016;
/// FID of the PSAM's internal file (terminal transaction serial).
pub const SERIAL_FID: u16 = 0x0009;
/// Size of the internal file: room for four page-aligned slots of the serial record.
pub const SERIAL_FILE_SIZE: u16 = 320;

/// One purchase master key the PSAM holds: `(key index, key version, algorithm id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseKeySlot {
    /// Key index in the PSAM's key file (its storage reference).
    pub index: u8,
    /// Key version: what the card announces in INITIALIZE FOR PURCHASE.
    pub version: u8,
    /// Algorithm generation.
    pub alg: PurseAlg,
}

/// The purchase master keys written into every PSAM: the development MPK for the 3DES
/// generation (index 01, version 01) and for the SM4 generation (index 02, version 01). The PSAM
/// chooses by the key version and algorithm id the card announces.
pub const PURCHASE_KEYS: [PurchaseKeySlot; 2] = [
    PurchaseKeySlot {
        index: 0x01,
        version: 0x01,
        alg: PurseAlg::TripleDes,
    },
    PurchaseKeySlot {
        index: 0x02,
        version: 0x01,
        alg: PurseAlg::Sm4,
    },
];

/// What to personalize into a PSAM.
#[derive(Debug, Clone)]
pub struct PsamPersonalization {
    /// The terminal id (6 bytes; PBOC terminals print it as 12 hex digits).
    pub terminal_id: [u8; TERMINAL_ID_LEN],
}

/// Personalizes a blank card as a PSAM with the development key set; the card ends SECURED.
pub fn personalize<C: CardChannel>(channel: C, p: &PsamPersonalization) -> Result<C, ScriptError> {
    let mut admin = Admin::new(channel);
    admin.channel().reset()?;
    let chip = chip_serial(&mut admin)?;
    let cmk = take_ownership(&mut admin, &chip, &chip)?;
    let admin_only = 0xF0 | MF_ADMIN_STATE;

    // The terminal id, under the MF as on PBOC PSAMs.
    admin.create(
        &FileSpec::binary(TERMINAL_ID_FID, SFI_TERMINAL_ID, TERMINAL_ID_LEN as u16)
            .access(0xF0, 0xF0, admin_only, admin_only)
            .update_needs_mac(),
    )?;
    admin.ok_mac(
        "UPDATE BINARY terminal id",
        &Apdu::new(0x00, 0xD6, 0x80 | SFI_TERMINAL_ID, 0x00).with_data(p.terminal_id.to_vec()),
        alg::TDES,
        &crate::personalize::mf_maintenance_key(&chip),
    )?;

    // The PSAM ADF, created and keyed under the card master key until its own master exists.
    let app_admin = 0xF0 | APP_ADMIN_STATE;
    admin.create(
        &FileSpec::df(PSAM_FID, PSAM_AID, AppKind::Psam)
            .access(0xF0, app_admin, app_admin, app_admin),
    )?;
    admin.create(&FileSpec::key_file(4))?;
    let app_master = card_key(&devkeys::MCMK, PurseAlg::TripleDes, &chip.map(|b| !b));
    admin.write_key(
        alg::TDES,
        &cmk,
        &key(
            KeyType::Master,
            0,
            alg::TDES,
            &app_master[..],
            APP_ADMIN_STATE,
            15,
        ),
    )?;
    let mpk = devkeys::MPK.value();
    for slot in PURCHASE_KEYS {
        let mut k = key(
            KeyType::PsamPurchaseMaster,
            slot.index,
            slot.alg.id(),
            &mpk[..],
            0,
            0,
        );
        k.version = slot.version;
        k.change_ac = iccard_cos::fs::Access::at_least(APP_ADMIN_STATE);
        admin.write_key(alg::TDES, &app_master, &k)?;
    }
    admin.external_authenticate(0, alg::TDES, &app_master)?;
    admin.create(
        &FileSpec::internal(SERIAL_FID, SERIAL_FILE_SIZE).access(0x0F, 0x0F, app_admin, app_admin),
    )?;
    admin.ok(
        "SET STATUS application PERSONALIZED",
        &Apdu::new(0x80, 0xF0, 0x40, app_state::PERSONALIZED),
    )?;

    admin.select_mf()?;
    admin.external_authenticate(0, alg::TDES, &cmk)?;
    admin.ok(
        "SET STATUS card SECURED",
        &Apdu::new(0x80, 0xF0, 0x80, iccard_cos::CardState::Secured as u8),
    )?;
    Ok(admin.into_inner())
}

/// Parses a terminal id given as 12 hex digits.
pub fn parse_terminal_id(hex: &str) -> Result<[u8; TERMINAL_ID_LEN], ScriptError> {
    let bytes = iccard_apdu::hex::decode(hex)
        .map_err(|e| ScriptError::Invalid(format!("the terminal id is not valid hex: {e}")))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        ScriptError::Invalid(format!(
            "the terminal id must be 6 bytes (12 hex digits), got {} bytes",
            b.len()
        ))
    })
}
