//! Mail on the host's disk: the Postfix queue (`data/chatmail-postfix`,
//! the container's `/var/spool/postfix`), the mailboxes (`data/chatmail`,
//! the container's `/home`, or the host's `/home/vmail` after `migrate
//! --mount-vmail`), and the free space where they and Docker's images live.
//! Nothing here enters the container.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::expo::Samples;
use super::*;
use crate::deployment::Settings;

/// Postfix's queues, as `qshape` and `postqueue` know them.
pub const QUEUES: [&str; 5] = ["active", "deferred", "hold", "incoming", "maildrop"];

/// Postfix's arrival time record (`REC_TYPE_TIME`).
const REC_TYPE_TIME: u8 = b'T';
/// How much of a queue file is read for its arrival time: the record is
/// the first or second one.
const QUEUE_HEAD: u64 = 4096;

/// The arrival time (Unix seconds) in the first records of a Postfix queue
/// file. A queue file is a sequence of records: a type byte, the length
/// of the data in 7-bit groups (least significant first, the high bit set
/// on all but the last), the data. The arrival time is the `T` record,
/// `SECONDS MICROSECONDS` (older Postfix: `SECONDS`), after the size
/// record `C`. (A deferred message's modification time is not its age:
/// Postfix sets it to the next delivery attempt.)
pub fn arrival_time(head: &[u8]) -> Option<i64> {
    let mut at = 0;
    for _ in 0..8 {
        let kind = *head.get(at)?;
        at += 1;
        let mut len: usize = 0;
        let mut shift = 0;
        loop {
            let b = *head.get(at)?;
            at += 1;
            len |= usize::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return None;
            }
        }
        let data = head.get(at..at.checked_add(len)?)?;
        at += len;
        if kind == REC_TYPE_TIME {
            let text = std::str::from_utf8(data).ok()?;
            return text.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

/// What the queue holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Queue {
    /// Messages per queue, in [`QUEUES`] order.
    pub counts: Vec<(&'static str, u64)>,
    /// The arrival of the oldest deferred message (Unix seconds).
    pub oldest_deferred: Option<i64>,
}

/// Count the files of one queue (its hashed subdirectories included) and,
/// with `arrivals`, find the oldest arrival among them. A queue directory
/// that does not exist holds nothing; files that go away while they are
/// counted (delivered) do not count.
fn scan_queue(dir: &Path, arrivals: bool) -> std::io::Result<(u64, Option<i64>)> {
    let mut count = 0;
    let mut oldest: Option<i64> = None;
    let mut todo = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = todo.pop() {
        let list = match fs::read_dir(&d) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in list {
            let Ok(e) = e else { continue };
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && depth < 4 {
                todo.push((e.path(), depth + 1));
            } else if ft.is_file() {
                count += 1;
                if arrivals {
                    if let Some(t) = read_arrival(&e.path()) {
                        oldest = Some(oldest.map_or(t, |o| o.min(t)));
                    }
                }
            }
        }
    }
    Ok((count, oldest))
}

/// The arrival time of one queue file: its `T` record, else the file's
/// birth time where the filesystem keeps one.
fn read_arrival(path: &Path) -> Option<i64> {
    let f = fs::File::open(path).ok()?;
    let mut head = Vec::with_capacity(QUEUE_HEAD as usize);
    let _ = (&f).take(QUEUE_HEAD).read_to_end(&mut head);
    arrival_time(&head).or_else(|| f.metadata().ok()?.created().ok().map(|t| unix(t) as i64))
}

/// The whole queue under `root` (`data/chatmail-postfix`).
pub fn read_queue(root: &Path) -> Result<Queue, &'static str> {
    match fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err("not_a_directory"),
        Err(e) => return Err(io_reason(&e)),
    }
    let mut q = Queue::default();
    for name in QUEUES {
        let deferred = name == "deferred";
        let (n, oldest) = scan_queue(&root.join(name), deferred).map_err(|e| io_reason(&e))?;
        q.counts.push((name, n));
        if deferred {
            q.oldest_deferred = oldest;
        }
    }
    Ok(q)
}

