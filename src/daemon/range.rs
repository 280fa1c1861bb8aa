//! Parsing of the HTTP `Range` and `If-Range` request headers (RFC 9110, sections 14.1.2,
//! 14.2 and 13.1.5), with no I/O, so untrusted header text can be property-tested and fuzzed.

/// Maximum number of ranges served from one request. A header with more is ignored and the
/// whole file is sent, which RFC 9110 allows, so a client cannot make the server assemble
/// thousands of tiny parts.
pub const MAX_RANGES: usize = 64;

/// Maximum length of a `Range` header value that is parsed at all, in bytes.
pub const MAX_RANGE_HEADER_LEN: usize = 4096;

/// One satisfiable byte range of a representation, both ends inclusive (`end >= start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Always false: a satisfiable range contains at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Byte ranges a `Range` header requests, resolved against a representation's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeSpec {
    /// Send the whole representation with status 200: the header is malformed, uses another
    /// unit than `bytes`, lists more than `MAX_RANGES` ranges, or the representation is empty.
    Full,
    /// Send these ranges with status 206, in request order (one or more).
    Ranges(Vec<ByteRange>),
    /// Send status 416 with `Content-Range: bytes */LEN`: no range overlaps the representation.
    Unsatisfiable,
}

/// One parsed range-spec before it is resolved against the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawRange {
    /// `first-last` or `first-` (last is `None`).
    FromStart { first: u64, last: Option<u64> },
    /// `-suffix_length`.
    Suffix { length: u64 },
}

/// Parses a `Range` header value such as `bytes=0-99,-20` for a representation of `len`
/// bytes. Numbers too large for a `u64` saturate, which gives the result the RFC's unbounded
/// integers would give: a first position past the end, a last position clamped to the end.
pub fn parse_range(header: &str, len: u64) -> RangeSpec {
    if header.len() > MAX_RANGE_HEADER_LEN {
        return RangeSpec::Full;
    }
    let Some(raw) = parse_raw(header) else {
        return RangeSpec::Full;
    };
    if raw.len() > MAX_RANGES {
        return RangeSpec::Full;
    }
    // RFC 9110 makes only a suffix range satisfiable on an empty representation, and then it
    // selects zero bytes, which no Content-Range can express, so the empty body is sent whole.
    if len == 0 {
        return RangeSpec::Full;
    }
    let ranges: Vec<ByteRange> = raw.iter().filter_map(|r| resolve(*r, len)).collect();
    // Overlapping ranges can request many copies of the file. RFC 9110, section 14.2, lets a
    // server ignore such a request, so ranges totalling more bytes than the file get it once.
    let requested = ranges.iter().fold(0u64, |total, r| total.saturating_add(r.len()));
    if ranges.is_empty() {
        RangeSpec::Unsatisfiable
    } else if ranges.len() > 1 && requested > len {
        RangeSpec::Full
    } else {
        RangeSpec::Ranges(ranges)
    }
}

/// Returns whether an `If-Range` value allows a range response for a representation whose
/// strong entity tag is `etag` (with its quotes). Only an identical strong tag matches. A weak
/// tag or a date never does, because the server sends no `Last-Modified`.
pub fn if_range_matches(if_range: &str, etag: &str) -> bool {
    let value = if_range.trim_matches(|c| c == ' ' || c == '\t');
    !value.starts_with("W/") && value == etag
}

