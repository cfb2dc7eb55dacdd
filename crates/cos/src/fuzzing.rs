//! A reference card for fuzzing, property tests and benchmarks, and [`fuzz_one`], which drives
//! one byte stream of commands through it and checks the card OS's invariants after every
//! command.
//!
//! The reference card is manufactured with fixed chip data ([`CHIP_SERIAL`]) and the public
//! transport key [`keys::TRANSPORT`], then personalized by [`personalize`] through ordinary
//! APDUs (EXTERNAL AUTHENTICATE, WRITE KEY under secure messaging, CREATE FILE, SET STATUS):
//!
//! ```text
//! 3F00 MF "1PAY.SYS.DDF01"   keys: master 0 (MF_MASTER), maintenance 0 (MF_MAINTENANCE)
//!   2F00 linear   SFI 01  2 x 16   read free, update/append admin          (EF.DIR)
//!   0005 binary   SFI 05  16       read free, update free under MAC        (EF.ICC)
//!   1001 DF APP1_AID (3DES)  keys: master 0, maintenance 0, external auth 1 (grants 2,
//!                            3 tries), internal auth 1, PIN 0 = 123456 (grants 1, 3 tries),
//!                            PIN unblock 0, PIN reload 0
//!     0001 binary SFI 01  32       read free, update free
//!     0002 binary SFI 02  32       read after the PIN (F1), update free under MAC
//!     0003 linear SFI 03  4 x 16   read, update, append free
//!     0004 cyclic SFI 04  3 x 8    read after the PIN, update never, append free
//!     0005 binary SFI 05  300      read, update free (long answers)
//!     0006 binary SFI 06  8        read after a terminal (state 2..15), update admin
//!   1002 DF APP2_AID (SM4)   keys: master 0, maintenance 0, external auth 1, internal auth 1
//!     0001 binary SFI 01  16       read free, update free under MAC
//! ```
//!
//! Applications PERSONALIZED, card SECURED. Every key here is public: nothing in this module
//! is for production cards.

use crate::card::{Card, Manufacture};
use crate::fs::{CardState, ChipData, Fcb, FileKind, NO_PARENT};
use crate::keys::alg;
use crate::nvm::{Eeprom, SimEeprom, DEFAULT_ENDURANCE, DEFAULT_SIZE};
use crate::platform::{RandomSource, SeededRandom};
use crate::security::{sm_mac, wrap_key};
use iccard_apdu::{tlv, Command as Apdu, Response, StatusWord};
use iccard_crypto::Cipher;
use std::sync::OnceLock;
use zeroize::Zeroizing;

/// Chip serial of the reference card.
pub const CHIP_SERIAL: [u8; 8] = [0x49, 0x43, 0x43, 0x41, 0x52, 0x44, 0x00, 0x01];
/// Self-destruct threshold of the reference card.
pub const ATTACK_THRESHOLD: u8 = 32;
/// DF name of the 3DES application (FID 1001).
pub const APP1_AID: &[u8] = &[0xF0, b'T', b'E', b'S', b'T', b'0', b'1'];
/// DF name of the SM4 application (FID 1002).
pub const APP2_AID: &[u8] = &[0xF0, b'T', b'E', b'S', b'T', b'0', b'2'];

