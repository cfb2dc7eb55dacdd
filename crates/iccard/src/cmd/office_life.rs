//! `iccard office product|lot|batch|inventory|issue|loss|card`: the card life cycle from the
//! command line. Products and their profile versions; chip lots; production orders and batches
//! taken through every stage (coding makes each blank card as an image file, testing runs the
//! functional test of each image); the inventory of physical cards; issuance at a recharge
//! point with the first recharge; the loss list and a card's status.
//!
//! The work is done by `iccard-office`; this module parses what a person types (card numbers
//! through [`parse_card_number`], chip serials, dates, applications), drives the library, shows
//! progress over the cards of a batch, and prints text or `--json` with the exit codes of the
//! rest of `iccard office` (1 refused, 2 usage or input).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use iccard_issuer::functional::test_card;
use iccard_issuer::manufacture as blank;
use iccard_link::{save_image, ImageCard, OsRandom};
use iccard_office::issuance::{parse_card_number, HolderData, IssueReceipt, IssueRequest};
use iccard_office::manufacture::{
    format_chip_serial, parse_chip_serial, Allocate, CodedCard, Holder, InventoryState, NewChipLot,
    NewProductionOrder, ProductionBatch, Stage, StageRecord, TestedCard, VoidedCard,
};
use iccard_office::products::{
    Algorithm, ApplicationKind, CardType, NewProduct, ProductApplication, ProductProfile,
};
use iccard_office::recharge::{RechargeReceipt, RechargeRequest};
use iccard_office::{Action, Password, Session};
use iccard_terminal::{PurseCard, TransactionTime};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use zeroize::Zeroizing;

use super::office::{
    classify_office, describe_load, print, secret, when, yuan, AlgArg, Ctx, Refused,
};

/// Environment variable with the new card's PIN (`office issue`).
pub const CARD_PIN_ENV: &str = "ICCARD_CARD_PIN";
/// Environment variable with the password of the operator doing the first recharge
/// (`office issue --recharge-operator`).
pub const RECHARGE_PASSWORD_ENV: &str = "ICCARD_RECHARGE_OPERATOR_PASSWORD";

// ---------------------------------------------------------------------------------------------
// arguments

/// Registered or anonymous, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CardTypeArg {
    /// Issued to a named holder.
    Registered,
    /// A bearer card.
    Anonymous,
}

/// A product's profile on the command line. `product create` needs every option; `product
/// revise` keeps the current value of each option not given.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Registered (a holder recorded at issuance) or anonymous.
    #[arg(long = "type", value_enum)]
    card_type: Option<CardTypeArg>,
    /// Deposit taken at issuance, minor units.
    #[arg(long)]
    deposit: Option<i64>,
    /// Card fee taken at issuance, minor units.
    #[arg(long)]
    fee: Option<i64>,
    /// Validity from issuance, months (1 to 600).
    #[arg(long)]
    validity_months: Option<i64>,
    /// Maximum purse balance, minor units.
    #[arg(long)]
    max_balance: Option<i64>,
    /// Largest single offline purchase, minor units.
    #[arg(long)]
    offline_limit: Option<i64>,
    /// Offline purchases per day, minor units.
    #[arg(long)]
    offline_daily_limit: Option<i64>,
    /// Key algorithm.
    #[arg(long, value_enum)]
    alg: Option<AlgArg>,
    /// An application and its rights: `purse:load,purchase` or `access:door:A1,door:A2`
    /// (repeat for each application; given at all, the list replaces the current one).
    #[arg(long = "app")]
    apps: Vec<String>,
}

/// `office product`.
#[derive(Debug, Subcommand)]
pub enum ProductCmd {
    /// Define a card product with its profile as version 1 (every profile option required).
    Create {
        /// Short code (letters, digits, `-`, `_`).
        code: String,
        /// The name shown to people.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Write the next version of a product's profile: options not given keep their current
    /// value. Cards already issued keep their version.
    Revise {
        /// The product's code.
        code: String,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// Every product with its current profile.
    List,
    /// One product: its current profile, or the profile of one version.
    Show {
        /// The product's code.
        code: String,
        /// A profile version (default: the current one).
        #[arg(long)]
        version: Option<i64>,
    },
    /// Every version of a product's profile, oldest first, with who wrote it.
    History {
        /// The product's code.
        code: String,
    },
}

/// `office lot`.
#[derive(Debug, Subcommand)]
pub enum LotCmd {
    /// Receive a chip lot from a chip maker (at an office console).
    Receive {
        /// The lot number.
        lot: String,
        /// The chip maker.
        #[arg(long)]
        maker: String,
        /// The chip model.
        #[arg(long)]
        model: String,
        /// How many chips.
        #[arg(long)]
        quantity: i64,
        /// The first chip serial (16 hex digits); the lot holds the next `quantity` serials.
        #[arg(long)]
        first_serial: String,
        /// The transport key version the chips are coded with (0 to 255).
        #[arg(long)]
        transport_key_version: i64,
    },
    /// Every lot with what is left of it.
    List,
}

/// `office batch`.
#[derive(Debug, Subcommand)]
pub enum BatchCmd {
    /// Open a production order: cards of a product from a lot's next chips.
    Order {
        /// The product's code.
        #[arg(long)]
        product: String,
        /// The chip lot.
        #[arg(long)]
        lot: String,
        /// How many cards.
        #[arg(long)]
        quantity: i64,
    },
    /// Every production order.
    Orders,
    /// Start a batch of an order (or continue a batch) and take it through every stage:
    /// printing, coding (each blank card made as the image file DIR/<chip serial>.card),
    /// bronzing, packaging, gluing, testing (the functional test of each image; failures are
    /// voided with their reason). Passed cards enter stock.
    Run(BatchRunArgs),
    /// A batch: its stages (operator, machine, equipment, counts) and its cards with their
    /// states.
    Show {
        /// The batch id.
        id: i64,
    },
}

/// `office batch run`.
#[derive(Debug, Args)]
pub struct BatchRunArgs {
    /// The production order to start a batch of.
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    order: Option<i64>,
    /// How many card bodies the new batch has.
    #[arg(long, required_unless_present = "batch")]
    quantity: Option<i64>,
    /// Continue an interrupted batch from its next stage instead of starting one.
    #[arg(long, conflicts_with = "quantity")]
    batch: Option<i64>,
    /// The directory of the card images (created when missing).
    #[arg(long)]
    dir: PathBuf,
    /// The production date coded into the chips, YYYYMMDD (default: today, UTC).
    #[arg(long)]
    production_date: Option<String>,
    /// The production line: the equipment of each stage is recorded as LINE/<machine>.
    #[arg(long, default_value = "line-1")]
    line: String,
}

/// `office inventory`: counts by state, or a subcommand.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct InventoryArgs {
    /// Only this product's counts.
    #[arg(long)]
    product: Option<String>,
    #[command(subcommand)]
    command: Option<InventoryCmd>,
}

/// `office inventory ...`.
#[derive(Debug, Subcommand)]
pub enum InventoryCmd {
    /// One physical card and its history.
    Card {
        /// Its chip serial (16 hex digits).
        chip: String,
    },
    /// Allocate cards in stock (oldest first) to a branch or an operator.
    Allocate {
        /// The product.
        #[arg(long)]
        product: String,
        /// How many cards.
        #[arg(long)]
        quantity: i64,
        /// To this branch.
        #[arg(
            long,
            required_unless_present = "to_operator",
            conflicts_with = "to_operator"
        )]
        branch: Option<String>,
        /// To this operator (login).
        #[arg(long)]
        to_operator: Option<String>,
    },
    /// Take allocated cards back into stock.
    Return {
        /// Their chip serials.
        #[arg(required = true)]
        chips: Vec<String>,
    },
}

