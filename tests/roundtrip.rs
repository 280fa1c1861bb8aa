//! Commit and checkout round trips through the library, byte for byte.

mod common;

use common::*;
use wstore::catalog::TensorStorage;
use wstore::format::safetensors::Dtype;
use wstore::progress::NoProgress;
use wstore::store::{CheckoutOptions, CommitOptions};
use wstore::synth::{tiny_base, tiny_finetune, to_safetensors};
use wstore::{Store, Target};

#[test]
fn tiny_family_round_trips_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, finetune_path) = wstore::synth::write_tiny_family(dir.path(), 1).unwrap();
    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("tiny", &base_path, &NoProgress).unwrap();
    let report = commit(&store, &finetune_path, "tiny", Some("task-a")).unwrap();

    // Embedding, head and norms are unchanged; the eight projections changed; the score head is new.
    assert_eq!(report.tensors_by_kind.get("same_as_base"), Some(&7));
    assert_eq!(report.tensors_by_kind.get("lossless_delta"), Some(&14));
    assert_eq!(report.tensors_by_kind.get("whole"), Some(&1));
    assert!(report.stored_bytes < report.original_bytes);

    let original = std::fs::read(&finetune_path).unwrap();
    let restored = checkout_bytes(&store, "task-a", &dir.path().join("out.safetensors"));
    assert_eq!(blake3::hash(&restored), blake3::hash(&original));
    assert_eq!(sha256_hex(&restored), sha256_hex(&original));

    let base_back = checkout_bytes(&store, "tiny", &dir.path().join("base-out.safetensors"));
    assert_eq!(base_back, std::fs::read(&base_path).unwrap());
}

#[test]
fn same_weights_under_new_name_add_no_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, _) = wstore::synth::write_tiny_family(dir.path(), 2).unwrap();
    let store = Store::init(&dir.path().join("store")).unwrap();
    let first = store.add_base("a", &base_path, &NoProgress).unwrap();
    let before = store_state(&store).0;
    let second = store.add_base("b", &base_path, &NoProgress).unwrap();
    assert!(first.new_bytes > 0);
    assert_eq!(second.new_bytes, 0);
    assert!(second.already_present);
    assert_eq!(first.id, second.id);
    assert_eq!(store_state(&store).0, before);
    // The base id is the BLAKE3 of the file, as b3sum prints it.
    assert_eq!(first.id.to_hex(), blake3::hash(&std::fs::read(&base_path).unwrap()).to_hex().as_str());
    assert_eq!(store.catalog().resolve_base("b").unwrap(), first.id);
}

#[test]
fn identical_tensors_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let same = vec![3u8; 4096];
    let a = write(&dir.path().join("a.safetensors"), &[
        tensor("x", Dtype::U8, &[4096], same.clone()),
        tensor("y", Dtype::U8, &[4096], same.clone()),
    ]);
    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("a", &a, &NoProgress).unwrap();
    // Header object plus one tensor object: x and y share their bytes.
    assert_eq!(store.objects().storage().list().unwrap().len(), 2);
}

#[test]
fn every_dtype_and_odd_shapes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = Vec::new();
    let mut finetune = Vec::new();
    for (i, dtype) in Dtype::KNOWN.iter().enumerate() {
        let bits = dtype.bits().unwrap();
        let numel = 6u64;
        let len = (numel * bits).div_ceil(8) as usize;
        let bytes: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
        let mut changed = bytes.clone();
        changed[0] ^= 0x55;
        base.push(tensor(&format!("t{i}.{}", dtype.as_str()), dtype.clone(), &[2, 3], bytes));
        finetune.push(tensor(&format!("t{i}.{}", dtype.as_str()), dtype.clone(), &[2, 3], changed));
    }
    base.push(tensor("empty", Dtype::F32, &[0, 4], vec![]));
    base.push(tensor("scalar", Dtype::F32, &[], 1.5f32.to_le_bytes().to_vec()));
    finetune.push(tensor("empty", Dtype::F32, &[0, 4], vec![]));
    finetune.push(tensor("scalar", Dtype::F32, &[], 2.5f32.to_le_bytes().to_vec()));
    let meta = [("format".to_string(), "pt".to_string()), ("note".to_string(), "ünïcode".to_string())];
    let base_path = dir.path().join("base.safetensors");
    let finetune_path = dir.path().join("ft.safetensors");
    std::fs::write(&base_path, to_safetensors(&base, Some(&meta)).unwrap()).unwrap();
    std::fs::write(&finetune_path, to_safetensors(&finetune, Some(&meta)).unwrap()).unwrap();

    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("b", &base_path, &NoProgress).unwrap();
    commit(&store, &finetune_path, "b", Some("f")).unwrap();
    let restored = checkout_bytes(&store, "f", &dir.path().join("out.safetensors"));
    assert_eq!(restored, std::fs::read(&finetune_path).unwrap());
}

