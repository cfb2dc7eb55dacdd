//! Card products, chip lots, production batches and the card inventory, on SQLite and on
//! PostgreSQL (when configured), including a full batch on real card images tested with the
//! issuer's functional test.

use std::path::{Path, PathBuf};

use iccard_cos::nvm::{SimEeprom, DEFAULT_ENDURANCE};
use iccard_cos::{Card, ChipData, Manufacture, SeededRandom};
use iccard_issuer::devkeys;
use iccard_issuer::functional::{test_card, FunctionalReport};
use iccard_issuer::manufacture::{self, BlankCard};
use iccard_link::{save_image, CardChannel, ImageCard, LinkError, OsRandom};
use iccard_office::manufacture::{
    self as mf, change_state, check_inventory, Allocate, CodedCard, Holder, InventoryChange,
    InventoryState, NewChipLot, NewProductionOrder, Stage, TestedCard, VoidedCard, TRANSITIONS,
};
use iccard_office::products::{
    Algorithm, ApplicationKind, CardType, NewProduct, ProductApplication, ProductProfile,
};
use iccard_office::{Action, Office, OfficeError, Password, Role, Session, Store};

use crate::support::{world, Backend, TestDb, World, ADMIN_PASSWORD};

/// Generates `sqlite::NAME` and `postgres::NAME` tests for each scenario `NAME(Store)`.
macro_rules! lifecycle {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::new(super::Backend::Sqlite).await.unwrap();
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
                    let Some(db) = super::TestDb::new(super::Backend::Postgres).await else {
                        eprintln!("ICCARD_TEST_POSTGRES_URL not set: PostgreSQL lifecycle skipped");
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

lifecycle!(
    products_are_versioned,
    bad_products_are_refused_and_change_nothing,
    chip_lots_refuse_overlaps_and_bad_input,
    orders_and_batches_stay_within_their_lot,
    full_batch_on_card_images,
    stages_run_in_order_once,
    coding_and_testing_results_must_match_the_batch,
    inventory_moves_follow_the_table,
    only_administrators_make_cards,
    check_finds_tampered_inventory,
);

// ----- helpers -----

/// What the lifecycle tables hold: counts, card states, lot and order accounting.
async fn snapshot(store: &Store) -> Vec<String> {
    let mut tx = store.read().await.unwrap();
    let mut out = Vec::new();
    for table in [
        "products",
        "product_versions",
        "product_applications",
        "chip_lots",
        "production_orders",
        "production_batches",
        "production_stages",
        "inventory_cards",
        "inventory_card_history",
        "operations",
    ] {
        let (n,): (i64,) = tx
            .fetch_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await
            .unwrap();
        out.push(format!("{table} {n}"));
    }
    let cards: Vec<(String, String)> = tx
        .fetch_all(
            "SELECT chip_serial, state FROM inventory_cards ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    out.extend(cards.into_iter().map(|(c, s)| format!("card {c} {s}")));
    let lots: Vec<(String, i64)> = tx
        .fetch_all(
            "SELECT lot_number, reserved FROM chip_lots ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    out.extend(
        lots.into_iter()
            .map(|(l, r)| format!("lot {l} reserved {r}")),
    );
    let orders: Vec<(i64, i64, i64)> = tx
        .fetch_all(
            "SELECT id, batched, chips_used FROM production_orders ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    out.extend(
        orders
            .into_iter()
            .map(|(i, b, c)| format!("order {i} batched {b} used {c}")),
    );
    let batches: Vec<(i64, String)> = tx
        .fetch_all("SELECT id, stage FROM production_batches ORDER BY id", &[])
        .await
        .unwrap();
    out.extend(batches.into_iter().map(|(i, s)| format!("batch {i} {s}")));
    let products: Vec<(String, i64)> = tx
        .fetch_all(
            "SELECT code, current_version FROM products ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    out.extend(
        products
            .into_iter()
            .map(|(c, v)| format!("product {c} v{v}")),
    );
    out
}

async fn last_audit(office: &Office) -> (String, String, String) {
    let records = office.audit_records(0, 100_000).await.unwrap();
    let r = records.last().unwrap();
    (r.action.clone(), r.outcome.clone(), r.detail.clone())
}

async fn inventory_problems(store: &Store) -> Vec<String> {
    let mut tx = store.read().await.unwrap();
    check_inventory(&mut tx).await.unwrap()
}

fn profile() -> ProductProfile {
    ProductProfile {
        card_type: CardType::Registered,
        deposit_minor: 2_000,
        fee_minor: 500,
        validity_months: 60,
        max_balance_minor: 1_000_000,
        offline_purchase_limit_minor: 100_000,
        offline_cumulative_limit_minor: 200_000,
        algorithm: Algorithm::TripleDes,
        applications: vec![
            ProductApplication {
                application: ApplicationKind::Purse,
                rights: vec!["load".into(), "purchase".into(), "passbook".into()],
            },
            ProductApplication {
                application: ApplicationKind::Access,
                rights: vec!["door:A1".into(), "door:B2".into()],
            },
        ],
    }
}

async fn city_card(w: &World) {
    w.office
        .create_product(
            &w.admin,
            NewProduct {
                code: "CITY".into(),
                name: "City card".into(),
                profile: profile(),
            },
        )
        .await
        .unwrap();
}

const LOT_FIRST: &str = "4943000000001000";

fn lot(number: &str, first: &str, quantity: i64) -> NewChipLot {
    NewChipLot {
        lot_number: number.into(),
        chip_maker: "Icmaker".into(),
        chip_model: "IC-32K".into(),
        quantity,
        first_chip_serial: first.into(),
        transport_key_version: 1,
    }
}

fn order(product: &str, lot_number: &str, quantity: i64) -> NewProductionOrder {
    NewProductionOrder {
        product_code: product.into(),
        lot_number: lot_number.into(),
        quantity,
    }
}

/// The card in memory, as a channel.
struct MemCard(Card<SimEeprom, SeededRandom>);

impl CardChannel for MemCard {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        Ok(self.0.process(apdu))
    }
    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        Ok(self.0.reset())
    }
}

fn transport_key(serial: &[u8; 8]) -> zeroize::Zeroizing<[u8; 16]> {
    manufacture::transport_key(&devkeys::TRANSPORT.value(), serial)
}

/// A chip coded with a transport key from another master than the development one.
fn wrong_key_spec(spec: &BlankCard) -> Manufacture {
    Manufacture {
        chip: ChipData {
            chip_maker: manufacture::CHIP_MAKER,
            chip_serial: spec.chip_serial,
            production_date: spec.production_date,
            batch: spec.batch,
            os_version: manufacture::OS_VERSION,
        },
        transport_key: manufacture::transport_key(&[0x5A; 16], &spec.chip_serial),
        transport_key_version: spec.transport_key_version,
        attack_threshold: spec.attack_threshold,
    }
}

/// Codes a blank card into an image file (with the wrong transport key if asked).
fn code_image(dir: &Path, spec: &BlankCard, wrong_key: bool) -> PathBuf {
    let eeprom = manufacture::eeprom(32, DEFAULT_ENDURANCE).unwrap();
    let card = if wrong_key {
        Card::manufacture(eeprom, OsRandom, &wrong_key_spec(spec)).unwrap()
    } else {
        manufacture::make_blank(eeprom, OsRandom, spec).unwrap()
    };
    let serial = mf::format_chip_serial(u64::from_be_bytes(spec.chip_serial));
    let path = dir.join(format!("{serial}.card"));
    save_image(&path, &card.into_eeprom()).unwrap();
    path
}

/// Runs a batch in memory through every stage with no spoilage: all cards end in stock.
async fn produce_in_memory(w: &World, order_id: i64, quantity: i64) -> Vec<String> {
    let batch = w
        .office
        .start_batch(&w.admin, order_id, quantity)
        .await
        .unwrap();
    w.office
        .record_printing(&w.admin, batch.id, "printer P-1", 0)
        .await
        .unwrap();
    let plan = w.office.coding_plan(batch.id).await.unwrap();
    let specs = plan.blank_cards([0x20, 0x26, 0x11, 0x26]).unwrap();
    let coded: Vec<CodedCard> = plan
        .chip_serials
        .iter()
        .map(|s| CodedCard {
            chip_serial: s.clone(),
            failure: None,
        })
        .collect();
    w.office
        .record_coding(&w.admin, batch.id, "coder C-1", &coded)
        .await
        .unwrap();
    for stage in [Stage::Bronzing, Stage::Packaging, Stage::Gluing] {
        w.office
            .record_finishing(&w.admin, batch.id, stage, "line L-1", &[])
            .await
            .unwrap();
    }
    let results: Vec<TestedCard> = specs
        .iter()
        .zip(&plan.chip_serials)
        .enumerate()
        .map(|(i, (spec, serial))| {
            let eeprom = manufacture::eeprom(32, DEFAULT_ENDURANCE).unwrap();
            let mut card = MemCard(
                manufacture::make_blank(eeprom, SeededRandom::new(i as u64 + 1), spec).unwrap(),
            );
            TestedCard {
                chip_serial: serial.clone(),
                report: test_card(&mut card, &transport_key(&spec.chip_serial)),
            }
        })
        .collect();
    w.office
        .record_testing(&w.admin, batch.id, "tester T-9", &results)
        .await
        .unwrap();
    plan.chip_serials
}

/// Inserts a bare business record, as an issuance or recycling operation would before moving
/// cards with `change_state`.
async fn operation(tx: &mut iccard_office::store::Tx, s: &Session, kind: &str) -> i64 {
    let id = tx.next_id("operation").await.unwrap();
    tx.execute(
        "INSERT INTO operations (id, kind, operator_id, machine_id, at_ms) VALUES ($1, $2, $3, $4, $5)",
        &[
            id.into(),
            kind.into(),
            s.operator_id.into(),
            s.machine_id.into(),
            1_800_000_000_000i64.into(),
        ],
    )
    .await
    .unwrap();
    id
}

fn change(to: InventoryState, reason: &str) -> InventoryChange {
    InventoryChange {
        to,
        holder: None,
        application_serial: None,
        product_version: None,
        reason: reason.into(),
    }
}

// ----- scenarios -----

async fn products_are_versioned(store: Store) {
    let w = world(store.clone()).await;
    city_card(&w).await;
    let p = w.office.product("CITY").await.unwrap();
    assert_eq!((p.code.as_str(), p.name.as_str()), ("CITY", "City card"));
    assert_eq!(p.current_version, 1);
    assert_eq!(p.profile, profile());
    let (action, outcome, detail) = last_audit(&w.office).await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("define_product", "ok")
    );
    assert!(
        detail.starts_with("version 1: registered, deposit 2000"),
        "{detail}"
    );

    // A change writes version 2; version 1 stays as it was.
    let mut v2 = profile();
    v2.algorithm = Algorithm::Sm4;
    v2.fee_minor = 800;
    v2.card_type = CardType::Anonymous;
    v2.applications.truncate(1);
    let p2 = w
        .office
        .revise_product(&w.admin, "CITY", v2.clone())
        .await
        .unwrap();
    assert_eq!(p2.current_version, 2);
    assert_eq!(p2.profile, v2);
    assert_eq!(
        p2.profile.algorithm.purse_alg(),
        iccard_crypto::PurseAlg::Sm4
    );
    let history = w.office.product_history("CITY").await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!((history[0].version, &history[0].profile), (1, &profile()));
    assert_eq!((history[1].version, &history[1].profile), (2, &v2));
    assert!(history.iter().all(|v| v.created_by_login == "admin"));
    assert_ne!(history[0].operation_id, history[1].operation_id);
    assert_eq!(
        w.office.product_version("CITY", 1).await.unwrap().profile,
        profile()
    );
    assert!(matches!(
        w.office.product_version("CITY", 3).await,
        Err(OfficeError::NotFound { .. })
    ));

    // The same profile again is not a change.
    let before = snapshot(&store).await;
    let same = w.office.revise_product(&w.admin, "CITY", v2.clone()).await;
    assert!(
        matches!(&same, Err(OfficeError::Invalid { why, .. }) if why.contains("equals version 2")),
        "{same:?}"
    );
    assert_eq!(snapshot(&store).await, before);

    // A second product; the list is by code.
    w.office
        .create_product(
            &w.admin,
            NewProduct {
                code: "ANON".into(),
                name: "Bearer card".into(),
                profile: v2.clone(),
            },
        )
        .await
        .unwrap();
    let codes: Vec<String> = w
        .office
        .products()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.code)
        .collect();
    assert_eq!(codes, ["ANON", "CITY"]);
    assert!(matches!(
        w.office.product("NOPE").await,
        Err(OfficeError::NotFound {
            what: "product",
            ..
        })
    ));
    assert!(matches!(
        w.office.revise_product(&w.admin, "NOPE", profile()).await,
        Err(OfficeError::NotFound {
            what: "product",
            ..
        })
    ));
}

