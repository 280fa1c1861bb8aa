//! Errors as HTTP responses: a status code and the JSON body
//! `{"error": {"kind": "...", "message": "..."}}`.

use hyper::StatusCode;

use crate::catalog::CatalogError;
use crate::error::Error;
use crate::storage::StorageError;

/// An error response. `kind` is a stable snake_case word clients can match on; `message` is
/// the same text the CLI prints.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// Methods the path accepts, sent as `Allow` with a 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, kind, message: message.into(), allow: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Serialises the JSON body.
    pub fn body(&self) -> String {
        let value = serde_json::json!({ "error": { "kind": self.kind, "message": self.message } });
        format!("{value}\n")
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        let (status, kind) = match &error {
            Error::Catalog(CatalogError::NotFound { .. }) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Catalog(CatalogError::Ambiguous { .. }) => (StatusCode::BAD_REQUEST, "ambiguous"),
            Error::Catalog(CatalogError::RefExists { .. }) => (StatusCode::CONFLICT, "ref_exists"),
            Error::NameTaken { .. } => (StatusCode::CONFLICT, "name_taken"),
            Error::InputChanged { .. } => (StatusCode::CONFLICT, "input_changed"),
            Error::InvalidSafetensors { .. }
            | Error::InvalidIndex { .. }
            | Error::UnsafePath { .. }
            | Error::EmptyInput { .. }
            | Error::NoSharedTensors { .. }
            | Error::InvalidName { .. }
            | Error::InvalidPrefixMap { .. }
            | Error::InvalidArgument { .. }
            | Error::OutputExists { .. } => (StatusCode::BAD_REQUEST, "invalid_input"),
            Error::OverBudget { .. } => (StatusCode::BAD_REQUEST, "over_budget"),
            Error::InvalidObjectFile { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_object"),
            Error::InvalidBundle { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_bundle"),
            Error::ObjectsMissing { .. } => (StatusCode::CONFLICT, "objects_missing"),
            Error::BaseNameConflict { .. } => (StatusCode::CONFLICT, "base_name_conflict"),
            Error::NonFastForward { .. } => (StatusCode::CONFLICT, "non_fast_forward"),
            // The write API reads paths the client names; a missing or unreadable one is the
            // client's input, not a server fault.
            Error::Io { source, .. }
                if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied) =>
            {
                (StatusCode::BAD_REQUEST, "invalid_input")
            }
            // The object store (S3) failed or did not respond. The store itself may be intact.
            Error::Storage(StorageError::Remote { .. }) => (StatusCode::BAD_GATEWAY, "storage_unavailable"),
            Error::CorruptObject { .. } | Error::VerificationFailed { .. } | Error::Catalog(CatalogError::Corrupt { .. }) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "corrupt")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError { status, kind, message, allow: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_status_codes() {
        let not_found: ApiError = Error::Catalog(CatalogError::NotFound { kind: "ref", text: "x".into() }).into();
        assert_eq!((not_found.status, not_found.kind), (StatusCode::NOT_FOUND, "not_found"));
        let taken: ApiError = Error::NameTaken { name: "x".into(), taken_by: "a ref" }.into();
        assert_eq!((taken.status, taken.kind), (StatusCode::CONFLICT, "name_taken"));
        let invalid: ApiError = Error::InvalidName { kind: "ref", name: "-x".into(), reason: "r".into() }.into();
        assert_eq!((invalid.status, invalid.kind), (StatusCode::BAD_REQUEST, "invalid_input"));
        let remote = StorageError::Remote { op: "read object", key: "s3://b/k".into(), detail: "refused".into(), hint: "h".into() };
        let unavailable: ApiError = Error::Storage(remote).into();
        assert_eq!((unavailable.status, unavailable.kind), (StatusCode::BAD_GATEWAY, "storage_unavailable"));
        assert!(unavailable.message.contains("s3://b/k"), "{}", unavailable.message);
    }

    #[test]
    fn body_is_the_error_object() {
        let body = ApiError::not_found("ref \"x\" not found").body();
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["error"]["kind"], "not_found");
        assert_eq!(value["error"]["message"], "ref \"x\" not found");
    }
}
