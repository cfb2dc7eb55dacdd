//! The issuer's keystore in a PKCS#11 token ([`Pkcs11Keystore`], through `cryptoki`), tested
//! against SoftHSM2: the master keys are generated in the token or imported into it once, and
//! never leave it again.
//!
//! ## Objects on the token
//!
//! - Each master key is a token object `CKO_SECRET_KEY`, `CKK_DES2` (16 bytes), labelled
//!   `iccard:<name>:<version>` ([`key_label`]), private, `CKA_SENSITIVE` true, `CKA_EXTRACTABLE`
//!   false, `CKA_MODIFIABLE` and `CKA_COPYABLE` false, and usable for one thing only:
//!   `CKA_ENCRYPT` with `CKA_ALLOWED_MECHANISMS` = `CKM_DES3_ECB` (no decrypt, wrap, unwrap,
//!   sign, verify or derive). [`Keystore::generate`] runs `C_GenerateKey(CKM_DES2_KEY_GEN)` in
//!   the token; [`Keystore::import`] runs `C_CreateObject` with the value, then zeroizes its copy.
//! - The key states, key check values and the ceremony log live in one private token object
//!   `CKO_DATA`, `CKA_APPLICATION` `iccard`, labelled `iccard:state:<generation>` (16 hex digits).
//!   A change writes the next generation as a new object, then destroys the older ones: a crash
//!   leaves the old state or the new one, never a mix, and [`Pkcs11Keystore::open`] takes the
//!   newest. A key object is created before the state that names it; a key object that no state
//!   names (a ceremony cut short) is destroyed before its label is used again.
//!
//! ## Computations
//!
//! Diversification runs in the token: `DLK = C_Encrypt(CKM_DES3_ECB, MLK, D ‖ NOT D)`, which is
//! `iccard_crypto::diversify` for the 3DES generation (2-key EDE, no parity adjustment), and the
//! same for the DTK under MTK. The card key comes back into a zeroizing buffer for the length of
//! one call, and the session key, the purse MAC (single-DES CBC-MAC, ISO 9797-1 padding method 2)
//! and the TAC key (left ⊕ right of the DTK) are computed from it with `iccard_crypto`, exactly
//! like [`crate::keystore::LocalKeystore`]. The KCV of a key is the first 3 bytes of its
//! `CKM_DES3_ECB` encryption of a zero block, computed by the token.
//!
//! The master key never leaves the token: it cannot be read (`CKA_VALUE` is sensitive), wrapped
//! (not extractable) or made readable again (PKCS#11 never turns `CKA_SENSITIVE` off or
//! `CKA_EXTRACTABLE` on, and the object is not modifiable). The card keys (DLK, DTK) do pass
//! through this process's memory, zeroized after use: the in-token derivation
//! `C_DeriveKey(CKM_DES3_ECB_ENCRYPT_DATA)` that would keep them in the token is offered by
//! SoftHSM2 but cannot be expressed through `cryptoki` 0.12 without `unsafe` (it has no
//! mechanism value for it), and the TAC key (left ⊕ right of the DTK) needs the DTK in clear
//! anyway, since PKCS#11 has no way to XOR two halves of a key inside the token. In PKCS#11
//! terms the master key is an encryption oracle for whoever holds the user PIN, exactly as a
//! derivation key would be (whoever may derive may also derive an extractable key).
//!
//! Only the 3DES generation: PKCS#11 defines no SM4 mechanism and SoftHSM2 offers none, so an
//! SM4 key is refused at generation and import, and an SM4 card at use
//! ([`KeystoreError::AlgUnsupported`]).
//!
//! ## Process-wide state
//!
//! `C_Initialize` may run once per process and module: [`module_context`] keeps one `cryptoki`
//! context per module path for the whole process (never finalized). A [`Pkcs11Keystore`] holds
//! one read-write session, logged in as the user, behind a mutex (a session is not `Sync`).
//! PKCS#11 login is per process and token, so one process opens at most one keystore per token at
//! a time: a second open while the first is alive is refused, since its PIN could not be checked.
//! SoftHSM2 reads its configuration (`SOFTHSM2_CONF`) at `C_Initialize`, i.e. at the first open.

