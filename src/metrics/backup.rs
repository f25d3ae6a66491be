//! A backup directory as `backup DIR` leaves it: archives
//! `chatmail-backup-<time>-<kind>.tar.zst`, each with its manifest beside
//! it (`.manifest.json`), and, while a backup runs (or after one was
//! killed), its partial files. What a backup did is read from the
//! archives themselves ([`read_archive_header`]), never from their names
//! or times alone: a file named like an archive that is not one is
//! reported, not believed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::expo::Samples;
use super::*;
use crate::backup::manifest::{Header, Manifest, SIDECAR_SUFFIX};
use crate::backup::{PREFIX, SUFFIX};

/// Archives whose header is read, newest first: the newest complete one
/// is usually the first.
const MAX_HEADERS: usize = 8;
/// A partial file untouched for this long belongs to a backup that died.
const STALE_PARTIAL: Duration = Duration::from_secs(15 * 60);

/// The one place the metrics read a backup archive: its header, the
/// archive's first entry (the same header its manifest starts with). An
/// encrypted archive's header cannot be read without a key: `Ok(None)`.
pub fn read_archive_header(archive: &Path) -> Result<Option<Header>> {
    use std::io::Read;
    let mut magic = [0u8; 21];
    let n = fs::File::open(archive)
        .and_then(|mut f| f.read(&mut magic))
        .with_context(|| format!("cannot read {}", archive.display()))?;
    if magic[..n].starts_with(crate::backup::crypt::MAGIC) {
        return Ok(None);
    }
    crate::backup::restore::read_header(archive, &Default::default()).map(Some)
}

/// What a name in a backup directory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    Archive,
    /// An archive's manifest beside it.
    Manifest,
    /// A backup's file while it is written (or what a killed one left).
    Partial,
    /// Left alone: a filesystem's own directory.
    Ignored,
    /// Not written by chatmail-docker.
    Foreign,
}

/// Classify a directory entry by its name and whether it is a regular file.
pub fn classify(name: &str, is_file: bool) -> Name {
    if name == "lost+found" && !is_file {
        return Name::Ignored;
    }
    if !is_file {
        return Name::Foreign;
    }
    let archive = |n: &str| {
        n.starts_with(PREFIX) && n.ends_with(SUFFIX) && n.len() > PREFIX.len() + SUFFIX.len()
    };
    if let Some(base) = name.strip_suffix(SIDECAR_SUFFIX) {
        if archive(base) {
            return Name::Manifest;
        }
    }
    if archive(name) {
        return Name::Archive;
    }
    // `.NAME.XXXXXX.partial` (the archive) and `.manifest.XXXXXX.partial`.
    if name.ends_with(".partial")
        && (name.starts_with(&format!(".{PREFIX}")) || name.starts_with(".manifest."))
    {
        return Name::Partial;
    }
    Name::Foreign
}

/// The time in an archive's name (`chatmail-backup-20261201T154700.123Z-full.tar.zst`).
pub fn name_time(name: &str) -> Option<SystemTime> {
    let stamp = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let stamp = &stamp[..stamp.rfind('-')?];
    // 20261201T154700.123Z -> 2026-12-01T15:47:00.123Z
    let (date, time) = stamp.split_once('T')?;
    if date.len() != 8 || time.len() < 7 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let text = format!(
        "{}-{}-{}T{}:{}:{}",
        &date[..4],
        &date[4..6],
        &date[6..8],
        time.get(..2)?,
        time.get(2..4)?,
        time.get(4..)?
    );
    humantime::parse_rfc3339(&text).ok()
}

/// What one backup directory says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub archives: u64,
    pub foreign: Vec<String>,
    /// The newest complete backup: when it was made, its archive's size.
    pub last_success: Option<(f64, u64)>,
    /// The newest backup that did not complete (Unix time): an archive
    /// whose header or manifest is missing or unreadable, or what a killed
    /// backup left.
    pub last_failure: Option<f64>,
    /// Archives that could not be read.
    pub unreadable: u64,
}

impl Report {
    /// The reason the directory's probe fails, if it does.
    pub fn problem(&self) -> Option<&'static str> {
        if self.unreadable > 0 {
            Some("unreadable_archive")
        } else if !self.foreign.is_empty() {
            Some("foreign_files")
        } else {
            None
        }
    }
}

