//! Packed BCD (two decimal digits per byte, high nibble first) as card data uses it: amounts
//! and dates with left zero padding, and PINs with a trailing `F` pad nibble when the number of
//! digits is odd (PBOC VERIFY / ISO/IEC 7816-4 VERIFY reference data in BCD).
//!
//! Errors report positions and counts only, never the digits, so a PIN cannot leak through
//! an error message.

/// Why a string or byte string is not valid BCD for the requested use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BcdError {
    /// A character that is not an ASCII decimal digit.
    #[error("character at position {position} is not a decimal digit")]
    InvalidDigit {
        /// Zero-based character position in the input string.
        position: usize,
    },
    /// More digits than fit in the requested number of bytes.
    #[error("{digits} digits do not fit in {capacity} BCD digits")]
    TooLong {
        /// Number of digits given.
        digits: usize,
        /// Number of digits the output can hold (2 per byte).
        capacity: usize,
    },
    /// A PIN with fewer than 2 or more than 12 digits.
    #[error("a PIN has 2 to 12 digits, got {len}")]
    PinLength {
        /// Number of characters given.
        len: usize,
    },
    /// A nibble that is neither a digit nor an allowed final `F` pad.
    #[error("nibble {position} is not a BCD digit (A-F, or F before the final position)")]
    InvalidNibble {
        /// Zero-based nibble position (byte index * 2, +1 for the low nibble).
        position: usize,
    },
    /// The decoded number does not fit in a `u32`.
    #[error("BCD value does not fit in 32 bits")]
    Overflow,
}

/// Shortest and longest PIN accepted by [`encode_pin`] (ISO 9564-1 allows 4 to 12; PBOC
/// personalisation allows 2 to 12).
const PIN_DIGITS: std::ops::RangeInclusive<usize> = 2..=12;

/// Checks that every character is an ASCII decimal digit.
fn check_digits(digits: &str) -> Result<(), BcdError> {
    match digits.chars().position(|c| !c.is_ascii_digit()) {
        Some(position) => Err(BcdError::InvalidDigit { position }),
        None => Ok(()),
    }
}

/// Packs digit values (0..=15) two per byte.
fn pack(nibbles: impl Iterator<Item = u8>) -> Vec<u8> {
    let nibbles: Vec<u8> = nibbles.collect();
    nibbles
        .chunks(2)
        .map(|pair| (pair[0] << 4) | pair.get(1).copied().unwrap_or(0))
        .collect()
}

/// Packs decimal digits two per byte into exactly `len` bytes, left-padded with `0` digits:
/// `("123456", 3)` gives `12 34 56`, `("42", 2)` gives `00 42`. Errors if a character is not a
/// digit or there are more than `2 * len` digits.
pub fn encode_digits(digits: &str, len: usize) -> Result<Vec<u8>, BcdError> {
    check_digits(digits)?;
    let capacity = len.saturating_mul(2);
    if digits.len() > capacity {
        return Err(BcdError::TooLong {
            digits: digits.len(),
            capacity,
        });
    }
    let padding = std::iter::repeat_n(0u8, capacity - digits.len());
    Ok(pack(padding.chain(digits.bytes().map(|b| b - b'0'))))
}

/// Packs a PIN of 2..=12 digits two per byte, padding an odd count with a final `F` nibble:
/// `"12345"` gives `12 34 5F`, `"123456"` gives `12 34 56`.
pub fn encode_pin(digits: &str) -> Result<Vec<u8>, BcdError> {
    if !PIN_DIGITS.contains(&digits.len()) {
        // `len()` counts bytes; report characters so a multi-byte character is not miscounted.
        return Err(BcdError::PinLength {
            len: digits.chars().count(),
        });
    }
    check_digits(digits)?;
    let pad = (digits.len() % 2 == 1).then_some(0x0F);
    Ok(pack(digits.bytes().map(|b| b - b'0').chain(pad)))
}

/// Unpacks BCD into decimal digits. Every nibble must be 0-9, except that the very last nibble
/// may be an `F` pad, which is dropped: `12 34 5F` gives `"12345"`.
pub fn decode(bytes: &[u8]) -> Result<String, BcdError> {
    let last = bytes.len() * 2;
    let mut out = String::with_capacity(last);
    for (position, nibble) in nibbles(bytes).enumerate() {
        match nibble {
            0..=9 => out.push(char::from(b'0' + nibble)),
            0x0F if position + 1 == last => {}
            _ => return Err(BcdError::InvalidNibble { position }),
        }
    }
    Ok(out)
}

/// Whether every nibble is a decimal digit 0-9 (strict packed BCD, no `F` padding), as amounts,
/// dates and times must be. [`decode`] additionally accepts a final `F` pad.
pub fn is_valid(bytes: &[u8]) -> bool {
    nibbles(bytes).all(|n| n <= 9)
}

/// Encodes `value` in decimal into exactly `len` bytes of packed BCD, left-padded with zeros:
/// `(1000, 3)` gives `00 10 00`.
pub fn from_u32(value: u32, len: usize) -> Result<Vec<u8>, BcdError> {
    encode_digits(&value.to_string(), len)
}

