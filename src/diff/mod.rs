//! Comparing two checkpoints tensor by tensor: stored commits and bases (rebuilt a tensor at
//! a time, never written out) and safetensors files, in any combination.

mod compare;
mod pairing;
pub mod query;
mod source;
mod stats;

use std::collections::HashSet;

use serde::Serialize;

pub use compare::{Comparison, TensorDiff, TensorStatus};
pub use pairing::{MappingSource, NameMapping};
pub use source::{SideInfo, SideKind};
pub use stats::Tolerance;

use crate::error::Error;
use crate::store::{glob_match, Store, Target};
use compare::PairReader;
use source::Side;

/// Name of the JSON layout of `DiffReport`. It changes only when a field changes meaning or
/// is removed.
pub const SCHEMA: &str = "wstore-diff-v1";

/// Default number of tensors in `DiffSummary::top`.
pub const DEFAULT_TOP: usize = 10;

/// Order of `DiffReport::tensors`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiffSort {
    /// By name (A's name, or B's for an added tensor).
    #[default]
    Name,
    /// By relative change, largest first. Rows without one (added, removed, shape changed,
    /// bytewise) come last, by name.
    Relative,
}

impl DiffSort {
    /// Returns the name that `--sort` takes for this order.
    pub fn as_str(self) -> &'static str {
        match self {
            DiffSort::Name => "name",
            DiffSort::Relative => "relative",
        }
    }
}

impl std::str::FromStr for DiffSort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "name" => Ok(DiffSort::Name),
            "relative" => Ok(DiffSort::Relative),
            other => Err(format!("unknown sort {other:?}; expected relative or name")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Compare only tensors whose A or B name matches one of these patterns (`*`, `?`); all
    /// when empty.
    pub include: Vec<String>,
    /// Skip tensors whose A or B name matches one of these patterns.
    pub exclude: Vec<String>,
    /// List only rows with these statuses (all when empty). Counts and the exit status still
    /// cover every compared tensor.
    pub statuses: Vec<TensorStatus>,
    pub sort: DiffSort,
    /// Length of the summary's top list.
    pub top: usize,
    pub tolerance: Tolerance,
    /// `A_PREFIX=B_PREFIX`: compare A's tensor `A_PREFIX + x` with B's `B_PREFIX + x`.
    pub map_prefix: Option<String>,
    /// Match names only as they are.
    pub no_align: bool,
    /// Read an argument that is an existing file's path as a safetensors file. A server
    /// taking arguments from requests should leave this off.
    pub read_files: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            include: Vec::new(),
            exclude: Vec::new(),
            statuses: Vec::new(),
            sort: DiffSort::Name,
            top: DEFAULT_TOP,
            tolerance: Tolerance { atol: 0.0, rtol: 0.0 },
            map_prefix: None,
            no_align: false,
            read_files: false,
        }
    }
}

/// Tensors per status, over every compared tensor (after the name filters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StatusCounts {
    pub unchanged: usize,
    pub changed: usize,
    pub added: usize,
    pub removed: usize,
    pub shape_changed: usize,
    pub dtype_changed: usize,
}

impl StatusCounts {
    fn add(&mut self, status: TensorStatus) {
        let slot = match status {
            TensorStatus::Unchanged => &mut self.unchanged,
            TensorStatus::Changed => &mut self.changed,
            TensorStatus::Added => &mut self.added,
            TensorStatus::Removed => &mut self.removed,
            TensorStatus::ShapeChanged => &mut self.shape_changed,
            TensorStatus::DtypeChanged => &mut self.dtype_changed,
        };
        *slot += 1;
    }
}

