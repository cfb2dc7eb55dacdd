//! # iccard-cos: a card operating system for a CPU card
//!
//! A pure state machine: APDU bytes in, response bytes out ([`Card::process`]), over an
//! injected EEPROM ([`nvm::Eeprom`]) and random source ([`platform::RandomSource`]). It does no
//! I/O and reads no clock.
//!
//! - [`nvm`]: the EEPROM, the journal that makes each command's writes atomic, wear counters
//!   and endurance, wear-levelled hot records, the image codec.
//! - [`fs`]: the file system in EEPROM (card header, file table, bodies, access conditions).
//! - [`keys`]: key files, key and PIN records, retry counters.
//! - [`command`]: APDU → typed [`command::Command`] (or the status word refusing it).
//! - [`card`]: power-up, the command loop, the life-cycle gate, per-command transactions.
//! - `files`, `security`, `admin`: the commands (ISO 7816-4/-9, PBOC, GlobalPlatform).
//! - [`app`]: proprietary applications (purse, PSAM) hooked onto DFs.
//! - [`fuzzing`]: a public-key reference card for tests and benchmarks, and the fuzz driver.
//!
//! The commands, their status words and the project-defined formats are documented in
//! `docs/COS.md`.

pub mod admin;
pub mod app;
pub mod card;
pub mod command;
mod files;
pub mod fs;
pub mod fuzzing;
pub mod info;
pub mod keys;
pub mod nvm;
mod perso;
pub mod platform;
pub mod security;

pub use card::{Card, CardError, Manufacture, ATR};
pub use files::{TAG_APP_KIND, TAG_SECURITY};
pub use fs::{CardState, ChipData};
pub use perso::MF_ADMIN_STATE;
pub use platform::{RandomSource, SeededRandom};