/// Decodes strict packed BCD (no `F` pad) into a number; leading zero bytes are allowed in any
/// number. Errors on a non-digit nibble or a value above `u32::MAX`.
pub fn to_u32(bytes: &[u8]) -> Result<u32, BcdError> {
    nibbles(bytes)
        .enumerate()
        .try_fold(0u32, |acc, (position, nibble)| {
            if nibble > 9 {
                return Err(BcdError::InvalidNibble { position });
            }
            acc.checked_mul(10)
                .and_then(|v| v.checked_add(u32::from(nibble)))
                .ok_or(BcdError::Overflow)
        })
}

/// The nibbles of `bytes`, high nibble of each byte first.
fn nibbles(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    bytes.iter().flat_map(|b| [b >> 4, b & 0x0F])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_left_padded() {
        assert_eq!(encode_digits("123456", 3), Ok(vec![0x12, 0x34, 0x56]));
        assert_eq!(encode_digits("42", 2), Ok(vec![0x00, 0x42]));
        assert_eq!(encode_digits("123", 2), Ok(vec![0x01, 0x23]));
        assert_eq!(encode_digits("", 1), Ok(vec![0x00]));
        assert_eq!(encode_digits("", 0), Ok(vec![]));
        assert_eq!(
            encode_digits("1234567", 3),
            Err(BcdError::TooLong {
                digits: 7,
                capacity: 6
            })
        );
        assert_eq!(
            encode_digits("12a4", 2),
            Err(BcdError::InvalidDigit { position: 2 })
        );
        assert_eq!(
            encode_digits("-1", 2),
            Err(BcdError::InvalidDigit { position: 0 })
        );
    }

    #[test]
    fn pins() {
        assert_eq!(encode_pin("12345"), Ok(vec![0x12, 0x34, 0x5F]));
        assert_eq!(encode_pin("123456"), Ok(vec![0x12, 0x34, 0x56]));
        assert_eq!(encode_pin("12"), Ok(vec![0x12]));
        assert_eq!(encode_pin("1"), Err(BcdError::PinLength { len: 1 }));
        assert_eq!(
            encode_pin("1234567890123"),
            Err(BcdError::PinLength { len: 13 })
        );
        let err = encode_pin("12x456").unwrap_err();
        assert_eq!(err, BcdError::InvalidDigit { position: 2 });
        assert!(!err.to_string().contains("12"), "no digits in errors");
        assert_eq!(decode(&[0x12, 0x34, 0x5F]), Ok("12345".to_owned()));
    }

    #[test]
    fn decoding() {
        assert_eq!(decode(&[0x20, 0x24, 0x01, 0x31]), Ok("20240131".to_owned()));
        assert_eq!(decode(&[]), Ok(String::new()));
        assert_eq!(
            decode(&[0x1A]),
            Err(BcdError::InvalidNibble { position: 1 })
        );
        assert_eq!(
            decode(&[0xF1]),
            Err(BcdError::InvalidNibble { position: 0 })
        );
        assert_eq!(
            decode(&[0x1F, 0x23]),
            Err(BcdError::InvalidNibble { position: 1 })
        );
        assert_eq!(
            decode(&[0xFF]),
            Err(BcdError::InvalidNibble { position: 0 })
        );
        assert_eq!(decode(&[0x0F]), Ok("0".to_owned()));
    }

    #[test]
    fn validity() {
        assert!(is_valid(&[0x20, 0x24, 0x12, 0x31]));
        assert!(is_valid(&[]));
        assert!(!is_valid(&[0x12, 0x3F]));
        assert!(!is_valid(&[0xA0]));
    }

    #[test]
    fn numbers() {
        assert_eq!(from_u32(1000, 3), Ok(vec![0x00, 0x10, 0x00]));
        assert_eq!(from_u32(0, 2), Ok(vec![0x00, 0x00]));
        assert_eq!(
            from_u32(4_294_967_295, 5),
            Ok(vec![0x42, 0x94, 0x96, 0x72, 0x95])
        );
        assert_eq!(
            from_u32(100, 1),
            Err(BcdError::TooLong {
                digits: 3,
                capacity: 2
            })
        );
        assert_eq!(to_u32(&[0x00, 0x10, 0x00]), Ok(1000));
        assert_eq!(to_u32(&[0x42, 0x94, 0x96, 0x72, 0x95]), Ok(u32::MAX));
        assert_eq!(
            to_u32(&[0x42, 0x94, 0x96, 0x72, 0x96]),
            Err(BcdError::Overflow)
        );
        assert_eq!(to_u32(&[0x00, 0x00, 0x00, 0x00, 0x00, 0x07]), Ok(7));
        assert_eq!(to_u32(&[]), Ok(0));
        assert_eq!(
            to_u32(&[0x1F]),
            Err(BcdError::InvalidNibble { position: 1 })
        );
    }
}
