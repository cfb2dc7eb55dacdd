//! The terminal's date and time of a transaction, as the purse commands carry them: date
//! `YYYYMMDD` (4 bytes BCD) and time `HHMMSS` (3 bytes BCD). The library reads no clock: the
//! caller passes the time in, so flows replay exactly in tests.

use crate::error::TerminalError;
use iccard_apdu::bcd;

/// Date and time of a transaction (BCD, as on the card).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionTime {
    /// `YYYYMMDD`, BCD.
    pub date: [u8; 4],
    /// `HHMMSS`, BCD.
    pub time: [u8; 3],
}

impl TransactionTime {
    /// Parses `YYYYMMDD` and `HHMMSS`, checking the calendar ranges.
    pub fn parse(date: &str, time: &str) -> Result<Self, TerminalError> {
        let bad = |what: &str, v: &str| TerminalError::Input(format!("{what} {v:?} is not valid"));
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the date (YYYYMMDD)", date));
        }
        if time.len() != 6 || !time.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the time (HHMMSS)", time));
        }
        let n = |s: &str| s.parse::<u32>().unwrap_or(u32::MAX);
        let (month, day) = (n(&date[4..6]), n(&date[6..8]));
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return Err(bad("the date (YYYYMMDD)", date));
        }
        let (h, m, s) = (n(&time[0..2]), n(&time[2..4]), n(&time[4..6]));
        if h > 23 || m > 59 || s > 59 {
            return Err(bad("the time (HHMMSS)", time));
        }
        let d = bcd::encode_digits(date, 4).map_err(|_| bad("the date", date))?;
        let t = bcd::encode_digits(time, 3).map_err(|_| bad("the time", time))?;
        Ok(Self {
            date: [d[0], d[1], d[2], d[3]],
            time: [t[0], t[1], t[2]],
        })
    }

    /// The UTC date and time `secs` seconds after 1970-01-01T00:00:00Z.
    pub fn from_unix(secs: u64) -> Self {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        // Days to civil date (proleptic Gregorian; H. Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = (yoe + era * 400 + i64::from(m <= 2)).clamp(0, 9999);
        let date = format!("{y:04}{m:02}{d:02}");
        let time = format!("{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60);
        // Both strings are in range by construction.
        Self::parse(&date, &time).unwrap_or(Self {
            date: [0x19, 0x70, 0x01, 0x01],
            time: [0, 0, 0],
        })
    }

    /// The date as `YYYYMMDD`.
    pub fn date_string(&self) -> String {
        digits(&self.date)
    }

    /// The time as `HHMMSS`.
    pub fn time_string(&self) -> String {
        digits(&self.time)
    }

    /// `date ‖ time`, 7 bytes, as the purse commands carry them.
    pub fn bytes(&self) -> [u8; 7] {
        let mut b = [0u8; 7];
        b[..4].copy_from_slice(&self.date);
        b[4..].copy_from_slice(&self.time);
        b
    }
}

/// BCD bytes as decimal digits; a byte that is not BCD shows as `??`.
pub(crate) fn digits(b: &[u8]) -> String {
    bcd::decode(b).unwrap_or_else(|_| "??".repeat(b.len()))
}

impl serde::Serialize for TransactionTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("TransactionTime", 2)?;
        st.serialize_field("date", &self.date_string())?;
        st.serialize_field("time", &self.time_string())?;
        st.end()
    }
}

impl<'de> serde::Deserialize<'de> for TransactionTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Raw {
            date: String,
            time: String,
        }
        let raw = Raw::deserialize(d)?;
        Self::parse(&raw.date, &raw.time).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_unix() {
        let t = TransactionTime::parse("20260314", "235959").unwrap();
        assert_eq!(t.date, [0x20, 0x26, 0x03, 0x14]);
        assert_eq!(t.time, [0x23, 0x59, 0x59]);
        assert_eq!(t.bytes(), [0x20, 0x26, 0x03, 0x14, 0x23, 0x59, 0x59]);
        for (d, h) in [
            ("20261314", "000000"),
            ("2026031", "000000"),
            ("20260314", "240000"),
        ] {
            assert!(TransactionTime::parse(d, h).is_err(), "{d} {h}");
        }
        // 2026-11-25T01:02:03Z.
        let t = TransactionTime::from_unix(20_782 * 86_400 + 3723);
        assert_eq!(
            (t.date_string(), t.time_string()),
            ("20261125".into(), "010203".into())
        );
        assert_eq!(TransactionTime::from_unix(0).date_string(), "19700101");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"date":"20261125","time":"010203"}"#);
        assert_eq!(serde_json::from_str::<TransactionTime>(&json).unwrap(), t);
    }
}
