//! Issuance: a stocked card becomes a personal card.
//!
//! At a recharge point, an issuance clerk puts a tested card from stock in the reader:
//!
//! 1. The chip serial is read (GET DATA 9F7F) and the card found in the inventory: it must be
//!    `in_stock`, or `allocated` to this operator or to this machine's branch. Its product (the
//!    one the body was printed for) gives the profile: registered or anonymous, deposit and fee,
//!    validity, limits, algorithm.
//! 2. A card number is assigned (issuer number ‖ sequence ‖ Luhn digit, 20 digits: the card's
//!    application serial) and an **issuance job** committed (`personalizing`) before the first
//!    personalization APDU.
//! 3. The real personalization script runs ([`iccard_issuer::personalize::personalize_with`]):
//!    the transport key replaced by the card master key, the application areas with their access
//!    rights, the card keys diversified **by the keystore** (only card keys leave it) and written
//!    encrypted under secure messaging, the reader password (PIN), the card SECURED.
//! 4. One transaction ends the job (`done`), moves the inventory card to `issued`, opens the
//!    shadow account, records the holder (registered products), and posts the deposit and the
//!    card fee collected in cash (Dr cash / Cr deposits held + card fee income).
//!
//! An interrupted personalization is settled on the next attempt with the same card, from the
//! card's own state (GET DATA 9F70): `SECURED` with the job's card number → the script had
//! finished, step 4 runs; `OP_READY` → personalized again from the start with the same card
//! number, which works while the transport key is still in place; anything else, or a second
//! failure → rolled back: the job ends `rolled_back`, the card is voided with the reason (it goes
//! to refurbishment), and nothing was posted.
//!
//! The first recharge is an ordinary [`Office::recharge`] right after.

use iccard_apdu::{hex as apdu_hex, tlv, Command as Apdu};
use iccard_cos::CardState;
use iccard_crypto::PurseAlg;
use iccard_issuer::keys::IssuerKeys;
use iccard_issuer::personalize::{self, CardNumber, Personalization, PurseProfile};
use iccard_issuer::script::{Admin, ScriptError};
use iccard_link::CardChannel;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::args;
use crate::error::{OfficeError, Result};
use crate::keystore::Keystore;
use crate::ledger::CardAccount;
use crate::machines::MachineKind;
use crate::manufacture::{self, InventoryChange, InventoryState};
use crate::office::{Office, OpenCard};
use crate::operators::{Action, Session};
use crate::products::{self, Algorithm, CardType};
use crate::recharge::issuer_id_of;

/// The master key version personalization uses for every card key.
pub const CARD_KEY_VERSION: u8 = 1;

/// The issuer's [`Keystore`] as personalization's [`IssuerKeys`]: card keys of version
/// [`CARD_KEY_VERSION`], diversified inside the keystore.
pub struct KeystoreIssuerKeys<'k>(pub &'k dyn Keystore);

impl IssuerKeys for KeystoreIssuerKeys<'_> {
    fn derive(
        &self,
        master: &str,
        alg: PurseAlg,
        data: &[u8; 8],
    ) -> std::result::Result<Zeroizing<[u8; 16]>, ScriptError> {
        self.0
            .card_key(master, CARD_KEY_VERSION, alg, data)
            .map_err(|e| ScriptError::Invalid(format!("keystore: {e}")))
    }
}

/// The holder of a registered card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HolderData {
    /// Name (1 to 40 characters).
    pub name: String,
    /// Identity document number (1 to 18 letters and digits).
    pub id_number: String,
}

/// What the clerk asks for.
#[derive(Clone)]
pub struct IssueRequest {
    /// The reader password (PIN): 4 to 12 digits.
    pub pin: Zeroizing<String>,
    /// The holder: required for a registered product, refused for an anonymous one.
    pub holder: Option<HolderData>,
    /// The issuance date, BCD YYYYMMDD: the start of validity.
    pub date: [u8; 4],
}

impl std::fmt::Debug for IssueRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueRequest")
            .field("holder", &self.holder)
            .field("date", &self.date)
            .finish_non_exhaustive()
    }
}

/// A card issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssueReceipt {
    /// The issuance job.
    pub job_id: i64,
    /// The card number (= application serial).
    pub card_number: String,
    /// The chip serial.
    pub chip_serial: String,
    /// The product code.
    pub product_code: String,
    /// The product profile version.
    pub product_version: i64,
    /// Registered or anonymous.
    pub card_type: CardType,
    /// Deposit collected, minor units.
    pub deposit_minor: i64,
    /// Card fee collected, minor units.
    pub fee_minor: i64,
    /// Start of validity YYYYMMDD.
    pub valid_from: String,
    /// End of validity YYYYMMDD.
    pub valid_to: String,
    /// The operator.
    pub operator: String,
    /// The machine.
    pub machine_number: String,
    /// Whether this finished an interrupted personalization.
    pub resumed: bool,
    /// The shadow account.
    pub account: CardAccount,
}

