//! Ask the running services which certificate they serve.
//!
//! A reload that "succeeded" proves little: a service may have kept its old
//! certificate (a worker that did not restart, a config pointing elsewhere).
//! So after reloading, connect like a client would — implicit TLS on 443,
//! 465 and 993, STARTTLS on 25, 587 (SMTP) and 143 (IMAP) — and compare the
//! leaf the server presents with the one on disk.
//!
//! The handshake is rustls'. Its certificate verifier is replaced by one that
//! accepts any certificate and records it: trust is not the question here
//! (the relay may use a self-signed or not-yet-trusted certificate), only
//! which certificate is served, decided by comparing fingerprints.

use anyhow::{anyhow, bail, Context as _, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::material::sha256_hex;

/// How to get to the TLS handshake on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// TLS from the first byte (HTTPS, SMTPS, IMAPS).
    Tls,
    /// SMTP, then `STARTTLS`.
    Smtp,
    /// IMAP, then `STARTTLS`.
    Imap,
}

/// One port to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            Proto::Tls => write!(f, "{}", self.port),
            Proto::Smtp => write!(f, "{}/smtp", self.port),
            Proto::Imap => write!(f, "{}/imap", self.port),
        }
    }
}

/// The relay's TLS endpoints.
pub const DEFAULT_PORTS: &str = "443,465,993,25,587,143";

/// Parse a port list such as `443,465,993,25,587,143` or `8443/tls,2525/smtp`.
/// Without a suffix, 25 and 587 are SMTP, 143 is IMAP, anything else is
/// implicit TLS.
pub fn parse_ports(spec: &str) -> Result<Vec<Endpoint>> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (port, proto) = match item.split_once('/') {
            Some((p, kind)) => (p, Some(kind)),
            None => (item, None),
        };
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
            crate::error::usage(format!(
                "bad port `{item}` in the verify port list `{spec}` (expected e.g. 443,465,993,25,587,143 or 8443/tls,2525/smtp,1143/imap)"
            ))
        })?;
        let proto = match proto {
            None => match port {
                25 | 587 => Proto::Smtp,
                143 => Proto::Imap,
                _ => Proto::Tls,
            },
            Some("tls") => Proto::Tls,
            Some("smtp") => Proto::Smtp,
            Some("imap") => Proto::Imap,
            Some(other) => {
                return Err(crate::error::usage(format!(
                    "unknown protocol `{other}` in `{item}`: use tls, smtp or imap"
                )))
            }
        };
        out.push(Endpoint { port, proto });
    }
    if out.is_empty() {
        return Err(crate::error::usage(format!(
            "the verify port list `{spec}` names no port"
        )));
    }
    Ok(out)
}

/// What one port presented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    /// sha256 of the leaf certificate.
    Leaf(String),
    /// Nothing listens there.
    Refused,
    /// Something answered, but no certificate came out of it.
    Failed(String),
}

/// Connect to `host:port`, get through the protocol's STARTTLS if any, and
/// return the leaf certificate's fingerprint. `sni` picks the virtual host.
pub fn served_leaf(host: &str, ep: Endpoint, sni: &str, timeout: Duration) -> Served {
    match served_certificate(host, ep, sni, timeout) {
        Ok(der) => Served::Leaf(sha256_hex(&der)),
        Err(e) if e.stage == Stage::Connect && e.is_refused() => Served::Refused,
        Err(e) => Served::Failed(format!("{:#}", e.error)),
    }
}

/// Where getting at the served certificate stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Resolving the address or opening the connection.
    Connect,
    /// The SMTP or IMAP dialogue up to STARTTLS.
    Starttls,
    /// The TLS handshake.
    Handshake,
}

/// Why no certificate came out of a port.
#[derive(Debug)]
pub struct ServedError {
    pub stage: Stage,
    pub error: anyhow::Error,
}

impl ServedError {
    fn io_kind(&self) -> Option<std::io::ErrorKind> {
        self.error
            .chain()
            .find_map(|c| c.downcast_ref::<std::io::Error>().map(|io| io.kind()))
    }

    /// Nothing listens there.
    pub fn is_refused(&self) -> bool {
        self.io_kind() == Some(std::io::ErrorKind::ConnectionRefused)
    }

