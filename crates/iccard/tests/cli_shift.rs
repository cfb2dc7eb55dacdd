//! `iccard office shift` end to end through the binary: a recharge clerk opens a shift with the
//! drawer counted in yuan, a second shift and another clerk's close are refused (exit 1), bad
//! amounts are usage errors (exit 2), the close comes up short and the books follow (`check`
//! clean, the over/short account), an administrator closes with a reason, the day's list, the
//! `required` setting, text and `--json`. On SQLite, and on PostgreSQL when
//! `ICCARD_TEST_POSTGRES_URL` is set.

use std::path::Path;

use serde_json::Value;

use crate::office_support::{fails, json, ok, CLERK_PW};

fn root<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--operator", "root"];
    a.extend_from_slice(args);
    a
}

/// `args` as `login` at `machine`.
fn at<'a>(login: &'a str, machine: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--operator", login, "--machine", machine];
    a.extend_from_slice(args);
    a
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

fn audit_actions(office: &Path, env: &[(&str, &str)]) -> Vec<(String, String)> {
    json(office, env, &root(&["audit", "show", "--limit", "100000"]))
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn balance(accounts: &Value, code: &str) -> i64 {
    accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["code"] == code)
        .unwrap_or_else(|| panic!("account {code} in {accounts}"))["balance_minor"]
        .as_i64()
        .unwrap()
}

