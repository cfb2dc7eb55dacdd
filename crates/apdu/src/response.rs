//! Response APDUs ([`Response`]: data field plus SW1-SW2) and, for the card side, the
//! [`ResponseBuffer`] that hands a long answer out in pieces through GET RESPONSE
//! (ISO/IEC 7816-4:2005 7.6.1, status `61xx` of 5.1.3).

use std::fmt;

use crate::command::{ApduError, Command, MAX_NE, MAX_SHORT_NE};
use crate::hex;
use crate::status::StatusWord;

/// INS of GET RESPONSE (`00 C0 00 00 Le`).
pub const INS_GET_RESPONSE: u8 = 0xC0;

/// A response APDU: the response data field followed by the status word.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// Response data field (may be empty).
    pub data: Vec<u8>,
    /// Status word SW1-SW2.
    pub sw: StatusWord,
}

impl Response {
    /// A response with data and a status word.
    pub fn new(data: impl Into<Vec<u8>>, sw: StatusWord) -> Self {
        Response {
            data: data.into(),
            sw,
        }
    }

    /// A response with a status word and no data.
    pub fn sw(sw: StatusWord) -> Self {
        Response::new(Vec::new(), sw)
    }

    /// A successful (`9000`) response with data.
    pub fn ok(data: impl Into<Vec<u8>>) -> Self {
        Response::new(data, StatusWord::OK)
    }

    /// Splits received bytes into data and the last two bytes SW1 SW2. Needs at least 2 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Response, ApduError> {
        match bytes {
            [data @ .., sw1, sw2] => Ok(Response::new(data, StatusWord::new(*sw1, *sw2))),
            _ => Err(ApduError::ResponseTooShort { len: bytes.len() }),
        }
    }

    /// Data followed by SW1 SW2.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.sw.to_bytes());
        out
    }

    /// Whether the status word is `9000` or `61xx`.
    pub fn is_success(&self) -> bool {
        self.sw.is_success()
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("data", &format_args!("{}", hex::encode(&self.data)))
            .field("sw", &self.sw)
            .finish()
    }
}

/// The reader-side GET RESPONSE command `00 C0 00 00 Le` asking for `ne` bytes.
pub fn get_response_command(ne: usize) -> Command {
    Command::new(0x00, INS_GET_RESPONSE, 0x00, 0x00).with_ne(ne)
}

/// `61xx` for `remaining` bytes still pending: `xx` = remaining when below 256, `00` (meaning
/// "256 or more", fetched with `Le = 00`) otherwise.
fn more_available(remaining: usize) -> StatusWord {
    StatusWord::bytes_remaining(u8::try_from(remaining).unwrap_or(0))
}

/// Card-side holder of a response too long for the Ne of the command that asked for it.
///
/// [`answer`](Self::answer) sends what fits and keeps the rest; the reader then fetches it with
/// GET RESPONSE, which the card routes to [`get_response`](Self::get_response). The buffer does
/// not look at commands itself: the card OS must call [`clear`](Self::clear) when any command
/// other than GET RESPONSE arrives, because ISO/IEC 7816-4 discards pending response data then.
///
/// `Debug` shows only how many bytes are pending; cleared data is overwritten with zeros.
#[derive(Default)]
pub struct ResponseBuffer {
    /// The whole pending data field; bytes before `position` were already sent.
    pending: Vec<u8>,
    /// Index of the next byte to send.
    position: usize,
    /// Status word of the complete answer, sent with its last piece.
    final_sw: Option<StatusWord>,
    /// Whether pieces may exceed 256 bytes (the command arrived in extended form).
    extended_capable: bool,
}

