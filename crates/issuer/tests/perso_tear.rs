//! Tear test of the issuer's personalization script: the real `personalize` runs over a
//! `CardChannel` to an in-memory card on a `FaultyEeprom`, and the power is cut at every EEPROM
//! write of the whole script and at several byte offsets inside each. After power-up the
//! card's logical state (header, every file control block and body: keys, PINs, counters,
//! records, purse state) must equal the state after some prefix of the script: the one before
//! the interrupted command or the one after it. Two more states are the anti-tearing rule of
//! `docs/COS.md` at work and are counted apart: "before, with one try spent" (the try is
//! committed before a comparison) and "before, with one counter given back" (after a success,
//! before the command's own writes).

use iccard_cos::fs::{Fcb, FileKind, Header};
use iccard_cos::keys::KEY_RECORD_LEN;
use iccard_cos::nvm::{Eeprom, EepromError, FaultyEeprom, SimEeprom, DEFAULT_ENDURANCE};
use iccard_cos::{Card, RandomSource, SeededRandom};
use iccard_crypto::PurseAlg;
use iccard_issuer::manufacture::{self, BlankCard};
use iccard_issuer::personalize::{personalize, Personalization};
use iccard_link::{CardChannel, LinkError};

/// The logical state of a card.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    header: Header,
    files: Vec<(Fcb, Vec<u8>)>,
}

fn snapshot<E: Eeprom, R: RandomSource>(card: &Card<E, R>) -> Snapshot {
    let files = card
        .files()
        .unwrap()
        .into_iter()
        .map(|f| {
            let body = card
                .nvm()
                .read_vec(f.body as usize, f.size as usize)
                .unwrap();
            (f, body)
        })
        .collect();
    Snapshot {
        header: card.header().clone(),
        files,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CounterMove {
    Spent,
    GivenBack,
}

/// `now` is `before` with one key record's tries-left byte (record byte 9) one lower, or
/// back at the key's limit (byte 8), and nothing else changed.
fn one_counter_moved(before: &Snapshot, now: &Snapshot) -> Option<CounterMove> {
    if before.header != now.header || before.files.len() != now.files.len() {
        return None;
    }
    let mut moved = None;
    for ((fa, ba), (fb, bb)) in before.files.iter().zip(&now.files) {
        if fa != fb {
            return None;
        }
        if ba == bb {
            continue;
        }
        if fa.kind != FileKind::KeyFile {
            return None;
        }
        for (ra, rb) in ba.chunks(KEY_RECORD_LEN).zip(bb.chunks(KEY_RECORD_LEN)) {
            if ra == rb {
                continue;
            }
            if !(0..KEY_RECORD_LEN).all(|i| i == 9 || ra[i] == rb[i]) {
                return None;
            }
            let how = if rb[9].checked_add(1) == Some(ra[9]) {
                CounterMove::Spent
            } else if rb[9] == rb[8] {
                CounterMove::GivenBack
            } else {
                return None;
            };
            if moved.replace(how).is_some() {
                return None;
            }
        }
    }
    moved
}

/// A FaultyEeprom that also records the length of every write (for torn offsets).
struct Probe {
    inner: FaultyEeprom,
    lengths: Vec<usize>,
}

impl Eeprom for Probe {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn read(&self, addr: usize, buf: &mut [u8]) -> Result<(), EepromError> {
        self.inner.read(addr, buf)
    }
    fn write(&mut self, addr: usize, data: &[u8]) -> Result<(), EepromError> {
        self.lengths.push(data.len());
        self.inner.write(addr, data)
    }
    fn page_cycles(&self, page: usize) -> u32 {
        self.inner.page_cycles(page)
    }
    fn endurance(&self) -> u32 {
        self.inner.endurance()
    }
}

/// The test's channel: an in-memory card; it takes a snapshot after every command (reference
/// run) and stops the script when the power is gone.
struct TearChannel {
    card: Card<Probe, SeededRandom>,
    /// Commands completed.
    commands: usize,
    /// Snapshots after each command, when recording.
    snaps: Option<Vec<Snapshot>>,
    /// The command during which the power went.
    cut_during: Option<usize>,
}

impl TearChannel {
    fn new(eeprom: FaultyEeprom, record: bool) -> Self {
        let card = Card::power_on(
            Probe {
                inner: eeprom,
                lengths: Vec::new(),
            },
            SeededRandom::new(42),
        )
        .expect("the blank card mounts");
        let snaps = record.then(|| vec![snapshot(&card)]);
        Self {
            card,
            commands: 0,
            snaps,
            cut_during: None,
        }
    }

    fn dead(&self) -> bool {
        self.card.power_lost() || self.card.nvm().eeprom().inner.power_lost()
    }
}

impl CardChannel for TearChannel {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        if self.cut_during.is_some() {
            return Err(LinkError::PowerLost);
        }
        let response = self.card.process(apdu);
        if self.dead() {
            self.cut_during = Some(self.commands);
            return Err(LinkError::PowerLost);
        }
        self.commands += 1;
        if let Some(snaps) = &mut self.snaps {
            snaps.push(snapshot(&self.card));
        }
        Ok(response)
    }

    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        if self.cut_during.is_some() {
            return Err(LinkError::PowerLost);
        }
        Ok(self.card.reset())
    }
}

