//! The development key set: fixed, published master keys for demos and tests.
//!
//! These values are public (they are in this file, in the README and in `docs/KEYS.md`); a
//! card personalized with them protects nothing. A production configuration refuses them.
//! All are 16-byte (2-key 3DES or SM4) master keys; card keys are diversified from them.

use zeroize::Zeroizing;

/// A named master key of the development set.
#[derive(Clone, Copy)]
pub struct DevKey {
    /// Short name used in the PBOC literature.
    pub name: &'static str,
    /// What it is for.
    pub purpose: &'static str,
    value: [u8; 16],
}

impl DevKey {
    /// The key value in a zeroizing buffer.
    pub fn value(&self) -> Zeroizing<[u8; 16]> {
        Zeroizing::new(self.value)
    }
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DevKey({})", self.name)
    }
}

const fn seq(start: u8) -> [u8; 16] {
    let mut k = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        k[i] = start + i as u8;
        i += 1;
    }
    k
}

/// Card master key (MCMK): `6162636465666768696A6B6C6D6E6F70`.
pub const MCMK: DevKey = DevKey {
    name: "MCMK",
    purpose: "card master key (MF)",
    value: seq(0x61),
};
/// Application maintenance key (MAMK): `3132333435363738393A3B3C3D3E3F40`.
pub const MAMK: DevKey = DevKey {
    name: "MAMK",
    purpose: "application maintenance / secure messaging",
    value: seq(0x31),
};
/// Purchase master key (MPK): `0102030405060708090A0B0C0D0E0F10`.
pub const MPK: DevKey = DevKey {
    name: "MPK",
    purpose: "purchase (DPK)",
    value: seq(0x01),
};
/// Load master key (MLK): `1112131415161718191A1B1C1D1E1F20`.
pub const MLK: DevKey = DevKey {
    name: "MLK",
    purpose: "load (DLK)",
    value: seq(0x11),
};
/// TAC master key (MTK): `2122232425262728292A2B2C2D2E2F30`.
pub const MTK: DevKey = DevKey {
    name: "MTK",
    purpose: "transaction authorization code (DTK)",
    value: seq(0x21),
};
/// PIN unblock master key (MPUK): `4142434445464748494A4B4C4D4E4F50`.
pub const MPUK: DevKey = DevKey {
    name: "MPUK",
    purpose: "PIN unblock",
    value: seq(0x41),
};
/// PIN reload master key (MRPK): `5152535455565758595A5B5C5D5E5F60`.
pub const MRPK: DevKey = DevKey {
    name: "MRPK",
    purpose: "PIN reload",
    value: seq(0x51),
};
/// Transport master key: `7172737475767778797A7B7C7D7E7F80`; a card's transport key is
/// diversified from it by the chip serial.
pub const TRANSPORT: DevKey = DevKey {
    name: "TRANSPORT",
    purpose: "transport key master (blank cards)",
    value: seq(0x71),
};

/// The whole set, in documentation order.
pub const ALL: [DevKey; 8] = [MCMK, MAMK, MPK, MLK, MTK, MPUK, MRPK, TRANSPORT];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_the_published_ones() {
        let hex = |k: &DevKey| iccard_apdu::hex::encode(&k.value()[..]);
        assert_eq!(hex(&MCMK), "6162636465666768696A6B6C6D6E6F70");
        assert_eq!(hex(&MAMK), "3132333435363738393A3B3C3D3E3F40");
        assert_eq!(hex(&MPK), "0102030405060708090A0B0C0D0E0F10");
        assert_eq!(hex(&MLK), "1112131415161718191A1B1C1D1E1F20");
        assert_eq!(hex(&MTK), "2122232425262728292A2B2C2D2E2F30");
        assert_eq!(hex(&MPUK), "4142434445464748494A4B4C4D4E4F50");
        assert_eq!(hex(&MRPK), "5152535455565758595A5B5C5D5E5F60");
        assert_eq!(hex(&TRANSPORT), "7172737475767778797A7B7C7D7E7F80");
    }
}
