//! Checking the served certificate after a reload, against real TLS servers
//! on 127.0.0.1: `openssl s_server` restarted by the reload command (old
//! certificate, then new), and small rustls servers speaking SMTP and IMAP
//! STARTTLS.

use crate::support::certs::*;
use crate::support::have;

use chatmail_docker::certwatch::verify::{served_leaf, Endpoint, Proto, Served};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `openssl s_server` on a port; its pid lives in a file so the reload
/// script can replace it. Killed on drop.
struct SServer {
    pidfile: PathBuf,
    port: u16,
    /// The first server, started here (later ones by the reload script).
    first: std::process::Child,
}

impl SServer {
    fn start(dir: &Path, cert: &Path, key: &Path) -> SServer {
        let port = free_port();
        let pidfile = dir.join("s_server.pid");
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::fs::write(&pidfile, child.id().to_string()).unwrap();
        let s = SServer {
            pidfile,
            port,
            first: child,
        };
        s.wait_listening();
        s
    }

    fn wait_listening(&self) {
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < PATIENCE, "s_server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A reload script that records the action and, for the actions in
    /// `$SWAP_ON`, restarts s_server with the certificate on disk.
    fn reload_script(&self, d: &Deploy) -> String {
        let script = d.path("reload.sh");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
echo "$CERT_WATCH_ACTION $CERT_LEAF_SHA256" >> '{rec}'
case " $SWAP_ON " in *" $CERT_WATCH_ACTION "*) ;; *) exit 0 ;; esac
old=$(cat '{pid}')
kill "$old"
# Wait until it is gone (a zombie of the test process counts as gone).
while [ -d "/proc/$old" ] && ! grep -q '^State:.*Z' "/proc/$old/status" 2>/dev/null; do sleep 0.02; done
openssl s_server -quiet -www -accept 127.0.0.1:{port} -cert "$CERT_FILE" -key "$KEY_FILE" </dev/null >/dev/null 2>&1 &
echo $! > '{pid}'
"#,
                rec = d.recorder().display(),
                pid = self.pidfile.display(),
                port = self.port
            ),
        )
        .unwrap();
        format!("sh '{}'", script.display())
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        let _ = self.first.kill();
        let _ = self.first.wait();
    }
}

/// Serve `a` with s_server, put `b` on disk, run `cert-watch --once`: it
/// must exit with `code`. The deployment, the run's stderr, `a` and `b`;
/// `None` (the test is skipped) without openssl.
fn scenario(swap_on: &str, extra_ports: &str, code: i32) -> Option<(Deploy, String, Pair, Pair)> {
    if !have("openssl", &["version"]) {
        return None;
    }
    let d = Deploy::new("");
    let (a, b) = (pair(), pair());
    let dir = d.path("ssl");
    plain(&dir, &a);
    let server = SServer::start(&d.dir, &dir.join("fullchain.pem"), &dir.join("privkey.pem"));
    plain(&dir, &b);
    let ports = format!("{}/tls{extra_ports}", server.port);
    let out = d
        .cmd()
        .env("SWAP_ON", swap_on)
        .args(["cert-watch", "--once", "--verify-timeout", "1", "--path"])
        .arg(&dir)
        .args(["--verify-ports", &ports, "--reload-command"])
        .arg(server.reload_script(&d))
        .output()
        .unwrap();
    drop(server);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{err}");
    Some((d, err, a, b))
}

#[test]
fn reload_then_served_certificate_is_verified() {
    let Some((d, err, _a, b)) = scenario("reload", "", 0) else {
        return;
    };
    assert!(err.contains("Verified"), "{err}");
    assert!(err.contains(&b.leaf[..16]), "{err}");
    assert_eq!(d.reloads(), vec![("reload".to_string(), b.leaf.clone())]);
    let state = std::fs::read_to_string(d.path("data/.cert-watch-state.json")).unwrap();
    assert!(state.contains("\"verified\": true"), "{state}");
}

#[test]
fn old_certificate_still_served_leads_to_a_restart() {
    let Some((d, err, _a, b)) = scenario("restart", "", 0) else {
        return;
    };
    assert!(err.contains("still serving the old certificate"), "{err}");
    assert!(err.contains("Verified"), "{err}");
    let actions: Vec<String> = d.reloads().into_iter().map(|(a, _)| a).collect();
    assert_eq!(actions, vec!["reload", "restart"]);
    let _ = b;
}

#[test]
fn certificate_never_updated_is_an_error_and_not_recorded() {
    let Some((d, err, a, _b)) = scenario("never", "", 1) else {
        return;
    };
    assert!(err.contains("still serve an old certificate"), "{err}");
    assert!(err.contains(&format!("OLD ({})", &a.leaf[..16])), "{err}");
    assert!(!d.path("data/.cert-watch-state.json").exists());
}

#[test]
fn refused_ports_are_reported_as_such() {
    let closed = free_port();
    let Some((_d, err, _a, _b)) = scenario("reload", &format!(",{closed}/smtp"), 0) else {
        return;
    };
    assert!(
        err.contains(&format!("{closed}/smtp (connection refused)")),
        "{err}"
    );
    assert!(err.contains("Verified"), "{err}");
}

/// A one-connection-at-a-time server speaking `proto` before TLS.
pub(crate) fn starttls_server(proto: Proto, p: &Pair) -> u16 {
    let chain = vec![CertificateDer::from(
        rustls_pemfile::certs(&mut p.cert.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec(),
    )];
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut p.key.as_bytes())
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { continue };
            let mut r = BufReader::new(sock.try_clone().unwrap());
            let mut line = String::new();
            match proto {
                Proto::Smtp => {
                    sock.write_all(b"220-mx.example.org ESMTP\r\n220 ready\r\n")
                        .unwrap();
                    r.read_line(&mut line).unwrap();
                    assert!(line.starts_with("EHLO"));
                    sock.write_all(b"250-mx.example.org\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
                        .unwrap();
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    assert_eq!(line, "STARTTLS\r\n");
                    sock.write_all(b"220 2.0.0 Ready to start TLS\r\n").unwrap();
                }
                Proto::Imap => {
                    sock.write_all(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
                        .unwrap();
                    r.read_line(&mut line).unwrap();
                    let tag = line.split(' ').next().unwrap().to_string();
                    assert!(line.ends_with("STARTTLS\r\n"));
                    sock.write_all(format!("{tag} OK Begin TLS negotiation now\r\n").as_bytes())
                        .unwrap();
                }
                Proto::Tls => {}
            }
            let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
            while conn.is_handshaking() {
                if conn.complete_io(&mut sock).is_err() {
                    break;
                }
            }
        }
    });
    port
}

#[test]
fn starttls_smtp_imap_and_implicit_tls_report_the_leaf() {
    let p = pair();
    for proto in [Proto::Smtp, Proto::Imap, Proto::Tls] {
        let port = starttls_server(proto, &p);
        let served = served_leaf(
            "127.0.0.1",
            Endpoint { port, proto },
            DOMAIN,
            Duration::from_secs(10),
        );
        assert_eq!(served, Served::Leaf(p.leaf.clone()), "{proto:?}");
    }
}

#[test]
fn a_plain_text_server_is_a_failure_not_a_certificate() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"554 no service here\r\n");
        }
    });
    let served = served_leaf(
        "127.0.0.1",
        Endpoint {
            port,
            proto: Proto::Smtp,
        },
        DOMAIN,
        Duration::from_secs(10),
    );
    assert!(
        matches!(&served, Served::Failed(why) if why.contains("554")),
        "{served:?}"
    );
}
