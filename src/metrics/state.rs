//! What the tool's own state files and the host say: the certificate on
//! disk and cert-watch's last reload (`data/.cert-watch-state.json`, and
//! [`crate::certwatch::status`] as `status` shows it), the last upgrade
//! and rollback (`data/.upgrade-state.json`, `data/.upgrade-last.json`),
//! and the inotify limits.

use super::expo::Samples;
use super::*;
use crate::certwatch::{self, CertStatus};
use crate::upgrade::state::{self as upgrade_state, LastRuns, Phase, UpgradeState};

/// The certificate on disk and the watcher.
pub fn certificate(ctx: &Context) -> Samples {
    let mut out = Samples::default();
    match certwatch::status(ctx) {
        Ok(st) => certificate_samples(&mut out, &st),
        Err(e) => {
            ctx.shell.verbose(format!("certificate: {e:#}"));
            probe(&mut out, "certificate_file", "", Some("internal_error"));
        }
    }
    let recorded = crate::host::read_input_opt(
        &ctx.deployment.cert_watch_state(),
        crate::host::MAX_CONFIG_BYTES,
    )
    .map_err(|e| e.to_string())
    .and_then(|b| match b {
        None => Ok(None),
        Some(b) => serde_json::from_slice::<certwatch::state::State>(&b)
            .map(Some)
            .map_err(|e| e.to_string()),
    });
    match recorded {
        Ok(last) => {
            probe(&mut out, "certwatch", "", None);
            if let Some(last) = last {
                if let Some(t) = unix_rfc3339(&last.applied_at) {
                    out.add(&CERTWATCH_LAST, &[], t);
                }
                out.flag(&CERTWATCH_VERIFIED, &[], last.verified);
            }
        }
        Err(e) => {
            ctx.shell.verbose(format!("cert-watch state: {e}"));
            probe(&mut out, "certwatch", "", Some("unreadable_state"));
        }
    }
    out
}

/// The samples of what `status` knows about the certificate and watcher.
pub fn certificate_samples(out: &mut Samples, st: &CertStatus) {
    let failed = if st.path.is_none() {
        Some("not_located")
    } else if st.fingerprint.is_none() {
        Some("unreadable")
    } else if st.not_after.is_none() {
        Some("unparseable")
    } else if st.problem.is_some() {
        // Read, but it does not fit the key or the domain, or it expired.
        Some("invalid")
    } else {
        None
    };
    probe(out, "certificate_file", "", failed);
    if let Some(t) = st.not_after.as_deref().and_then(unix_rfc3339) {
        out.add(&CERT_FILE_EXPIRY, &[], t);
    }
    out.flag(&CERTWATCH_RUNNING, &[], st.watcher_running);
    if let (Some(now), Some(applied)) = (&st.fingerprint, &st.applied_fingerprint) {
        out.flag(&CERTWATCH_PENDING, &[], now != applied);
    }
}

/// The last upgrade and rollback.
pub fn upgrade(ctx: &Context) -> Samples {
    let mut out = Samples::default();
    let st = upgrade_state::load(ctx);
    let last = upgrade_state::load_last(ctx);
    match (&st, &last) {
        (Ok(st), Ok(last)) => {
            probe(&mut out, "upgrade", "", None);
            upgrade_samples(&mut out, st.as_ref(), last.as_ref());
        }
        (Err(e), _) | (_, Err(e)) => {
            ctx.shell.verbose(format!("upgrade: {e:#}"));
            probe(&mut out, "upgrade", "", Some("unreadable_state"));
        }
    }
    out
}

pub fn upgrade_samples(out: &mut Samples, st: Option<&UpgradeState>, last: Option<&LastRuns>) {
    if let Some(st) = st {
        out.flag(
            &UPGRADE_UNFINISHED,
            &[],
            matches!(st.phase, Phase::Building | Phase::Swapping),
        );
    }
    let Some(last) = last else { return };
    if let Some(t) = last.upgrade.as_ref().and_then(|u| unix_rfc3339(&u.at)) {
        out.add(&UPGRADE_LAST, &[], t);
    }
    if let Some(r) = &last.rollback {
        if let Some(t) = unix_rfc3339(&r.at) {
            let automatic = if r.automatic { "true" } else { "false" };
            out.add(&ROLLBACK_LAST, &[("automatic", automatic)], t);
        }
    }
}

/// The host's inotify limits.
pub fn inotify(ctx: &Context) -> Samples {
    let mut out = Samples::default();
    match crate::sysctl::read_live(&ctx.host) {
        Ok(l) => {
            probe(&mut out, "inotify", "", None);
            out.add(&INOTIFY_INSTANCES, &[], l.max_user_instances as f64);
            out.add(&INOTIFY_WATCHES, &[], l.max_user_watches as f64);
        }
        Err(e) => {
            ctx.shell.verbose(format!("inotify: {e:#}"));
            probe(&mut out, "inotify", "", Some("unreadable"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::state::LastRun;

    fn status() -> CertStatus {
        CertStatus {
            watcher_running: false,
            watcher: String::new(),
            path: Some("/srv/certs".into()),
            subject: None,
            issuer: None,
            not_after: Some("2027-01-01T00:00:00Z".into()),
            days_left: Some(30),
            fingerprint: Some("new".into()),
            applied_fingerprint: Some("old".into()),
            applied_at: None,
            problem: None,
        }
    }

    fn get(out: &Samples, name: &str) -> Vec<(Vec<(&'static str, String)>, f64)> {
        out.iter()
            .filter(|s| s.def.name == name)
            .map(|s| (s.labels.clone(), s.value))
            .collect()
    }

    #[test]
    fn a_certificate_changed_since_the_last_reload_is_pending() {
        let mut out = Samples::default();
        certificate_samples(&mut out, &status());
        assert_eq!(get(&out, CERTWATCH_PENDING.name)[0].1, 1.0);
        assert_eq!(get(&out, CERT_FILE_EXPIRY.name)[0].1, 1_798_761_600.0);
        assert_eq!(get(&out, PROBE_UP.name)[0].1, 1.0);
        let mut st = status();
        st.applied_fingerprint = None;
        st.fingerprint = None;
        st.not_after = None;
        let mut out = Samples::default();
        certificate_samples(&mut out, &st);
        assert!(
            get(&out, CERTWATCH_PENDING.name).is_empty(),
            "never reloaded: nothing pending"
        );
        assert_eq!(
            get(&out, PROBE_UP.name)[0].0,
            vec![
                ("probe", "certificate_file".to_string()),
                ("reason", "unreadable".to_string())
            ]
        );
    }

    #[test]
    fn the_last_upgrade_and_rollback() {
        let mut out = Samples::default();
        let mut back = LastRun::now(None, None);
        back.at = "1970-01-01T00:00:20Z".into();
        back.automatic = true;
        let mut up = back.clone();
        up.at = "1970-01-01T00:00:10Z".into();
        let last = LastRuns {
            upgrade: Some(up),
            rollback: Some(back),
        };
        let st = UpgradeState {
            phase: Phase::Swapping,
            image: "i".into(),
            previous: None,
            target: None,
            started: String::new(),
        };
        upgrade_samples(&mut out, Some(&st), Some(&last));
        assert_eq!(get(&out, UPGRADE_UNFINISHED.name)[0].1, 1.0);
        assert_eq!(get(&out, UPGRADE_LAST.name)[0].1, 10.0);
        assert_eq!(
            get(&out, ROLLBACK_LAST.name),
            vec![(vec![("automatic", "true".to_string())], 20.0)]
        );
    }
}
