//! End-to-end with the real relay in TLS mode `acme`: the relay's own
//! acmetool obtains the relay's certificate from an ACME server, Debian's
//! `pebble` (RFC 8555, for tests), for a normal domain (chat.example.org).
//!
//! What is the test's and nothing else of the relay changes: the ACME
//! directory URL and pebble's terms (the relay's acmetool templates,
//! through `custom/`), the test CA that signed pebble's HTTPS listener
//! trusted in the container (`custom/_root_/etc/ssl/certs/`), the domain
//! resolving to this host (the container's /etc/hosts through an override
//! of the user's own; pebble asks `pebble-challtestsrv`, which answers
//! 127.0.0.1 for every name), and the relay's DNS check skipped (no DNS for
//! the domain exists). pebble validates over HTTP on port 80, as Let's
//! Encrypt does.
//!
//! In order: the first setup obtains the certificate; every endpoint
//! (443, 465, 993, and STARTTLS on 25, 587, 143) serves pebble's
//! certificate for the domain; `status` shows it with its issuer and
//! expiry; `dns` prints the CAA record with pebble's account; a forced
//! renewal is picked up by `cert-watch` and served on all six endpoints
//! (the time it took is printed); `backup`, `restore` into another
//! directory and `setup` keep the account and the certificate (pebble sees
//! no new order); with the ACME server gone, a setup that needs a new
//! certificate says so at once with acmetool's own lines, and `status`
//! shows the certificate missing.

use std::fs;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use crate::support::engine::relay::*;
use crate::support::engine::*;

const ACME_DOMAIN: &str = "chat.example.org";
const NAMES: [&str; 3] = [
    "chat.example.org",
    "mta-sts.chat.example.org",
    "www.chat.example.org",
];
const DIRECTORY: &str = "https://127.0.0.1:14000/dir";
/// pebble's terms of service, which acmetool asks to agree to.
const PEBBLE_TERMS: &str = "data:text/plain,Do%20what%20thou%20wilt";

/// pebble and its DNS server, running until dropped.
struct Pebble {
    children: Vec<Child>,
    log: PathBuf,
}

impl Pebble {
    fn start(dir: &Path, ca: &TestCa) -> Pebble {
        fs::create_dir_all(dir).unwrap();
        let config = dir.join("pebble.json");
        fs::write(
            &config,
            serde_json::json!({"pebble": {
                "listenAddress": "127.0.0.1:14000",
                "managementListenAddress": "127.0.0.1:15000",
                "certificate": ca.leaf_cert,
                "privateKey": ca.leaf_key,
                "httpPort": 80,
                "tlsPort": 443,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }})
            .to_string(),
        )
        .unwrap();
        let log = dir.join("pebble.log");
        let dns = StdCommand::new("pebble-challtestsrv")
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-dns01", "127.0.0.1:8053", "-management", "127.0.0.1:8055"])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv");
        let pebble = StdCommand::new("pebble")
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", "127.0.0.1:8053"])
            // No random waits before validating, no nonces refused at
            // random: the same run every time.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble");
        let p = Pebble {
            children: vec![dns, pebble],
            log,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect("127.0.0.1:14000").is_ok() {
                return p;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("pebble did not listen on 127.0.0.1:14000");
    }

    /// How many certificates pebble issued (orders finalised).
    fn issued(&self) -> usize {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Issued certificate serial"))
            .count()
    }

    fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test CA and the certificate of pebble's HTTPS listener it signed.
struct TestCa {
    ca_cert: PathBuf,
    leaf_cert: PathBuf,
    leaf_key: PathBuf,
}

fn test_ca(dir: &Path) -> TestCa {
    fs::create_dir_all(dir).unwrap();
    let p = |n: &str| dir.join(n);
    let openssl = |args: &[&str], what: &str| {
        check(StdCommand::new("openssl").args(args).current_dir(dir), what)
    };
    crate::support::certs::openssl_self_signed(
        dir,
        30,
        "/CN=chatmail-docker test ACME server CA",
        &[],
        "ca.key",
        "ca.pem",
    );
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "csr.pem",
        ],
        "pebble's key",
    );
    fs::write(p("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "csr.pem",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "ext",
            "-out",
            "cert.pem",
        ],
        "pebble's listener certificate",
    );
    TestCa {
        ca_cert: p("ca.pem"),
        leaf_cert: p("cert.pem"),
        leaf_key: p("key.pem"),
    }
}

