//! Property tests: codec round trips, parsers that never panic, chaining and GET RESPONSE
//! reassembly.

use iccard_apdu::chain::{split, ChainAssembler};
use iccard_apdu::response::ResponseBuffer;
use iccard_apdu::{bcd, hex, tlv, Command, Response, StatusWord};
use proptest::collection::vec;
use proptest::prelude::*;

/// Any encodable command, biased towards the short/extended boundaries.
fn command() -> impl Strategy<Value = Command> {
    let data = prop_oneof![
        4 => vec(any::<u8>(), 0..=8),
        4 => vec(any::<u8>(), 250..=260),
        1 => vec(any::<u8>(), 0..=2000),
    ];
    let ne = prop_oneof![
        Just(None),
        (1usize..=256).prop_map(Some),
        (250usize..=260).prop_map(Some),
        (1usize..=65536).prop_map(Some),
        (65530usize..=65536).prop_map(Some),
    ];
    (any::<[u8; 4]>(), data, ne).prop_map(|(h, data, ne)| Command {
        cla: h[0],
        ins: h[1],
        p1: h[2],
        p2: h[3],
        data,
        ne,
    })
}

/// Byte strings near the valid ones: encodings (short or extended) with a mutation, and noise.
fn apdu_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let encoded = || {
        (command(), any::<bool>()).prop_map(|(cmd, extended)| {
            if extended {
                cmd.to_extended_bytes().unwrap()
            } else {
                cmd.to_bytes()
            }
        })
    };
    prop_oneof![
        vec(any::<u8>(), 0..=12),
        vec(any::<u8>(), 0..=300),
        (any::<[u8; 4]>(), vec(any::<u8>(), 0..=8)).prop_map(|(h, tail)| {
            // Header, extended marker, random rest.
            let mut b = h.to_vec();
            b.push(0);
            b.extend(tail);
            b
        }),
        (encoded(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut b, i, v)| {
            let i = i.index(b.len());
            b[i] = v;
            b
        }),
        (encoded(), any::<prop::sample::Index>()).prop_map(|(b, i)| {
            let cut = i.index(b.len() + 1);
            b[..cut].to_vec()
        }),
        (encoded(), vec(any::<u8>(), 1..=3)).prop_map(|(mut b, extra)| {
            b.extend(extra);
            b
        }),
    ]
}

/// A valid BER-TLV tag of 1 to 3 bytes.
fn tag() -> impl Strategy<Value = u32> {
    let single = any::<u8>().prop_filter("single-byte tag", |b| {
        b & 0x1F != 0x1F && *b != 0x00 && *b != 0xFF
    });
    let lead = any::<u8>()
        .prop_map(|b| b | 0x1F)
        .prop_filter("not FF", |b| *b != 0xFF);
    prop_oneof![
        single.prop_map(u32::from),
        (lead.clone(), 0u8..0x80).prop_map(|(a, b)| u32::from_be_bytes([0, 0, a, b])),
        (lead, 0x80u8..=0xFF, 0u8..0x80).prop_map(|(a, b, c)| u32::from_be_bytes([0, a, b, c])),
    ]
}

