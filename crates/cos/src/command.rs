//! Typed commands: an APDU becomes a [`Command`], or the status word that refuses it.
//!
//! Parsing checks everything the header and the data length can tell (INS, P1/P2, Lc, Le);
//! what needs the card's state (files, keys, life cycle) is checked when the command runs.
//! Commands with proprietary class (CLA 80/84) follow the PBOC / FMCOS family; the project
//! defines the rest, documented in `docs/COS.md`.

use iccard_apdu::{Command as Apdu, StatusWord};
use zeroize::Zeroizing;

/// Secret bytes carried by a command (a PIN): wiped on drop, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Zeroizing<Vec<u8>>);

impl SecretBytes {
    fn new(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

/// How SELECT names its target (ISO 7816-4 §11.1.1, P1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectBy {
    /// P1=00: the MF (3F00 or empty data), or a DF/EF by file identifier.
    Fid(u16),
    /// P1=00 with no data, or 3F00: the MF.
    Mf,
    /// P1=01: a child DF of the current DF.
    ChildDf(u16),
    /// P1=02: an EF of the current DF.
    ChildEf(u16),
    /// P1=03: the parent of the current DF.
    Parent,
    /// P1=04: a DF by DF name (AID), or a prefix of one.
    Name(Vec<u8>),
    /// P1=08: a path from the MF (MF FID omitted).
    PathFromMf(Vec<u16>),
    /// P1=09: a path from the current DF.
    PathFromCurrent(Vec<u16>),
}

/// What SELECT answers (P2 b4..b3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectAnswer {
    /// P2=00: FCI template (tag 6F).
    Fci,
    /// P2=04: FCP template (tag 62).
    Fcp,
    /// P2=0C: no data.
    Nothing,
}

/// Which EF a data-unit or record command targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EfRef {
    /// The current EF.
    Current,
    /// An EF of the current DF by short file identifier (and it becomes current).
    Sfi(u8),
}

/// Which record (READ/UPDATE RECORD P1 and P2 b3..b1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordRef {
    /// Record number P1 (1-based; for cyclic files 1 is the newest).
    Number(u8),
    /// The current record (P1=00).
    Current,
    /// The first record.
    First,
    /// The last record.
    Last,
    /// The record after the current one.
    Next,
    /// The record before the current one.
    Previous,
}

/// PBOC purse / passbook commands, parsed further by the purse application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCommand {
    /// The raw APDU.
    pub apdu: Apdu,
}

/// The life-cycle targets of SET STATUS (GlobalPlatform `80 F0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusScope {
    /// P1=80: the card.
    Card,
    /// P1=40: the current application (DF).
    Application,
}

