//! Deploy an image beside the running relay: a side container without
//! network runs the relay's `configure,activate` for this deployment's
//! settings, and what the deploy wrote becomes a new image (`docker
//! commit`). A container from that image finds its deploy done (the init's
//! fingerprint: image, chatmail.ini, mounted files) and starts its
//! services at once: the swap costs a restart, not a deploy.
//!
//! What the side container gets:
//! - the settings as Compose would pass them (`docker compose config`), in
//!   a file in its state directory that the init reads
//!   (`stage-env.json`), not as environment: nothing of `.env` ends up in
//!   the image's configuration;
//! - copies of the DKIM keys, the ACME state and the appliance's state
//!   (the self-signed certificate), empty mailboxes and an empty mail
//!   queue, so the running relay's mail is never touched;
//! - every other mount as the running relay has it (custom/ files, the
//!   certificate directories of `tls_external_cert_and_key`), read as they
//!   are configured.
//!
//! The copies are removed with the side container, whatever happens.
//!
//! A deployed image is labelled with what it was deployed for
//! ([`DEPLOYED_LABEL`]: a digest of the settings, the host's IPv6 and the
//! content of the mounted files, computed here the way the init's
//! fingerprint is in the container) and with the image it was deployed from
//! ([`FROM_LABEL`]), so the next deploy starts again from that one instead
//! of stacking layers. The digest only decides whether to deploy aside; the
//! init's own fingerprint still guards every start.

use anyhow::{bail, Context as _, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::engine::{self, Project};
use crate::{context::Context, error};

/// The label a deployed image carries: what it was deployed for.
pub const DEPLOYED_LABEL: &str = "org.chatmail-docker.deployed";
/// The label naming the image it was deployed from.
pub const FROM_LABEL: &str = "org.chatmail-docker.deployed-from";
/// The side container's name.
const NAME: &str = "chatmail-upgrade-stage";
/// Where the copies live while it runs, relative to the deployment.
pub const BESIDE_DIR: &str = "data/.upgrade-stage";

/// The persistent mounts: (target, what the side container gets).
const DATA: &[(&str, Seed)] = &[
    ("/etc/dkimkeys", Seed::Copy),
    ("/var/lib/acme", Seed::Copy),
    ("/var/lib/chatmail-docker", Seed::Copy),
    ("/home", Seed::Empty),
    ("/var/spool/postfix", Seed::Empty),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Seed {
    Copy,
    Empty,
}

/// An image label's value, when the image exists and has it.
fn label(ctx: &Context, image: &str, key: &str) -> Option<String> {
    let format = format!("{{{{index .Config.Labels \"{key}\"}}}}");
    engine::image_inspect(ctx, image, &format)
        .ok()
        .flatten()
        .filter(|v| !v.is_empty() && v != "<no value>")
}

/// Whether `image` is deployed for the current settings already.
pub fn is_current(ctx: &Context, image: &str) -> Result<bool> {
    let svc = service_config(ctx)?;
    let digest = settings_digest(&svc, host_has_ipv6(ctx));
    Ok(label(ctx, image, DEPLOYED_LABEL).as_deref() == Some(digest.as_str()))
}

/// Whether the container `c` runs with other settings than the ones
/// Compose gives it now (`.env` changed since it was created, for one by
/// a `setup` that was stopped after writing `.env`): its environment, less
/// what its image sets, against the service's. Unknown (Compose or the
/// image cannot be read) is `false`: the caller's other reasons decide.
pub fn settings_changed_since(ctx: &Context, c: &engine::Inspect) -> bool {
    let Ok(svc) = service_config(ctx) else {
        return false;
    };
    let want: std::collections::BTreeSet<String> = svc["environment"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
        .collect();
    let Some(Some(image_env)) = engine::image_inspect(ctx, &c.image, "{{json .Config.Env}}")
        .ok()
        .flatten()
        .map(|j| serde_json::from_str::<Vec<String>>(&j).ok())
    else {
        return false;
    };
    let has: std::collections::BTreeSet<String> = c
        .config
        .env
        .iter()
        .flatten()
        // Docker may add TERM for a container with a terminal.
        .filter(|e| want.contains(*e) || !(image_env.contains(e) || e.starts_with("TERM=")))
        .cloned()
        .collect();
    has != want
}

/// An image deployed for this deployment's current settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployed {
    /// Its ID (`sha256:...`).
    pub id: String,
    /// Whether it was made now (else `image` already was one).
    pub fresh: bool,
}

/// `image` deployed for the current settings: itself when it already is,
/// else a new image deployed in a side container from the image it was
/// deployed from (or from itself).
pub fn deployed(
    ctx: &Context,
    image: &str,
    timeout: Duration,
    interrupted: &dyn Fn() -> bool,
) -> Result<Deployed> {
    deployed_on(ctx, image, timeout, interrupted, Network::None)
}

/// The network a side container gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// None at all: the running relay's ports and peers are never touched.
    None,
    /// The host's, with the service's extra host names: only while no
    /// relay runs (the deploy starts services on the relay's ports), for a
    /// deploy that needs the network (the first ACME certificate).
    Host,
}

/// [`deployed`] with the side container on `network`.
pub fn deployed_on(
    ctx: &Context,
    image: &str,
    timeout: Duration,
    interrupted: &dyn Fn() -> bool,
    network: Network,
) -> Result<Deployed> {
    let svc = service_config(ctx)?;
    let ipv6 = host_has_ipv6(ctx);
    let digest = settings_digest(&svc, ipv6);
    let id =
        engine::image_id(ctx, image)?.with_context(|| format!("the image {image} is missing"))?;
    if label(ctx, &id, DEPLOYED_LABEL).as_deref() == Some(digest.as_str()) {
        return Ok(Deployed { id, fresh: false });
    }
    let source = label(ctx, &id, FROM_LABEL)
        .and_then(|from| engine::image_id(ctx, &from).ok().flatten())
        .unwrap_or(id);
    let id = deploy_aside(
        ctx,
        &svc,
        ipv6,
        &digest,
        &source,
        timeout,
        interrupted,
        network,
    )?;
    Ok(Deployed { id, fresh: true })
}

/// When a deploy beside the relay does not succeed, what happens next:
/// the one policy `setup` and `upgrade` share.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    /// A relay serves now: a configuration that fails beside it must not
    /// replace it.
    pub serving: bool,
    /// The relay takes ACME certificates: a deploy without network may
    /// fail only for want of it.
    pub acme: bool,
    /// What happens when the container deploys by itself instead, for the
    /// messages (`the container deploys the configuration by itself`).
    pub instead: &'a str,
}

