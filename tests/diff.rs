//! `diff`: statuses, figures, options, name alignment, stored sides and the CLI contract.

mod common;

use std::path::{Path, PathBuf};

use common::{checkout_bytes, run_wstore as wstore, tensor, write};
use half::f16;
use wstore::diff::{diff, Comparison, DiffOptions, DiffReport, DiffSort, MappingSource, SideKind, TensorDiff, TensorStatus, Tolerance};
use wstore::format::safetensors::Dtype;
use wstore::progress::NoProgress;
use wstore::store::{CodecChoice, CommitOptions};
use wstore::Store;

fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn i32s(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A: one tensor for every status B can give it.
fn write_a(dir: &Path) -> PathBuf {
    write(&dir.join("a.safetensors"), &[
        tensor("w", Dtype::F32, &[2, 2], f32s(&[1.0, 2.0, 2.0, 4.0])),
        tensor("same", Dtype::F32, &[3], f32s(&[1.0, 2.0, 3.0])),
        tensor("gone", Dtype::F32, &[2], f32s(&[1.0, 1.0])),
        tensor("shape", Dtype::F32, &[4], f32s(&[1.0, 2.0, 3.0, 4.0])),
        tensor("cast", Dtype::F32, &[2], f32s(&[0.5, -2.0])),
        tensor("ints", Dtype::I32, &[3], i32s(&[1, 2, 3])),
        tensor("fp8", Dtype::F8E4M3, &[4], vec![1, 2, 3, 4]),
    ])
}

fn write_b(dir: &Path) -> PathBuf {
    let halves: Vec<u8> = [0.5f32, -2.0].iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
    write(&dir.join("b.safetensors"), &[
        tensor("w", Dtype::F32, &[2, 2], f32s(&[1.0, 2.0, 2.0, 7.0])),
        tensor("same", Dtype::F32, &[3], f32s(&[1.0, 2.0, 3.0])),
        tensor("new", Dtype::F32, &[1], f32s(&[5.0])),
        tensor("shape", Dtype::F32, &[2, 2], f32s(&[1.0, 2.0, 3.0, 4.0])),
        tensor("cast", Dtype::F16, &[2], halves),
        tensor("ints", Dtype::I32, &[3], i32s(&[1, 2, 5])),
        tensor("fp8", Dtype::F8E4M3, &[4], vec![1, 2, 9, 4]),
    ])
}

fn file_options() -> DiffOptions {
    DiffOptions { read_files: true, ..Default::default() }
}

fn diff_paths(a: &Path, b: &Path, options: &DiffOptions) -> DiffReport {
    diff(None, a.to_str().unwrap(), Some(b.to_str().unwrap()), options).unwrap()
}

fn row<'r>(report: &'r DiffReport, name: &str) -> &'r TensorDiff {
    report.tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no row {name}"))
}

fn statuses(report: &DiffReport) -> Vec<(&str, TensorStatus)> {
    report.tensors.iter().map(|t| (t.name.as_str(), t.status)).collect()
}

#[test]
fn every_status_on_two_files() {
    let dir = tempfile::tempdir().unwrap();
    let report = diff_paths(&write_a(dir.path()), &write_b(dir.path()), &file_options());
    assert_eq!(
        statuses(&report),
        vec![
            ("cast", TensorStatus::DtypeChanged),
            ("fp8", TensorStatus::Changed),
            ("gone", TensorStatus::Removed),
            ("ints", TensorStatus::Changed),
            ("new", TensorStatus::Added),
            ("same", TensorStatus::Unchanged),
            ("shape", TensorStatus::ShapeChanged),
            ("w", TensorStatus::Changed),
        ]
    );
    let counts = &report.summary.by_status;
    assert_eq!((counts.unchanged, counts.changed, counts.added, counts.removed, counts.shape_changed, counts.dtype_changed), (1, 3, 1, 1, 1, 1));
    assert_eq!(report.summary.tensors, 8);
    assert!(report.has_differences());
    assert_eq!(report.a.kind, SideKind::File);
    assert!(!report.a.lossy);
    assert_eq!(report.name_map, None);
}

