//! The back office's card stages end to end through pcscd and vpcd: a development office on
//! SQLite makes card images through every production stage (`batch run`), one coded card is
//! served on vpcd's card slot by `iccard card serve` and issued (personalized, with its first
//! recharge) by `iccard office issue --reader`, recharged twice by `office recharge --reader`,
//! and the balance read back from the card over PC/SC and from its image once the server
//! stopped; the refusals over PC/SC (a card issued twice, a load above the product's maximum
//! balance, a card on the loss list) that change neither the card nor the books; and
//! `office replace --reader`, a lost card's balance onto its replacement once the late-record
//! window has passed; a load whose card process is killed around CREDIT FOR LOAD, settled
//! exactly once from the card's own serial when the card comes back; and the return of a card
//! through the reader (quote, DEBIT FOR UNLOAD, purse blocked, card erased), its chip coded
//! again from the image and issued anew.

use crate::office_support::{fails, json, CLERK_PW};
use crate::pcsc_env::{iccard_bin, iccard_in, ip, pcsc, wait_for, Served, CARD_READER, NETNS};
use serde_json::Value;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const ISSUER: &str = "31000001";
const HOLDER_NAME: &str = "Li Wei";
const HOLDER_ID: &str = "110101199003070011";
/// CREDIT FOR LOAD as `iccard card serve --verbose` logs a command it received.
const CREDIT_FOR_LOAD: &str = "> 80520000";
/// CREATE FILE, as personalization sends it.
const CREATE_FILE: &str = "> 80E00000";
/// WRITE KEY under secure messaging, as personalization sends it.
const WRITE_KEY: &str = "> 84D40000";

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn root<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--operator", "root"];
    a.extend_from_slice(args);
    a
}

/// `args` as `login` at the recharge point RP-001.
fn at_rp<'a>(login: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--operator", login, "--machine", "RP-001"];
    a.extend_from_slice(args);
    a
}

const CLERK: &[(&str, &str)] = &[("ICCARD_OPERATOR_PASSWORD", CLERK_PW)];

