//! Security commands: GET CHALLENGE, EXTERNAL/INTERNAL AUTHENTICATE, VERIFY, PIN change,
//! reload and unblock, WRITE KEY, secure messaging, retry counters and the self-destruct rule.
//!
//! Anti-tearing order for every secret comparison: the retry counter is decremented and
//! committed *before* the comparison, and restored only after a success. Cutting power at the
//! moment of comparison therefore always costs the attacker a try.
//!
//! Secure messaging (proprietary, PBOC family): CLA 04/84, data = payload ‖ MAC (4 bytes), where
//! MAC = leftmost 4 bytes of a MAC over `CLA INS P1 P2 Lc ‖ payload` (Lc as sent, MAC included),
//! padding method 2, IV = the last card challenge (4 random bytes ‖ 00000000, or 8 random bytes);
//! 3DES keys use the retail MAC (ISO 9797-1 algorithm 3), SM4 keys SM4 CBC-MAC (algorithm 1, IV
//! right-padded with zeros to 16 bytes). The challenge is consumed by the attempt, good or bad.

use crate::card::Card;
use crate::fs::{nv, CardResult, CardState, Header};
use crate::keys::{alg, KeyFile, KeyRecord, KeyType};
use crate::nvm::Eeprom;
use crate::platform::RandomSource;
use iccard_apdu::{Command as Apdu, Response, StatusWord};
use iccard_crypto::{ct_eq, Cipher, Padding};
use zeroize::Zeroizing;

/// Cipher of a stored key algorithm byte.
pub fn cipher_of(key_alg: u8) -> CardResult<Cipher> {
    match key_alg {
        alg::TDES => Ok(Cipher::TripleDes),
        alg::SM4 => Ok(Cipher::Sm4),
        _ => Err(StatusWord::REFERENCE_DATA_NOT_USABLE),
    }
}

/// The secure-messaging MAC (see the module doc): 4 bytes over `input` with `key`, IV from the
/// card challenge. Used by the card and by the host that prepares commands for it.
pub fn sm_mac(
    key_alg: u8,
    key: &[u8; 16],
    challenge: &[u8; 8],
    input: &[u8],
) -> CardResult<[u8; 4]> {
    let full = match cipher_of(key_alg)? {
        Cipher::Sm4 => {
            let mut iv = [0u8; 16];
            iv[..8].copy_from_slice(challenge);
            iccard_crypto::mac_alg1(Cipher::Sm4, key, Some(&iv), input, Padding::Method2)
                .map_err(|_| StatusWord::NO_PRECISE_DIAGNOSIS)?
        }
        _ => iccard_crypto::mac_alg3(key, Some(challenge), input, Padding::Method2)
            .map_err(|_| StatusWord::NO_PRECISE_DIAGNOSIS)?
            .to_vec(),
    };
    let mut mac = [0u8; 4];
    mac.copy_from_slice(&full[..4]);
    Ok(mac)
}

/// Encrypts a key record for WRITE KEY under the key-management key: `len ‖ record`, padding
/// method 2, ECB. Host side of [`Card::write_key`].
pub fn wrap_key(key_alg: u8, kek: &[u8; 16], record: &[u8]) -> CardResult<Vec<u8>> {
    let cipher = cipher_of(key_alg)?;
    let mut plain = Zeroizing::new(Vec::with_capacity(record.len() + 1));
    plain.push(record.len() as u8);
    plain.extend_from_slice(record);
    let padded = Zeroizing::new(iccard_crypto::pad(
        &plain,
        cipher.block_len(),
        Padding::Method2,
    ));
    iccard_crypto::ecb_encrypt(cipher, kek, &padded).map_err(|_| StatusWord::WRONG_DATA)
}

