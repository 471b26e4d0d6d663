//! `{meta}/status` (DESIGN §2): the running sink publishes where the pipeline is, for
//! `etcdsync status` in another process. Only a running sink writes it (every
//! [`STATUS_INTERVAL`] and at once on a phase change, and a last time when it stops cleanly), only
//! that one key, and with the sink's guard compares (HA fencing, DESIGN §7). A failed write is
//! logged and never stops or slows the pipeline.
//!
//! The value is compact JSON ([`Status`]):
//!
//! ```json
//! {"phase":"snapshot","updated_at":"2024-05-01T12:00:00.000000Z","pid":4242,"host":"db-sync-1",
//!  "tables":{"public.users":{"rows":1200,"estimated_rows":5000,"done":false}},
//!  "last_commit_at":null,"lag_seconds":null,"txns_applied":0}
//! ```
//!
//! - `phase`: `starting` (connected, nothing received yet), `snapshot` (between the snapshot's
//!   start and end), `streaming` (after the snapshot, or from the first commit or heartbeat when
//!   resuming from a checkpoint).
//! - `updated_at`: RFC 3339 UTC time of this write. A value older than a few intervals means the
//!   sink is not running (or cannot reach etcd).
//! - `pid`, `host`: the process that writes it.
//! - `tables`: snapshot progress by `schema.table` as the source reports it: `rows` read so far,
//!   `estimated_rows` from the source's statistics (`null` if unknown), `done`. Tables of a
//!   finished snapshot stay listed (`done: true`); empty when this process ran no snapshot.
//! - `last_commit_at`: RFC 3339 commit time (at the source) of the last source transaction
//!   applied to etcd by this process; `null` before the first.
//! - `lag_seconds`: seconds from that transaction's commit at the source to its application in
//!   etcd (`etcdsync_replication_lag_seconds`); `null` before the first. It is the lag of the last
//!   applied transaction, so it does not grow while the source is idle.
//! - `txns_applied`: source transactions applied to etcd by this process.
//! - `stopped`: present and `true` only on the last write of a sink that stopped cleanly.

use crate::client::EtcdClient;
use crate::config::Settings;
use crate::error::EtcdError;
use crate::events;
use etcd_client::{Compare, Txn, TxnOp};
use etcdsync_core::change::rfc3339;
use etcdsync_core::telemetry::{self, Phase};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the running sink rewrites the status key.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// Longest wait for the last status write when the sink stops.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The JSON document under `{meta}/status` (fields documented in the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub phase: Phase,
    pub updated_at: String,
    pub pid: u32,
    pub host: String,
    pub tables: BTreeMap<String, TableStatus>,
    pub last_commit_at: Option<String>,
    pub lag_seconds: Option<f64>,
    pub txns_applied: u64,
    /// Set on the last write of a sink that stopped cleanly: nothing is running any more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

/// Snapshot progress of one table in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStatus {
    pub rows: u64,
    pub estimated_rows: Option<u64>,
    pub done: bool,
}

impl Status {
    /// The status of this process now, from the process-wide telemetry.
    pub fn current() -> Self {
        let t = telemetry::get();
        let last_commit = t.last_commit();
        Self {
            phase: t.phase_now(),
            updated_at: rfc3339(SystemTime::now()),
            pid: std::process::id(),
            host: host().to_string(),
            tables: t
                .snapshot_progress()
                .into_iter()
                .map(|(table, progress)| {
                    (
                        table.to_string(),
                        TableStatus {
                            rows: progress.rows,
                            estimated_rows: progress.estimated_rows,
                            done: progress.done,
                        },
                    )
                })
                .collect(),
            last_commit_at: last_commit.map(rfc3339),
            lag_seconds: last_commit.map(|_| t.replication_lag.get()),
            txns_applied: events::source_txns_applied(),
            stopped: false,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Strings, numbers and maps of them always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `unknown`).
fn host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unknown".into())
    })
}

/// Writes the status key once.
#[derive(Clone)]
struct Publisher {
    client: EtcdClient,
    key: String,
    guards: Arc<Vec<Compare>>,
}