/// The acmetool templates of the relay with the test's directory URL and
/// pebble's terms; the test CA; the domain resolving to this host.
fn point_at_pebble(dir: &Path, ca: &TestCa) {
    let relay_tpl = dir.join("relay/cmdeploy/src/cmdeploy/acmetool");
    let custom_tpl = dir.join("custom/cmdeploy/src/cmdeploy/acmetool");
    fs::create_dir_all(&custom_tpl).unwrap();
    let target = fs::read_to_string(relay_tpl.join("target.yaml.j2")).unwrap();
    let provider = target
        .lines()
        .find(|l| l.trim_start().starts_with("provider:"))
        .expect("the relay's acmetool target names a provider")
        .to_string();
    fs::write(
        custom_tpl.join("target.yaml.j2"),
        target.replace(&provider, &format!("  provider: {DIRECTORY}")),
    )
    .unwrap();
    let mut responses = fs::read_to_string(relay_tpl.join("response-file.yaml.j2")).unwrap();
    responses.push_str(&format!("\"acme-agreement:{PEBBLE_TERMS}\": true\n"));
    fs::write(custom_tpl.join("response-file.yaml.j2"), responses).unwrap();
    let certs = dir.join("custom/_root_/etc/ssl/certs");
    fs::create_dir_all(&certs).unwrap();
    fs::copy(&ca.ca_cert, certs.join("chatmail-docker-test-acme-ca.pem")).unwrap();
    let hosts: Vec<String> = NAMES
        .iter()
        .map(|n| format!("      - \"{n}:127.0.0.1\""))
        .collect();
    fs::write(
        dir.join("docker-compose.override.yaml"),
        format!(
            "services:\n  chatmail:\n    extra_hosts:\n{}\n",
            hosts.join("\n")
        ),
    )
    .unwrap();
    fs::write(
        dir.join("chatmail.ini"),
        format!("[params]\nmail_domain = {ACME_DOMAIN}\nmax_load_1m = 100\n"),
    )
    .unwrap();
    // No DNS exists for the domain: the relay's DNS check is skipped (a
    // line of the user's own in .env, which setup keeps).
    fs::write(dir.join(".env"), "CHATMAIL_SKIP_DNS_CHECK=true\n").unwrap();
}

/// The leaf certificate served on a port of this host (`starttls`: the
/// protocol to start TLS in), as PEM.
fn served(port: u16, starttls: Option<&str>) -> Option<String> {
    served_cert(port, Some(ACME_DOMAIN), starttls).map(|pem| pem + "\n")
}

const ENDPOINTS: [(u16, Option<&str>); 6] = [
    (443, None),
    (465, None),
    (993, None),
    (25, Some("smtp")),
    (587, Some("smtp")),
    (143, Some("imap")),
];

