//! `verify --repair` confined to what the pipeline owns (issue 13 §2), with the real `etcdsync`
//! binary, PostgreSQL and etcd: refused while an instance of the pipeline runs and when the
//! selection matches no table (nothing written either way), and another pipeline's keys under a
//! shared data prefix left alone.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcdsync_tests::pg::etcd;
use std::path::PathBuf;

/// `config`'s text with another pipeline name and meta prefix: a second pipeline that shares the
/// data prefix.
fn sibling(config: &PathBuf, pipe: &Pipe, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(config).expect("read config");
    let text = text
        .replace(
            &format!("name: {}\n", pipe.name),
            &format!("name: {name}\n"),
        )
        .replace(
            &format!("meta_prefix: {}\n", pipe.meta),
            &format!("meta_prefix: {}-{name}\n", pipe.meta),
        );
    let path = config.with_file_name(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_is_refused_while_the_pipeline_runs() {
    let pipe = Pipe::new("rprun").await;
    pipe.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g;")
        .await;
    let config = pipe.config("rprun.yaml", Parts::default());
    let mut run = Run::start(&config, &[]);
    pipe.wait_synced("t", "snapshot").await;
    let missing = format!("{}/public/t/7", pipe.data);
    etcd()
        .await
        .delete(missing.as_str(), None)
        .await
        .expect("delete");

    let output = etcdsync(&["verify", "-c", path(&config), "--repair"], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("already running"),
        "the refusal names the running instance: {}",
        text(&output)
    );
    assert!(
        !pipe.etcd_data().await.contains_key(&missing),
        "a refused repair wrote the missing key"
    );
    assert!(run.still_running(), "{}", run.stderr());

    run.stop().await;
    let (code, repaired) = verify_json(&config, &["--repair"]).await;
    assert_eq!(code, Some(0), "{repaired:#}");
    assert_eq!(repaired["repaired"]["written"], 1, "{repaired:#}");
    assert_verify_clean(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_of_a_selection_that_matches_nothing_writes_nothing() {
    let pipe = Pipe::new("rpnone").await;
    pipe.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT g FROM generate_series(1, 20) g;")
        .await;
    let config = pipe.config("rpnone.yaml", Parts::default());
    let mut run = Run::start(&config, &[]);
    pipe.wait_synced("t", "snapshot").await;
    run.stop().await;
    let before = pipe.etcd_data().await;
    let nothing = pipe.config(
        "rpnone-empty.yaml",
        Parts {
            include: "\"public.no_such_table_*\"",
            ..Parts::default()
        },
    );
    let output = etcdsync(&["verify", "-c", path(&nothing), "--repair"], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("matches no table"),
        "{}",
        text(&output)
    );
    assert_eq!(
        pipe.etcd_data().await,
        before,
        "a refused repair changed etcd"
    );
}

/// Two pipelines share the data prefix, each with its own table: the repair of one reports the
/// other's keys as not ours at most, and leaves them as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_leaves_another_pipelines_keys_under_a_shared_prefix() {
    let pipe = Pipe::new("rpshare").await;
    pipe.sql(
        "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 30) g;
         CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 30) g;",
    )
    .await;
    let only_a = pipe.config(
        "rpshare-a.yaml",
        Parts {
            include: "\"public.a\"",
            ..Parts::default()
        },
    );
    let only_b = sibling(
        &pipe.config(
            "rpshare-b-src.yaml",
            Parts {
                include: "\"public.b\"",
                ..Parts::default()
            },
        ),
        &pipe,
        "rpshareb",
    );
    let mut run = Run::start(&only_a, &[]);
    pipe.wait_exactly(&run, &[("a", &["id"])], "pipeline a")
        .await;
    run.stop().await;
    let mut run = Run::start(&only_b, &[]);
    pipe.wait_exactly(&run, &[("a", &["id"]), ("b", &["id"])], "pipeline b")
        .await;
    run.stop().await;
    let want = pipe.expected_of(&[("a", &["id"]), ("b", &["id"])]).await;
    assert_eq!(pipe.etcd_data().await, want);

    // b's rows drift; a's pipeline repairs (selections must not overlap: a config of a that
    // selected b too would make b's keys its own, as docs/operations.md says).
    let stray = format!("{}/public/b/1", pipe.data);
    etcd()
        .await
        .delete(stray.as_str(), None)
        .await
        .expect("delete");
    put(&format!("{}/public/b/999", pipe.data), "{\"id\":999}").await;
    let before = pipe.etcd_data().await;
    let (code, report) = verify_json(&only_a, &["--repair"]).await;
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        pipe.etcd_data().await,
        before,
        "the repair of pipeline a touched b's keys: {report:#}"
    );
    assert!(
        report["not_ours"]["count"].as_u64() >= Some(30),
        "{report:#}"
    );
    // b's own repair fixes them.
    let (code, report) = verify_json(&only_b, &["--repair"]).await;
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(pipe.etcd_data().await, want, "{report:#}");
}
