//! Dispatch of the CLI's subcommands.

mod plugins;
mod run;

use crate::Command;
use std::process::ExitCode;

pub fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config_file } => run::run(&config_file),
        Command::Plugins { examples } => {
            print!("{}", plugins::render(examples));
            Ok(ExitCode::SUCCESS)
        }
    }
}