/// Read a backup directory at `now`.
pub fn read_dir(dir: &Path, now: SystemTime) -> Result<Report, &'static str> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err("not_a_directory"),
        Err(e) => return Err(io_reason(&e)),
    }
    let list = fs::read_dir(dir).map_err(|e| io_reason(&e))?;
    let mut r = Report::default();
    let mut archives: Vec<(String, PathBuf, fs::Metadata)> = Vec::new();
    for e in list.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Links followed: an archive may be a link to where it is kept.
        let meta = fs::metadata(e.path());
        let is_file = meta.as_ref().is_ok_and(|m| m.is_file());
        match classify(&name, is_file) {
            Name::Archive => archives.push((name, e.path(), meta.expect("a file"))),
            Name::Manifest | Name::Ignored => {}
            Name::Partial => {
                let touched = meta.ok().and_then(|m| m.modified().ok());
                if let Some(t) =
                    touched.filter(|t| now.duration_since(*t).is_ok_and(|age| age > STALE_PARTIAL))
                {
                    r.last_failure = Some(r.last_failure.map_or(unix(t), |f| f.max(unix(t))));
                }
            }
            Name::Foreign => r.foreign.push(name),
        }
    }
    r.foreign.sort();
    r.archives = archives.len() as u64;
    // Names sort by time; the newest first.
    archives.sort_by(|a, b| b.0.cmp(&a.0));
    for (name, path, meta) in archives.into_iter().take(MAX_HEADERS) {
        let complete = Manifest::sidecar_of(&path).is_file();
        let header = read_archive_header(&path);
        let created = match &header {
            Ok(Some(h)) => unix_rfc3339(&h.created),
            // Encrypted: the time its name gives.
            Ok(None) => name_time(&name).map(unix),
            Err(_) => None,
        };
        match created {
            Some(t) if complete => {
                if r.last_success.is_none_or(|(s, _)| t > s) {
                    r.last_success = Some((t, meta.len()));
                }
                // Older archives cannot be newer than this one.
                break;
            }
            _ => {
                if header.is_err() {
                    r.unreadable += 1;
                }
                let t = created
                    .or_else(|| name_time(&name).map(unix))
                    .or_else(|| meta.modified().ok().map(unix));
                if let Some(t) = t {
                    r.last_failure = Some(r.last_failure.map_or(t, |f| f.max(t)));
                }
            }
        }
    }
    Ok(r)
}

/// The samples of one directory's report.
pub fn report_samples(out: &mut Samples, dir: &str, r: &Report) {
    probe(out, "backup", dir, r.problem());
    let labels = [("dir", dir)];
    out.add(&BACKUP_ARCHIVES, &labels, r.archives as f64);
    out.add(&BACKUP_FOREIGN, &labels, r.foreign.len() as f64);
    let success = r.last_success.map(|(t, _)| t);
    let last = match (success, r.last_failure) {
        (Some(s), Some(f)) => Some(s.max(f)),
        (s, f) => s.or(f),
    };
    if let Some(t) = last {
        out.add(&BACKUP_LAST, &labels, t);
        out.flag(
            &BACKUP_LAST_OK,
            &labels,
            success.is_some_and(|s| r.last_failure.is_none_or(|f| s >= f)),
        );
    }
    out.add(&BACKUP_LAST_SUCCESS, &labels, success.unwrap_or(0.0));
    if let Some((_, size)) = r.last_success {
        out.add(&BACKUP_LAST_SIZE, &labels, size as f64);
    }
}

