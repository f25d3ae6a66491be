//! The one pause a backup makes: Postfix's processes are frozen while the
//! mail queue is copied, and thawed on every way out.
//!
//! Why freezing: Postfix writes a queue file completely and fsyncs it
//! before it acknowledges a message, and its queue manager renames files
//! between the queue directories; a copy taken while every Postfix process
//! stands still is exactly what Postfix finds after a power loss, which it
//! is built to recover from (an incomplete file in `incoming/` is removed
//! after `max_idle`, `postfix start` runs `postsuper`, which renames queue
//! files whose name no longer matches their inode on the new disk).
//! `postfix stop`/`start` would drop every SMTP session and take seconds;
//! the cgroup freezer (`systemctl freeze`) stops all processes of the unit
//! at once, connections wait in the kernel's listen queue and nothing is
//! refused. Where the freezer is unavailable, SIGSTOP/SIGCONT to the unit's
//! processes does the same less atomically.
//!
//! The thaw is a shell started in the container before the freeze and
//! waiting on a pipe: it thaws as soon as it reads a line, so the pause
//! does not include the start of a `docker compose exec`, and also when
//! the pipe closes because this process died. A timer in the container
//! thaws the unit after [`WATCHDOG_SECS`] in any case; [`Pause`]'s drop thaws it on every
//! other exit (errors, panics, Ctrl-C/SIGTERM, which the tool counts
//! instead of dying, see `engine::signal_count`).

use anyhow::Result;
use std::time::{Duration, Instant};

use crate::context::Context;
use crate::engine;

/// The unit that runs Postfix's master in Debian's packaging
/// (`postfix.service` is a stub that starts it).
pub const POSTFIX_UNIT: &str = "postfix@-.service";
/// The watchdog's transient unit in the container.
pub const WATCHDOG_UNIT: &str = "chatmail-backup-thaw";
/// How long a pause may last at most, whatever happens to this process.
pub const WATCHDOG_SECS: u64 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Freezer,
    Sigstop,
}

/// A paused Postfix; thawed when dropped.
pub struct Pause<'a> {
    ctx: &'a Context,
    method: Method,
    started: Instant,
    resumed: Option<Duration>,
    watchdog: bool,
    thawer: Option<Thawer>,
}

/// A shell in the container, started before the freeze, that thaws
/// Postfix as soon as it reads a line, or its input closes (this process
/// died): the thaw then costs a pipe write, not the start of another
/// `docker compose exec`.
struct Thawer {
    input: std::io::PipeWriter,
    output: std::io::BufReader<duct::ReaderHandle>,
}

const THAWER: &str = "echo ready; read _; systemctl thaw postfix@-.service; \
                      systemctl kill --signal=SIGCONT postfix@-.service; echo thawed";

impl Thawer {
    fn start(ctx: &Context) -> Result<Thawer> {
        use std::io::BufRead;
        let (reader, input) = std::io::pipe()?;
        let handle = engine::exec_cmd(ctx, ["sh", "-c", THAWER])
            .expr(&ctx.shell)
            .stdin_file(reader)
            .stderr_null()
            .unchecked()
            .reader()?;
        let mut output = std::io::BufReader::new(handle);
        let mut line = String::new();
        output.read_line(&mut line)?;
        if line.trim() != "ready" {
            anyhow::bail!("the thawing shell did not start");
        }
        Ok(Thawer { input, output })
    }

    fn thaw(mut self) -> Result<()> {
        use std::io::{BufRead, Write};
        self.input.write_all(b"go\n")?;
        drop(self.input);
        let mut line = String::new();
        while self.output.read_line(&mut line)? > 0 {
            if line.trim() == "thawed" {
                return Ok(());
            }
            line.clear();
        }
        anyhow::bail!("the thawing shell ended early")
    }
}

fn exec_ok(ctx: &Context, args: &[&str]) -> Result<Result<(), String>> {
    let out = engine::exec_output(ctx, args)?;
    Ok(if out.success() {
        Ok(())
    } else {
        Err(format!("{}{}", out.stderr.trim(), out.stdout.trim()))
    })
}