/// Inverse of [`wrap_key`].
pub fn unwrap_key(
    key_alg: u8,
    kek: &[u8; 16],
    cryptogram: &[u8],
) -> CardResult<Zeroizing<Vec<u8>>> {
    let cipher = cipher_of(key_alg)?;
    if cryptogram.is_empty() || !cryptogram.len().is_multiple_of(cipher.block_len()) {
        return Err(StatusWord::WRONG_LENGTH);
    }
    let plain = Zeroizing::new(
        iccard_crypto::ecb_decrypt(cipher, kek, cryptogram).map_err(|_| StatusWord::WRONG_DATA)?,
    );
    let unpadded = iccard_crypto::unpad_method2(&plain).map_err(|_| StatusWord::WRONG_DATA)?;
    let len = *unpadded.first().ok_or(StatusWord::WRONG_DATA)? as usize;
    if unpadded.len() != len + 1 {
        return Err(StatusWord::WRONG_DATA);
    }
    Ok(Zeroizing::new(unpadded[1..].to_vec()))
}

impl<E: Eeprom, R: RandomSource> Card<E, R> {
    pub(crate) fn get_challenge(&mut self, len: usize) -> Response {
        let mut c = Zeroizing::new([0u8; 8]);
        self.random(&mut c[..len]);
        let out = c[..len].to_vec();
        self.v.challenge = Some(c);
        Response::ok(out)
    }

    fn key_file(&self, df: u8) -> CardResult<KeyFile> {
        KeyFile::of(&self.table, &self.nvm, df)?.ok_or(StatusWord::REFERENCE_DATA_NOT_FOUND)
    }

    /// The key that MACs administrative commands in DF `df`: its maintenance key, else the
    /// master key of the DF that manages it.
    pub(crate) fn maintenance_key(&self, df: u8) -> CardResult<KeyRecord> {
        if let Some(kf) = KeyFile::of(&self.table, &self.nvm, df)? {
            if let Some(k) = kf
                .keys(&self.nvm)?
                .into_iter()
                .find(|k| k.key_type == KeyType::Maintenance)
            {
                return Ok(k);
            }
        }
        self.master_key(df)
    }

    /// The key-management (master) key governing DF `df`.
    pub(crate) fn master_key(&self, df: u8) -> CardResult<KeyRecord> {
        let authority = self.managing_df(df)?;
        self.key_file(authority)?
            .keys(&self.nvm)?
            .into_iter()
            .find(|k| k.key_type == KeyType::Master)
            .ok_or(StatusWord::REFERENCE_DATA_NOT_FOUND)
    }

    /// The key file holding `key` (it lives in `df` or in the DF that manages it).
    fn owner_of(&self, key: &KeyRecord, df: u8) -> CardResult<KeyFile> {
        for candidate in [df, self.managing_df(df)?] {
            if let Some(kf) = KeyFile::of(&self.table, &self.nvm, candidate)? {
                if kf
                    .find(&self.nvm, key.key_type, key.index)?
                    .is_some_and(|k| k.record == key.record)
                {
                    return Ok(kf);
                }
            }
        }
        Err(StatusWord::REFERENCE_DATA_NOT_FOUND)
    }

