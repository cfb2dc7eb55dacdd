//! The `iccard` command line: parsing and printing only; the work is done by the library crates.
//!
//! Exit codes: 0 success, 1 the operation ran and failed (a card refused, a check failed),
//! 2 a usage or input error (bad hex, bad option, unreadable file).
mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// iccard: a CPU-card (IC card) system: card OS, purse, terminals, back office.
#[derive(Debug, Parser)]
#[command(name = "iccard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Block ciphers, MACs and key derivations: hex in, one line of hex out.
    #[command(subcommand)]
    Crypto(cmd::crypto::CryptoCmd),
    /// Card images: manufacture, send APDUs, inspect.
    #[command(subcommand)]
    Card(cmd::card::CardCmd),
    /// Terminals: recharge (load) at a recharge point, purchase with a PSAM, balance, log.
    #[command(subcommand)]
    Terminal(cmd::terminal::TerminalCmd),
    /// PC/SC readers: list them with the card in each.
    #[command(subcommand)]
    Reader(cmd::reader::ReaderCmd),
    /// Send APDUs to the card in a PC/SC reader (61xx and 6Cxx followed up); one line of hex
    /// per answer.
    Apdu(cmd::reader::ApduArgs),
    /// The issuer's back office: init, operators, machines, keys, check, audit, ledger.
    Office(Box<cmd::office::OfficeArgs>),
    /// The main job: a card made, personalized and used, end to end, each step shown.
    Demo(cmd::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Office(a) = &cli.command {
        return cmd::office::run(a);
    }
    let result = match &cli.command {
        Command::Crypto(c) => cmd::crypto::run(c),
        Command::Card(c) => cmd::card::run(c).map(|()| String::new()),
        Command::Terminal(c) => cmd::terminal::run(c).map(|()| String::new()),
        Command::Reader(c) => cmd::reader::run(c).map(|()| String::new()),
        Command::Apdu(a) => cmd::reader::apdu(a).map(|()| String::new()),
        Command::Demo(a) => cmd::demo::run(a).map(|()| String::new()),
        Command::Office(_) => Ok(String::new()),
    };
    match result {
        Ok(line) => {
            if !line.is_empty() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("iccard: {e:#}");
            ExitCode::from(2)
        }
    }
}
