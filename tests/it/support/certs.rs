//! Helpers shared by the cert-watch tests: real certificates from rcgen,
//! the ACME clients' directory layouts, and a watcher process whose reloads
//! are recorded in a file.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DOMAIN: &str = "example.org";
/// Generous bound for things that normally take milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// Bound on one [`Deploy::once`] run.
pub const ONCE_BOUND: Duration = Duration::from_secs(60);

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: String,
    pub key: String,
    /// sha256 of the leaf DER, hex.
    pub leaf: String,
}

pub fn pair_for(names: &[&str]) -> Pair {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    Pair {
        leaf: hex::encode(Sha256::digest(ck.cert.der())),
        cert: ck.cert.pem(),
        key: ck.signing_key.serialize_pem(),
    }
}

pub fn pair() -> Pair {
    pair_for(&[DOMAIN, &format!("mta-sts.{DOMAIN}")])
}

pub fn expired_pair() -> Pair {
    pair_valid(DOMAIN, (2020, 1, 1), (2020, 4, 1))
}

/// A self-signed pair for `domain`, valid from `from` to `until` (year,
/// month, day).
pub fn pair_valid(domain: &str, from: (i32, u8, u8), until: (i32, u8, u8)) -> Pair {
    let kp = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    let cert = params.self_signed(&kp).unwrap();
    Pair {
        leaf: hex::encode(Sha256::digest(cert.der())),
        cert: cert.pem(),
        key: kp.serialize_pem(),
    }
}

