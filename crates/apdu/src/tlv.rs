//! BER-TLV data objects as ISO/IEC 7816-4:2005 5.2 uses them (a subset of ISO/IEC 8825-1 /
//! ITU-T X.690 8.1): parsing into borrowed [`Tlv`]s and encoding with minimal lengths.
//!
//! Supported: tags of 1 to 3 bytes (a first byte with b5-b1 = `11111` is followed by
//! subsequent bytes while their b8 is 1), held as a `u32` of their bytes (`0x9F7F`, `0xDF8101`);
//! definite lengths in the short form (`00`..`7F`) and the long forms `81`, `82`, `83` and `84`.
//! The indefinite form `80` and longer forms are rejected. Bytes `00` and `FF` before, between
//! and after data objects are padding (ISO/IEC 7816-4:2005 5.2) and are skipped. Long length
//! forms are accepted even where a shorter one would do (BER allows it); [`encode`] always
//! writes the shortest.

/// One BER-TLV data object borrowing its value from the parsed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag bytes as a big-endian number (`0x6F`, `0x9F7F`, `0xDF8101`).
    pub tag: u32,
    /// The value field.
    pub value: &'a [u8],
}

/// Why bytes are not well-formed BER-TLV.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    /// Only padding (or nothing) where a data object was expected.
    #[error("no data object: input is empty or only 00/FF padding")]
    Empty,
    /// The input ends inside a multi-byte tag.
    #[error("tag truncated at offset {offset}: a subsequent tag byte is missing")]
    TagTruncated {
        /// Offset of the tag's first byte.
        offset: usize,
    },
    /// A tag longer than the 3 bytes this crate supports.
    #[error("tag at offset {offset} is longer than 3 bytes")]
    TagTooLong {
        /// Offset of the tag's first byte.
        offset: usize,
    },
    /// The input ends where a length field is expected or inside one.
    #[error("length field truncated at offset {offset}")]
    LengthTruncated {
        /// Offset of the length field's first byte.
        offset: usize,
    },
    /// The indefinite length form `80`, which ISO/IEC 7816-4 does not use.
    #[error("indefinite length (80) at offset {offset} is not supported")]
    IndefiniteLength {
        /// Offset of the length byte.
        offset: usize,
    },
    /// A length form `85`..`FF` (more than 4 length bytes, or reserved).
    #[error("unsupported length form {first:02X} at offset {offset} (only 00-7F and 81-84)")]
    UnsupportedLength {
        /// The first length byte.
        first: u8,
        /// Offset of the length byte.
        offset: usize,
    },
    /// The length announces more value bytes than remain.
    #[error("value of {length} bytes at offset {offset} runs past the end ({available} bytes available)")]
    ValueTruncated {
        /// The announced length.
        length: usize,
        /// Bytes actually left after the length field.
        available: usize,
        /// Offset of the value field.
        offset: usize,
    },
    /// [`Tlv::children`] on a primitive data object.
    #[error("tag {tag:X} is primitive and has no children")]
    NotConstructed {
        /// The tag.
        tag: u32,
    },
}

impl TlvError {
    /// Shifts an error's offsets by `base`, for errors found in a sub-slice.
    fn shifted(self, base: usize) -> Self {
        match self {
            TlvError::Empty => TlvError::Empty,
            TlvError::TagTruncated { offset } => TlvError::TagTruncated {
                offset: offset + base,
            },
            TlvError::TagTooLong { offset } => TlvError::TagTooLong {
                offset: offset + base,
            },
            TlvError::LengthTruncated { offset } => TlvError::LengthTruncated {
                offset: offset + base,
            },
            TlvError::IndefiniteLength { offset } => TlvError::IndefiniteLength {
                offset: offset + base,
            },
            TlvError::UnsupportedLength { first, offset } => TlvError::UnsupportedLength {
                first,
                offset: offset + base,
            },
            TlvError::ValueTruncated {
                length,
                available,
                offset,
            } => TlvError::ValueTruncated {
                length,
                available,
                offset: offset + base,
            },
            TlvError::NotConstructed { tag } => TlvError::NotConstructed { tag },
        }
    }
}

/// Maximum number of tag bytes supported.
const MAX_TAG_BYTES: usize = 3;

fn is_padding(byte: u8) -> bool {
    byte == 0x00 || byte == 0xFF
}

/// The first byte of a tag held as a `u32` (its most significant non-zero byte).
fn first_tag_byte(tag: u32) -> u8 {
    let bytes = tag.to_be_bytes();
    bytes.iter().copied().find(|&b| b != 0).unwrap_or(0)
}

