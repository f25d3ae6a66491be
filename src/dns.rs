//! `dns`: the DNS records the relay needs, and which of them are missing or
//! wrong.
//!
//! The relay computes its records itself (`cmdeploy dns`: MX, SRV, the
//! DKIM key's TXT record, SPF, DMARC, MTA-STS and CAA for ACME). This runs
//! the relay's own functions inside the container, where its DKIM key,
//! ACME account and resolver are, so the records are exactly the relay's:
//! no second copy of its logic to drift. Unlike `cmdeploy dns` it also
//! prints the zone for a domain whose A record is not published yet (that
//! is when a new administrator needs it), with this server's address when
//! it has a public one.

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::compose;
use crate::error;
use crate::host;
use crate::Context;

/// What `dns` is asked to do.
#[derive(Clone, Debug, Default)]
pub struct DnsOptions {
    /// Look the records up and report what is missing or wrong.
    pub check: bool,
    /// Also write the zone to this file.
    pub zonefile: Option<PathBuf>,
    /// Print a JSON report instead of text.
    pub json: bool,
}

/// The relay's answer, as the in-container script prints it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Report {
    pub domain: String,
    /// Set when there is nothing to publish (an IPv4 relay).
    #[serde(default)]
    pub skipped: Option<String>,
    #[serde(default)]
    pub zone: String,
    /// Whether the records were looked up.
    #[serde(default)]
    pub checked: bool,
    /// Required records that are not published as the zone says.
    #[serde(default)]
    pub required_missing: Vec<String>,
    /// Recommended records that are not published.
    #[serde(default)]
    pub recommended_missing: Vec<String>,
    /// Remarks (an address that had to be guessed, ...).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Python run with the relay's venv in the container: the relay's
/// `perform_initial_checks` (DNS lookups, DKIM entry, ACME account),
/// `get_filled_zone_file` and `check_zonefile`.
const SCRIPT: &str = r#"
import contextlib, io, ipaddress, json, socket, sys
from chatmaild.config import read_config
from cmdeploy import dns
from cmdeploy.remote import rdns, rshell

check = sys.argv[1] == "check"
config = read_config("/etc/chatmail/chatmail.ini")
out = {"domain": config.mail_domain_bare, "notes": []}
if config.ipv4_relay:
    out["skipped"] = f"{config.ipv4_relay} is an IP address, not a domain: there are no DNS records to publish"
    print(json.dumps(out))
    sys.exit(0)

def own_address(family, probe):
    # The source address the kernel would use towards the internet; no
    # packet is sent (a UDP socket only looks up the route).
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 53))
            addr = ipaddress.ip_address(s.getsockname()[0])
    except OSError:
        return ""
    return str(addr) if addr.is_global else ""

with contextlib.redirect_stdout(io.StringIO()):
    if check:
        data = rdns.perform_initial_checks(config.mail_domain)
    else:
        # The records only: no DNS lookups (they can take minutes where DNS
        # is unreachable).
        data = {"mail_domain": config.mail_domain, "A": "", "AAAA": ""}
        data["acme_account_url"] = rshell.shell("acmetool account-url", fail_ok=True, print=lambda *a: None)
        data["dkim_entry"], data["web_dkim_entry"] = rdns.get_dkim_entry(config.mail_domain, "", dkim_selector="opendkim")
    if not data.get("dkim_entry") or "p=;" in data["dkim_entry"]:
        print(json.dumps({"error": "the DKIM key /etc/dkimkeys/opendkim.private is missing or unreadable"}), file=sys.__stdout__)
        sys.exit(3)
    if not data.get("A") and not data.get("AAAA"):
        data["A"] = own_address(socket.AF_INET, "9.9.9.9")
        data["AAAA"] = own_address(socket.AF_INET6, "2620:fe::fe")
        if data["A"] or data["AAAA"]:
            out["notes"].append("no A/AAAA record is published yet: the zone uses this server's own address")
        else:
            out["notes"].append("no A/AAAA record is published yet and this server has no public address: add an A record with the address clients reach it at")
    data["strict_tls"] = config.tls_cert_mode == "acme"
    if data["strict_tls"] and not data.get("acme_account_url"):
        out["notes"].append("no ACME account yet: the CAA record is left out until acmetool has one")
    zone = dns.get_filled_zone_file(data)
    out["zone"] = zone
    if check:
        required, recommended = rdns.check_zonefile(zone, verbose=False)
        out["checked"] = True
        out["required_missing"] = required
        out["recommended_missing"] = recommended
print(json.dumps(out))
"#;

/// Ask the relay in the running container for its records.
pub fn report(ctx: &Context, check: bool) -> Result<Report> {
    compose::require_compose_file(ctx)?;
    if compose::container_id(ctx, compose::Containers::Running)?.is_none() {
        return Err(error::usage(
            "the appliance is not running: start it with `chatmail-docker setup` (the records need its DKIM key)",
        ));
    }
    let out = compose::exec_output(
        ctx,
        [
            "/opt/cmdeploy/bin/python3",
            "-c",
            SCRIPT,
            if check { "check" } else { "zone" },
        ],
    )?;
    let line = out.stdout.lines().rev().find(|l| l.starts_with('{'));
    if let Some(err) = line
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
    {
        bail!("{err}: run `chatmail-docker setup` so the appliance makes one");
    }
    if !out.success() {
        let why = out.stderr.trim().lines().last().unwrap_or("").to_string();
        bail!(
            "the relay could not compute its DNS records (exit status {}){}; is the deploy finished (`chatmail-docker status`)?",
            out.code,
            if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            }
        );
    }
    let line = line.ok_or_else(|| anyhow!("the relay printed no DNS report"))?;
    serde_json::from_str(line).context("cannot read the relay's DNS report")
}

/// `chatmail-docker dns`.
pub fn run(ctx: &Context, opts: &DnsOptions) -> Result<()> {
    let r = report(ctx, opts.check)?;
    if let Some(path) = &opts.zonefile {
        if r.skipped.is_none() {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                std::env::current_dir()?.join(path)
            };
            if ctx.dry_run {
                ctx.shell
                    .out(format!("would write the zone to {}", path.display()));
            } else {
                host::write_atomic(&path, r.zone.as_bytes(), 0o644)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    if opts.json {
        ctx.shell.data(serde_json::to_string_pretty(&r)?);
    } else if let Some(why) = &r.skipped {
        ctx.shell.note(why.clone());
    } else {
        for note in &r.notes {
            ctx.shell.warn(note.clone());
        }
        if let (Some(path), false) = (&opts.zonefile, ctx.dry_run) {
            ctx.shell
                .status("Wrote", format!("the zone to {}", path.display()));
        }
        ctx.shell.data(format!(
            "; DNS records for {} (publish them at your DNS provider)",
            r.domain
        ));
        ctx.shell.data(r.zone.trim_end());
        if r.checked {
            ctx.shell.data(String::new());
            if r.required_missing.is_empty() {
                ctx.shell
                    .status("Checked", "every required record is published");
            } else {
                ctx.shell
                    .error("required records that are missing or wrong in DNS:");
                for l in &r.required_missing {
                    ctx.shell.data(format!("  {l}"));
                }
            }
            if !r.recommended_missing.is_empty() {
                ctx.shell
                    .warn("recommended records that are missing or wrong in DNS:");
                for l in &r.recommended_missing {
                    ctx.shell.data(format!("  {l}"));
                }
            }
        }
    }
    if r.checked && !r.required_missing.is_empty() {
        return Err(error::silent(error::EXIT_RUNTIME));
    }
    Ok(())
}
