//! Issuance on real cards: cards made through a production batch (products, lot, order,
//! stages, functional test), then issued at a recharge point (the personalization script with
//! card keys from the keystore, the account opened with deposit and fee), then the first
//! recharge; the refusals that change nothing; and a personalization interrupted at the end
//! (resumed) or half-way (rolled back). Every scenario on SQLite and on PostgreSQL.

use iccard_link::{CardChannel, LinkError};
use iccard_office::issuance::{parse_card_number, HolderData, IssueRequest};
use iccard_office::keystore::DevKeystore;
use iccard_office::manufacture::InventoryState;
use iccard_office::products::CardType;
use iccard_office::recharge::RechargeRequest;
use iccard_office::{Mode, OfficeError, Store};
use iccard_terminal::{read_balance, PurseCard, TransactionTime};
use iccard_testkit::MemCard;
use zeroize::Zeroizing;

use crate::support::{init_config, stock, world, World};

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::support::TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
                    let store = db.store().await;
                    super::$name(store.clone()).await;
                    db.cleanup(&store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = crate::support::TestDb::new(crate::support::Backend::Postgres).await else {
                        eprintln!("ICCARD_TEST_POSTGRES_URL not set: PostgreSQL issuance tests skipped");
                        return;
                    };
                    let store = db.store().await;
                    super::$name(store.clone()).await;
                    db.cleanup(&store).await;
                }
            )*
        }
    };
}

on_both!(
    issue_then_first_recharge,
    refusals_leave_the_card_blank_and_the_books_untouched,
    an_interrupted_personalization_resumes_or_rolls_back,
);

fn holder() -> Option<HolderData> {
    Some(HolderData {
        name: "Li Wei".into(),
        id_number: "110101199003070011".into(),
    })
}

fn request(holder: Option<HolderData>) -> IssueRequest {
    IssueRequest {
        pin: Zeroizing::new("123456".into()),
        holder,
        date: [0x20, 0x26, 0x03, 0x14],
    }
}

fn keys() -> DevKeystore {
    DevKeystore::new(Mode::Development).unwrap()
}

async fn clean(w: &World) {
    let r = w.office.check(&w.auditor).await.unwrap();
    assert!(r.is_clean(), "check: {:?}", r.problems);
}

async fn count(store: &Store, sql: &str) -> i64 {
    let mut tx = store.read().await.unwrap();
    let (n,): (i64,) = tx.fetch_one(sql, &[]).await.unwrap();
    tx.rollback().await.unwrap();
    n
}

async fn cash(w: &World) -> i64 {
    w.office
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.code == "cash:RP-1")
        .map(|a| a.balance_minor)
        .unwrap_or(0)
}

