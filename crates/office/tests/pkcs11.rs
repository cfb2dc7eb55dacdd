//! The PKCS#11 keystore against SoftHSM2, for real: parity with the local keystore (same
//! imported keys, same MACs, verdicts and KCVs), the token's 3DES on a published PBOC vector,
//! key states, generation in the token, state and ceremony log across reopening, crash leftovers,
//! and that a master key cannot be read out of the token by any PKCS#11 means.
//!
//! Needs `SOFTHSM2_CONF` (from `scripts/softhsm-test-setup`); without it each test says why and
//! passes, unless `ICCARD_TEST_REQUIRE_SOFTHSM=1`, which makes a missing SoftHSM2 a failure.
//! Every test initializes a token of its own on the free slot, so tests never share keys.

use std::path::PathBuf;
use std::sync::Mutex;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use iccard_crypto::{diversify, pboc_mac, session_key, tac_key, PurseAlg, SessionKey};
use iccard_office::keystore::{
    CardKey, CeremonyKind, KdfParams, KeyState, Keystore, KeystoreError, LoadRequest,
    LocalKeystore, Passphrase, TacInput,
};
use iccard_office::pkcs11::{key_label, module_context, Pkcs11Config, Pkcs11Keystore};

const SO_PIN: &str = "so-pin-not-a-secret";
const USER_PIN: &str = "user-pin-4711";
const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

const MLK_VALUE: [u8; 16] = [
    0x9a, 0x01, 0x5c, 0x33, 0xe7, 0x42, 0x18, 0xb6, 0x7d, 0x20, 0xc4, 0x5e, 0x81, 0x0f, 0xaa, 0x63,
];
const MTK_VALUE: [u8; 16] = [
    0x4b, 0xd2, 0x06, 0x91, 0x3e, 0xf8, 0x27, 0x5a, 0xc1, 0x6d, 0x10, 0xe9, 0x72, 0xb4, 0x38, 0x05,
];

// Published PBOC load vector. Source: http://www.ncuisine.com/xingyexinwen/379.html (blog
// "基于PBOC的电子钱包的圈存过程"), as copied in crates/crypto/tests/vectors/public-vectors.json
// (pboc_load_SESLK_blog, pboc_load_MAC1_blog, pboc_load_MAC2_blog). An ED load (type 01).
const KAT_DLK: [u8; 16] = [
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
];
/// random 11223344 ‖ online serial 0000 ‖ 8000.
const KAT_SESSION_INPUT: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x00, 0x00, 0x80, 0x00];
const KAT_SESLK: [u8; 8] = [0x9B, 0x1D, 0x92, 0x4E, 0x05, 0x59, 0x56, 0x03];
/// old balance 00000000 ‖ amount 00001000 ‖ 01 ‖ terminal 001122334455.
const KAT_MAC1_INPUT: [u8; 15] = [
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
];
const KAT_MAC1: [u8; 4] = [0x29, 0x88, 0xAE, 0x5A];
/// amount 00001000 ‖ 01 ‖ terminal 001122334455 ‖ 20111221 ‖ 214822.
const KAT_MAC2_INPUT: [u8; 18] = [
    0x00, 0x00, 0x10, 0x00, 0x01, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x20, 0x11, 0x12, 0x21, 0x21,
    0x48, 0x22,
];
const KAT_MAC2: [u8; 4] = [0x3A, 0x84, 0x5B, 0xF0];

// ------------------------------------------------------------------ SoftHSM2 tokens

