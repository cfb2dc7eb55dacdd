//! The block ciphers: [`Cipher`] names one, [`BlockCipher`] is one keyed instance over the
//! RustCrypto implementation, and the per-thread block-operation counter ([`block_ops`]).
//!
//! Every mode and MAC in this crate runs its blocks through [`BlockCipher`], so key schedules are
//! built once per call and every block cipher invocation is counted in one place.

use std::cell::Cell;
use std::fmt;

use cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, BlockSizeUser, KeyInit};

use crate::error::CryptoError;

/// A block cipher supported by iccard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// Single DES (FIPS 46-3): 8-byte key (parity bits ignored), 8-byte block.
    Des,
    /// Triple DES EDE (NIST SP 800-67): 16-byte (2-key, K3 = K1) or 24-byte (3-key) key,
    /// 8-byte block.
    TripleDes,
    /// SM4 (GB/T 32907-2016): 16-byte key, 16-byte block.
    Sm4,
    /// AES with a 128-bit key (FIPS 197): 16-byte key, 16-byte block.
    Aes128,
}

impl Cipher {
    /// All supported ciphers, for tests and tools that iterate over them.
    pub const ALL: [Cipher; 4] = [Cipher::Des, Cipher::TripleDes, Cipher::Sm4, Cipher::Aes128];

    /// The block length in bytes: 8 for DES and 3DES, 16 for SM4 and AES.
    pub const fn block_len(self) -> usize {
        match self {
            Cipher::Des | Cipher::TripleDes => 8,
            Cipher::Sm4 | Cipher::Aes128 => 16,
        }
    }

    /// Whether `len` is a key length this cipher accepts.
    pub const fn accepts_key_len(self, len: usize) -> bool {
        match self {
            Cipher::Des => len == 8,
            Cipher::TripleDes => len == 16 || len == 24,
            Cipher::Sm4 | Cipher::Aes128 => len == 16,
        }
    }

    /// The accepted key lengths as text, for messages ("16 or 24").
    pub const fn key_len_text(self) -> &'static str {
        match self {
            Cipher::Des => "8",
            Cipher::TripleDes => "16 or 24",
            Cipher::Sm4 | Cipher::Aes128 => "16",
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cipher::Des => "DES",
            Cipher::TripleDes => "3DES",
            Cipher::Sm4 => "SM4",
            Cipher::Aes128 => "AES-128",
        })
    }
}

thread_local! {
    static BLOCK_OPS: Cell<u64> = const { Cell::new(0) };
}

/// The number of block-cipher operations run on this thread since the last
/// [`reset_block_ops`] (or since the thread started).
///
/// One operation is one block encrypted or decrypted by one keyed cipher: a single-DES, SM4 or
/// AES block is 1, and a 2-key or 3-key **3DES block is also 1** (one call into the EDE cipher,
/// although it runs DES three times inside). ISO 9797-1 MAC algorithm 3 runs single DES and so
/// costs one operation per block plus 2 for its final D/E step; AES-CMAC costs one per block plus
/// 1 for its subkey. Benchmarks use this to report "block operations per purchase".
pub fn block_ops() -> u64 {
    BLOCK_OPS.with(Cell::get)
}

/// Sets this thread's block-operation counter back to zero.
pub fn reset_block_ops() {
    BLOCK_OPS.with(|c| c.set(0));
}

/// Adds `n` operations to this thread's counter (for work done outside [`BlockCipher`]).
pub(crate) fn count_block_ops(n: u64) {
    BLOCK_OPS.with(|c| c.set(c.get().wrapping_add(n)));
}

/// The RustCrypto instance behind a [`BlockCipher`]. Each of them zeroizes its round keys on drop
/// (the crates' `zeroize` feature).
#[derive(Clone)]
enum Engine {
    Des(des::Des),
    TdesEde2(des::TdesEde2),
    TdesEde3(des::TdesEde3),
    Sm4(sm4::Sm4),
    Aes128(aes::Aes128),
}

/// One keyed block-cipher instance: the key schedule is computed once in [`BlockCipher::new`]
/// and reused for every block. The round keys are zeroized when it is dropped; `Debug` shows
/// only the cipher.
#[derive(Clone)]
pub struct BlockCipher {
    cipher: Cipher,
    engine: Engine,
}

impl fmt::Debug for BlockCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockCipher({}, ..)", self.cipher)
    }
}

/// Encrypts every whole block of `data` in place with `c`; returns the number of blocks.
fn enc_blocks<C: BlockCipherEncrypt>(c: &C, data: &mut [u8]) -> usize {
    let (blocks, tail) = Array::<u8, <C as BlockSizeUser>::BlockSize>::slice_as_chunks_mut(data);
    debug_assert!(tail.is_empty(), "callers pass whole blocks");
    c.encrypt_blocks(blocks);
    blocks.len()
}

