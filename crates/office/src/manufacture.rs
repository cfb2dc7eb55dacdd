//! Manufacture: chip lots, production orders and batches through their stages, and the
//! inventory of physical cards.
//!
//! ## Flow
//!
//! 1. [`Office::receive_chip_lot`]: chips from a chip maker, serials `first..first+quantity-1`
//!    (8-byte chip serials, 16 hex digits); a range overlapping any lot already received is
//!    refused.
//! 2. [`Office::open_production_order`]: `quantity` cards of a product, reserving the lot's
//!    next `quantity` chip serials.
//! 3. [`Office::start_batch`]: a batch of the order's card bodies.
//! 4. The batch's stages, strictly in the order of [`Stage::ALL`] — printing, coding, bronzing,
//!    packaging, gluing, testing — each recorded once with operator, machine (the session's),
//!    the production equipment, time and counts in/out/voided (out + voided = in; a stage's in
//!    is the previous stage's out). A stage out of order or repeated is refused
//!    ([`OfficeError::StageOutOfOrder`]).
//!    - printing: card bodies spoiled ([`Office::record_printing`]);
//!    - coding: the caller codes the chips ([`Office::coding_plan`] says which serials,
//!      `iccard_issuer::manufacture::make_blank` makes them) and reports each card
//!      ([`Office::record_coding`]); every chip becomes an inventory card, `in_production`, or
//!      `void` with the coding failure;
//!    - bronzing, packaging, gluing: the cards spoiled, with their reasons
//!      ([`Office::record_finishing`]);
//!    - testing: each card's `iccard_issuer::functional::test_card` report
//!      ([`Office::record_testing`]): passed cards enter stock (`in_stock`), failures are voided
//!      with the failed step as reason.
//! 5. Inventory: [`Office::allocate_cards`] to a branch or an operator, [`Office::return_to_stock`];
//!    issuance and recycling move cards with [`change_state`] inside their own operations.
//!
//! ## Inventory states
//!
//! [`TRANSITIONS`] is the one table of allowed moves; every move writes an
//! `inventory_card_history` row (the first row of a card is its creation at coding, from no
//! state). [`check_inventory`] proves from the data that every card's state is the end of a chain
//! of allowed moves, that stage counts chain, and that lots, orders and batches account for
//! every chip.
//!
//! Chips are consumed in serial order: an order takes the lot's next serials, a coding run takes
//! the order's next serials (exactly [`Office::coding_plan`]'s), so no chip serial is skipped or
//! used twice.

use std::collections::{BTreeMap, HashMap, HashSet};

use iccard_issuer::functional::FunctionalReport;
use iccard_issuer::manufacture::BlankCard;
use serde::Serialize;

use crate::args;
use crate::error::{OfficeError, Result};
use crate::machines::{self, validate_code, MachineKind};
use crate::office::Office;
use crate::operators::{Action, Session};
use crate::products;
use crate::store::Tx;

// ----- chip serials -----

/// Parses a chip serial: exactly 16 hex digits (8 bytes), either case.
pub fn parse_chip_serial(s: &str) -> Result<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OfficeError::Invalid {
            what: "chip serial",
            why: format!("{s:?}: use exactly 16 hexadecimal digits (8 bytes)"),
        });
    }
    u64::from_str_radix(s, 16).map_err(|e| OfficeError::Invalid {
        what: "chip serial",
        why: format!("{s:?}: {e}"),
    })
}

/// A chip serial as stored and shown: 16 upper-case hex digits.
pub fn format_chip_serial(v: u64) -> String {
    format!("{v:016X}")
}

/// A chip serial's 8 bytes (as the card's chip data holds them).
pub fn chip_serial_bytes(s: &str) -> Result<[u8; 8]> {
    parse_chip_serial(s).map(u64::to_be_bytes)
}

fn normalize_serial(s: &str) -> Result<String> {
    parse_chip_serial(s).map(format_chip_serial)
}

// ----- stages and states -----

/// A production stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Card bodies printed.
    Printing,
    /// Chips coded: chip data, transport key, OP_READY.
    Coding,
    /// Hot-stamping (bronzing).
    Bronzing,
    /// Packaging.
    Packaging,
    /// Gluing.
    Gluing,
    /// Functional test of every card.
    Testing,
}

impl Stage {
    /// Every stage, in the order a batch goes through them.
    pub const ALL: [Stage; 6] = [
        Stage::Printing,
        Stage::Coding,
        Stage::Bronzing,
        Stage::Packaging,
        Stage::Gluing,
        Stage::Testing,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Printing => "printing",
            Stage::Coding => "coding",
            Stage::Bronzing => "bronzing",
            Stage::Packaging => "packaging",
            Stage::Gluing => "gluing",
            Stage::Testing => "testing",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Result<Stage> {
        Stage::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| OfficeError::Invalid {
                what: "stage",
                why: format!("{s:?}: use printing, coding, bronzing, packaging, gluing or testing"),
            })
    }

    /// The stage after this one (`None` after testing).
    pub fn next(self) -> Option<Stage> {
        let i = Stage::ALL.iter().position(|s| *s == self)?;
        Stage::ALL.get(i + 1).copied()
    }

    fn after(last: Option<Stage>) -> Option<Stage> {
        match last {
            None => Some(Stage::Printing),
            Some(s) => s.next(),
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a physical card is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InventoryState {
    /// Coded, going through the remaining stages.
    InProduction,
    /// Tested and in the issuer's stock.
    InStock,
    /// Handed to a branch or an operator, not yet issued.
    Allocated,
    /// Issued to a holder (linked to its shadow account by application serial).
    Issued,
    /// Given back by its holder.
    Returned,
    /// Re-initialized after return, fit for stock again.
    Refurbished,
    /// Physically destroyed (final).
    Destroyed,
    /// Spoiled in production or found unusable (with a reason).
    Void,
}

/// The allowed moves: from a state, the states it may become. Creation (coding) makes a card
/// `in_production`, or `void` when its coding failed.
pub const TRANSITIONS: [(InventoryState, &[InventoryState]); 8] = {
    use InventoryState::*;
    [
        (InProduction, &[InStock, Void]),
        (InStock, &[Allocated, Issued, Void, Destroyed]),
        (Allocated, &[InStock, Issued, Void]),
        (Issued, &[Returned]),
        (Returned, &[Refurbished, Destroyed]),
        (Refurbished, &[InStock, Destroyed]),
        (Void, &[Destroyed]),
        (Destroyed, &[]),
    ]
};

/// The states a card may have when it is created (at coding).
pub const INITIAL_STATES: [InventoryState; 2] =
    [InventoryState::InProduction, InventoryState::Void];

impl InventoryState {
    /// Every state.
    pub const ALL: [InventoryState; 8] = [
        InventoryState::InProduction,
        InventoryState::InStock,
        InventoryState::Allocated,
        InventoryState::Issued,
        InventoryState::Returned,
        InventoryState::Refurbished,
        InventoryState::Destroyed,
        InventoryState::Void,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            InventoryState::InProduction => "in_production",
            InventoryState::InStock => "in_stock",
            InventoryState::Allocated => "allocated",
            InventoryState::Issued => "issued",
            InventoryState::Returned => "returned",
            InventoryState::Refurbished => "refurbished",
            InventoryState::Destroyed => "destroyed",
            InventoryState::Void => "void",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Result<InventoryState> {
        InventoryState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| OfficeError::Invalid {
                what: "inventory state",
                why: format!(
                    "{s:?}: use in_production, in_stock, allocated, issued, returned, refurbished, destroyed or void"
                ),
            })
    }

    /// The states this one may become ([`TRANSITIONS`]).
    pub fn allowed_next(self) -> &'static [InventoryState] {
        TRANSITIONS
            .iter()
            .find(|(from, _)| *from == self)
            .map(|(_, to)| *to)
            .unwrap_or(&[])
    }

    /// Whether a card in this state may become `to`.
    pub fn can_become(self, to: InventoryState) -> bool {
        self.allowed_next().contains(&to)
    }
}

impl std::fmt::Display for InventoryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn corrupt(e: OfficeError) -> OfficeError {
    OfficeError::Corrupt(e.to_string())
}

/// Who holds an allocated card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Holder {
    /// A branch, by code.
    Branch(String),
    /// An operator, by login.
    Operator(String),
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Branch(code) => write!(f, "branch {code}"),
            Holder::Operator(login) => write!(f, "operator {login}"),
        }
    }
}

/// Resolves a holder to (branch id, operator id); an operator must be active.
async fn holder_ids(tx: &mut Tx, holder: &Holder) -> Result<(Option<i64>, Option<i64>)> {
    match holder {
        Holder::Branch(code) => Ok((Some(machines::branch(tx, code).await?.id), None)),
        Holder::Operator(login) => {
            let row: Option<(i64, String)> = tx
                .fetch_optional(
                    "SELECT id, state FROM operators WHERE login = $1",
                    &args![login],
                )
                .await?;
            match row {
                None => Err(OfficeError::NotFound {
                    what: "operator",
                    key: login.clone(),
                }),
                Some((_, state)) if state != "active" => Err(OfficeError::Invalid {
                    what: "holder",
                    why: format!("operator {login} is disabled; allocate to an active operator"),
                }),
                Some((id, _)) => Ok((None, Some(id))),
            }
        }
    }
}