/// The reference card's keys (all public). Each is 16 printable bytes, easy to spot in an
/// EEPROM dump.
pub mod keys {
    /// Transport key of the blank card (MF master until personalization replaces it).
    pub const TRANSPORT: [u8; 16] = *b"ICCARD-TRANSPORT";
    /// Card master key (MF master key 0).
    pub const MF_MASTER: [u8; 16] = *b"ICCARD-MF-MASTER";
    /// MF maintenance key 0.
    pub const MF_MAINTENANCE: [u8; 16] = *b"ICCARD-MF-MAINT.";
    /// Application 1 master key 0 (3DES).
    pub const APP1_MASTER: [u8; 16] = *b"ICCARD-APP1-MSTR";
    /// Application 1 maintenance key 0.
    pub const APP1_MAINTENANCE: [u8; 16] = *b"ICCARD-APP1-MNT.";
    /// Application 1 external authentication key 1.
    pub const APP1_EXTERNAL: [u8; 16] = *b"ICCARD-APP1-EXT.";
    /// Application 1 internal authentication key 1.
    pub const APP1_INTERNAL: [u8; 16] = *b"ICCARD-APP1-INT.";
    /// Application 1 PIN unblock key 0.
    pub const APP1_UNBLOCK: [u8; 16] = *b"ICCARD-APP1-UNBL";
    /// Application 1 PIN reload key 0.
    pub const APP1_RELOAD: [u8; 16] = *b"ICCARD-APP1-RELD";
    /// Application 2 master key 0 (SM4).
    pub const APP2_MASTER: [u8; 16] = *b"ICCARD-APP2-MSTR";
    /// Application 2 maintenance key 0 (SM4).
    pub const APP2_MAINTENANCE: [u8; 16] = *b"ICCARD-APP2-MNT.";
    /// Application 2 external authentication key 1 (SM4).
    pub const APP2_EXTERNAL: [u8; 16] = *b"ICCARD-APP2-EXT.";
    /// Application 2 internal authentication key 1 (SM4).
    pub const APP2_INTERNAL: [u8; 16] = *b"ICCARD-APP2-INT.";
    /// Application 1 PIN `123456` (packed BCD).
    pub const PIN: [u8; 3] = [0x12, 0x34, 0x56];

    /// Every 16-byte key the personalized card holds.
    pub const ALL: [[u8; 16]; 12] = [
        MF_MASTER,
        MF_MAINTENANCE,
        APP1_MASTER,
        APP1_MAINTENANCE,
        APP1_EXTERNAL,
        APP1_INTERNAL,
        APP1_UNBLOCK,
        APP1_RELOAD,
        APP2_MASTER,
        APP2_MAINTENANCE,
        APP2_EXTERNAL,
        APP2_INTERNAL,
    ];
}

/// A freshly manufactured reference card (OP_READY, transport key) on a 32 KiB EEPROM.
pub fn manufacture(attack_threshold: u8) -> Card<SimEeprom, SeededRandom> {
    let spec = Manufacture {
        chip: ChipData {
            chip_maker: 0x4943,
            chip_serial: CHIP_SERIAL,
            production_date: [0x20, 0x26, 0x11, 0x25],
            batch: 1,
            os_version: 0x0100,
        },
        transport_key: Zeroizing::new(keys::TRANSPORT),
        transport_key_version: 1,
        attack_threshold,
    };
    let eeprom = SimEeprom::new(DEFAULT_SIZE, DEFAULT_ENDURANCE).expect("a valid EEPROM geometry");
    Card::manufacture(eeprom, SeededRandom::new(1), &spec).expect("a fresh EEPROM formats")
}

/// The EEPROM of the personalized reference card (made once per process, then copied).
pub fn personalized_eeprom() -> SimEeprom {
    static IMAGE: OnceLock<SimEeprom> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let mut card = manufacture(ATTACK_THRESHOLD);
            personalize(&mut card).expect("the reference personalization succeeds");
            card.into_eeprom()
        })
        .clone()
}

/// The personalized reference card, powered up with a random source seeded by `seed`.
pub fn personalized_card(seed: u64) -> Card<SimEeprom, SeededRandom> {
    Card::power_on(personalized_eeprom(), SeededRandom::new(seed))
        .expect("the reference image mounts")
}

/// The host side of the personalization: sends APDUs, computes cryptograms and MACs.
struct Host<'a, E: Eeprom, R: RandomSource> {
    card: &'a mut Card<E, R>,
}

fn refused(step: &str, sw: StatusWord) -> String {
    format!("{step}: the card answered {sw}")
}

