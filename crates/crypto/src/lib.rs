//! # iccard-crypto: the cryptography of the iccard card system
//!
//! Block ciphers, modes, MACs and the PBOC purse key derivations, over the RustCrypto
//! implementations (`des`, `sm4`, `aes`, `cmac`), with secrets that are zeroized on drop
//! ([`Secret`], [`SessionKey`]) and compared in constant time ([`ct_eq`]). No I/O, no global state
//! except a per-thread counter of block operations for benchmarks ([`block_ops`]).
//!
//! ## Ciphers ([`Cipher`], [`BlockCipher`])
//!
//! | cipher | key | block | standard |
//! |---|---|---|---|
//! | [`Cipher::Des`] | 8 (parity bits ignored) | 8 | FIPS 46-3 |
//! | [`Cipher::TripleDes`] | 16 (2-key, K3 = K1) or 24 (3-key) | 8 | NIST SP 800-67, ISO/IEC 18033-3; EDE: `C = E_K3(D_K2(E_K1(P)))` |
//! | [`Cipher::Sm4`] | 16 | 16 | GB/T 32907-2016 (GM/T 0002-2012) |
//! | [`Cipher::Aes128`] | 16 | 16 | FIPS 197 |
//!
//! A [`BlockCipher`] is one keyed instance: the key schedule is built once per call of any
//! function here, never per block, and every mode and MAC runs through it.
//!
//! ## Modes and padding
//!
//! * [`ecb_encrypt`] / [`ecb_decrypt`], [`cbc_encrypt`] / [`cbc_decrypt`] (ISO/IEC 10116,
//!   NIST SP 800-38A): `C_i = E_K(P_i ⊕ C_{i-1})`, `C_0 = IV` (zero IV when `None`). Data must be
//!   a whole number of blocks.
//! * [`pad`] / [`unpad_method2`], ISO/IEC 9797-1 §6.1: [`Padding::Method1`] appends `00`s to a
//!   block boundary (nothing when already aligned; an empty message becomes one zero block);
//!   [`Padding::Method2`] always appends `80` and then `00`s.
//!
//! ## MACs
//!
//! * [`mac_alg1`]: ISO/IEC 9797-1 MAC algorithm 1, CBC-MAC: `H_i = E_K(D_i ⊕ H_{i-1})`,
//!   `H_0 = IV`, MAC = `H_q` (the whole last block; truncation is the caller's). Over 3DES this
//!   is the "DESede64" MAC; over DES with zero padding it is FIPS 113 / ANSI X9.9.
//! * [`mac_alg3`]: ISO/IEC 9797-1 MAC algorithm 3, the retail MAC of ANSI X9.19: key `K1 ‖ K2`,
//!   single-DES CBC-MAC under K1, then output transformation 3: `MAC = E_K1(D_K2(H_q))`.
//! * [`aes_cmac`]: AES-CMAC, NIST SP 800-38B / RFC 4493, full 16-byte tag.
//! * [`kcv`]: key check value, the first 3 bytes of `E_K(00…00)` (ANSI X9.24 practice).
//!
//! ## PBOC electronic purse (JR/T 0025, PBOC 2.0 ED/EP), [`PurseAlg`]
//!
//! | | 3DES generation (algorithm id `00`) | SM4 generation (id `04`) |
//! |---|---|---|
//! | [`diversify`] (card key from master key MK and D, 8 bytes) | `3DES(MK, D) ‖ 3DES(MK, ¬D)`, 2-key EDE, no parity adjustment | `SM4(MK, D ‖ ¬D)` |
//! | [`session_key`] (from card key K and 8 input bytes) | `3DES(K, input)`, 8 bytes, used as a single-DES key | `SM4(K, input ‖ 00×8)`, 16 bytes |
//! | [`pboc_mac`] (MAC1, MAC2, TAC) | single-DES CBC-MAC, IV 0, padding method 2, leftmost 4 bytes | SM4 CBC-MAC, IV 0, padding method 2 (to 16 bytes), leftmost 4 |
//! | [`tac_key`] (from the DTK) | left 8 bytes ⊕ right 8 bytes, single DES | the DTK itself |
//!
//! The 3DES diversification equals EMV Option A (EMV Book 2 Annex A1.4.1) before its parity
//! adjustment. The SM4 column is defined by this project (`DESIGN.md` §4) until the normative
//! text is at hand; the session inputs (`random ‖ serial ‖ …`) are built by the card and terminal.
//!
//! ## Secrets
//!
//! [`Secret<N>`] and [`SessionKey`] zeroize their bytes when dropped, compare in constant time,
//! and print no bytes in `Debug`. The RustCrypto cipher instances zeroize their round keys on drop
//! (`zeroize` features). [`CryptoError`] messages give lengths only, never key or data bytes.
//! Bytes returned in a `Vec` (ciphertext, plaintext, MACs) are the caller's to protect.
//!
//! ## Counting block operations
//!
//! [`block_ops`] / [`reset_block_ops`] count, per thread, one operation per block encrypted or
//! decrypted. **A 2-key or 3-key 3DES block counts as 1**, like a DES, SM4 or AES block;
//! MAC algorithm 3 costs one per block plus 2 for its final step; AES-CMAC one per block plus 1.

mod block;
mod error;
mod mac;
mod modes;
mod padding;
mod purse;
mod secret;

pub use block::{block_ops, reset_block_ops, BlockCipher, Cipher};
pub use error::CryptoError;
pub use mac::{aes_cmac, mac_alg1, mac_alg3};
pub use modes::{cbc_decrypt, cbc_encrypt, ecb_decrypt, ecb_encrypt, kcv};
pub use padding::{pad, unpad_method2, Padding, MAX_BLOCK_LEN};
pub use purse::{diversify, pboc_mac, session_key, tac_key, PurseAlg, SessionKey};
pub use secret::{ct_eq, Secret};
