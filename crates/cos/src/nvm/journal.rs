//! The redo journal: the byte layout of a journal entry, the scan that finds entries in the
//! ring, and the placement rule that picks the pages the next entry goes to.
//!
//! See the [module documentation](super) for the design; this file owns its details.
//!
//! ## Entry layout
//!
//! An entry occupies `count` ring-consecutive journal pages (it may wrap from the last ring page
//! to the first). Every page starts with an 8-byte page header that no user data can occupy:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | tag `b'J'` |
//! | 1 | 1 | index of this page within the entry (0..count) |
//! | 2 | 1 | count: pages in the entry |
//! | 3 | 1 | entry format version (1) |
//! | 4 | 4 | seq (big-endian) |
//!
//! The remaining 56 bytes of each page carry the entry *stream*, continued page after page:
//! `range_count u16 ‖ (addr u32 ‖ len u16 ‖ bytes[len]) * range_count ‖ crc32`, all big-endian,
//! addresses being NVM user addresses. The CRC-32 (IEEE) covers `seq ‖ count ‖ stream` up to the
//! CRC itself. The last page holds at least one byte of the stream (the encoding is canonical)
//! and its bytes after the CRC are never written.

use super::eeprom::PAGE_SIZE;

/// Bytes of the header at the start of every journal page.
pub(crate) const PAGE_HEADER: usize = 8;
/// Stream bytes carried by one journal page.
pub(crate) const PAGE_PAYLOAD: usize = PAGE_SIZE - PAGE_HEADER;
/// Journal bytes one range costs on top of its data: address (4) and length (2).
pub const RANGE_OVERHEAD: usize = 6;
/// Journal bytes of an entry besides its ranges: range count (2) and CRC (4).
pub(crate) const ENTRY_OVERHEAD: usize = 6;
/// The largest transaction [`super::Nvm`] accepts, in journal bytes: the sum over the staged
/// ranges of `len + RANGE_OVERHEAD`. A single contiguous write may thus be up to
/// `MAX_TRANSACTION_BYTES - RANGE_OVERHEAD` = 1018 bytes.
pub const MAX_TRANSACTION_BYTES: usize = 1024;
/// Pages of the largest entry.
pub(crate) const MAX_ENTRY_PAGES: usize =
    (ENTRY_OVERHEAD + MAX_TRANSACTION_BYTES).div_ceil(PAGE_PAYLOAD);
/// Fewest journal pages a layout may have: one largest entry plus a page for a checkpoint.
pub(crate) const MIN_JOURNAL_PAGES: usize = MAX_ENTRY_PAGES + 1;

const TAG: u8 = b'J';
const ENTRY_VERSION: u8 = 1;

/// One contiguous run of user bytes to land at user address `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    pub addr: usize,
    pub data: Vec<u8>,
}

/// Ring pages `start..start + pages` (modulo the ring length) holding one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub pages: usize,
}

impl Span {
    /// True if ring page `page` belongs to this span in a ring of `ring` pages.
    pub fn contains(&self, page: usize, ring: usize) -> bool {
        (page + ring - self.start) % ring < self.pages
    }
}

/// An encoded entry, ready to be written from the first page of its span.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    /// Physical bytes from the start of the first page to the end of the CRC.
    pub bytes: Vec<u8>,
    /// Pages it occupies.
    pub pages: usize,
}

/// Journal bytes (stream length) the runs would need.
pub(crate) fn stream_len(runs: &[Run]) -> usize {
    ENTRY_OVERHEAD
        + runs
            .iter()
            .map(|r| r.data.len() + RANGE_OVERHEAD)
            .sum::<usize>()
}

/// Pages an entry of `stream_len` stream bytes occupies.
pub(crate) fn pages_for(stream_len: usize) -> usize {
    stream_len.div_ceil(PAGE_PAYLOAD)
}

fn crc(seq: u32, count: u8, stream: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_be_bytes());
    h.update(&[count]);
    h.update(stream);
    h.finalize()
}

/// Encodes an entry. The caller guarantees the runs fit in [`MAX_ENTRY_PAGES`], every address
/// fits in `u32` and every run in `u16`.
pub(crate) fn encode(seq: u32, runs: &[Run]) -> Encoded {
    let mut stream = Vec::with_capacity(stream_len(runs));
    stream.extend_from_slice(&(runs.len() as u16).to_be_bytes());
    for r in runs {
        stream.extend_from_slice(&(r.addr as u32).to_be_bytes());
        stream.extend_from_slice(&(r.data.len() as u16).to_be_bytes());
        stream.extend_from_slice(&r.data);
    }
    let pages = pages_for(stream.len() + 4);
    debug_assert!(pages <= MAX_ENTRY_PAGES);
    let check = crc(seq, pages as u8, &stream);
    stream.extend_from_slice(&check.to_be_bytes());

    let mut bytes = Vec::with_capacity(pages * PAGE_SIZE);
    for (index, chunk) in stream.chunks(PAGE_PAYLOAD).enumerate() {
        bytes.extend_from_slice(&[TAG, index as u8, pages as u8, ENTRY_VERSION]);
        bytes.extend_from_slice(&seq.to_be_bytes());
        bytes.extend_from_slice(chunk);
    }
    Encoded { bytes, pages }
}

