//! Benchmark: `chatmail-docker ini2env` as a whole process against the
//! install guide's converter shape (Python configparser -> `KEY=value`
//! lines, `benches/ini_to_env_baseline.py`), both started as processes in
//! the same run, on:
//!
//! - the relay's default ini (`src/chatmail-ini-defaults.ini` plus
//!   `mail_domain`);
//! - a generated ini with 5,000 `[params]` keys.
//!
//! Each process is started directly (no shell in between), as a benchmark
//! tool such as `hyperfine -N` does, with its standard output going to a
//! fresh file; the baseline writes `/dev/stdout`, that same file. Runs
//! alternate in chunks of ten so that drift of the machine hits both alike.
//! Per ini it prints the mean and median wall time per invocation and the
//! ratio baseline / ours for:
//!
//! - `convert`: `ini2env --all --stdout`, the same work as the baseline;
//! - `merge`: `ini2env --all --env FILE` into a fresh `.env`, the real
//!   command (merge, read-back check, atomic write with two fsyncs, mode
//!   0600), which the baseline does not do.
//!
//! `/bin/true` is measured alongside: starting any process costs that.
//!
//! Run with `cargo bench --bench ini2env [-- ROUNDS]` (release profile;
//! default 300 invocations of each per ini). The target is ours >= 30x.

#![allow(clippy::disallowed_macros, clippy::disallowed_methods)] // tests print to their log and read CI
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHUNK: usize = 10;

mod series;
use series::Series;

impl Series {
    fn mean(&self) -> f64 {
        let total: Duration = self.samples.iter().sum();
        total.as_secs_f64() * 1e3 / self.samples.len() as f64
    }
    fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort();
        s[s.len() / 2].as_secs_f64() * 1e3
    }
}

/// Start `program args`, wait for it, return the wall time. Standard output
/// goes to `out` (created or truncated first), standard error is inherited.
fn run(program: &Path, args: &[&str], out: &Path) -> Duration {
    let file = File::create(out).expect("create the output file");
    let start = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .status()
        .expect("start the program");
    let took = start.elapsed();
    assert!(
        status.success(),
        "{} {args:?} failed: {status}",
        program.display()
    );
    took
}

fn python() -> PathBuf {
    // The interpreter itself, not a version-manager shim in front of it.
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed");
    PathBuf::from(String::from_utf8(out.stdout).expect("UTF-8").trim())
}

fn write_inis(dir: &Path) -> (PathBuf, PathBuf) {
    let defaults = include_str!("../src/chatmail-ini-defaults.ini");
    let params = defaults
        .split_once("\n[params]\n")
        .map(|(_, rest)| rest)
        .expect("the defaults have a [params] line");
    let small = dir.join("default.ini");
    fs::write(
        &small,
        format!("[params]\nmail_domain = chat.example.org\n{params}"),
    )
    .expect("write default.ini");
    let mut text = String::from("[params]\nmail_domain = chat.example.org\n");
    for i in 1..5000 {
        text.push_str(&format!("key_{i} = value number {i} with some text\n"));
    }
    let big = dir.join("big.ini");
    fs::write(&big, text).expect("write big.ini");
    (small, big)
}

fn bench(label: &str, ini: &Path, rounds: usize, dir: &Path) {
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_chatmail-docker"));
    let py = python();
    let baseline = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ini_to_env_baseline.py");
    let ini_s = ini.to_str().expect("UTF-8 path");
    let base_s = baseline.to_str().expect("UTF-8 path");
    let out = dir.join("out.env");
    let env = dir.join("merged.env");
    let env_s = env.to_str().expect("UTF-8 path").to_string();

    let mut convert = Series::new("convert (ours)");
    let mut merge = Series::new("merge+fsync (ours)");
    let mut python = Series::new("python configparser");
    let mut floor = Series::new("/bin/true");
    let convert_args = ["ini2env", "--all", "--ini", ini_s, "--stdout"];
    let merge_args = ["-q", "ini2env", "--all", "--ini", ini_s, "--env", &env_s];
    let base_args = [base_s, ini_s, "/dev/stdout"];
    let reset = || {
        let _ = fs::remove_file(&env);
        let _ = fs::remove_file(dir.join("merged.env.bak"));
    };

    // Warm-up, and a check that both produce the same variables.
    run(&ours, &convert_args, &out);
    let ours_text = fs::read_to_string(&out).expect("read");
    run(&py, &base_args, &out);
    let base_text = fs::read_to_string(&out).expect("read");
    assert_eq!(
        ours_text.lines().count(),
        base_text.lines().count(),
        "ours and the baseline write the same number of variables"
    );
    reset();
    run(&ours, &merge_args, &out);

    let mut done = 0;
    while done < rounds {
        for _ in 0..CHUNK {
            convert.samples.push(run(&ours, &convert_args, &out));
        }
        for _ in 0..CHUNK {
            python.samples.push(run(&py, &base_args, &out));
        }
        for _ in 0..CHUNK {
            reset();
            merge.samples.push(run(&ours, &merge_args, &out));
        }
        for _ in 0..CHUNK {
            floor.samples.push(run(Path::new("/bin/true"), &[], &out));
        }
        done += CHUNK;
    }
    println!("{label}: {done} invocations of each, alternating in chunks of {CHUNK}");
    for s in [&python, &convert, &merge, &floor] {
        println!(
            "  {:<22} mean {:7.3} ms  median {:7.3} ms",
            s.name,
            s.mean(),
            s.median()
        );
    }
    for s in [&convert, &merge] {
        println!(
            "  python / {:<13} {:5.1}x (means)  {:5.1}x (medians)",
            s.name.split(' ').next().unwrap_or(s.name),
            python.mean() / s.mean(),
            python.median() / s.median()
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a number sets the rounds.
    let rounds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(300);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (small, big) = write_inis(tmp.path());
    println!("ini2env vs the Python converter, whole processes (release build)");
    bench("default ini", &small, rounds, tmp.path());
    bench("5,000 keys", &big, (rounds / 3).max(CHUNK), tmp.path());
}
