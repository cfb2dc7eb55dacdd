//! `iccard terminal run ...` end to end on image files: sales journaled (the journal's JSON and
//! the card's balance agree), the loss list brought forward from a delta file and over HTTP, a
//! listed card and a stale list refused, a metered session stopped by the balance, batches
//! exported to a file and answered by hand, and the store-and-forward upload against a small
//! HTTP server written here (std::net) that checks each request and answers like the back
//! office's `POST /v1/batches` and `GET /v1/loss-list`.

use iccard_link::{CardChannel, ImageCard, LinkError};
use iccard_pos::{
    read_batch_file, verify_chain, Batch, BatchResults, PointOfUse, PosConfig, PosError,
    RecordResult, ResultCode,
};
use iccard_terminal::{Psam, TerminalError, TransactionTime};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const TID: &str = "A1B2C3D4E5F6";
const CARD: &str = "6228480012345678";
const CARD_SERIAL: &str = "00006228480012345678";
const OTHER_SERIAL: &str = "00006228480099999999";
const TOKEN: &str = "terminal-token-for-tests";
const DAY: &str = "20261126";

fn iccard(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iccard"));
    c.args(args).env_remove("ICCARD_TERMINAL_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("the iccard binary runs")
}

fn ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = iccard(args, env);
    assert!(
        out.status.success(),
        "{args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn ok(args: &[&str]) -> String {
    ok_env(args, &[])
}

fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = ok(&a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// Runs a command that must exit with `code`; returns (stdout, stderr).
fn fails_env(args: &[&str], env: &[(&str, &str)], code: i32) -> (String, String) {
    let out = iccard(args, env);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: stdout {stdout} stderr {stderr}"
    );
    (stdout, stderr)
}

fn fails(args: &[&str], code: i32) -> (String, String) {
    fails_env(args, &[], code)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A PSAM and a card loaded with `fen`, in `dir`.
struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    sam: PathBuf,
    card: PathBuf,
    db: PathBuf,
}

impl Setup {
    fn new(fen: u32) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let sam = dir.join("psam.img");
        ok(&[
            "card",
            "new",
            "--profile",
            "psam",
            "--terminal-id",
            TID,
            "--dev-keys",
            "--out",
            s(&sam),
        ]);
        let card = dir.join("card.img");
        ok(&["card", "new", "--out", s(&card)]);
        ok(&[
            "card",
            "personalize",
            "--image",
            s(&card),
            "--dev-keys",
            "--card-number",
            CARD,
            "--pin",
            "123456",
        ]);
        ok(&[
            "terminal",
            "load",
            "--card",
            s(&card),
            "--amount",
            &fen.to_string(),
            "--terminal-id",
            "010203040506",
            "--dev-keys",
        ]);
        Setup {
            _dir: tmp,
            db: dir.join("terminal.db"),
            dir,
            sam,
            card,
        }
    }

    fn balance(&self) -> u64 {
        let b = json(&["terminal", "balance", "--card", s(&self.card)]);
        b["balance_fen"].as_u64().expect("balance_fen")
    }

    /// `run sell` arguments for `fen` at `time` on [`DAY`].
    fn sell_args<'a>(&'a self, fen: &'a str, time: &'a str) -> Vec<&'a str> {
        vec![
            "terminal",
            "run",
            "sell",
            "--journal",
            s(&self.db),
            "--sam",
            s(&self.sam),
            "--card",
            s(&self.card),
            "--amount",
            fen,
            "--date",
            DAY,
            "--time",
            time,
        ]
    }

    fn sell(&self, fen: &str, time: &str) -> Value {
        json(&self.sell_args(fen, time))
    }

    fn write(&self, name: &str, v: &Value) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        p
    }

    /// Applies a delta file received at `time` on [`DAY`].
    fn list_file(&self, delta: &Value, time: &str) -> Value {
        let f = self.write("delta.json", delta);
        json(&[
            "terminal",
            "run",
            "list",
            "--journal",
            s(&self.db),
            "--from-file",
            s(&f),
            "--date",
            DAY,
            "--time",
            time,
        ])
    }

    fn journal(&self) -> Vec<Value> {
        let j = json(&["terminal", "run", "journal", "--journal", s(&self.db)]);
        j.as_array().expect("an array").clone()
    }
}

