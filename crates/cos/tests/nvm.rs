//! Tests of the card's NVM through its public API: transactions, recovery, power cuts at every
//! write and inside writes, wear, the card image codec and its golden file.

use std::collections::BTreeSet;

use iccard_cos::nvm::{
    decode_image, encode_image, image_len, Eeprom, EepromError, FaultyEeprom, HotRecord,
    ImageError, Nvm, NvmError, SimEeprom, DEFAULT_ENDURANCE, DEFAULT_SIZE, IMAGE_FORMAT_VERSION,
    MAX_TRANSACTION_BYTES, MIN_SIZE, PAGE_SIZE, RANGE_OVERHEAD,
};
use proptest::prelude::*;

fn fresh(size: usize, endurance: u32) -> Nvm<SimEeprom> {
    Nvm::format(SimEeprom::new(size, endurance).unwrap()).unwrap()
}

fn user_area<E: Eeprom>(nvm: &Nvm<E>) -> Vec<u8> {
    nvm.read_vec(0, nvm.user_len()).unwrap()
}

/// SplitMix64: a tiny seeded generator so every failing case replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------- transactions

#[test]
fn format_mount_round_trip() {
    let nvm = fresh(DEFAULT_SIZE, DEFAULT_ENDURANCE);
    assert!(user_area(&nvm).iter().all(|&b| b == 0));
    let len = nvm.user_len();
    assert!(len > DEFAULT_SIZE * 9 / 10, "user area {len}");
    let nvm = Nvm::mount(nvm.into_eeprom()).unwrap();
    assert_eq!(nvm.user_len(), len);
    assert_eq!(
        nvm.stats().physical_writes,
        0,
        "a clean mount writes nothing"
    );

    let blank = SimEeprom::new(MIN_SIZE, 10).unwrap();
    assert_eq!(Nvm::mount(blank).unwrap_err(), NvmError::NotFormatted);
}

#[test]
fn reformat_forgets_everything_and_a_torn_format_is_refused() {
    let mut nvm = fresh(MIN_SIZE, DEFAULT_ENDURANCE);
    for i in 0..30u32 {
        nvm.write_u32(4 * i as usize, i + 1).unwrap();
        nvm.commit().unwrap();
    }
    let used = nvm.into_eeprom();
    let nvm = Nvm::format(used.clone()).unwrap();
    let writes = nvm.stats().physical_writes;
    assert_eq!(writes, 4, "unformat, erase journal, zero user area, header");
    let nvm = Nvm::mount(nvm.into_eeprom()).unwrap();
    assert!(user_area(&nvm).iter().all(|&b| b == 0));

    for cut in 0..writes {
        for torn in [0, 3, 30] {
            let mut faulty = FaultyEeprom::new(used.clone(), cut, torn);
            assert!(Nvm::format(&mut faulty).unwrap_err().is_power_lost());
            match Nvm::mount(faulty.into_inner()) {
                Err(NvmError::NotFormatted | NvmError::Corrupt(_)) => {}
                Err(e) => panic!("cut {cut}/{torn}: {e}"),
                // Cut before the old header was touched: the old contents, untouched.
                Ok(nvm) if (cut, torn) == (0, 0) => {
                    assert_eq!(nvm.read_u32(4 * 29).unwrap(), 30);
                }
                Ok(nvm) => {
                    assert_eq!((cut, torn), (writes - 1, 30), "only a whole header mounts");
                    assert!(user_area(&nvm).iter().all(|&b| b == 0));
                }
            }
        }
    }
}

