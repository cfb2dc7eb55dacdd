//! `iccard card new | apdu | info` end to end on image files: manufacture and its refusals,
//! APDUs from arguments and from standard input (answered line by line, `reset`, a bad line
//! answered `ERROR` and exit code 2), changes saved in the image, `card info` for people and
//! `--json` for programs, and damaged images refused with a clear message.

use iccard_apdu::hex;
use iccard_crypto::{ecb_encrypt, Cipher};
use iccard_issuer::devkeys;
use iccard_issuer::manufacture::transport_key;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SERIAL: &str = "0102030405060708";

fn iccard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iccard"))
        .args(args)
        .output()
        .expect("the iccard binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = iccard(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs a command that must fail with exit code 2 (iccard's own message, or clap's for an
/// option it cannot parse); returns (stdout, stderr).
fn usage_error(args: &[&str]) -> (String, String) {
    let out = iccard(args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} should exit 2: stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("iccard: ") || stderr.starts_with("error: "),
        "{stderr}"
    );
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A blank card with the test chip serial in a fresh directory.
fn new_card(dir: &Path) -> PathBuf {
    let img = dir.join("card.img");
    let out = ok(&["card", "new", "--out", path(&img), "--chip-serial", SERIAL]);
    assert_eq!(
        out,
        format!(
            "made blank card {} (chip serial {SERIAL}, 32 KiB, OP_READY)\n",
            img.display()
        )
    );
    img
}

fn apdu(img: &Path, apdus: &[&str]) -> Vec<String> {
    let mut args = vec!["card", "apdu", "--image", path(img)];
    args.extend(apdus);
    ok(&args).lines().map(str::to_string).collect()
}

#[test]
fn card_new_makes_an_image_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_card(dir.path());
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(bytes.len(), iccard_cos::nvm::image_len(32 * 1024));
    // Not again without --force; the image is untouched.
    let (stdout, stderr) = usage_error(&["card", "new", "--out", path(&img)]);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&img).unwrap(), bytes);
    // With --force: a new card (another serial, 8 KiB).
    ok(&[
        "card",
        "new",
        "--out",
        path(&img),
        "--force",
        "--nvm-kib",
        "8",
        "--chip-serial",
        "1111111111111111",
    ]);
    assert_eq!(
        std::fs::read(&img).unwrap().len(),
        iccard_cos::nvm::image_len(8 * 1024)
    );
    let chip = apdu(&img, &["80CA9F7F00"]);
    assert!(
        chip[0].starts_with("9F7F1249431111111111111111"),
        "{chip:?}"
    );
    // A random serial when none is given.
    let other = dir.path().join("random.img");
    let out = ok(&["card", "new", "--out", path(&other)]);
    assert!(
        out.contains("chip serial ") && !out.contains(SERIAL),
        "{out}"
    );
}

#[test]
fn card_new_refuses_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("card.img");
    for kib in ["4", "7", "129", "1024"] {
        let (_, stderr) = usage_error(&["card", "new", "--out", path(&img), "--nvm-kib", kib]);
        assert!(
            stderr.contains("--nvm-kib must be between 8 and 128"),
            "{kib}: {stderr}"
        );
    }
    let (_, stderr) = usage_error(&["card", "new", "--out", path(&img), "--nvm-kib", "lots"]);
    assert!(stderr.contains("--nvm-kib"), "{stderr}");
    let (_, stderr) = usage_error(&[
        "card",
        "new",
        "--out",
        path(&img),
        "--chip-serial",
        "01020304050607",
    ]);
    assert!(stderr.contains("--chip-serial must be 8 bytes"), "{stderr}");
    let (_, stderr) = usage_error(&[
        "card",
        "new",
        "--out",
        path(&img),
        "--chip-serial",
        "zz02030405060708",
    ]);
    assert!(stderr.contains("not valid hex"), "{stderr}");
    assert!(!img.exists(), "nothing was written");
}

#[test]
fn card_apdu_answers_arguments_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_card(dir.path());
    let lines = apdu(
        &img,
        &[
            "80CA9F7F00",
            "00 a4 00 0c 02 3f 00",
            "80CA9F7000",
            "00B0000001",
        ],
    );
    assert_eq!(lines.len(), 4);
    // Chip data: maker 4943, the serial, today's date, batch 0001, OS 0100.
    assert!(
        lines[0].starts_with(&format!("9F7F124943{SERIAL}")),
        "{lines:?}"
    );
    assert!(lines[0].ends_with("000101009000") && lines[0].len() == 2 * 23);
    assert_eq!(lines[1], "9000");
    assert_eq!(lines[2], "9F7002010090 00".replace(' ', ""));
    assert_eq!(lines[3], "6986");
    // A bad argument: exit 2, nothing sent (all arguments are parsed first).
    let (stdout, stderr) = usage_error(&["card", "apdu", "--image", path(&img), "00A4", "0G"]);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("APDU #2") && stderr.contains("not valid hex"),
        "{stderr}"
    );
}