/// A valid entry found in the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub seq: u32,
    pub span: Span,
    pub runs: Vec<Run>,
}

fn page_header(ring: &[u8], page: usize) -> Option<(u8, u8, u32)> {
    let h = &ring[page * PAGE_SIZE..page * PAGE_SIZE + PAGE_HEADER];
    if h[0] != TAG || h[3] != ENTRY_VERSION {
        return None;
    }
    Some((h[1], h[2], u32::from_be_bytes([h[4], h[5], h[6], h[7]])))
}

/// The `n` bytes of `stream` at `*pos`, advancing `*pos`.
fn take<'a>(stream: &'a [u8], pos: &mut usize, n: usize) -> Option<&'a [u8]> {
    let s = stream.get(*pos..*pos + n)?;
    *pos += n;
    Some(s)
}

/// Parses the entry whose first page is ring page `start`, if it is complete and intact.
/// `ring` holds the bytes of every ring page in order.
pub(crate) fn parse_at(ring: &[u8], start: usize) -> Option<Found> {
    let ring_pages = ring.len() / PAGE_SIZE;
    let (index, count, seq) = page_header(ring, start)?;
    let count = usize::from(count);
    if index != 0 || count == 0 || count > MAX_ENTRY_PAGES || count > ring_pages {
        return None;
    }
    let mut stream = Vec::with_capacity(count * PAGE_PAYLOAD);
    for i in 0..count {
        let page = (start + i) % ring_pages;
        if page_header(ring, page)? != (i as u8, count as u8, seq) {
            return None;
        }
        stream.extend_from_slice(&ring[page * PAGE_SIZE + PAGE_HEADER..(page + 1) * PAGE_SIZE]);
    }
    let mut pos = 0usize;
    let n_runs = u16::from_be_bytes(take(&stream, &mut pos, 2)?.try_into().ok()?);
    let mut runs = Vec::with_capacity(usize::from(n_runs));
    for _ in 0..n_runs {
        let addr = u32::from_be_bytes(take(&stream, &mut pos, 4)?.try_into().ok()?) as usize;
        let len = usize::from(u16::from_be_bytes(
            take(&stream, &mut pos, 2)?.try_into().ok()?,
        ));
        let data = take(&stream, &mut pos, len)?.to_vec();
        runs.push(Run { addr, data });
    }
    let body_end = pos;
    let stored = u32::from_be_bytes(take(&stream, &mut pos, 4)?.try_into().ok()?);
    // Canonical: the entry claims exactly the pages its stream needs.
    if pages_for(pos) != count || stored != crc(seq, count as u8, &stream[..body_end]) {
        return None;
    }
    Some(Found {
        seq,
        span: Span {
            start,
            pages: count,
        },
        runs,
    })
}

/// The newest (highest seq) valid entry in the ring, if any.
pub(crate) fn newest(ring: &[u8]) -> Option<Found> {
    let ring_pages = ring.len() / PAGE_SIZE;
    (0..ring_pages)
        .filter_map(|p| parse_at(ring, p))
        .max_by_key(|f| f.seq)
}

/// Where the next entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    /// A one-page empty entry to write first, when the new entry cannot avoid the pages of the
    /// last entry: the checkpoint becomes the newest entry (redo is a no-op), so the last entry
    /// may then be overwritten.
    pub checkpoint: Option<usize>,
    /// Span of the new entry.
    pub span: Span,
}

/// Finds the first window of `pages` ring-consecutive usable pages, starting the search at
/// `from`, that avoids `protected`.
fn window(
    ring: usize,
    from: usize,
    pages: usize,
    protected: Option<Span>,
    usable: &dyn Fn(usize) -> bool,
) -> Option<Span> {
    (0..ring)
        .map(|k| (from + k) % ring)
        .find(|&start| {
            (0..pages).all(|i| {
                let p = (start + i) % ring;
                usable(p) && !protected.is_some_and(|s| s.contains(p, ring))
            })
        })
        .map(|start| Span { start, pages })
}

