//! Host side of the card OS's administrative commands: the APDUs a personalization machine
//! sends, with secure messaging computed here.
//!
//! Secrets handed to these functions are borrowed for one call; nothing here stores a key.

use iccard_apdu::{tlv, Command as Apdu, Response, StatusWord};
use iccard_cos::keys::{KeyRecord, KeyType};
use iccard_cos::security::{sm_mac, wrap_key};
use iccard_link::{CardChannel, LinkError};
use zeroize::Zeroizing;

/// Why an administrative exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The transport failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The card answered something malformed.
    #[error("the card's answer to {step} is malformed ({len} bytes)")]
    Malformed {
        /// What was being done.
        step: String,
        /// Answer length.
        len: usize,
    },
    /// The card refused a step.
    #[error("{step}: the card answered {sw}")]
    Refused {
        /// What was being done.
        step: String,
        /// The status word.
        sw: StatusWord,
    },
    /// A value could not be prepared for the card.
    #[error("{0}")]
    Invalid(String),
}

/// An administrative session over any channel.
pub struct Admin<C: CardChannel> {
    channel: C,
}

impl<C: CardChannel> Admin<C> {
    /// Wraps a channel.
    pub fn new(channel: C) -> Self {
        Self { channel }
    }

    /// Gives the channel back.
    pub fn into_inner(self) -> C {
        self.channel
    }

    /// The channel.
    pub fn channel(&mut self) -> &mut C {
        &mut self.channel
    }

    /// Sends one APDU and parses the answer (GET RESPONSE is followed for 61xx).
    pub fn send(&mut self, step: &str, apdu: &Apdu) -> Result<Response, ScriptError> {
        let raw = self.channel.transmit(&apdu.to_bytes())?;
        let mut resp = Response::parse(&raw).map_err(|_| ScriptError::Malformed {
            step: step.into(),
            len: raw.len(),
        })?;
        // Bounded: a card that keeps answering 61xx gets at most 64 GET RESPONSEs.
        let mut rounds = 0;
        while resp.sw.sw1() == 0x61 && rounds < 64 {
            rounds += 1;
            let more_raw = self.channel.transmit(
                &Apdu::new(0x00, 0xC0, 0, 0)
                    .with_ne(resp.sw.sw2().into())
                    .to_bytes(),
            )?;
            let more = Response::parse(&more_raw).map_err(|_| ScriptError::Malformed {
                step: step.into(),
                len: more_raw.len(),
            })?;
            resp.data.extend_from_slice(&more.data);
            resp.sw = more.sw;
        }
        Ok(resp)
    }

    /// Sends one APDU and requires 9000.
    pub fn ok(&mut self, step: &str, apdu: &Apdu) -> Result<Vec<u8>, ScriptError> {
        let r = self.send(step, apdu)?;
        if r.sw != StatusWord::OK {
            return Err(ScriptError::Refused {
                step: step.into(),
                sw: r.sw,
            });
        }
        Ok(r.data)
    }

    /// SELECT the MF.
    pub fn select_mf(&mut self) -> Result<(), ScriptError> {
        self.ok(
            "SELECT MF",
            &Apdu::new(0x00, 0xA4, 0x00, 0x0C).with_data([0x3F, 0x00]),
        )
        .map(drop)
    }

    /// SELECT a DF by name; returns the FCI.
    pub fn select_aid(&mut self, aid: &[u8]) -> Result<Vec<u8>, ScriptError> {
        self.ok(
            "SELECT by name",
            &Apdu::new(0x00, 0xA4, 0x04, 0x00)
                .with_data(aid)
                .with_ne(256),
        )
    }

    /// GET CHALLENGE of 4 bytes, returned as the 8-byte IV (challenge ‖ 00000000).
    pub fn challenge(&mut self) -> Result<[u8; 8], ScriptError> {
        let c = self.ok("GET CHALLENGE", &Apdu::new(0x00, 0x84, 0, 0).with_ne(4))?;
        if c.len() != 4 {
            return Err(ScriptError::Malformed {
                step: "GET CHALLENGE".into(),
                len: c.len(),
            });
        }
        let mut iv = [0u8; 8];
        iv[..4].copy_from_slice(&c);
        Ok(iv)
    }

