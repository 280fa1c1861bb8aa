//! Removing refs, commits and bases from the catalog. Objects stay until `gc`.

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;

use super::Store;
use crate::catalog::{CatalogError, CommitRecord, Removal};
use crate::error::Error;
use crate::id::ObjectId;

/// Record of the catalog entries `remove_base` deleted.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BaseRemoval {
    pub base: ObjectId,
    /// Base names deleted.
    pub names: Vec<String>,
    /// False when only a name was deleted because other names still point at the base.
    pub base_removed: bool,
    /// Commits deleted with the base (with `with_commits`).
    pub commits: Vec<ObjectId>,
    /// Refs deleted with those commits.
    pub refs: Vec<String>,
}

impl Store {
    /// Deletes the ref `name` and returns the commit it named. The commit record stays.
    pub fn remove_ref(&self, name: &str) -> Result<ObjectId, Error> {
        let _exclusive = self.lock_exclusive();
        let commit = self
            .catalog
            .get_ref(name)?
            .ok_or_else(|| CatalogError::NotFound { kind: "ref", text: name.to_string() })?;
        self.catalog.remove(&Removal { refs: vec![name.to_string()], ..Default::default() })?;
        tracing::info!(ref_name = name, %commit, "ref removed");
        Ok(commit)
    }

    /// Deletes the commit record `text` names (a commit id prefix, or a ref) and returns its
    /// id. Rejected, with the list, while a ref names the commit or another commit has it as
    /// parent.
    pub fn remove_commit(&self, text: &str) -> Result<ObjectId, Error> {
        let _exclusive = self.lock_exclusive();
        let id = self.catalog.resolve_commit(text)?;
        let record = self
            .catalog
            .get_commit(&id)?
            .ok_or_else(|| CatalogError::NotFound { kind: "commit", text: text.to_string() })?;

        let refs: Vec<String> = self.catalog.list_refs()?.into_iter().filter(|(_, c)| *c == id).map(|(name, _)| name).collect();
        let children: Vec<ObjectId> =
            self.catalog.list_commits()?.into_iter().filter(|c| c.parent == Some(id)).map(|c| c.id).collect();
        if !refs.is_empty() || !children.is_empty() {
            let mut dependants: Vec<String> = refs.iter().map(|name| format!("ref {name}")).collect();
            dependants.extend(children.iter().map(|child| format!("child commit {}", child.short())));
            return Err(Error::HasDependants {
                what: format!("commit {}", id.short()),
                dependants: dependants.join(", "),
                fix: "delete those refs with `wstore rm REF` and child commits with `wstore rm --commit ID` first".into(),
            });
        }
        self.catalog.remove(&Removal { commits: vec![(id, record.base)], ..Default::default() })?;
        tracing::info!(commit = %id, "commit removed");
        Ok(id)
    }

    /// Deletes the base name `name`. When no other name points at the base, the base record
    /// goes too. That is rejected, with the list, while commits depend on the base, unless
    /// `with_commits` also deletes those commits, the commits built on them, and their refs.
    pub fn remove_base(&self, name: &str, with_commits: bool) -> Result<BaseRemoval, Error> {
        let _exclusive = self.lock_exclusive();
        let base = self
            .catalog
            .base_by_name(name)?
            .ok_or_else(|| CatalogError::NotFound { kind: "base name", text: name.to_string() })?;
        let other_names = self.catalog.list_base_names()?.into_iter().filter(|(n, id)| *id == base && n != name).count();
        let mut removal = Removal { base_names: vec![name.to_string()], ..Default::default() };
        if other_names > 0 {
            self.catalog.remove(&removal)?;
            tracing::info!(base = %base, name, "base name removed; other names keep the base");
            return Ok(BaseRemoval { base, names: removal.base_names, base_removed: false, commits: Vec::new(), refs: Vec::new() });
        }

        let commits = self.catalog.list_commits()?;
        let dependants = dependants_of_base(&base, &commits);
        let refs: Vec<(String, ObjectId)> =
            self.catalog.list_refs()?.into_iter().filter(|(_, id)| dependants.contains(id)).collect();
        if !dependants.is_empty() && !with_commits {
            return Err(Error::HasDependants {
                what: format!("base {name} ({})", base.short()),
                dependants: describe_commits(&commits, &dependants, &refs),
                fix: "delete those commits first, or pass --with-commits to delete them (and their refs) with the base".into(),
            });
        }

        removal.bases.push(base);
        removal.commits = commits.iter().filter(|c| dependants.contains(&c.id)).map(|c| (c.id, c.base)).collect();
        removal.refs = refs.into_iter().map(|(name, _)| name).collect();
        self.catalog.remove(&removal)?;
        tracing::info!(base = %base, name, commits = removal.commits.len(), refs = removal.refs.len(), "base removed");
        Ok(BaseRemoval {
            base,
            names: removal.base_names,
            base_removed: true,
            commits: removal.commits.iter().map(|(id, _)| *id).collect(),
            refs: removal.refs,
        })
    }
}

/// Commits made against `base`, plus every commit whose parent chain leads to one of them
/// (a commit's parent may belong to another base when given with `--parent`).
fn dependants_of_base(base: &ObjectId, commits: &[CommitRecord]) -> HashSet<ObjectId> {
    let mut dependants: HashSet<ObjectId> = commits.iter().filter(|c| c.base == *base).map(|c| c.id).collect();
    loop {
        let before = dependants.len();
        for commit in commits {
            if commit.parent.is_some_and(|p| dependants.contains(&p)) {
                dependants.insert(commit.id);
            }
        }
        if dependants.len() == before {
            return dependants;
        }
    }
}

/// Lists commits as "commit abc123 (refs a, b)", oldest first.
fn describe_commits(commits: &[CommitRecord], ids: &HashSet<ObjectId>, refs: &[(String, ObjectId)]) -> String {
    let mut parts = Vec::new();
    for commit in commits.iter().filter(|c| ids.contains(&c.id)) {
        let names: BTreeSet<&str> = refs.iter().filter(|(_, id)| *id == commit.id).map(|(name, _)| name.as_str()).collect();
        if names.is_empty() {
            parts.push(format!("commit {}", commit.id.short()));
        } else {
            parts.push(format!("commit {} (ref {})", commit.id.short(), names.into_iter().collect::<Vec<_>>().join(", ")));
        }
    }
    parts.join(", ")
}