#[test]
fn figures_are_exact_on_small_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let report = diff_paths(&write_a(dir.path()), &write_b(dir.path()), &file_options());

    // w: A = [1, 2, 2, 4], B = [1, 2, 2, 7].
    let w = row(&report, "w");
    assert_eq!(w.comparison, Comparison::Values);
    assert_eq!(w.elements, 4);
    assert_eq!(w.a_norm, Some(5.0));
    assert_eq!(w.b_norm, Some(58f64.sqrt()));
    assert_eq!(w.diff_norm, Some(3.0));
    assert_eq!(w.relative_change, Some(0.6));
    assert_eq!(w.cosine, Some(37.0 / (5.0 * 58f64.sqrt())));
    assert_eq!(w.max_abs_diff, Some(3.0));
    assert_eq!(w.differing_fraction, Some(0.25));

    // ints: [1, 2, 3] -> [1, 2, 5].
    let ints = row(&report, "ints");
    assert_eq!(ints.diff_norm, Some(2.0));
    assert_eq!(ints.relative_change, Some(2.0 / 14f64.sqrt()));
    assert_eq!(ints.differing_fraction, Some(1.0 / 3.0));

    // The F16 copy has the same values, so only the dtype changed.
    let cast = row(&report, "cast");
    assert_eq!(cast.comparison, Comparison::Values);
    assert_eq!(cast.diff_norm, Some(0.0));
    assert_eq!(cast.cosine, Some(1.0));
    assert_eq!((cast.dtype_a.as_deref(), cast.dtype_b.as_deref()), (Some("F32"), Some("F16")));

    // F8 is compared bytewise: one element of four differs, and no norm is reported.
    let fp8 = row(&report, "fp8");
    assert_eq!(fp8.comparison, Comparison::Bytes);
    assert_eq!(fp8.differing_fraction, Some(0.25));
    assert_eq!(fp8.diff_norm, None);

    let same = row(&report, "same");
    assert_eq!(same.comparison, Comparison::Hash);
    assert_eq!(same.a_norm, Some(14f64.sqrt()));
    assert_eq!(same.relative_change, Some(0.0));

    let shape = row(&report, "shape");
    assert_eq!((shape.shape_a.clone(), shape.shape_b.clone()), (Some(vec![4]), Some(vec![2, 2])));
    assert_eq!(shape.diff_norm, None);
    assert_eq!(row(&report, "gone").elements, 2);
    assert_eq!(row(&report, "new").dtype_a, None);

    // Whole model: w, same, cast and ints have values; ||dW||^2 = 9 + 4, ||A||^2 = 25 + 14 + 4.25 + 14.
    let summary = &report.summary;
    assert_eq!(summary.value_tensors, 4);
    assert_eq!(summary.value_elements, 12);
    assert_eq!(summary.diff_norm, 13f64.sqrt());
    assert_eq!(summary.a_norm, 57.25f64.sqrt());
    assert_eq!(summary.relative_change, Some(13f64.sqrt() / 57.25f64.sqrt()));
    let top: Vec<(&str, f64)> = summary.top.iter().map(|t| (t.name.as_str(), t.relative_change)).collect();
    assert_eq!(top, vec![("w", 0.6), ("ints", 2.0 / 14f64.sqrt()), ("cast", 0.0)]);
}

#[test]
fn tolerance_turns_changes_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (write_a(dir.path()), write_b(dir.path()));
    let with = |atol, rtol| diff_paths(&a, &b, &DiffOptions { tolerance: Tolerance { atol, rtol }, ..file_options() });

    let loose = with(3.0, 0.0);
    assert_eq!(row(&loose, "w").status, TensorStatus::Unchanged);
    assert_eq!(row(&loose, "ints").status, TensorStatus::Unchanged);
    // Figures stay exact; only the classification uses the tolerance.
    assert_eq!(row(&loose, "w").diff_norm, Some(3.0));
    // Bytewise dtypes ignore the tolerance.
    assert_eq!(row(&loose, "fp8").status, TensorStatus::Changed);

    let relative = with(0.0, 0.75);
    assert_eq!(row(&relative, "w").status, TensorStatus::Unchanged);
    assert_eq!(row(&relative, "ints").status, TensorStatus::Unchanged);
    let tight = with(0.0, 0.6);
    assert_eq!(row(&tight, "w").status, TensorStatus::Changed);
    assert_eq!(row(&tight, "ints").status, TensorStatus::Changed);
    assert_eq!(tight.tolerance, Tolerance { atol: 0.0, rtol: 0.6 });
}