impl ResponseBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns the complete answer `full` to a command that asked for `ne` bytes into what the
    /// card sends now.
    ///
    /// The limit is Ne, capped at 256 unless `extended_capable` (the card and the command use
    /// extended lengths); `ne = None` (no Le field) means Ne = 0. If the data fits it is
    /// returned unchanged and nothing is kept. Otherwise the first `limit` bytes go out with
    /// `61xx` (`xx` = bytes left, `00` when 256 or more are left) and the rest, with the
    /// original status word, waits for GET RESPONSE. Any earlier pending data is discarded.
    pub fn answer(
        &mut self,
        full: Response,
        ne: Option<usize>,
        extended_capable: bool,
    ) -> Response {
        self.clear();
        let cap = if extended_capable {
            MAX_NE
        } else {
            MAX_SHORT_NE
        };
        let limit = ne.map_or(0, |ne| ne.min(cap));
        if full.data.len() <= limit {
            return full;
        }
        let Response { data, sw } = full;
        self.pending = data;
        self.position = limit;
        self.final_sw = Some(sw);
        self.extended_capable = extended_capable;
        let first = self.pending[..limit].to_vec();
        Response::new(first, more_available(self.remaining()))
    }

    /// Answers a GET RESPONSE asking for `ne` bytes with the next piece of pending data.
    ///
    /// - Nothing pending: `6985` (conditions of use not satisfied), the usual card answer to a
    ///   GET RESPONSE that does not follow a `61xx`.
    /// - `ne = None` (GET RESPONSE without Le): `6700` (wrong length); the data stays pending.
    /// - Otherwise up to Ne bytes (Ne capped as in [`answer`](Self::answer)) with `61xx` while
    ///   more remain, and the original status word with the last piece. Asking for more than
    ///   what is left returns what is left (no `6Cxx`).
    pub fn get_response(&mut self, ne: Option<usize>) -> Response {
        let Some(final_sw) = self.final_sw else {
            return Response::sw(StatusWord::CONDITIONS_NOT_SATISFIED);
        };
        let Some(ne) = ne else {
            return Response::sw(StatusWord::WRONG_LENGTH);
        };
        let cap = if self.extended_capable {
            MAX_NE
        } else {
            MAX_SHORT_NE
        };
        let take = ne.min(cap).min(self.remaining());
        let end = self.position + take;
        let piece = self.pending[self.position..end].to_vec();
        self.position = end;
        if self.remaining() > 0 {
            Response::new(piece, more_available(self.remaining()))
        } else {
            self.clear();
            Response::new(piece, final_sw)
        }
    }

    /// Number of response bytes still waiting for GET RESPONSE.
    pub fn remaining(&self) -> usize {
        self.pending.len() - self.position
    }

    /// Whether a previous answer still has data waiting for GET RESPONSE.
    pub fn is_pending(&self) -> bool {
        self.final_sw.is_some()
    }

    /// Discards pending data (overwriting it first).
    pub fn clear(&mut self) {
        crate::wipe(&mut self.pending);
        self.pending.clear();
        self.position = 0;
        self.final_sw = None;
        self.extended_capable = false;
    }
}

impl Drop for ResponseBuffer {
    fn drop(&mut self) {
        crate::wipe(&mut self.pending);
    }
}

