//! Data-driven APDU transcripts (`tests/transcripts/*.apdu`, format in `transcript.rs`): every
//! command of `docs/COS.md` and its error status words, checked byte for byte; a coverage test
//! proves each (command, status word) pair of the reference is exercised.

use crate::transcript::{check, dir, matches, sw_of, Exchange, Runner, Transcript};
use std::collections::BTreeSet;

macro_rules! transcripts {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(concat!(stringify!($name), ".apdu"));
            }
        )*
        /// Every transcript file.
        const FILES: &[&str] = &[$(concat!(stringify!($name), ".apdu")),*];
    };
}

transcripts!(
    select,
    binary,
    records,
    auth,
    pin,
    keys,
    create,
    lifecycle,
    terminate,
    malformed,
    perso,
    selfdestruct,
    updates,
    erase,
);

/// The command of `docs/COS.md` an APDU is (by CLA, INS and P1).
fn command_name(apdu: &[u8]) -> &'static str {
    let [cla, ins, p1, ..] = apdu else {
        return "malformed";
    };
    match (ins, cla & 0x80 != 0, p1) {
        (0xA4, false, _) => "SELECT",
        (0xB0, false, _) => "READ BINARY",
        (0xD6, false, _) => "UPDATE BINARY",
        (0xB2, false, _) => "READ RECORD",
        (0xDC, false, _) => "UPDATE RECORD",
        (0xE2, false, _) => "APPEND RECORD",
        (0xC0, false, _) => "GET RESPONSE",
        (0x84, false, _) => "GET CHALLENGE",
        (0x82, false, _) => "EXTERNAL AUTHENTICATE",
        (0x88, false, _) => "INTERNAL AUTHENTICATE",
        (0x20, false, _) => "VERIFY",
        (0x5E, true, 0x01) => "CHANGE PIN",
        (0x5E, true, _) => "RELOAD PIN",
        (0x24, true, _) => "PIN UNBLOCK",
        (0xE0, _, _) => "CREATE FILE",
        (0xD4, true, _) => "WRITE KEY",
        (0x0E, true, _) => "ERASE DF",
        (0xCA, _, _) => "GET DATA",
        (0x1E, true, _) => "APPLICATION BLOCK",
        (0x18, true, _) => "APPLICATION UNBLOCK",
        (0x16, true, _) => "CARD BLOCK",
        (0xF0, true, _) => "SET STATUS",
        (0xE6, false, _) => "TERMINATE DF",
        (0xFE, false, _) => "TERMINATE CARD USAGE",
        _ => "other",
    }
}

/// A status word as the reference names it: `61xx`, `63Cx`, `6Cxx` or the four digits.
fn sw_class(response: &[u8]) -> String {
    let sw = sw_of(response);
    match sw.sw1() {
        0x61 => "61xx".into(),
        0x6C => "6Cxx".into(),
        0x63 if sw.sw2() & 0xF0 == 0xC0 => "63Cx".into(),
        _ => format!("{:04X}", sw.0),
    }
}

/// Every (command, status word) pair `docs/COS.md` documents, plus the malformed-APDU answers
/// each command can give.
const REQUIRED: &[(&str, &[&str])] = &[
    (
        "SELECT",
        &[
            "9000", "61xx", "6A82", "6A86", "6700", "6882", "6283", "6285", "9303", "6A81", "6881",
        ],
    ),
    (
        "READ BINARY",
        &[
            "9000", "61xx", "6B00", "6282", "6981", "6982", "6986", "6A82", "6A86", "6700", "6882",
            "6883", "6A81", "6285", "9303",
        ],
    ),
    (
        "UPDATE BINARY",
        &[
            "9000", "6A84", "6B00", "6982", "6984", "6987", "6988", "6700",
        ],
    ),
    (
        "READ RECORD",
        &[
            "9000", "61xx", "6A83", "6Cxx", "6981", "6982", "6986", "6A82", "6A86", "6882",
        ],
    ),
    ("UPDATE RECORD", &["9000", "6981", "6700", "6A83", "6A86"]),
    (
        "APPEND RECORD",
        &["9000", "6A84", "6700", "6982", "6981", "6A86"],
    ),
    (
        "GET RESPONSE",
        &["9000", "61xx", "6985", "6A86", "6700", "6881"],
    ),
    ("GET CHALLENGE", &["9000", "6700", "6A86", "6A81", "9303"]),
    (
        "EXTERNAL AUTHENTICATE",
        &[
            "9000", "6984", "63Cx", "6983", "6A88", "6700", "6A86", "6882", "6A81",
        ],
    ),
    (
        "INTERNAL AUTHENTICATE",
        &["9000", "61xx", "6A88", "6700", "6A86"],
    ),
    (
        "VERIFY",
        &[
            "9000", "63Cx", "6983", "6A88", "6700", "6A86", "6882", "6A81", "6285",
        ],
    ),
    (
        "CHANGE PIN",
        &["9000", "63Cx", "6983", "6A80", "6882", "6A86"],
    ),
    ("RELOAD PIN", &["9000", "6987", "6988", "6A80"]),
    ("PIN UNBLOCK", &["9000", "6982", "6987", "6988", "6A86"]),
    (
        "CREATE FILE",
        &[
            "9000", "6982", "6A89", "6A8A", "6A84", "6A80", "6A85", "6700",
        ],
    ),
    (
        "WRITE KEY",
        &[
            "9000", "6987", "6988", "6982", "6A80", "6700", "6A84", "6A82", "6A86",
        ],
    ),
    ("ERASE DF", &["9000", "6982", "6700", "6A86"]),
    ("GET DATA", &["9000", "61xx", "6A88", "6700", "6881"]),
    (
        "APPLICATION BLOCK",
        &["9000", "6985", "6987", "6988", "6A86", "6700"],
    ),
    ("APPLICATION UNBLOCK", &["9000", "6985", "9303"]),
    ("CARD BLOCK", &["9000", "6987", "6A81"]),
    (
        "SET STATUS",
        &["9000", "6982", "6985", "6A86", "6A81", "6700"],
    ),
    ("TERMINATE DF", &["9000", "6985", "6982", "6700", "6A86"]),
    (
        "TERMINATE CARD USAGE",
        &["9000", "6985", "6982", "6988", "6700", "6A86"],
    ),
    ("other", &["6E00", "6D00"]),
    ("malformed", &["6700"]),
];

