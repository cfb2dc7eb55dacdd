//! The purse derivations checked against their definitions, composed by hand from ECB and CBC-MAC.
//! (No published vector exists for the SM4 generation; the 3DES generation also has the public
//! vectors in `public_vectors`.)

use crate::{arr, h};
use iccard_crypto::{
    diversify, ecb_decrypt, ecb_encrypt, mac_alg1, pboc_mac, session_key, tac_key, Cipher, Padding,
    PurseAlg, SessionKey,
};

const MK: &str = "0123456789ABCDEFFEDCBA9876543210";
const D: &str = "1122334455667788";

fn not(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().map(|b| !b).collect()
}

#[test]
fn purse_alg_ids() {
    assert_eq!(PurseAlg::TripleDes.id(), 0x00);
    assert_eq!(PurseAlg::Sm4.id(), 0x04);
    for alg in [PurseAlg::TripleDes, PurseAlg::Sm4] {
        assert_eq!(PurseAlg::from_id(alg.id()), Some(alg));
    }
    for id in [0x01, 0x02, 0x03, 0x05, 0x80, 0xFF] {
        assert_eq!(PurseAlg::from_id(id), None, "id {id:02X}");
    }
}

#[test]
fn sm4_diversify_is_sm4_of_d_and_not_d() {
    let d = h(D);
    let key = diversify(PurseAlg::Sm4, &arr(MK), &arr(D));
    let mut block = d.clone();
    block.extend(not(&d));
    assert_eq!(
        key.to_vec(),
        ecb_encrypt(Cipher::Sm4, &h(MK), &block).unwrap()
    );
    // Deciphering gives back D in the left half and NOT D in the right half.
    let plain = ecb_decrypt(Cipher::Sm4, &h(MK), &key[..]).unwrap();
    assert_eq!(&plain[..8], &d[..]);
    assert_eq!(plain[8..].to_vec(), not(&d));
}

#[test]
fn tdes_diversify_halves() {
    let d = h(D);
    let key = diversify(PurseAlg::TripleDes, &arr(MK), &arr(D));
    assert_eq!(
        key[..8],
        ecb_encrypt(Cipher::TripleDes, &h(MK), &d).unwrap()[..]
    );
    assert_eq!(
        key[8..],
        ecb_encrypt(Cipher::TripleDes, &h(MK), &not(&d)).unwrap()[..]
    );
    // No parity adjustment: the raw cipher output, bit 0 included.
    let halves = ecb_decrypt(Cipher::TripleDes, &h(MK), &key[..]).unwrap();
    assert_eq!(halves[..8], d[..]);
    assert_eq!(halves[8..].to_vec(), not(&d));
}

#[test]
fn diversify_depends_on_every_input() {
    for alg in [PurseAlg::TripleDes, PurseAlg::Sm4] {
        let base = diversify(alg, &arr(MK), &arr(D));
        let mut other_d: [u8; 8] = arr(D);
        other_d[7] ^= 1;
        assert_ne!(base, diversify(alg, &arr(MK), &other_d), "{alg}: D");
        let mut other_mk: [u8; 16] = arr(MK);
        other_mk[15] ^= 0x02; // not a parity bit
        assert_ne!(base, diversify(alg, &other_mk, &arr(D)), "{alg}: MK");
    }
    assert_ne!(
        diversify(PurseAlg::TripleDes, &arr(MK), &arr(D)),
        diversify(PurseAlg::Sm4, &arr(MK), &arr(D))
    );
}

#[test]
fn sm4_session_key_is_sm4_of_input_and_zeros() {
    let input = h("1122334400008000");
    let sk = session_key(PurseAlg::Sm4, &arr(MK), &arr("1122334400008000"));
    assert_eq!(sk.alg(), PurseAlg::Sm4);
    let mut block = input;
    block.extend([0u8; 8]);
    assert_eq!(
        sk.as_bytes(),
        ecb_encrypt(Cipher::Sm4, &h(MK), &block).unwrap()
    );
}

#[test]
fn tdes_session_key_is_8_bytes_of_3des() {
    let sk = session_key(PurseAlg::TripleDes, &arr(MK), &arr(D));
    assert_eq!(sk.alg(), PurseAlg::TripleDes);
    assert_eq!(
        sk.as_bytes(),
        ecb_encrypt(Cipher::TripleDes, &h(MK), &h(D)).unwrap()
    );
}

#[test]
fn pboc_mac_is_leftmost_4_of_cbc_mac_method2() {
    let data = h("000010000600112233445520120229135100");
    let sm4_key = session_key(PurseAlg::Sm4, &arr(MK), &arr(D));
    let full = mac_alg1(
        Cipher::Sm4,
        sm4_key.as_bytes(),
        None,
        &data,
        Padding::Method2,
    )
    .unwrap();
    assert_eq!(full.len(), 16);
    assert_eq!(pboc_mac(&sm4_key, &data), full[..4]);

    let des_key = session_key(PurseAlg::TripleDes, &arr(MK), &arr(D));
    let full = mac_alg1(
        Cipher::Des,
        des_key.as_bytes(),
        None,
        &data,
        Padding::Method2,
    )
    .unwrap();
    assert_eq!(pboc_mac(&des_key, &data), full[..4]);
}

#[test]
fn tac_keys() {
    let dtk: [u8; 16] = arr("00112233445566778899AABBCCDDEEFF");
    let k = tac_key(PurseAlg::TripleDes, &dtk);
    assert_eq!(k.alg(), PurseAlg::TripleDes);
    assert_eq!(k.as_bytes(), h("8888888888888888"));
    let k = tac_key(PurseAlg::Sm4, &dtk);
    assert_eq!(k.alg(), PurseAlg::Sm4);
    assert_eq!(k.as_bytes(), dtk);
}

#[test]
fn session_key_from_slice_checks_length() {
    assert!(SessionKey::from_slice(PurseAlg::TripleDes, &[0; 8]).is_ok());
    assert!(SessionKey::from_slice(PurseAlg::Sm4, &[0; 16]).is_ok());
    let err = SessionKey::from_slice(PurseAlg::TripleDes, &[0x5A; 16]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "3DES-generation session key must be 8 bytes, got 16"
    );
    let err = SessionKey::from_slice(PurseAlg::Sm4, &[0x5A; 8]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "SM4-generation session key must be 16 bytes, got 8"
    );
}
