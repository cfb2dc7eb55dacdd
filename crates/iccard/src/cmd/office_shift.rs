//! `iccard office shift`: cashier shifts at a recharge point from the command line. A clerk
//! logged in at a recharge point opens a shift with the cash counted in the drawer and closes
//! it with the cash counted again; the back office works out what the drawer should hold from
//! the clerk's cash postings, records the difference and posts it (over or short). `show`
//! prints a shift's report, `list` the shifts of a day, `required` the rule that cash
//! operations need an open shift.
//!
//! Amounts are typed in yuan with at most two decimals (`100`, `523.5`, `523.50`) and held as
//! integer fen. Exit codes as the rest of `iccard office`: 1 the back office refused (a second
//! shift, another's shift, no role), 2 usage or input.

use std::process::ExitCode;

use anyhow::{anyhow, Result};
use clap::{Subcommand, ValueEnum};
use iccard_office::shifts::{CloseShift, Shift, ShiftReport, REFUSAL};
use iccard_office::OfficeError;

use super::office::{classify_office, print, when, yuan, Ctx, Refused};

/// `office shift`.
#[derive(Debug, Subcommand)]
pub enum ShiftCmd {
    /// Open a shift at the recharge point you are logged in at (--machine), with the cash
    /// counted in the drawer.
    Open {
        /// The cash in the drawer, yuan (e.g. 100.00).
        #[arg(long, value_parser = parse_yuan)]
        cash: i64,
    },
    /// Close a shift with the cash counted: your own open shift, or shift ID (an
    /// administrator closes another operator's shift with --reason).
    Close {
        /// The shift (default: your own open shift).
        id: Option<i64>,
        /// The cash counted in the drawer, yuan (e.g. 523.50).
        #[arg(long, value_parser = parse_yuan)]
        counted: i64,
        /// Why (required for a supervisor close; a note otherwise).
        #[arg(long)]
        reason: Option<String>,
    },
    /// A shift's report: opening cash, cash movements by kind, expected, counted, difference
    /// (default: your open shift, else the open shift at your machine).
    Show {
        /// The shift.
        id: Option<i64>,
    },
    /// The shifts of a day (UTC): every shift open at some time that day.
    List {
        /// The day, YYYY-MM-DD or YYYYMMDD (default: today).
        #[arg(long)]
        date: Option<String>,
    },
    /// Whether cash operations need an open shift: shows it, or sets it (administrators).
    Required {
        /// `on` or `off`.
        #[arg(value_enum)]
        value: Option<OnOff>,
    },
}

/// A switch on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Cash operations need an open shift.
    On,
    /// They do not.
    Off,
}

/// Parses yuan with at most two decimals into fen: `100`, `100.5`, `100.50`. No sign, no
/// exponent, no thousands separators; checked arithmetic.
pub fn parse_yuan(s: &str) -> std::result::Result<i64, String> {
    let bad =
        || format!("{s:?} is not an amount: give yuan with at most two decimals, e.g. 523.50");
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 2 {
        return Err(bad());
    }
    if s.ends_with('.') {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().map_err(|_| bad())? * 10,
        _ => frac.parse().map_err(|_| bad())?,
    };
    whole
        .checked_mul(100)
        .and_then(|v| v.checked_add(frac))
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `YYYY-MM-DD` or `YYYYMMDD` as the back office's `YYYYMMDD`.
fn day(s: &str) -> String {
    let b = s.as_bytes();
    if b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        format!("{}{}{}", &s[0..4], &s[5..7], &s[8..10])
    } else {
        s.to_owned()
    }
}

/// A refusal because of a shift's state is the back office refusing (exit 1), not bad input.
fn classify(e: OfficeError) -> anyhow::Error {
    match e {
        OfficeError::Invalid { what, .. } if what == REFUSAL => anyhow!(Refused(anyhow!(e))),
        other => classify_office(other),
    }
}

fn describe_shift(s: &Shift) -> String {
    let mut t = format!(
        "shift {} at {}, operator {}: {}\n  opened {}, opening cash {} (the books held {})",
        s.id,
        s.machine_number,
        s.operator,
        s.state.as_str(),
        when(s.opened_at_ms),
        yuan(s.opening_cash_minor),
        yuan(s.book_cash_at_open_minor)
    );
    if let (Some(at), Some(by)) = (s.closed_at_ms, &s.closed_by) {
        t.push_str(&format!("\n  closed {} by {by}", when(at)));
        if let Some(r) = &s.close_reason {
            t.push_str(&format!(": {r}"));
        }
    }
    t
}

fn describe_report(r: &ShiftReport) -> String {
    let mut t = describe_shift(&r.shift);
    if r.movements.is_empty() {
        t.push_str("\n  no cash movement");
    }
    for m in &r.movements {
        t.push_str(&format!(
            "\n  {:<20} {:>4}  in {:>12}  out {:>12}",
            m.kind,
            m.count,
            yuan(m.in_minor),
            yuan(m.out_minor)
        ));
    }
    t.push_str(&format!(
        "\n  cash in {}, out {}; expected in the drawer {}",
        yuan(r.cash_in_minor),
        yuan(r.cash_out_minor),
        yuan(r.expected_cash_minor)
    ));
    if let (Some(c), Some(d)) = (r.shift.counted_cash_minor, r.shift.difference_minor) {
        let what = match d.signum() {
            1 => "over",
            -1 => "short",
            _ => "even",
        };
        t.push_str(&format!(
            "\n  counted {}, difference {} ({what})",
            yuan(c),
            yuan(d)
        ));
    }
    if r.others_net_minor != 0 {
        t.push_str(&format!(
            "\n  other operators moved {} through this drawer during the shift (not in the expected cash)",
            yuan(r.others_net_minor)
        ));
    }
    t
}

