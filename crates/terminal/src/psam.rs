//! The terminal's PSAM, seen from the terminal: its terminal id and the two purchase commands.
//!
//! | call | APDU |
//! |---|---|
//! | [`Psam::open`] | SELECT MF `00 A4 00 0C 02 3F00`, READ BINARY SFI 16 `00 B0 96 00 06`, SELECT `00 A4 04 0C 09 A00000000386980702` |
//! | [`Psam::mac1`] | `80 70 00 00 1C|24` random ‖ offline serial ‖ amount ‖ type ‖ date ‖ time ‖ key version ‖ alg id ‖ card data [‖ issuer factor], Le `08` → terminal serial ‖ MAC1 |
//! | [`Psam::verify_mac2`] | `80 72 00 00 04` MAC2 |

use crate::error::{Device, TerminalError};
use crate::io::{arr, exchange, expect};
use crate::time::TransactionTime;
use iccard_apdu::{Command as Apdu, StatusWord};
use iccard_link::CardChannel;

/// DF name of the PSAM application (project-chosen, `docs/COS.md` "PSAM").
pub const PSAM_AID: [u8; 9] = [0xA0, 0x00, 0x00, 0x00, 0x03, 0x86, 0x98, 0x07, 0x02];
/// SFI of the PSAM's terminal id file.
pub const SFI_TERMINAL_ID: u8 = 0x16;

/// What MAC1 generation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac1Request {
    /// Card random from INITIALIZE FOR PURCHASE.
    pub random: [u8; 4],
    /// The card's offline serial.
    pub offline_serial: u16,
    /// Amount.
    pub amount_fen: u32,
    /// Transaction type (06 purchase).
    pub tx_type: u8,
    /// Date and time.
    pub when: TransactionTime,
    /// Key version the card announced.
    pub key_version: u8,
    /// Algorithm id the card announced.
    pub alg_id: u8,
    /// The card's diversification data (rightmost 8 bytes of its application serial).
    pub card_factor: [u8; 8],
    /// Issuer factor for two-level diversification (applied first).
    pub issuer_factor: Option<[u8; 8]>,
}

impl Mac1Request {
    fn data(&self) -> Vec<u8> {
        let mut d = self.random.to_vec();
        d.extend_from_slice(&self.offline_serial.to_be_bytes());
        d.extend_from_slice(&self.amount_fen.to_be_bytes());
        d.push(self.tx_type);
        d.extend_from_slice(&self.when.bytes());
        d.push(self.key_version);
        d.push(self.alg_id);
        d.extend_from_slice(&self.card_factor);
        if let Some(f) = self.issuer_factor {
            d.extend_from_slice(&f);
        }
        d
    }
}

/// A PSAM with its application selected.
pub struct Psam<C: CardChannel> {
    ch: C,
    terminal_id: [u8; 6],
}

impl<C: CardChannel> Psam<C> {
    /// Reads the terminal id (under the MF, else in the PSAM ADF) and selects the PSAM ADF.
    pub fn open(mut ch: C) -> Result<Self, TerminalError> {
        let select_mf = Apdu::new(0x00, 0xA4, 0x00, 0x0C).with_data([0x3F, 0x00]);
        let select_adf = Apdu::new(0x00, 0xA4, 0x04, 0x0C).with_data(PSAM_AID);
        let read_id = Apdu::new(0x00, 0xB0, 0x80 | SFI_TERMINAL_ID, 0x00).with_ne(6);
        let step_id = "READ BINARY terminal id";
        expect(&mut ch, Device::Psam, "SELECT MF", &select_mf, None)?;
        let at_mf = exchange(&mut ch, Device::Psam, step_id, &read_id)?;
        expect(
            &mut ch,
            Device::Psam,
            "SELECT PSAM application",
            &select_adf,
            None,
        )?;
        let id = if at_mf.sw == StatusWord::FILE_NOT_FOUND {
            expect(&mut ch, Device::Psam, step_id, &read_id, Some(6))?
        } else {
            crate::io::ok(at_mf, Device::Psam, step_id, Some(6))?
        };
        Ok(Self {
            ch,
            terminal_id: arr(&id, 0),
        })
    }

    /// The terminal id this PSAM belongs to.
    pub fn terminal_id(&self) -> [u8; 6] {
        self.terminal_id
    }

    /// The channel.
    pub fn channel(&mut self) -> &mut C {
        &mut self.ch
    }

    /// Gives the channel back.
    pub fn into_inner(self) -> C {
        self.ch
    }

    /// MAC1 generation: returns (terminal transaction serial, MAC1).
    pub fn mac1(&mut self, r: &Mac1Request) -> Result<(u32, [u8; 4]), TerminalError> {
        let a = expect(
            &mut self.ch,
            Device::Psam,
            "MAC1 generation",
            &Apdu::new(0x80, 0x70, 0x00, 0x00)
                .with_data(r.data())
                .with_ne(8),
            Some(8),
        )?;
        Ok((u32::from_be_bytes(arr(&a, 0)), arr(&a, 4)))
    }

    /// MAC2 verification: `Ok(false)` when the PSAM finds the card's MAC2 wrong (`9302`).
    pub fn verify_mac2(&mut self, mac2: &[u8; 4]) -> Result<bool, TerminalError> {
        let step = "MAC2 verification";
        let resp = exchange(
            &mut self.ch,
            Device::Psam,
            step,
            &Apdu::new(0x80, 0x72, 0x00, 0x00).with_data(mac2.to_vec()),
        )?;
        match resp.sw {
            StatusWord::OK => Ok(true),
            StatusWord::MAC_INVALID => Ok(false),
            sw => Err(TerminalError::Refused {
                device: Device::Psam,
                step,
                sw,
            }),
        }
    }
}