use crate::keystore::Reader;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use iccard_crypto::{ct_eq, kcv, pboc_mac, session_key, tac_key, Cipher, PurseAlg};
use zeroize::{Zeroize, Zeroizing};

use crate::keystore::{
    CardKey, CeremonyEvent, CeremonyKind, KeyInfo, KeyState, Keystore, KeystoreError, KsResult,
    LoadRequest, Passphrase, TacInput, MLK, MTK,
};

/// `CKA_APPLICATION` of the state object.
const APPLICATION: &[u8] = b"iccard";
/// Label prefix of the state objects; the generation follows in 16 hex digits.
const STATE_LABEL: &str = "iccard:state:";
/// Format tag at the start of the state object's value.
const STATE_MAGIC: &[u8; 8] = b"ICCP11\x00\x01";
/// Why SM4 keys are refused.
const NO_SM4: &str = "PKCS#11 defines no SM4 mechanism and SoftHSM2 offers none: keep SM4-generation keys in the local keystore";

/// Where the token is: the PKCS#11 module (shared library) and the token's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Label of the token holding the keys.
    pub token_label: String,
}

/// The label of the token object holding master key `(name, version)`: `iccard:<name>:<version>`.
pub fn key_label(name: &str, version: u8) -> String {
    format!("iccard:{name}:{version}")
}

static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// The process-wide `cryptoki` context of a PKCS#11 module: loaded and `C_Initialize`d on first
/// use, then shared by every caller in this process and never finalized (a module may be
/// initialized once per process). Also what token administration (e.g. initializing a token in a
/// test) must use instead of a context of its own.
///
/// # Errors
/// [`KeystoreError::Token`] when the module cannot be loaded or initialized.
pub fn module_context(module: &Path) -> KsResult<Pkcs11> {
    let key = module
        .canonicalize()
        .unwrap_or_else(|_| module.to_path_buf());
    let mut map = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(ctx) = map.get(&key) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(&key).map_err(|e| {
        KeystoreError::Token(format!(
            "cannot load PKCS#11 module {}: {}",
            module.display(),
            describe(&e)
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in this process (outside this map) initialized it: share it.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(KeystoreError::Token(format!(
                "cannot initialize PKCS#11 module {}: {}",
                module.display(),
                describe(&e)
            )))
        }
    }
    map.insert(key, ctx.clone());
    Ok(ctx)
}

/// A `cryptoki` error as text: the PKCS#11 function and its return value.
fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("C_{function:?} returned {rv:?}"),
        other => other.to_string(),
    }
}

/// Maps a `cryptoki` error to [`KeystoreError::Token`], saying what was being done.
fn token_err(what: &str) -> impl FnOnce(CkError) -> KeystoreError + '_ {
    move |e| KeystoreError::Token(format!("{what}: {}", describe(&e)))
}

/// What the state object records of a key (never its value).
#[derive(Clone)]
struct KeyMeta {
    name: String,
    version: u8,
    alg: PurseAlg,
    state: KeyState,
    kcv: [u8; 3],
}

/// The contents of the state object.
#[derive(Clone, Default)]
struct State {
    generation: u64,
    keys: Vec<KeyMeta>,
    log: Vec<CeremonyEvent>,
}

/// The issuer's keystore in a PKCS#11 token (see the module doc).
pub struct Pkcs11Keystore {
    config: Pkcs11Config,
    session: Mutex<Session>,
    state: State,
}

