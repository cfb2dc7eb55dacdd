//! Criterion baseline for the APDU codec hot paths: command parse/encode and BER-TLV parse.

use criterion::{criterion_group, criterion_main, Criterion};
use iccard_apdu::{hex, tlv, Command};
use std::hint::black_box;

fn codec(c: &mut Criterion) {
    let select = hex::decode("00A4040009A0000000038698070100").expect("hex");
    c.bench_function("command_parse_select", |b| {
        b.iter(|| Command::parse(black_box(&select)))
    });
    let cmd = Command::parse(&select).expect("valid");
    c.bench_function("command_to_bytes_select", |b| {
        b.iter(|| black_box(&cmd).to_bytes())
    });
    let fci = hex::decode("6F148409A00000000386980701A5078801019F080102").expect("hex");
    c.bench_function("tlv_parse_fci", |b| {
        b.iter(|| {
            let top = tlv::parse_all(black_box(&fci)).expect("valid");
            top[0].children().expect("constructed").len()
        })
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
