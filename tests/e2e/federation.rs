//! Two relays exchanging mail: the relay's online tests that need a second
//! relay (`CHATMAIL_DOMAIN2`, [`NEEDS_SECOND_RELAY`]: accounts on both,
//! securejoin across them, read receipts, a bounce DKIM-signed by one and
//! checked by the other's filtermail), with the real filtermail on both.
//!
//! The two relays live on a Docker network of the test's own, created
//! `--internal`: they reach each other and nothing else, and neither uses
//! the host's network or ports. The first is this tool's deployment (an
//! override of the user's own puts it on the network); the second runs
//! the same appliance from the same image as a Compose project of its own
//! (the tool keeps one deployment per host). DNS for both domains is what
//! the test makes each relay's own resolver (its unbound) answer: the
//! address, MX and DKIM key of each relay, as a zone published for a relay
//! would; no other name exists there (the network has no internet), and
//! the relay's fallback resolver, unreachable there, is left out of
//! `/etc/resolv.conf` for the run.
//!
//! Run by hand (`benches/federation.sh`): it takes longer than CI's budget
//! allows.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::time::Instant;

use crate::support::engine::online::{self, Run, NEEDS_SECOND_RELAY};
use crate::support::engine::relay::*;
use crate::support::engine::*;

/// The second relay's domain (`_`: self-signed, like the first's).
const DOMAIN2: &str = "_chat2.example.org";
/// The second relay's Compose project.
const PROJECT2: &str = "chatmail-federation-b";
/// Where each relay's resolver finds the test's zones.
const ZONES: &str = "/etc/unbound/unbound.conf.d/zz-federation.conf";

/// The test's network, removed when dropped.
struct Network(String);

impl Network {
    fn create() -> Network {
        let name = format!("chatmail-federation-{}", std::process::id());
        check(
            StdCommand::new("docker").args(["network", "create", "--internal", &name]),
            "docker network create --internal",
        );
        Network(name)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = StdCommand::new("docker")
            .args(["network", "rm", &self.0])
            .output();
    }
}

/// The second relay: the appliance's files, its own `.env`, its own
/// Compose project; taken down (its container and the project's default
/// network, nothing else) when dropped.
struct SecondRelay {
    dir: PathBuf,
}

impl SecondRelay {
    fn new(parent: &Path, network: &str) -> SecondRelay {
        let dir = parent.join("relay-b");
        copy_tree(&manifest_dir().join("docker"), &dir.join("docker"), &|p| {
            p.file_name().is_some_and(|n| n == "compose.generated.yaml")
        });
        fs::write(
            dir.join(".env"),
            format!("MAIL_DOMAIN={DOMAIN2}\nMAX_LOAD_1M=100\nCHATMAIL_IMAGE={IMAGE}\n"),
        )
        .unwrap();
        fs::write(
            dir.join("federation.yaml"),
            format!("services:\n  chatmail:\n    network_mode: {network}\n"),
        )
        .unwrap();
        SecondRelay { dir }
    }

    fn compose(&self) -> StdCommand {
        let mut c = StdCommand::new("docker");
        c.args(["compose", "--project-name", PROJECT2, "--project-directory"])
            .arg(&self.dir)
            .arg("--file")
            .arg(self.dir.join("docker/docker-compose.yaml"))
            .arg("--file")
            .arg(self.dir.join("federation.yaml"))
            .arg("--env-file")
            .arg(self.dir.join(".env"));
        c
    }

    /// Start it from the image the first relay runs: its init deploys the
    /// relay's configuration for its own domain at start.
    fn up(&self) -> String {
        check(
            self.compose().args(["up", "--detach", "--no-build"]),
            "docker compose up (the second relay)",
        );
        let out = self
            .compose()
            .args(["ps", "--all", "--quiet", "chatmail"])
            .output()
            .unwrap();
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!id.is_empty(), "the second relay's container");
        id
    }
}

impl Drop for SecondRelay {
    fn drop(&mut self) {
        let _ = self
            .compose()
            .args(["down", "--remove-orphans", "--timeout", "30"])
            .status();
    }
}