/// The queue's samples at `now` (Unix seconds).
pub fn queue_samples(q: &Queue, now: i64) -> Samples {
    let mut out = Samples::default();
    probe(&mut out, "postfix_queue", "", None);
    for (name, n) in &q.counts {
        out.add(&QUEUE, &[("queue", name)], *n as f64);
    }
    let age = q.oldest_deferred.map_or(0, |t| (now - t).max(0));
    out.add(&DEFERRED_AGE, &[], age as f64);
    out
}

/// The Postfix queue.
pub fn queue(ctx: &Context) -> Samples {
    match read_queue(&ctx.deployment.queue_dir()) {
        Ok(q) => queue_samples(&q, unix(SystemTime::now()) as i64),
        Err(reason) => {
            let mut out = Samples::default();
            probe(&mut out, "postfix_queue", "", Some(reason));
            out
        }
    }
}

/// That directory on the host: under `data/chatmail` (`/home`), or under
/// the host's `/home/vmail` when `migrate --mount-vmail` mounted it.
pub fn mailboxes_dir_on_host(ctx: &Context, inside: &str) -> Option<PathBuf> {
    let p = crate::host::normalize(Path::new(inside));
    let vmail = Path::new(crate::overrides::VMAIL_PATH);
    if ctx.deployment.vmail_marker().exists() && p.starts_with(vmail) {
        return Some(ctx.host.path(&p));
    }
    let rest = p.strip_prefix("/home").ok()?;
    Some(ctx.deployment.mail_dir().join(rest))
}

/// Mailboxes (directories named like an address) and the bytes of every
/// file under `dir`, mailboxes read in parallel. A directory that does
/// not exist yet holds none.
pub fn count_mailboxes(dir: &Path) -> Result<(u64, u64), &'static str> {
    use rayon::prelude::*;
    let list = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io_reason(&e)),
    };
    let mut mailboxes = 0;
    let mut bytes = 0;
    let mut dirs = Vec::new();
    for e in list.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if e.file_name().to_string_lossy().contains('@') {
                mailboxes += 1;
            }
            dirs.push(e.path());
        } else if ft.is_file() {
            bytes += e.metadata().map_or(0, |m| m.len());
        }
    }
    bytes += dirs
        .par_iter()
        .map(|d| {
            walkdir::WalkDir::new(d)
                .into_iter()
                .flatten()
                .filter(|e| e.file_type().is_file())
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum::<u64>()
        })
        .sum::<u64>();
    Ok((mailboxes, bytes))
}

/// The mailboxes.
pub fn mailboxes(ctx: &Context, settings: &Settings) -> Samples {
    let mut out = Samples::default();
    let Some(inside) = settings.mailboxes_in_container() else {
        probe(&mut out, "mailboxes", "", Some("no_mail_domain"));
        return out;
    };
    let Some(dir) = mailboxes_dir_on_host(ctx, &inside) else {
        ctx.shell.verbose(format!(
            "mailboxes: {inside} is not under a directory the appliance mounts from the host"
        ));
        probe(&mut out, "mailboxes", "", Some("outside_mounts"));
        return out;
    };
    if !ctx.deployment.mail_dir().is_dir() && !dir.is_dir() {
        probe(&mut out, "mailboxes", "", Some("missing"));
        return out;
    }
    match count_mailboxes(&dir) {
        Ok((n, bytes)) => {
            probe(&mut out, "mailboxes", "", None);
            out.add(&MAILBOXES, &[], n as f64);
            out.add(&MAILBOX_BYTES, &[], bytes as f64);
        }
        Err(reason) => probe(&mut out, "mailboxes", "", Some(reason)),
    }
    out
}

