//! `chatmail-docker metrics`: what an operator alerts on, in the Prometheus
//! text exposition format, on stdout or as a file for node_exporter's
//! textfile collector (`--textfile DIR` writes `DIR/chatmail-docker.prom`
//! atomically).
//!
//! A report, like `status`: it reads and changes nothing. The probes run
//! at the same time, each in a thread of its own (the TLS endpoints one
//! thread each), and read the host's files where they can: the Postfix
//! queue under `data/chatmail-postfix`, the mailboxes under `data/chatmail`,
//! the state files of `upgrade` and `cert-watch`, the backup directories.
//! Docker is asked only for the container (`compose`), the relay's units
//! (one `systemctl show` in the container, as `status` does), the image's
//! labels and its data root; every Docker call is stopped after
//! `--timeout` seconds.
//!
//! A probe that fails is a sample, never a missing file:
//! `chatmail_docker_probe_up{probe="...",reason="..."} 0`, and the run
//! still exits 0. Only a usage error (not a deployment directory, a
//! `--textfile` directory that cannot be written) exits non-zero; the
//! file written last stays as it was then.

pub mod backup;
pub mod expo;
pub mod mail;
pub mod relay;
pub mod state;

use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::{context::Context, engine, error};
use expo::{Def, Samples, Type};

/// The file `--textfile DIR` writes.
pub const TEXTFILE_NAME: &str = "chatmail-docker.prom";

/// What `metrics` is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Write `DIR/chatmail-docker.prom` instead of printing.
    pub textfile: Option<PathBuf>,
    /// Backup directories to report on; empty: the deployment's
    /// `backups/` (where `upgrade` keeps its backups) when it exists.
    pub backup_dirs: Vec<PathBuf>,
    /// The address the TLS endpoints are probed on.
    pub tls_host: String,
    /// The TLS endpoints: the relay's six.
    pub tls_ports: Vec<crate::certwatch::verify::Endpoint>,
    /// How long a Docker call or a TLS probe may take.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            textfile: None,
            backup_dirs: Vec::new(),
            tls_host: "127.0.0.1".into(),
            tls_ports: crate::certwatch::verify::parse_ports(
                crate::certwatch::verify::DEFAULT_PORTS,
            )
            .unwrap_or_default(),
            timeout: Duration::from_secs(10),
        }
    }
}

macro_rules! gauge {
    ($id:ident, $name:literal, $help:literal) => {
        pub static $id: Def = Def {
            name: $name,
            kind: Type::Gauge,
            help: $help,
        };
    };
}

