//! # iccard-apdu: the bytes between a reader and a card
//!
//! This crate owns the application-layer message format of ISO/IEC 7816-4 and nothing above
//! it: command and response APDUs, status words, command chaining, GET RESPONSE buffering,
//! BER-TLV and BCD. It knows no card semantics (no files, keys, PINs or purses) and does no I/O.
//!
//! ## Command APDUs ([`Command`])
//!
//! A command is a header `CLA INS P1 P2` and an optional body (ISO/IEC 7816-4:2005 5.1,
//! decoding per ISO/IEC 7816-3:2006 12.1.3). Nc is the data field length, announced by Lc; Ne
//! is the maximum response data length, announced by Le. Four cases, each in a short and (for
//! 2 to 4) an extended form:
//!
//! | case | meaning                 | short body        | extended body                     |
//! |------|-------------------------|-------------------|-----------------------------------|
//! | 1    | no data, no response    | (none)            | (none)                            |
//! | 2    | response data only      | `Le`              | `00 Le1 Le2`                      |
//! | 3    | command data only       | `Lc data`         | `00 Lc1 Lc2 data`                 |
//! | 4    | data in both directions | `Lc data Le`      | `00 Lc1 Lc2 data Le1 Le2`         |
//!
//! Short Lc is 1..=255 (`00` is the extended marker, never a valid short Lc); short `Le = 00`
//! means Ne = 256; extended Lc is 1..=65535; extended `Le = 0000` means Ne = 65536.
//! [`Command::parse`] applies these rules strictly and never panics; [`Command::to_bytes`]
//! writes the short form whenever Nc <= 255 and Ne <= 256, else the extended form for both
//! fields. Examples: `00A4040009A00000000386980701` is case 3 short (SELECT by name);
//! `00B0000000` is case 2 short with Ne = 256; `00A404000000` is malformed (a `00` marker with
//! only one byte after it).
//!
//! ```
//! use iccard_apdu::{hex, Case, Command, Response, StatusWord};
//!
//! let bytes = hex::decode("00A4040009A00000000386980701").unwrap();
//! let (select, case) = Command::parse_with_case(&bytes).unwrap();
//! assert_eq!(case, Case::Case3Short);
//! assert_eq!(select.ins, 0xA4);
//! assert_eq!(select.ne, None);
//! assert_eq!(select.to_bytes(), bytes);
//!
//! let read = Command::new(0x00, 0xB0, 0x00, 0x00).with_ne(256);
//! assert_eq!(hex::encode(&read.to_bytes()), "00B0000000");
//!
//! let bad = Command::parse(&hex::decode("00A404000000").unwrap()).unwrap_err();
//! assert_eq!(bad.status(), StatusWord::WRONG_LENGTH);
//!
//! let answer = Response::parse(&[0x6A, 0x82]).unwrap();
//! assert_eq!(answer.sw.to_string(), "6A82 (file or application not found)");
//! ```
//!
//! The class byte (ISO/IEC 7816-4:2005 5.1.1, tables 2 and 3) also carries the chaining bit
//! ([`Command::is_chained`]), the secure messaging indication
//! ([`Command::has_secure_messaging`]) and the logical channel ([`Command::logical_channel`]).
//!
//! ## Responses and status words
//!
//! A [`Response`] is a data field and a [`StatusWord`] (ISO/IEC 7816-4:2005 5.1.3, plus the
//! PBOC `93xx`/`94xx` purse codes of JR/T 0025). [`response::ResponseBuffer`] implements the
//! card side of GET RESPONSE (ISO/IEC 7816-4:2005 7.6.1) for answers longer than Ne.
//!
//! ## Modules
//!
//! - [`chain`]: command chaining (ISO/IEC 7816-4:2005 5.1.1.1), card and reader side.
//! - [`tlv`]: BER-TLV data objects (ISO/IEC 7816-4:2005 5.2, ISO/IEC 8825-1).
//! - [`bcd`]: packed BCD for amounts, dates and PINs.
//! - [`hex`]: hex text for logs, tests and transcripts.
//!
//! ## Secrets
//!
//! APDUs carry PINs and keys. `Debug` of [`Command`] hides the data field of PIN- and
//! key-bearing instructions, errors never quote data, and buffers this crate keeps
//! ([`chain::ChainAssembler`], [`response::ResponseBuffer`]) are overwritten when cleared or
//! dropped. This crate has no `zeroize` dependency, so the overwrite is best effort; callers
//! holding secrets in their own buffers wipe them themselves.

pub mod bcd;
pub mod chain;
pub mod command;
pub mod hex;
pub mod response;
pub mod status;
pub mod tlv;

pub use command::{ApduError, Case, Command};
pub use response::Response;
pub use status::StatusWord;

/// Overwrites a buffer with zeros before it is released (best effort: without `unsafe` or a
/// zeroize crate, `black_box` is what keeps the optimiser from dropping the writes).
pub(crate) fn wipe(buffer: &mut [u8]) {
    buffer.fill(0);
    std::hint::black_box(&buffer);
}
