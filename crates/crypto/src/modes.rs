//! Modes of operation over [`BlockCipher`]: ECB and CBC (ISO/IEC 10116, NIST SP 800-38A), and the
//! key check value. Data must already be a whole number of blocks: padding is the caller's choice
//! (see [`crate::pad`]).

use crate::block::{BlockCipher, Cipher};
use crate::error::CryptoError;
use crate::padding::MAX_BLOCK_LEN;

/// Encrypts `data` (a whole number of blocks, possibly zero) in ECB mode.
///
/// # Errors
/// [`CryptoError::KeyLength`], [`CryptoError::DataLength`].
pub fn ecb_encrypt(cipher: Cipher, key: &[u8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let bc = BlockCipher::new(cipher, key)?;
    let mut out = data.to_vec();
    bc.encrypt_blocks(&mut out)?;
    Ok(out)
}

/// Decrypts `data` (a whole number of blocks) in ECB mode.
///
/// # Errors
/// [`CryptoError::KeyLength`], [`CryptoError::DataLength`].
pub fn ecb_decrypt(cipher: Cipher, key: &[u8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let bc = BlockCipher::new(cipher, key)?;
    let mut out = data.to_vec();
    bc.decrypt_blocks(&mut out)?;
    Ok(out)
}

/// The initial chaining value: `iv`, or a zero block when `None`. Only the first
/// `cipher.block_len()` bytes of the result are used.
pub(crate) fn iv_block(
    cipher: Cipher,
    iv: Option<&[u8]>,
) -> Result<[u8; MAX_BLOCK_LEN], CryptoError> {
    let mut block = [0u8; MAX_BLOCK_LEN];
    if let Some(iv) = iv {
        let bl = cipher.block_len();
        if iv.len() != bl {
            return Err(CryptoError::IvLength {
                cipher,
                expected: bl,
                got: iv.len(),
            });
        }
        block[..bl].copy_from_slice(iv);
    }
    Ok(block)
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Encrypts `data` (a whole number of blocks) in CBC mode; `iv` `None` means a zero IV.
///
/// # Errors
/// [`CryptoError::KeyLength`], [`CryptoError::IvLength`], [`CryptoError::DataLength`].
pub fn cbc_encrypt(
    cipher: Cipher,
    key: &[u8],
    iv: Option<&[u8]>,
    data: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let chain = iv_block(cipher, iv)?;
    let bc = BlockCipher::new(cipher, key)?;
    let mut out = data.to_vec();
    check_whole_blocks(cipher, out.len())?;
    let bl = cipher.block_len();
    let mut prev: &[u8] = &chain[..bl];
    let mut prev_buf = [0u8; MAX_BLOCK_LEN];
    for block in out.chunks_exact_mut(bl) {
        xor_into(block, prev);
        bc.encrypt_raw(block);
        prev_buf[..bl].copy_from_slice(block);
        prev = &prev_buf[..bl];
    }
    Ok(out)
}

/// Decrypts `data` (a whole number of blocks) in CBC mode; `iv` `None` means a zero IV.
///
/// # Errors
/// [`CryptoError::KeyLength`], [`CryptoError::IvLength`], [`CryptoError::DataLength`].
pub fn cbc_decrypt(
    cipher: Cipher,
    key: &[u8],
    iv: Option<&[u8]>,
    data: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let chain = iv_block(cipher, iv)?;
    let bc = BlockCipher::new(cipher, key)?;
    let mut out = data.to_vec();
    // All blocks are deciphered in one call (lets AES use its parallel backend), then each is
    // XORed with the previous ciphertext block, taken from the untouched input.
    bc.decrypt_blocks(&mut out)?;
    let bl = cipher.block_len();
    let previous = std::iter::once(&chain[..bl]).chain(data.chunks_exact(bl));
    for (block, prev) in out.chunks_exact_mut(bl).zip(previous) {
        xor_into(block, prev);
    }
    Ok(out)
}

fn check_whole_blocks(cipher: Cipher, len: usize) -> Result<(), CryptoError> {
    let bl = cipher.block_len();
    if len.is_multiple_of(bl) {
        Ok(())
    } else {
        Err(CryptoError::DataLength {
            cipher,
            block_len: bl,
            got: len,
        })
    }
}

/// Key check value: the first 3 bytes of the encryption of one zero block under `key`
/// (the usual KCV of ANSI X9.24 / payment HSMs; some tools print only 2 of them).
///
/// # Errors
/// [`CryptoError::KeyLength`].
pub fn kcv(cipher: Cipher, key: &[u8]) -> Result<[u8; 3], CryptoError> {
    let bc = BlockCipher::new(cipher, key)?;
    let mut block = [0u8; MAX_BLOCK_LEN];
    bc.encrypt_raw(&mut block[..cipher.block_len()]);
    Ok([block[0], block[1], block[2]])
}
