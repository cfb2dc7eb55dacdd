//! Every entry of `vectors/public-vectors.json` (published vectors collected for the project,
//! each with its `source`) run through the function it exercises.

use crate::{arr, h};
use iccard_crypto::{
    diversify, ecb_decrypt, ecb_encrypt, kcv, mac_alg1, mac_alg3, pboc_mac, session_key,
    BlockCipher, Cipher, Padding, PurseAlg, SessionKey,
};
use serde_json::Value;

const VECTORS: &str = include_str!("vectors/public-vectors.json");

/// The EMV odd-parity adjustment (each byte gets an odd number of 1 bits by flipping bit 0),
/// applied by the published EMV Option A and common-session-key values.
fn odd_parity(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .map(|&b| if b.count_ones() % 2 == 1 { b } else { b ^ 1 })
        .collect()
}

/// The raw (before parity) value quoted in an entry's notes: the last 32-hex-digit word.
fn raw_from_notes(notes: &str) -> Vec<u8> {
    let word = notes
        .split_whitespace()
        .rev()
        .find(|w| w.len() == 32 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .expect("notes quote the raw 16-byte value");
    h(word)
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {name} missing"))
}

/// Runs one entry; returns what was computed (compared with `expected` by the caller).
fn run(v: &Value) -> Vec<u8> {
    let name = field(v, "name");
    let key = h(field(v, "key"));
    let input_text = field(v, "input");
    match name {
        "pboc_load_SESLK_blog" | "pboc_purchase_SESPK_blog" => {
            session_key(PurseAlg::TripleDes, &arr(field(v, "key")), &arr(input_text))
                .as_bytes()
                .to_vec()
        }
        "pboc_load_MAC1_blog"
        | "pboc_load_MAC2_blog"
        | "pboc_purchase_MAC1_blog"
        | "pboc_purchase_MAC2_blog" => {
            // The 3DES-generation session key is 8 bytes, a single-DES key.
            let sk = SessionKey::from_slice(PurseAlg::TripleDes, &key).expect("8-byte key");
            pboc_mac(&sk, &h(input_text)).to_vec()
        }
        "sm4_gbt32907_example1" => ecb_encrypt(Cipher::Sm4, &key, &h(input_text)).unwrap(),
        "sm4_gbt32907_example2_1e6" => {
            let sm4 = BlockCipher::new(Cipher::Sm4, &key).unwrap();
            let mut block = h(input_text);
            for _ in 0..1_000_000 {
                sm4.encrypt_blocks(&mut block).unwrap();
            }
            block
        }
        "des_grabbe_illustrated"
        | "des_applied_crypto"
        | "des_dana_how_1"
        | "des_dana_how_2"
        | "des_fips81_now_is_t" => ecb_encrypt(Cipher::Des, &key, &h(input_text)).unwrap(),
        "tdes_sp800_67_B1_as_published" | "tdes_sp800_67_B1_corrected" | "tdes_nettle_now_is_t" => {
            assert_eq!(key.len(), 24, "{name}: 3-key TDEA");
            ecb_encrypt(Cipher::TripleDes, &key, &h(input_text)).unwrap()
        }
        "tdes_decrypt_tak_blog" => ecb_decrypt(Cipher::TripleDes, &key, &h(input_text)).unwrap(),
        "cbcmac_fips113" => {
            mac_alg1(Cipher::Des, &key, None, &h(input_text), Padding::Method1).unwrap()
        }
        "cbcmac_bc_with_iv" => {
            let iv = h(field(v, "iv"));
            let mac = mac_alg1(
                Cipher::Des,
                &key,
                Some(&iv),
                &h(input_text),
                Padding::Method1,
            )
            .unwrap();
            assert_eq!(mac, h(field(v, "computed")), "{name}: full block");
            mac[..4].to_vec() // published as a 32-bit MAC
        }
        "iso9797_alg3_bc" | "retail_mac_pyemv_pad1" => {
            mac_alg3(&key, None, &h(input_text), Padding::Method1)
                .unwrap()
                .to_vec()
        }
        "retail_mac_pyemv_pad2" => mac_alg3(&key, None, &h(input_text), Padding::Method2)
            .unwrap()
            .to_vec(),
        "desede64_bc" | "tdes_cbcmac_neapay" => mac_alg1(
            Cipher::TripleDes,
            &key,
            None,
            &h(input_text),
            Padding::Method1,
        )
        .unwrap(),
        "kcv_0123_fedc" => {
            assert_eq!(h(input_text), [0u8; 8], "{name}: KCV encrypts a zero block");
            kcv(Cipher::TripleDes, &key).unwrap()[..2].to_vec() // published as 2 bytes
        }
        "emv_optionA_pan1" | "emv_optionA_pan2" => {
            let y = input_text
                .strip_prefix("Y=")
                .expect("input is Y=<16 digits>");
            let raw = diversify(PurseAlg::TripleDes, &arr(field(v, "key")), &arr(y));
            // Our diversification is the raw value (PBOC: no parity adjustment) ...
            assert_eq!(
                raw.to_vec(),
                raw_from_notes(field(v, "notes")),
                "{name}: raw"
            );
            // ... and EMV's published key is that value with odd parity.
            odd_parity(&raw[..])
        }
        "emv_common_session_key" => {
            // EMV Book 2 A1.3.1: SK = 3DES(MK, R with R2 = F0) || 3DES(MK, R with R2 = 0F),
            // then odd parity; composed from ecb_encrypt to check 2-key 3DES once more.
            let r = h(input_text);
            let (mut left, mut right) = (r.clone(), r);
            left[2] = 0xF0;
            right[2] = 0x0F;
            let mut sk = ecb_encrypt(Cipher::TripleDes, &key, &left).unwrap();
            sk.extend(ecb_encrypt(Cipher::TripleDes, &key, &right).unwrap());
            odd_parity(&sk)
        }
        other => panic!("public vector {other} has no test: add one"),
    }
}

#[test]
fn every_public_vector_passes() {
    let vectors: Vec<Value> = serde_json::from_str(VECTORS).expect("vectors file is JSON");
    assert_eq!(
        vectors.len(),
        28,
        "the vectors file changed: review the dispatch"
    );
    let mut failures = Vec::new();
    for v in &vectors {
        assert!(
            !field(v, "source").is_empty(),
            "{} has no source",
            field(v, "name")
        );
        let got = run(v);
        let expected = h(field(v, "expected"));
        if got != expected {
            failures.push(format!(
                "{}: expected {}, got {}",
                field(v, "name"),
                hex::encode_upper(&expected),
                hex::encode_upper(&got)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "failing vectors:\n{}",
        failures.join("\n")
    );
}
