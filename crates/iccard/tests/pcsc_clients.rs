//! A personalized card served by `iccard card serve` through pcscd and vpcd, used by clients
//! nobody on the team wrote: `pcsc_scan`, `opensc-tool`, `opensc-explorer` (`ls`, `cd`, `cat`
//! through the file system), `scriptor`; and by iccard's own PC/SC side (`reader list`,
//! `apdu --reader` with 61xx and 6Cxx). Every answer is checked against the same card run
//! in-process on a copy of its image.

use crate::pcsc_env::{
    client, iccard, iccard_ok, pcsc, personalized_card, wait_for, Served, CARD_READER,
};
use iccard_apdu::hex;
use iccard_link::{transmit_full, CardChannel, ImageCard};
use std::path::Path;
use std::time::Duration;

const ATR_SPACED: &str = "3B 8A 80 01 80 58 49 43 43 41 52 44 30 31 CC";
const PURSE_AID: &str = "A00000000386980701";

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// The answers of the card in-process (a copy of the image, so the served one is untouched).
fn local_answers(image: &Path, apdus: &[&str], full: bool) -> Vec<Vec<u8>> {
    let copy = image.with_extension("copy");
    std::fs::copy(image, &copy).unwrap();
    let mut card = ImageCard::open(&copy).unwrap();
    let r = apdus
        .iter()
        .map(|a| {
            if full {
                transmit_full(&mut card, &h(a)).unwrap()
            } else {
                card.transmit(&h(a)).unwrap()
            }
        })
        .collect();
    std::fs::remove_file(copy).unwrap();
    r
}

/// The bytes of OpenSC's hex dump lines in `text`: `XX XX ... ascii` (16 columns of three
/// characters, then the ASCII), each line optionally after an 8-digit offset and `: `.
fn dump_bytes(text: &str, with_offset: bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in text.lines() {
        let cols = if with_offset {
            match line.split_once(": ") {
                Some((o, rest)) if o.len() == 8 && o.chars().all(|c| c.is_ascii_hexdigit()) => rest,
                _ => continue,
            }
        } else {
            line
        };
        let hex_part: String = cols.chars().take(48).collect();
        let tokens: Vec<&str> = hex_part.split_whitespace().collect();
        if tokens.is_empty()
            || !tokens
                .iter()
                .all(|t| t.len() == 2 && t.chars().all(|c| c.is_ascii_hexdigit()))
        {
            continue;
        }
        bytes.extend(tokens.iter().map(|t| u8::from_str_radix(t, 16).unwrap()));
    }
    bytes
}

/// The answers in `scriptor`'s output: `< XX XX ... : meaning`, possibly over several lines,
/// and `< OK: ATR` for a reset.
fn scriptor_answers(out: &str) -> Vec<Vec<u8>> {
    let mut answers = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in out.lines() {
        let text = if let Some(rest) = line.strip_prefix("< ") {
            current = Some(Vec::new());
            rest.strip_prefix("OK:").unwrap_or(rest)
        } else if current.is_some() {
            line
        } else {
            continue;
        };
        let (bytes, done) = match text.split_once(':') {
            Some((b, _)) => (b, true),
            None => (text, false),
        };
        let cur = current.as_mut().unwrap();
        for t in bytes.split_whitespace() {
            cur.push(u8::from_str_radix(t, 16).unwrap());
        }
        if done || line.starts_with("< OK:") {
            answers.push(current.take().unwrap());
        }
    }
    answers
}