impl fmt::Debug for Pkcs11Keystore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Keystore")
            .field("module", &self.config.module)
            .field("token_label", &self.config.token_label)
            .field("keys", &self.state.keys.len())
            .field("generation", &self.state.generation)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Keystore {
    /// Opens the token with this label, logs in as user with `user_pin`.
    ///
    /// # Errors
    /// [`KeystoreError::TokenNotFound`] when no initialized token has the label;
    /// [`KeystoreError::WrongPin`] when the token refuses the PIN; [`KeystoreError::NotAKeystore`]
    /// when the state object is malformed; [`KeystoreError::Token`] for any other PKCS#11
    /// failure (module not loadable, several tokens with the label, PIN locked, the token already
    /// open in this process).
    pub fn open(config: &Pkcs11Config, user_pin: &Passphrase) -> KsResult<Self> {
        let ctx = module_context(&config.module)?;
        let slot = find_token(&ctx, config)?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(token_err("opening a session"))?;
        let pin = AuthPin::from(user_pin.expose().to_owned());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => {}
            Err(CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
                _,
            )) => {
                return Err(KeystoreError::WrongPin {
                    label: config.token_label.clone(),
                })
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(KeystoreError::Token(format!(
                    "the user PIN of token {:?} is locked: the security officer must reset it",
                    config.token_label
                )))
            }
            Err(CkError::Pkcs11(RvError::UserPinNotInitialized, _)) => {
                return Err(KeystoreError::Token(format!(
                    "token {:?} has no user PIN yet: the security officer must set one",
                    config.token_label
                )))
            }
            Err(CkError::Pkcs11(
                RvError::UserAlreadyLoggedIn | RvError::UserAnotherAlreadyLoggedIn,
                _,
            )) => {
                return Err(KeystoreError::Token(format!(
                    "token {:?} is already logged in by this process: close the other keystore \
                     (or session) on it first",
                    config.token_label
                )))
            }
            Err(e) => return Err(token_err("logging in")(e)),
        }
        let state = load_state(&session)?;
        Ok(Self {
            config: config.clone(),
            session: Mutex::new(session),
            state,
        })
    }

    /// The configuration this keystore was opened with.
    pub fn config(&self) -> &Pkcs11Config {
        &self.config
    }

    /// Checks that `(name, version)` is an active key of generation `alg`.
    fn check_active(&self, name: &str, version: u8, alg: PurseAlg) -> KsResult<()> {
        let k = self
            .state
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
        Ok(())
    }

    /// The card's key diversified in the token from the active master key `name`:
    /// `3DES-ECB(master, D ‖ NOT D)`.
    fn diversified(&self, name: &str, card: &CardKey) -> KsResult<Zeroizing<[u8; 16]>> {
        refuse_sm4(card.alg)?;
        self.check_active(name, card.key_version, card.alg)?;
        let session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let handle = find_key(&session, name, card.key_version)?.ok_or_else(|| {
            KeystoreError::Token(format!(
                "key object {} is missing from the token",
                key_label(name, card.key_version)
            ))
        })?;
        let mut data = [0u8; 16];
        data[..8].copy_from_slice(&card.diversifier);
        for (out, d) in data[8..].iter_mut().zip(card.diversifier) {
            *out = !d;
        }
        let out = Zeroizing::new(
            session
                .encrypt(&Mechanism::Des3Ecb, handle, &data)
                .map_err(token_err("diversifying a card key"))?,
        );
        let mut key = Zeroizing::new([0u8; 16]);
        if out.len() != key.len() {
            return Err(KeystoreError::Token(format!(
                "the token returned {} bytes for a 16-byte card key",
                out.len()
            )));
        }
        key.copy_from_slice(&out);
        Ok(key)
    }

    /// The load session key (single DES) of this load.
    fn seslk(&self, load: &LoadRequest) -> KsResult<iccard_crypto::SessionKey> {
        let dlk = self.diversified(MLK, &load.card)?;
        Ok(session_key(load.card.alg, &dlk, &load.session_input()))
    }

    /// Adds a key object just made in the token (`handle`) to the state, or destroys it if the
    /// state cannot be written.
    fn add(
        &mut self,
        kind: CeremonyKind,
        name: &str,
        version: u8,
        alg: PurseAlg,
        handle: ObjectHandle,
        operator: &str,
    ) -> KsResult<KeyInfo> {
        let session = self
            .session
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let result = token_kcv(session, handle).and_then(|kcv| {
            commit(session, &mut self.state, |s| {
                s.keys.push(KeyMeta {
                    name: name.into(),
                    version,
                    alg,
                    state: KeyState::Inactive,
                    kcv,
                });
                s.log.push(CeremonyEvent {
                    at_unix: now_unix(),
                    kind,
                    name: name.into(),
                    version,
                    operator: operator.into(),
                    kcv: hex::encode_upper(kcv),
                });
                Ok(())
            })?;
            Ok(kcv)
        });
        match result {
            Ok(kcv) => Ok(KeyInfo {
                name: name.into(),
                version,
                alg: Some(alg),
                state: KeyState::Inactive,
                kcv: hex::encode_upper(kcv),
            }),
            Err(e) => {
                // Not recorded, so never usable: remove it (else the next use of the label does).
                let _ = session.destroy_object(handle);
                Err(e)
            }
        }
    }

    /// Checks a new key's name, version and operator, and clears a leftover object with its label.
    fn prepare_new(&mut self, name: &str, version: u8, operator: &str) -> KsResult<()> {
        check_name(name)?;
        check_operator(operator)?;
        if self
            .state
            .keys
            .iter()
            .any(|k| k.name == name && k.version == version)
        {
            return Err(KeystoreError::Invalid {
                what: "key version",
                why: format!("{name} version {version} already exists"),
            });
        }
        let session = self
            .session
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        // Objects with this label that no state names are leftovers of a ceremony cut short
        // (created, then the state write never happened): never usable, so destroyed.
        for handle in find_keys(session, name, version)? {
            session
                .destroy_object(handle)
                .map_err(token_err("destroying an unrecorded key object"))?;
        }
        Ok(())
    }

    fn transition(
        &mut self,
        name: &str,
        version: u8,
        operator: &str,
        kind: CeremonyKind,
    ) -> KsResult<()> {
        check_operator(operator)?;
        let session = self
            .session
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        commit(session, &mut self.state, |s| {
            let k = s
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
            let kcv = hex::encode_upper(k.kcv);
            s.log.push(CeremonyEvent {
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

impl Keystore for Pkcs11Keystore {
    fn card_key(
        &self,
        name: &str,
        version: u8,
        alg: PurseAlg,
        data: &[u8; 8],
    ) -> KsResult<Zeroizing<[u8; 16]>> {
        self.diversified(
            name,
            &CardKey {
                diversifier: *data,
                key_version: version,
                alg,
            },
        )
    }
    fn load_mac1_ok(&self, load: &LoadRequest, mac1: &[u8; 4]) -> KsResult<bool> {
        let expected = pboc_mac(&self.seslk(load)?, &load.mac1_input());
        Ok(ct_eq(&expected, mac1))
    }

    fn load_mac2(&self, load: &LoadRequest, when: &[u8; 7]) -> KsResult<[u8; 4]> {
        Ok(pboc_mac(&self.seslk(load)?, &load.mac2_input(when)))
    }

    fn unload_mac3_ok(
        &self,
        unload: &LoadRequest,
        new_balance: u32,
        when: &[u8; 7],
        mac3: &[u8; 4],
    ) -> KsResult<bool> {
        let expected = pboc_mac(&self.seslk(unload)?, &unload.mac3_input(new_balance, when));
        Ok(ct_eq(&expected, mac3))
    }

    fn verify_tac(&self, card: &CardKey, input: &TacInput, tac: &[u8; 4]) -> KsResult<bool> {
        let dtk = self.diversified(MTK, card)?;
        let expected = pboc_mac(&tac_key(card.alg, &dtk), &input.bytes());
        Ok(ct_eq(&expected, tac))
    }

    fn generate(&mut self, name: &str, alg: PurseAlg, operator: &str) -> KsResult<KeyInfo> {
        refuse_sm4(alg)?;
        let last = self
            .state
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
        self.prepare_new(name, version, operator)?;
        let session = self
            .session
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let handle = session
            .generate_key(
                &Mechanism::Des2KeyGen,
                &master_template(&key_label(name, version)),
            )
            .map_err(token_err("generating a key in the token"))?;
        self.add(CeremonyKind::Created, name, version, alg, handle, operator)
    }

    fn import(
        &mut self,
        name: &str,
        version: u8,
        alg: PurseAlg,
        bytes: &[u8],
        operator: &str,
    ) -> KsResult<KeyInfo> {
        refuse_sm4(alg)?;
        if bytes.len() != 16 {
            return Err(KeystoreError::Invalid {
                what: "imported key",
                why: format!("{} bytes, a master key has 16", bytes.len()),
            });
        }
        self.prepare_new(name, version, operator)?;
        let expected_kcv = kcv(Cipher::TripleDes, bytes).map_err(|e| KeystoreError::Invalid {
            what: "imported key",
            why: e.to_string(),
        })?;
        let mut template = master_template(&key_label(name, version));
        template.push(Attribute::Class(ObjectClass::SECRET_KEY));
        template.push(Attribute::KeyType(KeyType::DES2));
        template.push(Attribute::Value(bytes.to_vec()));
        let session = self
            .session
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let created = session.create_object(&template);
        for attribute in &mut template {
            if let Attribute::Value(v) = attribute {
                v.zeroize();
            }
        }
        let handle = created.map_err(token_err("importing a key into the token"))?;
        // The token must hold what was given: compare its KCV with ours before recording it.
        match token_kcv(session, handle) {
            Ok(kcv) if kcv[..] == expected_kcv[..] => {}
            Ok(_) => {
                let _ = session.destroy_object(handle);
                return Err(KeystoreError::Token(
                    "the imported key's check value in the token differs from the key given".into(),
                ));
            }
            Err(e) => {
                let _ = session.destroy_object(handle);
                return Err(e);
            }
        }
        self.add(CeremonyKind::Imported, name, version, alg, handle, operator)
    }

    fn activate(&mut self, name: &str, version: u8, operator: &str) -> KsResult<()> {
        self.transition(name, version, operator, CeremonyKind::Activated)
    }

    fn retire(&mut self, name: &str, version: u8, operator: &str) -> KsResult<()> {
        self.transition(name, version, operator, CeremonyKind::Retired)
    }

    fn list(&self) -> Vec<KeyInfo> {
        let mut v: Vec<KeyInfo> = self
            .state
            .keys
            .iter()
            .map(|k| KeyInfo {
                name: k.name.clone(),
                version: k.version,
                alg: Some(k.alg),
                state: k.state,
                kcv: hex::encode_upper(k.kcv),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
        v
    }

    fn ceremony_log(&self) -> Vec<CeremonyEvent> {
        self.state.log.clone()
    }
}

fn refuse_sm4(alg: PurseAlg) -> KsResult<()> {
    match alg {
        PurseAlg::TripleDes => Ok(()),
        PurseAlg::Sm4 => Err(KeystoreError::AlgUnsupported { alg, why: NO_SM4 }),
    }
}

/// The attributes of a master key object (class, key type and value are added for an import).
fn master_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(vec![MechanismType::DES3_ECB]),
    ]
}

/// The token holding `config.token_label`.
fn find_token(ctx: &Pkcs11, config: &Pkcs11Config) -> KsResult<Slot> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(token_err("listing the slots"))?;
    let mut found = Vec::new();
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(token_err("reading token information"))?;
        if info.label() == config.token_label {
            found.push(slot);
        }
    }
    match found[..] {
        [slot] => Ok(slot),
        [] => Err(KeystoreError::TokenNotFound {
            label: config.token_label.clone(),
            module: config.module.clone(),
        }),
        _ => Err(KeystoreError::Token(format!(
            "{} tokens are labelled {:?}: give each token its own label",
            found.len(),
            config.token_label
        ))),
    }
}

/// Every secret-key token object labelled for `(name, version)`.
fn find_keys(session: &Session, name: &str, version: u8) -> KsResult<Vec<ObjectHandle>> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Label(key_label(name, version).into_bytes()),
        ])
        .map_err(token_err("finding a key object"))
}