/// One backup directory.
pub fn directory(ctx: &Context, dir: &Path) -> Samples {
    let mut out = Samples::default();
    let shown = dir.display().to_string();
    match read_dir(dir, SystemTime::now()) {
        Ok(r) => {
            if !r.foreign.is_empty() {
                ctx.shell.verbose(format!(
                    "{shown}: not written by chatmail-docker: {}",
                    r.foreign.join(", ")
                ));
            }
            report_samples(&mut out, &shown, &r);
        }
        Err(reason) => probe(&mut out, "backup", &shown, Some(reason)),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_a_backup_directory() {
        let a = "chatmail-backup-20261201T154700.123Z-full.tar.zst";
        assert_eq!(classify(a, true), Name::Archive);
        assert_eq!(
            classify(&format!("{a}.manifest.json"), true),
            Name::Manifest
        );
        assert_eq!(
            classify(&format!(".{a}.AbC123.partial"), true),
            Name::Partial
        );
        assert_eq!(classify(".manifest.XyZ987.partial", true), Name::Partial);
        assert_eq!(
            classify(a, false),
            Name::Foreign,
            "a directory named like one"
        );
        assert_eq!(classify("notes.txt", true), Name::Foreign);
        assert_eq!(classify("chatmail-backup-.tar.zst", true), Name::Foreign);
        assert_eq!(classify(".manifest.json", true), Name::Foreign);
        assert_eq!(classify("lost+found", false), Name::Ignored);
    }

    #[test]
    fn the_time_in_an_archive_name() {
        let t = name_time("chatmail-backup-19700101T000140.500Z-incr.tar.zst").unwrap();
        assert_eq!(unix(t), 100.5);
        assert_eq!(name_time("chatmail-backup-soon-full.tar.zst"), None);
        assert_eq!(name_time("other.tar.zst"), None);
    }

    fn value(out: &Samples, name: &str) -> Option<f64> {
        out.iter().find(|s| s.def.name == name).map(|s| s.value)
    }

    #[test]
    fn the_last_backup_failed_when_something_newer_did_not_complete() {
        let mut r = Report {
            archives: 2,
            last_success: Some((100.0, 7)),
            ..Default::default()
        };
        let mut out = Samples::default();
        report_samples(&mut out, "/b", &r);
        assert_eq!(value(&out, BACKUP_LAST_OK.name), Some(1.0));
        assert_eq!(value(&out, BACKUP_LAST.name), Some(100.0));
        assert_eq!(value(&out, BACKUP_LAST_SIZE.name), Some(7.0));
        r.last_failure = Some(200.0);
        let mut out = Samples::default();
        report_samples(&mut out, "/b", &r);
        assert_eq!(value(&out, BACKUP_LAST_OK.name), Some(0.0));
        assert_eq!(value(&out, BACKUP_LAST.name), Some(200.0));
        assert_eq!(value(&out, BACKUP_LAST_SUCCESS.name), Some(100.0));
        // Never one: the last success is 0, so "older than 26 h" fires.
        let mut out = Samples::default();
        report_samples(&mut out, "/b", &Report::default());
        assert_eq!(value(&out, BACKUP_LAST_SUCCESS.name), Some(0.0));
        assert_eq!(value(&out, BACKUP_LAST.name), None);
        assert_eq!(value(&out, PROBE_UP.name), Some(1.0));
    }

    #[test]
    fn leftovers_and_strangers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::write(p.join("notes.txt"), "mine").unwrap();
        // Named like an archive, but not one.
        let fake = "chatmail-backup-20991231T000000.000Z-full.tar.zst";
        fs::write(p.join(fake), "not zstd").unwrap();
        fs::write(p.join(format!("{fake}{SIDECAR_SUFFIX}")), "{}").unwrap();
        // What a killed backup left an hour ago.
        let partial = p.join(".chatmail-backup-20261201T000000.000Z-full.tar.zst.x1.partial");
        fs::write(&partial, "half").unwrap();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        filetime::set_file_mtime(&partial, filetime::FileTime::from_system_time(hour_ago)).unwrap();
        let r = read_dir(p, SystemTime::now()).unwrap();
        assert_eq!(r.foreign, ["notes.txt"]);
        assert_eq!(r.archives, 1);
        assert_eq!(r.unreadable, 1);
        assert_eq!(r.last_success, None);
        assert_eq!(r.problem(), Some("unreadable_archive"));
        // The fake's name time: the newest failure.
        assert_eq!(
            r.last_failure,
            name_time(fake).map(unix),
            "the name says 2099"
        );
        assert_eq!(read_dir(&p.join("none"), SystemTime::now()), Err("missing"));
        assert_eq!(
            read_dir(&p.join("notes.txt"), SystemTime::now()),
            Err("not_a_directory")
        );
    }
}
