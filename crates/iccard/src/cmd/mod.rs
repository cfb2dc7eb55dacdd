//! Subcommands of the `iccard` binary, one module each.
pub mod crypto;