#[test]
fn commit_rollback_and_read_your_writes() {
    let mut nvm = fresh(MIN_SIZE, DEFAULT_ENDURANCE);
    nvm.write(10, b"hello").unwrap();
    nvm.write_u16(20, 0x1234).unwrap();
    nvm.write_u32(30, 0xDEAD_BEEF).unwrap();
    nvm.write_u8(40, 0x7F).unwrap();
    assert!(nvm.has_staged());
    assert_eq!(nvm.read_vec(10, 5).unwrap(), b"hello");
    assert_eq!(nvm.read_vec(20, 2).unwrap(), [0x12, 0x34]);
    assert_eq!(nvm.read_u32(30).unwrap(), 0xDEAD_BEEF);
    // Nothing physical yet.
    assert_eq!(nvm.eeprom().bytes()[nvm.layout().user_start + 10], 0);
    nvm.rollback();
    assert!(!nvm.has_staged());
    assert_eq!(nvm.read_u32(30).unwrap(), 0);

    nvm.write(10, b"hello").unwrap();
    nvm.write(12, b"LP").unwrap(); // overlapping: merges, later wins
    nvm.write_u16(20, 0x1234).unwrap();
    nvm.commit().unwrap();
    assert!(!nvm.has_staged());
    assert_eq!(nvm.read_vec(10, 5).unwrap(), b"heLPo");
    assert_eq!(nvm.read_u16(20).unwrap(), 0x1234);
    let nvm = Nvm::mount(nvm.into_eeprom()).unwrap();
    assert_eq!(nvm.read_vec(10, 5).unwrap(), b"heLPo");
    assert_eq!(nvm.read_u8(21).unwrap(), 0x34);
}

#[test]
fn bounds_are_checked() {
    let mut nvm = fresh(MIN_SIZE, DEFAULT_ENDURANCE);
    let len = nvm.user_len();
    assert_eq!(
        nvm.write(len - 1, &[1, 2]),
        Err(NvmError::OutOfRange {
            addr: len - 1,
            len: 2
        })
    );
    assert!(matches!(
        nvm.read_u32(len - 3),
        Err(NvmError::OutOfRange { .. })
    ));
    assert!(nvm.read_vec(usize::MAX, 2).is_err());
    nvm.write(len - 2, &[1, 2]).unwrap();
    nvm.commit().unwrap();
    assert_eq!(nvm.read_u16(len - 2).unwrap(), 0x0102);
}

#[test]
fn transaction_size_limit() {
    let mut nvm = fresh(MIN_SIZE, DEFAULT_ENDURANCE);
    let biggest = MAX_TRANSACTION_BYTES - RANGE_OVERHEAD;
    nvm.write(100, &vec![0x55; biggest + 1]).unwrap_err();
    assert!(!nvm.has_staged());
    nvm.write(100, &vec![0x55; biggest]).unwrap();
    assert!(matches!(
        nvm.write(3000, &[1]),
        Err(NvmError::TransactionTooLarge { .. })
    ));
    nvm.commit().unwrap();
    assert_eq!(nvm.read_vec(100, biggest).unwrap(), vec![0x55; biggest]);
    // Twice in a row: the second entry cannot avoid the first one's pages in a 20-page ring.
    nvm.write(100, &vec![0x66; biggest]).unwrap();
    nvm.commit().unwrap();
    let nvm = Nvm::mount(nvm.into_eeprom()).unwrap();
    assert_eq!(nvm.read_vec(100, biggest).unwrap(), vec![0x66; biggest]);
}

#[test]
fn stats_count_physical_work() {
    let mut nvm = fresh(DEFAULT_SIZE, DEFAULT_ENDURANCE);
    let s0 = nvm.stats();
    nvm.commit().unwrap(); // empty: nothing
    assert_eq!(nvm.stats(), s0);
    nvm.write_u32(200, 0x0102_0304).unwrap();
    nvm.commit().unwrap();
    let s1 = nvm.stats();
    assert_eq!(s1.commits, s0.commits + 1);
    assert_eq!(s1.user_bytes, s0.user_bytes + 4);
    // One journal write (8-byte page header + count 2 + range 6+4 + crc 4) and one home write.
    assert_eq!(s1.physical_writes, s0.physical_writes + 2);
    assert_eq!(s1.physical_bytes, s0.physical_bytes + 24 + 4);
    // Only the changed byte goes home.
    nvm.write_u32(200, 0x0102_03FF).unwrap();
    nvm.commit().unwrap();
    assert_eq!(nvm.stats().physical_bytes, s1.physical_bytes + 21 + 1);

    // The EEPROM sees exactly what the stats say.
    let sim = nvm.into_eeprom();
    let mut nvm = Nvm::mount(FaultyEeprom::never(sim)).unwrap();
    for i in 0..50u32 {
        nvm.write_u32(4 * i as usize, i).unwrap();
        nvm.write(1000 + 100 * i as usize, &[i as u8 + 1; 70])
            .unwrap();
        nvm.commit().unwrap();
    }
    let s = nvm.stats();
    assert_eq!(s.commits, 50);
    assert_eq!(s.physical_writes, nvm.eeprom().writes());
    assert_eq!(s.physical_bytes, nvm.eeprom().bytes_written());
}

