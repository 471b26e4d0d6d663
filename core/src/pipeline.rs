//! Runs one pipeline: source → transform chain → sink on bounded channels, acknowledgements
//! flowing back on a `watch` (DESIGN §1). The first task to fail cancels the others; transient
//! failures restart the whole pipeline from the sink's checkpoint with backoff. After the stop
//! signal the pipeline has `shutdown_timeout` to drain, else it fails naming what still ran.
//! Every error the pipeline sees is counted by kind and stage (`telemetry::ERRORS`). Each attempt
//! starts in phase `starting`; the sink moves the phase on as it applies the snapshot markers
//! and the first commit (`telemetry::PHASE`), so it reflects what is durable.

use crate::change::Message;
use crate::config::PipelineConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::leadership::{Campaign, Candidate, Fence, Leadership};
use crate::sink::SinkIo;

use crate::source::{RowFetcher, SourceContext, SourceIo};
use crate::telemetry::{self, Phase};
use crate::transform::Chain;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Messages buffered between two stages. Each message is a chunk of changes, so this bounds
/// memory to a few thousand rows per stage.
pub const CHANNEL_CAPACITY: usize = 16;

/// Rows per `Changes` message that sources should aim for.
pub const CHANGES_PER_MESSAGE: usize = 256;

/// Bytes of row values per `Changes` message a source should not go past: with
/// [`CHANGES_PER_MESSAGE`] and [`CHANNEL_CAPACITY`] it bounds what a stage buffers when rows are
/// large (4 kB values, old and new rows: 256 changes would be 2 MiB a message).
pub const BYTES_PER_MESSAGE: usize = 256 * 1024;

/// Changes gathered for one `Changes` message, full at [`CHANGES_PER_MESSAGE`] changes or
/// [`BYTES_PER_MESSAGE`] bytes, whichever comes first.
#[derive(Debug, Default)]
pub struct Chunk {
    changes: Vec<crate::Change>,
    bytes: usize,
}

impl Chunk {
    /// Adds a change; `true` when the chunk is now full and should be sent.
    pub fn push(&mut self, change: crate::Change) -> bool {
        self.bytes += change.approx_bytes();
        self.changes.push(change);
        self.changes.len() >= CHANGES_PER_MESSAGE || self.bytes >= BYTES_PER_MESSAGE
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// The changes gathered so far, leaving the chunk empty.
    pub fn take(&mut self) -> Vec<crate::Change> {
        self.bytes = 0;
        std::mem::take(&mut self.changes)
    }
}

/// Stage labels of `etcdsync_errors_total` and of the shutdown-timeout message.
pub mod stage {
    pub const SOURCE: &str = "source";
    pub const TRANSFORM: &str = "transform";
    pub const SINK: &str = "sink";
    pub const PIPELINE: &str = "pipeline";
}

/// Runs the pipeline until `shutdown` is cancelled or a non-transient error occurs. Transient
/// errors restart it from the checkpoint, with exponential backoff (1 s … 30 s). Once
/// `shutdown` is cancelled, the stages get `config.shutdown_timeout` to finish the in-flight
/// transaction; after that this returns an error naming what was still running (and the
/// stages are aborted: the checkpoint in the sink is still the last one written).
pub async fn run(config: &PipelineConfig, shutdown: CancellationToken) -> Result<()> {
    let activity = Activity::default();
    let work = run_leading(config, shutdown.clone(), &activity);
    tokio::pin!(work);
    let timeout = config.shutdown_timeout;
    tokio::select! {
        biased;
        result = &mut work => result,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(timeout).await;
        } => {
            let running = activity.describe();
            telemetry::get().error(ErrorKind::Fatal, stage::PIPELINE);
            Err(Error::fatal(format!(
                "did not stop within shutdown_timeout ({}) after the stop signal; still running: {running}. \
                 Nothing was acknowledged beyond the last checkpoint, so the next start resumes after it; \
                 raise `shutdown_timeout` if the sink is slow",
                humantime::format_duration(timeout)
            )))
        }
    }
}

