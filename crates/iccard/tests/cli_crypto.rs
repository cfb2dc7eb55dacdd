//! `iccard crypto ...` end to end: published vectors through the binary, agreement with the
//! library for the SM4 generation, and input errors (exit code 2, a message on stderr that names
//! the problem and never the key).

use std::process::{Command, Output};

use iccard_crypto::{diversify, mac_alg1, Cipher, Padding, PurseAlg};

fn iccard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iccard"))
        .arg("crypto")
        .args(args)
        .output()
        .expect("the iccard binary runs")
}

/// Runs a command that must succeed and returns its single output line.
fn ok(args: &[&str]) -> String {
    let out = iccard(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let line = stdout.strip_suffix('\n').expect("output ends in a newline");
    assert!(!line.contains('\n'), "one line expected: {stdout:?}");
    assert!(
        line.chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)),
        "uppercase hex expected: {line}"
    );
    line.to_string()
}

/// Runs a command that must fail as an input error and returns its stderr.
fn usage_error(args: &[&str]) -> String {
    let out = iccard(args);
    assert_eq!(out.status.code(), Some(2), "{args:?} should exit 2");
    assert!(out.stdout.is_empty(), "nothing on stdout on error");
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 stderr");
    assert!(!stderr.trim().is_empty(), "an error message on stderr");
    stderr
}

#[test]
fn des_and_3des_encrypt_decrypt() {
    // J. Orlin Grabbe, "The DES Algorithm Illustrated"; lowercase with spaces is accepted.
    let des = [
        "--alg",
        "des",
        "--mode",
        "ecb",
        "--key",
        "13 34 57 79 9b bc df f1",
    ];
    let mut args = vec!["encrypt"];
    args.extend(des);
    args.extend(["--data", "0123456789abcdef"]);
    assert_eq!(ok(&args), "85E813540F0AB405");
    let mut args = vec!["decrypt"];
    args.extend(des);
    args.extend(["--data", "85E813540F0AB405"]);
    assert_eq!(ok(&args), "0123456789ABCDEF");
    // 2-key 3DES decrypt (TMK/TAK blog example in the public vectors).
    assert_eq!(
        ok(&[
            "decrypt",
            "--alg",
            "3des",
            "--mode",
            "ecb",
            "--key",
            "70F2A84CCBC2AE8625CBB0F2C22AB923",
            "--data",
            "96D605EA176B7E9E",
        ]),
        "C24A8FB57AA20123"
    );
}

#[test]
fn sm4_and_aes() {
    // GB/T 32907-2016 Appendix A example 1.
    assert_eq!(
        ok(&[
            "encrypt",
            "--alg",
            "sm4",
            "--mode",
            "ecb",
            "--key",
            "0123456789ABCDEFFEDCBA9876543210",
            "--data",
            "0123456789ABCDEFFEDCBA9876543210",
        ]),
        "681EDF34D206965E86B3E94F536E4246"
    );
    // NIST SP 800-38A F.2.1 / F.2.2, first block.
    let cbc = [
        "--alg",
        "aes",
        "--mode",
        "cbc",
        "--key",
        "2b7e151628aed2a6abf7158809cf4f3c",
        "--iv",
        "000102030405060708090a0b0c0d0e0f",
    ];
    let mut args = vec!["encrypt"];
    args.extend(cbc);
    args.extend(["--data", "6bc1bee22e409f96e93d7e117393172a"]);
    assert_eq!(ok(&args), "7649ABAC8119B246CEE98E9B12E9197D");
    let mut args = vec!["decrypt"];
    args.extend(cbc);
    args.extend(["--data", "7649ABAC8119B246CEE98E9B12E9197D"]);
    assert_eq!(ok(&args), "6BC1BEE22E409F96E93D7E117393172A");
}

#[test]
fn macs() {
    // PBOC load MAC1 (blog vector): single-DES CBC-MAC, padding 80 00.., leftmost 4 bytes.
    assert_eq!(
        ok(&[
            "mac",
            "--alg",
            "des",
            "--key",
            "9B1D924E05595603",
            "--data",
            "000000000000100001001122334455",
            "--len",
            "4",
        ]),
        "2988AE5A"
    );
    // Retail MAC with padding method 2 (pyemv tests); default --len is 8.
    assert_eq!(
        ok(&[
            "mac",
            "--alg",
            "3des-retail",
            "--key",
            "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB",
            "--data",
            "68656C6C6F20776F726C64",
        ]),
        "2BC2D9EDE0CF31F6"
    );
    // RFC 4493 example 2.
    assert_eq!(
        ok(&[
            "mac",
            "--alg",
            "aes-cmac",
            "--key",
            "2b7e151628aed2a6abf7158809cf4f3c",
            "--data",
            "6bc1bee22e409f96e93d7e117393172a",
            "--len",
            "16",
        ]),
        "070A16B46B4D4144F79BDD9DD04A287C"
    );
    // SM4 CBC-MAC agrees with the library (with an IV, and with an empty message).
    let key = hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap();
    let iv = [0x11u8; 16];
    let expected = mac_alg1(Cipher::Sm4, &key, Some(&iv), b"", Padding::Method2).unwrap();
    assert_eq!(
        ok(&[
            "mac",
            "--alg",
            "sm4",
            "--key",
            "0123456789ABCDEFFEDCBA9876543210",
            "--iv",
            &"11".repeat(16),
            "--data",
            "",
            "--len",
            "16",
        ]),
        hex::encode_upper(expected)
    );
}