impl<E: Eeprom, R: RandomSource> Host<'_, E, R> {
    fn send(&mut self, step: &str, apdu: &Apdu) -> Result<Vec<u8>, String> {
        let r = self.card.transmit(apdu);
        if r.sw != StatusWord::OK {
            return Err(refused(step, r.sw));
        }
        Ok(r.data)
    }

    fn challenge(&mut self) -> Result<[u8; 8], String> {
        let c = self.send("GET CHALLENGE", &Apdu::new(0x00, 0x84, 0, 0).with_ne(4))?;
        let mut iv = [0u8; 8];
        iv[..4].copy_from_slice(&c);
        Ok(iv)
    }

    fn authenticate(&mut self, index: u8, key_alg: u8, key: &[u8; 16]) -> Result<(), String> {
        let iv = self.challenge()?;
        let cryptogram = auth_cryptogram(key_alg, key, &iv);
        self.send(
            "EXTERNAL AUTHENTICATE",
            &Apdu::new(0x00, 0x82, 0x00, index).with_data(cryptogram),
        )
        .map(drop)
    }

    fn send_mac(
        &mut self,
        step: &str,
        apdu: &Apdu,
        key_alg: u8,
        key: &[u8; 16],
    ) -> Result<(), String> {
        let iv = self.challenge()?;
        self.send(step, &with_mac(apdu, key_alg, key, &iv))
            .map(drop)
    }

    /// WRITE KEY of `record` (`type index version alg use change grants tries len value`).
    fn write_key(&mut self, kek_alg: u8, kek: &[u8; 16], record: &[u8]) -> Result<(), String> {
        let cryptogram = wrap_key(kek_alg, kek, record).map_err(|sw| refused("wrap key", sw))?;
        self.send_mac(
            "WRITE KEY",
            &Apdu::new(0x80, 0xD4, 0, 0).with_data(cryptogram),
            kek_alg,
            kek,
        )
    }

    fn create(&mut self, fcp: Vec<u8>) -> Result<(), String> {
        self.send("CREATE FILE", &Apdu::new(0x80, 0xE0, 0, 0).with_data(fcp))
            .map(drop)
    }

    fn select(&mut self, fid: u16) -> Result<(), String> {
        self.send(
            "SELECT",
            &Apdu::new(0x00, 0xA4, 0x00, 0x0C).with_data(fid.to_be_bytes()),
        )
        .map(drop)
    }
}

/// The EXTERNAL AUTHENTICATE cryptogram: ENC(key, challenge ‖ 0…) over one cipher block.
fn auth_cryptogram(key_alg: u8, key: &[u8; 16], iv: &[u8; 8]) -> Vec<u8> {
    let cipher = if key_alg == alg::SM4 {
        Cipher::Sm4
    } else {
        Cipher::TripleDes
    };
    let mut block = vec![0u8; cipher.block_len()];
    block[..8].copy_from_slice(iv);
    iccard_crypto::ecb_encrypt(cipher, key, &block).expect("16-byte keys and whole blocks")
}

/// `apdu` under secure messaging: CLA | 04, the MAC over `CLA INS P1 P2 Lc ‖ data` appended
/// (extended Lc when the data with its MAC exceeds 255 bytes).
fn with_mac(apdu: &Apdu, key_alg: u8, key: &[u8; 16], iv: &[u8; 8]) -> Apdu {
    let cla = apdu.cla | 0x04;
    let lc = apdu.data.len() + 4;
    let mut input = vec![cla, apdu.ins, apdu.p1, apdu.p2];
    if lc > 255 {
        input.extend_from_slice(&[0, (lc >> 8) as u8, lc as u8]);
    } else {
        input.push(lc as u8);
    }
    input.extend_from_slice(&apdu.data);
    // A MAC the card cannot compute (unknown algorithm) is sent as zeros: the card refuses it.
    let mac = sm_mac(key_alg, key, iv, &input).unwrap_or([0; 4]);
    let mut data = apdu.data.clone();
    data.extend_from_slice(&mac);
    Apdu {
        cla,
        data,
        ..apdu.clone()
    }
}

/// Data objects of an FCP template: (tag, value).
type Objects = Vec<(u32, Vec<u8>)>;

/// An FCP template: descriptor, FID and further data objects.
fn fcp(descriptor: &[u8], fid: u16, more: &[(u32, &[u8])]) -> Vec<u8> {
    let mut b = tlv::encode(0x82, descriptor);
    tlv::encode_into(&mut b, 0x83, &fid.to_be_bytes());
    for (tag, value) in more {
        tlv::encode_into(&mut b, *tag, value);
    }
    tlv::encode(0x62, &b)
}

/// A WRITE KEY record: `type index version alg use change grants tries len value`.
fn key_record(
    key_type: u8,
    index: u8,
    key_alg: u8,
    grants: u8,
    tries: u8,
    value: &[u8],
) -> Vec<u8> {
    let mut r = vec![
        key_type,
        index,
        1,
        key_alg,
        0xF0,
        0xF0,
        grants,
        tries,
        value.len() as u8,
    ];
    r.extend_from_slice(value);
    r
}

