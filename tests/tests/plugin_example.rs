//! The out-of-tree example plugin crate (`examples/plugin-jsonl`) builds its own etcdsync binary,
//! which lists its plugins beside the built-ins and syncs a real PostgreSQL table through its
//! `tag` transform into its `jsonl` sink.
#![cfg(feature = "integration-tests")]

use etcdsync_tests::pg::{self, TestDb};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Builds the example crate (its own workspace) and returns its binary. Its lock file is not
/// tracked: it is seeded from the workspace's, so the example builds with the versions the
/// workspace tested and shares their compiled artifacts in the workspace's target dir.
fn build_example() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_example_once).clone()
}

fn build_example_once() -> PathBuf {
    let root = repo_root();
    let example = root.join("examples/plugin-jsonl");
    std::fs::copy(root.join("Cargo.lock"), example.join("Cargo.lock"))
        .expect("seed examples/plugin-jsonl/Cargo.lock from the workspace's");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--manifest-path"])
        .arg(example.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("run cargo build for the example plugin");
    assert!(status.success(), "building examples/plugin-jsonl failed");
    target.join("debug/etcdsync-jsonl")
}

/// Starts `etcdsync-jsonl run` on `config`.
fn run_example(binary: &Path, config: &Path) -> std::process::Child {
    Command::new(binary)
        .args(["run", "--config-file"])
        .arg(config)
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcdsync-jsonl run")
}

/// Stops a run with SIGTERM; it must exit cleanly.
fn stop_cleanly(mut child: std::process::Child) {
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "etcdsync-jsonl exited with {status}");
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn example_plugin_binary_runs_against_postgres() {
    let binary = build_example();

    let listing = Command::new(&binary)
        .arg("plugins")
        .output()
        .expect("etcdsync-jsonl plugins");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for (kind, name) in [
        ("sink", "jsonl"),
        ("transform", "tag"),
        ("source", "jsonl_file"),
        ("sink", "etcd"),
        ("source", "pgx"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([kind, name])),
            "`{kind} {name}` missing:\n{listing}"
        );
    }

    let db = TestDb::create("plugin_example").await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, label text); INSERT INTO items VALUES (1, 'one'), (2, 'two');")
        .await
        .expect("schema");

    let dir = std::env::temp_dir().join(pg::unique("etcdsync_plugin_example"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = dir.join("changes.jsonl");
    let config = dir.join("config.yaml");
    let name = pg::unique("plugex").replace('_', "-").to_lowercase();
    let source = pg::source_yaml(&db, &["public.items"], "").replace('\n', "\n  ");
    std::fs::write(
        &config,
        format!(
            "name: {name}\nsource:\n  {source}\ntransforms:\n  - {{ type: tag, column: origin, value: eu-1 }}\nsink: {{ type: jsonl, path: \"{}\" }}\n",
            out.display()
        ),
    )
    .expect("write config");

    let child = run_example(&binary, &config);

    let arrived = pg::eventually(Duration::from_secs(60), || {
        let out = out.clone();
        async move { lines(&out).len() >= 2 }
    })
    .await;
    assert!(arrived, "snapshot rows never reached the jsonl file");
    client
        .batch_execute("INSERT INTO items VALUES (3, 'three')")
        .await
        .expect("insert");
    let streamed = pg::eventually(Duration::from_secs(30), || {
        let out = out.clone();
        async move { lines(&out).len() >= 3 }
    })
    .await;
    assert!(streamed, "streamed insert never reached the jsonl file");
    client
        .batch_execute("DELETE FROM items WHERE id = 1")
        .await
        .expect("delete");
    let deleted = pg::eventually(Duration::from_secs(30), || {
        let out = out.clone();
        async move { lines(&out).len() >= 4 }
    })
    .await;
    assert!(deleted, "the delete never reached the jsonl file");

    stop_cleanly(child);

    let written = lines(&out);
    let (puts, deletes): (Vec<_>, Vec<_>) = written.iter().partition(|l| l["op"] == "put");
    let mut labels: Vec<_> = puts
        .iter()
        .map(|l| l["value"]["label"].as_str().unwrap_or("").to_string())
        .collect();
    labels.sort();
    assert_eq!(labels, ["one", "three", "two"]);
    assert!(puts.iter().all(|l| l["value"]["origin"] == "eu-1"
        && l["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("/data/public/items/"))));
    // A delete carries the key of the row it removes.
    assert_eq!(deletes.len(), 1, "{written:?}");
    assert_eq!(deletes[0]["op"], "delete");
    assert_eq!(deletes[0]["key"], "/data/public/items/1");
    assert_eq!(deletes[0].get("value"), None);
    // The sidecar records the checkpoint and the file's length: nothing after it, nothing
    // missing before it.
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("changes.jsonl.checkpoint")).expect("checkpoint file"),
    )
    .expect("sidecar JSON");
    let stored: Vec<u8> = serde_json::from_value(sidecar["meta"]["/meta/checkpoint"][0].clone())
        .expect("a checkpoint in the sidecar");
    let checkpoint: serde_json::Value = serde_json::from_slice(&stored).expect("checkpoint JSON");
    assert_eq!(checkpoint["source"], "pgx");
    let length = std::fs::metadata(&out).expect("data file").len();
    assert_eq!(sidecar["offset"].as_u64(), Some(length));

    // Lines past the checkpoint (a crash between writing and checkpointing) are cut off at the
    // next start; what follows arrives once.
    let mut torn = std::fs::read(&out).expect("data file");
    torn.extend_from_slice(b"{\"op\":\"put\",\"key\":\"/data/public/items/9\",\"torn\":true}\n");
    std::fs::write(&out, torn).expect("append a torn line");
    let child = run_example(&binary, &config);
    client
        .batch_execute("INSERT INTO items VALUES (4, 'four')")
        .await
        .expect("insert");
    let resumed = pg::eventually(Duration::from_secs(30), || {
        let out = out.clone();
        async move { lines(&out).iter().any(|l| l["value"]["label"] == "four") }
    })
    .await;
    assert!(resumed, "the insert after the restart never arrived");
    stop_cleanly(child);
    let written = lines(&out);
    assert!(
        written.iter().all(|l| l.get("torn").is_none()),
        "{written:?}"
    );
    assert_eq!(written.len(), 5, "each change once: {written:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The example *source*: a file of JSON-lines changes into the real etcd sink — lines appended
/// while running arrive, a restart resumes after the checkpoint (nothing applied twice, nothing
/// lost), and a delete removes the key.
#[tokio::test(flavor = "multi_thread")]
async fn example_source_follows_a_change_file_into_etcd() {
    use std::io::Write as _;
    let binary = build_example();
    let dir = std::env::temp_dir().join(pg::unique("etcdsync_jsonl_source"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let changes = dir.join("changes.jsonl");
    let append = |lines: &[&str]| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&changes)
            .expect("change file");
        for line in lines {
            writeln!(file, "{line}").expect("append");
        }
    };
    append(&[
        r#"{"table":"app.settings","key":["name"],"op":"upsert","row":{"name":"a","value":1}}"#,
        r#"{"table":"app.settings","key":["name"],"op":"upsert","row":{"name":"b","value":{"x":[1,2]}}}"#,
    ]);
    let name = pg::unique("jsrc").replace('_', "-").to_lowercase();
    let prefix = format!("/{name}");
    let _guard = pg::EtcdPrefixGuard(vec![format!("{prefix}/"), format!("{prefix}-meta/")]);
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "name: {name}\nsource: {{ type: jsonl_file, path: \"{}\" }}\nsink: {{ type: etcd, endpoints: [\"{}\"], prefix: {prefix}, meta_prefix: {prefix}-meta }}\n",
            changes.display(),
            pg::env("ETCDSYNC_TEST_ETCD")
        ),
    )
    .expect("write config");
    let run = || run_example(&binary, &config);
    let stop = stop_cleanly;
    let etcd_now = || {
        let prefix = prefix.clone();
        async move { pg::etcd_dump(&mut pg::etcd().await, &format!("{prefix}/")).await }
    };
    let want = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{prefix}/app/settings/{k}"), v.to_string()))
            .collect()
    };

    let child = run();
    let first = want(&[
        ("a", r#"{"name":"a","value":1}"#),
        ("b", r#"{"name":"b","value":{"x":[1,2]}}"#),
    ]);
    assert!(
        pg::eventually(Duration::from_secs(60), || async {
            etcd_now().await == first
        })
        .await,
        "the first lines never reached etcd: {:?}",
        etcd_now().await
    );
    append(&[
        r#"{"table":"app.settings","key":["name"],"op":"upsert","row":{"name":"a","value":2}}"#,
    ]);
    let second = want(&[
        ("a", r#"{"name":"a","value":2}"#),
        ("b", r#"{"name":"b","value":{"x":[1,2]}}"#),
    ]);
    assert!(
        pg::eventually(Duration::from_secs(30), || async {
            etcd_now().await == second
        })
        .await,
        "an appended line never reached etcd: {:?}",
        etcd_now().await
    );
    stop(child);

    // Lines written while stopped; the restart resumes after the checkpoint.
    append(&[
        r#"{"table":"app.settings","key":["name"],"op":"delete","row":{"name":"b"}}"#,
        r#"{"table":"app.settings","key":["name"],"op":"upsert","row":{"name":"c","value":true}}"#,
    ]);
    let child = run();
    let third = want(&[
        ("a", r#"{"name":"a","value":2}"#),
        ("c", r#"{"name":"c","value":true}"#),
    ]);
    assert!(
        pg::eventually(Duration::from_secs(60), || async {
            etcd_now().await == third
        })
        .await,
        "the lines written while stopped never reached etcd: {:?}",
        etcd_now().await
    );
    stop(child);
    let checkpoint =
        pg::etcd_dump(&mut pg::etcd().await, &format!("{prefix}-meta/checkpoint")).await;
    let length = std::fs::metadata(&changes).expect("file").len().to_string();
    assert!(
        checkpoint
            .values()
            .any(|v| v.contains(&format!("\"position\":\"{length}\""))),
        "the checkpoint is the end of the file ({length}): {checkpoint:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The jsonl sink killed (-9) in the middle of its first snapshot, after the first of two tables
/// (copied one after the other) and the marker of the second: the lines of the unfinished
/// snapshot are cut at the restart (no checkpoint covers them), so the file ends with each row
/// once, and with the length its sidecar records.
#[tokio::test(flavor = "multi_thread")]
async fn the_jsonl_sink_killed_mid_snapshot_writes_each_row_once() {
    let binary = build_example();
    let db = TestDb::create("plugin_snapshot_kill").await;
    let rows = 200_000;
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE a_first (id int PRIMARY KEY, label text);
             INSERT INTO a_first SELECT g, 'row ' || g FROM generate_series(1, 20000) g;
             CREATE TABLE b_second (id int PRIMARY KEY, label text);
             INSERT INTO b_second SELECT g, 'row ' || g FROM generate_series(1, {}) g;",
            rows - 20_000
        ))
        .await
        .expect("schema");
    let dir = std::env::temp_dir().join(pg::unique("etcdsync_plugin_kill"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (out, sidecar) = (
        dir.join("changes.jsonl"),
        dir.join("changes.jsonl.checkpoint"),
    );
    let config = dir.join("config.yaml");
    let name = pg::unique("plugkill").replace('_', "-").to_lowercase();
    let source = pg::source_yaml(
        &db,
        &["public.a_first", "public.b_second"],
        "snapshot_workers: 1\n",
    )
    .replace('\n', "\n  ");
    std::fs::write(
        &config,
        format!(
            "name: {name}\nsource:\n  {source}\nsink: {{ type: jsonl, path: \"{}\" }}\n",
            out.display()
        ),
    )
    .expect("write config");
    let start = || run_example(&binary, &config);
    let checkpointed = |sidecar: &Path| {
        std::fs::read(sidecar)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|s| s["meta"].get("/meta/checkpoint").is_some())
    };

    let mut child = start();
    let second = pg::eventually(Duration::from_secs(60), || {
        let out = out.clone();
        async move {
            std::fs::read_to_string(&out).is_ok_and(|text| text.contains("/data/public/b_second/"))
        }
    })
    .await;
    assert!(second, "the snapshot never reached the second table");
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert!(
        !checkpointed(&sidecar),
        "the snapshot finished before the kill: the test needs more rows"
    );
    assert!(!lines(&out).is_empty());

    let child = start();
    let finished = pg::eventually(Duration::from_secs(120), || {
        let sidecar = sidecar.clone();
        async move { checkpointed(&sidecar) }
    })
    .await;
    assert!(finished, "the snapshot after the restart never finished");
    stop_cleanly(child);
    let written = lines(&out);
    let keys: std::collections::BTreeSet<_> = written
        .iter()
        .filter(|l| l["op"] == "put")
        .map(|l| l["key"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(written.len(), rows, "each row once");
    assert_eq!(keys.len(), rows);
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).expect("sidecar")).expect("JSON");
    let length = std::fs::metadata(&out).expect("data file").len();
    assert_eq!(recorded["offset"].as_u64(), Some(length));
    let _ = std::fs::remove_dir_all(&dir);
}
