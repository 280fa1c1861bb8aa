//! Typed content ids: one BLAKE3 digest, printed as the lowercase hex that `b3sum` prints.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Number of hex digits shown in human-facing tables (64 bits, enough to stay unique in a store).
pub const SHORT_HEX_LEN: usize = 12;

/// BLAKE3 digest of an object's logical (uncompressed) content, or of a canonical record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 32]);

impl ObjectId {
    /// Hashes `bytes` with BLAKE3.
    pub fn of(bytes: &[u8]) -> Self {
        ObjectId(*blake3::hash(bytes).as_bytes())
    }

    /// Hashes `bytes` with BLAKE3 on all rayon threads; worth it above about 1 MiB.
    pub fn of_large(bytes: &[u8]) -> Self {
        let mut hasher = blake3::Hasher::new();
        if bytes.len() >= 1 << 20 {
            hasher.update_rayon(bytes);
        } else {
            hasher.update(bytes);
        }
        ObjectId(*hasher.finalize().as_bytes())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ObjectId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Returns the first `SHORT_HEX_LEN` hex digits, for tables and messages.
    pub fn short(&self) -> String {
        self.to_hex()[..SHORT_HEX_LEN].to_string()
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.short())
    }
}

/// Error for text that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid id {text:?}: expected 64 hexadecimal digits")]
pub struct ParseIdError {
    pub text: String,
}

impl FromStr for ObjectId {
    type Err = ParseIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        blake3::Hash::from_hex(text)
            .map(|hash| ObjectId(*hash.as_bytes()))
            .map_err(|_| ParseIdError { text: text.to_string() })
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_matches_b3sum_of_empty_input() {
        // `b3sum` of zero bytes.
        let expected = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
        assert_eq!(ObjectId::of(b"").to_hex(), expected);
        assert_eq!(expected.parse::<ObjectId>().unwrap(), ObjectId::of(b""));
    }

    #[test]
    fn parallel_hash_equals_serial_hash() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(ObjectId::of_large(&data), ObjectId::of(&data));
    }

    #[test]
    fn parse_rejects_short_text() {
        assert!("abc".parse::<ObjectId>().is_err());
    }
}