/// Personalizes a manufactured reference card (transport key [`keys::TRANSPORT`]) into the
/// structure in the module documentation, through APDUs only. Returns the failing step.
pub fn personalize<E: Eeprom, R: RandomSource>(card: &mut Card<E, R>) -> Result<(), String> {
    use crate::keys::KeyType as K;
    let (tdes, sm4) = (alg::TDES, alg::SM4);
    let mut h = Host { card };
    h.card.reset();
    h.select(0x3F00)?;
    h.authenticate(0, tdes, &keys::TRANSPORT)?;
    h.write_key(
        tdes,
        &keys::TRANSPORT,
        &key_record(K::Master as u8, 0, tdes, 0x0F, 15, &keys::MF_MASTER),
    )?;
    h.authenticate(0, tdes, &keys::MF_MASTER)?;
    h.write_key(
        tdes,
        &keys::MF_MASTER,
        &key_record(K::Maintenance as u8, 0, tdes, 0, 15, &keys::MF_MAINTENANCE),
    )?;
    let sec = |r: u8, u: u8, a: u8, d: u8, flags: u8| [r, u, a, d, flags];
    h.create(fcp(
        &[0x02, 0x21, 0x00, 16, 2],
        0x2F00,
        &[
            (0x88, &[0x01 << 3]),
            (0x86, &sec(0xF0, 0xFF, 0xFF, 0xFF, 0)),
        ],
    ))?;
    h.send(
        "APPEND RECORD EF.DIR",
        &Apdu::new(0x00, 0xE2, 0x00, 0x00).with_data({
            let mut r = tlv::encode(0x61, &tlv::encode(0x4F, APP1_AID));
            r.resize(16, 0);
            r
        }),
    )?;
    h.create(fcp(
        &[0x01],
        0x0005,
        &[
            (0x80, &[0x00, 0x10]),
            (0x88, &[0x05 << 3]),
            (0x86, &sec(0xF0, 0xF0, 0xFF, 0xFF, 0x01)),
        ],
    ))?;
    h.send_mac(
        "UPDATE BINARY EF.ICC",
        &Apdu::new(0x00, 0xD6, 0x85, 0x00).with_data([0x88, 0x60, 0, 0, 0, 0, 0, 0, 0, 1]),
        tdes,
        &keys::MF_MAINTENANCE,
    )?;

    // Application 1 (3DES), made and keyed under the card master key, then under its own.
    h.select(0x3F00)?;
    h.authenticate(0, tdes, &keys::MF_MASTER)?;
    let admin = sec(0xF0, 0xFF, 0xFF, 0xFF, 0);
    h.create(fcp(&[0x38], 0x1001, &[(0x84, APP1_AID), (0x86, &admin)]))?;
    h.create(fcp(&[0x0A, 0x21, 0x00, 0x20, 8], 0x0000, &[(0x86, &admin)]))?;
    h.write_key(
        tdes,
        &keys::MF_MASTER,
        &key_record(K::Master as u8, 0, tdes, 0x0F, 15, &keys::APP1_MASTER),
    )?;
    h.authenticate(0, tdes, &keys::APP1_MASTER)?;
    for record in [
        key_record(
            K::Maintenance as u8,
            0,
            tdes,
            0,
            15,
            &keys::APP1_MAINTENANCE,
        ),
        key_record(
            K::ExternalAuth as u8,
            1,
            tdes,
            0x02,
            3,
            &keys::APP1_EXTERNAL,
        ),
        key_record(K::InternalAuth as u8, 1, tdes, 0, 0, &keys::APP1_INTERNAL),
        key_record(K::PinUnblock as u8, 0, tdes, 0, 15, &keys::APP1_UNBLOCK),
        key_record(K::PinReload as u8, 0, tdes, 0, 15, &keys::APP1_RELOAD),
        key_record(K::Pin as u8, 0, tdes, 0x01, 3, &keys::PIN),
    ] {
        h.write_key(tdes, &keys::APP1_MASTER, &record)?;
    }
    let binary = |size: u16, sfi: u8, s: [u8; 5]| -> Objects {
        vec![
            (0x80, size.to_be_bytes().to_vec()),
            (0x88, vec![sfi << 3]),
            (0x86, s.to_vec()),
        ]
    };
    let files: [(&[u8], u16, Objects); 6] = [
        (
            &[0x01],
            0x0001,
            binary(32, 1, sec(0xF0, 0xF0, 0xFF, 0xFF, 0)),
        ),
        (
            &[0x01],
            0x0002,
            binary(32, 2, sec(0xF1, 0xF0, 0xFF, 0xFF, 0x01)),
        ),
        (
            &[0x02, 0x21, 0x00, 16, 4],
            0x0003,
            vec![
                (0x88, vec![3 << 3]),
                (0x86, sec(0xF0, 0xF0, 0xF0, 0xFF, 0).to_vec()),
            ],
        ),
        (
            &[0x06, 0x21, 0x00, 8, 3],
            0x0004,
            vec![
                (0x88, vec![4 << 3]),
                (0x86, sec(0xF1, 0x0F, 0xF0, 0xFF, 0).to_vec()),
            ],
        ),
        (
            &[0x01],
            0x0005,
            binary(300, 5, sec(0xF0, 0xF0, 0xFF, 0xFF, 0)),
        ),
        (
            &[0x01],
            0x0006,
            binary(8, 6, sec(0xF2, 0xFF, 0xFF, 0xFF, 0)),
        ),
    ];
    for (descriptor, fid, more) in files {
        let more: Vec<(u32, &[u8])> = more.iter().map(|(t, v)| (*t, v.as_slice())).collect();
        h.create(fcp(descriptor, fid, &more))?;
    }
    h.select(0x1001)?;
    h.send(
        "SET STATUS application",
        &Apdu::new(0x80, 0xF0, 0x40, crate::fs::app_state::PERSONALIZED),
    )?;

    // Application 2 (SM4): its master key goes in under the card master key (3DES).
    h.select(0x3F00)?;
    h.authenticate(0, tdes, &keys::MF_MASTER)?;
    h.create(fcp(&[0x38], 0x1002, &[(0x84, APP2_AID), (0x86, &admin)]))?;
    h.create(fcp(&[0x0A, 0x21, 0x00, 0x20, 4], 0x0000, &[(0x86, &admin)]))?;
    h.write_key(
        tdes,
        &keys::MF_MASTER,
        &key_record(K::Master as u8, 0, sm4, 0x0F, 15, &keys::APP2_MASTER),
    )?;
    h.authenticate(0, sm4, &keys::APP2_MASTER)?;
    for record in [
        key_record(K::Maintenance as u8, 0, sm4, 0, 15, &keys::APP2_MAINTENANCE),
        key_record(K::ExternalAuth as u8, 1, sm4, 0x02, 3, &keys::APP2_EXTERNAL),
        key_record(K::InternalAuth as u8, 1, sm4, 0, 0, &keys::APP2_INTERNAL),
    ] {
        h.write_key(sm4, &keys::APP2_MASTER, &record)?;
    }
    h.create(fcp(
        &[0x01],
        0x0001,
        &[
            (0x80, &[0x00, 0x10]),
            (0x88, &[0x01 << 3]),
            (0x86, &sec(0xF0, 0xF0, 0xFF, 0xFF, 0x01)),
        ],
    ))?;
    h.select(0x1002)?;
    h.send(
        "SET STATUS application",
        &Apdu::new(0x80, 0xF0, 0x40, crate::fs::app_state::PERSONALIZED),
    )?;

    h.select(0x3F00)?;
    h.authenticate(0, tdes, &keys::MF_MASTER)?;
    h.send(
        "SET STATUS card SECURED",
        &Apdu::new(0x80, 0xF0, 0x80, CardState::Secured as u8),
    )?;
    h.card.reset();
    Ok(())
}

