//! Arguments of `metrics`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

use crate::{context::Context, error, metrics};

#[derive(Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Write DIR/chatmail-docker.prom atomically (for node_exporter's textfile collector) instead of printing.
    #[arg(long, value_name = "DIR")]
    pub textfile: Option<PathBuf>,

    /// A backup directory to report on (repeatable; default: the deployment's backups/ when it exists).
    #[arg(long = "backup-dir", value_name = "DIR")]
    pub backup_dirs: Vec<PathBuf>,

    /// Address the TLS endpoints are probed on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub tls_host: String,

    /// The TLS endpoints to probe, as cert-watch's --verify-ports (25, 587: SMTP STARTTLS; 143: IMAP STARTTLS; others TLS; or PORT/tls, PORT/smtp, PORT/imap).
    #[arg(long, value_name = "LIST", default_value = crate::certwatch::verify::DEFAULT_PORTS)]
    pub tls_ports: String,

    /// Seconds a Docker call or a TLS probe may take, 1 to 60.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
}

impl MetricsArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        if !(1..=60).contains(&self.timeout) {
            return Err(error::usage(format!(
                "--timeout {} is out of range: use 1 to 60 seconds",
                self.timeout
            )));
        }
        metrics::run(
            ctx,
            &metrics::Options {
                textfile: self.textfile,
                backup_dirs: self.backup_dirs,
                tls_host: self.tls_host,
                tls_ports: crate::certwatch::verify::parse_ports(&self.tls_ports)?,
                timeout: Duration::from_secs(self.timeout),
            },
        )
    }
}
