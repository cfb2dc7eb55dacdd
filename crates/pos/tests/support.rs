//! Cards, PSAMs, times and a ready point of use for the point-of-use tests.

use iccard_crypto::PurseAlg;
use iccard_issuer::devkeys;
use iccard_link::{CardChannel, LinkError};
use iccard_pos::{LossListDelta, PointOfUse, PosConfig};
use iccard_terminal::{MasterKeyHost, MemoryPending, Psam, PurseCard, Recharge, TransactionTime};
use std::path::Path;

pub use iccard_testkit::{psam_card, user_card, Fault, Flaky, MemCard};

/// The terminal id of the test PSAM.
pub const TERMINAL_ID: [u8; 6] = [0x12, 0x34, 0x56, 0x78, 0x90, 0x01];
/// Its hex form.
pub const TERMINAL_HEX: &str = "123456789001";
/// A recharge point's terminal id.
pub const RECHARGE_ID: [u8; 6] = [0x99, 0x88, 0x77, 0x66, 0x55, 0x44];

/// A transaction time on 2026-03-14.
pub fn at(time: &str) -> TransactionTime {
    TransactionTime::parse("20260314", time).unwrap()
}

/// A transaction time on another day.
pub fn on(date: &str, time: &str) -> TransactionTime {
    TransactionTime::parse(date, time).unwrap()
}

/// A personalized card loaded with `amount` fen.
pub fn loaded(card_number: &str, seed: u64, amount: u32) -> MemCard {
    let mut card = user_card(card_number, PurseAlg::TripleDes, seed);
    let host = MasterKeyHost::new(devkeys::MLK.value(), devkeys::MTK.value());
    let mut purse = PurseCard::open(&mut card).unwrap();
    Recharge::new(&host, RECHARGE_ID)
        .load(
            &mut purse,
            amount,
            &at("070000"),
            &mut MemoryPending::default(),
        )
        .unwrap();
    card
}

/// The card's balance.
pub fn balance(card: &mut MemCard) -> u32 {
    iccard_terminal::read_balance(card).unwrap().balance_fen
}

/// The card's application serial (hex).
pub fn serial_hex(card: &mut MemCard) -> String {
    let purse = PurseCard::open(card).unwrap();
    iccard_apdu::hex::encode(&purse.identity().application_serial)
}

/// A point of use over a fresh database in `dir` with a new PSAM, its loss list current at
/// 08:00 on 2026-03-14 (empty, version 0).
pub fn pos_in(dir: &tempfile::TempDir, psam_seed: u64) -> PointOfUse<MemCard> {
    pos_at(&db_in(dir), psam_card(TERMINAL_ID, psam_seed))
}

/// The database file of a test directory.
pub fn db_in(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("terminal.sqlite")
}

/// A point of use over the database `db` with this PSAM, its loss list brought current at
/// 08:00 on 2026-03-14 (no change when it is already).
pub fn pos_at<P: CardChannel>(db: &Path, psam: P) -> PointOfUse<P> {
    let psam = Psam::open(psam).unwrap();
    let mut pos = PointOfUse::open(psam, db, PosConfig::default()).unwrap();
    let version = pos.loss_list().version().unwrap();
    pos.update_loss_list(
        &LossListDelta {
            from_version: version,
            to_version: version,
            changes: vec![],
        },
        &at("080000"),
    )
    .unwrap();
    pos
}

/// A channel that flips the last byte of MAC1 in the first DEBIT FOR PURCHASE: the card
/// refuses it (9302) and moves no money.
pub struct BadMac1<C>(pub C, pub bool);

impl<C: CardChannel> CardChannel for BadMac1<C> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        if !self.1 && apdu.len() == 21 && apdu[0] == 0x80 && apdu[1] == 0x54 {
            self.1 = true;
            let mut a = apdu.to_vec();
            a[19] ^= 0x01;
            return self.0.transmit(&a);
        }
        self.0.transmit(apdu)
    }
    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        self.0.reset()
    }
}

/// Amount debited according to the journal (normal, recovered, suspicious rows).
pub fn journaled_debits(pos: &PointOfUse<impl CardChannel>) -> u64 {
    pos.journal()
        .records()
        .unwrap()
        .iter()
        .filter(|r| r.record.status.debited())
        .map(|r| u64::from(r.record.amount_fen))
        .sum()
}
