//! Arguments of `cert-watch`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

use crate::{certwatch, context::Context};

#[derive(Args, Debug, Clone)]
pub struct CertWatchArgs {
    /// Host directory holding the certificate and key (instead of PATH_TO_SSL from .env).
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,

    /// Check once, reload if the certificate changed since the last run, and exit.
    #[arg(long)]
    pub once: bool,

    /// Seconds (1-86400) between polls that catch changes events miss [default: CERTS_MONITORING_TIMEOUT or 60].
    #[arg(long, value_name = "SECS")]
    pub poll_interval: Option<u64>,

    /// Run this shell command instead of reloading the services in the container
    /// (it sees CERT_WATCH_ACTION=reload|restart, CERT_FINGERPRINT, CERT_LEAF_SHA256,
    /// CERT_FILE, KEY_FILE, CERT_NOT_AFTER, MAIL_DOMAIN; exit 75 means "retry later").
    #[arg(long, value_name = "CMD")]
    pub reload_command: Option<String>,

    /// Do not check the served certificates after reloading.
    #[arg(long)]
    pub no_verify: bool,

    /// Ports to check after a reload; 25 and 587 speak SMTP STARTTLS, 143 IMAP STARTTLS,
    /// others implicit TLS (force with PORT/tls, PORT/smtp, PORT/imap).
    #[arg(
        long,
        value_name = "PORTS",
        env = "CERT_WATCH_VERIFY_PORTS",
        default_value = crate::certwatch::verify::DEFAULT_PORTS
    )]
    pub verify_ports: String,

    /// Address the verification connects to.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub verify_host: String,

    /// Seconds (1-3600) to keep checking the served certificate after a reload before restarting.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub verify_timeout: u64,

    /// Seconds (1-3600) a reload or restart may take before it is stopped and counted as failed.
    #[arg(long, value_name = "SECS", default_value_t = crate::certwatch::DEFAULT_RELOAD_SECS)]
    pub reload_timeout: u64,

    /// Quiet time after the last file event before acting, in milliseconds (at most 60000)
    /// (ACME clients write several files in a row, within a few milliseconds; a pair
    /// caught half-written is refused and the next event looks again).
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub debounce_ms: u64,
}

impl CertWatchArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        let options = certwatch::Options {
            path: self.path,
            once: self.once,
            poll_interval: self.poll_interval,
            reload_command: self.reload_command,
            no_verify: self.no_verify,
            verify_ports: self.verify_ports,
            verify_host: self.verify_host,
            verify_timeout: self.verify_timeout,
            reload_timeout: self.reload_timeout,
            debounce_ms: self.debounce_ms,
        };
        certwatch::run(ctx, &options)
    }
}
