//! The user card's purse, seen from the terminal: the PBOC electronic-purse commands as typed
//! calls (DESIGN §4, `docs/COS.md`).
//!
//! | call | APDU |
//! |---|---|
//! | [`PurseCard::open`] | `00 A4 04 00 09 A00000000386980701 00`, then READ BINARY SFI 15 (`00 B0 95 00 1E`) |
//! | [`PurseCard::initialize_load`] | `80 50 00 02 0B` key index ‖ amount ‖ terminal id, Le `10` |
//! | [`PurseCard::credit_for_load`] | `80 52 00 00 0B` date ‖ time ‖ MAC2, Le `04` |
//! | [`PurseCard::initialize_purchase`] | `80 50 01 02 0B` key index ‖ amount ‖ terminal id, Le `0F` |
//! | [`PurseCard::debit_for_purchase`] | `80 54 01 00 0F` terminal serial ‖ date ‖ time ‖ MAC1, Le `08` |
//! | [`PurseCard::balance`] | `80 5C 00 02 04` |
//! | [`PurseCard::transaction_proof`] | `80 5A 00 <type> 02` serial, Le `08` |
//! | [`PurseCard::log`] | `00 B2 <n> C4 17` for n = 1, 2, … until `6A83` |

use crate::error::{Device, TerminalError};
use crate::io::{arr, exchange, expect, ok};
use crate::time::{digits, TransactionTime};
use iccard_apdu::{Command as Apdu, StatusWord};
use iccard_crypto::PurseAlg;
use iccard_link::CardChannel;

/// DF name of the purse application (DESIGN §4).
pub const PURSE_AID: [u8; 9] = [0xA0, 0x00, 0x00, 0x00, 0x03, 0x86, 0x98, 0x07, 0x01];
/// SFI of the public application file.
pub const SFI_PUBLIC: u8 = 0x15;
/// Length of the public application file.
pub const PUBLIC_FILE_LEN: usize = 30;
/// SFI of the transaction log.
pub const SFI_LOG: u8 = 0x18;
/// Length of one transaction log record.
pub const LOG_RECORD_LEN: usize = 23;
/// The purse key index this terminal uses for load and purchase.
pub const DEFAULT_KEY_INDEX: u8 = 0x01;

/// PBOC transaction types (the byte MACs, TACs and log records carry).
pub mod tx_type {
    /// Passbook load.
    pub const ED_LOAD: u8 = 0x01;
    /// Purse load.
    pub const EP_LOAD: u8 = 0x02;
    /// Passbook unload.
    pub const ED_UNLOAD: u8 = 0x03;
    /// Passbook purchase.
    pub const ED_PURCHASE: u8 = 0x05;
    /// Purse unload (project-defined: PBOC defines unload for the passbook only).
    pub const EP_UNLOAD: u8 = 0x13;
    /// Purse purchase.
    pub const EP_PURCHASE: u8 = 0x06;
    /// Compound purchase.
    pub const COMPOUND_PURCHASE: u8 = 0x09;

    /// A short name for a type byte.
    pub fn name(t: u8) -> &'static str {
        match t {
            ED_LOAD => "passbook load",
            EP_LOAD => "load",
            ED_UNLOAD => "passbook unload",
            ED_PURCHASE => "passbook purchase",
            EP_PURCHASE => "purchase",
            COMPOUND_PURCHASE => "compound purchase",
            EP_UNLOAD => "unload",
            _ => "other",
        }
    }
}

/// The card's public application file (SFI 15): who it is and when it is valid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CardIdentity {
    /// Issuer identification (8 bytes).
    #[serde(with = "crate::hexser")]
    pub issuer_id: [u8; 8],
    /// Application type.
    pub application_type: u8,
    /// Application version.
    pub application_version: u8,
    /// Application serial number: the card number as 10 bytes of BCD.
    #[serde(with = "crate::hexser")]
    pub application_serial: [u8; 10],
    /// Start of validity, BCD YYYYMMDD.
    #[serde(with = "crate::hexser")]
    pub start_date: [u8; 4],
    /// End of validity, BCD YYYYMMDD.
    #[serde(with = "crate::hexser")]
    pub expiry_date: [u8; 4],
}