fn tlv_list() -> impl Strategy<Value = Vec<(u32, Vec<u8>)>> {
    vec(
        (
            tag(),
            prop_oneof![
                4 => vec(any::<u8>(), 0..=130),
                1 => vec(any::<u8>(), 250..=300),
            ],
        ),
        0..=5,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn command_round_trip(cmd in command()) {
        let bytes = cmd.to_bytes();
        prop_assert_eq!(Command::parse(&bytes), Ok(cmd.clone()));
        let (_, case) = Command::parse_with_case(&bytes).unwrap();
        prop_assert_eq!(case, cmd.case());
        prop_assert_eq!(case.is_extended(), cmd.needs_extended());
        let extended = cmd.to_extended_bytes().unwrap();
        prop_assert_eq!(Command::parse(&extended), Ok(cmd.clone()));
        let expected_len = 4
            + if cmd.data.is_empty() { 0 } else if case.is_extended() { 3 } else { 1 }
            + cmd.data.len()
            + match (cmd.ne, case.is_extended(), cmd.data.is_empty()) {
                (None, _, _) => 0,
                (Some(_), false, _) => 1,
                (Some(_), true, true) => 3,
                (Some(_), true, false) => 2,
            };
        prop_assert_eq!(bytes.len(), expected_len);
    }

    #[test]
    fn command_parse_never_panics_and_is_canonical(bytes in apdu_like_bytes()) {
        if let Ok((cmd, case)) = Command::parse_with_case(&bytes) {
            // The bytes are exactly the short or the extended encoding of what was parsed.
            let again = if case.is_extended() {
                cmd.to_extended_bytes().unwrap()
            } else {
                cmd.to_bytes()
            };
            prop_assert_eq!(&again, &bytes);
            prop_assert_eq!(Command::parse(&cmd.to_bytes()), Ok(cmd.clone()));
            prop_assert!(cmd.validate().is_ok());
        } else {
            let err = Command::parse(&bytes).unwrap_err();
            prop_assert_eq!(err.status(), StatusWord::WRONG_LENGTH);
        }
    }

    #[test]
    fn response_round_trip(data in vec(any::<u8>(), 0..=300), sw in any::<u16>()) {
        let response = Response::new(data, StatusWord(sw));
        let bytes = response.to_bytes();
        prop_assert_eq!(Response::parse(&bytes), Ok(response));
    }

    #[test]
    fn response_parse_any(bytes in vec(any::<u8>(), 0..=40)) {
        match Response::parse(&bytes) {
            Ok(response) => prop_assert_eq!(response.to_bytes(), bytes),
            Err(_) => prop_assert!(bytes.len() < 2),
        }
    }

    #[test]
    fn tlv_round_trip(objects in tlv_list(), padding in any::<bool>()) {
        let mut bytes = Vec::new();
        for (tag, value) in &objects {
            if padding {
                bytes.push(0x00);
            }
            tlv::encode_into(&mut bytes, *tag, value);
            prop_assert!(tlv::is_valid_tag(*tag));
        }
        if padding {
            bytes.push(0xFF);
        }
        let parsed = tlv::parse_all(&bytes).unwrap();
        prop_assert_eq!(parsed.len(), objects.len());
        for (tlv, (tag, value)) in parsed.iter().zip(&objects) {
            prop_assert_eq!(tlv.tag, *tag);
            prop_assert_eq!(tlv.value, &value[..]);
            prop_assert_eq!(tlv.to_vec().len(), tlv::encoded_len(*tag, value.len()));
        }
        // Wrapped in a constructed template, the children come back.
        let template = tlv::encode(0x70, &bytes);
        let (outer, rest) = tlv::parse_one(&template).unwrap();
        prop_assert!(rest.is_empty());
        prop_assert!(outer.is_constructed());
        prop_assert_eq!(outer.children().unwrap(), parsed.clone());
        if let Some((tag, value)) = objects.first() {
            prop_assert_eq!(tlv::find(&bytes, *tag), Some(&value[..]));
        }
    }

    #[test]
    fn tlv_parse_never_panics(bytes in vec(any::<u8>(), 0..=64)) {
        if let Ok(objects) = tlv::parse_all(&bytes) {
            let value_bytes: usize = objects.iter().map(|t| t.value.len()).sum();
            prop_assert!(value_bytes <= bytes.len());
            for object in &objects {
                let encoded = object.to_vec();
                prop_assert_eq!(tlv::parse_all(&encoded), Ok(vec![*object]));
                let _ = object.children();
            }
        }
        let _ = tlv::parse_one(&bytes);
        let _ = tlv::find(&bytes, 0x9F36);
    }

    #[test]
    fn bcd_digits_round_trip(digits in "[0-9]{0,20}", extra in 0usize..3) {
        let len = digits.len().div_ceil(2) + extra;
        let packed = bcd::encode_digits(&digits, len).unwrap();
        prop_assert_eq!(packed.len(), len);
        prop_assert!(bcd::is_valid(&packed));
        let decoded = bcd::decode(&packed).unwrap();
        prop_assert_eq!(decoded.len(), 2 * len);
        prop_assert!(decoded.ends_with(&digits));
        prop_assert!(decoded[..2 * len - digits.len()].bytes().all(|b| b == b'0'));
    }

    #[test]
    fn bcd_pin_round_trip(pin in "[0-9]{2,12}") {
        let packed = bcd::encode_pin(&pin).unwrap();
        prop_assert_eq!(packed.len(), pin.len().div_ceil(2));
        prop_assert_eq!(bcd::decode(&packed).unwrap(), pin);
    }

    #[test]
    fn bcd_u32_round_trip(value in any::<u32>()) {
        let packed = bcd::from_u32(value, 5).unwrap();
        prop_assert_eq!(bcd::to_u32(&packed), Ok(value));
        prop_assert_eq!(hex::encode(&packed), format!("{value:010}"));
    }

    #[test]
    fn bcd_decode_any(bytes in vec(any::<u8>(), 0..=8)) {
        if let Ok(digits) = bcd::decode(&bytes) {
            let padded = bytes.last().is_some_and(|b| b & 0x0F == 0x0F);
            prop_assert_eq!(digits.len(), 2 * bytes.len() - usize::from(padded));
            prop_assert_eq!(bcd::is_valid(&bytes), !padded);
            if !padded {
                prop_assert_eq!(bcd::encode_digits(&digits, bytes.len()).unwrap(), bytes);
            }
        } else {
            prop_assert!(!bcd::is_valid(&bytes));
        }
    }

    #[test]
    fn hex_round_trip(bytes in vec(any::<u8>(), 0..=64)) {
        let text = hex::encode(&bytes);
        prop_assert_eq!(text.len(), 2 * bytes.len());
        prop_assert_eq!(hex::decode(&text), Ok(bytes.clone()));
        prop_assert_eq!(hex::decode(&text.to_lowercase()), Ok(bytes));
    }

    #[test]
    fn chain_split_then_assemble(
        cmd in command(),
        cla in prop_oneof![0x00u8..=0x0F, 0x40u8..=0x4F, 0x60u8..=0x6F, 0x80u8..=0x8F],
        max_data in 1usize..=300,
    ) {
        let cmd = Command { cla, ..cmd };
        let pieces = split(&cmd, max_data);
        prop_assert_eq!(pieces.len(), cmd.data.len().div_ceil(max_data).max(1));
        let mut assembler = ChainAssembler::new(cmd.data.len());
        let (last, init) = pieces.split_last().unwrap();
        for piece in init {
            prop_assert!(piece.is_chained());
            prop_assert!(piece.data.len() <= max_data);
            prop_assert_eq!(piece.ne, None);
            prop_assert_eq!(assembler.push(piece.clone()), Ok(None));
        }
        prop_assert!(!last.is_chained());
        prop_assert_eq!(assembler.push(last.clone()), Ok(Some(cmd)));
        prop_assert!(!assembler.in_progress());
    }

    #[test]
    fn get_response_reassembles(
        data in vec(any::<u8>(), 0..=1500),
        ne in prop_oneof![Just(None), (1usize..=65536).prop_map(Some)],
        extended in any::<bool>(),
        fetch in 1usize..=300,
    ) {
        let mut buffer = ResponseBuffer::new();
        let full = Response::new(data.clone(), StatusWord::OK);
        let cap = if extended { 65536 } else { 256 };
        let mut response = buffer.answer(full, ne, extended);
        let mut collected = Vec::new();
        let mut rounds = 0;
        loop {
            prop_assert!(response.data.len() <= cap);
            collected.extend_from_slice(&response.data);
            let Some(available) = response.sw.bytes_available() else { break };
            prop_assert_eq!(available, buffer.remaining().min(256));
            response = buffer.get_response(Some(fetch));
            rounds += 1;
            prop_assert!(rounds <= 1500);
        }
        prop_assert_eq!(response.sw, StatusWord::OK);
        prop_assert_eq!(collected, data);
        prop_assert!(!buffer.is_pending());
    }
}

#[test]
fn largest_extended_command_round_trips() {
    let cmd = Command::new(0x00, 0xD6, 0x00, 0x00)
        .with_data(vec![0xA5; 65535])
        .with_ne(65536);
    let bytes = cmd.to_bytes();
    assert_eq!(bytes.len(), 4 + 3 + 65535 + 2);
    assert_eq!(&bytes[4..7], &[0x00, 0xFF, 0xFF]);
    assert_eq!(&bytes[bytes.len() - 2..], &[0x00, 0x00]);
    assert_eq!(Command::parse(&bytes), Ok(cmd));
}