impl Publisher {
    async fn publish(&self) -> Result<(), EtcdError> {
        self.publish_status(Status::current()).await
    }

    async fn publish_status(&self, status: Status) -> Result<(), EtcdError> {
        let value = status.to_json();
        let response = self
            .client
            .retry("write the status key", None, Some(1), |mut kv| {
                let mut txn = Txn::new();
                if !self.guards.is_empty() {
                    txn = txn.when(self.guards.to_vec());
                }
                let txn = txn.and_then(vec![TxnOp::put(self.key.as_str(), value.clone(), None)]);
                async move { kv.txn(txn).await }
            })
            .await?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(EtcdError::CompareFailed("write the status key".into()))
        }
    }
}

/// The task that keeps `{meta}/status` current while a sink runs.
pub struct StatusWriter {
    publisher: Publisher,
    wake: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl StatusWriter {
    /// Starts writing `{meta}/status` now and every [`STATUS_INTERVAL`] until [`Self::stop`] or
    /// `shutdown`.
    pub fn start(
        client: EtcdClient,
        settings: &Settings,
        guards: Arc<Vec<Compare>>,
        shutdown: CancellationToken,
    ) -> Self {
        let publisher = Publisher {
            client,
            key: settings.kv.status_key(),
            guards,
        };
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(run(publisher.clone(), Arc::clone(&wake), shutdown));
        Self {
            publisher,
            wake,
            task: Some(task),
        }
    }

    /// Notified when the phase changed: the status is written soon.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Stops the periodic writes; with `last_write`, writes the status a last time (bounded wait).
    pub async fn stop(&mut self, last_write: bool) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
            if last_write {
                let last = Status {
                    stopped: true,
                    ..Status::current()
                };
                match tokio::time::timeout(FINAL_WRITE_TIMEOUT, self.publisher.publish_status(last))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(error = %error, "last status write failed")
                    }
                    Err(_) => tracing::debug!("last status write timed out"),
                }
            }
        }
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(publisher: Publisher, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        match publisher.publish().await {
            Ok(()) => {
                if failing {
                    tracing::info!(key = %publisher.key, "status key written again");
                }
                failing = false;
            }
            Err(EtcdError::CompareFailed(_)) => {
                tracing::warn!(key = %publisher.key, "status key not written: this instance's guard compare failed; stopping status updates");
                return;
            }
            Err(error) => {
                events::status_write_failed(error.kind());
                if !failing {
                    tracing::warn!(error = %error, key = %publisher.key, "cannot write the status key; retrying every interval");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(STATUS_INTERVAL) => {}
            _ = wake.notified() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_has_every_documented_field() {
        let status = Status {
            phase: Phase::Snapshot,
            updated_at: "2024-05-01T12:00:00.000000Z".into(),
            pid: 42,
            host: "h".into(),
            tables: [(
                "public.users".to_string(),
                TableStatus {
                    rows: 1200,
                    estimated_rows: None,
                    done: false,
                },
            )]
            .into_iter()
            .collect(),
            last_commit_at: None,
            lag_seconds: None,
            txns_applied: 0,
            stopped: false,
        };
        let text = String::from_utf8(status.to_json()).expect("utf8");
        assert_eq!(
            text,
            r#"{"phase":"snapshot","updated_at":"2024-05-01T12:00:00.000000Z","pid":42,"host":"h","tables":{"public.users":{"rows":1200,"estimated_rows":null,"done":false}},"last_commit_at":null,"lag_seconds":null,"txns_applied":0}"#
        );
        let back: Status = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, status);
        let last = Status {
            stopped: true,
            ..status
        };
        let text = String::from_utf8(last.to_json()).expect("utf8");
        assert!(
            text.ends_with(r#""txns_applied":0,"stopped":true}"#),
            "{text}"
        );
        let now = Status::current();
        assert_eq!(now.pid, std::process::id());
        assert!(!now.host.is_empty());
    }
}
