//! `iccard office shift` (helper's work in progress).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;

use super::office::Ctx;

/// `office shift`.
#[derive(Debug, Subcommand)]
pub enum ShiftCmd {
    /// Open a shift.
    Open,
}

/// Runs `office shift`.
pub(super) async fn shift(_ctx: Ctx, c: &ShiftCmd) -> Result<ExitCode> {
    match c {
        ShiftCmd::Open => bail!("not built yet"),
    }
}
