//! Progress reporting as a small trait, so the library stays silent and the CLI draws bars.

/// Receives progress of a long operation, in bytes of input processed.
pub trait Progress: Sync {
    fn start(&self, label: &str, total_bytes: u64);
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _label: &str, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}
