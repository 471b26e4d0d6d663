//! The `Source` plugin contract: how a source is configured, built and run, and what it must
//! promise the pipeline (DESIGN §1, §5).

use crate::change::{Checkpoint, Message, Position};
use crate::error::Result;
use crate::inspect::SourceInspector;
use crate::leadership::Fence;
use async_trait::async_trait;
use std::fmt::Debug;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// What a source gets when it is built.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The pipeline name (`name:` in the config).
    pub name: String,
    /// The checkpoint found in the sink, if any: resume strictly after it.
    pub resume: Option<Checkpoint>,
    /// The pipeline's leadership when the sink elects one (DESIGN §7): a source may then take
    /// over upstream resources an earlier instance of the pipeline still holds, after
    /// [`Fence::check`]. `None`: no election; never disturb another session.
    pub fence: Option<Fence>,
}

/// Reads a row's current values from the source, for a sink that has no stored value to fill an
/// unchanged (TOAST) column from (DESIGN §3). What it returns may be newer than the change
/// being applied; the later change that wrote it follows and converges.
#[async_trait]
pub trait RowFetcher: Send + Sync {
    /// The row of `table` whose key columns hold `key`, by column name, as the source holds it
    /// now; `None` when there is no such row.
    async fn fetch(
        &self,
        table: &crate::change::TableSchema,
        key: &[crate::value::Value],
    ) -> Result<Option<Vec<(String, crate::value::Value)>>>;
}

/// The source's ends of the pipeline.
pub struct SourceIo {
    /// Where messages go. Bounded: a full channel is the pipeline's backpressure.
    pub output: mpsc::Sender<Message>,
    /// The last position the sink made durable. Confirm upstream only up to this; the channel
    /// closes when the sink has finished.
    pub acked: watch::Receiver<Option<Position>>,
    /// Cancelled when the pipeline should stop.
    pub shutdown: CancellationToken,
}

/// The sink is gone (it stopped or failed); the source should stop quietly: the sink's own
/// error is what the pipeline reports.
#[derive(Debug, thiserror::Error)]
#[error("the pipeline's sink has stopped")]
pub struct OutputClosed;

impl SourceIo {
    /// Sends one message, waiting for room.
    pub async fn send(&self, message: Message) -> Result<(), OutputClosed> {
        self.output.send(message).await.map_err(|_| OutputClosed)
    }

    /// Waits until the sink has finished (after the source dropped `output`) and returns the
    /// last acknowledged position, for a final status update upstream.
    pub async fn final_ack(mut acked: watch::Receiver<Option<Position>>) -> Option<Position> {
        while acked.changed().await.is_ok() {}
        let last = acked.borrow().clone();
        last
    }
}

/// A running source.
///
/// Contract:
/// - emit transactions in commit order: `Changes`… then `Commit`; never interleave two;
/// - a snapshot is `SnapshotStarted`, `Changes` (inserts only), `SnapshotFinished`;
/// - confirm upstream only positions received on `acked`;
/// - on shutdown: stop reading, drop `output`, wait for [`SourceIo::final_ack`], confirm it, return.
#[async_trait]
pub trait Source: Send {
    /// Reads rows by key for the sink (unchanged TOAST values it cannot fill); `None` (the
    /// default): the source cannot.
    fn fetcher(&self) -> Option<std::sync::Arc<dyn RowFetcher>> {
        None
    }

    async fn run(self: Box<Self>, io: SourceIo) -> Result<()>;
}

/// A source's configuration, selected in YAML by `type:`.
#[async_trait]
#[typetag::serde(tag = "type")]
pub trait SourceConfig: Debug + Send + Sync {
    /// The plugin's name as checkpoints record it: the same for every alias of one plugin
    /// (`type: postgres` is `pgx`), so switching between aliases keeps the checkpoint.
    fn plugin_name(&self) -> &'static str {
        self.typetag_name()
    }

    /// Checks the configuration without I/O; errors name the key and the fix.
    fn validate(&self, pipeline_name: &str) -> Result<()>;

    /// Connects and returns the running source.
    async fn build(&self, cx: SourceContext) -> Result<Box<dyn Source>>;

    /// Connects for `check`, `status` and `verify`. Plugins that do not support them keep this
    /// default, which says so.
    async fn inspect(&self, pipeline_name: &str) -> Result<Box<dyn SourceInspector>> {
        let _ = pipeline_name;
        Err(crate::Error::config(format!(
            "source `{}` does not support check, status or verify",
            self.typetag_name()
        )))
    }
}
