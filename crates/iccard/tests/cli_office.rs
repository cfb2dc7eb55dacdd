//! `iccard office ...` end to end through the binary: init on SQLite (and on PostgreSQL when
//! `ICCARD_TEST_POSTGRES_URL` is set), operators and roles, machines, the key ceremony with a
//! local keystore, `check`, the audit chain, `--json`, and the refusals with their exit codes
//! (1: the back office refused; 2: usage or configuration) that must change nothing.

use iccard_office::store::Store;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

use crate::office_support::{fails, iccard, json, ok};

fn audit_len(office: &Path, env: &[(&str, &str)]) -> usize {
    json(
        office,
        env,
        &["--operator", "root", "audit", "show", "--limit", "100000"],
    )
    .as_array()
    .expect("an array")
    .len()
}

fn init(office: &Path, database: Option<&str>) {
    let mut args = vec![
        "init",
        "--issuer-number",
        "31000001",
        "--development",
        "--admin",
        "root",
        "--admin-name",
        "Root Admin",
    ];
    if let Some(url) = database {
        args.extend(["--database-env", "ICCARD_TEST_OFFICE_DB"]);
        let v = json(office, &[("ICCARD_TEST_OFFICE_DB", url)], &args);
        assert_eq!(v["mode"], "development");
    } else {
        let v = json(office, &[], &args);
        assert_eq!(v["issuer_number"], "31000001");
        assert!(office.join("keys.iks").exists());
        assert!(office.join("office.db").exists());
    }
}

fn root<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--operator", "root"];
    a.extend_from_slice(args);
    a
}

