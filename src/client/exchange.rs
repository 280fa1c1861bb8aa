//! The client side of the routes `push` and `pull` use (see `daemon::exchange`).

use ureq::http::StatusCode;

use super::{encode_segment, DaemonClient};
use crate::daemon::exchange::{MissingRequest, MissingResponse, PutObjectResponse, MAX_OBJECT_FILE};
use crate::error::Error;
use crate::id::ObjectId;
use crate::store::{Bundle, ImportReport};

impl DaemonClient {
    /// `GET /v1/bundles/{ref}`.
    pub fn bundle(&self, ref_name: &str) -> Result<Bundle, Error> {
        self.get_json(&format!("/v1/bundles/{}", encode_segment(ref_name)))
    }

    /// `POST /v1/objects/missing`: the ids among `ids` that the daemon's store lacks.
    pub fn missing_objects(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>, Error> {
        let response: MissingResponse = self.post_json("/v1/objects/missing", &MissingRequest { ids: ids.to_vec() })?;
        Ok(response.missing)
    }

    /// `GET /v1/objects/{id}`: one object file as stored.
    pub fn get_object(&self, id: &ObjectId) -> Result<Vec<u8>, Error> {
        let path = format!("/v1/objects/{id}");
        let response = self.authorize(self.agent.get(self.url_of(&path))).call().map_err(|e| self.unreachable(&e))?;
        if response.status() != StatusCode::OK {
            return Err(self.error_from(&path, response));
        }
        self.read_body(response, MAX_OBJECT_FILE)
    }

    /// `PUT /v1/objects/{id}`: stores one object file; returns whether the daemon stored it
    /// (false when it already had the object).
    pub fn put_object(&self, id: &ObjectId, file: &[u8]) -> Result<bool, Error> {
        let path = format!("/v1/objects/{id}");
        let response = self
            .authorize(self.agent.put(self.url_of(&path)))
            .content_type("application/octet-stream")
            .send(file)
            .map_err(|e| self.unreachable(&e))?;
        let response: PutObjectResponse = self.read_json(&path, response)?;
        Ok(response.created)
    }

    /// `POST /v1/bundles`: imports a bundle whose objects the daemon's store already has.
    pub fn import_bundle(&self, bundle: &Bundle, force: bool) -> Result<ImportReport, Error> {
        // Borrowed, so a large bundle is not copied to be sent; the fields match `ImportRequest`.
        #[derive(serde::Serialize)]
        struct ImportRequestRef<'a> {
            bundle: &'a Bundle,
            force: bool,
        }
        self.post_json("/v1/bundles", &ImportRequestRef { bundle, force })
    }
}