async fn bad_products_are_refused_and_change_nothing(store: Store) {
    let w = world(store.clone()).await;
    city_card(&w).await;
    let before = snapshot(&store).await;
    type Edit = fn(&mut ProductProfile);
    let edits: Vec<(&str, Edit)> = vec![
        ("negative deposit", |p| p.deposit_minor = -1),
        ("negative fee", |p| p.fee_minor = -5),
        ("deposit + fee overflow", |p| {
            p.deposit_minor = i64::MAX;
            p.fee_minor = 1
        }),
        ("validity 0", |p| p.validity_months = 0),
        ("validity 601", |p| p.validity_months = 601),
        ("max balance 0", |p| p.max_balance_minor = 0),
        ("max balance beyond the card", |p| {
            p.max_balance_minor = i64::from(u32::MAX) + 1
        }),
        ("purchase limit above the balance", |p| {
            p.offline_purchase_limit_minor = p.max_balance_minor + 1
        }),
        ("cumulative below single", |p| {
            p.offline_cumulative_limit_minor = p.offline_purchase_limit_minor - 1
        }),
        ("no applications", |p| p.applications.clear()),
        ("purse twice", |p| {
            p.applications[1] = p.applications[0].clone();
        }),
        ("unknown purse right", |p| {
            p.applications[0].rights.push("overdraft".into())
        }),
        ("purse right twice", |p| {
            p.applications[0].rights.push("load".into())
        }),
        ("no rights", |p| p.applications[1].rights.clear()),
        ("access right too long", |p| {
            p.applications[1]
                .rights
                .push("door:0123456789ABCDEF".into())
        }),
        ("access right with a space", |p| {
            p.applications[1].rights.push("door A".into())
        }),
        ("nine access rights", |p| {
            p.applications[1].rights = (0..9).map(|i| format!("zone{i}")).collect()
        }),
    ];
    for (what, edit) in edits {
        let mut bad = profile();
        edit(&mut bad);
        let err = w
            .office
            .create_product(
                &w.admin,
                NewProduct {
                    code: "BAD".into(),
                    name: "Bad".into(),
                    profile: bad.clone(),
                },
            )
            .await
            .expect_err(what);
        assert!(
            matches!(
                err,
                OfficeError::Invalid { .. } | OfficeError::AmountOutOfRange(_)
            ),
            "{what}: {err:?}"
        );
        let (action, outcome, detail) = last_audit(&w.office).await;
        assert_eq!(
            (action.as_str(), outcome.as_str()),
            ("define_product", "failed")
        );
        assert_eq!(detail, err.to_string());
        let err = w
            .office
            .revise_product(&w.admin, "CITY", bad)
            .await
            .expect_err(what);
        assert!(
            matches!(
                err,
                OfficeError::Invalid { .. } | OfficeError::AmountOutOfRange(_)
            ),
            "{what}: {err:?}"
        );
        assert_eq!(snapshot(&store).await, before, "{what}");
    }
    // Limits at their edges are fine.
    let mut edge = profile();
    edge.max_balance_minor = i64::from(u32::MAX);
    edge.offline_purchase_limit_minor = 0;
    edge.offline_cumulative_limit_minor = 0;
    edge.deposit_minor = 0;
    edge.fee_minor = 0;
    edge.applications[1].rights = (0..8).map(|i| format!("zone{i}")).collect();
    w.office
        .revise_product(&w.admin, "CITY", edge)
        .await
        .unwrap();

    let before = snapshot(&store).await;
    for (code, name) in [
        ("CITY", "Again"),
        ("bad code", "x"),
        ("OK", ""),
        ("OK", " padded"),
    ] {
        let err = w
            .office
            .create_product(
                &w.admin,
                NewProduct {
                    code: code.into(),
                    name: name.into(),
                    profile: profile(),
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                OfficeError::Duplicate { .. } | OfficeError::Invalid { .. }
            ),
            "{code}/{name}: {err:?}"
        );
    }
    assert_eq!(snapshot(&store).await, before);
}

