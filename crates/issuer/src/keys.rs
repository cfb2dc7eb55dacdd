//! Where personalization gets its card keys: [`IssuerKeys`], one call per key, given the
//! master key's name (`MCMK`, `MAMK`, `MPK`, `MLK`, `MTK`, `MPUK`, `MRPK`, `TRANSPORT`), the
//! algorithm generation and the 8 bytes of diversification data. The personalization script
//! never sees a master key: a keystore or an HSM behind this trait diversifies inside and hands
//! out only the card's own keys, which go to the card encrypted under secure messaging.
//!
//! [`DevIssuerKeys`] is the published development set ([`crate::devkeys`]).

use iccard_crypto::PurseAlg;
use zeroize::Zeroizing;

use crate::devkeys;
use crate::script::ScriptError;

/// A source of diversified card keys.
pub trait IssuerKeys {
    /// `diversify(master, alg, data)`: the card key of `master` for this data.
    fn derive(
        &self,
        master: &str,
        alg: PurseAlg,
        data: &[u8; 8],
    ) -> Result<Zeroizing<[u8; 16]>, ScriptError>;
}

/// The development key set as an [`IssuerKeys`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DevIssuerKeys;

impl IssuerKeys for DevIssuerKeys {
    fn derive(
        &self,
        master: &str,
        alg: PurseAlg,
        data: &[u8; 8],
    ) -> Result<Zeroizing<[u8; 16]>, ScriptError> {
        let key = devkeys::ALL
            .iter()
            .find(|k| k.name == master)
            .ok_or_else(|| {
                ScriptError::Invalid(format!("no master key {master} in the development set"))
            })?;
        let k = iccard_crypto::diversify(alg, &key.value(), data);
        Ok(Zeroizing::new(*k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_keys_derive_like_the_direct_formula() {
        let d = [1, 2, 3, 4, 5, 6, 7, 8];
        for k in devkeys::ALL {
            for alg in [PurseAlg::TripleDes, PurseAlg::Sm4] {
                let got = DevIssuerKeys.derive(k.name, alg, &d).unwrap();
                let want = iccard_crypto::diversify(alg, &k.value(), &d);
                assert_eq!(&got[..], &want[..], "{} {alg:?}", k.name);
            }
        }
        assert!(DevIssuerKeys
            .derive("NOPE", PurseAlg::TripleDes, &d)
            .is_err());
    }
}
