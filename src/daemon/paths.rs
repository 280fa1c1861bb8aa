//! Decoding and validation of request paths, with no I/O: percent-decoding of each segment and
//! the checks that keep targets and file names from naming anything outside the store's records.

/// Maximum length of a request path, before decoding, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Maximum length of one decoded path segment, in bytes (the usual file-name limit).
pub const MAX_SEGMENT_LEN: usize = 255;

/// Maximum length of a target (ref, name or id prefix), in bytes: a full hex id is 64.
pub const MAX_TARGET_LEN: usize = 128;

/// Reason a request path was rejected, sent to the client as the error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError(pub String);

/// Splits a raw request path (`/v1/checkout/a%20b/x`) into decoded segments. The path must
/// start with `/`. Empty segments (`//`, a trailing `/`) are rejected. So are segments that
/// decode to `.` or `..`, contain `/`, `\` or NUL, or are not UTF-8.
pub fn split_path(raw: &str) -> Result<Vec<String>, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError(format!("request path is {} bytes, more than the limit of {MAX_PATH_LEN}", raw.len())));
    }
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError("request path must start with '/'".into()));
    };
    rest.split('/').map(decode_segment).collect()
}

fn decode_segment(raw: &str) -> Result<String, PathError> {
    let bytes = percent_decode(raw).ok_or_else(|| PathError(format!("path segment {raw:?} has an invalid percent escape")))?;
    let text = String::from_utf8(bytes).map_err(|_| PathError(format!("path segment {raw:?} is not UTF-8")))?;
    if text.is_empty() {
        return Err(PathError("request path has an empty segment".into()));
    }
    if text.len() > MAX_SEGMENT_LEN {
        return Err(PathError(format!("path segment of {} bytes is longer than the limit of {MAX_SEGMENT_LEN}", text.len())));
    }
    if text == "." || text == ".." {
        return Err(PathError(format!("path segment {text:?} is not allowed")));
    }
    if text.contains(['/', '\\', '\0']) {
        return Err(PathError(format!("path segment {raw:?} decodes to a '/', '\\\\' or NUL character")));
    }
    Ok(text)
}

/// Encodes every byte but the unreserved characters of RFC 3986 (letters, digits, `-._~`) as
/// `%XX`, so the text is safe as a path segment or a query value.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` for a `%` not followed by two hex digits.
pub fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let high = hex_value(*bytes.get(i + 1)?)?;
            let low = hex_value(*bytes.get(i + 2)?)?;
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Checks a target: a ref or base name, or a hex id prefix. Names are validated more strictly
/// when they are created; this only keeps lookups to the characters names and ids can have.
pub fn check_target(target: &str) -> Result<(), PathError> {
    if target.is_empty() || target.len() > MAX_TARGET_LEN {
        return Err(PathError(format!("target must be 1 to {MAX_TARGET_LEN} characters")));
    }
    if !target.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(PathError(format!("target {target:?} may contain only letters, digits, '.', '_' and '-'")));
    }
    if target.contains("..") {
        return Err(PathError(format!("target {target:?} must not contain '..'")));
    }
    Ok(())
}

/// Joins the decoded segments of a stored file path (`sub/dir/model.safetensors`).
pub fn file_path(segments: &[String]) -> Result<String, PathError> {
    if segments.is_empty() {
        return Err(PathError("file path is empty".into()));
    }
    let joined = segments.join("/");
    if joined.len() > MAX_PATH_LEN {
        return Err(PathError(format!("file path is longer than the limit of {MAX_PATH_LEN} bytes")));
    }
    Ok(joined)
}

/// Checks the file name of an upload: one segment ending in `.safetensors`, made of
/// characters that are safe in a file name on every platform.
pub fn check_upload_name(name: &str) -> Result<(), PathError> {
    if !name.ends_with(".safetensors") || name.len() <= ".safetensors".len() {
        return Err(PathError(format!("upload name {name:?} must be a file name ending in .safetensors")));
    }
    if name.starts_with('.') || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(PathError(format!("upload name {name:?} may contain only letters, digits, '.', '_' and '-', and must not start with '.'")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn segments_are_decoded() {
        assert_eq!(split_path("/v1/checkout/task-a/model.safetensors").unwrap(), ["v1", "checkout", "task-a", "model.safetensors"]);
        assert_eq!(split_path("/v1/checkout/a%2Db/x%20y").unwrap(), ["v1", "checkout", "a-b", "x y"]);
    }

    #[test]
    fn traversal_is_rejected() {
        for raw in [
            "/v1/checkout/t/..", "/v1/checkout/t/%2e%2e", "/v1/checkout/t/%2E%2E/x", "/v1/checkout/t/.", "/v1/checkout/t/a%2Fb",
            "/v1/checkout/t/a%5Cb", "/v1/checkout/t/a%00b", "/v1/checkout//x", "/v1/checkout/t/", "v1/x", "/v1/%zz", "/v1/%2",
            "/v1/%ff%fe",
        ] {
            assert!(split_path(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn long_paths_are_rejected() {
        assert!(split_path(&format!("/{}", "a".repeat(MAX_SEGMENT_LEN))).is_ok());
        assert!(split_path(&format!("/{}", "a".repeat(MAX_SEGMENT_LEN + 1))).is_err());
        assert!(split_path(&"/a".repeat(MAX_PATH_LEN)).is_err());
    }

    #[test]
    fn targets_are_checked() {
        for good in ["task-a", "d98e", "llama2-7b", "a.b_c"] {
            assert!(check_target(good).is_ok(), "{good}");
        }
        for bad in ["", "a..b", "a b", "a/b", "é", &"x".repeat(MAX_TARGET_LEN + 1)] {
            assert!(check_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upload_names_are_checked() {
        assert!(check_upload_name("model.safetensors").is_ok());
        for bad in [".safetensors", "model.bin", ".hidden.safetensors", "a b.safetensors", "a/b.safetensors"] {
            assert!(check_upload_name(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_paths_never_panic(raw in "/[a-z%0-9A-F./\\\\]{0,80}") {
            if let Ok(segments) = split_path(&raw) {
                for segment in segments {
                    prop_assert!(segment != ".." && segment != ".");
                    prop_assert!(!segment.contains('/'));
                }
            }
        }
    }
}