/// Keys [`fuzz_one`] can authenticate with (op `02`): index, algorithm, value.
const AUTH_KEYS: [(u8, u8, [u8; 16]); 5] = [
    (0, alg::TDES, keys::MF_MASTER),
    (0, alg::TDES, keys::APP1_MASTER),
    (1, alg::TDES, keys::APP1_EXTERNAL),
    (0, alg::SM4, keys::APP2_MASTER),
    (1, alg::SM4, keys::APP2_EXTERNAL),
];

/// Keys [`fuzz_one`] can MAC commands with (op `03`).
const MAC_KEYS: [(u8, [u8; 16]); 8] = [
    (alg::TDES, keys::MF_MASTER),
    (alg::TDES, keys::MF_MAINTENANCE),
    (alg::TDES, keys::APP1_MASTER),
    (alg::TDES, keys::APP1_MAINTENANCE),
    (alg::TDES, keys::APP1_RELOAD),
    (alg::TDES, keys::APP1_UNBLOCK),
    (alg::SM4, keys::APP2_MASTER),
    (alg::SM4, keys::APP2_MAINTENANCE),
];

/// Drives one byte stream through the personalized reference card and panics if the card
/// breaks an invariant. The stream is a sequence of operations:
///
/// | op | then | operation |
/// |---|---|---|
/// | `00` | | warm reset |
/// | `01` | | power cycle: the EEPROM is mounted again |
/// | `02` | `k` | GET CHALLENGE + EXTERNAL AUTHENTICATE with reference key `k` (mod 5) |
/// | `03` | `k L apdu[L]` | the APDU sent under secure messaging with MAC key `k` (mod 8) |
/// | `04` | `hi lo apdu[hi lo]` | a long APDU |
/// | `05..=FF` | `apdu[op - 5]` | an APDU of 0..=250 bytes |
///
/// A stream that ends early sends what it has. Invariants checked after every command: the
/// answer has a status word (at least 2 bytes), an error status word comes without data,
/// nothing is left staged in the NVM, no answer carries a key in clear. After a power cycle
/// and at the end: the EEPROM mounts without writing anything (every command committed
/// completely), the user area is unchanged by the mount, the file table is consistent and
/// [`Card::info`] works.
pub fn fuzz_one(data: &[u8]) {
    let mut run = FuzzRun {
        card: Some(personalized_card(1)),
        power_ups: 1,
    };
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op {
            0 => {
                run.card().reset();
            }
            1 => run.power_cycle(),
            2 => {
                let k = take(&mut rest, 1).first().copied().unwrap_or(0);
                run.authenticate(k);
            }
            3 => {
                let k = take(&mut rest, 1).first().copied().unwrap_or(0);
                let len = take(&mut rest, 1).first().copied().unwrap_or(0);
                let apdu = take(&mut rest, len as usize).to_vec();
                run.send_mac(k, &apdu);
            }
            4 => {
                let len = match take(&mut rest, 2) {
                    [hi, lo] => u16::from_be_bytes([*hi, *lo]) as usize,
                    _ => 0,
                };
                let apdu = take(&mut rest, len).to_vec();
                run.send(&apdu);
            }
            n => {
                let apdu = take(&mut rest, n as usize - 5).to_vec();
                run.send(&apdu);
            }
        }
    }
    run.power_cycle();
}

