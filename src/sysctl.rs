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
//!
//! The live values are raised first, both or neither, and only then is the
//! file written: a value the kernel refuses never reaches the file. Which
//! file sets a value at boot follows systemd-sysctl: every `*.conf` in the
//! sysctl.d directories, a name in an earlier directory masking the same
//! name in a later one, read in the order of their names (the last setting
//! wins), and `/etc/sysctl.conf` (which `sysctl --system` reads last). A
//! file read after the managed one that sets a lower value is named.

use anyhow::{Context as _, Result};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::context::Context;
use crate::host::{self, Host};

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

/// The largest value the kernel keeps for these keys (`long`); a larger
/// number cannot be a limit.
pub const KERNEL_MAX: u64 = i64::MAX as u64;

fn read_value(host: &Host, key: &str) -> Result<u64> {
    let path = host.path(proc_path(key));
    let bytes = host::read_input(&path, 4096)
        .with_context(|| format!("cannot read {key} from {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
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
    /// Keys whose value at boot will be lower than the target because a
    /// file read after the managed one sets it.
    pub overridden: Vec<Overridden>,
}

/// A sysctl file that sets a key lower than wanted and wins at boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overridden {
    pub key: &'static str,
    /// The file as the host names it (`/etc/sysctl.d/99-x.conf`).
    pub file: PathBuf,
    pub value: u64,
    pub wanted: u64,
}

impl Overridden {
    pub fn message(&self) -> String {
        format!(
            "{} sets {} = {}, lower than {}; it is read after {MANAGED_FILE} and wins at boot: raise or remove that line",
            self.file.display(),
            self.key,
            self.value,
            self.wanted
        )
    }
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

/// The sysctl configuration files in the order systemd-sysctl applies
/// them, as host paths (`/etc/sysctl.d/x.conf`): by file name, a name in an
/// earlier directory masking it in later ones, then `/etc/sysctl.conf`.
/// The managed file takes its place by name whether it exists or not.
fn boot_order(host: &Host) -> Vec<PathBuf> {
    let mut files: std::collections::BTreeMap<String, PathBuf> = Default::default();
    // Same file name in an earlier dir masks later ones.
    for dir in SYSCTL_DIRS.iter().rev() {
        if let Ok(rd) = fs::read_dir(host.path(dir)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".conf") {
                    files.insert(name.clone(), Path::new(dir).join(name));
                }
            }
        }
    }
    let managed = Path::new(MANAGED_FILE);
    if let Some(name) = managed.file_name() {
        files.insert(name.to_string_lossy().into_owned(), managed.to_path_buf());
    }
    let mut paths: Vec<PathBuf> = files.into_values().collect();
    paths.push(PathBuf::from("/etc/sysctl.conf"));
    paths
}

/// Who sets `key` at boot and to what: the last file in [`boot_order`]
/// setting it. The managed file is read as `managed` (its content after
/// this run) when given.
fn boot_value(host: &Host, key: &str, managed: Option<&str>) -> Option<(PathBuf, u64)> {
    boot_order(host)
        .into_iter()
        .filter_map(|p| {
            let text = match managed {
                Some(text) if p == Path::new(MANAGED_FILE) => text.to_string(),
                _ => {
                    let bytes = host::read_input(&host.path(&p), host::MAX_CONFIG_BYTES).ok()?;
                    String::from_utf8_lossy(&bytes).into_owned()
                }
            };
            last_value(&text, key).map(|v| (p, v))
        })
        .next_back()
}

