//! A blocking call interface over an async S3 client.
//!
//! The `Storage` trait is synchronous, while the S3 client is async. The bridge owns a small
//! tokio runtime of its own; each call spawns its future there and waits for the result on a
//! std channel. That works from plain threads and from tokio `spawn_blocking` threads alike,
//! because the waiting thread never drives the runtime itself. It must not be called from an
//! async worker thread: blocking there stalls that thread's other tasks (the daemon wraps
//! every storage call in `spawn_blocking` for this reason).

use std::future::Future;
use std::sync::mpsc;

use super::super::StorageError;

/// Worker threads of the bridge's runtime; requests are I/O bound, so few threads suffice.
const WORKER_THREADS: usize = 2;

#[derive(Debug)]
pub struct Bridge {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    pub fn new() -> Result<Bridge, StorageError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("wstore-s3")
            .enable_all()
            .build()
            .map_err(|source| StorageError::from_io("start the S3 client runtime", "s3", source))?;
        Ok(Bridge { runtime: Some(runtime) })
    }

    /// Runs `future` on the bridge's runtime and blocks until it finishes.
    pub fn run<T, F>(&self, future: F) -> Result<T, StorageError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (sender, receiver) = mpsc::sync_channel(1);
        let runtime = self.runtime.as_ref().ok_or(StorageError::Poisoned)?;
        runtime.spawn(async move {
            // The receiver is gone only if the caller's thread died; nothing to report then.
            let _ = sender.send(future.await);
        });
        // A closed channel means the task panicked or the runtime shut down.
        receiver.recv().map_err(|_| StorageError::Config {
            detail: "the S3 client task stopped before answering; reopen the store".to_string(),
        })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside an async context (the daemon may drop
        // its store there); shutting down in the background never blocks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