#[test]
fn clients_nobody_on_the_team_wrote_work_with_the_served_card() {
    let _bench = pcsc();
    let dir = tempfile::tempdir().unwrap();
    let image = personalized_card(dir.path(), "card.img", "8860000000000001");
    let ef15 = {
        let a = local_answers(
            &image,
            &[&format!("00A4040C09{PURSE_AID}"), "00B0950000"],
            false,
        );
        let r = &a[1];
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        r[..r.len() - 2].to_vec()
    };
    assert_eq!(ef15.len(), 30);
    let served = Served::start(&[&image], &[], dir.path().join("serve.log"));

    // pcsc_scan: the reader, the card, its ATR.
    let scan = client("pcsc_scan", &["-c", "-n"]);
    let slot0 = scan
        .split(" Reader ")
        .find(|s| s.contains(CARD_READER))
        .unwrap_or_else(|| panic!("no {CARD_READER} in pcsc_scan:\n{scan}"));
    assert!(slot0.contains("Card inserted"), "{scan}");
    assert!(slot0.contains(&format!("ATR: {ATR_SPACED}")), "{scan}");

    // iccard reader list.
    let list = iccard_ok(&["reader", "list"]);
    assert!(
        list.lines()
            .any(|l| l == format!("{CARD_READER}\tcard {}", ATR_SPACED.replace(' ', ""))),
        "{list}"
    );

    // opensc-tool: ATR and raw APDUs.
    let atr = client("opensc-tool", &["--reader", CARD_READER, "--atr"]);
    assert!(
        atr.contains(&ATR_SPACED.to_lowercase().replace(' ', ":")),
        "{atr}"
    );
    let sent = client(
        "opensc-tool",
        &[
            "--reader",
            CARD_READER,
            "--send-apdu",
            &format!("00A4040C09{PURSE_AID}"),
            "--send-apdu",
            "00B0950000",
            "--send-apdu",
            "0084000008",
        ],
    );
    let dumped = dump_bytes(
        sent.split("Sending: 00 B0 95 00 00")
            .nth(1)
            .and_then(|s| s.split("Sending:").next())
            .unwrap_or_else(|| panic!("{sent}")),
        false,
    );
    assert_eq!(dumped, ef15, "{sent}");
    assert_eq!(
        sent.matches("Received (SW1=0x90, SW2=0x00)").count(),
        3,
        "{sent}"
    );

    // opensc-explorer with OpenSC's tcos driver (its `ls` is LIST DIRECTORY 80 AA): the MF,
    // the purse DF, EF 0015 read by file identifier and by SFI 0x15.
    let script = dir.path().join("explorer.txt");
    std::fs::write(
        &script,
        "ls\ncd 1001\nls\ncat 0015\napdu 00 B0 95 00 00\ninfo 0015\ncd ..\ncd 1002\nls\n",
    )
    .unwrap();
    let out = client(
        "opensc-explorer",
        &[
            "--reader",
            CARD_READER,
            "--card-driver",
            "tcos",
            script.to_str().unwrap(),
        ],
    );
    let listings: Vec<&str> = out.split("FileID\tType  Size").skip(1).collect();
    assert_eq!(listings.len(), 3, "{out}");
    let mf = listings[0];
    for (fid, kind) in [
        ("1001", "DF"),
        ("1002", "DF"),
        ("2F00", "wEF"),
        ("0005", "wEF"),
    ] {
        assert!(
            mf.lines()
                .any(|l| l.contains(fid) && l.split_whitespace().nth(1) == Some(kind)),
            "MF listing lacks {fid} {kind}:\n{out}"
        );
    }
    assert!(
        mf.contains("Name: \\xA0\\x00\\x00\\x00\\x03\\x86\\x98\\x07\\x01"),
        "{out}"
    );
    let purse = listings[1];
    for (fid, size) in [("0015", "30"), ("0016", "40"), ("0018", "230")] {
        assert!(
            purse.lines().any(|l| {
                let t: Vec<&str> = l.split_whitespace().collect();
                t.len() >= 3 && t[0] == fid && t[1] == "wEF" && t[2] == size
            }),
            "purse DF listing lacks {fid} ({size} bytes):\n{out}"
        );
    }
    assert_eq!(dump_bytes(purse, true), ef15, "cat 0015:\n{out}");
    let by_sfi = out
        .split("Sending: 00 B0 95 00 00")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(by_sfi.contains("Received (SW1=0x90, SW2=0x00)"), "{out}");
    assert!(
        by_sfi.contains(&hex_spaced(&ef15[..16])),
        "SFI 0x15 read:\n{out}"
    );
    let info = out
        .split("File path:")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(info.trim_start().starts_with("3F00/1001/0015"), "{out}");
    assert!(info.contains("30 bytes"), "{out}");
    assert!(out.contains("Transparent"), "{out}");
    let access = listings[2];
    for fid in ["0001", "0002", "0003"] {
        assert!(
            access.contains(fid),
            "access DF listing lacks {fid}:\n{out}"
        );
    }

    // opensc-explorer with its default driver: cd and cat (SELECT with FCI, READ BINARY).
    std::fs::write(&script, "cd 1001\ncat 0015\n").unwrap();
    let out = client(
        "opensc-explorer",
        &["--reader", CARD_READER, script.to_str().unwrap()],
    );
    let dump = dump_bytes(&out, true);
    assert_eq!(dump, ef15, "{out}");

    // scriptor: a script with its expected answers (from the card in-process).
    let apdus = [
        format!("00A4040009{PURSE_AID}"),
        "00C0000000".to_string(),
        "00B0950000".to_string(),
        "00B095001E".to_string(),
        "00B0950040".to_string(),
        "00B0960004".to_string(),
        "0020000003123499".to_string(),
        "0020000000".to_string(),
        "00A4000C023F00".to_string(),
        "00B2010C01".to_string(),
        "00B2010C14".to_string(),
        "00B2050C14".to_string(),
    ];
    let mut expected = vec![iccard_cos::ATR.to_vec()];
    let apdu_refs: Vec<&str> = apdus.iter().map(String::as_str).collect();
    // The served card was reset by `reset`; the in-process copy starts from power-up too.
    expected.extend(local_answers(&image, &apdu_refs, false));
    let script_text = std::iter::once("reset".to_string())
        .chain(apdus.iter().map(|a| spaced(a)))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let script = dir.path().join("script.txt");
    std::fs::write(&script, script_text).unwrap();
    let out = client("scriptor", &["-r", CARD_READER, script.to_str().unwrap()]);
    let got = scriptor_answers(&out);
    assert_eq!(got, expected, "scriptor output:\n{out}");
    // Fixed facts in there: the FCI follows 61xx, EF 0015 is the one read above, a short
    // read ends with 6282, Le too short gets 6C14, the wrong PIN counts down.
    assert_eq!(got[1][0], 0x61, "{out}");
    assert_eq!(&got[3][..30], &ef15[..]);
    assert_eq!(&got[5][got[5].len() - 2..], &[0x62, 0x82]);
    assert_eq!(got[7], vec![0x63, 0xC2]);
    assert_eq!(got[8], vec![0x63, 0xC2]);
    assert_eq!(got[10], vec![0x6C, 0x14]);
    assert_eq!(got[11].len(), 22);
    assert_eq!(got[12], vec![0x6A, 0x83]);

    // iccard apdu --reader: 61xx and 6Cxx followed up, or shown raw.
    let out = iccard_ok(&[
        "apdu",
        "--reader",
        "PCD 00 00",
        &format!("00A4040009{PURSE_AID}"),
        "00A4000C023F00",
        "00B2010C01",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    let want = local_answers(
        &image,
        &[
            &format!("00A4040009{PURSE_AID}"),
            "00A4000C023F00",
            "00B2010C01",
        ],
        true,
    );
    assert_eq!(lines.len(), 3, "{out}");
    for (l, w) in lines.iter().zip(&want) {
        assert_eq!(h(l), *w, "{out}");
    }
    assert!(
        lines[0].starts_with("6F") && lines[0].ends_with("9000"),
        "{out}"
    );
    assert_eq!(h(lines[2]).len(), 22, "{out}");
    let raw = iccard_ok(&[
        "apdu",
        "--reader",
        CARD_READER,
        "--raw",
        &format!("00A4040009{PURSE_AID}"),
        "00A4000C023F00",
        "00B2010C01",
    ]);
    let raw: Vec<&str> = raw.lines().collect();
    assert!(raw[0].starts_with("61"), "{raw:?}");
    assert_eq!(raw[2], "6C14");

    // An unknown reader is an error that names the readers there are.
    let bad = iccard(&["apdu", "--reader", "no such reader", "00A4000C023F00"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("no such reader") && err.contains(CARD_READER),
        "{err}"
    );

    // All of it went through the served card.
    let log = served.log_text();
    for seen in [
        "> 80AA010000 < 10",
        "> 00B0950000 < 8860",
        "> 00B2010C01 < 6C14",
    ] {
        assert!(log.contains(seen), "{seen:?} not in the serve log:\n{log}");
    }
    drop(served);
    let scan = client("pcsc_scan", &["-c", "-n"]);
    let slot0 = scan
        .split(" Reader ")
        .find(|s| s.contains(CARD_READER))
        .unwrap();
    assert!(slot0.contains("Card removed"), "{scan}");
    assert!(wait_for(CARD_READER, false, Duration::from_secs(1)).is_some());
}

fn spaced(hex_str: &str) -> String {
    hex_spaced(&h(hex_str))
}

fn hex_spaced(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}