    /// The peer did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.io_kind(),
            Some(std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
        )
    }
}

/// The leaf certificate (DER) `host:port` presents, after the protocol's
/// STARTTLS if any; `sni` picks the virtual host. Every step is bounded
/// by `timeout`.
pub fn served_certificate(
    host: &str,
    ep: Endpoint,
    sni: &str,
    timeout: Duration,
) -> std::result::Result<Vec<u8>, ServedError> {
    let at = |stage: Stage| move |error: anyhow::Error| ServedError { stage, error };
    let mut sock = connect(host, ep.port, timeout).map_err(at(Stage::Connect))?;
    match ep.proto {
        Proto::Tls => Ok(()),
        Proto::Smtp => smtp_starttls(&mut sock),
        Proto::Imap => imap_starttls(&mut sock),
    }
    .map_err(at(Stage::Starttls))?;
    handshake(&mut sock, sni).map_err(at(Stage::Handshake))
}

fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} has no address"))?;
    let sock = TcpStream::connect_timeout(&addr, timeout)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    let _ = sock.set_nodelay(true);
    Ok(sock)
}

/// Read one protocol line (CRLF or LF), bounded so a chatty peer cannot
/// make us buffer without end.
fn read_line<R: BufRead>(r: &mut R) -> Result<String> {
    let mut buf = Vec::new();
    let n = std::io::Read::take(&mut *r, 4096).read_until(b'\n', &mut buf)?;
    if n == 0 {
        bail!("the server closed the connection");
    }
    Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
}

/// A line the server sent, for an error message: in backquotes, with
/// control characters escaped so a hostile peer cannot garble the log.
fn quoted(line: &str) -> String {
    format!("`{}`", line.escape_debug())
}

/// Read an SMTP reply (`250-...` continued, `250 ...` last) and return its code.
fn smtp_reply<R: BufRead>(r: &mut R) -> Result<(u16, String)> {
    loop {
        let line = read_line(r)?;
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("not an SMTP reply: {}", quoted(&line)))?;
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, line));
        }
    }
}

fn smtp_starttls(sock: &mut TcpStream) -> Result<()> {
    // One byte at a time would do too, but the server sends nothing after
    // its 220 to STARTTLS until our ClientHello, so a BufReader on a clone
    // cannot swallow handshake bytes.
    let mut r = BufReader::new(sock.try_clone()?);
    let (code, line) = smtp_reply(&mut r)?;
    if code != 220 {
        bail!("SMTP greeting was {}", quoted(&line));
    }
    sock.write_all(b"EHLO cert-watch.invalid\r\n")?;
    let (code, line) = smtp_reply(&mut r)?;
    if code != 250 {
        bail!("SMTP EHLO answered {}", quoted(&line));
    }
    sock.write_all(b"STARTTLS\r\n")?;
    let (code, line) = smtp_reply(&mut r)?;
    if code != 220 {
        bail!("SMTP STARTTLS answered {}", quoted(&line));
    }
    Ok(())
}

fn imap_starttls(sock: &mut TcpStream) -> Result<()> {
    let mut r = BufReader::new(sock.try_clone()?);
    let greeting = read_line(&mut r)?;
    if !greeting.starts_with("* OK") {
        bail!("IMAP greeting was {}", quoted(&greeting));
    }
    sock.write_all(b"cw1 STARTTLS\r\n")?;
    loop {
        let line = read_line(&mut r)?;
        if let Some(rest) = line.strip_prefix("cw1 ") {
            if rest.starts_with("OK") {
                return Ok(());
            }
            bail!("IMAP STARTTLS answered {}", quoted(&line));
        }
    }
}