    /// EXTERNAL AUTHENTICATE with a 16-byte key (3DES or SM4 by `alg`).
    pub fn external_authenticate(
        &mut self,
        key_index: u8,
        alg: u8,
        key: &[u8; 16],
    ) -> Result<(), ScriptError> {
        let iv = self.challenge()?;
        let cipher = iccard_cos::security::cipher_of(alg)
            .map_err(|_| ScriptError::Invalid(format!("unknown key algorithm {alg:02X}")))?;
        let mut block = vec![0u8; cipher.block_len()];
        block[..8].copy_from_slice(&iv);
        let cryptogram = iccard_crypto::ecb_encrypt(cipher, key, &block)
            .map_err(|e| ScriptError::Invalid(e.to_string()))?;
        self.ok(
            "EXTERNAL AUTHENTICATE",
            &Apdu::new(0x00, 0x82, 0x00, key_index).with_data(cryptogram),
        )
        .map(drop)
    }

    /// Sends `apdu` under secure messaging: a fresh challenge, then CLA | 04 and the MAC
    /// appended, computed with `key`.
    pub fn send_mac(
        &mut self,
        step: &str,
        apdu: &Apdu,
        alg: u8,
        key: &[u8; 16],
    ) -> Result<Response, ScriptError> {
        let iv = self.challenge()?;
        let apdu = mac_command(apdu, alg, key, &iv)?;
        self.send(step, &apdu)
    }

    /// Like [`Self::send_mac`], requiring 9000.
    pub fn ok_mac(
        &mut self,
        step: &str,
        apdu: &Apdu,
        alg: u8,
        key: &[u8; 16],
    ) -> Result<Vec<u8>, ScriptError> {
        let r = self.send_mac(step, apdu, alg, key)?;
        if r.sw != StatusWord::OK {
            return Err(ScriptError::Refused {
                step: step.into(),
                sw: r.sw,
            });
        }
        Ok(r.data)
    }

    /// CREATE FILE with an FCP template built by [`FileSpec`].
    pub fn create(&mut self, spec: &FileSpec) -> Result<(), ScriptError> {
        self.ok(
            &format!("CREATE FILE {:04X}", spec.fid),
            &Apdu::new(0x80, 0xE0, 0, 0).with_data(spec.fcp()),
        )
        .map(drop)
    }

    /// WRITE KEY: the record encrypted and MACed under the key-management key `kek`.
    pub fn write_key(
        &mut self,
        kek_alg: u8,
        kek: &[u8; 16],
        key: &KeyRecord,
    ) -> Result<(), ScriptError> {
        let record = key.to_write_key_data();
        let cryptogram = wrap_key(kek_alg, kek, &record)
            .map_err(|sw| ScriptError::Invalid(format!("cannot wrap key: {sw}")))?;
        self.ok_mac(
            &format!("WRITE KEY {:?} {:02X}", key.key_type, key.index),
            &Apdu::new(0x80, 0xD4, 0, 0).with_data(cryptogram),
            kek_alg,
            kek,
        )
        .map(drop)
    }
}

/// Adds secure messaging to `apdu` (see `iccard_cos::security`): CLA | 04, MAC over
/// `CLA INS P1 P2 Lc ‖ data` appended.
pub fn mac_command(
    apdu: &Apdu,
    alg: u8,
    key: &[u8; 16],
    iv: &[u8; 8],
) -> Result<Apdu, ScriptError> {
    let cla = apdu.cla | 0x04;
    let lc = apdu.data.len() + 4;
    if lc > 255 {
        return Err(ScriptError::Invalid(
            "secure messaging data over 251 bytes".into(),
        ));
    }
    let mut input = vec![cla, apdu.ins, apdu.p1, apdu.p2, lc as u8];
    input.extend_from_slice(&apdu.data);
    let mac = sm_mac(alg, key, iv, &input)
        .map_err(|sw| ScriptError::Invalid(format!("cannot compute MAC: {sw}")))?;
    let mut data = apdu.data.clone();
    data.extend_from_slice(&mac);
    let mut out = Apdu::new(cla, apdu.ins, apdu.p1, apdu.p2).with_data(data);
    out.ne = apdu.ne;
    Ok(out)
}

/// A file to create, as CREATE FILE's FCP template describes it.
#[derive(Debug, Clone)]
pub struct FileSpec {
    /// File identifier.
    pub fid: u16,
    /// Structure (FCP 82 descriptor byte).
    pub kind: iccard_cos::fs::FileKind,
    /// Short file identifier (0: none).
    pub sfi: u8,
    /// Body size (transparent / internal).
    pub size: u16,
    /// Record length and count (record files).
    pub records: (u8, u8),
    /// DF name.
    pub name: Vec<u8>,
    /// Access conditions: read, update, append/create, delete.
    pub access: [u8; 4],
    /// Flags (secure messaging).
    pub flags: u8,
    /// Application kind (DFs).
    pub app: iccard_cos::fs::AppKind,
}

