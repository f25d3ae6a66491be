//! Do the relay's services answer? The health check says the units run;
//! an upgrade also asks the ports, the way clients and other servers do:
//! SMTP on 25 (greeting, EHLO, STARTTLS, TLS handshake), IMAP on 993 and
//! HTTPS on 443 (TLS handshakes). And while the container is replaced, a
//! watcher measures how long port 25 and 993 did not accept.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::certwatch::verify::{served_leaf, Endpoint, Proto, Served};

/// The ports an upgrade checks after the health check.
pub const SERVICES: &[(u16, Proto, &str)] = &[
    (25, Proto::Smtp, "SMTP"),
    (993, Proto::Tls, "IMAP"),
    (443, Proto::Tls, "HTTPS"),
];

const HOST: &str = "127.0.0.1";

/// Ask every service once; the ones that did not answer, with why.
pub fn failing(sni: &str) -> Vec<String> {
    SERVICES
        .iter()
        .filter_map(|&(port, proto, name)| {
            match served_leaf(HOST, Endpoint { port, proto }, sni, Duration::from_secs(5)) {
                Served::Leaf(_) => None,
                Served::Refused => Some(format!("{name} on {port}: connection refused")),
                Served::Failed(why) => Some(format!("{name} on {port}: {why}")),
            }
        })
        .collect()
}

/// Ask until every service answers or `limit` passes; the last failures.
pub fn wait_answering(sni: &str, limit: Duration) -> Result<(), Vec<String>> {
    let start = Instant::now();
    loop {
        let bad = failing(sni);
        if bad.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= limit {
            return Err(bad);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// SMTP greets with 220 on 25; 993 accepts a connection.
fn mail_accepted() -> bool {
    smtp_greets(25) && accepts(993)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&addr(port), Duration::from_millis(500)).is_ok()
}

fn smtp_greets(port: u16) -> bool {
    let Ok(sock) = TcpStream::connect_timeout(&addr(port), Duration::from_millis(500)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let mut r = BufReader::new(&sock);
    let ok = std::io::Read::take(&mut r, 1024)
        .read_line(&mut line)
        .is_ok_and(|_| line.starts_with("220"));
    let _ = std::io::Write::write_all(&mut &sock, b"QUIT\r\n");
    ok
}

/// Watches port 25 and 993 while the container is replaced.
pub struct Downtime {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Window>>,
}

/// When mail was not accepted: from the first failed poll to the first
/// poll at which both ports accepted again.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    /// Seconds without mail service; `None` when every poll succeeded.
    pub seconds: Option<f64>,
    /// Whether service was back when the watch stopped.
    pub back: bool,
}

impl Downtime {
    /// Start polling every 100 ms.
    pub fn watch() -> Downtime {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut down_since: Option<Instant> = None;
            let mut total = None;
            loop {
                let stopping = flag.load(Ordering::SeqCst);
                let up = mail_accepted();
                let now = Instant::now();
                match (up, down_since) {
                    (false, None) => down_since = Some(now),
                    (true, Some(t)) => {
                        total = Some(total.unwrap_or(0.0) + (now - t).as_secs_f64());
                        down_since = None;
                    }
                    _ => {}
                }
                if stopping {
                    if let Some(t) = down_since {
                        total = Some(total.unwrap_or(0.0) + (now - t).as_secs_f64());
                    }
                    return Window {
                        seconds: total,
                        back: up,
                    };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Downtime {
            stop,
            handle: Some(handle),
        }
    }

    /// Stop watching (after one last poll) and return the window.
    pub fn finish(mut self) -> Window {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Downtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
