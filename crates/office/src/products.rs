//! Card products and their versioned personalization profiles.
//!
//! A product (a card type the issuer sells: "city card", "student card") has a code, a name and
//! a [`ProductProfile`]: registered or anonymous, deposit and card fee, validity, the purse
//! limits written to the card, the key algorithm, and the applications with their access
//! rights. Profiles are append-only versions: [`Office::revise_product`] writes version n+1 and
//! never touches version n, so a card issued under version n can always be traced to exactly
//! what it was given ([`crate::manufacture::InventoryCard::product_version`]).
//!
//! Limits are validated against what the card can hold: the purse stores balances and limits
//! as 4-byte unsigned integers (docs/COS.md, purse settings), so every limit fits a `u32`.

use serde::Serialize;

use crate::args;
use crate::error::{OfficeError, Result};
use crate::machines::validate_code;
use crate::office::Office;
use crate::operators::{Action, Session};
use crate::store::Tx;

/// Whether a product's cards carry a holder's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CardType {
    /// Issued to a named holder (identity recorded at issuance).
    Registered,
    /// Bearer card: no holder recorded.
    Anonymous,
}

impl CardType {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CardType::Registered => "registered",
            CardType::Anonymous => "anonymous",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Result<CardType> {
        match s {
            "registered" => Ok(CardType::Registered),
            "anonymous" => Ok(CardType::Anonymous),
            other => Err(OfficeError::Invalid {
                what: "card type",
                why: format!("{other:?}: use registered or anonymous"),
            }),
        }
    }
}

/// The key algorithm of a product's applications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Algorithm {
    /// 2-key 3DES (PBOC).
    #[serde(rename = "3des")]
    TripleDes,
    /// SM4.
    #[serde(rename = "sm4")]
    Sm4,
}

impl Algorithm {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::TripleDes => "3des",
            Algorithm::Sm4 => "sm4",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Result<Algorithm> {
        match s {
            "3des" => Ok(Algorithm::TripleDes),
            "sm4" => Ok(Algorithm::Sm4),
            other => Err(OfficeError::Invalid {
                what: "algorithm",
                why: format!("{other:?}: use 3des or sm4"),
            }),
        }
    }

    /// The algorithm as the issuer's personalization takes it.
    pub fn purse_alg(self) -> iccard_crypto::PurseAlg {
        match self {
            Algorithm::TripleDes => iccard_crypto::PurseAlg::TripleDes,
            Algorithm::Sm4 => iccard_crypto::PurseAlg::Sm4,
        }
    }
}

/// An application a product's cards carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationKind {
    /// The electronic purse (PBOC EP, with the ED passbook).
    Purse,
    /// The access-control application (doors, phones).
    Access,
}

impl ApplicationKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplicationKind::Purse => "purse",
            ApplicationKind::Access => "access",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Result<ApplicationKind> {
        match s {
            "purse" => Ok(ApplicationKind::Purse),
            "access" => Ok(ApplicationKind::Access),
            other => Err(OfficeError::Invalid {
                what: "application",
                why: format!("{other:?}: use purse or access"),
            }),
        }
    }
}

/// The rights a purse application may grant.
pub const PURSE_RIGHTS: [&str; 4] = ["load", "purchase", "unload", "passbook"];
/// At most this many access rights: the card's access-rights file holds 8 records.
pub const MAX_ACCESS_RIGHTS: usize = 8;
/// An access right is at most this long: one 16-byte record of the access-rights file.
pub const MAX_ACCESS_RIGHT_LEN: usize = 16;
/// The longest validity accepted, in months (50 years).
pub const MAX_VALIDITY_MONTHS: i64 = 600;

/// One application of a product and the rights it grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductApplication {
    /// Which application.
    pub application: ApplicationKind,
    /// Its rights: for the purse a subset of [`PURSE_RIGHTS`]; for access, zone or door codes
    /// (1 to 16 characters of letters, digits, `-`, `_`, `.`, `:`; at most 8).
    pub rights: Vec<String>,
}

