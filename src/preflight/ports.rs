//! The ports check: nothing else listens on the ports the relay binds on
//! the host network, read from `/proc/net` and `/proc/*/fd` under the root.

use std::collections::BTreeMap;
use std::fs;

use super::{Check, CheckId};
use crate::context::Context;
use crate::deployment::Env;
use crate::engine::{self, Containers};

/// A port the appliance binds on the host network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub port: u16,
    pub udp: bool,
    pub what: String,
}

/// The ports the relay binds with this configuration ([`crate::deployment::relay`]:
/// the manifest checked against the relay's source), the internal ones
/// moved by `filtermail_smtp_port` and friends when set.
pub fn appliance_ports(env: &Env) -> Vec<Port> {
    crate::deployment::relay::ports(env)
        .into_iter()
        .map(|p| Port {
            port: p.port,
            udp: p.udp,
            what: match p.scope {
                crate::deployment::relay::Scope::Public => format!("{}, {}", p.what, p.service),
                crate::deployment::relay::Scope::Loopback => {
                    format!("{}, {}, localhost", p.what, p.service)
                }
            },
        })
        .collect()
}

/// A listening socket from /proc/net/{tcp,tcp6,udp,udp6}.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub udp: bool,
    pub inode: u64,
}

/// Parse one /proc/net/{tcp,udp}[6] table: sockets in LISTEN state (tcp,
/// `0A`) or bound (udp, `07` unconnected).
pub fn parse_proc_net(text: &str, udp: bool) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let state = f[3];
        if (!udp && state != "0A") || (udp && state != "07") {
            continue;
        }
        let Some(port_hex) = f[1].rsplit(':').next() else {
            continue;
        };
        let (Ok(port), Ok(inode)) = (u16::from_str_radix(port_hex, 16), f[9].parse::<u64>()) else {
            continue;
        };
        out.push(Listener { port, udp, inode });
    }
    out
}

/// Map socket inodes to "name (pid N)" by scanning /proc/*/fd.
fn socket_owners(ctx: &Context, inodes: &[u64]) -> BTreeMap<u64, (u32, String)> {
    let mut owners = BTreeMap::new();
    let Ok(procs) = fs::read_dir(ctx.host.path("/proc")) else {
        return owners;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&inode) {
                let name = fs::read_to_string(p.path().join("comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                owners.insert(inode, (pid, name));
            }
        }
    }
    owners
}

/// Whether a process runs in the container with this id (its cgroup path
/// names the container).
fn in_container(ctx: &Context, pid: u32, container_id: &str) -> bool {
    !container_id.is_empty()
        && fs::read_to_string(ctx.host.path(format!("/proc/{pid}/cgroup")))
            .map(|c| c.contains(container_id))
            .unwrap_or(false)
}

/// The project's running container, whichever deployment it belongs to.
fn running_container(ctx: &Context) -> Option<engine::Found> {
    if !ctx.deployment.compose_file().exists() || ctx.host.which("docker").is_none() {
        return None;
    }
    engine::find(ctx, Containers::Running).ok().flatten()
}

/// The listening sockets of `/proc/net/{tcp,tcp6,udp,udp6}`. The IPv6
/// tables are absent on a host without IPv6; any other file that cannot be
/// read is an error naming it: the ports are then unknown, not free.
fn read_listeners(ctx: &Context) -> Result<Vec<Listener>, String> {
    let mut listeners = Vec::new();
    for (file, udp, v6) in [
        ("tcp", false, false),
        ("tcp6", false, true),
        ("udp", true, false),
        ("udp6", true, true),
    ] {
        let path = ctx.host.path(format!("/proc/net/{file}"));
        match fs::read_to_string(&path) {
            Ok(text) => listeners.extend(parse_proc_net(&text, udp)),
            Err(e) if v6 && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    Ok(listeners)
}

pub(super) fn check_ports(ctx: &Context, env: &Env) -> Check {
    const ID: &str = CheckId::Ports.id();
    let listeners = match read_listeners(ctx) {
        Ok(l) => l,
        Err(why) => {
            return Check::warn(
                ID,
                format!("unknown: {why}; whether the relay's ports are taken cannot be told"),
                "run preflight where /proc is mounted and readable (as root on the host, not in a restricted container)",
            )
        }
    };
    let wanted = appliance_ports(env);
    let busy: Vec<(&Port, &Listener)> = wanted
        .iter()
        .filter_map(|p| {
            listeners
                .iter()
                .find(|l| l.port == p.port && l.udp == p.udp)
                .map(|l| (p, l))
        })
        .collect();
    if busy.is_empty() {
        return Check::ok(ID, format!("{} ports free", wanted.len()));
    }
    let inodes: Vec<u64> = busy.iter().map(|(_, l)| l.inode).collect();
    let owners = socket_owners(ctx, &inodes);
    let container = running_container(ctx);
    let mut taken = Vec::new();
    let mut ours = 0;
    for (p, l) in &busy {
        let proto = if p.udp { "udp" } else { "tcp" };
        let held_by = |pid: u32| {
            container
                .as_ref()
                .filter(|c| in_container(ctx, pid, &c.container.id))
        };
        match owners.get(&l.inode) {
            Some((pid, name)) => match held_by(*pid) {
                Some(c) if c.is_ours() => ours += 1,
                Some(c) => {
                    let whose = match &c.owner {
                        engine::Owner::Other(Some(dir)) => format!(
                            "the deployment in {} (`chatmail-docker --dir {} down` stops it)",
                            dir.display(),
                            dir.display()
                        ),
                        _ => "no known deployment directory".to_string(),
                    };
                    taken.push(format!(
                        "{}/{proto} ({}) by {name} (pid {pid}) in the container {} of {whose}",
                        p.port,
                        p.what,
                        c.container.display_name()
                    ))
                }
                None => taken.push(format!(
                    "{}/{proto} ({}) by {name} (pid {pid})",
                    p.port, p.what
                )),
            },
            // Not knowing who holds a port is not knowing it is ours.
            None => taken.push(format!(
                "{}/{proto} ({}) by a process this user cannot see (run as root to name it)",
                p.port, p.what
            )),
        }
    }
    if taken.is_empty() {
        return Check::ok(
            ID,
            format!("{ours} ports in use by the running appliance, the rest free"),
        );
    }
    Check::warn(
        ID,
        format!("in use: {}", taken.join(", ")),
        "stop the service holding the port (e.g. `systemctl disable --now postfix nginx`), or run `chatmail-docker migrate` for a bare-metal chatmail",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(
            parse_proc_net(text, false),
            vec![Listener {
                port: 25,
                udp: false,
                inode: 12345
            }]
        );
    }
}
