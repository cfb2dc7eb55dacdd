//! The keystore over PKCS#11 (being written).
