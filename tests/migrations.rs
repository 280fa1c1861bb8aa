//! Opening stores written by older catalog schemas.

mod common;

use wstore::catalog::{apply_migrations, Catalog, LATEST_SCHEMA};
use wstore::progress::NoProgress;
use wstore::Store;

#[test]
fn schema_1_store_opens_and_gains_index() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, ft_path) = wstore::synth::write_tiny_family(dir.path(), 11).unwrap();
    let store_dir = dir.path().join("store");
    let (base_id, commit_id) = {
        let store = Store::init(&store_dir).unwrap();
        let base = store.add_base("tiny", &base_path, &NoProgress).unwrap();
        let report = common::commit(&store, &ft_path, "tiny", Some("task")).unwrap();
        (base.id, report.commit)
    };

    // Rewrite the catalog into the schema-1 layout: the same trees and records, without the
    // commits_by_base index that schema 2 added, and the version key at 1.
    {
        let db = sled::open(store_dir.join("catalog")).unwrap();
        assert!(db.drop_tree("commits_by_base").unwrap());
        db.open_tree("meta").unwrap().insert("schema_version", &1u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }

    let store = Store::open(&store_dir).unwrap();
    assert_eq!(store.catalog().schema_version().unwrap(), LATEST_SCHEMA);
    assert_eq!(store.catalog().commits_of_base(&base_id).unwrap(), vec![commit_id]);
    let out = dir.path().join("out.safetensors");
    assert_eq!(common::checkout_bytes(&store, "task", &out), std::fs::read(&ft_path).unwrap());
}

#[test]
fn newer_schema_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        apply_migrations(&db).unwrap();
        db.open_tree("meta").unwrap().insert("schema_version", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let error = Catalog::open(dir.path()).unwrap_err();
    assert!(error.to_string().contains("newer than this wstore supports"), "{error}");
}

#[test]
fn fresh_catalog_is_at_latest_schema() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    assert_eq!(catalog.schema_version().unwrap(), LATEST_SCHEMA);
}