gauge!(
    COLLECTED,
    "chatmail_docker_metrics_timestamp_seconds",
    "When these metrics were collected (Unix time)."
);
gauge!(
    DURATION,
    "chatmail_docker_metrics_duration_seconds",
    "How long collecting these metrics took."
);
gauge!(
    PROBE_UP,
    "chatmail_docker_probe_up",
    "Whether a probe could find out what it looks at (1) or not (0, with the reason); target names the port, filesystem or backup directory of probes that look at several."
);
gauge!(
    INFO,
    "chatmail_docker_info",
    "Always 1: the chatmail-docker version, and the relay release and commit the container's image was built from."
);
gauge!(
    RELAY_UP,
    "chatmail_docker_relay_up",
    "Whether this deployment's relay container is running."
);
gauge!(
    RELAY_HEALTHY,
    "chatmail_docker_relay_healthy",
    "Whether the relay container runs and its health check passes (every unit the relay's deploy enabled is active)."
);
gauge!(
    RELAY_STATE,
    "chatmail_docker_relay_state",
    "The container's state (1 for the current one): absent, created, running, restarting, paused, exited, removing or dead."
);
gauge!(
    RELAY_HEALTH,
    "chatmail_docker_relay_health",
    "The container's health check status (1 for the current one): starting, healthy, unhealthy or none."
);
gauge!(
    RELAY_START,
    "chatmail_docker_relay_start_time_seconds",
    "When the running container started (Unix time)."
);
gauge!(
    UNIT_ACTIVE,
    "chatmail_docker_unit_active",
    "Whether each of the relay's systemd units in the container is active; enabled is its unit file state."
);
gauge!(
    TLS_EXPIRY,
    "chatmail_docker_tls_certificate_expiry_timestamp_seconds",
    "When the certificate an endpoint serves expires (Unix time): TLS on 443, 465 and 993, STARTTLS on 25, 587 and 143."
);
gauge!(
    TLS_DISTINCT,
    "chatmail_docker_tls_certificates_distinct",
    "How many different certificates the endpoints that answered serve."
);
gauge!(
    TLS_CONSISTENT,
    "chatmail_docker_tls_certificates_consistent",
    "Whether every endpoint answered and all serve the same certificate."
);
gauge!(
    CERT_FILE_EXPIRY,
    "chatmail_docker_certificate_file_expiry_timestamp_seconds",
    "When the certificate on disk (the one cert-watch reloads the services into) expires (Unix time)."
);
gauge!(
    QUEUE,
    "chatmail_docker_postfix_queue_messages",
    "Messages in each Postfix queue (files under data/chatmail-postfix)."
);
gauge!(
    DEFERRED_AGE,
    "chatmail_docker_postfix_deferred_oldest_age_seconds",
    "How long ago the oldest message in the deferred queue arrived (0 when the queue is empty)."
);
gauge!(
    MAILBOXES,
    "chatmail_docker_mailboxes",
    "Mailboxes (accounts) in the relay's mailbox directory."
);
gauge!(
    MAILBOX_BYTES,
    "chatmail_docker_mailboxes_size_bytes",
    "Bytes of all files under the relay's mailbox directory."
);
gauge!(
    FS_FREE,
    "chatmail_docker_filesystem_free_bytes",
    "Free bytes (for unprivileged users) on the filesystem holding data/ (volume=data) and Docker's data root (volume=docker)."
);
gauge!(
    FS_SIZE,
    "chatmail_docker_filesystem_size_bytes",
    "Size in bytes of the filesystem holding data/ (volume=data) and Docker's data root (volume=docker)."
);
gauge!(
    BACKUP_LAST,
    "chatmail_docker_backup_last_timestamp_seconds",
    "When the last backup in this directory ran (Unix time), whether it succeeded or not."
);
gauge!(
    BACKUP_LAST_OK,
    "chatmail_docker_backup_last_success",
    "Whether the last backup in this directory succeeded: a complete archive whose header reads, with its manifest beside it."
);
gauge!(
    BACKUP_LAST_SUCCESS,
    "chatmail_docker_backup_last_success_timestamp_seconds",
    "When the newest complete backup in this directory was made (Unix time; 0: none)."
);
gauge!(
    BACKUP_LAST_SIZE,
    "chatmail_docker_backup_last_size_bytes",
    "Size of the newest complete backup archive in this directory."
);
gauge!(
    BACKUP_ARCHIVES,
    "chatmail_docker_backup_archives",
    "Backup archives in this directory."
);
gauge!(
    BACKUP_FOREIGN,
    "chatmail_docker_backup_foreign_files",
    "Files in this backup directory that chatmail-docker did not write."
);
gauge!(
    UPGRADE_UNFINISHED,
    "chatmail_docker_upgrade_unfinished",
    "Whether data/.upgrade-state.json records an upgrade that is running or was stopped half way."
);
gauge!(
    UPGRADE_LAST,
    "chatmail_docker_upgrade_last_timestamp_seconds",
    "When the last upgrade finished its swap to a new release (Unix time)."
);
gauge!(
    ROLLBACK_LAST,
    "chatmail_docker_upgrade_last_rollback_timestamp_seconds",
    "When the last rollback finished (Unix time); automatic=true: the upgrade rolled back by itself because the new release failed."
);
gauge!(
    CERTWATCH_RUNNING,
    "chatmail_docker_certwatch_running",
    "Whether a cert-watch process runs (its systemd unit, or a live pid file)."
);
gauge!(
    CERTWATCH_LAST,
    "chatmail_docker_certwatch_last_reload_timestamp_seconds",
    "When cert-watch last reloaded the services into a new certificate (Unix time)."
);
gauge!(
    CERTWATCH_VERIFIED,
    "chatmail_docker_certwatch_last_reload_verified",
    "Whether the endpoints served the new certificate after cert-watch's last reload."
);
gauge!(
    CERTWATCH_PENDING,
    "chatmail_docker_certwatch_pending",
    "Whether the certificate on disk differs from the one cert-watch last reloaded the services into (a change not applied yet, or a reload that failed)."
);
gauge!(
    INOTIFY_INSTANCES,
    "chatmail_docker_inotify_max_user_instances",
    "The host's fs.inotify.max_user_instances (the relay's services need at least 65536)."
);
gauge!(
    INOTIFY_WATCHES,
    "chatmail_docker_inotify_max_user_watches",
    "The host's fs.inotify.max_user_watches (the relay's services need at least 65536)."
);

