//! The deployment's settings: `.env` read once, and what the commands need
//! of it as typed values. The variables keep their names only here (and in
//! [`super::relay`], for the relay's own `[params]`).

use anyhow::Result;
use std::path::PathBuf;

use super::relay::TlsMode;
use super::{Deployment, Env};

/// Where the relay's source is when `.env` does not say (`RELAY_SRC`).
pub const DEFAULT_RELAY_SRC: &str = "relay";

/// `.env`, read once.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Whether `.env` exists.
    pub present: bool,
    /// Every variable, for what passes them on as they are (the merge of
    /// `ini2env`, the side container's environment, the relay's facts).
    pub vars: Env,
    /// `MAIL_DOMAIN`, trimmed; `None` when unset or empty.
    pub mail_domain: Option<String>,
    /// How the relay gets its certificate (`None` without a mail domain).
    pub tls: Option<TlsMode>,
    /// The relay checkout the image is built from (`RELAY_SRC`), absolute.
    pub relay_src: PathBuf,
    /// `PATH_TO_SSL`: the certificate directory in the container, if set.
    pub path_to_ssl: Option<String>,
    /// `ENABLE_CERTS_MONITORING=true`: `setup` installs cert-watch's unit.
    pub certs_monitoring: bool,
    /// `CERTS_MONITORING_TIMEOUT` as written (cert-watch checks it).
    pub certs_monitoring_timeout: Option<String>,
    /// The relay's `mailboxes_dir` (`MAILBOXES_DIR`), if set.
    pub mailboxes_dir: Option<String>,
}

fn non_empty(v: Option<&String>) -> Option<String> {
    v.map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl Settings {
    /// Read `.env` of `dep` (none: no variables). A file that cannot be
    /// read or parsed is an error naming the file and line.
    pub fn load(dep: &Deployment) -> Result<Settings> {
        let loaded = dep.load_env()?;
        let present = loaded.is_some();
        let mut s = Settings::from_vars(dep, loaded.unwrap_or_default());
        s.present = present;
        Ok(s)
    }

    /// The settings of these variables.
    pub fn from_vars(dep: &Deployment, vars: Env) -> Settings {
        let tls = TlsMode::from_env(&vars);
        let relay_src = dep.path(
            vars.get("RELAY_SRC")
                .map(String::as_str)
                .unwrap_or(DEFAULT_RELAY_SRC),
        );
        Settings {
            present: true,
            mail_domain: non_empty(vars.get("MAIL_DOMAIN")),
            tls,
            relay_src,
            path_to_ssl: vars.get("PATH_TO_SSL").filter(|p| !p.is_empty()).cloned(),
            certs_monitoring: vars
                .get("ENABLE_CERTS_MONITORING")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            certs_monitoring_timeout: vars
                .get("CERTS_MONITORING_TIMEOUT")
                .map(|s| s.trim().to_string()),
            mailboxes_dir: non_empty(vars.get("MAILBOXES_DIR")),
            vars,
        }
    }

    /// `MAIL_DOMAIN` exactly as `.env` has it (untrimmed; present even when
    /// empty), for the checks that judge how it is written.
    pub fn mail_domain_as_written(&self) -> Option<&str> {
        self.vars.get("MAIL_DOMAIN").map(String::as_str)
    }

    /// Where the relay keeps its mailboxes, in the container: its
    /// `mailboxes_dir`, or `/home/vmail/mail/MAIL_DOMAIN`.
    pub fn mailboxes_in_container(&self) -> Option<String> {
        if let Some(d) = &self.mailboxes_dir {
            return Some(d.clone());
        }
        Some(format!("/home/vmail/mail/{}", self.mail_domain.as_ref()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn typed_values_of_the_variables() {
        let dep = Deployment::new("/srv/dep".into());
        let s = Settings::from_vars(
            &dep,
            vars(&[
                ("MAIL_DOMAIN", " chat.example.org "),
                ("ENABLE_CERTS_MONITORING", "TRUE"),
                ("RELAY_SRC", "src/relay"),
            ]),
        );
        assert_eq!(s.mail_domain.as_deref(), Some("chat.example.org"));
        assert_eq!(s.mail_domain_as_written(), Some(" chat.example.org "));
        assert_eq!(s.tls, Some(TlsMode::Acme));
        assert!(s.certs_monitoring);
        assert_eq!(s.relay_src, PathBuf::from("/srv/dep/src/relay"));
        assert_eq!(
            s.mailboxes_in_container().as_deref(),
            Some("/home/vmail/mail/chat.example.org")
        );
        let none = Settings::from_vars(&dep, vars(&[("MAIL_DOMAIN", "")]));
        assert_eq!(none.mail_domain, None);
        assert_eq!(none.tls, None);
        assert_eq!(none.relay_src, PathBuf::from("/srv/dep/relay"));
        assert_eq!(none.mailboxes_in_container(), None);
    }
}
