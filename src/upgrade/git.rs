//! The relay checkout (`relay/`) as git sees it: where it is, whether it
//! has local edits, its remote, the release tags, moving it to a commit
//! and back. Every call is a `git` command through the host seam.

use anyhow::Result;
use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::Cmd;
use crate::shell::Shown;
use crate::{context::Context, error};

/// How long a `git fetch` may take before it counts as "no network".
const FETCH_LIMIT: Duration = Duration::from_secs(120);

/// Where a checkout stands: its commit and, unless detached, its branch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub commit: String,
    pub branch: Option<String>,
}

/// A release version from a tag: `1.12.0`, `v1.2` (numbers only; a tag
/// with a suffix such as `-rc1` is no release).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseTag {
    pub tag: String,
    pub numbers: Vec<u64>,
}

impl ReleaseTag {
    pub fn parse(tag: &str) -> Option<ReleaseTag> {
        let v = tag.strip_prefix('v').unwrap_or(tag);
        let numbers: Option<Vec<u64>> = v
            .split('.')
            .map(|p| {
                (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| p.parse().ok())
                    .flatten()
            })
            .collect();
        let numbers = numbers?;
        (numbers.len() >= 2).then(|| ReleaseTag {
            tag: tag.to_string(),
            numbers,
        })
    }

    fn cmp_version(&self, other: &ReleaseTag) -> Ordering {
        let n = self.numbers.len().max(other.numbers.len());
        for i in 0..n {
            let (a, b) = (
                self.numbers.get(i).copied().unwrap_or(0),
                other.numbers.get(i).copied().unwrap_or(0),
            );
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        // `v1.2` and `1.2`: the plain one first, for a stable order.
        other.tag.len().cmp(&self.tag.len())
    }
}

/// The newest release among tag names.
pub fn newest_release<'a>(tags: impl IntoIterator<Item = &'a str>) -> Option<ReleaseTag> {
    tags.into_iter()
        .filter_map(ReleaseTag::parse)
        .max_by(|a, b| a.cmp_version(b))
}

/// The relay checkout.
pub struct Checkout<'a> {
    ctx: &'a Context,
    pub dir: PathBuf,
}

impl<'a> Checkout<'a> {
    /// The checkout at `dir`; an error says how to get one when it is not.
    pub fn open(ctx: &'a Context, dir: &Path) -> Result<Checkout<'a>> {
        if !dir.is_dir() {
            return Err(error::usage(format!(
                "the relay source {} is missing; get it with:\n  git clone https://github.com/chatmail/relay {}",
                dir.display(),
                dir.display()
            )));
        }
        let c = Checkout {
            ctx,
            dir: dir.to_path_buf(),
        };
        let top = c.git(["rev-parse", "--show-toplevel"]).output(&ctx.shell)?;
        let is_own_repo = top.success()
            && std::fs::canonicalize(top.stdout.trim()).ok() == std::fs::canonicalize(dir).ok();
        if !is_own_repo {
            return Err(error::usage(format!(
                "{} is not a git checkout of the relay, so there is nothing to upgrade from; replace it with a clone:\n  git clone https://github.com/chatmail/relay {}",
                dir.display(),
                dir.display()
            )));
        }
        Ok(c)
    }

    fn git<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        self.ctx
            .host
            .cmd("git", ["-c", "advice.detachedHead=false"])
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .dir(&self.dir)
    }

