//! Status words SW1-SW2: the [`StatusWord`] type, named constants for the ISO/IEC 7816-4
//! interindustry values (ISO/IEC 7816-4:2005 5.1.3, tables 5 and 6) and the PBOC electronic
//! purse/passbook values `93xx`/`94xx` (JR/T 0025), and a human-readable meaning for each.

use std::fmt;

/// A status word SW1-SW2, stored as `u16` (`0x6A82` is SW1 = `6A`, SW2 = `82`).
///
/// `Display` gives `6A82 (file or application not found)`, `Debug` gives `SW(6A82)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusWord(pub u16);

/// Declares the named status-word constants and the table behind [`StatusWord::meaning`] and
/// [`StatusWord::name`] from one list, so the two can never disagree.
macro_rules! status_words {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $meaning:literal; )*) => {
        impl StatusWord {
            $( $(#[$doc])* pub const $name: StatusWord = StatusWord($value); )*
        }
        /// (value, constant name, meaning) for every named constant.
        const NAMED: &[(u16, &str, &str)] = &[ $( ($value, stringify!($name), $meaning), )* ];
    };
}

status_words! {
    /// `9000`: normal processing.
    OK = 0x9000, "success";
    /// `6200`: warning, no information given; non-volatile memory unchanged.
    WARNING_NV_UNCHANGED = 0x6200, "warning: non-volatile memory unchanged, no information given";
    /// `6281`: warning, part of the returned data may be corrupted.
    DATA_MAY_BE_CORRUPTED = 0x6281, "warning: part of the returned data may be corrupted";
    /// `6282`: warning, end of file or record reached before reading Ne bytes.
    END_OF_FILE = 0x6282, "warning: end of file or record reached before reading Ne bytes";
    /// `6283`: warning, selected file deactivated (PBOC: selected file invalidated).
    SELECTED_FILE_DEACTIVATED = 0x6283, "warning: selected file deactivated";
    /// `6285`: warning, selected file in termination state.
    FILE_TERMINATED = 0x6285, "warning: selected file in termination state";
    /// `6300`: warning, no information given; non-volatile memory changed.
    WARNING_NV_CHANGED = 0x6300, "warning: non-volatile memory changed, no information given";
    /// `6400`: execution error, non-volatile memory unchanged.
    EXECUTION_ERROR_NV_UNCHANGED = 0x6400, "execution error: non-volatile memory unchanged";
    /// `6581`: execution error, memory failure.
    MEMORY_FAILURE = 0x6581, "memory failure";
    /// `6700`: wrong length (Lc/Le or the APDU length itself).
    WRONG_LENGTH = 0x6700, "wrong length";
    /// `6881`: logical channel not supported.
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881, "logical channel not supported";
    /// `6882`: secure messaging not supported.
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882, "secure messaging not supported";
    /// `6883`: last command of the chain expected.
    LAST_COMMAND_EXPECTED = 0x6883, "last command of the chain expected";
    /// `6884`: command chaining not supported.
    CHAINING_NOT_SUPPORTED = 0x6884, "command chaining not supported";
    /// `6900`: command not allowed, no information given.
    COMMAND_NOT_ALLOWED = 0x6900, "command not allowed";
    /// `6901`: PBOC: command not accepted, invalid state.
    INVALID_STATE = 0x6901, "command not accepted (invalid state)";
    /// `6981`: command incompatible with file structure.
    COMMAND_INCOMPATIBLE_WITH_FILE = 0x6981, "command incompatible with file structure";
    /// `6982`: security status not satisfied.
    SECURITY_STATUS_NOT_SATISFIED = 0x6982, "security status not satisfied";
    /// `6983`: authentication method blocked.
    AUTH_METHOD_BLOCKED = 0x6983, "authentication method blocked";
    /// `6984`: reference data not usable.
    REFERENCE_DATA_NOT_USABLE = 0x6984, "reference data not usable";
    /// `6985`: conditions of use not satisfied.
    CONDITIONS_NOT_SATISFIED = 0x6985, "conditions of use not satisfied";
    /// `6986`: command not allowed (no current EF).
    COMMAND_NOT_ALLOWED_NO_EF = 0x6986, "command not allowed (no current EF)";
    /// `6987`: expected secure messaging data objects missing.
    SM_DATA_MISSING = 0x6987, "expected secure messaging data objects missing";
    /// `6988`: incorrect secure messaging data objects.
    SM_DATA_INCORRECT = 0x6988, "incorrect secure messaging data objects";
    /// `6A80`: incorrect parameters in the command data field.
    WRONG_DATA = 0x6A80, "incorrect parameters in the command data field";
    /// `6A81`: function not supported.
    FUNCTION_NOT_SUPPORTED = 0x6A81, "function not supported";
    /// `6A82`: file or application not found.
    FILE_NOT_FOUND = 0x6A82, "file or application not found";
    /// `6A83`: record not found.
    RECORD_NOT_FOUND = 0x6A83, "record not found";
    /// `6A84`: not enough memory space in the file.
    NOT_ENOUGH_MEMORY = 0x6A84, "not enough memory space in the file";
    /// `6A85`: Nc inconsistent with TLV structure.
    NC_INCONSISTENT_WITH_TLV = 0x6A85, "Nc inconsistent with TLV structure";
    /// `6A86`: incorrect parameters P1-P2.
    INCORRECT_P1P2 = 0x6A86, "incorrect parameters P1-P2";
    /// `6A87`: Nc inconsistent with parameters P1-P2.
    NC_INCONSISTENT_WITH_P1P2 = 0x6A87, "Nc inconsistent with parameters P1-P2";
    /// `6A88`: referenced data or reference data not found.
    REFERENCE_DATA_NOT_FOUND = 0x6A88, "referenced data or reference data not found";
    /// `6A89`: file already exists.
    FILE_EXISTS = 0x6A89, "file already exists";
    /// `6A8A`: DF name already exists.
    DF_NAME_EXISTS = 0x6A8A, "DF name already exists";
    /// `6B00`: wrong parameters P1-P2.
    WRONG_P1P2 = 0x6B00, "wrong parameters P1-P2";
    /// `6D00`: instruction code not supported or invalid.
    INS_NOT_SUPPORTED = 0x6D00, "instruction code not supported or invalid";
    /// `6E00`: class not supported.
    CLA_NOT_SUPPORTED = 0x6E00, "class not supported";
    /// `6F00`: no precise diagnosis.
    NO_PRECISE_DIAGNOSIS = 0x6F00, "no precise diagnosis";
    /// `9302`: PBOC: MAC invalid.
    MAC_INVALID = 0x9302, "MAC invalid";
    /// `9303`: PBOC: application permanently locked.
    APPLICATION_LOCKED_PERMANENTLY = 0x9303, "application permanently locked";
    /// `9401`: PBOC: insufficient balance.
    INSUFFICIENT_BALANCE = 0x9401, "insufficient balance";
    /// `9402`: PBOC: transaction counter reached its maximum.
    TRANSACTION_COUNTER_MAX = 0x9402, "transaction counter reached its maximum";
    /// `9403`: PBOC: key index not supported (key not found).
    KEY_INDEX_NOT_FOUND = 0x9403, "key index not supported";
    /// `9406`: PBOC: required MAC not available.
    MAC_NOT_AVAILABLE = 0x9406, "required MAC not available";
}

impl StatusWord {
    /// Builds a status word from SW1 and SW2.
    pub const fn new(sw1: u8, sw2: u8) -> Self {
        StatusWord(((sw1 as u16) << 8) | sw2 as u16)
    }

    /// Builds a status word from its two bytes as they appear on the wire.
    pub const fn from_bytes(bytes: [u8; 2]) -> Self {
        StatusWord::new(bytes[0], bytes[1])
    }

    /// SW1, the high byte.
    pub fn sw1(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// SW2, the low byte.
    pub fn sw2(self) -> u8 {
        self.0 as u8
    }

    /// SW1 SW2 as they appear on the wire.
    pub fn to_bytes(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }

    /// `61xx`: success, `xx` more response bytes available through GET RESPONSE (`00` means
    /// 256 or more).
    pub const fn bytes_remaining(n: u8) -> Self {
        StatusWord::new(0x61, n)
    }

    /// `6Cxx`: wrong Le; `xx` is the exact number of available bytes (`00` means 256).
    pub const fn wrong_le(exact: u8) -> Self {
        StatusWord::new(0x6C, exact)
    }

    /// `63Cx`: verification failed, `x` tries left (saturated at 15).
    pub const fn verify_failed(tries_left: u8) -> Self {
        let x = if tries_left > 15 { 15 } else { tries_left };
        StatusWord::new(0x63, 0xC0 | x)
    }

    /// Normal processing: `9000` and `61xx`.
    pub fn is_success(self) -> bool {
        self == StatusWord::OK || self.sw1() == 0x61
    }

    /// A warning (`62xx`, `63xx`): processing completed, but with a condition to report.
    pub fn is_warning(self) -> bool {
        matches!(self.sw1(), 0x62 | 0x63)
    }

    /// For `63Cx`: the number of tries left, `x`.
    pub fn tries_left(self) -> Option<u8> {
        (self.sw1() == 0x63 && self.sw2() & 0xF0 == 0xC0).then_some(self.sw2() & 0x0F)
    }

    /// For `61xx`: how many bytes GET RESPONSE can still fetch (`6100` gives 256, meaning
    /// "256 or more").
    pub fn bytes_available(self) -> Option<usize> {
        (self.sw1() == 0x61).then(|| match self.sw2() {
            0 => 256,
            n => usize::from(n),
        })
    }

    /// For `6Cxx`: the exact Ne the card asks the reader to resend the command with (`6C00`
    /// gives 256).
    pub fn exact_le(self) -> Option<usize> {
        (self.sw1() == 0x6C).then(|| match self.sw2() {
            0 => 256,
            n => usize::from(n),
        })
    }

    /// The name of the constant for this value (`"FILE_NOT_FOUND"`), if it has one.
    pub fn name(self) -> Option<&'static str> {
        NAMED
            .iter()
            .find(|(value, _, _)| *value == self.0)
            .map(|(_, name, _)| *name)
    }

    /// Every named constant of this type, in declaration order.
    pub fn named() -> impl Iterator<Item = StatusWord> {
        NAMED.iter().map(|(value, _, _)| StatusWord(*value))
    }

    /// Human-readable meaning: a text for every named constant and for the families `61xx`,
    /// `6Cxx` and `63Cx`; `"unknown status"` for anything else.
    pub fn meaning(self) -> &'static str {
        if let Some((_, _, meaning)) = NAMED.iter().find(|(value, _, _)| *value == self.0) {
            return meaning;
        }
        match self.sw1() {
            0x61 => "success, more response data available (SW2 = bytes left, use GET RESPONSE)",
            0x6C => "wrong Le field (SW2 = exact number of available bytes)",
            0x63 if self.tries_left().is_some() => {
                "verification failed (low nibble of SW2 = tries left)"
            }
            _ => "unknown status",
        }
    }
}

