//! The certificate and key as files on disk: reading them, fingerprinting
//! their content and deciding whether they form a pair the services can be
//! reloaded into.
//!
//! The fingerprint covers the bytes of the resolved certificate chain and the
//! key, not their paths or mtimes: an ACME client that swaps a symlink to a
//! new directory changes paths without changing anything served, and one that
//! rewrites a file in place changes content without changing paths. Only the
//! content decides whether a reload is due.

use anyhow::{anyhow, Context as _, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Names of a full chain (leaf first, then intermediates), acmetool then certbot.
pub const FULLCHAIN_NAMES: &[&str] = &["fullchain", "fullchain.pem"];
/// Names of a leaf-only certificate, used with a separate chain file.
pub const CERT_NAMES: &[&str] = &["cert", "cert.pem"];
/// Names of the intermediate chain that goes with [`CERT_NAMES`].
pub const CHAIN_NAMES: &[&str] = &["chain", "chain.pem"];
/// Names of the private key.
pub const KEY_NAMES: &[&str] = &["privkey", "privkey.pem", "key", "key.pem"];

/// The files found for one certificate, with their content. `Debug` leaves
/// the content out: it holds the private key.
#[derive(Clone)]
pub struct Material {
    /// The files the chain was read from (fullchain, or cert then chain).
    pub cert_files: Vec<PathBuf>,
    pub key_file: PathBuf,
    /// sha256 over the chain and key content, hex.
    pub fingerprint: String,
    cert_bytes: Vec<u8>,
    key_bytes: Vec<u8>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("cert_files", &self.cert_files)
            .field("key_file", &self.key_file)
            .field("fingerprint", &self.fingerprint)
            .field("cert_bytes", &self.cert_bytes.len())
            .field("key_bytes", &"<redacted>")
            .finish()
    }
}

/// What validation found out about a consistent pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    /// Who issued it (the CA: `status` shows it).
    pub issuer: String,
    pub not_after: SystemTime,
    /// sha256 of the leaf certificate's DER, hex: what a TLS client sees.
    pub leaf_sha256: String,
    pub dns_names: Vec<String>,
}

impl CertInfo {
    /// The expiry as RFC 3339, for logs and state.
    pub fn not_after_text(&self) -> String {
        humantime::format_rfc3339_seconds(self.not_after).to_string()
    }
}

impl Material {
    /// Read the content of already located files.
    pub fn read(cert_files: Vec<PathBuf>, key_file: PathBuf) -> Result<Material> {
        let mut cert_bytes = Vec::new();
        for f in &cert_files {
            let b = crate::host::read_input(f, crate::host::MAX_CERT_BYTES)
                .context("cannot read the certificate file")?;
            cert_bytes.extend_from_slice(&b);
            if !b.ends_with(b"\n") {
                cert_bytes.push(b'\n');
            }
        }
        let key_bytes = crate::host::read_input(&key_file, crate::host::MAX_CERT_BYTES)
            .context("cannot read the key file")?;
        let mut h = Sha256::new();
        h.update(b"chatmail-cert-watch v1\0cert\0");
        h.update((cert_bytes.len() as u64).to_be_bytes());
        h.update(&cert_bytes);
        h.update(b"\0key\0");
        h.update((key_bytes.len() as u64).to_be_bytes());
        h.update(&key_bytes);
        Ok(Material {
            cert_files,
            key_file,
            fingerprint: hex::encode(h.finalize()),
            cert_bytes,
            key_bytes,
        })
    }

    /// The parsed chain, leaf first.
    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>> {
        let certs: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut self.cert_bytes.as_slice())
                .collect::<Result<_, _>>()
                .with_context(|| format!("{} is not valid PEM", self.cert_display()))?;
        if certs.is_empty() {
            return Err(anyhow!("{} holds no certificate", self.cert_display()));
        }
        Ok(certs)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>> {
        rustls_pemfile::private_key(&mut self.key_bytes.as_slice())
            .with_context(|| format!("{} is not valid PEM", self.key_file.display()))?
            .ok_or_else(|| anyhow!("{} holds no private key", self.key_file.display()))
    }

