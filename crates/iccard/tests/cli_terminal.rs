//! `iccard card new --profile psam` and `iccard terminal load|purchase|balance|log` end to end
//! on image files: `--json` parsed with serde_json, human output, exit codes (1: the operation
//! failed; 2: input errors), and a transaction interrupted between the money-moving command and
//! its answer finished exactly once by running the same command again.

use iccard_link::{CardChannel, ImageCard, LinkError};
use iccard_terminal::{
    MasterKeyHost, PendingFile, Psam, Purchase, PurseCard, Recharge, TerminalError, TransactionTime,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TID: &str = "112233445566";

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

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).expect("valid JSON on stdout")
}

/// Runs a command that must exit with `code`; returns (stdout, stderr).
fn fails(args: &[&str], code: i32) -> (String, String) {
    let out = iccard(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn user_card(dir: &Path, name: &str, number: &str, alg: &str) -> PathBuf {
    let path = dir.join(name);
    ok(&["card", "new", "--out", s(&path)]);
    ok(&[
        "card",
        "personalize",
        "--image",
        s(&path),
        "--dev-keys",
        "--card-number",
        number,
        "--pin",
        "123456",
        "--alg",
        alg,
    ]);
    path
}

fn psam(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = ok(&[
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
    assert!(out.contains("made PSAM"), "{out}");
    path
}

fn load(card: &Path, amount: &str) -> Value {
    json(&[
        "terminal",
        "load",
        "--card",
        s(card),
        "--amount",
        amount,
        "--terminal-id",
        TID,
        "--dev-keys",
        "--json",
    ])
}

fn pay(card: &Path, sam: &Path, amount: &str) -> Value {
    json(&[
        "terminal",
        "purchase",
        "--card",
        s(card),
        "--sam",
        s(sam),
        "--amount",
        amount,
        "--json",
    ])
}

fn balance(card: &Path) -> u64 {
    let b = json(&["terminal", "balance", "--card", s(card), "--json"]);
    b["balance_fen"].as_u64().expect("balance_fen")
}

#[test]
fn card_new_profile_psam_makes_a_secured_psam() {
    let dir = tempfile::tempdir().unwrap();
    let path = psam(dir.path(), "psam.img");
    let info = json(&["card", "info", "--image", s(&path), "--json"]);
    assert_eq!(info["life_cycle"], "SECURED", "{info}");
    let files = info["files"].as_array().unwrap();
    let adf = files
        .iter()
        .find(|f| f["application"] == "psam")
        .expect("a PSAM application");
    assert_eq!(adf["name"], "A00000000386980702");
    let keys: Vec<&Value> = files
        .iter()
        .flat_map(|f| f["keys"].as_array().unwrap())
        .collect();
    assert!(
        keys.len() >= 3,
        "master and two purchase master keys: {keys:?}"
    );
    assert!(files.iter().any(|f| f["sfi"] == 0x16), "terminal id file");
    // The PSAM answers for its terminal id.
    let p = Psam::open(ImageCard::open(&path).unwrap()).unwrap();
    assert_eq!(iccard_apdu::hex::encode(&p.terminal_id()), TID);

    // Input errors: exit 2, and no card left behind.
    for (args, needle) in [
        (vec!["--terminal-id", TID], "--dev-keys"),
        (vec!["--dev-keys"], "--terminal-id"),
        (vec!["--dev-keys", "--terminal-id", "1122"], "6 bytes"),
    ] {
        let out = dir.path().join("bad.img");
        let mut all = vec!["card", "new", "--profile", "psam", "--out", s(&out)];
        all.extend(args);
        let (_, err) = fails(&all, 2);
        assert!(err.contains(needle), "{err}");
        assert!(!out.exists(), "no half-made PSAM left");
    }
}

#[test]
fn load_purchase_balance_and_log_in_both_generations() {
    let dir = tempfile::tempdir().unwrap();
    let sam = psam(dir.path(), "psam.img");
    for (alg, number) in [("3des", "6228480012345678"), ("sm4", "6228480087654321")] {
        let card = user_card(dir.path(), &format!("{alg}.img"), number, alg);
        assert_eq!(balance(&card), 0);
        let l = load(&card, "10000");
        assert_eq!(l["card_number"], number);
        assert_eq!(l["balance_after_fen"], 10_000);
        assert_eq!(l["tac_verified"], true, "{l}");
        assert_eq!(l["terminal_id"], TID);
        assert_eq!(l["alg"], if alg == "sm4" { "SM4" } else { "3DES" });
        assert!(l["suspicious"].is_null());
        let p = pay(&card, &sam, "1250");
        assert_eq!(p["balance_before_fen"], 10_000);
        assert_eq!(p["balance_after_fen"], 8_750);
        assert_eq!(p["mac2_verified"], true, "{p}");
        assert_eq!(p["offline_serial"], 0);
        assert_eq!(p["tac"].as_str().unwrap().len(), 8);
        assert_eq!(balance(&card), 8_750);
        let log = json(&["terminal", "log", "--card", s(&card), "--json"]);
        let log = log.as_array().unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0]["kind"], "purchase");
        assert_eq!(log[0]["amount_fen"], 1_250);
        assert_eq!(log[0]["terminal_id"], TID);
        assert_eq!(log[1]["kind"], "load");
        assert_eq!(log[1]["amount_fen"], 10_000);
        assert!(!PendingFile::beside(&card).path().exists());
    }
    // The PSAM's terminal serial counted both purchases.
    let card = dir.path().join("3des.img");
    assert_eq!(pay(&card, &sam, "1")["terminal_serial"], 3);
}

#[test]
fn human_output_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let sam = psam(dir.path(), "psam.img");
    let card = user_card(dir.path(), "card.img", "1234567890123456", "3des");
    let c = s(&card);
    let mut seen = String::new();
    let out = ok(&[
        "terminal",
        "load",
        "--card",
        c,
        "--amount",
        "2050",
        "--terminal-id",
        TID,
        "--dev-keys",
    ]);
    assert!(
        out.contains("loaded 20.50 yuan (2050 fen) onto card 1234567890123456"),
        "{out}"
    );
    assert!(out.contains("verified"), "{out}");
    seen += &out;
    let out = ok(&[
        "terminal",
        "purchase",
        "--card",
        c,
        "--sam",
        s(&sam),
        "--amount",
        "50",
    ]);
    assert!(out.contains("paid 0.50 yuan"), "{out}");
    assert!(out.contains("verified by the PSAM"), "{out}");
    seen += &out;
    let out = ok(&["terminal", "balance", "--card", c]);
    assert!(out.contains("balance 20.00 yuan (2000 fen)"), "{out}");
    let out = ok(&["terminal", "log", "--card", c]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().next().unwrap().contains("purchase"), "{out}");
    seen += &out;

    // The card refuses: exit 1 with the status word and its meaning; as JSON too.
    let (_, err) = fails(
        &[
            "terminal",
            "purchase",
            "--card",
            c,
            "--sam",
            s(&sam),
            "--amount",
            "999999",
        ],
        1,
    );
    assert!(err.contains("9401 (insufficient balance)"), "{err}");
    seen += &err;
    let (stdout, _) = fails(
        &[
            "terminal",
            "purchase",
            "--card",
            c,
            "--sam",
            s(&sam),
            "--amount",
            "999999",
            "--json",
        ],
        1,
    );
    let e: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(e["status"], "9401");
    assert_eq!(e["meaning"], "insufficient balance");
    assert_eq!(e["pending"], false);
    assert_eq!(balance(&card), 2_000);

    // Input errors: exit 2.
    for (args, needle) in [
        (
            vec!["load", "--card", c, "--amount", "1", "--terminal-id", TID],
            "--dev-keys",
        ),
        (
            vec![
                "load",
                "--card",
                c,
                "--amount",
                "1",
                "--terminal-id",
                "12",
                "--dev-keys",
            ],
            "6 bytes",
        ),
        (
            vec!["purchase", "--card", c, "--sam", s(&sam), "--amount", "0"],
            "at least 1 fen",
        ),
        (
            vec![
                "purchase",
                "--card",
                c,
                "--sam",
                s(&sam),
                "--amount",
                "1",
                "--date",
                "20261399",
            ],
            "date",
        ),
        (
            vec!["balance", "--card", "/nonexistent/card.img"],
            "cannot open",
        ),
    ] {
        let mut all = vec!["terminal"];
        all.extend(args);
        let (_, err) = fails(&all, 2);
        assert!(err.contains(needle), "{all:?}: {err}");
        seen += &err;
    }
    // No key of the development set ever appears in what the terminal prints.
    for k in iccard_issuer::devkeys::ALL {
        let hex = iccard_apdu::hex::encode(&k.value()[..]);
        assert!(!seen.contains(&hex), "{} printed", k.name);
    }
}

/// A channel whose first command with this INS is lost, before or after the card ran it.
struct Crash {
    inner: ImageCard,
    ins: u8,
    executed: bool,
}

impl CardChannel for Crash {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        if apdu.len() > 1 && apdu[0] == 0x80 && apdu[1] == self.ins {
            self.ins = 0; // once
            if self.executed {
                self.inner.transmit(apdu)?;
            }
            return Err(LinkError::PowerLost);
        }
        self.inner.transmit(apdu)
    }
    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        self.inner.reset()
    }
}

