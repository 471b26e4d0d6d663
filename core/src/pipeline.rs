//! Runs one pipeline: source → transform chain → sink on bounded channels, acknowledgements
//! flowing back on a `watch` (DESIGN §1). The first task to fail cancels the others; transient
//! failures restart the whole pipeline from the sink's checkpoint with backoff.

use crate::change::Message;
use crate::config::PipelineConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{SinkContext, SinkIo};
use crate::source::{SourceContext, SourceIo};
use crate::transform::Chain;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Messages buffered between two stages. Each message is a chunk of changes, so this bounds
/// memory to a few thousand rows per stage.
pub const CHANNEL_CAPACITY: usize = 16;

/// Rows per `Changes` message that sources should aim for.
pub const CHANGES_PER_MESSAGE: usize = 256;

/// Runs the pipeline until `shutdown` is cancelled or a non-transient error occurs. Transient
/// errors restart it from the checkpoint, with exponential backoff (1 s … 30 s).
pub async fn run(config: &PipelineConfig, shutdown: CancellationToken) -> Result<()> {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        match run_once(config, shutdown.clone()).await {
            Err(error) if error.is_transient() && !shutdown.is_cancelled() => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(error = %error, retry_in = ?backoff, "pipeline failed; restarting from the checkpoint");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

/// One attempt: build the sink, read its checkpoint, build the source to resume after it, and
/// run all stages until they finish.
pub async fn run_once(config: &PipelineConfig, shutdown: CancellationToken) -> Result<()> {
    let source_type = config.source.typetag_name().to_string();
    let mut sink = config
        .sink
        .build(SinkContext {
            name: config.name.clone(),
            source_type: source_type.clone(),
        })
        .await?;
    let resume = sink.checkpoint().await?;
    if let Some(checkpoint) = &resume {
        if checkpoint.source != source_type {
            return Err(Error::config(format!(
                "the checkpoint in the sink was written by source `{}` but this config's source is `{source_type}`; \
                 give this pipeline another `name` (or sink `meta_prefix`), or delete the old checkpoint to start over",
                checkpoint.source
            )));
        }
        tracing::info!(position = %checkpoint.position, "resuming after checkpoint");
    }
    let source = config
        .source
        .build(SourceContext {
            name: config.name.clone(),
            resume,
        })
        .await?;
    let mut chain = Chain::new(
        config
            .transforms
            .iter()
            .map(|t| t.build())
            .collect::<Result<Vec<_>>>()?,
    );

    let stop = shutdown.child_token();
    let (source_tx, source_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (ack_tx, ack_rx) = watch::channel(None);
    let mut tasks = JoinSet::new();

    let sink_input = if chain.is_empty() {
        source_rx
    } else {
        let (sink_tx, sink_rx) = mpsc::channel(CHANNEL_CAPACITY);
        tasks.spawn(async move { run_transforms(&mut chain, source_rx, sink_tx).await });
        sink_rx
    };
    tasks.spawn(source.run(SourceIo {
        output: source_tx,
        acked: ack_rx,
        shutdown: stop.clone(),
    }));
    tasks.spawn(sink.run(SinkIo {
        input: sink_input,
        acked: ack_tx,
        shutdown: stop.clone(),
    }));

    let mut first_error: Option<Error> = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|e| {
            Err(Error::new(
                ErrorKind::Fatal,
                format!("a pipeline task panicked or was aborted: {e}"),
            ))
        });
        if let Err(error) = result {
            stop.cancel();
            if first_error.is_none() {
                first_error = Some(error);
            } else {
                tracing::debug!(error = %error, "further error while stopping");
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn run_transforms(
    chain: &mut Chain,
    mut input: mpsc::Receiver<Message>,
    output: mpsc::Sender<Message>,
) -> Result<()> {
    while let Some(message) = input.recv().await {
        let message = match message {
            Message::Changes(changes) => {
                let changes = chain.apply(changes)?;
                if changes.is_empty() {
                    continue;
                }
                Message::Changes(changes)
            }
            other => other,
        };
        if output.send(message).await.is_err() {
            break;
        }
    }
    Ok(())
}
