//! `migrate --rollback`: bring the bare-metal relay back.
//!
//! It re-enables and starts exactly the units a migration recorded as
//! stopped or disabled (never others), and leaves the copied data in
//! `data/` alone (a later `migrate` updates it with a new pre-sync) but
//! for the temporary files a killed copy left there.
//!
//! The state file is data, not a command list: only the relay's own unit
//! names (the ones `migrate` stops, [`crate::deployment::relay::UNITS`]) are accepted from it;
//! anything else (another unit, a word starting with `-` that `systemctl`
//! would take as an option) refuses the whole rollback before `systemctl`
//! runs.

use anyhow::Result;
use std::path::Path;

use super::show::Shown as _;
use super::state::{self, Phase, State};
use super::units;
use crate::{context::Context, error};

pub fn run(ctx: &Context, yes: bool) -> Result<()> {
    let file = state::path(ctx.deployment.dir());
    let mut st = State::load(&file)?;
    if st.stopped.is_empty() {
        ctx.shell.out(format!(
            "Nothing to roll back: no migration stopped any unit (state: {}).",
            file.shown()
        ));
        if !ctx.dry_run {
            remove_stale_tmps(ctx);
        }
        return Ok(());
    }
    check(&st, &file)?;
    let (enable, start) = lists(&st);
    ctx.shell.out("Rollback plan:");
    ctx.shell.out(format!("  enable: {}", list(&enable)));
    ctx.shell.out(format!("  start:  {}", list(&start)));
    ctx.shell
        .out("  the copied data in data/ is kept; the container is not touched");
    if ctx.dry_run {
        ctx.shell.note("dry run: nothing was changed");
        return Ok(());
    }
    if st.phase == Phase::Done {
        // The container may run and hold new mail; the old relay would
        // compete with it for the ports and not see that mail.
        ctx.shell.warn(
            "the migration had completed: stop the container first (`chatmail-docker down`); \
             mail it received since is not copied back",
        );
        super::ask(ctx, yes, "the rollback", "restart the old relay? [y/N]")?;
    }
    restart(ctx, &mut st, &file)?;
    remove_stale_tmps(ctx);
    Ok(())
}

/// With the relay back: remove the temporary files a killed migration's
/// copy (or its save of the state file) left beside the copied data (a
/// later `migrate` would remove them too). Failures are warnings: the
/// rollback itself is done.
fn remove_stale_tmps(ctx: &Context) {
    // A run killed while it saved its state left the state's temp file.
    crate::host::remove_stale_writes(&state::path(ctx.deployment.dir()));
    let mut removed = 0;
    for src in super::plan::sources(false) {
        let root = ctx.deployment.path(src.dest);
        match super::copy::remove_stale_tmps(&root) {
            Ok(n) => removed += n,
            Err(e) => ctx.shell.warn(format!(
                "could not remove what a stopped copy left in {}: {e:#}",
                root.shown()
            )),
        }
    }
    if removed > 0 {
        ctx.shell.note(format!(
            "removed {removed} temporary file(s) a stopped migration's copy left in data/"
        ));
    }
}

/// Enable and start the recorded units again, then record that nothing is
/// stopped any more (also used when a migration fails with the units
/// stopped).
pub(crate) fn restart(ctx: &Context, st: &mut State, file: &Path) -> Result<()> {
    check(st, file)?;
    let (enable, start) = lists(st);
    units::systemctl(ctx, "enable", &enable)?;
    units::systemctl(ctx, "start", &start)?;
    st.stopped.clear();
    st.phase = Phase::RolledBack;
    st.downtime_secs = None;
    st.save(file)?;
    ctx.shell.status(
        "Rolled back",
        format!("{} enabled, {} started", enable.len(), start.len()),
    );
    Ok(())
}

/// Every recorded unit must be one `migrate` stops.
fn check(st: &State, file: &Path) -> Result<()> {
    let bad: Vec<String> = st
        .stopped
        .iter()
        .filter(|u| !units::is_relay_unit(&u.unit))
        .map(|u| format!("'{}'", u.unit.shown()))
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(error::usage(format!(
        "{} lists {} as stopped, but `migrate` only ever stops the relay's units ({}); \
         nothing was started. The file was changed by hand or by something else: check it, \
         or remove those entries",
        file.shown(),
        bad.join(", "),
        crate::deployment::relay::unit_names().join(" ")
    )))
}

fn lists(st: &State) -> (Vec<String>, Vec<String>) {
    let names = |f: fn(&state::StoppedUnit) -> bool| -> Vec<String> {
        st.stopped
            .iter()
            .filter(|u| f(u))
            .map(|u| u.unit.clone())
            .collect()
    };
    (names(|u| u.was_enabled), names(|u| u.was_active))
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_string()
    } else {
        v.join(" ")
    }
}