async fn issue_then_first_recharge(store: Store) {
    let w = world(store.clone()).await;
    let mut cards = stock(&w, "CITY", CardType::Registered, "4943000000001000", 2).await;
    let ks = keys();
    let mut card = cards.remove(0);
    let receipt = w
        .office
        .issue_card(&w.issuer_clerk, &ks, &mut card, &request(holder()))
        .await
        .expect("issue");
    let issuer = init_config().issuer_number;
    assert_eq!(
        parse_card_number(&issuer, &receipt.card_number).unwrap(),
        receipt.card_number,
        "a well-formed card number of this issuer"
    );
    assert_eq!(receipt.chip_serial, "4943000000001000");
    assert_eq!(
        (receipt.product_code.as_str(), receipt.product_version),
        ("CITY", 1)
    );
    assert_eq!((receipt.deposit_minor, receipt.fee_minor), (2_000, 500));
    assert_eq!(
        (receipt.valid_from.as_str(), receipt.valid_to.as_str()),
        ("20260314", "20290314")
    );
    assert!(!receipt.resumed);
    assert_eq!(receipt.account.deposit_minor, 2_000);
    let inv = w.office.inventory_card("4943000000001000").await.unwrap();
    assert_eq!(inv.state, InventoryState::Issued);
    assert_eq!(
        inv.application_serial.as_deref(),
        Some(receipt.card_number.as_str())
    );
    assert_eq!(
        cash(&w).await,
        2_500,
        "deposit and fee in the recharge point's cash"
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM card_holders").await, 1);
    // The card holds the card number, the issuer and the product's limits; the first recharge.
    let mut purse = PurseCard::open(card).unwrap();
    assert_eq!(
        iccard_apdu::hex::encode(&purse.identity().application_serial),
        receipt.card_number
    );
    let first = w
        .office
        .recharge(
            &w.recharge_clerk,
            &ks,
            &mut purse,
            RechargeRequest {
                amount_minor: 10_000,
                when: TransactionTime::parse("20260314", "093000").unwrap(),
            },
        )
        .await
        .expect("first recharge");
    let l = &first.load;
    assert_eq!(l.card_number, receipt.card_number);
    assert_eq!(l.card_type.as_deref(), Some("CITY"));
    assert_eq!((l.amount_minor, l.online_serial), (10_000, 0));
    assert_eq!(
        (l.operator.as_str(), l.machine_number.as_str()),
        ("cashier", "RP-1")
    );
    assert_eq!(l.date, "20260314");
    assert_eq!(l.tac_verified, Some(true));
    // The product's maximum balance (50,000) holds at the counter.
    let err = w
        .office
        .recharge(
            &w.recharge_clerk,
            &ks,
            &mut purse,
            RechargeRequest {
                amount_minor: 40_001,
                when: TransactionTime::parse("20260314", "093100").unwrap(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OfficeError::AboveMaximumBalance {
                max_minor: 50_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        read_balance(purse.into_inner()).unwrap().balance_fen,
        10_000
    );
    assert_eq!(cash(&w).await, 12_500);
    clean(&w).await;
}

async fn refusals_leave_the_card_blank_and_the_books_untouched(store: Store) {
    let w = world(store.clone()).await;
    let mut cards = stock(&w, "CITY", CardType::Registered, "4943000000002000", 1).await;
    let ks = keys();
    let jobs = "SELECT COUNT(*) FROM issuance_jobs";
    // A registered product without a holder: refused before the card is touched.
    let mut card = cards.remove(0);
    let err = w
        .office
        .issue_card(&w.issuer_clerk, &ks, &mut card, &request(None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OfficeError::Invalid { what: "holder", .. }),
        "{err}"
    );
    // Bad PIN and holder data: refused before anything.
    let mut bad_pin = request(holder());
    bad_pin.pin = Zeroizing::new("12a".into());
    let err = w
        .office
        .issue_card(&w.issuer_clerk, &ks, &mut card, &bad_pin)
        .await
        .unwrap_err();
    assert!(
        matches!(err, OfficeError::Invalid { what: "PIN", .. }),
        "{err}"
    );
    let mut bad_holder = request(holder());
    bad_holder.holder.as_mut().unwrap().id_number = "12-34".into();
    assert!(w
        .office
        .issue_card(&w.issuer_clerk, &ks, &mut card, &bad_holder)
        .await
        .is_err());
    // The wrong role.
    let err = w
        .office
        .issue_card(&w.recharge_clerk, &ks, &mut card, &request(holder()))
        .await
        .unwrap_err();
    assert!(matches!(err, OfficeError::Denied { .. }), "{err}");
    // A chip the inventory does not know.
    let mut stranger = iccard_testkit::blank(0x1234);
    assert!(w
        .office
        .issue_card(&w.issuer_clerk, &ks, &mut stranger, &request(holder()))
        .await
        .is_err());
    assert_eq!(count(&store, jobs).await, 0);
    assert_eq!(
        w.office
            .inventory_card("4943000000002000")
            .await
            .unwrap()
            .state,
        InventoryState::InStock
    );
    // Issued once; the same card again is refused and stays as issued.
    let receipt = w
        .office
        .issue_card(&w.issuer_clerk, &ks, &mut card, &request(holder()))
        .await
        .unwrap();
    let err = w
        .office
        .issue_card(&w.issuer_clerk, &ks, &mut card, &request(holder()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("issued"), "{err}");
    assert_eq!(count(&store, jobs).await, 1);
    assert_eq!(cash(&w).await, 2_500);
    assert_eq!(
        w.office
            .card(&receipt.card_number)
            .await
            .unwrap()
            .deposit_minor,
        2_000
    );
    clean(&w).await;
}

/// A channel that counts commands and fails the `cut`-th one: executed with its answer lost,
/// or never delivered.
struct Cut {
    inner: MemCard,
    seen: usize,
    cut: usize,
    executed: bool,
}

impl CardChannel for Cut {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        self.seen += 1;
        if self.seen == self.cut {
            if self.executed {
                self.inner.transmit(apdu)?;
            }
            return Err(LinkError::PowerLost);
        }
        self.inner.transmit(apdu)
    }
    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        self.inner.reset()
    }
}

async fn an_interrupted_personalization_resumes_or_rolls_back(store: Store) {
    let w = world(store.clone()).await;
    let mut cards = stock(&w, "CITY", CardType::Registered, "4943000000003000", 3)
        .await
        .into_iter();
    let ks = keys();
    let open = "SELECT COUNT(*) FROM issuance_jobs WHERE state = 'personalizing'";
    // How many commands an issuance sends.
    let mut counted = Cut {
        inner: cards.next().unwrap(),
        seen: 0,
        cut: usize::MAX,
        executed: true,
    };
    w.office
        .issue_card(&w.issuer_clerk, &ks, &mut counted, &request(holder()))
        .await
        .unwrap();
    let total = counted.seen;
    assert!(total > 20, "{total} commands");

    // The last command (card SECURED) executed, its answer lost: the job stays open and
    // nothing is posted; the next attempt finds the card finished and completes the issuance.
    let mut card = Cut {
        inner: cards.next().unwrap(),
        seen: 0,
        cut: total,
        executed: true,
    };
    let err = w
        .office
        .issue_card(&w.issuer_clerk, &ks, &mut card, &request(holder()))
        .await
        .expect_err("the lost answer stops the issuance");
    assert!(err.to_string().contains("present the card again"), "{err}");
    assert_eq!(count(&store, open).await, 1);
    assert_eq!(
        cash(&w).await,
        2_500,
        "nothing posted for the interrupted card"
    );
    clean(&w).await;
    card.cut = usize::MAX;
    let resumed = w
        .office
        .issue_card(&w.issuer_clerk, &ks, &mut card, &request(holder()))
        .await
        .expect("resumed");
    assert!(resumed.resumed);
    assert_eq!(count(&store, open).await, 0);
    assert_eq!(cash(&w).await, 5_000);
    let mut purse = PurseCard::open(&mut card.inner).unwrap();
    assert_eq!(
        iccard_apdu::hex::encode(&purse.identity().application_serial),
        resumed.card_number
    );
    assert_eq!(purse.balance().unwrap(), 0);

    // Half-way, a command never delivered: the retry cannot finish (the transport key is
    // gone), so it rolls back: the job ends rolled back, the card is voided, nothing posted.
    let mut card = Cut {
        inner: cards.next().unwrap(),
        seen: 0,
        cut: total / 2,
        executed: false,
    };
    let chip = "4943000000003002";
    assert!(w
        .office
        .issue_card(&w.issuer_clerk, &ks, &mut card, &request(holder()))
        .await
        .is_err());
    assert_eq!(count(&store, open).await, 1);
    card.cut = usize::MAX;
    let err = w
        .office
        .issue_card(&w.issuer_clerk, &ks, &mut card, &request(holder()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert_eq!(count(&store, open).await, 0);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM issuance_jobs WHERE state = 'rolled_back'"
        )
        .await,
        1
    );
    let inv = w.office.inventory_card(chip).await.unwrap();
    assert_eq!(inv.state, InventoryState::Void);
    assert!(inv.void_reason.unwrap().contains("refurbishment"));
    assert_eq!(cash(&w).await, 5_000);
    clean(&w).await;
}
