//! `iccard office settlement ...`: merchants and the terminals that upload, batch files carried
//! by hand, the terminals' HTTP service, settlement runs, the reconciliation report and cases.
//!
//! The work is done by `iccard-office` ([`iccard_office::upload`],
//! [`iccard_office::settlement`], [`iccard_office::upload_http`]); this module parses, drives
//! and prints text or `--json`, with the exit codes of the rest of `iccard office` (1 refused,
//! 2 usage or input).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use iccard_office::upload::UploadError;
use iccard_office::upload_http::{self, SharedKeystore};

use super::office::{classify_office, print, when, yuan, Ctx, Refused};

/// `office settlement`.
#[derive(Debug, Subcommand)]
pub enum SettlementCmd {
    /// Merchants (the owners of terminals).
    #[command(subcommand)]
    Merchant(MerchantCmd),
    /// Terminals allowed to upload.
    #[command(subcommand)]
    Terminal(TerminalCmd),
    /// Import a batch file written by a terminal never online (`iccard terminal run export`).
    Import {
        /// The batch file (JSON).
        file: PathBuf,
    },
    /// Serve the terminals' HTTP API (`POST /v1/batches`, `GET /v1/loss-list`) until stopped.
    Serve {
        /// Address to listen on (port 0: any free port, printed on start).
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: String,
    },
    /// Settle the accepted purchases made on or before a day.
    Run {
        /// The day, YYYY-MM-DD.
        #[arg(long)]
        date: String,
    },
    /// The reconciliation report of a day: per merchant and terminal.
    Report {
        /// The day, YYYY-MM-DD.
        #[arg(long)]
        date: String,
    },
    /// The cases, newest first.
    Cases {
        /// Only the open ones.
        #[arg(long)]
        open: bool,
    },
    /// Resolve a case with a reason (audited).
    Resolve {
        /// The case number.
        case: i64,
        /// Why it is resolved (1 to 500 characters).
        #[arg(long)]
        reason: String,
    },
}

/// `office settlement merchant`.
#[derive(Debug, Subcommand)]
pub enum MerchantCmd {
    /// Add a merchant.
    Add {
        /// Its code (letters, digits, '-', '_').
        code: String,
        /// Its name.
        #[arg(long)]
        name: String,
    },
    /// List the merchants.
    List,
}

/// `office settlement terminal`.
#[derive(Debug, Subcommand)]
pub enum TerminalCmd {
    /// Assign a registered terminal machine its PSAM's terminal id and a merchant, and draw its
    /// upload token (printed once; assigning again replaces it).
    Assign {
        /// The terminal machine's number (positional: `--machine` is the machine the
        /// operator logs in at).
        #[arg(value_name = "MACHINE")]
        terminal_machine: String,
        /// The PSAM's terminal id (12 hex digits).
        #[arg(long)]
        terminal_id: String,
        /// The merchant's code.
        #[arg(long)]
        merchant: String,
    },
    /// List the terminals allowed to upload.
    List,
}

fn classify_upload(e: UploadError) -> anyhow::Error {
    match e {
        UploadError::Office(e) => classify_office(e),
        UploadError::Malformed(_) => anyhow!(e),
        other => anyhow!(Refused(anyhow!(other))),
    }
}

