//! Make the services pick up a new certificate.
//!
//! By default nginx, Dovecot and Postfix are reloaded inside the container
//! (`docker exec <container> systemctl reload ...`, the deployment's
//! container found by Compose's labels: no `docker compose` process, which
//! would read the project's files first, on the way). A unit whose
//! reload fails is restarted; a container that is not running is reported
//! as such so the caller can retry with backoff once it is back. A custom
//! `--reload-command` replaces all of this with `sh -c CMD`.

use std::time::Duration;

use crate::context::Context;
use crate::engine;

/// The units serving TLS inside the container.
pub const UNITS: &[&str] = &["nginx", "dovecot", "postfix"];

/// Exit code a custom reload command uses to say "not now, try again later"
/// (sysexits' EX_TEMPFAIL), like a container that is down.
pub const EXIT_TEMPFAIL: i32 = 75;

/// How to reload.
#[derive(Clone, Debug)]
pub enum Reloader {
    /// systemctl inside the deployment's container.
    Container,
    /// `sh -c CMD`, with the certificate described in the environment.
    Command(String),
}

/// Reload (the normal case) or restart (when a reload did not take).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Reload,
    Restart,
}

impl Action {
    pub fn word(self) -> &'static str {
        match self {
            Action::Reload => "reload",
            Action::Restart => "restart",
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the text says what was done.
    Done(String),
    /// The container is not running (or the command asked to retry later).
    NotNow(String),
    Failed(String),
}

/// Facts about the certificate handed to a custom command as environment
/// variables (`CERT_FINGERPRINT`, `CERT_LEAF_SHA256`, `CERT_FILE`,
/// `KEY_FILE`, `CERT_NOT_AFTER`, `CERT_WATCH_ACTION`).
#[derive(Clone, Debug, Default)]
pub struct CertEnv {
    pub fingerprint: String,
    pub leaf_sha256: String,
    pub cert_file: String,
    pub key_file: String,
    pub not_after: String,
    pub domain: String,
}

/// Reload (or restart); every command run is stopped, with what it
/// started, after `limit`: a hanging reload fails instead of blocking the
/// watcher forever.
pub fn run(
    ctx: &Context,
    how: &Reloader,
    action: Action,
    cert: &CertEnv,
    limit: Duration,
) -> Outcome {
    match how {
        Reloader::Command(cmd) => run_command(ctx, cmd, action, cert, limit),
        Reloader::Container => run_container(ctx, action, limit),
    }
}

fn timed_out(what: &str, limit: Duration) -> Outcome {
    Outcome::Failed(format!(
        "{what} did not finish within {} s and was stopped; raise --reload-timeout if it needs longer",
        limit.as_secs()
    ))
}

fn run_command(
    ctx: &Context,
    cmd: &str,
    action: Action,
    cert: &CertEnv,
    limit: Duration,
) -> Outcome {
    let c = ctx
        .host
        .cmd("sh", ["-c", cmd])
        .env("CERT_WATCH_ACTION", action.word())
        .env("CERT_FINGERPRINT", &cert.fingerprint)
        .env("CERT_LEAF_SHA256", &cert.leaf_sha256)
        .env("CERT_FILE", &cert.cert_file)
        .env("KEY_FILE", &cert.key_file)
        .env("CERT_NOT_AFTER", &cert.not_after)
        .env("MAIL_DOMAIN", &cert.domain);
    match c.status_within(&ctx.shell, limit) {
        Ok(None) => timed_out("the reload command", limit),
        Ok(Some(0)) => Outcome::Done(format!("ran the reload command ({})", action.word())),
        Ok(Some(EXIT_TEMPFAIL)) => Outcome::NotNow(format!(
            "the reload command exited with {EXIT_TEMPFAIL} (try again later)"
        )),
        Ok(Some(code)) => Outcome::Failed(format!("the reload command exited with status {code}")),
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn run_container(ctx: &Context, action: Action, limit: Duration) -> Outcome {
    // Straight to the engine: `docker compose` would first read and merge
    // the project's files, at every reload.
    let found = match engine::find_direct(ctx, engine::Containers::Any) {
        Ok(f) => f,
        Err(e) => {
            return Outcome::NotNow(format!(
                "cannot ask Docker for the {} container ({e:#})",
                engine::SERVICE
            ))
        }
    };
    let container = match found {
        None => {
            return Outcome::NotNow(format!(
                "the {} container is not running (there is none)",
                engine::SERVICE
            ))
        }
        // Another deployment's container is never reloaded (nor restarted).
        Some(f) if !f.is_ours() => return Outcome::Failed(format!("{:#}", f.foreign_error(ctx))),
        Some(f) if !f.container.state.running => {
            return Outcome::NotNow(format!(
                "the {} container is not running ({})",
                engine::SERVICE,
                f.container.state.status
            ))
        }
        Some(f) => f.container,
    };
    let exec = |args: Vec<&str>| -> anyhow::Result<crate::host::Captured> {
        let c = engine::exec_in_cmd(ctx, &container.id, args);
        c.output_within(&ctx.shell, limit)?.ok_or_else(|| {
            anyhow::anyhow!(
                "`{}` did not finish within {} s and was stopped; raise --reload-timeout if it needs longer",
                c.display(),
                limit.as_secs()
            )
        })
    };
    let mut all = vec!["systemctl", action.word()];
    all.extend(UNITS);
    let first = match exec(all) {
        Ok(o) => o,
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    if first.success() {
        return Outcome::Done(format!("{}ed {}", action.word(), UNITS.join(" ")));
    }
    if !still_running(ctx, &container.id) {
        return Outcome::NotNow(format!(
            "the {} container is not running ({})",
            engine::SERVICE,
            last_line(&first.stderr)
        ));
    }
    // Find the unit that failed and restart it; reload the others.
    let mut done = Vec::new();
    for unit in UNITS {
        let ok = matches!(exec(vec!["systemctl", action.word(), unit]), Ok(o) if o.success());
        if ok {
            done.push(format!("{}ed {unit}", action.word()));
            continue;
        }
        match exec(vec!["systemctl", "restart", unit]) {
            Ok(o) if o.success() => done.push(format!("restarted {unit} (its reload failed)")),
            Ok(o) => {
                return Outcome::Failed(format!(
                    "{unit} could not be reloaded nor restarted: {}",
                    last_line(&o.stderr)
                ))
            }
            Err(e) => return Outcome::Failed(format!("{e:#}")),
        }
    }
    Outcome::Done(done.join(", "))
}

/// Whether the container `id` still runs (it may have stopped, or been
/// replaced, while the reload ran).
fn still_running(ctx: &Context, id: &str) -> bool {
    engine::inspect(ctx, id).is_ok_and(|c| c.state.running)
}

/// Pause before retry number `attempt` (1-based): 1 s, 2 s, 4 s ... 5 min.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }
}
