//! `metrics` against a temp deployment with the state a running relay
//! leaves on disk (queue files, mailboxes, a real backup, the state files
//! of cert-watch and upgrade), real TLS servers on 127.0.0.1 and a stand-in
//! `docker` for the container. What it prints is read back by real
//! parsers (promtool's and prometheus_client's); bad input is a metric
//! with a reason and exit 0; the textfile is replaced atomically or not
//! at all. The manual pages and the example alert rules are checked here
//! too.

use crate::certwatch_verify::starttls_server;
use crate::support::certs::Pair;
use crate::support::*;
use chatmail_docker::certwatch::verify::Proto;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

const DOMAIN: &str = "chat.example.org";
const ID: &str = "c0ffee000001";
const IMAGE: &str = "sha256:1111aaaa";
const COMMIT: &str = "48ad92bf24426ef737deded1c0d87438a4b18dab";
/// 2030-01-01T00:00:00Z, the test certificate's expiry.
const NOT_AFTER: f64 = 1_893_456_000.0;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A certificate for the relay's domain, valid until 2030.
fn relay_pair() -> Pair {
    crate::support::certs::pair_valid(DOMAIN, (2024, 1, 1), (2030, 1, 1))
}

/// A queue file's first records as Postfix's cleanup writes them (size,
/// arrival time, an attribute).
fn queue_file(arrival: u64) -> Vec<u8> {
    let mut v = Vec::new();
    for (kind, data) in [
        (b'C', format!("{:>15} {:>15} {:>15} {:>15}", 249, 96, 1, 0)),
        (b'T', format!("{arrival} 805690")),
        (b'A', "create_time=1796534298".to_string()),
    ] {
        v.push(kind);
        v.push(data.len() as u8);
        v.extend_from_slice(data.as_bytes());
    }
    v
}

/// How the stand-in `docker` plays the container.
#[derive(Clone, Copy, PartialEq)]
enum Container {
    /// Running and healthy; dovecot has failed (the health check
    /// would say so a little later).
    Healthy,
    /// `docker compose ps` finds none.
    Absent,
    /// Stopped.
    Exited,
    /// Every call hangs.
    Hung,
    /// Every call fails: the daemon does not answer.
    Down,
}

fn docker(bin: &Path, dir: &Path, c: Container) {
    let (status, running) = match c {
        Container::Exited => ("exited", "false"),
        _ => ("running", "true"),
    };
    let inspect = format!(
        r#"[{{"Id":"{ID}","Name":"/chatmail-chatmail-1","Image":"{IMAGE}","State":{{"Status":"{status}","Running":{running},"StartedAt":"2026-01-01T00:00:00.123456789Z","ExitCode":0,"Health":{{"Status":"healthy","Log":[]}}}},"Config":{{"Image":"chatmail-relay:local","Labels":{{"com.docker.compose.project":"chatmail","com.docker.compose.project.working_dir":"{}"}}}}}}]"#,
        dir.display()
    );
    let body = match c {
        Container::Hung => "sleep 30".to_string(),
        Container::Down => {
            "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock' >&2; exit 1"
                .to_string()
        }
        _ => format!(
            r#"case "$*" in
  *" ps --all --quiet chatmail") {ps};;
  "inspect {ID}") printf '%s' '{inspect}';;
  "image inspect --format {{{{json .Config.Labels}}}} {IMAGE}") echo '{{"org.chatmail-docker.relay-commit":"{COMMIT}","org.chatmail-docker.relay-version":"1.7.0"}}';;
  *" exec -T chatmail systemctl show "*)
    for a in "$@"; do
      case "$a" in
        *.service|*.timer|*.socket|*.path)
          state=active; file=enabled
          [ "$a" = dovecot.service ] && state=failed
          [ "$a" = mtail.service ] && {{ state=inactive; file=disabled; }}
          printf 'Id=%s\nLoadState=loaded\nActiveState=%s\nUnitFileState=%s\n\n' "$a" "$state" "$file";;
      esac
    done;;
  "info --format {{{{.DockerRootDir}}}}") echo /var/lib/docker;;
  *) exit 1;;
esac"#,
            ps = if c == Container::Absent {
                "true"
            } else {
                "echo c0ffee000001"
            },
        ),
    };
    script(bin, "docker", &body);
}

