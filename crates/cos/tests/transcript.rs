//! The APDU transcript format and its runner: command → expected response, data-driven, with
//! directives for the steps that need host cryptography.
//!
//! A transcript (`tests/transcripts/*.apdu`) is a text file, one item per line:
//!
//! ```text
//! # comment (also after an item)
//! card personal             the card to start from (first item): `personal` (the reference
//!                           card of `iccard_cos::fuzzing`) or `blank` (manufactured only);
//!                           `threshold N` sets the self-destruct threshold (default 32)
//! > 00A4000C023F00          a command APDU in hex (spaces allowed); `( … )` is a length
//!                           byte and the bytes inside: `> 00A4000C (3F00)`
//! < 9000                    the expected response: hex, `..` for any one byte (a value the
//!                           card chooses at random), `*` for any number of bytes
//! reset                     warm reset (an optional `<` line checks the ATR)
//! powercycle                power off and on: the EEPROM is mounted again
//! !auth 01 APP1_EXTERNAL    GET CHALLENGE (4) + EXTERNAL AUTHENTICATE with key index 01;
//!                           the `<` line is the answer to EXTERNAL AUTHENTICATE
//! !mac APP1_MAINTENANCE > 00D6820002AABB
//!                           GET CHALLENGE + the APDU with CLA | 04 and the MAC appended
//! !writekey APP1_MASTER 3A0001000F0F0103031234
//!                           WRITE KEY of the record (type index version alg use change
//!                           grants tries len value), encrypted and MACed under the key
//! !unblock APP1_UNBLOCK 123456
//!                           PIN UNBLOCK: the PIN encrypted and MACed under the key
//! ```
//!
//! A key is a name from `iccard_cos::fuzzing::keys` (`APP2_*` are SM4, the rest 3DES), or 32
//! hex digits, optionally prefixed `3des:` or `sm4:`. Each item that sends an APDU needs its
//! `<` line. Set `ICCARD_TRANSCRIPT_SHOW=1` to print every exchange and every mismatch instead
//! of stopping at the first.

use iccard_apdu::hex;
use iccard_apdu::{Command as Apdu, Response, StatusWord};
use iccard_cos::fuzzing;
use iccard_cos::keys::alg;
use iccard_cos::nvm::{Eeprom, SimEeprom};
use iccard_cos::security::{sm_mac, wrap_key};
use iccard_cos::{Card, SeededRandom};
use iccard_crypto::Cipher;
use std::path::{Path, PathBuf};

/// A key for a directive.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Algorithm byte (`alg::TDES` or `alg::SM4`).
    pub alg: u8,
    /// Value.
    pub value: [u8; 16],
}

/// What one item does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send an APDU.
    Apdu(Vec<u8>),
    /// Warm reset.
    Reset,
    /// Power off and on.
    PowerCycle,
    /// GET CHALLENGE + EXTERNAL AUTHENTICATE.
    Auth {
        /// Key index (P2).
        index: u8,
        /// Key.
        key: Key,
    },
    /// An APDU under secure messaging.
    Mac {
        /// MAC key.
        key: Key,
        /// The command without its MAC.
        apdu: Apdu,
    },
    /// WRITE KEY.
    WriteKey {
        /// Key-encryption (and MAC) key.
        kek: Key,
        /// Key record.
        record: Vec<u8>,
    },
    /// PIN UNBLOCK.
    Unblock {
        /// PIN unblock key.
        key: Key,
        /// The PIN.
        pin: Vec<u8>,
    },
}

/// One token of an expected response.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// This byte.
    Byte(u8),
    /// Any one byte.
    Any,
    /// Any number of bytes.
    Star,
}

/// One item with its line number and expected answer.
#[derive(Debug, Clone)]
pub struct Step {
    /// Line number (1-based).
    pub line: usize,
    /// What to do.
    pub action: Action,
    /// The expected response (ATR for a reset).
    pub expect: Option<Vec<Tok>>,
}

/// A parsed transcript.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// File name.
    pub name: String,
    /// Start from the personalized reference card (else a blank one).
    pub personal: bool,
    /// Self-destruct threshold of the card.
    pub threshold: u8,
    /// The items.
    pub steps: Vec<Step>,
}