#[test]
fn forged_journal_entries_in_user_data_are_never_replayed() {
    // A terminal controls the bytes of UPDATE BINARY, which pass through the journal. Fill a
    // transaction with every plausible page header for a huge seq: none may be taken for an
    // entry, because page starts always hold real page headers.
    let mut nvm = fresh(MIN_SIZE, DEFAULT_ENDURANCE);
    let mut data = Vec::new();
    while data.len() < 900 {
        data.extend_from_slice(&[
            b'J', 0, 1, 1, 0xFF, 0xFF, 0xFF, 0xF0, 0, 1, 0, 0, 0, 0, 0, 1, 0xAA,
        ]);
    }
    data.truncate(900);
    nvm.write(500, &data).unwrap();
    nvm.commit().unwrap();
    let before = user_area(&nvm);
    let nvm = Nvm::mount(nvm.into_eeprom()).unwrap();
    assert_eq!(user_area(&nvm), before);
}

// ---------------------------------------------------------------- tear test

const HOT: HotRecord = HotRecord {
    addr: 0,
    slots: 4,
    len: 12,
};
const RAW_START: usize = 4 * PAGE_SIZE;

#[derive(Debug, Clone)]
enum Op {
    Raw(usize, Vec<u8>),
    Hot(Vec<u8>),
    /// Rewrite what is already there (a no-change write).
    Same(usize, usize),
}

fn gen_txn(rng: &mut Rng, user_len: usize, big: bool) -> Vec<Op> {
    // Most transactions bump a counter at RAW_START: replaying any stale journal entry would
    // turn it back, and the comparison with the reference states would see it.
    let mut ops = vec![Op::Raw(RAW_START, rng.bytes(4))];
    if big {
        let len = 700 + rng.below(290);
        ops.push(Op::Raw(
            RAW_START + 64 + rng.below(user_len - RAW_START - 64 - len),
            rng.bytes(len),
        ));
        return ops;
    }
    if rng.below(4) == 0 {
        ops.clear();
    }
    for _ in 0..rng.below(5) {
        ops.push(match rng.below(10) {
            0 => {
                let len = 1 + rng.below(8);
                Op::Raw(RAW_START + rng.below(32), rng.bytes(len))
            }
            1..=4 => {
                let max = if rng.below(6) == 0 { 300 } else { 40 };
                let len = 1 + rng.below(max);
                Op::Raw(
                    RAW_START + rng.below(user_len - RAW_START - len),
                    rng.bytes(len),
                )
            }
            5..=7 => Op::Hot(rng.bytes(12)),
            _ => Op::Same(
                RAW_START + rng.below(user_len - RAW_START - 64),
                1 + rng.below(63),
            ),
        });
    }
    ops
}

/// Stages a transaction; a write over the size limit is skipped (deterministically).
fn stage<E: Eeprom>(nvm: &mut Nvm<E>, ops: &[Op]) {
    for op in ops {
        let r = match op {
            Op::Raw(addr, data) => nvm.write(*addr, data),
            Op::Hot(data) => HOT.write(nvm, data),
            Op::Same(addr, len) => {
                let cur = nvm.read_vec(*addr, *len).unwrap();
                nvm.write(*addr, &cur)
            }
        };
        match r {
            Ok(()) | Err(NvmError::TransactionTooLarge { .. }) => {}
            Err(e) => panic!("staging failed: {e}"),
        }
    }
}

/// An EEPROM that records the length of every write.
struct Recorder {
    inner: SimEeprom,
    lens: Vec<usize>,
}

impl Eeprom for Recorder {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn read(&self, addr: usize, buf: &mut [u8]) -> Result<(), EepromError> {
        self.inner.read(addr, buf)
    }
    fn write(&mut self, addr: usize, data: &[u8]) -> Result<(), EepromError> {
        self.lens.push(data.len());
        self.inner.write(addr, data)
    }
    fn page_cycles(&self, page: usize) -> u32 {
        self.inner.page_cycles(page)
    }
    fn endurance(&self) -> u32 {
        self.inner.endurance()
    }
}

