//! Each malformed input gets an error naming the file and the problem, and leaves the store
//! exactly as it was.

mod common;

use std::path::{Path, PathBuf};

use common::{commit, store_state, tensor, write};
use wstore::format::safetensors::Dtype;
use wstore::progress::NoProgress;
use wstore::store::CheckoutOptions;
use wstore::{Error, Store};

/// Creates a store holding one small base named "base", in a temporary directory.
fn setup() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let base = write(&dir.path().join("base.safetensors"), &[
        tensor("a", Dtype::F32, &[2], vec![0, 0, 128, 63, 0, 0, 0, 64]),
        tensor("b", Dtype::U8, &[3], vec![1, 2, 3]),
    ]);
    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("base", &base, &NoProgress).unwrap();
    (dir, store)
}

fn raw_file(dir: &Path, name: &str, header: &[u8], data: &[u8]) -> PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(data);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Commits `path` and adds it as a base; both must fail with an invalid-safetensors error
/// naming the file, and the store must not change.
fn assert_rejected(dir: &Path, store: &Store, path: &Path, expected_words: &str) {
    let before = store_state(store);
    let commit_error = commit(store, path, "base", Some("bad")).unwrap_err();
    let base_error = store.add_base("bad-base", path, &NoProgress).unwrap_err();
    for error in [&commit_error, &base_error] {
        assert!(matches!(error, Error::InvalidSafetensors { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(expected_words), "expected {expected_words:?} in {message}");
    }
    let _ = dir;
    drop_and_compare(store, before);
}

fn drop_and_compare(store: &Store, before: (Vec<(String, u64)>, String)) {
    let (files, listing) = store_state(store);
    assert_eq!(files, before.0);
    assert_eq!(listing, before.1);
}

#[test]
fn empty_file() {
    let (dir, store) = setup();
    let path = dir.path().join("empty.safetensors");
    std::fs::write(&path, b"").unwrap();
    assert_rejected(dir.path(), &store, &path, "shorter than");
}

#[test]
fn truncated_file() {
    let (dir, store) = setup();
    let path = raw_file(dir.path(), "t.safetensors", br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &[0; 5]);
    assert_rejected(dir.path(), &store, &path, "data section");
}

#[test]
fn header_length_beyond_file() {
    let (dir, store) = setup();
    let path = dir.path().join("beyond.safetensors");
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&path, bytes).unwrap();
    assert_rejected(dir.path(), &store, &path, "beyond");
}

#[test]
fn header_over_cap() {
    let (dir, store) = setup();
    let path = dir.path().join("huge.safetensors");
    let mut bytes = (200u64 << 20).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&path, bytes).unwrap();
    assert_rejected(dir.path(), &store, &path, "100000000");
}

#[test]
fn header_not_json() {
    let (dir, store) = setup();
    let path = raw_file(dir.path(), "nj.safetensors", b"{not json at all}", &[]);
    assert_rejected(dir.path(), &store, &path, "JSON");
}

#[test]
fn duplicate_tensor_names() {
    let (dir, store) = setup();
    let header = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
    let path = raw_file(dir.path(), "dup.safetensors", header, &[1, 2]);
    assert_rejected(dir.path(), &store, &path, "more than once");
}

#[test]
fn gapped_offsets() {
    let (dir, store) = setup();
    let header = br#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}"#;
    let path = raw_file(dir.path(), "gap.safetensors", header, &[1, 2, 3]);
    assert_rejected(dir.path(), &store, &path, "gap");
}

#[test]
fn overlapping_offsets() {
    let (dir, store) = setup();
    let header = br#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#;
    let path = raw_file(dir.path(), "overlap.safetensors", header, &[1, 2, 3]);
    assert_rejected(dir.path(), &store, &path, "overlap");
}

#[test]
fn byte_range_not_matching_shape_and_dtype() {
    let (dir, store) = setup();
    let header = br#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    let path = raw_file(dir.path(), "size.safetensors", header, &[0; 8]);
    assert_rejected(dir.path(), &store, &path, "12");
}

#[test]
fn shape_product_overflows() {
    let (dir, store) = setup();
    let header = br#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#;
    let path = raw_file(dir.path(), "overflow.safetensors", header, &[0; 8]);
    assert_rejected(dir.path(), &store, &path, "overflow");
}

#[test]
fn unknown_ref_on_checkout() {
    let (dir, store) = setup();
    let error = store.resolve("no-such-ref").unwrap_err();
    assert!(matches!(error, Error::Catalog(wstore::catalog::CatalogError::NotFound { .. })), "{error:?}");
    assert!(error.to_string().contains("no-such-ref"));
    let _ = (dir, CheckoutOptions::default());
}