#[derive(Debug, Default)]
struct Report {
    commands: usize,
    writes: usize,
    cuts: usize,
    before: usize,
    after: usize,
    try_spent: usize,
    given_back: usize,
}

fn blank_image() -> SimEeprom {
    let spec = BlankCard {
        chip_serial: [0x49, 0x43, 0x00, 0x00, 0x00, 0x00, 0x42, 0x01],
        production_date: [0x20, 0x26, 0x11, 0x26],
        batch: 7,
        transport_key_version: 1,
        attack_threshold: 64,
    };
    let eeprom = manufacture::eeprom(32, DEFAULT_ENDURANCE).unwrap();
    manufacture::make_blank(eeprom, SeededRandom::new(9), &spec)
        .unwrap()
        .into_eeprom()
}

/// Cuts the power at every write of the personalization `p`, at `offsets(len)` bytes into it.
fn tear_personalization(p: &Personalization, offsets: fn(usize) -> Vec<usize>) -> Report {
    let base = blank_image();
    let mut reference = TearChannel::new(FaultyEeprom::never(base.clone()), true);
    if let Err(e) = personalize(&mut reference, p) {
        panic!("the reference personalization: {e}");
    }
    let snaps = reference.snaps.expect("recorded");
    let lengths = reference.card.into_eeprom().lengths;
    let mut report = Report {
        commands: snaps.len() - 1,
        writes: lengths.len(),
        ..Report::default()
    };
    for (k, &len) in lengths.iter().enumerate() {
        for torn in offsets(len) {
            report.cuts += 1;
            let at = format!(
                "cut at write {k} of {}, byte {torn} of {len}",
                lengths.len()
            );
            let mut channel =
                TearChannel::new(FaultyEeprom::new(base.clone(), k as u64, torn), false);
            match personalize(&mut channel, p) {
                Ok(_) => panic!("{at}: the script finished without losing power"),
                Err(iccard_issuer::script::ScriptError::Link(LinkError::PowerLost)) => {}
                Err(e) => panic!("{at}: the script failed otherwise: {e}"),
            }
            let i = channel
                .cut_during
                .expect("the cut happened during a command");
            let eeprom = channel.card.into_eeprom().inner.into_inner();
            let card = Card::power_on(eeprom, SeededRandom::new(7))
                .unwrap_or_else(|e| panic!("{at}: power-up failed: {e}"));
            let now = snapshot(&card);
            if now == snaps[i] {
                report.before += 1;
            } else if now == snaps[i + 1] {
                report.after += 1;
            } else {
                match one_counter_moved(&snaps[i], &now) {
                    Some(CounterMove::Spent) => report.try_spent += 1,
                    Some(CounterMove::GivenBack) => report.given_back += 1,
                    None => panic!(
                        "{at}, during command {i}: the card powered up neither before nor \
                         after the command (header {:?}; {} files before, {} after, {} now)",
                        now.header,
                        snaps[i].files.len(),
                        snaps[i + 1].files.len(),
                        now.files.len()
                    ),
                }
            }
            // Power-up repaired everything: the next one writes nothing.
            let card = Card::power_on(card.into_eeprom(), SeededRandom::new(8)).unwrap();
            assert_eq!(card.nvm().stats().physical_writes, 0, "{at}");
            card.info()
                .unwrap_or_else(|sw| panic!("{at}: card info: {sw}"));
        }
    }
    report
}

fn print(name: &str, r: &Report) {
    println!(
        "tear {name}: {} commands, {} writes, {} cut points: {} powered up before the command, \
         {} after, {} before with a try spent, {} before with a try given back",
        r.commands, r.writes, r.cuts, r.before, r.after, r.try_spent, r.given_back
    );
}

#[test]
fn personalization_survives_a_power_cut_at_every_write() {
    let p = Personalization::new("8860000000000042", "123456", PurseAlg::TripleDes);
    // Each of the first eight bytes, the quarters, all but one, all.
    let r = tear_personalization(&p, |len| {
        let mut v: Vec<usize> = (0..=len.min(8)).collect();
        v.extend([len / 4, len / 2, len * 3 / 4, len.saturating_sub(1), len]);
        v.sort_unstable();
        v.dedup();
        v
    });
    print("personalization (3DES)", &r);
    assert!(r.commands > 40 && r.writes > 100, "{r:?}");
    assert_eq!(r.cuts, r.before + r.after + r.try_spent + r.given_back);
    assert!(r.before > 0 && r.after > 0, "{r:?}");
}

#[test]
fn sm4_personalization_survives_a_power_cut_at_every_write() {
    let p = Personalization::new("8860000000000043", "654321", PurseAlg::Sm4);
    let r = tear_personalization(&p, |len| {
        let mut v = vec![0, 1, len / 2, len.saturating_sub(1), len];
        v.sort_unstable();
        v.dedup();
        v
    });
    print("personalization (SM4)", &r);
    assert!(r.cuts >= 3 * r.writes, "{r:?}");
    assert_eq!(r.cuts, r.before + r.after + r.try_spent + r.given_back);
}
