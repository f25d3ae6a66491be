//! The host systemd unit that keeps `cert-watch` running.
//!
//! The watcher must run on the host: only there are the host-side renewals
//! visible as they happen. `setup` installs this unit when
//! `ENABLE_CERTS_MONITORING=true`; the same text is shipped as
//! `examples/chatmail-cert-watch.service` for those who install by hand.

use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};

use crate::context::Context;
use crate::host::{shell_quote, Cmd};

/// The unit's name.
pub const UNIT_NAME: &str = "chatmail-cert-watch.service";

/// What installing the unit means on this host.
#[derive(Clone, Debug)]
pub struct UnitPlan {
    /// Where the unit file goes (under the host root).
    pub path: PathBuf,
    pub content: String,
    /// Whether the file must be written (absent or different).
    pub write: bool,
    /// Whether the host runs systemd; without it nothing is installed and
    /// [`UnitPlan::manual`] says how to run the watcher instead.
    pub systemd: bool,
    /// The commands to run after writing.
    pub commands: Vec<Cmd>,
    /// How to run the watcher by hand or under another supervisor.
    pub manual: String,
}

/// Quote one word of an `ExecStart=` line. systemd is not a shell: it
/// expands `%` specifiers and `$VAR` even inside quotes and knows no `'\''`
/// idiom, so those are escaped its way (`%%`, `$$`, C escapes in double
/// quotes).
fn systemd_quote(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%$".contains(c))
    {
        escaped
    } else {
        format!("\"{escaped}\"")
    }
}

/// Render the unit for this binary and deployment directory.
pub fn render(binary: &Path, dir: &Path) -> String {
    let exe = systemd_quote(&binary.to_string_lossy());
    let d = systemd_quote(&dir.to_string_lossy());
    format!(
        "# Installed by chatmail-docker setup (ENABLE_CERTS_MONITORING=true).\n\
         # Reloads nginx, Dovecot and Postfix in the chatmail container within a\n\
         # second of a certificate renewal on the host, and checks what they serve.\n\
         [Unit]\n\
         Description=chatmail-docker: reload the relay when its TLS certificate changes\n\
         Documentation=man:systemd.service(5)\n\
         After=docker.service network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exe} --dir {d} cert-watch\n\
         Restart=on-failure\n\
         RestartSec=10\n\
         # SIGTERM stops it at once; there is nothing to flush.\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=10\n\
         Nice=5\n\
         NoNewPrivileges=yes\n\
         PrivateTmp=yes\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// Plan the installation: the file, whether it changes, the systemctl calls.
pub fn unit_plan(ctx: &Context) -> Result<UnitPlan> {
    let binary = std::env::current_exe().context("cannot find the path of this program")?;
    let content = render(&binary, ctx.deployment.dir());
    let path = ctx.host.path(format!("/etc/systemd/system/{UNIT_NAME}"));
    let write = crate::host::read_input(&path, crate::host::MAX_CONFIG_BYTES)
        .map(|old| old != content.as_bytes())
        .unwrap_or(true);
    let systemd = ctx.host.path("/run/systemd/system").is_dir();
    let mut commands = Vec::new();
    if systemd {
        if write {
            commands.push(ctx.host.cmd("systemctl", ["daemon-reload"]));
        }
        commands.push(ctx.host.cmd("systemctl", ["enable", "--now", UNIT_NAME]));
        if write {
            // A running watcher keeps its old command line until restarted.
            commands.push(ctx.host.cmd("systemctl", ["try-restart", UNIT_NAME]));
        }
    }
    let manual = format!(
        "{} --dir {} cert-watch   (keep it running under your supervisor; it exits 0 on SIGTERM)",
        shell_quote(&binary.to_string_lossy()),
        shell_quote(&ctx.deployment.dir().to_string_lossy())
    );
    Ok(UnitPlan {
        path,
        content,
        write,
        systemd,
        commands,
        manual,
    })
}

/// Install and start the unit as planned; with `--dry-run` only print it.
pub fn apply_unit(ctx: &Context, plan: &UnitPlan) -> Result<()> {
    if !plan.systemd {
        ctx.shell.warn(format!(
            "this host does not run systemd, so {UNIT_NAME} is not installed; run the watcher yourself:\n  {}",
            plan.manual
        ));
        return Ok(());
    }
    if plan.write && ctx.dry_run {
        ctx.shell
            .out(format!("would write {}:", plan.path.display()));
        for line in plan.content.lines() {
            ctx.shell.out(format!("    {line}"));
        }
    } else if plan.write {
        if let Some(parent) = plan.path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        crate::host::write_atomic(&plan.path, plan.content.as_bytes(), 0o644)?;
        ctx.shell.status("Wrote", plan.path.display().to_string());
    } else if ctx.dry_run {
        ctx.shell
            .out(format!("{} is up to date", plan.path.display()));
    }
    for c in &plan.commands {
        ctx.run_or_show(c, "", |c| {
            let out = c.output(&ctx.shell)?;
            if !out.success() {
                anyhow::bail!(
                    "`{}` failed (exit {}): {}",
                    c.display(),
                    out.code,
                    out.stderr.trim()
                );
            }
            Ok(())
        })?;
    }
    if ctx.dry_run {
        return Ok(());
    }
    ctx.shell.status("Enabled", UNIT_NAME);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_binary_and_dir_quoted() {
        let u = render(
            Path::new("/usr/local/bin/chatmail-docker"),
            Path::new("/srv/chat mail"),
        );
        assert!(u.contains(
            "ExecStart=/usr/local/bin/chatmail-docker --dir \"/srv/chat mail\" cert-watch\n"
        ));
        assert!(u.contains("WantedBy=multi-user.target"));
        // Specifiers, variables, quotes and backslashes are systemd's to
        // escape, not a shell's.
        let u = render(
            Path::new("/usr/local/bin/chatmail-docker"),
            Path::new("/srv/100%$HOME/it's \"x\"\\"),
        );
        assert!(
            u.contains(r#"--dir "/srv/100%%$$HOME/it's \"x\"\\" cert-watch"#),
            "{u}"
        );
    }

    #[test]
    fn shipped_example_is_the_rendered_unit() {
        let example = include_str!("../../examples/chatmail-cert-watch.service");
        let rendered = render(
            Path::new("/usr/local/bin/chatmail-docker"),
            Path::new("/opt/chatmail-docker"),
        );
        assert_eq!(example, rendered);
    }
}
