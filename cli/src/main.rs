//! The `etcdsync` binary with the built-in plugins.

fn main() -> std::process::ExitCode {
    etcdsync_cli::main()
}
