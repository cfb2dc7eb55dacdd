//! `iccard crypto ...`: the primitives of `iccard-crypto` on the command line, for checking
//! vectors and debugging cards by hand. Hex in (either case, spaces allowed), one line of
//! UPPERCASE hex out. Input errors name the option and what was wrong, never the key bytes.
//!
//! No subcommand pads: `encrypt`/`decrypt` take whole blocks; `mac` uses ISO/IEC 9797-1 padding
//! method 2 (except AES-CMAC, which pads itself).

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use iccard_crypto::{self as crypto, Cipher, Padding, PurseAlg};
use zeroize::Zeroizing;

/// `iccard crypto` subcommands.
#[derive(Debug, Subcommand)]
pub enum CryptoCmd {
    /// Encrypt whole blocks (no padding) in ECB or CBC mode.
    Encrypt(CipherArgs),
    /// Decrypt whole blocks (no padding removed) in ECB or CBC mode.
    Decrypt(CipherArgs),
    /// MAC with ISO/IEC 9797-1 padding method 2 (des, sm4: MAC algorithm 1; 3des-retail: MAC
    /// algorithm 3), or AES-CMAC; prints the leftmost --len bytes.
    Mac(MacArgs),
    /// Card key from a master key: 3des: 3DES(MK, D) || 3DES(MK, NOT D); sm4: SM4(MK, D || NOT D).
    Diversify(DeriveArgs),
    /// Purse session key: 3des: 3DES(K, data) (8 bytes); sm4: SM4(K, data || 00*8) (16 bytes).
    SessionKey(DeriveArgs),
    /// TAC key from the DTK: 3des: left half XOR right half; sm4: the DTK itself.
    TacKey(TacKeyArgs),
    /// Key check value: the first 3 bytes of the encryption of a zero block.
    Kcv(KcvArgs),
}

/// A block cipher as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CipherName {
    /// Single DES, 8-byte key.
    Des,
    /// Triple DES EDE, 16-byte (2-key) or 24-byte (3-key) key.
    #[value(name = "3des")]
    TripleDes,
    /// SM4, 16-byte key.
    Sm4,
    /// AES-128, 16-byte key.
    Aes,
}

impl CipherName {
    fn cipher(self) -> Cipher {
        match self {
            CipherName::Des => Cipher::Des,
            CipherName::TripleDes => Cipher::TripleDes,
            CipherName::Sm4 => Cipher::Sm4,
            CipherName::Aes => Cipher::Aes128,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CipherName::Des => "des",
            CipherName::TripleDes => "3des",
            CipherName::Sm4 => "sm4",
            CipherName::Aes => "aes",
        }
    }

    fn key_lens(self) -> &'static [usize] {
        match self {
            CipherName::Des => &[8],
            CipherName::TripleDes => &[16, 24],
            CipherName::Sm4 | CipherName::Aes => &[16],
        }
    }
}

/// A mode of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Electronic codebook: each block on its own.
    Ecb,
    /// Cipher block chaining (zero IV unless --iv is given).
    Cbc,
}

/// A MAC algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MacAlg {
    /// ISO/IEC 9797-1 MAC algorithm 1 over single DES (8-byte key): the PBOC purse MAC.
    Des,
    /// ISO/IEC 9797-1 MAC algorithm 3, the retail MAC (16-byte key K1 || K2).
    #[value(name = "3des-retail")]
    TripleDesRetail,
    /// ISO/IEC 9797-1 MAC algorithm 1 over SM4 (16-byte key).
    Sm4,
    /// AES-CMAC, NIST SP 800-38B / RFC 4493 (16-byte key).
    AesCmac,
}

impl MacAlg {
    fn name(self) -> &'static str {
        match self {
            MacAlg::Des => "des",
            MacAlg::TripleDesRetail => "3des-retail",
            MacAlg::Sm4 => "sm4",
            MacAlg::AesCmac => "aes-cmac",
        }
    }
}

/// A PBOC purse algorithm generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PurseGen {
    /// 3DES generation (algorithm id 00).
    #[value(name = "3des")]
    TripleDes,
    /// SM4 generation (algorithm id 04).
    Sm4,
}

impl PurseGen {
    fn alg(self) -> PurseAlg {
        match self {
            PurseGen::TripleDes => PurseAlg::TripleDes,
            PurseGen::Sm4 => PurseAlg::Sm4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            PurseGen::TripleDes => "3des",
            PurseGen::Sm4 => "sm4",
        }
    }
}

