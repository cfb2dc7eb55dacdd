//! The API's contracts: error variants and messages (never key bytes), padding, secrets'
//! `Debug` and equality, and the block-operation counter.

use crate::h;
use iccard_crypto::{
    aes_cmac, block_ops, cbc_encrypt, ct_eq, diversify, ecb_decrypt, ecb_encrypt, kcv, mac_alg1,
    mac_alg3, pad, pboc_mac, reset_block_ops, session_key, unpad_method2, BlockCipher, Cipher,
    CryptoError, Padding, PurseAlg, Secret, SessionKey,
};

#[test]
fn block_lengths() {
    assert_eq!(Cipher::Des.block_len(), 8);
    assert_eq!(Cipher::TripleDes.block_len(), 8);
    assert_eq!(Cipher::Sm4.block_len(), 16);
    assert_eq!(Cipher::Aes128.block_len(), 16);
}

#[test]
fn key_lengths_are_checked() {
    let accepted = [
        (Cipher::Des, vec![8]),
        (Cipher::TripleDes, vec![16, 24]),
        (Cipher::Sm4, vec![16]),
        (Cipher::Aes128, vec![16]),
    ];
    for (cipher, ok) in accepted {
        for len in 0..=32 {
            let key = vec![0xA5; len];
            let result = ecb_encrypt(cipher, &key, &vec![0; cipher.block_len()]);
            if ok.contains(&len) {
                assert!(result.is_ok(), "{cipher} {len}");
            } else {
                assert_eq!(result, Err(CryptoError::KeyLength { cipher, got: len }));
            }
        }
    }
    let err = ecb_encrypt(Cipher::TripleDes, &[0x5A; 8], &[0; 8]).unwrap_err();
    assert_eq!(err.to_string(), "3DES key must be 16 or 24 bytes, got 8");
}

#[test]
fn data_and_iv_lengths_are_checked() {
    let key = [0x11; 16];
    assert_eq!(
        ecb_encrypt(Cipher::Sm4, &key, &[0; 15]),
        Err(CryptoError::DataLength {
            cipher: Cipher::Sm4,
            block_len: 16,
            got: 15
        })
    );
    assert_eq!(
        ecb_decrypt(Cipher::TripleDes, &key, &[0; 9])
            .unwrap_err()
            .to_string(),
        "3DES data must be a multiple of the 8-byte block, got 9 bytes"
    );
    assert_eq!(
        cbc_encrypt(Cipher::Aes128, &key, Some(&[0; 8]), &[0; 16]),
        Err(CryptoError::IvLength {
            cipher: Cipher::Aes128,
            expected: 16,
            got: 8
        })
    );
    assert_eq!(ecb_encrypt(Cipher::Des, &key[..8], &[]), Ok(vec![]));
    assert!(mac_alg1(
        Cipher::Des,
        &key[..8],
        Some(&[0; 16]),
        b"x",
        Padding::Method2
    )
    .is_err());
    assert_eq!(
        mac_alg3(&key[..8], None, b"x", Padding::Method2),
        Err(CryptoError::MacKeyLength {
            mac: "ISO 9797-1 MAC algorithm 3 (retail MAC)",
            expected: 16,
            got: 8
        })
    );
    assert!(aes_cmac(&key[..15], b"x").is_err());
    assert!(kcv(Cipher::Sm4, &key[..8]).is_err());
}

#[test]
fn errors_never_contain_key_bytes() {
    // A key whose hex and decimal forms are easy to spot in a message.
    let key = [0xDE, 0xAD, 0xBE, 0xEF, 0xCA, 0xFE, 0xBA, 0xBE, 0x13];
    let errors = [
        ecb_encrypt(Cipher::Des, &key, &[0; 8]).unwrap_err(),
        mac_alg3(&key, None, b"", Padding::Method1).unwrap_err(),
        Secret::<16>::from_slice(&key).unwrap_err(),
        SessionKey::from_slice(PurseAlg::Sm4, &key).unwrap_err(),
        aes_cmac(&key, b"").unwrap_err(),
    ];
    for e in errors {
        let text = format!("{e} {e:?}").to_uppercase();
        for needle in ["DEAD", "BEEF", "CAFE", "222", "173"] {
            assert!(!text.contains(needle), "{text}");
        }
    }
}

