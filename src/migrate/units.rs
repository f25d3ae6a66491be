//! The bare-metal relay's systemd units: which exist, which run, and how to
//! stop them for the final sync and bring them back on `--rollback`.
//!
//! All state comes from one `systemctl show -p Id,LoadState,ActiveState,UnitFileState
//! <units...>` call, which answers for every unit at once (also for units
//! that are not installed: `LoadState=not-found`), so the whole query is a
//! single process and simple to reproduce with a stand-in in tests.

use anyhow::{bail, Result};

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

pub use crate::formats::systemctl::{parse_show, unit_name, UnitState};

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
