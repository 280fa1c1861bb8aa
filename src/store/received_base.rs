//! Checks a base record received from another store before it enters the catalog.
//!
//! A base id is the BLAKE3 of the checkpoint, so it names the same weights on every store,
//! and commits made later on this store build on whatever the record lists. `check_bundle`
//! already ties the id to the recorded file hashes. This module ties the file hashes to the
//! objects: a record that lists the right hashes but other tensor objects would otherwise
//! pass, and a range read, which checks each tensor only against its own entry, would serve
//! those other tensors. The check reads every object of the base once.

use super::Store;
use crate::catalog::{BaseRecord, FileEntry, SafetensorsFile, TensorStorage};
use crate::error::Error;
use crate::format::safetensors;

impl Store {
    /// Checks that every file of `record` rebuilds from its objects to the recorded hash and
    /// length, and that each safetensors header lists exactly the record's tensor entries.
    /// A mismatch is `Error::InvalidBundle`; a failed read keeps its own error.
    pub(super) fn check_received_base(&self, record: &BaseRecord) -> Result<(), Error> {
        for file in &record.snapshot.files {
            let invalid = |detail: String| Error::InvalidBundle {
                detail: format!("base {} file {:?} does not match its objects: {detail}", record.id, file.path()),
            };
            match file {
                FileEntry::Plain(plain) => {
                    let bytes = self.objects.get(&plain.object)?.len() as u64;
                    if bytes != plain.bytes {
                        return Err(invalid(format!("its object holds {bytes} bytes, not the {} recorded", plain.bytes)));
                    }
                }
                FileEntry::Safetensors(st) => self.check_safetensors_entries(st, &invalid)?,
            }
        }
        Ok(())
    }

    fn check_safetensors_entries(&self, st: &SafetensorsFile, invalid: &dyn Fn(String) -> Error) -> Result<(), Error> {
        if let Some(entry) = st.tensors.iter().find(|t| !matches!(t.storage, TensorStorage::Whole { .. })) {
            let kind = entry.storage.kind_name();
            return Err(invalid(format!("tensor {:?} is stored as {kind}, but a base holds whole tensors only", entry.name)));
        }
        let header = self.objects.get(&st.header_object)?;
        let data_len = st.tensors.iter().try_fold(0u64, |sum, t| sum.checked_add(t.len));
        let data_len = data_len.ok_or_else(|| invalid("its tensor lengths overflow u64".into()))?;
        let parsed = safetensors::parse_header(&header, data_len).map_err(|e| invalid(format!("header object: {e}")))?;

        // The record lists tensors in file order, the order `by_offset` returns.
        let listed = parsed.by_offset();
        if listed.len() != st.tensors.len() {
            return Err(invalid(format!("the header lists {} tensors, the record {}", listed.len(), st.tensors.len())));
        }
        for (info, entry) in listed.iter().zip(&st.tensors) {
            let same = info.name == entry.name
                && info.dtype.as_str() == entry.dtype
                && info.shape == entry.shape
                && info.start == entry.start
                && info.len() == entry.len;
            if !same {
                return Err(invalid(format!("tensor {:?} of the header differs from entry {:?} of the record", info.name, entry.name)));
            }
        }
        let file_bytes = header.len() as u64 + data_len;
        if file_bytes != st.bytes {
            return Err(invalid(format!("it rebuilds to {file_bytes} bytes, not the {} recorded", st.bytes)));
        }

        // Each tensor is checked against its entry's hash as it is rebuilt, then the whole.
        let rebuilt = match self.stream_safetensors(st, &mut |_| Ok(())) {
            Ok(rebuilt) => rebuilt,
            Err(Error::VerificationFailed { what, expected, actual }) => {
                return Err(invalid(format!("{what} rebuilds to BLAKE3 {actual}, not the {expected} recorded")));
            }
            Err(other) => return Err(other),
        };
        if rebuilt != st.file_hash {
            return Err(invalid(format!("it rebuilds to BLAKE3 {rebuilt}, not the {} recorded", st.file_hash)));
        }
        Ok(())
    }
}