fn now() -> TransactionTime {
    TransactionTime::from_unix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
}

/// A terminal process that dies right after sending DEBIT FOR PURCHASE (the card ran it if
/// `executed`), leaving the pending file beside the card image.
fn crashed_purchase(card: &Path, sam: &Path, amount: u32, executed: bool) {
    let crash = Crash {
        inner: ImageCard::open(card).unwrap(),
        ins: 0x54,
        executed,
    };
    let mut purse = PurseCard::open(crash).unwrap();
    let mut psam = Psam::open(ImageCard::open(sam).unwrap()).unwrap();
    let e = Purchase::new(&mut psam)
        .pay(&mut purse, amount, &now(), &mut PendingFile::beside(card))
        .unwrap_err();
    assert!(matches!(e, TerminalError::AnswerLost { .. }), "{e}");
    assert!(PendingFile::beside(card).path().exists());
}

#[test]
fn running_the_command_again_after_a_crash_finishes_it_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let sam = psam(dir.path(), "psam.img");
    let card = user_card(dir.path(), "card.img", "5500000000000001", "3des");
    load(&card, "5000");

    // The card debited, the answer was lost: the rerun charges nothing more.
    crashed_purchase(&card, &sam, 1_200, true);
    assert_eq!(balance(&card), 3_800, "the card was debited once");
    // Another amount while one is pending is refused (exit 2), naming the pending one.
    let (_, err) = fails(
        &[
            "terminal",
            "purchase",
            "--card",
            s(&card),
            "--sam",
            s(&sam),
            "--amount",
            "10",
        ],
        2,
    );
    assert!(err.contains("1200 fen") && err.contains("pending"), "{err}");
    let p = pay(&card, &sam, "1200");
    assert_eq!(p["recovery"], "completed_earlier", "{p}");
    assert_eq!(p["balance_after_fen"], 3_800);
    assert!(p["mac2_verified"].is_null());
    assert_eq!(balance(&card), 3_800);
    assert!(!PendingFile::beside(&card).path().exists());

    // The debit never reached the card: the rerun performs it, once.
    crashed_purchase(&card, &sam, 300, false);
    assert_eq!(balance(&card), 3_800);
    let p = pay(&card, &sam, "300");
    assert_eq!(p["recovery"], "repeated", "{p}");
    assert_eq!(p["mac2_verified"], true);
    assert_eq!(balance(&card), 3_500);
    // A plain rerun now is a new purchase, as asked.
    assert!(pay(&card, &sam, "300")["recovery"].is_null());
    assert_eq!(balance(&card), 3_200);

    // A load whose answer was lost: the rerun reports it with its TAC verified.
    {
        let crash = Crash {
            inner: ImageCard::open(&card).unwrap(),
            ins: 0x52,
            executed: true,
        };
        let host = MasterKeyHost::new(
            iccard_issuer::devkeys::MLK.value(),
            iccard_issuer::devkeys::MTK.value(),
        );
        let mut purse = PurseCard::open(crash).unwrap();
        let tid = iccard_issuer::psam::parse_terminal_id(TID).unwrap();
        let e = Recharge::new(&host, tid)
            .load(&mut purse, 800, &now(), &mut PendingFile::beside(&card))
            .unwrap_err();
        assert!(matches!(e, TerminalError::AnswerLost { .. }), "{e}");
    }
    // A purchase cannot start while a load is pending.
    let (_, err) = fails(
        &[
            "terminal",
            "purchase",
            "--card",
            s(&card),
            "--sam",
            s(&sam),
            "--amount",
            "800",
        ],
        2,
    );
    assert!(err.contains("interrupted load"), "{err}");
    let l = load(&card, "800");
    assert_eq!(l["recovery"], "completed_earlier", "{l}");
    assert_eq!(l["tac_verified"], true);
    assert_eq!(balance(&card), 4_000);
}
