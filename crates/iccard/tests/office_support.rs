//! Running `iccard office ...` in the command-line tests: a clean environment (no variable of
//! the caller's leaks in), the test passwords, the keystore passphrase and the card PIN set,
//! per-call variables on top; `ok`, `json` (adds `--json`) and `fails` (an expected exit code).

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

pub const ADMIN_PW: &str = "admin-password-1";
pub const CLERK_PW: &str = "clerk-password-1";
pub const PASS: &str = "keystore passphrase for tests";

pub fn iccard(office: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iccard"));
    c.arg("office").arg("--office").arg(office).args(args);
    for var in [
        "ICCARD_OFFICE",
        "ICCARD_OPERATOR",
        "ICCARD_MACHINE",
        "ICCARD_OPERATOR_PASSWORD",
        "ICCARD_NEW_OPERATOR_PASSWORD",
        "ICCARD_KEYSTORE_PASSPHRASE",
        "ICCARD_CARD_PIN",
        "ICCARD_RECHARGE_OPERATOR_PASSWORD",
    ] {
        c.env_remove(var);
    }
    c.env("ICCARD_OPERATOR_PASSWORD", ADMIN_PW)
        .env("ICCARD_KEYSTORE_PASSPHRASE", PASS)
        .env("ICCARD_NEW_OPERATOR_PASSWORD", CLERK_PW)
        .env("ICCARD_CARD_PIN", "123456")
        .env("ICCARD_RECHARGE_OPERATOR_PASSWORD", CLERK_PW);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("the iccard binary runs")
}

pub fn ok(office: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = iccard(office, env, args);
    assert!(
        out.status.success(),
        "{args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

pub fn json(office: &Path, env: &[(&str, &str)], args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = ok(office, env, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// Runs a command that must exit with `code`; returns stderr.
pub fn fails(office: &Path, env: &[(&str, &str)], args: &[&str], code: i32) -> String {
    let out = iccard(office, env, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: expected exit {code}; stdout {} stderr {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}