fn holder_from(branch: Option<String>, operator: Option<String>) -> Option<Holder> {
    match (branch, operator) {
        (Some(b), _) => Some(Holder::Branch(b)),
        (None, Some(o)) => Some(Holder::Operator(o)),
        (None, None) => None,
    }
}

fn validate_text(what: &'static str, s: &str, max: usize) -> Result<()> {
    let n = s.chars().count();
    if n == 0 || n > max || s.chars().any(char::is_control) || s.trim() != s {
        return Err(OfficeError::Invalid {
            what,
            why: format!("{s:?}: use 1 to {max} characters, no control characters or outer spaces"),
        });
    }
    Ok(())
}

fn validate_quantity(what: &'static str, q: i64, max: i64) -> Result<()> {
    if !(1..=max).contains(&q) {
        return Err(OfficeError::Invalid {
            what,
            why: format!("{q}: use 1 to {max}"),
        });
    }
    Ok(())
}

fn count_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// ----- chip lots -----

/// The most chips one lot may hold.
pub const MAX_LOT_QUANTITY: i64 = 10_000_000;

/// A chip lot as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChipLot {
    /// The lot number on the delivery note (1 to 32 letters, digits, `-`, `_`; unique).
    pub lot_number: String,
    /// The chip maker's name.
    pub chip_maker: String,
    /// The chip model.
    pub chip_model: String,
    /// How many chips (1 to [`MAX_LOT_QUANTITY`]).
    pub quantity: i64,
    /// The first chip serial (16 hex digits); the lot holds first..first+quantity-1.
    pub first_chip_serial: String,
    /// The version of the transport key the chips were coded with (0 to 255).
    pub transport_key_version: i64,
}

/// A chip lot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChipLot {
    /// Id.
    pub id: i64,
    /// Lot number.
    pub lot_number: String,
    /// Chip maker.
    pub chip_maker: String,
    /// Chip model.
    pub chip_model: String,
    /// Chips in the lot.
    pub quantity: i64,
    /// First chip serial.
    pub first_chip_serial: String,
    /// Last chip serial.
    pub last_chip_serial: String,
    /// Transport key version.
    pub transport_key_version: i64,
    /// Chips promised to production orders.
    pub reserved: i64,
    /// When it was received.
    pub received_at_ms: i64,
}

impl ChipLot {
    /// Chips not yet promised to an order.
    pub fn available(&self) -> i64 {
        self.quantity - self.reserved
    }
}

type LotRow = (
    i64,
    String,
    String,
    String,
    i64,
    String,
    String,
    i64,
    i64,
    i64,
);

const SELECT_LOT: &str = "SELECT id, lot_number, chip_maker, chip_model, quantity, \
     first_chip_serial, last_chip_serial, transport_key_version, reserved, received_at_ms \
     FROM chip_lots";

fn lot_from(r: LotRow) -> ChipLot {
    ChipLot {
        id: r.0,
        lot_number: r.1,
        chip_maker: r.2,
        chip_model: r.3,
        quantity: r.4,
        first_chip_serial: r.5,
        last_chip_serial: r.6,
        transport_key_version: r.7,
        reserved: r.8,
        received_at_ms: r.9,
    }
}

async fn lot_by_number(tx: &mut Tx, lot_number: &str) -> Result<ChipLot> {
    let row: Option<LotRow> = tx
        .fetch_optional(
            &format!("{SELECT_LOT} WHERE lot_number = $1"),
            &args![lot_number],
        )
        .await?;
    row.map(lot_from).ok_or_else(|| OfficeError::NotFound {
        what: "chip lot",
        key: lot_number.into(),
    })
}

// ----- orders and batches -----

/// A production order to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProductionOrder {
    /// The product to make.
    pub product_code: String,
    /// The chip lot to take chips from.
    pub lot_number: String,
    /// How many cards (1 to the lot's available chips).
    pub quantity: i64,
}

/// A production order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductionOrder {
    /// Id.
    pub id: i64,
    /// The product.
    pub product_code: String,
    /// The chip lot.
    pub lot_number: String,
    /// Cards ordered.
    pub quantity: i64,
    /// First chip serial reserved for it.
    pub first_chip_serial: String,
    /// Last chip serial reserved for it.
    pub last_chip_serial: String,
    /// Card bodies given to batches so far.
    pub batched: i64,
    /// Chips coded so far (the next coding starts at first + chips_used).
    pub chips_used: i64,
    /// When it was opened.
    pub created_at_ms: i64,
}

type OrderRow = (i64, String, String, i64, String, String, i64, i64, i64);

const SELECT_ORDER: &str = "SELECT o.id, p.code, l.lot_number, o.quantity, o.first_chip_serial, \
     o.last_chip_serial, o.batched, o.chips_used, o.created_at_ms FROM production_orders o \
     JOIN products p ON p.id = o.product_id JOIN chip_lots l ON l.id = o.lot_id";

fn order_from(r: OrderRow) -> ProductionOrder {
    ProductionOrder {
        id: r.0,
        product_code: r.1,
        lot_number: r.2,
        quantity: r.3,
        first_chip_serial: r.4,
        last_chip_serial: r.5,
        batched: r.6,
        chips_used: r.7,
        created_at_ms: r.8,
    }
}

async fn order_by_id(tx: &mut Tx, id: i64) -> Result<ProductionOrder> {
    let row: Option<OrderRow> = tx
        .fetch_optional(&format!("{SELECT_ORDER} WHERE o.id = $1"), &args![id])
        .await?;
    row.map(order_from).ok_or_else(|| OfficeError::NotFound {
        what: "production order",
        key: id.to_string(),
    })
}

/// A production batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductionBatch {
    /// Id (its low 16 bits are the batch number coded into the chips).
    pub id: i64,
    /// The order.
    pub order_id: i64,
    /// The product.
    pub product_code: String,
    /// The chip lot.
    pub lot_number: String,
    /// Card bodies in the batch.
    pub quantity: i64,
    /// The last stage recorded (`None` before printing).
    pub last_stage: Option<Stage>,
    /// The stage to record next (`None` once tested).
    pub next_stage: Option<Stage>,
    /// When it was started.
    pub created_at_ms: i64,
    /// When its last stage was recorded.
    pub updated_at_ms: i64,
}

impl ProductionBatch {
    /// The batch number coded into the chips' production data (2 bytes: the id's low 16 bits).
    pub fn chip_batch(&self) -> u16 {
        (self.id & 0xFFFF) as u16
    }
}

type BatchRow = (i64, i64, String, String, i64, String, i64, i64);

const SELECT_BATCH: &str = "SELECT b.id, b.order_id, p.code, l.lot_number, b.quantity, b.stage, \
     b.created_at_ms, b.updated_at_ms FROM production_batches b \
     JOIN production_orders o ON o.id = b.order_id JOIN products p ON p.id = o.product_id \
     JOIN chip_lots l ON l.id = o.lot_id";

fn batch_from(r: BatchRow) -> Result<ProductionBatch> {
    let last_stage = match r.5.as_str() {
        "started" => None,
        s => Some(Stage::parse(s).map_err(corrupt)?),
    };
    Ok(ProductionBatch {
        id: r.0,
        order_id: r.1,
        product_code: r.2,
        lot_number: r.3,
        quantity: r.4,
        last_stage,
        next_stage: Stage::after(last_stage),
        created_at_ms: r.6,
        updated_at_ms: r.7,
    })
}

async fn batch_by_id(tx: &mut Tx, id: i64) -> Result<ProductionBatch> {
    let row: Option<BatchRow> = tx
        .fetch_optional(&format!("{SELECT_BATCH} WHERE b.id = $1"), &args![id])
        .await?;
    batch_from(row.ok_or_else(|| OfficeError::NotFound {
        what: "production batch",
        key: id.to_string(),
    })?)
}

/// Refuses a stage that is not the batch's next one.
fn require_next(batch: &ProductionBatch, stage: Stage) -> Result<()> {
    if batch.next_stage == Some(stage) {
        return Ok(());
    }
    let why = match (batch.last_stage, batch.next_stage) {
        (_, None) => "the batch is finished (tested); start a new batch".to_string(),
        (Some(last), Some(next)) if stage <= last => {
            format!("{stage} is already recorded; the next stage is {next}")
        }
        (last, Some(next)) => format!(
            "the batch's last stage is {}; the next stage is {next}",
            last.map_or("none (just started)", Stage::as_str)
        ),
    };
    Err(OfficeError::StageOutOfOrder {
        batch_id: batch.id,
        stage: stage.as_str(),
        why,
    })
}

/// A recorded production stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageRecord {
    /// Id.
    pub id: i64,
    /// The batch.
    pub batch_id: i64,
    /// The stage.
    pub stage: Stage,
    /// Who recorded it.
    pub operator_login: String,
    /// On which back-office machine.
    pub machine_number: String,
    /// The production equipment (printer, coder, tester …).
    pub equipment: String,
    /// When.
    pub at_ms: i64,
    /// Cards (or card bodies) going in.
    pub count_in: i64,
    /// Cards coming out good.
    pub count_out: i64,
    /// Cards spoiled (voided).
    pub count_voided: i64,
}

