//! The mail-domain and env-file checks: a valid MAIL_DOMAIN from `.env` or
//! `chatmail.ini`, and a `.env` that is readable, parses and is not
//! readable by others.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{Check, CheckId};
use crate::context::Context;
use crate::deployment::Settings;

/// Validate MAIL_DOMAIN in one of the forms the relay accepts: a DNS name,
/// an IPv4 address ("IP relay"), or a name starting with `_` (test relays
/// with self-signed certificates). Returns the reason it is invalid.
pub fn validate_mail_domain(domain: &str) -> std::result::Result<(), String> {
    if domain.is_empty() {
        return Err("it is empty".into());
    }
    if domain.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if domain.len() > 253 {
        return Err(format!(
            "it is {} characters long (at most 253)",
            domain.len()
        ));
    }
    let name = domain.strip_suffix('.').unwrap_or(domain);
    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if label.is_empty() {
            return Err("it has an empty label (`..` or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!("the label `{label}` is longer than 63 characters"));
        }
        let body = if i == 0 {
            label.strip_prefix('_').unwrap_or(label)
        } else {
            label
        };
        if body.is_empty()
            || !body.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || body.starts_with('-')
            || body.ends_with('-')
        {
            return Err(format!(
                "the label `{label}` is not a valid DNS label (letters, digits and inner hyphens; an IDN must be written in its xn-- form)"
            ));
        }
    }
    if labels.len() < 2 && !domain.starts_with('_') {
        return Err(
            "it is a single label; use the relay's full domain name, e.g. chat.example.org".into(),
        );
    }
    Ok(())
}

/// Find MAIL_DOMAIN: `.env` first, then `chatmail.ini`'s `[params] mail_domain`.
pub fn mail_domain(ctx: &Context, settings: &Settings) -> Option<(String, String)> {
    if let Some(d) = settings.mail_domain_as_written() {
        return Some((d.to_string(), ".env".into()));
    }
    let ini = ctx.deployment.ini();
    ini_mail_domain(&ini).map(|d| (d, "chatmail.ini".into()))
}

fn ini_mail_domain(path: &Path) -> Option<String> {
    // Read as the relay reads it; a broken file is reported by ini2env.
    let text = crate::deployment::read_ini(path).ok()?;
    let ini = crate::formats::ini::parse_file(&text, path).ok()?;
    ini.section("params")?
        .get("mail_domain")
        .map(str::to_string)
}

pub(super) fn check_mail_domain(ctx: &Context, settings: &Settings) -> Check {
    const ID: &str = CheckId::MailDomain.id();
    match mail_domain(ctx, settings) {
        None => Check::fail(
            ID,
            format!(
                "MAIL_DOMAIN is not set (neither in {} nor as mail_domain in {})",
                ctx.deployment.env_file().display(),
                ctx.deployment.ini().display()
            ),
            "set `mail_domain = chat.example.org` under [params] in chatmail.ini, or `MAIL_DOMAIN=chat.example.org` in .env",
        ),
        Some((d, from)) => match validate_mail_domain(&d) {
            Ok(()) => Check::ok(ID, format!("MAIL_DOMAIN={d} (from {from})")),
            Err(why) => Check::fail(
                ID,
                format!("MAIL_DOMAIN `{d}` in {from} is invalid: {why}"),
                "use a DNS name (chat.example.org), an IPv4 address, or a name starting with `_` for test relays",
            ),
        },
    }
}

pub(super) fn check_env_file(ctx: &Context, unparsable: Option<&anyhow::Error>) -> Check {
    const ID: &str = CheckId::EnvFile.id();
    let path = ctx.deployment.env_file();
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if ctx.deployment.ini().exists() {
                Check::ok(
                    ID,
                    ".env does not exist yet; setup writes it from chatmail.ini",
                )
            } else {
                Check::fail(
                    ID,
                    format!("neither {} nor chatmail.ini exists", path.display()),
                    "create chatmail.ini (`[params]` with `mail_domain = ...`) or copy docker/example.env to .env",
                )
            };
        }
        Err(e) => {
            return Check::fail(
                ID,
                format!("cannot read {}: {e}", path.display()),
                "check its permissions",
            )
        }
    };
    match crate::host::open_input(&path, crate::host::MAX_CONFIG_BYTES) {
        Err(e @ crate::host::InputError::Io(..)) => {
            return Check::fail(ID, e.to_string(), "run as the owner of .env or as root");
        }
        Err(e) => {
            return Check::fail(
                ID,
                e.to_string(),
                "make .env a regular file (docker/example.env shows the syntax)",
            );
        }
        Ok(_) => {}
    }
    if let Some(e) = unparsable {
        return Check::fail(
            ID,
            format!("{e:#}"),
            "correct the line it names (docker/example.env shows the syntax)",
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        if ctx.dry_run {
            return Check::warn(
                ID,
                format!("{} has mode {mode:o}; it may hold secrets", path.display()),
                format!("chmod 600 {} (setup does this)", path.display()),
            );
        }
        return match fs::set_permissions(&path, fs::Permissions::from_mode(0o600)) {
            Ok(()) => {
                ctx.shell.note(format!(
                    "{} was mode {mode:o}, readable by others; changed it to 600",
                    path.display()
                ));
                Check::ok(
                    ID,
                    format!("{} readable, mode 600 (was {mode:o})", path.display()),
                )
            }
            Err(e) => Check::warn(
                ID,
                format!(
                    "{} has mode {mode:o} and could not be changed: {e}",
                    path.display()
                ),
                format!("chmod 600 {}", path.display()),
            ),
        };
    }
    Check::ok(ID, format!("{} readable, mode {mode:o}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        for ok in [
            "chat.example.org",
            "c.x",
            "1.2.3.4",
            "_test",
            "_chat.example.org",
            "xn--bcher-kva.example",
            "chat.example.org.",
        ] {
            assert!(validate_mail_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "localhost",
            "a..b",
            "-a.b",
            "a_b.c",
            "bücher.example",
            "a b.c",
            "a.b-",
        ] {
            assert!(validate_mail_domain(bad).is_err(), "{bad}");
        }
    }
}