/// Luhn check digit of a string of decimal digits.
pub fn luhn_digit(digits: &str) -> u8 {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    ((10 - sum % 10) % 10) as u8
}

/// Checks a card number typed by a person: 20 digits, the right Luhn digit, this issuer's
/// prefix. Returns it as the application serial.
pub fn parse_card_number(issuer_number: &str, s: &str) -> Result<String> {
    let bad = |why: String| OfficeError::Invalid {
        what: "card number",
        why,
    };
    if s.len() != 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("{s:?}: a card number is 20 digits")));
    }
    if !s.starts_with(issuer_number) {
        return Err(bad(format!(
            "{s} does not start with this issuer's number {issuer_number}: not one of our cards"
        )));
    }
    let (body, check) = s.split_at(19);
    if luhn_digit(body) != check.as_bytes()[0] - b'0' {
        return Err(bad(format!(
            "{s}: the check digit is wrong (a typing error?)"
        )));
    }
    Ok(s.to_owned())
}

/// The card number for sequence `seq`: issuer number ‖ seq (zero-padded to 19 − len digits) ‖
/// Luhn digit.
pub fn card_number(issuer_number: &str, seq: i64) -> Result<String> {
    let width = 19usize.saturating_sub(issuer_number.len());
    let body = format!("{issuer_number}{seq:0width$}");
    if body.len() != 19 || seq < 0 {
        return Err(OfficeError::Invalid {
            what: "card number sequence",
            why: format!("sequence {seq} does not fit {width} digits after issuer {issuer_number}"),
        });
    }
    let d = luhn_digit(&body);
    Ok(format!("{body}{d}"))
}

/// A BCD date `months` later (the day clamped to 28 where needed).
pub fn add_months(date: [u8; 4], months: i64) -> Result<[u8; 4]> {
    let digits = apdu_hex::encode(&date);
    let num = |r: std::ops::Range<usize>| digits[r].parse::<i64>().unwrap_or(0);
    let (y, m, d) = (num(0..4), num(4..6), num(6..8));
    let total = y * 12 + (m - 1) + months;
    let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let nd = d.min(28);
    let s = format!("{ny:04}{nm:02}{nd:02}");
    let v = iccard_apdu::bcd::encode_digits(&s, 4).map_err(|e| OfficeError::Invalid {
        what: "date",
        why: e.to_string(),
    })?;
    Ok([v[0], v[1], v[2], v[3]])
}

fn validate_holder(h: &HolderData) -> Result<()> {
    let n = h.name.chars().count();
    if n == 0 || n > 40 || h.name.chars().any(char::is_control) {
        return Err(OfficeError::Invalid {
            what: "holder name",
            why: "1 to 40 characters, no control characters".into(),
        });
    }
    if h.id_number.is_empty()
        || h.id_number.len() > 18
        || !h.id_number.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(OfficeError::Invalid {
            what: "holder id number",
            why: "1 to 18 letters and digits".into(),
        });
    }
    Ok(())
}

fn card_error(e: ScriptError) -> OfficeError {
    OfficeError::Card(e.to_string())
}

/// Reads the chip serial and the card's life-cycle state.
fn chip_and_state<C: CardChannel>(
    channel: C,
) -> (std::result::Result<([u8; 8], u8), ScriptError>, C) {
    let mut admin = Admin::new(channel);
    let r = (|| {
        admin.channel().reset()?;
        let chip = personalize::chip_serial(&mut admin)?;
        let data = admin.ok(
            "GET DATA card state",
            &Apdu::new(0x80, 0xCA, 0x9F, 0x70).with_ne(256),
        )?;
        let state = tlv::find(&data, 0x9F70)
            .and_then(|v| v.first().copied())
            .ok_or_else(|| ScriptError::Invalid("the card state answer holds no 9F70".into()))?;
        Ok((chip, state))
    })();
    (r, admin.into_inner())
}

/// An issuance job row.
struct Job {
    id: i64,
    card_number: String,
}

struct Plan {
    job: Job,
    chip_serial: String,
    product_code: String,
    product_version: i64,
    card_type: CardType,
    deposit_minor: i64,
    fee_minor: i64,
    alg: PurseAlg,
    profile: PurseProfile,
    resumed: bool,
}