type StageRow = (i64, i64, String, String, String, String, i64, i64, i64, i64);

const SELECT_STAGE: &str = "SELECT s.id, s.batch_id, s.stage, o.login, m.machine_number, \
     s.equipment, s.at_ms, s.count_in, s.count_out, s.count_voided FROM production_stages s \
     JOIN operators o ON o.id = s.operator_id JOIN machines m ON m.id = s.machine_id";

fn stage_from(r: StageRow) -> Result<StageRecord> {
    Ok(StageRecord {
        id: r.0,
        batch_id: r.1,
        stage: Stage::parse(&r.2).map_err(corrupt)?,
        operator_login: r.3,
        machine_number: r.4,
        equipment: r.5,
        at_ms: r.6,
        count_in: r.7,
        count_out: r.8,
        count_voided: r.9,
    })
}

async fn stage_out(tx: &mut Tx, batch_id: i64, stage: Stage) -> Result<i64> {
    let row: Option<(i64,)> = tx
        .fetch_optional(
            "SELECT count_out FROM production_stages WHERE batch_id = $1 AND stage = $2",
            &args![batch_id, stage.as_str()],
        )
        .await?;
    row.map(|(n,)| n)
        .ok_or_else(|| OfficeError::Corrupt(format!("batch {batch_id} has no {stage} record")))
}

/// What coding needs to know: which chips, with which batch number and transport key version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CodingPlan {
    /// The batch.
    pub batch_id: i64,
    /// The batch number to code into the chip data.
    pub chip_batch: u16,
    /// The transport key version of the lot.
    pub transport_key_version: u8,
    /// The chip serials to code, in order (as many as printing passed).
    pub chip_serials: Vec<String>,
}

impl CodingPlan {
    /// The blank-card specifications for `iccard_issuer::manufacture::make_blank`, with the
    /// production date (BCD YYYYMMDD) and the default self-destruct threshold.
    pub fn blank_cards(&self, production_date: [u8; 4]) -> Result<Vec<BlankCard>> {
        self.chip_serials
            .iter()
            .map(|s| {
                Ok(BlankCard {
                    chip_serial: chip_serial_bytes(s)?,
                    production_date,
                    batch: self.chip_batch,
                    transport_key_version: self.transport_key_version,
                    attack_threshold: iccard_issuer::manufacture::DEFAULT_ATTACK_THRESHOLD,
                })
            })
            .collect()
    }
}

/// The outcome of coding one chip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodedCard {
    /// The chip serial coded.
    pub chip_serial: String,
    /// Why coding failed (`None`: the blank card was made).
    pub failure: Option<String>,
}

/// A card spoiled at a finishing stage (bronzing, packaging, gluing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoidedCard {
    /// The card's chip serial.
    pub chip_serial: String,
    /// What happened to it.
    pub reason: String,
}

/// The functional test result of one card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestedCard {
    /// The chip serial of the card tested (as recorded; the report's must match).
    pub chip_serial: String,
    /// `iccard_issuer::functional::test_card`'s report.
    pub report: FunctionalReport,
}

// ----- inventory -----

/// A physical card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InventoryCard {
    /// Id.
    pub id: i64,
    /// Chip serial (16 hex digits).
    pub chip_serial: String,
    /// The product it was made for.
    pub product_code: String,
    /// The chip lot.
    pub lot_number: String,
    /// The production order.
    pub order_id: i64,
    /// The production batch.
    pub batch_id: i64,
    /// Its state.
    pub state: InventoryState,
    /// Who holds it while allocated.
    pub holder: Option<Holder>,
    /// The application serial it was issued with.
    pub application_serial: Option<String>,
    /// The product profile version it was issued with.
    pub product_version: Option<i64>,
    /// Why it is void.
    pub void_reason: Option<String>,
    /// When it was coded.
    pub created_at_ms: i64,
    /// When its state last changed.
    pub updated_at_ms: i64,
}

type CardRow = (
    i64,
    String,
    String,
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    i64,
    i64,
);

const SELECT_CARD: &str = "SELECT c.id, c.chip_serial, p.code, l.lot_number, c.order_id, \
     c.batch_id, c.state, b.code, o.login, c.application_serial, c.product_version, \
     c.void_reason, c.created_at_ms, c.updated_at_ms FROM inventory_cards c \
     JOIN products p ON p.id = c.product_id JOIN chip_lots l ON l.id = c.lot_id \
     LEFT JOIN branches b ON b.id = c.allocated_branch_id \
     LEFT JOIN operators o ON o.id = c.allocated_operator_id";

fn card_from(r: CardRow) -> Result<InventoryCard> {
    Ok(InventoryCard {
        id: r.0,
        chip_serial: r.1,
        product_code: r.2,
        lot_number: r.3,
        order_id: r.4,
        batch_id: r.5,
        state: InventoryState::parse(&r.6).map_err(corrupt)?,
        holder: holder_from(r.7, r.8),
        application_serial: r.9,
        product_version: r.10,
        void_reason: r.11,
        created_at_ms: r.12,
        updated_at_ms: r.13,
    })
}

/// A physical card by chip serial (16 hex digits, either case).
pub async fn inventory_card(tx: &mut Tx, chip_serial: &str) -> Result<InventoryCard> {
    let serial = normalize_serial(chip_serial)?;
    let row: Option<CardRow> = tx
        .fetch_optional(
            &format!("{SELECT_CARD} WHERE c.chip_serial = $1"),
            &args![&serial],
        )
        .await?;
    card_from(row.ok_or_else(|| OfficeError::NotFound {
        what: "card with chip serial",
        key: serial,
    })?)
}

async fn batch_cards_in(tx: &mut Tx, batch_id: i64) -> Result<Vec<InventoryCard>> {
    let rows: Vec<CardRow> = tx
        .fetch_all(
            &format!("{SELECT_CARD} WHERE c.batch_id = $1 ORDER BY c.id"),
            &args![batch_id],
        )
        .await?;
    rows.into_iter().map(card_from).collect()
}

/// One row of a card's inventory history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InventoryHistoryRow {
    /// When.
    pub at_ms: i64,
    /// The business record.
    pub operation_id: i64,
    /// Who.
    pub operator_login: String,
    /// Where.
    pub machine_number: String,
    /// The state before (`None` for the card's creation).
    pub from: Option<InventoryState>,
    /// The state after.
    pub to: InventoryState,
    /// The holder after (allocated cards).
    pub holder: Option<Holder>,
    /// The application serial after.
    pub application_serial: Option<String>,
    /// The product version after.
    pub product_version: Option<i64>,
    /// Why.
    pub reason: String,
}

/// Cards of one product in one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InventoryCount {
    /// The product.
    pub product_code: String,
    /// The state.
    pub state: InventoryState,
    /// How many cards.
    pub count: i64,
}

/// Allocating cards in stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocate {
    /// The product.
    pub product_code: String,
    /// How many cards (the oldest in stock first).
    pub quantity: i64,
    /// To whom.
    pub to: Holder,
}

/// A state change of one physical card, for [`change_state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryChange {
    /// The new state.
    pub to: InventoryState,
    /// Required for `allocated`, refused otherwise.
    pub holder: Option<Holder>,
    /// Required for `issued` (1 to 20 hex digits), refused otherwise.
    pub application_serial: Option<String>,
    /// Required for `issued` (a version of the card's product), refused otherwise.
    pub product_version: Option<i64>,
    /// Why (1 to 200 characters); for `void` also the card's void reason.
    pub reason: String,
}

