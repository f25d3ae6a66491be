//! The docker-engine and compose-v2 checks: a Docker Engine that answers,
//! and Compose v2 (the plugin), not v1 or Podman's stand-ins.

use super::{Check, CheckId};
use crate::context::Context;
use crate::host::Captured;

/// Whether `docker` is really Podman's docker-compatible CLI.
fn is_podman(version_output: &str) -> bool {
    version_output.to_ascii_lowercase().contains("podman")
}

pub(super) fn check_docker_engine(ctx: &Context) -> Check {
    const ID: &str = CheckId::DockerEngine.id();
    let install = "install Docker Engine (https://docs.docker.com/engine/install/debian/ or `apt install docker.io`) and start it: `systemctl enable --now docker`";
    if ctx.host.which("docker").is_none() {
        if ctx.host.which("podman").is_some() {
            return Check::warn(
                ID,
                "no `docker` command, but Podman is installed; Podman is untested with the appliance",
                "install Docker Engine, or install podman-docker and continue at your own risk",
            );
        }
        return Check::fail(ID, "the `docker` command was not found on PATH", install);
    }
    let version = crate::engine::client_version(ctx);
    if is_podman(&version) {
        return Check::warn(
            ID,
            format!(
                "`docker` is Podman ({}); untested with the appliance",
                version.trim()
            ),
            "use Docker Engine for a supported setup",
        );
    }
    match crate::engine::server_version(ctx) {
        Ok(c) if c.success() && !c.stdout.trim().is_empty() => {
            Check::ok(ID, format!("Docker Engine {} answers", c.stdout.trim()))
        }
        Ok(c) => {
            let why = first_line(&c.stderr);
            let fix = if why.contains("permission denied") {
                "run as root, or add your user to the `docker` group and log in again".to_string()
            } else {
                "start the engine: `systemctl enable --now docker`".to_string()
            };
            Check::fail(ID, format!("the Docker engine does not answer: {why}"), fix)
        }
        Err(e) => Check::fail(ID, format!("cannot run `docker info`: {e:#}"), install),
    }
}

/// Parse `2.40.3`, `v2.40.3`, `Docker Compose version v2.40.3`,
/// `docker-compose version 1.29.2, build unknown` into (major, full).
pub fn parse_compose_version(text: &str) -> Option<(u32, String)> {
    let word = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_start_matches('v'))
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))?;
    let major = word.split('.').next()?.parse().ok()?;
    Some((major, word.to_string()))
}

pub(super) fn check_compose(ctx: &Context) -> Check {
    const ID: &str = CheckId::ComposeV2.id();
    let plugin_fix =
        "install Compose v2 as a Docker CLI plugin: `apt install docker-compose-plugin` \
                      (Docker's apt repository), or put the v2 binary at \
                      ~/.docker/cli-plugins/docker-compose (or /usr/local/lib/docker/cli-plugins/)";
    let run = |prog: &str, args: &[&str]| -> Option<Captured> {
        ctx.host.which(prog)?;
        ctx.host
            .cmd(prog, args.iter().copied())
            .output(&ctx.shell)
            .ok()
    };
    if let Some(c) = crate::engine::compose_version(ctx) {
        if c.success() {
            if let Some((major, full)) = parse_compose_version(&c.stdout) {
                if major >= 2 {
                    return Check::ok(ID, format!("Docker Compose {full}"));
                }
                return Check::fail(
                    ID,
                    format!("`docker compose` is version {full}; the appliance needs Compose v2"),
                    plugin_fix,
                );
            }
        }
    }
    if ctx.host.which("docker").is_none() && ctx.host.which("podman").is_some() {
        if let Some(c) = run("podman", &["compose", "version"]) {
            if c.success() {
                return Check::warn(
                    ID,
                    format!(
                        "Podman compose found ({}); untested with the appliance",
                        first_line(&c.stdout)
                    ),
                    "use Docker Engine with Compose v2 for a supported setup",
                );
            }
        }
    }
    if let Some(c) = run("docker-compose", &["version", "--short"]) {
        if let Some((major, full)) = parse_compose_version(&format!("{}{}", c.stdout, c.stderr)) {
            if major < 2 {
                return Check::fail(
                    ID,
                    format!(
                        "only docker-compose {full} (Compose v1) is installed; the appliance's `cgroup: host` setting is only supported by Compose v2 (`docker compose`)"
                    ),
                    plugin_fix,
                );
            }
            return Check::fail(
                ID,
                format!("docker-compose {full} is installed standalone, but `docker compose` does not work"),
                "make it a CLI plugin: `mkdir -p ~/.docker/cli-plugins && ln -s \"$(command -v docker-compose)\" ~/.docker/cli-plugins/docker-compose`",
            );
        }
    }
    Check::fail(
        ID,
        "Docker Compose v2 (`docker compose`) was not found",
        plugin_fix,
    )
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_versions() {
        assert_eq!(parse_compose_version("v2.40.3\n").unwrap().0, 2);
        assert_eq!(parse_compose_version("2.24.0").unwrap().0, 2);
        assert_eq!(
            parse_compose_version("docker-compose version 1.29.2, build unknown").unwrap(),
            (1, "1.29.2".into())
        );
        assert_eq!(
            parse_compose_version("Docker Compose version v2.40.3")
                .unwrap()
                .0,
            2
        );
        assert!(parse_compose_version("garbage").is_none());
    }
}
