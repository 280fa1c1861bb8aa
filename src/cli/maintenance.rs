//! The maintenance commands `fsck`, `gc`, `rm` and `base rm`, and opening a store that
//! another wstore process holds.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{human_bytes, print_json};
use crate::catalog::CatalogError;
use crate::error::Error;
use crate::store::{BaseRemoval, FsckOptions, FsckReport, GcOptions, Store};

/// First and longest pause between attempts to open a locked store.
const LOCK_RETRY_FIRST: Duration = Duration::from_millis(20);
const LOCK_RETRY_MAX: Duration = Duration::from_millis(500);

/// Opens the store, waiting up to `timeout` while another wstore process holds its catalog
/// lock. sled lets one process open the catalog at a time, so concurrent commands queue here.
pub fn open_waiting(root: &Path, timeout: Duration, quiet: bool) -> Result<Store, Error> {
    let start = Instant::now();
    let mut pause = LOCK_RETRY_FIRST;
    let mut announced = false;
    loop {
        match Store::open(root) {
            Err(Error::Catalog(CatalogError::Locked { .. })) => {
                let waited = start.elapsed();
                if waited >= timeout {
                    return Err(Error::LockTimeout { path: root.to_path_buf(), waited_secs: waited.as_secs() });
                }
                if !announced && !quiet {
                    eprintln!("wstore: waiting for another wstore process to release {} (up to {} s)", root.display(), timeout.as_secs());
                    announced = true;
                }
                tracing::debug!(store = %root.display(), waited_ms = waited.as_millis() as u64, "store locked; retrying");
                std::thread::sleep(pause.min(timeout.saturating_sub(waited)));
                pause = (pause * 2).min(LOCK_RETRY_MAX);
            }
            other => return other,
        }
    }
}

/// Parses a duration such as `90`, `90s`, `15m`, `1h` or `2d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| format!("invalid duration {text:?}: expected a whole number with an optional unit s, m, h or d, e.g. 1h"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("invalid duration unit {other:?} in {text:?}: expected s, m, h or d")),
    };
    value.checked_mul(unit_secs).map(Duration::from_secs).ok_or_else(|| format!("duration {text:?} is too large"))
}

/// Runs `fsck` and returns the exit code: 0 when only orphans and stale temps were found,
/// 1 when there are problems.
pub fn run_fsck(store: &Store, full: bool, repair: bool, json: bool) -> Result<i32, Error> {
    let report = store.fsck(&FsckOptions { full, repair })?;
    if json {
        print_json(&serde_json::json!({
            "clean": report.is_clean(),
            "problems": report.problems(),
            "counts": report.counts(),
            "report": &report,
        }));
    } else {
        print_fsck(&report);
        if !report.removed_corrupt.is_empty() {
            println!(
                "deleted {} corrupt object file(s); add or commit their sources again to write them anew, then run wstore fsck",
                report.removed_corrupt.len()
            );
        }
    }
    Ok(if report.is_clean() { 0 } else { 1 })
}

fn print_fsck(report: &FsckReport) {
    for finding in &report.findings {
        let mut ids = Vec::new();
        if let Some(id) = finding.object {
            ids.push(format!("object {id}"));
        }
        if let Some(id) = finding.commit {
            ids.push(format!("commit {id}"));
        }
        if let Some(id) = finding.base {
            ids.push(format!("base {id}"));
        }
        if let Some(path) = &finding.path {
            ids.push(path.display().to_string());
        }
        println!("{}: {}", finding.kind.as_str(), ids.join(", "));
        println!("  {}", finding.detail);
    }
    println!(
        "checked {} objects, {} bases, {} commits, {} refs, {} deltas decoded{}",
        report.objects,
        report.bases,
        report.commits,
        report.refs,
        report.deltas,
        if report.full { format!(", {} files rebuilt", report.files_rebuilt) } else { String::new() }
    );
    let leftovers = report.findings.len() - report.problems();
    if report.is_clean() {
        println!("no problems found");
    } else {
        println!("{} problems found", report.problems());
    }
    if leftovers > 0 {
        println!("{leftovers} orphan objects or stale temp files, which interrupted writes leave; `wstore gc` deletes orphans");
    }
}

pub fn run_gc(store: &Store, dry_run: bool, grace: Duration, json: bool) -> Result<i32, Error> {
    let report = store.gc(&GcOptions { dry_run, grace })?;
    if json {
        print_json(&report);
        return Ok(0);
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    if dry_run {
        for id in &report.deleted {
            println!("{id}");
        }
    }
    println!(
        "{verb} {} unreachable objects, {} ({} bytes); kept {} reachable",
        report.deleted.len(),
        human_bytes(report.freed_bytes),
        report.freed_bytes,
        report.reachable
    );
    if report.spared_recent > 0 {
        println!(
            "kept {} unreachable objects modified within the last {} s (--grace), which a commit in progress may still record",
            report.spared_recent, report.grace_secs
        );
    }
    Ok(0)
}

pub fn run_rm(store: &Store, ref_name: Option<&str>, commit: Option<&str>, json: bool) -> Result<i32, Error> {
    let (removed, kind) = match (ref_name, commit) {
        (Some(name), _) => (store.remove_ref(name)?, "ref"),
        (None, Some(text)) => (store.remove_commit(text)?, "commit"),
        (None, None) => {
            return Err(Error::InvalidArgument { what: "rm".into(), detail: "give a REF, or --commit ID".into() });
        }
    };
    if json {
        print_json(&serde_json::json!({ "removed": kind, "ref": ref_name, "commit": removed }));
    } else if let Some(name) = ref_name {
        println!("removed ref {name} (it named commit {}; the commit stays, `wstore rm --commit` deletes it)", removed.short());
    } else {
        println!("removed commit {removed}; `wstore gc` deletes the objects only it used");
    }
    Ok(0)
}

pub fn run_base_rm(store: &Store, name: &str, with_commits: bool, json: bool) -> Result<i32, Error> {
    let removal: BaseRemoval = store.remove_base(name, with_commits)?;
    if json {
        print_json(&removal);
    } else if !removal.base_removed {
        println!("removed base name {name}; other names still point at base {}", removal.base.short());
    } else {
        println!("removed base {name} ({})", removal.base.short());
        for id in &removal.commits {
            println!("  removed commit {id}");
        }
        for name in &removal.refs {
            println!("  removed ref {name}");
        }
        println!("`wstore gc` deletes the objects only they used");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "h", "1w", "-1s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
