//! The routes `push` and `pull` use: the bundle of a ref, which objects are missing, one object
//! file read or written as stored, and the import of a bundle. The request and response types
//! are shared with the client, so both sides use one wire format.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::routes::{blocking, bytes_response, json_response, ResponseBody, MAX_JSON_BODY};
use super::write::{parse_json, read_json_body_limited};
use super::Shared;
use crate::error::Error;
use crate::id::ObjectId;
use crate::store::Bundle;

/// Cap on one object file sent or received, in bytes. An object contains at most one tensor:
/// the embedding table of Llama 3.1 405B (128256 x 16384 bf16) is 3.9 GiB, so this leaves
/// twice that.
// NOTE: the daemon keeps the whole body in memory while it checks the hash, so one PUT near
// this cap needs that much RAM.
pub const MAX_OBJECT_FILE: u64 = 8 << 30;

/// Cap on the body of `POST /v1/bundles`, in bytes: the same as the client's cap on a JSON
/// response, so any bundle a daemon serves can be imported by another.
pub const MAX_BUNDLE_BODY: usize = crate::client::MAX_JSON_RESPONSE as usize;

/// Body of `POST /v1/objects/missing`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingRequest {
    pub ids: Vec<ObjectId>,
}

/// Response of `POST /v1/objects/missing`: the requested ids the store lacks, in request order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingResponse {
    pub missing: Vec<ObjectId>,
}

/// Response of `PUT /v1/objects/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutObjectResponse {
    pub id: ObjectId,
    /// False when the store already had the object.
    pub created: bool,
}

/// Body of `POST /v1/bundles`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub bundle: Bundle,
    /// Move the ref even when the bundle's commit does not descend from the ref's commit.
    #[serde(default)]
    pub force: bool,
}

/// `GET /v1/bundles/{ref}`.
pub async fn bundle(shared: &Arc<Shared>, ref_name: String) -> Result<Response<ResponseBody>, ApiError> {
    let bundle = blocking(shared, move |store| Ok(store.bundle(&ref_name)?)).await?;
    Ok(json_response(StatusCode::OK, &bundle))
}

/// `POST /v1/objects/missing`.
pub async fn missing(shared: &Arc<Shared>, request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let body: MissingRequest = parse_json(read_json_body_limited(request, MAX_JSON_BODY).await?)?;
    let missing = blocking(shared, move |store| Ok(store.missing_objects(&body.ids)?)).await?;
    Ok(json_response(StatusCode::OK, &MissingResponse { missing }))
}

/// `GET /v1/objects/{id}`: the object file as stored, not decoded, after checking it against `id`.
pub async fn get_object(shared: &Arc<Shared>, id: &str) -> Result<Response<ResponseBody>, ApiError> {
    let id = parse_id(id)?;
    let file = blocking(shared, move |store| match store.objects().get_file(&id) {
        Ok(file) => Ok(file),
        Err(Error::Storage(error)) if error.is_not_found() => Err(ApiError::not_found(error.to_string())),
        Err(error) => Err(error.into()),
    })
    .await?;
    Ok(bytes_response(StatusCode::OK, "application/octet-stream", Bytes::from(file)))
}

/// `PUT /v1/objects/{id}`: stores an object file after checking its content against `id`;
/// a mismatch is 422 and stores nothing.
pub async fn put_object(shared: &Arc<Shared>, request: Request<Incoming>, id: &str) -> Result<Response<ResponseBody>, ApiError> {
    let id = parse_id(id)?;
    let limit = MAX_OBJECT_FILE.min(shared.uploads.max_bytes());
    let fix = if limit < MAX_OBJECT_FILE {
        "; restart that daemon with a larger --max-upload-gb"
    } else {
        ", the most one object file may hold"
    };
    let too_large = || ApiError::too_large(format!("object file {id} is larger than the limit of {limit} bytes{fix}"));
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let body = Limited::new(request.into_body(), usize::try_from(limit).unwrap_or(usize::MAX)).collect().await.map_err(|error| {
        if error.downcast_ref::<LengthLimitError>().is_some() {
            too_large()
        } else {
            ApiError::bad_request(format!("failed to read the body of object {id}: {error}"))
        }
    })?;
    let file = body.to_bytes();
    let created = blocking(shared, move |store| Ok(store.receive_object(&id, &file)?)).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json_response(status, &PutObjectResponse { id, created }))
}

/// `POST /v1/bundles`: imports a bundle whose objects the store already has.
pub async fn import(shared: &Arc<Shared>, request: Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let body: ImportRequest = parse_json(read_json_body_limited(request, MAX_BUNDLE_BODY).await?)?;
    let report = blocking(shared, move |store| Ok(store.import_bundle(&body.bundle, body.force)?)).await?;
    Ok(json_response(StatusCode::OK, &report))
}

fn parse_id(text: &str) -> Result<ObjectId, ApiError> {
    text.parse().map_err(|_| ApiError::bad_request(format!("{text:?} is not an object id; expected 64 hexadecimal digits")))
}
