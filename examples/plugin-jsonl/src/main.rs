//! `etcdsync-jsonl`: the etcdsync CLI with the built-in plugins plus this crate's.

use etcdsync_plugin_jsonl as _;

fn main() -> std::process::ExitCode {
    etcdsync_cli::main()
}