/// A product's personalization profile (one version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductProfile {
    /// Registered or anonymous.
    pub card_type: CardType,
    /// Deposit taken at issuance, minor units (≥ 0).
    pub deposit_minor: i64,
    /// Card fee taken at issuance, minor units (≥ 0).
    pub fee_minor: i64,
    /// Validity from issuance, months (1 to 600).
    pub validity_months: i64,
    /// Maximum purse balance, minor units (1 to 2^32 − 1).
    pub max_balance_minor: i64,
    /// Largest single offline purchase, minor units (0 to the maximum balance).
    pub offline_purchase_limit_minor: i64,
    /// Cumulative offline purchases per day, minor units (from the single-purchase limit to
    /// 2^32 − 1).
    pub offline_cumulative_limit_minor: i64,
    /// Key algorithm.
    pub algorithm: Algorithm,
    /// The applications, each at most once, at least one.
    pub applications: Vec<ProductApplication>,
}

fn invalid(what: &'static str, why: impl Into<String>) -> OfficeError {
    OfficeError::Invalid {
        what,
        why: why.into(),
    }
}

fn validate_access_right(right: &str) -> Result<()> {
    let ok = !right.is_empty()
        && right.len() <= MAX_ACCESS_RIGHT_LEN
        && right
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "access right",
            format!(
                "{right:?}: use 1 to {MAX_ACCESS_RIGHT_LEN} characters of letters, digits, '-', '_', '.' and ':'"
            ),
        ))
    }
}