/// The one key object of `(name, version)`, if present.
fn find_key(session: &Session, name: &str, version: u8) -> KsResult<Option<ObjectHandle>> {
    let found = find_keys(session, name, version)?;
    match found[..] {
        [] => Ok(None),
        [handle] => Ok(Some(handle)),
        _ => Err(KeystoreError::Token(format!(
            "{} key objects are labelled {}",
            found.len(),
            key_label(name, version)
        ))),
    }
}

/// The key check value computed by the token: `3DES-ECB(key, 00…00)`, first 3 bytes.
fn token_kcv(session: &Session, handle: ObjectHandle) -> KsResult<[u8; 3]> {
    let out = session
        .encrypt(&Mechanism::Des3Ecb, handle, &[0u8; 8])
        .map_err(token_err("computing a key check value"))?;
    match out[..] {
        [a, b, c, ..] => Ok([a, b, c]),
        _ => Err(KeystoreError::Token(
            "the token returned a short key check value".into(),
        )),
    }
}

/// Every state object on the token, with its generation (from the label).
fn state_objects(session: &Session) -> KsResult<Vec<(u64, ObjectHandle)>> {
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Application(APPLICATION.to_vec()),
        ])
        .map_err(token_err("finding the state object"))?;
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        let attrs = session
            .get_attributes(handle, &[AttributeType::Label])
            .map_err(token_err("reading a state object's label"))?;
        let generation = attrs.iter().find_map(|a| match a {
            Attribute::Label(l) => std::str::from_utf8(l)
                .ok()
                .and_then(|l| l.strip_prefix(STATE_LABEL))
                .and_then(|g| u64::from_str_radix(g, 16).ok()),
            _ => None,
        });
        if let Some(generation) = generation {
            out.push((generation, handle));
        }
    }
    Ok(out)
}