#[test]
fn card_apdu_reads_standard_input_and_keeps_what_the_card_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_card(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_iccard"))
        .args(["card", "apdu", "--image", path(&img)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "# comments and blank lines are skipped\n").unwrap();
    // Each line is answered at once: the challenge is read before the cryptogram is written.
    let mut exchange = |line: &str| -> String {
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut answer = String::new();
        stdout.read_line(&mut answer).unwrap();
        answer.trim_end().to_string()
    };
    let challenge = exchange("0084000004");
    assert!(
        challenge.len() == 12 && challenge.ends_with("9000"),
        "{challenge}"
    );
    let serial: [u8; 8] = hex::decode(SERIAL).unwrap().try_into().unwrap();
    let key = transport_key(&devkeys::TRANSPORT.value(), &serial);
    let mut block = [0u8; 8];
    block[..4].copy_from_slice(&hex::decode(&challenge[..8]).unwrap());
    let cryptogram = ecb_encrypt(Cipher::TripleDes, &key[..], &block).unwrap();
    assert_eq!(
        exchange(&format!("0082000008{}", hex::encode(&cryptogram))),
        "9000"
    );
    // The transport key's state allows CREATE FILE at the MF: a 16-byte EF 0101.
    assert_eq!(
        exchange("80E0000017 6215 820101 83020101 80020010 880108 8605F0F0F0F000"),
        "9000"
    );
    assert_eq!(exchange("00D6810003 0A0B0C"), "9000");
    // A reset answers the ATR and clears the security state.
    assert_eq!(exchange("reset"), "3B8A800180584943434152443031CC");
    assert_eq!(
        exchange("80E0000017 6215 820101 83020102 80020010 880110 8605F0F0F0F000"),
        "6982"
    );
    // A bad line: one ERROR line, and the next line still works.
    let error = exchange("00A4 zz");
    assert!(error.starts_with("ERROR line "), "{error}");
    assert!(error.contains("not valid hex"), "{error}");
    assert_eq!(exchange("00A4000C023F00"), "9000");
    drop(stdin);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "a bad line makes the exit code 2");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("1 input line(s) were not valid APDUs"),
        "{stderr}"
    );
    // The file written through the first process is in the image for the next one.
    assert_eq!(apdu(&img, &["00B0810003"]), ["0A0B0C9000"]);
}

#[test]
fn card_info_for_people_and_for_programs() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_card(dir.path());
    let text = ok(&["card", "info", "--image", path(&img)]);
    assert!(text.contains("life cycle     OP_READY"), "{text}");
    assert!(text.contains(&format!("serial {SERIAL}")), "{text}");
    assert!(text.contains("3F00"), "{text}");
    assert!(text.contains("self-destruct at 64"), "{text}");
    let info: Value = serde_json::from_str(&ok(&["card", "info", "--image", path(&img), "--json"]))
        .expect("JSON on stdout");
    assert_eq!(info["life_cycle"], "OP_READY");
    assert_eq!(info["chip_serial"], SERIAL);
    assert_eq!(info["chip_maker"], "4943");
    assert_eq!(info["attack_counter"], 0);
    assert_eq!(info["attack_threshold"], 64);
    assert_eq!(info["nvm"]["size"], 32 * 1024);
    let files = info["files"].as_array().unwrap();
    assert_eq!(files[0]["path"], "3F00");
    assert_eq!(files[0]["kind"], "DF");
    let key_file = files.iter().find(|f| f["kind"] == "key-file").unwrap();
    let keys = key_file["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "the transport key");
    assert_eq!(keys[0]["key_type"], "Master");
    // Key references only: no key value anywhere in the report.
    let serial: [u8; 8] = hex::decode(SERIAL).unwrap().try_into().unwrap();
    let key = hex::encode(&transport_key(&devkeys::TRANSPORT.value(), &serial)[..]);
    for out in [&text, &info.to_string()] {
        assert!(
            !out.to_uppercase().contains(&key),
            "the transport key leaked"
        );
    }
    // A failed authentication shows in the counter.
    apdu(&img, &["0084000004", "00820000080000000000000000"]);
    let info: Value =
        serde_json::from_str(&ok(&["card", "info", "--image", path(&img), "--json"])).unwrap();
    assert_eq!(info["attack_counter"], 1);
}

#[test]
fn damaged_or_missing_images_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let img = new_card(dir.path());
    let bytes = std::fs::read(&img).unwrap();
    let truncated = dir.path().join("truncated.img");
    std::fs::write(&truncated, &bytes[..1000]).unwrap();
    for args in [
        vec!["card", "info", "--image", path(&truncated)],
        vec!["card", "info", "--image", path(&truncated), "--json"],
        vec![
            "card",
            "apdu",
            "--image",
            path(&truncated),
            "00A4000C023F00",
        ],
    ] {
        let (stdout, stderr) = usage_error(&args);
        assert!(stdout.is_empty(), "{args:?}");
        assert!(
            stderr.contains(path(&truncated)) && stderr.contains("truncated"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("was not changed"), "{stderr}");
    }
    // Never "repaired": the bytes are as they were.
    assert_eq!(std::fs::read(&truncated).unwrap(), &bytes[..1000]);
    // One flipped byte fails the checksum.
    let mut flipped = bytes.clone();
    flipped[5000] ^= 0x01;
    let corrupt = dir.path().join("corrupt.img");
    std::fs::write(&corrupt, &flipped).unwrap();
    let (_, stderr) = usage_error(&["card", "info", "--image", path(&corrupt)]);
    assert!(stderr.contains(path(&corrupt)), "{stderr}");
    // A file that is not there.
    let missing = dir.path().join("missing.img");
    let (_, stderr) = usage_error(&["card", "apdu", "--image", path(&missing), "00A4000C023F00"]);
    assert!(stderr.contains(path(&missing)), "{stderr}");
}
