//! Storage: one code path over SQLite and PostgreSQL.
//!
//! [`Store`] owns the connection pool of either database; [`Tx`] is a transaction on either.
//! Every query in the crate is one SQL text with `$1`-style placeholders, which both databases
//! accept (sqlx maps SQLite's `$N` parameters by number), bound from [`Arg`] values and decoded
//! into tuples of `i64`/`String`/`Option<…>`, types both drivers decode the same way.
//!
//! Write transactions ([`Store::write`]) are serialized: on SQLite they start with
//! `BEGIN IMMEDIATE` (the write lock is taken up front, so a concurrent writer waits on the busy
//! timeout instead of failing half-way with `SQLITE_BUSY`); on PostgreSQL the first statement
//! updates the single `write_lock` row, whose row lock every other writer then waits for. The
//! same `UPDATE` runs on SQLite too, so both databases count write generations. Because writers
//! are serialized and PostgreSQL's READ COMMITTED gives each statement a fresh snapshot, a
//! read-modify-write done in Rust (with checked arithmetic) never loses an update.
//!
//! Architecture invariant: only this crate writes the back office's SQL, and only through [`Tx`].

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{FromRow, Postgres, Sqlite, Transaction};

use crate::error::{OfficeError, Result};

/// The migrations, embedded at build time from `crates/office/migrations` (one set for both
/// databases).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a SQLite writer waits for the write lock before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(120);

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// SQLite (embedded; WAL mode).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A pool of connections to the back-office database.
#[derive(Debug, Clone)]
pub enum Store {
    /// An SQLite database file.
    Sqlite(SqlitePool),
    /// A PostgreSQL database.
    Postgres(PgPool),
}

/// A value bound to a `$N` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A BIGINT.
    I64(i64),
    /// A TEXT.
    Text(String),
    /// A nullable BIGINT.
    OptI64(Option<i64>),
    /// A nullable TEXT.
    OptText(Option<String>),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::I64(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.to_owned())
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(v.clone())
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::OptI64(v)
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::OptText(v.map(str::to_owned))
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::OptText(v)
    }
}

/// Builds an array of [`Arg`] from values convertible into it (pass it as `&args![…]`).
#[macro_export]
macro_rules! args {
    ($($v:expr),* $(,)?) => { [$($crate::store::Arg::from($v)),*] };
}

/// Binds every [`Arg`] to a sqlx query or query_as, in order.
macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::I64(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.as_str()),
                Arg::OptI64(v) => q.bind(*v),
                Arg::OptText(v) => q.bind(v.as_deref()),
            };
        }
        q
    }};
}

/// A row type both drivers can decode (tuples of `i64`, `String` and their `Option`s).
pub trait Row:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static
{
}
impl<T> Row for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static
{
}

impl Store {
    /// Connects to `url`: `sqlite://PATH` (created if missing, WAL mode, foreign keys on) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (also `postgresql://`).
    pub async fn connect(url: &str) -> Result<Store> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| OfficeError::BadDatabaseUrl {
                    url: redact_url(url),
                    reason: e.to_string(),
                })?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(SQLITE_BUSY_TIMEOUT)
                .connect_with(options)
                .await?;
            Ok(Store::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(60))
                .connect(url)
                .await?;
            Ok(Store::Postgres(pool))
        } else {
            Err(OfficeError::BadDatabaseUrl {
                url: redact_url(url),
                reason: "use sqlite://PATH or postgres://USER:PASSWORD@HOST/DATABASE".into(),
            })
        }
    }

    /// Applies every pending migration (idempotent).
    pub async fn migrate(&self) -> Result<()> {
        match self {
            Store::Sqlite(p) => MIGRATOR.run(p).await?,
            Store::Postgres(p) => MIGRATOR.run(p).await?,
        }
        Ok(())
    }

    /// The schema version this build expects (the highest migration number).
    pub fn schema_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        match self {
            Store::Sqlite(_) => Dialect::Sqlite,
            Store::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Starts a write transaction holding the back office's write lock (see the module doc).
    pub async fn write(&self) -> Result<Tx> {
        let mut tx = match self {
            Store::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Store::Postgres(p) => Tx::Postgres(p.begin().await?),
        };
        let locked = tx
            .execute(
                "UPDATE write_lock SET generation = generation + 1 WHERE id = 1",
                &[],
            )
            .await?;
        if locked != 1 {
            return Err(OfficeError::NotMigrated);
        }
        Ok(tx)
    }

    /// Starts a read-only transaction that sees one consistent snapshot (SQLite: a deferred
    /// transaction in WAL mode; PostgreSQL: REPEATABLE READ, READ ONLY).
    pub async fn read(&self) -> Result<Tx> {
        Ok(match self {
            Store::Sqlite(p) => Tx::Sqlite(p.begin().await?),
            Store::Postgres(p) => Tx::Postgres(
                p.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?,
            ),
        })
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(p) => p.close().await,
            Store::Postgres(p) => p.close().await,
        }
    }
}