#[test]
fn unknown_base_on_commit() {
    let (dir, store) = setup();
    let before = store_state(&store);
    let ft = write(&dir.path().join("ft.safetensors"), &[tensor("a", Dtype::F32, &[2], vec![0; 8])]);
    let error = commit(&store, &ft, "llama-nope", Some("x")).unwrap_err();
    assert!(matches!(error, Error::Catalog(wstore::catalog::CatalogError::NotFound { kind: "base", .. })), "{error:?}");
    assert!(error.to_string().contains("llama-nope"));
    drop_and_compare(&store, before);
}

#[test]
fn finetune_sharing_no_tensor() {
    let (dir, store) = setup();
    let before = store_state(&store);
    let ft = write(&dir.path().join("other.safetensors"), &[tensor("zzz", Dtype::F32, &[2], vec![0; 8])]);
    let error = commit(&store, &ft, "base", Some("x")).unwrap_err();
    assert!(matches!(error, Error::NoSharedTensors { .. }), "{error:?}");
    assert!(error.to_string().contains("other.safetensors"));
    drop_and_compare(&store, before);
}

#[test]
fn missing_input_file() {
    let (dir, store) = setup();
    let error = commit(&store, &dir.path().join("nope.safetensors"), "base", None).unwrap_err();
    assert!(matches!(error, Error::Io { .. }), "{error:?}");
    assert!(error.to_string().contains("nope.safetensors"));
}

#[test]
fn invalid_ref_name() {
    let (dir, store) = setup();
    let ft = write(&dir.path().join("ft.safetensors"), &[tensor("a", Dtype::F32, &[2], vec![0; 8])]);
    let error = commit(&store, &ft, "base", Some("../escape")).unwrap_err();
    assert!(matches!(error, Error::InvalidName { .. }), "{error:?}");
}

#[test]
fn symlink_out_of_model_directory() {
    let (dir, store) = setup();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(dir.path().join("secret.txt"), b"outside").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), model.join("config.json")).unwrap();
    let before = store_state(&store);
    let error = store.add_base("m", &model, &NoProgress).unwrap_err();
    assert!(matches!(error, Error::UnsafePath { .. }), "{error:?}");
    drop_and_compare(&store, before);
}

#[test]
fn index_naming_a_shard_outside() {
    let (dir, store) = setup();
    let model = dir.path().join("sharded");
    std::fs::create_dir(&model).unwrap();
    let index = serde_json::json!({"weight_map": {"a": "../base.safetensors"}});
    let index_path = model.join("model.safetensors.index.json");
    std::fs::write(&index_path, index.to_string()).unwrap();
    let error = store.add_base("m", &index_path, &NoProgress).unwrap_err();
    assert!(matches!(error, Error::InvalidIndex { .. }), "{error:?}");
    assert!(error.to_string().contains("../base.safetensors"));
}

#[test]
fn input_changed_during_commit_is_detected() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir.path().join("m.safetensors"), &[tensor("a", Dtype::U8, &[4], vec![1, 2, 3, 4])]);
    let checkpoint = wstore::checkpoint::Checkpoint::open(&path).unwrap();
    assert!(checkpoint.verify_unchanged().is_ok());
    // Overwrite one byte in place, as a concurrent writer would. The shared mapping reflects it.
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::End(-1)).unwrap();
    file.write_all(&[9]).unwrap();
    file.sync_all().unwrap();
    let error = checkpoint.verify_unchanged().unwrap_err();
    assert!(matches!(error, Error::InputChanged { .. }), "{error:?}");
}

#[test]
fn names_cannot_be_shared_or_moved() {
    let (dir, store) = setup();
    let other = write(&dir.path().join("other.safetensors"), &[tensor("a", Dtype::F32, &[2], vec![7; 8])]);
    let error = store.add_base("base", &other, &NoProgress).unwrap_err();
    assert!(matches!(error, Error::NameTaken { .. }), "{error:?}");

    let ft = write(&dir.path().join("ft.safetensors"), &[tensor("a", Dtype::F32, &[2], vec![1; 8])]);
    let error = commit(&store, &ft, "base", Some("base")).unwrap_err();
    assert!(matches!(error, Error::NameTaken { .. }), "{error:?}");
    commit(&store, &ft, "base", Some("task")).unwrap();
    let error = store.add_base("task", &other, &NoProgress).unwrap_err();
    assert!(matches!(error, Error::NameTaken { .. }), "{error:?}");
}

#[test]
fn hex_looking_ref_name() {
    let (dir, store) = setup();
    let ft = write(&dir.path().join("ft.safetensors"), &[tensor("a", Dtype::F32, &[2], vec![1; 8])]);
    let error = commit(&store, &ft, "base", Some("d98e")).unwrap_err();
    assert!(matches!(error, Error::InvalidName { .. }), "{error:?}");
}

#[test]
fn checkout_into_store_is_rejected() {
    let (dir, store) = setup();
    let target = store.resolve("base").unwrap();
    let out = store.root().join("inside.safetensors");
    let error = store.checkout(target, &out, &CheckoutOptions::default(), &NoProgress).unwrap_err();
    assert!(matches!(error, Error::UnsafePath { .. }), "{error:?}");
    assert!(!out.exists());
    let _ = dir;
}

