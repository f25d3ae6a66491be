//! The integration tests, one binary: the real `chatmail-docker` run
//! against temp deployment directories and temp host roots, with stand-in
//! programs on a per-command `PATH` and the real `docker compose` where the
//! behaviour depends on Compose. The library is called in-process only for
//! the entry points other commands use.
//!
//! A test that needs a tool that is missing is skipped with a reason, and
//! fails instead under CI (see [`support::require`]).

#![allow(clippy::disallowed_macros, clippy::disallowed_methods)] // tests print to their log and read CI
mod support;

mod appliance_init;
mod backup;
mod backup_trust;
mod certwatch;
mod certwatch_reload;
mod certwatch_unit;
mod certwatch_verify;
mod cli;
mod compose;
mod dns;
mod hardening_certwatch;
mod hardening_input;
mod hardening_sysctl;
mod house;
mod ini2env_cli;
mod ini2env_compose;
mod ini2env_parse;
mod metrics;
mod migrate;
mod option_files;
mod overrides;
mod overrides_engine;
mod ownership;
mod preflight;
mod relay_manifest;
mod sandbox_generator;
mod setup;
mod sysctl;
mod upgrade;
