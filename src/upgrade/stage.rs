//! Deploy an image beside the running relay: a side container without
//! network runs the relay's `configure,activate` for this deployment's
//! settings, and what the deploy wrote becomes a new image (`docker
//! commit`). A container from that image finds its deploy done (the init's
//! fingerprint: image, chatmail.ini, mounted files) and starts its
//! services at once: the swap costs a restart, not a deploy.
//!
//! What the side container gets:
//! - the settings as Compose would pass them (`docker compose config`), in
//!   a file in its state directory that the init reads
//!   (`stage-env.json`), not as environment: nothing of `.env` ends up in
//!   the image's configuration;
//! - copies of the DKIM keys, the ACME state and the appliance's state
//!   (the self-signed certificate), empty mailboxes and an empty mail
//!   queue, so the running relay's mail is never touched;
//! - every other mount as the running relay has it (custom/ files, the
//!   certificate directories of `tls_external_cert_and_key`), read as they
//!   are configured.
//!
//! The copies are removed with the side container, whatever happens.

use anyhow::{bail, Context as _, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::compose::{self, Project};
use crate::{error, Context};

/// The label a deployed image carries (the time of its deploy).
pub const DEPLOYED_LABEL: &str = "org.chatmail-docker.deployed";
/// The side container's name.
const NAME: &str = "chatmail-upgrade-stage";
/// Where the copies live while it runs, relative to the deployment.
const STAGE_DIR: &str = "data/.upgrade-stage";

/// The persistent mounts: (target, what the side container gets).
const DATA: &[(&str, Seed)] = &[
    ("/etc/dkimkeys", Seed::Copy),
    ("/var/lib/acme", Seed::Copy),
    ("/var/lib/chatmail-docker", Seed::Copy),
    ("/home", Seed::Empty),
    ("/var/spool/postfix", Seed::Empty),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Seed {
    Copy,
    Empty,
}

/// Whether an image is one this module made.
pub fn is_deployed(ctx: &Context, image: &str) -> bool {
    ctx.host
        .cmd(
            "docker",
            [
                "image",
                "inspect",
                "--format",
                &format!("{{{{index .Config.Labels \"{DEPLOYED_LABEL}\"}}}}"),
                image,
            ],
        )
        .output(&ctx.shell)
        .is_ok_and(|o| {
            o.success() && !o.stdout.trim().is_empty() && o.stdout.trim() != "<no value>"
        })
}

/// The service as `docker compose config` resolves it.
fn service_config(ctx: &Context) -> Result<serde_json::Value> {
    let out = Project::new(ctx)
        .cmd(ctx, ["config", "--format", "json"])
        .output(&ctx.shell)?;
    if !out.success() {
        bail!(
            "docker compose cannot read the configuration: {}",
            out.stderr.trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).context("`docker compose config` is not JSON")?;
    Ok(v["services"][compose::SERVICE].clone())
}

/// Whether the host has IPv6 (as the init decides it in the container).
fn host_has_ipv6(ctx: &Context) -> bool {
    std::fs::read_to_string(ctx.host.path("/proc/net/if_inet6")).is_ok_and(|t| !t.trim().is_empty())
}

/// Removes the side container and the copies when dropped.
struct Cleanup<'a> {
    ctx: &'a Context,
    dir: PathBuf,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        remove_container(self.ctx);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn remove_container(ctx: &Context) {
    let _ = ctx
        .host
        .cmd("docker", ["rm", "--force", "--volumes", NAME])
        .output(&ctx.shell);
}

fn docker(ctx: &Context, args: &[&str]) -> Result<String> {
    let cmd = ctx.host.cmd("docker", args.iter().copied());
    let out = cmd.output(&ctx.shell)?;
    if !out.success() {
        bail!("`{}` failed: {}", cmd.display(), out.stderr.trim());
    }
    Ok(out.stdout.trim().to_string())
}

/// `cp -a` of a directory's content (owners, modes, links kept).
fn copy_tree(ctx: &Context, from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    if !from.is_dir() {
        return Ok(());
    }
    let mut src = from.as_os_str().to_owned();
    src.push("/.");
    let cmd = ctx.host.cmd("cp", ["-a"]).arg(src).arg(to);
    let out = cmd.output(&ctx.shell)?;
    if !out.success() {
        bail!("copying {} failed: {}", from.display(), out.stderr.trim());
    }
    Ok(())
}

/// The settings file the init reads in the side container.
fn stage_env(svc: &serde_json::Value, ipv6: bool) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = svc["environment"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    env.insert(
        "CHATMAIL_HOST_IPV6".into(),
        if ipv6 { "true" } else { "false" }.into(),
    );
    env.insert("CHATMAIL_SKIP_DNS_CHECK".into(), "true".into());
    env
}

/// Deploy `image` in a side container; returns the deployed image's ID.
/// `interrupted` is asked while waiting: a true answer stops it.
pub fn deploy_aside(
    ctx: &Context,
    image: &str,
    timeout: Duration,
    interrupted: &dyn Fn() -> bool,
) -> Result<String> {
    let svc = service_config(ctx)?;
    let dir = ctx.deployment.path(STAGE_DIR);
    remove_container(ctx);
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = Cleanup {
        ctx,
        dir: dir.clone(),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(
        &dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
    )?;

    let mut args: Vec<String> = [
        "run",
        "--detach",
        "--name",
        NAME,
        "--network",
        "none",
        "--cgroupns",
        "host",
        "--tty",
        "--stop-signal",
        "SIGRTMIN+3",
    ]
    .map(String::from)
    .to_vec();
    let ipv6 = host_has_ipv6(ctx);
    if ipv6 {
        // Docker gives a container without network no IPv6, not even ::1,
        // where the relay's resolver listens when the host has IPv6.
        for key in ["all", "lo"] {
            args.push("--sysctl".into());
            args.push(format!("net.ipv6.conf.{key}.disable_ipv6=0"));
        }
    }
    for t in svc["tmpfs"].as_array().into_iter().flatten() {
        if let Some(t) = t.as_str() {
            args.push("--tmpfs".into());
            args.push(t.to_string());
        }
    }
    let mut seeded = Vec::new();
    for v in svc["volumes"].as_array().into_iter().flatten() {
        let kind = v["type"].as_str().unwrap_or("");
        let target = v["target"].as_str().unwrap_or("");
        let source = v["source"].as_str().unwrap_or("");
        let read_only = v["read_only"].as_bool().unwrap_or(false);
        if let Some((_, seed)) = DATA.iter().find(|(t, _)| *t == target) {
            let copy = dir.join(target.trim_start_matches('/').replace('/', "-"));
            match seed {
                Seed::Copy => copy_tree(ctx, Path::new(source), &copy)?,
                Seed::Empty => std::fs::create_dir_all(&copy)?,
            }
            args.push("--mount".into());
            args.push(format!(
                "type=bind,source={},target={target}",
                copy.display()
            ));
            seeded.push((target, copy));
            continue;
        }
        if kind != "bind" {
            bail!(
                "the {kind} mount at {target} (from a compose override) cannot be given to a side container"
            );
        }
        if source.contains(',') || target.contains(',') {
            bail!("the mount {source} -> {target} has a comma in a path");
        }
        args.push("--mount".into());
        args.push(format!(
            "type=bind,source={source},target={target}{}",
            if read_only { ",readonly" } else { "" }
        ));
    }
    let state = seeded
        .iter()
        .find(|(t, _)| *t == "/var/lib/chatmail-docker")
        .map(|(_, p)| p.clone())
        .context("the compose file mounts no state directory at /var/lib/chatmail-docker")?;
    let env = stage_env(&svc, ipv6);
    crate::host::write_atomic(
        &state.join("stage-env.json"),
        &serde_json::to_vec(&env)?,
        0o600,
    )?;
    args.push(image.to_string());
    docker(ctx, &args.iter().map(String::as_str).collect::<Vec<_>>())?;

    // Until its health check passes, or the init failed.
    let start = Instant::now();
    loop {
        let c = compose::inspect(ctx, NAME)?;
        if !c.state.running {
            bail!(
                "the side container stopped (exit code {})",
                c.state.exit_code
            );
        }
        if let Some(reason) = c.init_failure() {
            let logs = ctx
                .host
                .cmd("docker", ["logs", "--tail", "25", NAME])
                .output(&ctx.shell)
                .map(|o| format!("{}{}", o.stdout, o.stderr))
                .unwrap_or_default();
            return Err(error::Failure {
                code: error::EXIT_RUNTIME,
                message: Some(format!(
                    "{reason}\nlast log lines of the side container:\n{}",
                    logs.lines()
                        .map(|l| format!("  | {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )),
            }
            .into());
        }
        match c.health_status() {
            Some("healthy") => break,
            Some("unhealthy") => bail!(
                "the side container is unhealthy: {}",
                c.last_health_output().unwrap_or_default()
            ),
            _ => {}
        }
        if interrupted() {
            return Err(error::Failure {
                code: 130,
                message: Some("interrupted while deploying beside the relay".into()),
            }
            .into());
        }
        if start.elapsed() >= timeout {
            bail!(
                "the side container did not become healthy within {}s",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    docker(ctx, &["stop", "--time", "60", NAME])?;
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let id = docker(
        ctx,
        &[
            "commit",
            "--change",
            &format!("LABEL {DEPLOYED_LABEL}={stamp}"),
            NAME,
        ],
    )?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_are_composes_with_the_hosts_ipv6_and_no_dns_check() {
        let svc = serde_json::json!({"environment": {
            "MAIL_DOMAIN": "chat.example.org", "EMPTY": "", "UNSET": null
        }});
        let env = stage_env(&svc, false);
        assert_eq!(env["MAIL_DOMAIN"], "chat.example.org");
        assert_eq!(env["EMPTY"], "");
        assert!(!env.contains_key("UNSET"));
        assert_eq!(env["CHATMAIL_HOST_IPV6"], "false");
        assert_eq!(env["CHATMAIL_SKIP_DNS_CHECK"], "true");
        assert_eq!(stage_env(&svc, true)["CHATMAIL_HOST_IPV6"], "true");
    }
}