fn module() -> PathBuf {
    std::env::var_os("ICCARD_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODULE))
}

/// Whether SoftHSM2 is there; `false` (after saying why) means the test is skipped.
fn softhsm_available(test: &str) -> bool {
    let required = std::env::var("ICCARD_TEST_REQUIRE_SOFTHSM").as_deref() == Ok("1");
    let why = if std::env::var_os("SOFTHSM2_CONF").is_none() {
        "SOFTHSM2_CONF is not set (export SOFTHSM2_CONF=$(bash scripts/softhsm-test-setup))"
            .to_string()
    } else if !module().exists() {
        format!("the PKCS#11 module {} is missing", module().display())
    } else {
        return true;
    };
    assert!(!required, "{test}: ICCARD_TEST_REQUIRE_SOFTHSM=1 but {why}");
    eprintln!("skipping {test}: {why}");
    false
}

/// Initializes a new token on SoftHSM2's free slot with a user PIN, and returns where it is.
fn fresh_token(test: &str) -> Option<Pkcs11Config> {
    static INIT: Mutex<()> = Mutex::new(());
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    if !softhsm_available(test) {
        return None;
    }
    let _one_at_a_time = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let ctx = module_context(&module()).expect("SoftHSM2 module loads");
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    // Labels are at most 32 bytes; the process id keeps runs on one directory apart.
    let label = format!(
        "t{}-{}-{n}",
        std::process::id(),
        &test[..test.len().min(12)]
    );
    let free = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| !ctx.get_token_info(*s).unwrap().token_initialized())
        .expect("SoftHSM2 offers a free slot");
    ctx.init_token(free, &AuthPin::from(SO_PIN.to_string()), &label)
        .expect("init token");
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == label)
        .expect("the new token is listed");
    let so = ctx.open_rw_session(slot).unwrap();
    so.login(UserType::So, Some(&AuthPin::from(SO_PIN.to_string())))
        .unwrap();
    so.init_pin(&AuthPin::from(USER_PIN.to_string())).unwrap();
    so.logout().unwrap();
    drop(so);
    Some(Pkcs11Config {
        module: module(),
        token_label: label,
    })
}

fn pin(p: &str) -> Passphrase {
    Passphrase::new(p)
}

fn open(config: &Pkcs11Config) -> Pkcs11Keystore {
    Pkcs11Keystore::open(config, &pin(USER_PIN)).expect("open the token")
}

/// A session of the test's own on the token, logged in as the user (PKCS#11 login is per process
/// and token, so while a keystore is open on it the login is already there).
fn inspector(config: &Pkcs11Config) -> Session {
    let ctx = module_context(&config.module).unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == config.token_label)
        .unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    match s.login(UserType::User, Some(&AuthPin::from(USER_PIN.to_string()))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("inspector login: {e}"),
    }
    s
}

fn key_handle(s: &Session, name: &str, version: u8) -> cryptoki::object::ObjectHandle {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(key_label(name, version).into_bytes()),
        ])
        .unwrap();
    assert_eq!(
        found.len(),
        1,
        "one object labelled {}",
        key_label(name, version)
    );
    found[0]
}

fn state_object_count(s: &Session) -> usize {
    s.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(b"iccard".to_vec()),
    ])
    .unwrap()
    .len()
}

// ------------------------------------------------------------------ inputs and references

fn load(
    diversifier: [u8; 8],
    random: [u8; 4],
    serial: u16,
    before: u32,
    amount: u32,
) -> LoadRequest {
    LoadRequest {
        kind: iccard_terminal::OnlineKind::Load,
        card: CardKey {
            diversifier,
            key_version: 1,
            alg: PurseAlg::TripleDes,
        },
        random,
        online_serial: serial,
        balance_before: before,
        amount,
        terminal_id: [0x00, 0x00, 0x12, 0x34, 0x56, serial as u8],
    }
}

fn loads() -> Vec<LoadRequest> {
    vec![
        load(
            [0x10, 0, 0, 0, 0, 0, 0, 0x42],
            [0xde, 0xad, 0xbe, 0xef],
            7,
            1_000,
            5_000,
        ),
        load(
            [0x10, 0, 0, 0, 0, 0, 0, 0x43],
            [0x01, 0x02, 0x03, 0x04],
            0,
            0,
            1,
        ),
        load([0xff; 8], [0x00; 4], 0xffff, u32::MAX - 10, 10),
        load([0x00; 8], [0x5a; 4], 0x1234, 123_456, 99_999),
        load(
            [0x87, 0x65, 0x43, 0x21, 0x0f, 0xed, 0xcb, 0xa9],
            [0xa5, 0x5a, 0xc3, 0x3c],
            300,
            42,
            4_200,
        ),
    ]
}

fn when(i: usize) -> [u8; 7] {
    [0x20, 0x26, 0x11, 0x26, 0x10, 0x30, i as u8]
}

