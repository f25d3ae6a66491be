//! One-shot switches for a single `docker compose up`: reinstall, stages,
//! venv recreation, ini re-initialisation, debug commands.
//!
//! The appliance's compose file reads them as `${CMDEPLOY_STAGES:-configure,activate}`
//! and the like, and Compose takes the process environment before `.env`.
//! So setting them on the one `docker compose up` process applies them to
//! that run only: nothing is written to `.env` or the generated override,
//! and the next `setup`/`up` is back to the defaults.

use crate::formats::ini::quoted;
use anyhow::Result;

/// The relay's deployment stages, in the only order they can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Install,
    Configure,
    Activate,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Install, Stage::Configure, Stage::Activate];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Install => "install",
            Stage::Configure => "configure",
            Stage::Activate => "activate",
        }
    }
}

/// Variable names the appliance's compose file passes into the container.
pub const STAGES_VAR: &str = "CMDEPLOY_STAGES";
pub const RECREATE_VENV_VAR: &str = "RECREATE_VENV";
pub const FORCE_REINIT_INI_VAR: &str = "FORCE_REINIT_INI_FILE";
pub const DEBUG_COMMANDS_VAR: &str = "DEBUG_COMMANDS_ENABLED";

/// Parse and validate a `--stages` list: a non-empty, comma-separated
/// subset of `install,configure,activate`, each at most once, in that
/// order. Spaces around items are tolerated (`install, configure`).
pub fn parse_stages(list: &str) -> Result<Vec<Stage>> {
    let allowed = "install,configure,activate";
    let mut out: Vec<Stage> = Vec::new();
    if list.trim().is_empty() {
        return Err(crate::error::usage(format!(
            "--stages is empty; give a subset of {allowed} in that order, e.g. --stages configure,activate"
        )));
    }
    for item in list.split(',') {
        let item = item.trim();
        let stage = match item {
            "install" => Stage::Install,
            "configure" => Stage::Configure,
            "activate" => Stage::Activate,
            "" => {
                return Err(crate::error::usage(format!(
                "--stages {} has an empty item; separate stages with single commas, e.g. {allowed}",
                quoted(list)
            )))
            }
            other => {
                return Err(crate::error::usage(format!(
                    "--stages {}: unknown stage {}; the stages are {allowed}",
                    quoted(list),
                    quoted(other)
                )))
            }
        };
        if out.contains(&stage) {
            return Err(crate::error::usage(format!(
                "--stages {} names {} twice",
                quoted(list),
                stage.as_str()
            )));
        }
        if let Some(last) = out.last() {
            if *last > stage {
                return Err(crate::error::usage(format!(
                    "--stages {}: {} must come before {}; stages run in the order {allowed}",
                    quoted(list),
                    stage.as_str(),
                    last.as_str()
                )));
            }
        }
        out.push(stage);
    }
    Ok(out)
}

/// Render stages the way the container expects them.
pub fn stages_value(stages: &[Stage]) -> String {
    stages
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The one-shot settings of one run. Everything off (the default) means
/// "no variables": the values from `.env` or the compose file apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OneShot {
    /// `--reinstall` (all stages) or `--stages LIST`.
    pub stages: Option<Vec<Stage>>,
    pub recreate_venv: bool,
    pub force_reinit_ini: bool,
    pub debug_commands: bool,
}

impl OneShot {
    /// Build from `setup`'s flags; `reinstall` and `stages` exclude each
    /// other (clap enforces it too; checked again for library callers).
    pub fn from_flags(
        reinstall: bool,
        stages: Option<Vec<Stage>>,
        recreate_venv: bool,
        force_reinit_ini: bool,
        debug_commands: bool,
    ) -> Result<OneShot> {
        let stages = match (reinstall, stages) {
            (true, Some(_)) => {
                return Err(crate::error::usage(
                    "--reinstall and --stages exclude each other; --reinstall means --stages install,configure,activate",
                ))
            }
            (true, None) => Some(Stage::ALL.to_vec()),
            (false, Some(list)) => Some(list),
            (false, None) => None,
        };
        Ok(OneShot {
            stages,
            recreate_venv,
            force_reinit_ini,
            debug_commands,
        })
    }

    /// Whether this run uses any one-shot setting.
    pub fn is_empty(&self) -> bool {
        self.env().is_empty()
    }

    /// Whether `up` should pass `--force-recreate`: the variables only take
    /// effect when a container is created, and Compose would keep a
    /// container whose configuration equals the requested one (e.g. a
    /// second `--reinstall` in a row).
    pub fn needs_recreate(&self) -> bool {
        !self.is_empty()
    }

    /// The variables to set on the `docker compose up` process for this
    /// run, in a fixed order. Values are not secrets.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(stages) = &self.stages {
            env.push((STAGES_VAR, stages_value(stages)));
        }
        if self.recreate_venv {
            env.push((RECREATE_VENV_VAR, "true".to_string()));
        }
        if self.force_reinit_ini {
            env.push((FORCE_REINIT_INI_VAR, "true".to_string()));
        }
        if self.debug_commands {
            env.push((DEBUG_COMMANDS_VAR, "true".to_string()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error;

    #[test]
    fn valid_stage_lists() {
        assert_eq!(
            parse_stages("install,configure,activate").unwrap(),
            Stage::ALL
        );
        assert_eq!(parse_stages("configure").unwrap(), vec![Stage::Configure]);
        assert_eq!(
            parse_stages(" install , activate ").unwrap(),
            vec![Stage::Install, Stage::Activate]
        );
    }

    #[test]
    fn invalid_stage_lists_are_usage_errors() {
        for (bad, needle) in [
            ("", "empty"),
            ("activate,configure", "must come before"),
            ("install,install", "twice"),
            ("install,,activate", "empty item"),
            ("deploy", "unknown stage `deploy`"),
            ("Install", "unknown stage"),
        ] {
            let err = parse_stages(bad).unwrap_err();
            assert_eq!(error::exit_code(&err), error::EXIT_USAGE, "{bad}");
            assert!(err.to_string().contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn env_for_flags() {
        let r = OneShot::from_flags(true, None, true, false, false).unwrap();
        assert_eq!(
            r.env(),
            vec![
                (STAGES_VAR, "install,configure,activate".to_string()),
                (RECREATE_VENV_VAR, "true".to_string())
            ]
        );
        let s =
            OneShot::from_flags(false, Some(vec![Stage::Configure]), false, true, true).unwrap();
        assert_eq!(
            s.env(),
            vec![
                (STAGES_VAR, "configure".to_string()),
                (FORCE_REINIT_INI_VAR, "true".to_string()),
                (DEBUG_COMMANDS_VAR, "true".to_string())
            ]
        );
        assert!(OneShot::default().is_empty());
        assert!(
            OneShot::from_flags(true, Some(vec![Stage::Install]), false, false, false).is_err()
        );
    }
}