/// Runs one seeded scenario; returns the number of cut points it covered.
fn tear_scenario(seed: u64) -> usize {
    let mut rng = Rng(seed);
    let mut nvm = fresh(MIN_SIZE, DEFAULT_ENDURANCE);
    let user_len = nvm.user_len();
    HOT.init(&mut nvm, &[0; 12]).unwrap();
    nvm.commit().unwrap();
    // History first, so the ring holds old entries and has wrapped.
    for i in 0..30 {
        stage(&mut nvm, &gen_txn(&mut rng, user_len, i % 7 == 3));
        nvm.commit().unwrap();
    }
    let base = nvm.into_eeprom();

    // Two large transactions in a row force a checkpoint entry; the rest is random.
    let txns: Vec<Vec<Op>> = (0..60)
        .map(|i| gen_txn(&mut rng, user_len, matches!(i, 5 | 6 | 15 | 30 | 31 | 47)))
        .collect();

    // Fault-free reference run: the state after each transaction, and every write's length.
    let mut reference = Nvm::mount(Recorder {
        inner: base.clone(),
        lens: Vec::new(),
    })
    .unwrap();
    assert!(
        reference.eeprom().lens.is_empty(),
        "clean mount must not write"
    );
    let mut states = vec![user_area(&reference)];
    let mut hot_values = vec![HOT.read(&reference).unwrap()];
    for t in &txns {
        stage(&mut reference, t);
        reference.commit().unwrap();
        states.push(user_area(&reference));
        hot_values.push(HOT.read(&reference).unwrap());
    }
    let lens = reference.into_eeprom().lens;
    // The raw-write model: a plain byte vector, outside the hot record.
    {
        let mut model = states[0].clone();
        for (i, t) in txns.iter().enumerate() {
            for op in t {
                if let Op::Raw(addr, data) = op {
                    model[*addr..*addr + data.len()].copy_from_slice(data);
                }
            }
            assert_eq!(model[RAW_START..], states[i + 1][RAW_START..], "txn {i}");
            if let Some(Op::Hot(v)) = t.iter().rev().find(|op| matches!(op, Op::Hot(_))) {
                assert_eq!(&hot_values[i + 1], v);
            }
        }
    }

    let mut covered = 0;
    for (n, &len) in lens.iter().enumerate() {
        let offsets: BTreeSet<usize> = [0, 1.min(len), len / 2, len.saturating_sub(1), len].into();
        for torn in offsets {
            covered += 1;
            let ctx = format!("seed {seed:#x}, cut at write {n} after {torn}/{len} bytes");
            let mut nvm = Nvm::mount(FaultyEeprom::new(base.clone(), n as u64, torn)).unwrap();
            let mut cut_in = None;
            for (i, t) in txns.iter().enumerate() {
                stage(&mut nvm, t);
                if let Err(e) = nvm.commit() {
                    assert!(e.is_power_lost(), "{ctx}: {e}");
                    cut_in = Some(i);
                    break;
                }
            }
            let k = cut_in.unwrap_or_else(|| panic!("{ctx}: no transaction was cut"));
            assert!(nvm.read_u8(0).unwrap_err().is_power_lost(), "{ctx}");
            let wreck = nvm.into_eeprom().into_inner();

            // A second cut, during the recovery itself.
            let mut again = FaultyEeprom::new(wreck.clone(), 0, 3);
            let first_try = Nvm::mount(&mut again).map(|nvm| user_area(&nvm));
            let recovered = match first_try {
                Ok(area) => area,
                Err(e) => {
                    assert!(e.is_power_lost(), "{ctx}: {e}");
                    user_area(&Nvm::mount(again.into_inner()).unwrap())
                }
            };
            let mut nvm = Nvm::mount(wreck).unwrap();
            let ua = user_area(&nvm);
            assert_eq!(
                ua, recovered,
                "{ctx}: recovery differs after a cut during recovery"
            );
            let resume = if ua == states[k + 1] {
                k + 1
            } else {
                assert!(
                    ua == states[k],
                    "{ctx}: user area is neither before nor after txn {k}"
                );
                k
            };
            // The journal carries on: the next transactions land as in the reference run.
            for (i, t) in txns.iter().enumerate().skip(resume).take(2) {
                stage(&mut nvm, t);
                nvm.commit().unwrap();
                assert_eq!(
                    user_area(&nvm),
                    states[i + 1],
                    "{ctx}: after resuming txn {i}"
                );
            }
            let nvm = Nvm::mount(nvm.into_eeprom()).unwrap();
            let done = (resume + 2).min(txns.len());
            assert_eq!(user_area(&nvm), states[done], "{ctx}: after remount");
        }
    }
    covered
}

