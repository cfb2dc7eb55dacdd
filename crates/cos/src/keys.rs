//! Keys and PINs: the records of a DF's key file.
//!
//! Each DF may own one key file (an internal EF no READ command reaches). A key record holds
//! the key's type and index (its reference), version, algorithm, the access condition to use it
//! and to change it, the security state a successful use grants, and its retry counter.
//! Key values are loaded into [`Zeroizing`] buffers that live for one command only.
//!
//! Record layout (32 bytes): `used type index version alg use_ac change_ac grants max_tries
//! tries_left len rfu value[16] rfu[4]`.

use crate::fs::{nv, Access, CardResult, Fcb, FileTable};
use crate::nvm::{Eeprom, Nvm};
use iccard_apdu::StatusWord;
use zeroize::Zeroizing;

/// Length of one key record.
pub const KEY_RECORD_LEN: usize = 32;
/// Longest key or PIN value.
pub const MAX_KEY_LEN: usize = 16;

/// What a key is for. The codes are this card OS's own (loosely following the FMCOS family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// DF master key (the card master key at the MF; the transport key before issuance):
    /// EXTERNAL AUTHENTICATE, and the key under which WRITE KEY is encrypted and MACed.
    Master = 0x31,
    /// Internal authentication (INTERNAL AUTHENTICATE).
    InternalAuth = 0x30,
    /// External authentication of a terminal (EXTERNAL AUTHENTICATE).
    ExternalAuth = 0x39,
    /// Maintenance key: secure-messaging MACs for UPDATE and APPLICATION/CARD BLOCK.
    Maintenance = 0x36,
    /// The holder's PIN.
    Pin = 0x3A,
    /// PIN unblock key.
    PinUnblock = 0x37,
    /// PIN reload key.
    PinReload = 0x38,
    /// Purse purchase key (DPK).
    Purchase = 0x3E,
    /// Purse load key (DLK).
    Load = 0x3F,
    /// Purse unload key (DULK).
    Unload = 0x3D,
    /// TAC key (DTK).
    Tac = 0x34,
    /// PSAM: a purchase master key from which the card's DPK is diversified.
    PsamPurchaseMaster = 0x2E,
}

impl KeyType {
    /// Decodes a key type code.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x31 => Self::Master,
            0x30 => Self::InternalAuth,
            0x39 => Self::ExternalAuth,
            0x36 => Self::Maintenance,
            0x3A => Self::Pin,
            0x37 => Self::PinUnblock,
            0x38 => Self::PinReload,
            0x3E => Self::Purchase,
            0x3F => Self::Load,
            0x3D => Self::Unload,
            0x34 => Self::Tac,
            0x2E => Self::PsamPurchaseMaster,
            _ => return None,
        })
    }
}

/// Key algorithm byte: the PBOC algorithm identifiers.
pub mod alg {
    /// 2-key 3DES (16-byte key).
    pub const TDES: u8 = 0x00;
    /// SM4 (16-byte key).
    pub const SM4: u8 = 0x04;
}

/// A key or PIN as stored. `value` is zeroized when dropped.
#[derive(Clone)]
pub struct KeyRecord {
    /// Record number in the key file (1-based).
    pub record: u8,
    /// Key type.
    pub key_type: KeyType,
    /// Key index (the reference within its type).
    pub index: u8,
    /// Key version.
    pub version: u8,
    /// Algorithm ([`alg`]).
    pub alg: u8,
    /// Condition to use the key.
    pub use_ac: Access,
    /// Condition to replace the key.
    pub change_ac: Access,
    /// Security state set on successful use (low nibble).
    pub grants: u8,
    /// Retry limit (0 = unlimited).
    pub max_tries: u8,
    /// Tries left.
    pub tries_left: u8,
    /// Value (key bytes, or PIN as packed BCD).
    pub value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("type", &self.key_type)
            .field("index", &self.index)
            .field("version", &self.version)
            .field("alg", &self.alg)
            .field("tries_left", &self.tries_left)
            .field("value", &"<secret>")
            .finish()
    }
}

impl KeyRecord {
    /// Whether the retry counter is exhausted.
    pub fn is_blocked(&self) -> bool {
        self.max_tries > 0 && self.tries_left == 0
    }

    /// The 16-byte key value (keys only; PINs are shorter).
    pub fn key16(&self) -> CardResult<Zeroizing<[u8; 16]>> {
        let mut k = Zeroizing::new([0u8; 16]);
        if self.value.len() != 16 {
            return Err(StatusWord::REFERENCE_DATA_NOT_USABLE);
        }
        k.copy_from_slice(&self.value);
        Ok(k)
    }

    /// Encodes the record header and value: the layout WRITE KEY carries (after decryption):
    /// `type index version alg use_ac change_ac grants max_tries len value`.
    pub fn to_write_key_data(&self) -> Zeroizing<Vec<u8>> {
        let mut d = Zeroizing::new(Vec::with_capacity(9 + self.value.len()));
        d.extend_from_slice(&[
            self.key_type as u8,
            self.index,
            self.version,
            self.alg,
            self.use_ac.0,
            self.change_ac.0,
            self.grants,
            self.max_tries,
            self.value.len() as u8,
        ]);
        d.extend_from_slice(&self.value);
        d
    }