#[test]
fn invalid_tolerance_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (write_a(dir.path()), write_b(dir.path()));
    let options = DiffOptions { tolerance: Tolerance { atol: -1.0, rtol: 0.0 }, ..file_options() };
    let error = diff(None, a.to_str().unwrap(), Some(b.to_str().unwrap()), &options).unwrap_err();
    assert!(matches!(error, wstore::Error::InvalidArgument { .. }), "{error}");
    assert_eq!(error.to_string(), "--atol -1: expected a finite number, 0 or more");
}

#[test]
fn name_filters_select_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (write_a(dir.path()), write_b(dir.path()));
    let only = diff_paths(&a, &b, &DiffOptions { include: vec!["s*".into(), "w".into()], ..file_options() });
    assert_eq!(statuses(&only), vec![("same", TensorStatus::Unchanged), ("shape", TensorStatus::ShapeChanged), ("w", TensorStatus::Changed)]);
    assert_eq!(only.summary.tensors, 3);

    let without = diff_paths(&a, &b, &DiffOptions { exclude: vec!["*a*".into(), "??8".into()], ..file_options() });
    let names: Vec<&str> = without.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["gone", "ints", "new", "w"]);

    // Only the unchanged tensor: no differences.
    let quiet = diff_paths(&a, &b, &DiffOptions { include: vec!["same".into()], ..file_options() });
    assert!(!quiet.has_differences());

    // A pattern that matches nothing is an error, never "no differences".
    let none = diff(None, a.to_str().unwrap(), Some(b.to_str().unwrap()), &DiffOptions { include: vec!["nosuch*".into()], ..file_options() });
    assert!(matches!(none, Err(wstore::Error::InvalidArgument { .. })), "{none:?}");
}

#[test]
fn status_filter_lists_rows_but_counts_all() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (write_a(dir.path()), write_b(dir.path()));
    let options = DiffOptions { statuses: vec![TensorStatus::Added, TensorStatus::Removed], ..file_options() };
    let report = diff_paths(&a, &b, &options);
    assert_eq!(statuses(&report), vec![("gone", TensorStatus::Removed), ("new", TensorStatus::Added)]);
    assert_eq!(report.summary.tensors, 8);
    assert_eq!(report.summary.by_status.changed, 3);
    assert!(report.has_differences());
}

#[test]
fn sort_and_top_order_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (write_a(dir.path()), write_b(dir.path()));
    let report = diff_paths(&a, &b, &DiffOptions { sort: DiffSort::Relative, top: 1, ..file_options() });
    let names: Vec<&str> = report.tensors.iter().map(|t| t.name.as_str()).collect();
    // Relative change: w 0.6, ints 0.53, then cast and same at 0 by name, then rows without one.
    assert_eq!(names, vec!["w", "ints", "cast", "same", "fp8", "gone", "new", "shape"]);
    assert_eq!(report.summary.top.len(), 1);
    assert_eq!(report.summary.top[0].name, "w");
}

#[test]
fn identical_files_have_no_differences() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_a(dir.path());
    let report = diff_paths(&a, &a, &file_options());
    assert!(!report.has_differences());
    assert_eq!(report.summary.by_status.unchanged, 7);
    assert!(report.tensors.iter().all(|t| t.comparison == Comparison::Hash));
    assert_eq!(report.summary.relative_change, Some(0.0));
}

