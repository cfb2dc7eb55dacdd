//! Blank cards, as the card maker's coding step makes them.

use crate::devkeys;
use iccard_cos::nvm::{Eeprom, SimEeprom};
use iccard_cos::{Card, CardError, ChipData, Manufacture, RandomSource};
use iccard_crypto::PurseAlg;

/// Chip maker code written into every chip this tool codes ("IC").
pub const CHIP_MAKER: u16 = 0x4943;
/// Card OS version reported in the chip data.
pub const OS_VERSION: u16 = 0x0100;
/// Default number of failed authentications across the card that make it self-destruct.
pub const DEFAULT_ATTACK_THRESHOLD: u8 = 64;

/// What to put on a blank card.
#[derive(Debug, Clone)]
pub struct BlankCard {
    /// Chip serial (8 bytes).
    pub chip_serial: [u8; 8],
    /// Production date, BCD YYYYMMDD.
    pub production_date: [u8; 4],
    /// Production batch.
    pub batch: u16,
    /// Transport key version.
    pub transport_key_version: u8,
    /// Self-destruct threshold.
    pub attack_threshold: u8,
}

/// The transport key of a chip: `diversify(transport master, chip serial)` (3DES generation).
pub fn transport_key(master: &[u8; 16], chip_serial: &[u8; 8]) -> zeroize::Zeroizing<[u8; 16]> {
    let k = iccard_crypto::diversify(PurseAlg::TripleDes, master, chip_serial);
    zeroize::Zeroizing::new(*k)
}

/// Codes a blank card on `eeprom` with the development transport master key.
pub fn make_blank<E: Eeprom, R: RandomSource>(
    eeprom: E,
    rng: R,
    spec: &BlankCard,
) -> Result<Card<E, R>, CardError> {
    let master = devkeys::TRANSPORT.value();
    let manufacture = Manufacture {
        chip: ChipData {
            chip_maker: CHIP_MAKER,
            chip_serial: spec.chip_serial,
            production_date: spec.production_date,
            batch: spec.batch,
            os_version: OS_VERSION,
        },
        transport_key: transport_key(&master, &spec.chip_serial),
        transport_key_version: spec.transport_key_version,
        attack_threshold: spec.attack_threshold,
    };
    Card::manufacture(eeprom, rng, &manufacture)
}

/// A fresh EEPROM of `kib` KiB with the given endurance.
pub fn eeprom(kib: usize, endurance: u32) -> Result<SimEeprom, iccard_cos::nvm::NvmError> {
    SimEeprom::new(kib * 1024, endurance)
}

/// Today's date as BCD YYYYMMDD (from days since 1970-01-01, proleptic Gregorian).
pub fn bcd_date_from_unix_days(days: i64) -> [u8; 4] {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let digits = format!("{:04}{:02}{:02}", y.clamp(0, 9999), m, d);
    let v = iccard_apdu::bcd::encode_digits(&digits, 4).unwrap_or_else(|_| vec![0; 4]);
    [v[0], v[1], v[2], v[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(bcd_date_from_unix_days(0), [0x19, 0x70, 0x01, 0x01]);
        // 2026-11-25 is day 20_782.
        assert_eq!(bcd_date_from_unix_days(20_782), [0x20, 0x26, 0x11, 0x25]);
        assert_eq!(bcd_date_from_unix_days(11_016), [0x20, 0x00, 0x02, 0x29]);
    }
}
