//! The bare-metal relay's systemd units: which exist, which run, and how to
//! stop them for the final sync and bring them back on `--rollback`.
//!
//! All state comes from one `systemctl show -p Id,LoadState,ActiveState,UnitFileState
//! <units...>` call, which answers for every unit at once (also for units
//! that are not installed: `LoadState=not-found`), so the whole query is a
//! single process and simple to reproduce with a stand-in in tests.

use anyhow::{bail, Result};
use std::collections::BTreeMap;

use crate::context::Context;

/// Whether `unit` (a full name) is one of the relay's units
/// ([`crate::deployment::relay::UNITS`]): the only names that `migrate` records and
/// `--rollback` passes to `systemctl`.
pub fn is_relay_unit(unit: &str) -> bool {
    !unit.starts_with('-')
        && crate::deployment::relay::UNITS
            .iter()
            .any(|u| u.name == unit)
}

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

/// Ask systemd about every chatmail unit (one `systemctl` call).
pub fn query(ctx: &Context) -> Result<Vec<UnitState>> {
    let units = crate::deployment::relay::unit_names();
    let cmd = ctx
        .host
        .cmd(
            "systemctl",
            ["show", "-p", "Id,LoadState,ActiveState,UnitFileState"],
        )
        .args(&units);
    let stdout = run(ctx, &cmd)?;
    parse_show(&stdout, &units)
}

/// Run `systemctl <verb> <units...>`; a failure is an error naming the units.
/// Only the relay's units are ever passed ([`is_relay_unit`]).
pub fn systemctl(ctx: &Context, verb: &str, units: &[String]) -> Result<()> {
    if units.is_empty() {
        return Ok(());
    }
    if let Some(u) = units.iter().find(|u| !is_relay_unit(u)) {
        bail!(
            "refusing `systemctl {verb}` for '{}': not one of the relay's units",
            crate::migrate::show::clean(u)
        );
    }
    run(ctx, &ctx.host.cmd("systemctl", [verb]).args(units)).map(drop)
}

/// Run `cmd` and return its stdout; a non-zero exit is an error showing the
/// command line and what it printed on stderr.
fn run(ctx: &Context, cmd: &crate::host::Cmd) -> Result<String> {
    let out = cmd.output(&ctx.shell)?;
    if !out.success() {
        bail!(
            "`{}` failed (exit {}): {}",
            crate::migrate::show::clean(&cmd.display()),
            out.code,
            crate::migrate::show::clean(out.stderr.trim())
        );
    }
    Ok(out.stdout)
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

    #[test]
    fn only_the_relays_units_are_accepted() {
        assert!(is_relay_unit("postfix.service"));
        assert!(is_relay_unit("turnserver.service"));
        assert!(is_relay_unit("filtermail-transport.service"));
        assert!(is_relay_unit("chatmail-expire.timer"));
        for bad in [
            "sshd.service",
            "postfix",
            "--now",
            "-H",
            "chatmail-turn.service",
            "postfix.service ",
            "",
        ] {
            assert!(!is_relay_unit(bad), "{bad}");
        }
    }
}