/// Free and total bytes of the filesystem holding `path` (or its nearest
/// existing parent).
pub fn filesystem(path: &Path) -> Result<(u64, u64), &'static str> {
    let mut at = path.to_path_buf();
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p.to_path_buf(),
            None => break,
        }
    }
    let st = rustix::fs::statvfs(&at).map_err(|e| io_reason(&e.into()))?;
    Ok((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

fn filesystem_samples(out: &mut Samples, volume: &str, path: &Path) {
    match filesystem(path) {
        Ok((free, size)) => {
            let shown = path.display().to_string();
            probe(out, "filesystem", volume, None);
            out.add(
                &FS_FREE,
                &[("volume", volume), ("path", &shown)],
                free as f64,
            );
            out.add(
                &FS_SIZE,
                &[("volume", volume), ("path", &shown)],
                size as f64,
            );
        }
        Err(reason) => probe(out, "filesystem", volume, Some(reason)),
    }
}

/// Free space for `data/` and for Docker's data root (`docker info`).
pub fn filesystems(ctx: &Context) -> Samples {
    let mut out = Samples::default();
    filesystem_samples(&mut out, "data", &ctx.deployment.data());
    match crate::engine::data_root(ctx) {
        Ok(root) => filesystem_samples(&mut out, "docker", &root),
        Err(e) => {
            ctx.shell.verbose(format!("docker info: {e:#}"));
            probe(&mut out, "filesystem", "docker", Some(docker_reason(&e)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue file's first records as Postfix's cleanup writes them.
    pub(crate) fn queue_file(arrival: i64) -> Vec<u8> {
        let mut v = Vec::new();
        let size = format!("{:>15} {:>15} {:>15} {:>15}", 249, 96, 1, 0);
        v.push(b'C');
        v.push(size.len() as u8);
        v.extend_from_slice(size.as_bytes());
        let t = format!("{arrival} 805690");
        v.push(b'T');
        v.push(t.len() as u8);
        v.extend_from_slice(t.as_bytes());
        let attr = "create_time=1796534298";
        v.push(b'A');
        v.push(attr.len() as u8);
        v.extend_from_slice(attr.as_bytes());
        v
    }

    #[test]
    fn the_arrival_time_is_the_t_record() {
        assert_eq!(
            arrival_time(&queue_file(1_796_534_298)),
            Some(1_796_534_298)
        );
        // A length in two 7-bit groups: 200 = 0xc8 -> 0x48|0x80, 0x01.
        let mut long = vec![b'N', 0x48 | 0x80, 0x01];
        long.extend(std::iter::repeat_n(b'x', 200));
        long.extend_from_slice(b"T\x0a1700000000");
        assert_eq!(arrival_time(&long), Some(1_700_000_000));
        // Older Postfix: seconds only.
        assert_eq!(arrival_time(b"T\x0212"), Some(12));
        // Cut short, no T record, garbage: nothing.
        assert_eq!(arrival_time(&queue_file(5)[..20]), None);
        assert_eq!(arrival_time(b"C\x03abc"), None);
        assert_eq!(arrival_time(b""), None);
        assert_eq!(arrival_time(b"T\x05abcde"), None);
        assert_eq!(
            arrival_time(&[b'X', 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            None
        );
    }

    #[test]
    fn queues_are_counted_with_their_hashed_subdirectories() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("q");
        for (p, arrival) in [
            ("deferred/1/A1", 1000),
            ("deferred/F/B2", 900),
            ("deferred/F/C3", 2000),
            ("active/D4", 0),
            ("maildrop/E5", 0),
        ] {
            let f = q.join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, queue_file(arrival)).unwrap();
        }
        fs::create_dir_all(q.join("hold")).unwrap();
        let got = read_queue(&q).unwrap();
        assert_eq!(
            got.counts,
            [
                ("active", 1),
                ("deferred", 3),
                ("hold", 0),
                ("incoming", 0),
                ("maildrop", 1)
            ]
        );
        assert_eq!(got.oldest_deferred, Some(900));
        let s = queue_samples(&got, 1000);
        let age = s.iter().find(|x| x.def.name == DEFERRED_AGE.name).unwrap();
        assert_eq!(age.value, 100.0);
        assert_eq!(read_queue(&d.path().join("none")), Err("missing"));
        fs::write(d.path().join("file"), "x").unwrap();
        assert_eq!(read_queue(&d.path().join("file")), Err("not_a_directory"));
    }

    #[test]
    fn mailboxes_are_address_directories_and_bytes_are_all_files() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("mail");
        fs::create_dir_all(m.join("a@x.org/cur")).unwrap();
        fs::create_dir_all(m.join("b@x.org/new")).unwrap();
        fs::create_dir_all(m.join("not-a-mailbox")).unwrap();
        fs::write(m.join("a@x.org/cur/1"), "12345").unwrap();
        fs::write(m.join("b@x.org/new/2"), "123").unwrap();
        fs::write(m.join("b@x.org/password"), "12").unwrap();
        fs::write(m.join("top"), "1").unwrap();
        assert_eq!(count_mailboxes(&m), Ok((2, 11)));
        assert_eq!(count_mailboxes(&d.path().join("none")), Ok((0, 0)));
    }
}
