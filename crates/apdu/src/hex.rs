//! Hexadecimal text for APDUs in logs, tests and transcripts: uppercase without separators
//! out, whitespace-tolerant and case-insensitive in.

/// Why a string is not hexadecimal bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// A character that is neither a hex digit nor whitespace.
    #[error("character {character:?} at position {position} is not a hex digit")]
    InvalidChar {
        /// The offending character.
        character: char,
        /// Zero-based character position in the input.
        position: usize,
    },
    /// An odd number of hex digits (whitespace not counted).
    #[error("odd number of hex digits ({digits}): every byte needs two")]
    OddLength {
        /// Number of hex digits found.
        digits: usize,
    },
}

const DIGITS: &[u8; 16] = b"0123456789ABCDEF";

/// Uppercase hex, two digits per byte, no separators: `[0x6A, 0x82]` gives `"6A82"`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0F)]));
    }
    out
}

/// Parses hex digits in either case, ignoring whitespace anywhere: `"00 a4 04 00"` gives
/// `[0x00, 0xA4, 0x04, 0x00]`.
pub fn decode(s: &str) -> Result<Vec<u8>, HexError> {
    let mut nibbles = Vec::with_capacity(s.len());
    for (position, character) in s.chars().enumerate() {
        if character.is_whitespace() {
            continue;
        }
        match character.to_digit(16) {
            // to_digit(16) is at most 15.
            Some(value) => nibbles.push(value as u8),
            None => {
                return Err(HexError::InvalidChar {
                    character,
                    position,
                })
            }
        }
    }
    if nibbles.len() % 2 != 0 {
        return Err(HexError::OddLength {
            digits: nibbles.len(),
        });
    }
    Ok(nibbles
        .chunks_exact(2)
        .map(|pair| (pair[0] << 4) | pair[1])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_uppercase() {
        assert_eq!(encode(&[0x00, 0xA4, 0x0f, 0xff]), "00A40FFF");
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn decodes_loosely() {
        assert_eq!(decode("00 a4 04 00"), Ok(vec![0x00, 0xA4, 0x04, 0x00]));
        assert_eq!(decode("6A82\n9000\t"), Ok(vec![0x6A, 0x82, 0x90, 0x00]));
        assert_eq!(decode(""), Ok(vec![]));
        assert_eq!(decode("0 0"), Ok(vec![0x00]));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode("ABC"), Err(HexError::OddLength { digits: 3 }));
        assert_eq!(
            decode("0G"),
            Err(HexError::InvalidChar {
                character: 'G',
                position: 1
            })
        );
        assert_eq!(
            decode("0x00"),
            Err(HexError::InvalidChar {
                character: 'x',
                position: 1
            })
        );
    }
}
