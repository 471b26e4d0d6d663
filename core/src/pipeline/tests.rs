//! Error counting and the shutdown timeout, with in-process fake plugins.
use super::*;
use crate::change::{Checkpoint, Position};
use crate::sink::{Sink, SinkConfig, SinkContext};
use crate::source::{Source, SourceConfig};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// `fail`: the source fails at once with that kind; otherwise it never stops (`hang`).
#[derive(Debug, Serialize, Deserialize)]
struct TestSource {
    #[serde(default)]
    fail: Option<String>,
}

struct Running(Option<String>);

#[async_trait]
#[typetag::serde(name = "pipeline_test_source")]
impl SourceConfig for TestSource {
    fn validate(&self, _name: &str) -> Result<()> {
        Ok(())
    }
    fn former_names(&self) -> &'static [&'static str] {
        &["pipeline_test_former"]
    }
    async fn build(&self, _cx: SourceContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(Running(self.fail.clone())))
    }
}

#[async_trait]
impl Source for Running {
    async fn run(self: Box<Self>, io: SourceIo) -> Result<()> {
        match self.0.as_deref() {
            Some("fatal") => Err(Error::fatal("the test source failed")),
            Some("polite") => {
                io.shutdown.cancelled().await;
                Ok(())
            }
            Some(_) => Err(Error::config("the test source is misconfigured")),
            // Ignores the shutdown signal, as a source stuck in I/O would.
            None => {
                let _keep = io;
                std::future::pending().await
            }
        }
    }
}

/// `checkpoint_source`: the sink holds a checkpoint that source wrote.
#[derive(Debug, Serialize, Deserialize)]
struct TestSink {
    #[serde(default)]
    checkpoint_source: Option<String>,
}

#[derive(Default)]
struct Draining {
    checkpoint_source: Option<String>,
}

#[async_trait]
#[typetag::serde(name = "pipeline_test_sink")]
impl SinkConfig for TestSink {
    fn validate(&self, _name: &str) -> Result<()> {
        Ok(())
    }
    async fn build(&self, _cx: SinkContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(Draining {
            checkpoint_source: self.checkpoint_source.clone(),
        }))
    }
}

#[async_trait]
impl Sink for Draining {
    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        Ok(self.checkpoint_source.clone().map(|source| Checkpoint {
            source,
            position: Position::new("p1"),
            committed_at: None,
            applied_at: "2026-01-01T00:00:00Z".into(),
        }))
    }
    async fn run(self: Box<Self>, mut io: SinkIo) -> Result<()> {
        while io.input.recv().await.is_some() {}
        Ok(())
    }
}

fn config(source: &str) -> PipelineConfig {
    PipelineConfig::parse(&format!(
        "name: t\nsource: {{ type: pipeline_test_source{source} }}\nsink: {{ type: pipeline_test_sink }}\nshutdown_timeout: 200ms\n"
    ))
    .expect("config")
}

fn errors(kind: &str, stage: &str) -> u64 {
    telemetry::get()
        .errors
        .with_label_values(&[kind, stage])
        .get()
}

#[tokio::test]
async fn errors_are_counted_by_kind_and_stage() {
    let before = errors("fatal", stage::SOURCE);
    let error = run(&config(", fail: fatal"), CancellationToken::new())
        .await
        .expect_err("the source fails");
    assert!(error.to_string().contains("test source failed"), "{error}");
    assert_eq!(errors("fatal", stage::SOURCE), before + 1);

    let before = errors("config", stage::SOURCE);
    run(&config(", fail: config"), CancellationToken::new())
        .await
        .expect_err("the source fails");
    assert_eq!(errors("config", stage::SOURCE), before + 1);
}

