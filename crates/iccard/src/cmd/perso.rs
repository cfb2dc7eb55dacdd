//! `iccard card personalize` (being written).
use clap::Args;

/// `card personalize`.
#[derive(Debug, Args)]
pub struct PersonalizeArgs {}

/// Runs `card personalize`.
pub fn run(_a: &PersonalizeArgs) -> anyhow::Result<()> {
    anyhow::bail!("card personalize is not available yet")
}
