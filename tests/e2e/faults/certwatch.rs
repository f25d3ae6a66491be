//! `cert-watch` killed at any moment of a certificate change, with the
//! real relay and the mail flow: the relay's self-signed certificate is
//! replaced (key, then certificate, each renamed into place as a tool
//! that renews it would), the watcher is killed with SIGKILL at a point
//! spread over the time a change takes to be served, and the next watcher
//! (what its unit's restart starts) must bring the new certificate to
//! 993, 465 and 25 (STARTTLS) by itself.

use std::fs;
use std::path::Path;
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use super::{fractions, now, points, Flow, Run, Suite};
use crate::support::engine::relay::DOMAIN;
use crate::support::engine::*;

/// Where the appliance keeps the self-signed certificate on the host.
const TLS: &str = "data/chatmail-state/tls";

/// The endpoints that must serve the new certificate.
const ENDPOINTS: [(u16, Option<&str>); 3] = [(993, None), (465, None), (25, Some("smtp"))];

/// The certificate's base64 body (the part two PEM texts of one
/// certificate share).
fn body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect()
}

/// A new self-signed pair, renamed into place key first (between the two
/// renames the pair does not match, as with a tool that writes one file
/// after the other); the certificate's body.
fn replace(dir: &Path, n: usize) -> String {
    let tls = dir.join(TLS);
    let (key, cert) = (tls.join(".new-key"), tls.join(".new-cert"));
    check(
        StdCommand::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "30", "-subj", &format!("/CN={DOMAIN} {n}")])
            .args(["-addext", &format!("subjectAltName=DNS:{DOMAIN}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "make a self-signed certificate",
    );
    let pem = fs::read_to_string(&cert).unwrap();
    fs::rename(&key, tls.join("mailserver.key")).unwrap();
    fs::rename(&cert, tls.join("mailserver.pem")).unwrap();
    body(&pem)
}

/// Whether every endpoint serves the certificate `want`.
fn all_serve(want: &str) -> bool {
    ENDPOINTS.iter().all(|(port, starttls)| {
        served_cert(*port, None, *starttls).is_some_and(|p| body(&p) == want)
    })
}

/// Start a watcher and wait until it watches.
fn watcher(dir: &Path, what: &str) -> Run {
    let mut w = Run::start(dir, &["cert-watch"], what);
    assert!(
        w.wait_for("Watching", Duration::from_secs(60)),
        "{what}: cert-watch never started watching"
    );
    // Its first look at the certificate on disk, done.
    std::thread::sleep(Duration::from_secs(1));
    w
}

pub(super) fn phase(s: &mut Suite, dir: &Path) {
    // One undisturbed change: how long until all three serve it.
    let w = watcher(dir, "cert-watch (measured)");
    let changed = Instant::now();
    let want = replace(dir, 0);
    let mut took = None;
    for _ in 0..600 {
        if all_serve(&want) {
            took = Some(changed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    w.term();
    let _ = w.finish();
    let took = took.expect("cert-watch never brought the new certificate to the relay");
    eprintln!("faults: a certificate change was served after {took:?}");

    for (i, f) in fractions(points(2)).into_iter().enumerate() {
        let name = format!("cert-watch killed at {:.0}% of a change", f * 100.0);
        let flow = Flow::start(&name);
        std::thread::sleep(Duration::from_secs(2));
        let w = watcher(dir, &name);
        let want = replace(dir, i + 1);
        std::thread::sleep(took.mul_f64(1.25 * f));
        let fault = now();
        w.kill();
        let _ = w.finish();
        // Its unit starts the next one.
        let next = watcher(dir, &format!("{name}: then"));
        let mut served = false;
        for _ in 0..120 {
            if all_serve(&want) {
                served = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        next.term();
        let (code, out, _) = next.finish();
        if !served {
            s.problem(format!(
                "{name}: the next watcher never served the new certificate:\n{}",
                tail(&out, 15)
            ));
        }
        if code != Some(0) {
            s.problem(format!("{name}: the next watcher ended with {code:?}"));
        }
        let left: Vec<String> = fs::read_dir(dir.join(TLS))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "mailserver.key" && n != "mailserver.pem")
            .collect();
        if !left.is_empty() {
            s.problem(format!("{name}: left {left:?} beside the certificate"));
        }
        std::thread::sleep(Duration::from_secs(2));
        let rec = flow.stop();
        s.row(&name, fault, rec, &[]);
    }
}
