//! Numbered schema migrations from the top-level `migrations/` directory, applied in order
//! when a catalog opens. Each runs once; the `meta` tree records the version reached.

use super::CatalogError;

#[path = "../../migrations/0001_initial.rs"]
mod m0001_initial;
#[path = "../../migrations/0002_commits_by_base.rs"]
mod m0002_commits_by_base;

type Migration = fn(&sled::Db) -> Result<(), CatalogError>;

/// (version reached, name, function), in order.
const MIGRATIONS: &[(u32, &str, Migration)] = &[
    (1, "initial", m0001_initial::migrate),
    (2, "commits_by_base", m0002_commits_by_base::migrate),
];

pub const LATEST_SCHEMA: u32 = 2;

const VERSION_KEY: &[u8] = b"schema_version";

pub(super) fn read_version(meta: &sled::Tree) -> Result<u32, CatalogError> {
    match meta.get(VERSION_KEY)? {
        None => Ok(0),
        Some(bytes) => {
            let array: [u8; 4] = bytes.as_ref().try_into().map_err(|_| CatalogError::Corrupt {
                what: "schema version".into(),
                detail: format!("{} bytes instead of 4", bytes.len()),
            })?;
            Ok(u32::from_be_bytes(array))
        }
    }
}

/// Brings `db` to `LATEST_SCHEMA`, or fails if it was written by a newer wstore.
pub fn apply_migrations(db: &sled::Db) -> Result<(), CatalogError> {
    apply_migrations_up_to(db, LATEST_SCHEMA)
}

/// Applies migrations up to `target` only; tests use it to build stores of older schemas.
#[doc(hidden)]
pub fn apply_migrations_up_to(db: &sled::Db, target: u32) -> Result<(), CatalogError> {
    let meta = db.open_tree("meta")?;
    let current = read_version(&meta)?;
    if current > LATEST_SCHEMA {
        return Err(CatalogError::SchemaTooNew { found: current, supported: LATEST_SCHEMA });
    }
    for (version, name, migrate) in MIGRATIONS {
        if *version <= current || *version > target {
            continue;
        }
        tracing::info!(version, name, "applying catalog migration");
        migrate(db)?;
        // The version moves only after the migration's writes, so a crash re-runs it;
        // every migration is written to be safe to run twice.
        meta.insert(VERSION_KEY, &version.to_be_bytes())?;
        db.flush()?;
    }
    Ok(())
}