/// The PBOC formulas written out here with `iccard_crypto`, independently of any keystore.
fn seslk(l: &LoadRequest) -> SessionKey {
    let dlk = diversify(PurseAlg::TripleDes, &MLK_VALUE, &l.card.diversifier);
    session_key(PurseAlg::TripleDes, &dlk, &l.session_input())
}

fn ref_mac1(l: &LoadRequest) -> [u8; 4] {
    pboc_mac(&seslk(l), &l.mac1_input())
}

fn ref_tac(card: &CardKey, input: &TacInput) -> [u8; 4] {
    let dtk = diversify(PurseAlg::TripleDes, &MTK_VALUE, &card.diversifier);
    pboc_mac(&tac_key(PurseAlg::TripleDes, &dtk), &input.bytes())
}

fn tac_inputs(l: &LoadRequest, i: usize) -> [TacInput; 2] {
    [
        TacInput::Load {
            new_balance: l.balance_before.wrapping_add(l.amount),
            online_serial: l.online_serial,
            amount: l.amount,
            terminal_id: l.terminal_id,
            when: when(i),
        },
        TacInput::Purchase {
            amount: l.amount / 2 + 1,
            terminal_id: l.terminal_id,
            terminal_serial: 0x0001_0000 + i as u32,
            when: when(i),
        },
    ]
}

fn with_keys(ks: &mut dyn Keystore) {
    ks.import("MLK", 1, PurseAlg::TripleDes, &MLK_VALUE, "alice")
        .unwrap();
    ks.import("MTK", 1, PurseAlg::TripleDes, &MTK_VALUE, "alice")
        .unwrap();
    ks.activate("MLK", 1, "bob").unwrap();
    ks.activate("MTK", 1, "bob").unwrap();
}

// ------------------------------------------------------------------ tests

#[test]
fn pkcs11_parity_with_the_local_keystore() {
    let Some(config) = fresh_token("parity") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut local = LocalKeystore::create(
        &dir.path().join("keys.icks"),
        &pin("local"),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
    with_keys(&mut local);
    let mut hsm = open(&config);
    with_keys(&mut hsm);

    // Same names, versions, states and key check values (the token computes its own KCVs).
    assert_eq!(hsm.list(), local.list());
    for (i, l) in loads().iter().enumerate() {
        let mac1 = ref_mac1(l);
        assert!(hsm.load_mac1_ok(l, &mac1).unwrap(), "load {i}");
        assert!(local.load_mac1_ok(l, &mac1).unwrap(), "load {i}");
        for bit in [0usize, 9, 31] {
            let mut bad = mac1;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!hsm.load_mac1_ok(l, &bad).unwrap(), "load {i} bit {bit}");
            assert!(!local.load_mac1_ok(l, &bad).unwrap());
        }
        let mac2 = hsm.load_mac2(l, &when(i)).unwrap();
        assert_eq!(mac2, local.load_mac2(l, &when(i)).unwrap(), "load {i}");
        assert_eq!(mac2, pboc_mac(&seslk(l), &l.mac2_input(&when(i))));
        for input in tac_inputs(l, i) {
            let tac = ref_tac(&l.card, &input);
            assert!(hsm.verify_tac(&l.card, &input, &tac).unwrap(), "{input:?}");
            assert!(local.verify_tac(&l.card, &input, &tac).unwrap());
            let mut bad = tac;
            bad[2] ^= 0x40;
            assert!(!hsm.verify_tac(&l.card, &input, &bad).unwrap());
            assert!(!local.verify_tac(&l.card, &input, &bad).unwrap());
        }
    }
    // A MAC1 of another card (other diversifier) is not this card's.
    let all = loads();
    assert!(!hsm.load_mac1_ok(&all[1], &ref_mac1(&all[0])).unwrap());
}