/// A delta as `iccard office loss list --since N --json` prints it (the office's fields the
/// terminal ignores included).
fn delta(from: i64, to: i64, adds: &[(i64, &str)]) -> Value {
    json!({
        "from_version": from,
        "to_version": to,
        "changes": adds.iter().map(|(v, serial)| json!({
            "version": v,
            "application_serial": serial,
            "action": "add",
            "reason": "reported lost",
            "at_ms": 1_790_000_000_000_i64,
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn sales_are_journaled_and_the_loss_list_guards_them() {
    let t = Setup::new(1_000);
    // A list never updated refuses the sale; the journal is made anyway, nothing is charged.
    let (_, err) = fails(&t.sell_args("100", "090000"), 1);
    assert!(err.contains("never") && err.contains("loss list"), "{err}");
    assert!(t.db.exists(), "the journal is created on first use");
    assert_eq!(t.balance(), 1_000);

    let l = t.list_file(&delta(0, 1, &[(1, OTHER_SERIAL)]), "100000");
    assert_eq!(l["version"], 1, "{l}");
    assert_eq!(l["changes_applied"], 1);
    assert_eq!(l["listed"], 1);

    let a = t.sell("250", "100500");
    assert_eq!(a["status"], "normal", "{a}");
    assert_eq!(a["amount_fen"], 250);
    assert_eq!(a["balance_before_fen"], 1_000);
    assert_eq!(a["balance_after_fen"], 750);
    assert_eq!(a["terminal_id"], TID);
    assert_eq!(a["card_number"], CARD);
    assert_eq!(a["application_serial"], CARD_SERIAL);
    assert_eq!(a["date"], DAY);
    assert_eq!(a["time"], "100500");
    assert_eq!(a["tac"].as_str().map(str::len), Some(8), "{a}");
    assert_eq!(a["resolved"], json!([]));
    // Human output: yuan with two decimals.
    let out = ok(&t.sell_args("100", "100600"));
    assert!(
        out.contains("sold 1.00 yuan to card 6228480012345678: balance 7.50 -> 6.50 yuan"),
        "{out}"
    );
    assert!(out.contains("journaled normal"), "{out}");
    assert_eq!(t.balance(), 650);

    let j = t.journal();
    assert_eq!(j.len(), 2, "{j:?}");
    let amounts: Vec<u64> = j
        .iter()
        .map(|r| r["amount_fen"].as_u64().unwrap())
        .collect();
    assert_eq!(amounts, [250, 100]);
    assert!(j
        .iter()
        .all(|r| r["status"] == "normal" && r["upload"] == "local"));
    let serials: BTreeSet<u64> = j
        .iter()
        .map(|r| r["terminal_serial"].as_u64().unwrap())
        .collect();
    assert_eq!(serials.len(), 2, "two PSAM serials");
    let human = ok(&["terminal", "run", "journal", "--journal", s(&t.db)]);
    assert!(
        human.contains("2.50 yuan") && human.contains("not uploaded"),
        "{human}"
    );

    // Stale: a day and a second after the update.
    let mut late = t.sell_args("100", "100001");
    late[12] = "20261127";
    let (_, err) = fails(&late, 1);
    assert!(
        err.contains("loss list (version 1)") && err.contains("update it before selling"),
        "{err}"
    );
    late.extend(["--json"]);
    let (out, _) = fails(&late, 1);
    let v: Value = serde_json::from_str(&out).expect("JSON on failure");
    assert_eq!(v["kind"], "loss_list_stale", "{v}");
    assert_eq!(v["list_version"], 1);
    // A longer maximum age lets it through.
    late.pop();
    late.extend(["--max-list-age", "172800"]);
    ok(&late);
    assert_eq!(t.balance(), 550);

    // The card is listed: refused, naming the list version; no money moves, nothing journaled.
    let l = t.list_file(&delta(1, 2, &[(2, CARD_SERIAL)]), "110000");
    assert_eq!(l["version"], 2, "{l}");
    let (_, err) = fails(&t.sell_args("100", "110500"), 1);
    assert!(
        err.contains("card 6228480012345678 is on the loss list (version 2)"),
        "{err}"
    );
    let mut a = t.sell_args("100", "110500");
    a.push("--json");
    let (out, _) = fails(&a, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "listed_card");
    assert_eq!(v["list_version"], 2);
    assert_eq!(v["application_serial"], CARD_SERIAL);
    assert_eq!(t.balance(), 550);
    assert_eq!(t.journal().len(), 3);

    // A delta with a gap is refused; an old one changes nothing.
    let f = t.write("gap.json", &delta(5, 6, &[(6, OTHER_SERIAL)]));
    let (_, err) = fails(
        &[
            "terminal",
            "run",
            "list",
            "--journal",
            s(&t.db),
            "--from-file",
            s(&f),
        ],
        1,
    );
    assert!(err.contains("does not follow version 2"), "{err}");
    let again = t.list_file(&delta(0, 1, &[(1, OTHER_SERIAL)]), "120000");
    assert_eq!(again["already_applied"], true, "{again}");
    assert_eq!(again["version"], 2);
    // Not a delta at all: an input error.
    let f = t.write("junk.json", &json!({"hello": 1}));
    fails(
        &[
            "terminal",
            "run",
            "list",
            "--journal",
            s(&t.db),
            "--from-file",
            s(&f),
        ],
        2,
    );

    let st = json(&[
        "terminal",
        "run",
        "status",
        "--journal",
        s(&t.db),
        "--date",
        DAY,
        "--time",
        "113000",
    ]);
    assert_eq!(st["terminal_id"], TID, "{st}");
    assert_eq!(st["records"], 3);
    assert_eq!(st["by_status"]["normal"], 3);
    assert_eq!(st["by_status"]["pending"], 0);
    assert_eq!(st["debited_fen"], 450);
    assert_eq!(st["loss_list"]["version"], 2);
    assert_eq!(st["loss_list"]["listed"], 2);
    assert_eq!(st["loss_list"]["age_secs"], 1_800);
    assert_eq!(st["loss_list"]["fresh"], true);
    let human = ok(&["terminal", "run", "status", "--journal", s(&t.db)]);
    assert!(human.contains("loss list version 2"), "{human}");

    // Another PSAM does not write into this terminal's journal.
    let other = t.dir.join("other-psam.img");
    ok(&[
        "card",
        "new",
        "--profile",
        "psam",
        "--terminal-id",
        "0000000000AA",
        "--dev-keys",
        "--out",
        s(&other),
    ]);
    let mut a = t.sell_args("100", "113000");
    a[6] = s(&other);
    let (_, err) = fails(&a, 2);
    assert!(err.contains("one journal per PSAM"), "{err}");
    // Input errors.
    fails(&t.sell_args("0", "113000"), 2);
    let mut a = t.sell_args("100", "113000");
    a[14] = "256100";
    fails(&a, 2);
    fails(
        &[
            "terminal",
            "run",
            "journal",
            "--journal",
            s(&t.dir.join("none.db")),
        ],
        2,
    );
}

/// A card whose answer to DEBIT FOR PURCHASE is lost once: after the card executed it
/// (`executed`) or before it reached the card.
struct Tear {
    inner: ImageCard,
    executed: bool,
    armed: bool,
}

impl CardChannel for Tear {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        if self.armed && apdu.len() > 1 && apdu[0] == 0x80 && apdu[1] == 0x54 {
            self.armed = false;
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

#[test]
fn a_sale_interrupted_earlier_is_settled_first_and_said_so() {
    let t = Setup::new(1_000);
    t.list_file(&delta(0, 0, &[]), "080000");
    // The library sells through a card that loses DEBIT FOR PURCHASE's answer: the row stays
    // pending in the journal the command line uses.
    let tear = |executed: bool, time: &str| {
        let psam = Psam::open(ImageCard::open(&t.sam).unwrap()).unwrap();
        let mut pos = PointOfUse::open(psam, &t.db, PosConfig::default()).unwrap();
        let card = Tear {
            inner: ImageCard::open(&t.card).unwrap(),
            executed,
            armed: true,
        };
        let when = TransactionTime::parse(DAY, time).unwrap();
        let e = pos.sell(card, 200, &when).unwrap_err();
        assert!(
            matches!(e, PosError::Terminal(TerminalError::AnswerLost { .. })),
            "{e}"
        );
    };
    tear(true, "090000");
    assert_eq!(t.balance(), 800, "the card executed it");
    let st = json(&["terminal", "run", "status", "--journal", s(&t.db)]);
    assert_eq!(st["by_status"]["pending"], 1, "{st}");
    assert_eq!(st["pending"][0]["amount_fen"], 200);
    let human = ok(&["terminal", "run", "status", "--journal", s(&t.db)]);
    assert!(human.contains("1 pending purchase(s)"), "{human}");

    let v = t.sell("100", "090500");
    let r = &v["resolved"][0];
    assert_eq!(r["resolution"], "completed_earlier", "{v}");
    assert_eq!(r["record"]["status"], "recovered");
    assert_eq!(r["record"]["amount_fen"], 200);
    assert_eq!(
        r["record"]["tac"].as_str().map(str::len),
        Some(8),
        "proof fetched"
    );
    assert_eq!(v["balance_before_fen"], 800);
    assert_eq!(v["balance_after_fen"], 700);

    // Lost before it reached the card: charged once when the card comes back, said so.
    tear(false, "091000");
    assert_eq!(t.balance(), 700);
    let out = ok(&t.sell_args("100", "091500"));
    assert!(
        out.contains("pending purchase of 2.00 yuan (terminal serial 3) resolved first")
            && out.contains("charged once now as terminal serial 4"),
        "{out}"
    );
    assert!(out.contains("balance 5.00 -> 4.00 yuan"), "{out}");
    assert_eq!(t.balance(), 400);
    let j = t.journal();
    let statuses: Vec<(u64, &str)> = j
        .iter()
        .map(|r| {
            (
                r["amount_fen"].as_u64().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (200, "recovered"),
            (100, "normal"),
            (200, "failed"),
            (200, "recovered"),
            (100, "normal"),
        ]
    );
    let st = json(&["terminal", "run", "status", "--journal", s(&t.db)]);
    assert_eq!(st["by_status"]["pending"], 0);
    assert_eq!(st["debited_fen"], 600);
}

#[test]
fn a_metered_session_stops_at_the_balance() {
    let t = Setup::new(1_000);
    t.list_file(&delta(0, 0, &[]), "080000");
    let meter = |tariff: &str, units: &str, time: &str| -> Vec<String> {
        [
            "terminal",
            "run",
            "meter",
            "--journal",
            s(&t.db),
            "--sam",
            s(&t.sam),
            "--card",
            s(&t.card),
            "--tariff",
            tariff,
            "--units",
            units,
            "--date",
            DAY,
            "--time",
            time,
        ]
        .map(String::from)
        .to_vec()
    };
    let args = meter("300", "10", "090000");
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.push("--json");
    let v: Value = serde_json::from_str(&ok(&a)).unwrap();
    assert_eq!(v["units_charged"], 3, "{v}");
    assert_eq!(v["total_fen"], 900);
    assert_eq!(v["stop"], "balance");
    assert_eq!(v["balance_after_fen"], 100);
    let units = v["units"].as_array().unwrap();
    let times: Vec<&str> = units.iter().map(|u| u["time"].as_str().unwrap()).collect();
    assert_eq!(times, ["090000", "090100", "090200"], "one unit a minute");
    let after: Vec<u64> = units
        .iter()
        .map(|u| u["balance_after_fen"].as_u64().unwrap())
        .collect();
    assert_eq!(after, [700, 400, 100]);
    assert_eq!(t.balance(), 100);
    let j = t.journal();
    assert_eq!(j.len(), 3);
    assert!(j
        .iter()
        .all(|r| r["amount_fen"] == 300 && r["status"] == "normal"));

    // The balance does not cover one unit: nothing charged, exit 1.
    let args = meter("300", "5", "100000");
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, err) = fails(&a, 1);
    assert!(out.contains("0 unit(s)"), "{out}");
    assert!(
        err.contains("nothing charged") && err.contains("1.00 yuan"),
        "{err}"
    );
    assert_eq!(t.balance(), 100);

    // Ended by the unit count, with per-unit lines and a summary, 30 s units.
    let mut args = meter("25", "2", "110000");
    args.extend(["--unit-secs".to_string(), "30".to_string()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&a);
    assert!(
        out.contains("unit   1  20261126 110000  0.25 yuan"),
        "{out}"
    );
    assert!(
        out.contains("unit   2  20261126 110030  0.25 yuan"),
        "{out}"
    );
    assert!(
        out.contains("session: 2 unit(s) of 0.25 yuan, 0.50 yuan charged; all 2 unit(s) used"),
        "{out}"
    );
    assert_eq!(t.balance(), 50);
    assert_eq!(t.journal().len(), 5);
}

#[test]
fn batches_exported_to_a_file_and_answered_by_hand() {
    let t = Setup::new(1_000);
    t.list_file(&delta(0, 0, &[]), "080000");
    // Nothing journaled yet: nothing to export.
    let out = t.dir.join("batches.json");
    let export = |max: &str| {
        json(&[
            "terminal",
            "run",
            "export",
            "--journal",
            s(&t.db),
            "--file",
            s(&out),
            "--max",
            max,
        ])
    };
    fails(
        &[
            "terminal",
            "run",
            "export",
            "--journal",
            s(&t.db),
            "--file",
            s(&out),
        ],
        2,
    );
    for (fen, time) in [("100", "090000"), ("200", "090100"), ("300", "090200")] {
        t.sell(fen, time);
    }
    let e = export("2");
    assert_eq!(e["batches"], 2, "{e}");
    assert_eq!(e["records"], 3);
    assert_eq!(e["first_sequence"], 1);
    let file = read_batch_file(&out).expect("a readable batch file");
    assert_eq!(file.terminal_id, TID);
    assert_eq!(file.batches.len(), 2);
    verify_chain(&file.batches, None).expect("chained from the genesis hash");
    let amounts: Vec<u32> = file
        .batches
        .iter()
        .flat_map(|b| b.records.iter().map(|r| r.amount_fen))
        .collect();
    assert_eq!(amounts, [100, 200, 300]);
    assert!(t.journal().iter().all(|r| r["upload"] == "batched"));

    // A fourth sale goes into a third batch; the first two are written again unchanged.
    t.sell("50", "090300");
    export("2");
    let again = read_batch_file(&out).unwrap();
    assert_eq!(again.batches.len(), 3);
    assert_eq!(again.batches[..2], file.batches[..]);

    // The answers come back: batch 1 all ok, batch 2 with a TAC refused; batch 3 unanswered.
    let answer = |b: &Batch, bad: Option<u32>| BatchResults {
        terminal_id: b.terminal_id.clone(),
        sequence: b.sequence,
        hash: b.hash.clone(),
        results: b
            .records
            .iter()
            .map(|r| RecordResult {
                terminal_serial: r.terminal_serial,
                code: if Some(r.terminal_serial) == bad {
                    ResultCode::TacInvalid
                } else {
                    ResultCode::Ok
                },
            })
            .collect(),
    };
    let b2 = &again.batches[1];
    let bad_serial = b2.records[0].terminal_serial;
    let answers = vec![
        answer(&again.batches[0], None),
        answer(b2, Some(bad_serial)),
    ];
    let f = t.write("answers.json", &serde_json::to_value(&answers).unwrap());
    let v = json(&[
        "terminal",
        "run",
        "import-answers",
        "--journal",
        s(&t.db),
        "--file",
        s(&f),
    ]);
    assert_eq!(v["batches"][0]["accepted"], 2, "{v}");
    assert_eq!(v["batches"][1]["accepted"], 0);
    assert_eq!(v["batches"][1]["rejected"][0]["code"], "tac_invalid");
    let j = t.journal();
    let state: Vec<(&str, Option<&str>)> = j
        .iter()
        .map(|r| (r["upload"].as_str().unwrap(), r["result"].as_str()))
        .collect();
    assert_eq!(
        state,
        [
            ("acknowledged", Some("ok")),
            ("acknowledged", Some("ok")),
            ("acknowledged", Some("tac_invalid")),
            ("batched", None),
        ]
    );
    // Only the unanswered batch is exported now.
    let e = export("2");
    assert_eq!(e["batches"], 1, "{e}");
    assert_eq!(e["first_sequence"], 3);
    // An answer for a batch this journal does not hold (altered hash): refused, exit 1.
    let mut wrong = answer(&again.batches[2], None);
    wrong.hash = "0".repeat(64);
    let f = t.write("wrong.json", &serde_json::to_value(&wrong).unwrap());
    let (_, err) = fails(
        &[
            "terminal",
            "run",
            "import-answers",
            "--journal",
            s(&t.db),
            "--file",
            s(&f),
        ],
        1,
    );
    assert!(err.contains("hash"), "{err}");
    assert_eq!(t.journal()[3]["upload"], "batched");
}

/// One request as the fake back office saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    auth: Option<String>,
    body: String,
}

/// A small HTTP/1.1 server on 127.0.0.1 answering each request with `handler`'s (status, JSON
/// body), one request per connection; every request is kept in `seen`.
struct FakeOffice {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn fake_office(handler: impl Fn(&Seen) -> (u16, String) + Send + 'static) -> FakeOffice {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let target = parts.next().unwrap_or("").to_string();
            let (mut length, mut auth) = (0usize, None);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = h.split_once(':') {
                    let value = value.trim().to_string();
                    match name.trim().to_ascii_lowercase().as_str() {
                        "content-length" => length = value.parse().unwrap_or(0),
                        "authorization" => auth = Some(value),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let req = Seen {
                method,
                target,
                auth,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let (status, answer) = handler(&req);
            log.lock().unwrap().push(req);
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: \
                 {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    FakeOffice { url, seen }
}

/// The back office's answer to a batch: every record `ok`, but `tac_invalid` for terminal
/// serial `bad`.
fn results_for(batch: &Batch, bad: u32) -> BatchResults {
    BatchResults {
        terminal_id: batch.terminal_id.clone(),
        sequence: batch.sequence,
        hash: batch.hash.clone(),
        results: batch
            .records
            .iter()
            .map(|r| RecordResult {
                terminal_serial: r.terminal_serial,
                code: if r.terminal_serial == bad {
                    ResultCode::TacInvalid
                } else {
                    ResultCode::Ok
                },
            })
            .collect(),
    }
}

#[test]
fn upload_store_and_forward_and_the_list_over_http() {
    let t = Setup::new(1_000);
    let env = [("ICCARD_TERMINAL_TOKEN", TOKEN)];
    let bearer = format!("Bearer {TOKEN}");
    // The office: 401 without the token; the loss list since 0; batches: the first POST
    // answered 503, the next ones checked (hash, chain) and answered.
    let posts = Arc::new(AtomicUsize::new(0));
    let counter = posts.clone();
    let office = fake_office(move |req| {
        if req.auth.as_deref() != Some(format!("Bearer {TOKEN}").as_str()) {
            return (401, json!({"error": "unknown terminal token"}).to_string());
        }
        match (req.method.as_str(), req.target.as_str()) {
            ("GET", "/v1/loss-list?since=0") => {
                (200, delta(0, 3, &[(2, OTHER_SERIAL)]).to_string())
            }
            ("POST", "/v1/batches") => {
                let Ok(batch) = serde_json::from_str::<Batch>(&req.body) else {
                    return (400, json!({"error": "not a batch"}).to_string());
                };
                if batch.verify().is_err() {
                    return (400, json!({"error": "hash mismatch"}).to_string());
                }
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    return (503, json!({"error": "the ledger is busy"}).to_string());
                }
                let bad = batch.records.last().map_or(0, |r| r.terminal_serial);
                let bad = if batch.sequence == 2 { bad } else { 0 };
                (
                    200,
                    serde_json::to_string(&results_for(&batch, bad)).unwrap(),
                )
            }
            _ => (404, json!({"error": "no such route"}).to_string()),
        }
    });

    // The loss list over HTTP, with the token from the environment.
    let list = |env: &[(&str, &str)]| {
        iccard(
            &[
                "terminal",
                "run",
                "list",
                "--journal",
                s(&t.db),
                "--server",
                &office.url,
                "--date",
                DAY,
                "--time",
                "080000",
                "--json",
            ],
            env,
        )
    };
    let out = list(&[("ICCARD_TERMINAL_TOKEN", "wrong")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") && err.contains("unknown terminal token"),
        "{err}"
    );
    assert!(err.contains("stays at version 0"), "{err}");
    let out = list(&env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 3, "{v}");
    assert_eq!(v["listed"], 1);
    {
        let seen = office.seen.lock().unwrap();
        let last = seen.last().unwrap();
        assert_eq!(last.method, "GET");
        assert_eq!(last.auth.as_deref(), Some(bearer.as_str()));
    }

    for (fen, time) in [("100", "090000"), ("200", "090100"), ("300", "090200")] {
        t.sell(fen, time);
    }
    let upload = |url: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut a = vec![
            "terminal",
            "run",
            "upload",
            "--journal",
            s(&t.db),
            "--server",
            url,
            "--max",
            "2",
            "--timeout",
            "10",
        ];
        a.extend(extra);
        iccard(&a, env)
    };
    // No token: an input error, nothing sent.
    let out = upload(&office.url, &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ICCARD_TERMINAL_TOKEN"));
    // The token never goes on the command line.
    let out = upload(&office.url, &["--token", TOKEN], &env);
    assert_eq!(out.status.code(), Some(2));
    // The office unreachable: exit 1, nothing lost.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let out = upload(&closed, &[], &env);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3 record(s) stay in the journal, nothing lost"),
        "{err}"
    );
    // The office refuses (503): its error shown, exit 1, the batch kept.
    let out = upload(&office.url, &[], &env);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("503") && err.contains("the ledger is busy"),
        "{err}"
    );
    assert!(t.journal().iter().all(|r| r["upload"] != "acknowledged"));
    // Again: two batches (2 + 1 records), the first sent again byte for byte.
    let out = upload(&office.url, &["--json"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["records"], 3, "{v}");
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["rejected"], 1);
    assert_eq!(v["batches"].as_array().unwrap().len(), 2);
    let posted: Vec<Seen> = office
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.method == "POST")
        .cloned()
        .collect();
    assert_eq!(posted.len(), 3, "{posted:?}");
    assert!(posted
        .iter()
        .all(|r| r.auth.as_deref() == Some(bearer.as_str())));
    assert_eq!(
        posted[0].body, posted[1].body,
        "the refused batch is resent as it was"
    );
    let batches: Vec<Batch> = posted[1..]
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    verify_chain(&batches, None).expect("batches 1 and 2, chained");
    assert_eq!(batches[0].records.len(), 2);
    assert_eq!(batches[1].records.len(), 1);
    let j = t.journal();
    assert!(j.iter().all(|r| r["upload"] == "acknowledged"), "{j:?}");
    let codes: Vec<&str> = j.iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert_eq!(codes, ["ok", "ok", "tac_invalid"]);
    // Nothing left: no request goes out.
    let out = upload(&office.url, &[], &env);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to upload"));
    assert_eq!(posts.load(Ordering::SeqCst), 3);
}
