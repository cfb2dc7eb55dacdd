//! NVM cost per command: physical EEPROM bytes (journal and home) each command writes on the
//! personalized reference card, from `Nvm::stats` deltas. The benchmark (`benches/cos.rs`)
//! prints the same table; the test holds the figures to sane bounds.

use iccard_apdu::{hex, Command as Apdu};
use iccard_cos::fuzzing::{self, keys};
use iccard_cos::keys::alg;
use iccard_cos::nvm::{Eeprom, SimEeprom};
use iccard_cos::security::sm_mac;
use iccard_cos::{Card, SeededRandom};

/// The NVM work of one command.
#[derive(Debug, Clone)]
pub struct Cost {
    /// What was sent.
    pub command: &'static str,
    /// Status word answered.
    pub sw: u16,
    /// Commits.
    pub commits: u64,
    /// Physical write calls.
    pub writes: u64,
    /// Physical bytes written (journal and home).
    pub bytes: u64,
    /// User bytes the commands staged.
    pub user_bytes: u64,
}

/// The reference card on an EEPROM that does not wear out (for benchmarks and cost figures).
pub fn bench_card() -> Card<SimEeprom, SeededRandom> {
    let src = fuzzing::personalized_eeprom();
    let mut eeprom = SimEeprom::new(src.len(), u32::MAX).expect("geometry");
    eeprom.write(0, src.bytes()).expect("copy");
    Card::power_on(eeprom, SeededRandom::new(5)).expect("mounts")
}

/// Sends hex; returns the SW.
pub fn send(card: &mut Card<SimEeprom, SeededRandom>, apdu: &str) -> u16 {
    let r = card.process(&hex::decode(apdu).expect("hex"));
    u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]])
}

/// The APDU `plain` (hex) under secure messaging for the card's current challenge `iv`.
pub fn with_mac(plain: &str, key: &[u8; 16], iv: &[u8; 8]) -> Vec<u8> {
    let apdu = Apdu::parse(&hex::decode(plain).expect("hex")).expect("apdu");
    let mut input = vec![apdu.cla | 0x04, apdu.ins, apdu.p1, apdu.p2];
    input.push(apdu.data.len() as u8 + 4);
    input.extend_from_slice(&apdu.data);
    let mac = sm_mac(alg::TDES, key, iv, &input).expect("mac");
    let mut out = input;
    out.extend_from_slice(&mac);
    out
}

/// GET CHALLENGE; the 8-byte IV.
pub fn challenge(card: &mut Card<SimEeprom, SeededRandom>) -> [u8; 8] {
    let r = card.process(&[0x00, 0x84, 0x00, 0x00, 0x04]);
    let mut iv = [0u8; 8];
    iv[..4].copy_from_slice(&r[..4]);
    iv
}

