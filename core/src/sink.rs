//! The `Sink` plugin contract: a sink applies messages durably, keeps the checkpoint with the
//! data (DESIGN §4–5) and reports what is durable.

use crate::change::{Checkpoint, Message, Position};
use crate::error::Result;
use crate::inspect::SinkInspector;
use crate::leadership::{Campaign, Fence, Leadership};
use async_trait::async_trait;
use std::fmt::Debug;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// What a sink gets when it is built.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// The pipeline name (`name:` in the config).
    pub name: String,
    /// The source's plugin name, recorded in checkpoints.
    pub source_type: String,
    /// Names earlier versions recorded for the same source (an alias's own name, say): a
    /// checkpoint with one of them resumes as if it had `source_type`.
    pub former_source_names: Vec<String>,
    /// The leadership this sink writes under: every write must be conditional on it
    /// (DESIGN §7). `None` for sinks built outside an election (`check`, tests).
    pub fence: Option<Fence>,
}

impl SinkContext {
    /// Whether a checkpoint recorded by source `recorded` belongs to this pipeline's source.
    pub fn is_own_source(&self, recorded: &str) -> bool {
        crate::change::same_source(recorded, &self.source_type, &self.former_source_names)
    }
}

/// The sink's ends of the pipeline.
pub struct SinkIo {
    pub input: mpsc::Receiver<Message>,
    /// Publish each position once the data up to it is durable, never before.
    pub acked: watch::Sender<Option<Position>>,
    pub shutdown: CancellationToken,
    /// The source's row reader, when it has one ([`crate::source::RowFetcher`]).
    pub fetcher: Option<std::sync::Arc<dyn crate::source::RowFetcher>>,
}

/// A running sink.
///
/// Contract: apply changes in order; acknowledge a position only after the write carrying its
/// checkpoint succeeded; when `input` closes, finish what is in flight for completed
/// transactions, drop an unfinished trailing transaction (it will be replayed), and return.
#[async_trait]
pub trait Sink: Send {
    /// The checkpoint stored with the data, if any.
    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>>;

    /// The tables this pipeline has written rows of, as the store records them; `None` (the
    /// default): the sink does not record them. Sources learn of tables dropped while the
    /// pipeline was stopped from it ([`crate::source::SourceContext::written_tables`]).
    async fn written_tables(
        &mut self,
    ) -> Result<Option<std::collections::HashSet<crate::TableId>>> {
        Ok(None)
    }

    async fn run(self: Box<Self>, io: SinkIo) -> Result<()>;
}

/// A sink's configuration, selected in YAML by `type:`.
#[async_trait]
#[typetag::serde(tag = "type")]
pub trait SinkConfig: Debug + Send + Sync {
    /// Checks the configuration without I/O; errors name the key and the fix.
    fn validate(&self, pipeline_name: &str) -> Result<()>;

    /// Connects and returns the running sink.
    async fn build(&self, cx: SinkContext) -> Result<Box<dyn Sink>>;

    /// Takes the pipeline's leadership in the sink's store (DESIGN §7) before anything writes.
    /// With `campaign.ha.enabled` it waits (as a hot standby) until it wins or `shutdown`;
    /// without, it fails naming the holder when another instance leads. `Ok(None)`: this sink
    /// does not coordinate instances (the default; `ha.enabled` is then refused by `validate`).
    async fn elect(
        &self,
        cx: &SinkContext,
        campaign: &Campaign,
        shutdown: &CancellationToken,
    ) -> Result<Option<Box<dyn Leadership>>> {
        let _ = (cx, campaign, shutdown);
        Ok(None)
    }

    /// Whether [`Self::elect`] coordinates instances (so `ha.enabled` can work).
    fn supports_leadership(&self) -> bool {
        false
    }

    /// Connects for `check`, `status` and `verify`. Plugins that do not support them keep this
    /// default, which says so.
    async fn inspect(&self, cx: SinkContext) -> Result<Box<dyn SinkInspector>> {
        let _ = cx;
        Err(crate::Error::config(format!(
            "sink `{}` does not support check, status or verify",
            self.typetag_name()
        )))
    }
}
