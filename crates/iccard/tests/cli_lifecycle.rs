//! The card life cycle through `iccard office`: a development office, a product, a chip lot,
//! a production order and a batch run into card images (every stage recorded, the cards in
//! stock), issuance at a recharge point with the first recharge, another recharge, the loss list
//! (a lost card refused), a replacement, the return of a card (quote, confirm, recode), and the
//! refusals with their exit codes (a typo in a card number, a
//! clerk running production, a registered card without a holder, a card issued twice) that
//! change nothing. On SQLite, and on PostgreSQL when `ICCARD_TEST_POSTGRES_URL` is set.

use std::path::Path;

use crate::office_support::{fails, json, ok, CLERK_PW};

fn root<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--operator", "root"];
    a.extend_from_slice(args);
    a
}

/// `args` as `login` at `machine`, with the clerks' password.
fn at<'a>(login: &'a str, machine: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--operator", login, "--machine", machine];
    a.extend_from_slice(args);
    a
}

fn clerk_env<'a>(env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    [env, &[("ICCARD_OPERATOR_PASSWORD", CLERK_PW)]].concat()
}

/// The counts of `inventory --product CITY` as (state, count).
fn counts(office: &Path, env: &[(&str, &str)]) -> Vec<(String, i64)> {
    json(office, env, &root(&["inventory", "--product", "CITY"]))
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

fn init(office: &Path, env: &[(&str, &str)], database: bool) {
    let mut args = vec![
        "init",
        "--issuer-number",
        "31000001",
        "--development",
        "--dev-keys",
        "--admin",
        "root",
    ];
    if database {
        args.extend(["--database-env", "ICCARD_TEST_OFFICE_DB"]);
    }
    let v = json(office, env, &args);
    assert_eq!(v["mode"], "development");
}

/// The whole life cycle on one office.
fn scenario(office: &Path, images: &Path, env: &[(&str, &str)]) {
    // A product.
    let p = json(
        office,
        env,
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
            "100000",
            "--offline-limit",
            "20000",
            "--offline-daily-limit",
            "50000",
            "--alg",
            "3des",
            "--app",
            "purse:load,purchase",
        ]),
    );
    assert_eq!(p["current_version"], 1, "{p}");
    assert_eq!(p["profile"]["card_type"], "registered", "{p}");
    // Missing options of a new product are named.
    let err = fails(
        office,
        env,
        &root(&["product", "create", "BUS", "--name", "Bus", "--fee", "0"]),
        2,
    );
    assert!(err.contains("--deposit") && err.contains("--app"), "{err}");
    // A revision keeps what is not given; the history has both versions.
    let p = json(
        office,
        env,
        &root(&["product", "revise", "CITY", "--fee", "600"]),
    );
    assert_eq!(p["current_version"], 2, "{p}");
    assert_eq!(p["profile"]["fee_minor"], 600, "{p}");
    assert_eq!(p["profile"]["deposit_minor"], 2000, "{p}");
    let h = json(office, env, &root(&["product", "history", "CITY"]));
    assert_eq!(h.as_array().unwrap().len(), 2, "{h}");
    let v1 = json(
        office,
        env,
        &root(&["product", "show", "CITY", "--version", "1"]),
    );
    assert_eq!(v1["profile"]["fee_minor"], 500, "{v1}");
    let list = json(office, env, &root(&["product", "list"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // A chip lot, an order, a batch run into card images.
    let lot = json(
        office,
        env,
        &root(&[
            "lot",
            "receive",
            "LOT-1",
            "--maker",
            "Icmaker",
            "--model",
            "IC-32K",
            "--quantity",
            "10",
            "--first-serial",
            "4943000000001000",
            "--transport-key-version",
            "1",
        ]),
    );
    assert_eq!(lot["last_chip_serial"], "4943000000001009", "{lot}");
    let lots = json(office, env, &root(&["lot", "list"]));
    assert_eq!(lots.as_array().unwrap().len(), 1);
    let order = json(
        office,
        env,
        &root(&[
            "batch",
            "order",
            "--product",
            "CITY",
            "--lot",
            "LOT-1",
            "--quantity",
            "4",
        ]),
    );
    let order_id = order["id"].as_i64().unwrap().to_string();

    // Operators and a recharge point, then an issuance clerk may not run production.
    json(
        office,
        env,
        &root(&["operator", "add", "ivy", "--role", "issuance-clerk"]),
    );
    json(
        office,
        env,
        &root(&["operator", "add", "rita", "--role", "recharge-clerk"]),
    );
    json(
        office,
        env,
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
    let clerk = clerk_env(env);
    let dir = images.to_str().unwrap();
    let err = fails(
        office,
        &clerk,
        &[
            "--operator",
            "ivy",
            "batch",
            "run",
            "--order",
            &order_id,
            "--quantity",
            "4",
            "--dir",
            dir,
        ],
        1,
    );
    assert!(err.contains("ivy") && err.contains("may not"), "{err}");
    assert!(
        std::fs::read_dir(images)
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "a refused batch run coded cards"
    );

    let run = json(
        office,
        env,
        &root(&[
            "batch",
            "run",
            "--order",
            &order_id,
            "--quantity",
            "4",
            "--dir",
            dir,
            "--production-date",
            "20260101",
        ]),
    );
    assert_eq!(run["in_stock"], 4, "{run}");
    let images_made: Vec<String> = (0..4)
        .map(|i| format!("{}/494300000000100{i}.card", dir))
        .collect();
    for img in &images_made {
        assert!(Path::new(img).exists(), "{img} was not made");
    }
    let batch_id = run["batch"]["id"].as_i64().unwrap().to_string();
    let show = json(office, env, &root(&["batch", "show", &batch_id]));
    let stages: Vec<&str> = show["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
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
        ]
    );
    for s in show["stages"].as_array().unwrap() {
        assert_eq!(s["operator_login"], "root", "{s}");
        assert_eq!(s["machine_number"], "C0001", "{s}");
        assert_eq!(
            (s["count_in"].as_i64(), s["count_out"].as_i64()),
            (Some(4), Some(4))
        );
    }
    assert_eq!(show["cards"].as_array().unwrap().len(), 4);
    assert_eq!(counts(office, env), [("in_stock".to_owned(), 4)]);
    let text = ok(office, env, &root(&["batch", "show", &batch_id]));
    assert!(
        text.contains("testing") && text.contains("in_stock"),
        "{text}"
    );

    // Inventory: allocate two to ivy, return one, look at a card.
    let alloc = json(
        office,
        env,
        &root(&[
            "inventory",
            "allocate",
            "--product",
            "CITY",
            "--quantity",
            "2",
            "--to-operator",
            "ivy",
        ]),
    );
    assert_eq!(alloc.as_array().unwrap().len(), 2, "{alloc}");
    let back = json(
        office,
        env,
        &root(&["inventory", "return", "4943000000001001"]),
    );
    assert_eq!(back[0]["state"], "in_stock", "{back}");
    let card = json(
        office,
        env,
        &root(&["inventory", "card", "4943000000001000"]),
    );
    assert_eq!(card["card"]["state"], "allocated", "{card}");
    assert!(card["history"].as_array().unwrap().len() >= 3, "{card}");

    // A registered product issued without a holder: refused, nothing issued.
    let before = counts(office, env);
    let err = fails(
        office,
        &clerk,
        &at("ivy", "RP-001", &["issue", "--card", &images_made[0]]),
        2,
    );
    assert!(err.contains("holder"), "{err}");
    assert_eq!(counts(office, env), before);

    // Issue with the holder and the first recharge done by rita.
    let r = json(
        office,
        &clerk,
        &at(
            "ivy",
            "RP-001",
            &[
                "issue",
                "--card",
                &images_made[0],
                "--holder-name",
                "Li Wei",
                "--holder-id",
                "110101199003070011",
                "--first-recharge",
                "5000",
                "--recharge-operator",
                "rita",
            ],
        ),
    );
    let number = r["card_number"].as_str().unwrap().to_owned();
    assert_eq!(number.len(), 20, "{r}");
    assert!(number.bytes().all(|b| b.is_ascii_digit()), "{r}");
    assert!(number.starts_with("31000001"), "{r}");
    assert_eq!(r["card_type"], "registered", "{r}");
    assert_eq!(r["issued"]["fee_minor"], 600, "{r}");
    assert_eq!(r["first_recharge"]["amount_minor"], 5000, "{r}");
    assert_eq!(r["first_recharge"]["card_number"], number.as_str(), "{r}");
    assert_eq!(r["first_recharge"]["operator"], "rita", "{r}");
    assert_eq!(r["first_recharge"]["machine_number"], "RP-001", "{r}");
    assert_eq!(r["first_recharge"]["tac_verified"], true, "{r}");
    assert_eq!(
        counts(office, env),
        [("in_stock".to_owned(), 3), ("issued".to_owned(), 1)]
    );

    // The same card again: refused, the inventory unchanged.
    let before = counts(office, env);
    let err = fails(
        office,
        &clerk,
        &at(
            "ivy",
            "RP-001",
            &[
                "issue",
                "--card",
                &images_made[0],
                "--holder-name",
                "Li Wei",
                "--holder-id",
                "110101199003070011",
            ],
        ),
        2,
    );
    assert!(err.contains("issued"), "{err}");
    assert_eq!(counts(office, env), before);

    // The first recharge by an issuance clerk alone: refused before the card is touched.
    let err = fails(
        office,
        &clerk,
        &at(
            "ivy",
            "RP-001",
            &[
                "issue",
                "--card",
                &images_made[1],
                "--holder-name",
                "Zhang Min",
                "--holder-id",
                "310101198512120022",
                "--first-recharge",
                "100",
            ],
        ),
        1,
    );
    assert!(err.contains("--recharge-operator"), "{err}");
    assert_eq!(counts(office, env), before);

    // Another recharge.
    let l = json(
        office,
        &clerk,
        &at(
            "rita",
            "RP-001",
            &["recharge", "--card", &images_made[0], "--amount", "2000"],
        ),
    );
    assert_eq!(l["load"]["balance_after_minor"], 7000, "{l}");

    // A typo in a card number: exit 2, the check digit named.
    let mut typo = number.clone().into_bytes();
    typo[19] = if typo[19] == b'9' { b'0' } else { typo[19] + 1 };
    let typo = String::from_utf8(typo).unwrap();
    let err = fails(
        office,
        &clerk,
        &at("ivy", "RP-001", &["loss", "report", &typo, "--reason", "x"]),
        2,
    );
    assert!(err.contains("check digit"), "{err}");
    let err = fails(
        office,
        &clerk,
        &at("ivy", "RP-001", &["card", "status", "3100000100"]),
        2,
    );
    assert!(err.contains("20 digits"), "{err}");

    // Loss: the card on the list, a recharge refused, then withdrawn.
    let st = json(office, env, &root(&["card", "status", &number]));
    assert_eq!(st["status"], "active", "{st}");
    let e = json(
        office,
        &clerk,
        &at(
            "ivy",
            "RP-001",
            &["loss", "report", &number, "--reason", "holder called"],
        ),
    );
    let version = e["version"].as_i64().unwrap();
    let d = json(office, env, &root(&["loss", "list", "--since", "0"]));
    assert_eq!(d["from_version"], 0, "{d}");
    assert_eq!(d["to_version"], version, "{d}");
    assert!(
        d["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["application_serial"] == number.as_str() && c["action"] == "add"),
        "{d}"
    );
    let st = json(office, env, &root(&["card", "status", &number]));
    assert_eq!(st["status"], "lost", "{st}");
    fails(
        office,
        &clerk,
        &at(
            "rita",
            "RP-001",
            &["recharge", "--card", &images_made[0], "--amount", "1000"],
        ),
        1,
    );
    json(
        office,
        &clerk,
        &at(
            "ivy",
            "RP-001",
            &["loss", "withdraw", &number, "--reason", "found again"],
        ),
    );
    let d = json(
        office,
        env,
        &root(&["loss", "list", "--since", &version.to_string()]),
    );
    assert_eq!(d["changes"][0]["action"], "remove", "{d}");
    let st = json(office, env, &root(&["card", "status", &number]));
    assert_eq!(st["status"], "active", "{st}");

    // Lost for good: a replacement card, its balance moved after the late-record window.
    let fresh = json(
        office,
        &clerk,
        &at(
            "ivy",
            "RP-001",
            &[
                "issue",
                "--card",
                &images_made[1],
                "--holder-name",
                "Li Wei",
                "--holder-id",
                "110101199003070011",
            ],
        ),
    );
    let fresh_number = fresh["card_number"].as_str().unwrap().to_owned();
    json(
        office,
        &clerk,
        &at(
            "ivy",
            "RP-001",
            &["loss", "report", &number, "--reason", "lost for good"],
        ),
    );
    let replace = at(
        "rita",
        "RP-001",
        &["replace", "--lost", &number, "--card", &images_made[1]],
    );
    let err = fails(office, &clerk, &replace, 1);
    assert!(err.contains("late-record window"), "{err}");
    let w = json(office, env, &root(&["settings", "late-record-window", "0"]));
    assert_eq!(w["late_record_window_days"], 0, "{w}");
    let moved = json(office, &clerk, &replace);
    assert_eq!(moved["amount_minor"], 7000, "{moved}");
    assert_eq!(moved["new_card"], fresh_number.as_str(), "{moved}");
    let st = json(office, env, &root(&["card", "status", &number]));
    assert_eq!(st["status"], "replaced", "{st}");

    // Expiry: nothing before today; far in the future the one active card (the replacement) expires.
    let none = json(
        office,
        env,
        &root(&["card", "expire", "--date", "20200101"]),
    );
    assert_eq!(none["expired"].as_array().unwrap().len(), 0, "{none}");
    fails(
        office,
        &clerk,
        &at("ivy", "RP-001", &["card", "expire", "--date", "29990101"]),
        1,
    );
    let run = json(
        office,
        env,
        &root(&["card", "expire", "--date", "29990101"]),
    );
    let expired = run["expired"].as_array().unwrap();
    assert_eq!(expired.len(), 1, "{run}");
    assert_eq!(expired[0]["card_number"], fresh_number.as_str(), "{run}");
    let listed = json(office, env, &root(&["card", "expired"]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let st = json(office, env, &root(&["card", "status", &fresh_number]));
    assert_eq!(st["status"], "expired", "{st}");
    // An expired card takes no load, but its holder still gets the money back below.

    // The replacement card comes back: the quote first, then the return at that figure.
    let fee = json(office, env, &root(&["settings", "return-fee", "150"]));
    assert_eq!(fee["return_fee_minor"], 150, "{fee}");
    let quote_args = at(
        "ivy",
        "RP-001",
        &["return", "quote", "--card", &images_made[1]],
    );
    let q = json(office, &clerk, &quote_args);
    assert_eq!(q["card_balance_minor"], 7000, "{q}");
    assert_eq!(q["deposit_refund_minor"], q["deposit_held_minor"], "{q}");
    assert_eq!(q["fee_minor"], 150, "{q}");
    let refund = q["refund_minor"].as_i64().unwrap();
    assert_eq!(
        refund,
        7000 + q["deposit_held_minor"].as_i64().unwrap() - 150,
        "{q}"
    );
    let confirm = |accept: &str| {
        at(
            "ivy",
            "RP-001",
            &[
                "return",
                "confirm",
                "--card",
                &images_made[1],
                "--disposition",
                "refurbish",
                "--accept-refund",
                accept,
            ],
        )
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<String>>()
    };
    let wrong = confirm(&(refund + 1).to_string());
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let err = fails(office, &clerk, &wrong, 1);
    assert!(err.contains("quoted"), "{err}");
    // A recharge clerk does not take cards back.
    fails(
        office,
        &clerk,
        &at(
            "rita",
            "RP-001",
            &["return", "quote", "--card", &images_made[1]],
        ),
        1,
    );
    let right = confirm(&refund.to_string());
    let right: Vec<&str> = right.iter().map(String::as_str).collect();
    let r = json(office, &clerk, &right);
    assert_eq!(r["refund_minor"], refund, "{r}");
    assert_eq!(r["unloaded_minor"], 7000, "{r}");
    assert_eq!(r["tac_verified"], true, "{r}");
    assert_eq!(r["inventory_state"], "refurbished", "{r}");
    let st = json(office, env, &root(&["card", "status", &fresh_number]));
    assert_eq!(st["status"], "returned", "{st}");
    let open = json(office, env, &root(&["return", "list"]));
    assert_eq!(open.as_array().unwrap().len(), 0, "{open}");
    // Coded again at the console, tested, back in stock.
    let back = json(
        office,
        env,
        &root(&["return", "recode", "--card", &images_made[1]]),
    );
    assert_eq!(back["state"], "in_stock", "{back}");
    // A card that is not refurbished is not coded again.
    fails(
        office,
        env,
        &root(&["return", "recode", "--card", &images_made[1]]),
        1,
    );

    // The books are clean.
    let c = json(office, env, &root(&["check"]));
    assert_eq!(c["problems"].as_array().unwrap().len(), 0, "{c}");
    assert_eq!(c["cards"], 2, "{c}");
}

#[test]
fn life_cycle_cli_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let office = dir.path().join("office");
    init(&office, &[], false);
    scenario(&office, &dir.path().join("cards"), &[]);
}

#[test]
fn life_cycle_cli_on_postgres() {
    let Ok(url) = std::env::var("ICCARD_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("ICCARD_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "ICCARD_TEST_REQUIRE_POSTGRES=1 but ICCARD_TEST_POSTGRES_URL is unset"
        );
        eprintln!("skipped: ICCARD_TEST_POSTGRES_URL is unset (scripts/test sets it)");
        return;
    };
    let name = format!("iccard_life_{}", std::process::id());
    let base = url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    let db_url = create_database(&url, &name, &base);
    let dir = tempfile::tempdir().unwrap();
    let office = dir.path().join("office");
    let env = [("ICCARD_TEST_OFFICE_DB", db_url.as_str())];
    init(&office, &env, true);
    scenario(&office, &dir.path().join("cards"), &env);
}

fn create_database(url: &str, name: &str, base: &str) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(url)
                .await
                .expect("the test PostgreSQL answers");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut c)
                .await
                .unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        });
    format!("{base}/{name}")
}