fn all_exchanges() -> Vec<Exchange> {
    FILES.iter().flat_map(|f| check(f)).collect()
}

#[test]
fn every_command_and_status_word_is_covered() {
    let exchanges = all_exchanges();
    let seen: BTreeSet<(&str, String)> = exchanges
        .iter()
        .map(|x| (command_name(&x.command), sw_class(&x.response)))
        .collect();
    let mut missing = Vec::new();
    let mut pairs = 0;
    for (command, sws) in REQUIRED {
        for sw in *sws {
            pairs += 1;
            if !seen.contains(&(*command, sw.to_string())) {
                missing.push(format!("{command} {sw}"));
            }
        }
    }
    assert!(missing.is_empty(), "not covered: {missing:?}");
    let commands: BTreeSet<&str> = seen.iter().map(|(c, _)| *c).collect();
    let sws: BTreeSet<&String> = seen.iter().map(|(_, s)| s).collect();
    println!(
        "transcripts: {} files, {} APDUs, {} commands, {} distinct status words, {} required \
         (command, SW) pairs covered, {} seen",
        FILES.len(),
        exchanges.len(),
        commands.len(),
        sws.len(),
        pairs,
        seen.len()
    );
}

#[test]
fn every_transcript_file_has_a_test() {
    let mut on_disk: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".apdu"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = FILES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn patterns_match_bytes_wildcards_and_stars() {
    let t = Transcript::parse("t", "> 00\n< 6F.. * 9000\n").unwrap();
    let p = t.steps[0].expect.as_ref().unwrap();
    assert!(matches(p, &[0x6F, 0x01, 0x90, 0x00]));
    assert!(matches(p, &[0x6F, 0x01, 1, 2, 3, 0x90, 0x00]));
    assert!(!matches(p, &[0x6F, 0x90, 0x00]));
    assert!(!matches(p, &[0x6F, 0x01, 0x90, 0x01]));
    let t = Transcript::parse("t", "> 80E00000 (62(8201 01))\n< 9000\n").unwrap();
    let crate::transcript::Action::Apdu(bytes) = &t.steps[0].action else {
        panic!("an APDU")
    };
    assert_eq!(bytes, &[0x80, 0xE0, 0, 0, 5, 0x62, 3, 0x82, 1, 1]);
}

#[test]
fn malformed_transcripts_are_refused_with_their_line() {
    for (text, line) in [
        ("card personal\n> 00A4\n> 00A4\n< 9000\n", ":2:"),
        ("card personal\n< 9000\n", ":2:"),
        ("> 00\n< 9000\ncard blank\n", ":3:"),
        ("card personal\n!auth 01\n< 9000\n", ":2:"),
        ("card personal\n!mac MF_MASTER 00A4\n< 9000\n", ":2:"),
        ("card personal\n> 00A4 (3F00\n< 9000\n", ":2:"),
        ("card personal\nfrobnicate\n", ":2:"),
        ("card personal\npowercycle\n< 9000\n", ":3:"),
        ("card personal\n!auth 00 NO_SUCH_KEY\n< 9000\n", ":2:"),
        ("card personal\n> 00A4000C023F00\n", ":2:"),
    ] {
        let e = Transcript::parse("bad.apdu", text).unwrap_err();
        assert!(e.contains(&format!("bad.apdu{line}")), "{text:?}: {e}");
    }
}

#[test]
fn a_mismatch_names_the_line_and_both_responses() {
    let t = Transcript::parse(
        "t.apdu",
        "card personal\n> 80CA9F7000\n< 9F7002 0F00 9000\n> 00A4000C023F00\n< 6A82\n",
    )
    .unwrap();
    let mut runner = Runner::new(t.start_eeprom());
    runner.step(&t.steps[0]).unwrap();
    let e = runner.step(&t.steps[1]).unwrap_err();
    assert!(
        e.contains("expected 6A82") && e.contains("got      9000"),
        "{e}"
    );
    assert_eq!(t.steps[1].line, 4);
}
