//! The card: power-up, the command loop, the life-cycle gate and the NVM transaction of each
//! command.
//!
//! [`Card::process`] is the whole interface to the outside: APDU bytes in, response bytes out.
//! Each command runs inside one NVM transaction: if it answers an error the staged writes are
//! dropped, otherwise they are committed atomically before the answer leaves the card. Commands
//! that must leave a trace even when they fail (retry counters) commit that trace themselves
//! before they compare anything.
//!
//! Persistent state lives in the NVM; [`Volatile`] holds what a reset clears: the current DF and
//! EF, the security states, the challenge, pending response data and command chaining.
//!
//! Architecture invariant: no I/O, no clock; randomness only through [`RandomSource`].

use crate::command::Command;
use crate::fs::{app_state, nv, CardResult, CardState, ChipData, Fcb, FileTable, Header};
use crate::nvm::{Eeprom, Nvm, NvmError};
use crate::platform::RandomSource;
use iccard_apdu::chain::ChainAssembler;
use iccard_apdu::response::ResponseBuffer;
use iccard_apdu::{Command as Apdu, Response, StatusWord};
use zeroize::Zeroizing;

/// The answer to reset: T=1 (TD1=80: TD2 follows; TD2=01: T=1), ten historical bytes
/// (category 80, compact-TLV tag 5 "card issuer's data" = "ICCARD01"), and TCK.
pub const ATR: [u8; 15] = atr();

const fn atr() -> [u8; 15] {
    let mut a = [
        0x3B, 0x8A, 0x80, 0x01, 0x80, 0x58, b'I', b'C', b'C', b'A', b'R', b'D', b'0', b'1', 0x00,
    ];
    // TCK: XOR of T0 up to the last historical byte (ISO 7816-3 §8.2.5).
    let mut tck = 0u8;
    let mut i = 1;
    while i < 14 {
        tck ^= a[i];
        i += 1;
    }
    a[14] = tck;
    a
}

/// Largest command data the card accepts after chaining.
pub const MAX_COMMAND_DATA: usize = 1024;

/// What a card needs at manufacture.
#[derive(Clone)]
pub struct Manufacture {
    /// Chip production data.
    pub chip: ChipData,
    /// The transport key (already diversified for this chip), 2-key 3DES.
    pub transport_key: Zeroizing<[u8; 16]>,
    /// Version of the transport key.
    pub transport_key_version: u8,
    /// Failed authentications across the card that make it self-destruct.
    pub attack_threshold: u8,
}

/// Why a card could not be made or powered up.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// The EEPROM could not be formatted or mounted.
    #[error("card memory: {0}")]
    Nvm(#[from] NvmError),
    /// The EEPROM does not hold a card OS layout this version understands.
    #[error("card memory does not hold a valid card OS layout (status {0})")]
    Layout(StatusWord),
}

/// State a reset clears.
#[derive(Default)]
pub(crate) struct Volatile {
    pub current_df: u8,
    pub current_ef: Option<u8>,
    pub record_ptr: Option<u8>,
    /// Security state of each DF on the path MF → current DF.
    pub security: Vec<(u8, u8)>,
    pub challenge: Option<Zeroizing<[u8; 8]>>,
    pub responses: ResponseBuffer,
    pub chain: Option<ChainAssembler>,
    pub app: crate::app::AppVolatile,
}

/// A CPU card: an EEPROM, a random source and the card OS.
pub struct Card<E: Eeprom, R: RandomSource> {
    pub(crate) nvm: Nvm<E>,
    pub(crate) rng: R,
    pub(crate) table: FileTable,
    pub(crate) header: Header,
    pub(crate) v: Volatile,
    /// Power was lost in the middle of a command: nothing more runs until power-up.
    dead: bool,
}

impl<E: Eeprom, R: RandomSource> Card<E, R> {
    /// Manufactures a blank card on a fresh EEPROM: header with chip data, the MF and its key
    /// file holding the transport key; state OP_READY.
    pub fn manufacture(eeprom: E, rng: R, spec: &Manufacture) -> Result<Self, CardError> {
        let mut nvm = Nvm::format(eeprom)?;
        let header = Header {
            state: CardState::OpReady,
            attack_counter: 0,
            attack_threshold: spec.attack_threshold,
            chip: spec.chip.clone(),
            table_capacity: Header::capacity_for(nvm.user_len()),
        };
        header.write(&mut nvm).map_err(CardError::Layout)?;
        let table = FileTable::new(&header, nvm.user_len());
        crate::perso::create_mf(&table, &mut nvm, spec).map_err(CardError::Layout)?;
        nvm.commit()?;
        Ok(Self::with(nvm, rng, table, header))
    }

