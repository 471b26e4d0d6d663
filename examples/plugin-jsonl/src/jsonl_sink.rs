//! `type: jsonl` — a sink on etcdsync's sink kit: the kit's [`Writer`] orders, batches,
//! checkpoints and acknowledges; this file is the store. A write appends its data ops as JSON
//! lines (`put` with key and value, `delete` with its key, `delete_prefix` for a truncate) — a
//! key-value log: the kit merges one key's changes within a write. A write carrying the checkpoint
//! (or a split transaction's progress) fsyncs the lines, then atomically replaces a sidecar with
//! the metadata keys and the file's length; a restart cuts lines after it, so each write is in
//! the file once. A log lists no rows: TOAST values come from the source, snapshots delete
//! nothing, transformed keys (a key index) are refused. Memory holds one write.

use etcdsync_core::registry::{PluginInfo, PluginKind};
use etcdsync_core::sink::{Sink, SinkConfig, SinkContext, SinkIo};
use etcdsync_core::{async_trait, Checkpoint, Error, Result};
use etcdsync_sink_kit::batch::KvOp;
use etcdsync_sink_kit::keys::Keys;
use etcdsync_sink_kit::settings::SinkSettings;
use etcdsync_sink_kit::store::{Condition, Ops, Page, Store};
use etcdsync_sink_kit::writer::{Resumed, Writer, WriterParts};
use etcdsync_sink_kit::KitError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// File the change lines are appended to.
    pub path: PathBuf,
}

inventory::submit! {
    PluginInfo {
        kind: PluginKind::Sink,
        name: "jsonl",
        summary: "appends every change as a JSON line to a file (example plugin on the sink kit)",
        example: "type: jsonl\npath: /tmp/changes.jsonl\n",
    }
}

#[async_trait]
#[typetag::serde(name = "jsonl")]
impl SinkConfig for JsonlConfig {
    fn validate(&self, _pipeline_name: &str) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::config(
                "at `sink.path`: empty; give the file to append to",
            ));
        }
        Ok(())
    }

    async fn build(&self, cx: SinkContext) -> Result<Box<dyn Sink>> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(io("open", &self.path))?;
        let mut sidecar_path = self.path.clone().into_os_string();
        sidecar_path.push(".checkpoint");
        let state = State {
            path: self.path.clone(),
            sidecar_path: sidecar_path.into(),
            file,
            sidecar: Sidecar::default(),
        };
        Ok(Box::new(JsonlSink {
            store: JsonlStore(Arc::new(Mutex::new(state))),
            source_type: cx.source_type,
            resumed: Resumed::default(),
        }))
    }
}

/// Writes `bytes` out: a tokio file reports a failed write at the flush, not at `write_all`.
async fn write_out(file: &mut tokio::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes).await?;
    file.flush().await
}

/// A file operation that failed, as the kit's error.
fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> KitError {
    let text = format!("jsonl sink: cannot {what} {}", path.display());
    move |e| KitError::Store(format!("{text}: {e}"))
}

/// The sidecar: metadata keys (value, revision), the revision, and the data file's length.
#[derive(Default, Serialize, Deserialize)]
struct Sidecar {
    offset: u64,
    revision: i64,
    meta: Keys,
}

struct State {
    path: PathBuf,
    sidecar_path: PathBuf,
    file: tokio::fs::File,
    sidecar: Sidecar,
}

const NO_KEY_INDEX: &str = "jsonl sink: keys from a transform need a key index, which a \
     change log does not keep; remove the key_template transform";

/// The change file as the kit's store (clones share it).
#[derive(Clone)]
pub struct JsonlStore(Arc<Mutex<State>>);

impl State {
    /// Appends the data ops as lines; metadata ops change the sidecar, which is then replaced
    /// after the lines are durable (write, fsync, rename, fsync of the directory).
    async fn apply(&mut self, ops: Vec<std::borrow::Cow<'_, KvOp>>) -> Result<(), KitError> {
        let (mut lines, mut durable) = (Vec::new(), false);
        let revision = self.sidecar.revision + 1;
        for op in ops {
            let (name, key, value) = match op.as_ref() {
                KvOp::Put { key, value } => ("put", key, Some(value)),
                KvOp::Delete { key } => ("delete", key, None),
                KvOp::DeleteRange { prefix } => ("delete_prefix", prefix, None),
            };
            if key.starts_with("/meta/index/") || key.starts_with("/meta/owner/") {
                return Err(KitError::Unsupported(NO_KEY_INDEX.into()));
            }
            if key.starts_with("/meta/") {
                self.sidecar.meta.apply(&op, revision);
                // What a restart resumes from; other metadata (table markers) follows it.
                durable |= key == "/meta/checkpoint" || key == "/meta/partial";
                continue;
            }
            let value = value.map(|v| serde_json::from_slice::<serde_json::Value>(v));
            let value = value
                .transpose()
                .map_err(|e| KitError::Internal(e.to_string()))?;
            let mut line = serde_json::json!({ "op": name, "key": key });
            if let Some(value) = value {
                line["value"] = value;
            }
            lines.extend_from_slice(line.to_string().as_bytes());
            lines.push(b'\n');
        }
        let path = self.path.clone();
        write_out(&mut self.file, &lines)
            .await
            .map_err(io("write", &path))?;
        self.sidecar.revision = revision;
        if durable {
            self.file.sync_data().await.map_err(io("sync", &path))?;
            let metadata = self.file.metadata().await;
            self.sidecar.offset = metadata.map_err(io("stat", &path))?.len();
            self.write_sidecar().await?;
        }
        Ok(())
    }

