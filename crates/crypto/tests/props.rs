//! Property tests: round trips for every cipher and mode, padding, MACs agreeing with their
//! definitions, nothing panicking on any input length, and `ct_eq` agreeing with `==`.

use iccard_crypto::{
    aes_cmac, cbc_decrypt, cbc_encrypt, ct_eq, diversify, ecb_decrypt, ecb_encrypt, kcv, mac_alg1,
    mac_alg3, pad, pboc_mac, session_key, tac_key, unpad_method2, Cipher, Padding, PurseAlg,
    SessionKey,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn any_cipher() -> impl Strategy<Value = Cipher> {
    prop::sample::select(Cipher::ALL.to_vec())
}

fn any_padding() -> impl Strategy<Value = Padding> {
    prop_oneof![Just(Padding::Method1), Just(Padding::Method2)]
}

fn key_len(cipher: Cipher) -> BoxedStrategy<usize> {
    match cipher {
        Cipher::Des => Just(8).boxed(),
        Cipher::TripleDes => prop_oneof![Just(16), Just(24)].boxed(),
        Cipher::Sm4 | Cipher::Aes128 => Just(16).boxed(),
    }
}

/// A cipher with a valid key, whole-block data (0 to 6 blocks) and maybe an IV.
#[allow(clippy::type_complexity)]
fn keyed_case() -> impl Strategy<Value = (Cipher, Vec<u8>, Vec<u8>, Option<Vec<u8>>)> {
    any_cipher().prop_flat_map(|c| {
        let bl = c.block_len();
        (
            Just(c),
            key_len(c).prop_flat_map(|n| vec(any::<u8>(), n)),
            (0..7usize).prop_flat_map(move |blocks| vec(any::<u8>(), blocks * bl)),
            option::of(vec(any::<u8>(), bl)),
        )
    })
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

proptest! {
    #[test]
    fn ecb_round_trip((cipher, key, data, _iv) in keyed_case()) {
        let ct = ecb_encrypt(cipher, &key, &data).unwrap();
        prop_assert_eq!(ct.len(), data.len());
        prop_assert_eq!(ecb_decrypt(cipher, &key, &ct).unwrap(), data);
    }

    #[test]
    fn cbc_round_trip((cipher, key, data, iv) in keyed_case()) {
        let ct = cbc_encrypt(cipher, &key, iv.as_deref(), &data).unwrap();
        prop_assert_eq!(ct.len(), data.len());
        prop_assert_eq!(cbc_decrypt(cipher, &key, iv.as_deref(), &ct).unwrap(), data.clone());
        // None is the zero IV.
        let zero = vec![0u8; cipher.block_len()];
        prop_assert_eq!(
            cbc_encrypt(cipher, &key, None, &data).unwrap(),
            cbc_encrypt(cipher, &key, Some(&zero), &data).unwrap()
        );
        // CBC chains ECB: C1 = E(P1 ^ IV), C2 = E(P2 ^ C1).
        let bl = cipher.block_len();
        let mut prev = iv.unwrap_or(zero);
        for (p, c) in data.chunks(bl).zip(ct.chunks(bl)) {
            prop_assert_eq!(ecb_encrypt(cipher, &key, &xor(p, &prev)).unwrap(), c.to_vec());
            prev = c.to_vec();
        }
    }

    #[test]
    fn pad_unpad_round_trip(data in vec(any::<u8>(), 0..70), bl in prop::sample::select(vec![8usize, 16])) {
        let padded = pad(&data, bl, Padding::Method2);
        prop_assert_eq!(padded.len() % bl, 0);
        prop_assert!(padded.len() > data.len() && padded.len() <= data.len() + bl);
        prop_assert_eq!(unpad_method2(&padded).unwrap(), &data[..]);

        let padded = pad(&data, bl, Padding::Method1);
        prop_assert_eq!(padded.len() % bl, 0);
        prop_assert!(!padded.is_empty() && padded.starts_with(&data));
        prop_assert!(padded[data.len()..].iter().all(|&b| b == 0));
        prop_assert!(padded.len() < data.len() + bl || data.is_empty());
    }

    #[test]
    fn mac_alg1_is_last_cbc_block(
        (cipher, key, _data, iv) in keyed_case(),
        msg in vec(any::<u8>(), 0..70),
        padding in any_padding(),
    ) {
        let bl = cipher.block_len();
        let ct = cbc_encrypt(cipher, &key, iv.as_deref(), &pad(&msg, bl, padding)).unwrap();
        let mac = mac_alg1(cipher, &key, iv.as_deref(), &msg, padding).unwrap();
        prop_assert_eq!(mac, ct[ct.len() - bl..].to_vec());
    }

    #[test]
    fn mac_alg3_is_des_cbc_then_3des_last_step(
        key in vec(any::<u8>(), 16),
        iv in option::of(vec(any::<u8>(), 8)),
        msg in vec(any::<u8>(), 0..50),
        padding in any_padding(),
    ) {
        let ct = cbc_encrypt(Cipher::Des, &key[..8], iv.as_deref(), &pad(&msg, 8, padding)).unwrap();
        let h = &ct[ct.len() - 8..];
        let step = ecb_decrypt(Cipher::Des, &key[8..], h).unwrap();
        let expected = ecb_encrypt(Cipher::Des, &key[..8], &step).unwrap();
        prop_assert_eq!(mac_alg3(&key, iv.as_deref(), &msg, padding).unwrap().to_vec(), expected);
    }

    #[test]
    fn nothing_panics_on_any_length(
        key in vec(any::<u8>(), 0..30),
        iv in option::of(vec(any::<u8>(), 0..20)),
        data in vec(any::<u8>(), 0..80),
        padding in any_padding(),
    ) {
        for cipher in Cipher::ALL {
            let bl = cipher.block_len();
            if let Ok(mac) = mac_alg1(cipher, &key, iv.as_deref(), &data, padding) {
                prop_assert_eq!(mac.len(), bl);
            }
            let _ = ecb_encrypt(cipher, &key, &data);
            let _ = ecb_decrypt(cipher, &key, &data);
            let _ = cbc_encrypt(cipher, &key, iv.as_deref(), &data);
            let _ = cbc_decrypt(cipher, &key, iv.as_deref(), &data);
            let _ = kcv(cipher, &key);
        }
        prop_assert_eq!(mac_alg3(&key, iv.as_deref(), &data, padding).is_ok(),
            key.len() == 16 && iv.as_ref().is_none_or(|iv| iv.len() == 8));
        prop_assert_eq!(aes_cmac(&key, &data).is_ok(), key.len() == 16);
        let _ = unpad_method2(&data);
        for alg in [PurseAlg::TripleDes, PurseAlg::Sm4] {
            if let Ok(sk) = SessionKey::from_slice(alg, &key) {
                let _ = pboc_mac(&sk, &data);
            }
        }
    }

    #[test]
    fn purse_functions_total(mk in any::<[u8; 16]>(), d in any::<[u8; 8]>(), data in vec(any::<u8>(), 0..60)) {
        for alg in [PurseAlg::TripleDes, PurseAlg::Sm4] {
            let card_key = diversify(alg, &mk, &d);
            let sk = session_key(alg, &card_key, &d);
            prop_assert_eq!(sk.as_bytes().len(), alg.session_key_len());
            let tk = tac_key(alg, &card_key);
            prop_assert_eq!(tk.as_bytes().len(), alg.session_key_len());
            prop_assert_eq!(pboc_mac(&sk, &data), pboc_mac(&sk.clone(), &data));
        }
    }

    #[test]
    fn ct_eq_agrees_with_eq(a in vec(any::<u8>(), 0..24), b in vec(any::<u8>(), 0..24), flip in any::<prop::sample::Index>()) {
        prop_assert_eq!(ct_eq(&a, &b), a == b);
        prop_assert!(ct_eq(&a, &a.clone()));
        if !a.is_empty() {
            let mut c = a.clone();
            let i = flip.index(c.len());
            c[i] ^= 1 << (i % 8);
            prop_assert!(!ct_eq(&a, &c));
        }
    }
}
