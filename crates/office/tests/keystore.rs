//! The keystore: the encrypted file round trip, wrong passphrases, no key in clear on disk,
//! MAC1/MAC2/TAC against an independent computation with `iccard_crypto`, key states, the
//! ceremony log and the development key set's refusal in production.

use iccard_crypto::{diversify, pboc_mac, session_key, tac_key, PurseAlg};
use iccard_office::keystore::{
    CardKey, CeremonyKind, DevKeystore, KdfParams, KeyState, Keystore, KeystoreError, LoadRequest,
    LocalKeystore, Passphrase, TacInput,
};
use iccard_office::Mode;

const MLK_VALUE: [u8; 16] = [
    0x9a, 0x01, 0x5c, 0x33, 0xe7, 0x42, 0x18, 0xb6, 0x7d, 0x20, 0xc4, 0x5e, 0x81, 0x0f, 0xaa, 0x63,
];
const MTK_VALUE: [u8; 16] = [
    0x4b, 0xd2, 0x06, 0x91, 0x3e, 0xf8, 0x27, 0x5a, 0xc1, 0x6d, 0x10, 0xe9, 0x72, 0xb4, 0x38, 0x05,
];
const WHEN: [u8; 7] = [0x20, 0x26, 0x11, 0x26, 0x02, 0x18, 0x30];

fn pass(p: &str) -> Passphrase {
    Passphrase::new(p)
}

fn store_with_keys(dir: &tempfile::TempDir, alg: PurseAlg) -> LocalKeystore {
    let path = dir.path().join("keys.icks");
    let mut ks = LocalKeystore::create(
        &path,
        &pass("correct horse"),
        KdfParams::insecure_for_tests(),
    )
    .unwrap();
    ks.import("MLK", 1, alg, &MLK_VALUE, "alice").unwrap();
    ks.import("MTK", 1, alg, &MTK_VALUE, "alice").unwrap();
    ks.activate("MLK", 1, "bob").unwrap();
    ks.activate("MTK", 1, "bob").unwrap();
    ks
}

fn load(alg: PurseAlg) -> LoadRequest {
    LoadRequest {
        kind: iccard_terminal::OnlineKind::Load,
        card: CardKey {
            diversifier: [0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x42],
            key_version: 1,
            alg,
        },
        random: [0xde, 0xad, 0xbe, 0xef],
        online_serial: 7,
        balance_before: 1_000,
        amount: 5_000,
        terminal_id: [0x00, 0x00, 0x00, 0x00, 0x00, 0x01],
    }
}

/// The PBOC formulas written out here, independently of the keystore's code.
fn reference(alg: PurseAlg) -> ([u8; 4], [u8; 4], [u8; 4]) {
    let l = load(alg);
    let dlk = diversify(alg, &MLK_VALUE, &l.card.diversifier);
    let ses = session_key(alg, &dlk, &[0xde, 0xad, 0xbe, 0xef, 0x00, 0x07, 0x80, 0x00]);
    let mut m1 = Vec::new();
    m1.extend_from_slice(&1_000u32.to_be_bytes());
    m1.extend_from_slice(&5_000u32.to_be_bytes());
    m1.push(0x02);
    m1.extend_from_slice(&l.terminal_id);
    let mac1 = pboc_mac(&ses, &m1);
    let mut m2 = Vec::new();
    m2.extend_from_slice(&5_000u32.to_be_bytes());
    m2.push(0x02);
    m2.extend_from_slice(&l.terminal_id);
    m2.extend_from_slice(&WHEN);
    let mac2 = pboc_mac(&ses, &m2);
    let dtk = diversify(alg, &MTK_VALUE, &l.card.diversifier);
    let mut t = Vec::new();
    t.extend_from_slice(&6_000u32.to_be_bytes());
    t.extend_from_slice(&7u16.to_be_bytes());
    t.extend_from_slice(&5_000u32.to_be_bytes());
    t.push(0x02);
    t.extend_from_slice(&l.terminal_id);
    t.extend_from_slice(&WHEN);
    let tac = pboc_mac(&tac_key(alg, &dtk), &t);
    (mac1, mac2, tac)
}

fn load_tac() -> TacInput {
    TacInput::Load {
        new_balance: 6_000,
        online_serial: 7,
        amount: 5_000,
        terminal_id: [0, 0, 0, 0, 0, 1],
        when: WHEN,
    }
}