    async fn write_sidecar(&self) -> Result<(), KitError> {
        let text =
            serde_json::to_vec(&self.sidecar).map_err(|e| KitError::Internal(e.to_string()))?;
        let target = self.sidecar_path.clone();
        let temporary = target.with_extension("checkpoint.tmp");
        let mut file = tokio::fs::File::create(&temporary)
            .await
            .map_err(io("create", &temporary))?;
        write_out(&mut file, &text)
            .await
            .map_err(io("write", &temporary))?;
        file.sync_all().await.map_err(io("sync", &temporary))?;
        tokio::fs::rename(&temporary, &target)
            .await
            .map_err(io("rename", &temporary))?;
        let dir = target.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let directory = tokio::fs::File::open(dir).await.map_err(io("open", dir))?;
        directory.sync_all().await.map_err(io("sync", dir))
    }
}

#[async_trait]
impl Store for JsonlStore {
    type Error = KitError;
    const RAISE_REQUEST_LIMIT: &'static str = "split the row's large values";

    async fn apply<'a>(&self, _what: &'static str, build: &Ops<'a>) -> Result<(), KitError> {
        self.0.lock().await.apply(build()).await
    }

    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, KitError> {
        Ok(self.0.lock().await.sidecar.meta.get(key))
    }

    async fn apply_if<'a>(
        &self,
        _what: &'static str,
        key: &str,
        expected: Option<&[u8]>,
        build: &Ops<'a>,
    ) -> Result<Condition, KitError> {
        let mut state = self.0.lock().await;
        let current = state.sidecar.meta.get(key).map(|(value, _)| value);
        if current.as_deref() != expected {
            return Ok(Condition::Found(current));
        }
        state.apply(build()).await?;
        Ok(Condition::Met)
    }

    async fn revision(&self, _what: &'static str) -> Result<i64, KitError> {
        Ok(self.0.lock().await.sidecar.revision)
    }

    async fn count_at(&self, prefix: &str, _revision: i64) -> Option<u64> {
        Some(self.0.lock().await.sidecar.meta.count(prefix))
    }

    async fn page(
        &self,
        prefix: &str,
        after: Option<&[u8]>,
        limit: usize,
        keys_only: bool,
    ) -> Result<Page, KitError> {
        Ok(self
            .0
            .lock()
            .await
            .sidecar
            .meta
            .page(prefix, after, limit, keys_only))
    }
}

struct JsonlSink {
    store: JsonlStore,
    source_type: String,
    resumed: Resumed,
}

#[async_trait]
impl Sink for JsonlSink {
    /// Reads the sidecar and cuts the data file back to the length it records.
    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        let mut state = self.store.0.lock().await;
        let path = state.sidecar_path.clone();
        state.sidecar = match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::config(format!(
                    "jsonl sink: {} is not a checkpoint ({e}); delete it and {} to start over",
                    path.display(),
                    state.path.display()
                ))
            })?,
            // A first run: the file must be new, or it is not this sink's.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let found = state.file.metadata().await.map_err(io("stat", &path))?;
                if found.len() > 0 {
                    return Err(Error::config(format!(
                        "jsonl sink: {} has data but no {}; give a new file",
                        state.path.display(),
                        path.display()
                    )));
                }
                state.write_sidecar().await?;
                Sidecar::default()
            }
            Err(e) => return Err(io("read", &path)(e).into()),
        };
        let (offset, data) = (state.sidecar.offset, state.path.clone());
        let cut = state.file.set_len(offset).await;
        cut.map_err(io("truncate", &data))?;
        let settings = SinkSettings::new("/data", "/meta"); // data and metadata keys
        let value = |key: String| state.sidecar.meta.get(&key).map(|(value, _)| value);
        let (checkpoint, resumed) = Resumed::from_stored(
            &settings,
            value(settings.checkpoint_key()).as_deref(),
            value(settings.partial_key()).as_deref(),
        )?;
        self.resumed = resumed;
        Ok(checkpoint)
    }

    async fn run(self: Box<Self>, io: SinkIo) -> Result<()> {
        let mut writer = Writer::new(WriterParts {
            store: self.store,
            settings: Arc::new(SinkSettings::new("/data", "/meta")),
            source_type: self.source_type,
            resumed: self.resumed,
            marked: Default::default(),
            acked: io.acked,
            shutdown: io.shutdown,
            fetcher: io.fetcher,
            phase_changed: Default::default(),
        });
        let result = writer.run(io.input).await;
        writer.abort();
        Ok(result?)
    }
}