    /// Verifies the secure-messaging MAC of `apdu` with `key` and returns the payload (the data
    /// without its MAC). Under the anti-tearing rule of [`Self::try_secret`]: the key's try is
    /// committed before the comparison and given back after a good MAC, so only consecutive bad
    /// MACs lock a key; every bad MAC also counts against the card. A bad MAC answers 6988
    /// (6983 once the key is blocked). Must run before the command stages anything.
    pub(crate) fn verify_command_mac(
        &mut self,
        apdu: &Apdu,
        key: &KeyRecord,
    ) -> CardResult<Vec<u8>> {
        debug_assert!(!self.nvm.has_staged(), "MAC check after staged writes");
        let challenge = self
            .v
            .challenge
            .take()
            .ok_or(StatusWord::REFERENCE_DATA_NOT_USABLE)?;
        if key.is_blocked() {
            return Err(StatusWord::AUTH_METHOD_BLOCKED);
        }
        if apdu.data.len() < 4 {
            return Err(StatusWord::SM_DATA_MISSING);
        }
        let (payload, mac) = apdu.data.split_at(apdu.data.len() - 4);
        let mut input = vec![apdu.cla, apdu.ins, apdu.p1, apdu.p2, apdu.data.len() as u8];
        if apdu.data.len() > 255 {
            input.truncate(4);
            input.extend_from_slice(&[0, (apdu.data.len() >> 8) as u8, apdu.data.len() as u8]);
        }
        input.extend_from_slice(payload);
        let kf = self.owner_of(key, self.v.current_df)?;
        let result = self.try_secret(&kf, key, |k| {
            let expected = sm_mac(k.alg, &*k.key16()?, &challenge, &input)?;
            Ok(ct_eq(&expected, mac))
        });
        match result {
            Ok(()) => Ok(payload.to_vec()),
            Err(StatusWord::AUTH_METHOD_BLOCKED) => Err(StatusWord::AUTH_METHOD_BLOCKED),
            Err(sw)
                if sw.tries_left().is_some() || sw == StatusWord::SECURITY_STATUS_NOT_SATISFIED =>
            {
                Err(StatusWord::SM_DATA_INCORRECT)
            }
            Err(sw) => Err(sw),
        }
    }

    /// Counts one failed authentication against the card and commits it (even though the
    /// command itself fails). Past the threshold the card erases its secrets and terminates.
    pub(crate) fn record_failure(&mut self) -> CardResult<()> {
        let n = self.header.attack_counter.saturating_add(1);
        Header::set_attack_counter(&mut self.nvm, n)?;
        self.header.attack_counter = n;
        if self.header.attack_threshold > 0 && n >= self.header.attack_threshold {
            return self.self_destruct();
        }
        self.commit()
    }

    /// Terminates the card and erases its secrets, committing on the way: first the
    /// TERMINATED state (with whatever is staged), so no further command can use a key, then
    /// the key files zeroed in journal-sized steps, then the journal's history scrubbed. A power
    /// cut anywhere after the first commit is finished by [`Self::finish_self_destruct`] at
    /// power-up.
    pub(crate) fn self_destruct(&mut self) -> CardResult<()> {
        Header::set_state(&mut self.nvm, CardState::Terminated)?;
        self.header.state = CardState::Terminated;
        self.v.security.clear();
        self.v.challenge = None;
        self.commit()?;
        self.finish_self_destruct()
    }

    /// Zeroes every key file still holding a byte, then scrubs the journal. Free when done.
    pub(crate) fn finish_self_destruct(&mut self) -> CardResult<()> {
        const STEP: usize = 512;
        for f in self.table.all(&self.nvm)? {
            if f.kind != crate::fs::FileKind::KeyFile {
                continue;
            }
            let (base, len) = (f.body as usize, f.size as usize);
            let mut off = 0;
            while off < len {
                let n = STEP.min(len - off);
                if nv(self.nvm.read_vec(base + off, n))?
                    .iter()
                    .any(|&b| b != 0)
                {
                    nv(self.nvm.write(base + off, &vec![0u8; n]))?;
                    self.commit()?;
                }
                off += n;
            }
        }
        nv(self.nvm.scrub_journal())
    }

    /// Runs a secret comparison under the anti-tearing rule. `check` returns whether the
    /// presented secret is right. Returns Ok on success; the status word otherwise.
    fn try_secret(
        &mut self,
        kf: &KeyFile,
        key: &KeyRecord,
        check: impl FnOnce(&KeyRecord) -> CardResult<bool>,
    ) -> CardResult<()> {
        if key.is_blocked() {
            return Err(StatusWord::AUTH_METHOD_BLOCKED);
        }
        if key.max_tries > 0 {
            kf.set_tries(&mut self.nvm, key, key.tries_left - 1)?;
            self.commit()?;
        }
        if check(key)? {
            if key.max_tries > 0 {
                kf.set_tries(&mut self.nvm, key, key.max_tries)?;
                self.commit()?;
            }
            return Ok(());
        }
        self.record_failure()?;
        if self.header.state == CardState::Terminated {
            return Err(StatusWord::AUTH_METHOD_BLOCKED);
        }
        let left = key.tries_left.saturating_sub(1);
        if key.max_tries > 0 && left == 0 {
            Err(StatusWord::AUTH_METHOD_BLOCKED)
        } else if key.max_tries > 0 {
            Err(StatusWord::verify_failed(left))
        } else {
            Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
        }
    }