/// Options of `encrypt` and `decrypt`.
#[derive(Debug, Args)]
pub struct CipherArgs {
    /// The block cipher.
    #[arg(long, value_enum)]
    alg: CipherName,
    /// The mode of operation.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Initial value for CBC, one block (default: zeros).
    #[arg(long, value_name = "HEX")]
    iv: Option<String>,
    /// The key.
    #[arg(long, value_name = "HEX")]
    key: String,
    /// The data: a whole number of blocks.
    #[arg(long, value_name = "HEX")]
    data: String,
}

/// Options of `mac`.
#[derive(Debug, Args)]
pub struct MacArgs {
    /// The MAC algorithm.
    #[arg(long, value_enum)]
    alg: MacAlg,
    /// The key (des 8 bytes; 3des-retail, sm4, aes-cmac 16).
    #[arg(long, value_name = "HEX")]
    key: String,
    /// Initial value, one block (default: zeros); not for aes-cmac.
    #[arg(long, value_name = "HEX")]
    iv: Option<String>,
    /// The message (any length, may be empty).
    #[arg(long, value_name = "HEX")]
    data: String,
    /// How many leftmost bytes to print: 4 or 8 (16 also for sm4 and aes-cmac).
    #[arg(long, default_value_t = 8)]
    len: usize,
}

/// Options of `diversify` and `session-key`.
#[derive(Debug, Args)]
pub struct DeriveArgs {
    /// The algorithm generation.
    #[arg(long, value_enum)]
    alg: PurseGen,
    /// The 16-byte master key (diversify) or card key (session-key).
    #[arg(long, value_name = "HEX")]
    key: String,
    /// 8 bytes: the diversification data D, or the session input.
    #[arg(long, value_name = "HEX")]
    data: String,
}

/// Options of `tac-key`.
#[derive(Debug, Args)]
pub struct TacKeyArgs {
    /// The 16-byte DTK.
    #[arg(long, value_name = "HEX")]
    key: String,
    /// The algorithm generation.
    #[arg(long, value_enum, default_value = "3des")]
    alg: PurseGen,
}

/// Options of `kcv`.
#[derive(Debug, Args)]
pub struct KcvArgs {
    /// The block cipher.
    #[arg(long, value_enum)]
    alg: CipherName,
    /// The key.
    #[arg(long, value_name = "HEX")]
    key: String,
}

/// Runs one crypto subcommand and returns the line of hex to print.
pub fn run(cmd: &CryptoCmd) -> Result<String> {
    let out: Vec<u8> = match cmd {
        CryptoCmd::Encrypt(args) => run_cipher(args, true)?,
        CryptoCmd::Decrypt(args) => run_cipher(args, false)?,
        CryptoCmd::Mac(args) => run_mac(args)?,
        CryptoCmd::Diversify(args) => {
            let (key, data) = derive_inputs(args)?;
            crypto::diversify(args.alg.alg(), &key, &data).to_vec()
        }
        CryptoCmd::SessionKey(args) => {
            let (key, data) = derive_inputs(args)?;
            crypto::session_key(args.alg.alg(), &key, &data)
                .as_bytes()
                .to_vec()
        }
        CryptoCmd::TacKey(args) => {
            let key = parse_hex("--key", &args.key)?;
            let dtk = fixed::<16>("--key", &key, args.alg.name())?;
            crypto::tac_key(args.alg.alg(), &dtk).as_bytes().to_vec()
        }
        CryptoCmd::Kcv(args) => {
            let key = parse_hex("--key", &args.key)?;
            check_len("--key", &key, args.alg.key_lens(), args.alg.name())?;
            crypto::kcv(args.alg.cipher(), &key)?.to_vec()
        }
    };
    Ok(hex::encode_upper(out))
}

fn run_cipher(args: &CipherArgs, encrypt: bool) -> Result<Vec<u8>> {
    let alg = args.alg;
    let cipher = alg.cipher();
    let bl = cipher.block_len();
    let key = parse_hex("--key", &args.key)?;
    check_len("--key", &key, alg.key_lens(), alg.name())?;
    let data = parse_hex("--data", &args.data)?;
    if data.is_empty() || data.len() % bl != 0 {
        bail!(
            "--data must be a non-empty multiple of {bl} bytes for {}, got {} \
             (encrypt and decrypt do not pad)",
            alg.name(),
            data.len()
        );
    }
    let iv = match (&args.iv, args.mode) {
        (Some(_), Mode::Ecb) => bail!("--iv is only used with --mode cbc"),
        (Some(text), Mode::Cbc) => {
            let iv = parse_hex("--iv", text)?;
            check_len("--iv", &iv, &[bl], alg.name())?;
            Some(iv)
        }
        (None, _) => None,
    };
    let iv = iv.as_deref().map(|v| &v[..]);
    Ok(match (args.mode, encrypt) {
        (Mode::Ecb, true) => crypto::ecb_encrypt(cipher, &key, &data)?,
        (Mode::Ecb, false) => crypto::ecb_decrypt(cipher, &key, &data)?,
        (Mode::Cbc, true) => crypto::cbc_encrypt(cipher, &key, iv, &data)?,
        (Mode::Cbc, false) => crypto::cbc_decrypt(cipher, &key, iv, &data)?,
    })
}