/// `openssl req -x509` in `dir`: a new P-256 key in `key` and a
/// certificate for `subj` in `out`, valid `days` days, with `extra`
/// arguments (e.g. `-addext`).
pub fn openssl_self_signed(
    dir: &Path,
    days: u32,
    subj: &str,
    extra: &[&str],
    key: &str,
    out: &str,
) {
    let days = days.to_string();
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", &days])
        .args(["-subj", subj])
        .args(extra)
        .args(["-keyout", key, "-out", out])
        .current_dir(dir);
    let o = cmd.output().expect("openssl runs");
    assert!(
        o.status.success(),
        "openssl req -x509 for {subj}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Write a file through a temp name and rename, like ACME clients do.
pub fn put(path: &Path, content: &str) {
    let tmp = path.with_extension("cw-tmp");
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Point a symlink somewhere else atomically (new link + rename).
pub fn relink(link: &Path, target: &str) {
    let tmp = link.with_file_name(format!(
        ".{}.cw-tmp",
        link.file_name().unwrap().to_string_lossy()
    ));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp).unwrap();
    fs::rename(&tmp, link).unwrap();
}

/// A deployment directory with a .env naming the domain.
pub struct Deploy {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Deploy {
    pub fn new(extra_env: &str) -> Deploy {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir_all(dir.join("data")).unwrap();
        fs::write(
            dir.join(".env"),
            format!("MAIL_DOMAIN={DOMAIN}\n{extra_env}"),
        )
        .unwrap();
        Deploy { tmp, dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn recorder(&self) -> PathBuf {
        self.dir.join("reloads.log")
    }

    /// A reload command that appends the applied leaf fingerprint.
    pub fn record_cmd(&self) -> String {
        format!(
            "echo \"$CERT_WATCH_ACTION $CERT_LEAF_SHA256\" >> '{}'",
            self.recorder().display()
        )
    }

    /// The recorded reloads: (action, leaf fingerprint).
    pub fn reloads(&self) -> Vec<(String, String)> {
        fs::read_to_string(self.recorder())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    pub fn reloaded_leaves(&self) -> Vec<String> {
        self.reloads().into_iter().map(|(_, l)| l).collect()
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("chatmail-docker"));
        c.arg("--dir").arg(&self.dir).arg("--color").arg("never");
        c.env_remove("CERT_WATCH_VERIFY_PORTS");
        c
    }

    /// The directory `rel` in the deployment, holding `p` as plain files.
    pub fn plain_at(&self, rel: &str, p: &Pair) -> PathBuf {
        let dir = self.path(rel);
        plain(&dir, p);
        dir
    }

    /// `cert-watch --once --no-verify <extra> --reload-command <reload>`,
    /// bounded by [`ONCE_BOUND`]: a hang fails the test instead of blocking it.
    pub fn once(&self, extra: &[&str], reload: &str) -> std::process::Output {
        assert_cmd::Command::from_std(self.cmd())
            .args(["cert-watch", "--once", "--no-verify"])
            .args(extra)
            .args(["--reload-command", reload])
            .timeout(ONCE_BOUND)
            .output()
            .unwrap()
    }

    /// Start `cert-watch` with recorded reloads and no verification.
    pub fn watch(&self, extra: &[&str]) -> Watcher {
        let log = self.dir.join("watch.log");
        let mut c = self.cmd();
        c.args(["-v", "cert-watch", "--no-verify"]);
        if !extra.contains(&"--poll-interval") {
            // Events only, unless the test is about polling.
            c.args(["--poll-interval", "3600"]);
        }
        c.arg("--reload-command")
            .arg(self.record_cmd())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(fs::File::create(self.dir.join("watch.out")).unwrap())
            .stderr(fs::File::create(&log).unwrap());
        Watcher {
            child: c.spawn().unwrap(),
            log,
        }
    }
}

/// A running watcher; killed when dropped.
pub struct Watcher {
    pub child: Child,
    pub log: PathBuf,
}

impl Watcher {
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > PATIENCE {
                let _ = self.child.kill();
                panic!("watcher ignored SIGTERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until `cond` holds; panic with `what` and the log after PATIENCE.
pub fn wait_for(what: &str, w: &Watcher, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > PATIENCE {
            panic!(
                "timed out waiting for {what}\n--- watcher log ---\n{}",
                w.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until the watcher logged `needle` at least `n` times.
pub fn wait_log(w: &Watcher, needle: &str, n: usize) {
    wait_for(&format!("{n} x {needle:?} in the log"), w, || {
        w.log().matches(needle).count() >= n
    });
}

/// acmetool's layout: live/<domain> -> ../certs/<id>, whose privkey points
/// into keys/<id>.
pub struct Acmetool {
    pub root: PathBuf,
    n: usize,
}

impl Acmetool {
    pub fn new(root: PathBuf, first: &Pair) -> Acmetool {
        fs::create_dir_all(root.join("live")).unwrap();
        let mut a = Acmetool { root, n: 0 };
        a.rotate(first);
        a
    }

    pub fn live(&self) -> PathBuf {
        self.root.join("live").join(DOMAIN)
    }

    /// Issue a new certificate directory and swap the live link to it.
    pub fn rotate(&mut self, p: &Pair) {
        self.n += 1;
        let id = format!("cert{:04}", self.n);
        let kid = format!("key{:04}", self.n);
        let kdir = self.root.join("keys").join(&kid);
        let cdir = self.root.join("certs").join(&id);
        fs::create_dir_all(&kdir).unwrap();
        fs::create_dir_all(&cdir).unwrap();
        fs::write(kdir.join("privkey"), &p.key).unwrap();
        fs::write(cdir.join("cert"), &p.cert).unwrap();
        fs::write(cdir.join("chain"), "").unwrap();
        fs::write(cdir.join("fullchain"), &p.cert).unwrap();
        symlink(format!("../../keys/{kid}/privkey"), cdir.join("privkey")).unwrap();
        relink(&self.live(), &format!("../certs/{id}"));
    }
}

/// certbot's layout: live/<d>/*.pem -> ../../archive/<d>/*N.pem.
pub struct Certbot {
    pub root: PathBuf,
    n: usize,
}

impl Certbot {
    pub fn new(root: PathBuf, first: &Pair) -> Certbot {
        fs::create_dir_all(root.join("live").join(DOMAIN)).unwrap();
        fs::create_dir_all(root.join("archive").join(DOMAIN)).unwrap();
        let mut c = Certbot { root, n: 0 };
        c.rotate(first);
        c
    }

    pub fn live(&self) -> PathBuf {
        self.root.join("live").join(DOMAIN)
    }

    /// Write archive files N, then move the links in certbot's order
    /// (cert, privkey, chain, fullchain).
    pub fn rotate(&mut self, p: &Pair) {
        self.n += 1;
        let n = self.n;
        let arch = self.root.join("archive").join(DOMAIN);
        fs::write(arch.join(format!("cert{n}.pem")), &p.cert).unwrap();
        fs::write(arch.join(format!("privkey{n}.pem")), &p.key).unwrap();
        fs::write(arch.join(format!("chain{n}.pem")), "").unwrap();
        fs::write(arch.join(format!("fullchain{n}.pem")), &p.cert).unwrap();
        for kind in ["cert", "privkey", "chain", "fullchain"] {
            relink(
                &self.live().join(format!("{kind}.pem")),
                &format!("../../archive/{DOMAIN}/{kind}{n}.pem"),
            );
        }
    }
}

/// Plain files in one directory.
pub fn plain(dir: &Path, p: &Pair) {
    fs::create_dir_all(dir).unwrap();
    put(&dir.join("privkey.pem"), &p.key);
    put(&dir.join("fullchain.pem"), &p.cert);
}

/// Rewrite a file in place (truncate + write, same inode).
pub fn rewrite(path: &Path, content: &str) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f.sync_all().unwrap();
}
