//! Subcommands of the `iccard` binary, one module each.
pub mod card;
pub mod crypto;
pub mod demo;
pub mod lifecycle;
pub mod office;
pub mod office_life;
pub mod office_return;
pub mod office_settle;
pub mod office_shift;
pub mod perso;
pub mod pos;
pub mod psam;
pub mod reader;
pub mod serve;
pub mod terminal;