async fn chip_lots_refuse_overlaps_and_bad_input(store: Store) {
    let w = world(store.clone()).await;
    let a = w
        .office
        .receive_chip_lot(&w.admin, lot("L-A", LOT_FIRST, 100))
        .await
        .unwrap();
    assert_eq!(a.first_chip_serial, "4943000000001000");
    assert_eq!(a.last_chip_serial, "4943000000001063");
    assert_eq!((a.quantity, a.reserved, a.available()), (100, 0, 100));
    assert_eq!(a.transport_key_version, 1);
    let (action, outcome, detail) = last_audit(&w.office).await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("receive_chip_lot", "ok")
    );
    assert!(
        detail.contains("4943000000001000..4943000000001063"),
        "{detail}"
    );

    // Lower-case input is stored upper-case; the lot right after A is fine.
    let b = w
        .office
        .receive_chip_lot(&w.admin, lot("L-B", "4943000000001064", 16))
        .await
        .unwrap();
    assert_eq!(b.last_chip_serial, "4943000000001073");
    let c = w
        .office
        .receive_chip_lot(&w.admin, lot("L-C", "4943000000000f9c", 100))
        .await
        .unwrap();
    assert_eq!(
        (c.first_chip_serial.as_str(), c.last_chip_serial.as_str()),
        ("4943000000000F9C", "4943000000000FFF")
    );

    let before = snapshot(&store).await;
    // Overlaps: inside A, straddling A's end, covering A and B, ending on C's first chip.
    for (first, quantity, other) in [
        ("4943000000001050", 1, "L-A"),
        ("4943000000001060", 10, "L-A"),
        ("4943000000001000", 1000, "L-A"),
        ("4943000000000F00", 157, "L-C"),
    ] {
        let err = w
            .office
            .receive_chip_lot(&w.admin, lot("L-X", first, quantity))
            .await
            .unwrap_err();
        match &err {
            OfficeError::ChipRangeOverlap { lot_number, .. } => assert_eq!(lot_number, other),
            e => panic!("{first}: {e:?}"),
        }
        assert!(err.to_string().contains("overlap lot"), "{err}");
    }
    assert_eq!(snapshot(&store).await, before);
    let bad = [
        lot("L-X", "4943000000002000", 0),
        lot("L-X", "4943000000002000", -5),
        lot("L-X", "4943000000002000", 10_000_001),
        lot("L-X", "49430000000020", 10),
        lot("L-X", "49430000000020GG", 10),
        lot("L-X", "FFFFFFFFFFFFFFF0", 17),
        lot("L-A", "4943000000002000", 10),
        lot("bad lot", "4943000000002000", 10),
        NewChipLot {
            transport_key_version: 256,
            ..lot("L-X", "4943000000002000", 10)
        },
        NewChipLot {
            chip_maker: String::new(),
            ..lot("L-X", "4943000000002000", 10)
        },
    ];
    for new in bad {
        let err = w
            .office
            .receive_chip_lot(&w.admin, new.clone())
            .await
            .expect_err(&format!("{new:?}"));
        assert!(
            matches!(
                err,
                OfficeError::Invalid { .. } | OfficeError::Duplicate { .. }
            ),
            "{new:?}: {err:?}"
        );
    }
    assert_eq!(snapshot(&store).await, before);
    // The very last serial is usable.
    let top = w
        .office
        .receive_chip_lot(&w.admin, lot("L-TOP", "FFFFFFFFFFFFFFF0", 16))
        .await
        .unwrap();
    assert_eq!(top.last_chip_serial, "FFFFFFFFFFFFFFFF");
    let numbers: Vec<String> = w
        .office
        .chip_lots()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.lot_number)
        .collect();
    assert_eq!(numbers, ["L-A", "L-B", "L-C", "L-TOP"]);
    assert_eq!(w.office.chip_lot("L-B").await.unwrap(), b);
}

async fn orders_and_batches_stay_within_their_lot(store: Store) {
    let w = world(store.clone()).await;
    city_card(&w).await;
    w.office
        .receive_chip_lot(&w.admin, lot("L-1", LOT_FIRST, 20))
        .await
        .unwrap();
    let o1 = w
        .office
        .open_production_order(&w.admin, order("CITY", "L-1", 12))
        .await
        .unwrap();
    assert_eq!(
        (o1.first_chip_serial.as_str(), o1.last_chip_serial.as_str()),
        ("4943000000001000", "494300000000100B")
    );
    assert_eq!(w.office.chip_lot("L-1").await.unwrap().reserved, 12);

    let before = snapshot(&store).await;
    let err = w
        .office
        .open_production_order(&w.admin, order("CITY", "L-1", 9))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            OfficeError::Insufficient {
                asked: 9,
                available: 8,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("chips of lot L-1"), "{err}");
    for (req, what) in [
        (order("CITY", "L-1", 0), "zero"),
        (order("CITY", "L-1", -1), "negative"),
        (order("NOPE", "L-1", 1), "unknown product"),
        (order("CITY", "L-9", 1), "unknown lot"),
    ] {
        let err = w
            .office
            .open_production_order(&w.admin, req)
            .await
            .expect_err(what);
        assert!(
            matches!(
                err,
                OfficeError::Invalid { .. } | OfficeError::NotFound { .. }
            ),
            "{what}: {err:?}"
        );
    }
    assert_eq!(snapshot(&store).await, before);

    // The rest of the lot goes to a second order, right after the first one's chips.
    let o2 = w
        .office
        .open_production_order(&w.admin, order("CITY", "L-1", 8))
        .await
        .unwrap();
    assert_eq!(
        (o2.first_chip_serial.as_str(), o2.last_chip_serial.as_str()),
        ("494300000000100C", "4943000000001013")
    );
    assert_eq!(w.office.chip_lot("L-1").await.unwrap().available(), 0);

    // Batches draw card bodies from their order.
    let b1 = w.office.start_batch(&w.admin, o1.id, 10).await.unwrap();
    assert_eq!(b1.order_id, o1.id);
    assert_eq!(
        (b1.last_stage, b1.next_stage),
        (None, Some(Stage::Printing))
    );
    assert_eq!(b1.chip_batch(), (b1.id & 0xFFFF) as u16);
    let before = snapshot(&store).await;
    let err = w.office.start_batch(&w.admin, o1.id, 3).await.unwrap_err();
    assert!(
        matches!(
            err,
            OfficeError::Insufficient {
                asked: 3,
                available: 2,
                ..
            }
        ),
        "{err:?}"
    );
    for (id, q) in [(o1.id, 0), (o1.id, -2), (999, 1)] {
        assert!(w.office.start_batch(&w.admin, id, q).await.is_err());
    }
    assert_eq!(snapshot(&store).await, before);
    w.office.start_batch(&w.admin, o1.id, 2).await.unwrap();
    assert_eq!(w.office.production_order(o1.id).await.unwrap().batched, 12);
    assert_eq!(w.office.production_orders().await.unwrap().len(), 2);
    assert!(inventory_problems(&store).await.is_empty());
}

