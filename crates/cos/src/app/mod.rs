//! Applications on top of the file system: the hook through which a DF's application kind
//! (purse, PSAM) answers its proprietary commands and adds to its FCI.

use crate::card::Card;
use crate::fs::{AppKind, CardResult, Fcb};
use crate::nvm::Eeprom;
use crate::platform::RandomSource;
use iccard_apdu::{tlv, Command as Apdu, Response, StatusWord};

pub mod psam;
pub mod purse;

/// Volatile state of the selected application (a purse transaction in progress, a PSAM
/// session); cleared on reset and whenever the current DF changes.
#[derive(Debug, Default, Clone)]
pub struct AppVolatile {
    /// The purse's transaction in progress.
    pub purse: purse::PurseSession,
    /// The PSAM's purchase in progress.
    pub psam: psam::PsamSession,
}

/// SFI of the public application file (PBOC: the FCI carries it in tag 9F0C).
pub const SFI_PUBLIC_APPLICATION: u8 = 0x15;

impl<E: Eeprom, R: RandomSource> Card<E, R> {
    /// Proprietary FCI data (tag A5 contents) of a DF.
    pub(crate) fn fci_proprietary(&self, df: &Fcb) -> CardResult<Vec<u8>> {
        let mut out = Vec::new();
        if df.app == AppKind::Purse {
            if let Some(ef) =
                self.table
                    .child_by_sfi(&self.nvm, df.index, SFI_PUBLIC_APPLICATION)?
            {
                if ef.ac_read == crate::fs::Access::FREE {
                    tlv::encode_into(&mut out, 0x9F0C, &self.file_bytes(&ef)?);
                }
            }
        }
        Ok(out)
    }

    /// Proprietary-class commands not handled by the card OS itself.
    pub(crate) fn app_command(&mut self, apdu: &Apdu) -> CardResult<Response> {
        let df = self.current_df()?;
        match df.app {
            AppKind::Purse => self.purse_command(apdu),
            AppKind::Psam => self.psam_command(apdu),
            AppKind::Plain => Err(StatusWord::INS_NOT_SUPPORTED),
        }
    }
}
