//! What `systemctl show -p Id,LoadState,ActiveState,UnitFileState UNITS`
//! prints, read: the state of units on the host (`migrate`) and in the
//! container (`status`, `metrics`).

use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// What systemd says about one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitState {
    /// Full name, `postfix.service`.
    pub unit: String,
    pub load: String,
    pub active: String,
    pub file: String,
}

impl UnitState {
    pub fn exists(&self) -> bool {
        self.load == "loaded"
    }
    /// Running or on its way: stopping it is needed.
    pub fn is_active(&self) -> bool {
        matches!(
            self.active.as_str(),
            "active" | "activating" | "reloading" | "deactivating"
        )
    }
    /// Starts at boot; disabling it is needed (static/masked units cannot be).
    pub fn is_enabled(&self) -> bool {
        self.file == "enabled"
    }
}

/// Full unit name for a short one (`postfix` -> `postfix.service`).
pub fn unit_name(short: &str) -> String {
    if short.contains('.') {
        short.to_string()
    } else {
        format!("{short}.service")
    }
}

/// Parse `systemctl show -p Id,LoadState,ActiveState,UnitFileState` output:
/// blocks of `Key=Value` lines separated by blank lines, one block per unit.
/// Blocks are matched by `Id` when present, else by position.
pub fn parse_show(out: &str, units: &[String]) -> Result<Vec<UnitState>> {
    let mut blocks: Vec<BTreeMap<String, String>> = Vec::new();
    let mut cur = BTreeMap::new();
    for line in out.lines() {
        let line = line.trim();
        if line.is_empty() {
            if !cur.is_empty() {
                blocks.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            cur.insert(k.to_string(), v.to_string());
        }
    }
    if !cur.is_empty() {
        blocks.push(cur);
    }
    let mut result = Vec::new();
    for (i, unit) in units.iter().enumerate() {
        let block = blocks
            .iter()
            .find(|b| b.get("Id").is_some_and(|id| id == unit))
            .or_else(|| blocks.get(i).filter(|b| !b.contains_key("Id")));
        let Some(b) = block else {
            bail!("`systemctl show` said nothing about {unit}");
        };
        let get = |k: &str| b.get(k).cloned().unwrap_or_default();
        result.push(UnitState {
            unit: unit.clone(),
            load: get("LoadState"),
            active: get("ActiveState"),
            file: get("UnitFileState"),
        });
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocks_by_id_and_not_found_units() {
        let units = vec!["postfix.service".to_string(), "mtail.service".to_string()];
        let out = "Id=mtail.service\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n\n\
                   Id=postfix.service\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\n";
        let s = parse_show(out, &units).unwrap();
        assert!(s[0].exists() && s[0].is_active() && s[0].is_enabled());
        assert!(!s[1].exists() && !s[1].is_active());
        assert!(parse_show("", &units).is_err());
    }
}
