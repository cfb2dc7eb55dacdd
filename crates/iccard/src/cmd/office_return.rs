//! `iccard office return quote|confirm|resume|list|recode`: a holder's card taken back at a
//! recharge point, and a refurbished chip coded again and put back in stock.
//!
//! The work is done by `iccard-office` ([`iccard_office::returns`]): the quote from rules, the
//! unload on the card, the refund posted, the purse blocked, the card terminated or erased.
//! This module opens the card (an image file or a PC/SC reader), prints the quote line by line,
//! and insists on the refund the holder accepted (`--accept-refund`, the quote's figure) so
//! that nothing is paid that was not shown first.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use iccard_issuer::functional::test_card;
use iccard_issuer::manufacture::{self as blank, BlankCard};
use iccard_issuer::personalize::chip_serial;
use iccard_issuer::script::Admin;
use iccard_link::{load_image, save_image, ImageCard, OsRandom};
use iccard_office::returns::{
    Condition, Disposition, ReturnQuote, ReturnReceipt, ReturnRequest, ReturnResumed,
};
use iccard_terminal::PurseCard;

use super::office::{classify_office, now_time, print, transaction_time, yuan, Ctx, Refused};

/// `office return`.
#[derive(Debug, Subcommand)]
pub enum ReturnCmd {
    /// Show the refund a return of this card would pay, rule by rule; nothing moves.
    Quote(QuoteArgs),
    /// Take the card back: unload its purse, pay the refund quoted, block the purse, then
    /// terminate the card (destroy) or erase it (refurbish).
    Confirm(ConfirmArgs),
    /// Finish a return interrupted by a lost card answer or a crash (the card decides).
    Resume(CardArgs),
    /// Returns not finished yet.
    List,
    /// A refurbished card (erased at its return) coded again as a blank card with the
    /// development transport key, tested, and back in stock (office console; development
    /// offices only: a production office records the card maker's work).
    Recode(RecodeArgs),
}

/// Where the card is.
#[derive(Debug, Args)]
pub struct CardArgs {
    /// Card image file.
    #[arg(long, required_unless_present = "reader")]
    card: Option<PathBuf>,
    /// PC/SC reader holding the card, in place of --card.
    #[arg(long, conflicts_with = "card")]
    reader: Option<String>,
}

/// The card's condition as the clerk sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConditionArg {
    /// Undamaged: the deposit is refunded.
    Good,
    /// Damaged: the deposit is forfeited.
    Damaged,
}

impl From<ConditionArg> for Condition {
    fn from(c: ConditionArg) -> Self {
        match c {
            ConditionArg::Good => Condition::Good,
            ConditionArg::Damaged => Condition::Damaged,
        }
    }
}

/// What becomes of the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DispositionArg {
    /// Erased and sent to refurbishment (back to stock after `return recode`).
    Refurbish,
    /// Terminated for good and destroyed.
    Destroy,
}

/// `office return quote`.
#[derive(Debug, Args)]
pub struct QuoteArgs {
    #[command(flatten)]
    card: CardArgs,
    /// The card's condition.
    #[arg(long, value_enum, default_value_t = ConditionArg::Good)]
    condition: ConditionArg,
}

/// `office return confirm`.
#[derive(Debug, Args)]
pub struct ConfirmArgs {
    #[command(flatten)]
    card: CardArgs,
    /// The card's condition.
    #[arg(long, value_enum, default_value_t = ConditionArg::Good)]
    condition: ConditionArg,
    /// What becomes of the card.
    #[arg(long, value_enum)]
    disposition: DispositionArg,
    /// The refund the holder was quoted and accepted, minor units (`return quote`'s figure).
    #[arg(long)]
    accept_refund: i64,
    /// Transaction date YYYYMMDD (default: today, UTC).
    #[arg(long)]
    date: Option<String>,
    /// Transaction time HHMMSS (default: now, UTC).
    #[arg(long)]
    time: Option<String>,
}

/// `office return recode`.
#[derive(Debug, Args)]
pub struct RecodeArgs {
    /// The erased card's image file (rewritten in place).
    #[arg(long)]
    card: PathBuf,
}

