//! What the image build gets besides the build context: extra CA
//! certificates to trust while building, and the relay commit it is built
//! from.
//!
//! Networks with a proxy that re-signs TLS (common in companies) make `pip`
//! in the image build fail with `CERTIFICATE_VERIFY_FAILED`: the host trusts
//! the proxy's CA, a fresh build container does not. `--build-ca PATH` (a
//! PEM file, or a directory of `.crt`/`.pem` files such as
//! `/usr/local/share/ca-certificates`) collects the certificates into one
//! bundle that Compose hands to the build as the `build_ca` secret: the
//! build steps that download trust it (docker/files/with-build-ca), and no
//! layer of the image contains it unless `--keep-build-ca` asks for that.
//!
//! The relay commit (`git rev-parse HEAD` in the relay checkout) is recorded
//! in the image, where the relay itself would record it on a host
//! (`/etc/chatmail-version`); the image has no `.git`. Commit and version
//! (`git describe`) are also the image's labels ([`COMMIT_LABEL`],
//! [`VERSION_LABEL`]): `status` and `upgrade` read them.

use anyhow::{Context as _, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::context::Context;
use crate::error;

/// Environment variable of `docker/docker-compose.yaml`: the bundle file of
/// the `build_ca` build secret.
pub const CA_BUNDLE_VAR: &str = "CHATMAIL_BUILD_CA_BUNDLE";
/// Build argument switch: keep the extra CA certificates trusted in the image.
pub const KEEP_CA_VAR: &str = "CHATMAIL_KEEP_BUILD_CA";
/// Build argument: the relay commit.
pub const RELAY_COMMIT_VAR: &str = "CHATMAIL_RELAY_COMMIT";
/// Build argument: the relay version (`git describe --tags --always`).
pub const RELAY_VERSION_VAR: &str = "CHATMAIL_RELAY_VERSION";
/// Image labels with the relay commit and version the image is built from.
pub const COMMIT_LABEL: &str = "org.chatmail-docker.relay-commit";
pub const VERSION_LABEL: &str = "org.chatmail-docker.relay-version";

/// The largest CA file read (a system bundle is about 200 KiB).
const MAX_CA_FILE: u64 = 8 << 20;

/// How the image is built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Extra CA certificates: a PEM file or a directory of them.
    pub ca: Option<PathBuf>,
    /// How messages name where `ca` came from (`--build-ca` when `None`;
    /// `CHATMAIL_BUILD_CA` when the environment gave it).
    pub ca_name: Option<String>,
    /// Keep them trusted in the final image.
    pub keep_ca: bool,
}

impl BuildOptions {
    /// The name of the CA option for messages.
    pub fn ca_name(&self) -> &str {
        self.ca_name.as_deref().unwrap_or("--build-ca")
    }
}

/// The environment a `docker compose build` gets, and the bundle file that
/// must live until the build is over.
pub struct BuildEnv {
    pub env: Vec<(String, String)>,
    _bundle: Option<tempfile::NamedTempFile>,
}

/// Collect the build's inputs: validate and bundle the CA certificates,
/// find the relay commit.
pub fn prepare(ctx: &Context, relay: &Path, opts: &BuildOptions) -> Result<BuildEnv> {
    let mut env = Vec::new();
    let mut bundle = None;
    if let Some(ca) = &opts.ca {
        let pem = collect_certificates(ca, opts.ca_name())?;
        let mut f = tempfile::Builder::new()
            .prefix(".chatmail-build-ca.")
            .suffix(".pem")
            .tempfile()
            .context("creating a temporary file for the CA bundle")?;
        f.write_all(pem.as_bytes())
            .and_then(|_| f.flush())
            .context("writing the CA bundle")?;
        env.push((CA_BUNDLE_VAR.to_string(), f.path().display().to_string()));
        bundle = Some(f);
        if opts.keep_ca {
            env.push((KEEP_CA_VAR.to_string(), "true".to_string()));
        }
    }
    if let Some(commit) = relay_commit(ctx, relay) {
        env.push((RELAY_COMMIT_VAR.to_string(), commit));
        if let Some(version) = relay_version(ctx, relay) {
            env.push((RELAY_VERSION_VAR.to_string(), version));
        }
    }
    Ok(BuildEnv {
        env,
        _bundle: bundle,
    })
}

