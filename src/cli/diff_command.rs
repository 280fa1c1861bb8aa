//! `wstore diff`: arguments, and the report as a table or JSON.

use std::path::Path;

use crate::diff::{self, DiffOptions, DiffReport, DiffSort, SideInfo, SideKind, TensorDiff, TensorStatus, Tolerance};
use crate::client::DaemonClient;
use crate::error::Error;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// A: a .safetensors file, or a ref, commit id prefix, base name or base id prefix. An
    /// existing file wins over a stored name
    pub a: String,
    /// B, in the same forms [default: the base of A, which must then be a commit]
    pub b: Option<String>,
    /// Print the report as JSON (schema wstore-diff-v1)
    #[arg(long)]
    pub json: bool,
    /// Compare only tensors whose name (A's or B's) matches this pattern (`*` and `?`), repeatable
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Skip tensors whose name (A's or B's) matches this pattern, repeatable
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// List only rows with these statuses, comma-separated: unchanged, changed, added, removed,
    /// shape_changed, dtype_changed. The summary and exit code still cover every tensor
    #[arg(long, value_delimiter = ',', value_parser = parse_status)]
    pub status: Vec<TensorStatus>,
    /// Row order: `name`, or `relative` (largest relative change first)
    #[arg(long, default_value = "name", value_parser = parse_sort)]
    pub sort: DiffSort,
    /// Number of tensors in the summary's list of largest relative changes
    #[arg(long, default_value_t = diff::DEFAULT_TOP)]
    pub top: usize,
    /// Absolute tolerance: an element differs when |a - b| > atol + rtol * |a|
    #[arg(long, default_value_t = 0.0)]
    pub atol: f64,
    /// Relative tolerance, a fraction of |a| (see --atol)
    #[arg(long, default_value_t = 0.0)]
    pub rtol: f64,
    /// Compare A's tensor A_PREFIX+x with B's tensor B_PREFIX+x (e.g. "=bert.")
    #[arg(long, value_name = "A_PREFIX=B_PREFIX")]
    pub map_prefix: Option<String>,
    /// Match tensor names only as they are; do not detect a prefix difference
    #[arg(long)]
    pub no_align: bool,
}

fn parse_status(text: &str) -> Result<TensorStatus, String> {
    text.parse()
}

fn parse_sort(text: &str) -> Result<DiffSort, String> {
    text.parse()
}

/// Runs `wstore diff` and returns its exit code: 0 without differences, 1 with.
pub fn run(root: &Path, args: DiffArgs) -> Result<i32, Error> {
    // Two files need no store, so a diff of two downloads works on a machine without one.
    let store = if needs_store(&args) { Some(Store::open(root)?) } else { None };
    let report = diff::diff(store.as_ref(), &args.a, args.b.as_deref(), &options_of(&args))?;
    Ok(print(&report, args.json))
}

/// Runs `wstore diff` through a daemon that owns the store: stored checkpoints are compared by
/// the daemon, two files here. A file against a stored checkpoint needs both in one process,
/// which the daemon does not do for paths a request names.
pub fn run_via_daemon(client: &DaemonClient, args: DiffArgs) -> Result<i32, Error> {
    let is_file = |arg: &str| Path::new(arg).is_file();
    if !needs_store(&args) {
        let report = diff::diff(None, &args.a, args.b.as_deref(), &options_of(&args))?;
        return Ok(print(&report, args.json));
    }
    if let Some(file) = std::iter::once(&args.a).chain(&args.b).find(|arg| is_file(arg)) {
        return Err(Error::InvalidArgument {
            what: "diff argument".into(),
            detail: format!(
                "{file:?} is a file, and the daemon at {} compares only stored checkpoints; commit the file and diff the commit, or stop the daemon",
                client.url()
            ),
        });
    }
    let report = client.diff(&args.a, args.b.as_deref(), &options_of(&args))?;
    Ok(print(&report, args.json))
}

fn needs_store(args: &DiffArgs) -> bool {
    !Path::new(&args.a).is_file() || args.b.as_deref().is_none_or(|b| !Path::new(b).is_file())
}

fn options_of(args: &DiffArgs) -> DiffOptions {
    DiffOptions {
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        statuses: args.status.clone(),
        sort: args.sort,
        top: args.top,
        tolerance: Tolerance { atol: args.atol, rtol: args.rtol },
        map_prefix: args.map_prefix.clone(),
        no_align: args.no_align,
        read_files: true,
    }
}

