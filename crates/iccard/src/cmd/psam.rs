//! `iccard card new --profile psam`: the blank card just made becomes a PSAM, personalized
//! through the issuer's APDU script (`iccard_issuer::psam`).

use anyhow::{bail, Context, Result};
use iccard_apdu::hex;
use iccard_issuer::psam::{self, PsamPersonalization, PURCHASE_KEYS};
use iccard_link::ImageCard;

/// Personalizes the blank card just written to `image` as a PSAM.
pub fn personalize(
    image: &std::path::Path,
    terminal_id: Option<&str>,
    dev_keys: bool,
) -> Result<()> {
    let done = (|| -> Result<([u8; 6], String)> {
        if !dev_keys {
            bail!(
                "no keystore configured yet: pass --dev-keys to use the published development keys"
            );
        }
        let Some(terminal_id) = terminal_id else {
            bail!("--profile psam needs --terminal-id (6 bytes, 12 hex digits)");
        };
        let terminal_id = psam::parse_terminal_id(terminal_id)?;
        let channel = ImageCard::open(image)
            .with_context(|| format!("cannot open the card image {}", image.display()))?;
        let channel = psam::personalize(channel, &PsamPersonalization { terminal_id })
            .context("PSAM personalization failed")?;
        Ok((terminal_id, channel.card().state().name().to_string()))
    })();
    let (terminal_id, state) = match done {
        Ok(d) => d,
        Err(e) => {
            // A blank or half-personalized card is not the PSAM that was asked for: do not
            // leave it behind.
            let _ = std::fs::remove_file(image);
            return Err(e.context(format!("no PSAM made ({} removed)", image.display())));
        }
    };
    let keys: Vec<String> = PURCHASE_KEYS
        .iter()
        .map(|k| {
            format!(
                "{} version {:02X} (index {:02X})",
                k.alg, k.version, k.index
            )
        })
        .collect();
    println!(
        "made PSAM {} for terminal {}: {state}, application {}, development purchase keys {}",
        image.display(),
        hex::encode(&terminal_id),
        hex::encode(psam::PSAM_AID),
        keys.join(", ")
    );
    Ok(())
}