#[test]
fn mac1_mac2_tac_match_the_formulas_for_both_generations() {
    for alg in [PurseAlg::TripleDes, PurseAlg::Sm4] {
        let dir = tempfile::tempdir().unwrap();
        let ks = store_with_keys(&dir, alg);
        let (mac1, mac2, tac) = reference(alg);
        let l = load(alg);
        assert!(ks.load_mac1_ok(&l, &mac1).unwrap(), "{alg}");
        let mut bad = mac1;
        bad[0] ^= 1;
        assert!(!ks.load_mac1_ok(&l, &bad).unwrap());
        assert_eq!(ks.load_mac2(&l, &WHEN).unwrap(), mac2, "{alg}");
        assert!(ks.verify_tac(&l.card, &load_tac(), &tac).unwrap(), "{alg}");
        let mut bad = tac;
        bad[3] ^= 0x80;
        assert!(!ks.verify_tac(&l.card, &load_tac(), &bad).unwrap());
        // A key of the other generation is refused, not silently used.
        let other = if alg == PurseAlg::Sm4 {
            PurseAlg::TripleDes
        } else {
            PurseAlg::Sm4
        };
        assert!(matches!(
            ks.load_mac2(&load(other), &WHEN),
            Err(KeystoreError::AlgMismatch { .. })
        ));
    }
}

#[test]
fn round_trip_and_wrong_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let ks = store_with_keys(&dir, PurseAlg::TripleDes);
    let path = ks.path().to_path_buf();
    let listed = ks.list();
    drop(ks);
    let again = LocalKeystore::open(&path, &pass("correct horse")).unwrap();
    assert_eq!(again.list(), listed);
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|k| k.state == KeyState::Active));
    let (mac1, _, _) = reference(PurseAlg::TripleDes);
    assert!(again
        .load_mac1_ok(&load(PurseAlg::TripleDes), &mac1)
        .unwrap());
    let err = LocalKeystore::open(&path, &pass("wrong horse")).unwrap_err();
    assert!(matches!(err, KeystoreError::WrongPassphrase { .. }));
    assert!(err.to_string().contains("wrong passphrase"));
    // An altered file is refused the same way.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        LocalKeystore::open(&path, &pass("correct horse")),
        Err(KeystoreError::WrongPassphrase { .. })
    ));
    // Creating over an existing file is refused.
    assert!(matches!(
        LocalKeystore::create(&path, &pass("x"), KdfParams::insecure_for_tests()),
        Err(KeystoreError::AlreadyExists { .. })
    ));
}

#[test]
fn passphrase_from_the_environment() {
    let var = "ICCARD_TEST_KEYSTORE_PASSPHRASE_UNSET_0F3A";
    assert!(matches!(
        Passphrase::from_env(var),
        Err(KeystoreError::NoPassphrase { .. })
    ));
    assert_eq!(format!("{:?}", pass("secret")), "Passphrase(..)");
}

#[test]
fn the_file_never_holds_a_key_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let mut ks = store_with_keys(&dir, PurseAlg::Sm4);
    ks.generate("MPK", PurseAlg::Sm4, "alice").unwrap();
    let bytes = std::fs::read(ks.path()).unwrap();
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    for key in [MLK_VALUE, MTK_VALUE] {
        assert!(!bytes.windows(16).any(|w| w == key));
        assert!(!bytes.windows(8).any(|w| w == &key[..8]));
        assert!(!text.contains(&hex::encode(key)));
    }
    // Nor the operator names or key names (the whole file is encrypted).
    assert!(!text.contains("alice"));
    assert!(!text.contains("mlk"));
    let debug = format!("{ks:?}");
    assert!(!debug.to_ascii_lowercase().contains(&hex::encode(MLK_VALUE)));
    assert!(debug.starts_with("LocalKeystore"), "{debug}");
}

