//! Optional encryption of archives with age (the `age` crate): to a
//! passphrase (scrypt) or to X25519 recipients (`age1...`), so that a
//! backup kept elsewhere does not expose mail, keys or `.env`. A restore
//! recognises an encrypted archive by its header and needs the
//! passphrase or an identity file.

use age::secrecy::SecretString;
use anyhow::{bail, Context as _, Result};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// How `backup` encrypts.
#[derive(Clone, Default)]
pub enum Encrypt {
    #[default]
    None,
    Passphrase(SecretString),
    Recipients(Vec<age::x25519::Recipient>),
}

impl std::fmt::Debug for Encrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encrypt::None => "None",
            Encrypt::Passphrase(_) => "Passphrase(…)",
            Encrypt::Recipients(_) => "Recipients(…)",
        })
    }
}

/// What `restore` (and an incremental `backup` reading its base) may
/// decrypt with.
#[derive(Clone, Default)]
pub struct Keys {
    pub passphrase: Option<SecretString>,
    pub identity_files: Vec<PathBuf>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("passphrase", &self.passphrase.as_ref().map(|_| "…"))
            .field("identity_files", &self.identity_files)
            .finish()
    }
}

/// The first bytes of every age file.
pub const MAGIC: &[u8] = b"age-encryption.org/v1";

/// Read a passphrase from a file (its first line).
pub fn passphrase_from_file(path: &Path) -> Result<SecretString> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(crate::error::usage(format!(
            "{} is empty: put the passphrase on its first line",
            path.display()
        )));
    }
    Ok(SecretString::from(line))
}

/// Parse `age1...` recipients (from the command line or a file).
pub fn recipients(list: &[String]) -> Result<Vec<age::x25519::Recipient>> {
    list.iter()
        .map(|r| {
            age::x25519::Recipient::from_str(r.trim()).map_err(|e| {
                crate::error::usage(format!(
                    "{r:?} is not an age recipient ({e}); give a public key `age1...` as `age-keygen` prints it"
                ))
            })
        })
        .collect()
}

/// The destination, encrypted or not; [`Sink::finish`] ends the age stream.
pub enum Sink<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sink<W> {
    pub fn new(out: W, how: &Encrypt) -> Result<Sink<W>> {
        let enc = match how {
            Encrypt::None => return Ok(Sink::Plain(out)),
            Encrypt::Passphrase(p) => age::Encryptor::with_user_passphrase(p.clone()),
            Encrypt::Recipients(r) => {
                age::Encryptor::with_recipients(r.iter().map(|r| r as &dyn age::Recipient))
                    .context("cannot encrypt to these recipients")?
            }
        };
        Ok(Sink::Age(
            enc.wrap_output(out)
                .context("cannot write the archive's encryption header")?,
        ))
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Sink::Plain(w) => Ok(w),
            Sink::Age(s) => s.finish(),
        }
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Age(w) => w.flush(),
        }
    }
}

/// A reader of an archive's plaintext: decrypted when it is an age file.
pub fn open_reader<'a>(
    input: Box<dyn Read + 'a>,
    keys: &Keys,
    what: &Path,
) -> Result<Box<dyn Read + 'a>> {
    let mut r = io::BufReader::with_capacity(1 << 20, input);
    let head = r
        .fill_buf()
        .with_context(|| format!("cannot read {}", what.display()))?;
    if !head.starts_with(MAGIC) {
        return Ok(Box::new(r));
    }
    let mut ids: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
    if let Some(p) = &keys.passphrase {
        ids.push(Box::new(age::scrypt::Identity::new(p.clone())));
    }
    for f in &keys.identity_files {
        let file = age::IdentityFile::from_file(f.to_string_lossy().into_owned())
            .with_context(|| format!("cannot read the identity file {}", f.display()))?;
        ids.extend(
            file.into_identities()
                .with_context(|| format!("{}: not an age identity file", f.display()))?,
        );
    }
    if ids.is_empty() {
        return Err(crate::error::usage(format!(
            "{} is encrypted: give --passphrase-file FILE (or CHATMAIL_BACKUP_PASSPHRASE_FILE) or --identity FILE",
            what.display()
        )));
    }
    let dec = age::Decryptor::new_buffered(r).with_context(|| {
        format!(
            "{} is truncated or corrupt (its encryption header cannot be read)",
            what.display()
        )
    })?;
    match dec.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity)) {
        Ok(r) => Ok(Box::new(r)),
        Err(age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed) => {
            Err(crate::error::usage(format!(
                "cannot decrypt {}: wrong passphrase or identity",
                what.display()
            )))
        }
        Err(e) => bail!("cannot decrypt {}: {e}", what.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_round_trip_and_wrong_passphrase() {
        let how = Encrypt::Passphrase(SecretString::from("right".to_string()));
        let mut s = Sink::new(Vec::new(), &how).unwrap();
        s.write_all(b"secret manifest").unwrap();
        let sealed = s.finish().unwrap();
        assert!(sealed.starts_with(MAGIC));
        let keys = Keys {
            passphrase: Some(SecretString::from("right".to_string())),
            identity_files: vec![],
        };
        let mut out = Vec::new();
        open_reader(Box::new(&sealed[..]), &keys, Path::new("x"))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"secret manifest");
        let wrong = Keys {
            passphrase: Some(SecretString::from("wrong".to_string())),
            identity_files: vec![],
        };
        let err = open_reader(Box::new(&sealed[..]), &wrong, Path::new("x"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
        let none = open_reader(Box::new(&sealed[..]), &Keys::default(), Path::new("x"))
            .err()
            .unwrap();
        assert!(none.to_string().contains("is encrypted"), "{none}");
        // Plain data passes through.
        let mut out = Vec::new();
        open_reader(Box::new(&b"plain"[..]), &Keys::default(), Path::new("x"))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"plain");
    }
}