/// Splits off up to `n` bytes.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = rest.split_at(n.min(rest.len()));
    *rest = tail;
    head
}

struct FuzzRun {
    card: Option<Card<SimEeprom, SeededRandom>>,
    power_ups: u64,
}

impl FuzzRun {
    fn card(&mut self) -> &mut Card<SimEeprom, SeededRandom> {
        self.card
            .as_mut()
            .expect("the card is present between commands")
    }

    fn send(&mut self, apdu: &[u8]) -> Vec<u8> {
        let response = self.card().process(apdu);
        self.check(apdu, &response);
        response
    }

    fn challenge(&mut self) -> [u8; 8] {
        let r = self.send(&[0x00, 0x84, 0x00, 0x00, 0x04]);
        let mut iv = [0u8; 8];
        if r.len() == 6 {
            iv[..4].copy_from_slice(&r[..4]);
        }
        iv
    }

    fn authenticate(&mut self, k: u8) {
        let (index, key_alg, key) = AUTH_KEYS[k as usize % AUTH_KEYS.len()];
        let iv = self.challenge();
        let apdu =
            Apdu::new(0x00, 0x82, 0x00, index).with_data(auth_cryptogram(key_alg, &key, &iv));
        self.send(&apdu.to_bytes());
    }

    fn send_mac(&mut self, k: u8, raw: &[u8]) {
        let (key_alg, key) = MAC_KEYS[k as usize % MAC_KEYS.len()];
        let iv = self.challenge();
        match Apdu::parse(raw) {
            Ok(apdu) => {
                let apdu = with_mac(&apdu, key_alg, &key, &iv);
                match apdu.try_to_bytes() {
                    Ok(bytes) => self.send(&bytes),
                    Err(_) => self.send(raw),
                };
            }
            Err(_) => {
                self.send(raw);
            }
        }
    }