impl<'a> Pause<'a> {
    /// Arm the watchdog, then freeze Postfix (or stop its processes).
    pub fn start(ctx: &'a Context) -> Result<Pause<'a>> {
        let resume = format!(
            "systemctl thaw {POSTFIX_UNIT}; systemctl kill --signal=SIGCONT {POSTFIX_UNIT}"
        );
        let secs = format!("--on-active={WATCHDOG_SECS}");
        let watchdog = match exec_ok(
            ctx,
            &[
                "systemd-run",
                "--quiet",
                "--collect",
                "--unit",
                WATCHDOG_UNIT,
                &secs,
                "/bin/sh",
                "-c",
                &resume,
            ],
        )? {
            Ok(()) => true,
            Err(e) => {
                ctx.shell.warn(format!(
                    "no watchdog timer in the container ({e}); Postfix is thawed by this process only"
                ));
                false
            }
        };
        let thawer = match Thawer::start(ctx) {
            Ok(t) => Some(t),
            Err(e) => {
                ctx.shell.verbose(format!(
                    "no waiting thaw shell ({e}); thawing with a new exec"
                ));
                None
            }
        };
        let mut pause = Pause {
            ctx,
            method: Method::Freezer,
            started: Instant::now(),
            resumed: None,
            watchdog,
            thawer,
        };
        match exec_ok(ctx, &["systemctl", "freeze", POSTFIX_UNIT])? {
            Ok(()) => {}
            Err(freeze_err) => {
                pause.method = Method::Sigstop;
                if let Err(e) = exec_ok(
                    ctx,
                    &["systemctl", "kill", "--signal=SIGSTOP", POSTFIX_UNIT],
                )? {
                    // Nothing is paused; do not try to resume on drop.
                    pause.resumed = Some(Duration::ZERO);
                    anyhow::bail!(
                        "cannot pause Postfix: `systemctl freeze` said: {freeze_err}; SIGSTOP: {e}"
                    );
                }
            }
        }
        pause.started = Instant::now();
        Ok(pause)
    }

    pub fn method(&self) -> Method {
        self.method
    }

    fn stop_watchdog(&self) {
        if self.watchdog {
            let timer = format!("{WATCHDOG_UNIT}.timer");
            let _ = exec_ok(self.ctx, &["systemctl", "stop", &timer]);
        }
    }

    /// Thaw now; the pause's length (freeze returned .. thaw returned).
    /// Tried three times: a Ctrl-C can kill one `docker compose exec`.
    pub fn resume(&mut self) -> Result<Duration> {
        if let Some(d) = self.resumed {
            return Ok(d);
        }
        if let Some(t) = self.thawer.take() {
            match t.thaw() {
                Ok(()) => {
                    let d = self.started.elapsed();
                    self.resumed = Some(d);
                    self.stop_watchdog();
                    return Ok(d);
                }
                Err(e) => self.ctx.shell.warn(format!(
                    "the waiting thaw shell failed ({e}); thawing with a new exec"
                )),
            }
        }
        let args: &[&str] = match self.method {
            Method::Freezer => &["systemctl", "thaw", POSTFIX_UNIT],
            Method::Sigstop => &["systemctl", "kill", "--signal=SIGCONT", POSTFIX_UNIT],
        };
        let mut last = String::new();
        for _ in 0..3 {
            match exec_ok(self.ctx, args) {
                Ok(Ok(())) => {
                    let d = self.started.elapsed();
                    self.resumed = Some(d);
                    self.stop_watchdog();
                    return Ok(d);
                }
                Ok(Err(e)) => last = e,
                Err(e) => last = e.to_string(),
            }
        }
        anyhow::bail!(
            "could not resume Postfix ({last}); run `chatmail-docker exec -- systemctl thaw {POSTFIX_UNIT}`{}",
            if self.watchdog {
                format!(" (the container's watchdog does it within {WATCHDOG_SECS} s)")
            } else {
                String::new()
            }
        )
    }
}

impl Drop for Pause<'_> {
    fn drop(&mut self) {
        if self.resumed.is_none() {
            if let Err(e) = self.resume() {
                self.ctx.shell.error(e.to_string());
            }
        }
    }
}
