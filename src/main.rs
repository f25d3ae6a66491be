//! Thin entry point: parse arguments, run the library, map errors to exit codes.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = chatmail_docker::cli::Cli::parse_args();
    let code = chatmail_docker::main_with(cli);
    std::process::exit(code);
}