/// Runs `office settlement`.
pub(super) async fn settlement(ctx: Ctx, c: &SettlementCmd) -> Result<ExitCode> {
    let o = &ctx.office;
    let s = &ctx.session;
    let json = ctx.json;
    match c {
        SettlementCmd::Merchant(MerchantCmd::Add { code, name }) => {
            let m = o
                .add_merchant(s, code, name)
                .await
                .map_err(classify_office)?;
            print(json, &m, || {
                format!("merchant {} ({}) added", m.code, m.name)
            })?;
        }
        SettlementCmd::Merchant(MerchantCmd::List) => {
            let ms = o.merchants().await.map_err(classify_office)?;
            print(json, &ms, || {
                let mut t = format!("{:<16} name", "code");
                for m in &ms {
                    t.push_str(&format!("\n{:<16} {}", m.code, m.name));
                }
                t
            })?;
        }
        SettlementCmd::Terminal(TerminalCmd::Assign {
            terminal_machine: machine,
            terminal_id,
            merchant,
        }) => {
            let a = o
                .assign_terminal(s, machine, terminal_id, merchant)
                .await
                .map_err(classify_office)?;
            print(json, &a, || {
                format!(
                    "terminal {} ({}) uploads for merchant {}\nupload token (shown once; give it to the terminal, e.g. in ICCARD_TERMINAL_TOKEN):\n{}",
                    a.terminal.terminal_id, a.terminal.machine_number, a.terminal.merchant_code, a.token
                )
            })?;
        }
        SettlementCmd::Terminal(TerminalCmd::List) => {
            let ts = o.upload_terminals().await.map_err(classify_office)?;
            print(json, &ts, || {
                let mut t = format!(
                    "{:<14} {:<12} {:<16} last batch",
                    "terminal id", "machine", "merchant"
                );
                for x in &ts {
                    t.push_str(&format!(
                        "\n{:<14} {:<12} {:<16} {}",
                        x.terminal_id, x.machine_number, x.merchant_code, x.last_sequence
                    ));
                }
                t
            })?;
        }
        SettlementCmd::Import { file } => {
            let bf = iccard_pos::read_batch_file(file)
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let ks = ctx.open_keystore()?;
            let answers = o
                .import_batch_file(s, &*ks, &bf)
                .await
                .map_err(classify_upload)?;
            print(json, &answers, || {
                let mut t = String::new();
                for a in &answers {
                    let ok = a.results.iter().filter(|r| r.code.accepted()).count();
                    t.push_str(&format!(
                        "terminal {} batch {}: {} record(s), {} accepted",
                        a.terminal_id,
                        a.sequence,
                        a.results.len(),
                        ok
                    ));
                    for r in a.results.iter().filter(|r| !r.code.accepted()) {
                        t.push_str(&format!("\n  serial {}: {}", r.terminal_serial, r.code));
                    }
                    t.push('\n');
                }
                t.trim_end().to_owned()
            })?;
        }
        SettlementCmd::Serve { listen } => {
            let ks = Arc::new(SharedKeystore::new(ctx.open_keystore()?));
            let listener = upload_http::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let addr = listener.local_addr()?;
            if json {
                println!("{}", serde_json::json!({ "listening": addr.to_string() }));
            } else {
                println!("listening on http://{addr} (POST /v1/batches, GET /v1/loss-list)");
            }
            std::io::stdout().flush()?;
            let office = Arc::new(ctx.office.clone());
            upload_http::serve(listener, office, ks)
                .await
                .context("the HTTP service stopped")?;
        }
        SettlementCmd::Run { date } => {
            let r = o.settle_day(s, date).await.map_err(classify_office)?;
            print(json, &r, || {
                let mut t = format!(
                    "settlement run {} for purchases up to {}: {} record(s) settled, {} yuan; {} duplicate(s), {} held, {} case(s) opened",
                    r.id,
                    r.business_date,
                    r.records_settled,
                    yuan(r.amount_minor),
                    r.duplicates,
                    r.held,
                    r.cases_opened
                );
                for p in &r.postings {
                    t.push_str(&format!(
                        "\n  entry {}: {} merchant {} terminal {}: {} record(s), {} yuan",
                        p.entry_id,
                        p.business_date,
                        p.merchant_code,
                        p.terminal_id,
                        p.records,
                        yuan(p.amount_minor)
                    ));
                }
                t
            })?;
        }
        SettlementCmd::Report { date } => {
            let r = o
                .reconciliation_report(date)
                .await
                .map_err(classify_office)?;
            print(json, &r, || {
                let mut t = format!(
                    "reconciliation {}: {} yuan posted to merchant payable\n{:<10} {:<14} {:>7} {:>10} {:>8} {:>7} {:>10} {:>5} {:>5}",
                    r.business_date,
                    yuan(r.posted_minor),
                    "merchant",
                    "terminal",
                    "records",
                    "amount",
                    "accepted",
                    "settled",
                    "settled",
                    "held",
                    "cases"
                );
                for l in &r.lines {
                    t.push_str(&format!(
                        "\n{:<10} {:<14} {:>7} {:>10} {:>8} {:>7} {:>10} {:>5} {:>5}",
                        l.merchant_code,
                        l.terminal_id,
                        l.records,
                        yuan(l.amount_minor),
                        l.accepted,
                        l.settled,
                        yuan(l.settled_minor),
                        l.held,
                        l.cases
                    ));
                    let refused: Vec<String> = l
                        .by_code
                        .iter()
                        .filter(|(c, _)| !matches!(c.as_str(), "ok" | "exists"))
                        .map(|(c, n)| format!("{c} {n}"))
                        .collect();
                    if !refused.is_empty() {
                        t.push_str(&format!("\n  answered: {}", refused.join(", ")));
                    }
                }
                t
            })?;
        }
        SettlementCmd::Cases { open } => {
            let cs = o.cases(*open).await.map_err(classify_office)?;
            print(json, &cs, || {
                let mut t = format!(
                    "{:>5} {:<28} {:<9} {:<10} detail",
                    "case", "kind", "state", "day"
                );
                for c in &cs {
                    t.push_str(&format!(
                        "\n{:>5} {:<28} {:<9} {:<10} {}",
                        c.id,
                        c.kind.as_str(),
                        c.state,
                        c.business_date,
                        c.detail
                    ));
                    if let (Some(by), Some(why), Some(at)) =
                        (&c.resolved_by, &c.resolution, c.resolved_at_ms)
                    {
                        t.push_str(&format!("\n      resolved by {by} at {}: {why}", when(at)));
                    }
                }
                t
            })?;
        }
        SettlementCmd::Resolve { case, reason } => {
            let c = o
                .resolve_case(s, *case, reason)
                .await
                .map_err(classify_office)?;
            print(json, &c, || {
                format!("case {} ({}) resolved: {}", c.id, c.kind.as_str(), reason)
            })?;
        }
    }
    ctx.done(ExitCode::SUCCESS)
}