/// Chooses pages for an entry of `pages` pages in a ring of `ring` pages. `next` is where the
/// previous entry ended (wear-levelling: entries go round the ring), `last` the newest entry,
/// which must survive until the new one is complete, `usable(p)` whether ring page `p` can take
/// one more cycle. `None` if worn pages leave no room.
pub(crate) fn place(
    ring: usize,
    next: usize,
    last: Option<Span>,
    pages: usize,
    usable: &dyn Fn(usize) -> bool,
) -> Option<Placement> {
    if pages > ring {
        return None;
    }
    if let Some(span) = window(ring, next, pages, last, usable) {
        return Some(Placement {
            checkpoint: None,
            span,
        });
    }
    let checkpoint = window(ring, next, 1, last, usable)?;
    let span = window(
        ring,
        (checkpoint.start + 1) % ring,
        pages,
        Some(checkpoint),
        usable,
    )?;
    Some(Placement {
        checkpoint: Some(checkpoint.start),
        span,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_with(pages: usize, entries: &[(Span, Encoded)]) -> Vec<u8> {
        let mut ring = vec![0xFF; pages * PAGE_SIZE];
        for (span, enc) in entries {
            for (i, b) in enc.bytes.iter().enumerate() {
                let page = (span.start + i / PAGE_SIZE) % pages;
                ring[page * PAGE_SIZE + i % PAGE_SIZE] = *b;
            }
        }
        ring
    }

    fn runs() -> Vec<Run> {
        vec![
            Run {
                addr: 5,
                data: vec![1, 2, 3],
            },
            Run {
                addr: 70_000,
                data: (0..=255).collect(),
            },
        ]
    }

    #[test]
    fn constants_fit_the_design() {
        assert_eq!(MAX_ENTRY_PAGES, 19);
        assert_eq!(MIN_JOURNAL_PAGES, 20);
        // Counts and indexes are single bytes.
        const { assert!(MAX_ENTRY_PAGES < 256) };
    }

    #[test]
    fn encode_parse_round_trip_across_the_ring_end() {
        let enc = encode(77, &runs());
        assert_eq!(enc.pages, pages_for(stream_len(&runs())));
        assert_eq!(enc.pages, 5); // 277 stream bytes in 56-byte page payloads
        let span = Span {
            start: 17,
            pages: enc.pages,
        };
        let ring = ring_with(20, &[(span, enc)]);
        let found = parse_at(&ring, 17).unwrap();
        assert_eq!(
            found,
            Found {
                seq: 77,
                span,
                runs: runs()
            }
        );
        assert_eq!(newest(&ring), Some(found));
        assert_eq!(parse_at(&ring, 18), None);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let enc = encode(3, &runs());
        for cut in 0..enc.bytes.len() {
            let mut ring = vec![0xFF; 20 * PAGE_SIZE];
            ring[..cut].copy_from_slice(&enc.bytes[..cut]);
            assert_eq!(newest(&ring), None, "cut at {cut}");
        }
    }

    #[test]
    fn newest_wins_and_stale_pages_do_not_chain() {
        let old = encode(1, &runs());
        let new = encode(2, &[]);
        let a = Span { start: 0, pages: 5 };
        let b = Span { start: 5, pages: 1 };
        let ring = ring_with(20, &[(a, old), (b, new)]);
        assert_eq!(newest(&ring).unwrap().seq, 2);
        // A newer entry written over the first page of an older one breaks the older one.
        let over = encode(3, &[]);
        let ring = ring_with(
            20,
            &[(a, encode(1, &runs())), (Span { start: 0, pages: 1 }, over)],
        );
        let f = newest(&ring).unwrap();
        assert_eq!((f.seq, f.span.start), (3, 0));
        assert_eq!(parse_at(&ring, 1), None);
    }

    #[test]
    fn placement_goes_round_and_protects_the_last_entry() {
        let all = |_: usize| true;
        let p = place(20, 18, None, 3, &all).unwrap();
        assert_eq!(
            p.span,
            Span {
                start: 18,
                pages: 3
            }
        );
        // The last entry occupies 5..15: a 10-page entry after it fits from 15 round to 4.
        let last = Some(Span {
            start: 5,
            pages: 10,
        });
        let p = place(20, 15, last, 10, &all).unwrap();
        assert_eq!(
            (p.checkpoint, p.span),
            (
                None,
                Span {
                    start: 15,
                    pages: 10
                }
            )
        );
        // An 11-page one does not: checkpoint first, then overwrite.
        let p = place(20, 15, last, 11, &all).unwrap();
        assert_eq!(p.checkpoint, Some(15));
        assert_eq!(p.span.pages, 11);
        assert!(!p.span.contains(15, 20));
        // The largest entry always fits after the largest entry.
        let last = Some(Span {
            start: 7,
            pages: MAX_ENTRY_PAGES,
        });
        assert!(place(MIN_JOURNAL_PAGES, 6, last, MAX_ENTRY_PAGES, &all).is_some());
        // Worn pages are skipped.
        let worn = |p: usize| p != 2 && p != 3;
        let p = place(20, 1, None, 2, &worn).unwrap();
        assert_eq!(p.span.start, 4);
        let none = |_: usize| false;
        assert_eq!(place(20, 0, None, 1, &none), None);
    }
}