/// The directory of the transcripts.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts")
}

fn parse_key(word: &str) -> Result<Key, String> {
    use fuzzing::keys as k;
    let named = [
        ("TRANSPORT", k::TRANSPORT),
        ("MF_MASTER", k::MF_MASTER),
        ("MF_MAINTENANCE", k::MF_MAINTENANCE),
        ("APP1_MASTER", k::APP1_MASTER),
        ("APP1_MAINTENANCE", k::APP1_MAINTENANCE),
        ("APP1_EXTERNAL", k::APP1_EXTERNAL),
        ("APP1_INTERNAL", k::APP1_INTERNAL),
        ("APP1_UNBLOCK", k::APP1_UNBLOCK),
        ("APP1_RELOAD", k::APP1_RELOAD),
        ("APP2_MASTER", k::APP2_MASTER),
        ("APP2_MAINTENANCE", k::APP2_MAINTENANCE),
        ("APP2_EXTERNAL", k::APP2_EXTERNAL),
        ("APP2_INTERNAL", k::APP2_INTERNAL),
    ];
    if let Some((name, value)) = named.iter().find(|(n, _)| *n == word) {
        let alg = if name.starts_with("APP2") {
            alg::SM4
        } else {
            alg::TDES
        };
        return Ok(Key { alg, value: *value });
    }
    let (alg, digits) = match word.split_once(':') {
        Some(("sm4", d)) => (alg::SM4, d),
        Some(("3des", d)) => (alg::TDES, d),
        Some((other, _)) => return Err(format!("unknown key algorithm {other:?}")),
        None => (alg::TDES, word),
    };
    let bytes = hex::decode(digits).map_err(|e| format!("key {word:?}: {e}"))?;
    let value: [u8; 16] = bytes
        .try_into()
        .map_err(|_| format!("key {word:?} is not 16 bytes"))?;
    Ok(Key { alg, value })
}

/// Hex bytes, where `( … )` stands for a length byte followed by the bytes inside (nested
/// groups allowed): `80E00000 (62(820101 83020001))` is `80E00000 08 62 06 820101 83020001`.
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut Vec<u8>| -> Result<(), String> {
        out.extend(hex::decode(digits).map_err(|e| format!("{text:?}: {e}"))?);
        digits.clear();
        Ok(())
    };
    for c in text.chars() {
        match c {
            '(' => {
                flush(&mut digits, stack.last_mut().expect("non-empty"))?;
                stack.push(Vec::new());
            }
            ')' => {
                let mut inner = stack.pop().expect("non-empty");
                flush(&mut digits, &mut inner)?;
                let out = stack
                    .last_mut()
                    .ok_or_else(|| format!("{text:?}: unbalanced `)`"))?;
                out.push(
                    u8::try_from(inner.len())
                        .map_err(|_| format!("{text:?}: group over 255 bytes"))?,
                );
                out.extend(inner);
            }
            c => digits.push(c),
        }
    }
    let mut out = stack.pop().expect("non-empty");
    if !stack.is_empty() {
        return Err(format!("{text:?}: unbalanced `(`"));
    }
    flush(&mut digits, &mut out)?;
    Ok(out)
}

fn parse_pattern(text: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    for chunk in text.split_whitespace() {
        if chunk == "*" {
            toks.push(Tok::Star);
            continue;
        }
        if chunk.len() % 2 != 0 {
            return Err(format!("odd number of digits in {chunk:?}"));
        }
        for pair in chunk.as_bytes().chunks(2) {
            let pair = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            if pair == ".." {
                toks.push(Tok::Any);
            } else {
                let b = u8::from_str_radix(pair, 16).map_err(|_| format!("bad byte {pair:?}"))?;
                toks.push(Tok::Byte(b));
            }
        }
    }
    Ok(toks)
}

/// Whether `bytes` match `pattern`.
pub fn matches(pattern: &[Tok], bytes: &[u8]) -> bool {
    match pattern.split_first() {
        None => bytes.is_empty(),
        Some((Tok::Star, rest)) => (0..=bytes.len()).any(|skip| matches(rest, &bytes[skip..])),
        Some((tok, rest)) => match bytes.split_first() {
            Some((b, more)) => (*tok == Tok::Any || *tok == Tok::Byte(*b)) && matches(rest, more),
            None => false,
        },
    }
}

