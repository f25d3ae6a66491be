//! The library entry points other commands use: installing the host systemd
//! unit (`setup` with ENABLE_CERTS_MONITORING=true) and `status`. systemctl
//! is a stand-in script first on PATH that records its arguments.

use crate::support::certs::*;
use crate::support::{path_with, script};

use chatmail_docker::certwatch;
use chatmail_docker::host::Host;
use chatmail_docker::shell::{ColorChoice, Shell, Verbosity};
use chatmail_docker::Context;
use std::fs;
use std::os::unix::fs::PermissionsExt;

/// A context whose commands find the stand-ins in `path` first.
fn ctx(d: &Deploy, root: &std::path::Path, path: &str, dry_run: bool) -> Context {
    Context::new(
        &d.dir,
        Host::new(root).with_search_path(path),
        Shell::new(Verbosity::Normal, ColorChoice::Never),
        dry_run,
    )
    .unwrap()
}

fn tree(root: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn unit_install_and_status() {
    let d = Deploy::new("");
    let root = d.path("hostroot");
    fs::create_dir_all(root.join("run/systemd/system")).unwrap();
    let bin = d.path("bin");
    fs::create_dir_all(&bin).unwrap();
    let calls = d.path("systemctl.calls");
    script(
        &bin,
        "systemctl",
        &format!(
            "echo \"$*\" >> '{}'\ncase \"$*\" in is-active*) exit 3;; esac\nexit 0",
            calls.display()
        ),
    );
    let path = path_with(&bin);

    // Dry run: a plan, and nothing touched.
    let before = tree(&root);
    let c = ctx(&d, &root, &path, true);
    let plan = certwatch::unit_plan(&c).unwrap();
    assert!(plan.systemd && plan.write);
    assert_eq!(
        plan.path,
        root.join("etc/systemd/system/chatmail-cert-watch.service")
    );
    assert!(plan
        .content
        .contains(&format!("--dir {} cert-watch", d.dir.display())));
    certwatch::apply_unit(&c, &plan).unwrap();
    assert_eq!(tree(&root), before);
    assert!(!calls.exists());

    // For real.
    let c = ctx(&d, &root, &path, false);
    let plan = certwatch::unit_plan(&c).unwrap();
    certwatch::apply_unit(&c, &plan).unwrap();
    let unit = fs::read_to_string(&plan.path).unwrap();
    assert_eq!(unit, plan.content);
    assert_eq!(
        fs::metadata(&plan.path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(
        fs::read_to_string(&calls).unwrap(),
        "daemon-reload\nenable --now chatmail-cert-watch.service\ntry-restart chatmail-cert-watch.service\n"
    );

    // Again: unchanged file, only enable.
    fs::remove_file(&calls).unwrap();
    let plan = certwatch::unit_plan(&c).unwrap();
    assert!(!plan.write);
    certwatch::apply_unit(&c, &plan).unwrap();
    assert_eq!(
        fs::read_to_string(&calls).unwrap(),
        "enable --now chatmail-cert-watch.service\n"
    );

    // A host without systemd: nothing installed.
    let bare = d.path("bare");
    fs::create_dir_all(&bare).unwrap();
    let c2 = ctx(&d, &bare, &path, false);
    let plan = certwatch::unit_plan(&c2).unwrap();
    assert!(!plan.systemd && plan.commands.is_empty());
    certwatch::apply_unit(&c2, &plan).unwrap();
    assert!(!bare.join("etc").exists());

    // status: no certificate yet.
    let st = certwatch::status(&c).unwrap();
    assert!(!st.watcher_running);
    assert!(
        st.problem
            .as_deref()
            .unwrap_or("")
            .contains("does not exist"),
        "{st:?}"
    );

    // status: a certificate, and a running watcher found by its pid file.
    let a = pair();
    Acmetool::new(d.path("data/chatmail-acme"), &a);
    let w = d.watch(&[]);
    // The state is recorded once the reload command has returned.
    wait_for("the initial reload to be recorded", &w, || {
        d.path("data/.cert-watch-state.json").exists()
    });
    let st = certwatch::status(&c).unwrap();
    assert!(st.watcher_running, "{st:?}");
    assert_eq!(st.watcher, format!("pid {}", w.child.id()));
    assert!(st.problem.is_none(), "{st:?}");
    assert_eq!(st.fingerprint, st.applied_fingerprint);
    assert!(st.days_left.unwrap() > 300, "{st:?}");
    assert!(st.not_after.is_some() && st.subject.is_some());
    // Who issued it: a self-signed certificate names itself.
    assert!(
        st.issuer.as_deref().is_some_and(|i| i.contains("rcgen")),
        "{st:?}"
    );
    assert_eq!(st.issuer, st.subject, "self-signed: {st:?}");
    drop(w);
    let st = certwatch::status(&c).unwrap();
    assert!(!st.watcher_running, "a stale pid file does not count");
}