/// The whole administrative path on one database.
fn scenario(office: &Path, env: &[(&str, &str)]) {
    let st = json(office, env, &["status"]);
    assert_eq!(st["issuer_number"], "31000001");

    // Operators, a branch, machines.
    let new_pw = [env, &[("ICCARD_NEW_OPERATOR_PASSWORD", "clerk-password-1")]].concat();
    let op = json(
        office,
        &new_pw,
        &root(&[
            "operator",
            "add",
            "rita",
            "--role",
            "recharge-clerk",
            "--name",
            "Rita",
        ]),
    );
    assert_eq!(op["role"], "recharge_clerk");
    json(
        office,
        &new_pw,
        &root(&["operator", "add", "audrey", "--role", "auditor"]),
    );
    json(
        office,
        env,
        &root(&["branch", "add", "NORTH", "--name", "North gate"]),
    );
    let m = json(
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
    assert_eq!(m["kind"], "recharge_point");
    let err = fails(
        office,
        env,
        &root(&[
            "machine", "add", "T-001", "--kind", "terminal", "--branch", "NORTH",
        ]),
        2,
    );
    assert!(err.contains("PSAM"), "{err}");
    json(
        office,
        env,
        &root(&[
            "machine",
            "add",
            "T-001",
            "--kind",
            "terminal",
            "--branch",
            "NORTH",
            "--psam",
            "PSAM-0001",
        ]),
    );
    let machines = json(office, env, &root(&["machine", "list"]));
    assert_eq!(machines.as_array().unwrap().len(), 3);
    let ops = json(office, env, &root(&["operator", "list"]));
    assert_eq!(ops.as_array().unwrap().len(), 3);

    // A recharge clerk may not run a key ceremony: exit 1, the refusal audited, no key made.
    let clerk = [env, &[("ICCARD_OPERATOR_PASSWORD", "clerk-password-1")]].concat();
    let before = audit_len(office, env);
    let err = fails(
        office,
        &clerk,
        &[
            "--operator",
            "rita",
            "--machine",
            "RP-001",
            "key",
            "generate",
            "MLK",
        ],
        1,
    );
    assert!(err.contains("rita") && err.contains("may not"), "{err}");
    // login + denied
    assert_eq!(audit_len(office, env), before + 2 + 1);
    let keys = json(office, env, &root(&["key", "list"]));
    assert!(keys.as_array().unwrap().is_empty(), "{keys}");

    // Wrong password: exit 1, does not say which of login or password was wrong.
    let err = fails(
        office,
        &[env, &[("ICCARD_OPERATOR_PASSWORD", "nope")]].concat(),
        &root(&["check"]),
        1,
    );
    assert!(err.contains("login refused"), "{err}");

    // The key ceremony: generate, import with a KCV check, activate, retire; the log.
    let k = json(office, env, &root(&["key", "generate", "MLK"]));
    assert_eq!(k["state"], "inactive");
    assert_eq!(k["version"], 1);
    let value = [
        env,
        &[("ICCARD_KEY_VALUE", "0123456789ABCDEFFEDCBA9876543210")],
    ]
    .concat();
    let err = fails(
        office,
        &value,
        &root(&["key", "import", "MTK", "--version", "1", "--kcv", "000000"]),
        1,
    );
    assert!(err.contains("mistyped"), "{err}");
    let kcv = iccard_crypto::kcv(
        iccard_crypto::PurseAlg::TripleDes.key_cipher(),
        &hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap(),
    )
    .map(hex::encode_upper)
    .unwrap();
    let k = json(
        office,
        &value,
        &root(&["key", "import", "MTK", "--version", "1", "--kcv", &kcv]),
    );
    assert_eq!(k["kcv"], kcv.as_str());
    ok(office, env, &root(&["key", "activate", "MLK", "1"]));
    ok(office, env, &root(&["key", "activate", "MTK", "1"]));
    ok(office, env, &root(&["key", "retire", "MLK", "1"]));
    let err = fails(office, env, &root(&["key", "activate", "MLK", "1"]), 1);
    assert!(err.contains("retired"), "{err}");
    let keys = json(office, env, &root(&["key", "list"]));
    let states: Vec<(String, String)> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().into(),
                k["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("MLK".into(), "retired".into()),
            ("MTK".into(), "active".into())
        ]
    );
    let log = json(office, env, &root(&["key", "log"]));
    let kinds: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["created", "imported", "activated", "activated", "retired"]
    );
    let text = serde_json::to_string(&log).unwrap();
    assert!(
        !text.contains("0123456789ABCDEF"),
        "the ceremony log shows a key: {text}"
    );

    // A wrong keystore passphrase: exit 1, nothing changed.
    let err = fails(
        office,
        &[env, &[("ICCARD_KEYSTORE_PASSPHRASE", "wrong")]].concat(),
        &root(&["key", "list"]),
        1,
    );
    assert!(err.contains("wrong passphrase"), "{err}");

    // The auditor checks; the chain verifies.
    let audit_env = [env, &[("ICCARD_OPERATOR_PASSWORD", "clerk-password-1")]].concat();
    let r = json(office, &audit_env, &["--operator", "audrey", "check"]);
    assert_eq!(r["problems"].as_array().unwrap().len(), 0, "{r}");
    let text = ok(office, &audit_env, &["--operator", "audrey", "check"]);
    assert!(text.contains("verdict: clean"), "{text}");
    let v = json(office, env, &root(&["audit", "verify"]));
    assert!(v["broken"].is_null(), "{v}");
    let today = json(
        office,
        &audit_env,
        &["--operator", "audrey", "report", "daily"],
    );
    assert!(today["rows"].as_array().is_some(), "{today}");
    let err = fails(
        office,
        env,
        &root(&["report", "daily", "--date", "2026-01-01"]),
        2,
    );
    assert!(err.contains("YYYYMMDD") || err.contains("date"), "{err}");
    let accounts = json(office, env, &root(&["ledger", "accounts"]));
    assert!(accounts
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["code"] == "cash:RP-001"));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Alters one audit record behind the back office's back.
fn tamper(url: &str, seq: i64) {
    runtime().block_on(async {
        let store = Store::connect(url).await.unwrap();
        let mut tx = store.write().await.unwrap();
        let n = tx
            .execute(
                "UPDATE audit_log SET detail = 'edited by hand' WHERE seq = $1",
                &[iccard_office::store::Arg::I64(seq)],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        tx.commit().await.unwrap();
        store.close().await;
    });
}

#[test]
fn office_cli_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let office = dir.path().join("office");
    init(&office, None);
    scenario(&office, &[]);

    // A tampered audit record: `audit verify` and `check` exit 1 and name it.
    tamper(
        &format!("sqlite://{}", office.join("office.db").display()),
        3,
    );
    let out = iccard(
        &office,
        &[],
        &["--operator", "root", "audit", "verify", "--json"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["broken"]["seq"], 3, "{v}");
    let out = iccard(&office, &[], &["--operator", "root", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PROBLEM") && text.contains('3'), "{text}");
}

#[test]
fn office_cli_on_postgres() {
    let Ok(url) = std::env::var("ICCARD_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("ICCARD_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "ICCARD_TEST_REQUIRE_POSTGRES=1 but ICCARD_TEST_POSTGRES_URL is unset"
        );
        eprintln!("skipped: ICCARD_TEST_POSTGRES_URL is unset (scripts/test sets it)");
        return;
    };
    // A fresh database of our own on the test server.
    let name = format!("iccard_cli_{}", std::process::id());
    let base = url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    let db_url = create_database(&url, &base, &name);
    let dir = tempfile::tempdir().unwrap();
    let office = dir.path().join("office");
    init(&office, Some(&db_url));
    let env = [("ICCARD_TEST_OFFICE_DB", db_url.as_str())];
    scenario(&office, &env);
    // The configuration holds the variable's name, not the URL (it may carry a password).
    let toml = std::fs::read_to_string(office.join("office.toml")).unwrap();
    assert!(
        toml.contains("database_url_env") && !toml.contains("postgres://"),
        "{toml}"
    );
    let err = fails(&office, &[], &["--operator", "root", "check"], 2);
    assert!(err.contains("ICCARD_TEST_OFFICE_DB"), "{err}");
}

fn create_database(url: &str, base: &str, name: &str) -> String {
    runtime().block_on(async {
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
fn refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let office = dir.path().join("prod");
    // Production with the development keys: refused before anything is written.
    let err = fails(
        &office,
        &[],
        &[
            "init",
            "--issuer-number",
            "31000001",
            "--production",
            "--dev-keys",
            "--admin",
            "root",
        ],
        2,
    );
    assert!(
        err.contains("production") && err.contains("development key set"),
        "{err}"
    );
    assert!(!office.exists(), "a refused init left files behind");
    // A bad issuer number: refused, and the keystore file made for it removed.
    let err = fails(
        &office,
        &[],
        &[
            "init",
            "--issuer-number",
            "31x",
            "--production",
            "--admin",
            "root",
        ],
        2,
    );
    assert!(err.contains("issuer number"), "{err}");
    assert!(!office.join("keys.iks").exists());
    assert!(!office.join("office.toml").exists());
    // No configuration: says to run init.
    let err = fails(&office, &[], &["--operator", "root", "check"], 2);
    assert!(err.contains("iccard office init"), "{err}");
    // A production office with a local keystore works; a second init on it is refused.
    ok(
        &office,
        &[],
        &[
            "init",
            "--issuer-number",
            "31000001",
            "--production",
            "--admin",
            "root",
        ],
    );
    let err = fails(
        &office,
        &[],
        &[
            "init",
            "--issuer-number",
            "31000001",
            "--production",
            "--admin",
            "root",
        ],
        2,
    );
    assert!(err.contains("already holds a back office"), "{err}");
    // Hand-editing the configuration to the development keys is refused on load.
    let path = office.join("office.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text
        .lines()
        .filter(|l| !l.starts_with("path") && !l.starts_with("passphrase_env"))
        .map(|l| l.replace("kind = \"local\"", "kind = \"development\""))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, edited).unwrap();
    let err = fails(&office, &[], &["--operator", "root", "key", "list"], 2);
    assert!(err.contains("development key set"), "{err}");
    // No operator named: a usage error.
    std::fs::write(&path, text).unwrap();
    let err = fails(&office, &[], &["check"], 2);
    assert!(err.contains("--operator"), "{err}");
}

#[test]
fn the_demo_runs_the_life_cycle_and_leaves_a_clean_office() {
    let dir = tempfile::tempdir().unwrap();
    let office = dir.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_iccard"))
        .args(["demo", "--dir"])
        .arg(&office)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stage in [
        "Back office",
        "Manufacture",
        "testing",
        "FAILED, voided",
        "Issuance",
        "first recharge",
        "purchase 12.34 offline",
        "settled",
        "recharge refused",
        "late-record window",
        "moved from",
        "verdict: clean",
    ] {
        assert!(
            text.contains(stage),
            "the demo does not show {stage:?}:\n{text}"
        );
    }
    // The office it leaves is a working office: check through the command line.
    let r = json(
        &office,
        &[("ICCARD_OPERATOR_PASSWORD", "demo-password")],
        &["--operator", "audrey", "check"],
    );
    assert_eq!(r["problems"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["cards"], 3);
    // A non-empty directory is refused (the demo makes a new office).
    let out = Command::new(env!("CARGO_BIN_EXE_iccard"))
        .args(["demo", "--dir"])
        .arg(&office)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // The card-OS tour still runs.
    let out = Command::new(env!("CARGO_BIN_EXE_iccard"))
        .args(["demo", "--card-os"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn office_cli_with_keys_in_a_pkcs11_token() {
    let Ok(conf) = std::env::var("SOFTHSM2_CONF") else {
        assert!(
            std::env::var("ICCARD_TEST_REQUIRE_SOFTHSM").as_deref() != Ok("1"),
            "ICCARD_TEST_REQUIRE_SOFTHSM=1 but SOFTHSM2_CONF is unset"
        );
        eprintln!("skipped: SOFTHSM2_CONF is unset (scripts/test sets it)");
        return;
    };
    // A token of our own, initialized the way an HSM administrator does it.
    let label = format!("iccard-cli-{}", std::process::id());
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            &label,
            "--so-pin",
            "5678",
            "--pin",
            "24680",
        ])
        .output()
        .expect("softhsm2-util runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let office = dir.path().join("hsm");
    let env = [
        ("SOFTHSM2_CONF", conf.as_str()),
        ("ICCARD_PKCS11_PIN", "24680"),
    ];
    let v = json(
        &office,
        &env,
        &[
            "init",
            "--issuer-number",
            "31000001",
            "--production",
            "--admin",
            "root",
            "--keystore",
            "pkcs11",
            "--token-label",
            &label,
        ],
    );
    assert!(v["keystore"].as_str().unwrap().contains(&label), "{v}");
    assert!(
        !office.join("keys.iks").exists(),
        "no key file: the keys live in the token"
    );
    // A wrong PIN: exit 1, nothing opened.
    let err = fails(
        &office,
        &[
            ("SOFTHSM2_CONF", conf.as_str()),
            ("ICCARD_PKCS11_PIN", "11111"),
        ],
        &["--operator", "root", "key", "list"],
        1,
    );
    assert!(!err.contains("11111"), "the PIN leaked into {err}");
    // The ceremony in the token: generate and activate MLK; import MTK with its KCV.
    let k = json(
        &office,
        &env,
        &["--operator", "root", "key", "generate", "MLK"],
    );
    assert_eq!(
        (k["version"].as_i64(), k["state"].as_str()),
        (Some(1), Some("inactive"))
    );
    ok(
        &office,
        &env,
        &["--operator", "root", "key", "activate", "MLK", "1"],
    );
    let value = "0123456789ABCDEFFEDCBA9876543210";
    let kcv = iccard_crypto::kcv(
        iccard_crypto::PurseAlg::TripleDes.key_cipher(),
        &hex::decode(value).unwrap(),
    )
    .map(hex::encode_upper)
    .unwrap();
    let with_value = [env.as_slice(), &[("ICCARD_KEY_VALUE", value)]].concat();
    let k = json(
        &office,
        &with_value,
        &[
            "--operator",
            "root",
            "key",
            "import",
            "MTK",
            "--version",
            "1",
            "--kcv",
            &kcv,
        ],
    );
    assert_eq!(
        k["kcv"],
        kcv.as_str(),
        "the token's KCV equals the software one"
    );
    // SM4 is not offered by the token: refused with the reason.
    let err = fails(
        &office,
        &env,
        &[
            "--operator",
            "root",
            "key",
            "generate",
            "MPK",
            "--alg",
            "sm4",
        ],
        1,
    );
    assert!(err.to_lowercase().contains("sm4"), "{err}");
    let keys = json(&office, &env, &["--operator", "root", "key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2, "{keys}");
    let log = json(&office, &env, &["--operator", "root", "key", "log"]);
    assert_eq!(log.as_array().unwrap().len(), 3, "{log}");
}