/// Writes a base with BERT-style names and a bare-encoder fine-tune without the `bert.` prefix.
fn write_prefixed_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let base = write(&dir.join("pretrained.safetensors"), &[
        tensor("bert.encoder.w", Dtype::F32, &[2], f32s(&[3.0, 4.0])),
        tensor("bert.pooler.w", Dtype::F32, &[2], f32s(&[1.0, 0.0])),
        tensor("cls.w", Dtype::F32, &[1], f32s(&[1.0])),
    ]);
    let finetune = write(&dir.join("bare.safetensors"), &[
        tensor("encoder.w", Dtype::F32, &[2], f32s(&[3.0, 4.0])),
        tensor("pooler.w", Dtype::F32, &[2], f32s(&[0.0, 1.0])),
    ]);
    (base, finetune)
}

#[test]
fn detected_prefix_is_shown_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let (base, finetune) = write_prefixed_pair(dir.path());
    let report = diff_paths(&finetune, &base, &file_options());
    let map = report.name_map.clone().unwrap();
    assert_eq!((map.a_prefix.as_str(), map.b_prefix.as_str(), map.source), ("", "bert.", MappingSource::Detected));
    assert_eq!(row(&report, "encoder.w").status, TensorStatus::Unchanged);
    assert_eq!(row(&report, "encoder.w").name_b.as_deref(), Some("bert.encoder.w"));
    let pooler = row(&report, "pooler.w");
    assert_eq!(pooler.cosine, Some(0.0));
    assert_eq!(pooler.diff_norm, Some(2f64.sqrt()));
    assert_eq!(row(&report, "cls.w").status, TensorStatus::Added);

    let unaligned = diff_paths(&finetune, &base, &DiffOptions { no_align: true, ..file_options() });
    assert_eq!(unaligned.name_map, None);
    assert_eq!(unaligned.summary.by_status.removed, 2);
    assert_eq!(unaligned.summary.by_status.added, 3);

    let explicit = diff_paths(&base, &finetune, &DiffOptions { map_prefix: Some("bert.=".into()), ..file_options() });
    assert_eq!(explicit.name_map.clone().unwrap().source, MappingSource::Option);
    assert_eq!(row(&explicit, "bert.pooler.w").status, TensorStatus::Changed);
    assert_eq!(row(&explicit, "cls.w").status, TensorStatus::Removed);
}

#[test]
fn commit_name_map_aligns_with_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let (base, finetune) = write_prefixed_pair(dir.path());
    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("pretrained", &base, &NoProgress).unwrap();
    common::commit(&store, &finetune, "pretrained", Some("bare")).unwrap();

    let report = diff(Some(&store), "bare", None, &DiffOptions::default()).unwrap();
    let map = report.name_map.clone().unwrap();
    assert_eq!((map.a_prefix.as_str(), map.b_prefix.as_str(), map.source), ("", "bert.", MappingSource::Commit));
    assert_eq!((report.a.kind, report.b.kind), (SideKind::Commit, SideKind::Base));
    assert_eq!(report.b.arg, "pretrained");
    assert_eq!(row(&report, "pooler.w").status, TensorStatus::Changed);

    // Base first: the stored map is turned around.
    let reversed = diff(Some(&store), "pretrained", Some("bare"), &DiffOptions::default()).unwrap();
    let map = reversed.name_map.clone().unwrap();
    assert_eq!((map.a_prefix.as_str(), map.b_prefix.as_str(), map.source), ("bert.", "", MappingSource::Commit));
    assert_eq!(row(&reversed, "bert.pooler.w").name_b.as_deref(), Some("pooler.w"));
}

fn lossless(base: &str, name: &str) -> CommitOptions {
    CommitOptions { base: base.into(), name: Some(name.into()), codec: CodecChoice::Lossless, ..Default::default() }
}

/// Serialises rows and summary, the parts that must not depend on where the bytes come from.
fn figures_json(report: &DiffReport) -> String {
    serde_json::to_string(&(&report.tensors, &report.summary)).unwrap()
}

