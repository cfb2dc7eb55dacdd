//! `iccard demo`: the main job, the issuer's life cycle (`super::lifecycle`); with `--card-os`
//! the card-OS tour: a blank card is manufactured, personalized through the real
//! APDU script with the development keys, then used: PIN tries, a terminal authenticating to
//! read access rights, secure-messaging updates, the access log, and the card's self-locking.

use anyhow::{bail, Context, Result};
use clap::Args;
use iccard_apdu::{hex, Command as Apdu, Response, StatusWord};
use iccard_cos::RandomSource;
use iccard_crypto::PurseAlg;
use iccard_issuer::manufacture::{self, BlankCard};
use iccard_issuer::personalize::{self, Personalization};
use iccard_issuer::script::Admin;
use iccard_link::{save_image, CardChannel, ImageCard, OsRandom};
use std::path::PathBuf;

/// `iccard demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the card images (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Card number to personalize.
    #[arg(long, default_value = "8860000000000001")]
    card_number: String,
    /// Key algorithm of the applications (card-OS demo).
    #[arg(long, value_parser = ["3des", "sm4"], default_value = "3des")]
    alg: String,
    /// Run the card-OS demo instead (one card: PIN tries, access terminal, secure messaging,
    /// self-locking, a PSAM, a recharge and a purchase without a back office).
    #[arg(long)]
    card_os: bool,
}

struct Shown<'a> {
    admin: &'a mut Admin<ImageCard>,
}

impl Shown<'_> {
    /// Sends an APDU, prints command and answer with the status word's meaning.
    fn send(&mut self, what: &str, apdu: &Apdu) -> Result<Response> {
        let r = self.admin.send(what, apdu)?;
        println!("  {what:<44} > {}", hex::encode(&apdu.to_bytes()));
        let data = if r.data.is_empty() {
            String::new()
        } else {
            format!("{} ", hex::encode(&r.data))
        };
        println!("  {:<44} < {data}{}", "", r.sw);
        Ok(r)
    }

    fn expect(&mut self, what: &str, apdu: &Apdu, sw: StatusWord) -> Result<Response> {
        let r = self.send(what, apdu)?;
        if r.sw != sw {
            bail!("{what}: expected {sw}, the card answered {}", r.sw);
        }
        Ok(r)
    }
}