#[test]
fn pkcs11_token_3des_matches_the_published_pboc_load_vector() {
    let Some(config) = fresh_token("vector") else {
        return;
    };
    let hsm = open(&config);
    let s = inspector(&config);
    // The published DLK as a 2-key 3DES session object, used like the keystore uses master keys:
    // CKM_DES3_ECB encryption.
    let dlk = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::DES2),
            Attribute::Token(false),
            Attribute::Encrypt(true),
            Attribute::Value(KAT_DLK.to_vec()),
        ])
        .unwrap();
    let seslk = s
        .encrypt(&Mechanism::Des3Ecb, dlk, &KAT_SESSION_INPUT)
        .unwrap();
    assert_eq!(seslk, KAT_SESLK);
    let seslk = SessionKey::from_slice(PurseAlg::TripleDes, &seslk).unwrap();
    assert_eq!(pboc_mac(&seslk, &KAT_MAC1_INPUT), KAT_MAC1);
    assert_eq!(pboc_mac(&seslk, &KAT_MAC2_INPUT), KAT_MAC2);
    // And the token's diversification input D ‖ NOT D gives iccard_crypto's diversify.
    let d = [0x11, 0x22, 0x33, 0x44, 0x00, 0x00, 0x80, 0x00];
    let mut data = d.to_vec();
    data.extend(d.iter().map(|b| !b));
    let token = s.encrypt(&Mechanism::Des3Ecb, dlk, &data).unwrap();
    assert_eq!(token[..], diversify(PurseAlg::TripleDes, &KAT_DLK, &d)[..]);
    assert_eq!(token[..8], KAT_SESLK);
    s.destroy_object(dlk).unwrap();
    drop(hsm);
}

#[test]
fn pkcs11_only_active_keys_compute() {
    let Some(config) = fresh_token("states") else {
        return;
    };
    let mut ks = open(&config);
    let l = &loads()[0];
    assert!(matches!(
        ks.load_mac2(l, &when(0)),
        Err(KeystoreError::UnknownKey { version: 1, .. })
    ));
    ks.import("MLK", 1, PurseAlg::TripleDes, &MLK_VALUE, "alice")
        .unwrap();
    ks.import("MTK", 1, PurseAlg::TripleDes, &MTK_VALUE, "alice")
        .unwrap();
    assert!(matches!(
        ks.load_mac1_ok(l, &ref_mac1(l)),
        Err(KeystoreError::NotActive {
            state: KeyState::Inactive,
            ..
        })
    ));
    let tac_in = &tac_inputs(l, 0)[0];
    assert!(matches!(
        ks.verify_tac(&l.card, tac_in, &ref_tac(&l.card, tac_in)),
        Err(KeystoreError::NotActive { .. })
    ));
    ks.activate("MLK", 1, "bob").unwrap();
    ks.activate("MTK", 1, "bob").unwrap();
    assert!(ks.load_mac1_ok(l, &ref_mac1(l)).unwrap());
    assert!(ks
        .verify_tac(&l.card, tac_in, &ref_tac(&l.card, tac_in))
        .unwrap());
    assert!(matches!(
        ks.activate("MLK", 1, "bob"),
        Err(KeystoreError::BadTransition { .. })
    ));
    ks.retire("MLK", 1, "carol").unwrap();
    assert!(matches!(
        ks.load_mac2(l, &when(0)),
        Err(KeystoreError::NotActive {
            state: KeyState::Retired,
            ..
        })
    ));
    assert!(matches!(
        ks.activate("MLK", 1, "bob"),
        Err(KeystoreError::BadTransition { .. })
    ));
    assert!(matches!(
        ks.retire("MLK", 1, "bob"),
        Err(KeystoreError::BadTransition { .. })
    ));
    // Another key version the card might announce is unknown, not silently another key.
    let mut v2 = *l;
    v2.card.key_version = 2;
    assert!(matches!(
        ks.load_mac2(&v2, &when(0)),
        Err(KeystoreError::UnknownKey { version: 2, .. })
    ));
    // A duplicate and a malformed import are refused.
    assert!(matches!(
        ks.import("MLK", 1, PurseAlg::TripleDes, &MLK_VALUE, "alice"),
        Err(KeystoreError::Invalid { .. })
    ));
    assert!(matches!(
        ks.import("MLK", 3, PurseAlg::TripleDes, &MLK_VALUE[..8], "alice"),
        Err(KeystoreError::Invalid { .. })
    ));
    assert!(matches!(
        ks.import("mlk", 3, PurseAlg::TripleDes, &MLK_VALUE, "alice"),
        Err(KeystoreError::Invalid { .. })
    ));
}