/// Decrypts every whole block of `data` in place with `c`; returns the number of blocks.
fn dec_blocks<C: BlockCipherDecrypt>(c: &C, data: &mut [u8]) -> usize {
    let (blocks, tail) = Array::<u8, <C as BlockSizeUser>::BlockSize>::slice_as_chunks_mut(data);
    debug_assert!(tail.is_empty(), "callers pass whole blocks");
    c.decrypt_blocks(blocks);
    blocks.len()
}

/// Builds a RustCrypto cipher from a key slice, reporting a wrong length as `KeyLength`.
fn keyed<C: KeyInit>(cipher: Cipher, key: &[u8]) -> Result<C, CryptoError> {
    C::new_from_slice(key).map_err(|_| CryptoError::KeyLength {
        cipher,
        got: key.len(),
    })
}

impl BlockCipher {
    /// Runs the key schedule of `cipher` for `key`.
    ///
    /// # Errors
    /// [`CryptoError::KeyLength`] when the key length is not one `cipher` accepts
    /// (DES 8, 3DES 16 or 24, SM4 16, AES-128 16).
    pub fn new(cipher: Cipher, key: &[u8]) -> Result<Self, CryptoError> {
        let engine = match (cipher, key.len()) {
            (Cipher::Des, _) => Engine::Des(keyed(cipher, key)?),
            (Cipher::TripleDes, 16) => Engine::TdesEde2(keyed(cipher, key)?),
            (Cipher::TripleDes, _) => Engine::TdesEde3(keyed(cipher, key)?),
            (Cipher::Sm4, _) => Engine::Sm4(keyed(cipher, key)?),
            (Cipher::Aes128, _) => Engine::Aes128(keyed(cipher, key)?),
        };
        Ok(Self { cipher, engine })
    }

    /// Single DES from an 8-byte key (cannot fail).
    pub(crate) fn des(key: &[u8; 8]) -> Self {
        Self {
            cipher: Cipher::Des,
            engine: Engine::Des(des::Des::new(key.into())),
        }
    }

    /// 2-key 3DES EDE from a 16-byte key (cannot fail).
    pub(crate) fn tdes2(key: &[u8; 16]) -> Self {
        Self {
            cipher: Cipher::TripleDes,
            engine: Engine::TdesEde2(des::TdesEde2::new(key.into())),
        }
    }

    /// SM4 from a 16-byte key (cannot fail).
    pub(crate) fn sm4(key: &[u8; 16]) -> Self {
        Self {
            cipher: Cipher::Sm4,
            engine: Engine::Sm4(sm4::Sm4::new(key.into())),
        }
    }

    /// The cipher this instance runs.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The block length in bytes.
    pub fn block_len(&self) -> usize {
        self.cipher.block_len()
    }

    fn check_len(&self, len: usize) -> Result<(), CryptoError> {
        if len.is_multiple_of(self.block_len()) {
            Ok(())
        } else {
            Err(CryptoError::DataLength {
                cipher: self.cipher,
                block_len: self.block_len(),
                got: len,
            })
        }
    }

    /// Encrypts `data` in place, block by block (ECB).
    ///
    /// # Errors
    /// [`CryptoError::DataLength`] when `data` is not a whole number of blocks (nothing is
    /// changed then).
    pub fn encrypt_blocks(&self, data: &mut [u8]) -> Result<(), CryptoError> {
        self.check_len(data.len())?;
        self.encrypt_raw(data);
        Ok(())
    }

    /// Decrypts `data` in place, block by block (ECB).
    ///
    /// # Errors
    /// [`CryptoError::DataLength`] when `data` is not a whole number of blocks.
    pub fn decrypt_blocks(&self, data: &mut [u8]) -> Result<(), CryptoError> {
        self.check_len(data.len())?;
        self.decrypt_raw(data);
        Ok(())
    }

    /// Encrypts whole blocks in place; the caller guarantees `data.len()` is a multiple of the
    /// block length (a trailing partial block would be left untouched).
    pub(crate) fn encrypt_raw(&self, data: &mut [u8]) {
        let n = match &self.engine {
            Engine::Des(c) => enc_blocks(c, data),
            Engine::TdesEde2(c) => enc_blocks(c, data),
            Engine::TdesEde3(c) => enc_blocks(c, data),
            Engine::Sm4(c) => enc_blocks(c, data),
            Engine::Aes128(c) => enc_blocks(c, data),
        };
        count_block_ops(n as u64);
    }

    /// Decrypts whole blocks in place; same contract as [`BlockCipher::encrypt_raw`].
    pub(crate) fn decrypt_raw(&self, data: &mut [u8]) {
        let n = match &self.engine {
            Engine::Des(c) => dec_blocks(c, data),
            Engine::TdesEde2(c) => dec_blocks(c, data),
            Engine::TdesEde3(c) => dec_blocks(c, data),
            Engine::Sm4(c) => dec_blocks(c, data),
            Engine::Aes128(c) => dec_blocks(c, data),
        };
        count_block_ops(n as u64);
    }
}
