//! Checkout through the daemon. Each file of the manifest is streamed into a temp file beside
//! its destination and hashed while it is written. It is published only when its BLAKE3 equals
//! the hash in the daemon's manifest and `ETag`, as a local checkout verifies its output.

use std::io::{Read, Write};
use std::path::Path;

use super::DaemonClient;
use crate::daemon::checkout::{CheckoutManifest, ManifestFile};
use crate::durable::{DurableFile, Publish};
use crate::error::Error;
use crate::id::ObjectId;
use crate::progress::Progress;
use crate::store::{prepare_output, CheckoutReport};

/// Bytes read from the socket per write to the temp file.
const CHUNK_BYTES: usize = 1 << 20;

/// Writes every file of `manifest` under `output`, with the same output rules as a local
/// checkout of the store at `store_root`: no output inside the store, and an existing output
/// replaced only with `force`.
pub fn checkout(
    client: &DaemonClient,
    store_root: &Path,
    manifest: &CheckoutManifest,
    output: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<CheckoutReport, Error> {
    let paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    let destinations = prepare_output(store_root, &manifest.layout, &paths, output, force)?;
    let total: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    progress.start("checking out", total);
    let mut file_hashes = Vec::with_capacity(manifest.files.len());
    for (file, destination) in manifest.files.iter().zip(&destinations) {
        file_hashes.push((file.path.clone(), download(client, file, destination, progress)?));
    }
    progress.finish();
    Ok(CheckoutReport { output: output.to_path_buf(), files: manifest.files.len(), bytes: total, file_hashes, lossy: manifest.lossy })
}

/// Streams one file to `destination` and returns its verified BLAKE3. On any failure the temp
/// file is deleted and `destination` is left as it was.
pub fn download(client: &DaemonClient, file: &ManifestFile, destination: &Path, progress: &dyn Progress) -> Result<ObjectId, Error> {
    let response = client.get_file(&file.url)?;
    let etag = response.headers().get("etag").and_then(|value| value.to_str().ok()).unwrap_or("");
    if etag != file.etag {
        return Err(Error::Daemon {
            status: response.status().as_u16(),
            kind: "protocol".into(),
            message: format!("the daemon at {} sent file {} with ETag {etag:?}, but its manifest names {}; retry the checkout", client.url(), file.path, file.etag),
        });
    }

    let status = response.status().as_u16();
    // A body that ends early was cut by the daemon: it stops a response when a stored tensor
    // fails to rebuild or verify, rather than send wrong bytes.
    let truncated = |received: u64, cause: String| Error::Daemon {
        status,
        kind: "truncated".into(),
        message: format!(
            "the daemon at {} stopped sending file {} after {received} of {} bytes ({cause}); it does this when a stored tensor fails to rebuild or verify, and its log names the tensor; stop the daemon and run `wstore fsck --full` to check the store",
            client.url(),
            file.path,
            file.bytes
        ),
    };
    let mut reader = response.into_body().into_reader();
    let mut out = DurableFile::create(destination).map_err(|e| Error::io("create", destination, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut received: u64 = 0;
    loop {
        let read = reader.read(&mut buffer).map_err(|e| truncated(received, e.to_string()))?;
        let Some(chunk) = buffer.get(..read).filter(|chunk| !chunk.is_empty()) else {
            break;
        };
        received += read as u64;
        if received > file.bytes {
            break;
        }
        hasher.update(chunk);
        out.write_all(chunk).map_err(|e| Error::io("write", destination, e))?;
        progress.advance(read as u64);
    }

    if received != file.bytes {
        return Err(truncated(received, "the response ended".into()));
    }
    let actual = ObjectId::from_bytes(*hasher.finalize().as_bytes());
    if actual != file.blake3 {
        return Err(Error::VerificationFailed { what: format!("file {} received from the daemon", file.path), expected: file.blake3, actual });
    }
    out.commit(Publish::Replace).map_err(|e| Error::io("publish", destination, e))?;
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    use super::*;
    use crate::progress::NoProgress;

    /// Serves one HTTP response with `body` and the ETag of `claimed` on a loopback port, as a
    /// daemon whose object files were damaged would, and returns the port.
    fn serve_once(claimed: &[u8], body: Vec<u8>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let etag = format!("\"{}\"", ObjectId::of(claimed).to_hex());
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n", body.len());
            let mut stream = reader.into_inner();
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        });
        port
    }

    fn manifest_file(claimed: &[u8]) -> ManifestFile {
        let hash = ObjectId::of(claimed);
        ManifestFile {
            path: "model.safetensors".into(),
            kind: "safetensors".into(),
            bytes: claimed.len() as u64,
            blake3: hash,
            etag: format!("\"{}\"", hash.to_hex()),
            lossy: false,
            url: "/v1/checkout/x/model.safetensors".into(),
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn corrupt_body_is_rejected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let claimed = b"the bytes the manifest names".to_vec();
        let mut corrupt = claimed.clone();
        corrupt[3] ^= 1;
        let client = DaemonClient::new(&format!("http://127.0.0.1:{}", serve_once(&claimed, corrupt)), None);
        let destination = dir.path().join("model.safetensors");

        let error = download(&client, &manifest_file(&claimed), &destination, &NoProgress).unwrap_err();
        assert!(matches!(error, Error::VerificationFailed { expected, .. } if expected == ObjectId::of(&claimed)), "{error}");
        assert!(!destination.exists());
        assert_eq!(names_in(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn short_body_is_rejected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let claimed = b"the bytes the manifest names".to_vec();
        let short = claimed[..10].to_vec();
        let client = DaemonClient::new(&format!("http://127.0.0.1:{}", serve_once(&claimed, short)), None);
        let destination = dir.path().join("model.safetensors");

        let error = download(&client, &manifest_file(&claimed), &destination, &NoProgress).unwrap_err();
        assert!(matches!(&error, Error::Daemon { kind, .. } if kind == "truncated"), "{error}");
        assert!(error.to_string().contains("after 10 of 28 bytes"), "{error}");
        assert!(error.to_string().contains("wstore fsck --full"), "{error}");
        assert_eq!(names_in(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn intact_body_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let claimed = b"the bytes the manifest names".to_vec();
        let client = DaemonClient::new(&format!("http://127.0.0.1:{}", serve_once(&claimed, claimed.clone())), None);
        let destination = dir.path().join("model.safetensors");

        let hash = download(&client, &manifest_file(&claimed), &destination, &NoProgress).unwrap();
        assert_eq!(hash, ObjectId::of(&claimed));
        assert_eq!(std::fs::read(&destination).unwrap(), claimed);
        assert_eq!(names_in(dir.path()), vec!["model.safetensors".to_string()]);
    }
}