/// Moves one card to another inventory state inside the caller's write transaction (the
/// caller's operation `operation_id`, by the session's operator at its machine, at `at_ms`):
/// checks [`TRANSITIONS`], updates the card and appends its history row. Issuance calls it with
/// `issued` (application serial and product version), recycling with `returned`,
/// `refurbished`, `destroyed`. Issue data is kept by `returned` and `destroyed` and cleared by
/// the moves back to stock.
pub async fn change_state(
    tx: &mut Tx,
    chip_serial: &str,
    change: &InventoryChange,
    s: &Session,
    operation_id: i64,
    at_ms: i64,
) -> Result<InventoryCard> {
    use InventoryState::*;
    let card = inventory_card(tx, chip_serial).await?;
    if !card.state.can_become(change.to) {
        let allowed: Vec<&str> = card
            .state
            .allowed_next()
            .iter()
            .map(|s| s.as_str())
            .collect();
        return Err(OfficeError::InventoryTransition {
            chip_serial: card.chip_serial,
            from: card.state.as_str(),
            to: change.to.as_str(),
            allowed: if allowed.is_empty() {
                "nothing, it is final".into()
            } else {
                allowed.join(", ")
            },
        });
    }
    validate_text("reason", &change.reason, 200)?;
    let (branch_id, operator_id) = match (change.to, &change.holder) {
        (Allocated, Some(h)) => holder_ids(tx, h).await?,
        (Allocated, None) => {
            return Err(OfficeError::Invalid {
                what: "allocation",
                why: "name the branch or operator the card goes to".into(),
            })
        }
        (_, Some(h)) => {
            return Err(OfficeError::Invalid {
                what: "holder",
                why: format!("only an allocated card has a holder ({h} given)"),
            })
        }
        (_, None) => (None, None),
    };
    let (application_serial, product_version) = match (
        change.to,
        &change.application_serial,
        change.product_version,
    ) {
        (Issued, Some(serial), Some(version)) => {
            let ok = !serial.is_empty()
                && serial.len() <= 20
                && serial.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(OfficeError::Invalid {
                    what: "application serial",
                    why: format!("{serial:?}: use 1 to 20 hexadecimal digits"),
                });
            }
            let product = products::product_by_code(tx, &card.product_code).await?;
            if !(1..=product.current_version).contains(&version) {
                return Err(OfficeError::NotFound {
                    what: "product version",
                    key: format!("{} version {version}", card.product_code),
                });
            }
            (Some(serial.clone()), Some(version))
        }
        (Issued, _, _) => {
            return Err(OfficeError::Invalid {
                what: "issuance",
                why: "an issued card needs its application serial and product version".into(),
            })
        }
        (_, None, None) => match change.to {
            Returned | Destroyed => (card.application_serial.clone(), card.product_version),
            _ => (None, None),
        },
        _ => {
            return Err(OfficeError::Invalid {
                what: "inventory change",
                why: "application serial and product version belong to issuance only".into(),
            })
        }
    };
    let void_reason = match change.to {
        Void => Some(change.reason.clone()),
        Destroyed => card.void_reason.clone(),
        _ => None,
    };
    tx.execute(
        "UPDATE inventory_cards SET state = $1, allocated_branch_id = $2, \
         allocated_operator_id = $3, application_serial = $4, product_version = $5, \
         void_reason = $6, updated_at_ms = $7 WHERE id = $8",
        &args![
            change.to.as_str(),
            branch_id,
            operator_id,
            application_serial.clone(),
            product_version,
            void_reason,
            at_ms,
            card.id
        ],
    )
    .await?;
    history(
        tx,
        &HistoryDraft {
            card_id: card.id,
            operation_id,
            s,
            at_ms,
            from: Some(card.state),
            to: change.to,
            branch_id,
            operator_id,
            application_serial,
            product_version,
            reason: &change.reason,
        },
    )
    .await?;
    inventory_card(tx, &card.chip_serial).await
}

struct HistoryDraft<'a> {
    card_id: i64,
    operation_id: i64,
    s: &'a Session,
    at_ms: i64,
    from: Option<InventoryState>,
    to: InventoryState,
    branch_id: Option<i64>,
    operator_id: Option<i64>,
    application_serial: Option<String>,
    product_version: Option<i64>,
    reason: &'a str,
}

async fn history(tx: &mut Tx, h: &HistoryDraft<'_>) -> Result<()> {
    let id = tx.next_id("history").await?;
    tx.execute(
        "INSERT INTO inventory_card_history (id, card_id, operation_id, operator_id, machine_id, \
         at_ms, from_state, to_state, allocated_branch_id, allocated_operator_id, \
         application_serial, product_version, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &args![
            id,
            h.card_id,
            h.operation_id,
            h.s.operator_id,
            h.s.machine_id,
            h.at_ms,
            h.from.map(InventoryState::as_str),
            h.to.as_str(),
            h.branch_id,
            h.operator_id,
            h.application_serial.clone(),
            h.product_version,
            h.reason
        ],
    )
    .await?;
    Ok(())
}

/// Ids the coding step needs to create card rows.
struct OrderIds {
    product_id: i64,
    lot_id: i64,
    first: u64,
    transport_key_version: i64,
}

async fn order_ids(tx: &mut Tx, order_id: i64) -> Result<OrderIds> {
    let (product_id, lot_id, first, tkv): (i64, i64, String, i64) = tx
        .fetch_one(
            "SELECT o.product_id, o.lot_id, o.first_chip_serial, l.transport_key_version \
             FROM production_orders o JOIN chip_lots l ON l.id = o.lot_id WHERE o.id = $1",
            &args![order_id],
        )
        .await?;
    Ok(OrderIds {
        product_id,
        lot_id,
        first: parse_chip_serial(&first).map_err(corrupt)?,
        transport_key_version: tkv,
    })
}

/// The chip serials the next coding run of `batch` must use.
async fn next_chips(tx: &mut Tx, batch: &ProductionBatch) -> Result<(OrderIds, Vec<String>)> {
    let ids = order_ids(tx, batch.order_id).await?;
    let order = order_by_id(tx, batch.order_id).await?;
    let count_in = stage_out(tx, batch.id, Stage::Printing).await?;
    if order.chips_used + count_in > order.quantity {
        return Err(OfficeError::Insufficient {
            what: format!("chips of production order {}", order.id),
            asked: count_in,
            available: order.quantity - order.chips_used,
            hint: "the order's chips are used up; open another order",
        });
    }
    let start = u64::try_from(order.chips_used)
        .ok()
        .and_then(|u| ids.first.checked_add(u))
        .ok_or_else(|| OfficeError::Corrupt(format!("order {} chip range", order.id)))?;
    let serials = (0..u64::try_from(count_in).unwrap_or(0))
        .map(|i| format_chip_serial(start + i))
        .collect();
    Ok((ids, serials))
}

fn validate_equipment(equipment: &str) -> Result<()> {
    validate_text("equipment", equipment, 64)
}

/// One stage record to write.
struct StageWrite<'a> {
    batch: &'a ProductionBatch,
    stage: Stage,
    equipment: &'a str,
    operation_id: i64,
    at_ms: i64,
    count_in: i64,
    count_out: i64,
}

/// Writes a stage record and moves the batch to that stage; returns it with its audit detail.
async fn write_stage(tx: &mut Tx, s: &Session, w: StageWrite<'_>) -> Result<(StageRecord, String)> {
    let voided = w.count_in - w.count_out;
    let id = tx.next_id("production_stage").await?;
    tx.execute(
        "INSERT INTO production_stages (id, batch_id, stage, operation_id, operator_id, \
         machine_id, equipment, at_ms, count_in, count_out, count_voided) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &args![
            id,
            w.batch.id,
            w.stage.as_str(),
            w.operation_id,
            s.operator_id,
            s.machine_id,
            w.equipment,
            w.at_ms,
            w.count_in,
            w.count_out,
            voided
        ],
    )
    .await?;
    tx.execute(
        "UPDATE production_batches SET stage = $1, updated_at_ms = $2 WHERE id = $3",
        &args![w.stage.as_str(), w.at_ms, w.batch.id],
    )
    .await?;
    let row: StageRow = tx
        .fetch_one(&format!("{SELECT_STAGE} WHERE s.id = $1"), &args![id])
        .await?;
    let detail = format!(
        "{} on {}: in {}, out {}, voided {voided}",
        w.stage, w.equipment, w.count_in, w.count_out
    );
    Ok((stage_from(row)?, detail))
}

impl Office {
    async fn require_console(&self, tx: &mut Tx, s: &Session) -> Result<()> {
        self.require_machine(tx, s, MachineKind::OfficeConsole)
            .await
            .map(drop)
    }

    // ----- chip lots -----

    /// Receives a chip lot (administrators, at an office console). Refused when its serial
    /// range overlaps a lot already received.
    pub async fn receive_chip_lot(&self, s: &Session, new: NewChipLot) -> Result<ChipLot> {
        let subject = format!("chip lot {}", new.lot_number);
        let (mut tx, at) = self.begin(s, Action::ReceiveChipLot, &subject).await?;
        let result = async {
            self.require_console(&mut tx, s).await?;
            validate_code("lot number", &new.lot_number)?;
            validate_text("chip maker", &new.chip_maker, 64)?;
            validate_text("chip model", &new.chip_model, 64)?;
            validate_quantity("lot quantity", new.quantity, MAX_LOT_QUANTITY)?;
            if !(0..=255).contains(&new.transport_key_version) {
                return Err(OfficeError::Invalid {
                    what: "transport key version",
                    why: format!("{}: use 0 to 255", new.transport_key_version),
                });
            }
            let first = parse_chip_serial(&new.first_chip_serial)?;
            let last = u64::try_from(new.quantity - 1)
                .ok()
                .and_then(|n| first.checked_add(n))
                .ok_or_else(|| OfficeError::Invalid {
                    what: "chip serial range",
                    why: format!(
                        "{} chips from {} run past FFFFFFFFFFFFFFFF",
                        new.quantity,
                        format_chip_serial(first)
                    ),
                })?;
            if lot_by_number(&mut tx, &new.lot_number).await.is_ok() {
                return Err(OfficeError::Duplicate {
                    what: "chip lot",
                    key: new.lot_number.clone(),
                });
            }
            let lots: Vec<LotRow> = tx.fetch_all(SELECT_LOT, &[]).await?;
            for other in lots.into_iter().map(lot_from) {
                let o_first = parse_chip_serial(&other.first_chip_serial).map_err(corrupt)?;
                let o_last = parse_chip_serial(&other.last_chip_serial).map_err(corrupt)?;
                if first <= o_last && o_first <= last {
                    return Err(OfficeError::ChipRangeOverlap {
                        first: format_chip_serial(first),
                        last: format_chip_serial(last),
                        lot_number: other.lot_number,
                        other_first: other.first_chip_serial,
                        other_last: other.last_chip_serial,
                    });
                }
            }
            let op = self
                .record_operation(&mut tx, s, "receive_chip_lot", at, None, None)
                .await?;
            let id = tx.next_id("chip_lot").await?;
            tx.execute(
                "INSERT INTO chip_lots (id, lot_number, chip_maker, chip_model, quantity, \
                 first_chip_serial, last_chip_serial, transport_key_version, reserved, \
                 operation_id, received_by_operator_id, received_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10, $11)",
                &args![
                    id,
                    &new.lot_number,
                    &new.chip_maker,
                    &new.chip_model,
                    new.quantity,
                    format_chip_serial(first),
                    format_chip_serial(last),
                    new.transport_key_version,
                    op,
                    s.operator_id,
                    at
                ],
            )
            .await?;
            let lot = lot_by_number(&mut tx, &new.lot_number).await?;
            let detail = format!(
                "{} {} x{}, chips {}..{}, transport key version {}",
                lot.chip_maker,
                lot.chip_model,
                lot.quantity,
                lot.first_chip_serial,
                lot.last_chip_serial,
                lot.transport_key_version
            );
            Ok((lot, detail))
        }
        .await;
        self.finish(s, Action::ReceiveChipLot, &subject, at, tx, result)
            .await
    }

