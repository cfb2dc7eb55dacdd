//! Offline purchases per second in-process (card + PSAM, the whole PBOC exchange through the
//! card OS and the terminal library), the block-cipher operations one purchase costs, and the
//! crypto crate's raw DES block throughput measured in the same run as the baseline.
//!
//! `cargo bench -p iccard-terminal --bench purchase` (release). Plain timing loops rather than
//! criterion: a card's offline serial is 2 bytes, so a run must stay under 65,535 purchases.

use iccard_crypto::{block_ops, ecb_encrypt, reset_block_ops, Cipher, PurseAlg};
use iccard_issuer::devkeys;
use iccard_issuer::personalize::{self, Personalization, PurseProfile};
use iccard_issuer::psam::{self as psam_perso, PsamPersonalization};
use iccard_terminal::{
    MasterKeyHost, MemoryPending, Psam, Purchase, PurseCard, Recharge, TransactionTime,
};
use iccard_testkit::{blank, MemCard};
use std::hint::black_box;
use std::time::Instant;

/// A card loaded with plenty and a PSAM, ready for `n` purchases of 1 fen.
fn setup(alg: PurseAlg, seed: u64) -> (PurseCard<MemCard>, Psam<MemCard>) {
    let mut p = Personalization::new("8860000000000001", "123456", alg);
    let mut profile = PurseProfile {
        start_date: [0x20, 0x25, 0x01, 0x01],
        expiry_date: [0x20, 0x35, 0x12, 0x31],
        ..PurseProfile::default()
    };
    profile.settings.max_balance = 1_000_000_000;
    profile.settings.daily_limit = 1_000_000_000;
    p.purse = profile;
    let card = personalize::personalize(blank(seed), &p).unwrap();
    let sam = psam_perso::personalize(
        blank(seed + 1),
        &PsamPersonalization {
            terminal_id: [0, 0, 0, 0, 0, 0x42],
        },
    )
    .unwrap();
    let mut card = PurseCard::open(card).unwrap();
    let host = MasterKeyHost::new(devkeys::MLK.value(), devkeys::MTK.value());
    let when = TransactionTime::parse("20260314", "101010").unwrap();
    Recharge::new(&host, [0, 0, 0, 0, 0, 7])
        .load(&mut card, 500_000_000, &when, &mut MemoryPending::default())
        .unwrap();
    (card, Psam::open(sam).unwrap())
}

fn purchases_per_second(alg: PurseAlg, n: u32, seed: u64) -> (f64, u64) {
    let (mut card, mut psam) = setup(alg, seed);
    let when = TransactionTime::parse("20260315", "120000").unwrap();
    let mut pending = MemoryPending::default();
    // One purchase measured for its block-cipher operations (this thread's counter).
    reset_block_ops();
    Purchase::new(&mut psam)
        .pay(&mut card, 1, &when, &mut pending)
        .unwrap();
    let ops = block_ops();
    let start = Instant::now();
    for _ in 0..n {
        let out = Purchase::new(&mut psam)
            .pay(&mut card, 1, &when, &mut pending)
            .unwrap();
        black_box(out);
    }
    (n as f64 / start.elapsed().as_secs_f64(), ops)
}

fn des_blocks_per_second(n: u32) -> f64 {
    let key = [0x13u8, 0x34, 0x57, 0x79, 0x9B, 0xBC, 0xDF, 0xF1];
    let mut block = [0u8; 8];
    let start = Instant::now();
    for _ in 0..n {
        // One block per call: what the purse's MACs do (key schedule included).
        let out = ecb_encrypt(Cipher::Des, &key, &block).unwrap();
        block.copy_from_slice(&out);
    }
    black_box(block);
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo test --benches` runs this with no `--bench` flag: keep it short there.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (purchases, blocks) = if quick { (50, 2_000) } else { (5_000, 400_000) };
    let rounds = if quick { 1 } else { 5 };
    println!("offline purchase (card + PSAM, in-process) vs raw DES, {rounds} round(s)");
    println!(
        "{:<8} {:>14} {:>16} {:>16} {:>20}",
        "round", "3DES purch/s", "SM4 purch/s", "DES blocks/s", "DES blocks per purchase"
    );
    let mut ops = (0, 0);
    for r in 0..rounds {
        let (tdes, ops_tdes) =
            purchases_per_second(PurseAlg::TripleDes, purchases, 10 + r as u64 * 4);
        let (sm4, ops_sm4) = purchases_per_second(PurseAlg::Sm4, purchases, 12 + r as u64 * 4);
        let des = des_blocks_per_second(blocks);
        ops = (ops_tdes, ops_sm4);
        println!(
            "{:<8} {:>14.0} {:>16.0} {:>16.0} {:>20.0}",
            r + 1,
            tdes,
            sm4,
            des,
            des / tdes
        );
    }
    println!(
        "block-cipher operations in one purchase (card + PSAM + terminal): 3DES generation {}, SM4 generation {}",
        ops.0, ops.1
    );
}
