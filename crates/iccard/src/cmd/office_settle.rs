//! `iccard office settlement` (helper's work in progress).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;

use super::office::Ctx;

/// `office settlement`.
#[derive(Debug, Subcommand)]
pub enum SettlementCmd {
    /// Import a batch file.
    Import,
}

/// Runs `office settlement`.
pub(super) async fn settlement(_ctx: Ctx, c: &SettlementCmd) -> Result<ExitCode> {
    match c {
        SettlementCmd::Import => bail!("not built yet"),
    }
}