/// Runs `office shift`.
pub(super) async fn shift(ctx: Ctx, c: &ShiftCmd) -> Result<ExitCode> {
    let o = &ctx.office;
    let s = &ctx.session;
    match c {
        ShiftCmd::Open { cash } => {
            let sh = o.open_shift(s, *cash).await.map_err(classify)?;
            print(ctx.json, &sh, || describe_shift(&sh))?;
        }
        ShiftCmd::Close {
            id,
            counted,
            reason,
        } => {
            let id = match id {
                Some(id) => *id,
                None => {
                    o.current_shift_of(&s.login)
                        .await
                        .map_err(classify)?
                        .ok_or_else(|| {
                            anyhow!(Refused(anyhow!(
                                "operator {} has no open shift: give the shift's id",
                                s.login
                            )))
                        })?
                        .id
                }
            };
            let r = o
                .close_shift(
                    s,
                    id,
                    CloseShift {
                        counted_cash_minor: *counted,
                        reason: reason.clone(),
                    },
                )
                .await
                .map_err(classify)?;
            print(ctx.json, &r, || describe_report(&r))?;
        }
        ShiftCmd::Show { id } => {
            let id = match id {
                Some(id) => *id,
                None => {
                    let mine = o.current_shift_of(&s.login).await.map_err(classify)?;
                    let here = match mine {
                        Some(sh) => Some(sh),
                        None => o
                            .current_shift_at(&s.machine_number)
                            .await
                            .map_err(classify)?,
                    };
                    here.ok_or_else(|| {
                        anyhow!(Refused(anyhow!(
                            "no open shift of {} nor at {}: give a shift id (`iccard office shift list`)",
                            s.login,
                            s.machine_number
                        )))
                    })?
                    .id
                }
            };
            let r = o.shift_report(id).await.map_err(classify)?;
            print(ctx.json, &r, || describe_report(&r))?;
        }
        ShiftCmd::List { date } => {
            let date = match date {
                Some(d) => day(d),
                None => super::office::now_time().date_string(),
            };
            let v = o.shifts_of_day(&date).await.map_err(classify)?;
            print(ctx.json, &v, || {
                if v.is_empty() {
                    return format!("no shift on {date} (UTC)");
                }
                let mut t = format!(
                    "{:>5} {:<12} {:<16} {:<7} {:>12} {:>12} {:>12} {:>10}",
                    "shift",
                    "machine",
                    "operator",
                    "state",
                    "opening",
                    "expected",
                    "counted",
                    "diff"
                );
                let opt = |v: Option<i64>| v.map(yuan).unwrap_or_else(|| "-".into());
                for x in &v {
                    t.push_str(&format!(
                        "\n{:>5} {:<12} {:<16} {:<7} {:>12} {:>12} {:>12} {:>10}",
                        x.id,
                        x.machine_number,
                        x.operator,
                        x.state.as_str(),
                        yuan(x.opening_cash_minor),
                        opt(x.expected_cash_minor),
                        opt(x.counted_cash_minor),
                        opt(x.difference_minor)
                    ));
                }
                t
            })?;
        }
        ShiftCmd::Required { value } => {
            if let Some(v) = value {
                o.set_shifts_required(s, *v == OnOff::On)
                    .await
                    .map_err(classify)?;
            }
            let required = o.shifts_required().await.map_err(classify)?;
            print(
                ctx.json,
                &serde_json::json!({ "shifts_required": required }),
                || {
                    if required {
                        "cash operations need an open shift of their operator at their machine"
                            .into()
                    } else {
                        "cash operations do not need an open shift".into()
                    }
                },
            )?;
        }
    }
    ctx.done(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_amounts_parse_to_fen() {
        assert_eq!(parse_yuan("100"), Ok(10_000));
        assert_eq!(parse_yuan("523.5"), Ok(52_350));
        assert_eq!(parse_yuan("523.50"), Ok(52_350));
        assert_eq!(parse_yuan("0.07"), Ok(7));
        assert_eq!(parse_yuan("0"), Ok(0));
        for bad in [
            "", ".5", "5.", "1.234", "-1", "+1", "1e3", "1,000", "abc", " 1",
        ] {
            assert!(parse_yuan(bad).is_err(), "{bad:?}");
        }
        assert!(parse_yuan("92233720368547758.07").is_ok());
        assert!(parse_yuan("92233720368547758.08").is_err());
        assert!(parse_yuan("99999999999999999999").is_err());
    }

    #[test]
    fn days_are_given_either_way() {
        assert_eq!(day("2026-11-26"), "20261126");
        assert_eq!(day("20261126"), "20261126");
        assert_eq!(day("2026/11/26"), "2026/11/26");
    }
}
