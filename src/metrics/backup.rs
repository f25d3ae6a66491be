//! A backup directory as `backup DIR` leaves it: archives
//! `chatmail-backup-<time>-<kind>.tar.zst`, each with its manifest beside
//! it (`.manifest.json`), and, while a backup runs (or after one was
//! killed), its partial files. What a backup did is read from the
//! archives' own headers, as `backup` identifies them
//! ([`crate::archive::catalog`]: this deployment's archives by the backup
//! id their headers carry, encrypted ones by the deployment's record of
//! what it wrote), never from their names or times: a file named like an
//! archive that is not one, or another relay's archive, is reported, not
//! believed.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::expo::Samples;
use super::*;
use crate::archive::manifest::{Manifest, SIDECAR_SUFFIX};
use crate::archive::{PREFIX, SUFFIX};

/// A partial file untouched for this long belongs to a backup that died.
const STALE_PARTIAL: Duration = Duration::from_secs(15 * 60);

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

/// Read a backup directory at `now`, as this deployment's.
pub fn read_dir(ctx: &Context, dir: &Path, now: SystemTime) -> Result<Report, &'static str> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err("not_a_directory"),
        Err(e) => return Err(io_reason(&e)),
    }
    let list = fs::read_dir(dir).map_err(|e| io_reason(&e))?;
    let mut r = Report::default();
    for e in list.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = fs::symlink_metadata(e.path());
        let is_file = meta.as_ref().is_ok_and(|m| m.is_file());
        match classify(&name, is_file) {
            // Read below, by their headers.
            Name::Archive | Name::Manifest | Name::Ignored => {}
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
    let id = crate::archive::catalog::deployment_id(ctx, false)
        .ok()
        .flatten();
    let known =
        crate::archive::catalog::list(ctx, dir, &Default::default()).map_err(|_| "unreadable")?;
    for k in known {
        let name = k
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(h) = k.header else {
            // Not an archive, or encrypted without a record here.
            r.unreadable += 1;
            continue;
        };
        // Another relay's archive (archives of earlier versions name no
        // deployment: counted as this one's).
        if h.deployment.is_some() && h.deployment != id {
            r.foreign.push(name);
            continue;
        }
        r.archives += 1;
        let Some(t) = unix_rfc3339(&h.created) else {
            r.unreadable += 1;
            continue;
        };
        if Manifest::sidecar_of(&k.path).is_file() {
            let size = fs::metadata(&k.path).map(|m| m.len()).unwrap_or(0);
            if r.last_success.is_none_or(|(s, _)| t > s) {
                r.last_success = Some((t, size));
            }
        } else {
            r.last_failure = Some(r.last_failure.map_or(t, |f| f.max(t)));
        }
    }
    r.foreign.sort();
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
    match read_dir(ctx, dir, SystemTime::now()) {
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
        let dep = tempfile::tempdir().unwrap();
        let ctx = crate::context::Context::quiet(dep.path(), "/");
        let r = read_dir(&ctx, p, SystemTime::now()).unwrap();
        assert_eq!(r.foreign, ["notes.txt"]);
        assert_eq!(r.archives, 0);
        assert_eq!(r.unreadable, 1);
        assert_eq!(r.last_success, None);
        assert_eq!(r.problem(), Some("unreadable_archive"));
        // The partial's time, not the fake's name (which says 2099).
        assert_eq!(r.last_failure, Some(unix(hour_ago)));
        assert_eq!(
            read_dir(&ctx, &p.join("none"), SystemTime::now()),
            Err("missing")
        );
        assert_eq!(
            read_dir(&ctx, &p.join("notes.txt"), SystemTime::now()),
            Err("not_a_directory")
        );
    }
}