/// A deployment directory and host root with what a relay leaves on disk.
struct Case {
    t: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    bin: PathBuf,
    pair: Pair,
}

impl Case {
    fn new(c: Container) -> Case {
        let t = tempfile::tempdir().unwrap();
        let root = fake_root(t.path(), MOUNTINFO_V2, 65536, 100_000);
        fs::create_dir_all(root.join("var/lib/docker")).unwrap();
        let dir = minimal_deployment(t.path());
        fs::write(dir.join(".env"), format!("MAIL_DOMAIN={DOMAIN}\n")).unwrap();
        fs::set_permissions(dir.join(".env"), fs::Permissions::from_mode(0o600)).unwrap();
        let q = dir.join("data/chatmail-postfix");
        let hour_ago = now() as u64 - 3600;
        for (p, arrival) in [
            ("deferred/A/A1B2C3", hour_ago),
            ("deferred/F/F00D", hour_ago + 600),
            ("active/ACT1", 0),
            ("maildrop/DROP1", 0),
        ] {
            let f = q.join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, queue_file(arrival)).unwrap();
        }
        for d in ["hold", "incoming"] {
            fs::create_dir_all(q.join(d)).unwrap();
        }
        let m = dir.join(format!("data/chatmail/vmail/mail/{DOMAIN}"));
        for (p, body) in [
            (format!("alice@{DOMAIN}/cur/1.host:2,S"), "12345"),
            (format!("alice@{DOMAIN}/password"), "xx"),
            (format!("bob@{DOMAIN}/new/2.host"), "123"),
        ] {
            let f = m.join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, body).unwrap();
        }
        let pair = relay_pair();
        let live = dir.join(format!("data/chatmail-acme/live/{DOMAIN}"));
        fs::create_dir_all(&live).unwrap();
        fs::write(live.join("fullchain"), &pair.cert).unwrap();
        fs::write(live.join("privkey"), &pair.key).unwrap();
        let bin = t.path().join("bin");
        docker(&bin, &dir, c);
        Case {
            t,
            dir,
            root,
            bin,
            pair,
        }
    }

    fn tool(&self) -> assert_cmd::Command {
        let mut c = bin();
        c.env("PATH", path_with(&self.bin))
            .arg("--root")
            .arg(&self.root)
            .arg("--dir")
            .arg(&self.dir);
        c
    }

    fn metrics(&self, args: &[&str]) -> Output {
        self.tool().arg("metrics").args(args).output().unwrap()
    }
}

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of an exposition text (the tests' own reading; the real
/// parsers check it in [`parse_with_real_parsers`]).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let mut m = BTreeMap::new();
                    for kv in rest.trim_end_matches('}').split("\",") {
                        let (k, v) = kv.split_once("=\"").unwrap();
                        m.insert(k.to_string(), v.trim_end_matches('"').to_string());
                    }
                    (n.to_string(), m)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            (name, labels, value.parse().unwrap())
        })
        .collect()
}

/// The value of the one sample of `name` whose labels include `labels`.
fn get(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = s
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
    found.first().copied()
}

