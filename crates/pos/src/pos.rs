//! The point of use: a terminal with its PSAM, its journal and its loss list, selling offline.
//!
//! [`PointOfUse::sell`] checks the card against the loss list (a listed card is refused with
//! [`PosError::ListedCard`], so the caller can lock it), refuses to work when the list is older
//! than the configured maximum age, settles any purchase of the same card left pending by an
//! interruption, then runs the PBOC purchase with the PSAM, journaled before DEBIT FOR PURCHASE
//! leaves. [`PointOfUse::start_metered`] opens a metered session (a phone call): one purchase
//! of the tariff per unit as the meter ticks, each unit journaled, stopping when the balance no
//! longer covers the next unit.

use crate::error::{PosError, Result};
use crate::journal::{key_of, Journal, JournalRecord, Key};
use crate::losslist::{DeltaOutcome, LossList, LossListDelta};
use crate::record::RecordStatus;
use iccard_apdu::hex;
use iccard_link::CardChannel;
use iccard_terminal::{
    recover, PendingTransaction, Psam, Purchase, PurchaseOutcome, PurseCard, Recovery,
    TerminalError, TransactionTime,
};
use std::path::Path;

/// What a point of use is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PosConfig {
    /// The loss list's maximum age for selling offline, in seconds.
    pub max_list_age_secs: u64,
    /// The purse key index to use.
    pub key_index: u8,
    /// The issuer factor, for two-level key diversification in the PSAM.
    pub issuer_factor: Option<[u8; 8]>,
}

impl Default for PosConfig {
    /// A day's maximum list age, key index 01, one diversification level.
    fn default() -> Self {
        Self {
            max_list_age_secs: 86_400,
            key_index: 0x01,
            issuer_factor: None,
        }
    }
}

/// How a purchase left pending by an interruption was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The card had executed it: the proof was fetched; the row is `recovered`.
    CompletedEarlier(JournalRecord),
    /// The card had not: it was run again, once, under a new terminal serial (`recovered`);
    /// the interrupted row is `failed` ("repeated as …").
    Repeated {
        /// The interrupted row, now `failed`.
        superseded: Box<JournalRecord>,
        /// The repeat, `recovered` (or `suspicious`).
        record: Box<JournalRecord>,
    },
    /// The card had not executed it and refused the repeat: the row is `failed`.
    Failed(JournalRecord),
    /// The card cannot tell (used elsewhere since, no witness in its log): the row stays
    /// `pending` for the back office to settle.
    Undetermined {
        /// The pending purchase.
        pending: PendingTransaction,
        /// Why.
        why: String,
    },
}

/// A purchase made at the point of use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    /// Its journal row (`normal`, or `suspicious` when the card's MAC2 was not accepted).
    pub record: JournalRecord,
    /// The card's balance after it.
    pub balance_after_fen: u32,
    /// Earlier interrupted purchases of the same card settled before this one.
    pub resolved: Vec<Resolution>,
}

/// A terminal selling offline.
pub struct PointOfUse<P: CardChannel> {
    psam: Psam<P>,
    journal: Journal,
    loss_list: LossList,
    config: PosConfig,
}

impl<P: CardChannel> std::fmt::Debug for PointOfUse<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointOfUse")
            .field("terminal_id", &hex::encode(&self.psam.terminal_id()))
            .field("journal", &self.journal)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A completed charge: the journal row and the flow's outcome.
struct Charged {
    record: JournalRecord,
    outcome: PurchaseOutcome,
}

impl<P: CardChannel> PointOfUse<P> {
    /// A point of use with this PSAM, its journal and loss list in the database file `db`.
    pub fn open(psam: Psam<P>, db: impl AsRef<Path>, config: PosConfig) -> Result<Self> {
        let db = db.as_ref();
        Ok(Self {
            journal: Journal::open(db)?,
            loss_list: LossList::open(db)?,
            psam,
            config,
        })
    }

    /// The terminal id (from the PSAM).
    pub fn terminal_id(&self) -> [u8; 6] {
        self.psam.terminal_id()
    }

