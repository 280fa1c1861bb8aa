//! Fuzzes the daemon's request path decoding: no panic, and every accepted segment is a plain,
//! non-empty name that cannot walk out of a directory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wstore::daemon::paths::{check_target, file_path, split_path};

fuzz_target!(|input: &[u8]| {
    let Ok(raw) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(segments) = split_path(raw) else {
        return;
    };
    for segment in &segments {
        assert!(!segment.is_empty());
        assert_ne!(segment, ".");
        assert_ne!(segment, "..");
        assert!(!segment.contains(['/', '\\', '\0']), "{segment:?}");
        if check_target(segment).is_ok() {
            assert!(!segment.contains(".."), "{segment:?}");
        }
    }
    if let Ok(path) = file_path(&segments) {
        assert!(!path.starts_with('/') && !path.split('/').any(|s| s == ".." || s.is_empty()), "{path:?}");
    }
});
