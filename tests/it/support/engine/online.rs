//! The relay's own online test suite (`cmdeploy/src/cmdeploy/tests/online`,
//! what `cmdeploy test` runs against a relay) inside the appliance, the way
//! `cmdeploy test --ssh-host @local` runs it on a relay host: pytest from
//! the relay checkout (`/opt/chatmail`, with the checkout's `.git` as on a
//! host), `CHATMAIL_INI` the relay's ini, `CHATMAIL_SSH=@local`, the login
//! environment of `/etc/environment`, four workers. Unlike `cmdeploy test`
//! it runs only the online tests and does not stop at the first failure,
//! so every outcome is known.
//!
//! The test dependencies come for the run only (tests/relay-online/deps.sh:
//! pytest, Delta Chat's core `deltachat-rpc-server` and its client, git)
//! and are removed afterwards, as is everything else the run added.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::Instant;

use super::*;

/// Tests that cannot pass on a machine without the internet, with why.
/// (`test_perform_initial`, which asks DNS for the domain's A/AAAA
/// records, passes: the test answers DNS for the domain, see
/// [`run_online_suite`].)
pub const NEEDS_INTERNET: &[(&str, &str)] = &[(
    "test_hide_senders_ip_address",
    "asks icanhazip.com for this host's public address",
)];

/// Tests skipped with one relay: they need a second one (`CHATMAIL_DOMAIN2`).
pub const NEEDS_SECOND_RELAY: &[&str] = &[
    "test_use_two_chatmailservers",
    "test_bounces_are_dkim_signed",
    "test_securejoin",
    "test_dkim_header_stripped",
    "test_read_receipts_between_instances",
];

const DEPS_IN: &str = "/opt/relay-online-tests";
/// The relay's resolver's answer for the test domain, for the run.
const UNBOUND_TEST_CONF: &str = "/etc/unbound/unbound.conf.d/zz-online-tests.conf";
const REPORT: &str = "/tmp/relay-online.xml";

/// One test's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub outcome: String,
    pub message: String,
}

/// The cached test dependencies on this machine.
fn deps() -> PathBuf {
    let script = manifest_dir().join("tests/relay-online/deps.sh");
    let out = StdCommand::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    )
}

/// What a run of the suite gets besides the relay: more variables (a
/// second relay's domain), more for the relay's resolver to answer during
/// the run (unbound `local-data:` lines, or `local-zone:` lines for other
/// domains: a second relay's records), which tests to run (pytest's `-k`;
/// all when empty), and how long it may take: after that pytest is
/// interrupted (SIGINT), and the tests it did not finish are missing from
/// its report.
#[derive(Default)]
pub struct Run<'a> {
    pub extra_env: &'a [(&'a str, &'a str)],
    pub dns: &'a str,
    pub only: &'a [&'a str],
    pub limit: Option<std::time::Duration>,
}

/// Run the suite in the container; every test's outcome by name
/// (`test_x[param]`). `relay` is the deployment's relay checkout (its
/// `.git` goes in for the run), `domain` the relay's domain, which is made
/// to resolve to this host inside the container for the run.
pub fn run_online_suite(
    container: &str,
    relay: &Path,
    domain: &str,
    run: &Run,
) -> BTreeMap<String, Outcome> {
    let started = Instant::now();
    let deps = deps();
    let cp = |from: &Path, to: &str| {
        check(
            StdCommand::new("docker")
                .arg("cp")
                .arg(from)
                .arg(format!("{container}:{to}")),
            &format!("docker cp {} {to}", from.display()),
        )
    };
    exec(container, &["rm", "-rf", DEPS_IN, "/opt/chatmail/.git"]);
    cp(&deps, DEPS_IN);
    cp(
        &manifest_dir().join("tests/relay-online/summary.py"),
        &format!("{DEPS_IN}/summary.py"),
    );
    cp(&relay.join(".git"), "/opt/chatmail/.git");
    // The domain resolves to this host, as DNS makes it for a relay: in
    // /etc/hosts, and in the relay's own resolver, which answers for the
    // domain from local data instead of asking the internet (where the
    // relay's DNS checks would wait for time-outs, minutes per test).
    exec(
        container,
        &["cp", "/etc/hosts", "/tmp/hosts.before-online-tests"],
    );
    let zone = tempfile::NamedTempFile::new().unwrap();
    fs::write(
        zone.path(),
        format!(
            "server:\n  local-zone: \"{domain}.\" static\n  local-data: \"{domain}. A 127.0.0.1\"\n{}",
            run.dns
        ),
    )
    .unwrap();
    cp(zone.path(), UNBOUND_TEST_CONF);
    exec(
        container,
        &[
            "sh",
            "-c",
            &format!(
                "chmod 644 {UNBOUND_TEST_CONF} && echo '127.0.0.1 {domain}' >> /etc/hosts && systemctl restart unbound"
            ),
        ],
    );
    eprintln!(
        "e2e: relay online suite: dependencies in the container after {:.1?}",
        started.elapsed()
    );
    let path = format!(
        "{DEPS_IN}/lib/deltachat_rpc_server:{DEPS_IN}/git/usr/bin:/opt/cmdeploy/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    let mut cmd = StdCommand::new("docker");
    cmd.args(["exec", "-w", "/opt/chatmail"])
        .args(["-e", "CHATMAIL_INI=/opt/chatmail/chatmail.ini"])
        .args(["-e", "CHATMAIL_SSH=@local"])
        .args(["-e", &format!("PYTHONPATH={DEPS_IN}/lib")])
        .args([
            "-e",
            &format!("GIT_EXEC_PATH={DEPS_IN}/git/usr/lib/git-core"),
        ])
        .args(["-e", &format!("PATH={path}")]);
    for (k, v) in run.extra_env {
        cmd.args(["-e", &format!("{k}={v}")]);
    }
    let only = if run.only.is_empty() {
        String::new()
    } else {
        format!(" -k '{}'", run.only.join(" or "))
    };
    // A login on the relay host reads /etc/environment (the relay sets TZ
    // there; test_timezone_env checks it). `-P`: pytest as `cmdeploy test`
    // starts it, without the working directory on Python's path (where the
    // checkout's cmdeploy/ would join the `cmdeploy` namespace package and
    // hide its data files).
    cmd.arg(container).args([
        "sh",
        "-c",
        &format!(
            "set -a; . /etc/environment; set +a; exec {limit}python3 -P -m pytest \
             cmdeploy/src/cmdeploy/tests/online{only} -n4 -rs -v --durations=5 \
             -p no:cacheprovider --junitxml={REPORT}",
            limit = run
                .limit
                .map(|l| format!("timeout -s INT {} ", l.as_secs()))
                .unwrap_or_default()
        ),
    ]);
    let run_started = Instant::now();
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "--- the relay's online test suite (exit {:?}, {:.1?}):\n{text}",
        out.status.code(),
        run_started.elapsed()
    );
    let (ok, summary) = exec_status(
        container,
        &["python3", &format!("{DEPS_IN}/summary.py"), REPORT],
    );
    // Leave the container as it was.
    exec(
        container,
        &[
            "sh",
            "-c",
            &format!(
                "cat /tmp/hosts.before-online-tests > /etc/hosts; \
                 rm -rf {DEPS_IN} /opt/chatmail/.git {REPORT} /tmp/hosts.before-online-tests {UNBOUND_TEST_CONF}; \
                 systemctl restart unbound"
            ),
        ],
    );
    assert!(
        ok,
        "no report of the online suite: {summary}\n{}",
        tail(&text, 60)
    );
    let v: serde_json::Value = serde_json::from_str(&summary)
        .unwrap_or_else(|e| panic!("online suite summary ({e}): {summary}"));
    let mut outcomes = BTreeMap::new();
    for t in v["tests"].as_array().cloned().unwrap_or_default() {
        outcomes.insert(
            t["name"].as_str().unwrap_or_default().to_string(),
            Outcome {
                outcome: t["outcome"].as_str().unwrap_or_default().to_string(),
                message: t["message"].as_str().unwrap_or_default().to_string(),
            },
        );
    }
    eprintln!(
        "e2e: relay online suite: {} tests in {:.1?}",
        outcomes.len(),
        started.elapsed()
    );
    outcomes
}

