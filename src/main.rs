//! Thin entry point: parse arguments, run the library, map errors to exit codes.

use clap::Parser;

fn main() {
    let cli = chatmail_docker::cli::Cli::parse();
    let code = chatmail_docker::main_with(cli);
    std::process::exit(code);
}