/// One entry of the summary's top list.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TopTensor {
    pub name: String,
    pub relative_change: f64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DiffSummary {
    /// Tensors compared (after the name filters), whatever their status.
    pub tensors: usize,
    pub by_status: StatusCounts,
    /// True when any compared tensor is not unchanged.
    pub differences: bool,
    /// Tensors whose values were compared (same shape, numeric dtypes on both sides).
    pub value_tensors: usize,
    /// Elements in those tensors.
    pub value_elements: u64,
    /// ||A|| and ||B - A|| over all those tensors taken as one vector.
    pub a_norm: f64,
    pub diff_norm: f64,
    /// ||B - A|| / ||A|| over all those tensors; `None` when ||A|| is 0.
    pub relative_change: Option<f64>,
    /// Changed tensors with the largest relative change, largest first.
    pub top: Vec<TopTensor>,
}

/// The result of `diff`; its JSON form is the `wstore diff --json` schema.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DiffReport {
    /// Always `SCHEMA`.
    pub schema: String,
    pub a: SideInfo,
    pub b: SideInfo,
    /// The name mapping used, if any.
    pub name_map: Option<NameMapping>,
    pub tolerance: Tolerance,
    pub summary: DiffSummary,
    /// Rows that pass the status filter, in the requested order.
    pub tensors: Vec<TensorDiff>,
}

/// Compares checkpoint `a` with `b`, tensor by tensor. Each argument is a safetensors file
/// (when `options.read_files` is set and it names an existing file) or a ref, commit id
/// prefix, base name or base id prefix resolved in `store`. An existing file wins over a
/// stored name. Without `b`, `a` must be a commit, and it is compared with its base.
///
/// Stored tensors are rebuilt one at a time and verified against their recorded BLAKE3;
/// pairs are compared one after the other, each with all rayon threads, so memory stays near
/// one tensor per side (plus what a rebuild needs).
pub fn diff(store: Option<&Store>, a: &str, b: Option<&str>, options: &DiffOptions) -> Result<DiffReport, Error> {
    check_tolerance(options.tolerance)?;
    let side_a = Side::open(store, a, options.read_files)?;
    let side_b = match b {
        Some(b) => Side::open(store, b, options.read_files)?,
        None => base_of(store, &side_a)?,
    };

    let a_tensors = side_a.tensors()?;
    let b_tensors = side_b.tensors()?;
    let mapping = pairing::choose_mapping(
        &side_a,
        &side_b,
        &a_tensors,
        &b_tensors,
        options.map_prefix.as_deref(),
        options.no_align,
    )?;
    if let Some(mapping) = &mapping {
        tracing::debug!(a_prefix = %mapping.a_prefix, b_prefix = %mapping.b_prefix, source = ?mapping.source, "aligned tensor names");
    }

    let reader = PairReader { store, a: &side_a, b: &side_b, tolerance: options.tolerance };
    let mut rows = Vec::new();
    for (a_index, b_index) in pairing::pair_tensors(&a_tensors, &b_tensors, mapping.as_ref()) {
        let a_tensor = a_index.and_then(|i| a_tensors.get(i));
        let b_tensor = b_index.and_then(|i| b_tensors.get(i));
        let names: Vec<&str> = a_tensor.iter().chain(b_tensor.iter()).map(|t| t.name).collect();
        if !selected(&names, options) {
            continue;
        }
        let row = reader.compare(a_tensor, b_tensor)?;
        tracing::trace!(tensor = %row.name, status = row.status.as_str(), "compared");
        rows.push(row);
    }
    // A mistyped pattern must not read as "no differences".
    if rows.is_empty() && !(options.include.is_empty() && options.exclude.is_empty()) {
        return Err(Error::InvalidArgument {
            what: "--include/--exclude".into(),
            detail: format!(
                "no tensor of {a} or {} matches include {:?} and exclude {:?}; check the patterns (`*` and `?`)",
                b.unwrap_or("its base"),
                options.include,
                options.exclude
            ),
        });
    }

    let summary = summarize(&rows, options.top);
    let listed: HashSet<TensorStatus> = options.statuses.iter().copied().collect();
    rows.retain(|row| listed.is_empty() || listed.contains(&row.status));
    sort_rows(&mut rows, options.sort);
    Ok(DiffReport {
        schema: SCHEMA.to_string(),
        a: side_a.info().clone(),
        b: side_b.info().clone(),
        name_map: mapping,
        tolerance: options.tolerance,
        summary,
        tensors: rows,
    })
}

