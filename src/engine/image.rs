//! Images: the names the service's image has, what `docker image inspect`
//! says of one, their names (tags), removal, and the restore points an
//! upgrade keeps (`<image>-relay-<commit>`).

use anyhow::Result;
use serde::Serialize;

use super::build::{COMMIT_LABEL, VERSION_LABEL};
use super::Project;
use crate::{context::Context, error};

/// The first 12 characters of a commit.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// The image names the compose files give the services (`config --images`).
pub fn image_names(ctx: &Context) -> Result<Vec<String>> {
    let out = Project::new(ctx)
        .cmd(ctx, ["config", "--images"])
        .output(&ctx.shell)?;
    if !out.success() {
        return Err(error::usage(format!(
            "docker compose cannot read the configuration: {}",
            out.stderr.trim()
        )));
    }
    Ok(out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// `docker image inspect --format FORMAT image`, trimmed; None when the
/// image does not exist.
pub fn image_inspect(ctx: &Context, image: &str, format: &str) -> Result<Option<String>> {
    let out = ctx
        .host
        .cmd("docker", ["image", "inspect", "--format", format, image])
        .output(&ctx.shell)?;
    Ok(out.success().then(|| out.stdout.trim().to_string()))
}

/// The ID of the image `name` (`sha256:...`), or None when there is none.
pub fn image_id(ctx: &Context, name: &str) -> Result<Option<String>> {
    image_inspect(ctx, name, "{{.Id}}")
}

/// The relay a checkout position or an image stands for.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Release {
    pub commit: String,
    pub version: String,
}

/// The relay commit and version an image was built from (its labels).
pub fn image_release(ctx: &Context, image: &str) -> Option<Release> {
    let out = image_inspect(ctx, image, "{{json .Config.Labels}}").ok()??;
    let labels: std::collections::BTreeMap<String, String> = serde_json::from_str(&out).ok()?;
    let commit = labels
        .get(COMMIT_LABEL)
        .filter(|c| c.as_str() != "unknown")?;
    Some(Release {
        commit: commit.clone(),
        version: labels
            .get(VERSION_LABEL)
            .filter(|v| v.as_str() != "unknown")
            .cloned()
            .unwrap_or_else(|| short(commit).to_string()),
    })
}

/// The size of an image in bytes.
pub fn image_size(ctx: &Context, image: &str) -> Option<i64> {
    image_inspect(ctx, image, "{{.Size}}").ok()??.parse().ok()
}

/// `repo:tag` -> `repo:tag-relay-COMMIT`: the restore point's name.
pub fn restore_tag(image: &str, commit: &str) -> String {
    let (repo, tag) = split_image(image);
    format!("{repo}:{tag}-relay-{}", short(commit))
}

/// `repo:tag` (a `:` after the last `/`), `repo` alone meaning `latest`.
pub fn split_image(image: &str) -> (&str, &str) {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (&image[..slash + i], &image[slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// Give image `from` the name `to` as well.
pub fn tag_image(ctx: &Context, from: &str, to: &str) -> Result<()> {
    let out = ctx
        .host
        .cmd("docker", ["image", "tag", from, to])
        .output(&ctx.shell)?;
    if !out.success() {
        anyhow::bail!(
            "`docker image tag {from} {to}` failed: {}",
            out.stderr.trim()
        );
    }
    Ok(())
}

/// Remove the image (or name) `image`; what Docker says when it refuses
/// (a container uses it) is the error.
pub fn remove(ctx: &Context, image: &str) -> Result<()> {
    let out = ctx
        .host
        .cmd("docker", ["image", "rm", image])
        .output(&ctx.shell)?;
    if !out.success() {
        anyhow::bail!("{}", out.stderr.trim());
    }
    Ok(())
}

/// Remove the restore points of earlier upgrades: keep the image that runs
/// and the one before it.
pub fn prune_restore_points(ctx: &Context, image: &str, running_id: &str, keep_tag: Option<&str>) {
    let (repo, tag) = split_image(image);
    let prefix = format!("{tag}-relay-");
    let Ok(out) = ctx
        .host
        .cmd(
            "docker",
            [
                "image",
                "ls",
                "--no-trunc",
                "--format",
                "{{.Tag}} {{.ID}}",
                repo,
            ],
        )
        .output(&ctx.shell)
    else {
        return;
    };
    for name in to_prune(&out.stdout, repo, &prefix, running_id, keep_tag) {
        match remove(ctx, &name) {
            Ok(()) => ctx
                .shell
                .status("Removed", format!("the older restore point {name}")),
            Err(e) => ctx.shell.verbose(format!("kept {name}: {e:#}")),
        }
    }
}

/// The restore points (`repo:PREFIX...` in `docker image ls` lines of
/// `TAG ID`) that are neither the running image nor the one kept.
pub fn to_prune(
    listing: &str,
    repo: &str,
    prefix: &str,
    running_id: &str,
    keep_tag: Option<&str>,
) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.trim().split_once(' '))
        .filter(|(t, id)| {
            t.starts_with(prefix)
                && *id != running_id
                && Some(format!("{repo}:{t}").as_str()) != keep_tag
        })
        .map(|(t, _)| format!("{repo}:{t}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_points_are_named_after_the_image_and_commit() {
        let c = "48ad92bf24426ef737deded1c0d87438a4b18dab";
        assert_eq!(
            restore_tag("chatmail-relay:local", c),
            "chatmail-relay:local-relay-48ad92bf2442"
        );
        assert_eq!(
            restore_tag("registry:5000/team/relay", c),
            "registry:5000/team/relay:latest-relay-48ad92bf2442"
        );
    }

    #[test]
    fn pruning_keeps_the_running_image_and_the_one_before() {
        let listing = "local sha256:new\n\
                       local-relay-aaaaaaaaaaaa sha256:a\n\
                       local-relay-bbbbbbbbbbbb sha256:b\n\
                       local-relay-cccccccccccc sha256:new\n\
                       e2e-relay-dddddddddddd sha256:d\n";
        let gone = to_prune(
            listing,
            "chatmail-relay",
            "local-relay-",
            "sha256:new",
            Some("chatmail-relay:local-relay-bbbbbbbbbbbb"),
        );
        assert_eq!(gone, vec!["chatmail-relay:local-relay-aaaaaaaaaaaa"]);
    }
}