#[test]
fn pkcs11_generate_activate_use() {
    let Some(config) = fresh_token("generate") else {
        return;
    };
    let mut ks = open(&config);
    let k1 = ks.generate("MLK", PurseAlg::TripleDes, "alice").unwrap();
    let k2 = ks.generate("MLK", PurseAlg::TripleDes, "alice").unwrap();
    assert_eq!((k1.version, k2.version), (1, 2));
    assert_eq!(k1.state, KeyState::Inactive);
    assert_eq!(k1.kcv.len(), 6);
    assert!(k1.kcv.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(k1.kcv, k2.kcv, "two generated keys differ");
    let mut l = loads()[0];
    assert!(matches!(
        ks.load_mac2(&l, &when(0)),
        Err(KeystoreError::NotActive { .. })
    ));
    ks.activate("MLK", 1, "bob").unwrap();
    ks.activate("MLK", 2, "bob").unwrap();
    let m1 = ks.load_mac2(&l, &when(0)).unwrap();
    assert_eq!(ks.load_mac2(&l, &when(0)).unwrap(), m1, "deterministic");
    assert_ne!(ks.load_mac2(&l, &when(1)).unwrap(), m1, "covers the time");
    l.card.key_version = 2;
    let m2 = ks.load_mac2(&l, &when(0)).unwrap();
    assert_ne!(m1, m2, "version 2 is another key");
    // Not the key it would be if the token had ignored the generated value.
    let mut zero = l;
    zero.card.key_version = 1;
    assert_ne!(
        m1,
        pboc_mac(
            &{
                let dlk = diversify(PurseAlg::TripleDes, &[0u8; 16], &zero.card.diversifier);
                session_key(PurseAlg::TripleDes, &dlk, &zero.session_input())
            },
            &zero.mac2_input(&when(0))
        )
    );
    // Generated in the token: it never was anywhere else.
    let s = inspector(&config);
    let attrs = s
        .get_attributes(
            key_handle(&s, "MLK", 1),
            &[
                AttributeType::Local,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
            ],
        )
        .unwrap();
    for a in attrs {
        assert!(
            matches!(
                a,
                Attribute::Local(true)
                    | Attribute::AlwaysSensitive(true)
                    | Attribute::NeverExtractable(true)
            ),
            "{a:?}"
        );
    }
    let log = ks.ceremony_log();
    assert_eq!(log[0].kind, CeremonyKind::Created);
    assert_eq!(log[0].kcv, k1.kcv);
    assert_eq!(log.len(), 4);
}

#[test]
fn pkcs11_state_and_log_survive_reopening() {
    let Some(config) = fresh_token("reopen") else {
        return;
    };
    let (list, log, mac2) = {
        let mut ks = open(&config);
        with_keys(&mut ks);
        ks.generate("MPK", PurseAlg::TripleDes, "dave").unwrap();
        ks.retire("MPK", 1, "erin").unwrap();
        let mac2 = ks.load_mac2(&loads()[0], &when(0)).unwrap();
        (ks.list(), ks.ceremony_log(), mac2)
    };
    let ks = open(&config);
    assert_eq!(ks.list(), list);
    assert_eq!(ks.ceremony_log(), log);
    let kinds: Vec<CeremonyKind> = log.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            CeremonyKind::Imported,
            CeremonyKind::Imported,
            CeremonyKind::Activated,
            CeremonyKind::Activated,
            CeremonyKind::Created,
            CeremonyKind::Retired,
        ]
    );
    assert_eq!(log[4].operator, "dave");
    assert_eq!(log[5].operator, "erin");
    assert_eq!(log[4].kcv, log[5].kcv);
    assert_eq!(ks.load_mac2(&loads()[0], &when(0)).unwrap(), mac2);
    assert_eq!(
        ks.list().iter().find(|k| k.name == "MPK").unwrap().state,
        KeyState::Retired
    );
    // Old generations of the state were destroyed: one state object remains.
    let s = inspector(&config);
    assert_eq!(state_object_count(&s), 1);
    // And no key value is in it: the state object holds none of the imported bytes.
    let data = s
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(b"iccard".to_vec()),
        ])
        .unwrap();
    let value = s.get_attributes(data[0], &[AttributeType::Value]).unwrap();
    let Attribute::Value(bytes) = &value[0] else {
        panic!("state value")
    };
    assert!(!bytes.windows(16).any(|w| w == MLK_VALUE || w == MTK_VALUE));
}

