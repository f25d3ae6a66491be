//! The relay as Docker and its clients see it: the container (through
//! [`crate::engine`], as `status` finds it), its health, the relay's units
//! (through [`crate::status::unit_states`]), the release its image was
//! built from, and the certificate each TLS endpoint serves (through
//! [`crate::certwatch::verify`], the check cert-watch runs after a reload).

use std::time::Duration;

use super::expo::Samples;
use super::*;
use crate::certwatch::verify::{self, Endpoint, Stage};
use crate::deployment::Settings;
use crate::engine::{Containers, Inspect};

/// Docker's container states, for the state set.
pub const STATES: &[&str] = &[
    "absent",
    "created",
    "running",
    "restarting",
    "paused",
    "exited",
    "removing",
    "dead",
];
/// Docker's health states (`none`: no health check).
pub const HEALTH: &[&str] = &["starting", "healthy", "unhealthy", "none"];

/// The container, its health, the relay's units and release.
pub fn container(ctx: &Context) -> Samples {
    let mut out = Samples::default();
    let info = |out: &mut Samples, release: Option<&crate::upgrade::Release>| {
        out.add(
            &INFO,
            &[
                ("tool_version", env!("CARGO_PKG_VERSION")),
                ("relay_version", release.map_or("", |r| r.version.as_str())),
                ("relay_commit", release.map_or("", |r| r.commit.as_str())),
            ],
            1.0,
        );
    };
    let down = |out: &mut Samples| {
        out.flag(&RELAY_UP, &[], false);
        out.flag(&RELAY_HEALTHY, &[], false);
    };
    let found = match engine::find(ctx, Containers::Any) {
        Ok(f) => f,
        Err(e) => {
            ctx.shell.verbose(format!("relay: {e:#}"));
            probe(&mut out, "relay", "", Some(docker_reason(&e)));
            info(&mut out, None);
            down(&mut out);
            return out;
        }
    };
    let c = match found {
        None => {
            probe(&mut out, "relay", "", None);
            info(&mut out, None);
            down(&mut out);
            state_sets(&mut out, None);
            return out;
        }
        Some(f) if !f.is_ours() => {
            ctx.shell
                .verbose(format!("relay: {:#}", f.foreign_error(ctx)));
            probe(&mut out, "relay", "", Some("foreign_container"));
            info(&mut out, None);
            down(&mut out);
            return out;
        }
        Some(f) => f.container,
    };
    probe(&mut out, "relay", "", None);
    out.flag(&RELAY_UP, &[], c.state.running);
    out.flag(&RELAY_HEALTHY, &[], healthy(&c));
    state_sets(&mut out, Some(&c));
    if c.state.running {
        if let Some(t) = unix_rfc3339(&c.state.started_at) {
            out.add(&RELAY_START, &[], t);
        }
    }
    // The image's labels and the units in the container, at the same time.
    let (release, units) = std::thread::scope(|s| {
        let units = c
            .state
            .running
            .then(|| s.spawn(|| crate::status::unit_states(ctx)));
        let release = crate::engine::image::image_release(ctx, &c.image);
        (release, units.map(|u| u.join()))
    });
    info(&mut out, release.as_ref());
    match units {
        None => {}
        Some(Ok(Ok(units))) => {
            probe(&mut out, "units", "", None);
            for u in units {
                out.flag(
                    &UNIT_ACTIVE,
                    &[("unit", &u.unit), ("enabled", &u.enabled)],
                    u.active == "active",
                );
            }
        }
        Some(Ok(Err(e))) => {
            ctx.shell.verbose(format!("units: {e:#}"));
            let reason = match docker_reason(&e) {
                "docker_failed" => "exec_failed",
                r => r,
            };
            probe(&mut out, "units", "", Some(reason));
        }
        Some(Err(_)) => probe(&mut out, "units", "", Some("internal_error")),
    }
    out
}

/// Running, and the health check passes (or there is none), as `status`
/// has it.
pub fn healthy(c: &Inspect) -> bool {
    c.state.running && matches!(c.health_status(), Some("healthy") | None)
}