/// Every family, in the order they are printed.
pub static ALL: &[&Def] = &[
    &COLLECTED,
    &DURATION,
    &PROBE_UP,
    &INFO,
    &RELAY_UP,
    &RELAY_HEALTHY,
    &RELAY_STATE,
    &RELAY_HEALTH,
    &RELAY_START,
    &UNIT_ACTIVE,
    &TLS_EXPIRY,
    &TLS_DISTINCT,
    &TLS_CONSISTENT,
    &CERT_FILE_EXPIRY,
    &QUEUE,
    &DEFERRED_AGE,
    &MAILBOXES,
    &MAILBOX_BYTES,
    &FS_FREE,
    &FS_SIZE,
    &BACKUP_LAST,
    &BACKUP_LAST_OK,
    &BACKUP_LAST_SUCCESS,
    &BACKUP_LAST_SIZE,
    &BACKUP_ARCHIVES,
    &BACKUP_FOREIGN,
    &UPGRADE_UNFINISHED,
    &UPGRADE_LAST,
    &ROLLBACK_LAST,
    &CERTWATCH_RUNNING,
    &CERTWATCH_LAST,
    &CERTWATCH_VERIFIED,
    &CERTWATCH_PENDING,
    &INOTIFY_INSTANCES,
    &INOTIFY_WATCHES,
];

/// What `metrics --help` and its manual page say about each metric.
pub fn describe() -> String {
    let mut text = String::from(
        "Print the relay's state as Prometheus metrics, or write them for node_exporter's textfile collector.\n\nThe text exposition format on standard output; with --textfile DIR, the file DIR/chatmail-docker.prom, replaced atomically. A probe that fails is a sample, chatmail_docker_probe_up{probe,target,reason} 0, and the run exits 0; only a usage error (not a deployment directory, a --textfile directory that cannot be written) exits non-zero. Safe to run every minute: it changes nothing.\n\nMetrics:",
    );
    for d in ALL {
        text.push_str(&format!("\n  {}: {}", d.name, d.help));
    }
    text
}

/// `probe_up` for `probe` (and its `target`): 1, or 0 with `reason`.
pub fn probe(out: &mut Samples, probe: &str, target: &str, failed: Option<&str>) {
    out.add(
        &PROBE_UP,
        &[
            ("probe", probe),
            ("target", target),
            ("reason", failed.unwrap_or("")),
        ],
        if failed.is_some() { 0.0 } else { 1.0 },
    );
}

/// Seconds since the epoch (negative before it).
pub fn unix(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// An RFC 3339 time as Unix seconds.
pub fn unix_rfc3339(text: &str) -> Option<f64> {
    engine::parse_time(text)
        .or_else(|| humantime::parse_rfc3339_weak(text).ok())
        .map(unix)
}

/// The short reason for a failed Docker call: `timeout`, `docker_missing`
/// (the program cannot be started) or `docker_failed`.
pub fn docker_reason(e: &anyhow::Error) -> &'static str {
    if e.chain().any(|c| c.is::<crate::host::TimedOut>()) {
        "timeout"
    } else if e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    }) {
        "docker_missing"
    } else {
        "docker_failed"
    }
}

/// The short reason for a failed file operation.
pub fn io_reason(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => "missing",
        std::io::ErrorKind::PermissionDenied => "permission_denied",
        std::io::ErrorKind::NotADirectory => "not_a_directory",
        _ => "io_error",
    }
}

