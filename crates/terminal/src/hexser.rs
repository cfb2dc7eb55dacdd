//! Fixed-size byte arrays as uppercase hex strings in JSON (`#[serde(with = "hex_array")]`).

use serde::{de::Error, Deserialize, Deserializer, Serializer};

/// Serializes `[u8; N]` as hex.
pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&iccard_apdu::hex::encode(v))
}

/// Deserializes `[u8; N]` from hex.
pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
    let s = String::deserialize(d)?;
    let v = iccard_apdu::hex::decode(&s).map_err(D::Error::custom)?;
    let len = v.len();
    v.try_into()
        .map_err(|_| D::Error::custom(format!("expected {N} bytes of hex, got {len}")))
}