impl Office {
    /// Issues the card in `channel` (module docs).
    pub async fn issue_card<C: CardChannel>(
        &self,
        s: &Session,
        keys: &dyn Keystore,
        channel: &mut C,
        req: &IssueRequest,
    ) -> Result<IssueReceipt> {
        if let Some(h) = &req.holder {
            validate_holder(h)?;
        }
        personalize::pin_bytes(&req.pin).map_err(|e| OfficeError::Invalid {
            what: "PIN",
            why: e.to_string(),
        })?;
        let (read, _) = chip_and_state(&mut *channel);
        let (chip, state) = read.map_err(card_error)?;
        let chip_serial = manufacture::format_chip_serial(u64::from_be_bytes(chip));
        let subject = format!("chip {chip_serial}");
        let plan = self.plan_issue(s, &chip_serial, req, &subject).await?;
        let blank = state == CardState::OpReady as u8;
        let finished = state == CardState::Secured as u8;
        if blank {
            let mut p = Personalization::new(&plan.job.card_number, &req.pin, plan.alg);
            p.purse = plan.profile.clone();
            if let Err(e) =
                personalize::personalize_with(&mut *channel, &p, &KeystoreIssuerKeys(keys))
            {
                if plan.resumed {
                    // Interrupted twice, or taken over by an earlier attempt (the transport
                    // key is gone): this card cannot be finished here.
                    return self
                        .roll_back(
                            s,
                            &plan,
                            &subject,
                            &format!("personalizing again failed: {e}"),
                        )
                        .await;
                }
                return self
                    .refuse(
                        s,
                        Action::IssueCard,
                        &subject,
                        OfficeError::Card(format!(
                            "personalization of card {} stopped: {e}; present the card again to finish or roll back",
                            plan.job.card_number
                        )),
                    )
                    .await;
            }
        } else if finished && plan.resumed {
            // The script had finished before the interruption: check it is our card number.
            let card = iccard_terminal::PurseCard::open(&mut *channel).map_err(|e| {
                OfficeError::Card(format!("the personalized card cannot be read: {e}"))
            })?;
            let on_card = apdu_hex::encode(&card.identity().application_serial);
            let expected =
                apdu_hex::encode(&CardNumber::serial(&plan.job.card_number).map_err(card_error)?);
            if on_card != expected {
                return self
                    .roll_back(s, &plan, &subject, "the card holds another card number")
                    .await;
            }
        } else if plan.resumed {
            return self
                .roll_back(
                    s,
                    &plan,
                    &subject,
                    &format!("personalization was interrupted half-way (card state {state:02X})"),
                )
                .await;
        } else {
            return self
                .refuse(
                    s,
                    Action::IssueCard,
                    &subject,
                    OfficeError::Card(format!(
                        "card {chip_serial} is not a blank card (state {state:02X}): it cannot be issued"
                    )),
                )
                .await;
        };
        self.complete_issue(s, &plan, req, &subject).await
    }