    /// A chip lot by number.
    pub async fn chip_lot(&self, lot_number: &str) -> Result<ChipLot> {
        let mut tx = self.store().read().await?;
        let lot = lot_by_number(&mut tx, lot_number).await?;
        tx.rollback().await?;
        Ok(lot)
    }

    /// Every chip lot, in the order received.
    pub async fn chip_lots(&self) -> Result<Vec<ChipLot>> {
        let mut tx = self.store().read().await?;
        let rows: Vec<LotRow> = tx
            .fetch_all(&format!("{SELECT_LOT} ORDER BY id"), &[])
            .await?;
        tx.rollback().await?;
        Ok(rows.into_iter().map(lot_from).collect())
    }

    // ----- orders and batches -----

    /// Opens a production order: reserves the lot's next `quantity` chip serials for
    /// `quantity` cards of the product (administrators, at an office console).
    pub async fn open_production_order(
        &self,
        s: &Session,
        new: NewProductionOrder,
    ) -> Result<ProductionOrder> {
        let subject = format!("product {} from lot {}", new.product_code, new.lot_number);
        let (mut tx, at) = self.begin(s, Action::OpenProductionOrder, &subject).await?;
        let result = async {
            self.require_console(&mut tx, s).await?;
            validate_quantity("order quantity", new.quantity, MAX_LOT_QUANTITY)?;
            let product = products::product_by_code(&mut tx, &new.product_code).await?;
            let lot = lot_by_number(&mut tx, &new.lot_number).await?;
            if new.quantity > lot.available() {
                return Err(OfficeError::Insufficient {
                    what: format!("chips of lot {}", lot.lot_number),
                    asked: new.quantity,
                    available: lot.available(),
                    hint: "order fewer cards or receive another lot",
                });
            }
            let lot_first = parse_chip_serial(&lot.first_chip_serial).map_err(corrupt)?;
            // reserved + quantity <= lot quantity, so the range stays inside the lot's.
            let first = lot_first + lot.reserved as u64;
            let last = first + (new.quantity - 1) as u64;
            let op = self
                .record_operation(&mut tx, s, "open_production_order", at, None, None)
                .await?;
            let id = tx.next_id("production_order").await?;
            tx.execute(
                "INSERT INTO production_orders (id, product_id, lot_id, quantity, \
                 first_chip_serial, last_chip_serial, batched, chips_used, operation_id, \
                 created_by_operator_id, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, 0, 0, $7, $8, $9)",
                &args![
                    id,
                    product.id,
                    lot.id,
                    new.quantity,
                    format_chip_serial(first),
                    format_chip_serial(last),
                    op,
                    s.operator_id,
                    at
                ],
            )
            .await?;
            tx.execute(
                "UPDATE chip_lots SET reserved = reserved + $1 WHERE id = $2",
                &args![new.quantity, lot.id],
            )
            .await?;
            let order = order_by_id(&mut tx, id).await?;
            let detail = format!(
                "order {id}: {} x{}, chips {}..{}",
                order.product_code, order.quantity, order.first_chip_serial, order.last_chip_serial
            );
            Ok((order, detail))
        }
        .await;
        self.finish(s, Action::OpenProductionOrder, &subject, at, tx, result)
            .await
    }

    /// A production order.
    pub async fn production_order(&self, id: i64) -> Result<ProductionOrder> {
        let mut tx = self.store().read().await?;
        let o = order_by_id(&mut tx, id).await?;
        tx.rollback().await?;
        Ok(o)
    }

    /// Every production order, oldest first.
    pub async fn production_orders(&self) -> Result<Vec<ProductionOrder>> {
        let mut tx = self.store().read().await?;
        let rows: Vec<OrderRow> = tx
            .fetch_all(&format!("{SELECT_ORDER} ORDER BY o.id"), &[])
            .await?;
        tx.rollback().await?;
        Ok(rows.into_iter().map(order_from).collect())
    }

    /// Starts a batch of `quantity` card bodies of an order (administrators, at an office
    /// console).
    pub async fn start_batch(
        &self,
        s: &Session,
        order_id: i64,
        quantity: i64,
    ) -> Result<ProductionBatch> {
        let subject = format!("production order {order_id}");
        let (mut tx, at) = self
            .begin(s, Action::StartProductionBatch, &subject)
            .await?;
        let result = async {
            self.require_console(&mut tx, s).await?;
            validate_quantity("batch quantity", quantity, MAX_LOT_QUANTITY)?;
            let order = order_by_id(&mut tx, order_id).await?;
            let left = order.quantity - order.batched;
            if quantity > left {
                return Err(OfficeError::Insufficient {
                    what: format!("card bodies of production order {order_id}"),
                    asked: quantity,
                    available: left,
                    hint: "start a smaller batch or open another order",
                });
            }
            let op = self
                .record_operation(&mut tx, s, "start_production_batch", at, None, None)
                .await?;
            let id = tx.next_id("production_batch").await?;
            tx.execute(
                "INSERT INTO production_batches (id, order_id, quantity, stage, operation_id, \
                 created_by_operator_id, created_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, 'started', $4, $5, $6, $6)",
                &args![id, order_id, quantity, op, s.operator_id, at],
            )
            .await?;
            tx.execute(
                "UPDATE production_orders SET batched = batched + $1 WHERE id = $2",
                &args![quantity, order_id],
            )
            .await?;
            let batch = batch_by_id(&mut tx, id).await?;
            Ok((batch, format!("batch {id}: {quantity} card bodies")))
        }
        .await;
        self.finish(s, Action::StartProductionBatch, &subject, at, tx, result)
            .await
    }

    /// A production batch.
    pub async fn production_batch(&self, id: i64) -> Result<ProductionBatch> {
        let mut tx = self.store().read().await?;
        let b = batch_by_id(&mut tx, id).await?;
        tx.rollback().await?;
        Ok(b)
    }

    /// The stages recorded for a batch, in order.
    pub async fn batch_stages(&self, batch_id: i64) -> Result<Vec<StageRecord>> {
        let mut tx = self.store().read().await?;
        batch_by_id(&mut tx, batch_id).await?;
        let rows: Vec<StageRow> = tx
            .fetch_all(
                &format!("{SELECT_STAGE} WHERE s.batch_id = $1 ORDER BY s.id"),
                &args![batch_id],
            )
            .await?;
        tx.rollback().await?;
        rows.into_iter().map(stage_from).collect()
    }

    /// The cards of a batch (once coded), in coding order.
    pub async fn batch_cards(&self, batch_id: i64) -> Result<Vec<InventoryCard>> {
        let mut tx = self.store().read().await?;
        batch_by_id(&mut tx, batch_id).await?;
        let cards = batch_cards_in(&mut tx, batch_id).await?;
        tx.rollback().await?;
        Ok(cards)
    }

    // ----- stages -----

