//! PBOC electronic purse (ED/EP) key handling for both algorithm generations: card-key
//! diversification, session keys, the purse MAC, and the TAC key.
//!
//! 3DES generation (algorithm id `00`, JR/T 0025 / PBOC 2.0 part 2 conventions):
//! * diversify: `3DES(MK, D) ‖ 3DES(MK, NOT D)`, 2-key EDE, no parity adjustment;
//! * session key: `3DES(K, input)` — 8 bytes, a single-DES key;
//! * MAC: single-DES CBC-MAC (ISO/IEC 9797-1 algorithm 1), IV 0, padding method 2, leftmost 4
//!   bytes;
//! * TAC key: left half XOR right half of the DTK, a single-DES key.
//!
//! SM4 generation (algorithm id `04`, project-defined until the normative text is at hand, see
//! `DESIGN.md` §4): diversify `SM4(MK, D ‖ NOT D)`, session key `SM4(K, input ‖ 00×8)` (16 bytes),
//! MAC = SM4 CBC-MAC with padding method 2 to 16 bytes, leftmost 4 bytes; TAC key = DTK itself.

use std::fmt;

use crate::block::{BlockCipher, Cipher};
use crate::error::CryptoError;
use crate::mac::cbc_mac_in_place;
use crate::padding::{Padding, MAX_BLOCK_LEN};
use crate::secret::Secret;

/// The purse's algorithm generation, as carried in the algorithm-id byte of INITIALIZE FOR
/// LOAD/PURCHASE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PurseAlg {
    /// 3DES generation, algorithm id `0x00`.
    TripleDes,
    /// SM4 generation, algorithm id `0x04`.
    Sm4,
}

impl PurseAlg {
    /// The algorithm-id byte: `0x00` for 3DES, `0x04` for SM4.
    pub const fn id(self) -> u8 {
        match self {
            PurseAlg::TripleDes => 0x00,
            PurseAlg::Sm4 => 0x04,
        }
    }

    /// The generation with algorithm id `id`, if it is one we support.
    pub const fn from_id(id: u8) -> Option<Self> {
        match id {
            0x00 => Some(PurseAlg::TripleDes),
            0x04 => Some(PurseAlg::Sm4),
            _ => None,
        }
    }

    /// The cipher of the 16-byte card and master keys (2-key 3DES or SM4).
    pub const fn key_cipher(self) -> Cipher {
        match self {
            PurseAlg::TripleDes => Cipher::TripleDes,
            PurseAlg::Sm4 => Cipher::Sm4,
        }
    }

    /// The length of a session key and of the TAC key: 8 (single DES) or 16 (SM4).
    pub const fn session_key_len(self) -> usize {
        match self {
            PurseAlg::TripleDes => 8,
            PurseAlg::Sm4 => 16,
        }
    }
}

impl fmt::Display for PurseAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PurseAlg::TripleDes => "3DES",
            PurseAlg::Sm4 => "SM4",
        })
    }
}

#[derive(Clone, PartialEq, Eq)]
enum SessionKeyBytes {
    Des(Secret<8>),
    Sm4(Secret<16>),
}

/// A purse session key (or TAC key): 8 bytes used as a single-DES key in the 3DES generation,
/// 16 bytes used as an SM4 key in the SM4 generation. Zeroized on drop, compared in constant time;
/// `Debug` shows only the generation.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(SessionKeyBytes);

impl SessionKey {
    /// Wraps existing key bytes (e.g. a session key computed by the other side, or a published
    /// test vector).
    ///
    /// # Errors
    /// [`CryptoError::SecretLength`] unless `bytes` is 8 bytes for 3DES, 16 for SM4.
    pub fn from_slice(alg: PurseAlg, bytes: &[u8]) -> Result<Self, CryptoError> {
        let wrong = |expected| CryptoError::SecretLength {
            what: match alg {
                PurseAlg::TripleDes => "3DES-generation session key",
                PurseAlg::Sm4 => "SM4-generation session key",
            },
            expected,
            got: bytes.len(),
        };
        Ok(SessionKey(match alg {
            PurseAlg::TripleDes => {
                SessionKeyBytes::Des(Secret::from_slice(bytes).map_err(|_| wrong(8))?)
            }
            PurseAlg::Sm4 => {
                SessionKeyBytes::Sm4(Secret::from_slice(bytes).map_err(|_| wrong(16))?)
            }
        }))
    }