async fn full_batch_on_card_images(store: Store) {
    let w = world(store.clone()).await;
    city_card(&w).await;
    w.office
        .receive_chip_lot(&w.admin, lot("L-1", LOT_FIRST, 50))
        .await
        .unwrap();
    let o = w
        .office
        .open_production_order(&w.admin, order("CITY", "L-1", 10))
        .await
        .unwrap();
    let batch = w.office.start_batch(&w.admin, o.id, 10).await.unwrap();

    // Printing spoils one card body.
    let printing = w
        .office
        .record_printing(&w.admin, batch.id, "printer P-1", 1)
        .await
        .unwrap();
    assert_eq!(
        (printing.count_in, printing.count_out, printing.count_voided),
        (10, 9, 1)
    );
    assert_eq!(
        (
            printing.operator_login.as_str(),
            printing.machine_number.as_str(),
            printing.equipment.as_str()
        ),
        ("admin", "CONSOLE-1", "printer P-1")
    );

    // Coding: nine chips; the card maker codes them into image files. Chip 3 fails to code,
    // chip 6 is coded (unknown to anyone) with a transport key from another master.
    let plan = w.office.coding_plan(batch.id).await.unwrap();
    assert_eq!(plan.chip_serials.len(), 9);
    assert_eq!(plan.chip_serials[0], "4943000000001000");
    assert_eq!(plan.chip_serials[8], "4943000000001008");
    assert_eq!(plan.transport_key_version, 1);
    assert_eq!(plan.chip_batch, batch.chip_batch());
    let specs = plan.blank_cards([0x20, 0x26, 0x11, 0x26]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    let mut coded = Vec::new();
    for (i, (spec, serial)) in specs.iter().zip(&plan.chip_serials).enumerate() {
        assert_eq!(spec.chip_serial, mf::chip_serial_bytes(serial).unwrap());
        if i == 3 {
            coded.push(CodedCard {
                chip_serial: serial.to_lowercase(),
                failure: Some("EEPROM verify failed after the transport key write".into()),
            });
            continue;
        }
        images.push((serial.clone(), code_image(dir.path(), spec, i == 6)));
        coded.push(CodedCard {
            chip_serial: serial.clone(),
            failure: None,
        });
    }
    let coding = w
        .office
        .record_coding(&w.admin, batch.id, "coder C-1", &coded)
        .await
        .unwrap();
    assert_eq!(
        (coding.count_in, coding.count_out, coding.count_voided),
        (9, 8, 1)
    );
    let failed_coding = w
        .office
        .inventory_card(&plan.chip_serials[3])
        .await
        .unwrap();
    assert_eq!(failed_coding.state, InventoryState::Void);
    assert_eq!(
        failed_coding.void_reason.as_deref(),
        Some("coding failed: EEPROM verify failed after the transport key write")
    );

    // Bronzing passes all; packaging scratches one card; gluing passes all.
    let scratched = images.remove(1).0;
    for (stage, voided, expected) in [
        (Stage::Bronzing, vec![], (8, 8, 0)),
        (
            Stage::Packaging,
            vec![VoidedCard {
                chip_serial: scratched.clone(),
                reason: "card body scratched".into(),
            }],
            (8, 7, 1),
        ),
        (Stage::Gluing, vec![], (7, 7, 0)),
    ] {
        let r = w
            .office
            .record_finishing(&w.admin, batch.id, stage, "line L-1", &voided)
            .await
            .unwrap();
        assert_eq!(
            (r.count_in, r.count_out, r.count_voided),
            expected,
            "{stage}"
        );
    }
    assert_eq!(
        w.office
            .inventory_card(&scratched)
            .await
            .unwrap()
            .void_reason
            .as_deref(),
        Some("packaging: card body scratched")
    );

    // Testing: every card image through the functional test, powered up from its file.
    let mut results = Vec::new();
    for (serial, path) in &images {
        let mut card = ImageCard::open(path).unwrap();
        let key = transport_key(&mf::chip_serial_bytes(serial).unwrap());
        results.push(TestedCard {
            chip_serial: serial.clone(),
            report: test_card(&mut card, &key),
        });
    }
    let broken = plan.chip_serials[6].clone();
    for r in &results {
        assert_eq!(r.report.passed(), r.chip_serial != broken, "{r:?}");
    }
    let testing = w
        .office
        .record_testing(&w.admin, batch.id, "tester T-9", &results)
        .await
        .unwrap();
    assert_eq!(
        (testing.count_in, testing.count_out, testing.count_voided),
        (7, 6, 1)
    );
    let broken_card = w.office.inventory_card(&broken).await.unwrap();
    assert_eq!(broken_card.state, InventoryState::Void);
    let reason = broken_card.void_reason.unwrap();
    assert!(
        reason.starts_with("testing: EXTERNAL AUTHENTICATE: ") && reason.contains("63CE"),
        "{reason}"
    );
    let history = w.office.inventory_history(&broken).await.unwrap();
    let moves: Vec<(Option<InventoryState>, InventoryState)> =
        history.iter().map(|h| (h.from, h.to)).collect();
    assert_eq!(
        moves,
        [
            (None, InventoryState::InProduction),
            (Some(InventoryState::InProduction), InventoryState::Void)
        ]
    );
    assert!(history
        .iter()
        .all(|h| h.operator_login == "admin" && h.machine_number == "CONSOLE-1"));

    // The batch is finished; six cards are in stock.
    let batch = w.office.production_batch(batch.id).await.unwrap();
    assert_eq!(
        (batch.last_stage, batch.next_stage),
        (Some(Stage::Testing), None)
    );
    let stages: Vec<Stage> = w
        .office
        .batch_stages(batch.id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.stage)
        .collect();
    assert_eq!(stages, Stage::ALL);
    let counts: Vec<(String, InventoryState, i64)> = w
        .office
        .inventory_counts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.product_code, c.state, c.count))
        .collect();
    assert_eq!(
        counts,
        [
            ("CITY".to_string(), InventoryState::InStock, 6),
            ("CITY".to_string(), InventoryState::Void, 3)
        ]
    );
    let cards = w.office.batch_cards(batch.id).await.unwrap();
    assert_eq!(cards.len(), 9);
    assert!(cards
        .iter()
        .all(|c| c.product_code == "CITY" && c.lot_number == "L-1" && c.order_id == o.id));
    let in_stock: Vec<&str> = cards
        .iter()
        .filter(|c| c.state == InventoryState::InStock)
        .map(|c| c.chip_serial.as_str())
        .collect();
    assert_eq!(
        in_stock,
        [
            "4943000000001000",
            "4943000000001002",
            "4943000000001004",
            "4943000000001005",
            "4943000000001007",
            "4943000000001008"
        ]
    );
    assert_eq!(w.office.production_order(o.id).await.unwrap().chips_used, 9);
    // The images of the cards in stock are still pristine blanks (the test cost no try).
    for (serial, path) in &images {
        let card = ImageCard::open(path).unwrap();
        assert_eq!(card.card().state(), iccard_cos::CardState::OpReady);
        if *serial != broken {
            assert_eq!(card.card().header().attack_counter, 0, "{serial}");
        }
    }
    assert!(inventory_problems(&store).await.is_empty());
    let report = iccard_office::check::check(&store).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let records = w.office.audit_records(0, 10_000).await.unwrap();
    let stage_records: Vec<&str> = records
        .iter()
        .filter(|r| r.action == "record_production_stage")
        .map(|r| r.detail.as_str())
        .collect();
    assert_eq!(stage_records.len(), 6);
    assert_eq!(
        stage_records[5],
        "testing on tester T-9: in 7, out 6, voided 1"
    );
}