fn describe_quote(q: &ReturnQuote) -> String {
    let mut t = format!(
        "card {}{} ({}): the card proves a balance of {}",
        q.card_number,
        q.card_type
            .as_deref()
            .map(|c| format!(", product {c}"))
            .unwrap_or_default(),
        q.status,
        yuan(q.card_balance_minor)
    );
    if q.unsettled_minor > 0 {
        t.push_str(&format!(
            "; {} of offline purchases are not uploaded yet (they settle later)",
            yuan(q.unsettled_minor)
        ));
    }
    t.push('\n');
    for l in &q.lines {
        t.push_str(&format!("  {:>12}  {}\n", yuan(l.amount_minor), l.rule));
    }
    t.push_str(&format!(
        "  {:>12}  refund in cash (confirm with --accept-refund {})",
        yuan(q.refund_minor),
        q.refund_minor
    ));
    t
}

fn describe_receipt(r: &ReturnReceipt) -> String {
    format!(
        "return {}: card {} unloaded {}{}; refund {} paid in cash (deposit refunded {}, forfeited {}, fee {}); purse blocked for good; card {}{}",
        r.return_id,
        r.card_number,
        yuan(r.unloaded_minor),
        match (&r.tac, r.tac_verified) {
            (Some(t), Some(true)) => format!(" (TAC {t} verified)"),
            (Some(t), _) => format!(" (TAC {t} DOES NOT VERIFY: report this card)"),
            _ => String::new(),
        },
        yuan(r.refund_minor),
        yuan(r.deposit_refund_minor),
        yuan(r.deposit_forfeit_minor),
        yuan(r.fee_minor),
        match r.disposition {
            Disposition::Destroy => "terminated (destroyed)",
            Disposition::Refurbish => "erased (to refurbishment)",
        },
        r.chip_serial
            .as_deref()
            .map(|c| format!("; chip {c} {}", r.inventory_state.unwrap_or("")))
            .unwrap_or_default()
    )
}