    fn cert_display(&self) -> String {
        self.cert_files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// Check that the pair can be served for `domain` at `now`: the chain
    /// parses, the key belongs to the leaf, the leaf is valid now and names
    /// the domain. The error says what is wrong, for the log line.
    pub fn validate(&self, domain: Option<&str>, now: SystemTime) -> Result<CertInfo> {
        let chain = self.chain()?;
        let leaf_der = &chain[0];
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der.as_ref()).map_err(|e| {
            anyhow!(
                "the certificate in {} is not a valid X.509 certificate (damaged or half-written?): {e}",
                self.cert_display()
            )
        })?;
        let info = cert_info(leaf_der.as_ref(), &leaf)?;

        // The key must be the leaf's: rustls derives the public key from the
        // private key (ring: RSA, ECDSA P-256/P-384, Ed25519) and compares
        // it with the certificate's SubjectPublicKeyInfo.
        let key = self.key()?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
            anyhow!(
                "the private key in {} is not usable: {e}",
                self.key_file.display()
            )
        })?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signer);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(anyhow!(
                    "the private key {} does not belong to the certificate {} (partial update?)",
                    self.key_file.display(),
                    self.cert_display()
                ))
            }
            Err(e) => {
                return Err(anyhow!(
                    "cannot compare the private key {} with the certificate: {e}",
                    self.key_file.display()
                ))
            }
        }

        let nb = leaf.validity().not_before.timestamp();
        let now_s = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if now_s > leaf.validity().not_after.timestamp() {
            return Err(anyhow!(
                "the certificate {} expired on {}",
                self.cert_display(),
                info.not_after_text()
            ));
        }
        if now_s < nb {
            return Err(anyhow!(
                "the certificate {} is not valid before {}",
                self.cert_display(),
                humantime::format_rfc3339_seconds(
                    UNIX_EPOCH + Duration::from_secs(nb.max(0) as u64)
                )
            ));
        }
        if let Some(domain) = domain {
            if info.dns_names.is_empty() {
                return Err(anyhow!(
                    "the certificate {} has no DNS names (subjectAltName); clients will reject it for {domain}",
                    self.cert_display()
                ));
            }
            if !info.dns_names.iter().any(|n| name_matches(n, domain)) {
                return Err(anyhow!(
                    "the certificate {} is for {} but MAIL_DOMAIN is {domain}",
                    self.cert_display(),
                    info.dns_names.join(", ")
                ));
            }
        }
        Ok(info)
    }

    /// Subject, expiry and leaf fingerprint without the key or name checks
    /// (for `status`, which reports rather than judges).
    pub fn info(&self) -> Result<CertInfo> {
        let chain = self.chain()?;
        let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).map_err(|e| {
            anyhow!(
                "the certificate in {} is not a valid X.509 certificate (damaged or half-written?): {e}",
                self.cert_display()
            )
        })?;
        cert_info(chain[0].as_ref(), &leaf)
    }
}

/// Subject, expiry and fingerprint of one certificate (DER), such as the
/// leaf a server presented.
pub fn leaf_info(der: &[u8]) -> Result<CertInfo> {
    let (_, leaf) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("not a valid X.509 certificate: {e}"))?;
    cert_info(der, &leaf)
}

fn cert_info(der: &[u8], leaf: &x509_parser::certificate::X509Certificate<'_>) -> Result<CertInfo> {
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                dns_names.push(d.to_string());
            }
        }
    }
    let na = leaf.validity().not_after.timestamp();
    let not_after = if na >= 0 {
        UNIX_EPOCH + Duration::from_secs(na as u64)
    } else {
        UNIX_EPOCH
    };
    Ok(CertInfo {
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        not_after,
        leaf_sha256: sha256_hex(der),
        dns_names,
    })
}

/// sha256 of bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether a certificate DNS name covers `domain`, by the rules TLS clients
/// use (RFC 6125): case-insensitive, a trailing dot ignored, a wildcard only
/// as the whole leftmost label and matching exactly one label — so
/// `*.example.org` covers `mail.example.org` but neither `example.org` nor
/// `a.mail.example.org`.
pub fn name_matches(pattern: &str, domain: &str) -> bool {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    if p.is_empty() || d.is_empty() {
        return false;
    }
    match p.strip_prefix("*.") {
        Some(rest) => {
            // A wildcard needs at least two labels after it (no `*.org`).
            if !rest.contains('.') || rest.contains('*') {
                return false;
            }
            match d.split_once('.') {
                Some((first, tail)) => !first.is_empty() && tail == rest,
                None => false,
            }
        }
        None => !p.contains('*') && p == d,
    }
}

/// Find the certificate and key files in a directory, through symlinks, with
/// `exists` deciding whether a candidate path exists (so the caller can
/// resolve container-absolute links). Returns the chain files and the key.
pub fn find_files(
    dir: &Path,
    exists: &mut dyn FnMut(&Path) -> Option<PathBuf>,
) -> std::result::Result<(Vec<PathBuf>, PathBuf), String> {
    let mut first = |names: &[&str]| names.iter().find_map(|n| exists(&dir.join(n)));
    let cert_files = if let Some(full) = first(FULLCHAIN_NAMES) {
        vec![full]
    } else if let Some(cert) = first(CERT_NAMES) {
        let mut v = vec![cert];
        if let Some(chain) = first(CHAIN_NAMES) {
            v.push(chain);
        }
        v
    } else {
        return Err(format!(
            "no certificate in {} (looked for {})",
            dir.display(),
            FULLCHAIN_NAMES
                .iter()
                .chain(CERT_NAMES)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let key = first(KEY_NAMES).ok_or_else(|| {
        format!(
            "no private key in {} (looked for {})",
            dir.display(),
            KEY_NAMES.join(", ")
        )
    })?;
    Ok((cert_files, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_key() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = (d.path().join("fullchain"), d.path().join("privkey"));
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBtYXRlcmlhbA==\n-----END PRIVATE KEY-----\n";
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&key, secret).unwrap();
        let m = Material::read(vec![cert], key).unwrap();
        let shown = format!("{m:?} {:?}", Some(&m));
        // Neither as text nor as the byte list a derived Debug would print.
        let bytes = format!("{:?}", secret.as_bytes());
        assert!(!shown.contains(bytes.trim_matches(['[', ']'])), "{shown}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(shown.contains("privkey"), "{shown}");
    }

    #[test]
    fn wildcards_follow_rfc6125() {
        assert!(name_matches("example.org", "Example.ORG."));
        assert!(name_matches("*.example.org", "mail.example.org"));
        assert!(!name_matches("*.example.org", "example.org"));
        assert!(!name_matches("*.example.org", "a.mail.example.org"));
        assert!(!name_matches("*.org", "example.org"));
        assert!(!name_matches("m*.example.org", "mail.example.org"));
        assert!(!name_matches("other.org", "example.org"));
        assert!(!name_matches("", "example.org"));
    }
}