/// Read `text` with promtool (`check metrics`: the Go parser and its
/// lint) and prometheus_client's parser; returns the number of samples
/// prometheus_client found.
fn parse_with_real_parsers(text: &str) -> Option<usize> {
    if !have("promtool", &["--version"])
        || !require(
            runs("python3", &["-c", "import prometheus_client.parser"]),
            "python3 with prometheus-client (pip install prometheus-client)",
        )
    {
        return None;
    }
    let run = |cmd: &mut Command| feed(cmd, text.as_bytes());
    let out = run(Command::new("promtool").args(["check", "metrics"]));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Command::new("python3").args([
        "-c",
        "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as f\n\
         n = 0\nfor fam in f(sys.stdin.read()):\n    assert fam.type == 'gauge', fam\n    n += len(fam.samples)\nprint(n)",
    ]));
    assert!(
        out.status.success(),
        "prometheus_client: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

/// A healthy relay: every metric the issue asks for, with the values the
/// deployment holds, in a text both parsers read.
#[test]
fn a_running_relay_in_full() {
    if !have("openssl", &["version"]) {
        return;
    }
    let c = Case::new(Container::Healthy);
    // cert-watch applied the certificate on disk: nothing pending.
    let out = c
        .tool()
        .args([
            "cert-watch",
            "--once",
            "--no-verify",
            "--reload-command",
            "true",
        ])
        .output()
        .unwrap();
    assert_ok(&out);
    // A real backup, taken while Docker could not be asked.
    let backups = c.t.path().join("backups");
    let before = now();
    let out = bin()
        .env("PATH", isolated_path(&c.t.path().join("nobin")))
        .arg("--dir")
        .arg(&c.dir)
        .args(["-q", "backup"])
        .arg(format!("{}/", backups.display()))
        .output()
        .unwrap();
    assert_ok(&out);
    fs::write(
        c.dir.join("data/.upgrade-state.json"),
        r#"{"phase":"done","image":"chatmail-relay:local","previous":null,"target":null,"started":"2026-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    fs::write(
        c.dir.join("data/.upgrade-last.json"),
        r#"{"upgrade":{"at":"2026-01-02T00:00:00Z","from":null,"to":null},"rollback":{"at":"2026-01-03T00:00:00Z","from":null,"to":null,"automatic":true,"reason":"unhealthy"}}"#,
    )
    .unwrap();
    // The same certificate on TLS, SMTP and IMAP STARTTLS.
    let ports: Vec<(u16, &str)> = [
        (Proto::Tls, "tls"),
        (Proto::Smtp, "smtp"),
        (Proto::Imap, "imap"),
    ]
    .into_iter()
    .map(|(p, name)| (starttls_server(p, &c.pair), name))
    .collect();
    let list: Vec<String> = ports.iter().map(|(p, n)| format!("{p}/{n}")).collect();
    let out = c
        .tool()
        .args(["metrics", "--tls-ports", &list.join(","), "--backup-dir"])
        .arg(&backups)
        .output()
        .unwrap();
    let text = ok_stdout(&out);
    let s = samples(&text);
    let v = |name: &str, labels: &[(&str, &str)]| {
        get(&s, &format!("chatmail_docker_{name}"), labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    // Every probe worked.
    let failed: Vec<&Sample> = s
        .iter()
        .filter(|(n, _, v)| n == "chatmail_docker_probe_up" && *v == 0.0)
        .collect();
    assert!(failed.is_empty(), "{failed:?}\n{text}");
    // The relay.
    assert_eq!(v("relay_up", &[]), 1.0);
    assert_eq!(v("relay_healthy", &[]), 1.0);
    assert_eq!(v("relay_state", &[("state", "running")]), 1.0);
    assert_eq!(v("relay_state", &[("state", "exited")]), 0.0);
    assert_eq!(v("relay_health", &[("status", "healthy")]), 1.0);
    assert_eq!(v("relay_start_time_seconds", &[]), 1_767_225_600.0);
    assert_eq!(
        v(
            "info",
            &[
                ("relay_version", "1.7.0"),
                ("relay_commit", COMMIT),
                ("tool_version", env!("CARGO_PKG_VERSION"))
            ]
        ),
        1.0
    );
    assert_eq!(
        v(
            "unit_active",
            &[("unit", "postfix"), ("enabled", "enabled")]
        ),
        1.0
    );
    assert_eq!(v("unit_active", &[("unit", "dovecot")]), 0.0);
    assert_eq!(
        v("unit_active", &[("unit", "mtail"), ("enabled", "disabled")]),
        0.0
    );
    // TLS, as served.
    for (port, _) in &ports {
        assert_eq!(
            v(
                "tls_certificate_expiry_timestamp_seconds",
                &[("port", &port.to_string())]
            ),
            NOT_AFTER
        );
    }
    assert_eq!(v("tls_certificates_distinct", &[]), 1.0);
    assert_eq!(v("tls_certificates_consistent", &[]), 1.0);
    assert_eq!(
        v("certificate_file_expiry_timestamp_seconds", &[]),
        NOT_AFTER
    );
    // Mail.
    assert_eq!(v("postfix_queue_messages", &[("queue", "deferred")]), 2.0);
    assert_eq!(v("postfix_queue_messages", &[("queue", "active")]), 1.0);
    assert_eq!(v("postfix_queue_messages", &[("queue", "maildrop")]), 1.0);
    assert_eq!(v("postfix_queue_messages", &[("queue", "hold")]), 0.0);
    assert_eq!(v("postfix_queue_messages", &[("queue", "incoming")]), 0.0);
    let age = v("postfix_deferred_oldest_age_seconds", &[]);
    assert!(
        (3590.0..3700.0).contains(&age),
        "the oldest arrived an hour ago: {age}"
    );
    assert_eq!(v("mailboxes", &[]), 2.0);
    assert_eq!(v("mailboxes_size_bytes", &[]), 10.0);
    let data = c.dir.join("data").display().to_string();
    assert!(
        v(
            "filesystem_free_bytes",
            &[("volume", "data"), ("path", &data)]
        ) > 0.0
    );
    assert!(v("filesystem_size_bytes", &[("volume", "docker")]) > 0.0);
    // Day two.
    let dir = backups.display().to_string();
    let d = [("dir", dir.as_str())];
    assert_eq!(v("backup_archives", &d), 1.0);
    assert_eq!(v("backup_last_success", &d), 1.0);
    assert_eq!(v("backup_foreign_files", &d), 0.0);
    let made = v("backup_last_success_timestamp_seconds", &d);
    assert!(made >= before.floor() && made <= now(), "{made}");
    assert_eq!(v("backup_last_timestamp_seconds", &d), made);
    let archive = fs::read_dir(&backups)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".tar.zst"))
        .unwrap();
    assert_eq!(
        v("backup_last_size_bytes", &d),
        archive.metadata().unwrap().len() as f64
    );
    assert_eq!(v("upgrade_unfinished", &[]), 0.0);
    assert_eq!(v("upgrade_last_timestamp_seconds", &[]), 1_767_312_000.0);
    assert_eq!(
        v(
            "upgrade_last_rollback_timestamp_seconds",
            &[("automatic", "true")]
        ),
        1_767_398_400.0
    );
    assert_eq!(v("certwatch_running", &[]), 0.0);
    assert_eq!(v("certwatch_pending", &[]), 0.0);
    assert_eq!(v("certwatch_last_reload_verified", &[]), 0.0);
    let reloaded = v("certwatch_last_reload_timestamp_seconds", &[]);
    assert!(reloaded >= before.floor() - 60.0, "{reloaded}");
    assert_eq!(v("inotify_max_user_instances", &[]), 65536.0);
    assert_eq!(v("inotify_max_user_watches", &[]), 100_000.0);
    assert!(v("metrics_duration_seconds", &[]) >= 0.0);
    if let Some(n) = parse_with_real_parsers(&text) {
        assert_eq!(n, s.len(), "prometheus_client read every sample");
    }

    // A renewed certificate not reloaded yet is pending.
    let renewed = relay_pair();
    let live = c.dir.join(format!("data/chatmail-acme/live/{DOMAIN}"));
    fs::write(live.join("fullchain"), &renewed.cert).unwrap();
    fs::write(live.join("privkey"), &renewed.key).unwrap();
    let s = samples(&ok_stdout(&c.metrics(&["--tls-ports", &list.join(",")])));
    assert_eq!(get(&s, "chatmail_docker_certwatch_pending", &[]), Some(1.0));
}

/// Bad input never makes the run fail or the file disappear: each is a
/// sample with a reason, exit 0.
#[test]
fn bad_input_is_a_metric_with_a_reason() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ports = format!("{closed}/smtp");
    let reasons = |c: &Case, extra: &[&str]| -> Vec<Sample> {
        let out = c.metrics(&[&["--tls-ports", &ports, "--timeout", "1"][..], extra].concat());
        let text = ok_stdout(&out);
        parse_with_real_parsers(&text);
        samples(&text)
    };
    let probe = |s: &[Sample], probe: &str, target: &str| -> Option<String> {
        s.iter()
            .find(|(n, l, _)| {
                n == "chatmail_docker_probe_up"
                    && l.get("probe").map(String::as_str) == Some(probe)
                    && l.get("target").map(String::as_str).unwrap_or("") == target
            })
            .map(|(_, l, v)| {
                assert_eq!(*v == 0.0, l.contains_key("reason"), "{l:?}");
                l.get("reason").cloned().unwrap_or_default()
            })
    };

    // The container is down, a port refuses, the backup directories are
    // missing or hold what the tool did not write, the certificate on disk
    // is not one.
    let c = Case::new(Container::Exited);
    let foreign = c.t.path().join("shared-backups");
    fs::create_dir_all(&foreign).unwrap();
    fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let missing = c.t.path().join("no-such-dir");
    fs::write(
        c.dir
            .join(format!("data/chatmail-acme/live/{DOMAIN}/fullchain")),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    fs::write(c.dir.join("data/.cert-watch-state.json"), "{ half").unwrap();
    let s = reasons(
        &c,
        &[
            "--backup-dir",
            foreign.to_str().unwrap(),
            "--backup-dir",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(get(&s, "chatmail_docker_relay_up", &[]), Some(0.0));
    assert_eq!(get(&s, "chatmail_docker_relay_healthy", &[]), Some(0.0));
    assert_eq!(
        get(&s, "chatmail_docker_relay_state", &[("state", "exited")]),
        Some(1.0)
    );
    assert_eq!(
        probe(&s, "relay", "").as_deref(),
        Some(""),
        "a state, not a failure"
    );
    assert_eq!(
        probe(&s, "units", ""),
        None,
        "not asked: the container is stopped"
    );
    assert_eq!(
        probe(&s, "tls", &closed.to_string()).as_deref(),
        Some("refused")
    );
    assert_eq!(
        get(&s, "chatmail_docker_tls_certificates_consistent", &[]),
        Some(0.0)
    );
    assert_eq!(
        probe(&s, "backup", foreign.to_str().unwrap()).as_deref(),
        Some("foreign_files")
    );
    assert_eq!(
        get(
            &s,
            "chatmail_docker_backup_foreign_files",
            &[("dir", foreign.to_str().unwrap())]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            &s,
            "chatmail_docker_backup_last_success_timestamp_seconds",
            &[("dir", foreign.to_str().unwrap())]
        ),
        Some(0.0),
        "never: the 26-hour alert fires"
    );
    assert_eq!(
        probe(&s, "backup", missing.to_str().unwrap()).as_deref(),
        Some("missing")
    );
    assert_eq!(
        probe(&s, "certificate_file", "").as_deref(),
        Some("unparseable")
    );
    assert_eq!(
        probe(&s, "certwatch", "").as_deref(),
        Some("unreadable_state")
    );

    // No container at all.
    let c = Case::new(Container::Absent);
    let s = reasons(&c, &[]);
    assert_eq!(
        get(&s, "chatmail_docker_relay_state", &[("state", "absent")]),
        Some(1.0)
    );
    assert_eq!(get(&s, "chatmail_docker_relay_up", &[]), Some(0.0));

    // Docker does not answer: refused, hung (stopped after --timeout), or
    // not installed. The files on the host are still read.
    for (how, reason) in [
        (Container::Down, "docker_failed"),
        (Container::Hung, "timeout"),
    ] {
        let c = Case::new(how);
        let started = std::time::Instant::now();
        let s = reasons(&c, &[]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(25),
            "the hung docker was stopped"
        );
        assert_eq!(probe(&s, "relay", "").as_deref(), Some(reason));
        assert_eq!(probe(&s, "filesystem", "docker").as_deref(), Some(reason));
        assert_eq!(get(&s, "chatmail_docker_relay_healthy", &[]), Some(0.0));
        assert_eq!(
            get(
                &s,
                "chatmail_docker_postfix_queue_messages",
                &[("queue", "deferred")]
            ),
            Some(2.0)
        );
    }
    let c = Case::new(Container::Healthy);
    let out = c
        .tool()
        .env("PATH", isolated_path(&c.t.path().join("nobin")))
        .args(["metrics", "--tls-ports", &ports])
        .output()
        .unwrap();
    let s = samples(&ok_stdout(&out));
    assert_eq!(probe(&s, "relay", "").as_deref(), Some("docker_missing"));

    // The queue and mailboxes missing: a deployment never started.
    fs::remove_dir_all(c.dir.join("data/chatmail-postfix")).unwrap();
    fs::remove_dir_all(c.dir.join("data/chatmail")).unwrap();
    let s = reasons(&c, &[]);
    assert_eq!(probe(&s, "postfix_queue", "").as_deref(), Some("missing"));
    assert_eq!(probe(&s, "mailboxes", "").as_deref(), Some("missing"));
}

/// `--textfile DIR`: the file is replaced whole, with mode 0644 and no
/// temp file left; a directory that cannot take it is a usage error
/// (exit 2) naming it, and what was there stays.
#[test]
fn the_textfile_is_replaced_atomically_or_not_at_all() {
    let c = Case::new(Container::Absent);
    let dir = c.t.path().join("node-exporter");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("chatmail-docker.prom");
    let quiet = ["--tls-ports", "1/tls", "--textfile"];
    let write = || {
        let out = c
            .tool()
            .arg("metrics")
            .args(quiet)
            .arg(&dir)
            .output()
            .unwrap();
        assert_ok(&out);
        out
    };
    let out = write();
    assert!(out.stdout.is_empty(), "nothing on stdout");
    let first = fs::read_to_string(&file).unwrap();
    assert!(
        first.contains("# TYPE chatmail_docker_relay_up gauge"),
        "{first}"
    );
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(&file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o644);
    write();
    assert_ne!(
        fs::metadata(&file).unwrap().ino(),
        meta.ino(),
        "a new file renamed over the old one"
    );
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["chatmail-docker.prom"]);
    // --dry-run prints and writes nothing.
    let before = fs::read(&file).unwrap();
    let out = c
        .tool()
        .args(["--dry-run", "metrics"])
        .args(quiet)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(ok_stdout(&out).contains("chatmail_docker_relay_up"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("would write"));
    assert_eq!(fs::read(&file).unwrap(), before);

    // Usage errors: a directory that does not exist, a file, and a target
    // that cannot be replaced (a directory of that name).
    for (bad, needle) in [
        (c.t.path().join("none"), "no such directory"),
        (file.clone(), "is not a directory"),
    ] {
        let out = c
            .tool()
            .arg("metrics")
            .args(quiet)
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle) && err.contains(&*bad.to_string_lossy()),
            "{err}"
        );
    }
    let blocked = c.t.path().join("blocked");
    fs::create_dir_all(blocked.join("chatmail-docker.prom/kept")).unwrap();
    let out = c
        .tool()
        .arg("metrics")
        .args(quiet)
        .arg(&blocked)
        .output()
        .unwrap();
    assert_code(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is kept"));
    assert!(blocked.join("chatmail-docker.prom/kept").is_dir());
    assert_eq!(
        fs::read_dir(&blocked).unwrap().count(),
        1,
        "no temp file left"
    );
    // Not a deployment directory.
    let out = bin()
        .arg("--dir")
        .arg(c.t.path())
        .arg("metrics")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The commands `chatmail-docker --help` lists.
fn commands() -> Vec<String> {
    let help = ok_stdout(&bin().arg("--help").output().unwrap());
    let list = help.split("Commands:\n").nth(1).unwrap();
    list.lines()
        .take_while(|l| l.starts_with("  "))
        // A command's line; a description's continuation is indented more.
        .filter(|l| !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Every command has a page, every page renders with man and groff
/// without a warning, and the main page says what the README says.
#[test]
fn every_command_has_a_manual_page_that_renders() {
    let t = tempfile::tempdir().unwrap();
    let install = || {
        bin()
            .arg("--root")
            .arg(t.path())
            .args(["man", "--install"])
            .output()
            .unwrap()
    };
    let out = install();
    assert_ok(&out);
    let dir = t.path().join("usr/local/share/man/man1");
    let mut want: Vec<String> = commands()
        .iter()
        .map(|c| format!("chatmail-docker-{c}.1"))
        .collect();
    assert!(want.len() >= 20, "{want:?}");
    want.push("chatmail-docker.1".into());
    want.sort();
    let mut have_pages: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    have_pages.sort();
    assert_eq!(have_pages, want);
    // Installing again changes nothing; a single page is the same text.
    let out = install();
    assert!(String::from_utf8_lossy(&out.stderr).contains("(0 changed)"));
    let status = ok_stdout(&bin().args(["man", "status"]).output().unwrap());
    assert_eq!(
        status.trim_end(),
        fs::read_to_string(dir.join("chatmail-docker-status.1"))
            .unwrap()
            .trim_end()
    );
    bin().args(["man", "frobnicate"]).assert().code(2);

    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    if !have("man", &["--version"]) || !have("groff", &["--version"]) {
        return;
    }
    for page in &have_pages {
        let path = dir.join(page);
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("man")
            .env("MANWIDTH", "200")
            .env("MAN_KEEP_FORMATTING", "")
            .arg("-l")
            .arg(&path)
            .output()
            .unwrap();
        let text = ok_stdout(&out);
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "SEE ALSO"] {
            assert!(text.contains(section), "{page}: no {section}\n{text}");
        }
        if page != "chatmail-docker.1" {
            let command = page
                .trim_start_matches("chatmail-docker-")
                .trim_end_matches(".1");
            assert!(
                text.contains(&format!("chatmail-docker {command}")),
                "{page}: the synopsis names the command"
            );
            assert!(text.contains("EXAMPLES"), "{page}: no EXAMPLES");
            continue;
        }
        // The main page: exit codes and files, as the README has them.
        let codes = readme
            .lines()
            .find_map(|l| l.strip_prefix("Exit codes: "))
            .expect("the README's exit codes line");
        for item in codes.trim_end_matches('.').split(", ") {
            let (code, meaning) = item.split_once(' ').unwrap();
            let shown = text
                .lines()
                .skip_while(|l| !l.starts_with("EXIT STATUS"))
                .collect::<Vec<_>>()
                .join("\n");
            assert!(
                shown.contains(code) && shown.contains(meaning),
                "the page lacks exit code {code} {meaning}"
            );
        }
        let files = readme
            .split("\n## Files\n")
            .nth(1)
            .expect("the README's Files section")
            .split("\n## ")
            .next()
            .unwrap();
        let rows: Vec<(&str, &str)> = files
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .map(|l| {
                let (path, rest) = l.split_once("` | ").unwrap();
                (path, rest.trim_end_matches(" |"))
            })
            .collect();
        assert!(rows.len() >= 10, "{rows:?}");
        let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for (path, what) in &rows {
            let what = what.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                joined.contains(&format!("{path} {what}")),
                "the page's FILES lacks {path}: {what}"
            );
        }
    }
}

/// The examples: the alert rules pass promtool's check and their unit
/// tests (which fire each alert the README promises on sample data), the
/// service runs a command line the tool accepts, the timer runs it every
/// minute.
#[test]
fn the_examples_check() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let service = fs::read_to_string(examples.join("chatmail-docker-metrics.service")).unwrap();
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert!(args.contains(&"--textfile"), "{exec}");
    // clap accepts every option (an unknown one would fail before --help).
    let out = bin().args(&args).arg("--help").output().unwrap();
    assert_ok(&out);
    let timer = fs::read_to_string(examples.join("chatmail-docker-metrics.timer")).unwrap();
    assert!(timer.contains("OnUnitActiveSec=1min"), "{timer}");
    if !have("promtool", &["--version"]) {
        return;
    }
    let dir = examples.join("prometheus");
    // The rules are valid, and their unit tests pass.
    for (verb, file) in [
        ("check", "chatmail-docker.rules.yml"),
        ("test", "chatmail-docker.rules.test.yml"),
    ] {
        let out = Command::new("promtool")
            .args([verb, "rules", file])
            .current_dir(&dir)
            .output()
            .unwrap();
        let text = ok_stdout(&out);
        assert!(
            text.contains("SUCCESS"),
            "promtool {verb} rules {file}: {text}"
        );
    }
    // Every alert the README names is in the rules, and every rule's
    // metrics are ones `metrics` writes.
    let rules = fs::read_to_string(dir.join("chatmail-docker.rules.yml")).unwrap();
    let known: Vec<&str> = chatmail_docker::metrics::ALL
        .iter()
        .map(|d| d.name)
        .collect();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("chatmail_docker_") {
            assert!(
                known.contains(&word),
                "the rules use {word}, which metrics does not write"
            );
        }
    }
    for alert in [
        "ChatmailRelayUnhealthy",
        "ChatmailProbeFailed",
        "ChatmailCertificateExpiresSoon",
        "ChatmailDeferredQueueGrowing",
        "ChatmailBackupTooOld",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
    }
}
