//! Command APDUs: the [`Command`] type, its strict parser and canonical encoder, the seven
//! ISO/IEC 7816-3/-4 [`Case`]s, and the [`ApduError`] returned for malformed byte strings.
//!
//! Decoding follows ISO/IEC 7816-3:2006 clause 12.1.3 ("decoding conventions for command
//! APDUs"), which is the same table ISO/IEC 7816-4:2005 clause 5.1 gives. With `L` the number of
//! bytes after the four header bytes and `B1`, `B2`, `B3` the first body bytes:
//!
//! | condition                                | case | Nc        | Ne                        |
//! |------------------------------------------|------|-----------|---------------------------|
//! | `L = 0`                                  | 1    | 0         | absent                    |
//! | `L = 1`                                  | 2S   | 0         | `B1` (`00` = 256)         |
//! | `B1 != 0`, `L = 1 + B1`                  | 3S   | `B1`      | absent                    |
//! | `B1 != 0`, `L = 2 + B1`                  | 4S   | `B1`      | last byte (`00` = 256)    |
//! | `B1 = 0`, `L = 3`                        | 2E   | 0         | `B2B3` (`0000` = 65536)   |
//! | `B1 = 0`, `B2B3 != 0`, `L = 3 + B2B3`    | 3E   | `B2B3`    | absent                    |
//! | `B1 = 0`, `B2B3 != 0`, `L = 5 + B2B3`    | 4E   | `B2B3`    | last two (`0000` = 65536) |
//!
//! Anything else is malformed and [`Command::parse`] rejects it with an [`ApduError`] whose
//! [`status`](ApduError::status) is `6700` (wrong length).

use std::fmt;

use crate::hex;
use crate::status::StatusWord;

/// Largest command data field (Nc) an extended-length APDU can carry.
pub const MAX_NC: usize = 0xFFFF;
/// Largest expected response length (Ne) an extended-length APDU can ask for.
pub const MAX_NE: usize = 0x1_0000;
/// Largest Nc a short APDU can carry.
pub const MAX_SHORT_NC: usize = 0xFF;
/// Largest Ne a short APDU can ask for (`Le = 00`).
pub const MAX_SHORT_NE: usize = 0x100;

/// The chaining control bit b5 of CLA (ISO/IEC 7816-4:2005 5.1.1, tables 2 and 3).
const CLA_CHAINING: u8 = 0x10;

/// A command APDU.
///
/// `ne` is the expected response length Ne: `None` = no Le field; `Some(n)` with 1..=256 for a
/// short APDU or 1..=65536 for an extended one (`Le = 00` short means 256, `0000` extended means
/// 65536). `data` is the command data field; its length is Nc (0..=65535).
///
/// `Debug` prints the header and data in hex, except that the data field of the PIN-bearing
/// commands VERIFY (`20`), CHANGE REFERENCE DATA (`24`), RESET RETRY COUNTER (`2C`), PBOC
/// CHANGE/RELOAD PIN (`5E`) and PBOC WRITE KEY (`D4`) is shown only by its length, so that PINs
/// and keys never reach logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    /// Class byte.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// Parameter byte P1.
    pub p1: u8,
    /// Parameter byte P2.
    pub p2: u8,
    /// Command data field (Nc = `data.len()` bytes).
    pub data: Vec<u8>,
    /// Expected response length Ne, `None` when the command has no Le field.
    pub ne: Option<usize>,
}

/// The seven command APDU cases of ISO/IEC 7816-3:2006 12.1.3 / ISO/IEC 7816-4:2005 5.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Case {
    /// Case 1: header only, no data, no Le.
    Case1,
    /// Case 2 short: Le in one byte.
    Case2Short,
    /// Case 3 short: Lc in one byte, data.
    Case3Short,
    /// Case 4 short: Lc, data, Le in one byte each.
    Case4Short,
    /// Case 2 extended: `00` and Le in two bytes.
    Case2Extended,
    /// Case 3 extended: `00`, Lc in two bytes, data.
    Case3Extended,
    /// Case 4 extended: `00`, Lc in two bytes, data, Le in two bytes.
    Case4Extended,
}