fn scenario(office: &Path, env: &[(&str, &str)]) {
    let clerk: Vec<(&str, &str)> = [env, &[("ICCARD_OPERATOR_PASSWORD", CLERK_PW)]].concat();
    let new_pw = [env, &[("ICCARD_NEW_OPERATOR_PASSWORD", CLERK_PW)]].concat();
    for (login, role) in [
        ("rita", "recharge-clerk"),
        ("ivan", "issuance-clerk"),
        ("audrey", "auditor"),
    ] {
        json(
            office,
            &new_pw,
            &root(&["operator", "add", login, "--role", role]),
        );
    }
    json(
        office,
        env,
        &root(&["branch", "add", "NORTH", "--name", "North gate"]),
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
            "NORTH",
        ]),
    );

    // Nothing open yet; bad amounts are usage errors and open nothing.
    fails(office, &clerk, &at("rita", "RP-001", &["shift", "show"]), 1);
    for bad in ["1.234", "abc", "-5", "1,00"] {
        fails(
            office,
            &clerk,
            &at("rita", "RP-001", &["shift", "open", "--cash", bad]),
            2,
        );
    }
    // An auditor keeps no drawer.
    let err = fails(
        office,
        &clerk,
        &["--operator", "audrey", "shift", "open", "--cash", "1"],
        1,
    );
    assert!(err.contains("open_shift"), "{err}");

    let sh = json(
        office,
        &clerk,
        &at("rita", "RP-001", &["shift", "open", "--cash", "100.00"]),
    );
    assert_eq!(sh["state"], "open", "{sh}");
    assert_eq!(sh["opening_cash_minor"], 10_000, "{sh}");
    assert_eq!(sh["machine_number"], "RP-001");
    let id = sh["id"].as_i64().unwrap();
    let id_text = id.to_string();

    // A second shift: refused (exit 1), for rita and for another clerk at that machine.
    let err = fails(
        office,
        &clerk,
        &at("rita", "RP-001", &["shift", "open", "--cash", "5"]),
        1,
    );
    assert!(err.contains("RP-001"), "{err}");
    fails(
        office,
        &clerk,
        &at("ivan", "RP-001", &["shift", "open", "--cash", "5"]),
        1,
    );
    // Another clerk may not close rita's shift; an administrator needs a reason.
    let err = fails(
        office,
        &clerk,
        &at(
            "ivan",
            "RP-001",
            &["shift", "close", &id_text, "--counted", "100"],
        ),
        1,
    );
    assert!(err.contains("close_shift"), "{err}");
    fails(
        office,
        env,
        &root(&["shift", "close", &id_text, "--counted", "100"]),
        2,
    );

    let r = json(office, &clerk, &at("rita", "RP-001", &["shift", "show"]));
    assert_eq!(r["shift"]["id"], id, "{r}");
    assert_eq!(r["expected_cash_minor"], 10_000, "{r}");
    assert_eq!(r["shift"]["counted_cash_minor"], Value::Null, "{r}");

    // Rita closes her own, 0.50 short.
    let r = json(
        office,
        &clerk,
        &at("rita", "RP-001", &["shift", "close", "--counted", "99.50"]),
    );
    assert_eq!(r["shift"]["state"], "closed", "{r}");
    assert_eq!(r["shift"]["expected_cash_minor"], 10_000, "{r}");
    assert_eq!(r["shift"]["counted_cash_minor"], 9_950, "{r}");
    assert_eq!(r["shift"]["difference_minor"], -50, "{r}");
    let text = ok(office, env, &root(&["shift", "show", &id_text]));
    assert!(
        text.contains("difference -0.50 (short)") && text.contains("expected in the drawer 100.00"),
        "{text}"
    );
    let accounts = json(office, env, &root(&["ledger", "accounts"]));
    assert_eq!(balance(&accounts, "cash_over_short"), -50);
    assert_eq!(balance(&accounts, "cash:RP-001"), -50);
    ok(office, env, &root(&["check"]));
    let actions = audit_actions(office, env);
    for expected in [
        ("open_shift", "ok"),
        ("open_shift", "failed"),
        ("open_shift", "denied"),
        ("close_shift", "denied"),
        ("close_shift", "failed"),
        ("close_shift", "ok"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, o)| (a.as_str(), o.as_str()) == expected),
            "{expected:?} not in the audit log"
        );
    }

    // A supervisor close with a reason, at the console.
    let second = json(
        office,
        &clerk,
        &at("ivan", "RP-001", &["shift", "open", "--cash", "20"]),
    );
    let second_id = second["id"].as_i64().unwrap().to_string();
    let r = json(
        office,
        env,
        &root(&[
            "shift",
            "close",
            &second_id,
            "--counted",
            "20.10",
            "--reason",
            "clerk called away",
        ]),
    );
    assert_eq!(r["shift"]["closed_by"], "root", "{r}");
    assert_eq!(r["shift"]["close_reason"], "clerk called away", "{r}");
    assert_eq!(r["shift"]["difference_minor"], 10, "{r}");

    // The day's shifts (today, UTC, given either way) and another day.
    let list = json(office, env, &root(&["shift", "list"]));
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [id, second["id"].as_i64().unwrap()]);
    let today = {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        iccard_terminal::TransactionTime::from_unix(secs).date_string()
    };
    let dashed = format!("{}-{}-{}", &today[0..4], &today[4..6], &today[6..8]);
    let same = json(office, env, &root(&["shift", "list", "--date", &dashed]));
    assert_eq!(same, list);
    let empty = json(
        office,
        env,
        &root(&["shift", "list", "--date", "2000-01-01"]),
    );
    assert_eq!(empty, Value::Array(vec![]));
    fails(
        office,
        env,
        &root(&["shift", "list", "--date", "yesterday"]),
        2,
    );
    let text = ok(office, env, &root(&["shift", "list"]));
    assert!(
        text.contains("RP-001") && text.contains("rita") && text.contains("-0.50"),
        "{text}"
    );

    // The rule: off by default, administrators only.
    let v = json(office, env, &root(&["shift", "required"]));
    assert_eq!(v["shifts_required"], false);
    fails(
        office,
        &clerk,
        &at("rita", "RP-001", &["shift", "required", "on"]),
        1,
    );
    let v = json(office, env, &root(&["shift", "required", "on"]));
    assert_eq!(v["shifts_required"], true);
    let text = ok(office, env, &root(&["shift", "required"]));
    assert!(text.contains("need an open shift"), "{text}");
    ok(office, env, &root(&["check"]));
}

#[test]
fn shift_cli_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let office = dir.path().join("office");
    init(&office, &[], false);
    scenario(&office, &[]);
}

#[test]
fn shift_cli_on_postgres() {
    let Ok(url) = std::env::var("ICCARD_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("ICCARD_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "ICCARD_TEST_REQUIRE_POSTGRES=1 but ICCARD_TEST_POSTGRES_URL is unset"
        );
        eprintln!("skipped: ICCARD_TEST_POSTGRES_URL is unset (scripts/test sets it)");
        return;
    };
    let name = format!("iccard_shift_{}", std::process::id());
    let base = url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    let db_url = create_database(&url, &name, &base);
    let dir = tempfile::tempdir().unwrap();
    let office = dir.path().join("office");
    let env = [("ICCARD_TEST_OFFICE_DB", db_url.as_str())];
    init(&office, &env, true);
    scenario(&office, &env);
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