/// Wait until the container is healthy: its init deploys the relay first
/// (a few minutes on a busy machine). A deploy that failed ends the wait
/// with the health check's reason.
fn wait_deployed(container: &str) {
    let mut last = String::new();
    for _ in 0..1200 {
        let out = StdCommand::new("docker")
            .args(["inspect", "--format"])
            .arg("{{.State.Health.Status}} {{with .State.Health}}{{range .Log}}{{.Output}}{{end}}{{end}}")
            .arg(container)
            .output()
            .unwrap();
        last = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if last.starts_with("healthy") {
            return;
        }
        assert!(
            !last.contains("init failed"),
            "the second relay's deploy failed: {last}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("{container} did not become healthy (last: {last})");
}

/// The container's address on the test's network.
fn address(container: &str, network: &str) -> String {
    let out = StdCommand::new("docker")
        .args(["inspect", "--format"])
        .arg(format!(
            "{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"
        ))
        .arg(container)
        .output()
        .unwrap();
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "{container} has no address on {network}: {ip:?}"
    );
    ip
}

/// The relay's DKIM record value, as the relay computes it for its zone
/// (`v=DKIM1;k=rsa;p=<public key>;s=email;t=s`).
fn dkim_value(container: &str) -> String {
    let out = exec(
        container,
        &[
            "openssl",
            "rsa",
            "-in",
            "/etc/dkimkeys/opendkim.private",
            "-pubout",
        ],
    );
    let key: String = out.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(key.len() > 200, "the DKIM public key: {out}");
    format!("v=DKIM1;k=rsa;p={key};s=email;t=s")
}

/// The unbound lines that publish a relay's records: the address, the MX,
/// the DKIM key (in strings of at most 255 bytes, as DNS has them).
/// `zone`: also declare the zone (the online suite declares the first
/// relay's own in its run).
fn records(domain: &str, ip: &str, dkim: &str, zone: bool) -> String {
    let strings: Vec<String> = dkim
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    let mut lines = String::new();
    if zone {
        lines.push_str(&format!(
            "  local-zone: \"{domain}.\" static\n  local-data: \"{domain}. A {ip}\"\n"
        ));
    }
    lines.push_str(&format!(
        "  local-data: \"{domain}. MX 10 {domain}.\"\n  local-data: 'opendkim._domainkey.{domain}. TXT {}'\n",
        strings.join(" ")
    ));
    lines
}

/// The test's network has no internet, so its DNS is all there is: each
/// relay's resolver answers every other name at once with "no such
/// name" (a root zone of its own) instead of asking the internet and
/// waiting for time-outs.
const NO_OTHER_NAMES: &str = "  local-zone: \".\" static\n";

/// The relay's own resolver as the only one: the relay's fallback resolver
/// (9.9.9.9 in `/etc/resolv.conf`) is unreachable on the test's network,
/// where its packets are dropped, and filtermail's resolver (DNSSEC
/// validating) asks it whenever the relay's gives no answer, waiting for
/// time-outs until the delivery fails. filtermail reads the file when it
/// starts: its units are restarted.
fn resolve_locally(container: &str) {
    exec(
        container,
        &[
            "sh",
            "-c",
            // Docker bind-mounts the file: written in place.
            "grep -v '^nameserver' /etc/resolv.conf > /tmp/resolv.federation; \
             echo 'nameserver 127.0.0.1' >> /tmp/resolv.federation; \
             cat /tmp/resolv.federation > /etc/resolv.conf; rm /tmp/resolv.federation; \
             systemctl restart filtermail filtermail-incoming filtermail-transport",
        ],
    );
}

/// Make the relay's resolver answer `lines` (and keep answering them).
fn publish(container: &str, lines: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), format!("server:\n{lines}")).unwrap();
    check(
        StdCommand::new("docker")
            .arg("cp")
            .arg(file.path())
            .arg(format!("{container}:{ZONES}")),
        "docker cp (the test's zones)",
    );
    exec(
        container,
        &[
            "sh",
            "-c",
            &format!("chmod 644 {ZONES} && unbound-checkconf && systemctl restart unbound"),
        ],
    );
}