    /// Records printing: `spoiled` of the batch's card bodies were spoiled (administrators, at
    /// an office console).
    pub async fn record_printing(
        &self,
        s: &Session,
        batch_id: i64,
        equipment: &str,
        spoiled: i64,
    ) -> Result<StageRecord> {
        let subject = format!("batch {batch_id}");
        let (mut tx, at) = self
            .begin(s, Action::RecordProductionStage, &subject)
            .await?;
        let result = async {
            self.require_console(&mut tx, s).await?;
            let batch = batch_by_id(&mut tx, batch_id).await?;
            require_next(&batch, Stage::Printing)?;
            validate_equipment(equipment)?;
            if !(0..=batch.quantity).contains(&spoiled) {
                return Err(OfficeError::Invalid {
                    what: "spoiled card bodies",
                    why: format!("{spoiled}: use 0 to the batch's {}", batch.quantity),
                });
            }
            let op = self
                .record_operation(&mut tx, s, "production_stage", at, None, None)
                .await?;
            write_stage(
                &mut tx,
                s,
                StageWrite {
                    batch: &batch,
                    stage: Stage::Printing,
                    equipment,
                    operation_id: op,
                    at_ms: at,
                    count_in: batch.quantity,
                    count_out: batch.quantity - spoiled,
                },
            )
            .await
        }
        .await;
        self.finish(s, Action::RecordProductionStage, &subject, at, tx, result)
            .await
    }

    /// What the coding run of a batch must code: the order's next chip serials, one per card
    /// body that passed printing.
    pub async fn coding_plan(&self, batch_id: i64) -> Result<CodingPlan> {
        let mut tx = self.store().read().await?;
        let batch = batch_by_id(&mut tx, batch_id).await?;
        require_next(&batch, Stage::Coding)?;
        let (ids, chip_serials) = next_chips(&mut tx, &batch).await?;
        tx.rollback().await?;
        Ok(CodingPlan {
            batch_id,
            chip_batch: batch.chip_batch(),
            transport_key_version: u8::try_from(ids.transport_key_version)
                .map_err(|_| OfficeError::Corrupt("transport key version".into()))?,
            chip_serials,
        })
    }

    /// Records coding: one result per card body that passed printing, naming exactly the
    /// chips of [`Office::coding_plan`] (in any order). Every chip becomes an inventory card:
    /// `in_production`, or `void` with its coding failure (administrators, at an office
    /// console).
    pub async fn record_coding(
        &self,
        s: &Session,
        batch_id: i64,
        equipment: &str,
        cards: &[CodedCard],
    ) -> Result<StageRecord> {
        let subject = format!("batch {batch_id}");
        let (mut tx, at) = self
            .begin(s, Action::RecordProductionStage, &subject)
            .await?;
        let result = async {
            self.require_console(&mut tx, s).await?;
            let batch = batch_by_id(&mut tx, batch_id).await?;
            require_next(&batch, Stage::Coding)?;
            validate_equipment(equipment)?;
            let (ids, expected) = next_chips(&mut tx, &batch).await?;
            if cards.len() != expected.len() {
                return Err(OfficeError::Invalid {
                    what: "coding results",
                    why: format!(
                        "{} results for the {} card bodies that passed printing",
                        cards.len(),
                        expected.len()
                    ),
                });
            }
            let expected_set: HashSet<&str> = expected.iter().map(String::as_str).collect();
            let mut seen = HashSet::new();
            let mut normalized = Vec::with_capacity(cards.len());
            for c in cards {
                let serial = normalize_serial(&c.chip_serial)?;
                if !expected_set.contains(serial.as_str()) {
                    return Err(OfficeError::Invalid {
                        what: "coding results",
                        why: format!(
                            "chip {serial} is not in this run's chips {}..{}; code the chips of the coding plan",
                            expected.first().map_or("", String::as_str),
                            expected.last().map_or("", String::as_str)
                        ),
                    });
                }
                if !seen.insert(serial.clone()) {
                    return Err(OfficeError::Invalid {
                        what: "coding results",
                        why: format!("chip {serial} is reported twice"),
                    });
                }
                if let Some(f) = &c.failure {
                    validate_text("coding failure", f, 200)?;
                }
                normalized.push((serial, c.failure.clone()));
            }
            let op = self
                .record_operation(&mut tx, s, "production_stage", at, None, None)
                .await?;
            let mut good = 0i64;
            for (serial, failure) in &normalized {
                let (state, reason) = match failure {
                    None => (InventoryState::InProduction, "coded".to_string()),
                    Some(f) => (InventoryState::Void, format!("coding failed: {f}")),
                };
                let card_id = tx.next_id("inventory_card").await?;
                tx.execute(
                    "INSERT INTO inventory_cards (id, chip_serial, product_id, lot_id, order_id, \
                     batch_id, state, void_reason, created_at_ms, updated_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
                    &args![
                        card_id,
                        serial,
                        ids.product_id,
                        ids.lot_id,
                        batch.order_id,
                        batch.id,
                        state.as_str(),
                        (state == InventoryState::Void).then(|| reason.clone()),
                        at
                    ],
                )
                .await?;
                history(
                    &mut tx,
                    &HistoryDraft {
                        card_id,
                        operation_id: op,
                        s,
                        at_ms: at,
                        from: None,
                        to: state,
                        branch_id: None,
                        operator_id: None,
                        application_serial: None,
                        product_version: None,
                        reason: &reason,
                    },
                )
                .await?;
                if failure.is_none() {
                    good += 1;
                }
            }
            tx.execute(
                "UPDATE production_orders SET chips_used = chips_used + $1 WHERE id = $2",
                &args![count_i64(normalized.len()), batch.order_id],
            )
            .await?;
            write_stage(
                &mut tx,
                s,
                StageWrite {
                    batch: &batch,
                    stage: Stage::Coding,
                    equipment,
                    operation_id: op,
                    at_ms: at,
                    count_in: count_i64(normalized.len()),
                    count_out: good,
                },
            )
            .await
        }
        .await;
        self.finish(s, Action::RecordProductionStage, &subject, at, tx, result)
            .await
    }

    /// Records a finishing stage (bronzing, packaging or gluing) with the cards it spoiled;
    /// those become `void` with their reasons (administrators, at an office console).
    pub async fn record_finishing(
        &self,
        s: &Session,
        batch_id: i64,
        stage: Stage,
        equipment: &str,
        voided: &[VoidedCard],
    ) -> Result<StageRecord> {
        let subject = format!("batch {batch_id}");
        let (mut tx, at) = self
            .begin(s, Action::RecordProductionStage, &subject)
            .await?;
        let result = async {
            self.require_console(&mut tx, s).await?;
            if !matches!(stage, Stage::Bronzing | Stage::Packaging | Stage::Gluing) {
                return Err(OfficeError::Invalid {
                    what: "finishing stage",
                    why: format!(
                        "{stage} is not a finishing stage (bronzing, packaging, gluing); it has its own operation"
                    ),
                });
            }
            let batch = batch_by_id(&mut tx, batch_id).await?;
            require_next(&batch, stage)?;
            validate_equipment(equipment)?;
            let in_production: HashSet<String> = batch_cards_in(&mut tx, batch_id)
                .await?
                .into_iter()
                .filter(|c| c.state == InventoryState::InProduction)
                .map(|c| c.chip_serial)
                .collect();
            let mut seen = HashSet::new();
            let mut normalized = Vec::with_capacity(voided.len());
            for v in voided {
                let serial = normalize_serial(&v.chip_serial)?;
                if !in_production.contains(&serial) {
                    return Err(OfficeError::Invalid {
                        what: "voided card",
                        why: format!("chip {serial} is not a card in production in batch {batch_id}"),
                    });
                }
                if !seen.insert(serial.clone()) {
                    return Err(OfficeError::Invalid {
                        what: "voided card",
                        why: format!("chip {serial} is listed twice"),
                    });
                }
                validate_text("void reason", &v.reason, 200)?;
                normalized.push((serial, format!("{stage}: {}", v.reason)));
            }
            let op = self
                .record_operation(&mut tx, s, "production_stage", at, None, None)
                .await?;
            for (serial, reason) in &normalized {
                change_state(
                    &mut tx,
                    serial,
                    &InventoryChange {
                        to: InventoryState::Void,
                        holder: None,
                        application_serial: None,
                        product_version: None,
                        reason: reason.clone(),
                    },
                    s,
                    op,
                    at,
                )
                .await?;
            }
            let count_in = count_i64(in_production.len());
            write_stage(
                &mut tx,
                s,
                StageWrite {
                    batch: &batch,
                    stage,
                    equipment,
                    operation_id: op,
                    at_ms: at,
                    count_in,
                    count_out: count_in - count_i64(normalized.len()),
                },
            )
            .await
        }
        .await;
        self.finish(s, Action::RecordProductionStage, &subject, at, tx, result)
            .await
    }

