//! etcdsync sink plugin `etcd`: applies the change stream to etcd v3 in transactions that carry
//! the checkpoint (DESIGN §2–6). Build it from YAML (`type: etcd`, [`EtcdConfig`]) or directly
//! with [`EtcdConfig::settings`] and [`EtcdSink::connect`]; [`EtcdInspector`] serves `check`,
//! `status` and `verify`.

pub mod client;
pub mod config;
pub mod error;
pub mod inspect;
pub mod leader;
pub mod sink;
pub mod status;
pub mod store;
pub mod table_markers;
pub mod txn;

pub use config::{EtcdConfig, OnInvalidKey, OnOversize, Settings, TlsConfig};
pub use error::EtcdError;
pub use inspect::EtcdInspector;
pub use sink::EtcdSink;

// The store-neutral parts, from the sink kit (paths kept for this crate's modules).
pub use etcdsync_sink_kit::markers as checkpoint;
pub use etcdsync_sink_kit::{batch, events, index, test_hooks};

use client::EtcdClient;
use etcdsync_core::inspect::SinkInspector;
use etcdsync_core::leadership::{Campaign, Leadership};
use etcdsync_core::registry::{PluginInfo, PluginKind};
use etcdsync_core::sink::{Sink, SinkConfig, SinkContext};
use etcdsync_core::Result;
use tokio_util::sync::CancellationToken;

inventory::submit!(PluginInfo {
    kind: PluginKind::Sink,
    name: "etcd",
    summary: "etcd v3: one key per row, JSON values, checkpoint stored in the same transaction",
    example: r#"type: etcd
endpoints: ["http://127.0.0.1:2379"]
prefix: /etcdsync
# meta_prefix: /etcdsync-meta/<pipeline name>
# username: etcdsync
# password: "${ETCD_PASSWORD}"
# tls: { ca: /etc/etcd/ca.pem, cert: /etc/etcd/client.pem, key: /etc/etcd/client-key.pem }
max_txn_ops: 128
max_request_bytes: 1572864
on_oversize: error
on_invalid_key: error
snapshot_txns_in_flight: 4
stream_txns_in_flight: 1
request_timeout: 10s
"#,
});

/// The wiring of the plugin: YAML `type: etcd` builds the sink, its election and its inspector.
#[async_trait::async_trait]
#[typetag::serde(name = "etcd")]
impl SinkConfig for EtcdConfig {
    fn validate(&self, pipeline_name: &str) -> Result<()> {
        self.settings(pipeline_name).map(|_| ())
    }

    async fn build(&self, cx: SinkContext) -> Result<Box<dyn Sink>> {
        let settings = self.settings(&cx.name)?;
        let sink = EtcdSink::connect(settings, cx.source_type)
            .await?
            .with_fence(cx.fence);
        Ok(Box::new(sink))
    }

    async fn elect(
        &self,
        cx: &SinkContext,
        campaign: &Campaign,
        shutdown: &CancellationToken,
    ) -> Result<Option<Box<dyn Leadership>>> {
        let settings = self.settings(&cx.name)?;
        let client = EtcdClient::connect(&settings).await?;
        let won = crate::leader::campaign(&client, &settings, &cx.name, campaign, shutdown).await?;
        Ok(won.map(Into::into))
    }

    fn supports_leadership(&self) -> bool {
        true
    }

    /// Does not connect: `check` reports connection problems as failed checks, the other
    /// operations connect on first use.
    async fn inspect(&self, cx: SinkContext) -> Result<Box<dyn SinkInspector>> {
        let settings = self.settings(&cx.name)?;
        Ok(Box::new(
            EtcdInspector::new(settings, cx.source_type)
                .with_former_source_names(cx.former_source_names)
                .with_fence(cx.fence),
        ))
    }
}
