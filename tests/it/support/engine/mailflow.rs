//! The mail flow of the fault tests: while a fault happens, an outside
//! sender offers mail on 25 (STARTTLS) and a local account submits on 587
//! every few hundred milliseconds, and IMAP's greeting on 993 is looked
//! at, each attempt written down with its time
//! (tests/relay-offline/mailcheck.py --flow, which sends what the relay's
//! filtermail accepts: OpenPGP-encrypted mail as Delta Chat sends it).
//! Afterwards every message the relay answered with 250 must be in B's
//! INBOX ([`Record::delivery`]), and the record tells when the relay
//! served again after a fault ([`Record::back_after`]).

use std::path::PathBuf;
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::relay::mailcheck;
use super::*;

/// Seconds between two rounds (one message on 25, one on 587, a look at 993).
pub const EVERY: &str = "0.3";

/// Now, as Unix seconds (the record's clock).
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A running flow.
pub struct Flow {
    child: Option<Child>,
    dir: tempfile::TempDir,
    what: String,
}

/// One attempt of the flow.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub t: f64,
    pub port: u16,
    pub id: Option<String>,
    pub ok: bool,
    pub error: Option<String>,
}

/// What a flow did.
#[derive(Clone, Debug)]
pub struct Record {
    pub what: String,
    /// B's `ADDR:PASSWORD`, to read its INBOX.
    pub b_login: String,
    pub started: f64,
    pub stopped: f64,
    pub attempts: Vec<Attempt>,
}

/// Accepted against delivered messages of a flow.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub accepted: usize,
    pub delivered: usize,
    pub missing: Vec<String>,
}

impl Flow {
    /// Start a flow against this host's relay (which must serve: the flow
    /// makes its accounts first, and waits for that).
    pub fn start(what: &str) -> Flow {
        let dir = tempfile::Builder::new()
            .prefix("chatmail-faults-flow")
            .tempdir()
            .unwrap();
        let out = dir.path().join("record.json");
        let stop = dir.path().join("stop");
        let child = StdCommand::new("python3")
            .arg(manifest_dir().join("tests/relay-offline/mailcheck.py"))
            .arg("127.0.0.1")
            .arg("--flow")
            .arg(&out)
            .arg("--stop")
            .arg(&stop)
            .args(["--every", EVERY])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the mail flow: {e}"));
        Flow {
            child: Some(child),
            dir,
            what: what.to_string(),
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("record.json")
    }

    /// Stop the flow (it finishes its round) and read its record; an
    /// error when the flow itself failed (it could not make its accounts:
    /// the relay did not serve when it began).
    pub fn stop(mut self) -> Result<Record, String> {
        std::fs::write(self.dir.path().join("stop"), b"").unwrap();
        let mut child = self.child.take().expect("started");
        let status = child.wait().unwrap();
        if !status.success() {
            return Err(format!(
                "the mail flow of {} failed ({status}): see its output above",
                self.what
            ));
        }
        let text = std::fs::read_to_string(self.out())
            .map_err(|e| format!("the mail flow of {} left no record: {e}", self.what))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let b = &v["b"];
        let attempts = v["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| Attempt {
                t: a["t"].as_f64().unwrap(),
                port: a["port"].as_u64().unwrap() as u16,
                id: a["id"].as_str().map(str::to_string),
                ok: a["ok"].as_bool().unwrap(),
                error: a["error"].as_str().map(str::to_string),
            })
            .collect();
        Ok(Record {
            what: self.what.clone(),
            b_login: format!(
                "{}:{}",
                b["email"].as_str().unwrap(),
                b["password"].as_str().unwrap()
            ),
            started: v["started"].as_f64().unwrap(),
            stopped: v["stopped"].as_f64().unwrap(),
            attempts,
        })
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Record {
    /// The Message-IDs the relay answered with 250.
    pub fn accepted(&self) -> Vec<String> {
        self.attempts
            .iter()
            .filter(|a| a.ok && a.id.is_some())
            .filter_map(|a| a.id.clone())
            .collect()
    }

    /// Attempts on `port` that failed, with their reasons (for the log).
    pub fn failures(&self, port: u16) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.port == port && !a.ok)
            .count()
    }