#[test]
fn unknown_dtype_is_kept_as_opaque_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // A header written by hand: a dtype this wstore does not know, 5 bytes of data.
    let json = br#"{"x":{"dtype":"F3_FUTURE","shape":[5],"data_offsets":[0,5]}}"#;
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json);
    file.extend_from_slice(&[1, 2, 3, 4, 5]);
    let path = dir.path().join("future.safetensors");
    std::fs::write(&path, &file).unwrap();
    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("future", &path, &NoProgress).unwrap();
    assert_eq!(checkout_bytes(&store, "future", &dir.path().join("out.safetensors")), file);
}

#[test]
fn header_padding_and_key_order_survive() {
    let dir = tempfile::tempdir().unwrap();
    // Keys out of offset order, extra spaces of padding, as other writers produce.
    let json = br#"{"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}        "#;
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json);
    file.extend_from_slice(&[10, 11, 20, 21]);
    let path = dir.path().join("odd.safetensors");
    std::fs::write(&path, &file).unwrap();
    let mut changed = file.clone();
    let n = changed.len();
    changed[n - 1] = 99;
    let ft = dir.path().join("odd-ft.safetensors");
    std::fs::write(&ft, &changed).unwrap();

    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("odd", &path, &NoProgress).unwrap();
    commit(&store, &ft, "odd", Some("odd-ft")).unwrap();
    assert_eq!(checkout_bytes(&store, "odd-ft", &dir.path().join("o.safetensors")), changed);
}

#[test]
fn missing_bert_prefix_is_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let base_tensors = tiny_base(5);
    let prefixed: Vec<_> = base_tensors
        .iter()
        .map(|t| wstore::synth::SynthTensor { name: format!("bert.{}", t.name), ..t.clone() })
        .collect();
    let finetune = tiny_finetune(&base_tensors, 6, 0.1);
    let base_path = write(&dir.path().join("base.safetensors"), &prefixed);
    let ft_path = write(&dir.path().join("ft.safetensors"), &finetune);

    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("bert", &base_path, &NoProgress).unwrap();
    let report = commit(&store, &ft_path, "bert", Some("ft")).unwrap();
    let map = report.name_map.unwrap();
    assert_eq!((map.finetune_prefix.as_str(), map.base_prefix.as_str(), map.detected), ("", "bert.", true));
    assert_eq!(report.tensors_by_kind.get("whole"), None);

    // The checkout carries the fine-tune's own names.
    let restored = checkout_bytes(&store, "ft", &dir.path().join("out.safetensors"));
    assert_eq!(restored, std::fs::read(&ft_path).unwrap());

    // With alignment off, nothing matches and the commit is rejected.
    let options = CommitOptions { base: "bert".into(), no_align: true, ..Default::default() };
    let error = store.commit(&ft_path, &options, &NoProgress).unwrap_err();
    assert!(matches!(error, wstore::Error::NoSharedTensors { .. }), "{error}");

    // An explicit map does the same as detection and is recorded as given.
    let options = CommitOptions { base: "bert".into(), map_prefix: Some("=bert.".into()), ..Default::default() };
    let report = store.commit(&ft_path, &options, &NoProgress).unwrap();
    assert!(!report.name_map.unwrap().detected);
}

#[test]
fn changed_shape_is_stored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(&dir.path().join("b.safetensors"), &[
        tensor("vocab", Dtype::U8, &[4, 2], vec![1; 8]),
        tensor("w", Dtype::U8, &[2], vec![5, 6]),
    ]);
    let ft = write(&dir.path().join("f.safetensors"), &[
        tensor("vocab", Dtype::U8, &[5, 2], vec![1; 10]),
        tensor("w", Dtype::I8, &[2], vec![5, 7]),
    ]);
    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("b", &base, &NoProgress).unwrap();
    let report = commit(&store, &ft, "b", Some("f")).unwrap();
    assert_eq!(report.tensors_by_kind.get("whole"), Some(&2));
    assert_eq!(checkout_bytes(&store, "f", &dir.path().join("o.safetensors")), std::fs::read(&ft).unwrap());
}

