//! `etcdsync run`: loads the config, sets up logging, telemetry, signals, the metrics server and
//! snapshot progress, then runs the pipeline. Exit 0 after a clean stop; 1 on an error or when
//! the pipeline did not stop within `shutdown_timeout` of the first signal.

use crate::{logging, metrics, progress, signals};
use anyhow::Context as _;
use etcdsync_core::config::PipelineConfig;
use etcdsync_core::telemetry;
use std::path::Path;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

pub fn run(config_file: &Path) -> anyhow::Result<ExitCode> {
    let config = PipelineConfig::load(config_file)?;
    logging::init(&config.log, "info")?;
    telemetry::init(&config.name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = signals::shutdown_on_signal()?;
        let helpers = CancellationToken::new();
        let _stop_helpers = helpers.clone().drop_guard();
        if let Some(listen) = &config.metrics.listen {
            metrics::start(listen, config.metrics.ready_max_lag, helpers.clone()).await?;
        }
        let progress = progress::spawn(helpers.clone());
        tracing::info!(pipeline = %config.name, "starting");
        let result = etcdsync_core::pipeline::run(&config, shutdown).await;
        helpers.cancel();
        let _ = progress.await;
        match result {
            Ok(()) => {
                tracing::info!(pipeline = %config.name, "stopped");
                Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
            }
            Err(error) => {
                // In the configured log format (JSON logs stay JSON), not as a bare line.
                let error = crate::error_text(&anyhow::Error::new(error));
                tracing::error!(pipeline = %config.name, error = %error, "pipeline stopped with an error");
                Ok(ExitCode::from(1))
            }
        }
    });
    // Do not wait for blocking tasks a plugin may have left behind.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