/// The tag's bytes, most significant first, without leading zero bytes (`0` gives `[0]`).
fn tag_bytes(tag: u32) -> Vec<u8> {
    let bytes = tag.to_be_bytes();
    let skip = bytes.iter().take(3).take_while(|&&b| b == 0).count();
    bytes[skip..].to_vec()
}

/// Whether `tag` is a tag this module can parse and encode: 1 to 3 bytes, a first byte other
/// than the padding values `00` and `FF`, subsequent bytes present exactly when the first byte's
/// b5-b1 are `11111`, and b8 set on every subsequent byte but the last.
pub fn is_valid_tag(tag: u32) -> bool {
    let bytes = tag_bytes(tag);
    if bytes.len() > MAX_TAG_BYTES || is_padding(bytes[0]) {
        return false;
    }
    let multi = bytes[0] & 0x1F == 0x1F;
    match &bytes[1..] {
        [] => !multi,
        [rest @ .., last] => multi && last & 0x80 == 0 && rest.iter().all(|b| b & 0x80 != 0),
    }
}

impl<'a> Tlv<'a> {
    /// Whether the tag's constructed bit (b6 of the first tag byte) is set, i.e. the value is
    /// itself a sequence of data objects.
    pub fn is_constructed(&self) -> bool {
        first_tag_byte(self.tag) & 0x20 != 0
    }

    /// Parses the value of a constructed data object into its data objects.
    pub fn children(&self) -> Result<Vec<Tlv<'a>>, TlvError> {
        if !self.is_constructed() {
            return Err(TlvError::NotConstructed { tag: self.tag });
        }
        parse_all(self.value)
    }

    /// First child with tag `tag`, if this object is constructed, well formed up to it, and has
    /// one.
    pub fn find(&self, tag: u32) -> Option<&'a [u8]> {
        if !self.is_constructed() {
            return None;
        }
        find(self.value, tag)
    }

    /// The encoding of this data object (tag, minimal length, value).
    pub fn to_vec(&self) -> Vec<u8> {
        encode(self.tag, self.value)
    }
}

/// Reads a tag at the start of `bytes` (no padding there). Returns the tag and its length.
fn read_tag(bytes: &[u8]) -> Result<(u32, usize), TlvError> {
    let first = *bytes.first().ok_or(TlvError::Empty)?;
    let mut tag = u32::from(first);
    if first & 0x1F != 0x1F {
        return Ok((tag, 1));
    }
    let mut len = 1;
    loop {
        if len == MAX_TAG_BYTES {
            return Err(TlvError::TagTooLong { offset: 0 });
        }
        let byte = *bytes.get(len).ok_or(TlvError::TagTruncated { offset: 0 })?;
        tag = (tag << 8) | u32::from(byte);
        len += 1;
        if byte & 0x80 == 0 {
            return Ok((tag, len));
        }
    }
}

/// Reads a definite length at `bytes[offset..]`. Returns the length and the field's size.
fn read_length(bytes: &[u8], offset: usize) -> Result<(usize, usize), TlvError> {
    let first = *bytes
        .get(offset)
        .ok_or(TlvError::LengthTruncated { offset })?;
    let count = match first {
        0x00..=0x7F => return Ok((usize::from(first), 1)),
        0x80 => return Err(TlvError::IndefiniteLength { offset }),
        0x81..=0x84 => usize::from(first & 0x7F),
        _ => return Err(TlvError::UnsupportedLength { first, offset }),
    };
    let field = bytes
        .get(offset + 1..offset + 1 + count)
        .ok_or(TlvError::LengthTruncated { offset })?;
    let length = field.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    // At most 4 bytes, so at most u32::MAX; saturate on 16-bit targets, where no slice can be
    // that long anyway and the value check below rejects it.
    let length = usize::try_from(length).unwrap_or(usize::MAX);
    Ok((length, 1 + count))
}

/// Number of leading padding bytes (`00`/`FF`).
fn padding_len(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|&&b| is_padding(b)).count()
}

/// Parses one data object at the start of `bytes`, after any `00`/`FF` padding, and returns
/// it with the bytes that follow it. Error offsets are relative to `bytes`.
pub fn parse_one(bytes: &[u8]) -> Result<(Tlv<'_>, &[u8]), TlvError> {
    let start = padding_len(bytes);
    let object = &bytes[start..];
    if object.is_empty() {
        return Err(TlvError::Empty);
    }
    let (tag, tag_len) = read_tag(object).map_err(|e| e.shifted(start))?;
    let (length, length_len) = read_length(object, tag_len).map_err(|e| e.shifted(start))?;
    let value_start = tag_len + length_len;
    let available = object.len() - value_start;
    if length > available {
        return Err(TlvError::ValueTruncated {
            length,
            available,
            offset: start + value_start,
        });
    }
    let value_end = value_start + length;
    Ok((
        Tlv {
            tag,
            value: &object[value_start..value_end],
        },
        &object[value_end..],
    ))
}