/// Records the presented leaf and accepts it: the caller compares
/// fingerprints instead of trusting a CA.
#[derive(Debug)]
struct Recorder {
    leaf: Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut slot) = self.leaf.lock() {
            *slot = Some(end_entity.as_ref().to_vec());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The TLS handshake; the leaf certificate the server presented (DER).
fn handshake(sock: &mut TcpStream, sni: &str) -> Result<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder {
        leaf: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_string())
        .or_else(|_| ServerName::try_from("localhost".to_string()))
        .context("bad TLS server name")?;
    let mut conn = ClientConnection::new(Arc::new(config), name).context("TLS setup")?;
    let result = (|| -> Result<()> {
        while conn.is_handshaking() {
            conn.complete_io(sock)?;
        }
        Ok(())
    })();
    let leaf = recorder.leaf.lock().ok().and_then(|mut l| l.take());
    match (leaf, result) {
        (Some(der), _) => {
            conn.send_close_notify();
            let _ = conn.complete_io(sock);
            Ok(der)
        }
        (None, Err(e)) => Err(e).context("TLS handshake failed"),
        (None, Ok(())) => bail!("the server presented no certificate"),
    }
}

/// The outcome of checking all ports.
#[derive(Clone, Debug)]
pub struct Report {
    pub results: Vec<(Endpoint, Served)>,
}

impl Report {
    /// Ports serving something other than `expected`.
    pub fn stale(&self, expected: &str) -> Vec<Endpoint> {
        self.results
            .iter()
            .filter(|(_, s)| matches!(s, Served::Leaf(fp) if fp != expected))
            .map(|(e, _)| *e)
            .collect()
    }

    /// One line: `443 ok, 465 old (ab12…), 25/smtp refused`.
    pub fn summary(&self, expected: &str) -> String {
        self.results
            .iter()
            .map(|(e, s)| match s {
                Served::Leaf(fp) if fp == expected => format!("{e} ok"),
                Served::Leaf(fp) => format!("{e} OLD ({})", short(fp)),
                Served::Refused => format!("{e} refused"),
                Served::Failed(why) => format!("{e} failed ({why})"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// First 16 hex digits, enough to tell certificates apart in a log line.
pub fn short(fp: &str) -> &str {
    fp.get(..16).unwrap_or(fp)
}

/// Check every endpoint until all serve `expected` or `window` is over,
/// retrying with short pauses: services finish reloading asynchronously.
pub fn check_until(
    host: &str,
    endpoints: &[Endpoint],
    sni: &str,
    expected: &str,
    window: Duration,
) -> Report {
    let start = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut results: Vec<(Endpoint, Served)> = Vec::new();
    loop {
        // Only re-check what is not yet right.
        let todo: Vec<Endpoint> = if results.is_empty() {
            endpoints.to_vec()
        } else {
            results
                .iter()
                .filter(|(_, s)| !matches!(s, Served::Leaf(fp) if fp == expected))
                .map(|(e, _)| *e)
                .collect()
        };
        if todo.is_empty() {
            break;
        }
        let timeout = Duration::from_secs(3);
        for ep in todo {
            let served = served_leaf(host, ep, sni, timeout);
            match results.iter_mut().find(|(e, _)| *e == ep) {
                Some(slot) => slot.1 = served,
                None => results.push((ep, served)),
            }
        }
        let report = Report {
            results: results.clone(),
        };
        let done = report
            .results
            .iter()
            .all(|(_, s)| matches!(s, Served::Leaf(fp) if fp == expected));
        if done || start.elapsed() + pause > window {
            break;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    }
    Report { results }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_with_defaults_and_suffixes() {
        let p = parse_ports(DEFAULT_PORTS).unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!(
            p[3],
            Endpoint {
                port: 25,
                proto: Proto::Smtp
            }
        );
        assert_eq!(
            p[5],
            Endpoint {
                port: 143,
                proto: Proto::Imap
            }
        );
        let p = parse_ports("8443/tls, 2525/smtp,1143/imap").unwrap();
        assert_eq!(p[1].proto, Proto::Smtp);
        assert!(parse_ports("x").is_err());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("25/pop").is_err());
        assert!(parse_ports(" , ").is_err());
    }

    #[test]
    fn server_lines_are_quoted_with_control_characters_escaped() {
        assert_eq!(quoted("554 no service"), "`554 no service`");
        assert_eq!(quoted("554 \x1b[2Jgone"), "`554 \\u{1b}[2Jgone`");
    }

    #[test]
    fn refused_port_is_reported_as_such() {
        // Bind then drop to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let ep = Endpoint {
            port,
            proto: Proto::Tls,
        };
        assert_eq!(
            served_leaf("127.0.0.1", ep, "example.org", Duration::from_secs(2)),
            Served::Refused
        );
    }
}