/// Splits `bytes=spec, spec` into raw ranges; `None` for anything malformed.
fn parse_raw(header: &str) -> Option<Vec<RawRange>> {
    let header = header.trim_matches(|c| c == ' ' || c == '\t');
    let (unit, set) = header.split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut out = Vec::new();
    // The list syntax allows empty elements (`0-1,,2-3`); they are skipped, but at least one
    // range must remain.
    for element in set.split(',') {
        let element = element.trim_matches(|c| c == ' ' || c == '\t');
        if element.is_empty() {
            continue;
        }
        out.push(parse_spec(element)?);
        if out.len() > MAX_RANGES {
            break;
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

fn parse_spec(spec: &str) -> Option<RawRange> {
    let (first, last) = spec.split_once('-')?;
    if first.is_empty() {
        return Some(RawRange::Suffix { length: parse_digits(last)? });
    }
    let first = parse_digits(first)?;
    if last.is_empty() {
        return Some(RawRange::FromStart { first, last: None });
    }
    let last = parse_digits(last)?;
    // A last position before the first makes the whole header invalid (RFC 9110 14.1.1).
    if last < first {
        return None;
    }
    Some(RawRange::FromStart { first, last: Some(last) })
}

/// Parses one or more ASCII digits, saturating at `u64::MAX`.
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut value: u64 = 0;
    for digit in text.bytes() {
        value = value.saturating_mul(10).saturating_add(u64::from(digit - b'0'));
    }
    Some(value)
}

/// Resolves a raw range against `len > 0`; `None` when it selects no byte.
fn resolve(raw: RawRange, len: u64) -> Option<ByteRange> {
    let last_byte = len - 1;
    match raw {
        RawRange::FromStart { first, last } => {
            if first > last_byte {
                return None;
            }
            let end = last.map_or(last_byte, |last| last.min(last_byte));
            Some(ByteRange { start: first, end })
        }
        RawRange::Suffix { length } => {
            if length == 0 {
                return None;
            }
            Some(ByteRange { start: len - length.min(len), end: last_byte })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_ranges_give_full_file() {
        let header = format!("bytes={}", ["0-999"; 3].join(","));
        assert_eq!(parse_range(&header, 1000), RangeSpec::Full);
        // Overlap within the file's size is served as asked.
        assert_eq!(
            parse_range("bytes=0-9,5-14", 1000),
            RangeSpec::Ranges(vec![ByteRange { start: 0, end: 9 }, ByteRange { start: 5, end: 14 }])
        );
        // One range is never more than the file.
        assert_eq!(parse_range("bytes=0-", 1000), RangeSpec::Ranges(vec![ByteRange { start: 0, end: 999 }]));
    }
    use proptest::prelude::*;

    fn ranges(list: &[(u64, u64)]) -> RangeSpec {
        RangeSpec::Ranges(list.iter().map(|&(start, end)| ByteRange { start, end }).collect())
    }

    #[test]
    fn closed_range() {
        assert_eq!(parse_range("bytes=0-99", 1000), ranges(&[(0, 99)]));
        assert_eq!(parse_range("bytes=10-10", 1000), ranges(&[(10, 10)]));
    }

    #[test]
    fn closed_range_clamped_to_end() {
        assert_eq!(parse_range("bytes=900-5000", 1000), ranges(&[(900, 999)]));
    }

    #[test]
    fn open_range() {
        assert_eq!(parse_range("bytes=990-", 1000), ranges(&[(990, 999)]));
        assert_eq!(parse_range("bytes=0-", 1), ranges(&[(0, 0)]));
    }

    #[test]
    fn suffix_range() {
        assert_eq!(parse_range("bytes=-10", 1000), ranges(&[(990, 999)]));
        assert_eq!(parse_range("bytes=-5000", 1000), ranges(&[(0, 999)]));
    }

    #[test]
    fn multiple_ranges_keep_request_order() {
        assert_eq!(parse_range("bytes=500-599,0-9,-1", 1000), ranges(&[(500, 599), (0, 9), (999, 999)]));
    }

    #[test]
    fn unsatisfiable_ranges_are_dropped() {
        assert_eq!(parse_range("bytes=0-9,2000-3000", 1000), ranges(&[(0, 9)]));
    }

    #[test]
    fn all_unsatisfiable_gives_416() {
        assert_eq!(parse_range("bytes=1000-", 1000), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=1000-1001", 1000), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=5000-,-0", 1000), RangeSpec::Unsatisfiable);
    }

    #[test]
    fn empty_representation_is_sent_whole() {
        assert_eq!(parse_range("bytes=0-0", 0), RangeSpec::Full);
        assert_eq!(parse_range("bytes=-1", 0), RangeSpec::Full);
    }

    #[test]
    fn whitespace_around_elements() {
        assert_eq!(parse_range(" bytes=0-1 ,\t 5-6 ", 10), ranges(&[(0, 1), (5, 6)]));
        assert_eq!(parse_range("bytes=0-1,,5-6,", 10), ranges(&[(0, 1), (5, 6)]));
    }

    #[test]
    fn unit_is_case_insensitive() {
        assert_eq!(parse_range("Bytes=0-1", 10), ranges(&[(0, 1)]));
        assert_eq!(parse_range("BYTES=0-1", 10), ranges(&[(0, 1)]));
    }

    #[test]
    fn malformed_headers_give_full() {
        for header in [
            "", "bytes", "bytes=", "bytes=,", "bytes=-", "bytes=a-b", "bytes=5-4", "bytes=0-1,5-4", "items=0-1",
            "bytes=0--1", "bytes=--1", "bytes=+1-2", "bytes=0-1-2", "bytes= 0 - 1", "bytes=0x10-20", "bytes=١-٢",
            "bytes=1.5-2", "=0-1",
        ] {
            assert_eq!(parse_range(header, 1000), RangeSpec::Full, "{header:?}");
        }
    }

    #[test]
    fn huge_numbers_saturate() {
        let huge = "99999999999999999999999999999";
        assert_eq!(parse_range(&format!("bytes={huge}-"), 1000), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(&format!("bytes=0-{huge}"), 1000), ranges(&[(0, 999)]));
        assert_eq!(parse_range(&format!("bytes=-{huge}"), 1000), ranges(&[(0, 999)]));
        assert_eq!(parse_range(&format!("bytes={}-{}", u64::MAX, u64::MAX), u64::MAX), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", u64::MAX), ranges(&[(u64::MAX - 1, u64::MAX - 1)]));
    }

    #[test]
    fn too_many_ranges_give_full() {
        let at_limit = vec!["0-0"; MAX_RANGES].join(",");
        assert_eq!(parse_range(&format!("bytes={at_limit}"), 100), RangeSpec::Ranges(vec![ByteRange { start: 0, end: 0 }; MAX_RANGES]));
        let over = vec!["0-0"; MAX_RANGES + 1].join(",");
        assert_eq!(parse_range(&format!("bytes={over}"), 100), RangeSpec::Full);
    }

    #[test]
    fn oversized_header_gives_full() {
        let long = format!("bytes=0-1{}", " ".repeat(MAX_RANGE_HEADER_LEN));
        assert_eq!(parse_range(&long, 10), RangeSpec::Full);
    }

    #[test]
    fn if_range_needs_identical_strong_tag() {
        assert!(if_range_matches("\"abc\"", "\"abc\""));
        assert!(if_range_matches(" \"abc\" ", "\"abc\""));
        assert!(!if_range_matches("W/\"abc\"", "\"abc\""));
        assert!(!if_range_matches("\"abd\"", "\"abc\""));
        assert!(!if_range_matches("abc", "\"abc\""));
        assert!(!if_range_matches("Fri, 04 Dec 2026 23:00:00 GMT", "\"abc\""));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(header in ".{0,200}", len in any::<u64>()) {
            let _ = parse_range(&header, len);
        }

        #[test]
        fn resolved_ranges_stay_inside(header in "bytes=[0-9,\\- ]{0,60}", len in 0u64..5000) {
            if let RangeSpec::Ranges(list) = parse_range(&header, len) {
                prop_assert!(!list.is_empty());
                prop_assert!(list.len() <= MAX_RANGES);
                for range in list {
                    prop_assert!(range.start <= range.end);
                    prop_assert!(range.end < len);
                }
            }
        }

        #[test]
        fn closed_range_round_trips(len in 1u64..1_000_000, a in any::<u64>(), b in any::<u64>()) {
            let (start, end) = (a % len, b % len);
            let (start, end) = (start.min(end), start.max(end));
            prop_assert_eq!(parse_range(&format!("bytes={start}-{end}"), len), ranges(&[(start, end)]));
        }

        #[test]
        fn suffix_covers_tail(len in 1u64..1_000_000, n in 1u64..2_000_000) {
            let expected = ByteRange { start: len.saturating_sub(n), end: len - 1 };
            prop_assert_eq!(parse_range(&format!("bytes=-{n}"), len), RangeSpec::Ranges(vec![expected]));
        }
    }
}