/// The value each key gets at boot from the files as they are, and from
/// which file; `None` when no file sets it.
pub fn boot_values(host: &Host) -> Vec<(&'static str, Option<(PathBuf, u64)>)> {
    KEYS.iter()
        .map(|k| (*k, boot_value(host, k, None)))
        .collect()
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
    for (k, v) in KEYS
        .iter()
        .zip([min.max_user_instances, min.max_user_watches])
    {
        if v > KERNEL_MAX {
            return Err(crate::error::usage(format!(
                "{k}: {v} is more than the kernel's maximum ({KERNEL_MAX}); ask for a smaller minimum"
            )));
        }
    }
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
    let existing = host::read_input(&file, host::MAX_CONFIG_BYTES)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned());
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
                .all(|(i, k)| boot_value(host, k, None).is_some_and(|(_, v)| v >= target.get(i)))
        }
    };
    // What boot will make of it, with the managed file as it will be.
    let managed = if write_file {
        Some(content.as_str())
    } else {
        existing.as_deref()
    };
    let overridden = KEYS
        .iter()
        .enumerate()
        .filter_map(|(i, k)| {
            let (file, value) = boot_value(host, k, Some(managed.unwrap_or("")))?;
            (file != Path::new(MANAGED_FILE) && value < target.get(i)).then(|| Overridden {
                key: k,
                file,
                value,
                wanted: target.get(i),
            })
        })
        .collect();
    Ok(Plan {
        live,
        target,
        raise,
        file,
        content,
        write_file,
        overridden,
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

/// Write one live value.
fn write_live(host: &Host, key: &str, value: u64) -> Result<()> {
    let path = host.path(proc_path(key));
    fs::write(&path, format!("{value}\n"))
        .with_context(|| format!("cannot set {key} to {value} in {}", path.display()))
}

/// Raise the live values, both or neither: when one cannot be set, the
/// ones already raised are set back to what they were.
fn raise_live(
    raise: &[(&'static str, u64, u64)],
    mut write: impl FnMut(&str, u64) -> Result<()>,
) -> Result<()> {
    for (n, (k, _, to)) in raise.iter().enumerate() {
        if let Err(e) = write(k, *to) {
            for (k, from, _) in raise[..n].iter().rev() {
                if let Err(back) = write(k, *from) {
                    return Err(e.context(format!(
                        "and {k} could not be set back to {from} ({back:#}); set it by hand"
                    )));
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Apply the plan through `write_live` and `write_file`: the live values
/// first (the kernel checks them), the file only when they were taken.
fn apply_via(
    plan: &Plan,
    write_live: impl FnMut(&str, u64) -> Result<()>,
    write_file: impl FnOnce() -> Result<()>,
) -> Result<()> {
    raise_live(&plan.raise, write_live)?;
    if plan.write_file {
        write_file()?;
    }
    Ok(())
}

/// What a failed apply says: "needs root" only to a user who is not root;
/// root sees the real error (an immutable directory, a read-only /proc).
fn failure(e: anyhow::Error, plan: &Plan, is_root: bool) -> anyhow::Error {
    if !permission_error(&e) {
        return e;
    }
    let message = if is_root {
        format!(
            "{e:#}\nthis happens to root when a file or directory is immutable (`lsattr -d {}`) \
             or the filesystem is read-only; fix that and run `chatmail-docker sysctl` again",
            Path::new(MANAGED_FILE)
                .parent()
                .unwrap_or(Path::new("/"))
                .display()
        )
    } else {
        format!(
            "{e:#}\nraising the inotify limits needs root; run:\n  {}",
            manual_commands(plan)
        )
    };
    crate::error::Failure {
        code: crate::error::EXIT_RUNTIME,
        message: Some(message),
    }
    .into()
}

/// Apply the plan: raise live values (both or neither), then write the
/// managed file.
pub fn apply(host: &Host, plan: &Plan) -> Result<()> {
    apply_via(
        plan,
        |k, v| write_live(host, k, v),
        || {
            if let Some(dir) = plan.file.parent() {
                fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            host::write_atomic(&plan.file, plan.content.as_bytes(), 0o644)
        },
    )
    .map_err(|e| failure(e, plan, rustix::process::geteuid().is_root()))
}

/// Plan and (unless dry-run) apply; report through the shell. Used by
/// `sysctl` and `setup`.
pub fn ensure(ctx: &Context, min: &Limits) -> Result<Plan> {
    let plan = plan(&ctx.host, min)?;
    for o in &plan.overridden {
        ctx.shell.warn(o.message());
    }
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
    fn live_values_are_raised_both_or_neither() {
        let raise = [(KEYS[0], 128, 65536), (KEYS[1], 8192, 65536)];
        let mut writes = Vec::new();
        let err = raise_live(&raise, |k, v| {
            writes.push((k.to_string(), v));
            if k == KEYS[1] {
                anyhow::bail!("EINVAL")
            }
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("EINVAL"));
        assert_eq!(
            writes,
            vec![
                (KEYS[0].to_string(), 65536),
                (KEYS[1].to_string(), 65536),
                (KEYS[0].to_string(), 128),
            ],
            "the first is set back"
        );
    }

    #[test]
    fn a_value_the_kernel_refuses_never_reaches_the_file() {
        let (_d, h) = fake_host(128, 128);
        let p = plan(&h, &Limits::default()).unwrap();
        assert!(p.write_file);
        let mut file_written = false;
        let r = apply_via(
            &p,
            |_, v| {
                if v > 1000 {
                    anyhow::bail!("Invalid argument")
                }
                Ok(())
            },
            || {
                file_written = true;
                Ok(())
            },
        );
        assert!(r.is_err());
        assert!(!file_written);
        let limits = Limits {
            max_user_instances: KERNEL_MAX + 1,
            max_user_watches: 1,
        };
        let err = plan(&h, &limits).unwrap_err();
        assert!(err.to_string().contains("kernel's maximum"), "{err}");
    }

    #[test]
    fn root_is_not_told_it_needs_root() {
        let (_d, h) = fake_host(128, 128);
        let p = plan(&h, &Limits::default()).unwrap();
        let eperm = || {
            anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EPERM))
                .context("cannot create /etc/sysctl.d/x")
        };
        let as_root = failure(eperm(), &p, true).to_string();
        assert!(!as_root.contains("needs root"), "{as_root}");
        assert!(as_root.contains("Operation not permitted"), "{as_root}");
        assert!(as_root.contains("immutable"), "{as_root}");
        let as_user = failure(eperm(), &p, false).to_string();
        assert!(as_user.contains("needs root"), "{as_user}");
    }

    #[test]
    fn a_later_file_with_a_lower_value_is_named() {
        let (d, h) = fake_host(128, 128);
        let etc = d.path().join("etc/sysctl.d");
        // Read before the managed file (10-) does not matter; 99- wins.
        crate::host::write_tree(
            &etc,
            &[
                ("10-early.conf", "fs.inotify.max_user_watches = 1\n"),
                ("99-late.conf", "fs.inotify.max_user_watches = 8192\n"),
            ],
        );
        let p = plan(&h, &Limits::default()).unwrap();
        assert_eq!(
            p.overridden,
            vec![Overridden {
                key: KEYS[1],
                file: PathBuf::from("/etc/sysctl.d/99-late.conf"),
                value: 8192,
                wanted: 65536,
            }]
        );
        // A same-named file in /usr/lib is masked by /etc's; /etc/sysctl.conf comes last.
        fs::remove_file(etc.join("99-late.conf")).unwrap();
        crate::host::write_tree(
            d.path(),
            &[
                (
                    "usr/lib/sysctl.d/99-late.conf",
                    "fs.inotify.max_user_instances = 5\n",
                ),
                ("etc/sysctl.d/99-late.conf", "# masked\n"),
                ("etc/sysctl.conf", "fs.inotify.max_user_instances=7\n"),
            ],
        );
        let p = plan(&h, &Limits::default()).unwrap();
        assert_eq!(p.overridden.len(), 1, "{:?}", p.overridden);
        assert_eq!(p.overridden[0].file, PathBuf::from("/etc/sysctl.conf"));
        assert_eq!(p.overridden[0].value, 7);
    }

    proptest::proptest! {
        /// Whatever files set the keys, the one named as winning at boot
        /// is the last setting in systemd-sysctl's order.
        #[test]
        fn the_winner_is_the_last_setting_in_boot_order(
            files in proptest::collection::vec(("[0-9]{2}-[a-c]", 0usize..3, proptest::option::of(1u64..100_000)), 0..6),
            conf in proptest::option::of(1u64..100_000),
        ) {
            let (d, h) = fake_host(1, 1);
            let mut by_name: std::collections::BTreeMap<String, (usize, Option<u64>)> = Default::default();
            for (name, dir, value) in &files {
                let dir_path = d.path().join(SYSCTL_DIRS[*dir].trim_start_matches('/'));
                fs::create_dir_all(&dir_path).unwrap();
                let text = value.map(|v| format!("{} = {v}\n", KEYS[0])).unwrap_or_default();
                fs::write(dir_path.join(format!("{name}.conf")), text).unwrap();
                let e = by_name.entry(name.clone()).or_insert((*dir, *value));
                if *dir <= e.0 {
                    *e = (*dir, *value);
                }
            }
            if let Some(v) = conf {
                fs::create_dir_all(d.path().join("etc")).unwrap();
                fs::write(d.path().join("etc/sysctl.conf"), format!("{} = {v}\n", KEYS[0])).unwrap();
            }
            let expected = conf.or_else(|| by_name.values().filter_map(|(_, v)| *v).next_back());
            let got = boot_value(&h, KEYS[0], None).map(|(_, v)| v);
            proptest::prop_assert_eq!(got, expected);
        }
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
