//! `iccard terminal run`: the offline point of use (helper's work in progress).

use anyhow::{bail, Result};
use clap::Subcommand;

/// `terminal run`.
#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// Sell.
    Sell,
}

/// Runs `terminal run`.
pub fn run(c: &RunCmd) -> Result<()> {
    match c {
        RunCmd::Sell => bail!("not built yet"),
    }
}
