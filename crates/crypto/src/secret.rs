//! Secret bytes: [`Secret`] (fixed size, zeroized on drop, compared in constant time, hidden from
//! `Debug`) and [`ct_eq`], the constant-time comparison every MAC and PIN check must use.

use std::fmt;
use std::ops::Deref;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::CryptoError;

/// Compares two byte strings in constant time (for equal lengths; the length itself is not
/// secret). Different lengths compare unequal.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// `N` secret bytes (a key, a derived key): zeroized when dropped, compared with [`ct_eq`], and
/// printed by `Debug` as `Secret<N>(..)` only.
#[derive(Clone)]
pub struct Secret<const N: usize>([u8; N]);

impl<const N: usize> Secret<N> {
    /// Wraps `bytes`. (The caller's copy, if it keeps one, is its own to zeroize.)
    pub fn new(bytes: [u8; N]) -> Self {
        Self(bytes)
    }

    /// Copies `bytes` into a new secret.
    ///
    /// # Errors
    /// [`CryptoError::SecretLength`] unless `bytes` is exactly `N` bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != N {
            return Err(CryptoError::SecretLength {
                what: "secret",
                expected: N,
                got: bytes.len(),
            });
        }
        let mut s = Self([0u8; N]);
        s.0.copy_from_slice(bytes);
        Ok(s)
    }

    /// The bytes, to be filled in place by a derivation in this crate.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8; N] {
        &mut self.0
    }
}

impl<const N: usize> Deref for Secret<N> {
    type Target = [u8; N];
    fn deref(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> AsRef<[u8]> for Secret<N> {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl<const N: usize> Drop for Secret<N> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<const N: usize> ZeroizeOnDrop for Secret<N> {}

impl<const N: usize> PartialEq for Secret<N> {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl<const N: usize> Eq for Secret<N> {}

impl<const N: usize> fmt::Debug for Secret<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret<{N}>(..)")
    }
}