    /// Powers the card up from its EEPROM: mounts the NVM (finishing or undoing an
    /// interrupted commit) and reads the header.
    pub fn power_on(eeprom: E, rng: R) -> Result<Self, CardError> {
        let nvm = Nvm::mount(eeprom)?;
        let header = Header::read(&nvm).map_err(CardError::Layout)?;
        let erasing = Header::erasing(&nvm).map_err(CardError::Layout)?;
        let table = FileTable::new(&header, nvm.user_len());
        let mut card = Self::with(nvm, rng, table, header);
        if let Some(df) = erasing {
            // An ERASE DF was cut between its mark and its last commit: finish it.
            card.sweep_erase(df).map_err(CardError::Layout)?;
        }
        if card.header.state == CardState::Terminated {
            // A power cut during a self-destruct leaves keys or journal copies of them behind:
            // finish it (nothing is written once it is done).
            card.finish_self_destruct().map_err(CardError::Layout)?;
        }
        Ok(card)
    }

    fn with(nvm: Nvm<E>, rng: R, table: FileTable, header: Header) -> Self {
        let mut card = Self {
            nvm,
            rng,
            table,
            header,
            v: Volatile::default(),
            dead: false,
        };
        card.reset();
        card
    }

    /// Warm reset: clears all volatile state (security states included) and answers the ATR.
    pub fn reset(&mut self) -> Vec<u8> {
        self.nvm.rollback();
        self.v = Volatile {
            security: vec![(0, 0)],
            ..Volatile::default()
        };
        ATR.to_vec()
    }

