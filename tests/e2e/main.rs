//! The end-to-end suites, one binary: the real `chatmail-docker` drives the
//! appliance on the machine's Docker engine. Each test holds the engine
//! (`support::engine_lock`: the appliance uses the host's mail ports and the
//! Compose project `chatmail`), so they run one after the other whatever
//! the test threads, and never beside another checkout's.
//!
//! - [`standin`]: what the real relay cannot do offline (`--reinstall`),
//!   custom files, the refusals and migration, against the relay stand-in;
//! - [`relay`]: the real relay, checked the way a user would;
//! - [`upgrade`]: upgrades between releases of the real relay, the
//!   automatic rollback, Ctrl-C, `--rollback`;
//! - [`acme`]: the real relay with a certificate from an ACME server;
//! - [`federation`]: two relays exchanging mail on a network of the
//!   test's own (ignored: run by hand with `benches/federation.sh`);
//! - [`faults`]: kills, daemon restarts, a full disk and a reboot during
//!   the day-two commands, while mail flows.
//!
//! Without a Docker daemon they are skipped with a printed reason, except
//! under CI=true where that is a failure. The support kit is the
//! integration tests' (`tests/it/support/`, its engine part in `engine/`).

#![allow(clippy::disallowed_macros, clippy::disallowed_methods)] // tests print to their log and read CI
#[path = "../it/support/mod.rs"]
mod support;

mod acme;
mod faults;
mod federation;
mod relay;
mod standin;
mod upgrade;