/// A transaction on either database. Dropping it without [`Tx::commit`] rolls it back.
#[derive(Debug)]
pub enum Tx {
    /// On SQLite.
    Sqlite(Transaction<'static, Sqlite>),
    /// On PostgreSQL.
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    /// Runs a statement; returns the number of rows it changed.
    pub async fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<u64> {
        Ok(match self {
            Tx::Sqlite(t) => bind_all!(sqlx::query(sql), args)
                .execute(&mut **t)
                .await?
                .rows_affected(),
            Tx::Postgres(t) => bind_all!(sqlx::query(sql), args)
                .execute(&mut **t)
                .await?
                .rows_affected(),
        })
    }

    /// Runs a query; returns every row.
    pub async fn fetch_all<T: Row>(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<T>> {
        Ok(match self {
            Tx::Sqlite(t) => {
                bind_all!(sqlx::query_as::<Sqlite, T>(sql), args)
                    .fetch_all(&mut **t)
                    .await?
            }
            Tx::Postgres(t) => {
                bind_all!(sqlx::query_as::<Postgres, T>(sql), args)
                    .fetch_all(&mut **t)
                    .await?
            }
        })
    }

    /// Runs a query; returns its first row, if any.
    pub async fn fetch_optional<T: Row>(&mut self, sql: &str, args: &[Arg]) -> Result<Option<T>> {
        Ok(match self {
            Tx::Sqlite(t) => {
                bind_all!(sqlx::query_as::<Sqlite, T>(sql), args)
                    .fetch_optional(&mut **t)
                    .await?
            }
            Tx::Postgres(t) => {
                bind_all!(sqlx::query_as::<Postgres, T>(sql), args)
                    .fetch_optional(&mut **t)
                    .await?
            }
        })
    }

    /// Runs a query that must return exactly one row.
    pub async fn fetch_one<T: Row>(&mut self, sql: &str, args: &[Arg]) -> Result<T> {
        Ok(match self {
            Tx::Sqlite(t) => {
                bind_all!(sqlx::query_as::<Sqlite, T>(sql), args)
                    .fetch_one(&mut **t)
                    .await?
            }
            Tx::Postgres(t) => {
                bind_all!(sqlx::query_as::<Postgres, T>(sql), args)
                    .fetch_one(&mut **t)
                    .await?
            }
        })
    }

    /// Allocates the next id from the named counter (ids are never reused, never skipped by a
    /// committed transaction: the counter update rolls back with the transaction).
    pub async fn next_id(&mut self, counter: &str) -> Result<i64> {
        let (id,): (i64,) = self
            .fetch_one(
                "UPDATE counters SET value = value + 1 WHERE name = $1 RETURNING value",
                &args![counter],
            )
            .await?;
        Ok(id)
    }

    /// Commits.
    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    /// Rolls back (also what dropping does).
    pub async fn rollback(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.rollback().await?,
            Tx::Postgres(t) => t.rollback().await?,
        }
        Ok(())
    }
}

/// A database URL with any password replaced by `***`, for error messages.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            let user = userinfo.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    url.to_owned()
}
