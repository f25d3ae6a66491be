//! Thin entry point: parse arguments, run the library, map errors to exit codes.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = chatmail_docker::cli::Cli::parse_args();
    let code = chatmail_docker::main_with(cli);
    // Everything is written and closed by now; what is left is handing
    // memory back, which the kernel does at once when the process ends.
    // `exit` would first run the allocator's exit handler, which returns
    // every free page to the kernel one range at a time: 10 ms after an
    // incremental backup of 20,000 files.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: ends the process; nothing runs after it.
    unsafe { libc::_exit(code) }
}