/// Parses a sequence of data objects, skipping `00`/`FF` padding around them. Strict: every
/// non-padding byte must belong to a well-formed data object whose value fits. Empty input (or
/// only padding) gives an empty list.
pub fn parse_all(bytes: &[u8]) -> Result<Vec<Tlv<'_>>, TlvError> {
    let mut objects = Vec::new();
    let mut rest = bytes;
    loop {
        rest = &rest[padding_len(rest)..];
        if rest.is_empty() {
            return Ok(objects);
        }
        let base = bytes.len() - rest.len();
        let (tlv, after) = parse_one(rest).map_err(|e| e.shifted(base))?;
        objects.push(tlv);
        rest = after;
    }
}

/// Value of the first top-level data object with tag `tag`. Scans until it finds one or meets
/// malformed bytes (then `None`); does not descend into constructed objects.
pub fn find(bytes: &[u8], tag: u32) -> Option<&[u8]> {
    let mut rest = bytes;
    while let Ok((tlv, after)) = parse_one(rest) {
        if tlv.tag == tag {
            return Some(tlv.value);
        }
        rest = after;
    }
    None
}

/// Encodes one data object: tag bytes, shortest definite length, value.
///
/// `tag` should satisfy [`is_valid_tag`] (checked by a debug assertion); an invalid tag is
/// written as its big-endian bytes and will not parse back.
///
/// # Panics
///
/// If `value` is longer than `u32::MAX` bytes, which BER-TLV as used here cannot express.
pub fn encode(tag: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 8);
    encode_into(&mut out, tag, value);
    out
}

/// Appends the encoding of one data object to `out` (see [`encode`]).
///
/// # Panics
///
/// As [`encode`].
pub fn encode_into(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    debug_assert!(is_valid_tag(tag), "invalid BER-TLV tag {tag:X}");
    out.extend_from_slice(&tag_bytes(tag));
    encode_length(out, value.len());
    out.extend_from_slice(value);
}