    /// Step 1–2: checks, card number, job committed (or the unfinished job found again).
    async fn plan_issue(
        &self,
        s: &Session,
        chip_serial: &str,
        req: &IssueRequest,
        subject: &str,
    ) -> Result<Plan> {
        let (mut tx, at) = self.begin(s, Action::IssueCard, subject).await?;
        let result = async {
            let rp = self
                .require_machine(&mut tx, s, MachineKind::RechargePoint)
                .await?;
            // The deposit and fee are cash in the clerk's drawer.
            crate::shifts::require_open_shift(&mut tx, s).await?;
            let inv = manufacture::inventory_card(&mut tx, chip_serial).await?;
            let open_job: Option<(i64, String)> = tx
                .fetch_optional(
                    "SELECT id, card_number FROM issuance_jobs WHERE chip_serial = $1 AND state = 'personalizing'",
                    &args![chip_serial],
                )
                .await?;
            match inv.state {
                InventoryState::InStock => {}
                InventoryState::Allocated => {
                    let ok = match &inv.holder {
                        Some(manufacture::Holder::Operator(login)) => *login == s.login,
                        Some(manufacture::Holder::Branch(code)) => *code == rp.branch_code,
                        None => false,
                    };
                    if !ok {
                        return Err(OfficeError::Invalid {
                            what: "card",
                            why: format!(
                                "chip {chip_serial} is allocated to {}, not to you or this branch",
                                inv.holder.as_ref().map(ToString::to_string).unwrap_or_default()
                            ),
                        });
                    }
                }
                other => {
                    return Err(OfficeError::Invalid {
                        what: "card",
                        why: format!(
                            "chip {chip_serial} is {} in the inventory: only a card in stock (or allocated to you) can be issued",
                            other.as_str()
                        ),
                    })
                }
            }
            let product = products::product_by_code(&mut tx, &inv.product_code).await?;
            let prof = &product.profile;
            match (prof.card_type, &req.holder) {
                (CardType::Registered, None) => {
                    return Err(OfficeError::Invalid {
                        what: "holder",
                        why: format!(
                            "product {} is registered: give the holder's name and id number",
                            product.code
                        ),
                    })
                }
                (CardType::Anonymous, Some(_)) => {
                    return Err(OfficeError::Invalid {
                        what: "holder",
                        why: format!("product {} is anonymous: no holder is recorded", product.code),
                    })
                }
                _ => {}
            }
            let settings = crate::office::read_settings(&mut tx)
                .await?
                .ok_or(OfficeError::NotInitialized)?;
            let (job, resumed) = match open_job {
                Some((id, card_number)) => (Job { id, card_number }, true),
                None => {
                    let seq = tx.next_id("card_number").await?;
                    let number = card_number(&settings.issuer_number, seq)?;
                    let id = tx.next_id("issuance_job").await?;
                    tx.execute(
                        "INSERT INTO issuance_jobs (id, chip_serial, card_number, product_id, \
                         product_version, state, operator_id, machine_id, started_at_ms, note) \
                         VALUES ($1, $2, $3, $4, $5, 'personalizing', $6, $7, $8, '')",
                        &args![
                            id,
                            chip_serial,
                            &number,
                            product.id,
                            product.current_version,
                            s.operator_id,
                            s.machine_id,
                            at
                        ],
                    )
                    .await?;
                    (
                        Job {
                            id,
                            card_number: number,
                        },
                        false,
                    )
                }
            };
            let alg = match prof.algorithm {
                Algorithm::TripleDes => PurseAlg::TripleDes,
                Algorithm::Sm4 => PurseAlg::Sm4,
            };
            let u32_of = |what: &str, v: i64| {
                u32::try_from(v).map_err(|_| {
                    OfficeError::AmountOutOfRange(format!("{what} {v} does not fit the card"))
                })
            };
            let mut profile = PurseProfile {
                issuer_id: issuer_id_of(&settings.issuer_number)?,
                start_date: req.date,
                expiry_date: add_months(req.date, prof.validity_months)?,
                ..PurseProfile::default()
            };
            profile.settings.max_balance = u32_of("maximum balance", prof.max_balance_minor)?;
            profile.settings.purchase_limit =
                u32_of("offline purchase limit", prof.offline_purchase_limit_minor)?;
            profile.settings.daily_limit =
                u32_of("offline cumulative limit", prof.offline_cumulative_limit_minor)?;
            let plan = Plan {
                job,
                chip_serial: chip_serial.to_owned(),
                product_code: product.code.clone(),
                product_version: product.current_version,
                card_type: prof.card_type,
                deposit_minor: prof.deposit_minor,
                fee_minor: prof.fee_minor,
                alg,
                profile,
                resumed,
            };
            let detail = format!(
                "{} card number {} for product {} v{}",
                if resumed { "resuming" } else { "personalizing" },
                plan.job.card_number,
                plan.product_code,
                plan.product_version
            );
            Ok((plan, detail))
        }
        .await;
        self.finish(s, Action::IssueCard, subject, at, tx, result)
            .await
    }

    async fn roll_back<T>(&self, s: &Session, plan: &Plan, subject: &str, why: &str) -> Result<T> {
        let (mut tx, at) = self.begin(s, Action::IssueCard, subject).await?;
        let reason = format!("issuance of {} rolled back: {why}", plan.job.card_number);
        let result = async {
            tx.execute(
                "UPDATE issuance_jobs SET state = 'rolled_back', finished_at_ms = $1, note = $2 WHERE id = $3",
                &args![at, &reason, plan.job.id],
            )
            .await?;
            let op = self
                .record_operation(&mut tx, s, "issue_rolled_back", at, None, None)
                .await?;
            manufacture::change_state(
                &mut tx,
                &plan.chip_serial,
                &InventoryChange {
                    to: InventoryState::Void,
                    holder: None,
                    application_serial: None,
                    product_version: None,
                    reason: format!("{why}; send to refurbishment"),
                },
                s,
                op,
                at,
            )
            .await?;
            Ok(((), reason.clone()))
        }
        .await;
        self.finish(s, Action::IssueCard, subject, at, tx, result)
            .await?;
        Err(OfficeError::Card(format!(
            "{reason}: the card was voided and nothing was posted"
        )))
    }