/// The state and health sets: every known value, 1 for the current one.
/// `None`: there is no container.
fn state_sets(out: &mut Samples, c: Option<&Inspect>) {
    let state = c.map_or("absent", |c| c.state.status.as_str());
    for s in known_or_own(STATES, state) {
        out.flag(&RELAY_STATE, &[("state", s)], s == state);
    }
    if let Some(c) = c {
        let health = c.health_status().unwrap_or("none");
        for h in known_or_own(HEALTH, health) {
            out.flag(&RELAY_HEALTH, &[("status", h)], h == health);
        }
    }
}

/// The known values, and `own` after them when it is not one of them.
fn known_or_own<'a>(known: &[&'a str], own: &'a str) -> Vec<&'a str> {
    let mut v = known.to_vec();
    if !v.contains(&own) {
        v.push(own);
    }
    v
}

/// What one endpoint served: the certificate's fingerprint and expiry, or
/// why there was none.
#[derive(Clone, Debug, PartialEq)]
pub enum Served {
    Certificate { sha256: String, expiry: f64 },
    Failed(&'static str),
}

/// The reason for an endpoint that served no certificate.
pub fn served_reason(e: &verify::ServedError) -> &'static str {
    if e.is_refused() {
        "refused"
    } else if e.is_timeout() {
        "timeout"
    } else {
        match e.stage {
            Stage::Connect => "connect_failed",
            Stage::Starttls => "starttls_failed",
            Stage::Handshake => "handshake_failed",
        }
    }
}

/// Ask one endpoint for its certificate.
pub fn serve(host: &str, ep: Endpoint, sni: &str, timeout: Duration) -> Served {
    match verify::served_certificate(host, ep, sni, timeout) {
        Ok(der) => match crate::certwatch::material::leaf_info(&der) {
            Ok(info) => Served::Certificate {
                sha256: info.leaf_sha256,
                expiry: unix(info.not_after),
            },
            Err(_) => Served::Failed("unparseable_certificate"),
        },
        Err(e) => Served::Failed(served_reason(&e)),
    }
}

/// The samples of the TLS probes: per endpoint its certificate's expiry
/// (or the reason there is none), how many different certificates they
/// serve, and whether all six answered with the same one.
pub fn tls_samples(results: &[(Endpoint, Served)]) -> Samples {
    let mut out = Samples::default();
    let mut distinct: Vec<&str> = Vec::new();
    for (ep, served) in results {
        let port = ep.port.to_string();
        match served {
            Served::Certificate { sha256, expiry } => {
                probe(&mut out, "tls", &port, None);
                out.add(&TLS_EXPIRY, &[("port", &port)], *expiry);
                if !distinct.contains(&sha256.as_str()) {
                    distinct.push(sha256);
                }
            }
            Served::Failed(reason) => probe(&mut out, "tls", &port, Some(reason)),
        }
    }
    out.add(&TLS_DISTINCT, &[], distinct.len() as f64);
    let all = results
        .iter()
        .all(|(_, s)| matches!(s, Served::Certificate { .. }));
    out.flag(&TLS_CONSISTENT, &[], all && distinct.len() == 1);
    out
}