/// Collect every metric. Each probe runs in a thread of its own; one that
/// panics is reported as `reason="internal_error"`.
pub fn collect(ctx: &Context, opts: &Options) -> Samples {
    let started = Instant::now();
    let settings = match ctx.settings() {
        Ok(s) => s,
        Err(e) => {
            ctx.shell.verbose(format!("metrics without .env: {e:#}"));
            Default::default()
        }
    };
    let backup_dirs = if opts.backup_dirs.is_empty() {
        let own = ctx.path(crate::upgrade::BACKUP_DIR);
        if own.is_dir() {
            vec![own]
        } else {
            Vec::new()
        }
    } else {
        opts.backup_dirs.clone()
    };
    let mut out = Samples::default();
    let parts: Vec<Samples> = std::thread::scope(|s| {
        let settings = &settings;
        let mut jobs: Vec<(&str, std::thread::ScopedJoinHandle<'_, Samples>)> = vec![
            ("relay", s.spawn(|| relay::container(ctx))),
            ("tls", s.spawn(|| relay::tls(ctx, settings, opts))),
            ("postfix_queue", s.spawn(|| mail::queue(ctx))),
            ("mailboxes", s.spawn(|| mail::mailboxes(ctx, settings))),
            ("filesystem", s.spawn(|| mail::filesystems(ctx))),
            ("certificate_file", s.spawn(|| state::certificate(ctx))),
            ("upgrade", s.spawn(|| state::upgrade(ctx))),
        ];
        for dir in &backup_dirs {
            jobs.push(("backup", s.spawn(move || backup::directory(ctx, dir))));
        }
        let mut parts = vec![state::inotify(ctx)];
        for (name, job) in jobs {
            parts.push(job.join().unwrap_or_else(|_| {
                let mut failed = Samples::default();
                probe(&mut failed, name, "", Some("internal_error"));
                failed
            }));
        }
        parts
    });
    out.add(&COLLECTED, &[], unix(SystemTime::now()).floor());
    out.add(
        &DURATION,
        &[],
        (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    );
    for p in parts {
        out.extend(p);
    }
    out
}

/// The text `metrics` prints or writes.
pub fn render(samples: &Samples) -> String {
    expo::render(ALL, samples)
}

/// Refuse a `--textfile` directory that cannot take the file, before any
/// probe runs.
pub fn check_textfile_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        error::usage(format!(
            "--textfile {}: {}; give the directory node_exporter's textfile collector reads (--collector.textfile.directory)",
            dir.display(),
            match e.kind() {
                std::io::ErrorKind::NotFound => "no such directory".to_string(),
                _ => e.to_string(),
            }
        ))
    })?;
    if !meta.is_dir() {
        return Err(error::usage(format!(
            "--textfile {} is not a directory; give the directory node_exporter's textfile collector reads",
            dir.display()
        )));
    }
    if rustix::fs::access(
        dir,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    )
    .is_err()
    {
        return Err(error::usage(format!(
            "--textfile {}: this user cannot write there; run as a user that can (root, or the collector's group)",
            dir.display()
        )));
    }
    Ok(())
}

/// `chatmail-docker metrics`.
pub fn run(ctx: &Context, opts: &Options) -> Result<()> {
    engine::require_compose_file(ctx)?;
    if let Some(dir) = &opts.textfile {
        check_textfile_dir(dir)?;
    }
    // Every Docker call of the probes ends within the timeout.
    let probing = ctx.with_host(ctx.host.clone().with_command_limit(opts.timeout));
    let text = render(&collect(&probing, opts));
    let Some(dir) = &opts.textfile else {
        ctx.shell.data(text.trim_end_matches('\n'));
        return Ok(());
    };
    let file = dir.join(TEXTFILE_NAME);
    if ctx.dry_run {
        ctx.shell.data(text.trim_end_matches('\n'));
        ctx.shell
            .note(format!("would write {} (mode 0644)", file.display()));
        ctx.dry_run_done();
        return Ok(());
    }
    crate::host::write_atomic(&file, text.as_bytes(), 0o644)
        .with_context(|| format!("the last {} written is kept", file.display()))
        .map_err(|e| error::usage(format!("{e:#}")))?;
    ctx.shell.verbose(format!("wrote {}", file.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let mut seen = std::collections::BTreeSet::new();
        for d in ALL {
            assert!(expo::valid_name(d.name, false), "{}", d.name);
            assert!(d.name.starts_with("chatmail_docker_"), "{}", d.name);
            assert!(seen.insert(d.name), "{} twice", d.name);
            assert_eq!(
                d.name.ends_with("_total"),
                d.kind == Type::Counter,
                "{}: _total is for counters only",
                d.name
            );
            for unit in ["_seconds", "_bytes"] {
                if d.name.contains(unit) {
                    assert!(d.name.ends_with(unit), "{}: the unit ends the name", d.name);
                }
            }
            for wrong in ["_ms", "_millis", "_days", "_kb", "_mb", "_percent", "_time"] {
                assert!(
                    !d.name.ends_with(wrong),
                    "{}: use base units (seconds, bytes, ratios)",
                    d.name
                );
            }
            assert!(
                d.help.ends_with('.') && !d.help.contains('\n'),
                "{}: one sentence of help",
                d.name
            );
        }
    }

    #[test]
    fn reasons_from_docker_errors() {
        let timed_out: anyhow::Error = crate::host::TimedOut {
            command: "docker compose ps".into(),
            limit: Duration::from_secs(1),
        }
        .into();
        assert_eq!(docker_reason(&timed_out.context("asking")), "timeout");
        let missing = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context("could not start `docker`");
        assert_eq!(docker_reason(&missing), "docker_missing");
        assert_eq!(
            docker_reason(&anyhow::anyhow!("`docker compose ps` failed")),
            "docker_failed"
        );
    }

    #[test]
    fn times() {
        assert_eq!(unix_rfc3339("1970-01-01T00:01:40Z"), Some(100.0));
        assert_eq!(
            unix_rfc3339("2026-11-23T15:00:01.123456789Z"),
            Some(1_795_446_001.0)
        );
        assert_eq!(unix_rfc3339("yesterday"), None);
    }
}
