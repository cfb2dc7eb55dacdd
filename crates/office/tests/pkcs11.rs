//! The PKCS#11 keystore against SoftHSM2 (being written).