/// The newest state on the token (an empty one when there is none yet).
fn load_state(session: &Session) -> KsResult<State> {
    let Some((generation, handle)) = state_objects(session)?.into_iter().max_by_key(|(g, _)| *g)
    else {
        return Ok(State::default());
    };
    let bad = |why: &str| KeystoreError::NotAKeystore {
        path: PathBuf::from(format!("{STATE_LABEL}{generation:016x}")),
        why: why.into(),
    };
    let attrs = session
        .get_attributes(handle, &[AttributeType::Value])
        .map_err(token_err("reading the state object"))?;
    let value = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
        .ok_or_else(|| bad("no value"))?;
    let state = decode(&value).ok_or_else(|| bad("malformed contents"))?;
    if state.generation != generation {
        return Err(bad("its generation differs from its label"));
    }
    Ok(state)
}

/// Applies `change` to a copy of the state, writes it as the next generation, destroys the older
/// state objects, then keeps it.
fn commit(
    session: &Session,
    state: &mut State,
    change: impl FnOnce(&mut State) -> KsResult<()>,
) -> KsResult<()> {
    let mut next = state.clone();
    change(&mut next)?;
    next.generation = state
        .generation
        .checked_add(1)
        .ok_or_else(|| KeystoreError::Token("state generation counter exhausted".into()))?;
    let older = state_objects(session)?;
    if older.iter().any(|(g, _)| *g >= next.generation) {
        return Err(KeystoreError::Token(
            "the token holds a newer keystore state than this process read: another process \
             changed it; open the keystore again"
                .into(),
        ));
    }
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Modifiable(false),
            Attribute::Application(APPLICATION.to_vec()),
            Attribute::Label(format!("{STATE_LABEL}{:016x}", next.generation).into_bytes()),
            Attribute::Value(encode(&next)),
        ])
        .map_err(token_err("writing the keystore state"))?;
    // The new generation is written, hence in force; an old one left behind by a failure here
    // is only older, and goes at the next change.
    for (_, handle) in older {
        let _ = session.destroy_object(handle);
    }
    *state = next;
    Ok(())
}