    /// Records testing: one functional-test report per card in production in the batch, each
    /// card exactly once. Passed cards (whose reported chip serial matches) enter stock;
    /// the others become `void` with the failed step as reason (administrators, at an office
    /// console).
    pub async fn record_testing(
        &self,
        s: &Session,
        batch_id: i64,
        equipment: &str,
        results: &[TestedCard],
    ) -> Result<StageRecord> {
        let subject = format!("batch {batch_id}");
        let (mut tx, at) = self
            .begin(s, Action::RecordProductionStage, &subject)
            .await?;
        let result = async {
            self.require_console(&mut tx, s).await?;
            let batch = batch_by_id(&mut tx, batch_id).await?;
            require_next(&batch, Stage::Testing)?;
            validate_equipment(equipment)?;
            let in_production: Vec<String> = batch_cards_in(&mut tx, batch_id)
                .await?
                .into_iter()
                .filter(|c| c.state == InventoryState::InProduction)
                .map(|c| c.chip_serial)
                .collect();
            let mut by_serial: HashMap<String, &TestedCard> = HashMap::new();
            for r in results {
                let serial = normalize_serial(&r.chip_serial)?;
                if !in_production.contains(&serial) {
                    return Err(OfficeError::Invalid {
                        what: "test results",
                        why: format!("chip {serial} is not a card in production in batch {batch_id}"),
                    });
                }
                if by_serial.insert(serial.clone(), r).is_some() {
                    return Err(OfficeError::Invalid {
                        what: "test results",
                        why: format!("chip {serial} is reported twice"),
                    });
                }
            }
            if let Some(missing) = in_production.iter().find(|c| !by_serial.contains_key(*c)) {
                return Err(OfficeError::Invalid {
                    what: "test results",
                    why: format!(
                        "{} of the batch's {} cards in production were reported; chip {missing} is missing (test every card)",
                        by_serial.len(),
                        in_production.len()
                    ),
                });
            }
            let op = self
                .record_operation(&mut tx, s, "production_stage", at, None, None)
                .await?;
            let mut passed = 0i64;
            for serial in &in_production {
                let report = &by_serial[serial].report;
                let reported = report.chip_serial.map(|b| format_chip_serial(u64::from_be_bytes(b)));
                let failure = match (report.failure(), reported) {
                    (Some(why), _) => Some(why),
                    (None, Some(r)) if &r != serial => {
                        Some(format!("the card reports chip serial {r}, recorded as {serial}"))
                    }
                    (None, None) => Some("the report names no chip serial".to_string()),
                    (None, Some(_)) => None,
                };
                let (to, reason) = match failure {
                    None => (InventoryState::InStock, "functional test passed".to_string()),
                    Some(why) => {
                        // The reason comes from the card's answers: keep it one short line.
                        let line: String = format!("testing: {why}")
                            .chars()
                            .map(|c| if c.is_control() { ' ' } else { c })
                            .collect();
                        let mut r = line.trim().to_string();
                        if r.chars().count() > 200 {
                            r = r.chars().take(197).collect::<String>() + "...";
                        }
                        (InventoryState::Void, r)
                    }
                };
                change_state(
                    &mut tx,
                    serial,
                    &InventoryChange {
                        to,
                        holder: None,
                        application_serial: None,
                        product_version: None,
                        reason,
                    },
                    s,
                    op,
                    at,
                )
                .await?;
                if to == InventoryState::InStock {
                    passed += 1;
                }
            }
            write_stage(
                &mut tx,
                s,
                StageWrite {
                    batch: &batch,
                    stage: Stage::Testing,
                    equipment,
                    operation_id: op,
                    at_ms: at,
                    count_in: count_i64(in_production.len()),
                    count_out: passed,
                },
            )
            .await
        }
        .await;
        self.finish(s, Action::RecordProductionStage, &subject, at, tx, result)
            .await
    }

    // ----- inventory -----

    /// Allocates `quantity` cards of a product from stock (oldest first) to a branch or an
    /// operator (administrators, at an office console).
    pub async fn allocate_cards(&self, s: &Session, req: Allocate) -> Result<Vec<InventoryCard>> {
        let subject = format!("{} cards of product {}", req.quantity, req.product_code);
        let (mut tx, at) = self.begin(s, Action::AllocateCards, &subject).await?;
        let result = async {
            self.require_console(&mut tx, s).await?;
            validate_quantity("allocation quantity", req.quantity, MAX_LOT_QUANTITY)?;
            let product = products::product_by_code(&mut tx, &req.product_code).await?;
            holder_ids(&mut tx, &req.to).await?;
            let (in_stock,): (i64,) = tx
                .fetch_one(
                    "SELECT COUNT(*) FROM inventory_cards WHERE product_id = $1 AND state = 'in_stock'",
                    &args![product.id],
                )
                .await?;
            if req.quantity > in_stock {
                return Err(OfficeError::Insufficient {
                    what: format!("cards of product {} in stock", product.code),
                    asked: req.quantity,
                    available: in_stock,
                    hint: "allocate fewer or finish a production batch first",
                });
            }
            let picked: Vec<(String,)> = tx
                .fetch_all(
                    "SELECT chip_serial FROM inventory_cards WHERE product_id = $1 \
                     AND state = 'in_stock' ORDER BY id LIMIT $2",
                    &args![product.id, req.quantity],
                )
                .await?;
            let op = self
                .record_operation(&mut tx, s, "allocate_cards", at, None, None)
                .await?;
            let mut out = Vec::with_capacity(picked.len());
            for (serial,) in picked {
                out.push(
                    change_state(
                        &mut tx,
                        &serial,
                        &InventoryChange {
                            to: InventoryState::Allocated,
                            holder: Some(req.to.clone()),
                            application_serial: None,
                            product_version: None,
                            reason: format!("allocated to {}", req.to),
                        },
                        s,
                        op,
                        at,
                    )
                    .await?,
                );
            }
            let detail = format!(
                "{} cards of {} to {}: {}..{}",
                out.len(),
                product.code,
                req.to,
                out.first().map_or("", |c| c.chip_serial.as_str()),
                out.last().map_or("", |c| c.chip_serial.as_str())
            );
            Ok((out, detail))
        }
        .await;
        self.finish(s, Action::AllocateCards, &subject, at, tx, result)
            .await
    }

    /// Takes allocated cards back into stock (administrators, at an office console).
    pub async fn return_to_stock(
        &self,
        s: &Session,
        chip_serials: &[String],
    ) -> Result<Vec<InventoryCard>> {
        let subject = format!("{} cards", chip_serials.len());
        let (mut tx, at) = self.begin(s, Action::ReturnCardsToStock, &subject).await?;
        let result = async {
            self.require_console(&mut tx, s).await?;
            if chip_serials.is_empty() {
                return Err(OfficeError::Invalid {
                    what: "cards",
                    why: "name at least one chip serial".into(),
                });
            }
            let mut seen = HashSet::new();
            for c in chip_serials {
                if !seen.insert(normalize_serial(c)?) {
                    return Err(OfficeError::Invalid {
                        what: "cards",
                        why: format!("chip {c} is listed twice"),
                    });
                }
            }
            let op = self
                .record_operation(&mut tx, s, "return_cards_to_stock", at, None, None)
                .await?;
            let mut out = Vec::with_capacity(chip_serials.len());
            for c in chip_serials {
                let card = inventory_card(&mut tx, c).await?;
                let reason = match &card.holder {
                    Some(h) => format!("returned to stock by {h}"),
                    None => "returned to stock".to_string(),
                };
                out.push(
                    change_state(
                        &mut tx,
                        c,
                        &InventoryChange {
                            to: InventoryState::InStock,
                            holder: None,
                            application_serial: None,
                            product_version: None,
                            reason,
                        },
                        s,
                        op,
                        at,
                    )
                    .await?,
                );
            }
            let serials: Vec<&str> = out.iter().map(|c| c.chip_serial.as_str()).collect();
            Ok((out.clone(), format!("to stock: {}", serials.join(" "))))
        }
        .await;
        self.finish(s, Action::ReturnCardsToStock, &subject, at, tx, result)
            .await
    }

    /// A physical card by chip serial.
    pub async fn inventory_card(&self, chip_serial: &str) -> Result<InventoryCard> {
        let mut tx = self.store().read().await?;
        let c = inventory_card(&mut tx, chip_serial).await?;
        tx.rollback().await?;
        Ok(c)
    }

    /// A physical card's history, oldest first.
    pub async fn inventory_history(&self, chip_serial: &str) -> Result<Vec<InventoryHistoryRow>> {
        let mut tx = self.store().read().await?;
        let card = inventory_card(&mut tx, chip_serial).await?;
        type Row = (
            i64,
            i64,
            String,
            String,
            Option<String>,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            String,
        );
        let rows: Vec<Row> = tx
            .fetch_all(
                "SELECT h.at_ms, h.operation_id, o.login, m.machine_number, h.from_state, \
                 h.to_state, b.code, ao.login, h.application_serial, h.product_version, h.reason \
                 FROM inventory_card_history h JOIN operators o ON o.id = h.operator_id \
                 JOIN machines m ON m.id = h.machine_id \
                 LEFT JOIN branches b ON b.id = h.allocated_branch_id \
                 LEFT JOIN operators ao ON ao.id = h.allocated_operator_id \
                 WHERE h.card_id = $1 ORDER BY h.id",
                &args![card.id],
            )
            .await?;
        tx.rollback().await?;
        rows.into_iter()
            .map(|r| {
                Ok(InventoryHistoryRow {
                    at_ms: r.0,
                    operation_id: r.1,
                    operator_login: r.2,
                    machine_number: r.3,
                    from: r
                        .4
                        .as_deref()
                        .map(InventoryState::parse)
                        .transpose()
                        .map_err(corrupt)?,
                    to: InventoryState::parse(&r.5).map_err(corrupt)?,
                    holder: holder_from(r.6, r.7),
                    application_serial: r.8,
                    product_version: r.9,
                    reason: r.10,
                })
            })
            .collect()
    }