fn show(pattern: &[Tok]) -> String {
    pattern
        .iter()
        .map(|t| match t {
            Tok::Byte(b) => format!("{b:02X}"),
            Tok::Any => "..".into(),
            Tok::Star => " * ".into(),
        })
        .collect()
}

impl Transcript {
    /// Reads and parses `tests/transcripts/<file>`.
    pub fn load(file: &str) -> Transcript {
        let path = dir().join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Transcript::parse(file, &text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Parses transcript text; the error names the file and line.
    pub fn parse(name: &str, text: &str) -> Result<Transcript, String> {
        let mut t = Transcript {
            name: name.to_string(),
            personal: true,
            threshold: fuzzing::ATTACK_THRESHOLD,
            steps: Vec::new(),
        };
        let mut started = false;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let at = |e: String| format!("{name}:{line}: {e}");
            let text = raw.split('#').next().unwrap_or("").trim();
            if text.is_empty() {
                continue;
            }
            if let Some(rest) = text.strip_prefix("card ") {
                if started {
                    return Err(at("`card` must be the first item".into()));
                }
                let words: Vec<&str> = rest.split_whitespace().collect();
                t.personal = match words.first() {
                    Some(&"personal") => true,
                    Some(&"blank") => false,
                    _ => return Err(at(format!("unknown card {rest:?}"))),
                };
                match words[1..] {
                    [] => {}
                    ["threshold", n] => {
                        t.threshold = n.parse().map_err(|_| at(format!("bad threshold {n}")))?
                    }
                    _ => return Err(at(format!("unknown card option {rest:?}"))),
                }
                started = true;
                continue;
            }
            started = true;
            if let Some(rest) = text.strip_prefix('<') {
                let pattern = parse_pattern(rest).map_err(at)?;
                let last = t
                    .steps
                    .last_mut()
                    .ok_or_else(|| at("a response before any command".into()))?;
                if last.expect.is_some() || matches!(last.action, Action::PowerCycle) {
                    return Err(at("a response that answers nothing".into()));
                }
                last.expect = Some(pattern);
                continue;
            }
            if let Some(previous) = t.steps.last() {
                if previous.expect.is_none()
                    && !matches!(previous.action, Action::Reset | Action::PowerCycle)
                {
                    return Err(format!(
                        "{name}:{}: the command has no `<` response line",
                        previous.line
                    ));
                }
            }
            let action = if let Some(rest) = text.strip_prefix('>') {
                Action::Apdu(parse_hex(rest).map_err(at)?)
            } else if text == "reset" {
                Action::Reset
            } else if text == "powercycle" {
                Action::PowerCycle
            } else if let Some(rest) = text.strip_prefix("!auth ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let [index, key] = words[..] else {
                    return Err(at("usage: !auth <index> <key>".into()));
                };
                Action::Auth {
                    index: u8::from_str_radix(index, 16).map_err(|e| at(e.to_string()))?,
                    key: parse_key(key).map_err(at)?,
                }
            } else if let Some(rest) = text.strip_prefix("!mac ") {
                let (key, apdu) = rest
                    .split_once('>')
                    .ok_or_else(|| at("usage: !mac <key> > <apdu>".into()))?;
                let bytes = parse_hex(apdu).map_err(at)?;
                Action::Mac {
                    key: parse_key(key.trim()).map_err(at)?,
                    apdu: Apdu::parse(&bytes).map_err(|e| at(e.to_string()))?,
                }
            } else if let Some(rest) = text.strip_prefix("!writekey ") {
                let (kek, record) = rest
                    .trim()
                    .split_once(' ')
                    .ok_or_else(|| at("usage: !writekey <kek> <record>".into()))?;
                Action::WriteKey {
                    kek: parse_key(kek).map_err(at)?,
                    record: parse_hex(record).map_err(at)?,
                }
            } else if let Some(rest) = text.strip_prefix("!unblock ") {
                let (key, pin) = rest
                    .trim()
                    .split_once(' ')
                    .ok_or_else(|| at("usage: !unblock <key> <pin>".into()))?;
                Action::Unblock {
                    key: parse_key(key).map_err(at)?,
                    pin: parse_hex(pin).map_err(at)?,
                }
            } else {
                return Err(at(format!("unknown item {text:?}")));
            };
            t.steps.push(Step {
                line,
                action,
                expect: None,
            });
        }
        if let Some(last) = t.steps.last() {
            if last.expect.is_none() && !matches!(last.action, Action::Reset | Action::PowerCycle) {
                return Err(format!(
                    "{name}:{}: the command has no `<` response line",
                    last.line
                ));
            }
        }
        Ok(t)
    }

