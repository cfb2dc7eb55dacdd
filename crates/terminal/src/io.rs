//! One exchange with a device: the APDU out, the answer parsed, `61xx` followed by GET RESPONSE
//! and `6Cxx` answered by resending with the exact Le (ISO 7816-4 §5.1.3, T=0 habits a real
//! reader may show), and the answer checked for 9000 and its length.

use crate::error::{Device, TerminalError};
use iccard_apdu::{Command as Apdu, Response, StatusWord};
use iccard_link::CardChannel;

/// Sends `apdu` and returns the final answer, whatever its status.
pub(crate) fn exchange<C: CardChannel + ?Sized>(
    ch: &mut C,
    device: Device,
    step: &'static str,
    apdu: &Apdu,
) -> Result<Response, TerminalError> {
    let send = |ch: &mut C, a: &Apdu| -> Result<Response, TerminalError> {
        let raw = ch
            .transmit(&a.to_bytes())
            .map_err(|source| TerminalError::Link {
                device,
                step,
                source,
            })?;
        Response::parse(&raw).map_err(|_| TerminalError::Malformed {
            device,
            step,
            len: raw.len(),
            expected: 2,
        })
    };
    let mut resp = send(ch, apdu)?;
    if resp.sw.sw1() == 0x6C {
        let mut again = apdu.clone();
        again.ne = Some(match resp.sw.sw2() {
            0 => 256,
            n => usize::from(n),
        });
        resp = send(ch, &again)?;
    }
    // Bounded: a card that keeps answering 61xx gets at most 64 GET RESPONSEs.
    let mut rounds = 0;
    while resp.sw.sw1() == 0x61 && rounds < 64 {
        rounds += 1;
        let ne = match resp.sw.sw2() {
            0 => 256,
            n => usize::from(n),
        };
        let more = send(ch, &Apdu::new(0x00, 0xC0, 0, 0).with_ne(ne))?;
        resp.data.extend_from_slice(&more.data);
        resp.sw = more.sw;
    }
    // 61xx says the command itself completed: a GET RESPONSE that then fails (or never ends)
    // lost the answer of a command that ran. It must not read as a refusal, which would tell
    // the purse flows that no money moved.
    if rounds > 0 && !matches!(resp.sw.sw1(), 0x90 | 0x62 | 0x63) {
        return Err(TerminalError::IncompleteAnswer {
            device,
            step,
            sw: resp.sw,
        });
    }
    Ok(resp)
}

/// Sends `apdu`, requires 9000 and exactly `len` bytes of data (`None`: any length).
pub(crate) fn expect<C: CardChannel + ?Sized>(
    ch: &mut C,
    device: Device,
    step: &'static str,
    apdu: &Apdu,
    len: Option<usize>,
) -> Result<Vec<u8>, TerminalError> {
    let resp = exchange(ch, device, step, apdu)?;
    ok(resp, device, step, len)
}

/// Checks an answer for 9000 and its length.
pub(crate) fn ok(
    resp: Response,
    device: Device,
    step: &'static str,
    len: Option<usize>,
) -> Result<Vec<u8>, TerminalError> {
    if resp.sw != StatusWord::OK {
        return Err(TerminalError::Refused {
            device,
            step,
            sw: resp.sw,
        });
    }
    if let Some(len) = len {
        if resp.data.len() != len {
            return Err(TerminalError::Malformed {
                device,
                step,
                len: resp.data.len(),
                expected: len,
            });
        }
    }
    Ok(resp.data)
}

/// `b[at..at + N]` as an array (the caller checked the length).
pub(crate) fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}