#[test]
#[ignore = "two relays, several minutes: run by hand with benches/federation.sh"]
fn two_relays_exchange_mail() {
    let Some((_engine, total, base, tmp)) = engine_test("chatmail-e2e-federation") else {
        return;
    };
    let network = Network::create();
    // The first relay: this tool's deployment, on the test's network.
    let (dir, _) = deployment_with(tmp.path(), Filtermail::Source);
    fs::write(
        dir.join("docker-compose.override.yaml"),
        format!("services:\n  chatmail:\n    network_mode: {}\n", network.0),
    )
    .unwrap();
    let _down = Down::new(&dir, IMAGE);
    let started = Instant::now();
    run_tool(
        tool(&dir).env("CHATMAIL_BASE_IMAGE", &base).args([
            "setup",
            "--rebuild",
            "--skip-check",
            "cgroup-v2",
            "--skip-check",
            "ports",
        ]),
        0,
        "setup of the first relay on the test's network",
    );
    let a = healthy_container_of(&mut tool(&dir));
    eprintln!(
        "e2e-federation: the first relay healthy after {:.1?}",
        started.elapsed()
    );

    // The second relay, from the image the first runs.
    let started = Instant::now();
    let second = SecondRelay::new(tmp.path(), &network.0);
    let b = second.up();
    wait_deployed(&b);
    eprintln!(
        "e2e-federation: the second relay deployed and healthy after {:.1?}",
        started.elapsed()
    );
    // Neither is on the host's network: the host's ports are not theirs.
    for c in [&a, &b] {
        let mode = StdCommand::new("docker")
            .args(["inspect", "--format", "{{.HostConfig.NetworkMode}}", c])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), network.0);
    }

    // DNS: each relay's resolver answers for both domains.
    let (ip_a, ip_b) = (address(&a, &network.0), address(&b, &network.0));
    let (dkim_a, dkim_b) = (dkim_value(&a), dkim_value(&b));
    publish(
        &b,
        &(NO_OTHER_NAMES.to_string()
            + &records(DOMAIN, &ip_a, &dkim_a, true)
            + &records(DOMAIN2, &ip_b, &dkim_b, true)),
    );
    let dns_a = NO_OTHER_NAMES.to_string()
        + &records(DOMAIN, &ip_a, &dkim_a, false)
        + &records(DOMAIN2, &ip_b, &dkim_b, true);
    for c in [&a, &b] {
        resolve_locally(c);
    }
    eprintln!("e2e-federation: {DOMAIN} at {ip_a}, {DOMAIN2} at {ip_b}");

    let started = Instant::now();
    let outcomes = online::run_online_suite(
        &a,
        &dir.join("relay"),
        DOMAIN,
        &Run {
            extra_env: &[("CHATMAIL_DOMAIN2", DOMAIN2)],
            dns: &dns_a,
            only: NEEDS_SECOND_RELAY,
            // Delta Chat's waits have no end of their own: a test that
            // hangs is reported as not run.
            limit: Some(std::time::Duration::from_secs(600)),
        },
    );
    eprintln!(
        "e2e-federation: the tests that need a second relay ran in {:.1?}",
        started.elapsed()
    );
    // What crossed between the relays, for the log: each relay's Postfix
    // and filtermail lines about the other.
    for (c, other) in [(&a, DOMAIN2), (&b, DOMAIN)] {
        let journal = exec(
            c,
            &[
                "sh",
                "-c",
                "journalctl --no-pager -o cat -t filtermail -t postfix/lmtp-filtermail/lmtp -t postfix/smtpd -t nginx | tail -n 2000",
            ],
        );
        let about: Vec<&str> = journal.lines().filter(|l| l.contains(other)).collect();
        eprintln!(
            "--- {c}: {} log lines about {other}, the last ones:\n{}",
            about.len(),
            about[about.len().saturating_sub(15)..].join("\n")
        );
    }
    online::assert_second_relay_outcomes(&outcomes);
    eprintln!("e2e-federation: total {:.1?}", total.elapsed());
}
