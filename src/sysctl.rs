//! inotify limits on the host.
//!
//! The relay's services (dovecot, postfix, systemd itself) need many inotify
//! instances and watches, and a container cannot raise these kernel limits.
//! This module makes sure `fs.inotify.max_user_instances` and
//! `fs.inotify.max_user_watches` are at least the required minimum, both
//! live (`/proc/sys`) and across reboots (one managed file in
//! `/etc/sysctl.d/`). It never lowers a value: the managed file carries the
//! larger of the minimum and the current live value, so re-running it is a
//! no-op and a value raised by someone else is kept.
//!
//! Values are read and written through `/proc/sys` under the host root, so
//! the same code runs against a test root; this is also all the `sysctl`
//! command does on Linux.

use anyhow::{Context as _, Result};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::host::{self, Host};
use crate::Context;

/// The managed file, relative to the host root.
pub const MANAGED_FILE: &str = "/etc/sysctl.d/60-chatmail-docker-inotify.conf";
/// The keys we manage, in file order.
pub const KEYS: [&str; 2] = [
    "fs.inotify.max_user_instances",
    "fs.inotify.max_user_watches",
];
/// Where sysctl files are looked for (`man sysctl.d`), for "already persistent?".
const SYSCTL_DIRS: &[&str] = &[
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
];

/// The two inotify limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_user_instances: u64,
    pub max_user_watches: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_user_instances: 65536,
            max_user_watches: 65536,
        }
    }
}

impl Limits {
    fn get(&self, i: usize) -> u64 {
        [self.max_user_instances, self.max_user_watches][i]
    }
}

fn proc_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

fn read_value(host: &Host, key: &str) -> Result<u64> {
    let path = host.path(proc_path(key));
    let text = fs::read_to_string(&path)
        .with_context(|| format!("cannot read {key} from {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} holds `{}`, not a number", path.display(), text.trim()))
}

/// The live values.
pub fn read_live(host: &Host) -> Result<Limits> {
    Ok(Limits {
        max_user_instances: read_value(host, KEYS[0])?,
        max_user_watches: read_value(host, KEYS[1])?,
    })
}

/// What `sysctl` will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub live: Limits,
    /// The values to have: max(minimum, live).
    pub target: Limits,
    /// Keys whose live value must be raised, with the new value.
    pub raise: Vec<(&'static str, u64, u64)>,
    /// The managed file's path on the host and its content.
    pub file: PathBuf,
    pub content: String,
    /// Whether the managed file must be (re)written.
    pub write_file: bool,
}

impl Plan {
    pub fn is_noop(&self) -> bool {
        self.raise.is_empty() && !self.write_file
    }
}

/// The managed file's content for `target`: stable for the same values.
pub fn file_content(target: &Limits) -> String {
    format!(
        "# Managed by chatmail-docker: inotify limits for the chatmail appliance.\n\
         # Re-running `chatmail-docker sysctl` rewrites this file; it never lowers a value.\n\
         {} = {}\n{} = {}\n",
        KEYS[0], target.max_user_instances, KEYS[1], target.max_user_watches
    )
}

/// The last value any sysctl configuration file (other than ours) sets for
/// `key`, in the order `sysctl --system` applies them.
fn persisted_elsewhere(host: &Host, key: &str) -> Option<u64> {
    let mut files: std::collections::BTreeMap<String, PathBuf> = Default::default();
    // Same file name in an earlier dir masks later ones.
    for dir in SYSCTL_DIRS.iter().rev() {
        if let Ok(rd) = fs::read_dir(host.path(dir)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".conf") {
                    files.insert(name, e.path());
                }
            }
        }
    }
    let managed_name = Path::new(MANAGED_FILE)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    let mut paths: Vec<PathBuf> = files
        .into_iter()
        .filter(|(n, _)| *n != managed_name)
        .map(|(_, p)| p)
        .collect();
    paths.push(host.path("/etc/sysctl.conf"));
    paths
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .filter_map(|text| last_value(&text, key))
        .next_back()
}

/// The last numeric value a sysctl.d file sets for `key` (later lines win).
fn last_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.trim_start_matches('-').split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .filter_map(|(_, v)| v.trim().parse().ok())
        .next_back()
}

/// Compute the plan against the host.
pub fn plan(host: &Host, min: &Limits) -> Result<Plan> {
    let live = read_live(host)?;
    let target = Limits {
        max_user_instances: live.max_user_instances.max(min.max_user_instances),
        max_user_watches: live.max_user_watches.max(min.max_user_watches),
    };
    let raise = KEYS
        .iter()
        .enumerate()
        .filter(|(i, _)| live.get(*i) < target.get(*i))
        .map(|(i, k)| (*k, live.get(i), target.get(i)))
        .collect();
    let file = host.path(MANAGED_FILE);
    let content = file_content(&target);
    let existing = fs::read_to_string(&file).ok();
    let write_file = match &existing {
        Some(old) => {
            // Keep an existing managed file whose values are all at least the
            // target: rewriting it with lower numbers would lower them at boot.
            let old_ok = KEYS
                .iter()
                .enumerate()
                .all(|(i, k)| last_value(old, k).is_some_and(|v| v >= target.get(i)));
            !old_ok
        }
        None => {
            // Nothing to persist when other files already set both at least as high.
            !KEYS
                .iter()
                .enumerate()
                .all(|(i, k)| persisted_elsewhere(host, k).is_some_and(|v| v >= target.get(i)))
        }
    };
    Ok(Plan {
        live,
        target,
        raise,
        file,
        content,
        write_file,
    })
}