    /// The invariants of one exchange.
    fn check(&mut self, apdu: &[u8], response: &[u8]) {
        let hex = iccard_apdu::hex::encode;
        assert!(
            response.len() >= 2,
            "{} answered {} bytes",
            hex(apdu),
            response.len()
        );
        let sw = Response::parse(response)
            .expect("two bytes or more parse")
            .sw;
        let error = (matches!(sw.sw1(), 0x64..=0x6F) && sw.sw1() != 0x6C)
            || matches!(sw.sw1(), 0x93 | 0x94);
        assert!(
            !error || response.len() == 2,
            "{} answered data with error {sw}",
            hex(apdu)
        );
        let card = self.card();
        assert!(!card.power_lost(), "a simulated EEPROM never loses power");
        assert!(
            !card.nvm().has_staged(),
            "{} left writes staged (answer {sw})",
            hex(apdu)
        );
        for key in keys::ALL.iter().chain([&keys::TRANSPORT]) {
            assert!(
                !response.windows(key.len()).any(|w| w == key),
                "{} answered a key in clear",
                hex(apdu)
            );
        }
    }

    /// Powers the card off and on again, checking that the EEPROM held a complete state.
    fn power_cycle(&mut self) {
        let card = self.card.take().expect("the card is present");
        let user_len = card.nvm().user_len();
        let user = card.nvm().read_vec(0, user_len).expect("user area reads");
        let header = card.header().clone();
        let eeprom = card.into_eeprom();
        self.power_ups += 1;
        let card = Card::power_on(eeprom, SeededRandom::new(self.power_ups))
            .expect("the card powers up after any command sequence");
        assert_eq!(
            card.nvm().stats().physical_writes,
            0,
            "power-up had to repair the EEPROM: a command did not commit completely"
        );
        assert!(
            card.nvm().read_vec(0, user_len).expect("user area reads") == user,
            "power-up changed the user area"
        );
        assert_eq!(
            card.header(),
            &header,
            "the header in RAM differed from the NVM"
        );
        check_file_table(&card);
        card.info().expect("card info reads a consistent card");
        self.card = Some(card);
    }
}

/// The file table is a tree under the MF in slot 0 and the bodies lie in the heap without
/// overlapping.
fn check_file_table<E: Eeprom, R: RandomSource>(card: &Card<E, R>) {
    let files: Vec<Fcb> = card.files().expect("file table reads");
    let mf = files.first().expect("the MF exists");
    assert!(
        mf.index == 0 && mf.is_df() && mf.parent == NO_PARENT,
        "MF in slot 0"
    );
    let heap = card.header().heap_start()..card.nvm().user_len();
    let mut bodies: Vec<(usize, usize)> = Vec::new();
    for f in &files[1..] {
        let parent = files.iter().find(|p| p.index == f.parent);
        assert!(
            parent.is_some_and(|p| p.is_df()),
            "file {:04X} has no DF parent",
            f.fid
        );
        let siblings = files
            .iter()
            .filter(|s| s.parent == f.parent && s.index != f.index);
        assert!(
            siblings.clone().all(|s| s.fid != f.fid),
            "two files {:04X} in one DF",
            f.fid
        );
        if f.kind == FileKind::KeyFile {
            assert!(
                siblings.clone().all(|s| s.kind != FileKind::KeyFile),
                "two key files in one DF"
            );
        }
        if f.size > 0 {
            let (start, end) = (f.body as usize, f.body as usize + f.size as usize);
            assert!(
                heap.start <= start && end <= heap.end,
                "body of {:04X} outside the heap",
                f.fid
            );
            bodies.push((start, end));
        }
    }
    bodies.sort_unstable();
    for pair in bodies.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "file bodies overlap");
    }
}