#[test]
fn model_directory_with_shards_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let base_tensors = tiny_base(9);
    let finetune_tensors = tiny_finetune(&base_tensors, 10, 0.05);
    for (name, tensors) in [("base-model", &base_tensors), ("ft-model", &finetune_tensors)] {
        let model = dir.path().join(name);
        std::fs::create_dir(&model).unwrap();
        let (first, second) = tensors.split_at(tensors.len() / 2);
        write(&model.join("model-00001-of-00002.safetensors"), first);
        write(&model.join("model-00002-of-00002.safetensors"), second);
        let mut weight_map = serde_json::Map::new();
        for t in first {
            weight_map.insert(t.name.clone(), "model-00001-of-00002.safetensors".into());
        }
        for t in second {
            weight_map.insert(t.name.clone(), "model-00002-of-00002.safetensors".into());
        }
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        std::fs::write(model.join("model.safetensors.index.json"), serde_json::to_vec_pretty(&index).unwrap()).unwrap();
        std::fs::write(model.join("config.json"), format!("{{\"model_type\": \"llama\", \"name\": \"{name}\"}}")).unwrap();
        std::fs::write(model.join("tokenizer.json"), "{\"version\": \"1.0\"}").unwrap();
    }

    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("base", &dir.path().join("base-model"), &NoProgress).unwrap();
    let report = commit(&store, &dir.path().join("ft-model"), "base", Some("ft")).unwrap();
    assert!(report.tensors_by_kind.contains_key("lossless_delta"));

    let out = dir.path().join("out");
    store.checkout(store.resolve("ft").unwrap(), &out, &CheckoutOptions::default(), &NoProgress).unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        assert_eq!(
            std::fs::read(out.join(file)).unwrap(),
            std::fs::read(dir.path().join("ft-model").join(file)).unwrap(),
            "{file}"
        );
    }

    // A sharded checkpoint given by its index file takes the index and its shards only.
    let store2 = Store::init(&dir.path().join("store2")).unwrap();
    let report = store2
        .add_base("by-index", &dir.path().join("base-model/model.safetensors.index.json"), &NoProgress)
        .unwrap();
    assert_eq!(report.tensors, base_tensors.len());
    let (snapshot, _) = store2.snapshot_of(Target::Base(report.id)).unwrap();
    assert_eq!(snapshot.files.len(), 3);
}

#[test]
fn committing_twice_on_a_ref_records_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, ft_path) = wstore::synth::write_tiny_family(dir.path(), 3).unwrap();
    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("tiny", &base_path, &NoProgress).unwrap();
    let first = commit(&store, &ft_path, "tiny", Some("task")).unwrap();
    let second = commit(&store, &ft_path, "tiny", Some("task")).unwrap();
    // The second commit of the same file writes no new objects.
    assert_eq!(second.new_bytes, 0);
    let record = store.catalog().get_commit(&second.commit).unwrap().unwrap();
    assert_eq!(record.parent, Some(first.commit));
    assert_eq!(store.catalog().get_ref("task").unwrap(), Some(second.commit));
    let log = store.log("task").unwrap();
    assert_eq!(log.len(), 3);

    // A parent other than the ref's commit would lose the ref's history: rejected.
    let other = commit(&store, &ft_path, "tiny", None).unwrap();
    let options = CommitOptions {
        base: "tiny".into(),
        name: Some("task".into()),
        parent: Some(other.commit.to_hex()),
        ..Default::default()
    };
    let error = store.commit(&ft_path, &options, &NoProgress).unwrap_err();
    assert!(error.to_string().contains("already names commit"), "{error}");

    // Lineage stays on one base: advancing the ref with a commit on another base is refused
    // and changes nothing.
    store.add_base("other-base", &ft_path, &NoProgress).unwrap();
    let across = commit(&store, &ft_path, "other-base", Some("task")).unwrap_err();
    assert!(matches!(across, wstore::Error::InvalidArgument { .. }), "{across}");
    assert!(across.to_string().contains("was committed on base"), "{across}");
    assert_eq!(store.catalog().get_ref("task").unwrap(), Some(second.commit));
}

#[test]
fn ids_resolve_by_unique_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, ft_path) = wstore::synth::write_tiny_family(dir.path(), 4).unwrap();
    let store = Store::init(&dir.path().join("store")).unwrap();
    let base = store.add_base("tiny", &base_path, &NoProgress).unwrap();
    let report = commit(&store, &ft_path, "tiny", None).unwrap();
    assert_eq!(store.resolve(&report.commit.to_hex()[..8]).unwrap(), Target::Commit(report.commit));
    assert_eq!(store.resolve(&base.id.to_hex()[..8]).unwrap(), Target::Base(base.id));
    assert!(store.resolve("abc").is_err());
}

#[test]
fn corrupt_object_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, ft_path) = wstore::synth::write_tiny_family(dir.path(), 8).unwrap();
    let store_dir = dir.path().join("store");
    let store = Store::init(&store_dir).unwrap();
    store.add_base("tiny", &base_path, &NoProgress).unwrap();
    let report = commit(&store, &ft_path, "tiny", Some("t")).unwrap();
    let record = store.catalog().get_commit(&report.commit).unwrap().unwrap();
    let delta = record
        .snapshot
        .tensors()
        .find_map(|t| match &t.storage {
            TensorStorage::LosslessDelta { object, .. } => Some(*object),
            _ => None,
        })
        .unwrap();
    let hex = delta.to_hex();
    let path = store_dir.join("objects").join(&hex[..2]).join(&hex[2..]);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();

    let out = dir.path().join("out.safetensors");
    let error = store
        .checkout(Target::Commit(report.commit), &out, &CheckoutOptions::default(), &NoProgress)
        .unwrap_err();
    assert!(matches!(error, wstore::Error::CorruptObject { .. } | wstore::Error::VerificationFailed { .. }), "{error}");
    assert!(!out.exists());
}

