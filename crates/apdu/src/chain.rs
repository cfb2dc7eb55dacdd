//! Command chaining (ISO/IEC 7816-4:2005 5.1.1.1): a command whose data field is too long for
//! one APDU is sent as several APDUs, all but the last with the chaining bit b5 (`0x10`) of CLA
//! set. [`ChainAssembler`] puts them back together on the card side; [`split`] cuts a command
//! into such a chain on the reader side.

use std::fmt;

use crate::command::{cla_supports_chaining, Command};
use crate::status::StatusWord;

/// The chaining control bit of CLA.
const CLA_CHAINING: u8 = 0x10;

/// Card-side reassembly of a command chain.
///
/// Feed every received command to [`push`](Self::push):
/// - `Ok(None)`: the command continues a chain; the card answers `9000` and waits.
/// - `Ok(Some(command))`: a complete command, either unchained or the last of a chain, with the
///   data of the whole chain concatenated, the CLA/INS/P1/P2 and Ne of the last command.
/// - `Err(status)`: the chain is abandoned (the assembler is reset) and the card answers
///   `status`: [`StatusWord::LAST_COMMAND_EXPECTED`] (`6883`) when a command with a different
///   CLA (ignoring the chaining bit), INS, P1 or P2 arrives in the middle of a chain,
///   [`StatusWord::WRONG_LENGTH`] (`6700`) when the data would exceed `max_len`.
///
/// Data of intermediate commands is kept only inside the assembler and overwritten with zeros
/// when dropped or reset; `Debug` shows only lengths.
pub struct ChainAssembler {
    /// Largest total data field accepted.
    max_len: usize,
    /// Header of the chain in progress (CLA with the chaining bit cleared), if any.
    header: Option<[u8; 4]>,
    /// Data received so far in the chain in progress.
    data: Vec<u8>,
}

impl ChainAssembler {
    /// An assembler that accepts a total data field (Nc of the whole chain, or of a single
    /// command) of at most `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        ChainAssembler {
            max_len,
            header: None,
            data: Vec::new(),
        }
    }

    /// Takes the next received command; see the type documentation for the results.
    pub fn push(&mut self, mut cmd: Command) -> Result<Option<Command>, StatusWord> {
        let header = [cmd.cla & !CLA_CHAINING, cmd.ins, cmd.p1, cmd.p2];
        if let Some(expected) = self.header {
            if expected != header {
                self.reset();
                return Err(StatusWord::LAST_COMMAND_EXPECTED);
            }
        }
        let total = self.data.len().saturating_add(cmd.data.len());
        if total > self.max_len {
            self.reset();
            return Err(StatusWord::WRONG_LENGTH);
        }
        if cmd.is_chained() {
            self.header = Some(header);
            self.data.extend_from_slice(&cmd.data);
            crate::wipe(&mut cmd.data);
            return Ok(None);
        }
        if self.header.is_none() {
            // Not part of a chain: hand it back untouched.
            return Ok(Some(cmd));
        }
        let mut data = std::mem::take(&mut self.data);
        data.extend_from_slice(&cmd.data);
        self.reset();
        // The last command's own data is a copy now; clear it before it is dropped.
        crate::wipe(&mut cmd.data);
        Ok(Some(Command { data, ..cmd }))
    }

    /// Abandons any chain in progress.
    pub fn reset(&mut self) {
        crate::wipe(&mut self.data);
        self.data = Vec::new();
        self.header = None;
    }

    /// Whether a chain has begun and its last command has not yet arrived.
    pub fn in_progress(&self) -> bool {
        self.header.is_some()
    }

    /// Largest total data field this assembler accepts.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

impl Drop for ChainAssembler {
    fn drop(&mut self) {
        crate::wipe(&mut self.data);
    }
}

impl fmt::Debug for ChainAssembler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainAssembler")
            .field("max_len", &self.max_len)
            .field("in_progress", &self.in_progress())
            .field("received", &self.data.len())
            .finish()
    }
}

