//! Fuzzes every object decoder with one input: the envelope, the lossless delta payload (against
//! a base of the length the payload declares, capped) and the UltraDelta payload. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wstore::codec::{lossless, ultradelta};
use wstore::format::object;
use wstore::format::safetensors::Dtype;

/// Largest base the target builds, so a declared length cannot exhaust memory.
const MAX_BASE_BYTES: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let _ = object::decode(data);

    if let Ok(info) = lossless::inspect(data) {
        let len = info.tensor_len();
        if len <= MAX_BASE_BYTES {
            let base = vec![0x5au8; len as usize];
            if let Ok(target) = lossless::decode(&base, data) {
                assert_eq!(target.len() as u64, len);
            }
        }
    }

    for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
        // The base length is checked against the object's shape before anything is decoded.
        let _ = ultradelta::reconstruct(&[0u8; 64], &dtype, data);
    }
    let _ = ultradelta::object_layout(data);
});
