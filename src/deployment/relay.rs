//! The chatmail relay as this tool knows it: its systemd units and the ports
//! it binds. One manifest, read from the relay's source (its deployers,
//! units and configuration templates) and checked against it by the tests
//! (`tests/it/relay_manifest.rs` reads the relay snapshot, the real-relay
//! end-to-end suite compares with the units a deploy actually enabled), so a
//! relay release that adds a service cannot slip past `status`, `migrate`
//! or `preflight` unnoticed.
//!
//! Inside the container the health check does not use this list: it
//! requires exactly the units the relay's deploy enabled (recorded by the
//! appliance's init), whatever the release.

use std::collections::BTreeMap;

/// When the relay runs a unit or binds a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Always,
    /// ACME certificates (a real domain without `tls_external_cert_and_key`).
    Acme,
    /// `tls_external_cert_and_key` is set.
    ExternalTls,
    /// `mtail_address` is set.
    Mtail,
    /// `iroh_relay` is not set (the relay runs its own iroh-relay).
    OwnIrohRelay,
}

/// A systemd unit the relay deploys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Full unit name (`postfix.service`, `chatmail-expire.timer`).
    pub name: &'static str,
    pub when: When,
    /// Started by a timer or path unit, not enabled itself (the relay's
    /// deploy leaves it disabled); stopping it still matters.
    pub triggered: bool,
}

const fn unit(name: &'static str, when: When) -> Unit {
    Unit {
        name,
        when,
        triggered: false,
    }
}

const fn triggered(name: &'static str, when: When) -> Unit {
    Unit {
        name,
        when,
        triggered: true,
    }
}

/// Every unit the relay deploys, in the order to stop them: mail intake
/// first (no message arrives after a final sync starts), then what writes
/// the relay's data (ACME renewal, expiry), then the rest, the resolver
/// last.
pub const UNITS: &[Unit] = &[
    unit("postfix.service", When::Always),
    unit("dovecot.service", When::Always),
    unit("doveauth.service", When::Always),
    unit("filtermail.service", When::Always),
    unit("filtermail-incoming.service", When::Always),
    unit("filtermail-transport.service", When::Always),
    unit("nginx.service", When::Always),
    unit("fcgiwrap.service", When::Always),
    // Enabled with the service (Also=), and starts it on a request.
    unit("fcgiwrap.socket", When::Always),
    unit("opendkim.service", When::Always),
    unit("acmetool-redirector.service", When::Acme),
    unit("acmetool-reconcile.timer", When::Acme),
    triggered("acmetool-reconcile.service", When::Acme),
    unit("tls-cert-reload.path", When::ExternalTls),
    triggered("tls-cert-reload.service", When::ExternalTls),
    unit("chatmail-expire.timer", When::Always),
    triggered("chatmail-expire.service", When::Always),
    unit("chatmail-fsreport.timer", When::Always),
    triggered("chatmail-fsreport.service", When::Always),
    unit("chatmail-metadata.service", When::Always),
    unit("lastlogin.service", When::Always),
    unit("turnserver.service", When::Always),
    unit("iroh-relay.service", When::OwnIrohRelay),
    unit("mtail.service", When::Mtail),
    unit("unbound.service", When::Always),
];

/// The full names of [`UNITS`], in stop order.
pub fn unit_names() -> Vec<String> {
    UNITS.iter().map(|u| u.name.to_string()).collect()
}

/// Whether `name` (with or without `.service`) is one of the relay's units.
pub fn is_relay_unit(name: &str) -> bool {
    let full = full_name(name);
    UNITS.iter().any(|u| u.name == full)
}

/// `postfix` -> `postfix.service`; names with a unit suffix stay as they are.
pub fn full_name(name: &str) -> String {
    const SUFFIXES: &[&str] = &[".service", ".timer", ".socket", ".path", ".target"];
    if SUFFIXES.iter().any(|s| name.ends_with(s)) {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

/// Whether the host's network sees a port, or only the machine itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Public,
    Loopback,
}

/// A port the relay binds (on the host's network: the appliance uses it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub port: u16,
    pub udp: bool,
    pub scope: Scope,
    /// The service, as the relay's port check names it.
    pub service: &'static str,
    pub what: &'static str,
    pub when: When,
}

