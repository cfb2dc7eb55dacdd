//! Data-driven command APDU examples: hex in, case / Nc / Ne (or the error) out.

use iccard_apdu::{hex, ApduError, Case, Command};

/// (hex, case, Nc, Ne) for well-formed commands.
const GOOD: &[(&str, Case, usize, Option<usize>)] = &[
    // SELECT by DF name, PBOC ED/EP application AID (JR/T 0025 example AID A0 00 00 00 03 86 98 07 01).
    ("00A4040009A00000000386980701", Case::Case3Short, 9, None),
    // Same with Le = 00 (Ne = 256).
    (
        "00A4040009A0000000038698070100",
        Case::Case4Short,
        9,
        Some(256),
    ),
    // SELECT by file identifier 3F00.
    ("00A40000023F00", Case::Case3Short, 2, None),
    // READ BINARY, Le = 00.
    ("00B0000000", Case::Case2Short, 0, Some(256)),
    // READ RECORD 1 of SFI 1.
    ("00B2010C00", Case::Case2Short, 0, Some(256)),
    // GET CHALLENGE 4 bytes.
    ("0084000004", Case::Case2Short, 0, Some(4)),
    // PBOC GET BALANCE (80 5C 00 02 04).
    ("805C000204", Case::Case2Short, 0, Some(4)),
    // PBOC INITIALIZE FOR PURCHASE: key index, amount, terminal id; Le 0F.
    (
        "805001020B0100000064112233445566",
        Case::Case3Short,
        11,
        None,
    ),
    (
        "805001020B01000000641122334455660F",
        Case::Case4Short,
        11,
        Some(15),
    ),
    // VERIFY PIN 123456.
    ("0020000003123456", Case::Case3Short, 3, None),
    // Case 1: header only.
    ("00A40000", Case::Case1, 0, None),
    // PC/SC reader pseudo-APDU GET DATA (UID) with CLA FF: still a well-formed APDU.
    ("FFCA000000", Case::Case2Short, 0, Some(256)),
    // Extended forms.
    ("00B00000000000", Case::Case2Extended, 0, Some(65536)),
    ("00B00000000101", Case::Case2Extended, 0, Some(257)),
    ("00DA0000000001AA", Case::Case3Extended, 1, None),
    ("002A9E9A000001AA0000", Case::Case4Extended, 1, Some(65536)),
];

#[test]
fn good_commands() {
    for &(text, case, nc, ne) in GOOD {
        let bytes = hex::decode(text).unwrap();
        let (cmd, got_case) =
            Command::parse_with_case(&bytes).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(got_case, case, "{text}");
        assert_eq!(cmd.nc(), nc, "{text}");
        assert_eq!(cmd.ne, ne, "{text}");
        let again = if case.is_extended() {
            cmd.to_extended_bytes().unwrap()
        } else {
            cmd.to_bytes()
        };
        assert_eq!(hex::encode(&again), text, "{text}");
    }
}

#[test]
fn bad_commands() {
    let cases: &[(&str, ApduError)] = &[
        ("", ApduError::TooShort { len: 0 }),
        ("00", ApduError::TooShort { len: 1 }),
        ("00A404", ApduError::TooShort { len: 3 }),
        // Short Lc 00 is the extended marker: 2 body bytes is neither 2E nor 3E/4E.
        ("00A404000000", ApduError::ExtendedTooShort { body: 2 }),
    ];
    for (text, expected) in cases {
        let err = Command::parse(&hex::decode(text).unwrap()).unwrap_err();
        assert_eq!(&err, expected, "{text}");
        assert_eq!(err.status().0, 0x6700, "{text}");
    }
    // `00A4040000` is NOT malformed: one body byte is case 2 short with Le = 00.
    let cmd = Command::parse(&hex::decode("00A4040000").unwrap()).unwrap();
    assert_eq!(cmd.ne, Some(256));

    let mismatches = [
        // Lc 09, 8 data bytes.
        "00A4040009A000000003869807",
        // Lc 09, 9 data bytes, Le, and one extra byte.
        "00A4040009A000000003869807010000",
        // Lc 02, one data byte (`00A4000002` alone would be case 2 with Le 02).
        "00A400000201",
        // Extended Lc 0003 with 1 data byte.
        "00DA0000000003AA",
        // Extended Lc 0001, data, then one byte (an extended Le needs two).
        "00DA0000000001AA00",
    ];
    for text in mismatches {
        let err = Command::parse(&hex::decode(text).unwrap()).unwrap_err();
        assert!(
            matches!(err, ApduError::LengthMismatch { .. }),
            "{text}: {err:?}"
        );
        assert!(err.to_string().contains("Lc"), "{text}: {err}");
    }
    for text in [
        "00DA0000000000AA",
        "00DA0000000000AABB",
        "00DA00000000000000",
    ] {
        assert_eq!(
            Command::parse(&hex::decode(text).unwrap()),
            Err(ApduError::ZeroLc),
            "{text}"
        );
    }
}
