//! The one integration-test binary of iccard-crypto: its modules are below.

mod api;
mod derivation;
mod kat;
mod props;
mod public_vectors;

/// Decodes hex written in a test, ignoring spaces.
pub fn h(s: &str) -> Vec<u8> {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(compact).expect("test hex is valid")
}

/// Decodes hex into a fixed-size array.
pub fn arr<const N: usize>(s: &str) -> [u8; N] {
    h(s).try_into().expect("test hex has the right length")
}