struct PortSpec {
    port: u16,
    udp: bool,
    scope: Scope,
    service: &'static str,
    what: &'static str,
    when: When,
    /// The `[params]` key that moves it (upper case, as in `.env`).
    key: Option<&'static str>,
}

const fn spec(
    port: u16,
    scope: Scope,
    service: &'static str,
    what: &'static str,
    when: When,
) -> PortSpec {
    PortSpec {
        port,
        udp: false,
        scope,
        service,
        what,
        when,
        key: None,
    }
}

/// A loopback port the `[params]` key `key` moves; the key names it.
const fn keyed(port: u16, service: &'static str, key: &'static str) -> PortSpec {
    PortSpec {
        key: Some(key),
        ..spec(port, Scope::Loopback, service, key, When::Always)
    }
}

use Scope::{Loopback, Public};

const PORTS: &[PortSpec] = &[
    spec(25, Public, "postfix", "SMTP", When::Always),
    spec(80, Public, "nginx", "HTTP (ACME, redirects)", When::Always),
    spec(143, Public, "dovecot", "IMAP", When::Always),
    spec(
        443,
        Public,
        "nginx",
        "HTTPS (web, iroh, IMAP/SMTP over 443)",
        When::Always,
    ),
    spec(465, Public, "postfix", "SMTPS", When::Always),
    spec(587, Public, "postfix", "submission", When::Always),
    spec(993, Public, "dovecot", "IMAPS", When::Always),
    PortSpec {
        udp: true,
        ..spec(3478, Public, "chatmail-turn", "TURN", When::Always)
    },
    spec(53, Loopback, "unbound", "DNS resolver", When::Always),
    spec(402, Loopback, "acmetool", "ACME redirector", When::Acme),
    spec(
        3340,
        Loopback,
        "iroh-relay",
        "iroh relay (behind nginx)",
        When::OwnIrohRelay,
    ),
    spec(3903, Loopback, "mtail", "mtail metrics", When::Mtail),
    spec(3904, Loopback, "dovecot", "Dovecot metrics", When::Mtail),
    spec(
        8443,
        Loopback,
        "nginx",
        "HTTPS behind the 443 multiplexer",
        When::Always,
    ),
    keyed(10025, "postfix", "POSTFIX_REINJECT_PORT"),
    keyed(10026, "postfix", "POSTFIX_REINJECT_PORT_INCOMING"),
    keyed(10080, "filtermail", "FILTERMAIL_SMTP_PORT"),
    keyed(10081, "filtermail", "FILTERMAIL_SMTP_PORT_INCOMING"),
    keyed(10082, "filtermail", "FILTERMAIL_HTTP_PORT_INCOMING"),
    keyed(10083, "filtermail", "FILTERMAIL_LMTP_PORT_TRANSPORT"),
];

/// The TLS mode the relay derives from its `[params]` (chatmaild's
/// `Config.tls_cert_mode`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// acmetool, certificates under `/var/lib/acme/live/<domain>/`.
    Acme,
    /// Self-signed (`_` domains, IPv4 addresses):
    /// `/etc/ssl/certs/mailserver.pem`, `/etc/ssl/private/mailserver.key`.
    SelfSigned,
    /// `tls_external_cert_and_key = CERT KEY`: files on the server.
    External { cert: String, key: String },
}

impl TlsMode {
    /// The mode for a `.env`-style map (upper-case keys), as the relay
    /// decides it; None without MAIL_DOMAIN.
    pub fn from_env(env: &BTreeMap<String, String>) -> Option<TlsMode> {
        let domain = env.get("MAIL_DOMAIN")?.trim();
        if domain.is_empty() {
            return None;
        }
        let external = env
            .get("TLS_EXTERNAL_CERT_AND_KEY")
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default();
        if let [cert, key] = external[..] {
            return Some(TlsMode::External {
                cert: cert.to_string(),
                key: key.to_string(),
            });
        }
        if domain.starts_with('_') || domain.parse::<std::net::Ipv4Addr>().is_ok() {
            Some(TlsMode::SelfSigned)
        } else {
            Some(TlsMode::Acme)
        }
    }
}

