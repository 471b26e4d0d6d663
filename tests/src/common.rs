//! Helpers every real-server test shares: environment variables of `tools/testenv.sh`, unique
//! names, and etcd read-back and clean-up.

use etcdsync_core::source::{Source, SourceIo};
use etcdsync_core::{Message, Position};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// An environment variable of `tools/testenv.sh`; missing → panic (never skip).
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run tools/testenv.sh start and source target/testenv/env")
    })
}

/// A name unique to this process and call, usable as database name and etcd prefix.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or(0);
    format!("{prefix}_{}_{t}_{n}", std::process::id())
}

/// Every key and value under `prefix` in etcd, read in pages (gRPC limits one response).
pub async fn etcd_dump(client: &mut etcd_client::Client, prefix: &str) -> BTreeMap<String, String> {
    let end = etcdsync_core::encode::key::prefix_range_end(prefix);
    let mut out = BTreeMap::new();
    let mut from = prefix.as_bytes().to_vec();
    loop {
        let options = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_limit(1000);
        let response = client
            .get(from.clone(), Some(options))
            .await
            .expect("etcd get");
        for kv in response.kvs() {
            out.insert(
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            );
        }
        match response.kvs().last() {
            Some(last) if response.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return out,
        }
    }
}

pub async fn etcd() -> etcd_client::Client {
    let endpoint = env("ETCDSYNC_TEST_ETCD");
    etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to etcd at {endpoint}: {e}"))
}

/// Deletes etcd prefixes when dropped.
pub struct EtcdPrefixGuard(pub Vec<String>);

impl Drop for EtcdPrefixGuard {
    fn drop(&mut self) {
        let prefixes = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(endpoint) = std::env::var("ETCDSYNC_TEST_ETCD") else {
                    return;
                };
                let Ok(mut client) = etcd_client::Client::connect([endpoint.as_str()], None).await
                else {
                    return;
                };
                for prefix in prefixes {
                    let _ = client
                        .delete(
                            prefix,
                            Some(etcd_client::DeleteOptions::new().with_prefix()),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// Polls until `f` returns true or `timeout` passes; returns whether it became true.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Keys under `prefix` in etcd (count only).
pub async fn etcd_count(client: &mut etcd_client::Client, prefix: &str) -> i64 {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    client
        .get(prefix, Some(options))
        .await
        .map(|r| r.count())
        .unwrap_or(-1)
}

/// A running source wired to an in-memory sink that records every message and (with `ack`)
/// acknowledges every position at once — the harness both sources' tests use.
pub struct RecordedSource {
    pub messages: Arc<Mutex<Vec<Message>>>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<etcdsync_core::Result<()>>,
    /// Ends with the last acknowledged position when the source drops its output.
    pub sink: tokio::task::JoinHandle<Option<Position>>,
}

/// Runs `source` against a recording sink; see [`RecordedSource`].
pub fn run_recorded(source: Box<dyn Source>, ack: bool) -> RecordedSource {
    let (tx, mut rx) = mpsc::channel(16);
    let (ack_tx, ack_rx) = watch::channel(None);
    let shutdown = CancellationToken::new();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let recorded = messages.clone();
    let sink = tokio::spawn(async move {
        let mut last = None;
        while let Some(message) = rx.recv().await {
            let position = match &message {
                Message::Commit(commit) => Some(commit.position.clone()),
                Message::SnapshotFinished { position } | Message::Heartbeat { position } => {
                    Some(position.clone())
                }
                _ => None,
            };
            if let Ok(mut all) = recorded.lock() {
                all.push(message);
            }
            if let Some(position) = position.filter(|_| ack) {
                last = Some(position.clone());
                let _ = ack_tx.send(Some(position));
            }
        }
        last
    });
    let io = SourceIo {
        output: tx,
        acked: ack_rx,
        shutdown: shutdown.clone(),
    };
    // A source that fails says why in the test's output (the waits only see that it ended).
    let task = tokio::spawn(async move {
        let result = source.run(io).await;
        if let Err(error) = &result {
            eprintln!("the source stopped with an error: {error}");
        }
        result
    });
    RecordedSource {
        messages,
        shutdown,
        task,
        sink,
    }
}
