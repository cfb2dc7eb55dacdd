//! `iccard demo`: the issuer's whole life cycle on the embedded defaults (SQLite, development
//! keys), each stage named as it runs: a back office is set up, a product defined, a chip lot
//! received, a production batch taken through every stage on card images (one card fails its
//! functional test and is voided), cards issued with their first recharge, more recharges, an
//! offline purchase at a point of sale with its PSAM and journal, uploaded as a chained batch and
//! settled with its TAC verified, a loss report that blocks the card, a replacement card that
//! receives the lost card's balance after the late-record window, a card returned with its refund (unloaded on the card, erased, coded again and back
//! in stock), and the books checked at the end.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use iccard_apdu::hex;
use iccard_cos::{Card, ChipData, Manufacture};
use iccard_issuer::functional::test_card;
use iccard_issuer::manufacture;
use iccard_link::{load_image, save_image, ImageCard, OsRandom};
use iccard_office::issuance::{HolderData, IssueRequest};
use iccard_office::keystore::DevKeystore;
use iccard_office::machines::{MachineKind, NewMachine};
use iccard_office::manufacture::{
    CodedCard, NewChipLot, NewProductionOrder, Stage, TestedCard, VoidedCard,
};
use iccard_office::products::{
    Algorithm, ApplicationKind, CardType, NewProduct, ProductApplication, ProductProfile,
};
use iccard_office::recharge::{terminal_id_of, RechargeRequest};
use iccard_office::returns::{Condition, Disposition, ReturnRequest};
use iccard_office::{InitConfig, Mode, NewOperator, Office, Password, Role, Session, Store};
use iccard_pos::{PointOfUse, PosConfig};
use iccard_terminal::{Psam, PurseCard, TransactionTime};
use zeroize::Zeroizing;