impl CardIdentity {
    /// Parses the 30-byte public application file.
    pub fn parse(b: &[u8]) -> Result<Self, TerminalError> {
        if b.len() < PUBLIC_FILE_LEN {
            return Err(TerminalError::Malformed {
                device: Device::Card,
                step: "READ BINARY public application file",
                len: b.len(),
                expected: PUBLIC_FILE_LEN,
            });
        }
        Ok(Self {
            issuer_id: arr(b, 0),
            application_type: b[8],
            application_version: b[9],
            application_serial: arr(b, 10),
            start_date: arr(b, 20),
            expiry_date: arr(b, 24),
        })
    }

    /// The card number: the application serial's digits without the left padding.
    pub fn card_number(&self) -> String {
        let all = digits(&self.application_serial);
        let trimmed = all.trim_start_matches('0');
        if trimmed.is_empty() {
            "0".into()
        } else {
            trimmed.into()
        }
    }

    /// The diversification data of the card's keys: the rightmost 8 bytes of the application
    /// serial (DESIGN §4).
    pub fn diversifier(&self) -> [u8; 8] {
        arr(&self.application_serial, 2)
    }

    /// Refuses a transaction dated outside the validity period. Dates that are not BCD, or all
    /// zero, are not checked (the card did not set them).
    pub fn check_valid_on(&self, when: &TransactionTime) -> Result<(), TerminalError> {
        let set = |d: &[u8; 4]| iccard_apdu::bcd::is_valid(d) && d.iter().any(|b| *b != 0);
        // BCD dates compare as bytes in calendar order.
        let too_early = set(&self.start_date) && when.date < self.start_date;
        let too_late = set(&self.expiry_date) && when.date > self.expiry_date;
        if too_early || too_late {
            return Err(TerminalError::NotValid {
                date: when.date_string(),
                start: digits(&self.start_date),
                expiry: digits(&self.expiry_date),
            });
        }
        Ok(())
    }
}

/// The answer to INITIALIZE FOR LOAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadInit {
    /// Balance before the load.
    pub balance_fen: u32,
    /// Online transaction serial this load uses.
    pub online_serial: u16,
    /// Key version of the card's DLK.
    pub key_version: u8,
    /// Algorithm id.
    pub alg_id: u8,
    /// Card random.
    pub random: [u8; 4],
    /// MAC1.
    pub mac1: [u8; 4],
}

/// The answer to INITIALIZE FOR PURCHASE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseInit {
    /// Balance before the purchase.
    pub balance_fen: u32,
    /// Offline transaction serial this purchase uses.
    pub offline_serial: u16,
    /// Overdraft limit (3 bytes).
    pub overdraft_fen: u32,
    /// Key version of the card's DPK.
    pub key_version: u8,
    /// Algorithm id.
    pub alg_id: u8,
    /// Card random.
    pub random: [u8; 4],
}

/// The proof of a completed transaction (GET TRANSACTION PROOF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionProof {
    /// MAC2 of the transaction (load: the host's; purchase: the card's).
    pub mac: [u8; 4],
    /// TAC.
    pub tac: [u8; 4],
}

/// One transaction log record (SFI 18).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogRecord {
    /// Serial the transaction used (online for loads, offline for purchases).
    pub serial: u16,
    /// Overdraft limit at the time.
    pub overdraft_fen: u32,
    /// Amount.
    pub amount_fen: u32,
    /// Transaction type byte.
    pub tx_type: u8,
    /// Its name ("load", "purchase", …).
    pub kind: &'static str,
    /// Terminal id.
    #[serde(with = "crate::hexser")]
    pub terminal_id: [u8; 6],
    /// Date `YYYYMMDD`.
    pub date: String,
    /// Time `HHMMSS`.
    pub time: String,
}