/// `openssl x509 -noout ARGS` on a PEM certificate.
fn x509(pem: &str, args: &[&str]) -> String {
    let out = feed(
        StdCommand::new("openssl")
            .args(["x509", "-noout"])
            .args(args),
        pem.as_bytes(),
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Every endpoint serves one certificate, issued by pebble for the
/// domain; its SHA-256.
fn all_serve_pebbles(what: &str) -> String {
    let mut seen = Vec::new();
    for (port, starttls) in ENDPOINTS {
        let pem = served(port, starttls)
            .unwrap_or_else(|| panic!("{what}: no certificate served on {port}"));
        let issuer = x509(&pem, &["-issuer"]);
        assert!(
            issuer.contains("Pebble Intermediate CA"),
            "{what}: port {port} serves a certificate of {issuer}"
        );
        let names = x509(&pem, &["-ext", "subjectAltName"]);
        for n in NAMES {
            assert!(
                names.contains(&format!("DNS:{n}")),
                "{what}: port {port}'s certificate is not for {n}: {names}"
            );
        }
        seen.push(sha256_hex(pem.as_bytes()));
    }
    seen.dedup();
    assert_eq!(
        seen.len(),
        1,
        "{what}: one certificate on all six: {seen:?}"
    );
    seen.remove(0)
}

fn acme_tool(dir: &Path) -> assert_cmd::Command {
    tool(dir)
}

/// Make acmetool order a new certificate: the relay's certificates go
/// (its account stays), then its own renewal unit starts (not waited
/// for: the test watches the switch).
fn force_renewal(container: &str) {
    exec(
        container,
        &[
            "sh",
            "-c",
            "rm -rf /var/lib/acme/certs/* /var/lib/acme/keys/* && systemctl start --no-block acmetool-reconcile.service",
        ],
    );
}

/// The SHA-256 of the certificate the endpoints serve, once all six serve
/// the same one that differs from `old`; with how long after `since` each
/// endpoint first served it: when the first connection that got it was
/// opened (each endpoint asked by a thread of its own, again and again, so
/// one slow handshake does not delay the others' times).
fn wait_all_serve_new(old: &str, since: Instant) -> (String, Vec<(u16, Duration)>) {
    let threads: Vec<_> = ENDPOINTS
        .iter()
        .map(|&(port, starttls)| {
            let old = old.to_string();
            std::thread::spawn(move || {
                for _ in 0..3000 {
                    // A client that connects at `asked` gets the new one:
                    // the handshake's own length (an SMTP greeting and
                    // EHLO first on 25) is not the relay's delay.
                    let asked = since.elapsed();
                    if let Some(sha) = served(port, starttls).map(|pem| sha256_hex(pem.as_bytes()))
                    {
                        if sha != old {
                            let answered = since.elapsed();
                            eprintln!(
                                "e2e-acme: {port}: the renewed certificate for a connection opened {} ms after the switch (answered after {} ms)",
                                asked.as_millis(),
                                answered.as_millis()
                            );
                            return Some((sha, asked));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                None
            })
        })
        .collect();
    let mut shas = Vec::new();
    let mut times = Vec::new();
    for (t, (port, _)) in threads.into_iter().zip(ENDPOINTS) {
        let (sha, took) = t
            .join()
            .unwrap()
            .unwrap_or_else(|| panic!("the renewed certificate was never served on {port}"));
        shas.push(sha);
        times.push((port, took));
    }
    shas.dedup();
    assert_eq!(shas.len(), 1, "one new certificate on all six: {shas:?}");
    (shas.remove(0), times)
}

#[test]
fn relay_with_a_certificate_from_an_acme_server() {
    if !require(
        runs("pebble", &["-version"]) || which("pebble"),
        "pebble (Debian's package: an ACME server for tests)",
    ) {
        return;
    }
    let Some((_engine, total, base, tmp)) = engine_test("chatmail-e2e-acme") else {
        return;
    };
    let ca = test_ca(&tmp.path().join("ca"));
    let mut pebble = Pebble::start(&tmp.path().join("pebble"), &ca);
    let (dir, _) = deployment_with(tmp.path(), Filtermail::Source);
    point_at_pebble(&dir, &ca);
    let _down = Down::new(&dir, IMAGE);

    // 1. The first setup: deployed beside (no relay runs yet, so on the
    // host's network), where acmetool obtains the certificate from pebble.
    let started = Instant::now();
    let (out, err) = run_tool(
        tool(&dir).env("CHATMAIL_BASE_IMAGE", &base).args([
            "setup",
            "--rebuild",
            "--skip-check",
            "cgroup-v2",
        ]),
        0,
        "setup in TLS mode acme (the first certificate)",
    );
    assert!(
        (out + &err).contains("side container on the host's network"),
        "the first setup deploys beside the relay: {err}"
    );
    let deployed = StdCommand::new("docker")
        .args(["image", "inspect", "--format"])
        .arg("{{index .Config.Labels \"org.chatmail-docker.deployed\"}}")
        .arg(IMAGE)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&deployed.stdout).trim().len(),
        16,
        "the image setup runs was deployed beside"
    );
    eprintln!(
        "e2e-acme: first setup with the certificate to healthy: {:.1?}",
        started.elapsed()
    );
    let container = healthy_container_of(&mut acme_tool(&dir));
    assert_eq!(pebble.issued(), 1, "pebble issued the relay's certificate");
    let live = dir.join(format!("data/chatmail-acme/live/{ACME_DOMAIN}"));
    assert!(
        live.join("fullchain").exists(),
        "acmetool's live certificate"
    );

    // 2. Served on all six endpoints: pebble's, for the domain.
    let first = all_serve_pebbles("after the first setup");

    // 3. status: the certificate with its issuer and expiry; dns: the CAA
    // record names pebble's account.
    let (out, _) = run_tool(
        acme_tool(&dir).args(["status", "--json"]),
        0,
        "status --json",
    );
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cert = &status["certificate"];
    assert!(
        cert["issuer"]
            .as_str()
            .is_some_and(|i| i.contains("Pebble Intermediate CA")),
        "status shows the issuer: {cert}"
    );
    assert!(
        cert["not_after"].is_string(),
        "status shows the expiry: {cert}"
    );
    assert_eq!(status["warnings"], serde_json::json!([]), "{status}");
    let (text, _) = run_tool(acme_tool(&dir).arg("status"), 0, "status");
    assert!(text.contains("Pebble Intermediate CA"), "{text}");
    let account = exec(&container, &["acmetool", "account-url"]);
    let account = account.trim();
    assert!(
        account.starts_with("https://127.0.0.1:14000/"),
        "acmetool's account is pebble's: {account}"
    );
    let (zone, _) = run_tool(
        acme_tool(&dir).args(["dns", "--no-check"]),
        0,
        "dns --no-check",
    );
    assert!(
        zone.lines()
            .any(|l| l.contains("CAA") && l.contains(&format!("accounturi={account}"))),
        "dns prints the CAA record for the account in use:\n{zone}"
    );

    // 4. A forced renewal: cert-watch picks it up; all six endpoints serve
    // the new certificate.
    let mut watch = StdCommand::new(assert_cmd::cargo::cargo_bin("chatmail-docker"))
        .env("CHATMAIL_IMAGE", IMAGE)
        .env("NO_COLOR", "1")
        .arg("--dir")
        .arg(&dir)
        .arg("cert-watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let watch_log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    for pipe in [
        Box::new(watch.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(watch.stderr.take().unwrap()),
    ] {
        let log = watch_log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("  cert-watch | {line}");
                log.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
    }
    std::thread::sleep(Duration::from_secs(2));
    let link_before = fs::read_link(&live).unwrap();
    force_renewal(&container);
    // From the moment acmetool switched the live certificate.
    // acmetool waits between polls of the order: allow it two minutes.
    let mut switched = None;
    for _ in 0..12_000 {
        if fs::read_link(&live).is_ok_and(|l| l != link_before) {
            switched = Some(Instant::now());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let switched = switched.expect("acmetool renewed the certificate");
    let (renewed, times) = wait_all_serve_new(&first, switched);
    let took = times.iter().map(|(_, t)| *t).max().unwrap_or_default();
    eprintln!(
        "e2e-acme: the renewed certificate was served on all six endpoints {} ms after acmetool switched it ({})",
        took.as_millis(),
        times
            .iter()
            .map(|(p, t)| format!("{p}: {} ms", t.as_millis()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(all_serve_pebbles("after the renewal"), renewed);
    assert_eq!(pebble.issued(), 2, "the renewal was a new order");
    std::thread::sleep(Duration::from_secs(2));
    let _ = watch.kill();
    let _ = watch.wait();
    let said = watch_log.lock().unwrap().clone();
    assert!(
        said.to_lowercase().contains("reload"),
        "cert-watch reloaded the services: {said}"
    );

    // 5. backup -> restore into another directory -> setup: the same
    // account and certificate, no new order.
    let backup = tmp.path().join("relay.tar.zst");
    run_tool(acme_tool(&dir).arg("backup").arg(&backup), 0, "backup");
    run_tool(acme_tool(&dir).arg("down"), 0, "down (the old host)");
    let dir2 = tmp.path().join("restored");
    copy_tree(&manifest_dir().join("docker"), &dir2.join("docker"), &|p| {
        p.file_name().is_some_and(|n| n == "compose.generated.yaml")
    });
    copy_tree(&dir.join("relay"), &dir2.join("relay"), &|_| false);
    let _down2 = Down::new(&dir2, IMAGE);
    run_tool(acme_tool(&dir2).arg("restore").arg(&backup), 0, "restore");
    let issued = pebble.issued();
    run_tool(
        acme_tool(&dir2).args(["setup", "--skip-check", "cgroup-v2"]),
        0,
        "setup of the restored relay",
    );
    let container2 = healthy_container_of(&mut acme_tool(&dir2));
    assert_eq!(pebble.issued(), issued, "no new order after the restore");
    assert_eq!(
        exec(&container2, &["acmetool", "account-url"]).trim(),
        account,
        "the same ACME account"
    );
    assert_eq!(
        all_serve_pebbles("after the restore"),
        renewed,
        "the same certificate"
    );

    // 6. The ACME server is gone and the relay needs a first certificate
    // (a relay set up anew: no certificate, new settings): setup says so,
    // with acmetool's own lines, as soon as the deploy has failed; status
    // shows the certificate missing.
    pebble.stop();
    run_tool(acme_tool(&dir2).arg("down"), 0, "down");
    for sub in ["certs", "keys", "live"] {
        let p = dir2.join("data/chatmail-acme").join(sub);
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
    }
    fs::write(
        dir2.join("chatmail.ini"),
        format!(
            "[params]\nmail_domain = {ACME_DOMAIN}\nmax_load_1m = 100\nmax_user_send_per_minute = 61\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let (out, err) = run_tool(
        acme_tool(&dir2)
            .args([
                "setup",
                "--skip-check",
                "cgroup-v2",
                "--wait-timeout",
                "300",
            ])
            .timeout(Duration::from_secs(600)),
        1,
        "setup with the ACME server unreachable",
    );
    eprintln!(
        "e2e-acme: setup with the ACME server unreachable failed after {:.1?}",
        started.elapsed()
    );
    let said = out + &err;
    assert!(
        said.contains("acmetool") && said.contains("127.0.0.1:14000"),
        "setup shows acmetool's lines: {said}"
    );
    // status: not healthy (exit 1), the certificate missing; the relay's
    // services that need no certificate run.
    let (out, _) = run_tool(
        acme_tool(&dir2).args(["status", "--json"]),
        1,
        "status --json without a certificate",
    );
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        status["warnings"].as_array().is_some_and(|w| w
            .iter()
            .any(|w| w.as_str().unwrap_or("").starts_with("certificate:"))),
        "status shows the certificate missing: {status}"
    );
    for unit in [
        "postfix",
        "filtermail",
        "filtermail-incoming",
        "doveauth",
        "opendkim",
    ] {
        let active = status["units"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["unit"] == unit)
            .map(|u| u["active"].as_str().unwrap_or("").to_string());
        assert_eq!(
            active.as_deref(),
            Some("active"),
            "{unit} runs without a certificate: {status}"
        );
    }
    drop(container);
    eprintln!("e2e-acme: total {:.1?}", total.elapsed());
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}