    pub(crate) fn external_authenticate(
        &mut self,
        key_index: u8,
        cryptogram: &[u8],
    ) -> CardResult<Response> {
        let challenge = self
            .v
            .challenge
            .take()
            .ok_or(StatusWord::REFERENCE_DATA_NOT_USABLE)?;
        let df = self.v.current_df;
        let kf = self.key_file(df)?;
        let key = kf
            .find_any(
                &self.nvm,
                &[KeyType::ExternalAuth, KeyType::Master],
                key_index,
            )?
            .ok_or(StatusWord::REFERENCE_DATA_NOT_FOUND)?;
        if !key.use_ac.allows(self.security_of(df)) {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        let cipher = cipher_of(key.alg)?;
        let mut block = vec![0u8; cipher.block_len()];
        block[..8].copy_from_slice(&challenge[..]);
        if cryptogram.len() != block.len() {
            return Err(StatusWord::WRONG_LENGTH);
        }
        self.try_secret(&kf, &key, |k| {
            let expected = iccard_crypto::ecb_encrypt(cipher, &k.key16()?[..], &block)
                .map_err(|_| StatusWord::NO_PRECISE_DIAGNOSIS)?;
            Ok(ct_eq(&expected, cryptogram))
        })?;
        self.set_security(key.grants & 0x0F);
        Ok(Response::sw(StatusWord::OK))
    }

    pub(crate) fn internal_authenticate(
        &mut self,
        key_index: u8,
        data: &[u8],
    ) -> CardResult<Response> {
        let df = self.v.current_df;
        let key = self
            .key_file(df)?
            .find(&self.nvm, KeyType::InternalAuth, key_index)?
            .ok_or(StatusWord::REFERENCE_DATA_NOT_FOUND)?;
        if !key.use_ac.allows(self.security_of(df)) {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        let cipher = cipher_of(key.alg)?;
        if !data.len().is_multiple_of(cipher.block_len()) {
            return Err(StatusWord::WRONG_LENGTH);
        }
        let out = iccard_crypto::ecb_encrypt(cipher, &key.key16()?[..], data)
            .map_err(|_| StatusWord::WRONG_LENGTH)?;
        Ok(Response::ok(out))
    }

    fn pin(&self, index: u8) -> CardResult<(KeyFile, KeyRecord)> {
        let kf = self.key_file(self.v.current_df)?;
        let pin = kf
            .find(&self.nvm, KeyType::Pin, index)?
            .ok_or(StatusWord::REFERENCE_DATA_NOT_FOUND)?;
        Ok((kf, pin))
    }

    pub(crate) fn verify(
        &mut self,
        pin_index: u8,
        pin: Option<Zeroizing<Vec<u8>>>,
    ) -> CardResult<Response> {
        let (kf, key) = self.pin(pin_index)?;
        let Some(pin) = pin else {
            // ISO 7816-4 §11.5.6: VERIFY without data answers the tries left.
            if key.is_blocked() {
                return Err(StatusWord::AUTH_METHOD_BLOCKED);
            }
            return Err(StatusWord::verify_failed(key.tries_left));
        };
        self.try_secret(&kf, &key, |k| Ok(ct_eq(&k.value, &pin)))?;
        self.set_security(key.grants & 0x0F);
        Ok(Response::sw(StatusWord::OK))
    }

    pub(crate) fn change_pin(
        &mut self,
        old: Zeroizing<Vec<u8>>,
        new: Zeroizing<Vec<u8>>,
    ) -> CardResult<Response> {
        check_pin_format(&new)?;
        let (kf, key) = self.pin(0)?;
        self.try_secret(&kf, &key, |k| Ok(ct_eq(&k.value, &old)))?;
        let mut updated = key.clone();
        updated.value = new;
        updated.tries_left = updated.max_tries;
        kf.store(&mut self.nvm, &updated)?;
        Ok(Response::sw(StatusWord::OK))
    }

    pub(crate) fn reload_pin(&mut self, apdu: &Apdu) -> CardResult<Response> {
        let df = self.v.current_df;
        let kf = self.key_file(df)?;
        let reload = kf
            .keys(&self.nvm)?
            .into_iter()
            .find(|k| k.key_type == KeyType::PinReload)
            .ok_or(StatusWord::REFERENCE_DATA_NOT_FOUND)?;
        if !crate::command::has_mac(apdu) {
            return Err(StatusWord::SM_DATA_MISSING);
        }
        let new = Zeroizing::new(self.verify_command_mac(apdu, &reload)?);
        check_pin_format(&new)?;
        let (kf, pin) = self.pin(0)?;
        let mut updated = pin.clone();
        updated.value = new;
        updated.tries_left = updated.max_tries;
        kf.store(&mut self.nvm, &updated)?;
        Ok(Response::sw(StatusWord::OK))
    }

    pub(crate) fn unblock_pin(&mut self, apdu: &Apdu) -> CardResult<Response> {
        let kf = self.key_file(self.v.current_df)?;
        let unblock = kf
            .keys(&self.nvm)?
            .into_iter()
            .find(|k| k.key_type == KeyType::PinUnblock)
            .ok_or(StatusWord::REFERENCE_DATA_NOT_FOUND)?;
        if !crate::command::has_mac(apdu) {
            return Err(StatusWord::SM_DATA_MISSING);
        }
        let cryptogram = self.verify_command_mac(apdu, &unblock)?;
        let presented = unwrap_key(unblock.alg, &*unblock.key16()?, &cryptogram)?;
        let (kf, pin) = self.pin(0)?;
        if !ct_eq(&pin.value, &presented) {
            self.record_failure()?;
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        kf.set_tries(&mut self.nvm, &pin, pin.max_tries)?;
        Ok(Response::sw(StatusWord::OK))
    }

    pub(crate) fn write_key(&mut self, apdu: &Apdu) -> CardResult<Response> {
        if !crate::command::has_mac(apdu) {
            return Err(StatusWord::SM_DATA_MISSING);
        }
        let df = self.v.current_df;
        let kek = self.master_key(df)?;
        let cryptogram = self.verify_command_mac(apdu, &kek)?;
        let record = unwrap_key(kek.alg, &*kek.key16()?, &cryptogram)?;
        let key = KeyRecord::from_write_key_data(&record)?;
        let kf = KeyFile::of(&self.table, &self.nvm, df)?.ok_or(StatusWord::FILE_NOT_FOUND)?;
        if let Some(existing) = kf.find(&self.nvm, key.key_type, key.index)? {
            if !existing.change_ac.allows(self.security_of(df)) {
                return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
            }
        }
        if key.key_type == KeyType::Pin {
            check_pin_format(&key.value)?;
        }
        kf.store(&mut self.nvm, &key)?;
        Ok(Response::sw(StatusWord::OK))
    }
}

/// A PIN is 1..=8 bytes of packed BCD (2..=16 digits), an odd digit count padded with F.
fn check_pin_format(pin: &[u8]) -> CardResult<()> {
    if pin.is_empty() || pin.len() > 8 || !iccard_apdu::bcd::is_valid(pin) {
        return Err(StatusWord::WRONG_DATA);
    }
    Ok(())
}
