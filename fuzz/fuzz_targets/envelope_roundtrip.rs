//! Fuzzes the object envelope with arbitrary content: what `encode` writes, `decode` returns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wstore::format::object::{decode, encode, ObjectKind};

fuzz_target!(|content: &[u8]| {
    let file = encode(ObjectKind::Raw, content, 1);
    let (header, back) = decode(&file).expect("an encoded object decodes");
    assert_eq!(header.content_len, content.len() as u64);
    assert_eq!(back, content);
});
