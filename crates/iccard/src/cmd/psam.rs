//! `iccard card new --profile psam` (being written).

/// Personalizes the blank card just written to `image` as a PSAM.
pub fn personalize(
    _image: &std::path::Path,
    _terminal_id: Option<&str>,
    _dev_keys: bool,
) -> anyhow::Result<()> {
    anyhow::bail!("the psam profile is not available yet")
}