#[test]
fn retired_and_inactive_keys_are_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let mut ks = store_with_keys(&dir, PurseAlg::TripleDes);
    let l = load(PurseAlg::TripleDes);
    ks.retire("MLK", 1, "carol").unwrap();
    assert!(matches!(
        ks.load_mac2(&l, &WHEN),
        Err(KeystoreError::NotActive {
            state: KeyState::Retired,
            ..
        })
    ));
    assert!(matches!(
        ks.activate("MLK", 1, "carol"),
        Err(KeystoreError::BadTransition { .. })
    ));
    // Still retired after reopening.
    let path = ks.path().to_path_buf();
    drop(ks);
    let mut ks = LocalKeystore::open(&path, &pass("correct horse")).unwrap();
    assert!(ks.load_mac1_ok(&l, &[0; 4]).is_err());
    // A generated key is version 2 and inactive until activated.
    let info = ks.generate("MLK", PurseAlg::TripleDes, "alice").unwrap();
    assert_eq!((info.version, info.state), (2, KeyState::Inactive));
    assert_eq!(info.kcv.len(), 6);
    let l2 = LoadRequest {
        card: CardKey {
            key_version: 2,
            ..l.card
        },
        ..l
    };
    assert!(matches!(
        ks.load_mac2(&l2, &WHEN),
        Err(KeystoreError::NotActive {
            state: KeyState::Inactive,
            ..
        })
    ));
    ks.activate("MLK", 2, "bob").unwrap();
    ks.load_mac2(&l2, &WHEN).unwrap();
    // Unknown versions and malformed imports are refused.
    assert!(matches!(
        ks.verify_tac(
            &CardKey {
                key_version: 9,
                ..l.card
            },
            &load_tac(),
            &[0; 4]
        ),
        Err(KeystoreError::UnknownKey { .. })
    ));
    assert!(ks
        .import("MLK", 3, PurseAlg::TripleDes, &[1; 8], "alice")
        .is_err());
    assert!(ks
        .import("MLK", 1, PurseAlg::TripleDes, &[1; 16], "alice")
        .is_err());
}

#[test]
fn ceremony_log_records_every_event_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut ks = store_with_keys(&dir, PurseAlg::TripleDes);
    ks.generate("MPK", PurseAlg::TripleDes, "dave").unwrap();
    ks.retire("MTK", 1, "erin").unwrap();
    let path = ks.path().to_path_buf();
    drop(ks);
    let ks = LocalKeystore::open(&path, &pass("correct horse")).unwrap();
    let log = ks.ceremony_log();
    let seen: Vec<(CeremonyKind, &str, u8, &str)> = log
        .iter()
        .map(|e| (e.kind, e.name.as_str(), e.version, e.operator.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (CeremonyKind::Imported, "MLK", 1, "alice"),
            (CeremonyKind::Imported, "MTK", 1, "alice"),
            (CeremonyKind::Activated, "MLK", 1, "bob"),
            (CeremonyKind::Activated, "MTK", 1, "bob"),
            (CeremonyKind::Created, "MPK", 1, "dave"),
            (CeremonyKind::Retired, "MTK", 1, "erin"),
        ]
    );
    assert!(log.iter().all(|e| e.at_unix > 1_700_000_000));
    let mlk_kcv = &ks.list()[0].kcv;
    assert_eq!(&log[0].kcv, mlk_kcv);
    assert_ne!(mlk_kcv, &hex::encode_upper(&MLK_VALUE[..3]));
}

#[test]
fn dev_keys_refused_in_production() {
    let err = DevKeystore::new(Mode::Production).unwrap_err();
    assert!(matches!(err, KeystoreError::DevKeysInProduction));
    assert!(err.to_string().contains("production"));
    let mut dev = DevKeystore::new(Mode::Development).unwrap();
    assert_eq!(format!("{dev:?}"), "DevKeystore(..)");
    assert_eq!(dev.list().len(), 8);
    assert!(dev.generate("MLK", PurseAlg::Sm4, "x").is_err());
    // The development MLK is 11 12 … 20 (docs/KEYS.md): MAC2 matches the formula with it.
    let mlk: [u8; 16] = core::array::from_fn(|i| 0x11 + i as u8);
    for alg in [PurseAlg::TripleDes, PurseAlg::Sm4] {
        let l = load(alg);
        let dlk = diversify(alg, &mlk, &l.card.diversifier);
        let ses = session_key(alg, &dlk, &l.session_input());
        assert_eq!(
            dev.load_mac2(&l, &WHEN).unwrap(),
            pboc_mac(&ses, &l.mac2_input(&WHEN))
        );
    }
}