impl LogRecord {
    /// Parses a 23-byte record:
    /// `serial(2) ‖ overdraft(3) ‖ amount(4) ‖ type(1) ‖ terminal id(6) ‖ date(4) ‖ time(3)`.
    pub fn parse(b: &[u8]) -> Result<Self, TerminalError> {
        if b.len() != LOG_RECORD_LEN {
            return Err(TerminalError::Malformed {
                device: Device::Card,
                step: "READ RECORD transaction log",
                len: b.len(),
                expected: LOG_RECORD_LEN,
            });
        }
        Ok(Self {
            serial: u16::from_be_bytes([b[0], b[1]]),
            overdraft_fen: u32::from_be_bytes([0, b[2], b[3], b[4]]),
            amount_fen: u32::from_be_bytes(arr(b, 5)),
            tx_type: b[9],
            kind: tx_type::name(b[9]),
            terminal_id: arr(b, 10),
            date: digits(&b[16..20]),
            time: digits(&b[20..23]),
        })
    }
}

/// A card whose purse application is selected.
pub struct PurseCard<C: CardChannel> {
    ch: C,
    identity: CardIdentity,
}

impl<C: CardChannel> PurseCard<C> {
    /// Selects the purse application and reads the card's identity.
    pub fn open(mut ch: C) -> Result<Self, TerminalError> {
        let identity = Self::select(&mut ch)?;
        Ok(Self { ch, identity })
    }

    fn select(ch: &mut C) -> Result<CardIdentity, TerminalError> {
        expect(
            ch,
            Device::Card,
            "SELECT purse application",
            &Apdu::new(0x00, 0xA4, 0x04, 0x00)
                .with_data(PURSE_AID)
                .with_ne(256),
            None,
        )?;
        let public = expect(
            ch,
            Device::Card,
            "READ BINARY public application file",
            &Apdu::new(0x00, 0xB0, 0x80 | SFI_PUBLIC, 0x00).with_ne(PUBLIC_FILE_LEN),
            Some(PUBLIC_FILE_LEN),
        )?;
        CardIdentity::parse(&public)
    }

    /// Selects the purse again (after a reset or a lost answer) and returns the identity read.
    pub fn reselect(&mut self) -> Result<&CardIdentity, TerminalError> {
        self.identity = Self::select(&mut self.ch)?;
        Ok(&self.identity)
    }

    /// Who the card is.
    pub fn identity(&self) -> &CardIdentity {
        &self.identity
    }

    /// The channel.
    pub fn channel(&mut self) -> &mut C {
        &mut self.ch
    }

    /// Gives the channel back.
    pub fn into_inner(self) -> C {
        self.ch
    }

    fn init_data(key_index: u8, amount_fen: u32, terminal_id: &[u8; 6]) -> Vec<u8> {
        let mut d = vec![key_index];
        d.extend_from_slice(&amount_fen.to_be_bytes());
        d.extend_from_slice(terminal_id);
        d
    }

    /// INITIALIZE FOR LOAD (purse).
    pub fn initialize_load(
        &mut self,
        key_index: u8,
        amount_fen: u32,
        terminal_id: &[u8; 6],
    ) -> Result<LoadInit, TerminalError> {
        self.initialize_online(
            "INITIALIZE FOR LOAD",
            0x00,
            key_index,
            amount_fen,
            terminal_id,
        )
    }

    /// INITIALIZE FOR UNLOAD (purse, `80 50 05 02`): the same answer as INITIALIZE FOR LOAD.
    pub fn initialize_unload(
        &mut self,
        key_index: u8,
        amount_fen: u32,
        terminal_id: &[u8; 6],
    ) -> Result<LoadInit, TerminalError> {
        self.initialize_online(
            "INITIALIZE FOR UNLOAD",
            0x05,
            key_index,
            amount_fen,
            terminal_id,
        )
    }

    /// INITIALIZE FOR LOAD (`p1` 00) or UNLOAD (`p1` 05) of the purse: balance, online serial,
    /// key version, algorithm, random, MAC1.
    fn initialize_online(
        &mut self,
        step: &'static str,
        p1: u8,
        key_index: u8,
        amount_fen: u32,
        terminal_id: &[u8; 6],
    ) -> Result<LoadInit, TerminalError> {
        let r = expect(
            &mut self.ch,
            Device::Card,
            step,
            &Apdu::new(0x80, 0x50, p1, 0x02)
                .with_data(Self::init_data(key_index, amount_fen, terminal_id))
                .with_ne(0x10),
            Some(0x10),
        )?;
        Ok(LoadInit {
            balance_fen: u32::from_be_bytes(arr(&r, 0)),
            online_serial: u16::from_be_bytes(arr(&r, 4)),
            key_version: r[6],
            alg_id: r[7],
            random: arr(&r, 8),
            mac1: arr(&r, 12),
        })
    }

