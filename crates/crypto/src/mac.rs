//! Message authentication codes: ISO/IEC 9797-1 MAC algorithm 1 (CBC-MAC) over any supported
//! cipher, MAC algorithm 3 (the "retail MAC" of ANSI X9.19 / EMV), and AES-CMAC (NIST SP 800-38B,
//! RFC 4493).

use cmac::{Cmac, KeyInit, Mac};

use crate::block::{count_block_ops, BlockCipher, Cipher};
use crate::error::CryptoError;
use crate::modes::iv_block;
use crate::padding::{for_each_padded_block, Padding};

/// Runs CBC-MAC over `data` padded with `padding`: `state` holds the IV on entry (one block)
/// and the final chaining value on return.
pub(crate) fn cbc_mac_in_place(bc: &BlockCipher, state: &mut [u8], data: &[u8], padding: Padding) {
    for_each_padded_block(data, state.len(), padding, |block| {
        for (s, b) in state.iter_mut().zip(block) {
            *s ^= b;
        }
        bc.encrypt_raw(state);
    });
}

/// ISO/IEC 9797-1 MAC algorithm 1: CBC-MAC of the padded data under `cipher`, returning the whole
/// last block (truncate it yourself: PBOC keeps the leftmost 4 bytes). `iv` `None` is a zero IV.
/// With [`Cipher::TripleDes`] every block goes through 3DES (the "DESede64" MAC).
///
/// # Errors
/// [`CryptoError::KeyLength`], [`CryptoError::IvLength`].
pub fn mac_alg1(
    cipher: Cipher,
    key: &[u8],
    iv: Option<&[u8]>,
    data: &[u8],
    padding: Padding,
) -> Result<Vec<u8>, CryptoError> {
    let mut state = iv_block(cipher, iv)?;
    let bc = BlockCipher::new(cipher, key)?;
    let state = &mut state[..cipher.block_len()];
    cbc_mac_in_place(&bc, state, data, padding);
    Ok(state.to_vec())
}

const ALG3_NAME: &str = "ISO 9797-1 MAC algorithm 3 (retail MAC)";

/// ISO/IEC 9797-1 MAC algorithm 3 (retail MAC, ANSI X9.19): key `K1 ‖ K2` (16 bytes); single-DES
/// CBC-MAC under K1 over the padded data, then the last chaining value is deciphered under K2 and
/// enciphered under K1 (so the final block sees 3DES EDE). `iv` `None` is a zero IV.
///
/// # Errors
/// [`CryptoError::MacKeyLength`] unless the key is 16 bytes; [`CryptoError::IvLength`] unless the
/// IV is 8 bytes.
pub fn mac_alg3(
    key: &[u8],
    iv: Option<&[u8]>,
    data: &[u8],
    padding: Padding,
) -> Result<[u8; 8], CryptoError> {
    if key.len() != 16 {
        return Err(CryptoError::MacKeyLength {
            mac: ALG3_NAME,
            expected: 16,
            got: key.len(),
        });
    }
    let iv = iv_block(Cipher::Des, iv)?;
    let k1 = BlockCipher::new(Cipher::Des, &key[..8])?;
    let k2 = BlockCipher::new(Cipher::Des, &key[8..])?;
    let mut state = [0u8; 8];
    state.copy_from_slice(&iv[..8]);
    cbc_mac_in_place(&k1, &mut state, data, padding);
    // ISO/IEC 9797-1 output transformation 3: G = e_K1(d_K2(H_q)).
    k2.decrypt_raw(&mut state);
    k1.encrypt_raw(&mut state);
    Ok(state)
}

/// AES-CMAC (NIST SP 800-38B, RFC 4493) with a 16-byte key: the full 16-byte tag.
///
/// # Errors
/// [`CryptoError::KeyLength`] unless the key is 16 bytes.
pub fn aes_cmac(key: &[u8], data: &[u8]) -> Result<[u8; 16], CryptoError> {
    let mut mac = <Cmac<aes::Aes128> as KeyInit>::new_from_slice(key).map_err(|_| {
        CryptoError::KeyLength {
            cipher: Cipher::Aes128,
            got: key.len(),
        }
    })?;
    mac.update(data);
    let tag: [u8; 16] = mac.finalize().into_bytes().into();
    // The cmac crate runs AES itself: one block for the subkey L = E_K(0), one per message block
    // (an empty message is one padded block).
    let blocks = data.len().div_ceil(16).max(1);
    count_block_ops(1 + blocks as u64);
    Ok(tag)
}
