//! The crate's single error type, [`CryptoError`].
//!
//! Every message says what was wrong and how big it was; none of them ever contains key, IV or
//! data bytes, so an error can be logged or shown to a person without leaking a secret.

use crate::block::Cipher;

/// What went wrong in a cryptographic call. Lengths are in bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The key does not have a length the cipher accepts.
    #[error("{cipher} key must be {} bytes, got {got}", cipher.key_len_text())]
    KeyLength {
        /// The cipher the key was for.
        cipher: Cipher,
        /// The length that was given.
        got: usize,
    },
    /// The data to encrypt or decrypt is not a whole number of blocks.
    #[error("{cipher} data must be a multiple of the {block_len}-byte block, got {got} bytes")]
    DataLength {
        /// The cipher.
        cipher: Cipher,
        /// Its block length.
        block_len: usize,
        /// The data length that was given.
        got: usize,
    },
    /// The initial value is not exactly one block.
    #[error("{cipher} IV must be {expected} bytes (one block), got {got}")]
    IvLength {
        /// The cipher.
        cipher: Cipher,
        /// The block length.
        expected: usize,
        /// The IV length that was given.
        got: usize,
    },
    /// Data that should end in ISO/IEC 9797-1 padding method 2 (`80 00 .. 00`) does not.
    #[error("bad padding: the data does not end in ISO/IEC 9797-1 method 2 padding (80 followed by at most 15 bytes of 00)")]
    BadPadding,
    /// A MAC key of the wrong length (for MACs whose key is not simply one cipher key).
    #[error("{mac} key must be {expected} bytes, got {got}")]
    MacKeyLength {
        /// The MAC algorithm, e.g. "ISO 9797-1 MAC algorithm 3".
        mac: &'static str,
        /// The required length.
        expected: usize,
        /// The length that was given.
        got: usize,
    },
    /// Bytes offered as a fixed-size secret (a [`crate::Secret`] or a [`crate::SessionKey`]) have
    /// the wrong length.
    #[error("{what} must be {expected} bytes, got {got}")]
    SecretLength {
        /// What the bytes were meant to be.
        what: &'static str,
        /// The required length.
        expected: usize,
        /// The length that was given.
        got: usize,
    },
}