    /// The EEPROM the transcript starts from.
    pub fn start_eeprom(&self) -> SimEeprom {
        if self.personal && self.threshold == fuzzing::ATTACK_THRESHOLD {
            return fuzzing::personalized_eeprom();
        }
        let mut card = fuzzing::manufacture(self.threshold);
        if self.personal {
            fuzzing::personalize(&mut card).expect("reference personalization");
        }
        card.into_eeprom()
    }
}

/// One APDU exchanged.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Transcript line.
    pub line: usize,
    /// Command bytes.
    pub command: Vec<u8>,
    /// Response bytes.
    pub response: Vec<u8>,
}

/// A transcript being run against a card.
pub struct Runner<E: Eeprom> {
    card: Option<Card<E, SeededRandom>>,
    power_ups: u64,
    /// Every APDU exchanged so far.
    pub exchanges: Vec<Exchange>,
}

/// ENC(key, challenge ‖ 0…) over one block: the EXTERNAL AUTHENTICATE cryptogram.
pub fn cryptogram(key: &Key, iv: &[u8; 8]) -> Vec<u8> {
    let cipher = if key.alg == alg::SM4 {
        Cipher::Sm4
    } else {
        Cipher::TripleDes
    };
    let mut block = vec![0u8; cipher.block_len()];
    block[..8].copy_from_slice(iv);
    iccard_crypto::ecb_encrypt(cipher, &key.value, &block).unwrap()
}

/// The APDU with CLA | 04 and its secure-messaging MAC appended (short Lc).
pub fn mac_apdu(apdu: &Apdu, key: &Key, iv: &[u8; 8]) -> Apdu {
    let cla = apdu.cla | 0x04;
    let lc = apdu.data.len() + 4;
    assert!(lc <= 255, "transcripts MAC short APDUs only");
    let mut input = vec![cla, apdu.ins, apdu.p1, apdu.p2, lc as u8];
    input.extend_from_slice(&apdu.data);
    let mac = sm_mac(key.alg, &key.value, iv, &input).unwrap();
    let mut data = apdu.data.clone();
    data.extend_from_slice(&mac);
    Apdu {
        cla,
        data,
        ..apdu.clone()
    }
}

impl<E: Eeprom> Runner<E> {
    /// Runs on `eeprom`, powered up with the transcripts' random seed.
    pub fn new(eeprom: E) -> Self {
        let card = Card::power_on(eeprom, SeededRandom::new(1)).expect("the start image mounts");
        Self {
            card: Some(card),
            power_ups: 1,
            exchanges: Vec::new(),
        }
    }

    /// The card.
    pub fn card(&self) -> &Card<E, SeededRandom> {
        self.card.as_ref().expect("card present")
    }

    /// Gives the card back.
    pub fn into_card(self) -> Card<E, SeededRandom> {
        self.card.expect("card present")
    }

    fn transmit(&mut self, line: usize, command: Vec<u8>) -> Vec<u8> {
        let response = self.card.as_mut().expect("card present").process(&command);
        self.exchanges.push(Exchange {
            line,
            command,
            response: response.clone(),
        });
        response
    }

    fn challenge(&mut self, line: usize) -> Result<[u8; 8], String> {
        let r = self.transmit(line, vec![0x00, 0x84, 0x00, 0x00, 0x04]);
        if r.len() != 6 || r[4..] != [0x90, 0x00] {
            return Err(format!(
                "GET CHALLENGE for the directive answered {}",
                hex::encode(&r)
            ));
        }
        let mut iv = [0u8; 8];
        iv[..4].copy_from_slice(&r[..4]);
        Ok(iv)
    }