#[test]
fn tear_at_every_write_and_inside_writes() {
    let mut covered = 0;
    for seed in [0x1CCA_4D01, 0x5EED_0002, 0xC0FF_EE03, 0xD00D_0004] {
        covered += tear_scenario(seed);
    }
    println!("tear test: {covered} cut points covered");
    assert!(covered >= 2000, "only {covered} cut points");
}

// ---------------------------------------------------------------- wear

#[test]
fn worn_home_page_fails_the_commit_cleanly() {
    let endurance = 1000;
    let mut nvm = fresh(MIN_SIZE, endurance);
    let a = 10 * PAGE_SIZE + 3;
    let b = 40 * PAGE_SIZE;
    nvm.write_u32(a, 1).unwrap();
    nvm.commit().unwrap();
    let page = (nvm.layout().user_start + a) / PAGE_SIZE;
    nvm.eeprom_mut().set_cycles(page, endurance - 2);
    let mut value = 1;
    let err = loop {
        value += 1;
        nvm.write_u32(a, value).unwrap();
        nvm.write_u32(b, value).unwrap();
        let before = user_area(&nvm);
        let writes = nvm.stats().physical_writes;
        match nvm.commit() {
            Ok(()) => assert!(value < 10, "page never failed"),
            Err(e) => {
                assert!(!nvm.has_staged());
                assert_eq!(nvm.stats().physical_writes, writes, "nothing written");
                assert_ne!(user_area(&nvm), before, "staged writes are dropped");
                break e;
            }
        }
    };
    assert_eq!(err, NvmError::Eeprom(EepromError::WornOut { page }));
    assert_eq!(value, 4, "two more commits fit, the third fails");
    assert_eq!(nvm.read_u32(a).unwrap(), 3);
    assert_eq!(nvm.read_u32(b).unwrap(), 3);
    assert_eq!(nvm.wear().failed_pages, vec![page]);
    // Other pages still take commits, also after a remount.
    nvm.write_u32(b, 99).unwrap();
    nvm.commit().unwrap();
    let nvm = Nvm::mount(nvm.into_eeprom()).unwrap();
    assert_eq!(
        (nvm.read_u32(a).unwrap(), nvm.read_u32(b).unwrap()),
        (3, 99)
    );
}

#[test]
fn worn_journal_pages_are_skipped() {
    let endurance = 500;
    let mut nvm = fresh(MIN_SIZE, endurance);
    let layout = nvm.layout();
    let ring = layout.journal_first_page..layout.journal_first_page + layout.journal_pages;
    // All but three journal pages have failed.
    for p in ring.clone().skip(3) {
        nvm.eeprom_mut().set_cycles(p, endurance);
    }
    for i in 0..100u32 {
        nvm.write_u32(0, i + 1).unwrap();
        nvm.commit().unwrap();
    }
    for p in ring.clone().skip(3) {
        assert_eq!(
            nvm.eeprom().page_cycles(p),
            endurance,
            "page {p} written past failure"
        );
    }
    assert!(nvm.eeprom().page_cycles(ring.start) >= 33);
    // An entry needing more pages than are left fails cleanly.
    nvm.write(100, &vec![7; 500]).unwrap();
    let before = user_area(&nvm);
    assert!(matches!(
        nvm.commit(),
        Err(NvmError::Eeprom(EepromError::WornOut { .. }))
    ));
    assert_ne!(user_area(&nvm), before);
    assert_eq!(nvm.read_u32(0).unwrap(), 100);
    assert_eq!(nvm.read_u8(100).unwrap(), 0);
    let nvm = Nvm::mount(nvm.into_eeprom()).unwrap();
    assert_eq!(nvm.read_u32(0).unwrap(), 100);
}

