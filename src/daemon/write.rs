//! The write API: register a base and commit a fine-tune, from a path the daemon reads or from
//! an upload, with the same options, validation and errors as `base add` and `commit`.

use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::routes::{blocking, json_response, ResponseBody, MAX_JSON_BODY};
use super::upload::TakenUpload;
use super::Shared;
use crate::cli::CodecArgs;
use crate::progress::NoProgress;
use crate::store::CommitOptions;

/// Body of `POST /v1/bases`: a name and exactly one of `path` and `upload`. The client sends
/// this type too, so both sides share one wire format.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBaseRequest {
    pub name: String,
    /// Absolute path of a checkpoint on the daemon's machine.
    pub path: Option<PathBuf>,
    /// Id returned by `PUT /v1/uploads/{file_name}`.
    pub upload: Option<String>,
}

/// Body of `POST /v1/commits`: the fields of `wstore commit`'s flags, with the same defaults,
/// and exactly one of `path` and `upload`. The client sends this type too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitRequest {
    pub path: Option<PathBuf>,
    pub upload: Option<String>,
    pub base: String,
    pub name: Option<String>,
    #[serde(default)]
    pub message: String,
    pub parent: Option<String>,
    pub author: Option<String>,
    pub map_prefix: Option<String>,
    #[serde(default)]
    pub no_align: bool,
    #[serde(flatten)]
    pub codec: CodecArgs,
}

/// Fields `CommitRequest` takes besides the codec options.
const COMMIT_FIELDS: [&str; 9] = ["path", "upload", "base", "name", "message", "parent", "author", "map_prefix", "no_align"];

/// The input of a write: a path, or an upload whose file is deleted when this is dropped.
enum Input {
    Path(PathBuf),
    Upload(TakenUpload),
}

impl Input {
    fn choose(shared: &Shared, path: Option<PathBuf>, upload: Option<String>) -> Result<Input, ApiError> {
        match (path, upload) {
            (Some(path), None) if path.is_absolute() => Ok(Input::Path(path)),
            (Some(path), None) => Err(ApiError::bad_request(format!(
                "path {} is relative; the daemon does not share the client's working directory, so give an absolute path",
                path.display()
            ))),
            (None, Some(id)) => Ok(Input::Upload(shared.uploads.take(&id)?)),
            _ => Err(ApiError::bad_request("give exactly one of \"path\" and \"upload\"")),
        }
    }

    fn path(&self) -> &std::path::Path {
        match self {
            Input::Path(path) => path,
            Input::Upload(upload) => upload.path(),
        }
    }
}

pub async fn add_base(shared: &Arc<Shared>, request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let body: AddBaseRequest = parse_json(read_json_body(request).await?)?;
    let input = Input::choose(shared, body.path, body.upload)?;
    let name = body.name;
    let report = blocking(shared, move |store| Ok(store.add_base(&name, input.path(), &NoProgress)?)).await?;
    let status = if report.already_present { StatusCode::OK } else { StatusCode::CREATED };
    Ok(json_response(status, &report))
}

pub async fn commit(shared: &Arc<Shared>, request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let value = read_json_body(request).await?;
    reject_unknown_commit_fields(&value)?;
    let body: CommitRequest = parse_json(value)?;
    let codec = body.codec.to_choice()?;
    let input = Input::choose(shared, body.path, body.upload)?;
    let options = CommitOptions {
        base: body.base,
        name: body.name,
        message: body.message,
        parent: body.parent,
        author: body.author,
        map_prefix: body.map_prefix,
        no_align: body.no_align,
        codec,
    };
    let report = blocking(shared, move |store| Ok(store.commit(input.path(), &options, &NoProgress)?)).await?;
    Ok(json_response(StatusCode::CREATED, &report))
}

pub async fn upload(shared: &Arc<Shared>, request: Request<Incoming>, file_name: &str) -> Result<Response<ResponseBody>, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .map(|value| value.to_str().ok().and_then(|text| text.parse::<u64>().ok()))
        .map(|len| len.ok_or_else(|| ApiError::bad_request("Content-Length is not a number")))
        .transpose()?;
    let report = shared.uploads.receive(file_name, declared, request.into_body()).await?;
    Ok(json_response(StatusCode::CREATED, &report))
}

/// Reads a JSON body of at most `MAX_JSON_BODY` bytes.
async fn read_json_body(request: Request<Incoming>) -> Result<serde_json::Value, ApiError> {
    read_json_body_limited(request, MAX_JSON_BODY).await
}

/// Reads a JSON body of at most `limit` bytes.
pub(super) async fn read_json_body_limited(request: Request<Incoming>, limit: usize) -> Result<serde_json::Value, ApiError> {
    let collected = Limited::new(request.into_body(), limit).collect().await.map_err(|error| {
        if error.downcast_ref::<LengthLimitError>().is_some() {
            ApiError::too_large(format!("JSON body is larger than the limit of {limit} bytes"))
        } else {
            ApiError::bad_request(format!("failed to read the request body: {error}"))
        }
    })?;
    serde_json::from_slice(&collected.to_bytes()).map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
}

pub(super) fn parse_json<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

/// Rejects fields neither `CommitRequest` nor the codec options know, so a misspelt option
/// fails instead of silently taking its default. (`deny_unknown_fields` does not work with
/// the flattened codec options.)
fn reject_unknown_commit_fields(value: &serde_json::Value) -> Result<(), ApiError> {
    let Some(object) = value.as_object() else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    let codec_fields = serde_json::to_value(CodecArgs::default()).unwrap_or_default();
    for key in object.keys() {
        let known = COMMIT_FIELDS.contains(&key.as_str()) || codec_fields.get(key).is_some();
        if !known {
            return Err(ApiError::bad_request(format!("unknown field {key:?} in the commit request; see docs/openapi.yaml")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_request_takes_cli_defaults() {
        let body: CommitRequest = parse_json(serde_json::json!({"path": "/x", "base": "b"})).unwrap();
        assert_eq!(body.codec.codec, "ultradelta");
        assert_eq!(body.codec.max_error, crate::codec::ultradelta::DEFAULT_MAX_ERROR);
        assert_eq!(body.message, "");
        assert!(!body.no_align);
    }

    #[test]
    fn unknown_commit_fields_are_rejected() {
        assert!(reject_unknown_commit_fields(&serde_json::json!({"path": "/x", "base": "b", "max_error": 0.01, "lossy_include": ["a*"]})).is_ok());
        let error = reject_unknown_commit_fields(&serde_json::json!({"path": "/x", "base": "b", "max_eror": 0.01})).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(error.message.contains("max_eror"), "{}", error.message);
    }
}