impl fmt::Display for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X} ({})", self.0, self.meaning())
    }
}

impl fmt::Debug for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SW({:04X})", self.0)
    }
}

impl From<u16> for StatusWord {
    fn from(value: u16) -> Self {
        StatusWord(value)
    }
}

impl From<StatusWord> for u16 {
    fn from(sw: StatusWord) -> Self {
        sw.0
    }
}

impl From<[u8; 2]> for StatusWord {
    fn from(bytes: [u8; 2]) -> Self {
        StatusWord::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_parts() {
        let sw = StatusWord::new(0x6A, 0x82);
        assert_eq!(sw, StatusWord::FILE_NOT_FOUND);
        assert_eq!(sw.0, 0x6A82);
        assert_eq!((sw.sw1(), sw.sw2()), (0x6A, 0x82));
        assert_eq!(sw.to_bytes(), [0x6A, 0x82]);
        assert_eq!(StatusWord::from([0x90, 0x00]), StatusWord::OK);
        assert_eq!(u16::from(StatusWord::WRONG_LENGTH), 0x6700);
    }

    #[test]
    fn display_and_debug() {
        assert_eq!(
            StatusWord::FILE_NOT_FOUND.to_string(),
            "6A82 (file or application not found)"
        );
        assert_eq!(format!("{:?}", StatusWord::FILE_NOT_FOUND), "SW(6A82)");
        assert_eq!(StatusWord(0x1234).to_string(), "1234 (unknown status)");
        assert_eq!(
            format!("{:?}", StatusWord::INSUFFICIENT_BALANCE),
            "SW(9401)"
        );
    }

    #[test]
    fn success_and_families() {
        assert!(StatusWord::OK.is_success());
        assert!(StatusWord::bytes_remaining(0x10).is_success());
        assert!(!StatusWord::WARNING_NV_UNCHANGED.is_success());
        assert!(StatusWord::END_OF_FILE.is_warning());
        assert!(!StatusWord::FILE_NOT_FOUND.is_success());
        assert_eq!(StatusWord::bytes_remaining(0x10), StatusWord(0x6110));
        assert_eq!(
            StatusWord::bytes_remaining(0x10).bytes_available(),
            Some(16)
        );
        assert_eq!(StatusWord(0x6100).bytes_available(), Some(256));
        assert_eq!(StatusWord::OK.bytes_available(), None);
        assert_eq!(StatusWord::wrong_le(0x1C), StatusWord(0x6C1C));
        assert_eq!(StatusWord::wrong_le(0x1C).exact_le(), Some(28));
        assert_eq!(StatusWord(0x6C00).exact_le(), Some(256));
        assert!(StatusWord(0x6C1C).meaning().contains("wrong Le"));
        assert!(StatusWord(0x61FF).meaning().contains("GET RESPONSE"));
    }

    #[test]
    fn verify_counter() {
        assert_eq!(StatusWord::verify_failed(2), StatusWord(0x63C2));
        assert_eq!(StatusWord::verify_failed(0), StatusWord(0x63C0));
        assert_eq!(StatusWord::verify_failed(200), StatusWord(0x63CF));
        assert_eq!(StatusWord(0x63C2).tries_left(), Some(2));
        assert_eq!(StatusWord(0x63CF).tries_left(), Some(15));
        assert_eq!(StatusWord::WARNING_NV_CHANGED.tries_left(), None);
        assert_eq!(StatusWord(0x6381).tries_left(), None);
        assert!(StatusWord(0x63C3).meaning().contains("tries left"));
        assert_eq!(StatusWord(0x6381).meaning(), "unknown status");
    }

    #[test]
    fn every_named_constant_has_a_distinct_meaning() {
        let named: Vec<StatusWord> = StatusWord::named().collect();
        assert_eq!(named.len(), 45);
        for (i, sw) in named.iter().enumerate() {
            assert_ne!(sw.meaning(), "unknown status", "{sw:?}");
            assert!(sw.name().is_some());
            for other in &named[i + 1..] {
                assert_ne!(sw, other, "duplicate value {sw:?}");
                assert_ne!(sw.meaning(), other.meaning(), "{sw:?} vs {other:?}");
            }
        }
        assert_eq!(StatusWord(0x6A82).name(), Some("FILE_NOT_FOUND"));
        assert_eq!(
            StatusWord(0x9303).name(),
            Some("APPLICATION_LOCKED_PERMANENTLY")
        );
    }

    #[test]
    fn requested_constant_values() {
        // Values as listed in ISO/IEC 7816-4:2005 tables 5-6 and JR/T 0025.
        let expected: [(StatusWord, u16); 47] = [
            (StatusWord::OK, 0x9000),
            (StatusWord::WARNING_NV_UNCHANGED, 0x6200),
            (StatusWord::END_OF_FILE, 0x6282),
            (StatusWord::SELECTED_FILE_DEACTIVATED, 0x6283),
            (StatusWord::FILE_TERMINATED, 0x6285),
            (StatusWord::WARNING_NV_CHANGED, 0x6300),
            (StatusWord::EXECUTION_ERROR_NV_UNCHANGED, 0x6400),
            (StatusWord::MEMORY_FAILURE, 0x6581),
            (StatusWord::WRONG_LENGTH, 0x6700),
            (StatusWord::LOGICAL_CHANNEL_NOT_SUPPORTED, 0x6881),
            (StatusWord::SECURE_MESSAGING_NOT_SUPPORTED, 0x6882),
            (StatusWord::LAST_COMMAND_EXPECTED, 0x6883),
            (StatusWord::CHAINING_NOT_SUPPORTED, 0x6884),
            (StatusWord::COMMAND_NOT_ALLOWED, 0x6900),
            (StatusWord::INVALID_STATE, 0x6901),
            (StatusWord::COMMAND_INCOMPATIBLE_WITH_FILE, 0x6981),
            (StatusWord::SECURITY_STATUS_NOT_SATISFIED, 0x6982),
            (StatusWord::AUTH_METHOD_BLOCKED, 0x6983),
            (StatusWord::REFERENCE_DATA_NOT_USABLE, 0x6984),
            (StatusWord::CONDITIONS_NOT_SATISFIED, 0x6985),
            (StatusWord::COMMAND_NOT_ALLOWED_NO_EF, 0x6986),
            (StatusWord::SM_DATA_MISSING, 0x6987),
            (StatusWord::SM_DATA_INCORRECT, 0x6988),
            (StatusWord::WRONG_DATA, 0x6A80),
            (StatusWord::FUNCTION_NOT_SUPPORTED, 0x6A81),
            (StatusWord::FILE_NOT_FOUND, 0x6A82),
            (StatusWord::RECORD_NOT_FOUND, 0x6A83),
            (StatusWord::NOT_ENOUGH_MEMORY, 0x6A84),
            (StatusWord::NC_INCONSISTENT_WITH_TLV, 0x6A85),
            (StatusWord::INCORRECT_P1P2, 0x6A86),
            (StatusWord::NC_INCONSISTENT_WITH_P1P2, 0x6A87),
            (StatusWord::REFERENCE_DATA_NOT_FOUND, 0x6A88),
            (StatusWord::FILE_EXISTS, 0x6A89),
            (StatusWord::DF_NAME_EXISTS, 0x6A8A),
            (StatusWord::WRONG_P1P2, 0x6B00),
            (StatusWord::INS_NOT_SUPPORTED, 0x6D00),
            (StatusWord::CLA_NOT_SUPPORTED, 0x6E00),
            (StatusWord::NO_PRECISE_DIAGNOSIS, 0x6F00),
            (StatusWord::MAC_INVALID, 0x9302),
            (StatusWord::APPLICATION_LOCKED_PERMANENTLY, 0x9303),
            (StatusWord::INSUFFICIENT_BALANCE, 0x9401),
            (StatusWord::TRANSACTION_COUNTER_MAX, 0x9402),
            (StatusWord::KEY_INDEX_NOT_FOUND, 0x9403),
            (StatusWord::MAC_NOT_AVAILABLE, 0x9406),
            (StatusWord::DATA_MAY_BE_CORRUPTED, 0x6281),
            (StatusWord::verify_failed(3), 0x63C3),
            (StatusWord::bytes_remaining(0), 0x6100),
        ];
        for (sw, value) in expected {
            assert_eq!(sw.0, value, "{sw}");
            assert_ne!(sw.meaning(), "unknown status", "{sw:?}");
        }
    }
}