async fn stages_run_in_order_once(store: Store) {
    let w = world(store.clone()).await;
    city_card(&w).await;
    w.office
        .receive_chip_lot(&w.admin, lot("L-1", LOT_FIRST, 10))
        .await
        .unwrap();
    let o = w
        .office
        .open_production_order(&w.admin, order("CITY", "L-1", 4))
        .await
        .unwrap();
    let batch = w.office.start_batch(&w.admin, o.id, 4).await.unwrap();

    let out_of_order = |r: Result<_, OfficeError>, stage: &str, why: &str| match r {
        Err(OfficeError::StageOutOfOrder {
            stage: s, why: w, ..
        }) => {
            assert_eq!(s, stage);
            assert!(w.contains(why), "{w}");
        }
        other => panic!("{stage}: {other:?}"),
    };
    let before = snapshot(&store).await;
    out_of_order(
        w.office
            .record_finishing(&w.admin, batch.id, Stage::Bronzing, "line", &[])
            .await,
        "bronzing",
        "last stage is none (just started); the next stage is printing",
    );
    out_of_order(
        w.office
            .record_coding(&w.admin, batch.id, "coder", &[])
            .await,
        "coding",
        "next stage is printing",
    );
    out_of_order(
        w.office
            .record_testing(&w.admin, batch.id, "tester", &[])
            .await,
        "testing",
        "next stage is printing",
    );
    assert!(matches!(
        w.office.coding_plan(batch.id).await,
        Err(OfficeError::StageOutOfOrder { .. })
    ));
    assert_eq!(snapshot(&store).await, before);
    let (action, outcome, detail) = last_audit(&w.office).await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("record_production_stage", "failed")
    );
    assert!(detail.starts_with(&format!(
        "batch {}: testing cannot be recorded now",
        batch.id
    )));

    // Bad printing input.
    for spoiled in [-1, 5] {
        assert!(matches!(
            w.office
                .record_printing(&w.admin, batch.id, "printer", spoiled)
                .await,
            Err(OfficeError::Invalid { .. })
        ));
    }
    assert!(matches!(
        w.office.record_printing(&w.admin, batch.id, "", 0).await,
        Err(OfficeError::Invalid {
            what: "equipment",
            ..
        })
    ));
    assert!(matches!(
        w.office.record_printing(&w.admin, 999, "printer", 0).await,
        Err(OfficeError::NotFound { .. })
    ));
    assert_eq!(snapshot(&store).await, before);

    w.office
        .record_printing(&w.admin, batch.id, "printer", 0)
        .await
        .unwrap();
    let before = snapshot(&store).await;
    out_of_order(
        w.office
            .record_printing(&w.admin, batch.id, "printer", 0)
            .await,
        "printing",
        "printing is already recorded; the next stage is coding",
    );
    out_of_order(
        w.office
            .record_finishing(&w.admin, batch.id, Stage::Gluing, "line", &[])
            .await,
        "gluing",
        "last stage is printing; the next stage is coding",
    );
    assert_eq!(snapshot(&store).await, before);
    // record_finishing is only for bronzing, packaging and gluing.
    for stage in [Stage::Printing, Stage::Coding, Stage::Testing] {
        assert!(matches!(
            w.office
                .record_finishing(&w.admin, batch.id, stage, "line", &[])
                .await,
            Err(OfficeError::Invalid {
                what: "finishing stage",
                ..
            })
        ));
    }
    assert_eq!(snapshot(&store).await, before);

    // Run it to the end; afterwards nothing more can be recorded.
    let plan = w.office.coding_plan(batch.id).await.unwrap();
    let coded: Vec<CodedCard> = plan
        .chip_serials
        .iter()
        .map(|s| CodedCard {
            chip_serial: s.clone(),
            failure: None,
        })
        .collect();
    w.office
        .record_coding(&w.admin, batch.id, "coder", &coded)
        .await
        .unwrap();
    out_of_order(
        w.office
            .record_coding(&w.admin, batch.id, "coder", &coded)
            .await,
        "coding",
        "coding is already recorded; the next stage is bronzing",
    );
    for stage in [Stage::Bronzing, Stage::Packaging, Stage::Gluing] {
        w.office
            .record_finishing(&w.admin, batch.id, stage, "line", &[])
            .await
            .unwrap();
    }
    out_of_order(
        w.office
            .record_finishing(&w.admin, batch.id, Stage::Packaging, "line", &[])
            .await,
        "packaging",
        "packaging is already recorded; the next stage is testing",
    );
    let reports: Vec<TestedCard> = plan
        .blank_cards([0x20, 0x26, 0x11, 0x26])
        .unwrap()
        .iter()
        .zip(&plan.chip_serials)
        .map(|(spec, serial)| {
            let eeprom = manufacture::eeprom(32, DEFAULT_ENDURANCE).unwrap();
            let mut card =
                MemCard(manufacture::make_blank(eeprom, SeededRandom::new(5), spec).unwrap());
            TestedCard {
                chip_serial: serial.clone(),
                report: test_card(&mut card, &transport_key(&spec.chip_serial)),
            }
        })
        .collect();
    w.office
        .record_testing(&w.admin, batch.id, "tester", &reports)
        .await
        .unwrap();
    let before = snapshot(&store).await;
    out_of_order(
        w.office
            .record_testing(&w.admin, batch.id, "tester", &reports)
            .await,
        "testing",
        "the batch is finished",
    );
    out_of_order(
        w.office
            .record_printing(&w.admin, batch.id, "printer", 0)
            .await,
        "printing",
        "the batch is finished",
    );
    assert_eq!(snapshot(&store).await, before);
    assert!(inventory_problems(&store).await.is_empty());
}

