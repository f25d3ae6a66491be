use clap::Args;

#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Print only the generated override.
    #[arg(long)]
    pub override_only: bool,

    /// Print JSON (passed through to docker compose config).
    #[arg(long)]
    pub json: bool,
}
