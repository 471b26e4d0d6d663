//! Dispatch of the CLI's subcommands, and what the operator commands share: loading the config,
//! logging to stderr (reports go to stdout) and connecting the plugins' inspectors.

mod check;
mod plugins;
mod run;
mod status;
mod verify;

use crate::{logging, Command};
use anyhow::Context as _;
use etcdsync_core::config::PipelineConfig;
use etcdsync_core::inspect::{CheckOptions, SinkInspector, SourceInspector};
use etcdsync_core::leadership::{Campaign, Candidate, Fence, HaConfig, Leadership};
use etcdsync_core::sink::SinkContext;
use std::path::Path;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

pub fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config_file } => run::run(&config_file),
        Command::Check {
            config_file,
            json,
            write_probe,
        } => check::check(&config_file, json, CheckOptions { write_probe }),
        Command::Status { config_file, json } => status::status(&config_file, json),
        Command::Verify {
            config_file,
            repair,
            delete_unselected,
            max_report,
            json,
        } => verify::verify(
            &config_file,
            verify::Options {
                repair,
                delete_unselected,
                max_report,
                json,
            },
        ),
        Command::Plugins { examples } => {
            print!("{}", plugins::render(examples));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads the config and sets up logging for a one-shot operator command (default level `warn`,
/// so stdout carries the report and stderr only what went wrong).
fn load_for_command(config_file: &Path) -> anyhow::Result<PipelineConfig> {
    let config = PipelineConfig::load(config_file)?;
    logging::init(&config.log, "warn")?;
    Ok(config)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn sink_context(config: &PipelineConfig) -> SinkContext {
    config.sink_context(None)
}

async fn source_inspector(config: &PipelineConfig) -> anyhow::Result<Box<dyn SourceInspector>> {
    config
        .source
        .inspect(&config.name)
        .await
        .with_context(|| format!("source `{}`", config.source.typetag_name()))
}

async fn sink_inspector(config: &PipelineConfig) -> anyhow::Result<Box<dyn SinkInspector>> {
    sink_inspector_fenced(config, None).await
}

/// A sink inspector whose writes carry `fence` (`verify --repair`).
async fn sink_inspector_fenced(
    config: &PipelineConfig,
    fence: Option<Fence>,
) -> anyhow::Result<Box<dyn SinkInspector>> {
    config
        .sink
        .inspect(config.sink_context(fence))
        .await
        .with_context(|| format!("sink `{}`", config.sink.typetag_name()))
}

/// How long `verify --repair` tries to reach the sink's store for the leadership.
const REPAIR_CAMPAIGN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The pipeline's leadership for a command that writes (`verify --repair`): refused, naming the
/// holder, while an instance of the pipeline runs. `None`: the sink does not coordinate.
async fn take_leadership_for_repair(
    config: &PipelineConfig,
) -> anyhow::Result<Option<Box<dyn Leadership>>> {
    // Named by host:pid, never by `ha.instance`: run beside the pipeline (kubectl exec), that
    // name would take the running leader's record for its own dead predecessor.
    let ha = HaConfig {
        enabled: false,
        instance: None,
        ..config.ha.clone()
    };
    let campaign = Campaign {
        candidate: Candidate::this_process(&ha),
        ha,
    };
    let give_up = CancellationToken::new();
    let _timer = give_up.clone().drop_guard();
    let timer = give_up.clone();
    tokio::spawn(async move {
        tokio::time::sleep(REPAIR_CAMPAIGN_TIMEOUT).await;
        timer.cancel();
    });
    let leadership = config
        .sink
        .elect(&sink_context(config), &campaign, &give_up)
        .await
        .context("verify --repair writes only while no instance of the pipeline runs")?;
    if give_up.is_cancelled() {
        anyhow::bail!(
            "verify --repair could not take the pipeline's leadership within {}s (is the sink reachable?); nothing was written",
            REPAIR_CAMPAIGN_TIMEOUT.as_secs()
        );
    }
    Ok(leadership)
}
