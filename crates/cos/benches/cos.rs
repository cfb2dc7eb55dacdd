//! Card OS throughput in-process: APDUs per second for SELECT, READ BINARY and a secure-
//! messaging UPDATE BINARY on the personalized reference card, and the NVM bytes each
//! command writes (printed once, before the measurements).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iccard_apdu::hex;
use iccard_cos::fuzzing::keys;
use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "../tests/figures.rs"]
#[allow(dead_code)]
mod figures;

fn apdus(c: &mut Criterion) {
    println!("NVM cost per command (reference card, application 1):");
    println!("{}", figures::table(&figures::nvm_costs()));

    let mut group = c.benchmark_group("apdu");
    group.throughput(Throughput::Elements(1));

    // SELECT by DF name with its FCI, alternating two applications (each one changes the DF).
    let mut card = figures::bench_card();
    let select = [
        hex::decode("00A4040007F054455354303100").unwrap(),
        hex::decode("00A4040007F054455354303200").unwrap(),
    ];
    assert!(card.process(&select[0]).ends_with(&[0x90, 0x00]));
    let mut i = 0usize;
    group.bench_function("select_by_name_fci", |b| {
        b.iter(|| {
            i += 1;
            black_box(card.process(black_box(&select[i & 1])))
        })
    });

    // READ BINARY of 32 bytes by SFI.
    let mut card = figures::bench_card();
    assert_eq!(figures::send(&mut card, "00A4040C07F0544553543031"), 0x9000);
    let read = hex::decode("00B0810020").unwrap();
    assert!(card.process(&read).ends_with(&[0x90, 0x00]));
    group.bench_function("read_binary_32", |b| {
        b.iter(|| black_box(card.process(black_box(&read))))
    });

    // UPDATE BINARY of 8 bytes under secure messaging: the card's time for the MACed command
    // only (GET CHALLENGE and the host's MAC are outside the timed part); the data change at
    // every iteration so that each command really commits.
    let mut card = figures::bench_card();
    assert_eq!(figures::send(&mut card, "00A4040C07F0544553543031"), 0x9000);
    let mut n = 0u64;
    let mut sm_update = |card: &mut iccard_cos::Card<_, _>, timed: &mut Duration| {
        n += 1;
        let iv = figures::challenge(card);
        let plain = format!("00D6820008{}", hex::encode(&n.to_be_bytes()));
        let apdu = figures::with_mac(&plain, &keys::APP1_MAINTENANCE, &iv);
        let start = Instant::now();
        let r = card.process(black_box(&apdu));
        *timed += start.elapsed();
        assert!(r.ends_with(&[0x90, 0x00]), "{}", hex::encode(&r));
    };
    group.bench_function("update_binary_sm_8", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                sm_update(&mut card, &mut timed);
            }
            timed
        })
    });
    group.finish();
}

criterion_group!(benches, apdus);
criterion_main!(benches);