/// A command the card OS understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// SELECT `00 A4`.
    Select {
        /// Target.
        by: SelectBy,
        /// Answer wanted.
        answer: SelectAnswer,
    },
    /// READ BINARY `00 B0`.
    ReadBinary {
        /// File.
        ef: EfRef,
        /// Offset.
        offset: u16,
        /// Ne.
        ne: usize,
    },
    /// UPDATE BINARY `00 D6` (`04 D6` under secure messaging).
    UpdateBinary {
        /// File.
        ef: EfRef,
        /// Offset.
        offset: u16,
        /// New data.
        data: Vec<u8>,
    },
    /// READ RECORD `00 B2`.
    ReadRecord {
        /// File.
        ef: EfRef,
        /// Record.
        record: RecordRef,
        /// Ne (None: no Le field).
        ne: Option<usize>,
    },
    /// UPDATE RECORD `00 DC`.
    UpdateRecord {
        /// File.
        ef: EfRef,
        /// Record.
        record: RecordRef,
        /// New record.
        data: Vec<u8>,
    },
    /// APPEND RECORD `00 E2`.
    AppendRecord {
        /// File.
        ef: EfRef,
        /// New record.
        data: Vec<u8>,
    },
    /// GET RESPONSE `00 C0`.
    GetResponse {
        /// Ne.
        ne: usize,
    },
    /// GET CHALLENGE `00 84`: 4 or 8 random bytes.
    GetChallenge {
        /// Length.
        len: usize,
    },
    /// EXTERNAL AUTHENTICATE `00 82 00 <key index>`: the terminal proves it holds a key.
    ExternalAuthenticate {
        /// Key index.
        key_index: u8,
        /// Challenge encrypted under the key.
        cryptogram: Vec<u8>,
    },
    /// INTERNAL AUTHENTICATE `00 88 00 <key index>`: the card proves it holds a key.
    InternalAuthenticate {
        /// Key index.
        key_index: u8,
        /// Data to encrypt.
        data: Vec<u8>,
    },
    /// VERIFY `00 20 00 <pin index>`; without data it asks for the tries left.
    Verify {
        /// PIN index.
        pin_index: u8,
        /// The PIN (packed BCD), or None to ask for the tries left.
        pin: Option<SecretBytes>,
    },
    /// CHANGE PIN `80 5E 01 00`: old ‖ FF ‖ new (PBOC).
    ChangePin {
        /// Old PIN.
        old: SecretBytes,
        /// New PIN.
        new: SecretBytes,
    },
    /// RELOAD PIN `84 5E 00 00`: new PIN, MAC'd with the PIN reload key.
    ReloadPin {
        /// New PIN and its MAC.
        new: SecretBytes,
    },
    /// PIN UNBLOCK `84 24 00 00`: PIN encrypted and MAC'd with the PIN unblock key.
    UnblockPin {
        /// Encrypted `len ‖ PIN ‖ padding`.
        cryptogram: Vec<u8>,
    },
    /// CREATE FILE `80 E0 00 00` (or `00 E0`): FCP template describing the file (ISO 7816-9).
    CreateFile {
        /// The FCP template (tag 62) or its contents.
        fcp: Vec<u8>,
    },
    /// WRITE KEY `84 D4 00 00`: key record encrypted and MAC'd under the key-management key.
    WriteKey {
        /// Encrypted `len ‖ record ‖ padding`.
        cryptogram: Vec<u8>,
    },
    /// ERASE DF `80 0E 00 00`: removes every file below the current DF.
    EraseDf,
    /// LIST DIRECTORY `80 AA <01 DFs | 02 EFs> 00`: the file identifiers of the current DF's
    /// children of one kind that SELECT reaches (the TCOS command OpenSC's `tcos` driver sends
    /// for `opensc-explorer ls`).
    ListFiles {
        /// DFs (P1=01) or EFs (P1=02).
        dfs: bool,
    },
    /// GET DATA `00 CA` / `80 CA` for a tag.
    GetData {
        /// Tag (P1 ‖ P2).
        tag: u16,
    },
    /// APPLICATION BLOCK `84 1E 00 <00 temporary | 01 permanent>`.
    ApplicationBlock {
        /// Permanent lock.
        permanent: bool,
    },
    /// APPLICATION UNBLOCK `84 18 00 00`.
    ApplicationUnblock,
    /// CARD BLOCK `84 16 00 00`.
    CardBlock,
    /// SET STATUS `80 F0 <scope> <state>` (GlobalPlatform).
    SetStatus {
        /// Card or current application.
        scope: StatusScope,
        /// Target state code.
        state: u8,
    },
    /// TERMINATE DF `00 E6 00 00` / `84 E6 00 00`.
    TerminateDf,
    /// TERMINATE CARD USAGE `00 FE 00 00` / `84 FE 00 00`.
    TerminateCard,
    /// A command for the selected application (purse, PSAM).
    App(AppCommand),
}

/// Data length check helper.
fn need_data(apdu: &Apdu) -> Result<&[u8], StatusWord> {
    if apdu.data.is_empty() {
        Err(StatusWord::WRONG_LENGTH)
    } else {
        Ok(&apdu.data)
    }
}

fn no_data(apdu: &Apdu) -> Result<(), StatusWord> {
    if apdu.data.is_empty() {
        Ok(())
    } else {
        Err(StatusWord::WRONG_LENGTH)
    }
}

fn fids(data: &[u8]) -> Result<Vec<u16>, StatusWord> {
    if data.is_empty() || !data.len().is_multiple_of(2) {
        return Err(StatusWord::WRONG_LENGTH);
    }
    Ok(data
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect())
}

fn one_fid(data: &[u8]) -> Result<u16, StatusWord> {
    if data.len() != 2 {
        return Err(StatusWord::WRONG_LENGTH);
    }
    Ok(u16::from_be_bytes([data[0], data[1]]))
}

fn ef_ref_binary(p1: u8, p2: u8) -> Result<(EfRef, u16), StatusWord> {
    // ISO 7816-4 §11.2.2: b8 of P1 set -> P1 b5..b1 is an SFI and P2 the offset;
    // otherwise P1 b7..b1 ‖ P2 is a 15-bit offset in the current EF.
    if p1 & 0x80 != 0 {
        if p1 & 0x60 != 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        let sfi = p1 & 0x1F;
        if sfi == 0 {
            return Err(StatusWord::INCORRECT_P1P2);
        }
        Ok((EfRef::Sfi(sfi), p2 as u16))
    } else {
        Ok((EfRef::Current, u16::from_be_bytes([p1, p2])))
    }
}