/// Runs the demo: the issuer's life cycle, or with `--card-os` the card-OS tour.
pub fn run(a: &DemoArgs) -> Result<()> {
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("cannot make a temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    if !a.card_os {
        if std::fs::read_dir(&dir)?.next().is_some() {
            bail!(
                "{} is not empty: the demo creates a new back office there; give an empty or new --dir",
                dir.display()
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return rt.block_on(super::lifecycle::run(&dir, a.dir.is_some()));
    }
    let alg = if a.alg == "sm4" {
        PurseAlg::Sm4
    } else {
        PurseAlg::TripleDes
    };
    let image = dir.join("card.img");

    println!("1. Manufacture: a blank card is coded (chip data, transport key, OP_READY)");
    let mut chip_serial = [0u8; 8];
    OsRandom.fill(&mut chip_serial);
    let spec = BlankCard {
        chip_serial,
        production_date: manufacture::bcd_date_from_unix_days(
            (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                / 86_400) as i64,
        ),
        batch: 1,
        transport_key_version: 1,
        attack_threshold: 10,
    };
    let card = manufacture::make_blank(
        manufacture::eeprom(32, iccard_cos::nvm::DEFAULT_ENDURANCE)?,
        OsRandom,
        &spec,
    )?;
    save_image(&image, card.nvm().eeprom())?;
    println!(
        "  image {} chip serial {}",
        image.display(),
        hex::encode(&chip_serial)
    );

    println!("2. Personalization through the APDU script (development keys, {alg})");
    let p = Personalization::new(&a.card_number, "123456", alg);
    personalize::personalize(ImageCard::open(&image)?, &p)?;
    let ch = ImageCard::open(&image)?;
    println!("  card {} is {}", a.card_number, ch.card().state().name());

    println!("3. Use: the holder and an access terminal");
    let mut admin = Admin::new(ch);
    admin.channel().reset()?;
    let mut s = Shown { admin: &mut admin };
    s.expect(
        "SELECT access application",
        &Apdu::new(0x00, 0xA4, 0x04, 0x00)
            .with_data(personalize::ACCESS_AID)
            .with_ne(256),
        StatusWord::OK,
    )?;
    s.expect(
        "READ RECORD rights before authentication",
        &Apdu::new(0x00, 0xB2, 0x01, 0x0C).with_ne(256),
        StatusWord::SECURITY_STATUS_NOT_SATISFIED,
    )?;
    s.expect(
        "VERIFY wrong PIN",
        &Apdu::new(0x00, 0x20, 0x00, 0x00).with_data([0x65, 0x43, 0x21]),
        StatusWord::verify_failed(2),
    )?;
    s.expect(
        "VERIFY right PIN",
        &Apdu::new(0x00, 0x20, 0x00, 0x00).with_data([0x12, 0x34, 0x56]),
        StatusWord::OK,
    )?;
    s.expect(
        "READ BINARY holder name (after PIN)",
        &Apdu::new(0x00, 0xB0, 0x82, 0x00).with_ne(8),
        StatusWord::OK,
    )?;

    let serial = personalize::CardNumber::serial(&a.card_number)?;
    let d = personalize::CardNumber::diversifier(&serial);
    let terminal_key = personalize::terminal_key(alg, &d);
    s.admin.external_authenticate(
        personalize::TERMINAL_KEY_INDEX,
        personalize::alg_byte(alg),
        &terminal_key,
    )?;
    println!(
        "  {:<44}   (GET CHALLENGE + EXTERNAL AUTHENTICATE with the terminal key: 9000)",
        "terminal authenticates"
    );
    let mut entry = b"DOOR-12 OPENED  ".to_vec();
    entry.truncate(16);
    s.expect(
        "APPEND RECORD access log (terminal)",
        &Apdu::new(0x00, 0xE2, 0x00, 0x18).with_data(entry),
        StatusWord::OK,
    )?;
    s.expect(
        "READ RECORD newest log entry",
        &Apdu::new(0x00, 0xB2, 0x01, 0x1C).with_ne(256),
        StatusWord::OK,
    )?;

    let maintenance = personalize::domain_key(
        &iccard_issuer::devkeys::MAMK,
        alg,
        &d,
        personalize::Domain::Access,
    );
    let name = b"ZHANG SAN".to_vec();
    let upd = Apdu::new(0x00, 0xD6, 0x82, 0x00).with_data(name);
    let r = s.admin.send_mac(
        "UPDATE BINARY holder name under MAC",
        &upd,
        personalize::alg_byte(alg),
        &maintenance,
    )?;
    println!(
        "  {:<44}   (secure messaging, maintenance key: {})",
        "UPDATE BINARY holder name", r.sw
    );
    if r.sw != StatusWord::OK {
        bail!("secure-messaging update refused: {}", r.sw);
    }
    s.expect(
        "UPDATE BINARY without MAC is refused",
        &Apdu::new(0x00, 0xD6, 0x82, 0x00).with_data(*b"X"),
        StatusWord::SECURITY_STATUS_NOT_SATISFIED,
    )?;

    println!("4. Self-locking: wrong PINs until the PIN blocks");
    s.expect(
        "VERIFY wrong PIN",
        &Apdu::new(0x00, 0x20, 0x00, 0x00).with_data([0x00, 0x00, 0x00]),
        StatusWord::verify_failed(2),
    )?;
    s.expect(
        "VERIFY wrong PIN",
        &Apdu::new(0x00, 0x20, 0x00, 0x00).with_data([0x00, 0x00, 0x00]),
        StatusWord::verify_failed(1),
    )?;
    s.expect(
        "VERIFY wrong PIN",
        &Apdu::new(0x00, 0x20, 0x00, 0x00).with_data([0x00, 0x00, 0x00]),
        StatusWord::AUTH_METHOD_BLOCKED,
    )?;
    s.expect(
        "VERIFY right PIN (blocked now)",
        &Apdu::new(0x00, 0x20, 0x00, 0x00).with_data([0x12, 0x34, 0x56]),
        StatusWord::AUTH_METHOD_BLOCKED,
    )?;
    s.admin.channel().reset()?;
    let mut s = Shown { admin: &mut admin };
    s.expect(
        "SELECT access application (after reset)",
        &Apdu::new(0x00, 0xA4, 0x04, 0x0C).with_data(personalize::ACCESS_AID),
        StatusWord::OK,
    )?;
    s.expect(
        "VERIFY right PIN (still blocked)",
        &Apdu::new(0x00, 0x20, 0x00, 0x00).with_data([0x12, 0x34, 0x56]),
        StatusWord::AUTH_METHOD_BLOCKED,
    )?;

    drop(admin);
    purse(&dir, &image)?;

    let ch = ImageCard::open(&image)?;
    let info = ch
        .card()
        .info()
        .map_err(|sw| anyhow::anyhow!("card info: {sw}"))?;
    println!(
        "8. The card now: {}, {} failed authentications of {} before self-destruct, EEPROM max {} cycles/page",
        info.life_cycle, info.attack_counter, info.attack_threshold, info.nvm.max_page_cycles
    );
    println!("demo finished: card image {}", image.display());
    Ok(())
}

/// The electronic purse: a PSAM is made for a point of sale, the card is recharged at a
/// recharge point (host keys: development set), then pays offline with the PSAM.
fn purse(dir: &std::path::Path, image: &std::path::Path) -> Result<()> {
    use iccard_terminal::{
        read_balance, read_log, MasterKeyHost, MemoryPending, Psam, Purchase, PurseCard, Recharge,
        TransactionTime,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let when = TransactionTime::from_unix(now);

    println!("5. A PSAM for a point of sale (terminal 000000000042)");
    let sam_image = dir.join("psam.img");
    let mut chip_serial = [0u8; 8];
    OsRandom.fill(&mut chip_serial);
    let spec = BlankCard {
        chip_serial,
        production_date: manufacture::bcd_date_from_unix_days((now / 86_400) as i64),
        batch: 1,
        transport_key_version: 1,
        attack_threshold: manufacture::DEFAULT_ATTACK_THRESHOLD,
    };
    let eeprom = manufacture::eeprom(16, iccard_cos::nvm::DEFAULT_ENDURANCE)?;
    let sam = manufacture::make_blank(eeprom, OsRandom, &spec)?;
    save_image(&sam_image, sam.nvm().eeprom())?;
    let terminal_id = [0, 0, 0, 0, 0, 0x42];
    iccard_issuer::psam::personalize(
        ImageCard::open(&sam_image)?,
        &iccard_issuer::psam::PsamPersonalization { terminal_id },
    )?;
    println!(
        "  image {} (purchase master keys inside; the terminal never sees them)",
        sam_image.display()
    );

    println!("6. Recharge point 000000000007: load 100.00 yuan (MAC1 checked, MAC2 computed, TAC verified)");
    let host = MasterKeyHost::new(
        iccard_issuer::devkeys::MLK.value(),
        iccard_issuer::devkeys::MTK.value(),
    );
    let mut card = PurseCard::open(ImageCard::open(image)?)?;
    let out = Recharge::new(&host, [0, 0, 0, 0, 0, 7]).load(
        &mut card,
        10_000,
        &when,
        &mut MemoryPending::default(),
    )?;
    println!(
        "  card {} balance {} -> {} fen, online serial {}, TAC {} ({})",
        out.card_number,
        out.balance_before_fen,
        out.balance_after_fen,
        out.online_serial,
        out.tac.as_deref().unwrap_or("-"),
        if out.tac_verified == Some(true) {
            "verified"
        } else {
            "NOT verified"
        }
    );
    if out.suspicious.is_some() || out.tac_verified != Some(true) {
        bail!("the load's TAC did not verify");
    }

    println!("7. Point of sale, offline: pay 12.34 yuan with the PSAM (MAC1 from the PSAM, MAC2 checked by it)");
    let mut psam = Psam::open(ImageCard::open(&sam_image)?)?;
    let out =
        Purchase::new(&mut psam).pay(&mut card, 1_234, &when, &mut MemoryPending::default())?;
    println!(
        "  balance {} -> {} fen, offline serial {}, terminal serial {}, TAC {}",
        out.balance_before_fen,
        out.balance_after_fen,
        out.offline_serial,
        out.terminal_serial,
        out.tac.as_deref().unwrap_or("-")
    );
    if out.suspicious.is_some() {
        bail!("the PSAM rejected the card's MAC2");
    }
    drop(card);
    let balance = read_balance(ImageCard::open(image)?)?;
    println!("  balance read back: {} fen", balance.balance_fen);
    for r in read_log(ImageCard::open(image)?)? {
        println!(
            "  log: serial {} {} {} fen at terminal {}",
            r.serial,
            r.kind,
            r.amount_fen,
            hex::encode(&r.terminal_id)
        );
    }
    Ok(())
}
