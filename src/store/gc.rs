//! `gc`: deletes the objects that no base or commit record reaches.
//!
//! Reachability: an object is live when a base record or a commit record names it (a file,
//! a safetensors header, a tensor, a delta, or the base tensor a delta applies to). Refs only
//! name commits, and a commit record stays until `wstore rm --commit` deletes it, so an
//! unreferenced commit keeps its objects.
//!
//! A commit writes its objects before its record, so for a while its objects are unreachable.
//! Writers in this process hold the store's write lock shared and gc holds it exclusively, and
//! the catalog's lock keeps other processes out. As a second guard for writers that hold
//! neither, gc spares unreachable objects modified less than the grace period ago.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::commit::snapshot_objects;
use super::Store;
use crate::error::Error;
use crate::id::ObjectId;
use crate::storage::SharedObjects;

/// Default grace period: unreachable objects younger than this are kept.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Report what would be deleted, and delete nothing.
    pub dry_run: bool,
    /// Unreachable objects modified less than this long ago are kept.
    pub grace: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions { dry_run: false, grace: DEFAULT_GC_GRACE }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub grace_secs: u64,
    /// Objects some record reaches, all kept.
    pub reachable: usize,
    /// Unreachable objects deleted (in a dry run: that would be deleted), in id order.
    pub deleted: Vec<ObjectId>,
    /// On-disk bytes of `deleted`.
    pub freed_bytes: u64,
    /// Unreachable objects kept because they are younger than the grace period.
    pub spared_recent: usize,
    /// Unreachable objects kept because another store sharing the bucket marks them.
    #[serde(skip_serializing_if = "is_zero")]
    pub spared_shared: usize,
}

fn is_zero(count: &usize) -> bool {
    *count == 0
}

impl Store {
    /// Deletes every object no base or commit record reaches, except those modified within
    /// `options.grace`. Records are never deleted here (see `remove_ref`, `remove_commit`,
    /// `remove_base`). A catalog record that does not parse stops gc with an error before
    /// anything is deleted, because its objects could not be marked.
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport, Error> {
        let _exclusive = self.lock_exclusive();
        let reachable = self.reachable_objects()?;
        let storage = self.objects.storage();
        let Some(shared) = storage.shared() else {
            return self.sweep(options, &reachable, &HashSet::new());
        };
        // Shared bucket: fence first, so that stores committing from now on upload rather
        // than rely on present objects; then collect every store's markers (docs/design.md).
        if options.dry_run {
            let marked = marked_objects(shared, &reachable, options, true)?;
            return self.sweep(options, &reachable, &marked);
        }
        shared.begin_gc()?;
        let result = marked_objects(shared, &reachable, options, false)
            .and_then(|marked| self.sweep(options, &reachable, &marked));
        // The fence goes even when gc failed; a fence left behind costs only re-uploads.
        let ended = shared.end_gc();
        let report = result?;
        ended?;
        Ok(report)
    }

    /// Deletes unreachable objects that `marked` does not hold and that are older than the
    /// grace period.
    fn sweep(&self, options: &GcOptions, reachable: &HashSet<ObjectId>, marked: &HashSet<ObjectId>) -> Result<GcReport, Error> {
        let storage = self.objects.storage();
        let now = SystemTime::now();

        let mut report = GcReport {
            dry_run: options.dry_run,
            grace_secs: options.grace.as_secs(),
            reachable: 0,
            deleted: Vec::new(),
            freed_bytes: 0,
            spared_recent: 0,
            spared_shared: 0,
        };
        let mut fence_written = std::time::Instant::now();
        for id in storage.list()? {
            // A fence older than FENCE_STALE counts as left by a dead gc, so a long gc keeps
            // its own fresh.
            if let Some(shared) = storage.shared() {
                if !options.dry_run && fence_written.elapsed() > crate::storage::FENCE_REFRESH {
                    shared.begin_gc()?;
                    fence_written = std::time::Instant::now();
                }
            }
            if reachable.contains(&id) {
                report.reachable += 1;
                continue;
            }
            if marked.contains(&id) {
                report.spared_shared += 1;
                continue;
            }
            // A modification time in the future (clock skew) counts as recent.
            let recent = match storage.modified(&id)? {
                Some(modified) => now.duration_since(modified).map_or(true, |age| age < options.grace),
                None => false,
            };
            if recent {
                report.spared_recent += 1;
                continue;
            }
            let bytes = storage.size(&id)?;
            // Last check before the delete: a marker written after the listing above. A dry
            // run skips it, because it left this store's own stale markers in place.
            if let Some(shared) = storage.shared().filter(|_| !options.dry_run) {
                if shared.is_marked(&id)? {
                    report.spared_shared += 1;
                    continue;
                }
            }
            if !options.dry_run && !storage.delete(&id)? {
                continue;
            }
            report.deleted.push(id);
            report.freed_bytes += bytes;
        }
        tracing::info!(
            deleted = report.deleted.len(),
            freed_bytes = report.freed_bytes,
            spared_recent = report.spared_recent,
            dry_run = options.dry_run,
            "gc finished"
        );
        Ok(report)
    }

    /// Collects every object a base or commit record names.
    fn reachable_objects(&self) -> Result<HashSet<ObjectId>, Error> {
        let mut reachable = HashSet::new();
        for (base, _) in self.catalog.list_bases()? {
            reachable.extend(snapshot_objects(&base.snapshot));
        }
        for commit in self.catalog.list_commits()? {
            reachable.extend(snapshot_objects(&commit.snapshot));
        }
        Ok(reachable)
    }
}

/// Deletes this store's markers of objects its catalog no longer reaches and that are older
/// than the grace period (none in a dry run). Returns the objects some store still marks.
fn marked_objects(
    shared: &dyn SharedObjects,
    reachable: &HashSet<ObjectId>,
    options: &GcOptions,
    dry_run: bool,
) -> Result<HashSet<ObjectId>, Error> {
    let now = SystemTime::now();
    let mut marked = HashSet::new();
    for marker in shared.markers()? {
        let own = marker.store_id == shared.store_id();
        // A time in the future (clock skew) counts as recent.
        let old = now.duration_since(marker.modified).is_ok_and(|age| age >= options.grace);
        if own && old && !reachable.contains(&marker.object) {
            if !dry_run {
                shared.delete_marker(&marker.object)?;
            }
            continue;
        }
        marked.insert(marker.object);
    }
    Ok(marked)
}