/// Runs `office return`.
pub(super) async fn return_card(ctx: Ctx, c: &ReturnCmd) -> Result<ExitCode> {
    match c {
        ReturnCmd::Quote(a) => {
            let ks = ctx.open_keystore()?;
            let mut opened = super::reader::OpenCard::open(
                a.card.card.as_deref(),
                a.card.reader.as_deref(),
                "card",
            )?;
            let mut card =
                PurseCard::open(opened.channel()?).map_err(|e| anyhow!(Refused(anyhow!(e))))?;
            let q = ctx
                .office
                .return_quote(&ctx.session, &*ks, &mut card, a.condition.into())
                .await
                .map_err(classify_office)?;
            print(ctx.json, &q, || describe_quote(&q))?;
            drop(card);
            drop(opened);
            ctx.done(ExitCode::SUCCESS)
        }
        ReturnCmd::Confirm(a) => {
            let ks = ctx.open_keystore()?;
            let when = transaction_time(a.date.as_deref(), a.time.as_deref())?;
            let mut opened = super::reader::OpenCard::open(
                a.card.card.as_deref(),
                a.card.reader.as_deref(),
                "card",
            )?;
            let mut card =
                PurseCard::open(opened.channel()?).map_err(|e| anyhow!(Refused(anyhow!(e))))?;
            let r = ctx
                .office
                .return_card(
                    &ctx.session,
                    &*ks,
                    &mut card,
                    ReturnRequest {
                        condition: a.condition.into(),
                        disposition: match a.disposition {
                            DispositionArg::Refurbish => Disposition::Refurbish,
                            DispositionArg::Destroy => Disposition::Destroy,
                        },
                        accepted_refund_minor: a.accept_refund,
                        when,
                    },
                )
                .await
                .map_err(classify_office)?;
            print(ctx.json, &r, || describe_receipt(&r))?;
            drop(card);
            drop(opened);
            ctx.done(ExitCode::SUCCESS)
        }
        ReturnCmd::Resume(a) => {
            let ks = ctx.open_keystore()?;
            let mut opened =
                super::reader::OpenCard::open(a.card.as_deref(), a.reader.as_deref(), "card")?;
            let mut card =
                PurseCard::open(opened.channel()?).map_err(|e| anyhow!(Refused(anyhow!(e))))?;
            let r = ctx
                .office
                .resume_return(&ctx.session, &*ks, &mut card)
                .await
                .map_err(classify_office)?;
            print(ctx.json, &r, || {
                match &r {
                ReturnResumed::Finished { receipt } => describe_receipt(receipt),
                ReturnResumed::Cancelled {
                    return_id,
                    amount_minor,
                } => format!(
                    "return {return_id} cancelled: the card never executed the unload of {}; nothing was paid",
                    yuan(*amount_minor)
                ),
            }
            })?;
            drop(card);
            drop(opened);
            ctx.done(ExitCode::SUCCESS)
        }
        ReturnCmd::List => {
            let open = ctx.office.open_returns().await.map_err(classify_office)?;
            print(ctx.json, &open, || {
                if open.is_empty() {
                    return "no return is open".into();
                }
                open.iter()
                    .map(|r| {
                        format!(
                            "return {}: card {} {} (refund {}), by {} at {}",
                            r.return_id,
                            r.card_number,
                            r.state,
                            yuan(r.refund_minor),
                            r.operator,
                            r.machine_number
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            ctx.done(ExitCode::SUCCESS)
        }
        ReturnCmd::Recode(a) => recode(ctx, a).await,
    }
}

async fn recode(ctx: Ctx, a: &RecodeArgs) -> Result<ExitCode> {
    if ctx.config.mode == iccard_office::Mode::Production {
        bail!(
            "`return recode` codes a simulated chip with the development transport key: a production office records the card maker's work instead"
        );
    }
    // The chip data survives ERASE DF: it names the chip.
    let serial = {
        let mut card = ImageCard::open(&a.card)
            .with_context(|| format!("cannot open {}", a.card.display()))?;
        let mut admin = Admin::new(&mut card);
        chip_serial(&mut admin).map_err(|e| anyhow!(Refused(anyhow!("{e}"))))?
    };
    let chip = iccard_office::manufacture::format_chip_serial(u64::from_be_bytes(serial));
    let inventory = ctx
        .office
        .inventory_card(&chip)
        .await
        .map_err(classify_office)?;
    if inventory.state != iccard_office::manufacture::InventoryState::Refurbished {
        return Err(anyhow!(Refused(anyhow!(
            "chip {chip} is {}, not refurbished: only an erased returned card is coded again",
            inventory.state.as_str()
        ))));
    }
    let spec = BlankCard {
        chip_serial: serial,
        production_date: {
            let t = now_time();
            let d = t.date_string();
            let b = iccard_apdu::bcd::encode_digits(&d, 4).map_err(|e| anyhow!("{e}"))?;
            [b[0], b[1], b[2], b[3]]
        },
        batch: u16::try_from(inventory.batch_id).unwrap_or(u16::MAX),
        transport_key_version: 1,
        attack_threshold: blank::DEFAULT_ATTACK_THRESHOLD,
    };
    // The same EEPROM (its wear kept), formatted again as the card maker's equipment would.
    let eeprom =
        load_image(&a.card).with_context(|| format!("cannot read {}", a.card.display()))?;
    let card = blank::make_blank(eeprom, OsRandom, &spec).map_err(|e| anyhow!("{e}"))?;
    save_image(&a.card, &card.into_eeprom())
        .with_context(|| format!("cannot write {}", a.card.display()))?;
    let mut card = ImageCard::open(&a.card)?;
    let key = blank::transport_key(&iccard_issuer::devkeys::TRANSPORT.value(), &serial);
    let report = test_card(&mut card, &key);
    drop(card);
    let moved = ctx
        .office
        .refurbished_to_stock(&ctx.session, &chip, &report)
        .await
        .map_err(classify_office)?;
    print(ctx.json, &moved, || match report.failure() {
        None => format!("chip {chip} coded again and tested: back in stock"),
        Some(why) => format!("chip {chip} coded again but failed its test ({why}): destroyed"),
    })?;
    ctx.done(ExitCode::SUCCESS)
}
