//! The etcd sink: reads where the previous run stopped (checkpoint, split-transaction marker,
//! table markers), then runs the kit's [`Writer`] over [`EtcdStore`] while
//! [`crate::status`] keeps `{meta}/status` current. A write refused by the leadership fence
//! ends the run as deposed (DESIGN §7).

use crate::checkpoint::{SnapshotMarker, SnapshotState};
use crate::client::EtcdClient;
use crate::config::Settings;
use crate::error::EtcdError;
use crate::status::StatusWriter;
use crate::store::EtcdStore;
use etcd_client::Compare;
use etcdsync_core::leadership::Fence;
use etcdsync_core::sink::{Sink, SinkIo};
use etcdsync_core::telemetry::{self, Phase};
use etcdsync_core::{Checkpoint, Result, TableId};
use etcdsync_sink_kit::writer::{Resumed, Writer, WriterParts};
use etcdsync_sink_kit::KitError;
use std::collections::HashSet;
use std::sync::Arc;

/// The etcd sink, connected and ready to run.
pub struct EtcdSink {
    client: EtcdClient,
    settings: Arc<Settings>,
    source_type: String,
    /// The leadership this sink writes under; every transaction compares its token.
    fence: Option<Fence>,
    guards: Arc<Vec<Compare>>,
    /// What [`Sink::checkpoint`] found: the position and a split transaction's progress.
    resumed: Resumed,
    /// Tables whose marker [`Sink::written_tables`] found: not written again this run.
    marked: HashSet<TableId>,
}

impl std::fmt::Debug for EtcdSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSink")
            .field("endpoints", &self.settings.endpoints)
            .field("data_prefix", &self.settings.kv.data_prefix)
            .field("meta_prefix", &self.settings.kv.meta_prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdSink {
    /// Connects with checked settings ([`crate::EtcdConfig::settings`]). `source_type` is
    /// recorded in every checkpoint.
    pub async fn connect(
        settings: Settings,
        source_type: impl Into<String>,
    ) -> Result<Self, EtcdError> {
        let client = EtcdClient::connect(&settings).await?;
        tracing::info!(
            endpoints = ?settings.endpoints,
            prefix = %settings.kv.data_prefix,
            meta_prefix = %settings.kv.meta_prefix,
            "etcd sink connected"
        );
        Ok(Self {
            client,
            settings: Arc::new(settings),
            source_type: source_type.into(),
            fence: None,
            guards: Arc::new(Vec::new()),
            resumed: Resumed::default(),
            marked: HashSet::new(),
        })
    }

    /// Makes every transaction — data, checkpoint, snapshot marker, status, index, clean-up —
    /// carry `CreateRevision(leader key) == fence.token` (DESIGN §7). A refused write cancels the
    /// fence and stops the sink with an error of kind `Fenced`.
    pub fn with_fence(mut self, fence: Option<Fence>) -> Self {
        self.guards = Arc::new(
            fence
                .iter()
                .map(|f| crate::leader::fence_guard(&self.settings, f))
                .collect(),
        );
        self.fence = fence;
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn client(&self) -> &EtcdClient {
        &self.client
    }
}

#[async_trait::async_trait]
impl Sink for EtcdSink {
    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        let key = self.settings.kv.checkpoint_key();
        let response = self
            .client
            .get("read the checkpoint", key.as_str(), None, None, Some(3))
            .await?;
        let checkpoint_value = response.kvs().first().map(|kv| kv.value().to_vec());
        let partial_key = self.settings.kv.partial_key();
        let response = self
            .client
            .get(
                "read the split-transaction marker",
                partial_key.as_str(),
                None,
                None,
                Some(3),
            )
            .await?;
        let (checkpoint, resumed) = Resumed::from_stored(
            &self.settings.kv,
            checkpoint_value.as_deref(),
            response.kvs().first().map(|kv| kv.value()),
        )?;
        self.resumed = resumed;
        Ok(checkpoint)
    }

    async fn written_tables(&mut self) -> Result<Option<HashSet<TableId>>> {
        let mut tables = crate::table_markers::read(&self.client, &self.settings, Some(3)).await?;
        self.marked.clone_from(&tables);
        // A copy that did not finish wrote some of its tables' rows: they count as not written,
        // so a source that copies never-written tables copies them again.
        let key = self.settings.kv.snapshot_key();
        let response = self
            .client
            .get(
                "read the snapshot marker",
                key.as_str(),
                None,
                None,
                Some(3),
            )
            .await?;
        if let Some(kv) = response.kvs().first() {
            let marker: SnapshotMarker = serde_json::from_slice(kv.value()).map_err(|e| {
                EtcdError::Kit(KitError::Malformed {
                    key: key.clone(),
                    reason: e.to_string(),
                })
            })?;
            if marker.state == SnapshotState::Running {
                for table in &marker.tables {
                    tables.remove(table);
                }
            }
        }
        Ok(Some(tables))
    }

    async fn run(self: Box<Self>, io: SinkIo) -> Result<()> {
        let SinkIo {
            input,
            acked,
            shutdown,
            fetcher,
        } = io;
        let EtcdSink {
            client,
            settings,
            source_type,
            fence,
            guards,
            resumed,
            marked,
        } = *self;
        // Before the status writer starts, so its first write says so.
        telemetry::get().set_phase(Phase::Starting);
        let mut status = StatusWriter::start(
            client.clone(),
            &settings,
            Arc::clone(&guards),
            shutdown.clone(),
        );
        let store = EtcdStore {
            client,
            guards,
            shutdown: shutdown.clone(),
            probe_key: settings.kv.snapshot_key(),
            leader: fence
                .as_ref()
                .map(|fence| (settings.kv.leader_key(), fence.token)),
        };
        let mut writer = Writer::new(WriterParts {
            store,
            settings: Arc::new(settings.kv.clone()),
            source_type,
            resumed,
            marked,
            acked,
            shutdown,
            fetcher,
            phase_changed: status.waker(),
        });
        let result = writer.run(input).await;
        writer.abort();
        if let (Err(EtcdError::CompareFailed(op)), Some(fence)) = (&result, &fence) {
            // Not even the last status write: another instance leads.
            status.stop(false).await;
            return Err(fence.deposed(&format!("etcd refused to {op}")));
        }
        let clean = matches!(result, Ok(()) | Err(EtcdError::Shutdown));
        status.stop(clean).await;
        match result {
            Ok(()) | Err(EtcdError::Shutdown) => Ok(()),
            Err(error) => {
                // counted (etcdsync_errors_total, stage sink) by the pipeline that receives it
                tracing::error!(error = %error, "etcd sink stopped");
                Err(error.into())
            }
        }
    }
}