    /// Step 4: the job done, the inventory card issued, the account opened with its deposit
    /// and fee, the holder recorded; one transaction.
    async fn complete_issue(
        &self,
        s: &Session,
        plan: &Plan,
        req: &IssueRequest,
        subject: &str,
    ) -> Result<IssueReceipt> {
        let (mut tx, at) = self.begin(s, Action::IssueCard, subject).await?;
        let result = async {
            let rp = self
                .require_machine(&mut tx, s, MachineKind::RechargePoint)
                .await?;
            let application_serial = plan.job.card_number.clone();
            let (account, op) = self
                .open_card_in(
                    &mut tx,
                    s,
                    at,
                    &rp,
                    &OpenCard {
                        application_serial: application_serial.clone(),
                        deposit_minor: plan.deposit_minor,
                        fee_minor: plan.fee_minor,
                    },
                )
                .await?;
            // The validity the card itself carries, for expiry.
            tx.execute(
                "UPDATE cards SET valid_until = $1 WHERE id = $2",
                &args![apdu_hex::encode(&plan.profile.expiry_date), account.id],
            )
            .await?;
            let n = tx
                .execute(
                    "UPDATE issuance_jobs SET state = 'done', finished_at_ms = $1, card_id = $2 \
                     WHERE id = $3 AND state = 'personalizing'",
                    &args![at, account.id, plan.job.id],
                )
                .await?;
            if n != 1 {
                return Err(OfficeError::Corrupt(format!(
                    "issuance job {} is no longer personalizing",
                    plan.job.id
                )));
            }
            manufacture::change_state(
                &mut tx,
                &plan.chip_serial,
                &InventoryChange {
                    to: InventoryState::Issued,
                    holder: None,
                    application_serial: Some(application_serial.clone()),
                    product_version: Some(plan.product_version),
                    reason: format!("issued as {application_serial}"),
                },
                s,
                op,
                at,
            )
            .await?;
            if let Some(h) = &req.holder {
                tx.execute(
                    "INSERT INTO card_holders (card_id, name, id_number, recorded_at_ms, operation_id) \
                     VALUES ($1, $2, $3, $4, $5)",
                    &args![account.id, &h.name, &h.id_number, at, op],
                )
                .await?;
            }
            let receipt = IssueReceipt {
                job_id: plan.job.id,
                card_number: application_serial.clone(),
                chip_serial: plan.chip_serial.clone(),
                product_code: plan.product_code.clone(),
                product_version: plan.product_version,
                card_type: plan.card_type,
                deposit_minor: plan.deposit_minor,
                fee_minor: plan.fee_minor,
                valid_from: apdu_hex::encode(&plan.profile.start_date),
                valid_to: apdu_hex::encode(&plan.profile.expiry_date),
                operator: s.login.clone(),
                machine_number: rp.machine_number.clone(),
                resumed: plan.resumed,
                account,
            };
            let detail = format!(
                "issued {} (chip {}, product {} v{}), deposit {}, fee {}{}",
                receipt.card_number,
                receipt.chip_serial,
                receipt.product_code,
                receipt.product_version,
                receipt.deposit_minor,
                receipt.fee_minor,
                if plan.resumed { ", after an interruption" } else { "" }
            );
            Ok((receipt, detail))
        }
        .await;
        self.finish(s, Action::IssueCard, subject, at, tx, result)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_carry_the_issuer_and_a_luhn_digit() {
        let n = card_number("31000001", 42).unwrap();
        assert_eq!(n.len(), 20);
        assert!(n.starts_with("3100000100000000042"));
        assert_eq!(parse_card_number("31000001", &n).unwrap(), n);
        let mut typo = n.clone().into_bytes();
        typo[12] = if typo[12] == b'9' { b'8' } else { typo[12] + 1 };
        let typo = String::from_utf8(typo).unwrap();
        assert!(parse_card_number("31000001", &typo).is_err());
        assert!(parse_card_number("31000002", &n).is_err());
        assert!(parse_card_number("31000001", "123").is_err());
        // The Luhn digit of the classic example 7992739871 is 3.
        assert_eq!(luhn_digit("7992739871"), 3);
    }

    #[test]
    fn months_are_added_on_bcd_dates() {
        assert_eq!(
            add_months([0x20, 0x26, 0x03, 0x14], 12).unwrap(),
            [0x20, 0x27, 0x03, 0x14]
        );
        assert_eq!(
            add_months([0x20, 0x26, 0x11, 0x30], 3).unwrap(),
            [0x20, 0x27, 0x02, 0x28]
        );
    }
}