/// Runs each measured command on the reference card (application 1 selected) and returns
/// its NVM cost. Data differ from what the files hold, so every update really writes.
pub fn nvm_costs() -> Vec<Cost> {
    let mut card = bench_card();
    assert_eq!(send(&mut card, "00A4040C07F0544553543031"), 0x9000);
    let mut out = Vec::new();
    let mut measure =
        |card: &mut Card<SimEeprom, SeededRandom>,
         command: &'static str,
         run: &dyn Fn(&mut Card<SimEeprom, SeededRandom>) -> u16| {
            let before = card.nvm().stats();
            let sw = run(card);
            let after = card.nvm().stats();
            out.push(Cost {
                command,
                sw,
                commits: after.commits - before.commits,
                writes: after.physical_writes - before.physical_writes,
                bytes: after.physical_bytes - before.physical_bytes,
                user_bytes: after.user_bytes - before.user_bytes,
            });
        };
    measure(&mut card, "SELECT by name (FCI)", &|c| {
        send(c, "00A4040007F054455354303200");
        send(c, "00A4040007F054455354303100")
    });
    measure(&mut card, "READ BINARY 32 bytes", &|c| {
        send(c, "00B0810020")
    });
    measure(&mut card, "GET CHALLENGE", &|c| send(c, "0084000004"));
    measure(&mut card, "UPDATE BINARY 8 bytes", &|c| {
        send(c, "00D6810008 0102030405060708")
    });
    measure(&mut card, "UPDATE BINARY 8 bytes (SM)", &|c| {
        let iv = challenge(c);
        let apdu = with_mac("00D6820008 1122334455667788", &keys::APP1_MAINTENANCE, &iv);
        send(c, &hex::encode(&apdu))
    });
    measure(&mut card, "UPDATE BINARY 300 bytes (ext.)", &|c| {
        send(c, &format!("00D68500 00012C {}", "5A".repeat(300)))
    });
    measure(&mut card, "APPEND RECORD linear 16 bytes", &|c| {
        send(c, "00E2001810 33333333333333333333333333333333")
    });
    measure(&mut card, "UPDATE RECORD 16 bytes", &|c| {
        send(c, "00DC011C10 22222222222222222222222222222222")
    });
    measure(&mut card, "APPEND RECORD cyclic 8 bytes", &|c| {
        send(c, "00E2002008 4444444444444444")
    });
    measure(&mut card, "VERIFY (right PIN)", &|c| {
        send(c, "0020000003123456")
    });
    measure(&mut card, "VERIFY (wrong PIN)", &|c| {
        send(c, "0020000003999999")
    });
    measure(&mut card, "EXTERNAL AUTHENTICATE", &|c| {
        let iv = challenge(c);
        let mut block = [0u8; 8];
        block.copy_from_slice(&iv);
        let cryptogram = iccard_crypto::ecb_encrypt(
            iccard_crypto::Cipher::TripleDes,
            &keys::APP1_EXTERNAL,
            &block,
        )
        .expect("3DES");
        send(c, &format!("0082000108{}", hex::encode(&cryptogram)))
    });
    out
}

/// The table, one command per line.
pub fn table(costs: &[Cost]) -> String {
    let mut s = format!(
        "{:<32} {:>4} {:>7} {:>7} {:>9} {:>10}\n",
        "command", "SW", "commits", "writes", "NVM bytes", "user bytes"
    );
    for c in costs {
        s += &format!(
            "{:<32} {:04X} {:>7} {:>7} {:>9} {:>10}\n",
            c.command, c.sw, c.commits, c.writes, c.bytes, c.user_bytes
        );
    }
    s
}

#[test]
fn nvm_bytes_per_command() {
    let costs = nvm_costs();
    println!("{}", table(&costs));
    let get = |name: &str| costs.iter().find(|c| c.command.starts_with(name)).unwrap();
    for c in &costs {
        let ok = if c.command.contains("wrong") {
            0x63C2
        } else {
            0x9000
        };
        assert_eq!(c.sw, ok, "{}", c.command);
    }
    // Reading never writes.
    for name in ["SELECT", "READ BINARY", "GET CHALLENGE"] {
        let c = get(name);
        assert_eq!((c.commits, c.writes, c.bytes), (0, 0, 0), "{name}");
    }
    // A small update is one commit: one journal page write and one home write, each well
    // under two pages.
    for name in [
        "UPDATE BINARY 8 bytes",
        "UPDATE RECORD",
        "APPEND RECORD cyclic",
    ] {
        let c = get(name);
        assert_eq!(c.commits, 1, "{name}");
        assert!(c.writes <= 3 && c.bytes <= 160, "{name}: {c:?}");
    }
    // Under secure messaging the key's retry counter may be spent before the MAC comparison
    // and restored after it (anti-tearing): at most two more small commits.
    let c = get("UPDATE BINARY 8 bytes (SM)");
    assert!(c.commits <= 3 && c.writes <= 7 && c.bytes <= 240, "{c:?}");
    // An extended 300-byte update: the bytes twice (journal and home) plus page headers.
    let c = get("UPDATE BINARY 300");
    assert!(c.bytes >= 600 && c.bytes <= 760, "{c:?}");
    // A linear append also updates the record count in the file's FCB.
    assert!(get("APPEND RECORD linear").bytes > get("APPEND RECORD cyclic").bytes);
    // A successful VERIFY spends the try, then restores it: two commits; a wrong one spends
    // the try and counts the attack.
    assert_eq!(get("VERIFY (right").commits, 2);
    assert_eq!(get("VERIFY (wrong").commits, 2);
    assert_eq!(get("EXTERNAL AUTHENTICATE").commits, 2);
}