#[tokio::test]
async fn a_stage_that_does_not_stop_fails_after_the_shutdown_timeout_naming_it() {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
    });
    let before = errors("fatal", stage::PIPELINE);
    let started = Instant::now();
    let error = run(&config(""), shutdown)
        .await
        .expect_err("the source ignores the stop signal");
    let message = error.to_string();
    assert!(
        message.contains("did not stop within shutdown_timeout (200ms)"),
        "{message}"
    );
    assert!(
        message.contains("still running: the source (pipeline_test_source)"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(errors("fatal", stage::PIPELINE), before + 1);
}

/// A sink that elects through [`FakeLeadership`]s the test can depose.
#[derive(Debug, Serialize, Deserialize)]
struct LeadingSink {
    /// Distinguishes the tests' registries (they run in parallel).
    id: String,
}

#[derive(Default)]
struct Elections {
    won: Vec<Fence>,
    resigned: usize,
    /// Campaigns after this many wins find another instance leading.
    other_leads_after: Option<usize>,
}

fn elections() -> &'static Mutex<HashMap<String, Elections>> {
    static ELECTIONS: std::sync::OnceLock<Mutex<HashMap<String, Elections>>> =
        std::sync::OnceLock::new();
    ELECTIONS.get_or_init(Default::default)
}

fn with_elections<T>(id: &str, f: impl FnOnce(&mut Elections) -> T) -> T {
    let mut all = elections().lock().unwrap_or_else(|p| p.into_inner());
    f(all.entry(id.to_string()).or_default())
}

struct FakeLeadership {
    id: String,
    fence: Fence,
}

#[async_trait]
impl Leadership for FakeLeadership {
    fn fence(&self) -> Fence {
        self.fence.clone()
    }
    async fn confirm(&self) -> Result<()> {
        if self.fence.lost.is_cancelled() {
            return Err(self.fence.deposed("confirm"));
        }
        Ok(())
    }
    async fn resign(self: Box<Self>) {
        with_elections(&self.id, |e| e.resigned += 1);
    }
}

#[async_trait]
#[typetag::serde(name = "pipeline_test_leading_sink")]
impl SinkConfig for LeadingSink {
    fn validate(&self, _name: &str) -> Result<()> {
        Ok(())
    }
    async fn build(&self, cx: SinkContext) -> Result<Box<dyn Sink>> {
        assert!(cx.fence.is_some(), "built without the won fence");
        Ok(Box::new(Draining::default()))
    }
    async fn elect(
        &self,
        _cx: &SinkContext,
        _campaign: &Campaign,
        _shutdown: &CancellationToken,
    ) -> Result<Option<Box<dyn Leadership>>> {
        let fence = with_elections(&self.id, |e| {
            if e.other_leads_after.is_some_and(|n| e.won.len() >= n) {
                // Not `fatal`: another test counts fatal pipeline errors at the same time.
                return Err(Error::config(
                    "pipeline `t` is already running on host elsewhere, pid 7",
                ));
            }
            let fence = Fence::new(e.won.len() as i64 + 1);
            e.won.push(fence.clone());
            Ok(fence)
        })?;
        Ok(Some(Box::new(FakeLeadership {
            id: self.id.clone(),
            fence,
        })))
    }
    fn supports_leadership(&self) -> bool {
        true
    }
}

fn leading_config(id: &str, source: &str, ha: bool) -> PipelineConfig {
    PipelineConfig::parse(&format!(
        "name: t\nsource: {{ type: pipeline_test_source{source} }}\nsink: {{ type: pipeline_test_leading_sink, id: {id} }}\n\
         shutdown_timeout: 200ms\nha: {{ enabled: {ha}, lease_ttl: 2s }}\n"
    ))
    .expect("config")
}