    /// Parses WRITE KEY data (see [`Self::to_write_key_data`]).
    pub fn from_write_key_data(d: &[u8]) -> CardResult<Self> {
        if d.len() < 10 {
            return Err(StatusWord::WRONG_LENGTH);
        }
        let key_type = KeyType::from_code(d[0]).ok_or(StatusWord::WRONG_DATA)?;
        let len = d[8] as usize;
        if len == 0 || len > MAX_KEY_LEN || d.len() != 9 + len {
            return Err(StatusWord::WRONG_DATA);
        }
        if key_type != KeyType::Pin && len != 16 {
            return Err(StatusWord::WRONG_DATA);
        }
        if d[3] != alg::TDES && d[3] != alg::SM4 {
            return Err(StatusWord::WRONG_DATA);
        }
        if d[7] > 15 {
            return Err(StatusWord::WRONG_DATA);
        }
        Ok(Self {
            record: 0,
            key_type,
            index: d[1],
            version: d[2],
            alg: d[3],
            use_ac: Access(d[4]),
            change_ac: Access(d[5]),
            grants: d[6] & 0x0F,
            max_tries: d[7],
            tries_left: d[7],
            value: Zeroizing::new(d[9..].to_vec()),
        })
    }

    fn encode(&self) -> Zeroizing<[u8; KEY_RECORD_LEN]> {
        let mut b = Zeroizing::new([0u8; KEY_RECORD_LEN]);
        b[0] = 1;
        b[1] = self.key_type as u8;
        b[2] = self.index;
        b[3] = self.version;
        b[4] = self.alg;
        b[5] = self.use_ac.0;
        b[6] = self.change_ac.0;
        b[7] = self.grants;
        b[8] = self.max_tries;
        b[9] = self.tries_left;
        b[10] = self.value.len() as u8;
        b[12..12 + self.value.len()].copy_from_slice(&self.value);
        b
    }

    fn decode(record: u8, b: &[u8]) -> Option<Self> {
        if b[0] != 1 {
            return None;
        }
        let len = (b[10] as usize).min(MAX_KEY_LEN);
        Some(Self {
            record,
            key_type: KeyType::from_code(b[1])?,
            index: b[2],
            version: b[3],
            alg: b[4],
            use_ac: Access(b[5]),
            change_ac: Access(b[6]),
            grants: b[7],
            max_tries: b[8],
            tries_left: b[9],
            value: Zeroizing::new(b[12..12 + len].to_vec()),
        })
    }
}

/// Key-file operations of one DF.
pub struct KeyFile {
    fcb: Fcb,
}

impl KeyFile {
    /// The key file of DF `df`, if it has one.
    pub fn of<E: Eeprom>(table: &FileTable, nvm: &Nvm<E>, df: u8) -> CardResult<Option<Self>> {
        Ok(table.key_file(nvm, df)?.map(|fcb| Self { fcb }))
    }

    fn record_addr(&self, record: u8) -> usize {
        self.fcb.body as usize + (record as usize - 1) * KEY_RECORD_LEN
    }

    /// All keys in the file.
    pub fn keys<E: Eeprom>(&self, nvm: &Nvm<E>) -> CardResult<Vec<KeyRecord>> {
        let raw = Zeroizing::new(nv(
            nvm.read_vec(self.fcb.body as usize, self.fcb.size as usize)
        )?);
        Ok(raw
            .chunks_exact(KEY_RECORD_LEN)
            .enumerate()
            .filter_map(|(i, b)| KeyRecord::decode(i as u8 + 1, b))
            .collect())
    }

    /// The key with this type and index.
    pub fn find<E: Eeprom>(
        &self,
        nvm: &Nvm<E>,
        key_type: KeyType,
        index: u8,
    ) -> CardResult<Option<KeyRecord>> {
        Ok(self
            .keys(nvm)?
            .into_iter()
            .find(|k| k.key_type == key_type && k.index == index))
    }

    /// The first key of one of these types with this index.
    pub fn find_any<E: Eeprom>(
        &self,
        nvm: &Nvm<E>,
        types: &[KeyType],
        index: u8,
    ) -> CardResult<Option<KeyRecord>> {
        Ok(self
            .keys(nvm)?
            .into_iter()
            .find(|k| types.contains(&k.key_type) && k.index == index))
    }

    /// Stages a key: replaces the record with the same reference, or takes a free record.
    pub fn store<E: Eeprom>(&self, nvm: &mut Nvm<E>, key: &KeyRecord) -> CardResult<()> {
        let keys = self.keys(nvm)?;
        let record = match keys
            .iter()
            .find(|k| k.key_type == key.key_type && k.index == key.index)
        {
            Some(existing) => existing.record,
            None => {
                let count = self.fcb.size as usize / KEY_RECORD_LEN;
                (1..=count as u8)
                    .find(|r| !keys.iter().any(|k| k.record == *r))
                    .ok_or(StatusWord::NOT_ENOUGH_MEMORY)?
            }
        };
        nv(nvm.write(self.record_addr(record), key.encode().as_ref()))
    }

    /// Stages a new tries-left value for a key.
    pub fn set_tries<E: Eeprom>(
        &self,
        nvm: &mut Nvm<E>,
        key: &KeyRecord,
        tries_left: u8,
    ) -> CardResult<()> {
        nv(nvm.write(self.record_addr(key.record) + 9, &[tries_left]))
    }
}
