//! Matching A's tensors with B's by name, through a prefix rewrite when the names differ by
//! one (as `commit` aligns a fine-tune with its base).

use std::collections::HashMap;

use serde::Serialize;

use super::source::{Side, SideKind, TensorRef};
use crate::align::detect_prefix_map;
use crate::catalog::PrefixMap;
use crate::error::Error;

/// Origin of a name mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingSource {
    /// `--map-prefix`.
    Option,
    /// The name map stored with a commit, used when the other side is that commit's base.
    Commit,
    /// Detected from the two sides' tensor names.
    Detected,
}

/// A prefix rewrite between the sides: A's tensor `a_prefix + x` is compared with B's
/// tensor `b_prefix + x`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NameMapping {
    pub a_prefix: String,
    pub b_prefix: String,
    pub source: MappingSource,
}

impl MappingSource {
    /// Returns a phrase for human output.
    pub fn describe(self) -> &'static str {
        match self {
            MappingSource::Option => "from --map-prefix",
            MappingSource::Commit => "the commit's name map",
            MappingSource::Detected => "detected",
        }
    }
}

impl NameMapping {
    fn b_name(&self, a_name: &str) -> Option<String> {
        a_name.strip_prefix(&self.a_prefix).map(|rest| format!("{}{}", self.b_prefix, rest))
    }
}

/// Chooses the mapping: `--map-prefix` (`A_PREFIX=B_PREFIX`), else nothing with `--no-align`,
/// else a commit's stored map when the other side is its base, else a detected rewrite.
pub(crate) fn choose_mapping(
    a: &Side,
    b: &Side,
    a_tensors: &[TensorRef<'_>],
    b_tensors: &[TensorRef<'_>],
    map_prefix: Option<&str>,
    no_align: bool,
) -> Result<Option<NameMapping>, Error> {
    if let Some(text) = map_prefix {
        let map = PrefixMap::parse(text).ok_or_else(|| Error::InvalidPrefixMap { text: text.to_string() })?;
        return Ok(Some(NameMapping { a_prefix: map.finetune_prefix, b_prefix: map.base_prefix, source: MappingSource::Option }));
    }
    if no_align {
        return Ok(None);
    }
    let (a_info, b_info) = (a.info(), b.info());
    let a_over_own_base = a_info.kind == SideKind::Commit && b_info.kind == SideKind::Base && a_info.base == b_info.id;
    let b_over_own_base = b_info.kind == SideKind::Commit && a_info.kind == SideKind::Base && b_info.base == a_info.id;
    if a_over_own_base || b_over_own_base {
        let stored = if a_over_own_base { a.name_map() } else { b.name_map() };
        return Ok(stored.map(|map| {
            let (finetune, base) = (map.finetune_prefix.clone(), map.base_prefix.clone());
            // The stored map goes from the commit's names to its base's names.
            let (a_prefix, b_prefix) = if a_over_own_base { (finetune, base) } else { (base, finetune) };
            NameMapping { a_prefix, b_prefix, source: MappingSource::Commit }
        }));
    }
    let detected = detect_prefix_map(a_tensors.iter().map(|t| t.name), b_tensors.iter().map(|t| t.name));
    Ok(detected.map(|map| NameMapping {
        a_prefix: map.finetune_prefix,
        b_prefix: map.base_prefix,
        source: MappingSource::Detected,
    }))
}

/// Pairs tensors: each A tensor with B's tensor under the mapped name, else under its own
/// name, each B tensor used at most once. Returns (A index, B index) pairs in A's order, then
/// B's unmatched tensors in B's order.
pub(crate) fn pair_tensors(
    a_tensors: &[TensorRef<'_>],
    b_tensors: &[TensorRef<'_>],
    mapping: Option<&NameMapping>,
) -> Vec<(Option<usize>, Option<usize>)> {
    let b_index: HashMap<&str, usize> = b_tensors.iter().enumerate().map(|(i, t)| (t.name, i)).collect();
    let mut b_used = vec![false; b_tensors.len()];
    let mut pairs = Vec::with_capacity(a_tensors.len().max(b_tensors.len()));
    for (a_position, tensor) in a_tensors.iter().enumerate() {
        let mapped = mapping.and_then(|m| m.b_name(tensor.name));
        let candidates = mapped.as_deref().into_iter().chain(std::iter::once(tensor.name));
        let mut matched = None;
        for candidate in candidates {
            if let Some(&b_position) = b_index.get(candidate) {
                if !b_used[b_position] {
                    b_used[b_position] = true;
                    matched = Some(b_position);
                    break;
                }
            }
        }
        pairs.push((Some(a_position), matched));
    }
    for (b_position, used) in b_used.iter().enumerate() {
        if !used {
            pairs.push((None, Some(b_position)));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::source::Location;
    use crate::format::safetensors::Dtype;

    fn refs<'a>(names: &'a [&'a str]) -> Vec<TensorRef<'a>> {
        names
            .iter()
            .map(|name| TensorRef { name, dtype: Dtype::F32, shape: &[], location: Location::File { start: 0, end: 0 } })
            .collect()
    }

    #[test]
    fn mapped_names_pair_first() {
        let a = refs(&["encoder.w", "pooler.w", "head.w"]);
        let b = refs(&["bert.encoder.w", "bert.pooler.w", "cls.w"]);
        let mapping = NameMapping { a_prefix: String::new(), b_prefix: "bert.".into(), source: MappingSource::Option };
        let pairs = pair_tensors(&a, &b, Some(&mapping));
        assert_eq!(pairs, vec![(Some(0), Some(0)), (Some(1), Some(1)), (Some(2), None), (None, Some(2))]);
    }

    #[test]
    fn unmapped_names_fall_back_to_identity() {
        let a = refs(&["bert.w", "classifier.w"]);
        let b = refs(&["w", "classifier.w"]);
        let mapping = NameMapping { a_prefix: "bert.".into(), b_prefix: String::new(), source: MappingSource::Detected };
        assert_eq!(pair_tensors(&a, &b, Some(&mapping)), vec![(Some(0), Some(0)), (Some(1), Some(1))]);
        assert_eq!(pair_tensors(&a, &b, None), vec![(Some(0), None), (Some(1), Some(1)), (None, Some(0))]);
    }
}