fn record_ref(p1: u8, p2: u8) -> Result<(EfRef, RecordRef), StatusWord> {
    // ISO 7816-4 §11.3.3: P2 b8..b4 = SFI (0 = current EF), b3..b1 = mode.
    let sfi = p2 >> 3;
    let ef = if sfi == 0 || sfi == 0x1F {
        EfRef::Current
    } else {
        EfRef::Sfi(sfi)
    };
    let record = match p2 & 0x07 {
        // P1=00 with mode 100 is the current record (ISO 7816-4 §7.3.1).
        0b100 if p1 == 0 => RecordRef::Current,
        0b100 => RecordRef::Number(p1),
        0b000 if p1 == 0 => RecordRef::First,
        0b001 if p1 == 0 => RecordRef::Last,
        0b010 if p1 == 0 => RecordRef::Next,
        0b011 if p1 == 0 => RecordRef::Previous,
        _ => return Err(StatusWord::INCORRECT_P1P2),
    };
    Ok((ef, record))
}

/// Whether the CLA asks for (proprietary or ISO) secure messaging: b3 set (04, 0C, 84, 8C).
pub fn has_mac(apdu: &Apdu) -> bool {
    apdu.cla & 0x0C != 0
}

impl TryFrom<&Apdu> for Command {
    type Error = StatusWord;