impl fmt::Debug for ResponseBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBuffer")
            .field("remaining", &self.remaining())
            .field("final_sw", &self.final_sw)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let r = Response::parse(&[0x6F, 0x00, 0x90, 0x00]).unwrap();
        assert_eq!(r, Response::ok([0x6F, 0x00]));
        assert_eq!(r.to_bytes(), vec![0x6F, 0x00, 0x90, 0x00]);
        let r = Response::parse(&[0x6A, 0x82]).unwrap();
        assert_eq!(r, Response::sw(StatusWord::FILE_NOT_FOUND));
        assert!(r.data.is_empty());
        assert_eq!(
            Response::parse(&[0x90]),
            Err(ApduError::ResponseTooShort { len: 1 })
        );
        assert_eq!(
            Response::parse(&[]),
            Err(ApduError::ResponseTooShort { len: 0 })
        );
    }

    fn numbered(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    #[test]
    fn fits_unchanged() {
        let mut buffer = ResponseBuffer::new();
        let full = Response::ok(numbered(20));
        assert_eq!(buffer.answer(full.clone(), Some(20), false), full);
        assert_eq!(buffer.answer(full.clone(), Some(256), false), full);
        assert!(!buffer.is_pending());
        // No data at all fits even without Le.
        let bare = Response::sw(StatusWord::OK);
        assert_eq!(buffer.answer(bare.clone(), None, false), bare);
        assert_eq!(
            buffer.get_response(Some(256)),
            Response::sw(StatusWord::CONDITIONS_NOT_SATISFIED)
        );
    }

    #[test]
    fn no_le_gives_61xx_then_get_response() {
        // T=0 style: SELECT without Le, card answers 61 1C, reader fetches 1C bytes.
        let mut buffer = ResponseBuffer::new();
        let full = Response::ok(numbered(28));
        let first = buffer.answer(full.clone(), None, false);
        assert_eq!(first, Response::sw(StatusWord(0x611C)));
        assert_eq!(buffer.remaining(), 28);
        let rest = buffer.get_response(Some(0x1C));
        assert_eq!(rest, full);
        assert!(!buffer.is_pending());
    }

    #[test]
    fn long_answer_in_pieces() {
        let mut buffer = ResponseBuffer::new();
        let data = numbered(600);
        let full = Response::new(data.clone(), StatusWord::END_OF_FILE);
        let first = buffer.answer(full, Some(256), false);
        assert_eq!(first.data, data[..256]);
        // 344 left: 256 or more, so SW2 = 00.
        assert_eq!(first.sw, StatusWord(0x6100));
        let second = buffer.get_response(Some(256));
        assert_eq!(second.data, data[256..512]);
        assert_eq!(second.sw, StatusWord(0x6158));
        // Asking for more than is left returns what is left with the original SW.
        let third = buffer.get_response(Some(256));
        assert_eq!(third.data, data[512..]);
        assert_eq!(third.sw, StatusWord::END_OF_FILE);
        assert_eq!(
            buffer.get_response(Some(256)).sw,
            StatusWord::CONDITIONS_NOT_SATISFIED
        );
    }

    #[test]
    fn short_card_caps_pieces_at_256() {
        let mut buffer = ResponseBuffer::new();
        let data = numbered(1000);
        let first = buffer.answer(Response::ok(data.clone()), Some(1000), false);
        assert_eq!(first.data.len(), 256);
        assert_eq!(buffer.get_response(Some(65536)).data.len(), 256);
        // Extended-capable: one piece.
        let whole = buffer.answer(Response::ok(data.clone()), Some(1000), true);
        assert_eq!(whole, Response::ok(data.clone()));
        let first = buffer.answer(Response::ok(data.clone()), Some(700), true);
        assert_eq!(first.data.len(), 700);
        // 300 left: 256 or more, so SW2 = 00.
        assert_eq!(first.sw, StatusWord(0x6100));
        let rest = buffer.get_response(Some(65536));
        assert_eq!(rest, Response::ok(data[700..].to_vec()));
    }

    #[test]
    fn get_response_without_le_keeps_data() {
        let mut buffer = ResponseBuffer::new();
        buffer.answer(Response::ok(numbered(10)), Some(4), false);
        assert_eq!(
            buffer.get_response(None),
            Response::sw(StatusWord::WRONG_LENGTH)
        );
        assert_eq!(buffer.remaining(), 6);
        buffer.clear();
        assert!(!buffer.is_pending());
        assert_eq!(buffer.remaining(), 0);
        assert_eq!(
            buffer.get_response(Some(6)).sw,
            StatusWord::CONDITIONS_NOT_SATISFIED
        );
    }

    #[test]
    fn get_response_command_bytes() {
        assert_eq!(
            get_response_command(0x1C).to_bytes(),
            vec![0x00, 0xC0, 0x00, 0x00, 0x1C]
        );
        assert_eq!(
            get_response_command(256).to_bytes(),
            vec![0x00, 0xC0, 0x00, 0x00, 0x00]
        );
    }

    #[test]
    fn debug_hides_pending_bytes() {
        let mut buffer = ResponseBuffer::new();
        buffer.answer(Response::ok(vec![0xAB; 10]), Some(2), false);
        let text = format!("{buffer:?}");
        assert!(text.contains("remaining: 8"), "{text}");
        assert!(!text.contains("AB"), "{text}");
    }
}