/// Every cut point of the next commit of `ops` on `base`: after a mount the user area must be
/// `before` or `after`. Returns the cut points tried.
fn tear_one_commit(base: &SimEeprom, ops: &[Op], before: &[u8], after: &[u8]) -> usize {
    let mut probe = Nvm::mount(Recorder {
        inner: base.clone(),
        lens: Vec::new(),
    })
    .unwrap();
    stage(&mut probe, ops);
    probe.commit().unwrap();
    assert_eq!(user_area(&probe), after);
    let lens = probe.into_eeprom().lens;
    let mut tried = 0;
    for (n, &len) in lens.iter().enumerate() {
        for torn in BTreeSet::from([0, 1, len / 2, len.saturating_sub(1), len]) {
            tried += 1;
            let mut nvm = Nvm::mount(FaultyEeprom::new(base.clone(), n as u64, torn)).unwrap();
            stage(&mut nvm, ops);
            assert!(nvm.commit().unwrap_err().is_power_lost());
            let nvm = Nvm::mount(nvm.into_eeprom().into_inner()).unwrap();
            let ua = user_area(&nvm);
            assert!(
                ua == before || ua == after,
                "cut at write {n} after {torn}/{len} bytes"
            );
        }
    }
    tried
}

#[test]
fn a_worn_journal_page_never_resurrects_a_stale_entry() {
    let endurance = 1000;
    let mut nvm = fresh(MIN_SIZE, endurance);
    let layout = nvm.layout();
    // 21 one-page entries: the ring has wrapped, the newest (seq 21) is on ring page 0 and
    // ring page 1 still holds the complete entry of seq 2, which set the counter to 2.
    for i in 1..=21u32 {
        nvm.write_u32(0, i).unwrap();
        nvm.commit().unwrap();
    }
    // Ring page 1 fails: it will never be rewritten, so its stale entry stays valid.
    nvm.eeprom_mut()
        .set_cycles(layout.journal_first_page + 1, endurance);
    let base = nvm.into_eeprom();
    let before = user_area(&Nvm::mount(base.clone()).unwrap());

    // The largest entry (19 pages) only fits over the newest entry's page; were it put there,
    // a cut would leave seq 2 as the newest complete entry and turn the counter back to 2.
    let mut nvm = Nvm::mount(base.clone()).unwrap();
    let largest = MAX_TRANSACTION_BYTES - 2 * RANGE_OVERHEAD - 4;
    let ops = [
        Op::Raw(0, 22u32.to_be_bytes().to_vec()),
        Op::Raw(2000, vec![0x5A; largest]),
    ];
    stage(&mut nvm, &ops);
    assert_eq!(nvm.staged_journal_bytes(), MAX_TRANSACTION_BYTES);
    assert!(matches!(
        nvm.commit(),
        Err(NvmError::Eeprom(EepromError::WornOut { .. }))
    ));
    assert_eq!(user_area(&nvm), before);

    // A 17-page entry fits between the failed page and the newest entry; every cut of it
    // recovers to before or after.
    let ops = [
        Op::Raw(0, 22u32.to_be_bytes().to_vec()),
        Op::Raw(2000, vec![0x5A; 900]),
    ];
    stage(&mut nvm, &ops);
    nvm.commit().unwrap();
    let after = user_area(&nvm);
    assert_eq!(nvm.read_u32(0).unwrap(), 22);
    let tried = tear_one_commit(&base, &ops, &before, &after);
    assert!(tried >= 10, "{tried}");
}

