//! etcdsync sink plugin `etcd`: applies the change stream to etcd v3 in transactions that carry
//! the checkpoint (DESIGN §2–6). Build it from YAML (`type: etcd`, [`EtcdConfig`]) or directly
//! with [`EtcdConfig::settings`] and [`EtcdSink::connect`]; [`EtcdInspector`] serves `check`,
//! `status` and `verify`.

pub mod batch;
pub mod checkpoint;
pub mod client;
pub mod config;
pub mod error;
pub mod events;
pub mod index;
pub mod inspect;
pub mod leader;
pub mod sink;
pub mod status;

pub use config::{EtcdConfig, OnInvalidKey, OnOversize, Settings, TlsConfig};
pub use error::EtcdError;
pub use inspect::EtcdInspector;
pub use sink::EtcdSink;

use etcdsync_core::registry::{PluginInfo, PluginKind};

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
request_timeout: 10s
"#,
});
