//! `etcdsync run`: loads the config, sets up logging and signals, runs the pipeline.

use crate::{logging, signals};
use anyhow::Context as _;
use etcdsync_core::config::PipelineConfig;
use std::path::Path;
use std::process::ExitCode;

pub fn run(config_file: &Path) -> anyhow::Result<ExitCode> {
    let config = PipelineConfig::load(config_file)?;
    logging::init(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = signals::shutdown_on_signal()?;
        tracing::info!(pipeline = %config.name, "starting");
        etcdsync_core::pipeline::run(&config, shutdown).await?;
        tracing::info!(pipeline = %config.name, "stopped");
        Ok(ExitCode::SUCCESS)
    })
}