/// Probe the relay's six TLS endpoints at once, with the mail domain as
/// the server name.
pub fn tls(ctx: &Context, settings: &Settings, opts: &Options) -> Samples {
    let endpoints = &opts.tls_ports;
    let sni = settings.mail_domain.as_deref().unwrap_or("localhost");
    let results: Vec<(Endpoint, Served)> = std::thread::scope(|s| {
        let jobs: Vec<_> = endpoints
            .iter()
            .map(|&ep| {
                (
                    ep,
                    s.spawn(move || serve(&opts.tls_host, ep, sni, opts.timeout)),
                )
            })
            .collect();
        jobs.into_iter()
            .map(|(ep, j)| (ep, j.join().unwrap_or(Served::Failed("internal_error"))))
            .collect()
    });
    for (ep, s) in &results {
        if let Served::Failed(why) = s {
            ctx.shell.verbose(format!("tls {ep}: {why}"));
        }
    }
    tls_samples(&results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certwatch::verify::Proto;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            port,
            proto: Proto::Tls,
        }
    }

    fn cert(sha: &str) -> Served {
        Served::Certificate {
            sha256: sha.into(),
            expiry: 1_800_000_000.0,
        }
    }

    fn value(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        s.iter()
            .find(|x| {
                x.def.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| x.labels.iter().any(|(k2, v2)| k2 == k && v2 == v))
            })
            .map(|x| x.value)
    }

    #[test]
    fn one_certificate_everywhere_is_consistent() {
        let s = tls_samples(&[(ep(443), cert("a")), (ep(25), cert("a"))]);
        assert_eq!(value(&s, TLS_CONSISTENT.name, &[]), Some(1.0));
        assert_eq!(value(&s, TLS_DISTINCT.name, &[]), Some(1.0));
        assert_eq!(
            value(&s, TLS_EXPIRY.name, &[("port", "25")]),
            Some(1_800_000_000.0)
        );
        assert_eq!(value(&s, PROBE_UP.name, &[("target", "443")]), Some(1.0));
    }

    #[test]
    fn a_stale_or_silent_endpoint_is_not_consistent_and_says_why() {
        let s = tls_samples(&[(ep(443), cert("a")), (ep(993), cert("b"))]);
        assert_eq!(value(&s, TLS_CONSISTENT.name, &[]), Some(0.0));
        assert_eq!(value(&s, TLS_DISTINCT.name, &[]), Some(2.0));
        let s = tls_samples(&[(ep(443), cert("a")), (ep(465), Served::Failed("refused"))]);
        assert_eq!(value(&s, TLS_CONSISTENT.name, &[]), Some(0.0));
        assert_eq!(value(&s, TLS_DISTINCT.name, &[]), Some(1.0));
        assert_eq!(
            value(
                &s,
                PROBE_UP.name,
                &[("target", "465"), ("reason", "refused")]
            ),
            Some(0.0)
        );
        assert_eq!(value(&s, TLS_EXPIRY.name, &[("port", "465")]), None);
    }

    #[test]
    fn state_sets_name_every_state_and_an_unknown_one() {
        let sets = |c: Option<&Inspect>| {
            let mut out = Samples::default();
            state_sets(&mut out, c);
            out
        };
        let out = sets(None);
        for (state, want) in [("absent", 1.0), ("running", 0.0)] {
            let got = value(&out, RELAY_STATE.name, &[("state", state)]);
            assert_eq!(got, Some(want), "{state}");
        }
        assert_eq!(value(&out, RELAY_HEALTH.name, &[]), None);
        let mut c = Inspect::default();
        c.state.status = "frozen".into();
        let out = sets(Some(&c));
        let frozen = value(&out, RELAY_STATE.name, &[("state", "frozen")]);
        assert_eq!(frozen, Some(1.0));
        let none = value(&out, RELAY_HEALTH.name, &[("status", "none")]);
        assert_eq!(none, Some(1.0));
        assert!(!healthy(&c));
        c.state.running = true;
        assert!(healthy(&c), "no health check: running is healthy");
    }

    #[test]
    fn a_refused_port_is_reported_as_refused() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert_eq!(
            serve("127.0.0.1", ep(port), "example.org", Duration::from_secs(2)),
            Served::Failed("refused")
        );
    }

    #[test]
    fn a_silent_server_is_a_timeout_and_garbage_is_no_handshake() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let smtp = Endpoint {
            port,
            proto: Proto::Smtp,
        };
        let t = std::thread::spawn(move || {
            use std::io::Write;
            // Accepts and says nothing: the SMTP greeting never comes.
            let (_quiet, _) = l.accept().unwrap();
            let (mut rude, _) = l.accept().unwrap();
            rude.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(500));
        });
        assert_eq!(
            serve("127.0.0.1", smtp, "example.org", Duration::from_millis(300)),
            Served::Failed("timeout")
        );
        assert_eq!(
            serve("127.0.0.1", ep(port), "example.org", Duration::from_secs(2)),
            Served::Failed("handshake_failed")
        );
        t.join().unwrap();
    }
}
