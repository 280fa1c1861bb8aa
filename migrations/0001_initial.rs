// Schema 1: the trees every store has.
//   meta        "schema_version" -> u32 big-endian
//   bases       base id (32 bytes) -> BaseRecord JSON
//   base_names  name (UTF-8) -> base id
//   commits     commit id (32 bytes) -> CommitRecord JSON
//   refs        name (UTF-8) -> commit id

pub fn migrate(db: &sled::Db) -> Result<(), super::CatalogError> {
    for tree in ["meta", "bases", "base_names", "commits", "refs"] {
        db.open_tree(tree)?;
    }
    Ok(())
}
