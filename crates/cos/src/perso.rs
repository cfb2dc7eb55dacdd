//! Manufacture: the MF and its key file with the transport key, written once when a blank
//! card is made (the chip maker's step before the card leaves for the issuer).

use crate::card::Manufacture;
use crate::fs::{
    app_state, lcs, Access, AppKind, CardResult, Fcb, FileKind, FileTable, MF_FID, NO_PARENT,
};
use crate::keys::{alg, KeyFile, KeyRecord, KeyType, KEY_RECORD_LEN};
use crate::nvm::{Eeprom, Nvm};
use zeroize::Zeroizing;

/// Security state the transport key and the card master key grant at the MF.
pub const MF_ADMIN_STATE: u8 = 0x0F;
/// Key records in the MF key file.
pub const MF_KEY_RECORDS: u8 = 8;
/// Retry limit of the transport key.
pub const TRANSPORT_KEY_TRIES: u8 = 15;

/// Stages the MF (slot 0) and its key file holding the transport key as MF master key.
pub(crate) fn create_mf<E: Eeprom>(
    table: &FileTable,
    nvm: &mut Nvm<E>,
    spec: &Manufacture,
) -> CardResult<()> {
    let admin = Access::at_least(MF_ADMIN_STATE);
    let mf = Fcb {
        index: 0,
        kind: FileKind::Df,
        fid: MF_FID,
        parent: NO_PARENT,
        sfi: 0,
        lcs: lcs::ACTIVATED,
        app: AppKind::Plain,
        ac_read: Access::FREE,
        ac_update: admin,
        ac_append: admin,
        ac_delete: admin,
        flags: 0,
        record_len: 0,
        record_count: 0,
        records_used: 0,
        size: 0,
        body: 0,
        name: b"1PAY.SYS.DDF01".to_vec(),
        app_state: app_state::PERSONALIZED,
    };
    table.put(nvm, &mf)?;
    let size = KEY_RECORD_LEN as u16 * MF_KEY_RECORDS as u16;
    let body = table.allocate(nvm, size as usize, 4)?;
    let key_file = Fcb {
        index: 1,
        kind: FileKind::KeyFile,
        fid: 0x0000,
        parent: 0,
        sfi: 0,
        lcs: lcs::ACTIVATED,
        app: AppKind::Plain,
        ac_read: Access::NEVER,
        ac_update: admin,
        ac_append: admin,
        ac_delete: admin,
        flags: 0,
        record_len: KEY_RECORD_LEN as u8,
        record_count: MF_KEY_RECORDS,
        records_used: 0,
        size,
        body,
        name: Vec::new(),
        app_state: 0,
    };
    table.put(nvm, &key_file)?;
    let transport = KeyRecord {
        record: 0,
        key_type: KeyType::Master,
        index: 0,
        version: spec.transport_key_version,
        alg: alg::TDES,
        use_ac: Access::FREE,
        change_ac: Access::FREE,
        grants: MF_ADMIN_STATE,
        max_tries: TRANSPORT_KEY_TRIES,
        tries_left: TRANSPORT_KEY_TRIES,
        value: Zeroizing::new(spec.transport_key.to_vec()),
    };
    KeyFile::of(table, nvm, 0)?
        .ok_or(iccard_apdu::StatusWord::MEMORY_FAILURE)?
        .store(nvm, &transport)
}
