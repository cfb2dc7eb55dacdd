//! Baseline benchmarks of the crypto primitives: raw block throughput of each cipher (ECB over
//! 1 KiB), the purse MAC over 16 bytes, and card-key diversification. Other benchmarks (purse
//! transactions) are compared against these.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iccard_crypto::{diversify, pboc_mac, session_key, BlockCipher, Cipher, PurseAlg};

const KEY: [u8; 24] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54, 0x32, 0x10,
    0x89, 0xAB, 0xCD, 0xEF, 0x01, 0x23, 0x45, 0x67,
];

/// ECB over 1 KiB with a key schedule built once: the raw block throughput.
fn block_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("ecb_1KiB");
    group.throughput(Throughput::Bytes(1024));
    let cases = [
        ("des", Cipher::Des, &KEY[..8]),
        ("3des_2key", Cipher::TripleDes, &KEY[..16]),
        ("3des_3key", Cipher::TripleDes, &KEY[..24]),
        ("sm4", Cipher::Sm4, &KEY[..16]),
        ("aes128", Cipher::Aes128, &KEY[..16]),
    ];
    for (name, cipher, key) in cases {
        let bc = BlockCipher::new(cipher, key).expect("valid key length");
        let mut buf = [0u8; 1024];
        group.bench_function(name, |b| {
            b.iter(|| {
                bc.encrypt_blocks(black_box(&mut buf))
                    .expect("whole blocks");
            })
        });
    }
    group.finish();
}

/// The purse MAC over 16 bytes (two DES blocks / two SM4 blocks with padding), including the
/// per-call key schedule, as a card computes it.
fn purse_mac(c: &mut Criterion) {
    let mut group = c.benchmark_group("pboc_mac_16B");
    let card_key: [u8; 16] = KEY[..16].try_into().expect("16 bytes");
    let data = [0x5Au8; 16];
    for (name, alg) in [
        ("3des_gen", PurseAlg::TripleDes),
        ("sm4_gen", PurseAlg::Sm4),
    ] {
        let sk = session_key(alg, &card_key, &[1, 2, 3, 4, 0, 0, 0x80, 0]);
        group.bench_function(name, |b| {
            b.iter(|| pboc_mac(black_box(&sk), black_box(&data)))
        });
    }
    group.finish();
}

/// Card-key diversification from a 16-byte master key.
fn diversification(c: &mut Criterion) {
    let mut group = c.benchmark_group("diversify");
    let master: [u8; 16] = KEY[..16].try_into().expect("16 bytes");
    let d = [0x12, 0x34, 0x56, 0x78, 0x90, 0x00, 0x00, 0x01];
    for (name, alg) in [
        ("3des_gen", PurseAlg::TripleDes),
        ("sm4_gen", PurseAlg::Sm4),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| diversify(alg, black_box(&master), black_box(&d)))
        });
    }
    group.finish();
}

criterion_group!(benches, block_throughput, purse_mac, diversification);
criterion_main!(benches);