impl Case {
    /// Whether this case uses extended length fields.
    pub fn is_extended(self) -> bool {
        matches!(
            self,
            Case::Case2Extended | Case::Case3Extended | Case::Case4Extended
        )
    }

    /// The ISO case number 1..=4.
    pub fn number(self) -> u8 {
        match self {
            Case::Case1 => 1,
            Case::Case2Short | Case::Case2Extended => 2,
            Case::Case3Short | Case::Case3Extended => 3,
            Case::Case4Short | Case::Case4Extended => 4,
        }
    }
}

/// Why a byte string is not a valid APDU, or why a [`Command`] cannot be encoded.
///
/// Every variant is a length problem, so [`ApduError::status`] is always
/// [`StatusWord::WRONG_LENGTH`] (`6700`) today; callers should still use `status()` rather than
/// hard-code it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApduError {
    /// Fewer than the four header bytes CLA INS P1 P2.
    #[error("command APDU too short: {len} bytes, the header alone is 4")]
    TooShort {
        /// Number of bytes received.
        len: usize,
    },
    /// The body length does not match the Lc (and optional Le) it announces.
    #[error("command APDU length mismatch: Lc = {lc} announces {expected_body} body bytes (or one/two more for Le), but {body} follow the header")]
    LengthMismatch {
        /// Value of the Lc field.
        lc: usize,
        /// Body length (bytes after the header) that case 3 with this Lc would need.
        expected_body: usize,
        /// Body length actually received.
        body: usize,
    },
    /// An extended Lc field of `0000`: ISO/IEC 7816-3 forbids Nc = 0 when Lc is present.
    #[error("extended Lc field is 0000: a present Lc must be non-zero")]
    ZeroLc,
    /// A body starting with the extended-length marker `00` but with only `body` body bytes
    /// (an extended Le needs 3, an extended Lc at least 4).
    #[error("extended-length APDU too short: {body} body bytes after the 00 marker position")]
    ExtendedTooShort {
        /// Body length actually received.
        body: usize,
    },
    /// A response APDU shorter than the two status bytes.
    #[error("response APDU too short: {len} bytes, SW1 SW2 alone are 2")]
    ResponseTooShort {
        /// Number of bytes received.
        len: usize,
    },
    /// A [`Command`] whose data field is longer than the 65535 bytes an extended Lc can carry.
    #[error("command data field of {len} bytes exceeds the extended maximum of 65535")]
    DataTooLong {
        /// Length of the data field.
        len: usize,
    },
    /// A [`Command`] whose Ne is 0 or above 65536.
    #[error("expected response length Ne = {ne} is outside 1..=65536 (use 256 for short Le=00, 65536 for extended Le=0000)")]
    NeOutOfRange {
        /// The offending Ne.
        ne: usize,
    },
}

impl ApduError {
    /// The status word a card answers for this error: `6700` (wrong length) for every current
    /// variant, since all of them are length problems.
    pub fn status(&self) -> StatusWord {
        match self {
            ApduError::TooShort { .. }
            | ApduError::LengthMismatch { .. }
            | ApduError::ZeroLc
            | ApduError::ExtendedTooShort { .. }
            | ApduError::ResponseTooShort { .. }
            | ApduError::DataTooLong { .. }
            | ApduError::NeOutOfRange { .. } => StatusWord::WRONG_LENGTH,
        }
    }
}

/// How the class byte is coded, per ISO/IEC 7816-4:2005 5.1.1 tables 2 and 3.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClaCoding {
    /// `000x xxxx` (and, by PBOC/EMV convention, proprietary `10xx xxxx` such as 80/84):
    /// b5 chaining, b4-b3 secure messaging, b2-b1 logical channel 0..=3.
    First,
    /// `01xx xxxx`: b6 secure messaging, b5 chaining, b4-b1 logical channel 4..=19.
    Further,
    /// `11xx xxxx`: proprietary coding this crate does not interpret.
    Proprietary,
}

