//! Property test: random and semi-valid APDU sequences on the personalized reference card
//! never panic, always answer a status word, never leave the NVM half-written, and the card
//! powers up afterwards with a consistent file system. The checks are those of
//! `iccard_cos::fuzzing::fuzz_one`, which the cargo-fuzz target (`fuzz/`) runs too; this test
//! builds its byte streams from structured operations so that they reach deep states.

use iccard_apdu::Command as Apdu;
use iccard_cos::fuzzing::fuzz_one;
use proptest::prelude::*;

/// One operation of a `fuzz_one` stream.
#[derive(Debug, Clone)]
enum Op {
    Reset,
    PowerCycle,
    /// Authenticate with reference key k.
    Auth(u8),
    /// An APDU under secure messaging with reference MAC key k.
    Mac(u8, Vec<u8>),
    /// A plain APDU.
    Apdu(Vec<u8>),
}

fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Reset => out.push(0),
            Op::PowerCycle => out.push(1),
            Op::Auth(k) => out.extend([2, *k]),
            Op::Mac(k, apdu) => {
                let apdu = &apdu[..apdu.len().min(255)];
                out.extend([3, *k, apdu.len() as u8]);
                out.extend_from_slice(apdu);
            }
            Op::Apdu(apdu) if apdu.len() <= 250 => {
                out.push(apdu.len() as u8 + 5);
                out.extend_from_slice(apdu);
            }
            Op::Apdu(apdu) => {
                out.push(4);
                out.extend_from_slice(&(apdu.len() as u16).to_be_bytes());
                out.extend_from_slice(apdu);
            }
        }
    }
    out
}

/// Instructions the card knows (and a few it does not).
const INS: &[u8] = &[
    0xA4, 0xB0, 0xD6, 0xB2, 0xDC, 0xE2, 0xC0, 0x84, 0x82, 0x88, 0x20, 0x5E, 0x24, 0xE0, 0xD4, 0x0E,
    0xCA, 0x1E, 0x18, 0x16, 0xF0, 0xE6, 0xFE, 0xAA, 0x50, 0x52, 0x54, 0x5C, 0x00, 0xFF,
];
const CLA: &[u8] = &[
    0x00, 0x00, 0x80, 0x80, 0x04, 0x84, 0x10, 0x0C, 0x01, 0x81, 0xA0,
];
const P: &[u8] = &[
    0x00, 0x01, 0x02, 0x03, 0x04, 0x08, 0x09, 0x0C, 0x14, 0x1C, 0x24, 0x40, 0x80, 0x81, 0x82, 0x83,
    0x85, 0x86, 0x9F, 0x7F, 0x70, 0xFF,
];

/// Commands that move the card into its interesting states.
fn known() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        "00A4040C07F0544553543031",
        "00A4040C07F0544553543032",
        "00A4000C023F00",
        "0020000003123456",
        "0020000003999999",
        "00E2002008AAAAAAAAAAAAAAAA",
        "00E2001810BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
        "00D6810004CAFEBABE",
        "80E0000014621282010183020009800200408605F0F0F0F000",
        "80E000001B6219820138830210038407F05445535430338605F0F0F0F000",
        "800E0000",
        "80F0807F",
        "80F0800F",
        "80F04083",
        "00E60000",
        "00FE0000",
        "80CA9F7000",
    ])
    .prop_map(|h| iccard_apdu::hex::decode(h).unwrap())
}

/// A header from the known classes and instructions with random parameters, data and Le.
fn semi_valid() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(CLA),
        prop::sample::select(INS),
        prop_oneof![prop::sample::select(P), any::<u8>()],
        prop_oneof![prop::sample::select(P), any::<u8>()],
        prop_oneof![
            Just(Vec::new()),
            prop::collection::vec(any::<u8>(), 1..40),
            prop::collection::vec(any::<u8>(), 240..300),
        ],
        prop::option::of(prop_oneof![Just(256usize), 1usize..=300]),
    )
        .prop_map(|(cla, ins, p1, p2, data, ne)| {
            let mut apdu = Apdu::new(cla, ins, p1, p2).with_data(data);
            apdu.ne = ne;
            apdu.to_bytes()
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Reset),
        1 => Just(Op::PowerCycle),
        2 => any::<u8>().prop_map(Op::Auth),
        3 => (any::<u8>(), prop_oneof![semi_valid(), known()]).prop_map(|(k, a)| Op::Mac(k, a)),
        6 => known().prop_map(Op::Apdu),
        8 => semi_valid().prop_map(Op::Apdu),
        2 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Op::Apdu),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn random_apdu_sequences_keep_the_card_sound(ops in prop::collection::vec(op(), 1..48)) {
        fuzz_one(&encode(&ops));
    }

    #[test]
    fn random_byte_streams_keep_the_card_sound(
        bytes in prop::collection::vec(any::<u8>(), 0..600)
    ) {
        fuzz_one(&bytes);
    }
}

#[test]
fn the_stream_encoding_reaches_the_card() {
    // A sanity check of the encoding: these streams run to the end without tripping an
    // invariant, and a long APDU and a truncated stream are handled.
    fuzz_one(&encode(&[
        Op::Apdu(iccard_apdu::hex::decode("00A4040C07F0544553543031").unwrap()),
        Op::Auth(2),
        Op::Mac(3, iccard_apdu::hex::decode("00D6820002AABB").unwrap()),
        Op::Apdu(
            vec![0x00, 0xD6, 0x85, 0x00, 0x00, 0x01, 0x2C]
                .into_iter()
                .chain([7; 300])
                .collect(),
        ),
        Op::PowerCycle,
        Op::Reset,
    ]));
    fuzz_one(&[0xFF, 0x00]);
    fuzz_one(&[4, 0xFF]);
    fuzz_one(&[3]);
}
