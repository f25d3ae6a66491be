//! A fake bare-metal chatmail host for `migrate` tests: the directory
//! layout a relay really has, under a temp root, plus a `systemctl`
//! stand-in that records its calls and keeps unit states in files.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const VMAIL: u32 = 998;
pub const OPENDKIM: u32 = 105;
pub const OPENDKIM_GID: u32 = 108;
pub const DOMAIN: &str = "example.org";

/// Everything a test needs: the host root, the deployment dir, the stand-in.
pub struct Fake {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub units: PathBuf,
    pub log: PathBuf,
}

/// Shape of the mail store.
pub struct Mail {
    pub users: usize,
    pub files_per_user: usize,
    /// A few big files (bytes each), to have copies that take a while.
    pub big: Vec<usize>,
}

impl Default for Mail {
    fn default() -> Self {
        Mail {
            users: 30,
            files_per_user: 100,
            big: vec![],
        }
    }
}

fn write(path: &Path, bytes: &[u8], mode: u32, uid: u32, gid: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// A file of root's with `mode`.
fn root_file(path: &Path, bytes: &[u8], mode: u32) {
    write(path, bytes, mode, 0, 0);
}

/// A file only the vmail user may read, as the relay keeps its mail.
fn vmail_file(path: &Path, bytes: &[u8]) {
    write(path, bytes, 0o600, VMAIL, VMAIL);
}

fn mkdir(path: &Path, mode: u32, uid: u32, gid: u32) {
    fs::create_dir_all(path).unwrap();
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic pseudo-random bytes (xorshift), so trees are reproducible.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn set_mtime(path: &Path, secs: i64, nsec: u32) {
    let t = filetime::FileTime::from_unix_time(secs, nsec);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

pub fn maildir_name(i: usize, size: usize) -> String {
    format!("17000{i:05}.M{i}P4242.mail,S={size},W={}:2,S", size + 10)
}

impl Fake {
    pub fn new(mail: &Mail) -> Fake {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("host");
        let dir = tmp.path().join("deploy");
        let bin = tmp.path().join("bin");
        let units = tmp.path().join("units");
        let log = tmp.path().join("systemctl.log");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&units).unwrap();
        let f = Fake {
            tmp,
            root,
            dir,
            bin,
            units,
            log,
        };
        f.standin();
        f.host(mail);
        f
    }

    fn standin(&self) {
        let script = r#"#!/bin/sh
# systemctl stand-in: records calls; unit states live in $UNITS/<unit> as
# "<ActiveState> <UnitFileState>"; $UNITS/<unit>.fail makes actions fail;
# $UNITS/on-stop (if executable) runs on `stop`, like last mail arriving.
echo "$*" >> "$LOG"
cmd=$1; shift
case "$cmd" in
show)
  while [ $# -gt 0 ]; do case "$1" in -p) shift 2;; -*) shift;; *) break;; esac; done
  for u in "$@"; do
    if [ -f "$UNITS/$u" ]; then
      read active file < "$UNITS/$u"
      printf 'Id=%s\nLoadState=loaded\nActiveState=%s\nUnitFileState=%s\n\n' "$u" "$active" "$file"
    else
      printf 'Id=%s\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n\n' "$u"
    fi
  done ;;
stop|start|enable|disable)
  if [ "$cmd" = stop ] && [ -x "$UNITS/on-stop" ]; then "$UNITS/on-stop" || exit 1; fi
  for u in "$@"; do
    [ -f "$UNITS/$u.fail" ] && { echo "Job for $u failed." >&2; exit 1; }
    [ -f "$UNITS/$u" ] || { echo "Unit $u not found." >&2; exit 5; }
    read active file < "$UNITS/$u"
    case "$cmd" in
      stop) active=inactive ;; start) active=active ;;
      enable) file=enabled ;; disable) file=disabled ;;
    esac
    # Replaced whole, as systemd's own state is: a kill never leaves half.
    echo "$active $file" > "$UNITS/.$u.$$" && mv -f "$UNITS/.$u.$$" "$UNITS/$u"
  done ;;