/// Takes the pipeline's leadership in the sink's store, runs while it leads, and — with
/// `ha.enabled` — stands by again after losing it (DESIGN §7). A clean stop resigns, so a
/// standby takes over at once.
async fn run_leading(
    config: &PipelineConfig,
    shutdown: CancellationToken,
    activity: &Activity,
) -> Result<()> {
    let telemetry = telemetry::get();
    let campaign = Campaign {
        candidate: Candidate::this_process(&config.ha),
        ha: config.ha.clone(),
    };
    // Without ha, a lost leadership is re-campaigned once without waiting: after an etcd outage
    // longer than the lease nobody else leads and this instance goes on; when another instance
    // leads, the campaign fails naming it.
    let mut deposed: Option<Error> = None;
    loop {
        let leadership = match elect_retrying(config, &campaign, &shutdown, activity).await {
            Ok(leadership) => leadership,
            Err(error) if shutdown.is_cancelled() => {
                tracing::debug!(error = %error, "stopped while campaigning");
                return Ok(());
            }
            Err(error) => {
                telemetry.error(error.kind(), stage::PIPELINE);
                return Err(match deposed.take() {
                    Some(lost) => Error::fenced(format!(
                        "{lost}; {error}. This instance exits (set `ha.enabled: true` to keep it as a \
                         hot standby instead)"
                    )),
                    None => error,
                });
            }
        };
        if shutdown.is_cancelled() {
            if let Some(leadership) = leadership {
                leadership.resign().await;
            }
            return Ok(());
        }
        deposed = None;
        telemetry.leader.set(1);
        let result =
            run_restarting(config, shutdown.clone(), activity, leadership.as_deref()).await;
        telemetry.leader.set(0);
        // A standby is not streaming, whatever the last attempt reached (`/readyz`).
        telemetry.set_phase(Phase::Starting);
        let Some(leadership) = leadership else {
            return result;
        };
        match result {
            Err(error) if error.kind() == ErrorKind::Fenced && !shutdown.is_cancelled() => {
                // The store no longer holds this leadership: nothing to resign.
                drop(leadership);
                if config.ha.enabled {
                    tracing::warn!(error = %error, "lost the pipeline's leadership; standing by");
                } else {
                    tracing::warn!(error = %error, "lost the pipeline's leadership; campaigning again unless another instance leads");
                    deposed = Some(error);
                }
            }
            Err(error) if error.kind() == ErrorKind::Fenced => return Err(error),
            result => {
                leadership.resign().await;
                return result;
            }
        }
    }
}