#[test]
fn shard_symlink_outside_directory() {
    let (dir, store) = setup();
    let model = dir.path().join("linked");
    std::fs::create_dir(&model).unwrap();
    std::os::unix::fs::symlink(dir.path().join("base.safetensors"), model.join("s.safetensors")).unwrap();
    let index = serde_json::json!({"weight_map": {"a": "s.safetensors"}});
    let index_path = model.join("model.safetensors.index.json");
    std::fs::write(&index_path, index.to_string()).unwrap();
    let error = store.add_base("m", &index_path, &NoProgress).unwrap_err();
    assert!(matches!(error, Error::UnsafePath { .. }), "{error:?}");
}

#[test]
fn missing_catalog_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("objects")).unwrap();
    let error = Store::open(dir.path()).unwrap_err();
    assert!(matches!(error, Error::StoreMissing { .. }), "{error:?}");
    assert!(!dir.path().join("catalog").exists());
}

#[test]
fn base_flag_naming_a_commit() {
    let (dir, store) = setup();
    let ft = write(&dir.path().join("ft.safetensors"), &[tensor("a", Dtype::F32, &[2], vec![1; 8])]);
    commit(&store, &ft, "base", Some("task")).unwrap();
    let error = commit(&store, &ft, "task", None).unwrap_err();
    assert!(matches!(error, Error::InvalidArgument { .. }), "{error:?}");
    assert!(error.to_string().contains("names a commit, not a base"), "{error}");
}

#[test]
fn deeply_nested_header() {
    let (dir, store) = setup();
    let depth = 100_000;
    let header = format!(r#"{{"a":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
    let path = raw_file(dir.path(), "nested.safetensors", header.as_bytes(), &[]);
    assert_rejected(dir.path(), &store, &path, "\"a\"");
}

/// Writes `index` as a sharded checkpoint's index file in a new directory `name`.
fn index_file(dir: &Path, name: &str, index: &[u8]) -> PathBuf {
    let model = dir.join(name);
    std::fs::create_dir(&model).unwrap();
    let index_path = model.join("model.safetensors.index.json");
    std::fs::write(&index_path, index).unwrap();
    index_path
}

#[test]
fn deeply_nested_index() {
    let (dir, store) = setup();
    let depth = 100_000;
    let index = format!(r#"{{"weight_map":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
    let index_path = index_file(dir.path(), "nested", index.as_bytes());
    let before = store_state(&store);
    let error = store.add_base("m", &index_path, &NoProgress).unwrap_err();
    assert!(matches!(error, Error::InvalidIndex { .. }), "{error:?}");
    assert!(error.to_string().contains("not valid JSON"), "{error}");
    drop_and_compare(&store, before);
}

#[test]
fn index_over_size_cap() {
    let (dir, store) = setup();
    let index_path = index_file(dir.path(), "huge", b"");
    // A sparse file: its length is checked before any byte is read.
    std::fs::File::options().write(true).open(&index_path).unwrap().set_len(wstore::checkpoint::MAX_INDEX_BYTES + 1).unwrap();
    let before = store_state(&store);
    let error = store.add_base("m", &index_path, &NoProgress).unwrap_err();
    assert!(matches!(error, Error::InvalidIndex { .. }), "{error:?}");
    assert!(error.to_string().contains("cap"), "{error}");
    drop_and_compare(&store, before);
}

#[test]
fn index_shard_names_that_escape() {
    let (dir, store) = setup();
    let before = store_state(&store);
    for (number, shard) in ["/etc/passwd", "sub/s.safetensors", "s\u{0}.safetensors", "..", "../base.safetensors"].iter().enumerate() {
        let index = serde_json::json!({"weight_map": {"a": shard}}).to_string();
        let index_path = index_file(dir.path(), &format!("escape-{number}"), index.as_bytes());
        let error = store.add_base("m", &index_path, &NoProgress).unwrap_err();
        assert!(matches!(error, Error::InvalidIndex { .. }), "{shard:?}: {error:?}");
        assert!(error.to_string().contains("not a plain file name"), "{shard:?}: {error}");
    }
    drop_and_compare(&store, before);
}

#[test]
fn symlinked_subdirectory_outside() {
    let (dir, store) = setup();
    let model = dir.path().join("model-with-link");
    std::fs::create_dir(&model).unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), b"outside").unwrap();
    std::os::unix::fs::symlink(&outside, model.join("linked")).unwrap();
    let before = store_state(&store);
    let error = store.add_base("m", &model, &NoProgress).unwrap_err();
    assert!(matches!(error, Error::UnsafePath { .. }), "{error:?}");
    assert!(error.to_string().contains("outside the model directory"), "{error}");
    drop_and_compare(&store, before);
}