fn check_tolerance(tolerance: Tolerance) -> Result<(), Error> {
    for (flag, value) in [("--atol", tolerance.atol), ("--rtol", tolerance.rtol)] {
        if !(value.is_finite() && value >= 0.0) {
            return Err(Error::InvalidArgument {
                what: format!("{flag} {value}"),
                detail: "expected a finite number, 0 or more".into(),
            });
        }
    }
    Ok(())
}

/// Opens the base of a commit side, for a one-argument diff.
fn base_of(store: Option<&Store>, commit: &Side) -> Result<Side, Error> {
    let info = commit.info();
    let (Some(store), Some(base)) = (store, info.base) else {
        return Err(Error::InvalidArgument {
            what: format!("diff {:?}", info.arg),
            detail: "with one argument, it must name a commit, which is compared with its base; give a second argument to compare anything else".into(),
        });
    };
    let name = store
        .catalog()
        .list_bases()?
        .into_iter()
        .find(|(record, _)| record.id == base)
        .and_then(|(_, names)| names.into_iter().next())
        .unwrap_or_else(|| base.short());
    Side::open_stored(store, &name, Target::Base(base))
}

/// Applies the name filters to a row's names (A's, B's, or both).
fn selected(names: &[&str], options: &DiffOptions) -> bool {
    let matches = |patterns: &[String]| names.iter().any(|name| patterns.iter().any(|p| glob_match(p, name)));
    (options.include.is_empty() || matches(&options.include)) && !matches(&options.exclude)
}

fn summarize(rows: &[TensorDiff], top: usize) -> DiffSummary {
    let mut by_status = StatusCounts::default();
    let (mut value_tensors, mut value_elements) = (0, 0u64);
    let (mut a_squared, mut diff_squared) = (0f64, 0f64);
    for row in rows {
        by_status.add(row.status);
        if let (Some(a_norm), Some(diff_norm)) = (row.a_norm, row.diff_norm) {
            value_tensors += 1;
            value_elements += row.elements;
            a_squared += a_norm * a_norm;
            diff_squared += diff_norm * diff_norm;
        }
    }
    let (a_norm, diff_norm) = (a_squared.sqrt(), diff_squared.sqrt());
    let relative_change = (a_norm > 0.0).then(|| diff_norm / a_norm);

    let mut ranked: Vec<TopTensor> = rows
        .iter()
        .filter(|row| row.status != TensorStatus::Unchanged)
        .filter_map(|row| row.relative_change.map(|r| TopTensor { name: row.name.clone(), relative_change: r }))
        .collect();
    ranked.sort_by(|x, y| y.relative_change.total_cmp(&x.relative_change).then_with(|| x.name.cmp(&y.name)));
    ranked.truncate(top);

    DiffSummary {
        tensors: rows.len(),
        differences: rows.iter().any(|row| row.status != TensorStatus::Unchanged),
        by_status,
        value_tensors,
        value_elements,
        a_norm,
        diff_norm,
        relative_change,
        top: ranked,
    }
}

fn sort_rows(rows: &mut [TensorDiff], sort: DiffSort) {
    match sort {
        DiffSort::Name => rows.sort_by(|x, y| x.name.cmp(&y.name)),
        DiffSort::Relative => rows.sort_by(|x, y| match (x.relative_change, y.relative_change) {
            (Some(p), Some(q)) => q.total_cmp(&p).then_with(|| x.name.cmp(&y.name)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => x.name.cmp(&y.name),
        }),
    }
}

impl DiffReport {
    /// Tells whether any compared tensor differs; `wstore diff` exits 1 when it does.
    pub fn has_differences(&self) -> bool {
        self.summary.differences
    }
}
