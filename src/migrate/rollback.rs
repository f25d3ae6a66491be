//! `migrate --rollback`: bring the bare-metal relay back.
//!
//! It re-enables and starts exactly the units a migration recorded as
//! stopped or disabled (never others), and leaves the copied data in
//! `data/` alone: a later `migrate` updates it with a new pre-sync.

use anyhow::Result;

use super::state::{self, Phase, State};
use super::units;
use crate::Context;

pub fn run(ctx: &Context, yes: bool) -> Result<()> {
    let file = state::path(ctx.deployment.dir());
    let mut st = State::load(&file)?;
    if st.stopped.is_empty() {
        ctx.shell.out(format!(
            "Nothing to roll back: no migration stopped any unit (state: {}).",
            file.display()
        ));
        return Ok(());
    }
    let enable: Vec<String> = st
        .stopped
        .iter()
        .filter(|u| u.was_enabled)
        .map(|u| u.unit.clone())
        .collect();
    let start: Vec<String> = st
        .stopped
        .iter()
        .filter(|u| u.was_active)
        .map(|u| u.unit.clone())
        .collect();
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
    units::systemctl(ctx, "enable", &enable)?;
    units::systemctl(ctx, "start", &start)?;
    st.stopped.clear();
    st.phase = Phase::RolledBack;
    st.downtime_secs = None;
    st.save(&file)?;
    ctx.shell.status(
        "Rolled back",
        format!("{} enabled, {} started", enable.len(), start.len()),
    );
    Ok(())
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_string()
    } else {
        v.join(" ")
    }
}
