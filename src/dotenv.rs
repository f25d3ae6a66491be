//! .env reading, Compose-exact quoting and merging.

use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Read a `.env` file into a map of variable -> value, the way Docker
/// Compose v2 reads it (no interpolation of the process environment).
pub fn load(path: &Path) -> Result<BTreeMap<String, String>> {
    // Interim implementation; to be replaced by the Compose-exact parser.
    let mut out = BTreeMap::new();
    for item in
        dotenvy::from_path_iter(path).with_context(|| format!("cannot read {}", path.display()))?
    {
        let (k, v) = item.with_context(|| format!("cannot parse {}", path.display()))?;
        out.insert(k, v);
    }
    Ok(out)
}