fn cla_coding(cla: u8) -> ClaCoding {
    match cla {
        0x40..=0x7F => ClaCoding::Further,
        0xC0..=0xFF => ClaCoding::Proprietary,
        _ => ClaCoding::First,
    }
}

/// Whether the chaining bit b5 has a defined meaning for this CLA (CLA `00`..=`BF`).
pub(crate) fn cla_supports_chaining(cla: u8) -> bool {
    cla_coding(cla) != ClaCoding::Proprietary
}

impl Command {
    /// A case 1 command: header only.
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        Command {
            cla,
            ins,
            p1,
            p2,
            data: Vec::new(),
            ne: None,
        }
    }

    /// Sets the command data field (an empty field means no Lc).
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = data.into();
        self
    }

    /// Sets the expected response length Ne (1..=65536; 256 is short `Le = 00`).
    ///
    /// Values outside that range are stored as given and rejected by
    /// [`try_to_bytes`](Self::try_to_bytes) / [`validate`](Self::validate).
    pub fn with_ne(mut self, ne: usize) -> Self {
        self.ne = Some(ne);
        self
    }

    /// Parses a command APDU in any of the seven cases, applying the length rules of
    /// ISO/IEC 7816-3:2006 12.1.3 strictly (see the module documentation). Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Command, ApduError> {
        Self::parse_with_case(bytes).map(|(command, _)| command)
    }

    /// Like [`parse`](Self::parse), and also tells which case (short or extended) the bytes
    /// used. A card that must answer in the same length form as the command uses this.
    pub fn parse_with_case(bytes: &[u8]) -> Result<(Command, Case), ApduError> {
        let (header, body) = match bytes {
            [cla, ins, p1, p2, body @ ..] => ([*cla, *ins, *p1, *p2], body),
            _ => return Err(ApduError::TooShort { len: bytes.len() }),
        };
        let make = |data: &[u8], ne: Option<usize>| Command {
            cla: header[0],
            ins: header[1],
            p1: header[2],
            p2: header[3],
            data: data.to_vec(),
            ne,
        };
        let short_ne = |le: u8| {
            if le == 0 {
                MAX_SHORT_NE
            } else {
                usize::from(le)
            }
        };
        let extended_ne = |hi: u8, lo: u8| match u16::from_be_bytes([hi, lo]) {
            0 => MAX_NE,
            n => usize::from(n),
        };
        match body {
            [] => Ok((make(&[], None), Case::Case1)),
            [le] => Ok((make(&[], Some(short_ne(*le))), Case::Case2Short)),
            [0, rest @ ..] => {
                // Extended length: B1 = 00 is the marker (a short Lc of 00 is not allowed).
                match rest {
                    [hi, lo] => Ok((make(&[], Some(extended_ne(*hi, *lo))), Case::Case2Extended)),
                    [hi, lo, tail @ ..] if !tail.is_empty() => {
                        let lc = usize::from(u16::from_be_bytes([*hi, *lo]));
                        if lc == 0 {
                            return Err(ApduError::ZeroLc);
                        }
                        if tail.len() == lc {
                            Ok((make(tail, None), Case::Case3Extended))
                        } else if tail.len() == lc + 2 {
                            let le_hi = tail[lc];
                            let le_lo = tail[lc + 1];
                            Ok((
                                make(&tail[..lc], Some(extended_ne(le_hi, le_lo))),
                                Case::Case4Extended,
                            ))
                        } else {
                            Err(ApduError::LengthMismatch {
                                lc,
                                expected_body: 3 + lc,
                                body: body.len(),
                            })
                        }
                    }
                    _ => Err(ApduError::ExtendedTooShort { body: body.len() }),
                }
            }
            [lc, tail @ ..] => {
                let lc = usize::from(*lc);
                if tail.len() == lc {
                    Ok((make(tail, None), Case::Case3Short))
                } else if tail.len() == lc + 1 {
                    Ok((
                        make(&tail[..lc], Some(short_ne(tail[lc]))),
                        Case::Case4Short,
                    ))
                } else {
                    Err(ApduError::LengthMismatch {
                        lc,
                        expected_body: 1 + lc,
                        body: body.len(),
                    })
                }
            }
        }
    }

    /// Checks that Nc and Ne are encodable: `data.len() <= 65535` and Ne in 1..=65536.
    pub fn validate(&self) -> Result<(), ApduError> {
        if self.data.len() > MAX_NC {
            return Err(ApduError::DataTooLong {
                len: self.data.len(),
            });
        }
        match self.ne {
            Some(ne) if ne == 0 || ne > MAX_NE => Err(ApduError::NeOutOfRange { ne }),
            _ => Ok(()),
        }
    }

    /// Whether the canonical encoding ([`to_bytes`](Self::to_bytes)) needs extended length
    /// fields: Nc > 255 or Ne > 256.
    pub fn needs_extended(&self) -> bool {
        self.data.len() > MAX_SHORT_NC || self.ne.is_some_and(|ne| ne > MAX_SHORT_NE)
    }

    /// The case of the canonical encoding of this command.
    pub fn case(&self) -> Case {
        let extended = self.needs_extended();
        match (self.data.is_empty(), self.ne.is_some(), extended) {
            (true, false, _) => Case::Case1,
            (true, true, false) => Case::Case2Short,
            (true, true, true) => Case::Case2Extended,
            (false, false, false) => Case::Case3Short,
            (false, false, true) => Case::Case3Extended,
            (false, true, false) => Case::Case4Short,
            (false, true, true) => Case::Case4Extended,
        }
    }

    /// Encodes the command: short form when Nc <= 255 and Ne <= 256, else extended.
    ///
    /// # Panics
    ///
    /// If the command is not encodable (see [`validate`](Self::validate)): data longer than
    /// 65535 bytes or Ne outside 1..=65536. That is a programming error in whoever built the
    /// command; use [`try_to_bytes`](Self::try_to_bytes) for untrusted values. Parsed commands
    /// are always encodable.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self.try_to_bytes() {
            Ok(bytes) => bytes,
            Err(err) => panic!("Command::to_bytes on an unencodable command: {err}"),
        }
    }

    /// Encodes the command like [`to_bytes`](Self::to_bytes), or says why it cannot.
    pub fn try_to_bytes(&self) -> Result<Vec<u8>, ApduError> {
        self.validate()?;
        Ok(self.encode(self.needs_extended()))
    }

    /// Encodes the command with extended length fields even where short ones would do (case 1
    /// has no length field and stays 4 bytes). Errors as [`try_to_bytes`](Self::try_to_bytes).
    pub fn to_extended_bytes(&self) -> Result<Vec<u8>, ApduError> {
        self.validate()?;
        Ok(self.encode(true))
    }

    /// Encodes an already validated command in the requested length form.
    fn encode(&self, extended: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 3 + self.data.len() + 2);
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        let nc = self.data.len();
        if extended {
            if nc > 0 || self.ne.is_some() {
                out.push(0x00);
            }
            if nc > 0 {
                // validate() guarantees nc <= 0xFFFF.
                out.extend_from_slice(&(nc as u16).to_be_bytes());
                out.extend_from_slice(&self.data);
            }
            if let Some(ne) = self.ne {
                // 65536 is coded 0000; validate() guarantees 1..=65536.
                let le = if ne == MAX_NE { 0 } else { ne as u16 };
                out.extend_from_slice(&le.to_be_bytes());
            }
        } else {
            if nc > 0 {
                out.push(nc as u8);
                out.extend_from_slice(&self.data);
            }
            if let Some(ne) = self.ne {
                // 256 is coded 00.
                out.push(if ne == MAX_SHORT_NE { 0 } else { ne as u8 });
            }
        }
        out
    }

    /// Whether the chaining control bit (CLA b5, `0x10`) says more commands of this chain
    /// follow (ISO/IEC 7816-4:2005 5.1.1).
    ///
    /// The bit is honoured for every CLA whose b8-b7 are not `11`, i.e. CLA `00`..=`BF`: the
    /// first and further interindustry classes, the RFU range `20`..=`3F`, and the proprietary
    /// classes `80`..=`BF` that PBOC and EMV code like the first interindustry class (`80`, `84`,
    /// `90`, `94`). CLA `C0`..=`FF` is proprietary and never chained.
    pub fn is_chained(&self) -> bool {
        cla_supports_chaining(self.cla) && self.cla & CLA_CHAINING != 0
    }

    /// Whether CLA announces secure messaging.
    ///
    /// First-interindustry coding (CLA `00`..=`3F` and `80`..=`BF`, e.g. `04`, `0C`, `84`): bits
    /// b4-b3 not `00`. Further interindustry (CLA `40`..=`7F`): bit b6. CLA `C0`..=`FF`: never.
    pub fn has_secure_messaging(&self) -> bool {
        match cla_coding(self.cla) {
            ClaCoding::First => self.cla & 0x0C != 0,
            ClaCoding::Further => self.cla & 0x20 != 0,
            ClaCoding::Proprietary => false,
        }
    }

    /// The logical channel number the CLA addresses: 0..=3 from b2-b1 in the first
    /// interindustry coding (and PBOC `8x`/`9x`/`Ax`/`Bx`), 4..=19 from b4-b1 in the further
    /// interindustry coding (CLA `40`..=`7F`), and 0 for proprietary CLA `C0`..=`FF`.
    pub fn logical_channel(&self) -> u8 {
        match cla_coding(self.cla) {
            ClaCoding::First => self.cla & 0x03,
            ClaCoding::Further => 4 + (self.cla & 0x0F),
            ClaCoding::Proprietary => 0,
        }
    }

    /// Nc, the length of the command data field.
    pub fn nc(&self) -> usize {
        self.data.len()
    }
}

