//! The etcdsync command line as a library: [`main`] parses arguments and runs a command with
//! whatever plugins are linked into the binary. A third-party binary links its own plugin crates
//! and calls [`main`] to get the same CLI.

mod commands;
mod logging;
mod signals;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// Built-in plugins: naming the crates keeps their registrations in the binary.
use etcdsync_etcd as _;
use etcdsync_mysql as _;
use etcdsync_pgx as _;
use etcdsync_transforms as _;

const EXAMPLES: &str = "\
Examples:
  etcdsync run --config-file examples/quickstart.yaml
  etcdsync run -c sync.yaml            # ${VAR} in the file is read from the environment
  etcdsync plugins                     # sources, transforms and sinks linked into this binary
";

#[derive(Debug, Parser)]
#[command(name = "etcdsync", version, about = "Keeps etcd v3 in step with PostgreSQL and MySQL/MariaDB tables", after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline until SIGINT/SIGTERM (snapshot first if needed, then stream changes)
    #[command(after_help = "Example:\n  etcdsync run --config-file examples/quickstart.yaml")]
    Run {
        /// The pipeline's YAML configuration
        #[arg(short = 'c', long = "config-file", value_name = "FILE")]
        config_file: PathBuf,
    },
    /// List the sources, transforms and sinks linked into this binary
    Plugins {
        /// Also print each plugin's example configuration
        #[arg(long)]
        examples: bool,
    },
}

/// Parses `std::env::args` and runs the command; the process exit code says how it went.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::execute(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