/// A development office with product CITY (maximum balance `max_balance`), a lot, the clerks
/// ivy (issuance) and rita (recharge), the recharge point RP-001, and `quantity` coded card
/// images made by a batch run through every stage; returns the images, in chip-serial order.
fn office_with_cards(office: &Path, cards: &Path, max_balance: i64, quantity: i64) -> Vec<PathBuf> {
    let v = json(
        office,
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
    assert_eq!(v["mode"], "development", "{v}");
    assert!(office.join("office.db").exists(), "SQLite is the default");
    let max = max_balance.to_string();
    let p = json(
        office,
        &[],
        &root(&[
            "product",
            "create",
            "CITY",
            "--name",
            "City card",
            "--type",
            "registered",
            "--deposit",
            "2000",
            "--fee",
            "500",
            "--validity-months",
            "60",
            "--max-balance",
            &max,
            "--offline-limit",
            "5000",
            "--offline-daily-limit",
            "5000",
            "--alg",
            "3des",
            "--app",
            "purse:load,purchase",
        ]),
    );
    assert_eq!(p["profile"]["max_balance_minor"], max_balance, "{p}");
    let qty = quantity.to_string();
    let lot = json(
        office,
        &[],
        &root(&[
            "lot",
            "receive",
            "LOT-P",
            "--maker",
            "Icmaker",
            "--model",
            "IC-32K",
            "--quantity",
            "10",
            "--first-serial",
            "4943000000002000",
            "--transport-key-version",
            "1",
        ]),
    );
    assert_eq!(lot["last_chip_serial"], "4943000000002009", "{lot}");
    let order = json(
        office,
        &[],
        &root(&[
            "batch",
            "order",
            "--product",
            "CITY",
            "--lot",
            "LOT-P",
            "--quantity",
            &qty,
        ]),
    );
    let order_id = order["id"].as_i64().expect("order id").to_string();
    for (login, role) in [("ivy", "issuance-clerk"), ("rita", "recharge-clerk")] {
        json(
            office,
            &[],
            &root(&["operator", "add", login, "--role", role]),
        );
    }
    json(
        office,
        &[],
        &root(&[
            "machine",
            "add",
            "RP-001",
            "--kind",
            "recharge-point",
            "--branch",
            "HQ",
        ]),
    );

    let run = json(
        office,
        &[],
        &root(&[
            "batch",
            "run",
            "--order",
            &order_id,
            "--quantity",
            &qty,
            "--dir",
            s(cards),
            "--production-date",
            "20260101",
        ]),
    );
    assert_eq!(run["in_stock"], quantity, "{run}");
    let batch_id = run["batch"]["id"].as_i64().expect("batch id").to_string();
    let show = json(office, &[], &root(&["batch", "show", &batch_id]));
    let stages: Vec<&str> = show["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["stage"].as_str().expect("stage name"))
        .collect();
    assert_eq!(
        stages,
        [
            "printing",
            "coding",
            "bronzing",
            "packaging",
            "gluing",
            "testing"
        ],
        "{show}"
    );
    for st in show["stages"].as_array().unwrap() {
        assert_eq!(st["count_out"], quantity, "{st}");
    }
    let images: Vec<PathBuf> = (0..quantity)
        .map(|i| cards.join(format!("494300000000{}.card", 2000 + i)))
        .collect();
    for img in &images {
        assert!(img.is_file(), "coding did not make {}", img.display());
    }
    images
}

/// The card states of `inventory --product CITY` as (state, count).
fn inventory(office: &Path) -> Vec<(String, i64)> {
    json(office, &[], &root(&["inventory", "--product", "CITY"]))
        .as_array()
        .expect("an array")
        .iter()
        .map(|c| {
            (
                c["state"].as_str().unwrap().to_owned(),
                c["count"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Every ledger account's balance, by code.
fn accounts(office: &Path) -> Vec<(String, i64)> {
    json(office, &[], &root(&["ledger", "accounts"]))
        .as_array()
        .expect("an array")
        .iter()
        .map(|a| {
            (
                a["code"].as_str().unwrap().to_owned(),
                a["balance_minor"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn account(office: &Path, code: &str) -> i64 {
    accounts(office)
        .into_iter()
        .find(|(c, _)| c == code)
        .unwrap_or_else(|| panic!("no account {code}"))
        .1
}

/// `office check`: must be clean; returns its report.
fn check_clean(office: &Path) -> Value {
    let c = json(office, &[], &root(&["check"]));
    assert_eq!(c["problems"].as_array().map(Vec::len), Some(0), "{c}");
    assert!(c["audit"]["broken"].is_null(), "{c}");
    c
}

/// The audit log's records, oldest first.
fn audit(office: &Path) -> Vec<Value> {
    json(office, &[], &root(&["audit", "show", "--limit", "100000"]))
        .as_array()
        .expect("an array")
        .clone()
}

/// `ledger card NUMBER`: the shadow account.
fn shadow(office: &Path, number: &str) -> Value {
    json(office, &[], &root(&["ledger", "card", number]))["card"].clone()
}

/// `iccard terminal balance|log --reader` (over PC/SC) or `--card` (an image), as JSON.
fn terminal(dir: &Path, what: &str, place: &[&str]) -> Value {
    let mut args = vec!["terminal", what];
    args.extend_from_slice(place);
    args.push("--json");
    let out = iccard_in(dir, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
}

fn reader_balance(dir: &Path) -> (String, i64) {
    let b = terminal(dir, "balance", &["--reader", CARD_READER]);
    (
        b["card_number"].as_str().expect("card number").to_owned(),
        b["balance_fen"].as_i64().expect("balance"),
    )
}

/// The load amounts in the card's own log, newest first, read over PC/SC.
fn reader_log_amounts(dir: &Path) -> Vec<i64> {
    terminal(dir, "log", &["--reader", CARD_READER])
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["amount_fen"].as_i64().unwrap())
        .collect()
}

/// SELECT of the purse application, then VERIFY with `pin` (BCD digits), over PC/SC with
/// `iccard apdu`; returns VERIFY's status word.
fn verify_pin(dir: &Path, pin: &str) -> String {
    let verify = format!("00200000{:02X}{pin}", pin.len() / 2);
    let out = iccard_in(
        dir,
        &[
            "apdu",
            "--reader",
            CARD_READER,
            "00A4040009A0000000038698070100",
            &verify,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "iccard apdu failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<&str> = text.lines().collect();
    assert_eq!(answers.len(), 2, "{text}");
    assert!(answers[0].ends_with("9000"), "SELECT: {text}");
    answers[1].to_uppercase()
}

/// Whether `number` is 20 digits ending in a correct Luhn check digit (ISO/IEC 7812-1: from
/// the right, every second digit of the payload doubled, 9 taken off a two-digit result).
fn luhn_ok(number: &str) -> bool {
    let digits: Vec<u32> = number.chars().filter_map(|c| c.to_digit(10)).collect();
    let Some((check, payload)) = digits.split_last() else {
        return false;
    };
    if digits.len() != number.len() || digits.len() != 20 {
        return false;
    }
    let sum: u32 = payload
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, d * 2) {
            (0, x) if x > 9 => x - 9,
            (0, x) => x,
            _ => d,
        })
        .sum();
    (10 - sum % 10) % 10 == *check
}

/// `office issue --reader` by ivy at RP-001, with a first recharge by rita when given.
fn issue_args(first_recharge: Option<&str>) -> Vec<&str> {
    let mut a = at_rp(
        "ivy",
        &[
            "issue",
            "--reader",
            CARD_READER,
            "--holder-name",
            HOLDER_NAME,
            "--holder-id",
            HOLDER_ID,
        ],
    );
    if let Some(amount) = first_recharge {
        a.extend(["--first-recharge", amount, "--recharge-operator", "rita"]);
    }
    a
}

fn recharge_args(amount: &str) -> Vec<&str> {
    at_rp(
        "rita",
        &["recharge", "--reader", CARD_READER, "--amount", amount],
    )
}

/// The INITIALIZE FOR LOAD command (P2 = 02, the electronic purse; key index 01) that carries
/// a load's amount and terminal id, as the served card logs it.
fn init_for_load(load: &Value) -> String {
    format!(
        "> 805000020B01{:08X}{}",
        load["amount_minor"].as_i64().expect("amount"),
        load["terminal_id"]
            .as_str()
            .expect("terminal id")
            .to_uppercase()
    )
}

/// After a card process was killed under a client, pcscd sends the slot one more power-off
/// a little later (within about half a second here); a card that connects to vpcd in that
/// time gets it as its first message and pcscd never reports it present. A throw-away copy of
/// `image` takes that power-off, as many times as it takes, before the test serves the card
/// again. Returns how many throw-away cards it took.
fn absorb_stray_power_off(dir: &Path, image: &Path) -> usize {
    let probe = dir.join("probe.card");
    std::fs::copy(image, &probe).expect("a copy of the card image");
    for attempt in 1..=5 {
        let log = dir.join(format!("probe-{attempt}.log"));
        let mut child = ip()
            .args(["netns", "exec", NETNS, iccard_bin(), "card", "serve"])
            .args(["--slot", "0", "--image", s(&probe), "--verbose"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("probe log"))
            .spawn()
            .expect("ip netns exec iccard card serve starts");
        let seen = wait_for(CARD_READER, true, Duration::from_secs(3)).is_some();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            wait_for(CARD_READER, false, Duration::from_secs(10)).is_some(),
            "the throw-away card stayed in {CARD_READER:?}"
        );
        if seen {
            return attempt;
        }
    }
    panic!("five cards in a row were not seen in {CARD_READER:?} after a card process was killed")
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn a_coded_card_is_issued_and_recharged_through_pcscd() {
    let _bench = pcsc();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let office = d.join("office");
    let images = office_with_cards(&office, &d.join("cards"), 100_000, 2);
    assert_eq!(inventory(&office), [("in_stock".to_owned(), 2)]);

    // The coded card is blank: no purse to read yet.
    let served = Served::start(&[&images[0]], &[], d.join("serve.log"));
    let out = iccard_in(
        d,
        &["terminal", "balance", "--reader", CARD_READER, "--json"],
    );
    assert!(!out.status.success(), "a blank card has no purse balance");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("6A82"), "{err}");
    assert_eq!(count(&served.log_text(), CREATE_FILE), 0);

    // Issuance through PC/SC: personalization, the accounts, the first recharge by rita.
    let r = json(&office, CLERK, &issue_args(Some("5000")));
    let number = r["card_number"].as_str().expect("card number").to_owned();
    assert!(number.starts_with(ISSUER), "{r}");
    assert!(luhn_ok(&number), "not a 20-digit Luhn number: {r}");
    let mut typo = number.clone().into_bytes();
    typo[19] = if typo[19] == b'9' { b'0' } else { typo[19] + 1 };
    assert!(!luhn_ok(std::str::from_utf8(&typo).unwrap()));
    assert_eq!(r["chip_serial"], "4943000000002000", "{r}");
    assert_eq!(r["card_type"], "registered", "{r}");
    assert_eq!(r["issued"]["product_code"], "CITY", "{r}");
    assert_eq!(r["issued"]["deposit_minor"], 2000, "{r}");
    assert_eq!(r["issued"]["fee_minor"], 500, "{r}");
    assert_eq!(r["issued"]["operator"], "ivy", "{r}");
    assert_eq!(r["issued"]["machine_number"], "RP-001", "{r}");
    let first = &r["first_recharge"];
    assert_eq!(first["card_number"], number.as_str(), "{r}");
    assert_eq!(first["card_type"], "CITY", "{r}");
    assert_eq!(first["amount_minor"], 5000, "{r}");
    assert_eq!(first["balance_before_minor"], 0, "{r}");
    assert_eq!(first["balance_after_minor"], 5000, "{r}");
    assert_eq!(first["operator"], "rita", "{r}");
    assert_eq!(first["machine_number"], "RP-001", "{r}");
    assert_eq!(first["tac_verified"], true, "{r}");
    assert!(first["tac"].as_str().is_some_and(|t| t.len() == 8), "{r}");
    let serial0 = first["online_serial"].as_i64().expect("online serial");
    assert_eq!(serial0, 0, "a new card's first load: {r}");
    // The personalization and the load really went to the served card: the files and keys
    // written, and INITIALIZE FOR LOAD carrying this amount and the recharge point's id.
    let log = served.log_text();
    assert!(count(&log, CREATE_FILE) >= 5, "{log}");
    assert!(count(&log, WRITE_KEY) >= 5, "{log}");
    assert_eq!(count(&log, CREDIT_FOR_LOAD), 1, "{log}");
    assert!(log.contains(&init_for_load(first)), "{log}");
    assert_eq!(
        inventory(&office),
        [("in_stock".to_owned(), 1), ("issued".to_owned(), 1)]
    );

    // Two more recharges at the counter.
    let mut balance = 5000;
    for (i, amount) in [2000i64, 3000].into_iter().enumerate() {
        let a = amount.to_string();
        let l = json(&office, CLERK, &recharge_args(&a));
        assert!(l["earlier"].is_null(), "{l}");
        let load = &l["load"];
        assert_eq!(load["card_number"], number.as_str(), "{l}");
        assert_eq!(load["card_type"], "CITY", "{l}");
        assert_eq!(load["amount_minor"], amount, "{l}");
        assert_eq!(load["balance_before_minor"], balance, "{l}");
        balance += amount;
        assert_eq!(load["balance_after_minor"], balance, "{l}");
        assert_eq!(load["online_serial"], serial0 + 1 + i as i64, "{l}");
        assert_eq!(load["operator"], "rita", "{l}");
        assert_eq!(load["machine_number"], "RP-001", "{l}");
        assert_eq!(load["tac_verified"], true, "{l}");
        assert_eq!(load["card"]["balance_minor"], balance, "{l}");
        assert_eq!(load["card"]["proven_balance_minor"], balance, "{l}");
        let log = served.log_text();
        assert_eq!(count(&log, CREDIT_FOR_LOAD), 2 + i, "{log}");
        assert!(log.contains(&init_for_load(load)), "{log}");
    }
    assert_eq!(balance, 10_000);

    // The card itself, over PC/SC: the number the office gave it, the balance, three loads.
    assert_eq!(reader_balance(d), (number.clone(), 10_000));
    assert_eq!(reader_log_amounts(d), [3000, 2000, 5000]);
    // The PIN given to `issue` (ICCARD_CARD_PIN) is the card's: VERIFY over PC/SC.
    assert_eq!(verify_pin(d, "123456"), "9000");
    let wrong = verify_pin(d, "654321");
    assert!(wrong.starts_with("63C"), "a wrong PIN answered {wrong}");
    assert_eq!(verify_pin(d, "123456"), "9000");
    drop(served);

    // What the card answered is what its image holds.
    let b = terminal(d, "balance", &["--card", s(&images[0])]);
    assert_eq!(b["balance_fen"], 10_000, "{b}");
    assert_eq!(b["card_number"], number.as_str(), "{b}");
    // The other card of the batch was not touched.
    let out = iccard_in(
        d,
        &["terminal", "balance", "--card", s(&images[1]), "--json"],
    );
    assert!(!out.status.success(), "the second card is still blank");

    // The books: the float holds the card's balance, the cash the deposit, fee and loads.
    let card = shadow(&office, &number);
    assert_eq!(card["balance_minor"], 10_000, "{card}");
    assert_eq!(card["proven_balance_minor"], 10_000, "{card}");
    assert_eq!(card["deposit_minor"], 2000, "{card}");
    assert_eq!(card["online_serial"], serial0 + 3, "{card}");
    assert_eq!(account(&office, "float"), 10_000);
    assert_eq!(account(&office, "cash:RP-001"), 10_000 + 2000 + 500);
    assert_eq!(account(&office, "deposits_held"), 2000);
    assert_eq!(account(&office, "card_fee_income"), 500);
    let pending = json(&office, &[], &root(&["pending"]));
    assert_eq!(pending.as_array().map(Vec::len), Some(0), "{pending}");
    let c = check_clean(&office);
    assert_eq!(c["cards"], 1, "{c}");
    assert_eq!(c["float_minor"], 10_000, "{c}");
    let v = json(&office, &[], &root(&["audit", "verify"]));
    assert!(v["broken"].is_null(), "{v}");
}

#[test]
fn refusals_through_pcscd_change_neither_card_nor_books() {
    let _bench = pcsc();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let office = d.join("office");
    let images = office_with_cards(&office, &d.join("cards"), 10_000, 1);
    let served = Served::start(&[&images[0]], &[], d.join("serve.log"));
    let r = json(&office, CLERK, &issue_args(Some("4000")));
    let number = r["card_number"].as_str().expect("card number").to_owned();
    assert_eq!(r["first_recharge"]["balance_after_minor"], 4000, "{r}");
    assert_eq!(reader_balance(d), (number.clone(), 4000));

    let books = accounts(&office);
    let card_before = shadow(&office, &number);
    let stock = inventory(&office);
    let loads_on_card = count(&served.log_text(), CREDIT_FOR_LOAD);
    assert_eq!(loads_on_card, 1);
    // What must hold after every refusal: the books, the shadow account, the inventory, the
    // card's balance and log as they were, and no load sent to the card.
    let unchanged = |what: &str| {
        assert_eq!(accounts(&office), books, "{what}: the ledger moved");
        assert_eq!(shadow(&office, &number), card_before, "{what}");
        assert_eq!(inventory(&office), stock, "{what}");
        assert_eq!(reader_balance(d), (number.clone(), 4000), "{what}");
        assert_eq!(reader_log_amounts(d), [4000], "{what}");
        assert_eq!(
            count(&served.log_text(), CREDIT_FOR_LOAD),
            loads_on_card,
            "{what}: a load reached the card"
        );
        let pending = json(&office, &[], &root(&["pending"]));
        assert_eq!(
            pending.as_array().map(Vec::len),
            Some(0),
            "{what}: {pending}"
        );
        check_clean(&office);
    };

    // The same card issued a second time through the reader.
    let err = fails(&office, CLERK, &issue_args(None), 2);
    assert!(err.contains("issued"), "{err}");
    unchanged("a second issuance");

    // A load that would take the card above its product's maximum balance (10,000).
    let before = audit(&office).len();
    let err = fails(&office, CLERK, &recharge_args("6001"), 1);
    assert!(
        err.contains("maximum balance") && err.contains("10001"),
        "{err}"
    );
    let refused: Vec<Value> = audit(&office)[before..]
        .iter()
        .filter(|a| a["outcome"] != "ok")
        .cloned()
        .collect();
    assert_eq!(refused.len(), 1, "one refusal audited: {refused:?}");
    assert_eq!(refused[0]["outcome"], "failed", "{refused:?}");
    assert_eq!(refused[0]["operator_login"], "rita", "{refused:?}");
    assert!(
        refused[0]["subject"].as_str().unwrap().contains(&number)
            && refused[0]["detail"]
                .as_str()
                .unwrap()
                .contains("maximum balance"),
        "{refused:?}"
    );
    unchanged("a load above the maximum balance");
    // Up to the maximum is fine; then one fen more is refused.
    let l = json(&office, CLERK, &recharge_args("6000"));
    assert_eq!(l["load"]["balance_after_minor"], 10_000, "{l}");
    assert_eq!(reader_balance(d), (number.clone(), 10_000));
    let err = fails(&office, CLERK, &recharge_args("1"), 1);
    assert!(err.contains("maximum balance"), "{err}");
    assert_eq!(reader_balance(d), (number.clone(), 10_000));
    assert_eq!(count(&served.log_text(), CREDIT_FOR_LOAD), 2);
    check_clean(&office);

    // The card on the loss list: a recharge through the reader is refused, nothing posted.
    let e = json(
        &office,
        CLERK,
        &at_rp(
            "ivy",
            &["loss", "report", &number, "--reason", "holder called"],
        ),
    );
    assert_eq!(e["application_serial"], number.as_str(), "{e}");
    let books = accounts(&office);
    let card_before = shadow(&office, &number);
    let audit_before = audit(&office).len();
    let err = fails(&office, CLERK, &recharge_args("100"), 1);
    assert!(err.contains("lost") && err.contains(&number), "{err}");
    assert_eq!(accounts(&office), books, "a refused load posted");
    assert_eq!(shadow(&office, &number), card_before);
    assert_eq!(reader_balance(d), (number.clone(), 10_000));
    assert_eq!(reader_log_amounts(d), [6000, 4000]);
    assert_eq!(count(&served.log_text(), CREDIT_FOR_LOAD), 2);
    let trail = audit(&office);
    assert!(
        trail[audit_before..]
            .iter()
            .any(|a| a["outcome"] == "failed"
                && a["subject"].as_str().unwrap().contains(&number)
                && a["detail"].as_str().unwrap().contains("lost")),
        "the refusal is audited: {:?}",
        &trail[audit_before..]
    );
    check_clean(&office);
    // Withdrawn from the list, the card loads again.
    json(
        &office,
        CLERK,
        &at_rp("ivy", &["loss", "withdraw", &number, "--reason", "found"]),
    );
    let err = fails(&office, CLERK, &recharge_args("1"), 1);
    assert!(err.contains("maximum balance"), "{err}");
    drop(served);
    check_clean(&office);
}

#[test]
fn a_lost_cards_balance_moves_onto_its_replacement_through_pcscd() {
    let _bench = pcsc();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let office = d.join("office");
    let images = office_with_cards(&office, &d.join("cards"), 100_000, 2);

    // The first card, issued with 6,000 on it, then lost.
    let served = Served::start(&[&images[0]], &[], d.join("serve-old.log"));
    let r = json(&office, CLERK, &issue_args(Some("6000")));
    let lost = r["card_number"].as_str().expect("card number").to_owned();
    assert_eq!(reader_balance(d), (lost.clone(), 6000));
    drop(served);
    // The replacement, issued empty through the reader.
    let served = Served::start(&[&images[1]], &[], d.join("serve-new.log"));
    let r = json(&office, CLERK, &issue_args(None));
    let fresh = r["card_number"].as_str().expect("card number").to_owned();
    assert_ne!(fresh, lost);
    assert!(r["first_recharge"].is_null(), "{r}");
    assert_eq!(reader_balance(d), (fresh.clone(), 0));
    json(
        &office,
        CLERK,
        &at_rp(
            "ivy",
            &["loss", "report", &lost, "--reason", "lost for good"],
        ),
    );
    let float = account(&office, "float");
    let cash = account(&office, "cash:RP-001");
    assert_eq!(float, 6000);

    let replace = at_rp(
        "rita",
        &["replace", "--lost", &lost, "--reader", CARD_READER],
    );
    // Inside the late-record window (7 days by default): refused, nothing moved.
    let w = json(&office, &[], &root(&["settings", "show"]));
    assert_eq!(w["late_record_window_days"], 7, "{w}");
    let err = fails(&office, CLERK, &replace, 1);
    assert!(err.contains("late-record window"), "{err}");
    assert_eq!(reader_balance(d), (fresh.clone(), 0));
    assert_eq!(count(&served.log_text(), CREDIT_FOR_LOAD), 0);
    assert_eq!(shadow(&office, &lost)["balance_minor"], 6000);

    // The window closed: the balance moves onto the card in the reader.
    let w = json(
        &office,
        &[],
        &root(&["settings", "late-record-window", "0"]),
    );
    assert_eq!(w["late_record_window_days"], 0, "{w}");
    let m = json(&office, CLERK, &replace);
    assert_eq!(m["lost_card"], lost.as_str(), "{m}");
    assert_eq!(m["new_card"], fresh.as_str(), "{m}");
    assert_eq!(m["amount_minor"], 6000, "{m}");
    let load = &m["load"];
    assert_eq!(load["card_number"], fresh.as_str(), "{m}");
    assert_eq!(load["balance_before_minor"], 0, "{m}");
    assert_eq!(load["balance_after_minor"], 6000, "{m}");
    assert_eq!(load["tac_verified"], true, "{m}");
    assert_eq!(load["operator"], "rita", "{m}");
    assert_eq!(count(&served.log_text(), CREDIT_FOR_LOAD), 1);
    assert_eq!(reader_balance(d), (fresh.clone(), 6000));
    assert_eq!(reader_log_amounts(d), [6000]);

    // No money entered: the float and the cash are as they were; the shares moved.
    assert_eq!(account(&office, "float"), float);
    assert_eq!(account(&office, "cash:RP-001"), cash);
    assert_eq!(shadow(&office, &lost)["balance_minor"], 0);
    assert_eq!(shadow(&office, &fresh)["balance_minor"], 6000);
    let st = json(&office, &[], &root(&["card", "status", &lost]));
    assert_eq!(st["status"], "replaced", "{st}");
    let st = json(&office, &[], &root(&["card", "status", &fresh]));
    assert_eq!(st["status"], "active", "{st}");

    // Twice is refused: the lost card is no longer lost but replaced.
    let err = fails(&office, CLERK, &replace, 1);
    assert!(err.contains("replaced"), "{err}");
    assert_eq!(reader_balance(d), (fresh.clone(), 6000));
    assert_eq!(count(&served.log_text(), CREDIT_FOR_LOAD), 1);
    drop(served);

    let b = terminal(d, "balance", &["--card", s(&images[1])]);
    assert_eq!(b["balance_fen"], 6000, "{b}");
    // The lost card's image still holds its 6,000: the office moved its share, not its chip.
    let b = terminal(d, "balance", &["--card", s(&images[0])]);
    assert_eq!(b["balance_fen"], 6000, "{b}");
    let c = check_clean(&office);
    assert_eq!(c["cards"], 2, "{c}");
    assert_eq!(c["float_minor"], 6000, "{c}");
}

#[test]
fn a_load_whose_card_process_is_killed_is_settled_exactly_once_through_pcscd() {
    let _bench = pcsc();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let office = d.join("office");
    let images = office_with_cards(&office, &d.join("cards"), 100_000, 1);
    let card = &images[0];
    let served = Served::start(&[card], &[], d.join("serve-issue.log"));
    let r = json(&office, CLERK, &issue_args(Some("1000")));
    let number = r["card_number"].as_str().expect("card number").to_owned();
    drop(served);
    let cash = account(&office, "cash:RP-001");

    // The card process dies right after it committed CREDIT FOR LOAD: the answer is lost.
    let mut served = Served::start(
        &[card],
        &["--kill-after", "80520000"],
        d.join("serve-kill-after.log"),
    );
    let err = fails(&office, CLERK, &recharge_args("2000"), 1);
    assert!(err.contains("was lost") && err.contains("pending"), "{err}");
    let status = served
        .wait_exit(Duration::from_secs(10))
        .expect("the card process killed itself");
    assert_eq!(status.signal(), Some(9), "{status:?}");
    let pending = json(&office, &[], &root(&["pending"]));
    let rows = pending.as_array().expect("pending loads");
    assert_eq!(rows.len(), 1, "{pending}");
    assert_eq!(rows[0]["application_serial"], number.as_str(), "{pending}");
    assert_eq!(rows[0]["amount_minor"], 2000, "{pending}");
    assert_eq!(rows[0]["online_serial"], 1, "{pending}");
    // Not posted yet: the books wait for the card.
    assert_eq!(account(&office, "float"), 1000);
    assert_eq!(account(&office, "cash:RP-001"), cash);
    drop(served);
    absorb_stray_power_off(d, card);

    // The card back in the reader: its own serial says the load happened; posted once.
    let served = Served::start(&[card], &[], d.join("serve-settle.log"));
    let s1 = json(
        &office,
        CLERK,
        &at_rp("rita", &["recharge", "--reader", CARD_READER, "--settle"]),
    );
    assert_eq!(s1["result"], "posted", "{s1}");
    assert_eq!(s1["load"]["amount_minor"], 2000, "{s1}");
    assert_eq!(s1["load"]["balance_after_minor"], 3000, "{s1}");
    assert_eq!(s1["load"]["online_serial"], 1, "{s1}");
    assert_eq!(s1["load"]["tac_verified"], true, "{s1}");
    assert_eq!(s1["load"]["recovery"], "completed_earlier", "{s1}");
    assert_eq!(
        count(&served.log_text(), CREDIT_FOR_LOAD),
        0,
        "nothing was sent again"
    );
    // Settling again finds nothing.
    let again = json(
        &office,
        CLERK,
        &at_rp("rita", &["recharge", "--reader", CARD_READER, "--settle"]),
    );
    assert!(again.is_null(), "{again}");
    assert_eq!(reader_balance(d), (number.clone(), 3000));
    assert_eq!(account(&office, "float"), 3000);
    assert_eq!(account(&office, "cash:RP-001"), cash + 2000);
    check_clean(&office);
    drop(served);

    // The card process dies as CREDIT FOR LOAD arrives, before it ran: the next recharge
    // finds the load never happened, cancels it (the cash goes back), and loads anew.
    let mut served = Served::start(
        &[card],
        &["--kill-before", "80520000"],
        d.join("serve-kill-before.log"),
    );
    fails(&office, CLERK, &recharge_args("500"), 1);
    let status = served
        .wait_exit(Duration::from_secs(10))
        .expect("the card process killed itself");
    assert_eq!(status.signal(), Some(9), "{status:?}");
    let pending = json(&office, &[], &root(&["pending"]));
    assert_eq!(pending.as_array().map(Vec::len), Some(1), "{pending}");
    drop(served);
    absorb_stray_power_off(d, card);
    let served = Served::start(&[card], &[], d.join("serve-next.log"));
    let l = json(&office, CLERK, &recharge_args("700"));
    assert_eq!(l["earlier"]["result"], "cancelled", "{l}");
    assert_eq!(l["earlier"]["amount_minor"], 500, "{l}");
    assert_eq!(l["earlier"]["online_serial"], 2, "{l}");
    assert_eq!(l["load"]["amount_minor"], 700, "{l}");
    assert_eq!(l["load"]["balance_before_minor"], 3000, "{l}");
    assert_eq!(l["load"]["balance_after_minor"], 3700, "{l}");
    assert_eq!(l["load"]["online_serial"], 2, "{l}");
    assert_eq!(l["load"]["tac_verified"], true, "{l}");
    assert_eq!(count(&served.log_text(), CREDIT_FOR_LOAD), 1);
    // The card's own log: each load exactly once, the cancelled one never.
    assert_eq!(reader_log_amounts(d), [700, 2000, 1000]);
    assert_eq!(reader_balance(d), (number.clone(), 3700));
    drop(served);
    let pending = json(&office, &[], &root(&["pending"]));
    assert_eq!(pending.as_array().map(Vec::len), Some(0), "{pending}");
    assert_eq!(account(&office, "float"), 3700);
    assert_eq!(account(&office, "cash:RP-001"), cash + 2000 + 700);
    let c = check_clean(&office);
    assert_eq!(c["float_minor"], 3700, "{c}");
    let b = terminal(d, "balance", &["--card", s(card)]);
    assert_eq!(b["balance_fen"], 3700, "{b}");
}

/// The answers of `iccard apdu --reader` to `apdus`, one status word (or data ‖ SW) each.
fn reader_apdus(dir: &Path, apdus: &[&str]) -> Vec<String> {
    let mut args = vec!["apdu", "--reader", CARD_READER];
    args.extend_from_slice(apdus);
    let out = iccard_in(dir, &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "iccard apdu failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(|l| l.trim().to_uppercase()).collect()
}

#[test]
fn a_card_is_returned_unloaded_and_erased_through_pcscd() {
    let _bench = pcsc();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let office = d.join("office");
    let images = office_with_cards(&office, &d.join("cards"), 100_000, 1);
    let served = Served::start(&[&images[0]], &[], d.join("serve.log"));
    let r = json(&office, CLERK, &issue_args(Some("4000")));
    let number = r["card_number"].as_str().expect("card number").to_owned();
    let deposit = r["issued"]["deposit_minor"].as_i64().expect("deposit");
    let cash = account(&office, "cash:RP-001");

    // The quote: read from the card through the reader, nothing moves.
    let quote = json(
        &office,
        CLERK,
        &at_rp("ivy", &["return", "quote", "--reader", CARD_READER]),
    );
    assert_eq!(quote["card_number"], number.as_str(), "{quote}");
    assert_eq!(quote["card_balance_minor"], 4000, "{quote}");
    let refund = quote["refund_minor"].as_i64().expect("refund");
    assert_eq!(refund, 4000 + deposit, "{quote}");
    assert_eq!(reader_balance(d), (number.clone(), 4000));

    let accepted = refund.to_string();
    let confirm = at_rp(
        "ivy",
        &[
            "return",
            "confirm",
            "--reader",
            CARD_READER,
            "--disposition",
            "refurbish",
            "--accept-refund",
            &accepted,
        ],
    );
    let done = json(&office, CLERK, &confirm);
    assert_eq!(done["refund_minor"], refund, "{done}");
    assert_eq!(done["unloaded_minor"], 4000, "{done}");
    assert_eq!(done["tac_verified"], true, "{done}");
    assert_eq!(done["inventory_state"], "refurbished", "{done}");
    // DEBIT FOR UNLOAD reached the served card, then the purse was blocked and the card erased.
    let log = served.log_text();
    assert_eq!(count(&log, "> 80540300"), 1, "one DEBIT FOR UNLOAD");
    assert_eq!(count(&log, "> 841E0001"), 1, "APPLICATION BLOCK for good");
    assert_eq!(count(&log, "> 800E0000"), 1, "ERASE DF at the MF");
    // Over PC/SC: no purse any more, the chip data still answers.
    let answers = reader_apdus(d, &["00A4040009A0000000038698070100", "80CA9F7F00"]);
    assert_eq!(answers[0], "6A82", "{answers:?}");
    assert!(answers[1].ends_with("9000"), "{answers:?}");
    // The books: the refund left the recharge point's cash; the card is returned.
    assert_eq!(cash - account(&office, "cash:RP-001"), refund);
    assert_eq!(account(&office, "float"), 0);
    assert_eq!(account(&office, "deposits_held"), 0);
    let st = json(&office, &[], &root(&["card", "status", &number]));
    assert_eq!(st["status"], "returned", "{st}");
    drop(served);

    // Coded again from the image at the console, tested, back in stock; and issued anew.
    let back = json(
        &office,
        &[],
        &root(&["return", "recode", "--card", s(&images[0])]),
    );
    assert_eq!(back["state"], "in_stock", "{back}");
    assert_eq!(inventory(&office), [("in_stock".to_owned(), 1)]);
    let served = Served::start(&[&images[0]], &[], d.join("serve-again.log"));
    let again = json(&office, CLERK, &issue_args(None));
    assert_ne!(again["card_number"], number.as_str(), "{again}");
    assert_eq!(reader_balance(d).1, 0);
    drop(served);
    check_clean(&office);
}
