//! SIGINT/SIGTERM handling: the first signal asks the pipeline to stop after the in-flight
//! transaction is acknowledged; a second one exits at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Exit code for a forced exit on the second signal (128 + SIGINT).
const FORCED_EXIT: i32 = 130;

pub fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("signal received: finishing the in-flight transaction, then stopping (signal again to exit now)");
        cancel.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting");
        std::process::exit(FORCED_EXIT);
    });
    Ok(token)
}