#[test]
fn hot_record_spreads_wear() {
    let mut nvm = fresh(MIN_SIZE, DEFAULT_ENDURANCE);
    let rec = HotRecord {
        addr: 8 * PAGE_SIZE,
        slots: 8,
        len: 8,
    };
    rec.init(&mut nvm, &0u64.to_be_bytes()).unwrap();
    nvm.commit().unwrap();
    let writes = 800u64;
    for i in 1..=writes {
        rec.write(&mut nvm, &i.to_be_bytes()).unwrap();
        nvm.commit().unwrap();
    }
    assert_eq!(rec.read(&nvm).unwrap(), writes.to_be_bytes());
    let first = (nvm.layout().user_start + rec.addr) / PAGE_SIZE;
    let per_slot = writes / u64::from(rec.slots);
    for page in first..first + usize::from(rec.slots) {
        let c = u64::from(nvm.eeprom().page_cycles(page));
        assert!(c.abs_diff(per_slot) <= 2, "page {page}: {c} cycles");
    }
    let wear = nvm.wear();
    assert!(u64::from(wear.max_cycles) <= per_slot + 2, "{wear:?}");
    assert_eq!(wear.hottest.len(), 5);
    assert!(wear.failed_pages.is_empty());
    assert!(wear.mean_cycles > 0.0 && wear.mean_cycles < f64::from(wear.max_cycles));
    // The same record kept in one slot burns one page.
    let one = HotRecord { slots: 1, ..rec };
    let mut nvm = fresh(MIN_SIZE, DEFAULT_ENDURANCE);
    for i in 1..=writes {
        one.write(&mut nvm, &i.to_be_bytes()).unwrap();
        nvm.commit().unwrap();
    }
    assert!(u64::from(nvm.wear().max_cycles) >= writes);
}

// ---------------------------------------------------------------- image codec

#[test]
fn image_round_trip() {
    let mut nvm = fresh(DEFAULT_SIZE, 12_345);
    nvm.write(77, b"persist me").unwrap();
    nvm.commit().unwrap();
    let img = encode_image(nvm.eeprom());
    assert_eq!(img.len(), image_len(DEFAULT_SIZE));
    assert_eq!(&img[..8], b"ICCARDNV");
    let sim = decode_image(&img).unwrap();
    assert_eq!(&sim, nvm.eeprom());
    assert_eq!(sim.endurance(), 12_345);
    let nvm = Nvm::mount(sim).unwrap();
    assert_eq!(nvm.read_vec(77, 10).unwrap(), b"persist me");
}

#[test]
fn bad_images_are_refused() {
    let img = encode_image(fresh(MIN_SIZE, 100).eeprom());
    let n = img.len();

    assert_eq!(
        decode_image(&img[..1000]),
        Err(ImageError::Truncated {
            expected: n,
            got: 1000
        })
    );
    assert_eq!(
        decode_image(&img[..n - 1]),
        Err(ImageError::Truncated {
            expected: n,
            got: n - 1
        })
    );
    assert!(matches!(
        decode_image(&img[..12]),
        Err(ImageError::Truncated { .. })
    ));
    assert!(matches!(
        decode_image(&[]),
        Err(ImageError::Truncated { .. })
    ));
    let mut long = img.clone();
    long.push(0);
    assert!(matches!(
        decode_image(&long),
        Err(ImageError::TrailingBytes { .. })
    ));

    let mut bad = img.clone();
    bad[0] = b'X';
    assert_eq!(decode_image(&bad), Err(ImageError::BadMagic));
    assert_eq!(decode_image(b"PK\x03\x04 zip"), Err(ImageError::BadMagic));

    let mut bad = img.clone();
    bad[9] = 2;
    let err = decode_image(&bad).unwrap_err();
    assert_eq!(
        err,
        ImageError::UnsupportedVersion {
            found: 2,
            supported: IMAGE_FORMAT_VERSION
        }
    );
    assert!(err.to_string().contains("version 2"));

    for at in [20, 20 + 5000, n - 40, n - 1] {
        let mut bad = img.clone();
        bad[at] ^= 0x01;
        assert_eq!(
            decode_image(&bad),
            Err(ImageError::ChecksumMismatch),
            "flip at {at}"
        );
    }

    let mut bad = img.clone();
    bad[19] = 32; // page size
    assert!(matches!(
        decode_image(&bad),
        Err(ImageError::BadGeometry(_))
    ));
    let mut bad = img;
    bad[10..14].copy_from_slice(&1000u32.to_be_bytes());
    assert!(matches!(
        decode_image(&bad),
        Err(ImageError::BadGeometry(_))
    ));
}

// ---------------------------------------------------------------- golden image

