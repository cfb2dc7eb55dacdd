//! The card image codec: a [`SimEeprom`] (bytes and wear) as the bytes of a card image file.
//! Pure bytes: the host does the file I/O (write, fsync, rename).
//!
//! ## Format, version 1 (all integers big-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `ICCARDNV` |
//! | 8 | 2 | format version (1) |
//! | 10 | 4 | EEPROM size in bytes |
//! | 14 | 4 | endurance (cycles per page) |
//! | 18 | 2 | page size (64) |
//! | 20 | size | EEPROM bytes |
//! | 20 + size | 4 × pages | cycle counter of each page, `u32` |
//! | … | 32 | SHA-256 of every byte before it |
//!
//! A corrupt, truncated or unknown image is refused with an [`ImageError`], never reset.

use sha2::{Digest, Sha256};

use super::eeprom::{check_geometry, SimEeprom, PAGE_SIZE};

/// Version of the card image format this build writes and reads.
pub const IMAGE_FORMAT_VERSION: u16 = 1;
const MAGIC: [u8; 8] = *b"ICCARDNV";
const HEADER_LEN: usize = 20;
const CHECKSUM_LEN: usize = 32;

/// Why a card image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The file does not start with the card image magic.
    #[error("not an iccard card image (the file does not start with \"ICCARDNV\")")]
    BadMagic,
    /// The image was written by a format this build does not read.
    #[error(
        "card image format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The image is shorter than its header says.
    #[error("card image is truncated: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the image should have.
        expected: usize,
        /// Bytes it has.
        got: usize,
    },
    /// The image is longer than its header says.
    #[error("card image has trailing data: expected {expected} bytes, got {got}")]
    TrailingBytes {
        /// Bytes the image should have.
        expected: usize,
        /// Bytes it has.
        got: usize,
    },
    /// The SHA-256 at the end does not match the contents.
    #[error("card image checksum mismatch: the file is corrupt")]
    ChecksumMismatch,
    /// Size, page size or endurance are not ones an EEPROM can have.
    #[error("card image has an impossible geometry: {0}")]
    BadGeometry(String),
    /// A page counts more cycles than the endurance allows (a page stops at its endurance).
    #[error("card image is inconsistent: page {page} has {cycles} cycles, above the endurance of {endurance}")]
    CyclesAboveEndurance {
        /// The page.
        page: usize,
        /// Its cycle counter.
        cycles: u32,
        /// The endurance in the image.
        endurance: u32,
    },
}

/// Length of the image of an EEPROM of `eeprom_size` bytes.
pub const fn image_len(eeprom_size: usize) -> usize {
    HEADER_LEN + eeprom_size + 4 * (eeprom_size / PAGE_SIZE) + CHECKSUM_LEN
}

/// Encodes an EEPROM as card image bytes.
pub fn encode_image(eeprom: &SimEeprom) -> Vec<u8> {
    let bytes = eeprom.bytes();
    let mut out = Vec::with_capacity(image_len(bytes.len()));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&IMAGE_FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&super::Eeprom::endurance(eeprom).to_be_bytes());
    out.extend_from_slice(&(PAGE_SIZE as u16).to_be_bytes());
    out.extend_from_slice(bytes);
    for c in eeprom.cycles() {
        out.extend_from_slice(&c.to_be_bytes());
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// Decodes card image bytes, checking magic, version, geometry, length, checksum and wear.
pub fn decode_image(bytes: &[u8]) -> Result<SimEeprom, ImageError> {
    let got = bytes.len();
    let magic_len = got.min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(ImageError::BadMagic);
    }
    if got < MAGIC.len() + 2 {
        return Err(ImageError::Truncated {
            expected: HEADER_LEN,
            got,
        });
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != IMAGE_FORMAT_VERSION {
        return Err(ImageError::UnsupportedVersion {
            found: version,
            supported: IMAGE_FORMAT_VERSION,
        });
    }
    if got < HEADER_LEN {
        return Err(ImageError::Truncated {
            expected: HEADER_LEN,
            got,
        });
    }
    let size = u32::from_be_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]) as usize;
    let endurance = u32::from_be_bytes([bytes[14], bytes[15], bytes[16], bytes[17]]);
    let page_size = usize::from(u16::from_be_bytes([bytes[18], bytes[19]]));
    if page_size != PAGE_SIZE {
        return Err(ImageError::BadGeometry(format!(
            "page size {page_size} bytes, this build supports {PAGE_SIZE}"
        )));
    }
    check_geometry(size, endurance).map_err(|e| ImageError::BadGeometry(e.to_string()))?;
    let expected = image_len(size);
    if got < expected {
        return Err(ImageError::Truncated { expected, got });
    }
    if got > expected {
        return Err(ImageError::TrailingBytes { expected, got });
    }
    let (body, checksum) = bytes.split_at(expected - CHECKSUM_LEN);
    if Sha256::digest(body).as_slice() != checksum {
        return Err(ImageError::ChecksumMismatch);
    }
    let data = body[HEADER_LEN..HEADER_LEN + size].to_vec();
    let cycles: Vec<u32> = body[HEADER_LEN + size..]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some((page, &cycles)) = cycles.iter().enumerate().find(|(_, &c)| c > endurance) {
        return Err(ImageError::CyclesAboveEndurance {
            page,
            cycles,
            endurance,
        });
    }
    Ok(SimEeprom::from_parts(data, cycles, endurance))
}

#[cfg(test)]
mod tests {
    use super::super::eeprom::{Eeprom, MIN_SIZE};
    use super::*;

    #[test]
    fn round_trip_and_length() {
        let mut e = SimEeprom::new(MIN_SIZE, 500).unwrap();
        e.write(1000, b"hello").unwrap();
        e.set_cycles(7, 499);
        let img = encode_image(&e);
        assert_eq!(img.len(), image_len(MIN_SIZE));
        assert_eq!(img.len(), 20 + 8192 + 512 + 32);
        assert_eq!(decode_image(&img).unwrap(), e);
    }

    #[test]
    fn truncated_message_reads_well() {
        let e = SimEeprom::new(MIN_SIZE, 500).unwrap();
        let img = encode_image(&e);
        let err = decode_image(&img[..1000]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "card image is truncated: expected {} bytes, got 1000",
                img.len()
            )
        );
    }
}
