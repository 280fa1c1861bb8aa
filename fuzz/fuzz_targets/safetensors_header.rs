//! Fuzzes the safetensors header parser with whole files.
//!
//! Besides catching panics, it checks what `parse` promises on success. The tensors tile the
//! data section from offset 0 to the end of the file. The header bytes alone, given the data
//! length, parse to the same header (`parse_header`, used on stored header objects). Writing the header again from the parsed
//! tensors, in file order, reproduces the same tensors and metadata.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wstore::format::safetensors::{parse, parse_header, write_header};

fuzz_target!(|file: &[u8]| {
    let Ok(header) = parse(file) else {
        return;
    };

    assert_eq!(header.data_start() + header.data_len(), file.len() as u64);
    let mut covered_to = 0;
    for tensor in header.by_offset() {
        assert_eq!(
            tensor.start, covered_to,
            "tensor {:?} does not tile",
            tensor.name
        );
        assert!(tensor.numel().is_some());
        covered_to = tensor.end;
    }
    assert_eq!(covered_to, header.data_len());
    let header_end = usize::try_from(header.data_start()).expect("data start fits usize");
    let apart = parse_header(&file[..header_end], header.data_len()).expect("the header alone must parse");
    assert_eq!(apart, header);

    // Dtype::Other has no known element size, so write_header rejects it.
    if header
        .tensors
        .iter()
        .any(|tensor| tensor.dtype.bits().is_none())
    {
        return;
    }
    let in_file_order: Vec<_> = header
        .by_offset()
        .into_iter()
        .map(|tensor| {
            (
                tensor.name.clone(),
                tensor.dtype.clone(),
                tensor.shape.clone(),
            )
        })
        .collect();
    let (mut rewritten, _) = write_header(&in_file_order, header.metadata.as_deref())
        .expect("a parsed header must be writable");
    let data_start = usize::try_from(header.data_start()).expect("data start fits usize");
    rewritten.extend_from_slice(&file[data_start..]);
    let reparsed = parse(&rewritten).expect("a rewritten header must parse");
    assert_eq!(reparsed.metadata, header.metadata);
    let original: Vec<_> = header.by_offset().into_iter().cloned().collect();
    let again: Vec<_> = reparsed.by_offset().into_iter().cloned().collect();
    assert_eq!(again, original);
});
