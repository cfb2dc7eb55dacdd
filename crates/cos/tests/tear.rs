//! Tear tests through the card: power is cut at every EEPROM write of a command sequence, and
//! at several byte offsets inside each write; after power-up the card's whole logical state
//! (header, every file control block, every file body: keys, PINs, retry counters, records)
//! must be the state before the interrupted command or the state after it, never a mixture.
//!
//! One intermediate state is legitimate and counted apart: an authentication (PIN, EXTERNAL
//! AUTHENTICATE) spends its try and commits that *before* comparing, so a cut during the
//! comparison leaves "before, with one try spent", as a failed attempt would.

use crate::transcript::{Runner, Step, Transcript};
use iccard_cos::fs::{Fcb, FileKind, Header};
use iccard_cos::keys::KEY_RECORD_LEN;
use iccard_cos::nvm::{Eeprom, EepromError, FaultyEeprom, SimEeprom};
use iccard_cos::{Card, RandomSource, SeededRandom};

/// The logical state of a card: what a holder or an issuer could ever observe.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The header (life cycle, attack counter, chip data).
    pub header: Header,
    /// Every file and its body.
    pub files: Vec<(Fcb, Vec<u8>)>,
}

/// Takes the snapshot of a card.
pub fn snapshot<E: Eeprom, R: RandomSource>(card: &Card<E, R>) -> Snapshot {
    let files = card
        .files()
        .expect("file table reads")
        .into_iter()
        .map(|f| {
            let body = card
                .nvm()
                .read_vec(f.body as usize, f.size as usize)
                .expect("bodies read");
            (f, body)
        })
        .collect();
    Snapshot {
        header: card.header().clone(),
        files,
    }
}

/// Whether `now` is `before` with exactly one key's retry counter lowered by one.
pub fn one_try_spent(before: &Snapshot, now: &Snapshot) -> bool {
    if before.header != now.header || before.files.len() != now.files.len() {
        return false;
    }
    let mut spent = 0;
    for ((fa, ba), (fb, bb)) in before.files.iter().zip(&now.files) {
        if fa != fb {
            return false;
        }
        if ba == bb {
            continue;
        }
        if fa.kind != FileKind::KeyFile {
            return false;
        }
        for (ra, rb) in ba.chunks(KEY_RECORD_LEN).zip(bb.chunks(KEY_RECORD_LEN)) {
            if ra == rb {
                continue;
            }
            // Byte 9 of a key record is tries_left.
            let only_tries = (0..KEY_RECORD_LEN).all(|i| i == 9 || ra[i] == rb[i]);
            if !only_tries || rb[9].checked_add(1) != Some(ra[9]) {
                return false;
            }
            spent += 1;
        }
    }
    spent == 1
}

/// An EEPROM that records the length of every write (to choose torn-byte offsets).
pub struct Recorder {
    /// The EEPROM.
    pub inner: SimEeprom,
    /// Length of each write, in order.
    pub lengths: Vec<usize>,
}

impl Eeprom for Recorder {
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

/// Byte offsets at which to tear a write of `len` bytes: each of the first eight, the
/// quarters, all but one, and all of it (the write landed but the power went before the card
/// saw it complete).
pub fn torn_offsets(len: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=len.min(8)).collect();
    v.extend([len / 4, len / 2, len * 3 / 4, len.saturating_sub(1), len]);
    v.sort_unstable();
    v.dedup();
    v
}

/// What the cuts of one script found.
#[derive(Debug, Default)]
pub struct TearReport {
    /// Cut points tried (write index × torn offset).
    pub cuts: usize,
    /// Writes the script makes.
    pub writes: usize,
    /// Power-ups that found the state before the interrupted command.
    pub before: usize,
    /// Power-ups that found the state after it.
    pub after: usize,
    /// Power-ups that found "before, one try spent".
    pub try_spent: usize,
}