fn run_mac(args: &MacArgs) -> Result<Vec<u8>> {
    let alg = args.alg;
    let (key_len, block_len, lens): (usize, usize, &[usize]) = match alg {
        MacAlg::Des => (8, 8, &[4, 8]),
        MacAlg::TripleDesRetail => (16, 8, &[4, 8]),
        MacAlg::Sm4 | MacAlg::AesCmac => (16, 16, &[4, 8, 16]),
    };
    if !lens.contains(&args.len) {
        bail!(
            "--len must be {} for {}, got {}",
            or_list(lens),
            alg.name(),
            args.len
        );
    }
    let key = parse_hex("--key", &args.key)?;
    check_len("--key", &key, &[key_len], alg.name())?;
    let data = parse_hex("--data", &args.data)?;
    let iv = match &args.iv {
        Some(_) if alg == MacAlg::AesCmac => bail!("--iv is not used by aes-cmac"),
        Some(text) => {
            let iv = parse_hex("--iv", text)?;
            check_len("--iv", &iv, &[block_len], alg.name())?;
            Some(iv)
        }
        None => None,
    };
    let iv = iv.as_deref().map(|v| &v[..]);
    let mut mac = match alg {
        MacAlg::Des => crypto::mac_alg1(Cipher::Des, &key, iv, &data, Padding::Method2)?,
        MacAlg::TripleDesRetail => crypto::mac_alg3(&key, iv, &data, Padding::Method2)?.to_vec(),
        MacAlg::Sm4 => crypto::mac_alg1(Cipher::Sm4, &key, iv, &data, Padding::Method2)?,
        MacAlg::AesCmac => crypto::aes_cmac(&key, &data)?.to_vec(),
    };
    mac.truncate(args.len);
    Ok(mac)
}

fn derive_inputs(args: &DeriveArgs) -> Result<(Zeroizing<[u8; 16]>, [u8; 8])> {
    let key = parse_hex("--key", &args.key)?;
    let key = fixed::<16>("--key", &key, args.alg.name())?;
    let data = parse_hex("--data", &args.data)?;
    let data = fixed::<8>("--data", &data, args.alg.name())?;
    Ok((key, *data))
}

/// Decodes hex (either case; spaces, tabs and newlines ignored). The message never repeats the
/// input, which may be a key.
fn parse_hex(option: &str, text: &str) -> Result<Zeroizing<Vec<u8>>> {
    let digits: Zeroizing<Vec<u8>> =
        Zeroizing::new(text.bytes().filter(|b| !b.is_ascii_whitespace()).collect());
    if let Some(pos) = digits.iter().position(|b| !b.is_ascii_hexdigit()) {
        bail!(
            "{option} is not hex: character {} (not counting spaces) is not 0-9 or A-F",
            pos + 1
        );
    }
    if !digits.len().is_multiple_of(2) {
        bail!(
            "{option} is not hex: odd number of digits ({}); each byte is two digits",
            digits.len()
        );
    }
    let mut bytes = Zeroizing::new(vec![0u8; digits.len() / 2]);
    hex::decode_to_slice(&digits[..], &mut bytes[..])
        .map_err(|_| anyhow::anyhow!("{option} is not hex"))?;
    Ok(bytes)
}

fn or_list(lens: &[usize]) -> String {
    let words: Vec<String> = lens.iter().map(usize::to_string).collect();
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => words.concat(),
    }
}

fn check_len(option: &str, bytes: &[u8], allowed: &[usize], alg: &str) -> Result<()> {
    if !allowed.contains(&bytes.len()) {
        bail!(
            "{option} must be {} bytes for {alg}, got {}",
            or_list(allowed),
            bytes.len()
        );
    }
    Ok(())
}

fn fixed<const N: usize>(option: &str, bytes: &[u8], alg: &str) -> Result<Zeroizing<[u8; N]>> {
    check_len(option, bytes, &[N], alg)?;
    let mut out = Zeroizing::new([0u8; N]);
    out.copy_from_slice(bytes);
    Ok(out)
}