#[test]
fn pkcs11_crash_leftovers_are_handled() {
    let Some(config) = fresh_token("crash") else {
        return;
    };
    {
        let mut ks = open(&config);
        ks.import("MLK", 1, PurseAlg::TripleDes, &MLK_VALUE, "alice")
            .unwrap();
    }
    let s = inspector(&config);
    // A key object created by a ceremony that never recorded it (label of MTK 1).
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::DES2),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(key_label("MTK", 1).into_bytes()),
        Attribute::Encrypt(true),
        Attribute::Value(vec![0x33; 16]),
    ])
    .unwrap();
    // An older state generation a crash left behind (garbage: it must not be read).
    let stale = |generation: u64| {
        vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Application(b"iccard".to_vec()),
            Attribute::Label(format!("iccard:state:{generation:016x}").into_bytes()),
            Attribute::Value(b"not a state".to_vec()),
        ]
    };
    s.create_object(&stale(0)).unwrap();
    drop(s);
    let mut ks = open(&config);
    assert_eq!(ks.list().len(), 1, "the unrecorded MTK object is not a key");
    ks.import("MTK", 1, PurseAlg::TripleDes, &MTK_VALUE, "alice")
        .unwrap();
    ks.activate("MTK", 1, "bob").unwrap();
    ks.activate("MLK", 1, "bob").unwrap();
    let l = &loads()[0];
    let input = &tac_inputs(l, 0)[0];
    // The imported MTK is in use, not the leftover (whose value was 33…33).
    assert!(ks
        .verify_tac(&l.card, input, &ref_tac(&l.card, input))
        .unwrap());
    let s = inspector(&config);
    key_handle(&s, "MTK", 1);
    assert_eq!(state_object_count(&s), 1, "the stale generation went");
    // A newer generation that does not decode is an error, never silently skipped.
    drop(ks);
    s.create_object(&stale(0xffff)).unwrap();
    drop(s);
    let err = Pkcs11Keystore::open(&config, &pin(USER_PIN)).unwrap_err();
    assert!(matches!(err, KeystoreError::NotAKeystore { .. }), "{err}");
}

#[test]
fn pkcs11_master_key_cannot_be_read_out() {
    let Some(config) = fresh_token("extract") else {
        return;
    };
    let mut ks = open(&config);
    ks.import("MLK", 1, PurseAlg::TripleDes, &MLK_VALUE, "alice")
        .unwrap();
    ks.generate("MTK", PurseAlg::TripleDes, "alice").unwrap();
    let s = inspector(&config);
    for (name, version) in [("MLK", 1), ("MTK", 1)] {
        let key = key_handle(&s, name, version);
        // C_GetAttributeValue(CKA_VALUE) is refused as sensitive.
        assert!(matches!(
            s.get_attribute_info(key, &[AttributeType::Value]).unwrap()[..],
            [AttributeInfo::Sensitive]
        ));
        let got = s.get_attributes(key, &[AttributeType::Value]);
        assert!(
            !matches!(&got, Ok(v) if v.iter().any(|a| matches!(a, Attribute::Value(_)))),
            "{name}: value read out"
        );
        let flags = s
            .get_attributes(
                key,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Modifiable,
                    AttributeType::Decrypt,
                    AttributeType::Wrap,
                    AttributeType::Derive,
                ],
            )
            .unwrap();
        assert_eq!(
            flags,
            [
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Modifiable(false),
                Attribute::Decrypt(false),
                Attribute::Wrap(false),
                Attribute::Derive(false),
            ]
        );
        // C_WrapKey under a wrapping key of our own is refused (3DES-CBC and AES key wrap).
        let des3 = s
            .generate_key(
                &Mechanism::Des3KeyGen,
                &[Attribute::Token(false), Attribute::Wrap(true)],
            )
            .unwrap();
        assert!(s.wrap_key(&Mechanism::Des3Cbc([0; 8]), des3, key).is_err());
        let aes = s
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(false),
                    Attribute::Wrap(true),
                    Attribute::ValueLen(32.into()),
                ],
            )
            .unwrap();
        assert!(s.wrap_key(&Mechanism::AesKeyWrap, aes, key).is_err());
        // The flags cannot be turned back, nor a readable copy made.
        assert!(s
            .update_attributes(key, &[Attribute::Extractable(true)])
            .is_err());
        assert!(s
            .update_attributes(key, &[Attribute::Sensitive(false)])
            .is_err());
        assert!(s
            .update_attributes(key, &[Attribute::Decrypt(true)])
            .is_err());
        assert!(s
            .copy_object(
                key,
                &[Attribute::Extractable(true), Attribute::Token(false)]
            )
            .is_err());
        // Usable for 3DES-ECB encryption only: no decryption, no CBC.
        assert!(s.decrypt(&Mechanism::Des3Ecb, key, &[0u8; 8]).is_err());
        assert!(s
            .encrypt(&Mechanism::Des3Cbc([0; 8]), key, &[0u8; 8])
            .is_err());
        assert!(s.encrypt(&Mechanism::Des3Ecb, key, &[0u8; 8]).is_ok());
        s.destroy_object(des3).unwrap();
        s.destroy_object(aes).unwrap();
    }
    // Nothing secret in Debug.
    let debug = format!("{ks:?}");
    assert!(debug.contains(&config.token_label), "{debug}");
    assert!(!debug.contains(USER_PIN));
}