#[test]
fn stored_commits_match_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (write_a(dir.path()), write_b(dir.path()));
    let c = write(&dir.path().join("c.safetensors"), &[
        tensor("w", Dtype::F32, &[2, 2], f32s(&[1.0, -2.0, 2.0, 4.0])),
        tensor("same", Dtype::F32, &[3], f32s(&[1.0, 2.0, 3.0])),
        tensor("ints", Dtype::I32, &[3], i32s(&[0, 2, 3])),
    ]);
    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("a", &a, &NoProgress).unwrap();
    store.commit(&b, &lossless("a", "b"), &NoProgress).unwrap();
    store.commit(&c, &lossless("a", "c"), &NoProgress).unwrap();

    // One argument: the commit against its base, equal to the diff of the two files.
    let stored = diff(Some(&store), "b", None, &DiffOptions::default()).unwrap();
    let files = diff_paths(&b, &a, &file_options());
    assert_eq!(figures_json(&stored), figures_json(&files));
    assert_eq!(stored.a.kind, SideKind::Commit);
    assert!(!stored.a.lossy);

    // Two commits, equal to the diff of their checkouts.
    let stored = diff(Some(&store), "b", Some("c"), &DiffOptions::default()).unwrap();
    let out_b = dir.path().join("out-b.safetensors");
    let out_c = dir.path().join("out-c.safetensors");
    checkout_bytes(&store, "b", &out_b);
    checkout_bytes(&store, "c", &out_c);
    let files = diff_paths(&out_b, &out_c, &file_options());
    assert_eq!(figures_json(&stored), figures_json(&files));
    // w: [1, 2, 2, 7] -> [1, -2, 2, 4], a difference of norm 5.
    assert_eq!(row(&stored, "w").relative_change, Some(5.0 / 58f64.sqrt()));

    // A stored side against a file: the file's tensors are hashed against the stored hashes.
    let mixed = diff(Some(&store), "b", Some(out_c.to_str().unwrap()), &file_options()).unwrap();
    assert_eq!(figures_json(&mixed), figures_json(&files));
}

#[test]
fn lossy_commit_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let (base, finetune) = wstore::synth::write_tiny_family(dir.path(), 7).unwrap();
    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("tiny", &base, &NoProgress).unwrap();
    let options = CommitOptions {
        base: "tiny".into(),
        name: Some("ft".into()),
        codec: CodecChoice::UltraDelta(Default::default()),
        ..Default::default()
    };
    let commit = store.commit(&finetune, &options, &NoProgress).unwrap();
    assert!(commit.lossy.is_some());

    let stored = diff(Some(&store), "ft", None, &DiffOptions::default()).unwrap();
    assert!(stored.a.lossy);
    assert!(!stored.b.lossy);
    // The fine-tune's extra head is in A only.
    assert_eq!(stored.summary.by_status.removed, 1);
    // The values compared are the reconstruction, which is what a checkout writes.
    let out = dir.path().join("ft-out.safetensors");
    checkout_bytes(&store, "ft", &out);
    let files = diff_paths(&out, &base, &file_options());
    assert_eq!(figures_json(&stored), figures_json(&files));
}

#[test]
fn one_argument_needs_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_a(dir.path());
    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("a", &a, &NoProgress).unwrap();
    let error = diff(Some(&store), "a", None, &DiffOptions::default()).unwrap_err();
    assert!(matches!(error, wstore::Error::InvalidArgument { .. }), "{error}");
    let error = diff(Some(&store), "no-such-ref", Some("a"), &DiffOptions::default()).unwrap_err();
    assert!(matches!(error, wstore::Error::Catalog(_)), "{error}");
}

#[test]
fn paths_are_refs_unless_files_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (write_a(dir.path()), write_b(dir.path()));
    let error = diff(None, a.to_str().unwrap(), Some(b.to_str().unwrap()), &DiffOptions::default()).unwrap_err();
    assert!(matches!(error, wstore::Error::InvalidArgument { .. }), "{error}");
    assert!(error.to_string().contains("no store is open"), "{error}");
}

