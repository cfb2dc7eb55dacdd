//! Subcommands of the `iccard` binary, one module each.
pub mod card;
pub mod crypto;
pub mod demo;
