//! Benchmark: generating the compose override for 10,000 files under
//! `custom/`, against baselines measured in the same run on the same tree:
//!
//! - `walkdir list`: a plain sorted walkdir listing of the tree (no stat);
//! - `walkdir+read`: the same walk reading every file, the I/O floor of a
//!   content hash;
//! - `find -type f`: the external `find` over the tree, process included.
//!
//! Run with `cargo bench --bench overrides` (release profile). Prints the
//! median and minimum of each and the ratio of ours to each baseline; the
//! budget for `generate` is 200 ms.

#![allow(clippy::disallowed_macros, clippy::disallowed_methods)] // tests print to their log and read CI
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use chatmail_docker::overrides::{self, OverrideOptions};
use chatmail_docker::{host::Host, shell, Context};

const FILES: usize = 10_000;
const ROUNDS: usize = 15;
const BUDGET: Duration = Duration::from_millis(200);

fn build_tree(custom: &Path) {
    // 10,000 files of a few hundred bytes in 100 directories two levels
    // deep, like a landing page with many assets, plus a few _root_ files.
    for i in 0..FILES {
        let rel = if i < 10 {
            format!("_root_/etc/postfix/conf {i}.cf")
        } else {
            format!(
                "www/src/section {:02}/page {:02}/file {i:05}.md",
                i % 10,
                (i / 10) % 10
            )
        };
        let p = custom.join(rel);
        fs::create_dir_all(p.parent().expect("has a parent")).expect("mkdir");
        fs::write(&p, format!("# page {i}\n{}\n", "lorem ipsum ".repeat(20))).expect("write");
    }
}

/// The regular files under `custom`, by name.
fn walk_files(custom: &Path) -> impl Iterator<Item = walkdir::DirEntry> {
    walkdir::WalkDir::new(custom)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
}

fn walk_list(custom: &Path) -> usize {
    walk_files(custom).count()
}

fn walk_read(custom: &Path) -> usize {
    walk_files(custom)
        .map(|e| fs::read(e.path()).map(|b| b.len()).unwrap_or(0))
        .sum()
}

fn find(custom: &Path) -> usize {
    let out = std::process::Command::new("find")
        .arg(custom)
        .args(["-type", "f"])
        .output()
        .expect("find runs");
    out.stdout.iter().filter(|b| **b == b'\n').count()
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

mod series;
use series::Series;

impl Series {
    fn median(&self) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s[s.len() / 2]
    }
    fn min(&self) -> Duration {
        self.samples.iter().copied().min().unwrap_or_default()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    fs::create_dir_all(dir.join("docker")).expect("mkdir docker");
    let custom = dir.join("custom");
    build_tree(&custom);
    let ctx = Context::new(
        dir,
        Host::new("/"),
        shell::Shell::new(shell::Verbosity::Quiet, shell::ColorChoice::Never),
        false,
    )
    .expect("context");
    let opts = OverrideOptions::default();

    // Warm the page cache and check everything sees the same tree.
    let g = overrides::generate(&ctx, &opts).expect("generate");
    assert_eq!(g.mounts.len(), FILES);
    assert_eq!(walk_list(&custom), FILES);
    assert_eq!(find(&custom), FILES);
    walk_read(&custom);

    let mut gen = Series::new("generate (ours)");
    let mut gen_write = Series::new("generate+write (ours, file rewritten)");
    let mut list = Series::new("walkdir list (baseline)");
    let mut read = Series::new("walkdir+read (baseline)");
    let mut findb = Series::new("find -type f (baseline)");
    let generated = dir.join("docker/compose.generated.yaml");
    for _ in 0..ROUNDS {
        // Interleaved, so all series see the same machine load.
        list.samples.push(time(|| walk_list(&custom)).0);
        read.samples.push(time(|| walk_read(&custom)).0);
        findb.samples.push(time(|| find(&custom)).0);
        gen.samples
            .push(time(|| overrides::generate(&ctx, &opts).expect("generate")).0);
        let _ = fs::remove_file(&generated);
        gen_write.samples.push(
            time(|| {
                let g = overrides::generate(&ctx, &opts).expect("generate");
                overrides::write(&ctx, &g).expect("write")
            })
            .0,
        );
    }

    println!(
        "override generation, {FILES} files under custom/, {ROUNDS} rounds, {} bytes of YAML",
        g.yaml.len()
    );
    let ours = gen.median();
    for s in [&gen, &gen_write, &list, &read, &findb] {
        println!(
            "  {:<40} median {:>8.2} ms  min {:>8.2} ms  ours/this {:>6.2}x",
            s.name,
            ms(s.median()),
            ms(s.min()),
            ours.as_secs_f64() / s.median().as_secs_f64()
        );
    }
    println!(
        "  budget {} ms for generate: {}",
        BUDGET.as_millis(),
        if ours <= BUDGET { "met" } else { "EXCEEDED" }
    );
}