/// Writes A and B for the CLI tests and returns their paths and a store path that does not exist.
fn cli_files(dir: &Path) -> (String, String, PathBuf) {
    let a = write_a(dir).to_str().unwrap().to_string();
    let b = write_b(dir).to_str().unwrap().to_string();
    (a, b, dir.join("no-store"))
}

#[test]
fn cli_exit_codes_follow_diff_convention() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, no_store) = cli_files(dir.path());
    let (a, b) = (a.as_str(), b.as_str());

    let same = wstore(&no_store, &["diff", a, a]);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stderr));
    let differs = wstore(&no_store, &["diff", a, b]);
    assert_eq!(differs.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&differs.stdout).contains("8 tensors: 1 unchanged, 3 changed, 1 added, 1 removed, 1 shape_changed, 1 dtype_changed"));
    // Two files need no store, and none is created.
    assert!(!no_store.exists());

    let missing = wstore(&no_store, &["diff", a, "no-such-ref"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("run `wstore init` first"));

    let store = dir.path().join("store");
    assert_eq!(wstore(&store, &["init"]).status.code(), Some(0));
    let unknown = wstore(&store, &["diff", a, "no-such-ref"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no-such-ref"));

    let bad_status = wstore(&store, &["diff", a, b, "--status", "moved"]);
    assert_eq!(bad_status.status.code(), Some(2));
}

#[test]
fn cli_json_applies_every_option() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, no_store) = cli_files(dir.path());
    let (a, b) = (a.as_str(), b.as_str());
    let output = wstore(&no_store, &[
        "diff", a, b, "--json", "--exclude", "fp8", "--include", "*", "--status", "changed,unchanged",
        "--sort", "relative", "--top", "1", "--atol", "0.5", "--rtol", "0",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["schema"], "wstore-diff-v1");
    assert_eq!(json["a"]["kind"], "file");
    assert_eq!(json["tolerance"]["atol"], 0.5);
    let names: Vec<&str> = json["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["w", "ints", "same"]);
    assert_eq!(json["summary"]["tensors"], 7);
    assert_eq!(json["summary"]["by_status"]["dtype_changed"], 1);
    assert_eq!(json["summary"]["top"].as_array().unwrap().len(), 1);
    assert_eq!(json["tensors"][0]["relative_change"], 0.6);
    assert_eq!(json["tensors"][0]["status"], "changed");
    assert_eq!(json["tensors"][0]["name_b"], serde_json::Value::Null);

    let mapped = wstore(&no_store, &["diff", a, b, "--json", "--map-prefix", "=x.", "--status", "added"]);
    let json: serde_json::Value = serde_json::from_slice(&mapped.stdout).unwrap();
    assert_eq!(json["name_map"]["source"], "option");
    assert_eq!(json["name_map"]["b_prefix"], "x.");

    let unaligned = wstore(&no_store, &["diff", a, b, "--json", "--no-align"]);
    let json: serde_json::Value = serde_json::from_slice(&unaligned.stdout).unwrap();
    assert_eq!(json["name_map"], serde_json::Value::Null);
}

#[test]
fn cli_one_argument_diffs_commit_with_base() {
    let dir = tempfile::tempdir().unwrap();
    let (base, finetune) = write_prefixed_pair(dir.path());
    let store = dir.path().join("store");
    assert_eq!(wstore(&store, &["init"]).status.code(), Some(0));
    assert_eq!(wstore(&store, &["base", "add", "pretrained", base.to_str().unwrap()]).status.code(), Some(0));
    let commit = wstore(&store, &["commit", finetune.to_str().unwrap(), "--base", "pretrained", "--name", "bare"]);
    assert_eq!(commit.status.code(), Some(0), "{}", String::from_utf8_lossy(&commit.stderr));

    let output = wstore(&store, &["diff", "bare"]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("A: commit bare ("), "{text}");
    assert!(text.contains("B: base pretrained ("), "{text}");
    assert!(text.contains(r#"names: A "" + x <-> B "bert." + x (the commit's name map)"#), "{text}");
}