    /// The configuration.
    pub fn config(&self) -> &PosConfig {
        &self.config
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The journal, for the upload.
    pub fn journal_mut(&mut self) -> &mut Journal {
        &mut self.journal
    }

    /// The loss list.
    pub fn loss_list(&self) -> &LossList {
        &self.loss_list
    }

    /// The PSAM.
    pub fn psam(&mut self) -> &mut Psam<P> {
        &mut self.psam
    }

    /// Applies a loss-list delta received at `at`.
    pub fn update_loss_list(
        &mut self,
        delta: &LossListDelta,
        at: &TransactionTime,
    ) -> Result<DeltaOutcome> {
        self.loss_list.apply_delta(delta, at)
    }

    /// Refuses a listed card, then a stale list.
    fn admit<C: CardChannel>(&self, card: &PurseCard<C>, when: &TransactionTime) -> Result<()> {
        let identity = card.identity();
        let serial = hex::encode(&identity.application_serial);
        if self.loss_list.contains(&serial)? {
            return Err(PosError::ListedCard {
                card_number: identity.card_number(),
                application_serial: serial,
                list_version: self.loss_list.version()?,
            });
        }
        self.loss_list
            .check_fresh(when, self.config.max_list_age_secs)
    }

    /// Sells `amount_fen` to the card on `card` at `when` (module documentation). Pass
    /// `&mut channel` to keep the channel (to lock a listed card, for instance).
    pub fn sell<C: CardChannel>(
        &mut self,
        card: C,
        amount_fen: u32,
        when: &TransactionTime,
    ) -> Result<Sale> {
        let mut card = PurseCard::open(card)?;
        self.admit(&card, when)?;
        let resolved = self.resolve(&mut card)?;
        let charged = self.charge(&mut card, amount_fen, when, None)?;
        Ok(Sale {
            record: charged.record,
            balance_after_fen: charged.outcome.balance_after_fen,
            resolved,
        })
    }

    /// Settles this card's purchases left pending by an interruption (answer lost, crash):
    /// each is found completed (proof fetched), or repeated once, or failed; an undetermined
    /// one stays pending. Errors of the link or of the card stop it (the rows stay pending).
    pub fn resolve<C: CardChannel>(&mut self, card: &mut PurseCard<C>) -> Result<Vec<Resolution>> {
        let pending = self
            .journal
            .pending_of(&card.identity().application_serial)?;
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            out.push(self.resolve_one(card, &p)?);
        }
        Ok(out)
    }