    /// DEBIT FOR UNLOAD (`80 54 03 00`); answers (MAC3, TAC). A lost answer is
    /// [`TerminalError::Link`]: the caller cannot know whether the card executed it.
    pub fn debit_for_unload(
        &mut self,
        when: &TransactionTime,
        mac2: &[u8; 4],
    ) -> Result<([u8; 4], [u8; 4]), TerminalError> {
        let mut d = when.bytes().to_vec();
        d.extend_from_slice(mac2);
        let r = expect(
            &mut self.ch,
            Device::Card,
            "DEBIT FOR UNLOAD",
            &Apdu::new(0x80, 0x54, 0x03, 0x00).with_data(d).with_ne(8),
            Some(8),
        )?;
        Ok((arr(&r, 0), arr(&r, 4)))
    }

    /// CREDIT FOR LOAD; answers the TAC. A lost answer is [`TerminalError::Link`] with step
    /// `CREDIT FOR LOAD`: the caller cannot know whether the card executed it.
    pub fn credit_for_load(
        &mut self,
        when: &TransactionTime,
        mac2: &[u8; 4],
    ) -> Result<[u8; 4], TerminalError> {
        let mut d = when.bytes().to_vec();
        d.extend_from_slice(mac2);
        let r = expect(
            &mut self.ch,
            Device::Card,
            "CREDIT FOR LOAD",
            &Apdu::new(0x80, 0x52, 0x00, 0x00).with_data(d).with_ne(4),
            Some(4),
        )?;
        Ok(arr(&r, 0))
    }

    /// INITIALIZE FOR PURCHASE (purse).
    pub fn initialize_purchase(
        &mut self,
        key_index: u8,
        amount_fen: u32,
        terminal_id: &[u8; 6],
    ) -> Result<PurchaseInit, TerminalError> {
        let r = expect(
            &mut self.ch,
            Device::Card,
            "INITIALIZE FOR PURCHASE",
            &Apdu::new(0x80, 0x50, 0x01, 0x02)
                .with_data(Self::init_data(key_index, amount_fen, terminal_id))
                .with_ne(0x0F),
            Some(0x0F),
        )?;
        Ok(PurchaseInit {
            balance_fen: u32::from_be_bytes(arr(&r, 0)),
            offline_serial: u16::from_be_bytes(arr(&r, 4)),
            overdraft_fen: u32::from_be_bytes([0, r[6], r[7], r[8]]),
            key_version: r[9],
            alg_id: r[10],
            random: arr(&r, 11),
        })
    }

    /// DEBIT FOR PURCHASE; answers (TAC, MAC2).
    pub fn debit_for_purchase(
        &mut self,
        terminal_serial: u32,
        when: &TransactionTime,
        mac1: &[u8; 4],
    ) -> Result<([u8; 4], [u8; 4]), TerminalError> {
        let mut d = terminal_serial.to_be_bytes().to_vec();
        d.extend_from_slice(&when.bytes());
        d.extend_from_slice(mac1);
        let r = expect(
            &mut self.ch,
            Device::Card,
            "DEBIT FOR PURCHASE",
            &Apdu::new(0x80, 0x54, 0x01, 0x00).with_data(d).with_ne(8),
            Some(8),
        )?;
        Ok((arr(&r, 0), arr(&r, 4)))
    }

    /// GET BALANCE (purse).
    pub fn balance(&mut self) -> Result<u32, TerminalError> {
        let r = expect(
            &mut self.ch,
            Device::Card,
            "GET BALANCE",
            &Apdu::new(0x80, 0x5C, 0x00, 0x02).with_ne(4),
            Some(4),
        )?;
        Ok(u32::from_be_bytes(arr(&r, 0)))
    }

