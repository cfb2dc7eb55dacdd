//! `iccard card serve` as a process, through pcscd and vpcd: several slots from one process,
//! SIGINT/SIGTERM, pcscd restarting under it, a kill -9 with the image kept, volatile state
//! cleared by a reset, and exclusive PC/SC transactions.

use crate::pcsc_env::{
    iccard_ok, pcsc, personalized_card, wait_for, Served, CARD_READER, SAM_READER,
};
use iccard_apdu::hex;
use iccard_link::{CardChannel, PcscCard};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ACCESS_AID: &str = "F049434341524401";

fn sw(r: &[u8]) -> String {
    hex::encode(&r[r.len() - 2..])
}

/// `iccard apdu --reader` with APDU lines on standard input; one answer line per line.
fn apdu_lines(reader: &str, lines: &[&str]) -> Vec<String> {
    let mut child = Command::new(crate::pcsc_env::iccard_bin())
        .args(["apdu", "--reader", reader])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn two_slots_from_one_process_and_sigint_stops_both() {
    let _bench = pcsc();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    for (img, serial) in [(&a, "1111111111111111"), (&b, "2222222222222222")] {
        iccard_ok(&[
            "card",
            "new",
            "--out",
            img.to_str().unwrap(),
            "--chip-serial",
            serial,
        ]);
    }
    let mut served = Served::start(&[&a, &b], &[], dir.path().join("serve.log"));
    for (reader, serial) in [
        (CARD_READER, "1111111111111111"),
        (SAM_READER, "2222222222222222"),
    ] {
        let out = iccard_ok(&["apdu", "--reader", reader, "80CA9F7F00"]);
        assert!(
            out.trim().contains(serial) && out.trim().ends_with("9000"),
            "{reader}: {out}"
        );
    }
    let status = served.signal_and_wait("INT");
    assert!(status.success(), "{status:?}\n{}", served.log_text());
    let log = served.log_text();
    assert!(log.contains("slot 0 stopped after"), "{log}");
    assert!(log.contains("slot 1 stopped after"), "{log}");
}

#[test]
fn serve_outlives_pcscd_restarts_and_keeps_what_the_card_committed() {
    let _bench = pcsc();
    let dir = tempfile::tempdir().unwrap();
    let image = personalized_card(dir.path(), "card.img", "8860000000000002");
    let log = dir.path().join("serve.log");
    let mut served = Served::start(&[&image], &[], log.clone());

    // A wrong PIN: the retry counter is committed, and on disk before the answer comes back.
    let select = format!("00A4040C08{ACCESS_AID}");
    let r = apdu_lines(CARD_READER, &[&select, "0020000003999999"]);
    assert_eq!(r, vec!["9000", "63C2"]);

    // Volatile state: the right PIN opens the PIN-protected EF 0002 until a reset.
    let r = apdu_lines(
        CARD_READER,
        &[
            &select,
            "0020000003123456",
            "00B0820004",
            "reset",
            &select,
            "00B0820004",
        ],
    );
    assert_eq!(r[1], "9000", "{r:?}");
    assert_eq!(sw(&hex::decode(&r[2]).unwrap()), "9000", "{r:?}");
    assert!(r[3].starts_with("3B8A"), "{r:?}");
    assert_eq!(
        r[5], "6982",
        "after a reset the PIN state must be gone: {r:?}"
    );
    // Without --leave the connection resets the card when it ends: a new one starts clean.
    let r = apdu_lines(CARD_READER, &[&select, "0020000003123456"]);
    assert_eq!(r[1], "9000");
    let r = apdu_lines(CARD_READER, &[&select, "00B0820004"]);
    assert_eq!(r[1], "6982", "{r:?}");

    // pcscd restarts under the served card: it reconnects by itself.
    let restart = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/pcsc-netns"
        ))
        .arg("restart")
        .output()
        .unwrap();
    assert!(
        restart.status.success(),
        "{}",
        String::from_utf8_lossy(&restart.stderr)
    );
    assert!(
        wait_for(CARD_READER, true, Duration::from_secs(10)).is_some(),
        "the card did not come back after pcscd restarted; serve log:\n{}",
        served.log_text()
    );
    let r = apdu_lines(CARD_READER, &[&select, "0020000000"]);
    assert_eq!(r, vec!["9000", "63C3"], "the right PIN reset the counter");
    let text = served.log_text();
    assert!(text.contains("disconnected"), "{text}");
    assert!(text.matches("connected to vpcd").count() >= 2, "{text}");

    // kill -9, then serve the same image again: what was committed is there.
    let r = apdu_lines(CARD_READER, &[&select, "0020000003999999"]);
    assert_eq!(r[1], "63C2");
    let status = served.signal_and_wait("KILL");
    assert!(!status.success());
    let served = Served::start(&[&image], &[], dir.path().join("serve2.log"));
    let r = apdu_lines(CARD_READER, &[&select, "0020000000"]);
    assert_eq!(
        r[1], "63C2",
        "the committed retry counter survived the kill"
    );
    drop(served);

    // SIGTERM: a clean stop, exit status 0.
    let mut served = Served::start(&[&image], &[], dir.path().join("serve3.log"));
    let status = served.signal_and_wait("TERM");
    assert!(status.success(), "{status:?}: {}", served.log_text());
    assert!(served.log_text().contains("stopped after"));
}

#[test]
fn a_pcsc_transaction_keeps_other_applications_out() {
    let _bench = pcsc();
    let dir = tempfile::tempdir().unwrap();
    let image = personalized_card(dir.path(), "card.img", "8860000000000003");
    let served = Served::start(&[&image], &[], dir.path().join("serve.log"));

    let mut first = PcscCard::connect("PCD 00 00").expect("connect by part of the name");
    assert_eq!(first.reader(), CARD_READER);
    assert_eq!(first.atr(), iccard_cos::ATR);
    let mut tx = first.transaction().unwrap();
    assert_eq!(
        sw(&tx.transmit(&hex::decode("0084000008").unwrap()).unwrap()),
        "9000"
    );
    let (sent_tx, got_rx) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        let mut second = PcscCard::connect(CARD_READER).unwrap();
        let r = second
            .transmit(&hex::decode("00A4000C023F00").unwrap())
            .unwrap();
        sent_tx.send(Instant::now()).unwrap();
        r
    });
    // While the transaction is open, the other application's command waits.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        got_rx.try_recv().is_err(),
        "another application got through during the transaction"
    );
    // The transaction's own state is intact: the challenge is still there to be used.
    let r = tx
        .transmit(&hex::decode("0082000008 0000000000000000").unwrap())
        .unwrap();
    assert_eq!(
        sw(&r)[..2].to_string(),
        "63",
        "challenge lost inside the transaction"
    );
    let released = Instant::now();
    drop(tx);
    let answered = got_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(answered >= released);
    assert_eq!(sw(&other.join().unwrap()), "9000");
    drop(first);
    drop(served);
}