#[test]
fn pkcs11_wrong_pin_and_unknown_label_are_clear_errors() {
    let Some(config) = fresh_token("pin") else {
        return;
    };
    let err = Pkcs11Keystore::open(&config, &pin("not-the-pin")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, KeystoreError::WrongPin { .. }), "{msg}");
    assert!(msg.contains(&config.token_label), "{msg}");
    assert!(!msg.contains("not-the-pin"), "{msg}");
    // The right PIN still opens it afterwards.
    drop(open(&config));

    let missing = Pkcs11Config {
        module: module(),
        token_label: "no-such-iccard-token".into(),
    };
    let err = Pkcs11Keystore::open(&missing, &pin(USER_PIN)).unwrap_err();
    assert!(matches!(err, KeystoreError::TokenNotFound { .. }), "{err}");
    assert!(err.to_string().contains("no-such-iccard-token"), "{err}");

    let no_module = Pkcs11Config {
        module: PathBuf::from("/nonexistent/libpkcs11-nothing.so"),
        token_label: config.token_label.clone(),
    };
    let err = Pkcs11Keystore::open(&no_module, &pin(USER_PIN)).unwrap_err();
    assert!(matches!(err, KeystoreError::Token(_)), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent/libpkcs11-nothing.so"),
        "{err}"
    );

    // One keystore per token and process: a second open cannot check its PIN, so is refused.
    let first = open(&config);
    let err = Pkcs11Keystore::open(&config, &pin("anything")).unwrap_err();
    assert!(matches!(err, KeystoreError::Token(_)), "{err}");
    drop(first);
}

#[test]
fn pkcs11_sm4_is_refused_with_a_reason() {
    let Some(config) = fresh_token("sm4") else {
        return;
    };
    let mut ks = open(&config);
    for err in [
        ks.generate("MLK", PurseAlg::Sm4, "alice").unwrap_err(),
        ks.import("MLK", 1, PurseAlg::Sm4, &MLK_VALUE, "alice")
            .unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                KeystoreError::AlgUnsupported {
                    alg: PurseAlg::Sm4,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("SM4"), "{err}");
    }
    assert!(ks.list().is_empty());
    assert!(ks.ceremony_log().is_empty());
    with_keys(&mut ks);
    let mut l = loads()[0];
    l.card.alg = PurseAlg::Sm4;
    assert!(matches!(
        ks.load_mac2(&l, &when(0)),
        Err(KeystoreError::AlgUnsupported { .. })
    ));
    let input = &tac_inputs(&l, 0)[1];
    assert!(matches!(
        ks.verify_tac(&l.card, input, &[0; 4]),
        Err(KeystoreError::AlgUnsupported { .. })
    ));
}
