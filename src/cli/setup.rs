//! Arguments of `setup`.

use anyhow::Result;
use clap::builder::PossibleValue;
use clap::{Args, ValueEnum};
use std::time::Duration;

use super::preflight::{CheckArgs, SysctlArgs};
use crate::context::Context;
use crate::overrides::{self, OneShot, Stage};
use crate::setup::{self, Rebuild};

#[derive(Args, Debug, Clone)]
pub struct SetupArgs {
    #[command(flatten)]
    pub checks: CheckArgs,

    #[command(flatten)]
    pub sysctl: SysctlArgs,

    /// Run the relay's install stage again this once (CMDEPLOY_STAGES=install,configure,activate).
    #[arg(long, conflicts_with = "stages")]
    pub reinstall: bool,

    /// Stages to run this once, a subset of install,configure,activate in that order.
    #[arg(long, value_name = "LIST", value_parser = stage_list)]
    pub stages: Option<StageList>,

    /// Rebuild the image before starting; `--rebuild=full` rebuilds without cache.
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "cache")]
    pub rebuild: Option<Rebuild>,

    /// Recreate the relay's Python venv this once (RECREATE_VENV=true).
    #[arg(long)]
    pub recreate_venv: bool,

    /// Rewrite the container's chatmail.ini from .env this once (FORCE_REINIT_INI_FILE=true).
    #[arg(long)]
    pub force_reinit_ini: bool,

    /// Run the debug commands before deploying this once (DEBUG_COMMANDS_ENABLED=true).
    #[arg(long)]
    pub debug_commands: bool,

    /// Let chatmail.ini win over conflicting values set by hand in .env.
    #[arg(long)]
    pub force: bool,

    /// Trust these extra CA certificates while building the image (a PEM file or a directory of .crt/.pem files), for networks whose proxy re-signs TLS; not kept in the image.
    #[arg(long, value_name = "PATH", env = "CHATMAIL_BUILD_CA")]
    pub build_ca: Option<std::path::PathBuf>,

    /// With --build-ca: keep those certificates trusted in the image too.
    #[arg(long, requires = "build_ca")]
    pub keep_build_ca: bool,

    /// Start without deploying the configuration in a side container first: the new container deploys it itself (a longer interruption, and a configuration that fails replaces the running relay anyway).
    #[arg(long, alias = "no-stage")]
    pub no_deploy_beside: bool,

    /// Seconds to wait for the container to become healthy.
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    pub wait_timeout: u64,
}

/// A `--stages` list, checked when the command line is parsed.
#[derive(Clone, Debug)]
pub struct StageList(Vec<Stage>);

fn stage_list(list: &str) -> Result<StageList, String> {
    overrides::parse_stages(list)
        .map(StageList)
        .map_err(|e| e.to_string())
}

impl ValueEnum for Rebuild {
    fn value_variants<'a>() -> &'a [Self] {
        &[Rebuild::Cache, Rebuild::Full]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self {
            Rebuild::Cache => "cache",
            Rebuild::Full => "full",
        }))
    }
}

impl SetupArgs {
    pub fn exec(self, ctx: &Context) -> Result<()> {
        let options = setup::Options {
            skip: self.checks.skip_check,
            limits: self.sysctl.limits(),
            one_shot: OneShot::from_flags(
                self.reinstall,
                self.stages.map(|l| l.0),
                self.recreate_venv,
                self.force_reinit_ini,
                self.debug_commands,
            )?,
            rebuild: self.rebuild,
            force: self.force,
            wait_timeout: Duration::from_secs(self.wait_timeout),
            deploy_beside: !self.no_deploy_beside,
            build: crate::engine::build::BuildOptions {
                ca_name: self
                    .build_ca
                    .as_deref()
                    .map(|ca| super::option_name("--build-ca", Some("CHATMAIL_BUILD_CA"), ca)),
                ca: self.build_ca,
                keep_ca: self.keep_build_ca,
            },
        };
        setup::run(ctx, &options)
    }
}