    /// Seconds from `fault` (Unix seconds) until `port` served again: the
    /// first success after the last failure that followed the fault; 0
    /// when nothing failed after it; `None` when it never served again
    /// before the flow stopped.
    pub fn back_after(&self, port: u16, fault: f64) -> Option<f64> {
        let on: Vec<&Attempt> = self
            .attempts
            .iter()
            .filter(|a| a.port == port && a.t >= fault)
            .collect();
        let last_fail = on.iter().rposition(|a| !a.ok);
        match last_fail {
            None => Some(0.0),
            Some(i) => on[i + 1..].first().map(|a| a.t - fault),
        }
    }

    /// The longest time `port` did not serve after `fault` (Unix seconds):
    /// from the first failure of a run of failures to the success that
    /// ended it; 0 when nothing failed; `None` when the last run never
    /// ended before the flow stopped. Unlike [`Record::back_after`] it does
    /// not count the time the relay served between the fault and an
    /// outage the next command caused on purpose (its swap).
    pub fn longest_outage(&self, port: u16, fault: f64) -> Option<f64> {
        let mut longest = 0.0_f64;
        let mut down_since: Option<f64> = None;
        for a in self
            .attempts
            .iter()
            .filter(|a| a.port == port && a.t >= fault)
        {
            match (a.ok, down_since) {
                (false, None) => down_since = Some(a.t),
                (true, Some(since)) => {
                    longest = longest.max(a.t - since);
                    down_since = None;
                }
                _ => {}
            }
        }
        down_since.is_none().then_some(longest)
    }

    /// Every accepted message looked for in B's INBOX (after Postfix's
    /// queue was flushed by the caller, waiting up to `wait` seconds).
    pub fn delivery(&self, wait: u64) -> Delivery {
        let accepted = self.accepted();
        let v = mailcheck(&[
            "--read",
            &self.b_login,
            "--wait-ids",
            &accepted.join(","),
            "--wait-timeout",
            &wait.to_string(),
        ]);
        let inbox: std::collections::HashSet<&str> = v["inbox"]
            .as_array()
            .unwrap_or_else(|| panic!("no inbox in {v}"))
            .iter()
            .filter_map(|i| i.as_str())
            .collect();
        let missing: Vec<String> = accepted
            .iter()
            .filter(|id| !inbox.contains(id.as_str()))
            .cloned()
            .collect();
        Delivery {
            accepted: accepted.len(),
            delivered: accepted.len() - missing.len(),
            missing,
        }
    }
}

/// Ask Postfix in `container` to try its deferred mail now (what a fault
/// deferred would otherwise wait for the next queue run, minutes later).
pub fn flush_queue(container: &str) {
    for _ in 0..30 {
        if exec_ok(container, &["postqueue", "-f"]) {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("postqueue -f never succeeded in {container}");
}

/// The number of messages in Postfix's queue in `container`.
pub fn queued(container: &str) -> usize {
    let (_, out) = exec_status(container, &["postqueue", "-j"]);
    out.lines().filter(|l| l.starts_with('{')).count()
}

#[test]
fn back_after_and_the_longest_outage_count_from_the_fault() {
    let a = |t: f64, port: u16, ok: bool| Attempt {
        t,
        port,
        id: (port != 993).then(|| format!("{t}-{port}")),
        ok,
        error: None,
    };
    let rec = Record {
        what: "test".into(),
        b_login: "b:p".into(),
        started: 0.0,
        stopped: 20.0,
        attempts: vec![
            a(1.0, 25, true),
            a(2.0, 25, false),
            a(3.0, 993, true),
            a(4.0, 25, false),
            a(5.0, 25, true),
            a(6.0, 25, false),
            a(8.5, 25, true),
            a(9.0, 25, true),
            a(9.5, 587, false),
        ],
    };
    // From 1.5: failures at 2, 4, 6; back at 8.5.
    assert_eq!(rec.back_after(25, 1.5), Some(7.0));
    // Nothing failed on 993 after the fault.
    assert_eq!(rec.back_after(993, 1.5), Some(0.0));
    // 587 failed last and never came back before the flow stopped.
    assert_eq!(rec.back_after(587, 0.0), None);
    // The longest outage on 25 after 1.5: from 6 to 8.5 (2 to 5 is 3).
    assert_eq!(rec.longest_outage(25, 1.5), Some(3.0));
    assert_eq!(rec.longest_outage(25, 5.5), Some(2.5));
    assert_eq!(rec.longest_outage(993, 1.5), Some(0.0));
    assert_eq!(rec.longest_outage(587, 0.0), None);
    assert_eq!(rec.accepted(), vec!["1-25", "5-25", "8.5-25", "9-25"]);
    assert_eq!(rec.failures(25), 3);
}