async fn wait_for_elections(id: &str, count: usize) -> Fence {
    for _ in 0..200 {
        if let Some(fence) = with_elections(id, |e| e.won.get(count - 1).cloned()) {
            return fence;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("election {count} never happened");
}

#[tokio::test]
async fn a_lost_fence_stops_every_stage_at_once_and_without_ha_exits() {
    // The source ignores the stop signal: only aborting it ends the attempt.
    with_elections("lost-noha", |e| e.other_leads_after = Some(1));
    let config = leading_config("lost-noha", "", false);
    let task = tokio::spawn(async move { run(&config, CancellationToken::new()).await });
    let fence = wait_for_elections("lost-noha", 1).await;
    fence.lost.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stopped at once")
        .expect("join");
    let error = result.expect_err("a deposed instance without ha exits with an error");
    assert_eq!(error.kind(), ErrorKind::Fenced);
    assert!(
        error.to_string().contains("set `ha.enabled: true`"),
        "{error}"
    );
    assert_eq!(
        with_elections("lost-noha", |e| e.resigned),
        0,
        "nothing to resign after losing"
    );
}

#[tokio::test]
async fn without_ha_a_lost_leadership_nobody_else_took_is_taken_again() {
    // An etcd outage longer than the lease: nobody else leads, so the pipeline goes on.
    let config = leading_config("lost-retake", ", fail: polite", false);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { run(&config, stop).await });
    wait_for_elections("lost-retake", 1).await.lost.cancel();
    let again = wait_for_elections("lost-retake", 2).await;
    assert!(!again.lost.is_cancelled());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("join")
        .expect("a clean stop");
}

#[test]
fn a_fence_past_its_lease_is_lost() {
    let fence = Fence::new(3);
    fence.check("now").expect("no bound yet");
    fence.renewed_until(Instant::now() + Duration::from_secs(60));
    fence.check("now").expect("within the lease");
    fence.renewed_until(Instant::now());
    let error = fence.check("ending a session").expect_err("past the lease");
    assert_eq!(error.kind(), ErrorKind::Fenced);
    assert!(fence.lost.is_cancelled());
}

#[tokio::test]
async fn with_ha_a_deposed_instance_stands_by_and_leads_again() {
    let config = leading_config("lost-ha", ", fail: polite", true);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { run(&config, stop).await });
    wait_for_elections("lost-ha", 1).await.lost.cancel();
    // Campaigns again and runs under the new fence.
    let second = wait_for_elections("lost-ha", 2).await;
    assert_eq!(second.token, 2);
    assert!(!second.lost.is_cancelled());
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("join");
    result.expect("a clean stop");
    assert_eq!(
        with_elections("lost-ha", |e| e.resigned),
        1,
        "a clean stop resigns"
    );
}

#[test]
fn ha_needs_a_sink_that_elects() {
    let error = PipelineConfig::parse(
        "name: t\nsource: { type: pipeline_test_source }\nsink: { type: pipeline_test_sink }\nha: { enabled: true }\n",
    )
    .expect_err("refused");
    assert!(error.to_string().contains("at `ha.enabled`"), "{error}");
}

#[test]
fn a_chunk_is_full_at_its_count_or_its_bytes() {
    use crate::change::{Column, TableId, TableSchema};
    use crate::{Change, Value};
    let table = Arc::new(TableSchema::new(
        TableId::new("s", "t"),
        vec![Column::new("id", "int8"), Column::new("doc", "text")],
        vec![0],
    ));
    let row = |size: usize| vec![Value::Int(1), Value::Text("x".repeat(size))];
    let mut small = Chunk::default();
    let full_at = (1..=CHANGES_PER_MESSAGE)
        .find(|_| small.push(Change::insert(table.clone(), row(10))))
        .expect("full by count");
    assert_eq!(full_at, CHANGES_PER_MESSAGE);
    assert_eq!(small.take().len(), CHANGES_PER_MESSAGE);
    assert!(small.is_empty());
    let mut large = Chunk::default();
    let full_at = (1..=CHANGES_PER_MESSAGE)
        .find(|_| large.push(Change::insert(table.clone(), row(64 * 1024))))
        .expect("full by bytes");
    assert_eq!(full_at, BYTES_PER_MESSAGE.div_ceil(64 * 1024 + 24));
}

#[tokio::test]
async fn a_checkpoint_of_a_former_source_name_resumes_and_a_foreign_one_is_refused() {
    let with_checkpoint_of = |source: &str| {
        PipelineConfig::parse(&format!(
            "name: t\nsource: {{ type: pipeline_test_source, fail: polite }}\n\
             sink: {{ type: pipeline_test_sink, checkpoint_source: {source} }}\nshutdown_timeout: 200ms\n"
        ))
        .expect("config")
    };
    let error = run(&with_checkpoint_of("mysql"), CancellationToken::new())
        .await
        .expect_err("another source's checkpoint");
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(
        error.to_string().contains("written by source `mysql`"),
        "{error}"
    );

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let config = with_checkpoint_of("pipeline_test_former");
    let task = tokio::spawn(async move { run(&config, stop).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !task.is_finished(),
        "a former name's checkpoint was refused"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("join")
        .expect("a clean stop");
}