    /// Card counts by product and state (only pairs with at least one card), ordered by
    /// product code and then state in [`InventoryState::ALL`] order.
    pub async fn inventory_counts(&self) -> Result<Vec<InventoryCount>> {
        let mut tx = self.store().read().await?;
        let rows: Vec<(String, String, i64)> = tx
            .fetch_all(
                "SELECT p.code, c.state, COUNT(*) FROM inventory_cards c \
                 JOIN products p ON p.id = c.product_id GROUP BY p.code, c.state",
                &[],
            )
            .await?;
        tx.rollback().await?;
        let mut out = rows
            .into_iter()
            .map(|(product_code, state, count)| {
                Ok(InventoryCount {
                    product_code,
                    state: InventoryState::parse(&state).map_err(corrupt)?,
                    count,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| {
            a.product_code
                .cmp(&b.product_code)
                .then(a.state.cmp(&b.state))
        });
        Ok(out)
    }
}

/// Inventory and production invariants, proven from the data in the caller's (read)
/// transaction; returns every violation in words (empty when all is well):
///
/// - every card's history starts from no state with an initial state, every later row starts
///   where the previous one ended and is an allowed move, and the last row matches the card's
///   state, holder and issue data;
/// - every card's chip serial lies in its order's range, and each order's `chips_used` is its
///   number of cards, its `batched` the sum of its batches;
/// - every lot's `reserved` is the sum of its orders' quantities;
/// - every batch's stages are the first stages of [`Stage::ALL`] in order, ending at the
///   batch's stage; printing takes the batch's quantity in, every later stage the previous
///   stage's out; a coded batch has as many cards as coding took in, and a tested batch has
///   none left in production.
pub async fn check_inventory(tx: &mut Tx) -> Result<Vec<String>> {
    let mut problems = Vec::new();

    type CardFacts = (
        i64,
        String,
        String,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<i64>,
        i64,
        i64,
    );
    let cards: Vec<CardFacts> = tx
        .fetch_all(
            "SELECT id, chip_serial, state, allocated_branch_id, allocated_operator_id, \
             application_serial, product_version, order_id, batch_id FROM inventory_cards ORDER BY id",
            &[],
        )
        .await?;
    type HistoryFacts = (
        i64,
        Option<String>,
        String,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<i64>,
    );
    let rows: Vec<HistoryFacts> = tx
        .fetch_all(
            "SELECT card_id, from_state, to_state, allocated_branch_id, allocated_operator_id, \
             application_serial, product_version FROM inventory_card_history ORDER BY card_id, id",
            &[],
        )
        .await?;
    let mut histories: HashMap<i64, Vec<HistoryFacts>> = HashMap::new();
    for r in rows {
        histories.entry(r.0).or_default().push(r);
    }
    let parse = |s: &str| InventoryState::parse(s).ok();
    for c in &cards {
        let serial = &c.1;
        let Some(h) = histories.get(&c.0) else {
            problems.push(format!("card {serial} has no history"));
            continue;
        };
        let mut previous: Option<InventoryState> = None;
        for (i, row) in h.iter().enumerate() {
            let Some(to) = parse(&row.2) else {
                problems.push(format!(
                    "card {serial} history names unknown state {:?}",
                    row.2
                ));
                break;
            };
            let from = row.1.as_deref().map(parse);
            let ok = match (i, from) {
                (0, None) => INITIAL_STATES.contains(&to),
                (_, Some(Some(f))) if Some(f) == previous => f.can_become(to),
                _ => false,
            };
            if !ok {
                problems.push(format!(
                    "card {serial} history row {} moves {} -> {} after {}: not an allowed move",
                    i + 1,
                    row.1.as_deref().unwrap_or("(nothing)"),
                    row.2,
                    previous.map_or("(nothing)", InventoryState::as_str)
                ));
                break;
            }
            previous = Some(to);
        }
        if let Some(last) = h.last() {
            let stored = (&c.2, c.3, c.4, &c.5, c.6);
            let logged = (&last.2, last.3, last.4, &last.5, last.6);
            if stored != logged {
                problems.push(format!(
                    "card {serial} is {} but its last history row says {}",
                    c.2, last.2
                ));
            }
        }
    }

    // Orders: chip ranges, chips used, bodies batched.
    let orders: Vec<(i64, i64, String, String, i64, i64, i64)> = tx
        .fetch_all(
            "SELECT id, lot_id, first_chip_serial, last_chip_serial, quantity, batched, chips_used \
             FROM production_orders ORDER BY id",
            &[],
        )
        .await?;
    let batches: Vec<(i64, i64, i64, String)> = tx
        .fetch_all(
            "SELECT id, order_id, quantity, stage FROM production_batches ORDER BY id",
            &[],
        )
        .await?;
    let mut cards_per_order: HashMap<i64, i64> = HashMap::new();
    let mut cards_per_batch: HashMap<i64, (i64, i64)> = HashMap::new();
    for c in &cards {
        *cards_per_order.entry(c.7).or_default() += 1;
        let e = cards_per_batch.entry(c.8).or_default();
        e.0 += 1;
        if c.2 == InventoryState::InProduction.as_str() {
            e.1 += 1;
        }
    }
    let mut ranges = HashMap::new();
    let mut reserved_per_lot: HashMap<i64, i64> = HashMap::new();
    for (id, lot_id, first, last, quantity, batched, chips_used) in &orders {
        *reserved_per_lot.entry(*lot_id).or_default() += quantity;
        match (parse_chip_serial(first), parse_chip_serial(last)) {
            (Ok(f), Ok(l)) => {
                ranges.insert(*id, (f, l));
            }
            _ => problems.push(format!(
                "order {id} has a malformed chip range {first}..{last}"
            )),
        }
        let n = cards_per_order.get(id).copied().unwrap_or(0);
        if n != *chips_used {
            problems.push(format!(
                "order {id} counts {chips_used} chips used but has {n} cards"
            ));
        }
        let b: i64 = batches.iter().filter(|b| b.1 == *id).map(|b| b.2).sum();
        if b != *batched {
            problems.push(format!(
                "order {id} counts {batched} card bodies batched but its batches hold {b}"
            ));
        }
    }
    for c in &cards {
        let inside = match (parse_chip_serial(&c.1), ranges.get(&c.7)) {
            (Ok(s), Some((f, l))) => (*f..=*l).contains(&s),
            _ => false,
        };
        if !inside {
            problems.push(format!(
                "card {} is outside the chip range of its order {}",
                c.1, c.7
            ));
        }
    }
    let lots: Vec<(String, i64, i64)> = tx
        .fetch_all(
            "SELECT lot_number, id, reserved FROM chip_lots ORDER BY id",
            &[],
        )
        .await?;
    for (lot_number, id, reserved) in lots {
        let sum = reserved_per_lot.get(&id).copied().unwrap_or(0);
        if sum != reserved {
            problems.push(format!(
                "lot {lot_number} counts {reserved} chips reserved but its orders hold {sum}"
            ));
        }
    }

    // Batches: stage chain and counts.
    let stages: Vec<(i64, String, i64, i64, i64)> = tx
        .fetch_all(
            "SELECT batch_id, stage, count_in, count_out, count_voided FROM production_stages ORDER BY id",
            &[],
        )
        .await?;
    let mut per_batch: BTreeMap<i64, Vec<(String, i64, i64, i64)>> = BTreeMap::new();
    for (b, stage, i, o, v) in stages {
        per_batch.entry(b).or_default().push((stage, i, o, v));
    }
    for (id, _, quantity, stage) in &batches {
        let recorded = per_batch.remove(id).unwrap_or_default();
        let names: Vec<&str> = recorded.iter().map(|r| r.0.as_str()).collect();
        let expected: Vec<&str> = Stage::ALL
            .iter()
            .take(names.len())
            .map(|s| s.as_str())
            .collect();
        let last = names.last().copied().unwrap_or("started");
        if names != expected || last != stage {
            problems.push(format!(
                "batch {id} is at {stage} but its stage records are [{}]",
                names.join(", ")
            ));
            continue;
        }
        let mut expected_in = *quantity;
        for (name, count_in, count_out, voided) in &recorded {
            if *count_in != expected_in || count_out + voided != *count_in {
                problems.push(format!(
                    "batch {id} {name}: in {count_in}, out {count_out}, voided {voided}; expected {expected_in} in and out + voided = in"
                ));
            }
            expected_in = *count_out;
        }
        let (n_cards, n_in_production) = cards_per_batch.get(id).copied().unwrap_or((0, 0));
        if let Some(coding) = recorded.get(1) {
            if coding.1 != n_cards {
                problems.push(format!(
                    "batch {id} coded {} chips but has {n_cards} cards",
                    coding.1
                ));
            }
        }
        if recorded.len() == Stage::ALL.len() && n_in_production != 0 {
            problems.push(format!(
                "batch {id} is tested but {n_in_production} cards are still in production"
            ));
        }
    }
    for b in per_batch.keys() {
        problems.push(format!(
            "stage records name batch {b}, which does not exist"
        ));
    }
    Ok(problems)
}