/// Appends the shortest definite length encoding of `length`.
fn encode_length(out: &mut Vec<u8>, length: usize) {
    let Ok(length) = u32::try_from(length) else {
        panic!("BER-TLV value of {length} bytes exceeds the 4-byte length form");
    };
    if length < 0x80 {
        out.push(length as u8);
        return;
    }
    let bytes = length.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    out.push(0x80 | (4 - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// Number of bytes [`encode`] produces for a value of `value_len` bytes under `tag`.
pub fn encoded_len(tag: u32, value_len: usize) -> usize {
    let length_len = match value_len {
        0..=0x7F => 1,
        0x80..=0xFF => 2,
        0x100..=0xFFFF => 3,
        0x1_0000..=0xFF_FFFF => 4,
        _ => 5,
    };
    tag_bytes(tag).len() + length_len + value_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;

    const FCI: &str = "6F148409A00000000386980701A5078801019F080102";

    #[test]
    fn parses_nested_fci() {
        let bytes = hex::decode(FCI).unwrap();
        let top = parse_all(&bytes).unwrap();
        assert_eq!(top.len(), 1);
        let fci = top[0];
        assert_eq!(fci.tag, 0x6F);
        assert!(fci.is_constructed());
        let children = fci.children().unwrap();
        assert_eq!(children.len(), 2);
        assert_eq!(children[0].tag, 0x84);
        assert!(!children[0].is_constructed());
        assert_eq!(hex::encode(children[0].value), "A00000000386980701");
        assert_eq!(
            children[0].children(),
            Err(TlvError::NotConstructed { tag: 0x84 })
        );
        let proprietary = children[1];
        assert_eq!(proprietary.tag, 0xA5);
        assert_eq!(proprietary.find(0x9F08), Some(&[0x02][..]));
        assert_eq!(proprietary.find(0x88), Some(&[0x01][..]));
        assert_eq!(find(&bytes, 0x6F).map(<[u8]>::len), Some(20));
        assert_eq!(find(&bytes, 0x84), None, "find is top level only");
        assert_eq!(fci.to_vec(), bytes);
    }

    #[test]
    fn builds_same_fci() {
        let mut inner = Vec::new();
        encode_into(&mut inner, 0x88, &[0x01]);
        encode_into(&mut inner, 0x9F08, &[0x02]);
        let mut fci = encode(0x84, &hex::decode("A00000000386980701").unwrap());
        encode_into(&mut fci, 0xA5, &inner);
        assert_eq!(hex::encode(&encode(0x6F, &fci)), FCI);
    }

    #[test]
    fn length_forms() {
        assert_eq!(encode(0x04, &[0; 127])[..2], [0x04, 0x7F]);
        assert_eq!(encode(0x04, &[0; 128])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(encode(0x04, &[0; 255])[..3], [0x04, 0x81, 0xFF]);
        assert_eq!(encode(0x04, &[0; 256])[..4], [0x04, 0x82, 0x01, 0x00]);
        assert_eq!(
            encode(0xDF8101, &vec![0; 0x10000])[..7],
            [0xDF, 0x81, 0x01, 0x83, 0x01, 0x00, 0x00]
        );
        for len in [0, 1, 127, 128, 255, 256, 65535, 65536] {
            let value = vec![0xA5; len];
            let bytes = encode(0x5F20, &value);
            assert_eq!(bytes.len(), encoded_len(0x5F20, len));
            let (tlv, rest) = parse_one(&bytes).unwrap();
            assert_eq!((tlv.tag, tlv.value.len(), rest.len()), (0x5F20, len, 0));
        }
        // Non-minimal long forms parse (BER allows them).
        let (tlv, _) = parse_one(&[0x80, 0x81, 0x02, 0xAA, 0xBB]).unwrap();
        assert_eq!(tlv.value, &[0xAA, 0xBB]);
        let (tlv, _) = parse_one(&[0x80, 0x84, 0, 0, 0, 1, 0xCC]).unwrap();
        assert_eq!(tlv.value, &[0xCC]);
    }

    #[test]
    fn padding_is_skipped() {
        let bytes = [0x00, 0xFF, 0x80, 0x01, 0x11, 0x00, 0x00, 0x81, 0x00, 0xFF];
        let all = parse_all(&bytes).unwrap();
        assert_eq!(
            all,
            vec![
                Tlv {
                    tag: 0x80,
                    value: &[0x11]
                },
                Tlv {
                    tag: 0x81,
                    value: &[]
                }
            ]
        );
        assert_eq!(parse_all(&[]), Ok(vec![]));
        assert_eq!(parse_all(&[0x00, 0xFF]), Ok(vec![]));
        assert_eq!(parse_one(&[0x00, 0xFF]), Err(TlvError::Empty));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            parse_all(&[0x9F]),
            Err(TlvError::TagTruncated { offset: 0 })
        );
        assert_eq!(
            parse_all(&[0x80, 0x00, 0x9F, 0x81]),
            Err(TlvError::TagTruncated { offset: 2 })
        );
        assert_eq!(
            parse_all(&[0x9F, 0x81, 0x81, 0x01, 0x00]),
            Err(TlvError::TagTooLong { offset: 0 })
        );
        assert_eq!(
            parse_all(&[0x80]),
            Err(TlvError::LengthTruncated { offset: 1 })
        );
        assert_eq!(
            parse_all(&[0x80, 0x82, 0x01]),
            Err(TlvError::LengthTruncated { offset: 1 })
        );
        assert_eq!(
            parse_all(&[0x30, 0x80, 0x00, 0x00]),
            Err(TlvError::IndefiniteLength { offset: 1 })
        );
        assert_eq!(
            parse_all(&[0x80, 0x85, 0, 0, 0, 0, 1, 0]),
            Err(TlvError::UnsupportedLength {
                first: 0x85,
                offset: 1
            })
        );
        assert_eq!(
            parse_all(&[0x80, 0x01, 0xAA, 0x81, 0x03, 0xBB]),
            Err(TlvError::ValueTruncated {
                length: 3,
                available: 1,
                offset: 5
            })
        );
        // Trailing garbage: a lone tag byte after a good object.
        assert!(parse_all(&[0x80, 0x01, 0xAA, 0x5A]).is_err());
        // A constructed object whose content is malformed.
        let bad = [0x70, 0x02, 0x5A, 0x05];
        let (outer, _) = parse_one(&bad).unwrap();
        assert!(outer.children().is_err());
        assert_eq!(outer.find(0x5A), None);
    }

    #[test]
    fn tag_validity() {
        for tag in [
            0x4F, 0x6F, 0x84, 0x9F08, 0x9F7F, 0x5F20, 0xBF0C, 0xDF8101, 0x1F05,
        ] {
            assert!(is_valid_tag(tag), "{tag:X}");
        }
        for tag in [
            0x00, 0xFF, 0x9F, 0x5F, 0x9F81, 0x4F01, 0xDF818101, 0x9F8181, 0x5A0102,
        ] {
            assert!(!is_valid_tag(tag), "{tag:X}");
        }
    }

    #[test]
    fn find_stops_at_malformed_bytes() {
        let bytes = [0x5A, 0x01, 0x11, 0x9F];
        assert_eq!(find(&bytes, 0x5A), Some(&[0x11][..]));
        assert_eq!(find(&bytes, 0x9F36), None);
    }
}
