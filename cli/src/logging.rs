//! Log setup: `log.format` text|json, `log.level`, overridden by `RUST_LOG`.

use etcdsync_core::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(&value)
            .map_err(|e| anyhow::anyhow!("RUST_LOG `{value}` is not a valid filter: {e}"))?,
        _ => {
            let level = config.level.as_deref().unwrap_or("info");
            EnvFilter::try_new(level).map_err(|e| {
                anyhow::anyhow!("at `log.level`: `{level}` is not a valid filter (e.g. info, debug, etcdsync_pgx=debug): {e}")
            })?
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}