#[test]
fn padding_methods() {
    assert_eq!(pad(b"", 8, Padding::Method1), vec![0; 8]);
    assert_eq!(pad(&[1; 8], 8, Padding::Method1), vec![1; 8]);
    assert_eq!(pad(&[1; 3], 8, Padding::Method1), h("0101010000000000"));
    assert_eq!(pad(b"", 8, Padding::Method2), h("8000000000000000"));
    assert_eq!(
        pad(&[1; 8], 8, Padding::Method2),
        h("0101010101010101 8000000000000000")
    );
    assert_eq!(pad(&[1; 7], 8, Padding::Method2), h("0101010101010180"));
    assert_eq!(pad(&[1; 3], 16, Padding::Method2).len(), 16);
    assert_eq!(unpad_method2(&h("0101010101010180")), Ok(&[1u8; 7][..]));
    assert_eq!(unpad_method2(&h("8000000000000000")), Ok(&[][..]));
    for bad in [
        "",
        "0000000000000000",
        "0101010101010101",
        "0101010101018001",
    ] {
        assert_eq!(
            unpad_method2(&h(bad)),
            Err(CryptoError::BadPadding),
            "{bad}"
        );
    }
    // Padding longer than any block is not padding.
    let mut long = vec![0x80];
    long.extend([0; 16]);
    assert_eq!(unpad_method2(&long), Err(CryptoError::BadPadding));
}

#[test]
fn secrets_hide_their_bytes() {
    let s = Secret::new([0xAB; 16]);
    assert_eq!(format!("{s:?}"), "Secret<16>(..)");
    assert_eq!(*s, [0xAB; 16]);
    assert_eq!(s, s.clone());
    assert_ne!(s, Secret::new([0xAC; 16]));
    assert_eq!(
        Secret::<8>::from_slice(&[1; 8]).unwrap(),
        Secret::new([1; 8])
    );
    assert_eq!(
        Secret::<8>::from_slice(&[1; 7]).unwrap_err().to_string(),
        "secret must be 8 bytes, got 7"
    );
    let sk = SessionKey::from_slice(PurseAlg::TripleDes, &[0xAB; 8]).unwrap();
    let debug = format!("{sk:?}");
    assert!(!debug.to_uppercase().contains("AB"), "{debug}");
    assert!(debug.contains("3DES"), "{debug}");
    let bc = BlockCipher::new(Cipher::Des, &[0xAB; 8]).unwrap();
    assert_eq!(format!("{bc:?}"), "BlockCipher(DES, ..)");
}

#[test]
fn ct_eq_basics() {
    assert!(ct_eq(b"", b""));
    assert!(ct_eq(b"abc", b"abc"));
    assert!(!ct_eq(b"abc", b"abd"));
    assert!(!ct_eq(b"abc", b"ab"));
}

#[test]
fn kcv_is_first_three_bytes_of_zero_block() {
    for cipher in Cipher::ALL {
        let key = vec![0x3C; if cipher == Cipher::Des { 8 } else { 16 }];
        let zero = vec![0; cipher.block_len()];
        let ct = ecb_encrypt(cipher, &key, &zero).unwrap();
        assert_eq!(kcv(cipher, &key).unwrap(), ct[..3], "{cipher}");
    }
}

#[test]
fn block_ops_are_counted_per_block() {
    reset_block_ops();
    assert_eq!(block_ops(), 0);
    ecb_encrypt(Cipher::Des, &[1; 8], &[0; 1024]).unwrap();
    assert_eq!(block_ops(), 128);

    reset_block_ops();
    // A 2-key 3DES block is one operation.
    ecb_decrypt(Cipher::TripleDes, &[1; 16], &[0; 64]).unwrap();
    assert_eq!(block_ops(), 8);

    reset_block_ops();
    cbc_encrypt(Cipher::Sm4, &[1; 16], None, &[0; 48]).unwrap();
    assert_eq!(block_ops(), 3);

    reset_block_ops();
    // Retail MAC: 2 padded blocks of single DES plus the final D and E.
    mac_alg3(&[1; 16], None, &[0; 8], Padding::Method2).unwrap();
    assert_eq!(block_ops(), 4);

    reset_block_ops();
    aes_cmac(&[1; 16], &[0; 17]).unwrap();
    assert_eq!(block_ops(), 3);

    reset_block_ops();
    let mk = [7; 16];
    let card_key = diversify(PurseAlg::TripleDes, &mk, &[1; 8]); // 2 blocks
    let sk = session_key(PurseAlg::TripleDes, &card_key, &[2; 8]); // 1 block
    pboc_mac(&sk, &[0; 15]); // 2 blocks with padding
    assert_eq!(block_ops(), 5);

    // The counter is per thread.
    let other = std::thread::spawn(block_ops).join().unwrap();
    assert_eq!(other, 0);
}