    /// The answer to reset.
    pub fn atr(&self) -> &'static [u8] {
        &ATR
    }

    /// The card life-cycle state.
    pub fn state(&self) -> CardState {
        self.header.state
    }

    /// The card header (life cycle, attack counter, chip data).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The NVM (for inspection: wear, statistics, contents).
    pub fn nvm(&self) -> &Nvm<E> {
        &self.nvm
    }

    /// The file table.
    pub fn files(&self) -> CardResult<Vec<Fcb>> {
        self.table.all(&self.nvm)
    }

    /// Whether power was lost during a command (only with a fault-injecting EEPROM).
    pub fn power_lost(&self) -> bool {
        self.dead
    }

    /// Gives the EEPROM back (to save it, or to power the card up again).
    pub fn into_eeprom(self) -> E {
        self.nvm.into_eeprom()
    }

    /// Processes one command APDU and returns the response APDU bytes.
    pub fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        self.transmit_bytes(apdu).to_bytes()
    }

    /// Processes one command APDU given as bytes.
    pub fn transmit_bytes(&mut self, apdu: &[u8]) -> Response {
        if self.dead {
            return Response::sw(StatusWord::MEMORY_FAILURE);
        }
        match Apdu::parse(apdu) {
            Ok(cmd) => self.transmit(&cmd),
            Err(e) => {
                self.v.responses.clear();
                Response::sw(e.status())
            }
        }
    }

    /// Processes one parsed command APDU.
    pub fn transmit(&mut self, apdu: &Apdu) -> Response {
        if self.dead {
            return Response::sw(StatusWord::MEMORY_FAILURE);
        }
        let is_get_response = apdu.cla & 0xF0 == 0 && apdu.ins == 0xC0;
        if is_get_response {
            return match Command::try_from(apdu) {
                Ok(_) => self.v.responses.get_response(apdu.ne),
                Err(sw) => Response::sw(sw),
            };
        }
        self.v.responses.clear();

        // ISO 7816-4 §5.1.1.1 command chaining.
        let assembled;
        let apdu = if apdu.is_chained() || self.v.chain.is_some() {
            let chain = self
                .v
                .chain
                .get_or_insert_with(|| ChainAssembler::new(MAX_COMMAND_DATA));
            match chain.push(apdu.clone()) {
                Ok(None) => return Response::sw(StatusWord::OK),
                Ok(Some(full)) => {
                    self.v.chain = None;
                    assembled = full;
                    &assembled
                }
                Err(sw) => {
                    self.v.chain = None;
                    return Response::sw(sw);
                }
            }
        } else {
            apdu
        };

        let extended = apdu.data.len() > 255 || apdu.ne.is_some_and(|n| n > 256);
        let full = self.run(apdu);
        self.v.responses.answer(full, apdu.ne, extended)
    }

    /// Parses, gates and executes one command inside its NVM transaction.
    fn run(&mut self, apdu: &Apdu) -> Response {
        let result = Command::try_from(apdu)
            .and_then(|cmd| self.gate(&cmd).map(|()| cmd))
            .and_then(|cmd| self.execute(apdu, cmd));
        match result {
            Ok(resp) => match self.commit() {
                Ok(()) => resp,
                Err(sw) => Response::sw(sw),
            },
            Err(sw) => {
                self.nvm.rollback();
                Response::sw(sw)
            }
        }
    }

    /// Commits the staged writes; a failing EEPROM answers 6581 and nothing is changed.
    pub(crate) fn commit(&mut self) -> CardResult<()> {
        if !self.nvm.has_staged() {
            return Ok(());
        }
        match self.nvm.commit() {
            Ok(()) => Ok(()),
            Err(e) => {
                if e.is_power_lost() {
                    self.dead = true;
                }
                self.nvm.rollback();
                // The header may have been changed in RAM by the failed command.
                if let Ok(h) = Header::read(&self.nvm) {
                    self.header = h;
                }
                Err(StatusWord::MEMORY_FAILURE)
            }
        }
    }

    /// The life-cycle gate: which commands a card and an application in a given state accept.
    fn gate(&self, cmd: &Command) -> CardResult<()> {
        use Command as C;
        match self.header.state {
            CardState::Terminated => {
                // Only identification: the chip production data.
                return match cmd {
                    C::GetData { .. } => Ok(()),
                    _ => Err(StatusWord::FUNCTION_NOT_SUPPORTED),
                };
            }
            CardState::CardLocked => {
                return match cmd {
                    C::GetData { .. }
                    | C::GetChallenge { .. }
                    | C::SetStatus { .. }
                    | C::Select { .. } => Ok(()),
                    C::ExternalAuthenticate { .. } if self.v.current_df == 0 => Ok(()),
                    _ => Err(StatusWord::FUNCTION_NOT_SUPPORTED),
                };
            }
            _ => {}
        }
        let df = self.current_df()?;
        if df.lcs == crate::fs::lcs::TERMINATED {
            return match cmd {
                C::Select { .. } | C::GetData { .. } => Ok(()),
                _ => Err(StatusWord::FILE_TERMINATED),
            };
        }
        match df.app_state {
            app_state::LOCKED => match cmd {
                C::Select { .. }
                | C::GetData { .. }
                | C::GetChallenge { .. }
                | C::ApplicationUnblock => Ok(()),
                _ => Err(StatusWord::FUNCTION_NOT_SUPPORTED),
            },
            app_state::LOCKED_PERMANENTLY => match cmd {
                C::Select { .. } | C::GetData { .. } => Ok(()),
                _ => Err(StatusWord::APPLICATION_LOCKED_PERMANENTLY),
            },
            _ => Ok(()),
        }
    }

    fn execute(&mut self, apdu: &Apdu, cmd: Command) -> CardResult<Response> {
        use Command as C;
        if !matches!(cmd, C::App(_)) {
            // PBOC: an INITIALIZE must be followed directly by its completion; any other
            // command in between ends the application's transaction in progress.
            self.v.app = Default::default();
        }
        match cmd {
            C::Select { by, answer } => self.select(by, answer),
            C::ReadBinary { ef, offset, ne } => self.read_binary(ef, offset, ne),
            C::UpdateBinary { ef, offset, data } => self.update_binary(apdu, ef, offset, data),
            C::ReadRecord { ef, record, ne } => self.read_record(ef, record, ne),
            C::UpdateRecord { ef, record, data } => self.update_record(apdu, ef, record, data),
            C::AppendRecord { ef, data } => self.append_record(apdu, ef, data),
            C::GetResponse { .. } => Err(StatusWord::CONDITIONS_NOT_SATISFIED),
            C::GetChallenge { len } => Ok(self.get_challenge(len)),
            C::ExternalAuthenticate {
                key_index,
                cryptogram,
            } => self.external_authenticate(key_index, &cryptogram),
            C::InternalAuthenticate { key_index, data } => {
                self.internal_authenticate(key_index, &data)
            }
            C::Verify { pin_index, pin } => self.verify(pin_index, pin.map(|p| p.0)),
            C::ChangePin { old, new } => self.change_pin(old.0, new.0),
            C::ReloadPin { .. } => self.reload_pin(apdu),
            C::UnblockPin { .. } => self.unblock_pin(apdu),
            C::CreateFile { fcp } => self.create_file(&fcp),
            C::WriteKey { .. } => self.write_key(apdu),
            C::EraseDf => self.erase_df(),
            C::ListFiles { dfs } => self.list_files(dfs),
            C::GetData { tag } => self.get_data(tag),
            C::ApplicationBlock { permanent } => self.application_block(apdu, permanent),
            C::ApplicationUnblock => self.application_unblock(apdu),
            C::CardBlock => self.card_block(apdu),
            C::SetStatus { scope, state } => self.set_status(scope, state),
            C::TerminateDf => self.terminate_df(apdu),
            C::TerminateCard => self.terminate_card(apdu),
            C::App(app) => self.app_command(&app.apdu),
        }
    }

    /// The current DF's control block.
    pub(crate) fn current_df(&self) -> CardResult<Fcb> {
        self.table.load(&self.nvm, self.v.current_df)
    }

    /// Security state of a DF on the current path (0 when not on it).
    pub(crate) fn security_of(&self, df: u8) -> u8 {
        self.v
            .security
            .iter()
            .find(|(d, _)| *d == df)
            .map_or(0, |(_, s)| *s)
    }

    /// Sets the security state of the current DF.
    pub(crate) fn set_security(&mut self, state: u8) {
        let df = self.v.current_df;
        match self.v.security.iter_mut().find(|(d, _)| *d == df) {
            Some(entry) => entry.1 = state,
            None => self.v.security.push((df, state)),
        }
    }

    /// Makes `df` the current DF. Security states of DFs that stay on the path from the MF are
    /// kept; the others are cleared (ISO 7816-4 §5.4: the state belongs to the DF).
    pub(crate) fn enter_df(&mut self, df: u8) -> CardResult<()> {
        if df != self.v.current_df {
            let path: Vec<u8> = self
                .table
                .lineage(&self.nvm, df)?
                .iter()
                .map(|f| f.index)
                .collect();
            self.v
                .security
                .retain(|(d, _)| path.contains(d) && *d != df);
            self.v.security.push((df, 0));
            self.v.current_df = df;
            self.v.challenge = None;
            self.v.app = Default::default();
        }
        self.v.current_ef = None;
        self.v.record_ptr = None;
        Ok(())
    }

    /// The DF that holds the keys governing `df`: `df` itself if its key file has a master key,
    /// else the nearest ancestor that has one (personalization under the parent's authority).
    pub(crate) fn managing_df(&self, df: u8) -> CardResult<u8> {
        let lineage = self.table.lineage(&self.nvm, df)?;
        for f in lineage.iter().rev() {
            if let Some(kf) = crate::keys::KeyFile::of(&self.table, &self.nvm, f.index)? {
                if kf
                    .keys(&self.nvm)?
                    .iter()
                    .any(|k| k.key_type == crate::keys::KeyType::Master)
                {
                    return Ok(f.index);
                }
            }
        }
        Ok(lineage.first().map_or(0, |f| f.index))
    }

    /// Fills `buf` from the random source.
    pub(crate) fn random(&mut self, buf: &mut [u8]) {
        self.rng.fill(buf);
    }

    /// Checks that an EF may be accessed as `kind` (not internal, right structure).
    pub(crate) fn check_structure(fcb: &Fcb, want_record: bool) -> CardResult<()> {
        if fcb.is_df() || fcb.kind.is_internal() {
            return Err(StatusWord::COMMAND_INCOMPATIBLE_WITH_FILE);
        }
        if fcb.kind.is_record() != want_record {
            return Err(StatusWord::COMMAND_INCOMPATIBLE_WITH_FILE);
        }
        Ok(())
    }

    /// The data of a transparent or internal file, for applications.
    pub(crate) fn file_bytes(&self, fcb: &Fcb) -> CardResult<Vec<u8>> {
        nv(self.nvm.read_vec(fcb.body as usize, fcb.size as usize))
    }
}