    /// GET TRANSACTION PROOF of the transaction of type `tx_type` that used `serial`;
    /// `None` when the card has none (`9406`: it was not the card's last one of its kind).
    pub fn transaction_proof(
        &mut self,
        tx_type: u8,
        serial: u16,
    ) -> Result<Option<TransactionProof>, TerminalError> {
        let step = "GET TRANSACTION PROOF";
        let resp = exchange(
            &mut self.ch,
            Device::Card,
            step,
            &Apdu::new(0x80, 0x5A, 0x00, tx_type)
                .with_data(serial.to_be_bytes())
                .with_ne(8),
        )?;
        if resp.sw == StatusWord::MAC_NOT_AVAILABLE {
            return Ok(None);
        }
        let r = ok(resp, Device::Card, step, Some(8))?;
        Ok(Some(TransactionProof {
            mac: arr(&r, 0),
            tac: arr(&r, 4),
        }))
    }

    /// The transaction log, newest first.
    pub fn log(&mut self) -> Result<Vec<LogRecord>, TerminalError> {
        let step = "READ RECORD transaction log";
        let mut out = Vec::new();
        for n in 1..=u8::MAX {
            let resp = exchange(
                &mut self.ch,
                Device::Card,
                step,
                &Apdu::new(0x00, 0xB2, n, (SFI_LOG << 3) | 0x04).with_ne(LOG_RECORD_LEN),
            )?;
            if resp.sw == StatusWord::RECORD_NOT_FOUND {
                break;
            }
            out.push(LogRecord::parse(&ok(resp, Device::Card, step, None)?)?);
        }
        Ok(out)
    }
}

/// The generation of an algorithm id the card announced.
pub(crate) fn alg_of(alg_id: u8) -> Result<PurseAlg, TerminalError> {
    PurseAlg::from_id(alg_id).ok_or_else(|| TerminalError::BadData {
        device: Device::Card,
        what: format!("unknown purse algorithm id {alg_id:02X}"),
    })
}

/// The balance of a card's purse, with who the card is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BalanceReport {
    /// Card number.
    pub card_number: String,
    /// Balance.
    pub balance_fen: u32,
}

/// Reads a card's purse balance.
pub fn read_balance<C: CardChannel>(ch: C) -> Result<BalanceReport, TerminalError> {
    let mut card = PurseCard::open(ch)?;
    let balance_fen = card.balance()?;
    Ok(BalanceReport {
        card_number: card.identity().card_number(),
        balance_fen,
    })
}

/// Reads a card's transaction log, newest first.
pub fn read_log<C: CardChannel>(ch: C) -> Result<Vec<LogRecord>, TerminalError> {
    PurseCard::open(ch)?.log()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_record_and_identity_parse() {
        let rec = iccard_apdu::hex::decode("0007 000000 000004D2 06 112233445566 20260314 123456")
            .unwrap();
        let r = LogRecord::parse(&rec).unwrap();
        assert_eq!(r.serial, 7);
        assert_eq!(r.amount_fen, 1234);
        assert_eq!(r.kind, "purchase");
        assert_eq!(r.terminal_id, [0x11, 0x22, 0x33, 0x44, 0x55, 0x66]);
        assert_eq!((r.date.as_str(), r.time.as_str()), ("20260314", "123456"));
        assert!(LogRecord::parse(&rec[1..]).is_err());

        let public = iccard_apdu::hex::decode(
            "0102030405060708 01 02 00001234567890123456 20250101 20301231 0000",
        )
        .unwrap();
        let id = CardIdentity::parse(&public).unwrap();
        assert_eq!(id.card_number(), "1234567890123456");
        assert_eq!(
            id.diversifier(),
            [0x12, 0x34, 0x56, 0x78, 0x90, 0x12, 0x34, 0x56]
        );
        let in_range = TransactionTime::parse("20260314", "000000").unwrap();
        assert!(id.check_valid_on(&in_range).is_ok());
        let late = TransactionTime::parse("20310101", "000000").unwrap();
        assert!(matches!(
            id.check_valid_on(&late),
            Err(TerminalError::NotValid { .. })
        ));
        let early = TransactionTime::parse("20241231", "235959").unwrap();
        assert!(id.check_valid_on(&early).is_err());
    }
}
