//! `iccard card personalize`: a blank card image (from `card new`) becomes a user card (MF,
//! card-level files, the purse and the access-control applications, card SECURED) through the
//! issuer's personalization APDU script.

use anyhow::{bail, Context, Result};
use clap::Args;
use iccard_apdu::hex;
use iccard_cos::CardState;
use iccard_crypto::PurseAlg;
use iccard_issuer::personalize::{self, Personalization};
use iccard_link::ImageCard;
use std::path::PathBuf;

/// `card personalize`.
#[derive(Args)]
pub struct PersonalizeArgs {
    /// Card image of a blank card (OP_READY), updated in place.
    #[arg(long)]
    image: PathBuf,
    /// Use the published development key set (demos and tests only; required until a keystore
    /// exists).
    #[arg(long)]
    dev_keys: bool,
    /// Card number: 1 to 20 decimal digits (stored as the 10-byte BCD application serial).
    #[arg(long)]
    card_number: String,
    /// The holder's PIN: 4 to 12 decimal digits.
    #[arg(long)]
    pin: String,
    /// Key algorithm of the applications.
    #[arg(long, value_parser = ["3des", "sm4"], default_value = "3des")]
    alg: String,
    /// Highest purse balance, in fen.
    #[arg(long, default_value_t = personalize::DEFAULT_MAX_BALANCE)]
    max_balance: u32,
    /// Highest amount of one purchase, in fen.
    #[arg(long, default_value_t = personalize::DEFAULT_PURCHASE_LIMIT)]
    purchase_limit: u32,
    /// Highest total of purchases on one day, in fen.
    #[arg(long, default_value_t = personalize::DEFAULT_DAILY_LIMIT)]
    daily_limit: u32,
    /// Consecutive purse MAC failures that lock the purse for good (1..=15).
    #[arg(long, default_value_t = personalize::DEFAULT_MAC_FAILURE_LIMIT)]
    mac_failure_limit: u8,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

impl std::fmt::Debug for PersonalizeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The PIN stays out of debug output.
        f.debug_struct("PersonalizeArgs")
            .field("image", &self.image)
            .field("dev_keys", &self.dev_keys)
            .field("card_number", &self.card_number)
            .field("pin", &"<secret>")
            .field("alg", &self.alg)
            .field("json", &self.json)
            .finish_non_exhaustive()
    }
}

fn bcd_date(d: &[u8; 4]) -> String {
    iccard_apdu::bcd::decode(d).unwrap_or_else(|_| hex::encode(d))
}

/// Runs `card personalize`.
pub fn run(a: &PersonalizeArgs) -> Result<()> {
    if !a.dev_keys {
        bail!("no keystore configured yet: pass --dev-keys to use the published development keys");
    }
    if !(1..=15).contains(&a.mac_failure_limit) {
        bail!(
            "--mac-failure-limit must be between 1 and 15, got {}",
            a.mac_failure_limit
        );
    }
    let alg = if a.alg == "sm4" {
        PurseAlg::Sm4
    } else {
        PurseAlg::TripleDes
    };
    let serial = personalize::CardNumber::serial(&a.card_number)?;
    personalize::pin_bytes(&a.pin)?;
    let mut p = Personalization::new(&a.card_number, &a.pin, alg);
    p.purse.settings.max_balance = a.max_balance;
    p.purse.settings.purchase_limit = a.purchase_limit;
    p.purse.settings.daily_limit = a.daily_limit;
    p.purse.settings.mac_failure_limit = a.mac_failure_limit;

    let channel = ImageCard::open(&a.image)
        .with_context(|| format!("cannot open the card image {}", a.image.display()))?;
    let state = channel.card().state();
    if state != CardState::OpReady {
        bail!(
            "the card in {} is {}, not a blank card (OP_READY): personalize a card made by `iccard card new`",
            a.image.display(),
            state.name()
        );
    }
    let channel = personalize::personalize(channel, &p).context("personalization failed")?;
    let state = channel.card().state().name();
    let s = &p.purse.settings;
    if a.json {
        let summary = serde_json::json!({
            "image": a.image.display().to_string(),
            "card_number": a.card_number,
            "application_serial": hex::encode(&serial),
            "algorithm": alg.to_string(),
            "state": state,
            "applications": [
                {
                    "label": "PURSE",
                    "aid": hex::encode(personalize::PURSE_AID),
                    "fid": format!("{:04X}", iccard_cos::app::purse::PURSE_FID),
                },
                {
                    "label": "ACCESS",
                    "aid": hex::encode(personalize::ACCESS_AID),
                    "fid": format!("{:04X}", personalize::ACCESS_FID),
                },
            ],
            "purse": {
                "issuer_id": hex::encode(&p.purse.issuer_id),
                "start_date": bcd_date(&p.purse.start_date),
                "expiry_date": bcd_date(&p.purse.expiry_date),
                "max_balance_fen": s.max_balance,
                "purchase_limit_fen": s.purchase_limit,
                "daily_limit_fen": s.daily_limit,
                "mac_failure_limit": s.mac_failure_limit,
                "load_key_index": personalize::PURSE_KEY_INDEX,
                "purchase_key_index": personalize::PURSE_KEY_INDEX,
                "tac_key_index": personalize::TAC_KEY_INDEX,
                "key_version": personalize::PURSE_KEY_VERSION,
            },
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "personalized card {} in {}: {state}, development keys, {alg}",
        a.card_number,
        a.image.display()
    );
    println!(
        "  purse   {} (FID 1001), valid {} to {}, max balance {} fen, per purchase {} fen, per day {} fen, locks after {} MAC failures",
        hex::encode(personalize::PURSE_AID),
        bcd_date(&p.purse.start_date),
        bcd_date(&p.purse.expiry_date),
        s.max_balance,
        s.purchase_limit,
        s.daily_limit,
        s.mac_failure_limit
    );
    println!(
        "  access  {} (FID {:04X})",
        hex::encode(personalize::ACCESS_AID),
        personalize::ACCESS_FID
    );
    Ok(())
}