const GOLDEN_TEXT: &[u8] = b"ICCARD NVM GOLDEN v1";
const GOLDEN_HOT: HotRecord = HotRecord {
    addr: 4 * PAGE_SIZE,
    slots: 4,
    len: 8,
};

/// The deterministic sequence that produced `golden/nvm-v1.img`.
fn golden_eeprom() -> SimEeprom {
    let mut nvm = fresh(MIN_SIZE, DEFAULT_ENDURANCE);
    nvm.write(0, GOLDEN_TEXT).unwrap();
    nvm.write_u32(64, 0xDEAD_BEEF).unwrap();
    nvm.commit().unwrap();
    GOLDEN_HOT.init(&mut nvm, &[0; 8]).unwrap();
    nvm.commit().unwrap();
    for i in 1..=5u8 {
        GOLDEN_HOT.write(&mut nvm, &[i; 8]).unwrap();
        nvm.write_u16(128, u16::from(i)).unwrap();
        nvm.commit().unwrap();
    }
    nvm.write(1000, &[0xAB; 300]).unwrap();
    nvm.commit().unwrap();
    nvm.into_eeprom()
}

fn golden_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/nvm-v1.img")
}

#[test]
fn golden_image_v1_still_loads() {
    let path = golden_path();
    if std::env::var("ICCARD_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, encode_image(&golden_eeprom())).unwrap();
    }
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (ICCARD_BLESS=1 regenerates it)", path.display()));
    let sim = decode_image(&bytes).unwrap();
    let nvm = Nvm::mount(sim).unwrap();
    assert_eq!(nvm.stats().physical_writes, 0);
    assert_eq!(nvm.read_vec(0, GOLDEN_TEXT.len()).unwrap(), GOLDEN_TEXT);
    assert_eq!(nvm.read_u32(64).unwrap(), 0xDEAD_BEEF);
    assert_eq!(nvm.read_u16(128).unwrap(), 5);
    assert_eq!(GOLDEN_HOT.read(&nvm).unwrap(), [5; 8]);
    assert_eq!(nvm.read_vec(1000, 300).unwrap(), vec![0xAB; 300]);
    assert_eq!(nvm.read_u8(1300).unwrap(), 0);
    // This build writes the very same bytes: the format is pinned.
    assert!(
        encode_image(&golden_eeprom()) == bytes,
        "the NVM or image format changed: bump a version and keep reading v1"
    );
}

// ---------------------------------------------------------------- property test

#[derive(Debug, Clone)]
enum ModelOp {
    Write(usize, Vec<u8>),
    Commit,
    Rollback,
    Remount,
}

const WINDOW: usize = 448;

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        6 => (0..WINDOW - 48, proptest::collection::vec(any::<u8>(), 0..48))
            .prop_map(|(a, d)| ModelOp::Write(a, d)),
        2 => Just(ModelOp::Commit),
        1 => Just(ModelOp::Rollback),
        1 => Just(ModelOp::Remount),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn nvm_agrees_with_a_byte_vector(ops in proptest::collection::vec(model_op(), 1..60)) {
        let mut nvm = Some(fresh(MIN_SIZE, DEFAULT_ENDURANCE));
        let mut committed = vec![0u8; WINDOW];
        let mut current = committed.clone();
        for op in ops {
            let n = nvm.as_mut().unwrap();
            match op {
                ModelOp::Write(addr, data) => {
                    n.write(addr, &data).unwrap();
                    current[addr..addr + data.len()].copy_from_slice(&data);
                }
                ModelOp::Commit => {
                    n.commit().unwrap();
                    committed.clone_from(&current);
                }
                ModelOp::Rollback => {
                    n.rollback();
                    current.clone_from(&committed);
                }
                ModelOp::Remount => {
                    let e = nvm.take().unwrap().into_eeprom();
                    nvm = Some(Nvm::mount(e).unwrap());
                    current.clone_from(&committed);
                }
            }
            let n = nvm.as_ref().unwrap();
            prop_assert_eq!(n.read_vec(0, WINDOW).unwrap(), current.clone());
            prop_assert!(current == committed || n.has_staged());
        }
        let n = nvm.take().unwrap();
        let n = Nvm::mount(n.into_eeprom()).unwrap();
        prop_assert_eq!(n.read_vec(0, WINDOW).unwrap(), committed);
    }
}
