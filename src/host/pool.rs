//! A fixed set of threads taking jobs from one bounded queue and sending
//! back what each job gave: the archive writer's compressors and the
//! restore's file writers.

use anyhow::{Context as _, Result};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub struct Pool<J> {
    jobs: Option<SyncSender<J>>,
    threads: Vec<JoinHandle<()>>,
}

/// Start `n` threads (`NAME-i`), each running `work` on the jobs of a queue
/// that holds at most `bound` of them and sending the results to `out`.
pub fn start<J, R, F>(
    name: &str,
    n: usize,
    bound: usize,
    out: Sender<R>,
    work: F,
) -> Result<Pool<J>>
where
    J: Send + 'static,
    R: Send + 'static,
    F: Fn(J) -> R + Send + Clone + 'static,
{
    let (jobs, rx) = mpsc::sync_channel::<J>(bound);
    let rx = Arc::new(Mutex::new(rx));
    let mut threads = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        let (rx, out, work) = (rx.clone(), out.clone(), work.clone());
        let t = std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || loop {
                let job = match rx.lock() {
                    Ok(rx) => match rx.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    },
                    Err(_) => return,
                };
                if out.send(work(job)).is_err() {
                    return;
                }
            })
            .with_context(|| format!("cannot start the {name} threads"))?;
        threads.push(t);
    }
    Ok(Pool {
        jobs: Some(jobs),
        threads,
    })
}

impl<J> Pool<J> {
    /// Queue a job (waits while the queue is full); false when the threads
    /// are gone.
    pub fn send(&self, job: J) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok())
    }

    /// No more jobs: the threads finish what they hold, then end.
    pub fn close(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl<J> Drop for Pool<J> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_gives_one_result_and_close_waits_for_them() {
        let (tx, rx) = mpsc::channel();
        let mut p = start("t", 3, 2, tx, |n: u64| n * 2).unwrap();
        for n in 0..100 {
            assert!(p.send(n));
        }
        p.close();
        let mut got: Vec<u64> = rx.try_iter().collect();
        got.sort();
        assert_eq!(got, (0..100).map(|n| n * 2).collect::<Vec<_>>());
        assert!(!p.send(1));
    }
}