/// Whether a condition holds for this configuration (`.env` keys).
fn holds(when: When, env: &BTreeMap<String, String>) -> bool {
    let set = |k: &str| env.get(k).is_some_and(|v| !v.trim().is_empty());
    match when {
        When::Always => true,
        When::Acme => !matches!(
            TlsMode::from_env(env),
            Some(TlsMode::SelfSigned | TlsMode::External { .. })
        ),
        When::ExternalTls => matches!(TlsMode::from_env(env), Some(TlsMode::External { .. })),
        When::Mtail => set("MTAIL_ADDRESS"),
        When::OwnIrohRelay => !env.contains_key("IROH_RELAY"),
    }
}

/// The ports the relay binds with this configuration (`.env` keys:
/// `FILTERMAIL_SMTP_PORT` and friends move the internal ones).
pub fn ports(env: &BTreeMap<String, String>) -> Vec<Port> {
    PORTS
        .iter()
        .filter(|p| holds(p.when, env))
        .map(|p| Port {
            port: p
                .key
                .and_then(|k| env.get(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(p.port),
            udp: p.udp,
            scope: p.scope,
            service: p.service,
            what: p.what,
            when: p.when,
        })
        .collect()
}

/// The units the relay runs with this configuration.
pub fn units(env: &BTreeMap<String, String>) -> Vec<&'static Unit> {
    UNITS.iter().filter(|u| holds(u.when, env)).collect()
}

/// Every port the manifest knows, whatever the configuration, for checks
/// against the relay's source.
pub fn all_default_ports() -> Vec<u16> {
    PORTS.iter().map(|p| p.port).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_tls_mode_follows_the_relay() {
        assert_eq!(
            TlsMode::from_env(&env(&[("MAIL_DOMAIN", "chat.example.org")])),
            Some(TlsMode::Acme)
        );
        assert_eq!(
            TlsMode::from_env(&env(&[("MAIL_DOMAIN", "_chat.example.org")])),
            Some(TlsMode::SelfSigned)
        );
        assert_eq!(
            TlsMode::from_env(&env(&[("MAIL_DOMAIN", "192.0.2.7")])),
            Some(TlsMode::SelfSigned)
        );
        assert_eq!(
            TlsMode::from_env(&env(&[
                ("MAIL_DOMAIN", "chat.example.org"),
                ("TLS_EXTERNAL_CERT_AND_KEY", " /c/full.pem   /c/key.pem "),
            ])),
            Some(TlsMode::External {
                cert: "/c/full.pem".into(),
                key: "/c/key.pem".into()
            })
        );
        assert_eq!(TlsMode::from_env(&env(&[("MAIL_DOMAIN", " ")])), None);
    }

    #[test]
    fn ports_follow_the_configuration() {
        let acme = ports(&env(&[("MAIL_DOMAIN", "chat.example.org")]));
        assert!(acme.iter().any(|p| p.port == 402));
        assert!(!acme.iter().any(|p| p.port == 3903), "mtail only when set");
        assert!(!acme.iter().any(|p| p.port == 995), "the relay has no POP3");
        let own = ports(&env(&[
            ("MAIL_DOMAIN", "_x.example.org"),
            ("FILTERMAIL_SMTP_PORT", "12080"),
            ("MTAIL_ADDRESS", "127.0.0.1"),
            ("IROH_RELAY", "https://iroh.example.org"),
        ]));
        assert!(
            !own.iter().any(|p| p.port == 402),
            "no ACME when self-signed"
        );
        assert!(own
            .iter()
            .any(|p| p.port == 12080 && p.service == "filtermail"));
        assert!(!own.iter().any(|p| p.port == 10080));
        assert!(own.iter().any(|p| p.port == 3903));
        assert!(
            !own.iter().any(|p| p.port == 3340),
            "another iroh relay is used"
        );
    }

    #[test]
    fn unit_names() {
        assert!(is_relay_unit("postfix"));
        assert!(is_relay_unit("turnserver.service"));
        assert!(is_relay_unit("chatmail-expire.timer"));
        assert!(!is_relay_unit("chatmail-turn"), "the unit is turnserver");
        assert!(!is_relay_unit("sshd"));
        assert!(!is_relay_unit("--now"));
        let self_signed = units(&env(&[("MAIL_DOMAIN", "_x.example.org")]));
        assert!(!self_signed.iter().any(|u| u.name.starts_with("acmetool")));
        assert!(self_signed
            .iter()
            .any(|u| u.name == "filtermail-transport.service"));
    }
}