    /// Runs one step; the error describes the mismatch.
    pub fn step(&mut self, step: &Step) -> Result<(), String> {
        let line = step.line;
        let (command, response) = match &step.action {
            Action::Reset => {
                let atr = self.card.as_mut().expect("card present").reset();
                (b"reset".to_vec(), atr)
            }
            Action::PowerCycle => {
                let eeprom = self.card.take().expect("card present").into_eeprom();
                self.power_ups += 1;
                let card = Card::power_on(eeprom, SeededRandom::new(self.power_ups))
                    .map_err(|e| format!("power-up failed: {e}"))?;
                self.card = Some(card);
                return Ok(());
            }
            Action::Apdu(bytes) => {
                let r = self.transmit(line, bytes.clone());
                (bytes.clone(), r)
            }
            Action::Auth { index, key } => {
                let iv = self.challenge(line)?;
                let cmd = Apdu::new(0x00, 0x82, 0x00, *index)
                    .with_data(cryptogram(key, &iv))
                    .to_bytes();
                let r = self.transmit(line, cmd.clone());
                (cmd, r)
            }
            Action::Mac { key, apdu } => {
                let iv = self.challenge(line)?;
                let cmd = mac_apdu(apdu, key, &iv).to_bytes();
                let r = self.transmit(line, cmd.clone());
                (cmd, r)
            }
            Action::WriteKey { kek, record } => {
                let iv = self.challenge(line)?;
                let wrapped = wrap_key(kek.alg, &kek.value, record).unwrap();
                let apdu = Apdu::new(0x80, 0xD4, 0x00, 0x00).with_data(wrapped);
                let cmd = mac_apdu(&apdu, kek, &iv).to_bytes();
                let r = self.transmit(line, cmd.clone());
                (cmd, r)
            }
            Action::Unblock { key, pin } => {
                let iv = self.challenge(line)?;
                let wrapped = wrap_key(key.alg, &key.value, pin).unwrap();
                let apdu = Apdu::new(0x80, 0x24, 0x00, 0x00).with_data(wrapped);
                let cmd = mac_apdu(&apdu, key, &iv).to_bytes();
                let r = self.transmit(line, cmd.clone());
                (cmd, r)
            }
        };
        match &step.expect {
            Some(pattern) if !matches(pattern, &response) => Err(format!(
                "sent {}\n  expected {}\n  got      {}",
                hex::encode(&command),
                show(pattern),
                hex::encode(&response)
            )),
            _ => Ok(()),
        }
    }
}

/// Runs a transcript on its start card and panics at the first mismatch (or, with
/// `ICCARD_TRANSCRIPT_SHOW=1`, after printing every exchange and mismatch). Returns the
/// exchanges.
pub fn check(file: &str) -> Vec<Exchange> {
    let t = Transcript::load(file);
    let show_all = std::env::var("ICCARD_TRANSCRIPT_SHOW").as_deref() == Ok("1");
    let mut runner = Runner::new(t.start_eeprom());
    let mut failures = Vec::new();
    for step in &t.steps {
        let seen = runner.exchanges.len();
        let result = runner.step(step);
        if show_all {
            for x in &runner.exchanges[seen..] {
                eprintln!(
                    "{}:{}: > {}\n{}:{}: < {}",
                    file,
                    x.line,
                    hex::encode(&x.command),
                    file,
                    x.line,
                    hex::encode(&x.response)
                );
            }
        }
        if let Err(e) = result {
            let message = format!("{file}:{}: {e}", step.line);
            if !show_all {
                panic!("{message}");
            }
            eprintln!("MISMATCH {message}");
            failures.push(message);
        }
    }
    assert!(failures.is_empty(), "{} mismatches", failures.len());
    runner.exchanges
}

/// The status word of a response.
pub fn sw_of(response: &[u8]) -> StatusWord {
    Response::parse(response).map_or(StatusWord(0), |r| r.sw)
}