impl ProductProfile {
    /// Checks every field (see the field docs); the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        const CARD_MAX: i64 = u32::MAX as i64;
        for (what, v) in [
            ("deposit", self.deposit_minor),
            ("card fee", self.fee_minor),
        ] {
            if v < 0 {
                return Err(OfficeError::AmountOutOfRange(format!(
                    "{what} is {v}; it may be 0 but not negative"
                )));
            }
        }
        self.deposit_minor
            .checked_add(self.fee_minor)
            .ok_or_else(|| OfficeError::AmountOutOfRange("deposit + card fee".into()))?;
        if !(1..=MAX_VALIDITY_MONTHS).contains(&self.validity_months) {
            return Err(invalid(
                "validity",
                format!(
                    "{} months: use 1 to {MAX_VALIDITY_MONTHS}",
                    self.validity_months
                ),
            ));
        }
        if !(1..=CARD_MAX).contains(&self.max_balance_minor) {
            return Err(OfficeError::AmountOutOfRange(format!(
                "maximum balance is {}; the card holds 1 to {CARD_MAX}",
                self.max_balance_minor
            )));
        }
        if !(0..=self.max_balance_minor).contains(&self.offline_purchase_limit_minor) {
            return Err(OfficeError::AmountOutOfRange(format!(
                "offline purchase limit is {}; use 0 to the maximum balance {}",
                self.offline_purchase_limit_minor, self.max_balance_minor
            )));
        }
        if !(self.offline_purchase_limit_minor..=CARD_MAX)
            .contains(&self.offline_cumulative_limit_minor)
        {
            return Err(OfficeError::AmountOutOfRange(format!(
                "cumulative offline limit is {}; use the single-purchase limit {} to {CARD_MAX}",
                self.offline_cumulative_limit_minor, self.offline_purchase_limit_minor
            )));
        }
        if self.applications.is_empty() {
            return Err(invalid(
                "applications",
                "a product needs at least one application (purse or access)",
            ));
        }
        for (i, app) in self.applications.iter().enumerate() {
            if self.applications[..i]
                .iter()
                .any(|a| a.application == app.application)
            {
                return Err(invalid(
                    "applications",
                    format!("{} is listed twice", app.application.as_str()),
                ));
            }
            if app.rights.is_empty() {
                return Err(invalid(
                    "access rights",
                    format!(
                        "the {} application grants no right",
                        app.application.as_str()
                    ),
                ));
            }
            for (j, right) in app.rights.iter().enumerate() {
                if app.rights[..j].contains(right) {
                    return Err(invalid(
                        "access rights",
                        format!("{right:?} is listed twice for {}", app.application.as_str()),
                    ));
                }
                match app.application {
                    ApplicationKind::Purse if !PURSE_RIGHTS.contains(&right.as_str()) => {
                        return Err(invalid(
                            "purse right",
                            format!("{right:?}: use {}", PURSE_RIGHTS.join(", ")),
                        ))
                    }
                    ApplicationKind::Purse => {}
                    ApplicationKind::Access => validate_access_right(right)?,
                }
            }
            if app.application == ApplicationKind::Access && app.rights.len() > MAX_ACCESS_RIGHTS {
                return Err(invalid(
                    "access rights",
                    format!(
                        "{} given; the card holds at most {MAX_ACCESS_RIGHTS}",
                        app.rights.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The application of a kind, if the product has it.
    pub fn application(&self, kind: ApplicationKind) -> Option<&ProductApplication> {
        self.applications.iter().find(|a| a.application == kind)
    }
}

/// A product to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    /// Short code (1 to 32 letters, digits, `-`, `_`; unique).
    pub code: String,
    /// Name shown to people (1 to 64 characters).
    pub name: String,
    /// Its first profile (version 1).
    pub profile: ProductProfile,
}

/// A product with its current profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    /// Id.
    pub id: i64,
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
    /// The current profile version (new cards are issued with it).
    pub current_version: i64,
    /// The current profile.
    pub profile: ProductProfile,
    /// When it was created.
    pub created_at_ms: i64,
    /// When its last version was written.
    pub updated_at_ms: i64,
}

/// One version of a product's profile, with who wrote it and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductVersion {
    /// The product's code.
    pub product_code: String,
    /// Version number (1, 2, …).
    pub version: i64,
    /// The profile.
    pub profile: ProductProfile,
    /// The business record that wrote it.
    pub operation_id: i64,
    /// The operator who wrote it.
    pub created_by_login: String,
    /// When.
    pub created_at_ms: i64,
}

fn validate_name(name: &str) -> Result<()> {
    let n = name.chars().count();
    if n == 0 || n > 64 || name.chars().any(char::is_control) || name.trim() != name {
        return Err(invalid(
            "product name",
            format!("{name:?}: use 1 to 64 characters, no control characters or outer spaces"),
        ));
    }
    Ok(())
}

type ProductRow = (i64, String, String, i64, i64, i64);
type VersionRow = (
    i64,
    i64,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    i64,
);

/// A product (with its current profile) by code.
pub async fn product_by_code(tx: &mut Tx, code: &str) -> Result<Product> {
    let row: Option<ProductRow> = tx
        .fetch_optional(
            "SELECT id, code, name, current_version, created_at_ms, updated_at_ms \
             FROM products WHERE code = $1",
            &args![code],
        )
        .await?;
    let row = row.ok_or_else(|| OfficeError::NotFound {
        what: "product",
        key: code.into(),
    })?;
    product_from(tx, row).await
}

/// A product by id.
pub async fn product_by_id(tx: &mut Tx, id: i64) -> Result<Product> {
    let row: Option<ProductRow> = tx
        .fetch_optional(
            "SELECT id, code, name, current_version, created_at_ms, updated_at_ms \
             FROM products WHERE id = $1",
            &args![id],
        )
        .await?;
    let row = row.ok_or_else(|| OfficeError::NotFound {
        what: "product",
        key: format!("id {id}"),
    })?;
    product_from(tx, row).await
}

async fn product_from(tx: &mut Tx, r: ProductRow) -> Result<Product> {
    let version = version(tx, r.0, &r.1, r.3).await?;
    Ok(Product {
        id: r.0,
        code: r.1,
        name: r.2,
        current_version: r.3,
        profile: version.profile,
        created_at_ms: r.4,
        updated_at_ms: r.5,
    })
}

/// One version of a product's profile.
pub async fn version(
    tx: &mut Tx,
    product_id: i64,
    product_code: &str,
    version: i64,
) -> Result<ProductVersion> {
    let row: Option<VersionRow> = tx
        .fetch_optional(
            "SELECT v.version, v.operation_id, o.login, v.card_type, v.deposit_minor, \
             v.fee_minor, v.validity_months, v.max_balance_minor, \
             v.offline_purchase_limit_minor, v.offline_cumulative_limit_minor, v.algorithm, v.created_at_ms \
             FROM product_versions v JOIN operators o ON o.id = v.created_by_operator_id \
             WHERE v.product_id = $1 AND v.version = $2",
            &args![product_id, version],
        )
        .await?;
    let row = row.ok_or_else(|| OfficeError::NotFound {
        what: "product version",
        key: format!("{product_code} version {version}"),
    })?;
    version_from(tx, product_id, product_code, row).await
}

async fn version_from(
    tx: &mut Tx,
    product_id: i64,
    product_code: &str,
    r: VersionRow,
) -> Result<ProductVersion> {
    let apps: Vec<(String, String)> = tx
        .fetch_all(
            "SELECT application, rights FROM product_applications \
             WHERE product_id = $1 AND version = $2 ORDER BY ordinal",
            &args![product_id, r.0],
        )
        .await?;
    let applications = apps
        .into_iter()
        .map(|(application, rights)| {
            Ok(ProductApplication {
                application: ApplicationKind::parse(&application)
                    .map_err(|e| OfficeError::Corrupt(e.to_string()))?,
                rights: rights.split_whitespace().map(str::to_owned).collect(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let corrupt = |e: OfficeError| OfficeError::Corrupt(e.to_string());
    Ok(ProductVersion {
        product_code: product_code.into(),
        version: r.0,
        operation_id: r.1,
        created_by_login: r.2,
        profile: ProductProfile {
            card_type: CardType::parse(&r.3).map_err(corrupt)?,
            deposit_minor: r.4,
            fee_minor: r.5,
            validity_months: r.6,
            max_balance_minor: r.7,
            offline_purchase_limit_minor: r.8,
            offline_cumulative_limit_minor: r.9,
            algorithm: Algorithm::parse(&r.10).map_err(corrupt)?,
            applications,
        },
        created_at_ms: r.11,
    })
}

async fn insert_version(
    tx: &mut Tx,
    product_id: i64,
    version: i64,
    profile: &ProductProfile,
    operation_id: i64,
    operator_id: i64,
    at: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO product_versions (product_id, version, operation_id, created_by_operator_id, \
         created_at_ms, card_type, deposit_minor, fee_minor, validity_months, max_balance_minor, \
         offline_purchase_limit_minor, offline_cumulative_limit_minor, algorithm) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &args![
            product_id,
            version,
            operation_id,
            operator_id,
            at,
            profile.card_type.as_str(),
            profile.deposit_minor,
            profile.fee_minor,
            profile.validity_months,
            profile.max_balance_minor,
            profile.offline_purchase_limit_minor,
            profile.offline_cumulative_limit_minor,
            profile.algorithm.as_str()
        ],
    )
    .await?;
    for (ordinal, app) in profile.applications.iter().enumerate() {
        tx.execute(
            "INSERT INTO product_applications (product_id, version, ordinal, application, rights) \
             VALUES ($1, $2, $3, $4, $5)",
            &args![
                product_id,
                version,
                i64::try_from(ordinal).unwrap_or(i64::MAX),
                app.application.as_str(),
                app.rights.join(" ")
            ],
        )
        .await?;
    }
    Ok(())
}

fn profile_summary(p: &ProductProfile) -> String {
    let apps: Vec<String> = p
        .applications
        .iter()
        .map(|a| format!("{}[{}]", a.application.as_str(), a.rights.join(",")))
        .collect();
    format!(
        "{}, deposit {}, fee {}, {} months, max balance {}, offline {}/{}, {}, {}",
        p.card_type.as_str(),
        p.deposit_minor,
        p.fee_minor,
        p.validity_months,
        p.max_balance_minor,
        p.offline_purchase_limit_minor,
        p.offline_cumulative_limit_minor,
        p.algorithm.as_str(),
        apps.join(" ")
    )
}

impl Office {
    /// Creates a card product with its profile as version 1 (administrators).
    pub async fn create_product(&self, s: &Session, new: NewProduct) -> Result<Product> {
        let subject = format!("product {}", new.code);
        let (mut tx, at) = self.begin(s, Action::DefineProduct, &subject).await?;
        let result = async {
            validate_code("product code", &new.code)?;
            validate_name(&new.name)?;
            new.profile.validate()?;
            let exists: Option<(i64,)> = tx
                .fetch_optional("SELECT id FROM products WHERE code = $1", &args![&new.code])
                .await?;
            if exists.is_some() {
                return Err(OfficeError::Duplicate {
                    what: "product",
                    key: new.code.clone(),
                });
            }
            let id = tx.next_id("product").await?;
            tx.execute(
                "INSERT INTO products (id, code, name, current_version, created_at_ms, \
                 updated_at_ms) VALUES ($1, $2, $3, 1, $4, $4)",
                &args![id, &new.code, &new.name, at],
            )
            .await?;
            let op = self
                .record_operation(&mut tx, s, "define_product", at, None, None)
                .await?;
            insert_version(&mut tx, id, 1, &new.profile, op, s.operator_id, at).await?;
            let product = product_by_id(&mut tx, id).await?;
            let detail = format!("version 1: {}", profile_summary(&new.profile));
            Ok((product, detail))
        }
        .await;
        self.finish(s, Action::DefineProduct, &subject, at, tx, result)
            .await
    }

    /// Changes a product's profile: writes version n+1 and makes it current (administrators).
    /// Cards already issued keep their version. A profile equal to the current one is refused.
    pub async fn revise_product(
        &self,
        s: &Session,
        code: &str,
        profile: ProductProfile,
    ) -> Result<Product> {
        let subject = format!("product {code}");
        let (mut tx, at) = self.begin(s, Action::ReviseProduct, &subject).await?;
        let result = async {
            profile.validate()?;
            let current = product_by_code(&mut tx, code).await?;
            if current.profile == profile {
                return Err(invalid(
                    "product profile",
                    format!(
                        "it equals version {} of {code}; nothing to change",
                        current.current_version
                    ),
                ));
            }
            let next = current
                .current_version
                .checked_add(1)
                .ok_or_else(|| OfficeError::Corrupt("product version overflow".into()))?;
            let op = self
                .record_operation(&mut tx, s, "revise_product", at, None, None)
                .await?;
            insert_version(&mut tx, current.id, next, &profile, op, s.operator_id, at).await?;
            tx.execute(
                "UPDATE products SET current_version = $1, updated_at_ms = $2 WHERE id = $3",
                &args![next, at, current.id],
            )
            .await?;
            let product = product_by_id(&mut tx, current.id).await?;
            let detail = format!("version {next}: {}", profile_summary(&profile));
            Ok((product, detail))
        }
        .await;
        self.finish(s, Action::ReviseProduct, &subject, at, tx, result)
            .await
    }

    /// A product with its current profile.
    pub async fn product(&self, code: &str) -> Result<Product> {
        let mut tx = self.store().read().await?;
        let p = product_by_code(&mut tx, code).await?;
        tx.rollback().await?;
        Ok(p)
    }

    /// Every product, by code.
    pub async fn products(&self) -> Result<Vec<Product>> {
        let mut tx = self.store().read().await?;
        let rows: Vec<ProductRow> = tx
            .fetch_all(
                "SELECT id, code, name, current_version, created_at_ms, updated_at_ms \
                 FROM products ORDER BY id",
                &[],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(product_from(&mut tx, r).await?);
        }
        tx.rollback().await?;
        out.sort_by(|a, b| a.code.cmp(&b.code));
        Ok(out)
    }

    /// One version of a product's profile.
    pub async fn product_version(&self, code: &str, version_number: i64) -> Result<ProductVersion> {
        let mut tx = self.store().read().await?;
        let p = product_by_code(&mut tx, code).await?;
        let v = version(&mut tx, p.id, code, version_number).await?;
        tx.rollback().await?;
        Ok(v)
    }

    /// Every version of a product's profile, oldest first.
    pub async fn product_history(&self, code: &str) -> Result<Vec<ProductVersion>> {
        let mut tx = self.store().read().await?;
        let p = product_by_code(&mut tx, code).await?;
        let mut out = Vec::new();
        for v in 1..=p.current_version {
            out.push(version(&mut tx, p.id, code, v).await?);
        }
        tx.rollback().await?;
        Ok(out)
    }
}