async fn coding_and_testing_results_must_match_the_batch(store: Store) {
    let w = world(store.clone()).await;
    city_card(&w).await;
    w.office
        .receive_chip_lot(&w.admin, lot("L-1", LOT_FIRST, 10))
        .await
        .unwrap();
    let o = w
        .office
        .open_production_order(&w.admin, order("CITY", "L-1", 6))
        .await
        .unwrap();
    let batch = w.office.start_batch(&w.admin, o.id, 3).await.unwrap();
    w.office
        .record_printing(&w.admin, batch.id, "printer", 0)
        .await
        .unwrap();
    let plan = w.office.coding_plan(batch.id).await.unwrap();
    assert_eq!(
        plan.chip_serials,
        ["4943000000001000", "4943000000001001", "4943000000001002"]
    );
    let ok = |s: &str| CodedCard {
        chip_serial: s.into(),
        failure: None,
    };
    let before = snapshot(&store).await;
    let bad_runs: Vec<(Vec<CodedCard>, &str)> = vec![
        (
            vec![ok("4943000000001000"), ok("4943000000001001")],
            "2 results for the 3",
        ),
        (
            vec![
                ok("4943000000001000"),
                ok("4943000000001001"),
                ok("4943000000001003"),
            ],
            "not in this run's chips",
        ),
        (
            vec![
                ok("4943000000001000"),
                ok("4943000000001001"),
                ok("4943000000001001"),
            ],
            "reported twice",
        ),
        (
            vec![
                ok("4943000000001000"),
                ok("4943000000001001"),
                ok("494300000000100"),
            ],
            "16 hexadecimal digits",
        ),
        (
            vec![
                ok("4943000000001000"),
                ok("4943000000001001"),
                CodedCard {
                    chip_serial: "4943000000001002".into(),
                    failure: Some(String::new()),
                },
            ],
            "coding failure",
        ),
    ];
    for (run, why) in bad_runs {
        let err = w
            .office
            .record_coding(&w.admin, batch.id, "coder", &run)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    assert_eq!(snapshot(&store).await, before);
    // Any order is fine.
    let run: Vec<CodedCard> = plan.chip_serials.iter().rev().map(|s| ok(s)).collect();
    w.office
        .record_coding(&w.admin, batch.id, "coder", &run)
        .await
        .unwrap();
    // A second batch of the order codes the next chips.
    let second = w.office.start_batch(&w.admin, o.id, 2).await.unwrap();
    w.office
        .record_printing(&w.admin, second.id, "printer", 0)
        .await
        .unwrap();
    assert_eq!(
        w.office.coding_plan(second.id).await.unwrap().chip_serials,
        ["4943000000001003", "4943000000001004"]
    );

    // Finishing names cards of the batch in production only.
    let before = snapshot(&store).await;
    for (voided, why) in [
        (
            vec![("4943000000001003", "dropped")],
            "not a card in production in batch",
        ),
        (vec![("4943000000001000", "")], "void reason"),
        (
            vec![("4943000000001000", "a"), ("4943000000001000", "b")],
            "listed twice",
        ),
    ] {
        let voided: Vec<VoidedCard> = voided
            .into_iter()
            .map(|(c, r)| VoidedCard {
                chip_serial: c.into(),
                reason: r.into(),
            })
            .collect();
        let err = w
            .office
            .record_finishing(&w.admin, batch.id, Stage::Bronzing, "line", &voided)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    assert_eq!(snapshot(&store).await, before);
    for stage in [Stage::Bronzing, Stage::Packaging, Stage::Gluing] {
        w.office
            .record_finishing(&w.admin, batch.id, stage, "line", &[])
            .await
            .unwrap();
    }

    // Testing needs every card in production exactly once, and the reported chip must match.
    let specs = plan.blank_cards([0x20, 0x26, 0x11, 0x26]).unwrap();
    let report_for = |i: usize| -> FunctionalReport {
        let eeprom = manufacture::eeprom(32, DEFAULT_ENDURANCE).unwrap();
        let mut card = MemCard(
            manufacture::make_blank(eeprom, SeededRandom::new(i as u64), &specs[i]).unwrap(),
        );
        test_card(&mut card, &transport_key(&specs[i].chip_serial))
    };
    let tested = |serial: &str, i: usize| TestedCard {
        chip_serial: serial.into(),
        report: report_for(i),
    };
    let before = snapshot(&store).await;
    for (run, why) in [
        (
            vec![tested("4943000000001000", 0), tested("4943000000001001", 1)],
            "chip 4943000000001002 is missing",
        ),
        (
            vec![
                tested("4943000000001000", 0),
                tested("4943000000001001", 1),
                tested("4943000000001002", 2),
                tested("4943000000001003", 2),
            ],
            "not a card in production",
        ),
        (
            vec![
                tested("4943000000001000", 0),
                tested("4943000000001000", 0),
                tested("4943000000001002", 2),
            ],
            "reported twice",
        ),
    ] {
        let err = w
            .office
            .record_testing(&w.admin, batch.id, "tester", &run)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    assert_eq!(snapshot(&store).await, before);
    // Card 1 carries card 2's report: it passes the test but reports another chip serial.
    // Card 2's report failed with a long, multi-line detail: the void reason is one line of
    // at most 200 characters.
    let mut long_failure = report_for(2);
    let last = long_failure.steps.last_mut().unwrap();
    last.passed = false;
    last.detail = format!("first line\nsecond line {}", "x".repeat(300));
    w.office
        .record_testing(
            &w.admin,
            batch.id,
            "tester",
            &[
                tested("4943000000001000", 0),
                tested("4943000000001001", 2),
                TestedCard {
                    chip_serial: "4943000000001002".into(),
                    report: long_failure,
                },
            ],
        )
        .await
        .unwrap();
    let reason = w
        .office
        .inventory_card("4943000000001002")
        .await
        .unwrap()
        .void_reason
        .unwrap();
    assert!(
        reason.starts_with("testing: EXTERNAL AUTHENTICATE: first line second line xxx"),
        "{reason}"
    );
    assert!(
        reason.ends_with("...") && reason.chars().count() == 200,
        "{reason}"
    );
    let card = w.office.inventory_card("4943000000001001").await.unwrap();
    assert_eq!(card.state, InventoryState::Void);
    assert_eq!(
        card.void_reason.as_deref(),
        Some(
            "testing: the card reports chip serial 4943000000001002, recorded as 4943000000001001"
        )
    );
    assert_eq!(
        w.office
            .inventory_card("4943000000001000")
            .await
            .unwrap()
            .state,
        InventoryState::InStock
    );
    assert!(inventory_problems(&store).await.is_empty());
}

async fn inventory_moves_follow_the_table(store: Store) {
    use InventoryState::*;
    // The table itself, spelled out.
    let table: Vec<(InventoryState, Vec<InventoryState>)> = TRANSITIONS
        .iter()
        .map(|(from, to)| (*from, to.to_vec()))
        .collect();
    assert_eq!(
        table,
        [
            (InProduction, vec![InStock, Void]),
            (InStock, vec![Allocated, Issued, Void, Destroyed]),
            (Allocated, vec![InStock, Issued, Void]),
            (Issued, vec![Returned]),
            (Returned, vec![Refurbished, Destroyed]),
            (Refurbished, vec![InStock, Destroyed]),
            (Void, vec![Destroyed]),
            (Destroyed, vec![]),
        ]
    );
    for s in InventoryState::ALL {
        assert_eq!(InventoryState::parse(s.as_str()).unwrap(), s);
    }

    let w = world(store.clone()).await;
    city_card(&w).await;
    w.office
        .receive_chip_lot(&w.admin, lot("L-1", LOT_FIRST, 10))
        .await
        .unwrap();
    let o = w
        .office
        .open_production_order(&w.admin, order("CITY", "L-1", 6))
        .await
        .unwrap();
    let serials = produce_in_memory(&w, o.id, 6).await;
    assert_eq!(serials.len(), 6);

    // Allocation: two to the head office, one to the issuance clerk; oldest first.
    let to_hq = w
        .office
        .allocate_cards(
            &w.admin,
            Allocate {
                product_code: "CITY".into(),
                quantity: 2,
                to: Holder::Branch("HQ".into()),
            },
        )
        .await
        .unwrap();
    let got: Vec<&str> = to_hq.iter().map(|c| c.chip_serial.as_str()).collect();
    assert_eq!(got, [serials[0].as_str(), serials[1].as_str()]);
    assert!(to_hq
        .iter()
        .all(|c| c.state == Allocated && c.holder == Some(Holder::Branch("HQ".into()))));
    let to_clerk = w
        .office
        .allocate_cards(
            &w.admin,
            Allocate {
                product_code: "CITY".into(),
                quantity: 1,
                to: Holder::Operator("issuer".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(to_clerk[0].chip_serial, serials[2]);
    assert_eq!(to_clerk[0].holder, Some(Holder::Operator("issuer".into())));
    let (action, outcome, detail) = last_audit(&w.office).await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("allocate_cards", "ok")
    );
    assert!(detail.contains("to operator issuer"), "{detail}");

    let before = snapshot(&store).await;
    let too_many = w
        .office
        .allocate_cards(
            &w.admin,
            Allocate {
                product_code: "CITY".into(),
                quantity: 4,
                to: Holder::Branch("HQ".into()),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            too_many,
            OfficeError::Insufficient {
                asked: 4,
                available: 3,
                ..
            }
        ),
        "{too_many:?}"
    );
    for (product, to, q) in [
        ("CITY", Holder::Branch("NOWHERE".into()), 1),
        ("CITY", Holder::Operator("nobody".into()), 1),
        ("NOPE", Holder::Branch("HQ".into()), 1),
        ("CITY", Holder::Branch("HQ".into()), 0),
    ] {
        let err = w
            .office
            .allocate_cards(
                &w.admin,
                Allocate {
                    product_code: product.into(),
                    quantity: q,
                    to,
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                OfficeError::NotFound { .. } | OfficeError::Invalid { .. }
            ),
            "{err:?}"
        );
    }
    // Returning a card that is in stock is not a move the table allows; nothing changes,
    // not even the allocated card listed before it.
    let err = w
        .office
        .return_to_stock(&w.admin, &[serials[0].clone(), serials[3].clone()])
        .await
        .unwrap_err();
    match &err {
        OfficeError::InventoryTransition {
            from, to, allowed, ..
        } => {
            assert_eq!((*from, *to), ("in_stock", "in_stock"));
            assert_eq!(allowed, "allocated, issued, void, destroyed");
        }
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        w.office.return_to_stock(&w.admin, &[]).await,
        Err(OfficeError::Invalid { .. })
    ));
    assert_eq!(snapshot(&store).await, before);

    let back = w
        .office
        .return_to_stock(&w.admin, &[serials[1].to_lowercase()])
        .await
        .unwrap();
    assert_eq!((back[0].state, &back[0].holder), (InStock, &None));
    let h = w.office.inventory_history(&serials[1]).await.unwrap();
    let moves: Vec<(Option<InventoryState>, InventoryState)> =
        h.iter().map(|r| (r.from, r.to)).collect();
    assert_eq!(
        moves,
        [
            (None, InProduction),
            (Some(InProduction), InStock),
            (Some(InStock), Allocated),
            (Some(Allocated), InStock)
        ]
    );
    assert_eq!(h[2].holder, Some(Holder::Branch("HQ".into())));
    assert_eq!(h[3].reason, "returned to stock by branch HQ");

    // What issuance and recycling do, through the public state change in their own
    // transaction.
    let clerk = &w.issuer_clerk;
    let mut tx = store.write().await.unwrap();
    let op = operation(&mut tx, clerk, "open_card").await;
    let issued_change = InventoryChange {
        to: Issued,
        holder: None,
        application_serial: Some("8860000000000001".into()),
        product_version: Some(1),
        reason: "issued".into(),
    };
    let issued = change_state(&mut tx, &serials[2], &issued_change, clerk, op, 1)
        .await
        .unwrap();
    assert_eq!(issued.state, Issued);
    assert_eq!(
        issued.application_serial.as_deref(),
        Some("8860000000000001")
    );
    assert_eq!((issued.product_version, &issued.holder), (Some(1), &None));
    // Refusals inside the transaction.
    let refusals = [
        (
            serials[2].as_str(),
            change(InStock, "back"),
            "cannot become in_stock",
        ),
        (
            serials[3].as_str(),
            InventoryChange {
                product_version: None,
                ..issued_change.clone()
            },
            "application serial and product version",
        ),
        (
            serials[3].as_str(),
            InventoryChange {
                product_version: Some(2),
                ..issued_change.clone()
            },
            "CITY version 2",
        ),
        (
            serials[3].as_str(),
            InventoryChange {
                application_serial: Some("88600000000000000001X".into()),
                ..issued_change.clone()
            },
            "hexadecimal",
        ),
        (
            serials[3].as_str(),
            change(Allocated, "to nobody"),
            "name the branch or operator",
        ),
        (
            serials[3].as_str(),
            InventoryChange {
                holder: Some(Holder::Branch("HQ".into())),
                ..change(Void, "x")
            },
            "only an allocated card",
        ),
        (
            serials[3].as_str(),
            InventoryChange {
                application_serial: Some("01".into()),
                product_version: Some(1),
                ..change(Void, "x")
            },
            "belong to issuance only",
        ),
        (serials[3].as_str(), change(Void, ""), "reason"),
        (
            "4943000000009999",
            change(Void, "x"),
            "no card with chip serial",
        ),
    ];
    for (serial, c, why) in refusals {
        let err = change_state(&mut tx, serial, &c, clerk, op, 2)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    // Recycling: returned (issue data kept), refurbished (cleared), back to stock.
    let returned = change_state(
        &mut tx,
        &serials[2],
        &change(Returned, "holder returned it"),
        clerk,
        op,
        3,
    )
    .await
    .unwrap();
    assert_eq!(
        returned.application_serial.as_deref(),
        Some("8860000000000001")
    );
    let refurbished = change_state(
        &mut tx,
        &serials[2],
        &change(Refurbished, "re-initialized"),
        clerk,
        op,
        4,
    )
    .await
    .unwrap();
    assert_eq!(
        (refurbished.application_serial, refurbished.product_version),
        (None, None)
    );
    change_state(
        &mut tx,
        &serials[2],
        &change(InStock, "refurbished card"),
        clerk,
        op,
        5,
    )
    .await
    .unwrap();
    // A card damaged in stock: void, then destroyed; destroyed is final.
    change_state(
        &mut tx,
        &serials[4],
        &change(Void, "water damage"),
        clerk,
        op,
        6,
    )
    .await
    .unwrap();
    let destroyed = change_state(
        &mut tx,
        &serials[4],
        &change(Destroyed, "shredded"),
        clerk,
        op,
        7,
    )
    .await
    .unwrap();
    assert_eq!(destroyed.void_reason.as_deref(), Some("water damage"));
    let err = change_state(&mut tx, &serials[4], &change(InStock, "?"), clerk, op, 8)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nothing, it is final"), "{err}");
    tx.commit().await.unwrap();

    let h = w.office.inventory_history(&serials[2]).await.unwrap();
    let tail: Vec<(InventoryState, &str, Option<&str>)> = h[2..]
        .iter()
        .map(|r| {
            (
                r.to,
                r.operator_login.as_str(),
                r.application_serial.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        tail,
        [
            (Allocated, "admin", None),
            (Issued, "issuer", Some("8860000000000001")),
            (Returned, "issuer", Some("8860000000000001")),
            (Refurbished, "issuer", None),
            (InStock, "issuer", None),
        ]
    );
    assert_eq!(h[3].machine_number, "RP-1");
    let counts: Vec<(InventoryState, i64)> = w
        .office
        .inventory_counts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.state, c.count))
        .collect();
    assert_eq!(counts, [(InStock, 4), (Allocated, 1), (Destroyed, 1)]);
    assert!(inventory_problems(&store).await.is_empty());
}

async fn only_administrators_make_cards(store: Store) {
    use Action::*;
    let new_actions = [
        DefineProduct,
        ReviseProduct,
        ReceiveChipLot,
        OpenProductionOrder,
        StartProductionBatch,
        RecordProductionStage,
        AllocateCards,
        ReturnCardsToStock,
    ];
    for a in new_actions {
        assert!(Role::Administrator.permits(a), "{a}");
        for r in [Role::IssuanceClerk, Role::RechargeClerk, Role::Auditor] {
            assert!(!r.permits(a), "{r} {a}");
        }
    }

    let w = world(store.clone()).await;
    city_card(&w).await;
    w.office
        .receive_chip_lot(&w.admin, lot("L-1", LOT_FIRST, 10))
        .await
        .unwrap();
    let o = w
        .office
        .open_production_order(&w.admin, order("CITY", "L-1", 4))
        .await
        .unwrap();
    let batch = w.office.start_batch(&w.admin, o.id, 4).await.unwrap();
    let before = snapshot(&store).await;
    let denied = |r: Result<(), OfficeError>, role: Role, action: Action| match r {
        Err(OfficeError::Denied {
            role: got_role,
            action: got_action,
            ..
        }) => assert_eq!((got_role, got_action), (role, action)),
        other => panic!("{role} {action}: {other:?}"),
    };
    denied(
        w.office
            .create_product(
                &w.issuer_clerk,
                NewProduct {
                    code: "X".into(),
                    name: "X".into(),
                    profile: profile(),
                },
            )
            .await
            .map(drop),
        Role::IssuanceClerk,
        DefineProduct,
    );
    denied(
        w.office
            .revise_product(&w.auditor, "CITY", profile())
            .await
            .map(drop),
        Role::Auditor,
        ReviseProduct,
    );
    denied(
        w.office
            .receive_chip_lot(&w.recharge_clerk, lot("L-2", "4943000000002000", 5))
            .await
            .map(drop),
        Role::RechargeClerk,
        ReceiveChipLot,
    );
    denied(
        w.office
            .open_production_order(&w.issuer_clerk, order("CITY", "L-1", 1))
            .await
            .map(drop),
        Role::IssuanceClerk,
        OpenProductionOrder,
    );
    denied(
        w.office.start_batch(&w.auditor, o.id, 1).await.map(drop),
        Role::Auditor,
        StartProductionBatch,
    );
    denied(
        w.office
            .record_printing(&w.auditor, batch.id, "printer", 0)
            .await
            .map(drop),
        Role::Auditor,
        RecordProductionStage,
    );
    denied(
        w.office
            .allocate_cards(
                &w.issuer_clerk,
                Allocate {
                    product_code: "CITY".into(),
                    quantity: 1,
                    to: Holder::Operator("issuer".into()),
                },
            )
            .await
            .map(drop),
        Role::IssuanceClerk,
        AllocateCards,
    );
    denied(
        w.office
            .return_to_stock(&w.recharge_clerk, &["4943000000001000".into()])
            .await
            .map(drop),
        Role::RechargeClerk,
        ReturnCardsToStock,
    );
    assert_eq!(snapshot(&store).await, before);
    let records = w.office.audit_records(0, 10_000).await.unwrap();
    let denials = records.iter().filter(|r| r.outcome == "denied").count();
    assert_eq!(denials, 8);

    // An administrator at a recharge point does not run the production line.
    let admin_at_rp = w
        .office
        .login("admin", &Password::new(ADMIN_PASSWORD), "RP-1")
        .await
        .unwrap();
    let err = w
        .office
        .record_printing(&admin_at_rp, batch.id, "printer", 0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OfficeError::WrongMachine {
                needed: "office_console",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(snapshot(&store).await, before);

    // The auditor, promoted to administrator, may.
    w.office
        .change_operator_role(&w.admin, "auditor", Role::Administrator)
        .await
        .unwrap();
    w.office
        .record_printing(&w.auditor, batch.id, "printer", 0)
        .await
        .unwrap();
}

async fn check_finds_tampered_inventory(store: Store) {
    let w = world(store.clone()).await;
    city_card(&w).await;
    w.office
        .receive_chip_lot(&w.admin, lot("L-1", LOT_FIRST, 10))
        .await
        .unwrap();
    let o = w
        .office
        .open_production_order(&w.admin, order("CITY", "L-1", 3))
        .await
        .unwrap();
    let serials = produce_in_memory(&w, o.id, 3).await;
    assert!(inventory_problems(&store).await.is_empty());

    async fn raw(store: &Store, sql: &str) {
        let mut tx = store.write().await.unwrap();
        tx.execute(sql, &[]).await.unwrap();
        tx.commit().await.unwrap();
    }
    // A card moved without a history row.
    raw(
        &store,
        &format!(
            "UPDATE inventory_cards SET state = 'issued', application_serial = '01', \
             product_version = 1 WHERE chip_serial = '{}'",
            serials[0]
        ),
    )
    .await;
    // A stage whose counts do not add up.
    raw(
        &store,
        "UPDATE production_stages SET count_out = count_out - 1, count_voided = count_voided + 1 \
         WHERE stage = 'bronzing'",
    )
    .await;
    // Chips reserved that no order holds.
    raw(&store, "UPDATE chip_lots SET reserved = reserved + 1").await;
    let problems = inventory_problems(&store).await;
    let want = [
        format!(
            "card {} is issued but its last history row says in_stock",
            serials[0]
        ),
        "packaging: in 3, out 3, voided 0; expected 2 in".to_string(),
        "lot L-1 counts 4 chips reserved but its orders hold 3".to_string(),
    ];
    for w in &want {
        assert!(
            problems.iter().any(|p| p.contains(w.as_str())),
            "{w} not in {problems:?}"
        );
    }
    assert_eq!(problems.len(), 3, "{problems:?}");

    // A history row that skips a state.
    raw(
        &store,
        &format!(
            "UPDATE inventory_card_history SET from_state = 'allocated' WHERE to_state = 'in_stock' \
             AND card_id = (SELECT id FROM inventory_cards WHERE chip_serial = '{}')",
            serials[1]
        ),
    )
    .await;
    let problems = inventory_problems(&store).await;
    assert!(
        problems.iter().any(|p| p.contains(&format!(
            "card {} history row 2 moves allocated -> in_stock after in_production",
            serials[1]
        ))),
        "{problems:?}"
    );
}
