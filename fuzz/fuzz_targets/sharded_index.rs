//! Fuzzes the sharded-checkpoint index parser: no panic, and every shard it accepts is a plain
//! file name that cannot leave the index's directory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wstore::checkpoint::parse_index;

fuzz_target!(|text: &[u8]| {
    let Ok(shards) = parse_index(text) else {
        return;
    };
    assert!(!shards.is_empty());
    for shard in shards {
        assert!(!shard.is_empty());
        assert!(!shard.contains('/'), "{shard:?}");
        assert!(!shard.contains('\0'), "{shard:?}");
        assert!(shard != ".", "{shard:?}");
        assert!(shard != "..", "{shard:?}");
    }
});