/// `office issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Card image file (a tested blank card from stock).
    #[arg(long, required_unless_present_any = ["reader", "batch_dir"])]
    card: Option<PathBuf>,
    /// PC/SC reader holding the card, in place of --card.
    #[arg(long, conflicts_with_all = ["card", "batch_dir"])]
    reader: Option<String>,
    /// Issue a batch: up to --count stocked cards among the card images in this directory
    /// (`<chip serial>.card`, as `batch run` writes them), in chip-serial order, with a
    /// progress bar; anonymous products only (a registered card needs its holder).
    #[arg(long, conflicts_with_all = ["card", "holder_name"], requires = "count")]
    batch_dir: Option<PathBuf>,
    /// How many cards to issue with --batch-dir.
    #[arg(long, requires = "batch_dir")]
    count: Option<usize>,
    /// The holder's name (registered products).
    #[arg(long, requires = "holder_id")]
    holder_name: Option<String>,
    /// The holder's identity document number (registered products).
    #[arg(long, requires = "holder_name")]
    holder_id: Option<String>,
    /// Load this amount (minor units) right after issuance: the first recharge.
    #[arg(long)]
    first_recharge: Option<i64>,
    /// The operator doing the first recharge (a recharge clerk; password from
    /// ICCARD_RECHARGE_OPERATOR_PASSWORD or a prompt). Default: the issuing operator.
    #[arg(long, requires = "first_recharge")]
    recharge_operator: Option<String>,
    /// The issuance date YYYYMMDD, start of validity (default: today, UTC).
    #[arg(long)]
    date: Option<String>,
}