/// Describe the plan, one line per action.
pub fn describe(plan: &Plan) -> Vec<String> {
    let mut lines = Vec::new();
    for (k, from, to) in &plan.raise {
        lines.push(format!("raise {k} from {from} to {to} (live)"));
    }
    if plan.write_file {
        lines.push(format!(
            "write {} ({} = {}, {} = {})",
            plan.file.display(),
            KEYS[0],
            plan.target.max_user_instances,
            KEYS[1],
            plan.target.max_user_watches
        ));
    }
    lines
}

/// The commands a root user can run by hand to do the same.
pub fn manual_commands(plan: &Plan) -> String {
    format!(
        "printf '%s\\n' '{} = {}' '{} = {}' | sudo tee {} >/dev/null && sudo sysctl --system\n\
         (or run `sudo chatmail-docker sysctl`)",
        KEYS[0],
        plan.target.max_user_instances,
        KEYS[1],
        plan.target.max_user_watches,
        MANAGED_FILE
    )
}

fn permission_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
            ) || io.raw_os_error() == Some(libc::EPERM)
        })
    })
}

/// Apply the plan: raise live values, write the managed file.
pub fn apply(host: &Host, plan: &Plan) -> Result<()> {
    let result = (|| -> Result<()> {
        if plan.write_file {
            if let Some(dir) = plan.file.parent() {
                fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            host::write_atomic(&plan.file, plan.content.as_bytes(), 0o644)?;
        }
        for (k, _, to) in &plan.raise {
            let path = host.path(proc_path(k));
            fs::write(&path, format!("{to}\n"))
                .with_context(|| format!("cannot set {k} in {}", path.display()))?;
        }
        Ok(())
    })();
    match result {
        Err(e) if permission_error(&e) => Err(crate::error::Failure {
            code: crate::error::EXIT_RUNTIME,
            message: Some(format!(
                "{e:#}\nraising the inotify limits needs root; run:\n  {}",
                manual_commands(plan)
            )),
        }
        .into()),
        other => other,
    }
}

/// Plan and (unless dry-run) apply; report through the shell. Used by
/// `sysctl` and `setup`.
pub fn ensure(ctx: &Context, min: &Limits) -> Result<Plan> {
    let plan = plan(&ctx.host, min)?;
    if plan.is_noop() {
        ctx.shell.status(
            "Fresh",
            format!(
                "inotify limits already sufficient ({}={}, {}={})",
                KEYS[0], plan.live.max_user_instances, KEYS[1], plan.live.max_user_watches
            ),
        );
        return Ok(plan);
    }
    if ctx.dry_run {
        for l in describe(&plan) {
            ctx.shell.out(format!("would {l}"));
        }
        return Ok(plan);
    }
    apply(&ctx.host, &plan)?;
    for l in describe(&plan) {
        ctx.shell.status("Sysctl", l);
    }
    Ok(plan)
}

/// `chatmail-docker sysctl`.
pub fn run(ctx: &Context, limits: &Limits) -> Result<()> {
    let plan = ensure(ctx, limits)?;
    if ctx.dry_run && !plan.is_noop() {
        ctx.dry_run_done();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(inst: u64, watches: u64) -> (tempfile::TempDir, Host) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("proc/sys/fs/inotify");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("max_user_instances"), format!("{inst}\n")).unwrap();
        fs::write(p.join("max_user_watches"), format!("{watches}\n")).unwrap();
        let h = Host::new(d.path());
        (d, h)
    }

    #[test]
    fn raises_and_is_idempotent() {
        let (_d, h) = fake_host(128, 1_000_000);
        let p = plan(&h, &Limits::default()).unwrap();
        assert_eq!(p.raise, vec![(KEYS[0], 128, 65536)]);
        assert_eq!(p.target.max_user_watches, 1_000_000, "never lowered");
        apply(&h, &p).unwrap();
        let first = fs::read(&p.file).unwrap();
        let p2 = plan(&h, &Limits::default()).unwrap();
        assert!(p2.is_noop(), "{p2:?}");
        assert_eq!(read_live(&h).unwrap().max_user_instances, 65536);
        assert_eq!(fs::read(&p.file).unwrap(), first);
    }

    #[test]
    fn persisted_elsewhere_means_no_file() {
        let (d, h) = fake_host(100000, 100000);
        fs::create_dir_all(d.path().join("etc/sysctl.d")).unwrap();
        fs::write(
            d.path().join("etc/sysctl.d/99-inotify.conf"),
            "fs.inotify.max_user_instances=100000\nfs.inotify.max_user_watches = 100000\n",
        )
        .unwrap();
        assert!(plan(&h, &Limits::default()).unwrap().is_noop());
    }
}
