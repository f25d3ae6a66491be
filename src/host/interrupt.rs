//! Ctrl-C and SIGTERM: the one place that turns a signal into an orderly
//! end (exit 130) and, when the command cannot end by itself, into an end
//! by force that still removes what the command had only half written.
//!
//! Signals are counted from the first time a command asks ([`count`]):
//! from then on SIGINT, SIGTERM and SIGHUP no longer kill the process, and
//! loops look at [`since`] between steps to stop cleanly (the undo of a
//! half-done upgrade, a paused Postfix thawed, a temporary directory
//! removed). A command that may block where it cannot look (a read from a
//! pipe, a `docker` call that hangs) also sets a deadline with [`end_within`]:
//! when a signal has not ended the process by then, the files and
//! directories registered with [`remove_on_forced_end`] are removed and the
//! process exits 130 at once. A [`critical`] section (a rename that must
//! not stop half-way) holds that off until it is done.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub use crate::error::EXIT_INTERRUPTED;

struct State {
    count: AtomicUsize,
    last: AtomicUsize,
    /// Milliseconds a signal is given to end the command; 0: no deadline.
    deadline_ms: AtomicU64,
    /// Critical sections running now.
    critical: AtomicUsize,
    watchdog: AtomicBool,
    cleanup: Mutex<Vec<(u64, PathBuf)>>,
    next_id: AtomicU64,
    /// The count, for async loops waiting on it ([`subscribe`]).
    notify: tokio::sync::watch::Sender<usize>,
}

fn state() -> &'static State {
    static STATE: OnceLock<&'static State> = OnceLock::new();
    STATE.get_or_init(|| {
        let state: &'static State = Box::leak(Box::new(State {
            count: AtomicUsize::new(0),
            last: AtomicUsize::new(0),
            deadline_ms: AtomicU64::new(0),
            critical: AtomicUsize::new(0),
            watchdog: AtomicBool::new(false),
            cleanup: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            notify: tokio::sync::watch::Sender::new(0),
        }));
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        if let Ok(mut sigs) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            std::thread::spawn(move || {
                for sig in sigs.forever() {
                    state.last.store(sig as usize, Ordering::SeqCst);
                    let n = state.count.fetch_add(1, Ordering::SeqCst) + 1;
                    state.notify.send_replace(n);
                    start_watchdog(state);
                }
            });
        }
        state
    })
}

/// After a signal, with a deadline set: wait for it (and for critical
/// sections), then remove the registered paths and end the process.
fn start_watchdog(state: &'static State) {
    if state.deadline_ms.load(Ordering::SeqCst) == 0 || state.watchdog.swap(true, Ordering::SeqCst)
    {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            let ms = state.deadline_ms.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(ms));
            while state.critical.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
            let paths: Vec<PathBuf> = match state.cleanup.lock() {
                Ok(l) => l.iter().map(|(_, p)| p.clone()).collect(),
                Err(p) => p.into_inner().iter().map(|(_, p)| p.clone()).collect(),
            };
            for p in &paths {
                match std::fs::symlink_metadata(p) {
                    // `remove_dir_all` removes links, never what they lead to.
                    Ok(m) if m.is_dir() => {
                        let _ = std::fs::remove_dir_all(p);
                    }
                    Ok(_) => {
                        let _ = std::fs::remove_file(p);
                    }
                    Err(_) => {}
                }
            }
            // The one message of a forced end; the shell object may be
            // held by the blocked thread.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "error: interrupted; the command could not stop by itself within {ms} ms and was ended{}",
                if paths.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (removed what it had written: {})",
                        paths
                            .iter()
                            .map(|p| crate::shell::clean(&p.display().to_string()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            // SAFETY: ends the process; nothing runs after it.
            unsafe { libc::_exit(EXIT_INTERRUPTED) }
        });
}

/// Signals received since the first call (which starts counting them).
pub fn count() -> usize {
    state().count.load(Ordering::SeqCst)
}

/// For an async loop (cert-watch): a receiver that changes at each signal
/// from now on (`changed().await` returns then).
pub fn subscribe() -> tokio::sync::watch::Receiver<usize> {
    state().notify.subscribe()
}

/// Whether a signal arrived since `n` (a value of [`count`]).
pub fn since(n: usize) -> bool {
    count() > n
}

/// The number of the last signal received (0: none).
pub fn last_signal() -> i32 {
    state().last.load(Ordering::SeqCst) as i32
}

/// From now on, a signal ends the process within `grace` at the latest.
pub fn end_within(grace: Duration) {
    let s = state();
    s.deadline_ms
        .store(grace.as_millis().max(1) as u64, Ordering::SeqCst);
    if s.count.load(Ordering::SeqCst) > 0 {
        start_watchdog(s);
    }
}

/// A path removed when the process is ended by force; unregistered when
/// dropped.
#[must_use]
pub struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        let mut list = match state().cleanup.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        list.retain(|(id, _)| *id != self.0);
    }
}

/// Remove `path` (a file, or a directory with what it holds) if the process
/// has to be ended by force while the guard lives.
pub fn remove_on_forced_end(path: PathBuf) -> Registered {
    let s = state();
    let id = s.next_id.fetch_add(1, Ordering::SeqCst);
    match s.cleanup.lock() {
        Ok(mut l) => l.push((id, path)),
        Err(p) => p.into_inner().push((id, path)),
    }
    Registered(id)
}

/// A section that a forced end waits for (it must not stop half-way).
#[must_use]
pub struct Critical(());

impl Drop for Critical {
    fn drop(&mut self) {
        state().critical.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn critical() -> Critical {
    state().critical.fetch_add(1, Ordering::SeqCst);
    Critical(())
}

/// The error a command returns when it stops because of a signal.
pub fn interrupted(message: impl Into<String>) -> anyhow::Error {
    crate::error::Failure {
        code: EXIT_INTERRUPTED,
        message: Some(message.into()),
    }
    .into()
}
