//! Fuzzes the HTTP Range header parser: no panic, and every range it returns lies inside the
//! representation, has `start <= end`, and there are at most `MAX_RANGES` of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wstore::daemon::range::{parse_range, RangeSpec, MAX_RANGES};

fuzz_target!(|input: &[u8]| {
    // The first 8 bytes pick the representation's length, the rest is the header text.
    let (len, header) = match input.split_first_chunk::<8>() {
        Some((len, rest)) => (u64::from_le_bytes(*len) >> (len[0] % 64), rest),
        None => (1000, input),
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    if let RangeSpec::Ranges(ranges) = parse_range(header, len) {
        assert!(!ranges.is_empty());
        assert!(ranges.len() <= MAX_RANGES);
        for range in ranges {
            assert!(range.start <= range.end, "{range:?}");
            assert!(range.end < len, "{range:?} for length {len}");
            assert_eq!(range.len(), range.end - range.start + 1);
        }
    }
});
