//! The inotify check: the limits the relay's services need, which only
//! the host can raise (see [`crate::sysctl`]).

use super::{Check, CheckId};
use crate::{context::Context, sysctl};

pub(super) fn check_inotify(ctx: &Context, min: &sysctl::Limits, must_pass: bool) -> Check {
    const ID: &str = CheckId::Inotify.id();
    let live = match sysctl::read_live(&ctx.host) {
        Ok(l) => l,
        Err(e) => return Check::warn(ID, format!("{e:#}"), "check /proc/sys/fs/inotify"),
    };
    let low: Vec<String> = sysctl::KEYS
        .iter()
        .zip([live.max_user_instances, live.max_user_watches])
        .zip([min.max_user_instances, min.max_user_watches])
        .filter(|((_, have), want)| have < want)
        .map(|((k, have), want)| format!("{k}={have} (< {want})"))
        .collect();
    if low.is_empty() {
        // Live values are fine; a file read late at boot may lower them.
        let lowered: Vec<String> = sysctl::boot_values(&ctx.host)
            .into_iter()
            .zip([min.max_user_instances, min.max_user_watches])
            .filter_map(|((k, at_boot), want)| match at_boot {
                Some((file, v)) if v < want => Some(format!(
                    "{} sets {k} = {v} (< {want}) and wins at boot",
                    file.display()
                )),
                _ => None,
            })
            .collect();
        if !lowered.is_empty() {
            return Check::warn(
                ID,
                format!("live values are enough, but {}", lowered.join("; ")),
                "raise or remove that line, then run `sudo chatmail-docker sysctl`",
            );
        }
        return Check::ok(
            ID,
            format!(
                "max_user_instances={} max_user_watches={}",
                live.max_user_instances, live.max_user_watches
            ),
        );
    }
    let msg = format!("too low: {}", low.join(", "));
    let fix = "run `sudo chatmail-docker sysctl` (setup does this)";
    if must_pass {
        Check::fail(ID, msg, fix)
    } else {
        Check::warn(ID, msg, fix)
    }
}