/// Prints the report and returns the exit code it calls for.
fn print(report: &DiffReport, json: bool) -> i32 {
    if json {
        super::print_json(report);
    } else {
        print_report(report);
    }
    i32::from(report.has_differences())
}

fn describe(side: &SideInfo) -> String {
    let id = side.id.map(|id| format!(" ({})", id.short())).unwrap_or_default();
    match side.kind {
        SideKind::Commit if side.lossy => {
            format!("commit {}{id}, lossy: values are the codec's reconstruction, which a checkout returns", side.arg)
        }
        SideKind::Commit => format!("commit {}{id}", side.arg),
        SideKind::Base => format!("base {}{id}", side.arg),
        SideKind::File => format!("file {}", side.arg),
    }
}

fn print_report(report: &DiffReport) {
    println!("A: {}", describe(&report.a));
    println!("B: {}", describe(&report.b));
    if let Some(map) = &report.name_map {
        println!("names: A {:?} + x <-> B {:?} + x ({})", map.a_prefix, map.b_prefix, map.source.describe());
    }
    if report.tolerance.atol > 0.0 || report.tolerance.rtol > 0.0 {
        println!("tolerance: atol {:e}, rtol {:e}", report.tolerance.atol, report.tolerance.rtol);
    }
    println!();
    println!(
        "{:<13} {:<56} {:>11} {:>10} {:>10} {:>10} {:>9}",
        "STATUS", "TENSOR", "ELEMENTS", "REL.CHANGE", "COSINE", "MAX|DIFF|", "DIFFERING"
    );
    for row in &report.tensors {
        print_row(row);
    }

    let summary = &report.summary;
    let counts: Vec<String> = TensorStatus::ALL
        .iter()
        .map(|status| (status, count_of(summary, *status)))
        .filter(|(_, count)| *count > 0)
        .map(|(status, count)| format!("{count} {}", status.as_str()))
        .collect();
    println!();
    println!("{} tensors: {}", summary.tensors, if counts.is_empty() { "none".to_string() } else { counts.join(", ") });
    println!(
        "whole-model relative change ||B-A||/||A||: {} over {} tensors ({} elements)",
        number(summary.relative_change),
        summary.value_tensors,
        summary.value_elements
    );
    if !summary.top.is_empty() {
        println!("largest relative changes:");
        for entry in &summary.top {
            println!("  {:<56} {:.4e}", entry.name, entry.relative_change);
        }
    }
}

fn count_of(summary: &diff::DiffSummary, status: TensorStatus) -> usize {
    let counts = &summary.by_status;
    match status {
        TensorStatus::Unchanged => counts.unchanged,
        TensorStatus::Changed => counts.changed,
        TensorStatus::Added => counts.added,
        TensorStatus::Removed => counts.removed,
        TensorStatus::ShapeChanged => counts.shape_changed,
        TensorStatus::DtypeChanged => counts.dtype_changed,
    }
}

fn print_row(row: &TensorDiff) {
    // B's mapped name follows from the `names:` line, so the table shows A's name only.
    let name = &row.name;
    let figures = match row.status {
        TensorStatus::ShapeChanged => format!("{:?} -> {:?}", row.shape_a.clone().unwrap_or_default(), row.shape_b.clone().unwrap_or_default()),
        TensorStatus::DtypeChanged if row.diff_norm.is_none() => {
            format!("{} -> {}", row.dtype_a.as_deref().unwrap_or("-"), row.dtype_b.as_deref().unwrap_or("-"))
        }
        TensorStatus::Added | TensorStatus::Removed => String::new(),
        _ => format!(
            "{:>10} {:>10} {:>10} {:>8.2}%",
            number(row.relative_change),
            row.cosine.map_or_else(|| "-".to_string(), |c| format!("{c:.6}")),
            number(row.max_abs_diff),
            row.differing_fraction.unwrap_or(0.0) * 100.0
        ),
    };
    println!("{:<13} {:<56} {:>11} {}", row.status.as_str(), name, row.elements, figures);
}

/// Formats an optional figure in scientific notation, `-` when undefined.
fn number(value: Option<f64>) -> String {
    match value {
        Some(0.0) => "0".to_string(),
        Some(v) if v.is_finite() => format!("{v:.3e}"),
        Some(v) => format!("{v}"),
        None => "-".to_string(),
    }
}