/// `office loss`.
#[derive(Debug, Subcommand)]
pub enum LossCmd {
    /// Put a card on the loss list: recharges refuse it, terminals block it.
    Report {
        /// The card number (20 digits).
        card: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Take a card off the loss list (found again).
    Withdraw {
        /// The card number (20 digits).
        card: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// The changes of the loss list after a version (what a terminal holding that version
    /// downloads), with the versions from and to.
    List {
        /// The version already held (0: the whole list).
        #[arg(long, default_value_t = 0)]
        since: i64,
    },
}

/// `office card`.
#[derive(Debug, Subcommand)]
pub enum CardCmd {
    /// What the issuer says of a card: active, lost, replaced, returned, expired.
    Status {
        /// The card number (20 digits).
        card: String,
    },
    /// Mark every active card whose validity ended before the date as expired (no more
    /// loads; still refunded by `office return`); administrators.
    Expire {
        /// The day, YYYYMMDD (default: today, UTC).
        #[arg(long)]
        date: Option<String>,
    },
    /// The expired cards not yet returned, with the balance and deposit still owed.
    Expired,
}

// ---------------------------------------------------------------------------------------------
// helpers

fn refused(e: anyhow::Error) -> anyhow::Error {
    anyhow!(Refused(e))
}

/// A BCD date from YYYYMMDD.
fn bcd_date(s: &str, what: &str) -> Result<[u8; 4]> {
    let digits = s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit());
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<u32>().ok());
    let ok = digits
        && matches!(num(4..6), Some(1..=12))
        && matches!(num(6..8), Some(1..=31))
        && matches!(num(0..4), Some(1..));
    if !ok {
        bail!("{what} {s:?} is not a date: use YYYYMMDD");
    }
    let v = iccard_apdu::bcd::encode_digits(s, 4).map_err(|e| anyhow!("{what}: {e}"))?;
    Ok([v[0], v[1], v[2], v[3]])
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn today() -> [u8; 4] {
    blank::bcd_date_from_unix_days((now_unix() / 86_400) as i64)
}

fn chip(s: &str) -> Result<String> {
    parse_chip_serial(s)
        .map(format_chip_serial)
        .map_err(classify_office)
}

fn card_number(ctx: &Ctx, s: &str) -> Result<String> {
    parse_card_number(&ctx.config.issuer_number, s.trim()).map_err(classify_office)
}

/// Parses `--app KIND:RIGHT,RIGHT`.
fn application(s: &str) -> Result<ProductApplication> {
    let (kind, rights) = s.split_once(':').unwrap_or((s, ""));
    let application = ApplicationKind::parse(kind).map_err(classify_office)?;
    let rights: Vec<String> = rights
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(ProductApplication {
        application,
        rights,
    })
}

impl ProfileArgs {
    /// The profile: each option given, else `base`'s value; without a base every option is
    /// required.
    fn profile(&self, base: Option<&ProductProfile>) -> Result<ProductProfile> {
        let mut missing = Vec::new();
        fn pick<T: Copy>(
            v: Option<T>,
            b: Option<T>,
            name: &'static str,
            missing: &mut Vec<&'static str>,
        ) -> Option<T> {
            let r = v.or(b);
            if r.is_none() {
                missing.push(name);
            }
            r
        }
        let card_type = pick(
            self.card_type.map(|t| match t {
                CardTypeArg::Registered => CardType::Registered,
                CardTypeArg::Anonymous => CardType::Anonymous,
            }),
            base.map(|b| b.card_type),
            "--type",
            &mut missing,
        );
        let deposit = pick(
            self.deposit,
            base.map(|b| b.deposit_minor),
            "--deposit",
            &mut missing,
        );
        let fee = pick(self.fee, base.map(|b| b.fee_minor), "--fee", &mut missing);
        let validity = pick(
            self.validity_months,
            base.map(|b| b.validity_months),
            "--validity-months",
            &mut missing,
        );
        let max_balance = pick(
            self.max_balance,
            base.map(|b| b.max_balance_minor),
            "--max-balance",
            &mut missing,
        );
        let offline = pick(
            self.offline_limit,
            base.map(|b| b.offline_purchase_limit_minor),
            "--offline-limit",
            &mut missing,
        );
        let daily = pick(
            self.offline_daily_limit,
            base.map(|b| b.offline_cumulative_limit_minor),
            "--offline-daily-limit",
            &mut missing,
        );
        let alg = pick(
            self.alg.map(|a| match a {
                AlgArg::TripleDes => Algorithm::TripleDes,
                AlgArg::Sm4 => Algorithm::Sm4,
            }),
            base.map(|b| b.algorithm),
            "--alg",
            &mut missing,
        );
        let applications = if self.apps.is_empty() {
            match base {
                Some(b) => b.applications.clone(),
                None => {
                    missing.push("--app");
                    Vec::new()
                }
            }
        } else {
            self.apps
                .iter()
                .map(|a| application(a))
                .collect::<Result<_>>()?
        };
        if !missing.is_empty() {
            bail!("a new product needs {}", missing.join(", "));
        }
        let (
            Some(card_type),
            Some(deposit_minor),
            Some(fee_minor),
            Some(validity_months),
            Some(max_balance_minor),
            Some(offline_purchase_limit_minor),
            Some(offline_cumulative_limit_minor),
            Some(algorithm),
        ) = (
            card_type,
            deposit,
            fee,
            validity,
            max_balance,
            offline,
            daily,
            alg,
        )
        else {
            bail!("a product option is missing");
        };
        let p = ProductProfile {
            card_type,
            deposit_minor,
            fee_minor,
            validity_months,
            max_balance_minor,
            offline_purchase_limit_minor,
            offline_cumulative_limit_minor,
            algorithm,
            applications,
        };
        p.validate().map_err(classify_office)?;
        Ok(p)
    }
}

fn describe_profile(p: &ProductProfile) -> String {
    let apps = p
        .applications
        .iter()
        .map(|a| format!("{}:{}", a.application.as_str(), a.rights.join(",")))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{}, deposit {}, fee {}, {} months, max balance {}, offline {} per purchase / {} per day, {}, applications {}",
        p.card_type.as_str(),
        yuan(p.deposit_minor),
        yuan(p.fee_minor),
        p.validity_months,
        yuan(p.max_balance_minor),
        yuan(p.offline_purchase_limit_minor),
        yuan(p.offline_cumulative_limit_minor),
        p.algorithm.as_str(),
        apps
    )
}

fn describe_stage(r: &StageRecord) -> String {
    format!(
        "{:<9} {} by {} at {} on {:<16} in {:>5} out {:>5} voided {:>5}",
        r.stage.as_str(),
        when(r.at_ms),
        r.operator_login,
        r.machine_number,
        r.equipment,
        r.count_in,
        r.count_out,
        r.count_voided
    )
}

