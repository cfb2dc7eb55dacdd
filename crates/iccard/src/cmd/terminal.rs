//! `iccard terminal ...` (being written).
use clap::Subcommand;

/// `iccard terminal` subcommands.
#[derive(Debug, Subcommand)]
pub enum TerminalCmd {
    /// Balance of a card.
    Balance,
}

/// Runs one terminal subcommand.
pub fn run(_c: &TerminalCmd) -> anyhow::Result<()> {
    anyhow::bail!("terminal commands are not available yet")
}
