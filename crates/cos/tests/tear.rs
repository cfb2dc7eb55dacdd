//! Tear tests through the card: power is cut at every EEPROM write of a command sequence, and
//! at several byte offsets inside each write; after power-up the card's whole logical state
//! (header, every file control block, every file body: keys, PINs, retry counters, records)
//! must be the state before the interrupted command or the state after it, never a mixture.
//!
//! Two intermediate states are legitimate and counted apart, both from the anti-tearing rule
//! of `docs/COS.md` (a secret comparison commits the spent try *before* comparing and gives it
//! back after a success): "before, with one try spent" (a cut during the comparison, as a
//! failed attempt would leave it) and "before, with one retry counter given back" (a cut after
//! a good PIN, cryptogram or MAC, before the command's own writes).

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

/// How a retry counter moved between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterMove {
    /// Lowered by one: a try spent.
    Spent,
    /// Back to its limit: a try given back after a success.
    GivenBack,
}

/// If `now` is `before` with exactly one key record's tries-left byte changed, and changed
/// by the anti-tearing rule (one less, or back to the key's limit), how it moved.
pub fn one_counter_moved(before: &Snapshot, now: &Snapshot) -> Option<CounterMove> {
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
            // Byte 8 of a key record is max_tries, byte 9 tries_left.
            let only_tries = (0..KEY_RECORD_LEN).all(|i| i == 9 || ra[i] == rb[i]);
            let how = if !only_tries {
                return None;
            } else if rb[9].checked_add(1) == Some(ra[9]) {
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

/// What differs between two snapshots, one line per header field or file.
pub fn diff(a: &Snapshot, b: &Snapshot) -> String {
    let mut out = String::new();
    if a.header != b.header {
        out += &format!("  header {:?} -> {:?}\n", a.header, b.header);
    }
    let files = |s: &Snapshot| -> Vec<u8> { s.files.iter().map(|(f, _)| f.index).collect() };
    let mut slots = files(a);
    slots.extend(files(b));
    slots.sort_unstable();
    slots.dedup();
    for slot in slots {
        let find = |s: &Snapshot| s.files.iter().find(|(f, _)| f.index == slot).cloned();
        match (find(a), find(b)) {
            (Some((fa, ba)), Some((fb, bb))) => {
                if fa != fb {
                    out += &format!("  slot {slot} FCB {fa:?} -> {fb:?}\n");
                }
                let at: Vec<usize> = (0..ba.len().max(bb.len()))
                    .filter(|&i| ba.get(i) != bb.get(i))
                    .collect();
                if !at.is_empty() {
                    out += &format!(
                        "  slot {slot} (FID {:04X}) body differs at {} bytes, first {:?}\n",
                        fa.fid,
                        at.len(),
                        &at[..at.len().min(8)]
                    );
                }
            }
            (Some((f, _)), None) => out += &format!("  slot {slot} (FID {:04X}) gone\n", f.fid),
            (None, Some((f, _))) => out += &format!("  slot {slot} (FID {:04X}) new\n", f.fid),
            (None, None) => {}
        }
    }
    out
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
    /// Power-ups that found "before, one retry counter given back".
    pub given_back: usize,
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
            } else if let Some(how) = one_counter_moved(before, &now) {
                match how {
                    CounterMove::Spent => report.try_spent += 1,
                    CounterMove::GivenBack => report.given_back += 1,
                }
            } else {
                panic!(
                    "{}:{}: cut at write {k} byte {torn}: the card powered up in a state \
                     that is neither before nor after the command\n\
                     differences from before:\n{}differences from after:\n{}",
                    script.name,
                    script.steps[cut_step].line,
                    diff(before, &now),
                    diff(after, &now)
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
         {} before with a try spent, {} before with a try given back",
        r.writes, r.cuts, r.before, r.after, r.try_spent, r.given_back
    );
}

#[test]
fn tear_a_run_of_updates_at_every_write() {
    let r = tear_script(&Transcript::load("updates.apdu"));
    report("updates.apdu", &r);
    assert!(r.writes > 50, "the run writes: {r:?}");
    assert!(r.before > 0 && r.after > 0 && r.try_spent > 0, "{r:?}");
    assert_eq!(r.cuts, r.before + r.after + r.try_spent + r.given_back);
}

#[test]
fn tear_a_personalization_at_every_write() {
    let r = tear_script(&Transcript::load("perso.apdu"));
    report("perso.apdu", &r);
    assert!(r.writes > 30, "the personalization writes: {r:?}");
    assert_eq!(r.cuts, r.before + r.after + r.try_spent + r.given_back);
}

#[test]
fn tear_an_erase_df_of_the_whole_card_at_every_write() {
    let r = tear_script(&Transcript::load("erase.apdu"));
    report("erase.apdu", &r);
    assert!(r.after > 0, "{r:?}");
    assert_eq!(r.cuts, r.before + r.after + r.try_spent + r.given_back);
}

#[test]
fn the_counter_rules_are_exact() {
    let card = iccard_cos::fuzzing::personalized_card(1);
    let before = snapshot(&card);
    let mut now = before.clone();
    assert_eq!(one_counter_moved(&before, &now), None, "no change");
    let kf = now
        .files
        .iter()
        .position(|(f, _)| f.kind == FileKind::KeyFile)
        .unwrap();
    // Record 1 of the MF key file: the card master key, 15 of 15 tries.
    assert_eq!(&now.files[kf].1[8..10], &[15, 15]);
    now.files[kf].1[9] = 14;
    assert_eq!(one_counter_moved(&before, &now), Some(CounterMove::Spent));
    assert_eq!(
        one_counter_moved(&now, &before),
        Some(CounterMove::GivenBack)
    );
    now.files[kf].1[9] = 13;
    assert_eq!(one_counter_moved(&before, &now), None, "two tries");
    now.files[kf].1[9] = 14;
    now.files[kf].1[32 + 9] -= 1;
    assert_eq!(one_counter_moved(&before, &now), None, "two keys");
    now.files[kf].1[32 + 9] += 1;
    now.files[kf].1[12] ^= 1;
    assert_eq!(
        one_counter_moved(&before, &now),
        None,
        "a key value changed"
    );
    let mut other = before.clone();
    other.header.attack_counter += 1;
    assert_eq!(
        one_counter_moved(&before, &other),
        None,
        "the header changed"
    );
    assert_eq!(torn_offsets(1), vec![0, 1]);
    assert_eq!(
        torn_offsets(64),
        vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 48, 63, 64]
    );
}