/// A progress bar over `n` cards, hidden for `--json` or when stdout is not a terminal.
fn progress(json: bool, n: usize, what: &str) -> ProgressBar {
    if json || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} cards {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

// ---------------------------------------------------------------------------------------------
// products

/// Runs `office product ...`.
pub(super) async fn product(ctx: Ctx, c: &ProductCmd) -> Result<ExitCode> {
    let o = &ctx.office;
    match c {
        ProductCmd::Create {
            code,
            name,
            profile,
        } => {
            let profile = profile.profile(None)?;
            let p = o
                .create_product(
                    &ctx.session,
                    NewProduct {
                        code: code.clone(),
                        name: name.clone(),
                        profile,
                    },
                )
                .await
                .map_err(classify_office)?;
            print(ctx.json, &p, || {
                format!(
                    "product {} ({}) version {}: {}",
                    p.code,
                    p.name,
                    p.current_version,
                    describe_profile(&p.profile)
                )
            })?;
        }
        ProductCmd::Revise { code, profile } => {
            let current = o.product(code).await.map_err(classify_office)?;
            let profile = profile.profile(Some(&current.profile))?;
            let p = o
                .revise_product(&ctx.session, code, profile)
                .await
                .map_err(classify_office)?;
            print(ctx.json, &p, || {
                format!(
                    "product {} is now version {}: {}",
                    p.code,
                    p.current_version,
                    describe_profile(&p.profile)
                )
            })?;
        }
        ProductCmd::List => {
            let ps = o.products().await.map_err(classify_office)?;
            print(ctx.json, &ps, || {
                if ps.is_empty() {
                    return "no product yet: `iccard office product create`".into();
                }
                ps.iter()
                    .map(|p| {
                        format!(
                            "{:<12} v{:<3} {}: {}",
                            p.code,
                            p.current_version,
                            p.name,
                            describe_profile(&p.profile)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        ProductCmd::Show { code, version } => match version {
            None => {
                let p = o.product(code).await.map_err(classify_office)?;
                print(ctx.json, &p, || {
                    format!(
                        "product {} ({}) version {} (created {}, last revised {}): {}",
                        p.code,
                        p.name,
                        p.current_version,
                        when(p.created_at_ms),
                        when(p.updated_at_ms),
                        describe_profile(&p.profile)
                    )
                })?;
            }
            Some(v) => {
                let p = o.product_version(code, *v).await.map_err(classify_office)?;
                print(ctx.json, &p, || {
                    format!(
                        "product {} version {} (by {} at {}): {}",
                        p.product_code,
                        p.version,
                        p.created_by_login,
                        when(p.created_at_ms),
                        describe_profile(&p.profile)
                    )
                })?;
            }
        },
        ProductCmd::History { code } => {
            let h = o.product_history(code).await.map_err(classify_office)?;
            print(ctx.json, &h, || {
                h.iter()
                    .map(|p| {
                        format!(
                            "v{:<3} {} by {}: {}",
                            p.version,
                            when(p.created_at_ms),
                            p.created_by_login,
                            describe_profile(&p.profile)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
    }
    ctx.done(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// lots

/// Runs `office lot ...`.
pub(super) async fn lot(ctx: Ctx, c: &LotCmd) -> Result<ExitCode> {
    match c {
        LotCmd::Receive {
            lot,
            maker,
            model,
            quantity,
            first_serial,
            transport_key_version,
        } => {
            let l = ctx
                .office
                .receive_chip_lot(
                    &ctx.session,
                    NewChipLot {
                        lot_number: lot.clone(),
                        chip_maker: maker.clone(),
                        chip_model: model.clone(),
                        quantity: *quantity,
                        first_chip_serial: first_serial.clone(),
                        transport_key_version: *transport_key_version,
                    },
                )
                .await
                .map_err(classify_office)?;
            print(ctx.json, &l, || {
                format!(
                    "lot {} received: {} {} chips {}..{} ({}), transport key version {}",
                    l.lot_number,
                    l.chip_maker,
                    l.chip_model,
                    l.first_chip_serial,
                    l.last_chip_serial,
                    l.quantity,
                    l.transport_key_version
                )
            })?;
        }
        LotCmd::List => {
            let lots = ctx.office.chip_lots().await.map_err(classify_office)?;
            print(ctx.json, &lots, || {
                let mut t = format!(
                    "{:<16} {:<16} {:<17} {:>8} {:>9} received",
                    "lot", "maker/model", "first chip", "chips", "available"
                );
                for l in &lots {
                    t.push_str(&format!(
                        "\n{:<16} {:<16} {:<17} {:>8} {:>9} {}",
                        l.lot_number,
                        format!("{}/{}", l.chip_maker, l.chip_model),
                        l.first_chip_serial,
                        l.quantity,
                        l.available(),
                        when(l.received_at_ms)
                    ));
                }
                t
            })?;
        }
    }
    ctx.done(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// batches

#[derive(Serialize)]
struct VoidedReport {
    chip_serial: String,
    stage: Stage,
    reason: String,
}

#[derive(Serialize)]
struct BatchRunReport {
    batch: ProductionBatch,
    stages: Vec<StageRecord>,
    dir: PathBuf,
    images: Vec<PathBuf>,
    in_stock: usize,
    voided: Vec<VoidedReport>,
}

/// Runs `office batch ...`.
pub(super) async fn batch(ctx: Ctx, c: &BatchCmd) -> Result<ExitCode> {
    match c {
        BatchCmd::Order {
            product,
            lot,
            quantity,
        } => {
            let o = ctx
                .office
                .open_production_order(
                    &ctx.session,
                    NewProductionOrder {
                        product_code: product.clone(),
                        lot_number: lot.clone(),
                        quantity: *quantity,
                    },
                )
                .await
                .map_err(classify_office)?;
            print(ctx.json, &o, || {
                format!(
                    "production order {}: {} cards of {} from lot {} (chips {}..{}); run it with `iccard office batch run --order {} --quantity N --dir DIR`",
                    o.id, o.quantity, o.product_code, o.lot_number, o.first_chip_serial, o.last_chip_serial, o.id
                )
            })?;
        }
        BatchCmd::Orders => {
            let os = ctx
                .office
                .production_orders()
                .await
                .map_err(classify_office)?;
            print(ctx.json, &os, || {
                let mut t = format!(
                    "{:>5} {:<12} {:<16} {:>8} {:>8} {:>8} chips",
                    "order", "product", "lot", "cards", "batched", "used"
                );
                for o in &os {
                    t.push_str(&format!(
                        "\n{:>5} {:<12} {:<16} {:>8} {:>8} {:>8} {}..{}",
                        o.id,
                        o.product_code,
                        o.lot_number,
                        o.quantity,
                        o.batched,
                        o.chips_used,
                        o.first_chip_serial,
                        o.last_chip_serial
                    ));
                }
                t
            })?;
        }
        BatchCmd::Run(r) => return run_batch(ctx, r).await,
        BatchCmd::Show { id } => {
            let o = &ctx.office;
            let b = o.production_batch(*id).await.map_err(classify_office)?;
            let stages = o.batch_stages(*id).await.map_err(classify_office)?;
            let cards = o.batch_cards(*id).await.map_err(classify_office)?;
            let v = serde_json::json!({"batch": b, "stages": stages, "cards": cards});
            print(ctx.json, &v, || {
                let mut t = format!(
                    "batch {} of order {}: {} card bodies of {} from lot {}, next stage {}",
                    b.id,
                    b.order_id,
                    b.quantity,
                    b.product_code,
                    b.lot_number,
                    b.next_stage.map(Stage::as_str).unwrap_or("none (finished)")
                );
                for s in &stages {
                    t.push_str(&format!("\n  {}", describe_stage(s)));
                }
                for c in &cards {
                    t.push_str(&format!(
                        "\n  chip {} {}{}{}",
                        c.chip_serial,
                        c.state.as_str(),
                        c.application_serial
                            .as_deref()
                            .map(|a| format!(" card {a}"))
                            .unwrap_or_default(),
                        c.void_reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ));
                }
                t
            })?;
        }
    }
    ctx.done(ExitCode::SUCCESS)
}

fn image_path(dir: &Path, chip_serial: &str) -> PathBuf {
    dir.join(format!("{chip_serial}.card"))
}

async fn run_batch(ctx: Ctx, r: &BatchRunArgs) -> Result<ExitCode> {
    // The chips this command codes are card images with the published development transport
    // key: a production office records the card maker's real results instead.
    if ctx.config.mode == iccard_office::Mode::Production {
        anyhow::bail!(
            "`batch run` codes simulated chips with the development transport key: a production office does not (record the card maker's stage results through the library)"
        );
    }
    let o = &ctx.office;
    let s = &ctx.session;
    let date = match &r.production_date {
        Some(d) => bcd_date(d, "production date")?,
        None => today(),
    };
    std::fs::create_dir_all(&r.dir)
        .with_context(|| format!("cannot create {}", r.dir.display()))?;
    let equipment = |what: &str| format!("{}/{what}", r.line);
    let mut batch = match (r.batch, r.order, r.quantity) {
        (Some(id), _, _) => o.production_batch(id).await.map_err(classify_office)?,
        (None, Some(order), Some(quantity)) => o
            .start_batch(s, order, quantity)
            .await
            .map_err(classify_office)?,
        _ => bail!("give --order ID --quantity N, or --batch ID"),
    };
    let mut images = Vec::new();
    while let Some(stage) = batch.next_stage {
        match stage {
            Stage::Printing => {
                o.record_printing(s, batch.id, &equipment("printer"), 0)
                    .await
                    .map_err(classify_office)?;
            }
            Stage::Coding => {
                let plan = o.coding_plan(batch.id).await.map_err(classify_office)?;
                let specs = plan.blank_cards(date).map_err(classify_office)?;
                let bar = progress(ctx.json, specs.len(), "coding");
                let mut coded = Vec::with_capacity(specs.len());
                for (serial, spec) in plan.chip_serials.iter().zip(&specs) {
                    let made = blank::eeprom(32, iccard_cos::nvm::DEFAULT_ENDURANCE)
                        .map_err(|e| anyhow!("{e}"))
                        .and_then(|e| {
                            blank::make_blank(e, OsRandom, spec).map_err(|e| anyhow!("{e}"))
                        });
                    let failure = match made {
                        Ok(card) => {
                            // An image that cannot be written stops the run before coding is
                            // recorded: the same chips are coded again by `--batch ID`.
                            let path = image_path(&r.dir, serial);
                            save_image(&path, &card.into_eeprom()).with_context(|| {
                                format!(
                                    "cannot write {} (coding not recorded; continue with --batch {})",
                                    path.display(),
                                    batch.id
                                )
                            })?;
                            images.push(path);
                            None
                        }
                        Err(e) => Some(format!("coding failed: {e}")),
                    };
                    coded.push(CodedCard {
                        chip_serial: serial.clone(),
                        failure,
                    });
                    bar.inc(1);
                }
                bar.finish_and_clear();
                o.record_coding(s, batch.id, &equipment("coder"), &coded)
                    .await
                    .map_err(classify_office)?;
            }
            Stage::Bronzing | Stage::Packaging | Stage::Gluing => {
                o.record_finishing(
                    s,
                    batch.id,
                    stage,
                    &equipment(stage.as_str()),
                    &[] as &[VoidedCard],
                )
                .await
                .map_err(classify_office)?;
            }
            Stage::Testing => {
                let cards: Vec<String> = o
                    .batch_cards(batch.id)
                    .await
                    .map_err(classify_office)?
                    .into_iter()
                    .filter(|c| c.state == InventoryState::InProduction)
                    .map(|c| c.chip_serial)
                    .collect();
                let bar = progress(ctx.json, cards.len(), "testing");
                let mut tested = Vec::with_capacity(cards.len());
                for serial in &cards {
                    let path = image_path(&r.dir, serial);
                    let mut card = ImageCard::open(&path).with_context(|| {
                        format!(
                            "the image of chip {serial} is not in {} (testing not recorded)",
                            r.dir.display()
                        )
                    })?;
                    let bytes = iccard_office::manufacture::chip_serial_bytes(serial)
                        .map_err(classify_office)?;
                    let key =
                        blank::transport_key(&iccard_issuer::devkeys::TRANSPORT.value(), &bytes);
                    let report = test_card(&mut card, &key);
                    tested.push(TestedCard {
                        chip_serial: serial.clone(),
                        report,
                    });
                    bar.inc(1);
                }
                bar.finish_and_clear();
                o.record_testing(s, batch.id, &equipment("tester"), &tested)
                    .await
                    .map_err(classify_office)?;
            }
        }
        batch = o
            .production_batch(batch.id)
            .await
            .map_err(classify_office)?;
    }
    let stages = o.batch_stages(batch.id).await.map_err(classify_office)?;
    let cards = o.batch_cards(batch.id).await.map_err(classify_office)?;
    let history_stage = |reason: &str| {
        if reason.starts_with("coding") {
            Stage::Coding
        } else {
            Stage::Testing
        }
    };
    let voided: Vec<VoidedReport> = cards
        .iter()
        .filter(|c| c.state == InventoryState::Void)
        .map(|c| {
            let reason = c.void_reason.clone().unwrap_or_default();
            VoidedReport {
                chip_serial: c.chip_serial.clone(),
                stage: history_stage(&reason),
                reason,
            }
        })
        .collect();
    let report = BatchRunReport {
        in_stock: cards
            .iter()
            .filter(|c| c.state == InventoryState::InStock)
            .count(),
        batch,
        stages,
        dir: r.dir.clone(),
        images,
        voided,
    };
    print(ctx.json, &report, || {
        let b = &report.batch;
        let mut t = format!(
            "batch {} of order {} ({} of {}):",
            b.id, b.order_id, b.quantity, b.product_code
        );
        for st in &report.stages {
            t.push_str(&format!("\n  {}", describe_stage(st)));
        }
        for v in &report.voided {
            t.push_str(&format!("\n  chip {} voided: {}", v.chip_serial, v.reason));
        }
        t.push_str(&format!(
            "\n{} card(s) in stock; images in {}",
            report.in_stock,
            report.dir.display()
        ));
        t
    })?;
    ctx.done(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// inventory

/// Runs `office inventory ...`.
pub(super) async fn inventory(ctx: Ctx, a: &InventoryArgs) -> Result<ExitCode> {
    let o = &ctx.office;
    match &a.command {
        None => {
            let counts: Vec<_> = o
                .inventory_counts()
                .await
                .map_err(classify_office)?
                .into_iter()
                .filter(|c| a.product.as_deref().is_none_or(|p| p == c.product_code))
                .collect();
            print(ctx.json, &counts, || {
                if counts.is_empty() {
                    return "no card in the inventory".into();
                }
                let mut t = format!("{:<12} {:<14} {:>8}", "product", "state", "cards");
                for c in &counts {
                    t.push_str(&format!(
                        "\n{:<12} {:<14} {:>8}",
                        c.product_code,
                        c.state.as_str(),
                        c.count
                    ));
                }
                t
            })?;
        }
        Some(InventoryCmd::Card { chip: c }) => {
            let serial = chip(c)?;
            let card = o.inventory_card(&serial).await.map_err(classify_office)?;
            let history = o
                .inventory_history(&serial)
                .await
                .map_err(classify_office)?;
            let v = serde_json::json!({"card": card, "history": history});
            print(ctx.json, &v, || {
                let mut t = format!(
                    "chip {} of {} (lot {}, order {}, batch {}): {}{}{}{}",
                    card.chip_serial,
                    card.product_code,
                    card.lot_number,
                    card.order_id,
                    card.batch_id,
                    card.state.as_str(),
                    card.holder
                        .as_ref()
                        .map(|h| format!(" to {h}"))
                        .unwrap_or_default(),
                    card.application_serial
                        .as_deref()
                        .map(|a| format!(", card {a}"))
                        .unwrap_or_default(),
                    card.void_reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
                for h in &history {
                    t.push_str(&format!(
                        "\n  {} {:<12} at {:<10} {:>13} -> {:<13} {}",
                        when(h.at_ms),
                        h.operator_login,
                        h.machine_number,
                        h.from.map(InventoryState::as_str).unwrap_or("-"),
                        h.to.as_str(),
                        h.reason
                    ));
                }
                t
            })?;
        }
        Some(InventoryCmd::Allocate {
            product,
            quantity,
            branch,
            to_operator,
        }) => {
            let to = match (branch, to_operator) {
                (Some(b), None) => Holder::Branch(b.clone()),
                (None, Some(l)) => Holder::Operator(l.clone()),
                _ => bail!("give --branch CODE or --to-operator LOGIN"),
            };
            let cards = o
                .allocate_cards(
                    &ctx.session,
                    Allocate {
                        product_code: product.clone(),
                        quantity: *quantity,
                        to: to.clone(),
                    },
                )
                .await
                .map_err(classify_office)?;
            print(ctx.json, &cards, || {
                format!(
                    "{} card(s) of {product} allocated to {to}: {}",
                    cards.len(),
                    cards
                        .iter()
                        .map(|c| c.chip_serial.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })?;
        }
        Some(InventoryCmd::Return { chips }) => {
            let serials = chips.iter().map(|c| chip(c)).collect::<Result<Vec<_>>>()?;
            let cards = o
                .return_to_stock(&ctx.session, &serials)
                .await
                .map_err(classify_office)?;
            print(ctx.json, &cards, || {
                format!("{} card(s) back in stock", cards.len())
            })?;
        }
    }
    ctx.done(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// issuance

#[derive(Serialize)]
struct IssueReport {
    card_number: String,
    card_type: CardType,
    chip_serial: String,
    issued: IssueReceipt,
    first_recharge: Option<RechargeReceipt>,
}

fn describe_issue(r: &IssueReceipt) -> String {
    format!(
        "card {} ({}, product {} v{}) issued from chip {}{}: deposit {} + fee {} in cash, valid {}..{}, by {} at {}",
        r.card_number,
        r.card_type.as_str(),
        r.product_code,
        r.product_version,
        r.chip_serial,
        if r.resumed { " (an interrupted personalization finished)" } else { "" },
        yuan(r.deposit_minor),
        yuan(r.fee_minor),
        r.valid_from,
        r.valid_to,
        r.operator,
        r.machine_number
    )
}

/// Runs `office issue`.
pub(super) async fn issue(ctx: Ctx, a: &IssueArgs) -> Result<ExitCode> {
    let date = match &a.date {
        Some(d) => bcd_date(d, "issuance date")?,
        None => today(),
    };
    let holder = match (&a.holder_name, &a.holder_id) {
        (Some(name), Some(id)) => Some(HolderData {
            name: name.clone(),
            id_number: id.clone(),
        }),
        _ => None,
    };
    if let Some(amount) = a.first_recharge {
        if amount <= 0 {
            bail!("--first-recharge {amount}: give a positive amount in minor units");
        }
    }
    // Everything that can be refused before the card is touched is asked first: the keystore,
    // the PIN, the recharge operator's login.
    let ks = ctx.open_keystore()?;
    let recharger: Option<Session> = match (a.first_recharge, &a.recharge_operator) {
        (None, _) => None,
        (Some(_), Some(login)) => {
            let pw = secret(
                RECHARGE_PASSWORD_ENV,
                &format!("password of {login}"),
                false,
            )?;
            Some(
                ctx.office
                    .login(
                        login,
                        &Password::new(pw.as_str()),
                        &ctx.session.machine_number,
                    )
                    .await
                    .map_err(classify_office)?,
            )
        }
        (Some(_), None) => {
            if !ctx.session.role.permits(Action::LoadCard) {
                return Err(refused(anyhow!(
                    "{} ({}) may not recharge: give --recharge-operator LOGIN for the first recharge (nothing was issued)",
                    ctx.session.login,
                    ctx.session.role
                )));
            }
            None
        }
    };
    let pin = secret(CARD_PIN_ENV, "the new card's PIN (4 to 12 digits)", true)?;
    let req = IssueRequest {
        pin: Zeroizing::new(pin.as_str().to_owned()),
        holder,
        date,
    };
    if let (Some(dir), Some(count)) = (&a.batch_dir, a.count) {
        return issue_batch(ctx, a, &*ks, recharger.as_ref(), &req, dir, count).await;
    }
    let mut opened = super::reader::OpenCard::open(a.card.as_deref(), a.reader.as_deref(), "card")?;
    let receipt = {
        let mut channel = opened.channel()?;
        ctx.office
            .issue_card(&ctx.session, &*ks, &mut channel, &req)
            .await
            .map_err(classify_office)?
    };
    let mut report = IssueReport {
        card_number: receipt.card_number.clone(),
        card_type: receipt.card_type,
        chip_serial: receipt.chip_serial.clone(),
        issued: receipt,
        first_recharge: None,
    };
    let mut code = ExitCode::SUCCESS;
    if let Some(amount) = a.first_recharge {
        let now = TransactionTime::from_unix(now_unix());
        let when = match &a.date {
            Some(d) => TransactionTime::parse(d, &now.time_string())?,
            None => now,
        };
        let session = recharger.as_ref().unwrap_or(&ctx.session);
        let loaded = async {
            let channel = opened.channel()?;
            let mut card = PurseCard::open(channel).map_err(|e| refused(anyhow!(e)))?;
            ctx.office
                .recharge(
                    session,
                    &*ks,
                    &mut card,
                    RechargeRequest {
                        amount_minor: amount,
                        when,
                    },
                )
                .await
                .map_err(classify_office)
        }
        .await;
        match loaded {
            Ok(res) => {
                if res.load.tac_verified == Some(false) {
                    code = ExitCode::from(1);
                }
                report.first_recharge = Some(res.load);
            }
            Err(e) => {
                print(ctx.json, &report, || describe_issue(&report.issued))?;
                return Err(e.context(format!(
                    "card {} was issued, but its first recharge failed (recharge it with `iccard office recharge`)",
                    report.card_number
                )));
            }
        }
    }
    drop(opened);
    print(ctx.json, &report, || {
        let mut t = describe_issue(&report.issued);
        if let Some(l) = &report.first_recharge {
            t.push_str("\nfirst recharge: ");
            t.push_str(&describe_load(l));
        }
        t
    })?;
    drop(ks);
    ctx.done(code)
}

/// `issue --batch-dir DIR --count N`: the stocked cards among DIR's images issued one after the
/// other (each with its first recharge when asked), a progress bar over them; stops at the
/// first refusal, saying how many were issued.
async fn issue_batch(
    ctx: Ctx,
    a: &IssueArgs,
    ks: &dyn iccard_office::keystore::Keystore,
    recharger: Option<&Session>,
    req: &IssueRequest,
    dir: &Path,
    count: usize,
) -> Result<ExitCode> {
    if count == 0 {
        bail!("--count 0: give at least 1");
    }
    let mut images: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let Some(stem) = path
            .extension()
            .filter(|e| *e == "card")
            .and_then(|_| path.file_stem())
            .and_then(|s| s.to_str())
        else {
            continue;
        };
        let Ok(serial) = parse_chip_serial(stem) else {
            continue;
        };
        let serial = format_chip_serial(serial);
        match ctx.office.inventory_card(&serial).await {
            Ok(c) if c.state == InventoryState::InStock => images.push((serial, path)),
            _ => {}
        }
    }
    images.sort();
    if images.len() < count {
        return Err(refused(anyhow!(
            "{} holds {} card(s) in stock, fewer than --count {count}: nothing was issued",
            dir.display(),
            images.len()
        )));
    }
    images.truncate(count);
    let bar = progress(ctx.json, count, "issuing");
    let mut reports = Vec::with_capacity(count);
    let mut code = ExitCode::SUCCESS;
    for (serial, path) in &images {
        let issued = async {
            let mut card =
                ImageCard::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let receipt = ctx
                .office
                .issue_card(&ctx.session, ks, &mut card, req)
                .await
                .map_err(classify_office)?;
            let mut report = IssueReport {
                card_number: receipt.card_number.clone(),
                card_type: receipt.card_type,
                chip_serial: receipt.chip_serial.clone(),
                issued: receipt,
                first_recharge: None,
            };
            if let Some(amount) = a.first_recharge {
                let now = TransactionTime::from_unix(now_unix());
                let when = match &a.date {
                    Some(d) => TransactionTime::parse(d, &now.time_string())?,
                    None => now,
                };
                let mut purse = PurseCard::open(card).map_err(|e| refused(anyhow!(e)))?;
                let res = ctx
                    .office
                    .recharge(
                        recharger.unwrap_or(&ctx.session),
                        ks,
                        &mut purse,
                        RechargeRequest {
                            amount_minor: amount,
                            when,
                        },
                    )
                    .await
                    .map_err(classify_office)?;
                report.first_recharge = Some(res.load);
            }
            anyhow::Ok(report)
        }
        .await;
        match issued {
            Ok(r) => {
                if r.first_recharge
                    .as_ref()
                    .is_some_and(|l| l.tac_verified == Some(false))
                {
                    code = ExitCode::from(1);
                }
                reports.push(r);
                bar.inc(1);
            }
            Err(e) => {
                bar.finish_and_clear();
                print(ctx.json, &reports, || {
                    reports
                        .iter()
                        .map(|r| describe_issue(&r.issued))
                        .collect::<Vec<_>>()
                        .join("\n")
                })?;
                return Err(e.context(format!(
                    "chip {serial}: stopped after {} of {count} card(s) issued",
                    reports.len()
                )));
            }
        }
    }
    bar.finish_and_clear();
    print(ctx.json, &reports, || {
        let mut t: Vec<String> = reports.iter().map(|r| describe_issue(&r.issued)).collect();
        t.push(format!("{} card(s) issued", reports.len()));
        t.join("\n")
    })?;
    ctx.done(code)
}

// ---------------------------------------------------------------------------------------------
// loss list and card status

/// Runs `office loss ...`.
pub(super) async fn loss(ctx: Ctx, c: &LossCmd) -> Result<ExitCode> {
    match c {
        LossCmd::Report { card, reason } => {
            let number = card_number(&ctx, card)?;
            let e = ctx
                .office
                .report_loss(&ctx.session, &number, reason)
                .await
                .map_err(classify_office)?;
            print(ctx.json, &e, || {
                format!(
                    "card {} is on the loss list (version {}): {}",
                    e.application_serial, e.version, e.reason
                )
            })?;
        }
        LossCmd::Withdraw { card, reason } => {
            let number = card_number(&ctx, card)?;
            let e = ctx
                .office
                .withdraw_loss(&ctx.session, &number, reason)
                .await
                .map_err(classify_office)?;
            print(ctx.json, &e, || {
                format!(
                    "card {} is off the loss list (version {}): {}",
                    e.application_serial, e.version, e.reason
                )
            })?;
        }
        LossCmd::List { since } => {
            let d = ctx
                .office
                .loss_list_since(*since)
                .await
                .map_err(classify_office)?;
            print(ctx.json, &d, || {
                let mut t = format!(
                    "loss list from version {} to {}: {} change(s)",
                    d.from_version,
                    d.to_version,
                    d.changes.len()
                );
                for e in &d.changes {
                    t.push_str(&format!(
                        "\n  v{:<5} {} {:<6} {} {}",
                        e.version,
                        when(e.at_ms),
                        e.action,
                        e.application_serial,
                        e.reason
                    ));
                }
                t
            })?;
        }
    }
    ctx.done(ExitCode::SUCCESS)
}

/// Runs `office card ...`.
pub(super) async fn card(ctx: Ctx, c: &CardCmd) -> Result<ExitCode> {
    match c {
        CardCmd::Status { card } => {
            let number = card_number(&ctx, card)?;
            let st = ctx
                .office
                .card_status(&number)
                .await
                .map_err(classify_office)?;
            let v = serde_json::json!({"card_number": number, "status": st});
            print(ctx.json, &v, || format!("card {number}: {}", st.as_str()))?;
        }
        CardCmd::Expire { date } => {
            let date = match date {
                Some(d) => d.clone(),
                None => iccard_apdu::hex::encode(&today()),
            };
            let r = ctx
                .office
                .expire_cards(&ctx.session, &date)
                .await
                .map_err(classify_office)?;
            print(ctx.json, &r, || {
                let mut t = format!(
                    "{} card(s) expired before {}; still owed to their holders: balances {}, deposits {}",
                    r.expired.len(),
                    r.date,
                    yuan(r.balance_minor),
                    yuan(r.deposit_minor)
                );
                for c in &r.expired {
                    t.push_str(&format!(
                        "\n  {} valid until {}: balance {}, deposit {}",
                        c.card_number,
                        c.valid_until,
                        yuan(c.balance_minor),
                        yuan(c.deposit_minor)
                    ));
                }
                t
            })?;
        }
        CardCmd::Expired => {
            let cards = ctx.office.expired_cards().await.map_err(classify_office)?;
            print(ctx.json, &cards, || {
                if cards.is_empty() {
                    return "no expired card is waiting for its holder".into();
                }
                cards
                    .iter()
                    .map(|c| {
                        format!(
                            "{} valid until {}: balance {}, deposit {}",
                            c.card_number,
                            c.valid_until,
                            yuan(c.balance_minor),
                            yuan(c.deposit_minor)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
    }
    ctx.done(ExitCode::SUCCESS)
}
