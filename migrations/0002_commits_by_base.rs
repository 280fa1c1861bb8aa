// Schema 2: an index of commits by base, so that finding a base's dependants (for gc and
// for trace-norm rescaling across a family) needs no scan of every commit.
//   commits_by_base  base id (32 bytes) ++ commit id (32 bytes) -> empty
// Built from the existing commits; inserting a key twice is harmless, so a rerun after a
// crash is safe.

pub fn migrate(db: &sled::Db) -> Result<(), super::CatalogError> {
    let commits = db.open_tree("commits")?;
    let index = db.open_tree("commits_by_base")?;
    for item in commits.iter() {
        let (key, value) = item?;
        let record: serde_json::Value = serde_json::from_slice(&value).map_err(|e| super::CatalogError::Corrupt {
            what: "commit record during migration 2".into(),
            detail: e.to_string(),
        })?;
        let base_hex = record.get("base").and_then(|b| b.as_str()).unwrap_or_default();
        let base: crate::id::ObjectId = base_hex.parse().map_err(|_| super::CatalogError::Corrupt {
            what: "commit record during migration 2".into(),
            detail: format!("base {base_hex:?} is not an id"),
        })?;
        let mut index_key = base.as_bytes().to_vec();
        index_key.extend_from_slice(&key);
        index.insert(index_key, &[] as &[u8])?;
    }
    Ok(())
}