    /// Run git; its stdout, or an error with what it printed.
    fn run<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString>,
    {
        let cmd = self.git(args);
        let out = cmd.output(&self.ctx.shell)?;
        if !out.success() {
            anyhow::bail!(
                "`{}` in {} failed: {}",
                cmd.display(),
                self.dir.display(),
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }

    pub fn position(&self) -> Result<Position> {
        let commit = self.run(["rev-parse", "--verify", "HEAD^{commit}"])?;
        let branch = self
            .git(["symbolic-ref", "--quiet", "--short", "HEAD"])
            .output(&self.ctx.shell)?;
        Ok(Position {
            commit: commit.trim().to_string(),
            branch: branch
                .success()
                .then(|| branch.stdout.trim().to_string())
                .filter(|b| !b.is_empty()),
        })
    }

    /// Local edits: modified, staged or untracked files (ignored ones do
    /// not count), as `git status --porcelain` lists them.
    pub fn local_edits(&self) -> Result<Vec<String>> {
        Ok(self
            .run(["status", "--porcelain", "--untracked-files=normal"])?
            .lines()
            .map(|l| l.to_string())
            .filter(|l| !l.trim().is_empty())
            .collect())
    }

    /// The remote to fetch from: the current branch's, else `origin`.
    pub fn remote(&self) -> Result<String> {
        let upstream = self
            .git([
                "rev-parse",
                "--abbrev-ref",
                "--symbolic-full-name",
                "@{upstream}",
            ])
            .output(&self.ctx.shell)?;
        let remotes = self.run(["remote"])?;
        let remotes: Vec<&str> = remotes.lines().map(str::trim).collect();
        if upstream.success() {
            if let Some((remote, _)) = upstream.stdout.trim().split_once('/') {
                if remotes.contains(&remote) {
                    return Ok(remote.to_string());
                }
            }
        }
        if remotes.contains(&"origin") {
            return Ok("origin".into());
        }
        match remotes.as_slice() {
            [one] if !one.is_empty() => Ok(one.to_string()),
            _ => Err(error::usage(format!(
                "{} has no remote to fetch releases from; add the relay's:\n  git -C {} remote add origin https://github.com/chatmail/relay",
                self.dir.display(),
                self.dir.display()
            ))),
        }
    }

    pub fn remote_url(&self, remote: &str) -> String {
        self.run(["remote", "get-url", remote])
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| remote.to_string())
    }

    /// `git fetch --tags REMOTE`: new commits and tags; a clear error when
    /// the remote cannot be reached (nothing changes then).
    pub fn fetch(&self, remote: &str) -> Result<()> {
        let cmd = self.git(["fetch", "--quiet", "--tags", "--force", remote]);
        match cmd.output_within(&self.ctx.shell, FETCH_LIMIT)? {
            Some(out) if out.success() => Ok(()),
            Some(out) => Err(error::Failure {
                code: error::EXIT_RUNTIME,
                message: Some(format!(
                    "cannot fetch the relay's releases from {remote} ({}): {}\nnothing was changed; check the network, or upgrade to a commit that is already here with --ref COMMIT --no-fetch",
                    self.remote_url(remote),
                    out.stderr.trim()
                )),
            }
            .into()),
            None => Err(error::Failure {
                code: error::EXIT_RUNTIME,
                message: Some(format!(
                    "fetching from {remote} ({}) took longer than {}s; nothing was changed; check the network",
                    self.remote_url(remote),
                    FETCH_LIMIT.as_secs()
                )),
            }
            .into()),
        }
    }

    /// Every tag name.
    pub fn tags(&self) -> Result<Vec<String>> {
        Ok(self
            .run(["tag", "--list"])?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The commit `full` (a whole ref name such as `refs/tags/1.12.0`)
    /// points at, when that ref exists exactly (no `~`, `^` or other
    /// revision syntax is applied to it) and leads to a commit.
    fn exact_ref(&self, full: &str) -> Result<Option<String>> {
        if !self
            .git(["check-ref-format", full])
            .output(&self.ctx.shell)?
            .success()
        {
            return Ok(None);
        }
        if !self
            .git(["show-ref", "--verify", "--quiet", full])
            .output(&self.ctx.shell)?
            .success()
        {
            return Ok(None);
        }
        self.commit_of(full)
    }

    /// `git rev-parse REV^{commit}` in the checkout, never taking `rev`
    /// for an option; `None` when it names no commit.
    fn commit_of(&self, rev: &str) -> Result<Option<String>> {
        let out = self
            .git([
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &format!("{rev}^{{commit}}"),
            ])
            .output(&self.ctx.shell)?;
        let commit = out.stdout.trim();
        Ok((out.success() && is_full_hex(commit)).then(|| commit.to_string()))
    }

    /// Whether `commit` (a full hex object name) is a commit in this
    /// repository.
    pub fn has_commit(&self, commit: &str) -> Result<bool> {
        if !is_full_hex(commit) {
            return Ok(false);
        }
        Ok(self.commit_of(commit)?.as_deref() == Some(commit))
    }

    /// Whether `name` is a valid branch name by git's rules
    /// (`git check-ref-format --branch`), taken literally: no leading `-`,
    /// no `@{-1}` shorthand.
    pub fn is_branch_name(&self, name: &str) -> Result<bool> {
        if name.is_empty() || name.starts_with('-') {
            return Ok(false);
        }
        let out = self
            .git(["check-ref-format", "--branch", name])
            .output(&self.ctx.shell)?;
        Ok(out.success() && out.stdout.trim() == name)
    }

    /// The commit `--ref REF` names. The rule: a tag named exactly REF;
    /// else, when REF is exactly the name of a branch of `remote`, that
    /// branch as the last fetch left it (`main` is the relay's main, not a
    /// local branch that may lag behind); anything else (a commit,
    /// `HEAD~1`, `main~2`, a local branch, `origin/main`) is resolved in
    /// the checkout as git resolves it there. An error names the ref and
    /// the newest releases.
    pub fn resolve(&self, reference: &str, remote: Option<&str>) -> Result<String> {
        let found = if reference.is_empty()
            || reference.starts_with('-')
            || reference.chars().any(|c| c.is_control())
        {
            None
        } else if let Some(c) = self.exact_ref(&format!("refs/tags/{reference}"))? {
            Some(c)
        } else if let Some(c) = match remote {
            Some(r) if reference != "HEAD" && self.is_branch_name(reference)? => {
                self.exact_ref(&format!("refs/remotes/{r}/{reference}"))?
            }
            _ => None,
        } {
            Some(c)
        } else {
            self.commit_of(reference)?
        };
        if let Some(c) = found {
            return Ok(c);
        }
        let releases: Vec<String> = {
            let tags = self.tags().unwrap_or_default();
            let mut r: Vec<ReleaseTag> = tags.iter().filter_map(|t| ReleaseTag::parse(t)).collect();
            r.sort_by(|a, b| b.cmp_version(a));
            r.into_iter().take(5).map(|r| r.tag).collect()
        };
        Err(error::usage(format!(
            "--ref {}: no such tag, branch or commit in {}{}",
            reference.shown(),
            self.dir.display(),
            if releases.is_empty() {
                String::new()
            } else {
                format!(" (newest releases: {})", releases.join(", "))
            }
        )))
    }

    /// What of the relay's code a commit lacks: the relay's two Python
    /// projects, which the image build installs (`pip install -e
    /// chatmaild -e cmdeploy`) and runs (`cmdeploy run`). Empty when the
    /// commit holds them all.
    pub fn missing_relay_code(&self, commit: &str) -> Result<Vec<&'static str>> {
        let mut cmd = vec![
            "ls-tree",
            "--full-tree",
            "-z",
            "--end-of-options",
            commit,
            "--",
        ];
        cmd.extend(RELAY_CODE.iter().map(|(p, _)| *p));
        let listing = self.run(cmd)?;
        let present: Vec<(&str, &str)> = listing
            .split('\0')
            .filter_map(|entry| {
                let (meta, path) = entry.split_once('\t')?;
                let mut m = meta.split(' ');
                let (mode, kind) = (m.next()?, m.next()?);
                Some((
                    path,
                    if kind == "tree" {
                        "tree"
                    } else if kind == "blob" && (mode == "100644" || mode == "100755") {
                        "file"
                    } else {
                        "other"
                    },
                ))
            })
            .collect();
        Ok(RELAY_CODE
            .iter()
            .filter(|(path, kind)| !present.contains(&(*path, *kind)))
            .map(|(path, _)| *path)
            .collect())
    }

    /// The newest release tag whose commit holds the relay's code, with
    /// its commit; and the newer release tags passed over, each with why.
    pub fn newest_usable_release(&self) -> Result<Newest> {
        let tags = self.tags()?;
        let mut releases: Vec<ReleaseTag> =
            tags.iter().filter_map(|t| ReleaseTag::parse(t)).collect();
        releases.sort_by(|a, b| b.cmp_version(a));
        let mut skipped = Vec::new();
        for r in releases {
            let Some(commit) = self.exact_ref(&format!("refs/tags/{}", r.tag))? else {
                skipped.push((r.tag, "it does not point at a commit".to_string()));
                continue;
            };
            let missing = self.missing_relay_code(&commit)?;
            if missing.is_empty() {
                return Ok(Newest {
                    release: Some((r, commit)),
                    skipped,
                });
            }
            skipped.push((
                r.tag,
                format!(
                    "its commit {} lacks the relay's code ({})",
                    short(&commit),
                    missing.join(", ")
                ),
            ));
        }
        Ok(Newest {
            release: None,
            skipped,
        })
    }

    /// A human name for a commit: its tag, or `TAG-N-gSHORT`, or the short
    /// commit.
    pub fn describe(&self, commit: &str) -> String {
        self.run(["describe", "--tags", "--always", "--end-of-options", commit])
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| short(commit).to_string())
    }

    /// Commits in `to` that `from` lacks.
    pub fn count_between(&self, from: &str, to: &str) -> Option<u64> {
        self.run([
            "rev-list",
            "--count",
            "--end-of-options",
            &format!("{from}..{to}"),
        ])
        .ok()?
        .trim()
        .parse()
        .ok()
    }

    /// Whether `a` is an ancestor of (or equal to) `b`.
    pub fn is_ancestor(&self, a: &str, b: &str) -> Result<bool> {
        Ok(self
            .git(["merge-base", "--is-ancestor", "--end-of-options", a, b])
            .output(&self.ctx.shell)?
            .success())
    }

    /// A file's text at a commit, if it is there.
    pub fn show(&self, commit: &str, path: &str) -> Option<String> {
        self.run(["show", "--end-of-options", &format!("{commit}:{path}")])
            .ok()
    }

    /// Move the checkout to `commit` (detached), keeping nothing local.
    pub fn checkout(&self, commit: &str) -> Result<()> {
        self.run([
            "checkout",
            "--quiet",
            "--detach",
            "--end-of-options",
            commit,
        ])?;
        Ok(())
    }

    /// Back to where it was: the branch when it still points at the
    /// commit, else the commit itself.
    pub fn restore(&self, to: &Position) -> Result<()> {
        if let Some(b) = to.branch.as_deref().filter(|b| !b.starts_with('-')) {
            let at = self.exact_ref(&format!("refs/heads/{b}"));
            if at.is_ok_and(|c| c.as_deref() == Some(to.commit.as_str())) {
                // `--`: the branch is a revision, never a file name.
                self.run(["checkout", "--quiet", b, "--"])?;
                return Ok(());
            }
        }
        self.checkout(&to.commit)
    }
}

/// What a release must hold to be built: the relay's two Python projects
/// (their project files and packages), as paths with their kind.
pub const RELAY_CODE: &[(&str, &str)] = &[
    ("chatmaild/pyproject.toml", "file"),
    ("chatmaild/src/chatmaild", "tree"),
    ("cmdeploy/pyproject.toml", "file"),
    ("cmdeploy/src/cmdeploy", "tree"),
];

/// The newest usable release tag and the newer ones passed over.
#[derive(Clone, Debug, Default)]
pub struct Newest {
    /// The release and its commit.
    pub release: Option<(ReleaseTag, String)>,
    /// Newer release tags that are no release, each with the reason.
    pub skipped: Vec<(String, String)>,
}

/// A full object name: 40 (SHA-1) or 64 (SHA-256) lower-case hex digits.
pub fn is_full_hex(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The first 12 hex digits of a commit.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_sort_by_number_not_by_text() {
        let newest = newest_release(["1.9.0", "1.12.0", "1.10.3", "main", "1.13.0-rc1", "v0.9"]);
        assert_eq!(newest.unwrap().tag, "1.12.0");
        assert!(ReleaseTag::parse("1.13.0-rc1").is_none());
        assert!(ReleaseTag::parse("2024").is_none());
        assert!(ReleaseTag::parse("1..2").is_none());
        assert_eq!(ReleaseTag::parse("v1.2").unwrap().numbers, vec![1, 2]);
        assert_eq!(newest_release(["1.2", "1.2.1"]).unwrap().tag, "1.2.1");
        assert!(newest_release(["latest"]).is_none());
    }

    #[test]
    fn only_full_lower_case_object_names_are_commits() {
        let sha1 = "48ad92bf24426ef737deded1c0d87438a4b18dab";
        assert!(is_full_hex(sha1));
        assert!(is_full_hex(&"ab".repeat(32)));
        for bad in [
            "",
            &sha1[..12],
            &sha1.to_uppercase(),
            "--force",
            "HEAD",
            &format!("{}~1", &sha1[..38]),
            &format!("-{}", &sha1[1..]),
        ] {
            assert!(!is_full_hex(bad), "{bad}");
        }
    }
}