/// Splits `cmd` into a chain of commands carrying at most `max_data` data bytes each.
///
/// All pieces but the last have the chaining bit set in CLA and no Le; the last has it cleared
/// and carries the original Ne. A command whose data already fits, or whose CLA is proprietary
/// (`C0`..=`FF`, where b5 does not mean chaining), comes back as a single unchanged command.
/// `max_data` of 0 is treated as 1. Pass 255 to get short APDUs.
pub fn split(cmd: &Command, max_data: usize) -> Vec<Command> {
    let max_data = max_data.max(1);
    if cmd.data.len() <= max_data || !cla_supports_chaining(cmd.cla) {
        return vec![cmd.clone()];
    }
    let pieces = cmd.data.chunks(max_data);
    let count = pieces.len();
    pieces
        .enumerate()
        .map(|(index, piece)| {
            let last = index + 1 == count;
            Command {
                cla: if last {
                    cmd.cla & !CLA_CHAINING
                } else {
                    cmd.cla | CLA_CHAINING
                },
                ins: cmd.ins,
                p1: cmd.p1,
                p2: cmd.p2,
                data: piece.to_vec(),
                ne: if last { cmd.ne } else { None },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(cla: u8, data: &[u8]) -> Command {
        Command::new(cla, 0xD6, 0x81, 0x00).with_data(data.to_vec())
    }

    #[test]
    fn assembles_a_chain() {
        let mut chain = ChainAssembler::new(1024);
        assert!(!chain.in_progress());
        assert_eq!(chain.push(update(0x10, &[1, 2])), Ok(None));
        assert!(chain.in_progress());
        assert_eq!(chain.push(update(0x10, &[3])), Ok(None));
        let full = chain.push(update(0x00, &[4, 5]).with_ne(16)).unwrap();
        assert_eq!(full, Some(update(0x00, &[1, 2, 3, 4, 5]).with_ne(16)));
        assert!(!chain.in_progress());
    }

    #[test]
    fn unchained_passes_through() {
        let mut chain = ChainAssembler::new(16);
        let cmd = update(0x00, &[9; 16]);
        assert_eq!(chain.push(cmd.clone()), Ok(Some(cmd)));
        // Proprietary CLA with b5 set is not a chain.
        let cmd = update(0xD0, &[1]);
        assert_eq!(chain.push(cmd.clone()), Ok(Some(cmd)));
        assert!(!chain.in_progress());
    }

    #[test]
    fn pboc_class_chains_too() {
        let mut chain = ChainAssembler::new(64);
        assert_eq!(chain.push(update(0x94, &[1])), Ok(None));
        let full = chain.push(update(0x84, &[2])).unwrap().unwrap();
        assert_eq!(full.cla, 0x84);
        assert_eq!(full.data, vec![1, 2]);
    }

    #[test]
    fn different_header_aborts() {
        let mut chain = ChainAssembler::new(1024);
        assert_eq!(chain.push(update(0x10, &[1])), Ok(None));
        let other = Command::new(0x00, 0xB0, 0x81, 0x00).with_ne(256);
        assert_eq!(chain.push(other), Err(StatusWord::LAST_COMMAND_EXPECTED));
        assert!(!chain.in_progress());
        // Same INS but different P1 also aborts.
        assert_eq!(chain.push(update(0x10, &[1])), Ok(None));
        let moved = Command::new(0x10, 0xD6, 0x82, 0x00).with_data(vec![2]);
        assert_eq!(chain.push(moved), Err(StatusWord::LAST_COMMAND_EXPECTED));
        // After an abort a fresh chain works.
        assert_eq!(chain.push(update(0x10, &[7])), Ok(None));
        assert_eq!(
            chain.push(update(0x00, &[8])),
            Ok(Some(update(0x00, &[7, 8])))
        );
    }

    #[test]
    fn too_long_is_wrong_length() {
        let mut chain = ChainAssembler::new(4);
        assert_eq!(chain.push(update(0x10, &[1, 2, 3])), Ok(None));
        assert_eq!(
            chain.push(update(0x00, &[4, 5])),
            Err(StatusWord::WRONG_LENGTH)
        );
        assert!(!chain.in_progress());
        assert_eq!(
            chain.push(update(0x00, &[0; 5])),
            Err(StatusWord::WRONG_LENGTH)
        );
        // Exactly max_len is fine.
        assert_eq!(chain.push(update(0x10, &[1, 2])), Ok(None));
        assert_eq!(
            chain.push(update(0x00, &[3, 4])),
            Ok(Some(update(0x00, &[1, 2, 3, 4])))
        );
    }

    #[test]
    fn reset_clears() {
        let mut chain = ChainAssembler::new(8);
        assert_eq!(chain.push(update(0x10, &[1])), Ok(None));
        chain.reset();
        assert!(!chain.in_progress());
        assert_eq!(chain.push(update(0x00, &[2])), Ok(Some(update(0x00, &[2]))));
        let text = format!("{chain:?}");
        assert!(text.contains("in_progress: false"), "{text}");
    }

    #[test]
    fn splits() {
        let cmd = update(0x00, &[1, 2, 3, 4, 5]).with_ne(32);
        let pieces = split(&cmd, 2);
        assert_eq!(
            pieces,
            vec![
                update(0x10, &[1, 2]),
                update(0x10, &[3, 4]),
                update(0x00, &[5]).with_ne(32),
            ]
        );
        assert_eq!(split(&cmd, 5), vec![cmd.clone()]);
        assert_eq!(split(&cmd, 0).len(), 5);
        let proprietary = update(0xC0, &[1, 2, 3]);
        assert_eq!(split(&proprietary, 1), vec![proprietary.clone()]);
        let sm = update(0x84, &[1, 2, 3]);
        let pieces = split(&sm, 2);
        assert_eq!(pieces[0].cla, 0x94);
        assert_eq!(pieces[1].cla, 0x84);
    }
}