/// INS codes whose data field carries PINs or keys and is therefore hidden from `Debug`.
const SENSITIVE_INS: [u8; 5] = [0x20, 0x24, 0x2C, 0x5E, 0xD4];

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Command");
        s.field(
            "header",
            &format_args!(
                "{:02X}{:02X}{:02X}{:02X}",
                self.cla, self.ins, self.p1, self.p2
            ),
        );
        if SENSITIVE_INS.contains(&self.ins) && !self.data.is_empty() {
            s.field(
                "data",
                &format_args!("<{} bytes redacted>", self.data.len()),
            );
        } else {
            s.field("data", &format_args!("{}", hex::encode(&self.data)));
        }
        s.field("ne", &self.ne);
        s.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_hex(s: &str) -> Result<(Command, Case), ApduError> {
        Command::parse_with_case(&hex::decode(s).expect("test hex"))
    }

    #[test]
    fn case1_header_only() {
        let (cmd, case) = parse_hex("00A40000").unwrap();
        assert_eq!(case, Case::Case1);
        assert_eq!(cmd, Command::new(0x00, 0xA4, 0x00, 0x00));
        assert_eq!(hex::encode(&cmd.to_bytes()), "00A40000");
    }

    #[test]
    fn case2_short_le_00_is_256() {
        let (cmd, case) = parse_hex("00B0000000").unwrap();
        assert_eq!(case, Case::Case2Short);
        assert_eq!(cmd.ne, Some(256));
        assert!(cmd.data.is_empty());
        assert_eq!(hex::encode(&cmd.to_bytes()), "00B0000000");
    }

    #[test]
    fn case3_short_select_by_name() {
        let (cmd, case) = parse_hex("00A4040009A00000000386980701").unwrap();
        assert_eq!(case, Case::Case3Short);
        assert_eq!((cmd.cla, cmd.ins, cmd.p1, cmd.p2), (0x00, 0xA4, 0x04, 0x00));
        assert_eq!(hex::encode(&cmd.data), "A00000000386980701");
        assert_eq!(cmd.ne, None);
    }

    #[test]
    fn case4_short_pboc_initialize_for_load() {
        // 80 50 00 02 0B: INITIALIZE FOR LOAD, key index 01, amount 00002710, terminal
        // 112233445566, Le 10.
        let (cmd, case) = parse_hex("805000020B010000271011223344556610").unwrap();
        assert_eq!(case, Case::Case4Short);
        assert_eq!(cmd.data.len(), 11);
        assert_eq!(cmd.ne, Some(16));
        assert_eq!(
            hex::encode(&cmd.to_bytes()),
            "805000020B010000271011223344556610"
        );
    }

    #[test]
    fn extended_cases() {
        let (cmd, case) = parse_hex("00B00000000000").unwrap();
        assert_eq!(case, Case::Case2Extended);
        assert_eq!(cmd.ne, Some(65536));

        let (cmd, case) = parse_hex("00B00000000200").unwrap();
        assert_eq!(case, Case::Case2Extended);
        assert_eq!(cmd.ne, Some(512));

        let (cmd, case) = parse_hex("00DA0000000003AABBCC").unwrap();
        assert_eq!(case, Case::Case3Extended);
        assert_eq!(cmd.data, vec![0xAA, 0xBB, 0xCC]);
        assert_eq!(cmd.ne, None);

        let (cmd, case) = parse_hex("002A9E9A000002010200FF").unwrap();
        assert_eq!(case, Case::Case4Extended);
        assert_eq!(cmd.data, vec![0x01, 0x02]);
        assert_eq!(cmd.ne, Some(255));
    }

    #[test]
    fn extended_encoding_only_when_needed() {
        let cmd = Command::new(0, 0xB0, 0, 0).with_ne(257);
        assert_eq!(hex::encode(&cmd.to_bytes()), "00B00000000101");
        let cmd = Command::new(0, 0xB0, 0, 0).with_ne(65536);
        assert_eq!(hex::encode(&cmd.to_bytes()), "00B00000000000");
        // Short data with a long Ne: both fields extended.
        let cmd = Command::new(0, 0x2A, 0x9E, 0x9A)
            .with_data([0xAB])
            .with_ne(300);
        assert_eq!(hex::encode(&cmd.to_bytes()), "002A9E9A000001AB012C");
        assert_eq!(cmd.case(), Case::Case4Extended);
        // 256 data bytes: extended Lc, Ne 256 in two bytes.
        let cmd = Command::new(0, 0xD6, 0, 0)
            .with_data(vec![0x5A; 256])
            .with_ne(256);
        let bytes = cmd.to_bytes();
        assert_eq!(&bytes[4..7], &[0x00, 0x01, 0x00]);
        assert_eq!(&bytes[bytes.len() - 2..], &[0x01, 0x00]);
        assert_eq!(bytes.len(), 4 + 3 + 256 + 2);
    }

    #[test]
    fn to_extended_bytes_round_trips() {
        let cmd = Command::new(0x80, 0x50, 0, 2)
            .with_data([1, 2, 3])
            .with_ne(16);
        let bytes = cmd.to_extended_bytes().unwrap();
        assert_eq!(hex::encode(&bytes), "805000020000030102030010");
        let (back, case) = Command::parse_with_case(&bytes).unwrap();
        assert_eq!(back, cmd);
        assert_eq!(case, Case::Case4Extended);
        assert_eq!(
            Command::new(0, 0x84, 0, 0).to_extended_bytes().unwrap(),
            vec![0, 0x84, 0, 0]
        );
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse_hex(""), Err(ApduError::TooShort { len: 0 }));
        assert_eq!(parse_hex("00A404"), Err(ApduError::TooShort { len: 3 }));
        // Lc = 00 in short position is the extended marker; one byte after it is too short.
        assert_eq!(
            parse_hex("00A404000000"),
            Err(ApduError::ExtendedTooShort { body: 2 })
        );
        // Lc announces 9 bytes, 8 follow.
        assert_eq!(
            parse_hex("00A4040009A000000003869807"),
            Err(ApduError::LengthMismatch {
                lc: 9,
                expected_body: 10,
                body: 9
            })
        );
        // Two trailing bytes after case 4 short.
        assert!(matches!(
            parse_hex("00A4040001AA0000"),
            Err(ApduError::LengthMismatch { lc: 1, .. })
        ));
        // Extended Lc = 0000 followed by bytes.
        assert_eq!(parse_hex("00DA0000000000AA"), Err(ApduError::ZeroLc));
        assert_eq!(
            parse_hex("00DA0000000000"),
            Ok((
                Command::new(0, 0xDA, 0, 0).with_ne(65536),
                Case::Case2Extended
            ))
        );
        // Extended Lc = 0002 but three data bytes follow (neither 3E nor 4E).
        assert!(matches!(
            parse_hex("00DA0000000002AABBCC"),
            Err(ApduError::LengthMismatch { lc: 2, .. })
        ));
        for err in [
            ApduError::TooShort { len: 0 },
            ApduError::ZeroLc,
            ApduError::ExtendedTooShort { body: 2 },
        ] {
            assert_eq!(err.status(), StatusWord::WRONG_LENGTH);
        }
    }

    #[test]
    fn unencodable_commands() {
        let cmd = Command::new(0, 0xB0, 0, 0).with_ne(0);
        assert_eq!(cmd.try_to_bytes(), Err(ApduError::NeOutOfRange { ne: 0 }));
        let cmd = Command::new(0, 0xB0, 0, 0).with_ne(65537);
        assert_eq!(
            cmd.try_to_bytes(),
            Err(ApduError::NeOutOfRange { ne: 65537 })
        );
        let cmd = Command::new(0, 0xD6, 0, 0).with_data(vec![0; 65536]);
        assert_eq!(cmd.validate(), Err(ApduError::DataTooLong { len: 65536 }));
        let largest = Command::new(0, 0xD6, 0, 0).with_data(vec![7; 65535]);
        assert_eq!(largest.try_to_bytes().unwrap().len(), 4 + 3 + 65535);
    }

    #[test]
    #[should_panic(expected = "unencodable")]
    fn to_bytes_panics_on_zero_ne() {
        let _ = Command::new(0, 0xB0, 0, 0).with_ne(0).to_bytes();
    }

    #[test]
    fn class_byte_bits() {
        let with_cla = |cla| Command::new(cla, 0xA4, 0, 0);
        assert!(!with_cla(0x00).is_chained());
        assert!(with_cla(0x10).is_chained());
        assert!(with_cla(0x90).is_chained());
        assert!(with_cla(0x50).is_chained());
        assert!(!with_cla(0xD0).is_chained());

        assert!(!with_cla(0x00).has_secure_messaging());
        assert!(with_cla(0x04).has_secure_messaging());
        assert!(with_cla(0x0C).has_secure_messaging());
        assert!(with_cla(0x84).has_secure_messaging());
        assert!(!with_cla(0x80).has_secure_messaging());
        assert!(with_cla(0x60).has_secure_messaging());
        assert!(!with_cla(0x4F).has_secure_messaging());
        assert!(!with_cla(0xE4).has_secure_messaging());

        assert_eq!(with_cla(0x00).logical_channel(), 0);
        assert_eq!(with_cla(0x03).logical_channel(), 3);
        assert_eq!(with_cla(0x87).logical_channel(), 3);
        assert_eq!(with_cla(0x40).logical_channel(), 4);
        assert_eq!(with_cla(0x7F).logical_channel(), 19);
        assert_eq!(with_cla(0xC3).logical_channel(), 0);
    }

    #[test]
    fn debug_redacts_pin_data() {
        let verify = Command::new(0x00, 0x20, 0x00, 0x00).with_data([0x12, 0x34, 0x56]);
        let text = format!("{verify:?}");
        assert!(text.contains("3 bytes redacted"), "{text}");
        assert!(!text.contains("123456"), "{text}");
        let select = Command::new(0x00, 0xA4, 0x04, 0x00).with_data([0xA0, 0x00]);
        let text = format!("{select:?}");
        assert!(text.contains("A000"), "{text}");
        assert!(text.contains("00A40400"), "{text}");
    }
}
