//! `iccard terminal` on the virtual readers: the user card served on vpcd slot 0, the PSAM on
//! slot 1 (each by its own `iccard card serve` process), a load and a purchase through pcscd,
//! and a purchase whose card process is killed in the middle of DEBIT FOR PURCHASE (after the
//! card committed it, and before the card saw it), restarted on the same image, and finished
//! by the terminal's recovery exactly once.

use crate::pcsc_env::{
    iccard_in, iccard_ok, pcsc, personalized_card, Served, CARD_READER, SAM_READER,
};
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TID: &str = "112233445566";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn psam(dir: &Path) -> PathBuf {
    let path = dir.join("psam.img");
    let out = iccard_ok(&[
        "card",
        "new",
        "--profile",
        "psam",
        "--terminal-id",
        TID,
        "--dev-keys",
        "--out",
        s(&path),
    ]);
    assert!(out.contains("PSAM"), "{out}");
    path
}

/// Runs a terminal command in `dir` (where the reader's pending file lives); returns the exit
/// code and the JSON it printed.
fn terminal(dir: &Path, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["terminal"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = iccard_in(dir, &all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v,
        format!("{stdout}{stderr}"),
    )
}

fn ok(dir: &Path, args: &[&str]) -> Value {
    let (code, v, text) = terminal(dir, args);
    assert_eq!(code, 0, "terminal {args:?}: {text}");
    v
}

fn load_args(amount: &str) -> Vec<String> {
    [
        "load",
        "--reader",
        CARD_READER,
        "--amount",
        amount,
        "--terminal-id",
        "010203040506",
        "--dev-keys",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn purchase_args(amount: &str) -> Vec<String> {
    [
        "purchase",
        "--reader",
        CARD_READER,
        "--sam-reader",
        SAM_READER,
        "--amount",
        amount,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn balance_on_reader(dir: &Path) -> u64 {
    ok(dir, &["balance", "--reader", CARD_READER])["balance_fen"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_load_and_a_purchase_through_pcscd_and_vpcd() {
    let _bench = pcsc();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let card = personalized_card(d, "card.img", "8860000000000010");
    let sam = psam(d);
    let card_served = Served::start_at(0, &[&card], &[], d.join("card.log"));
    let sam_served = Served::start_at(1, &[&sam], &[], d.join("sam.log"));

    let l = ok(d, &refs(&load_args("10000")));
    assert_eq!(l["balance_before_fen"], 0, "{l}");
    assert_eq!(l["balance_after_fen"], 10_000, "{l}");
    assert_eq!(l["tac_verified"], true, "{l}");
    let p = ok(d, &refs(&purchase_args("2500")));
    assert_eq!(p["balance_after_fen"], 7_500, "{p}");
    assert_eq!(p["mac2_verified"], true, "{p}");
    assert!(p["recovery"].is_null(), "{p}");
    assert_eq!(balance_on_reader(d), 7_500);
    let log = ok(d, &["log", "--reader", CARD_READER]);
    let records = log.as_array().expect("log records");
    assert_eq!(records.len(), 2, "{log}");
    // The card served the commands: the PSAM's log shows its MAC1 command, the card's the
    // DEBIT FOR PURCHASE.
    assert!(
        card_served.log_text().contains("> 80540100"),
        "{}",
        card_served.log_text()
    );
    assert!(
        sam_served.log_text().contains("> 8070"),
        "{}",
        sam_served.log_text()
    );
    drop(card_served);
    drop(sam_served);
    // What the card answered is what its image holds.
    let b = ok(d, &["balance", "--card", s(&card)]);
    assert_eq!(b["balance_fen"], 7_500);
    // No pending record is left behind.
    assert_eq!(pending_files(d), Vec::<PathBuf>::new());
}

fn pending_files(d: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".pending.json"))
        .collect()
}

#[test]
fn a_purchase_whose_card_process_is_killed_completes_exactly_once() {
    let _bench = pcsc();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let card = personalized_card(d, "card.img", "8860000000000011");
    let sam = psam(d);
    // Money on the card first, through the image.
    let out = iccard_in(
        d,
        &[
            "terminal",
            "load",
            "--card",
            s(&card),
            "--amount",
            "5000",
            "--terminal-id",
            "010203040506",
            "--dev-keys",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sam_served = Served::start_at(1, &[&sam], &[], d.join("sam.log"));

    let mut expected = 5_000u64;
    for (hook, amount, recovery) in [
        ("--kill-after", 1_200u64, "completed_earlier"),
        ("--kill-before", 300, "repeated"),
    ] {
        let log = d.join(format!("card{hook}.log"));
        let mut card_served = Served::start_at(0, &[&card], &[hook, "80540100"], log);
        let args = purchase_args(&amount.to_string());
        let (code, v, text) = terminal(d, &refs(&args));
        assert_eq!(code, 1, "the interrupted purchase must fail: {text}");
        assert_eq!(v["pending"], true, "{text}");
        let status = card_served
            .wait_exit(Duration::from_secs(10))
            .expect("the card process killed itself");
        assert_eq!(status.signal(), Some(9), "{status:?}");
        assert_eq!(
            pending_files(d).len(),
            1,
            "the terminal kept its pending record"
        );

        // The card comes back on the same image; the same command finishes the purchase.
        let card_served = Served::start_at(0, &[&card], &[], d.join(format!("card{hook}-2.log")));
        let (code, v, text) = terminal(d, &refs(&args));
        assert_eq!(code, 0, "{text}");
        assert_eq!(v["recovery"], recovery, "{text}");
        expected -= amount;
        assert_eq!(v["balance_after_fen"], expected, "{text}");
        assert_eq!(balance_on_reader(d), expected, "charged exactly once");
        assert!(pending_files(d).is_empty());
        drop(card_served);
    }
    // The card's own log: the load and exactly one record per purchase.
    let card_served = Served::start_at(0, &[&card], &[], d.join("card-final.log"));
    let log = ok(d, &["log", "--reader", CARD_READER]);
    let amounts: Vec<u64> = log
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["amount_fen"].as_u64().unwrap())
        .collect();
    assert_eq!(amounts, vec![300, 1_200, 5_000], "{log}");
    drop(card_served);
    drop(sam_served);
}
