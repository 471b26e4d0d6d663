//! The etcdsync command line as a library: [`main`] parses arguments and runs a command with
//! whatever plugins are linked into the binary. A third-party binary links its own plugin crates
//! and calls [`main`] to get the same CLI (`check`, `status` and `verify` included: they work
//! through the plugins' inspectors, generic over whichever plugins the config selects).

mod commands;
mod logging;
mod metrics;
mod progress;
mod signals;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// Built-in plugins: naming the crates keeps their registrations in the binary.
#[cfg(feature = "sink-etcd")]
use etcdsync_etcd as _;
#[cfg(feature = "source-mysql")]
use etcdsync_mysql as _;
#[cfg(feature = "source-pgx")]
use etcdsync_pgx as _;
#[cfg(feature = "transforms")]
use etcdsync_transforms as _;

const EXAMPLES: &str = "\
Examples:
  etcdsync run --config-file examples/quickstart.yaml
  etcdsync run -c sync.yaml            # ${VAR} in the file is read from the environment
  etcdsync check -c sync.yaml          # every prerequisite, with the fix for each failure
  etcdsync status -c sync.yaml --json  # phase, checkpoint, lag, keys per table
  etcdsync verify -c sync.yaml         # compare the database with etcd; --repair fixes drift
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
    /// Check the configuration and every prerequisite of the source and the sink; exit 1 on any failure
    #[command(after_help = "Example:\n  etcdsync check -c sync.yaml\n\n\
        Each line is `[ok] scope: name: detail` or `[FAIL] scope: name: detail — fix: …`.\n\
        Nothing is written unless --write-probe is given.")]
    Check {
        /// The pipeline's YAML configuration
        #[arg(short = 'c', long = "config-file", value_name = "FILE")]
        config_file: PathBuf,
        /// Print the results as one JSON document
        #[arg(long)]
        json: bool,
        /// Also probe writing: put and delete one key `{meta_prefix}/check/…` in etcd, and send
        /// etcd requests it checks but never applies (permissions, max_request_bytes)
        #[arg(long)]
        write_probe: bool,
    },
    /// Show the pipeline's phase, checkpoint, lag and keys per table (works while `run` runs elsewhere)
    #[command(after_help = "Example:\n  etcdsync status -c sync.yaml --json | jq .lag_seconds")]
    Status {
        /// The pipeline's YAML configuration
        #[arg(short = 'c', long = "config-file", value_name = "FILE")]
        config_file: PathBuf,
        /// Print one JSON document (field names are stable; see docs/operations.md)
        #[arg(long)]
        json: bool,
    },
    /// Compare every selected table with etcd: missing, different and extra keys; exit 1 on drift
    #[command(after_help = "Examples:\n  etcdsync verify -c sync.yaml\n  \
        etcdsync verify -c sync.yaml --repair   # stop `etcdsync run` first: repair writes while a pipeline may write too")]
    Verify {
        /// The pipeline's YAML configuration
        #[arg(short = 'c', long = "config-file", value_name = "FILE")]
        config_file: PathBuf,
        /// Write missing and different values and delete extra keys
        #[arg(long)]
        repair: bool,
        /// Also count as extra, and delete with --repair, the keys of tables this pipeline wrote
        /// and no longer selects (off: they are listed as `unselected`, never deleted)
        #[arg(long)]
        delete_unselected: bool,
        /// How many keys of each kind (missing, different, extra) to list
        #[arg(long, value_name = "N", default_value_t = 20)]
        max_report: usize,
        /// Print one JSON document
        #[arg(long)]
        json: bool,
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
            eprintln!("error: {}", error_text(&error));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, `: `-joined, leaving out a cause whose text the message already
/// holds (plugin errors carry their cause's text in their own message).
pub(crate) fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}
