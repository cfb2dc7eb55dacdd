//! `iccard crypto ...`: the crypto primitives on the command line (placeholder, being written).
use clap::Subcommand;

/// `iccard crypto` subcommands.
#[derive(Debug, Subcommand)]
pub enum CryptoCmd {
    /// Key check value.
    Kcv,
}

/// Runs one crypto subcommand and returns the line of hex to print.
pub fn run(_cmd: &CryptoCmd) -> anyhow::Result<String> {
    anyhow::bail!("not written yet")
}