*) echo "stand-in: unsupported systemctl $cmd" >&2; exit 1 ;;
esac
"#;
        let p = self.bin.join("systemctl");
        fs::write(&p, script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        // A relay as installed: most units run, two are not installed.
        for u in [
            "postfix",
            "dovecot",
            "doveauth",
            "nginx",
            "opendkim",
            "unbound",
            "acmetool-redirector",
            "filtermail",
            "filtermail-incoming",
            "filtermail-transport",
            "turnserver",
            "chatmail-metadata",
            "lastlogin",
        ] {
            fs::write(self.units.join(format!("{u}.service")), "active enabled\n").unwrap();
        }
        // Installed but not running (e.g. a timer-driven unit).
        fs::write(self.units.join("lastlogin.service"), "inactive enabled\n").unwrap();
    }

    fn host(&self, mail: &Mail) {
        let r = &self.root;
        root_file(
            &r.join("etc/passwd"),
            b"root:x:0:0:root:/root:/bin/bash\nopendkim:x:105:108::/run/opendkim:/usr/sbin/nologin\nvmail:x:998:998::/home/vmail:/usr/sbin/nologin\n",
            0o644,
        );
        root_file(
            &r.join("usr/local/lib/chatmaild/chatmail.ini"),
            format!("[params]\nmail_domain = {DOMAIN}\n").as_bytes(),
            0o644,
        );

        // DKIM keys: secret, owned by opendkim.
        mkdir(&r.join("etc/dkimkeys"), 0o750, OPENDKIM, OPENDKIM_GID);
        write(
            &r.join("etc/dkimkeys/opendkim.private"),
            &bytes(1, 1704),
            0o600,
            OPENDKIM,
            OPENDKIM_GID,
        );
        write(
            &r.join("etc/dkimkeys/opendkim.txt"),
            b"opendkim._domainkey IN TXT ( \"v=DKIM1; k=rsa; p=MIIB\" )\n",
            0o644,
            OPENDKIM,
            OPENDKIM_GID,
        );
        set_mtime(
            &r.join("etc/dkimkeys/opendkim.private"),
            1_690_000_000,
            123_456_789,
        );

        // acmetool state.
        let acme = r.join("var/lib/acme");
        mkdir(&acme, 0o755, 0, 0);
        let cert = "ctrpxqgrxmqlunamwp5cxdbsjfq4b2gs4knvlvulsqw5dj6mbrrq";
        let key = "hwqpfi3p3vg4dobmxgm3w2pxlnkvgkmhcajtxzwqgh7z7dthvqaa";
        let account = "acme-v02.api.letsencrypt.org%2fdirectory/ub4owpkqgykbi6wk6y7ptffe6mmfzkvrzb5cwg6e7oc6qfiv2kpq";
        mkdir(&acme.join("accounts"), 0o700, 0, 0);
        root_file(
            &acme.join(format!("accounts/{account}/privkey")),
            &bytes(2, 1675),
            0o600,
        );
        root_file(
            &acme.join(format!("accounts/{account}/info")),
            b"{}\n",
            0o644,
        );
        mkdir(&acme.join("keys"), 0o700, 0, 0);
        root_file(
            &acme.join(format!("keys/{key}/privkey")),
            &bytes(3, 1675),
            0o600,
        );
        mkdir(&acme.join(format!("certs/{cert}")), 0o755, 0, 0);
        for f in ["cert", "chain", "fullchain"] {
            root_file(
                &acme.join(format!("certs/{cert}/{f}")),
                &bytes(4, 2000),
                0o644,
            );
        }
        root_file(
            &acme.join(format!("certs/{cert}/url")),
            b"https://acme.example/cert/1\n",
            0o644,
        );
        symlink(
            format!("../../keys/{key}/privkey"),
            acme.join(format!("certs/{cert}/privkey")),
        )
        .unwrap();
        mkdir(&acme.join("live"), 0o755, 0, 0);
        symlink(
            format!("../certs/{cert}"),
            acme.join(format!("live/{DOMAIN}")),
        )
        .unwrap();
        symlink(
            format!("../certs/{cert}"),
            acme.join(format!("live/mta-sts.{DOMAIN}")),
        )
        .unwrap();
        set_mtime(&acme.join(format!("live/{DOMAIN}")), 1_691_000_000, 5);
        root_file(
            &acme.join(format!("desired/{DOMAIN}")),
            format!("satisfy:\n  names:\n  - {DOMAIN}\n").as_bytes(),
            0o644,
        );
        root_file(
            &acme.join("conf/target"),
            b"request:\n  provider: https://acme-v02.api.letsencrypt.org/directory\n",
            0o644,
        );

        // Mail: /home/vmail/mail/<domain>/<user>/{cur,new,tmp}.
        mkdir(&r.join("home"), 0o755, 0, 0);
        mkdir(&r.join("home/vmail"), 0o700, VMAIL, VMAIL);
        mkdir(&r.join("home/vmail/mail"), 0o2750, VMAIL, VMAIL);
        mkdir(
            &r.join(format!("home/vmail/mail/{DOMAIN}")),
            0o2750,
            VMAIL,
            VMAIL,
        );
        mkdir(&r.join("home/vmail/shared-tmp"), 0o1777, VMAIL, VMAIL);
        mkdir(&r.join("home/admin"), 0o750, 1000, 1000);
        write(
            &r.join("home/admin/.bashrc"),
            b"alias ll='ls -l'\n",
            0o644,
            1000,
            1000,
        );
        let mut n = 0usize;
        let mut previous_cur: Option<PathBuf> = None;
        for u in 0..mail.users {
            let user = r.join(format!("home/vmail/mail/{DOMAIN}/user{u:03}@{DOMAIN}"));
            for sub in ["", "cur", "new", "tmp"] {
                mkdir(&user.join(sub), 0o700, VMAIL, VMAIL);
            }
            vmail_file(
                &user.join("password"),
                format!("$6$salt${u}hash\n").as_bytes(),
            );
            vmail_file(&user.join("dovecot.index"), &bytes(10_000 + u as u64, 4096));
            vmail_file(
                &user.join("dovecot.index.log"),
                &bytes(20_000 + u as u64, 3000),
            );
            vmail_file(&user.join("dovecot-uidlist"), b"3 V1700000000 N2\n");
            for i in 0..mail.files_per_user {
                n += 1;
                let size = 200 + (n * 37) % 3000;
                let sub = if i % 5 == 0 { "new" } else { "cur" };
                let p = user.join(sub).join(maildir_name(n, size));
                vmail_file(&p, &bytes(n as u64, size));
                set_mtime(
                    &p,
                    1_700_000_000 + n as i64,
                    (n * 7919 % 1_000_000_000) as u32,
                );
            }
            // The same message delivered to two users: a hard link.
            if let Some(prev) = &previous_cur {
                let first = fs::read_dir(prev).unwrap().next().unwrap().unwrap().path();
                fs::hard_link(
                    &first,
                    user.join("cur").join(format!("1699999999.M{u}.shared:2,")),
                )
                .unwrap();
            }
            previous_cur = Some(user.join("cur"));
            symlink("../../sieve/default.sieve", user.join("dovecot.sieve")).unwrap();
        }
        if mail.users > 0 {
            let u0 = r.join(format!("home/vmail/mail/{DOMAIN}/user000@{DOMAIN}"));
            xattr::set(u0.join("dovecot.index"), "user.chatmail.test", b"kept").unwrap();
            xattr::set(&u0, "user.dir.attr", b"dir").unwrap();
            fs::hard_link(u0.join("password"), u0.join("password.bak")).unwrap();
            for (k, size) in mail.big.iter().enumerate() {
                let block = bytes(900 + k as u64, 1 << 20);
                let content: Vec<u8> = block.iter().copied().cycle().take(*size).collect();
                vmail_file(&u0.join(format!("cur/big{k}:2,S")), &content);
            }
        }
        // Directory mtimes last (their contents are done).
        for e in walkdir::WalkDir::new(r.join("home")).contents_first(true) {
            let e = e.unwrap();
            if e.file_type().is_dir() {
                set_mtime(e.path(), 1_700_500_000, 42);
            }
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("chatmail-docker"));
        self.env(&mut c);
        c
    }

    /// Point a command at the fake host and the stand-in.
    pub fn env(&self, c: &mut Command) {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path)
            .env("UNITS", &self.units)
            .env("LOG", &self.log)
            .env("NO_COLOR", "1")
            .env_remove("CHATMAIL_DOCKER_DIR")
            .env_remove("CHATMAIL_DOCKER_ROOT")
            .arg("--root")
            .arg(&self.root)
            .arg("--dir")
            .arg(&self.dir);
    }

    /// Move the host directory `from` (relative to the root) to `to` and
    /// leave a symlink with the text `link` in its place: the layout of a
    /// relay whose data lives on another disk.
    pub fn move_behind_link(&self, from: &str, to: &str, link: &str) {
        let (from, to) = (self.root.join(from), self.root.join(to));
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::rename(&from, &to).unwrap();
        symlink(link, &from).unwrap();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dest(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Run the independent checker; panics with its output on differences.
    pub fn check_copy(&self, src: &str, dst: &str) {
        let out = Command::new("python3")
            .arg(checker())
            .arg("compare")
            .arg(self.root.join(src.trim_start_matches('/')))
            .arg(self.dir.join(dst))
            .output()
            .expect("python3 is needed by the migrate tests");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{src} -> {dst}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A second, unrelated checker: `rsync -n -c -i` itemizes every
    /// difference in content (checksums), metadata, hard links and xattrs;
    /// an exact copy itemizes nothing.
    pub fn check_with_rsync(&self, src: &str, dst: &str) {
        if !found_or_skipped("rsync", "the second check") {
            return;
        }
        let out = Command::new("rsync")
            .args(["-anciHX", "--numeric-ids", "--delete"])
            .arg(format!(
                "{}/",
                self.root.join(src.trim_start_matches('/')).display()
            ))
            .arg(format!("{}/", self.dir.join(dst).display()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.trim().is_empty(),
            "rsync sees differences {src} -> {dst}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Digest (content + metadata incl. ctime) of a tree.
    pub fn digest(&self, path: &Path) -> String {
        let out = Command::new("python3")
            .arg(checker())
            .arg("digest")
            .arg(path)
            .output()
            .expect("python3 is needed by the migrate tests");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn source_digest(&self) -> String {
        self.digest(&self.root)
    }

    /// The first regular file under `dir` (sorted), for tests that edit one.
    pub fn unit_state(&self, unit: &str) -> String {
        fs::read_to_string(self.units.join(unit))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

pub fn which(p: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(p))
        .find(|p| p.is_file())
}

/// Whether the program `tool` is on PATH. Where it is not, `what` is
/// skipped with a note, and under CI that fails instead.
pub fn found_or_skipped(tool: &str, what: &str) -> bool {
    if which(tool).is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{tool} is needed by the migrate tests in CI"
    );
    eprintln!("{tool} not found: {what} skipped");
    false
}

pub fn checker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/migrate_check.py")
}

/// All regular files under `root`, relative, sorted.
pub fn files(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(root).unwrap().to_path_buf())
        .collect();
    v.sort();
    v
}