/// Runs `script` once to record the snapshots between steps and the writes, then cuts the
/// power at every write and torn offset, powers the card up again and compares.
pub fn tear_script(script: &Transcript) -> TearReport {
    let start = script.start_eeprom();
    // Reference run: the snapshot before each step, and the write count at each step's end.
    let mut reference = Runner::new(Recorder {
        inner: start.clone(),
        lengths: Vec::new(),
    });
    let mut snaps = vec![snapshot(reference.card())];
    for step in &script.steps {
        reference
            .step(step)
            .unwrap_or_else(|e| panic!("{}:{}: {e}", script.name, step.line));
        snaps.push(snapshot(reference.card()));
    }
    let lengths = reference.into_card().into_eeprom().lengths;
    let mut report = TearReport {
        writes: lengths.len(),
        ..TearReport::default()
    };
    // The power-up after the reference run writes nothing: the last command committed fully.
    for (k, &len) in lengths.iter().enumerate() {
        for torn in torn_offsets(len) {
            report.cuts += 1;
            let faulty = FaultyEeprom::new(start.clone(), k as u64, torn);
            let mut runner = Runner::new(faulty);
            let cut_step = run_until_power_loss(&mut runner, &script.steps).unwrap_or_else(|| {
                panic!("{}: write {k} (torn {torn}) was never reached", script.name)
            });
            let eeprom = runner.into_card().into_eeprom().into_inner();
            let card = Card::power_on(eeprom, SeededRandom::new(99)).unwrap_or_else(|e| {
                panic!(
                    "{}:{}: cut at write {k} byte {torn}: power-up failed: {e}",
                    script.name, script.steps[cut_step].line
                )
            });
            let now = snapshot(&card);
            let (before, after) = (&snaps[cut_step], &snaps[cut_step + 1]);
            if &now == before {
                report.before += 1;
            } else if &now == after {
                report.after += 1;
            } else if one_try_spent(before, &now) {
                report.try_spent += 1;
            } else {
                panic!(
                    "{}:{}: cut at write {k} byte {torn}: the card powered up in a state \
                     that is neither before nor after the command\nbefore {before:?}\n\
                     after  {after:?}\nnow    {now:?}",
                    script.name, script.steps[cut_step].line
                );
            }
            // A second power-up finds nothing more to repair.
            let card = Card::power_on(card.into_eeprom(), SeededRandom::new(100)).unwrap();
            assert_eq!(card.nvm().stats().physical_writes, 0);
            card.info().expect("the card's report reads");
        }
    }
    report
}

/// Runs steps until the card loses power; returns the index of the step that was cut.
fn run_until_power_loss(runner: &mut Runner<FaultyEeprom>, steps: &[Step]) -> Option<usize> {
    for (i, step) in steps.iter().enumerate() {
        // After the cut the card answers 6581 and the expectations fail: that is the point.
        let _ = runner.step(step);
        if runner.card().power_lost() || runner.card().nvm().eeprom().power_lost() {
            return Some(i);
        }
    }
    None
}

fn report(name: &str, r: &TearReport) {
    println!(
        "tear {name}: {} writes, {} cut points: {} powered up before the command, {} after, \
         {} before with a try spent",
        r.writes, r.cuts, r.before, r.after, r.try_spent
    );
}

#[test]
fn tear_a_run_of_updates_at_every_write() {
    let r = tear_script(&Transcript::load("updates.apdu"));
    report("updates.apdu", &r);
    assert!(r.writes > 50, "the run writes: {r:?}");
    assert!(r.before > 0 && r.after > 0 && r.try_spent > 0, "{r:?}");
    assert_eq!(r.cuts, r.before + r.after + r.try_spent);
}

#[test]
fn tear_a_personalization_at_every_write() {
    let r = tear_script(&Transcript::load("perso.apdu"));
    report("perso.apdu", &r);
    assert!(r.writes > 30, "the personalization writes: {r:?}");
    assert_eq!(r.cuts, r.before + r.after + r.try_spent);
}

#[test]
fn tear_an_erase_df_of_the_whole_card_at_every_write() {
    let r = tear_script(&Transcript::load("erase.apdu"));
    report("erase.apdu", &r);
    assert!(r.after > 0, "{r:?}");
    assert_eq!(r.cuts, r.before + r.after + r.try_spent);
}

#[test]
fn the_try_spent_rule_is_exact() {
    let card = iccard_cos::fuzzing::personalized_card(1);
    let before = snapshot(&card);
    let mut now = before.clone();
    assert!(
        !one_try_spent(&before, &now),
        "no change is not a spent try"
    );
    let kf = now
        .files
        .iter()
        .position(|(f, _)| f.kind == FileKind::KeyFile)
        .unwrap();
    now.files[kf].1[9] -= 1;
    assert!(one_try_spent(&before, &now));
    now.files[kf].1[9] -= 1;
    assert!(!one_try_spent(&before, &now), "two tries");
    now.files[kf].1[9] += 2;
    now.files[kf].1[12] ^= 1;
    assert!(!one_try_spent(&before, &now), "a key value changed");
    assert_eq!(torn_offsets(1), vec![0, 1]);
    assert_eq!(
        torn_offsets(64),
        vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 48, 63, 64]
    );
}