/// The test's own name without its parameters.
fn base(name: &str) -> &str {
    name.split('[').next().unwrap_or(name)
}

/// Check the outcomes against what one relay on a machine without the
/// internet can do: everything passes except the tests named in
/// [`NEEDS_INTERNET`] (which fail) and [`NEEDS_SECOND_RELAY`] (which skip,
/// unless `second_relay`). Prints the tally; panics naming any other
/// outcome.
pub fn assert_online_outcomes(outcomes: &BTreeMap<String, Outcome>, second_relay: bool) {
    let mut tally: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut unexpected = Vec::new();
    for (name, o) in outcomes {
        tally.entry(o.outcome.as_str()).or_default().push(name);
        let expected = if NEEDS_INTERNET.iter().any(|(t, _)| *t == base(name)) {
            "failed"
        } else if !second_relay && NEEDS_SECOND_RELAY.contains(&base(name)) {
            "skipped"
        } else {
            "passed"
        };
        if o.outcome != expected {
            unexpected.push(format!(
                "{name}: {} (expected {expected}) {}",
                o.outcome, o.message
            ));
        }
    }
    for (outcome, names) in &tally {
        eprintln!(
            "e2e: relay online suite: {} {outcome}: {}",
            names.len(),
            names.join(", ")
        );
    }
    for (t, why) in NEEDS_INTERNET {
        eprintln!("e2e: relay online suite: {t} needs the internet: {why}");
    }
    assert!(
        outcomes.len() >= 41,
        "the online suite ran {} tests, fewer than the 41 it has",
        outcomes.len()
    );
    assert!(
        unexpected.is_empty(),
        "the relay's online tests, unexpected outcomes:\n{}",
        unexpected.join("\n")
    );
}

/// Check the outcomes of a run of [`NEEDS_SECOND_RELAY`] alone, with a
/// second relay: every one of them ran and passed. Prints the tally;
/// panics naming any other outcome.
pub fn assert_second_relay_outcomes(outcomes: &BTreeMap<String, Outcome>) {
    // An interrupted run reports an unnamed entry: not a test.
    let outcomes: BTreeMap<&String, &Outcome> =
        outcomes.iter().filter(|(n, _)| !n.is_empty()).collect();
    let mut tally: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, o) in &outcomes {
        tally.entry(o.outcome.as_str()).or_default().push(name);
    }
    for (outcome, names) in &tally {
        eprintln!(
            "e2e: relay online suite, two relays: {} {outcome}: {}",
            names.len(),
            names.join(", ")
        );
    }
    let mut wrong = Vec::new();
    for t in NEEDS_SECOND_RELAY {
        if !outcomes.keys().any(|n| base(n) == *t) {
            wrong.push(format!("{t}: did not run"));
        }
    }
    for (name, o) in &outcomes {
        if o.outcome != "passed" {
            wrong.push(format!("{name}: {} {}", o.outcome, o.message));
        }
    }
    assert!(
        wrong.is_empty(),
        "the relay's online tests with a second relay, unexpected outcomes:\n{}",
        wrong.join("\n")
    );
}