#[test]
fn lossy_commit_keeps_nan_tensor_exact() {
    let dir = tempfile::tempdir().unwrap();
    let values = |f: &dyn Fn(usize) -> f32| (0..64 * 64).flat_map(|i| f(i).to_le_bytes()).collect::<Vec<u8>>();
    let base = write(&dir.path().join("b.safetensors"), &[
        tensor("good.weight", Dtype::F32, &[64, 64], values(&|i| (i as f32).sin() * 0.02)),
        tensor("bad.weight", Dtype::F32, &[64, 64], values(&|i| (i as f32).cos() * 0.02)),
    ]);
    let ft = write(&dir.path().join("f.safetensors"), &[
        tensor("good.weight", Dtype::F32, &[64, 64], values(&|i| (i as f32).sin() * 0.021)),
        tensor("bad.weight", Dtype::F32, &[64, 64], values(&|i| if i == 5 { f32::NAN } else { (i as f32).cos() * 0.021 })),
    ]);
    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("b", &base, &NoProgress).unwrap();
    let options = CommitOptions {
        base: "b".into(),
        name: Some("f".into()),
        codec: wstore::store::CodecChoice::UltraDelta(Default::default()),
        ..Default::default()
    };
    let report = store.commit(&ft, &options, &NoProgress).unwrap();
    assert_eq!(report.tensors_by_kind.get("ultradelta"), Some(&1));
    assert_eq!(report.tensors_by_kind.get("lossless_delta"), Some(&1));
    let out = checkout_bytes(&store, "f", &dir.path().join("o.safetensors"));
    // The NaN tensor comes back bit for bit, NaN included.
    let original = std::fs::read(&ft).unwrap();
    let header_len = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let bad = &original[header_len + 64 * 64 * 4..];
    assert_eq!(&out[header_len + 64 * 64 * 4..], bad);
}

/// Explicit settings with a family: the second fine-tune's delta is larger, so the trace-norm
/// factor shrinks it, and the reported error is the error of what a checkout returns.
#[test]
fn explicit_error_includes_trace_norm_factor() {
    use wstore::codec::ultradelta::Settings;
    use wstore::store::{CodecChoice, LossyOptions};
    let dir = tempfile::tempdir().unwrap();
    let weights = |scale: f32| -> Vec<f32> { (0..64 * 64).map(|i| (i as f32 * 0.37).sin() * 0.02 + scale * (i as f32 * 1.3).cos()).collect() };
    let bytes = |values: &[f32]| values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let base_values = weights(0.0);
    let base = write(&dir.path().join("b.safetensors"), &[tensor("w", Dtype::F32, &[64, 64], bytes(&base_values))]);
    let store = Store::init(&dir.path().join("store")).unwrap();
    store.add_base("b", &base, &NoProgress).unwrap();

    let lossy = LossyOptions {
        settings: Settings { sparsity: Some(0.5), bits: Some(8), ..Settings::default() },
        accept_error: true,
        ..Default::default()
    };
    let mut reports = Vec::new();
    for (name, scale) in [("small", 0.002f32), ("large", 0.006)] {
        let path = write(&dir.path().join(format!("{name}.safetensors")), &[tensor("w", Dtype::F32, &[64, 64], bytes(&weights(scale)))]);
        let options = CommitOptions { base: "b".into(), name: Some(name.into()), codec: CodecChoice::UltraDelta(lossy.clone()), ..Default::default() };
        reports.push((store.commit(&path, &options, &NoProgress).unwrap(), weights(scale)));
    }

    let (report, finetuned) = &reports[1];
    let lossy_report = report.lossy.as_ref().unwrap();
    assert!(lossy_report.trace_norm_factor < 0.9, "factor {}", lossy_report.trace_norm_factor);

    let out = checkout_bytes(&store, "large", &dir.path().join("o.safetensors"));
    let rebuilt: Vec<f32> = out[out.len() - 64 * 64 * 4..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let (mut err, mut norm) = (0f64, 0f64);
    for (r, f) in rebuilt.iter().zip(finetuned) {
        err += (f64::from(*r) - f64::from(*f)).powi(2);
        norm += f64::from(*f).powi(2);
    }
    let measured = (err / norm).sqrt();
    assert!((lossy_report.max_rel_error - measured).abs() <= 1e-9 * measured, "{} vs {measured}", lossy_report.max_rel_error);
}