fn state_id(s: KeyState) -> u8 {
    match s {
        KeyState::Inactive => 0,
        KeyState::Active => 1,
        KeyState::Retired => 2,
    }
}

fn state_from_id(id: u8) -> Option<KeyState> {
    match id {
        0 => Some(KeyState::Inactive),
        1 => Some(KeyState::Active),
        2 => Some(KeyState::Retired),
        _ => None,
    }
}

// State layout (no key values anywhere): magic, u64 generation; u32 key count, then per key:
// u8 name length, name, u8 version, u8 alg id, u8 state, 3 KCV bytes; u32 event count, then per
// event: i64 time, u8 kind, u8 name length, name, u8 version, u16 operator length, operator,
// 3 KCV bytes. All integers big-endian.
fn encode(s: &State) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + s.keys.len() * 32 + s.log.len() * 48);
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&s.generation.to_be_bytes());
    out.extend_from_slice(&count(s.keys.len()));
    for k in &s.keys {
        out.push(k.name.len() as u8);
        out.extend_from_slice(k.name.as_bytes());
        out.push(k.version);
        out.push(k.alg.id());
        out.push(state_id(k.state));
        out.extend_from_slice(&k.kcv);
    }
    out.extend_from_slice(&count(s.log.len()));
    for e in &s.log {
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

fn decode(bytes: &[u8]) -> Option<State> {
    let mut r = Reader(bytes);
    if r.take(STATE_MAGIC.len())? != STATE_MAGIC {
        return None;
    }
    let mut s = State {
        generation: r.u64()?,
        ..State::default()
    };
    for _ in 0..r.u32()? {
        let n = usize::from(r.u8()?);
        let name = r.text(n)?;
        let version = r.u8()?;
        let alg = PurseAlg::from_id(r.u8()?)?;
        let state = state_from_id(r.u8()?)?;
        let kcv = r.kcv()?;
        s.keys.push(KeyMeta {
            name,
            version,
            alg,
            state,
            kcv,
        });
    }
    for _ in 0..r.u32()? {
        let at_unix = r.u64()? as i64;
        let kind = CeremonyKind::from_id(r.u8()?)?;
        let n = usize::from(r.u8()?);
        let name = r.text(n)?;
        let version = r.u8()?;
        let n = usize::from(r.u16()?);
        let operator = r.text(n)?;
        let kcv = hex::encode_upper(r.kcv()?);
        s.log.push(CeremonyEvent {
            at_unix,
            kind,
            name,
            version,
            operator,
            kcv,
        });
    }
    r.0.is_empty().then_some(s)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// The same rules as the local keystore's.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let s = State {
            generation: 7,
            keys: vec![KeyMeta {
                name: "MLK".into(),
                version: 3,
                alg: PurseAlg::TripleDes,
                state: KeyState::Retired,
                kcv: [0xAB, 0xCD, 0xEF],
            }],
            log: vec![CeremonyEvent {
                at_unix: 1_700_000_000,
                kind: CeremonyKind::Retired,
                name: "MLK".into(),
                version: 3,
                operator: "zoë".into(),
                kcv: "ABCDEF".into(),
            }],
        };
        let bytes = encode(&s);
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back.generation, 7);
        assert_eq!(back.keys.len(), 1);
        assert_eq!(back.keys[0].state, KeyState::Retired);
        assert_eq!(back.keys[0].kcv, [0xAB, 0xCD, 0xEF]);
        assert_eq!(back.log, s.log);
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).is_none());
        let mut wrong_magic = bytes;
        wrong_magic[0] ^= 1;
        assert!(decode(&wrong_magic).is_none());
    }

    #[test]
    fn labels() {
        assert_eq!(key_label("MTK", 12), "iccard:MTK:12");
    }
}
