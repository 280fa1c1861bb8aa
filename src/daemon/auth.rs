//! Bearer-token authentication (RFC 6750 header form) for every request when a token is set.

use std::path::Path;

use crate::error::Error;

/// Environment variable that contains the daemon's bearer token when no `--token-file` is given.
pub const TOKEN_ENV: &str = "WSTORE_TOKEN";

/// A configured bearer token. Only its BLAKE3 digest is kept, and `blake3::Hash` compares in
/// constant time, so neither the token's bytes nor its length leak through response timing.
#[derive(Clone)]
pub struct BearerToken {
    digest: blake3::Hash,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// Builds a token from its text; surrounding whitespace (a trailing newline) is dropped.
    pub fn new(text: &str) -> Result<Self, Error> {
        let token = text.trim();
        if token.is_empty() {
            return Err(Error::InvalidArgument { what: "bearer token".into(), detail: "is empty; put a non-empty token in the file or variable".into() });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidArgument {
                what: "bearer token".into(),
                detail: "contains spaces or non-ASCII characters, which an Authorization header cannot carry".into(),
            });
        }
        Ok(BearerToken { digest: blake3::hash(token.as_bytes()) })
    }

    /// Reads the token from `file` if given, else from `$WSTORE_TOKEN`; `None` when neither is set.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Option<Self>, Error> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io("read token file", path, e))?;
            return Self::new(&text).map(Some);
        }
        match std::env::var(TOKEN_ENV) {
            Ok(text) if !text.is_empty() => Self::new(&text).map(Some),
            _ => Ok(None),
        }
    }

    /// Returns whether an `Authorization` header value carries this token.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Ok(value) = std::str::from_utf8(value) else {
            return false;
        };
        let Some((scheme, credentials)) = value.trim().split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer") && blake3::hash(credentials.trim().as_bytes()) == self.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_accepts_only_its_header() {
        let token = BearerToken::new("s3cret-token\n").unwrap();
        assert!(token.accepts(Some(b"Bearer s3cret-token")));
        assert!(token.accepts(Some(b"bearer s3cret-token")));
        assert!(!token.accepts(Some(b"Bearer s3cret-toke")));
        assert!(!token.accepts(Some(b"Basic s3cret-token")));
        assert!(!token.accepts(Some(b"s3cret-token")));
        assert!(!token.accepts(Some(&[0xff, 0xfe])));
        assert!(!token.accepts(None));
    }

    #[test]
    fn empty_token_is_rejected() {
        assert!(matches!(BearerToken::new(" \n"), Err(Error::InvalidArgument { .. })));
        assert!(matches!(BearerToken::new("a b"), Err(Error::InvalidArgument { .. })));
    }
}