/// Deploy `image` beside the relay and give the result the name `name`.
/// `Ok(Some(..))`: the image to run, deployed; `Ok(None)`: not deployed
/// beside the relay, the container deploys by itself (the image cannot be
/// deployed aside, or it failed where that may be the missing network or
/// no relay is at risk: said as a note or a warning). An interrupt is an
/// error with exit code 130 (nothing was named); a failure that would put
/// a configuration that does not deploy in place of a serving relay is an
/// error (the caller says what it left as it was).
pub fn deploy(
    ctx: &Context,
    image: &str,
    name: &str,
    timeout: Duration,
    interrupted: &dyn Fn() -> bool,
    network: Network,
    policy: Policy,
) -> Result<Option<Deployed>> {
    match deployed_on(ctx, image, timeout, interrupted, network) {
        Ok(d) => {
            if d.fresh {
                engine::image::tag_image(ctx, &d.id, name)?;
                // A deploy beside killed during its `docker commit` leaves
                // the daemon finishing that commit after the next command
                // looked for leftovers; a whole deploy later it has
                // finished, and what is still unnamed goes now.
                let gone = remove_unnamed_deployed(ctx);
                if gone > 0 {
                    ctx.shell.note(format!(
                        "removed {gone} deployed image(s) an earlier, stopped deploy beside the relay had not named"
                    ));
                }
            }
            Ok(Some(d))
        }
        Err(e)
            if crate::error::exit_code(&e) == crate::error::EXIT_INTERRUPTED || interrupted() =>
        {
            Err(crate::host::interrupt::interrupted(
                "interrupted while deploying beside the relay",
            ))
        }
        Err(e) if is_not_deployable_beside(&e) => {
            ctx.shell.note(format!("{e:#}; {}", policy.instead));
            Ok(None)
        }
        Err(e) if policy.serving && !policy.acme => Err(e),
        Err(e) if policy.acme => {
            ctx.shell.warn(format!(
                "the deploy beside the relay failed ({e:#}); with ACME certificates that can be the missing network, so {}",
                policy.instead
            ));
            Ok(None)
        }
        Err(e) => {
            ctx.shell.warn(format!(
                "the deploy beside the relay failed ({e:#}); {}",
                policy.instead
            ));
            Ok(None)
        }
    }
}