    fn try_from(apdu: &Apdu) -> Result<Self, StatusWord> {
        let (cla, ins, p1, p2) = (apdu.cla, apdu.ins, apdu.p1, apdu.p2);
        // Only the basic logical channel: CLA 01..03 and PBOC/EMV 81..83 (b2-b1), and the
        // further interindustry classes 40..7F (channels 4..19), address other channels.
        if apdu.logical_channel() != 0 {
            return Err(StatusWord::LOGICAL_CHANNEL_NOT_SUPPORTED);
        }
        let iso = cla & 0xF0 == 0x00; // 00, 04, 0C
        let proprietary = cla & 0xF0 == 0x80; // 80, 84
        if !iso && !proprietary {
            return Err(StatusWord::CLA_NOT_SUPPORTED);
        }
        let ne = apdu.ne.unwrap_or(0);
        Ok(match (iso, ins) {
            (true, 0xA4) => {
                no_mac(apdu)?;
                let answer = match p2 & 0xFC {
                    0x00 => SelectAnswer::Fci,
                    0x04 => SelectAnswer::Fcp,
                    0x0C => SelectAnswer::Nothing,
                    _ => return Err(StatusWord::INCORRECT_P1P2),
                };
                if p2 & 0x03 != 0 {
                    // Only "first or only occurrence".
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                let by = match p1 {
                    0x00 if apdu.data.is_empty() => SelectBy::Mf,
                    0x00 => match one_fid(&apdu.data)? {
                        0x3F00 => SelectBy::Mf,
                        fid => SelectBy::Fid(fid),
                    },
                    0x01 => SelectBy::ChildDf(one_fid(&apdu.data)?),
                    0x02 => SelectBy::ChildEf(one_fid(&apdu.data)?),
                    0x03 => {
                        no_data(apdu)?;
                        SelectBy::Parent
                    }
                    0x04 => {
                        let name = need_data(apdu)?;
                        if name.len() > 16 {
                            return Err(StatusWord::WRONG_LENGTH);
                        }
                        SelectBy::Name(name.to_vec())
                    }
                    0x08 => SelectBy::PathFromMf(fids(&apdu.data)?),
                    0x09 => SelectBy::PathFromCurrent(fids(&apdu.data)?),
                    _ => return Err(StatusWord::INCORRECT_P1P2),
                };
                Command::Select { by, answer }
            }
            (true, 0xB0) => {
                no_mac(apdu)?;
                no_data(apdu)?;
                let (ef, offset) = ef_ref_binary(p1, p2)?;
                Command::ReadBinary {
                    ef,
                    offset,
                    ne: if apdu.ne.is_none() { 256 } else { ne },
                }
            }
            (true, 0xD6) => {
                let (ef, offset) = ef_ref_binary(p1, p2)?;
                Command::UpdateBinary {
                    ef,
                    offset,
                    data: need_data(apdu)?.to_vec(),
                }
            }
            (true, 0xB2) => {
                no_mac(apdu)?;
                no_data(apdu)?;
                let (ef, record) = record_ref(p1, p2)?;
                Command::ReadRecord {
                    ef,
                    record,
                    ne: apdu.ne,
                }
            }
            (true, 0xDC) => {
                let (ef, record) = record_ref(p1, p2)?;
                Command::UpdateRecord {
                    ef,
                    record,
                    data: need_data(apdu)?.to_vec(),
                }
            }
            (true, 0xE2) => {
                if p1 != 0 || p2 & 0x07 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                let sfi = p2 >> 3;
                Command::AppendRecord {
                    ef: if sfi == 0 {
                        EfRef::Current
                    } else {
                        EfRef::Sfi(sfi)
                    },
                    data: need_data(apdu)?.to_vec(),
                }
            }
            (true, 0xC0) => {
                no_data(apdu)?;
                if p1 != 0 || p2 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                Command::GetResponse {
                    ne: if apdu.ne.is_none() { 256 } else { ne },
                }
            }
            (true, 0x84) => {
                no_data(apdu)?;
                if p1 != 0 || p2 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                match ne {
                    4 | 8 => Command::GetChallenge { len: ne },
                    _ => return Err(StatusWord::WRONG_LENGTH),
                }
            }
            (true, 0x82) => {
                no_mac(apdu)?;
                if p1 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                let data = need_data(apdu)?;
                if data.len() != 8 && data.len() != 16 {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                Command::ExternalAuthenticate {
                    key_index: p2,
                    cryptogram: data.to_vec(),
                }
            }
            (true, 0x88) => {
                no_mac(apdu)?;
                if p1 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                let data = need_data(apdu)?;
                if data.len() % 8 != 0 || data.len() > 64 {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                Command::InternalAuthenticate {
                    key_index: p2,
                    data: data.to_vec(),
                }
            }
            (true, 0x20) => {
                no_mac(apdu)?;
                if p1 != 0 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                if apdu.data.len() > 8 {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                Command::Verify {
                    pin_index: p2,
                    pin: (!apdu.data.is_empty()).then(|| SecretBytes::new(&apdu.data)),
                }
            }
            // ISO 7816-9 (CLA 00/04) and the PBOC MACed form (CLA 84).
            (_, 0xE6) => {
                no_args(p1, p2)?;
                Command::TerminateDf
            }
            (_, 0xFE) => {
                no_args(p1, p2)?;
                Command::TerminateCard
            }
            (true, 0xCA) | (false, 0xCA) => {
                no_data(apdu)?;
                Command::GetData {
                    tag: u16::from_be_bytes([p1, p2]),
                }
            }
            (_, 0xE0) => Command::CreateFile {
                fcp: need_data(apdu)?.to_vec(),
            },
            (false, 0x5E) => match (p1, p2) {
                (0x01, 0x00) => {
                    no_mac(apdu)?;
                    let data = need_data(apdu)?;
                    let sep = data
                        .iter()
                        .position(|&b| b == 0xFF)
                        .ok_or(StatusWord::WRONG_DATA)?;
                    let (old, new) = (&data[..sep], &data[sep + 1..]);
                    if old.is_empty() || new.is_empty() || old.len() > 8 || new.len() > 8 {
                        return Err(StatusWord::WRONG_DATA);
                    }
                    Command::ChangePin {
                        old: SecretBytes::new(old),
                        new: SecretBytes::new(new),
                    }
                }
                (0x00, 0x00) => Command::ReloadPin {
                    new: SecretBytes::new(need_data(apdu)?),
                },
                _ => return Err(StatusWord::INCORRECT_P1P2),
            },
            (false, 0x24) => {
                no_args(p1, p2)?;
                Command::UnblockPin {
                    cryptogram: need_data(apdu)?.to_vec(),
                }
            }
            (false, 0xD4) => {
                no_args(p1, p2)?;
                Command::WriteKey {
                    cryptogram: need_data(apdu)?.to_vec(),
                }
            }
            (false, 0x0E) => {
                no_args(p1, p2)?;
                no_data(apdu)?;
                Command::EraseDf
            }
            (false, 0xAA) => {
                no_mac(apdu)?;
                no_data(apdu)?;
                match (p1, p2) {
                    (0x01, 0x00) => Command::ListFiles { dfs: true },
                    (0x02, 0x00) => Command::ListFiles { dfs: false },
                    _ => return Err(StatusWord::INCORRECT_P1P2),
                }
            }
            (false, 0x1E) => {
                if p1 != 0 || p2 > 1 {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                Command::ApplicationBlock { permanent: p2 == 1 }
            }
            (false, 0x18) => {
                no_args(p1, p2)?;
                Command::ApplicationUnblock
            }
            (false, 0x16) => {
                no_args(p1, p2)?;
                Command::CardBlock
            }
            (false, 0xF0) => {
                no_data(apdu)?;
                let scope = match p1 {
                    0x80 => StatusScope::Card,
                    0x40 => StatusScope::Application,
                    _ => return Err(StatusWord::INCORRECT_P1P2),
                };
                Command::SetStatus { scope, state: p2 }
            }
            (false, _) => Command::App(AppCommand { apdu: apdu.clone() }),
            (true, _) => return Err(StatusWord::INS_NOT_SUPPORTED),
        })
    }
}

fn no_args(p1: u8, p2: u8) -> Result<(), StatusWord> {
    if p1 != 0 || p2 != 0 {
        Err(StatusWord::INCORRECT_P1P2)
    } else {
        Ok(())
    }
}

fn no_mac(apdu: &Apdu) -> Result<(), StatusWord> {
    if has_mac(apdu) {
        Err(StatusWord::SECURE_MESSAGING_NOT_SUPPORTED)
    } else {
        Ok(())
    }
}