impl FileSpec {
    fn base(fid: u16, kind: iccard_cos::fs::FileKind) -> Self {
        Self {
            fid,
            kind,
            sfi: 0,
            size: 0,
            records: (0, 0),
            name: Vec::new(),
            access: [0xF0; 4],
            flags: 0,
            app: iccard_cos::fs::AppKind::Plain,
        }
    }

    /// A DF (application area).
    pub fn df(fid: u16, name: &[u8], app: iccard_cos::fs::AppKind) -> Self {
        Self {
            name: name.to_vec(),
            app,
            ..Self::base(fid, iccard_cos::fs::FileKind::Df)
        }
    }

    /// A transparent EF.
    pub fn binary(fid: u16, sfi: u8, size: u16) -> Self {
        Self {
            sfi,
            size,
            ..Self::base(fid, iccard_cos::fs::FileKind::Transparent)
        }
    }

    /// A linear-fixed record EF.
    pub fn linear(fid: u16, sfi: u8, len: u8, count: u8) -> Self {
        Self {
            sfi,
            records: (len, count),
            ..Self::base(fid, iccard_cos::fs::FileKind::LinearFixed)
        }
    }

    /// A cyclic record EF.
    pub fn cyclic(fid: u16, sfi: u8, len: u8, count: u8) -> Self {
        Self {
            sfi,
            records: (len, count),
            ..Self::base(fid, iccard_cos::fs::FileKind::Cyclic)
        }
    }

    /// The key file of a DF with room for `count` keys.
    pub fn key_file(count: u8) -> Self {
        Self {
            records: (iccard_cos::keys::KEY_RECORD_LEN as u8, count),
            ..Self::base(0x0000, iccard_cos::fs::FileKind::KeyFile)
        }
    }

    /// An application's internal state file.
    pub fn internal(fid: u16, size: u16) -> Self {
        Self {
            size,
            ..Self::base(fid, iccard_cos::fs::FileKind::Internal)
        }
    }

    /// Sets the access conditions.
    pub fn access(mut self, read: u8, update: u8, append: u8, delete: u8) -> Self {
        self.access = [read, update, append, delete];
        self
    }

    /// Requires secure messaging for updates.
    pub fn update_needs_mac(mut self) -> Self {
        self.flags |= iccard_cos::fs::flags::UPDATE_NEEDS_MAC;
        self
    }

    /// The FCP template (tag 62) CREATE FILE carries.
    pub fn fcp(&self) -> Vec<u8> {
        use iccard_cos::fs::FileKind;
        let mut b = Vec::new();
        match self.kind {
            FileKind::LinearFixed | FileKind::Cyclic | FileKind::KeyFile => tlv::encode_into(
                &mut b,
                0x82,
                &[self.kind as u8, 0x21, 0x00, self.records.0, self.records.1],
            ),
            _ => tlv::encode_into(&mut b, 0x82, &[self.kind as u8]),
        }
        tlv::encode_into(&mut b, 0x83, &self.fid.to_be_bytes());
        if !self.name.is_empty() {
            tlv::encode_into(&mut b, 0x84, &self.name);
        }
        if self.size > 0 {
            tlv::encode_into(&mut b, 0x80, &self.size.to_be_bytes());
        }
        if self.sfi != 0 {
            tlv::encode_into(&mut b, 0x88, &[self.sfi << 3]);
        }
        let mut sec = self.access.to_vec();
        sec.push(self.flags);
        tlv::encode_into(&mut b, 0x86, &sec);
        if self.kind == FileKind::Df {
            tlv::encode_into(&mut b, 0xC0, &[self.app as u8]);
        }
        tlv::encode(0x62, &b)
    }
}

/// A key record to write, with the retry limit and the state it grants.
pub fn key(
    key_type: KeyType,
    index: u8,
    alg: u8,
    value: &[u8],
    grants: u8,
    max_tries: u8,
) -> KeyRecord {
    KeyRecord {
        record: 0,
        key_type,
        index,
        version: 1,
        alg,
        use_ac: iccard_cos::fs::Access::FREE,
        change_ac: iccard_cos::fs::Access::FREE,
        grants,
        max_tries,
        tries_left: max_tries,
        value: Zeroizing::new(value.to_vec()),
    }
}
