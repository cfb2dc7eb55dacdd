//! ISO/IEC 9797-1 padding methods 1 and 2, and the padded-block walk shared by the MACs.

use crate::error::CryptoError;

/// The largest block length of any supported cipher (SM4 and AES: 16 bytes).
pub const MAX_BLOCK_LEN: usize = 16;

/// An ISO/IEC 9797-1 padding method (clause 6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Padding {
    /// Method 1: append `00` bytes up to a block boundary; nothing is appended to data that is
    /// already a non-empty whole number of blocks, and empty data becomes one zero block.
    Method1,
    /// Method 2: always append `80`, then `00` bytes up to a block boundary (so aligned data
    /// gains a whole block `80 00 .. 00`). Used by PBOC/EMV secure messaging and purse MACs.
    Method2,
}

/// Returns `data` padded to a multiple of `block_len` with `padding`.
///
/// # Panics
/// If `block_len` is 0.
pub fn pad(data: &[u8], block_len: usize, padding: Padding) -> Vec<u8> {
    assert!(block_len > 0, "block_len must be at least 1");
    let mut out = Vec::with_capacity(data.len() + block_len);
    out.extend_from_slice(data);
    match padding {
        Padding::Method1 => {
            let len = if data.is_empty() {
                block_len
            } else {
                data.len().div_ceil(block_len) * block_len
            };
            out.resize(len, 0);
        }
        Padding::Method2 => {
            out.push(0x80);
            let len = out.len().div_ceil(block_len) * block_len;
            out.resize(len, 0);
        }
    }
    out
}

/// Strips ISO/IEC 9797-1 padding method 2: the trailing `00` bytes and the `80` before them.
///
/// The padding (the `80` and its zeros) may be at most [`MAX_BLOCK_LEN`] bytes long, since a
/// padder never adds more than one block. This check is not constant time: use it on data whose
/// integrity is already established (after a MAC check), not as a decryption oracle.
///
/// # Errors
/// [`CryptoError::BadPadding`] when the data is empty, all zero, the last non-zero byte is not
/// `80`, or the padding is longer than [`MAX_BLOCK_LEN`].
pub fn unpad_method2(data: &[u8]) -> Result<&[u8], CryptoError> {
    let marker = data
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(CryptoError::BadPadding)?;
    if data[marker] != 0x80 || data.len() - marker > MAX_BLOCK_LEN {
        return Err(CryptoError::BadPadding);
    }
    Ok(&data[..marker])
}

/// Calls `f` with each block of `data` padded to `block_len` (at most [`MAX_BLOCK_LEN`]) with
/// `padding`, without copying the whole message: whole blocks are passed straight from `data`,
/// only the final padded block goes through a small stack buffer.
pub(crate) fn for_each_padded_block(
    data: &[u8],
    block_len: usize,
    padding: Padding,
    mut f: impl FnMut(&[u8]),
) {
    debug_assert!((1..=MAX_BLOCK_LEN).contains(&block_len));
    let whole = data.len() / block_len * block_len;
    let (head, tail) = data.split_at(whole);
    for block in head.chunks_exact(block_len) {
        f(block);
    }
    let mut last = [0u8; MAX_BLOCK_LEN];
    last[..tail.len()].copy_from_slice(tail);
    match padding {
        // Method 1 adds nothing to non-empty aligned data, one zero block to empty data.
        Padding::Method1 => {
            if !tail.is_empty() || data.is_empty() {
                f(&last[..block_len]);
            }
        }
        Padding::Method2 => {
            last[tail.len()] = 0x80;
            f(&last[..block_len]);
        }
    }
}