    /// The key bytes (8 or 16).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            SessionKeyBytes::Des(k) => k.as_ref(),
            SessionKeyBytes::Sm4(k) => k.as_ref(),
        }
    }

    /// The generation this key belongs to.
    pub fn alg(&self) -> PurseAlg {
        match self.0 {
            SessionKeyBytes::Des(_) => PurseAlg::TripleDes,
            SessionKeyBytes::Sm4(_) => PurseAlg::Sm4,
        }
    }

    fn block_cipher(&self) -> BlockCipher {
        match &self.0 {
            SessionKeyBytes::Des(k) => BlockCipher::des(k),
            SessionKeyBytes::Sm4(k) => BlockCipher::sm4(k),
        }
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({}, ..)", self.alg())
    }
}

fn card_cipher(alg: PurseAlg, key: &[u8; 16]) -> BlockCipher {
    match alg {
        PurseAlg::TripleDes => BlockCipher::tdes2(key),
        PurseAlg::Sm4 => BlockCipher::sm4(key),
    }
}

/// Derives a card key from a master key and the diversification data `d` (the rightmost 8 bytes
/// of the application serial).
///
/// 3DES: `3DES(MK, D) ‖ 3DES(MK, NOT D)` (2-key EDE, no parity adjustment: the "raw" EMV option A
/// value). SM4: `SM4(MK, D ‖ NOT D)`. Both are the ECB encryption of the 16 bytes `D ‖ NOT D`.
pub fn diversify(alg: PurseAlg, master: &[u8; 16], d: &[u8; 8]) -> Secret<16> {
    let mut key = Secret::new([0u8; 16]);
    let buf = key.bytes_mut();
    buf[..8].copy_from_slice(d);
    for (out, b) in buf[8..].iter_mut().zip(d) {
        *out = !b;
    }
    card_cipher(alg, master).encrypt_raw(buf);
    key
}

/// Derives a session key from a card key and the 8-byte session input (e.g. for a load
/// `random ‖ online serial ‖ 8000`, for a purchase `random ‖ offline serial ‖ terminal serial
/// low 2 bytes`). 3DES: `3DES-ECB(key, input)`, 8 bytes. SM4: `SM4(key, input ‖ 00×8)`, 16 bytes.
pub fn session_key(alg: PurseAlg, key: &[u8; 16], input: &[u8; 8]) -> SessionKey {
    let cipher = card_cipher(alg, key);
    match alg {
        PurseAlg::TripleDes => {
            let mut sk = Secret::new(*input);
            cipher.encrypt_raw(sk.bytes_mut());
            SessionKey(SessionKeyBytes::Des(sk))
        }
        PurseAlg::Sm4 => {
            let mut sk = Secret::new([0u8; 16]);
            sk.bytes_mut()[..8].copy_from_slice(input);
            cipher.encrypt_raw(sk.bytes_mut());
            SessionKey(SessionKeyBytes::Sm4(sk))
        }
    }
}

/// The purse MAC (MAC1, MAC2, TAC): CBC-MAC (ISO/IEC 9797-1 algorithm 1) under the session key's
/// cipher — single DES for the 3DES generation, SM4 for the SM4 generation — IV 0, padding
/// method 2, leftmost 4 bytes.
pub fn pboc_mac(key: &SessionKey, data: &[u8]) -> [u8; 4] {
    let bc = key.block_cipher();
    let mut state = [0u8; MAX_BLOCK_LEN];
    let state = &mut state[..bc.block_len()];
    cbc_mac_in_place(&bc, state, data, Padding::Method2);
    [state[0], state[1], state[2], state[3]]
}

/// The TAC key from the card's DTK. 3DES: left 8 bytes XOR right 8 bytes (a single-DES key).
/// SM4: the DTK itself.
pub fn tac_key(alg: PurseAlg, dtk: &[u8; 16]) -> SessionKey {
    match alg {
        PurseAlg::TripleDes => {
            let mut k = Secret::new([0u8; 8]);
            for (i, out) in k.bytes_mut().iter_mut().enumerate() {
                *out = dtk[i] ^ dtk[i + 8];
            }
            SessionKey(SessionKeyBytes::Des(k))
        }
        PurseAlg::Sm4 => SessionKey(SessionKeyBytes::Sm4(Secret::new(*dtk))),
    }
}
