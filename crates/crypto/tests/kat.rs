//! Known-answer tests for AES-128, AES-CBC and AES-CMAC from their standards.

use crate::h;
use iccard_crypto::{aes_cmac, cbc_decrypt, cbc_encrypt, ecb_decrypt, ecb_encrypt, Cipher};

/// FIPS 197, Appendix C.1 (AES-128 example vector).
#[test]
fn aes128_fips197_appendix_c1() {
    let key = h("000102030405060708090a0b0c0d0e0f");
    let pt = h("00112233445566778899aabbccddeeff");
    let ct = h("69c4e0d86a7b0430d8cdb78070b4c55a");
    assert_eq!(ecb_encrypt(Cipher::Aes128, &key, &pt).unwrap(), ct);
    assert_eq!(ecb_decrypt(Cipher::Aes128, &key, &ct).unwrap(), pt);
}

/// NIST SP 800-38A, F.2.1 CBC-AES128.Encrypt (first two blocks).
#[test]
fn aes128_cbc_sp800_38a_f21() {
    let key = h("2b7e151628aed2a6abf7158809cf4f3c");
    let iv = h("000102030405060708090a0b0c0d0e0f");
    let pt = h("6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51");
    let ct = h("7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2");
    assert_eq!(
        cbc_encrypt(Cipher::Aes128, &key, Some(&iv), &pt).unwrap(),
        ct
    );
    assert_eq!(
        cbc_decrypt(Cipher::Aes128, &key, Some(&iv), &ct).unwrap(),
        pt
    );
}

/// RFC 4493 section 4, examples 1 to 4 (AES-CMAC, key 2b7e1516 28aed2a6 abf71588 09cf4f3c).
#[test]
fn aes_cmac_rfc4493_examples() {
    let key = h("2b7e151628aed2a6abf7158809cf4f3c");
    let msg = h(
        "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51 \
                 30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710",
    );
    let cases: [(usize, &str); 4] = [
        (0, "bb1d6929e95937287fa37d129b756746"),
        (16, "070a16b46b4d4144f79bdd9dd04a287c"),
        (40, "dfa66747de9ae63030ca32611497c827"),
        (64, "51f0bebf7e3b9d92fc49741779363cfe"),
    ];
    for (len, tag) in cases {
        assert_eq!(
            aes_cmac(&key, &msg[..len]).unwrap().to_vec(),
            h(tag),
            "Mlen = {len}"
        );
    }
}