/// What a deploy depends on besides the image, as the tool sees it: the
/// settings Compose passes (with the host's IPv6), and the paths and
/// content of everything bind-mounted into the image's tree.
pub fn settings_digest(svc: &serde_json::Value, ipv6: bool) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&beside_env(svc, ipv6)).unwrap_or_default());
    let mut mounts: Vec<(&str, &str)> = svc["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"].as_str() == Some("bind"))
        .filter_map(|v| Some((v["target"].as_str()?, v["source"].as_str()?)))
        .filter(|(t, _)| !DATA.iter().any(|(d, _)| d == t) && !t.starts_with("/sys"))
        .collect();
    mounts.sort();
    for (target, source) in mounts {
        h.update(target.as_bytes());
        h.update(b"\0");
        for e in walkdir::WalkDir::new(source)
            .sort_by_file_name()
            .into_iter()
            .filter_map(|e| e.ok())
        {
            if !e.file_type().is_file() {
                continue;
            }
            // The path as the container sees it: below the target.
            let rel = e.path().strip_prefix(source).unwrap_or(e.path());
            h.update(rel.as_os_str().as_encoded_bytes());
            h.update(b"\0");
            match e.metadata() {
                Ok(m) if m.len() <= 1 << 20 => {
                    h.update(std::fs::read(e.path()).unwrap_or_default());
                }
                Ok(m) => {
                    use std::os::unix::fs::MetadataExt;
                    h.update(format!("{}:{}", m.len(), m.mtime_nsec()).as_bytes());
                }
                Err(_) => h.update(b"unreadable"),
            }
        }
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// The service as `docker compose config` resolves it.
fn service_config(ctx: &Context) -> Result<serde_json::Value> {
    let out = Project::new(ctx)
        .cmd(ctx, ["config", "--format", "json"])
        .output(&ctx.shell)?;
    if !out.success() {
        bail!(
            "docker compose cannot read the configuration: {}",
            out.stderr.trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).context("`docker compose config` is not JSON")?;
    Ok(v["services"][engine::SERVICE].clone())
}

/// Whether the host has IPv6 (as the init decides it in the container).
fn host_has_ipv6(ctx: &Context) -> bool {
    std::fs::read_to_string(ctx.host.path("/proc/net/if_inet6")).is_ok_and(|t| !t.trim().is_empty())
}

/// Removes the side container and the copies when dropped.
struct Cleanup<'a> {
    ctx: &'a Context,
    dir: PathBuf,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        remove_container(self.ctx);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Remove what a deploy beside the relay that was killed left: its side
/// container (still running, or stopped) and the copies of the keys in
/// [`BESIDE_DIR`]. Said as a note; returns whether there was any.
pub fn remove_leftovers(ctx: &Context) -> bool {
    let dir = ctx.deployment.path(BESIDE_DIR);
    let container = ctx
        .host
        .cmd(
            "docker",
            [
                "ps",
                "--all",
                "--quiet",
                "--filter",
                &format!("name=^{NAME}$"),
            ],
        )
        .output(&ctx.shell)
        .is_ok_and(|o| o.success() && !o.stdout.trim().is_empty());
    let copies = std::fs::symlink_metadata(&dir).is_ok();
    if !container && !copies {
        return false;
    }
    // Only what that deploy left: an image it committed but had not named.
    let images = remove_unnamed_deployed(ctx);
    if container {
        remove_container(ctx);
    }
    if copies {
        let _ = std::fs::remove_dir_all(&dir);
    }
    ctx.shell.note(format!(
        "removed what a deploy beside the relay that was stopped left ({})",
        [
            container.then(|| format!("the side container {NAME}")),
            copies.then(|| dir.display().to_string()),
            (images > 0).then(|| format!("{images} deployed image(s) it had not named yet")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
    ));
    true
}

/// Deployed images without a name: what a deploy beside the relay stopped
/// between committing its result and naming it left. Looked for when such
/// a stopped deploy is found, and after each deploy that named its own
/// image. One a container still uses is left (Docker refuses to remove
/// it). How many went.
fn remove_unnamed_deployed(ctx: &Context) -> usize {
    let label = format!("label={DEPLOYED_LABEL}");
    let Ok(out) = ctx
        .host
        .cmd(
            "docker",
            [
                "images",
                "--quiet",
                "--no-trunc",
                "--filter",
                "dangling=true",
                "--filter",
                label.as_str(),
            ],
        )
        .output(&ctx.shell)
    else {
        return 0;
    };
    if !out.success() {
        return 0;
    }
    out.stdout
        .lines()
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .filter(|id| engine::image::remove(ctx, id).is_ok())
        .count()
}

fn remove_container(ctx: &Context) {
    let _ = ctx
        .host
        .cmd("docker", ["rm", "--force", "--volumes", NAME])
        .output(&ctx.shell);
}

fn docker(ctx: &Context, args: &[&str]) -> Result<String> {
    let cmd = ctx.host.cmd("docker", args.iter().copied());
    let out = cmd.output(&ctx.shell)?;
    if !out.success() {
        bail!("`{}` failed: {}", cmd.display(), out.stderr.trim());
    }
    Ok(out.stdout.trim().to_string())
}

/// `cp -a` of a directory's content (owners, modes, links kept).
fn copy_tree(ctx: &Context, from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    if !from.is_dir() {
        return Ok(());
    }
    let mut src = from.as_os_str().to_owned();
    src.push("/.");
    let cmd = ctx.host.cmd("cp", ["-a"]).arg(src).arg(to);
    let out = cmd.output(&ctx.shell)?;
    if !out.success() {
        bail!("copying {} failed: {}", from.display(), out.stderr.trim());
    }
    Ok(())
}

/// The settings file the init reads in the side container.
fn beside_env(svc: &serde_json::Value, ipv6: bool) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = svc["environment"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    env.insert(
        "CHATMAIL_HOST_IPV6".into(),
        if ipv6 { "true" } else { "false" }.into(),
    );
    env.insert("CHATMAIL_SKIP_DNS_CHECK".into(), "true".into());
    env.insert("CHATMAIL_FORCE_DEPLOY".into(), "true".into());
    env
}

/// Make the directories of `copy` that `live` lacks, with their modes and
/// owners; files are left out (a queue's pid files and sockets belong to
/// the side container).
fn give_back_dirs(copy: &Path, live: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for e in walkdir::WalkDir::new(copy)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if !e.file_type().is_dir() {
            continue;
        }
        let Ok(rel) = e.path().strip_prefix(copy) else {
            continue;
        };
        let target = live.join(rel);
        if std::fs::symlink_metadata(&target).is_ok() {
            continue;
        }
        let m = e.metadata()?;
        std::fs::create_dir(&target).with_context(|| format!("creating {}", target.display()))?;
        std::os::unix::fs::chown(&target, Some(m.uid()), Some(m.gid()))
            .with_context(|| format!("setting the owner of {}", target.display()))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(m.mode() & 0o7777))
            .with_context(|| format!("setting the mode of {}", target.display()))?;
    }
    Ok(())
}

/// Why a configuration cannot be deployed in a side container (not a
/// failure of the deploy: the container then deploys by itself).
#[derive(Debug)]
pub struct NotDeployableBeside(pub String);

impl std::fmt::Display for NotDeployableBeside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotDeployableBeside {}

/// Whether `err` says the configuration cannot be deployed aside.
pub fn is_not_deployable_beside(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|c| c.downcast_ref::<NotDeployableBeside>().is_some())
}

/// What a side container could not reproduce faithfully or safely:
/// mounts other than binds, read-write binds outside the persistent state
/// (the side container would write where the relay does), and container
/// settings from an override the side container does not get.
fn check_deployable_beside(
    svc: &serde_json::Value,
) -> std::result::Result<(), NotDeployableBeside> {
    for key in ["cap_add", "devices", "sysctls", "privileged"] {
        let v = &svc[key];
        let set = match v {
            serde_json::Value::Null => false,
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::Object(o) => !o.is_empty(),
            _ => true,
        };
        if set {
            return Err(NotDeployableBeside(format!(
                "the service sets `{key}` (an override): a side container would not have it"
            )));
        }
    }
    // The seccomp profile (docker/docker-compose.yaml's own) goes to the
    // side container too; other security options are an override's.
    for opt in svc["security_opt"].as_array().into_iter().flatten() {
        let opt = opt.as_str().unwrap_or("");
        if !opt.starts_with("seccomp=") {
            return Err(NotDeployableBeside(format!(
                "the service sets `security_opt: {opt}` (an override): a side container would not have it"
            )));
        }
    }
    for v in svc["volumes"].as_array().into_iter().flatten() {
        let kind = v["type"].as_str().unwrap_or("");
        let target = v["target"].as_str().unwrap_or("");
        let source = v["source"].as_str().unwrap_or("");
        let in_data = DATA.iter().any(|(t, _)| {
            target == *t || target.strip_prefix(t).is_some_and(|r| r.starts_with('/'))
        });
        if in_data || target.starts_with("/sys/") || target == "/sys" {
            continue;
        }
        if kind != "bind" {
            return Err(NotDeployableBeside(format!(
                "the {kind} mount at {target} (an override) cannot be given to a side container"
            )));
        }
        if !v["read_only"].as_bool().unwrap_or(false) {
            return Err(NotDeployableBeside(format!(
                "{source} is mounted read-write at {target} (an override): a side container would write there too"
            )));
        }
        if source.contains(',') || target.contains(',') {
            return Err(NotDeployableBeside(format!(
                "the mount {source} -> {target} has a comma in a path"
            )));
        }
    }
    Ok(())
}

/// `--security-opt seccomp=...` as the service has it, a relative profile
/// path resolved against the deployment directory as Compose does.
fn seccomp_args(ctx: &Context, svc: &serde_json::Value) -> Vec<String> {
    let mut args = Vec::new();
    for opt in svc["security_opt"].as_array().into_iter().flatten() {
        let Some(profile) = opt.as_str().and_then(|o| o.strip_prefix("seccomp=")) else {
            continue;
        };
        let value = if profile == "unconfined" || Path::new(profile).is_absolute() {
            profile.to_string()
        } else {
            ctx.deployment.path(profile).display().to_string()
        };
        args.push("--security-opt".into());
        args.push(format!("seccomp={value}"));
    }
    args
}

/// Deploy `image` in a side container; returns the deployed image's ID.
/// `interrupted` is asked while waiting: a true answer stops it.
#[allow(clippy::too_many_arguments)]
fn deploy_aside(
    ctx: &Context,
    svc: &serde_json::Value,
    ipv6: bool,
    digest: &str,
    image: &str,
    timeout: Duration,
    interrupted: &dyn Fn() -> bool,
    network: Network,
) -> Result<String> {
    check_deployable_beside(svc)?;
    let dir = ctx.deployment.path(BESIDE_DIR);
    remove_container(ctx);
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = Cleanup {
        ctx,
        dir: dir.clone(),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(
        &dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
    )?;
    let mut args = run_args(ctx, svc, ipv6, network);
    let mounts = mounts(ctx, svc, &dir)?;
    args.extend(mounts.args);
    let env = beside_env(svc, ipv6);
    crate::host::write_atomic(
        &mounts.state.join("stage-env.json"),
        &serde_json::to_vec(&env)?,
        0o600,
    )?;
    args.push(image.to_string());
    docker(ctx, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    wait_healthy(ctx, timeout, interrupted)?;
    docker(ctx, &["stop", "--time", "60", NAME])?;
    let _ = std::fs::remove_file(mounts.state.join("stage-env.json"));
    give_back(ctx, &mounts.give_back)?;
    docker(
        ctx,
        &[
            "commit",
            "--change",
            &format!("LABEL {DEPLOYED_LABEL}={digest} {FROM_LABEL}={image}"),
            NAME,
        ],
    )
}

/// `docker run` for the side container, up to its mounts: no network (or
/// the host's), the service's tmpfs mounts and seccomp profile.
fn run_args(ctx: &Context, svc: &serde_json::Value, ipv6: bool, network: Network) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--detach",
        "--name",
        NAME,
        "--network",
        match network {
            Network::None => "none",
            Network::Host => "host",
        },
        "--cgroupns",
        "host",
        "--tty",
        "--stop-signal",
        "SIGRTMIN+3",
        // Its health check every second, not every 3 s as for the relay
        // (which runs for months): the end of the deploy is seen about a
        // second sooner, for a check that costs little against the deploy.
        "--health-interval",
        "1s",
    ]
    .map(String::from)
    .to_vec();
    if network == Network::Host {
        for h in svc["extra_hosts"].as_array().into_iter().flatten() {
            if let Some(h) = h.as_str() {
                args.push("--add-host".into());
                args.push(h.replacen('=', ":", 1));
            }
        }
    } else if ipv6 {
        // Docker gives a container without network no IPv6, not even ::1,
        // where the relay's resolver listens when the host has IPv6.
        for key in ["all", "lo"] {
            args.push("--sysctl".into());
            args.push(format!("net.ipv6.conf.{key}.disable_ipv6=0"));
        }
    }
    for t in svc["tmpfs"].as_array().into_iter().flatten() {
        if let Some(t) = t.as_str() {
            args.push("--tmpfs".into());
            args.push(t.to_string());
        }
    }
    args.extend(seccomp_args(ctx, svc));
    args
}

/// The side container's mounts: the service's, with copies in `dir` in
/// place of the state.
struct Mounts {
    args: Vec<String>,
    /// Copy, the live source it stands for, how it was seeded.
    give_back: Vec<(PathBuf, PathBuf, Seed)>,
    /// The copy of the tool's state directory.
    state: PathBuf,
}

fn mounts(ctx: &Context, svc: &serde_json::Value, dir: &Path) -> Result<Mounts> {
    let mut args = Vec::new();
    let mut seeded = Vec::new();
    // State the deploy creates when it is missing (the self-signed
    // certificate, the DKIM key of a new relay): copied back afterwards.
    // The directories it makes in the mail queue and below /home (Postfix
    // and OpenDKIM's socket directories) too, without their content.
    let mut give_back: Vec<(PathBuf, PathBuf, Seed)> = Vec::new();
    for v in svc["volumes"].as_array().into_iter().flatten() {
        let target = v["target"].as_str().unwrap_or("");
        let source = v["source"].as_str().unwrap_or("");
        let read_only = v["read_only"].as_bool().unwrap_or(false);
        // A data mount, or one inside a data mount (the host's own
        // /home/vmail after a migration in place): never the real thing.
        let data = DATA.iter().find(|(t, _)| {
            target == *t || target.strip_prefix(t).is_some_and(|r| r.starts_with('/'))
        });
        if let Some((t, seed)) = data {
            let seed = if target == *t { *seed } else { Seed::Empty };
            let copy = dir.join(target.trim_start_matches('/').replace('/', "-"));
            match seed {
                Seed::Copy => copy_tree(ctx, Path::new(source), &copy)?,
                Seed::Empty => std::fs::create_dir_all(&copy)?,
            }
            args.push("--mount".into());
            args.push(format!(
                "type=bind,source={},target={target}",
                copy.display()
            ));
            seeded.push((target, copy.clone()));
            give_back.push((copy, PathBuf::from(source), seed));
            continue;
        }
        args.push("--mount".into());
        args.push(format!(
            "type=bind,source={source},target={target}{}",
            if read_only { ",readonly" } else { "" }
        ));
    }
    let state = seeded
        .iter()
        .find(|(t, _)| *t == "/var/lib/chatmail-docker")
        .map(|(_, p)| p.clone())
        .context("the compose file mounts no state directory at /var/lib/chatmail-docker")?;
    Ok(Mounts {
        args,
        give_back,
        state,
    })
}

/// Until the side container's health check passes, or its init failed.
fn wait_healthy(ctx: &Context, timeout: Duration, interrupted: &dyn Fn() -> bool) -> Result<()> {
    let start = Instant::now();
    let mut failed_since: Option<Instant> = None;
    loop {
        let c = engine::inspect(ctx, NAME)?;
        if !c.state.running {
            bail!(
                "the side container stopped (exit code {})",
                c.state.exit_code
            );
        }
        if let Some(reason) = c.init_failure() {
            return Err(init_failed(ctx, &reason));
        }
        // A unit still failed 45 s after the deploy finished does not
        // recover by waiting (the start period would hide it for minutes).
        match c.last_health_output().filter(|o| o.contains("(failed)")) {
            Some(out) => {
                let since = *failed_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(45) {
                    bail!("in the side container, after the deploy: {}", out.trim());
                }
            }
            None => failed_since = None,
        }
        match c.health_status() {
            Some("healthy") => return Ok(()),
            Some("unhealthy") => bail!(
                "the side container is unhealthy: {}",
                c.last_health_output().unwrap_or_default()
            ),
            _ => {}
        }
        if interrupted() {
            return Err(crate::host::interrupt::interrupted(
                "interrupted while deploying beside the relay",
            ));
        }
        if start.elapsed() >= timeout {
            bail!(
                "the side container did not become healthy within {}s",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The init's failure `reason`, with the side container's last log lines.
fn init_failed(ctx: &Context, reason: &str) -> anyhow::Error {
    let logs = ctx
        .host
        .cmd("docker", ["logs", "--tail", "25", NAME])
        .output(&ctx.shell)
        .map(|o| format!("{}{}", o.stdout, o.stderr))
        .unwrap_or_default();
    error::Failure {
        code: error::EXIT_RUNTIME,
        message: Some(format!(
            "{reason}\nlast log lines of the side container:\n{}",
            logs.lines()
                .map(|l| format!("  | {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )),
    }
    .into()
}

/// What the deploy made that the relay does not have yet: the image just
/// deployed relies on it (its deploy is done). Existing files are never
/// replaced.
fn give_back(ctx: &Context, copies: &[(PathBuf, PathBuf, Seed)]) -> Result<()> {
    for (copy, source, seed) in copies {
        std::fs::create_dir_all(source)
            .with_context(|| format!("creating {}", source.display()))?;
        if *seed == Seed::Empty {
            give_back_dirs(copy, source)?;
            continue;
        }
        let mut from = copy.as_os_str().to_owned();
        from.push("/.");
        let cmd = ctx
            .host
            .cmd("cp", ["-a", "--no-clobber"])
            .arg(from)
            .arg(source);
        let out = cmd.output(&ctx.shell)?;
        if !out.success() {
            bail!(
                "keeping what the deploy made in {} failed: {}",
                source.display(),
                out.stderr.trim()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_follows_settings_and_mounted_files_not_state() {
        let d = tempfile::tempdir().unwrap();
        crate::host::write_tree(d.path(), &[("custom/index.md", "one")]);
        let custom = d.path().join("custom");
        let svc = |domain: &str| {
            serde_json::json!({
                "environment": {"MAIL_DOMAIN": domain},
                "volumes": [
                    {"type": "bind", "source": custom.to_str().unwrap(), "target": "/opt/chatmail/www/src"},
                    {"type": "bind", "source": d.path().to_str().unwrap(), "target": "/home"},
                    {"type": "bind", "source": "/sys/fs/cgroup", "target": "/sys/fs/cgroup"}
                ]
            })
        };
        let first = settings_digest(&svc("a.example"), true);
        assert_eq!(first.len(), 16);
        assert_eq!(settings_digest(&svc("a.example"), true), first);
        assert_ne!(settings_digest(&svc("b.example"), true), first);
        assert_ne!(settings_digest(&svc("a.example"), false), first);
        // Mail under /home is state, not settings.
        std::fs::write(d.path().join("mail"), "x").unwrap();
        assert_eq!(settings_digest(&svc("a.example"), true), first);
        std::fs::write(custom.join("index.md"), "two").unwrap();
        assert_ne!(settings_digest(&svc("a.example"), true), first);
    }

    #[test]
    fn what_a_side_container_cannot_reproduce_is_said() {
        let with = |volumes: serde_json::Value, extra: serde_json::Value| {
            let mut svc = serde_json::json!({"volumes": volumes});
            if let (Some(o), Some(e)) = (svc.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            check_deployable_beside(&svc).map_err(|e| e.0)
        };
        let data = serde_json::json!([
            {"type": "bind", "source": "/d/data/chatmail", "target": "/home"},
            {"type": "bind", "source": "/home/vmail", "target": "/home/vmail"},
            {"type": "bind", "source": "/sys/fs/cgroup", "target": "/sys/fs/cgroup"},
            {"type": "bind", "source": "/d/custom/x", "target": "/etc/x", "read_only": true}
        ]);
        assert!(with(data, serde_json::json!({})).is_ok());
        let rw = with(
            serde_json::json!([{"type": "bind", "source": "/srv/logs", "target": "/var/log/mail"}]),
            serde_json::json!({}),
        );
        assert!(rw.unwrap_err().contains("/srv/logs is mounted read-write"));
        let vol = with(
            serde_json::json!([{"type": "volume", "source": "v", "target": "/x"}]),
            serde_json::json!({}),
        );
        assert!(vol.unwrap_err().contains("the volume mount at /x"));
        let caps = with(
            serde_json::json!([]),
            serde_json::json!({"cap_add": ["NET_ADMIN"]}),
        );
        assert!(caps.unwrap_err().contains("`cap_add`"));
        assert!(with(
            serde_json::json!([]),
            serde_json::json!({"privileged": false})
        )
        .is_ok());
        // The compose file's seccomp profile goes along; any other
        // security option is an override's.
        assert!(with(
            serde_json::json!([]),
            serde_json::json!({"security_opt": ["seccomp=docker/seccomp.json"]})
        )
        .is_ok());
        let apparmor = with(
            serde_json::json!([]),
            serde_json::json!({"security_opt": ["seccomp=docker/seccomp.json", "apparmor=unconfined"]}),
        );
        assert!(apparmor.unwrap_err().contains("apparmor=unconfined"));
    }

    #[test]
    fn the_side_container_gets_the_seccomp_profile_of_the_deployment() {
        let d = tempfile::tempdir().unwrap();
        let ctx = crate::context::Context::quiet(d.path(), d.path());
        let svc = serde_json::json!({"security_opt": [
            "seccomp=docker/seccomp.json", "seccomp=/etc/x.json", "seccomp=unconfined"
        ]});
        assert_eq!(
            seccomp_args(&ctx, &svc),
            vec![
                "--security-opt".to_string(),
                format!("seccomp={}", d.path().join("docker/seccomp.json").display()),
                "--security-opt".to_string(),
                "seccomp=/etc/x.json".to_string(),
                "--security-opt".to_string(),
                "seccomp=unconfined".to_string(),
            ]
        );
        assert!(seccomp_args(&ctx, &serde_json::json!({})).is_empty());
    }

    #[test]
    fn directories_are_given_back_without_content_and_never_over_existing_ones() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (copy, live) = (d.path().join("copy"), d.path().join("live"));
        std::fs::create_dir_all(copy.join("opendkim")).unwrap();
        std::fs::set_permissions(
            copy.join("opendkim"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::fs::create_dir_all(copy.join("pid")).unwrap();
        std::fs::write(copy.join("pid/master.pid"), "42").unwrap();
        std::fs::create_dir_all(live.join("pid")).unwrap();
        std::fs::set_permissions(live.join("pid"), std::fs::Permissions::from_mode(0o700)).unwrap();
        give_back_dirs(&copy, &live).unwrap();
        let m = std::fs::metadata(live.join("opendkim")).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o7777, 0o750);
        assert!(!live.join("pid/master.pid").exists(), "no files");
        let p = std::fs::metadata(live.join("pid")).unwrap();
        assert_eq!(
            p.permissions().mode() & 0o7777,
            0o700,
            "existing ones untouched"
        );
    }

    #[test]
    fn the_settings_are_composes_with_the_hosts_ipv6_and_no_dns_check() {
        let svc = serde_json::json!({"environment": {
            "MAIL_DOMAIN": "chat.example.org", "EMPTY": "", "UNSET": null
        }});
        let env = beside_env(&svc, false);
        assert_eq!(env["MAIL_DOMAIN"], "chat.example.org");
        assert_eq!(env["EMPTY"], "");
        assert!(!env.contains_key("UNSET"));
        assert_eq!(env["CHATMAIL_HOST_IPV6"], "false");
        assert_eq!(env["CHATMAIL_SKIP_DNS_CHECK"], "true");
        assert_eq!(env["CHATMAIL_FORCE_DEPLOY"], "true");
        assert_eq!(beside_env(&svc, true)["CHATMAIL_HOST_IPV6"], "true");
    }
}