/// [`SinkConfig::elect`](crate::sink::SinkConfig::elect), retrying transient failures (etcd
/// unreachable) with backoff until it succeeds, fails for good, or `shutdown`.
async fn elect_retrying(
    config: &PipelineConfig,
    campaign: &Campaign,
    shutdown: &CancellationToken,
    activity: &Activity,
) -> Result<Option<Box<dyn Leadership>>> {
    let _electing = activity.enter("campaigning for the pipeline's leadership");
    let mut backoff = Duration::from_secs(1);
    loop {
        match config
            .sink
            .elect(&config.sink_context(None), campaign, shutdown)
            .await
        {
            Err(error) if error.is_transient() && !shutdown.is_cancelled() => {
                telemetry::get().retry(stage::PIPELINE);
                tracing::warn!(error = %error, retry_in = ?backoff, "campaigning for the pipeline's leadership failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

async fn run_restarting(
    config: &PipelineConfig,
    shutdown: CancellationToken,
    activity: &Activity,
    leadership: Option<&dyn Leadership>,
) -> Result<()> {
    let fence = leadership.map(Leadership::fence);
    let mut backoff = Duration::from_secs(1);
    loop {
        if let Some(leadership) = leadership {
            // A restart after an error may follow a takeover (the error was the old source
            // connection being ended by the new leader): make sure before connecting again.
            confirm_still_leading(leadership).await?;
        }
        let started = Instant::now();
        match run_attempt(config, shutdown.clone(), activity, fence.clone()).await {
            Err(error) if error.kind() == ErrorKind::Fenced => return Err(error),
            Err(error) if error.is_transient() && !shutdown.is_cancelled() => {
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                telemetry::get().retry(stage::PIPELINE);
                tracing::warn!(error = %error, retry_in = ?backoff, "pipeline failed; restarting from the checkpoint");
                let _waiting = activity.enter("waiting to restart after a transient error");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = lost(&fence) => return Err(leadership_lost(&fence)),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(error) => {
                // The error may be the consequence of a takeover (the new leader ended this
                // instance's source connection): report that, not the symptom.
                if let Some(leadership) = leadership {
                    confirm_still_leading(leadership).await?;
                }
                return Err(error);
            }
            other => return other,
        }
    }
}

/// `Err` (kind `Fenced`) when the store says another instance leads; a store that cannot be
/// asked right now is not a reason to stop (the guarded writes still protect the data).
async fn confirm_still_leading(leadership: &dyn Leadership) -> Result<()> {
    let fence = leadership.fence();
    fence.check("before (re)starting the pipeline")?;
    match leadership.confirm().await {
        Err(error) if error.kind() == ErrorKind::Fenced => Err(error),
        Err(error) => {
            tracing::debug!(error = %error, "could not confirm leadership now; the guarded writes will tell");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Resolves when the fence is lost; never without a fence.
async fn lost(fence: &Option<Fence>) {
    match fence {
        Some(fence) => fence.lost.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Runs `work` unless the fence is lost first (then it is dropped where it is).
async fn until_lost<T>(
    fence: &Option<Fence>,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        _ = lost(fence) => Err(leadership_lost(fence)),
        done = work => done,
    }
}

fn leadership_lost(fence: &Option<Fence>) -> Error {
    Error::fenced(format!(
        "the pipeline's leadership (token {}) was lost: its lease expired or another instance took over; \
         all writing stopped at once and nothing more was acknowledged",
        fence.as_ref().map_or(0, |f| f.token)
    ))
}

/// One attempt without an election (tests): build the sink, read its checkpoint, build the
/// source to resume after it, and run all stages until they finish. The sink writes unfenced.
pub async fn run_once(config: &PipelineConfig, shutdown: CancellationToken) -> Result<()> {
    run_attempt(config, shutdown, &Activity::default(), None).await
}

async fn run_attempt(
    config: &PipelineConfig,
    shutdown: CancellationToken,
    activity: &Activity,
    fence: Option<Fence>,
) -> Result<()> {
    let telemetry = telemetry::get();
    telemetry.set_phase(Phase::Starting);
    let counted = |stage: &'static str| {
        move |error: Error| {
            telemetry.error(error.kind(), stage);
            error
        }
    };
    let source_type = config.source.plugin_name().to_string();
    let sink_type = config.sink.typetag_name().to_string();

    let building = activity.enter(format!("connecting the sink ({sink_type})"));
    let (sink, resume, written_tables) = until_lost(&fence, async {
        let mut sink = config
            .sink
            .build(config.sink_context(fence.clone()))
            .await
            .map_err(counted(stage::SINK))?;
        let resume = sink.checkpoint().await.map_err(counted(stage::SINK))?;
        let written = sink
            .written_tables()
            .await
            .map_err(counted(stage::SINK))?
            .unwrap_or_default();
        Ok((sink, resume, written))
    })
    .await?;
    drop(building);
    if let Some(checkpoint) = &resume {
        if !crate::change::same_source(
            &checkpoint.source,
            &source_type,
            config.source.former_names(),
        ) {
            return Err(counted(stage::PIPELINE)(Error::config(format!(
                "the checkpoint in the sink was written by source `{}` but this config's source is `{source_type}`; \
                 give this pipeline another `name` (or sink `meta_prefix`), or delete the old checkpoint to start over",
                checkpoint.source
            ))));
        }
        tracing::info!(position = %checkpoint.position, "resuming after checkpoint");
    }
    let building = activity.enter(format!("connecting the source ({source_type})"));
    let source = until_lost(
        &fence,
        config.source.build(SourceContext {
            name: config.name.clone(),
            resume,
            fence: fence.clone(),
            written_tables,
        }),
    )
    .await
    .map_err(counted(stage::SOURCE))?;
    drop(building);
    let mut chain = Chain::new(
        config
            .transforms
            .iter()
            .enumerate()
            .map(|(i, t)| t.build().map_err(|e| e.context(format!("transforms[{i}]"))))
            .collect::<Result<Vec<_>>>()
            .map_err(counted(stage::TRANSFORM))?,
    );

    let fetcher = source.fetcher();
    let stop = shutdown.child_token();
    let (source_tx, source_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (ack_tx, ack_rx) = watch::channel(None);
    let mut tasks = JoinSet::new();
    let mut stages: HashMap<tokio::task::Id, (&'static str, Running<'_>)> = HashMap::new();

    let sink_input = if chain.is_empty() {
        source_rx
    } else {
        let (sink_tx, sink_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let handle = {
            let fetcher = fetcher.clone();
            tasks
                .spawn(async move { run_transforms(&mut chain, fetcher, source_rx, sink_tx).await })
        };
        stages.insert(
            handle.id(),
            (stage::TRANSFORM, activity.enter("the transform stage")),
        );
        sink_rx
    };
    let handle = tasks.spawn(source.run(SourceIo {
        output: source_tx,
        acked: ack_rx,
        shutdown: stop.clone(),
    }));
    stages.insert(
        handle.id(),
        (
            stage::SOURCE,
            activity.enter(format!("the source ({source_type})")),
        ),
    );
    let handle = tasks.spawn(sink.run(SinkIo {
        input: sink_input,
        acked: ack_tx,
        shutdown: stop.clone(),
        fetcher,
    }));
    stages.insert(
        handle.id(),
        (
            stage::SINK,
            activity.enter(format!(
                "the sink ({sink_type}: the in-flight transaction and its checkpoint)"
            )),
        ),
    );

    let mut first_error: Option<Error> = None;
    loop {
        let joined = tokio::select! {
            joined = tasks.join_next_with_id() => match joined {
                Some(joined) => joined,
                None => break,
            },
            _ = lost(&fence) => {
                // Stop every stage where it is: in-flight results are ignored, nothing more is
                // acknowledged upstream.
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                let error = leadership_lost(&fence);
                telemetry.error(error.kind(), stage::PIPELINE);
                return Err(error);
            }
        };
        let (stage, result) = match joined {
            Ok((id, result)) => (stages.remove(&id).map(|(s, _)| s), result),
            Err(e) => (
                stages.remove(&e.id()).map(|(s, _)| s),
                Err(Error::new(
                    ErrorKind::Fatal,
                    format!("a pipeline task panicked or was aborted: {e}"),
                )),
            ),
        };
        if let Err(error) = result {
            stop.cancel();
            if first_error.is_none() {
                telemetry.error(error.kind(), stage.unwrap_or(stage::PIPELINE));
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
    fetcher: Option<Arc<dyn RowFetcher>>,
    mut input: mpsc::Receiver<Message>,
    output: mpsc::Sender<Message>,
) -> Result<()> {
    while let Some(message) = input.recv().await {
        let message = match message {
            Message::Changes(mut changes) => {
                if let Some(fetcher) = &fetcher {
                    crate::source::fill_unchanged(fetcher.as_ref(), &mut changes).await?;
                }
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

/// What the pipeline is doing now, for the shutdown-timeout message.
#[derive(Default)]
struct Activity {
    running: Mutex<Vec<(u64, String)>>,
    next: AtomicU64,
}

/// Removes its entry from [`Activity`] when dropped.
struct Running<'a> {
    activity: &'a Activity,
    id: u64,
}

impl Activity {
    fn enter(&self, what: impl Into<String>) -> Running<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().push((id, what.into()));
        Running { activity: self, id }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, String)>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn describe(&self) -> String {
        let running = self.lock();
        if running.is_empty() {
            "nothing (the pipeline was finishing)".into()
        } else {
            running
                .iter()
                .map(|(_, what)| what.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.activity.lock().retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests;