/// `git rev-parse HEAD` in the relay checkout; None when it is not a git
/// checkout or git is missing (the image then records "unknown").
pub fn relay_commit(ctx: &Context, relay: &Path) -> Option<String> {
    if !relay.join(".git").exists() {
        return None;
    }
    let out = ctx
        .host
        .cmd("git", ["rev-parse", "HEAD"])
        .dir(relay)
        .output(&ctx.shell)
        .ok()?;
    let commit = out.stdout.trim().to_string();
    (out.code == 0 && commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(commit)
}

/// `git describe --tags --always` in the relay checkout: the release tag,
/// `TAG-N-gCOMMIT` after it, or the short commit.
pub fn relay_version(ctx: &Context, relay: &Path) -> Option<String> {
    let out = ctx
        .host
        .cmd("git", ["describe", "--tags", "--always"])
        .dir(relay)
        .output(&ctx.shell)
        .ok()?;
    let v = out.stdout.trim().to_string();
    (out.code == 0 && !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(v)
}

/// The PEM certificates of a file, or of the `.crt`/`.pem` files of a
/// directory, concatenated; an error (usage, exit 2) names the option
/// (`name`: `--build-ca` or the environment variable that gave it) and the
/// file when it is missing, unreadable, no regular file or directory, or
/// holds no PEM certificate.
pub fn collect_certificates(path: &Path, name: &str) -> Result<String> {
    let meta = fs::metadata(path).map_err(|e| {
        error::usage(format!(
            "{name} {}: {e}; give a PEM file or a directory of .crt/.pem files",
            path.display()
        ))
    })?;
    let files: Vec<PathBuf> = if meta.is_dir() {
        let mut v: Vec<PathBuf> = fs::read_dir(path)
            .map_err(|e| {
                error::usage(format!(
                    "{name} {}: cannot read the directory: {e}",
                    path.display()
                ))
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "crt" || x == "pem") && p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = String::new();
    for f in &files {
        let bytes = crate::host::read_input(f, MAX_CA_FILE)
            .map_err(|e| error::usage(format!("{name}: {e}")))?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut bytes.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| {
                error::usage(format!(
                    "{name} {}: not a PEM certificate file ({e})",
                    f.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(error::usage(format!(
                "{name} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                f.display()
            )));
        }
        let text = String::from_utf8_lossy(&bytes);
        out.push_str(text.trim_end());
        out.push('\n');
    }
    if out.is_empty() {
        return Err(error::usage(format!(
            "{name} {}: no .crt or .pem files in this directory",
            path.display()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["proxy.example".into()]).unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_directory_of_certificates_becomes_one_bundle() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (cert_pem(), cert_pem());
        fs::write(d.path().join("b.crt"), &b).unwrap();
        fs::write(d.path().join("a.pem"), &a).unwrap();
        fs::write(d.path().join("README"), "not a certificate").unwrap();
        let bundle = collect_certificates(d.path(), "--build-ca").unwrap();
        assert_eq!(bundle, format!("{}\n{}\n", a.trim_end(), b.trim_end()));
    }

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("proxy.crt");
        fs::write(&f, "hello\n").unwrap();
        let err = collect_certificates(&f, "--build-ca")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("proxy.crt") && err.contains("no PEM certificate"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = collect_certificates(empty.path(), "--build-ca")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no .crt or .pem files"), "{err}");
        let err = collect_certificates(&d.path().join("missing.pem"), "CHATMAIL_BUILD_CA")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CHATMAIL_BUILD_CA") && err.contains("missing.pem"),
            "{err}"
        );
    }
}