fn yuan(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

fn stage(n: u32, what: &str) {
    println!("\n{n}. {what}");
}

const CLERK_PASSWORD: &str = "demo-password";

async fn login(office: &Office, login: &str, machine: &str) -> Result<Session> {
    Ok(office
        .login(login, &Password::new(CLERK_PASSWORD), machine)
        .await?)
}

/// Runs the life-cycle demo in `dir` (card images, `office.db`).
pub async fn run(dir: &Path, kept: bool) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let when = TransactionTime::from_unix(now);
    let today = manufacture::bcd_date_from_unix_days((now / 86_400) as i64);
    let keys = DevKeystore::new(Mode::Development)?;

    stage(
        1,
        "Back office: SQLite database, development keys, operators and machines",
    );
    let db = dir.join("office.db");
    let store = Store::connect(&format!("sqlite://{}", db.display())).await?;
    let office = Office::init(
        store.clone(),
        InitConfig {
            issuer_number: "31000001".into(),
            mode: Mode::Development,
            branch_code: "HQ".into(),
            branch_name: "Head office".into(),
            console_machine_number: "C0001".into(),
            admin_login: "admin".into(),
            admin_display_name: "Administrator".into(),
            admin_password: Password::new(CLERK_PASSWORD),
        },
    )
    .await?;
    let admin = login(&office, "admin", "C0001").await?;
    for (number, kind, psam) in [
        ("RP-001", MachineKind::RechargePoint, None),
        (
            "T-001",
            MachineKind::Terminal,
            Some("PSAM-0001".to_string()),
        ),
    ] {
        office
            .register_machine(
                &admin,
                NewMachine {
                    machine_number: number.into(),
                    kind,
                    branch_code: "HQ".into(),
                    psam_serial: psam,
                },
            )
            .await?;
    }
    for (name, role) in [
        ("ivy", Role::IssuanceClerk),
        ("rita", Role::RechargeClerk),
        ("audrey", Role::Auditor),
    ] {
        office
            .create_operator(
                &admin,
                NewOperator {
                    login: name.into(),
                    display_name: name.into(),
                    role,
                    password: Password::new(CLERK_PASSWORD),
                },
            )
            .await?;
    }
    println!("  issuer 31000001, database {}", db.display());
    println!("  recharge point RP-001, terminal T-001 with PSAM-0001; operators ivy (issuance), rita (recharge), audrey (audit)");

    stage(
        2,
        "Card product CITY: registered, deposit 20.00, fee 5.00, 5 years, at most 1,000.00",
    );
    office
        .create_product(
            &admin,
            NewProduct {
                code: "CITY".into(),
                name: "City card".into(),
                profile: ProductProfile {
                    card_type: CardType::Registered,
                    deposit_minor: 2_000,
                    fee_minor: 500,
                    validity_months: 60,
                    max_balance_minor: 100_000,
                    offline_purchase_limit_minor: 20_000,
                    offline_cumulative_limit_minor: 50_000,
                    algorithm: Algorithm::TripleDes,
                    applications: vec![ProductApplication {
                        application: ApplicationKind::Purse,
                        rights: vec!["load".into(), "purchase".into()],
                    }],
                },
            },
        )
        .await?;

    stage(
        3,
        "Manufacture: a chip lot of 4, a production order, a batch through every stage",
    );
    let lot = office
        .receive_chip_lot(
            &admin,
            NewChipLot {
                lot_number: "LOT-2026-001".into(),
                chip_maker: "Icmaker".into(),
                chip_model: "IC-32K".into(),
                quantity: 4,
                first_chip_serial: "4943000000001000".into(),
                transport_key_version: 1,
            },
        )
        .await?;
    println!(
        "  lot {}: chips {}..{}",
        lot.lot_number, lot.first_chip_serial, lot.last_chip_serial
    );
    let order = office
        .open_production_order(
            &admin,
            NewProductionOrder {
                product_code: "CITY".into(),
                lot_number: lot.lot_number.clone(),
                quantity: 4,
            },
        )
        .await?;
    let batch = office.start_batch(&admin, order.id, 4).await?;
    office
        .record_printing(&admin, batch.id, "printer P-1", 0)
        .await?;
    println!("  printing: 4 card bodies printed");
    let plan = office.coding_plan(batch.id).await?;
    let specs = plan.blank_cards(today)?;
    let mut images: Vec<PathBuf> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let eeprom = manufacture::eeprom(32, iccard_cos::nvm::DEFAULT_ENDURANCE)?;
        // The last chip is coded with a transport key from a foreign master: its functional
        // test will fail, as a mis-coded chip would.
        let card = if i + 1 == specs.len() {
            Card::manufacture(
                eeprom,
                OsRandom,
                &Manufacture {
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
                },
            )
            .map_err(|sw| anyhow::anyhow!("coding: {sw}"))?
        } else {
            manufacture::make_blank(eeprom, OsRandom, spec)?
        };
        let path = dir.join(format!("{}.card", plan.chip_serials[i]));
        save_image(&path, &card.into_eeprom())?;
        images.push(path);
    }
    let coded: Vec<CodedCard> = plan
        .chip_serials
        .iter()
        .map(|s| CodedCard {
            chip_serial: s.clone(),
            failure: None,
        })
        .collect();
    office
        .record_coding(&admin, batch.id, "coder C-1", &coded)
        .await?;
    println!(
        "  coding: 4 blank cards made (chip data, transport key, OP_READY), images in {}",
        dir.display()
    );
    for st in [Stage::Bronzing, Stage::Packaging, Stage::Gluing] {
        office
            .record_finishing(&admin, batch.id, st, "line L-1", &[] as &[VoidedCard])
            .await?;
        println!("  {}: 4 in, 4 out", st.as_str());
    }
    let mut tested = Vec::new();
    for (path, (serial, spec)) in images.iter().zip(plan.chip_serials.iter().zip(&specs)) {
        let mut card = ImageCard::open(path)?;
        let report = test_card(
            &mut card,
            &manufacture::transport_key(
                &iccard_issuer::devkeys::TRANSPORT.value(),
                &spec.chip_serial,
            ),
        );
        println!(
            "  testing {serial}: {}",
            match report.failure() {
                None => "passed (ATR, SELECT MF, GET CHALLENGE, EXTERNAL AUTHENTICATE)".to_string(),
                Some(why) => format!("FAILED, voided: {why}"),
            }
        );
        tested.push(TestedCard {
            chip_serial: serial.clone(),
            report,
        });
    }
    office
        .record_testing(&admin, batch.id, "tester T-9", &tested)
        .await?;
    for c in office.inventory_counts().await? {
        println!(
            "  inventory: {} {} card(s) {}",
            c.count,
            c.product_code,
            c.state.as_str()
        );
    }

    stage(
        4,
        "Issuance at RP-001: personalization (card keys from the keystore) and first recharge",
    );
    let ivy = login(&office, "ivy", "RP-001").await?;
    let rita = login(&office, "rita", "RP-001").await?;
    let holders = [
        ("Li Wei", "110101199003070011"),
        ("Zhang Min", "310101198512120022"),
    ];
    let mut issued = Vec::new();
    for (path, (name, id)) in images.iter().zip(holders) {
        let mut card = ImageCard::open(path)?;
        let r = office
            .issue_card(
                &ivy,
                &keys,
                &mut card,
                &IssueRequest {
                    pin: Zeroizing::new("123456".into()),
                    holder: Some(HolderData {
                        name: name.into(),
                        id_number: id.into(),
                    }),
                    date: today,
                },
            )
            .await?;
        println!(
            "  card {} (chip {}) issued to {name}: deposit {} + fee {} in cash, valid {}..{}",
            r.card_number,
            r.chip_serial,
            yuan(r.deposit_minor),
            yuan(r.fee_minor),
            r.valid_from,
            r.valid_to
        );
        drop(card);
        let mut purse = PurseCard::open(ImageCard::open(path)?)?;
        let first = office
            .recharge(
                &rita,
                &keys,
                &mut purse,
                RechargeRequest {
                    amount_minor: 10_000,
                    when,
                },
            )
            .await?;
        let l = &first.load;
        println!(
            "  first recharge: card {} type {} amount {} on {} by {} at machine {}, online serial {}, TAC {} verified",
            l.card_number,
            l.card_type.as_deref().unwrap_or("-"),
            yuan(l.amount_minor),
            l.date,
            l.operator,
            l.machine_number,
            l.online_serial,
            l.tac.as_deref().unwrap_or("-")
        );
        issued.push((path.clone(), r.card_number));
    }

    stage(
        5,
        "Use: another recharge, an offline purchase at T-001 with its PSAM, its settlement",
    );
    let (card1, _) = &issued[0];
    let mut purse = PurseCard::open(ImageCard::open(card1)?)?;
    let more = office
        .recharge(
            &rita,
            &keys,
            &mut purse,
            RechargeRequest {
                amount_minor: 5_000,
                when,
            },
        )
        .await?;
    println!(
        "  recharge {}: balance {} -> {}",
        yuan(more.load.amount_minor),
        yuan(more.load.balance_before_minor),
        yuan(more.load.balance_after_minor)
    );
    let machines = office.machines().await?;
    let t001 = machines
        .iter()
        .find(|m| m.machine_number == "T-001")
        .context("terminal T-001")?;
    let terminal_id = terminal_id_of(t001.id)?;
    let sam_path = dir.join("psam-0001.card");
    let eeprom = manufacture::eeprom(16, iccard_cos::nvm::DEFAULT_ENDURANCE)?;
    let sam = manufacture::make_blank(
        eeprom,
        OsRandom,
        &manufacture::BlankCard {
            chip_serial: 0x5053_414D_0000_0001u64.to_be_bytes(),
            production_date: today,
            batch: 1,
            transport_key_version: 1,
            attack_threshold: manufacture::DEFAULT_ATTACK_THRESHOLD,
        },
    )?;
    save_image(&sam_path, sam.nvm().eeprom())?;
    iccard_issuer::psam::personalize(
        ImageCard::open(&sam_path)?,
        &iccard_issuer::psam::PsamPersonalization { terminal_id },
    )?;
    // The point of sale: its PSAM, its journal, the loss list from the office.
    office.add_merchant(&admin, "M-001", "City kiosk").await?;
    let assignment = office
        .assign_terminal(&admin, "T-001", &hex::encode(&terminal_id), "M-001")
        .await?;
    let psam = Psam::open(ImageCard::open(&sam_path)?)?;
    let mut pos = PointOfUse::open(psam, dir.join("terminal-T-001.db"), PosConfig::default())?;
    let delta: iccard_pos::LossListDelta =
        serde_json::from_value(serde_json::to_value(office.loss_list_since(0).await?)?)?;
    pos.update_loss_list(&delta, &when)?;
    drop(purse);
    let sale = pos.sell(ImageCard::open(card1)?, 1_234, &when)?;
    let rec = &sale.record.record;
    println!(
        "  purchase 12.34 offline at terminal {} (journaled before the debit): balance {} -> {}, offline serial {}, terminal serial {}, TAC {}",
        assignment.terminal.terminal_id,
        yuan(i64::from(rec.balance_before_fen)),
        yuan(i64::from(sale.balance_after_fen)),
        rec.offline_serial,
        rec.terminal_serial,
        rec.tac.as_deref().unwrap_or("-")
    );
    let batch = pos
        .journal_mut()
        .next_batch(&terminal_id, 100)?
        .context("the sale is in the journal")?;
    let answer = office
        .ingest_batch(&keys, &batch)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    pos.journal_mut().mark_uploaded(&batch, &answer.results)?;
    println!(
        "  uploaded: batch {} ({} record(s), chained to the previous batch), answered {}",
        batch.sequence,
        batch.records.len(),
        answer
            .results
            .iter()
            .map(|r| {
                serde_json::to_value(r.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let date = when.date_string();
    let day = format!("{}-{}-{}", &date[..4], &date[4..6], &date[6..]);
    let run = office.settle_day(&admin, &day).await?;
    println!(
        "  settled {day}: {} record(s), {} from the float to merchant payable (TAC verified by the keystore), {} case(s)",
        run.records_settled,
        yuan(run.amount_minor),
        run.cases_opened
    );
    let purse = PurseCard::open(ImageCard::open(card1)?)?;
    drop(purse);

    stage(
        6,
        "Loss: the second holder reports the card lost; a recharge point refuses it",
    );
    let (card2, number2) = &issued[1];
    let e = office
        .report_loss(&ivy, number2, "holder called the service desk")
        .await?;
    println!("  card {number2} on the loss list (version {})", e.version);
    let mut purse2 = PurseCard::open(ImageCard::open(card2)?)?;
    match office
        .recharge(
            &rita,
            &keys,
            &mut purse2,
            RechargeRequest {
                amount_minor: 1_000,
                when,
            },
        )
        .await
    {
        Err(e) => println!("  recharge refused: {e}"),
        Ok(_) => bail!("a lost card was recharged"),
    }

    stage(
        7,
        "Replacement: a new card for the lost one; its balance moves after the late-record window",
    );
    let spare = images
        .get(2)
        .context("the batch left a third card in stock")?
        .clone();
    let mut card = ImageCard::open(&spare)?;
    let r = office
        .issue_card(
            &ivy,
            &keys,
            &mut card,
            &IssueRequest {
                pin: Zeroizing::new("654321".into()),
                holder: Some(HolderData {
                    name: holders[1].0.into(),
                    id_number: holders[1].1.into(),
                }),
                date: today,
            },
        )
        .await?;
    drop(card);
    println!(
        "  replacement card {} issued to {} (deposit {} + fee {})",
        r.card_number,
        holders[1].0,
        yuan(r.deposit_minor),
        yuan(r.fee_minor)
    );
    let mut fresh = PurseCard::open(ImageCard::open(&spare)?)?;
    match office
        .replace_card(&rita, &keys, &mut fresh, number2, when)
        .await
    {
        Err(e) => println!("  balance transfer now: refused: {e}"),
        Ok(_) => bail!("the balance moved inside the late-record window"),
    }
    office.set_late_record_window(&admin, 0).await?;
    println!("  (the administrator shortens the late-record window to 0 days for the demo)");
    let moved = office
        .replace_card(&rita, &keys, &mut fresh, number2, when)
        .await?;
    println!(
        "  {} moved from {} to {} on the card itself (no cash: the float only changes hands); {} is replaced and stays on the loss list",
        yuan(moved.amount_minor),
        moved.lost_card,
        moved.new_card,
        moved.lost_card
    );
    drop(fresh);

    stage(
        8,
        "Return: the first holder hands the card back; refund quoted, purse unloaded, card erased and back in stock",
    );
    office.set_return_fee(&admin, 200).await?;
    println!("  (return fee set to 2.00 by the administrator)");
    let mut purse = PurseCard::open(ImageCard::open(card1)?)?;
    let quote = office
        .return_quote(&ivy, &keys, &mut purse, Condition::Good)
        .await?;
    for l in &quote.lines {
        println!("  quote {:>10}  {}", yuan(l.amount_minor), l.rule);
    }
    println!("  quote {:>10}  refund in cash", yuan(quote.refund_minor));
    let back = office
        .return_card(
            &ivy,
            &keys,
            &mut purse,
            ReturnRequest {
                condition: Condition::Good,
                disposition: Disposition::Refurbish,
                accepted_refund_minor: quote.refund_minor,
                when,
            },
        )
        .await?;
    drop(purse);
    println!(
        "  card {} unloaded {} on the card (DEBIT FOR UNLOAD, TAC {}), refund {} paid; purse blocked, card erased; chip {} {}",
        back.card_number,
        yuan(back.unloaded_minor),
        back.tac.as_deref().unwrap_or("-"),
        yuan(back.refund_minor),
        back.chip_serial.as_deref().unwrap_or("-"),
        back.inventory_state.unwrap_or("-")
    );
    if let Some(chip) = &back.chip_serial {
        let serial = u64::from_str_radix(chip, 16)?.to_be_bytes();
        let spec = manufacture::BlankCard {
            chip_serial: serial,
            production_date: today,
            batch: 1,
            transport_key_version: 1,
            attack_threshold: manufacture::DEFAULT_ATTACK_THRESHOLD,
        };
        let card = manufacture::make_blank(load_image(card1)?, OsRandom, &spec)?;
        save_image(card1, &card.into_eeprom())?;
        let key = manufacture::transport_key(&iccard_issuer::devkeys::TRANSPORT.value(), &serial);
        let report = test_card(&mut ImageCard::open(card1)?, &key);
        let again = office.refurbished_to_stock(&admin, chip, &report).await?;
        println!(
            "  chip {chip} coded again and tested: {}",
            again.state.as_str()
        );
    }

    stage(9, "The books: iccard office check");
    let audrey = login(&office, "audrey", "C0001").await?;
    let report = office.check(&audrey).await?;
    for a in office.accounts().await? {
        println!("  {:<22} {:>10}", a.code, yuan(a.balance_minor));
    }
    println!(
        "  {} entries, {} cards, float {} = card balances {}; audit chain {} records",
        report.entries,
        report.cards,
        yuan(report.float_minor),
        report.shadow_total_minor.map(yuan).unwrap_or_default(),
        report.audit.records
    );
    store.close().await;
    iccard_office::config::OfficeConfig {
        issuer_number: "31000001".into(),
        mode: Mode::Development,
        console_machine: "C0001".into(),
        database_url: Some("sqlite://office.db".into()),
        database_url_env: None,
        keystore: iccard_office::config::KeystoreConfig::Development,
    }
    .save_new(dir)?;
    if report.is_clean() {
        println!("  verdict: clean");
        if kept {
            println!(
                "\ndemo finished. The office stays in {}: try\n  ICCARD_OPERATOR_PASSWORD={CLERK_PASSWORD} iccard office --office {} --operator audrey audit show",
                dir.display(),
                dir.display()
            );
        } else {
            println!("\ndemo finished (give --dir DIR to keep the office, its database and the card images)");
        }
        Ok(())
    } else {
        for p in &report.problems {
            println!("  PROBLEM: {p}");
        }
        bail!("check found {} problem(s)", report.problems.len())
    }
}
