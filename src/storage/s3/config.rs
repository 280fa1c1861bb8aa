//! Where an S3 store's objects live and how to reach them.
//!
//! The bucket and prefix come from the store's `objects` URL (`s3://bucket/prefix`). Endpoint,
//! region and credentials come from the AWS environment variables, or from a `KEY=VALUE` file
//! named by `WSTORE_S3_CONFIG`; a variable set in the environment wins over the file.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::super::StorageError;

/// Environment variable naming a `KEY=VALUE` file with the settings below.
pub const CONFIG_FILE_VAR: &str = "WSTORE_S3_CONFIG";

const ACCESS_KEY_VAR: &str = "AWS_ACCESS_KEY_ID";
const SECRET_KEY_VAR: &str = "AWS_SECRET_ACCESS_KEY";
const REGION_VARS: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];
const ENDPOINT_VAR: &str = "AWS_ENDPOINT_URL";
const ALLOW_HTTP_VAR: &str = "AWS_ALLOW_HTTP";

/// Region used when none is set; S3-compatible servers usually accept any region.
const DEFAULT_REGION: &str = "us-east-1";

/// Bucket and key prefix parsed from `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket` or `s3://bucket/prefix/parts`.
    pub fn parse(url: &str) -> Result<S3Location, StorageError> {
        let invalid = |reason: &str| StorageError::Config {
            detail: format!("invalid objects URL {url:?}: {reason}; write it as s3://BUCKET/PREFIX"),
        };
        let rest = url.strip_prefix("s3://").ok_or_else(|| invalid("it must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            return Err(invalid("the bucket name must be 3 to 63 lowercase letters, digits, '-' or '.'"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part.is_empty() && !prefix.is_empty() || part == "." || part == "..") {
            return Err(invalid("the prefix must not contain empty, '.' or '..' parts"));
        }
        Ok(S3Location { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }

    /// The key of `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Endpoint, region and credentials. `Debug` never shows the secret key.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    /// `None` means AWS itself.
    pub endpoint: Option<String>,
    /// Allows a plain-http endpoint, such as a local test server.
    pub allow_http: bool,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl S3Credentials {
    /// Reads the settings from the process environment and the `WSTORE_S3_CONFIG` file.
    pub fn from_env() -> Result<S3Credentials, StorageError> {
        let file = match std::env::var_os(CONFIG_FILE_VAR) {
            Some(path) => read_config_file(Path::new(&path))?,
            None => HashMap::new(),
        };
        Self::resolve(|name| std::env::var(name).ok().filter(|v| !v.is_empty()).or_else(|| file.get(name).cloned()))
    }

    /// Builds the settings from a lookup of variable names.
    fn resolve(lookup: impl Fn(&str) -> Option<String>) -> Result<S3Credentials, StorageError> {
        let required = |name: &str| {
            lookup(name).ok_or_else(|| StorageError::Config {
                detail: format!(
                    "{name} is not set: export it, or put {name}=... in the file named by {CONFIG_FILE_VAR}"
                ),
            })
        };
        let access_key_id = required(ACCESS_KEY_VAR)?;
        let secret_access_key = required(SECRET_KEY_VAR)?;
        let region = REGION_VARS.iter().find_map(|name| lookup(name)).unwrap_or_else(|| DEFAULT_REGION.to_string());
        let allow_http = lookup(ALLOW_HTTP_VAR).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
        Ok(S3Credentials { access_key_id, secret_access_key, region, endpoint: lookup(ENDPOINT_VAR), allow_http })
    }
}

/// Reads `KEY=VALUE` lines; blank lines and lines starting with `#` are skipped.
fn read_config_file(path: &Path) -> Result<HashMap<String, String>, StorageError> {
    let text = std::fs::read_to_string(path).map_err(|source| StorageError::from_io("read S3 config file", path, source))?;
    let mut values = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(StorageError::Config {
                detail: format!("{} line {}: expected KEY=VALUE; fix or remove the line", path.display(), number + 1),
            });
        };
        values.insert(key.trim().to_string(), value.trim().trim_matches('"').to_string());
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_bucket_and_prefix() {
        let location = S3Location::parse("s3://weights/team/a/").unwrap();
        assert_eq!(location, S3Location { bucket: "weights".into(), prefix: "team/a".into() });
        assert_eq!(location.key("objects/ab"), "team/a/objects/ab");
        assert_eq!(S3Location::parse("s3://weights").unwrap().key("gc/x"), "gc/x");
        for bad in ["weights", "s3://", "s3://A_b", "s3://ok-bucket/a//b", "s3://ok-bucket/../x"] {
            assert!(matches!(S3Location::parse(bad), Err(StorageError::Config { .. })), "{bad}");
        }
    }

    #[test]
    fn missing_secret_names_the_variable_and_debug_redacts() {
        let only_key = |name: &str| (name == ACCESS_KEY_VAR).then(|| "AKIA".to_string());
        let error = S3Credentials::resolve(only_key).unwrap_err();
        assert_eq!(
            error.to_string(),
            "AWS_SECRET_ACCESS_KEY is not set: export it, or put AWS_SECRET_ACCESS_KEY=... in the file named by WSTORE_S3_CONFIG"
        );
        let all = |name: &str| match name {
            ACCESS_KEY_VAR => Some("AKIA".to_string()),
            SECRET_KEY_VAR => Some("very-secret".to_string()),
            "AWS_DEFAULT_REGION" => Some("garage".to_string()),
            _ => None,
        };
        let credentials = S3Credentials::resolve(all).unwrap();
        assert_eq!(credentials.region, "garage");
        assert!(!format!("{credentials:?}").contains("very-secret"));
    }
}
