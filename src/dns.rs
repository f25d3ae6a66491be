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
use std::path::{Path, PathBuf};

use crate::context::Context;
use crate::engine;
use crate::error;
use crate::host;
use crate::shell::{clean, Shown};

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
    engine::require_compose_file(ctx)?;
    if engine::container_id(ctx, engine::Containers::Running)?.is_none() {
        return Err(error::usage(
            "the appliance is not running: start it with `chatmail-docker setup` (the records need its DKIM key)",
        ));
    }
    let out = engine::exec_output(
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

/// The first line of every zone file `dns --zonefile` writes: it replaces
/// only a file that starts with it.
pub const ZONE_MARK: &str = "; written by chatmail-docker dns --zonefile";

/// The largest existing zone file read to check its mark.
const MAX_ZONE_BYTES: u64 = 1 << 20;

/// The zone file as written: the mark, then the relay's zone.
pub fn zone_file_text(r: &Report) -> String {
    format!(
        "{ZONE_MARK} (the DNS records of {}; rewritten on each run, do not edit)\n{}\n",
        r.domain.replace(['\n', '\r'], " "),
        r.zone.trim_end()
    )
}

/// Where `--zonefile` may write: nothing there yet (`None`), or a zone
/// file this command wrote before (its content, which must still be there
/// when it is replaced). Refused (usage error): a symlink at the path
/// (never followed), anything but a regular file, the deployment's `.env`
/// or `chatmail.ini` (by device and inode: hard links and links to them
/// count), and a file without [`ZONE_MARK`] on its first line.
pub fn zonefile_target(ctx: &Context, path: &Path) -> Result<Option<Vec<u8>>> {
    use rustix::fs::{FileType, Mode, OFlags};
    let bad = |what: String| error::usage(format!("--zonefile {}: {what}", path.shown()));
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err(bad(
            "is a symlink; --zonefile never writes through one: give the path of the file itself"
                .into(),
        )),
        Err(e) => return Err(bad(format!("cannot open it: {e}"))),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| bad(format!("cannot look at it: {e}")))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(bad(format!(
            "is a {}, not a zone file; give the path of a new file",
            host::kind_name(ft)
        )));
    }
    let id = host::FileId {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
    };
    for (name, own) in [
        (".env", ctx.deployment.env_file()),
        ("chatmail.ini", ctx.deployment.ini()),
    ] {
        if host::FileId::of(&own) == Some(id) {
            return Err(bad(format!(
                "is the deployment's {name} ({}); --zonefile writes zone files only: give the path of a new file",
                own.shown()
            )));
        }
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::from(fd), MAX_ZONE_BYTES + 1),
        &mut bytes,
    )
    .map_err(|e| bad(format!("cannot read it: {e}")))?;
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    if bytes.len() as u64 > MAX_ZONE_BYTES || !first.starts_with(ZONE_MARK.as_bytes()) {
        return Err(bad(format!(
            "exists and is no zone file this command wrote (its first line is not `{ZONE_MARK} ...`); it is left alone: give the path of a new file, or remove this one"
        )));
    }
    Ok(Some(bytes))
}

/// Terminal text of what the relay reported: each line with its control
/// characters escaped.
fn shown_lines(text: &str) -> String {
    text.lines().map(clean).collect::<Vec<_>>().join("\n")
}

/// `chatmail-docker dns`.
pub fn run(ctx: &Context, opts: &DnsOptions) -> Result<()> {
    let zonefile = match &opts.zonefile {
        Some(p) if p.is_absolute() => Some(p.clone()),
        Some(p) => Some(std::env::current_dir()?.join(p)),
        None => None,
    };
    // Checked before the relay is asked, and the file must still hold
    // this when it is replaced.
    let existing = match &zonefile {
        Some(p) => Some(zonefile_target(ctx, p)?),
        None => None,
    };
    let r = report(ctx, opts.check)?;
    if let (Some(path), Some(existing)) = (&zonefile, &existing) {
        if r.skipped.is_none() {
            if ctx.dry_run {
                ctx.shell
                    .out(format!("would write the zone to {}", path.display()));
            } else {
                host::write_atomic_with(
                    path,
                    zone_file_text(&r).as_bytes(),
                    0o644,
                    host::WriteOpts {
                        follow: false,
                        expect: Some(existing.as_deref()),
                    },
                )
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
        if let (Some(path), false) = (&zonefile, ctx.dry_run) {
            ctx.shell
                .status("Wrote", format!("the zone to {}", path.display()));
        }
        ctx.shell.data(format!(
            "; DNS records for {} (publish them at your DNS provider)",
            clean(&r.domain)
        ));
        ctx.shell.data(shown_lines(r.zone.trim_end()));
        if r.checked {
            ctx.shell.data(String::new());
            if r.required_missing.is_empty() {
                ctx.shell
                    .status("Checked", "every required record is published");
            } else {
                ctx.shell
                    .error("required records that are missing or wrong in DNS:");
                for l in &r.required_missing {
                    ctx.shell.data(format!("  {}", clean(l)));
                }
            }
            if !r.recommended_missing.is_empty() {
                ctx.shell
                    .warn("recommended records that are missing or wrong in DNS:");
                for l in &r.recommended_missing {
                    ctx.shell.data(format!("  {}", clean(l)));
                }
            }
        }
    }
    if r.checked && !r.required_missing.is_empty() {
        return Err(error::silent(error::EXIT_RUNTIME));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zone_file_starts_with_its_mark() {
        let r = Report {
            domain: "chat.example.org".into(),
            zone: "; Required DNS entries\nchat.example.org. 3600 IN MX 10 chat.example.org.\n"
                .into(),
            ..Default::default()
        };
        let text = zone_file_text(&r);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with(ZONE_MARK));
        assert_eq!(lines.next(), Some("; Required DNS entries"));
        assert!(text.ends_with("chat.example.org.\n"));
    }

    #[test]
    fn relay_values_reach_the_terminal_escaped() {
        assert_eq!(
            shown_lines("a. 3600 IN TXT \"\u{1b}]0;x\u{7}\"\nb. 3600 IN MX 10 b."),
            "a. 3600 IN TXT \"\\u{1b}]0;x\\u{7}\"\nb. 3600 IN MX 10 b."
        );
    }
}
