//! `iccard office settlement ...` end to end through the binary, with real purchases: an office
//! on the development key set whose issuer number is the one personalization writes by default,
//! a card personalized and loaded at its recharge point, a PSAM image, `iccard terminal run
//! sell` journaling purchases; the loss list and the upload over the office's own HTTP service
//! (`settlement serve`), a batch file carried by hand (`settlement import`), the run, the
//! report, the cases and a resolution, and the refusals with their exit codes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use iccard_office::store::Store;
use iccard_office::{Office, OpenCard, Password};
use serde_json::Value;

use crate::office_support::{fails, json, ok, ADMIN_PW, CLERK_PW};

/// 16 digits whose BCD is personalization's default issuer id (88 60 00 … 00).
const ISSUER: &str = "8860000000000000";
const TID: &str = "A1B2C3D4E5F6";
const CARD: &str = "6228480012345678";
const CARD_SERIAL: &str = "00006228480012345678";
const DAY: &str = "20261126";
const DATE: &str = "2026-11-26";

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn root<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--operator", "root"];
    a.extend_from_slice(args);
    a
}

/// `iccard` outside `office` (card and terminal commands), which must succeed.
fn tool(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iccard"));
    c.args(args).env_remove("ICCARD_TERMINAL_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("the iccard binary runs");
    assert!(
        out.status.success(),
        "{args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn tool_json(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = tool(&a, env);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// The office's HTTP service as a child process; killed (by its own id) when dropped.
struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(office: &Path) -> Server {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iccard"));
    c.args(["office", "--office", s(office), "--operator", "root"])
        .args(["settlement", "serve", "--listen", "127.0.0.1:0", "--json"])
        .env("ICCARD_OPERATOR_PASSWORD", ADMIN_PW)
        .env_remove("ICCARD_OPERATOR")
        .env_remove("ICCARD_MACHINE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = c.spawn().expect("iccard office settlement serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let addr = v["listening"].as_str().expect("the address").to_owned();
    Server(child, format!("http://{addr}"))
}

/// Opens the card's account the way issuance does (the library; the CLI issues stock cards).
fn open_account(office: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}", office.join("office.db").display());
        let store = Store::connect(&url).await.unwrap();
        let o = Office::open(store.clone()).await.unwrap();
        let clerk = o
            .login("ivy", &Password::new(CLERK_PW), "RP-1")
            .await
            .unwrap();
        o.open_card(
            &clerk,
            OpenCard {
                application_serial: CARD_SERIAL.into(),
                deposit_minor: 0,
                fee_minor: 0,
            },
        )
        .await
        .unwrap();
        store.close().await;
    });
}

#[test]
fn settlement_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let office = tmp.path().join("office");
    let o = office.as_path();
    json(
        o,
        &[],
        &[
            "init",
            "--issuer-number",
            ISSUER,
            "--development",
            "--dev-keys",
            "--admin",
            "root",
        ],
    );
    for args in [
        &[
            "machine",
            "add",
            "RP-1",
            "--kind",
            "recharge-point",
            "--branch",
            "HQ",
        ][..],
        &[
            "machine", "add", "T-1", "--kind", "terminal", "--branch", "HQ", "--psam", "PSAM-1",
        ][..],
        &["operator", "add", "ivy", "--role", "issuance-clerk"][..],
        &["operator", "add", "rita", "--role", "recharge-clerk"][..],
    ] {
        json(o, &[], &root(args));
    }
    let m = json(
        o,
        &[],
        &root(&["settlement", "merchant", "add", "M1", "--name", "Canteen"]),
    );
    assert_eq!(m["code"], "M1");
    let list = json(o, &[], &root(&["settlement", "merchant", "list"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    // The token is printed once, in text too.
    let text = ok(
        o,
        &[],
        &root(&[
            "settlement",
            "terminal",
            "assign",
            "T-1",
            "--terminal-id",
            "a1b2c3d4e5f6",
            "--merchant",
            "M1",
        ]),
    );
    let token = text.lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with(&format!("{TID}.")), "{text}");
    assert_eq!(token.len(), 12 + 1 + 64);
    let terminals = json(o, &[], &root(&["settlement", "terminal", "list"]));
    assert_eq!(terminals[0]["terminal_id"], TID);
    assert!(
        !terminals.to_string().contains(&token),
        "the token is never listed"
    );
    // A clerk may not manage merchants: refused (1); a bad terminal id is usage (2).
    fails(
        o,
        &[("ICCARD_OPERATOR_PASSWORD", CLERK_PW)],
        &[
            "--operator",
            "ivy",
            "--machine",
            "RP-1",
            "settlement",
            "merchant",
            "add",
            "M2",
            "--name",
            "X",
        ],
        1,
    );
    fails(
        o,
        &[],
        &root(&[
            "settlement",
            "terminal",
            "assign",
            "T-1",
            "--terminal-id",
            "XYZ",
            "--merchant",
            "M1",
        ]),
        2,
    );

    // The card and the PSAM, the card loaded at the office's recharge point.
    let sam = tmp.path().join("psam.img");
    let card = tmp.path().join("card.img");
    let journal = tmp.path().join("terminal.db");
    tool(
        &[
            "card",
            "new",
            "--profile",
            "psam",
            "--terminal-id",
            TID,
            "--dev-keys",
            "--out",
            s(&sam),
        ],
        &[],
    );
    tool(&["card", "new", "--out", s(&card)], &[]);
    tool(
        &[
            "card",
            "personalize",
            "--image",
            s(&card),
            "--dev-keys",
            "--card-number",
            CARD,
            "--pin",
            "123456",
        ],
        &[],
    );
    open_account(o);
    json(
        o,
        &[("ICCARD_OPERATOR_PASSWORD", CLERK_PW)],
        &[
            "--operator",
            "rita",
            "--machine",
            "RP-1",
            "recharge",
            "--card",
            s(&card),
            "--amount",
            "5000",
            "--date",
            DAY,
            "--time",
            "070000",
        ],
    );

    // The loss list and the upload over the office's HTTP service.
    let server = serve(o);
    let env = [("ICCARD_TERMINAL_TOKEN", token.as_str())];
    let run = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["terminal", "run"].iter().map(|x| x.to_string()).collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a.extend(["--journal".to_string(), s(&journal).to_string()]);
        a
    };
    let list_args = run(&[
        "list", "--server", &server.1, "--date", DAY, "--time", "080000",
    ]);
    tool_json(
        &list_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    for (fen, time) in [("1200", "100000"), ("300", "100500")] {
        let a = run(&[
            "sell",
            "--sam",
            s(&sam),
            "--card",
            s(&card),
            "--amount",
            fen,
            "--date",
            DAY,
            "--time",
            time,
        ]);
        tool_json(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    }
    let up = run(&["upload", "--server", &server.1]);
    let up = tool_json(&up.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    assert!(up.to_string().contains("\"accepted\":2"), "{up}");
    drop(server);

    // One more sale, carried by hand.
    let a = run(&[
        "sell",
        "--sam",
        s(&sam),
        "--card",
        s(&card),
        "--amount",
        "500",
        "--date",
        DAY,
        "--time",
        "110000",
    ]);
    tool_json(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let file = tmp.path().join("batches.json");
    let ex = run(&["export", "--file", s(&file)]);
    tool_json(&ex.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let answers = json(o, &[], &root(&["settlement", "import", s(&file)]));
    assert_eq!(answers[0]["sequence"], 2);
    assert_eq!(answers[0]["results"][0]["code"], "ok");
    // Carried in twice: the same answer.
    let again = json(o, &[], &root(&["settlement", "import", s(&file)]));
    assert_eq!(again, answers);
    // Not a batch file: input error (2).
    let junk = tmp.path().join("junk.json");
    std::fs::write(&junk, "{}").unwrap();
    fails(o, &[], &root(&["settlement", "import", s(&junk)]), 2);

    // The run, the report, check.
    fails(
        o,
        &[],
        &root(&["settlement", "run", "--date", "2026-13-01"]),
        2,
    );
    let r = json(o, &[], &root(&["settlement", "run", "--date", DATE]));
    assert_eq!(r["records_settled"], 3);
    assert_eq!(r["amount_minor"], 2000);
    assert_eq!(r["postings"][0]["merchant_code"], "M1");
    let again = json(o, &[], &root(&["settlement", "run", "--date", DATE]));
    assert_eq!(again["records_settled"], 0);
    let report = json(o, &[], &root(&["settlement", "report", "--date", DATE]));
    assert_eq!(report["posted_minor"], 2000);
    assert_eq!(report["lines"][0]["records"], 3);
    assert_eq!(report["lines"][0]["settled_minor"], 2000);
    let text = ok(o, &[], &root(&["settlement", "report", "--date", DATE]));
    assert!(text.contains("20.00"), "{text}");
    let check = json(o, &[], &root(&["check"]));
    assert_eq!(
        check["problems"].as_array().map(Vec::len),
        Some(0),
        "{check}"
    );
    let accounts = json(o, &[], &root(&["ledger", "accounts"]));
    let payable = accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["code"] == "merchant_payable")
        .unwrap();
    assert_eq!(payable["balance_minor"], 2000);

    // A forged batch file: the TAC does not verify; a case opens and is resolved.
    let mut bf: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let mut batch: iccard_pos::Batch = serde_json::from_value(bf["batches"][0].clone()).unwrap();
    let mut rec = batch.records[0].clone();
    rec.terminal_serial += 100;
    rec.tac = Some("00000000".into());
    batch = iccard_pos::Batch::new(batch.terminal_id.clone(), 3, batch.hash.clone(), vec![rec])
        .unwrap();
    bf["batches"] = serde_json::json!([batch]);
    let forged = tmp.path().join("forged.json");
    std::fs::write(&forged, serde_json::to_vec(&bf).unwrap()).unwrap();
    let answers = json(o, &[], &root(&["settlement", "import", s(&forged)]));
    assert_eq!(answers[0]["results"][0]["code"], "tac_invalid");
    let cases = json(o, &[], &root(&["settlement", "cases", "--open"]));
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0]["kind"], "tac_invalid");
    let id = cases[0]["id"].as_i64().unwrap().to_string();
    let done = json(
        o,
        &[],
        &root(&[
            "settlement",
            "resolve",
            &id,
            "--reason",
            "test terminal, no sale",
        ]),
    );
    assert_eq!(done["state"], "resolved");
    assert_eq!(done["resolved_by"], "root");
    fails(
        o,
        &[],
        &root(&["settlement", "resolve", &id, "--reason", "again"]),
        2,
    );
    assert!(json(o, &[], &root(&["settlement", "cases", "--open"]))
        .as_array()
        .unwrap()
        .is_empty());
    let all = ok(o, &[], &root(&["settlement", "cases"]));
    assert!(all.contains("resolved by root"), "{all}");
    // A gap in the chain is refused (1): batch 5 after 3.
    let mut gap: Value = bf.clone();
    let b5 = iccard_pos::Batch::new(TID.into(), 5, batch.hash.clone(), vec![]).unwrap();
    gap["batches"] = serde_json::json!([b5]);
    let gapf = tmp.path().join("gap.json");
    std::fs::write(&gapf, serde_json::to_vec(&gap).unwrap()).unwrap();
    let err = fails(o, &[], &root(&["settlement", "import", s(&gapf)]), 1);
    assert!(err.contains("expected sequence 4"), "{err}");
}
