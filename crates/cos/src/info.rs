//! A read-only report of a card's contents for people: life cycle, chip data, files, key
//! references (never key values) and EEPROM wear. What `iccard card info` prints.

use crate::card::Card;
use crate::fs::{app_state, lcs, AppKind, CardResult, FileKind};
use crate::keys::KeyFile;
use crate::nvm::Eeprom;
use crate::platform::RandomSource;
use serde::Serialize;

/// Everything `card info` shows.
#[derive(Debug, Clone, Serialize)]
pub struct CardInfo {
    /// GP card life-cycle state name.
    pub life_cycle: &'static str,
    /// Chip maker code (hex).
    pub chip_maker: String,
    /// Chip serial (hex).
    pub chip_serial: String,
    /// Production date (YYYYMMDD).
    pub production_date: String,
    /// Production batch.
    pub batch: u16,
    /// Card OS version.
    pub os_version: String,
    /// Failed authentications so far.
    pub attack_counter: u8,
    /// Failed authentications that make the card self-destruct (0: never).
    pub attack_threshold: u8,
    /// Files, in table order.
    pub files: Vec<FileInfo>,
    /// EEPROM.
    pub nvm: NvmInfo,
}

/// One file.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// Path of FIDs from the MF, e.g. `3F00/1001/0015`.
    pub path: String,
    /// Structure.
    pub kind: &'static str,
    /// Short file identifier, if any.
    pub sfi: Option<u8>,
    /// DF name (hex), DFs only.
    pub name: Option<String>,
    /// Application kind, DFs only.
    pub application: Option<&'static str>,
    /// Application state, DFs only.
    pub application_state: Option<&'static str>,
    /// File life-cycle status.
    pub status: &'static str,
    /// Body bytes.
    pub size: u16,
    /// Record length and slots, record files only.
    pub records: Option<(u8, u8)>,
    /// Access conditions (read, update, append/create, delete) as `0xMN` bytes.
    pub access: [String; 4],
    /// Keys and PINs, key files only.
    pub keys: Vec<KeyInfo>,
}

/// A key or PIN reference; never its value.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// Key type.
    pub key_type: String,
    /// Index.
    pub index: u8,
    /// Version.
    pub version: u8,
    /// Algorithm.
    pub algorithm: &'static str,
    /// Tries left / limit (0 limit: unlimited).
    pub tries: (u8, u8),
}

/// EEPROM figures.
#[derive(Debug, Clone, Serialize)]
pub struct NvmInfo {
    /// Physical size in bytes.
    pub size: usize,
    /// Bytes the card OS can use.
    pub user_bytes: usize,
    /// Free heap bytes.
    pub free_bytes: usize,
    /// Endurance per page (write cycles).
    pub endurance: u32,
    /// Most cycles on any page.
    pub max_page_cycles: u32,
    /// Mean cycles per page.
    pub mean_page_cycles: f64,
    /// Pages that have failed.
    pub failed_pages: Vec<usize>,
    /// Hottest pages: (page, cycles).
    pub hottest_pages: Vec<(usize, u32)>,
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Df => "DF",
        FileKind::Transparent => "transparent",
        FileKind::LinearFixed => "linear-fixed",
        FileKind::Cyclic => "cyclic",
        FileKind::KeyFile => "key-file",
        FileKind::Internal => "internal",
    }
}

fn lcs_name(code: u8) -> &'static str {
    match code {
        lcs::CREATION => "creation",
        lcs::INITIALISATION => "initialisation",
        lcs::ACTIVATED => "activated",
        lcs::DEACTIVATED => "deactivated",
        lcs::TERMINATED => "terminated",
        _ => "unknown",
    }
}

fn app_state_name(code: u8) -> &'static str {
    match code {
        app_state::INSTALLED => "INSTALLED",
        app_state::SELECTABLE => "SELECTABLE",
        app_state::PERSONALIZED => "PERSONALIZED",
        app_state::LOCKED => "LOCKED",
        app_state::LOCKED_PERMANENTLY => "LOCKED_PERMANENTLY",
        _ => "unknown",
    }
}

fn hex(b: &[u8]) -> String {
    iccard_apdu::hex::encode(b)
}

impl<E: Eeprom, R: RandomSource> Card<E, R> {
    /// The report `card info` prints.
    pub fn info(&self) -> CardResult<CardInfo> {
        let h = &self.header;
        let mut files = Vec::new();
        for f in self.table.all(&self.nvm)? {
            let path = self
                .table
                .lineage(&self.nvm, f.index)?
                .iter()
                .map(|x| format!("{:04X}", x.fid))
                .collect::<Vec<_>>()
                .join("/");
            let keys = if f.kind == FileKind::KeyFile {
                KeyFile::of(&self.table, &self.nvm, f.parent)?
                    .map(|kf| kf.keys(&self.nvm))
                    .transpose()?
                    .unwrap_or_default()
                    .iter()
                    .map(|k| KeyInfo {
                        key_type: format!("{:?}", k.key_type),
                        index: k.index,
                        version: k.version,
                        algorithm: if k.alg == crate::keys::alg::SM4 {
                            "SM4"
                        } else {
                            "3DES"
                        },
                        tries: (k.tries_left, k.max_tries),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            files.push(FileInfo {
                path,
                kind: kind_name(f.kind),
                sfi: (f.sfi != 0).then_some(f.sfi),
                name: (!f.name.is_empty()).then(|| hex(&f.name)),
                application: f.is_df().then_some(match f.app {
                    AppKind::Plain => "plain",
                    AppKind::Purse => "purse",
                    AppKind::Psam => "psam",
                }),
                application_state: f.is_df().then(|| app_state_name(f.app_state)),
                status: lcs_name(f.lcs),
                size: f.size,
                records: f.kind.is_record().then_some((f.record_len, f.record_count)),
                access: [f.ac_read, f.ac_update, f.ac_append, f.ac_delete]
                    .map(|a| format!("{:02X}", a.0)),
                keys,
            });
        }
        let wear = self.nvm.wear();
        Ok(CardInfo {
            life_cycle: h.state.name(),
            chip_maker: format!("{:04X}", h.chip.chip_maker),
            chip_serial: hex(&h.chip.chip_serial),
            production_date: hex(&h.chip.production_date),
            batch: h.chip.batch,
            os_version: format!("{:04X}", h.chip.os_version),
            attack_counter: h.attack_counter,
            attack_threshold: h.attack_threshold,
            files,
            nvm: NvmInfo {
                size: self.nvm.eeprom().len(),
                user_bytes: self.nvm.user_len(),
                free_bytes: self.table.free_bytes(&self.nvm)?,
                endurance: wear.endurance,
                max_page_cycles: wear.max_cycles,
                mean_page_cycles: wear.mean_cycles,
                failed_pages: wear.failed_pages.clone(),
                hottest_pages: wear.hottest.clone(),
            },
        })
    }
}
