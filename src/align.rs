//! Aligning fine-tune tensor names with base tensor names that differ by a prefix, as when
//! a bare `BertModel` saves `encoder.…` and its pretraining checkpoint `bert.encoder.…`.

use std::collections::{HashMap, HashSet};

use crate::catalog::PrefixMap;

impl PrefixMap {
    /// Parses the `--map-prefix FINETUNE=BASE` form; either side may be empty.
    pub fn parse(text: &str) -> Option<PrefixMap> {
        let (finetune_prefix, base_prefix) = text.split_once('=')?;
        Some(PrefixMap {
            finetune_prefix: finetune_prefix.to_string(),
            base_prefix: base_prefix.to_string(),
            detected: false,
        })
    }

    /// Returns the base name a fine-tune tensor is compared with, if the name carries the prefix.
    pub fn base_name(&self, finetune_name: &str) -> Option<String> {
        finetune_name
            .strip_prefix(&self.finetune_prefix)
            .map(|rest| format!("{}{}", self.base_prefix, rest))
    }
}

/// Finds the prefix rewrite that matches the most fine-tune names to base names. Returns
/// None when names already match best as they are. Prefixes end at a `.` boundary, and a
/// rewrite must match more names than the identity does.
pub fn detect_prefix_map<'a>(
    finetune_names: impl IntoIterator<Item = &'a str>,
    base_names: impl IntoIterator<Item = &'a str>,
) -> Option<PrefixMap> {
    let finetune: Vec<&str> = finetune_names.into_iter().collect();
    let base: HashSet<&str> = base_names.into_iter().collect();
    let identity_matches = finetune.iter().filter(|n| base.contains(*n)).count();

    // Every base name indexed by each of its dot-boundary suffixes, with the prefix cut off.
    let mut base_by_suffix: HashMap<&str, Vec<&str>> = HashMap::new();
    for name in &base {
        for (i, _) in name.match_indices('.') {
            base_by_suffix.entry(&name[i + 1..]).or_default().push(&name[..i + 1]);
        }
    }

    let mut votes: HashMap<(String, String), usize> = HashMap::new();
    for name in &finetune {
        // The base has an extra prefix: `bert.` + `encoder.x` in the base.
        if let Some(prefixes) = base_by_suffix.get(name) {
            for prefix in prefixes {
                *votes.entry((String::new(), prefix.to_string())).or_default() += 1;
            }
        }
        // The fine-tune has an extra prefix: `model.0.` + `encoder.x` in the fine-tune.
        for (i, _) in name.match_indices('.') {
            if base.contains(&name[i + 1..]) {
                *votes.entry((name[..i + 1].to_string(), String::new())).or_default() += 1;
            }
        }
    }

    // Ties break on the shorter, then lexically smaller prefixes, so the result is stable.
    let best = votes
        .into_iter()
        .max_by(|(a_key, a_count), (b_key, b_count)| {
            a_count
                .cmp(b_count)
                .then_with(|| (b_key.0.len() + b_key.1.len()).cmp(&(a_key.0.len() + a_key.1.len())))
                .then_with(|| b_key.cmp(a_key))
        })?;
    let ((finetune_prefix, base_prefix), count) = best;
    // A rewrite also keeps every name that matched as it was only if that name carries the
    // prefix, so compare whole outcomes, not just the rewrite's own votes.
    let map = PrefixMap { finetune_prefix, base_prefix, detected: true };
    let rewritten = finetune
        .iter()
        .filter(|n| map.base_name(n).is_some_and(|b| base.contains(b.as_str())))
        .count();
    (count > 0 && rewritten > identity_matches).then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&'static str]) -> Vec<&'static str> {
        list.to_vec()
    }

    #[test]
    fn detects_missing_bert_prefix() {
        let base = names(&["bert.encoder.layer.0.w", "bert.encoder.layer.1.w", "bert.pooler.w", "cls.predictions.bias"]);
        let finetune = names(&["encoder.layer.0.w", "encoder.layer.1.w", "pooler.w"]);
        let map = detect_prefix_map(finetune, base).unwrap();
        assert_eq!(map.finetune_prefix, "");
        assert_eq!(map.base_prefix, "bert.");
        assert!(map.detected);
    }

    #[test]
    fn detects_extra_finetune_prefix() {
        let base = names(&["encoder.a", "encoder.b", "embeddings.c"]);
        let finetune = names(&["model.0.auto_model.encoder.a", "model.0.auto_model.encoder.b", "model.0.auto_model.embeddings.c"]);
        let map = detect_prefix_map(finetune, base).unwrap();
        assert_eq!(map.finetune_prefix, "model.0.auto_model.");
        assert_eq!(map.base_prefix, "");
    }

    #[test]
    fn matching_names_need_no_map() {
        let base = names(&["bert.a.w", "bert.b.w", "cls.w"]);
        let finetune = names(&["bert.a.w", "bert.b.w", "classifier.w"]);
        assert_eq!(detect_prefix_map(finetune, base), None);
    }

    #[test]
    fn unrelated_names_give_no_map() {
        assert_eq!(detect_prefix_map(names(&["x.y"]), names(&["a.b"])), None);
    }

    #[test]
    fn explicit_map_rewrites_names() {
        let map = PrefixMap::parse("=bert.").unwrap();
        assert_eq!(map.base_name("encoder.w").as_deref(), Some("bert.encoder.w"));
        let map = PrefixMap::parse("model.=").unwrap();
        assert_eq!(map.base_name("model.x").as_deref(), Some("x"));
        assert_eq!(map.base_name("other.x"), None);
        assert_eq!(PrefixMap::parse("no-equals-sign"), None);
    }
}
