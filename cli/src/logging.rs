//! Log setup: `log.format` text|json, `log.level`, overridden by `RUST_LOG`; always to stderr.
//! While progress bars are drawn, each log line is written with the bars suspended so the two
//! never garble each other.

use crate::progress;
use etcdsync_core::config::{LogConfig, LogFormat};
use std::io::{IsTerminal as _, Write};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `default_level` applies when neither `RUST_LOG` nor
/// `log.level` is set.
pub fn init(config: &LogConfig, default_level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => EnvFilter::try_new(&value)
            .map_err(|e| anyhow::anyhow!("RUST_LOG `{value}` is not a valid filter: {e}"))?,
        _ => {
            let level = config.level.as_deref().unwrap_or(default_level);
            EnvFilter::try_new(level).map_err(|e| {
                anyhow::anyhow!("at `log.level`: `{level}` is not a valid filter (e.g. info, debug, etcdsync_pgx=debug): {e}")
            })?
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(Stderr);
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// stderr, routed around the progress bars when they are drawn.
#[derive(Clone, Copy)]
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter hands over one whole event per call.
        match progress::bars() {
            Some(bars) => bars.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