    fn resolve_one<C: CardChannel>(
        &mut self,
        card: &mut PurseCard<C>,
        p: &PendingTransaction,
    ) -> Result<Resolution> {
        let key: Key = key_of(p).ok_or_else(|| {
            PosError::Input("a pending purchase without a terminal serial".into())
        })?;
        match recover(card, p) {
            Ok(Recovery::Completed { proof }) => {
                let outcome = PurchaseOutcome {
                    card_number: p.card_number.clone(),
                    amount_fen: p.amount_fen,
                    balance_before_fen: p.balance_before_fen,
                    balance_after_fen: p.balance_before_fen.saturating_sub(p.amount_fen),
                    offline_serial: p.serial,
                    terminal_id: p.terminal_id,
                    terminal_serial: key.1,
                    when: p.when,
                    alg: String::new(),
                    key_version: p.key_version,
                    tac: proof.map(|x| hex::encode(&x.tac)),
                    mac2: proof.map(|x| hex::encode(&x.mac)),
                    mac2_verified: None,
                    recovery: None,
                    suspicious: None,
                };
                let note = if proof.is_some() {
                    "completed before the interruption; proof fetched from the card"
                } else {
                    "completed before the interruption (the card's log shows it); no proof left"
                };
                let record =
                    self.journal
                        .complete(&outcome, RecordStatus::Recovered, Some(note))?;
                Ok(Resolution::CompletedEarlier(record))
            }
            Ok(Recovery::NotDone) => {
                match self.charge(card, p.amount_fen, &p.when, Some(key.clone())) {
                    Ok(charged) => {
                        let superseded = self
                            .journal
                            .record_by(&key)?
                            .ok_or_else(|| PosError::Input("the repeated row vanished".into()))?;
                        Ok(Resolution::Repeated {
                            superseded: Box::new(superseded),
                            record: Box::new(charged.record),
                        })
                    }
                    Err(PosError::Terminal(e @ TerminalError::Refused { .. })) => {
                        // `charge` marked the repeat's own row failed if it had one; the
                        // interrupted row is failed here when the refusal came first.
                        let record = match self.journal.record_by(&key)? {
                            Some(r) if r.record.status == RecordStatus::Pending => {
                                self.journal.fail_by(
                                    &key,
                                    &format!(
                                        "the card never executed it; the repeat was refused: {e}"
                                    ),
                                )?
                            }
                            Some(r) => r,
                            None => return Err(PosError::Input("the pending row vanished".into())),
                        };
                        Ok(Resolution::Failed(record))
                    }
                    Err(e) => Err(e),
                }
            }
            Err(TerminalError::Undetermined(why)) => Ok(Resolution::Undetermined {
                pending: p.clone(),
                why,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// One purchase, journaled; `repeating`: the pending row it repeats.
    fn charge<C: CardChannel>(
        &mut self,
        card: &mut PurseCard<C>,
        amount_fen: u32,
        when: &TransactionTime,
        repeating: Option<Key>,
    ) -> Result<Charged> {
        let is_repeat = repeating.is_some();
        self.journal.begin_attempt(repeating);
        let result = Purchase::new(&mut self.psam)
            .with_key_index(self.config.key_index)
            .with_issuer_factor(self.config.issuer_factor)
            .pay(card, amount_fen, when, &mut self.journal);
        match result {
            Ok(outcome) => {
                let (status, note) = match (&outcome.suspicious, is_repeat) {
                    (Some(why), _) => (RecordStatus::Suspicious, Some(why.clone())),
                    (None, true) => (
                        RecordStatus::Recovered,
                        Some(
                            "repeated after an interruption (the card had not executed it)"
                                .to_string(),
                        ),
                    ),
                    (None, false) => (RecordStatus::Normal, None),
                };
                let record = self.journal.complete(&outcome, status, note.as_deref())?;
                Ok(Charged { record, outcome })
            }
            Err(e @ TerminalError::Refused { .. }) => {
                if let Some(key) = self.journal.last_saved().cloned() {
                    self.journal
                        .fail_by(&key, &format!("the card refused: {e}"))?;
                }
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a metered session (a phone call) on the card: admitted like a sale (loss list,
    /// list age, pending purchases settled) at `when`; nothing is charged before the first
    /// [`MeteredSession::tick`].
    pub fn start_metered<C: CardChannel>(
        &mut self,
        card: C,
        tariff_fen: u32,
        when: &TransactionTime,
    ) -> Result<MeteredSession<'_, P, C>> {
        if tariff_fen == 0 {
            return Err(PosError::Input(
                "the tariff must be at least 1 fen a unit".into(),
            ));
        }
        let mut card = PurseCard::open(card)?;
        self.admit(&card, when)?;
        let resolved = self.resolve(&mut card)?;
        Ok(MeteredSession {
            pos: self,
            card,
            tariff_fen,
            units: Vec::new(),
            resolved,
            stopped: None,
        })
    }
}

/// Why a metered session stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The balance does not cover the next unit.
    InsufficientBalance {
        /// The card's balance.
        balance_fen: u32,
    },
    /// A unit's purchase was interrupted (its row is pending) or failed: the session ended.
    Interrupted(String),
}

/// What one tick of the meter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// One unit charged.
    Charged {
        /// Its journal row.
        record: Box<JournalRecord>,
        /// The balance after it.
        balance_after_fen: u32,
        /// Whether the balance covers another unit (when not, the session has stopped).
        next_covered: bool,
    },
    /// Nothing charged: the session has stopped.
    Stopped(Stop),
}

/// A metered session: one purchase of the tariff per unit.
pub struct MeteredSession<'p, P: CardChannel, C: CardChannel> {
    pos: &'p mut PointOfUse<P>,
    card: PurseCard<C>,
    tariff_fen: u32,
    units: Vec<JournalRecord>,
    resolved: Vec<Resolution>,
    stopped: Option<Stop>,
}

/// The end of a metered session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteredSummary {
    /// The units charged, in order.
    pub units: Vec<JournalRecord>,
    /// Their total, minor units.
    pub total_fen: u64,
    /// Why it stopped (`None`: ended by the caller).
    pub stop: Option<Stop>,
    /// Earlier interrupted purchases settled when the session opened.
    pub resolved: Vec<Resolution>,
}

impl<P: CardChannel, C: CardChannel> MeteredSession<'_, P, C> {
    /// The tariff of a unit.
    pub fn tariff_fen(&self) -> u32 {
        self.tariff_fen
    }

    /// The units charged so far.
    pub fn units(&self) -> &[JournalRecord] {
        &self.units
    }

    /// Why the session stopped, if it has.
    pub fn stopped(&self) -> Option<&Stop> {
        self.stopped.as_ref()
    }

    /// The meter ticked at `when`: charges one unit, or reports that the session stopped.
    /// A lost answer ends the session with the unit's row pending (the error is returned).
    pub fn tick(&mut self, when: &TransactionTime) -> Result<Tick> {
        if let Some(stop) = &self.stopped {
            return Ok(Tick::Stopped(stop.clone()));
        }
        let balance = self.card.balance()?;
        if balance < self.tariff_fen {
            let stop = Stop::InsufficientBalance {
                balance_fen: balance,
            };
            self.stopped = Some(stop.clone());
            return Ok(Tick::Stopped(stop));
        }
        match self.pos.charge(&mut self.card, self.tariff_fen, when, None) {
            Ok(charged) => {
                let after = charged.outcome.balance_after_fen;
                let next_covered = after >= self.tariff_fen;
                if !next_covered {
                    self.stopped = Some(Stop::InsufficientBalance { balance_fen: after });
                }
                self.units.push(charged.record.clone());
                Ok(Tick::Charged {
                    record: Box::new(charged.record),
                    balance_after_fen: after,
                    next_covered,
                })
            }
            Err(e) => {
                self.stopped = Some(Stop::Interrupted(e.to_string()));
                Err(e)
            }
        }
    }

    /// Ends the session.
    pub fn finish(self) -> MeteredSummary {
        let total_fen = self.units.iter().fold(0u64, |sum, u| {
            sum.saturating_add(u64::from(u.record.amount_fen))
        });
        MeteredSummary {
            units: self.units,
            total_fen,
            stop: self.stopped,
            resolved: self.resolved,
        }
    }
}
