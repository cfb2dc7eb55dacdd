//! # iccard-office: the issuer's back office
//!
//! The back office keeps the issuer's books for the purse: who may do what ([`operators`]),
//! on which machine ([`machines`]), what every card is worth ([`ledger`] shadow accounts), where
//! the money is (the double-entry [`ledger`]), and a tamper-evident record of everything that
//! was done ([`audit`]). [`Office`] is the façade every caller (CLI, console, settlement) uses.
//! The issuer's purse keys sit behind [`keystore::Keystore`]: an encrypted local keystore file
//! with key versions and a key ceremony log, a PKCS#11 token ([`pkcs11`], tested on SoftHSM2),
//! or the development key set (development mode only); all compute MAC1/MAC2/TAC checks and
//! give card keys for personalization without ever handing out a master key. [`config`] is the
//! office directory's `office.toml` (no secrets; development keys refused in production).
//!
//! The card life cycle runs on real cards through `iccard_link::CardChannel`: [`products`]
//! (versioned personalization profiles) and [`manufacture`] (chip lots, production batches
//! through printing, coding, bronzing, packaging, gluing and testing, the card inventory with
//! one transition table), [`issuance`] (a stocked card personalized with keystore keys, its
//! account opened, journaled so an interruption resumes or rolls back), [`recharge`] (the PBOC
//! load with the keystore, exactly once across lost answers and crashes), [`losslist`] (card
//! status, a versioned loss list), [`replacement`] (a lost card's balance onto its
//! replacement), [`returns`] (the return of a card with a rule-driven refund, unloaded on the
//! card exactly once, the card terminated or erased and re-stocked; expiry) and [`shifts`]
//! (cashier shifts with over/short).
//!
//! ## Storage: one code path, two databases
//!
//! [`store::Store`] is SQLite (embedded default, WAL mode, `BEGIN IMMEDIATE` for every write so
//! concurrent writers wait on the busy timeout instead of failing) or PostgreSQL (by URL). Every
//! query is one SQL text with `$N` placeholders for both; the schema is one migration set
//! (`crates/office/migrations`, only BIGINT and TEXT, ids from a `counters` table instead of
//! dialect-specific auto-increment). Every write transaction first updates the one `write_lock`
//! row, so PostgreSQL writers serialize the way SQLite's do: no lost update, and the audit chain
//! has a single head. The only dialect-specific SQL is the `BEGIN` statement.
//!
//! ## Invariants
//!
//! - Every business operation is **one** write transaction: its business record (`operations`
//!   and a typed row such as `card_loads`), its history rows, its balanced journal entry and its
//!   `ok` audit record commit together or not at all. A refused operation leaves a `denied`
//!   audit record, a failed one a `failed` record, and nothing else.
//! - Money is `i64` minor units; every sum is checked (`checked_add`/`checked_sub`), an
//!   overflow is an error, never a wrap.
//! - Every state change of a card, operator or machine appends a history row.
//! - [`check::check`] proves from the data: every entry has ≥ 2 lines and balances, every line
//!   has exactly one positive side, every account's stored balance equals its lines, the float
//!   equals the sum of the card shadow balances, deposits held equal the card deposits, and the
//!   audit chain is intact (else it names the first broken link).
//!
//! ## Chart of accounts
//!
//! `bank` (asset), `cash:<machine number>` per recharge point (asset), `float` (stored value
//! owed to card holders), `deposits_held`, `refunds_payable`, `merchant_payable` (liabilities),
//! `card_fee_income` (income). Postings so far: issuance Dr cash / Cr deposits held + card fee
//! income; load Dr cash / Cr float; return Dr float + deposits held / Cr cash + card fee income
//! (fee, forfeited deposit); settled purchase Dr float / Cr merchant payable; cash to bank Dr
//! bank / Cr cash. A card's shadow account holds its balance as the float sees it, the
//! last balance the card proved, and its next online and offline serials.
//!
//! ## Roles
//!
//! [`operators::Role::permits`] is the one table: administrators manage operators, branches and
//! machines, run the key ceremony, define card products and run manufacture (chip lots,
//! production orders and batches, stock allocation), and until the settlement slice settle
//! purchases; issuance clerks issue cards and take loss reports; recharge clerks load cards and
//! hand cash to the bank; auditors run `check`, verify the audit chain and read the ledger. Passwords are argon2id PHC strings; a session's role is
//! re-checked against the database by every operation.
//!
//! ## Tests
//!
//! `tests/` holds the conformance suite and the life-cycle suites (products, manufacture,
//! issuance, recharge, loss list): the same tests on SQLite (a temporary file) and, when
//! `ICCARD_TEST_POSTGRES_URL` is set, on PostgreSQL (`scripts/postgres-test-setup` starts a
//! loopback PostgreSQL 15 and prints the URL); the PKCS#11 keystore against SoftHSM2
//! (`scripts/softhsm-test-setup`). The concurrency and crash tests spawn the test binary itself
//! as OS processes: several posting at once, or one killed with SIGKILL at random points.
//! Benchmarks: `cargo bench -p iccard-office --bench ledger`.
//!
//! ## Not done yet (next slices)
//!
//! - Merchant payouts out of `merchant_payable`; held records released when their case is
//!   resolved.
//! - Key rotation beyond version 1 in personalization; the holder file written on the card;
//!   renewal of an expired card's validity on the card.
//! - Golden schema tests (a database written by each release still opens).

pub mod audit;
pub mod check;
pub mod config;
pub mod error;
pub mod issuance;
pub mod keystore;
pub mod ledger;
pub mod losslist;
pub mod machines;
pub mod manufacture;
pub mod office;
pub mod operators;
pub mod pkcs11;
pub mod products;
pub mod recharge;
pub mod replacement;
pub mod reports;
pub mod returns;
pub mod settlement;
pub mod shifts;
pub mod store;
pub mod upload;
pub mod upload_http;

pub use error::{OfficeError, Result};
pub use office::{
    Clock, InitConfig, LoadCard, LoadReceipt, Mode, NewOperator, Office, OpenCard, Settings,
    SettlePurchase,
};
pub use operators::{Action, Password, Role, Session};
pub use store::{Dialect, Store};