#[test]
fn anonymous_cards_are_issued_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let office = dir.path().join("office");
    let images = dir.path().join("cards");
    init(&office, &[], false);
    let env: &[(&str, &str)] = &[];
    json(
        &office,
        env,
        &root(&[
            "product",
            "create",
            "TRANSIT",
            "--name",
            "Transit card",
            "--type",
            "anonymous",
            "--deposit",
            "1000",
            "--fee",
            "0",
            "--validity-months",
            "24",
            "--max-balance",
            "50000",
            "--offline-limit",
            "5000",
            "--offline-daily-limit",
            "20000",
            "--alg",
            "3des",
            "--app",
            "purse:load,purchase",
        ]),
    );
    json(
        &office,
        env,
        &root(&[
            "lot",
            "receive",
            "LOT-T",
            "--maker",
            "Icmaker",
            "--model",
            "IC-32K",
            "--quantity",
            "3",
            "--first-serial",
            "4943000000009000",
            "--transport-key-version",
            "1",
        ]),
    );
    let order = json(
        &office,
        env,
        &root(&[
            "batch",
            "order",
            "--product",
            "TRANSIT",
            "--lot",
            "LOT-T",
            "--quantity",
            "3",
        ]),
    );
    let order_id = order["id"].as_i64().unwrap().to_string();
    json(
        &office,
        env,
        &root(&["operator", "add", "ivy", "--role", "issuance-clerk"]),
    );
    json(
        &office,
        env,
        &root(&["operator", "add", "rita", "--role", "recharge-clerk"]),
    );
    json(
        &office,
        env,
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
    let dir_arg = images.to_str().unwrap();
    let run = json(
        &office,
        env,
        &root(&[
            "batch",
            "run",
            "--order",
            &order_id,
            "--quantity",
            "3",
            "--dir",
            dir_arg,
        ]),
    );
    assert_eq!(run["in_stock"], 3, "{run}");
    let clerk = clerk_env(env);
    // More than the stock: refused before anything is issued.
    let err = fails(
        &office,
        &clerk,
        &at(
            "ivy",
            "RP-001",
            &["issue", "--batch-dir", dir_arg, "--count", "4"],
        ),
        1,
    );
    assert!(err.contains("fewer than --count 4"), "{err}");
    let issued = json(
        &office,
        &clerk,
        &at(
            "ivy",
            "RP-001",
            &[
                "issue",
                "--batch-dir",
                dir_arg,
                "--count",
                "2",
                "--first-recharge",
                "2000",
                "--recharge-operator",
                "rita",
            ],
        ),
    );
    let issued = issued.as_array().expect("one report per card");
    assert_eq!(issued.len(), 2);
    let chips: Vec<&str> = issued
        .iter()
        .map(|r| r["chip_serial"].as_str().unwrap())
        .collect();
    assert_eq!(
        chips,
        ["4943000000009000", "4943000000009001"],
        "chip-serial order"
    );
    for r in issued {
        assert_eq!(r["card_type"], "anonymous", "{r}");
        assert_eq!(r["first_recharge"]["amount_minor"], 2000, "{r}");
        assert_eq!(r["first_recharge"]["tac_verified"], true, "{r}");
    }
    let inv = json(&office, env, &root(&["inventory", "--product", "TRANSIT"]));
    let count_of = |state: &str| {
        inv.as_array()
            .unwrap()
            .iter()
            .find(|c| c["state"] == state)
            .map(|c| c["count"].as_i64().unwrap())
            .unwrap_or(0)
    };
    assert_eq!((count_of("issued"), count_of("in_stock")), (2, 1), "{inv}");
    let c = json(&office, env, &root(&["check"]));
    assert_eq!(c["problems"].as_array().unwrap().len(), 0, "{c}");
}