#[test]
fn purse_derivations() {
    // EMV Option A before parity (pyemv kd.py docstring): our 3DES diversification.
    assert_eq!(
        ok(&[
            "diversify",
            "--alg",
            "3des",
            "--key",
            "0123456789ABCDEFFEDCBA9876543210",
            "--data",
            "4567890123456701",
        ]),
        "72AD54698CEE2935B0969956E2C718F0"
    );
    let sm4 = diversify(
        PurseAlg::Sm4,
        &hex::decode("0123456789ABCDEFFEDCBA9876543210")
            .unwrap()
            .try_into()
            .unwrap(),
        &[0x45, 0x67, 0x89, 0x01, 0x23, 0x45, 0x67, 0x01],
    );
    assert_eq!(
        ok(&[
            "diversify",
            "--alg",
            "sm4",
            "--key",
            "0123456789ABCDEFFEDCBA9876543210",
            "--data",
            "4567890123456701",
        ]),
        hex::encode_upper(&sm4[..])
    );
    // PBOC load session key (blog vector).
    assert_eq!(
        ok(&[
            "session-key",
            "--alg",
            "3des",
            "--key",
            "11223344556677888877665544332211",
            "--data",
            "1122334400008000",
        ]),
        "9B1D924E05595603"
    );
    assert_eq!(
        ok(&[
            "session-key",
            "--alg",
            "sm4",
            "--key",
            &"00".repeat(16),
            "--data",
            &"00".repeat(8)
        ])
        .len(),
        32
    );
    assert_eq!(
        ok(&["tac-key", "--key", "00112233445566778899AABBCCDDEEFF"]),
        "8888888888888888"
    );
    assert_eq!(
        ok(&[
            "tac-key",
            "--alg",
            "sm4",
            "--key",
            "00112233445566778899aabbccddeeff"
        ]),
        "00112233445566778899AABBCCDDEEFF"
    );
}

#[test]
fn kcv() {
    // pyemv test_kd.py publishes the first 2 bytes, 08D7; we print 3.
    let kcv = ok(&[
        "kcv",
        "--alg",
        "3des",
        "--key",
        "0123456789ABCDEFFEDCBA9876543210",
    ]);
    assert_eq!(kcv.len(), 6);
    assert!(kcv.starts_with("08D7"), "{kcv}");
    assert_eq!(
        ok(&["kcv", "--alg", "des", "--key", "0123456789ABCDEF"]).len(),
        6
    );
}

#[test]
fn input_errors_exit_2_without_echoing_keys() {
    let err = usage_error(&[
        "mac",
        "--alg",
        "3des-retail",
        "--key",
        "C0FFEE1234567890",
        "--data",
        "00",
    ]);
    assert!(
        err.contains("--key must be 16 bytes for 3des-retail, got 8"),
        "{err}"
    );
    assert!(!err.to_uppercase().contains("C0FFEE"), "{err}");

    let err = usage_error(&[
        "encrypt",
        "--alg",
        "3des",
        "--mode",
        "ecb",
        "--key",
        "C0FFEE1234567890",
        "--data",
        "00",
    ]);
    assert!(
        err.contains("--key must be 16 or 24 bytes for 3des, got 8"),
        "{err}"
    );

    let err = usage_error(&["kcv", "--alg", "aes", "--key", "C0FFEE12345678zz"]);
    assert!(err.contains("--key is not hex"), "{err}");
    assert!(
        !err.to_uppercase().contains("C0FFEE") && !err.contains("zz"),
        "{err}"
    );

    let err = usage_error(&["kcv", "--alg", "des", "--key", "C0FFEE123456789"]);
    assert!(err.contains("odd number of digits"), "{err}");

    let err = usage_error(&[
        "encrypt",
        "--alg",
        "des",
        "--mode",
        "ecb",
        "--key",
        "0123456789ABCDEF",
        "--data",
        "0011",
    ]);
    assert!(
        err.contains("--data must be a non-empty multiple of 8 bytes for des, got 2"),
        "{err}"
    );

    let err = usage_error(&[
        "encrypt",
        "--alg",
        "des",
        "--mode",
        "ecb",
        "--iv",
        "0000000000000000",
        "--key",
        "0123456789ABCDEF",
        "--data",
        "0011223344556677",
    ]);
    assert!(err.contains("--iv is only used with --mode cbc"), "{err}");

    let err = usage_error(&[
        "encrypt",
        "--alg",
        "sm4",
        "--mode",
        "cbc",
        "--iv",
        "0000000000000000",
        "--key",
        &"00".repeat(16),
        "--data",
        &"00".repeat(16),
    ]);
    assert!(
        err.contains("--iv must be 16 bytes for sm4, got 8"),
        "{err}"
    );

    let err = usage_error(&[
        "mac",
        "--alg",
        "des",
        "--key",
        "0123456789ABCDEF",
        "--data",
        "00",
        "--len",
        "16",
    ]);
    assert!(
        err.contains("--len must be 4 or 8 for des, got 16"),
        "{err}"
    );

    let err = usage_error(&[
        "diversify",
        "--alg",
        "sm4",
        "--key",
        &"00".repeat(16),
        "--data",
        "0011",
    ]);
    assert!(
        err.contains("--data must be 8 bytes for sm4, got 2"),
        "{err}"
    );

    // An unknown algorithm is a clap usage error, also exit 2.
    usage_error(&["kcv", "--alg", "rot13", "--key", "00"]);
}
