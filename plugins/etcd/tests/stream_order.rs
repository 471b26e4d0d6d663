//! Checkpoints and transaction order of the etcd sink against a real etcd
//! (`ETCDSYNC_TEST_ETCD`): splitting a 10 000-change transaction acknowledged only at its end,
//! checkpoint round trip, heartbeats, group commit, a replayed split transaction skipping by
//! `seq`, in-flight transactions never overtaking each other, and a checkpoint moved by anyone
//! else stopping the stream.
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcd_client::GetOptions;
use etcdsync_core::{Change, Checkpoint, ErrorKind, Message};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test]
async fn a_transaction_of_10000_changes_is_split_and_acknowledged_only_at_its_end() {
    const N: i64 = 10_000;
    let url = etcd_url();
    let p = Prefixes::new("big", &url);
    let mut sink = start(&p.yaml("")).await;
    let mut etcd = client(&url).await;
    let t = table("public", "big");
    let data = format!("{}/", p.data);

    // When the ack arrives, look at etcd at once: everything must be there already.
    let mut acked = sink.acked.clone();
    let observer = {
        let url = url.clone();
        let data = data.clone();
        let checkpoint_key = p.checkpoint_key();
        tokio::spawn(async move {
            acked.changed().await.expect("an ack");
            let seen = acked.borrow().clone();
            let mut etcd = client(&url).await;
            let count = etcd
                .get(
                    data,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .expect("count")
                .count();
            let checkpoint = get(&mut etcd, &checkpoint_key).await;
            (seen, count, checkpoint)
        })
    };

    let rows: Vec<Change> = (0..N)
        .map(|i| insert(&t, i, &format!("row-{i:05}-{}", "v".repeat(100))))
        .collect();
    for chunk in rows.chunks(256) {
        sink.send(Message::Changes(chunk.to_vec())).await;
    }
    // Parts of the transaction reach etcd before its commit arrives, but no ack and no checkpoint.
    let partial = async {
        loop {
            let count = etcd
                .get(
                    data.as_str(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .expect("count")
                .count();
            if count >= N / 2 {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let count = tokio::time::timeout(PATIENCE, partial)
        .await
        .expect("parts applied before the commit");
    assert!(count < N, "the last part waits for the commit");
    assert_eq!(sink.last_ack(), None, "acknowledged before the commit");
    assert_eq!(
        get(&mut etcd, &p.checkpoint_key()).await,
        None,
        "checkpoint before the commit"
    );

    sink.send(commit(1)).await;
    sink.wait_ack(&pos(1)).await;
    let (seen, count, checkpoint) = observer.await.expect("observer");
    assert_eq!(seen, Some(pos(1)));
    assert_eq!(count, N, "every key was in etcd when the ack came");
    let checkpoint: Checkpoint =
        serde_json::from_str(&checkpoint.expect("checkpoint")).expect("json");
    assert_eq!(checkpoint.position, pos(1));

    // Split into several etcd transactions (126 data ops + checkpoint and marker each at most), the
    // checkpoint only in the last one.
    let response = etcd
        .get(data.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(response.kvs().len() as i64, N);
    let revisions: BTreeSet<i64> = response.kvs().iter().map(|kv| kv.mod_revision()).collect();
    assert!(
        revisions.len() as i64 >= N / 126,
        "only {} etcd transactions",
        revisions.len()
    );
    let checkpoint_kv = etcd.get(p.checkpoint_key(), None).await.expect("get");
    assert_eq!(
        checkpoint_kv.kvs()[0].version(),
        1,
        "the checkpoint was written once"
    );
    assert_eq!(
        checkpoint_kv.kvs()[0].mod_revision(),
        *revisions.last().expect("revisions")
    );
    sink.close().await.expect("clean stop");
}

#[tokio::test]
async fn the_checkpoint_round_trips_and_a_malformed_one_is_a_config_error() {
    let url = etcd_url();
    let p = Prefixes::new("checkpoint", &url);
    let mut etcd = client(&url).await;
    let mut sink = build(&p.yaml("")).await.expect("build");
    assert_eq!(sink.checkpoint().await.expect("read"), None);
    let mut running = run(sink);
    running.txn(vec![insert(&table("s", "t"), 1, "a")], 7).await;
    running.wait_ack(&pos(7)).await;
    running.close().await.expect("clean stop");

    let mut sink = build(&p.yaml("")).await.expect("build");
    let checkpoint = sink.checkpoint().await.expect("read").expect("present");
    assert_eq!(checkpoint.position, pos(7));
    assert_eq!(checkpoint.source, SOURCE);

    etcd.put(p.checkpoint_key(), "not json", None)
        .await
        .expect("put");
    let error = sink.checkpoint().await.expect_err("malformed");
    assert_eq!(error.kind(), ErrorKind::Config);
    let message = error.to_string();
    assert!(
        message.contains(&p.checkpoint_key()) && message.contains("delete"),
        "{message}"
    );
}

#[tokio::test]
async fn heartbeats_write_the_checkpoint_when_idle_at_most_once_per_interval() {
    let url = etcd_url();
    let p = Prefixes::new("heartbeat", &url);
    let mut sink = start(&p.yaml("heartbeat_interval: 1h\n")).await;
    let mut etcd = client(&url).await;
    sink.send(Message::Heartbeat { position: pos(5) }).await;
    sink.wait_ack(&pos(5)).await;
    assert_eq!(
        checkpoint_in_etcd(&mut etcd, &p).await.map(|c| c.position),
        Some(pos(5))
    );

    // Within the interval a second heartbeat waits...
    sink.send(Message::Heartbeat { position: pos(6) }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.last_ack(), Some(pos(5)));
    assert_eq!(
        checkpoint_in_etcd(&mut etcd, &p).await.map(|c| c.position),
        Some(pos(5))
    );
    // ...but data carries it along at once, and closing the input flushes the last one.
    sink.txn(vec![insert(&table("s", "t"), 1, "a")], 7).await;
    sink.wait_ack(&pos(7)).await;
    sink.send(Message::Heartbeat { position: pos(8) }).await;
    let acked = sink.acked.clone();
    sink.close().await.expect("clean stop");
    assert_eq!(acked.borrow().clone(), Some(pos(8)));
    assert_eq!(
        checkpoint_in_etcd(&mut etcd, &p).await.map(|c| c.position),
        Some(pos(8))
    );
}

#[tokio::test]
async fn group_commit_packs_many_small_transactions() {
    const N: u64 = 2000;
    let url = etcd_url();
    let p = Prefixes::new("group", &url);
    let mut sink = start(&p.yaml("")).await;
    let mut etcd = client(&url).await;
    let t = table("s", "t");
    for i in 1..=N {
        sink.txn(vec![insert(&t, i as i64, "v")], i).await;
    }
    sink.wait_ack(&pos(N)).await;
    let response = etcd
        .get(
            format!("{}/", p.data),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    assert_eq!(response.kvs().len() as u64, N);
    let revisions: BTreeSet<i64> = response.kvs().iter().map(|kv| kv.mod_revision()).collect();
    assert!(
        (revisions.len() as u64) < N / 2,
        "{} etcd transactions for {N} source transactions",
        revisions.len()
    );
    assert_eq!(
        checkpoint_in_etcd(&mut etcd, &p).await.map(|c| c.position),
        Some(pos(N))
    );
    sink.close().await.expect("clean stop");
}

/// A transaction larger than one etcd transaction, cut off after some of its parts (the input
/// closes before its commit, as on a crash), replays after a restart with some of its early
/// changes filtered out this time: the sink skips by the changes' `seq`, so what the parts
/// applied is not applied again and nothing after them is lost (issue 11 §4).
#[tokio::test]
async fn a_replayed_split_transaction_skips_by_seq_whatever_is_filtered() {
    let p = Prefixes::new("replay", &etcd_url());
    let yaml = p.yaml("max_txn_ops: 8\n");
    let mut etcd = client(&etcd_url()).await;
    let t = table("public", "t");
    let partial_key = format!("{}/partial", p.meta);

    let mut sink = start(&yaml).await;
    sink.txn(vec![insert(&t, 0, "zero").at(0)], 1).await;
    sink.wait_ack(&pos(1)).await;
    let first: Vec<Change> = (1..=100)
        .map(|i| insert(&t, i, "first").at(Change::seq_of(7, i as u64)))
        .collect();
    sink.send(Message::Changes(first)).await;
    let marker = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(marker) = get(&mut etcd, &partial_key).await {
                return marker;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a part was applied");
    sink.close()
        .await
        .expect("stops, dropping the unfinished transaction");
    let marker: serde_json::Value =
        serde_json::from_str(&get(&mut etcd, &partial_key).await.unwrap_or(marker))
            .expect("marker JSON");
    let seq: u128 = marker["seq"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("the marker names the last seq");
    assert_eq!(seq >> 64, 7, "the marker names the transaction");
    let applied = seq as u64;
    assert!((5..100).contains(&applied), "{marker}");

    // The replay lacks ids 1..=5 (filtered this time) and carries other values. The pipeline
    // reads the checkpoint (and with it the marker) before running the sink.
    let mut restarted = build(&yaml).await.expect("build");
    let checkpoint = restarted.checkpoint().await.expect("read the checkpoint");
    assert_eq!(checkpoint.map(|c| c.position), Some(pos(1)));
    let mut sink = run(restarted);
    let replay: Vec<Change> = (6..=100)
        .map(|i| insert(&t, i, "second").at(Change::seq_of(7, i as u64)))
        .collect();
    sink.txn(replay, 2).await;
    sink.wait_ack(&pos(2)).await;
    sink.close().await.expect("clean stop");

    let stored = dump(&mut etcd, &format!("{}/", p.data)).await;
    for i in 1..=100i64 {
        let expected = if (i as u64) <= applied {
            json(i, "first")
        } else {
            json(i, "second")
        };
        assert_eq!(
            stored.get(&p.key("public", "t", i)),
            Some(&expected),
            "row {i} (the parts had applied up to seq {applied})"
        );
    }
    assert_eq!(
        get(&mut etcd, &partial_key).await,
        None,
        "the marker outlived the transaction"
    );
}

fn resent() -> u64 {
    etcdsync_core::telemetry::get()
        .sink_txns_resent
        .with_label_values(&[] as &[&str])
        .get()
}

/// The values `key` took from `revision` on, read back from etcd's history with a watch, up to
/// (and including) `last`.
async fn history(
    etcd: &mut etcd_client::Client,
    key: &str,
    revision: i64,
    last: &str,
) -> Vec<String> {
    let options = etcd_client::WatchOptions::new().with_start_revision(revision);
    let mut stream = etcd.watch(key, Some(options)).await.expect("watch");
    let mut values = Vec::new();
    let read = async {
        while let Some(response) = stream.message().await.expect("watch stream") {
            for event in response.events() {
                let value = event
                    .kv()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    .unwrap_or_default();
                values.push(value.clone());
                if value == last {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the history reaches the last value");
    values
}

/// With several streaming transactions in flight, one held back (test hook) lets the ones after it
/// reach etcd first: their order compare refuses them and they are sent again after it, so etcd's
/// history shows every key — a row all transactions write, the checkpoint — in commit order, also
/// across the parts of a split source transaction.
#[tokio::test]
async fn a_delayed_transaction_is_not_overtaken_by_the_ones_after_it() {
    // The first transaction of a session (its predecessor is the checkpoint read at the start)
    // and one in the middle of the chain.
    for nth in [1, 3] {
        overtaking_is_refused(nth).await;
    }
}

async fn overtaking_is_refused(nth: u64) {
    const N: u64 = 40;
    let url = etcd_url();
    let p = Prefixes::new(&format!("reorder{nth}"), &url);
    etcdsync_etcd::test_hooks::delay_stream_txn(
        &p.checkpoint_key(),
        nth,
        Duration::from_millis(300),
    );
    let resent_before = resent();
    let mut sink = start(&p.yaml("stream_txns_in_flight: 4\nmax_txn_ops: 16\n")).await;
    let mut etcd = client(&url).await;
    let start = revision_now(&mut etcd).await;
    let t = table("s", "t");
    let label = |i: u64| format!("v{i:03}");
    for i in 1..=N {
        let mut changes = vec![insert(&t, 0, &label(i))];
        if i == 20 {
            // 100 more rows: the transaction is applied in parts of at most 14 operations
            changes.extend((1..=100).map(|id| insert(&t, id, &label(i))));
        }
        sink.txn(changes, i).await;
    }
    sink.wait_ack(&pos(N)).await;
    assert!(resent() > resent_before, "no transaction arrived early");

    let row = history(
        &mut etcd,
        &p.key("s", "t", 0),
        start + 1,
        &json(0, &label(N)),
    )
    .await;
    let mut ordered = row.clone();
    ordered.sort();
    assert_eq!(row, ordered, "row 0 took its values out of commit order");
    let last = get(&mut etcd, &p.checkpoint_key())
        .await
        .expect("checkpoint");
    let checkpoints = history(&mut etcd, &p.checkpoint_key(), start + 1, &last).await;
    let positions: Vec<String> = checkpoints
        .iter()
        .map(|text| {
            serde_json::from_str::<Checkpoint>(text)
                .expect("checkpoint JSON")
                .position
                .to_string()
        })
        .collect();
    let mut ordered = positions.clone();
    ordered.sort();
    assert_eq!(positions, ordered, "checkpoints out of commit order");
    assert_eq!(positions.last(), Some(&pos(N).to_string()));
    assert_eq!(
        dump(&mut etcd, &format!("{}/", p.data)).await.len(),
        101,
        "every row of the split transaction arrived"
    );
    sink.close().await.expect("clean stop");
}

/// A checkpoint written by anyone but this sink session (here `etcdctl`-like, between two
/// transactions) is never taken for one of its own: the next transaction's order compare fails
/// and the sink stops with an error naming the key (transient: the pipeline starts again from the
/// checkpoint etcd holds), instead of acknowledging data it did not write.
#[tokio::test]
async fn a_checkpoint_written_by_someone_else_stops_the_stream_loudly() {
    let url = etcd_url();
    let p = Prefixes::new("chainbreak", &url);
    let mut sink = start(&p.yaml("stream_txns_in_flight: 4\n")).await;
    let mut etcd = client(&url).await;
    let t = table("s", "t");
    sink.txn(vec![insert(&t, 1, "a")], 1).await;
    sink.wait_ack(&pos(1)).await;
    move_checkpoint(&mut etcd, &p, 1, 9).await;
    sink.txn(vec![insert(&t, 2, "b")], 2).await;
    assert_chain_broken(sink, &mut etcd, &p).await;
}

/// Rewrites the checkpoint in etcd from position `from` to `to`, as another writer would.
async fn move_checkpoint(etcd: &mut etcd_client::Client, p: &Prefixes, from: u64, to: u64) {
    let moved = get(etcd, &p.checkpoint_key())
        .await
        .expect("checkpoint")
        .replace(pos(from).as_str(), pos(to).as_str());
    etcd.put(p.checkpoint_key(), moved, None)
        .await
        .expect("put");
}

/// The sink stopped with a transient error naming the checkpoint key, and the transaction sent
/// after the checkpoint moved (row 2 of s.t) is not in etcd.
async fn assert_chain_broken(sink: Running, etcd: &mut etcd_client::Client, p: &Prefixes) {
    let error = sink.result().await.expect_err("the chain is broken");
    assert_eq!(error.kind(), ErrorKind::Transient, "{error}");
    assert!(
        error.to_string().contains(&p.checkpoint_key())
            && error.to_string().contains("something else wrote it"),
        "{error}"
    );
    assert_eq!(get(etcd, &p.key("s", "t", 2)).await, None);
}

/// A late write of an earlier attempt that lands after the sink read its checkpoint (and before
/// its first transaction) is not built upon: the first transaction compares the checkpoint as
/// read, and the sink stops (transient) so the pipeline resumes from what etcd holds.
#[tokio::test]
async fn a_checkpoint_moved_after_it_was_read_is_not_built_upon() {
    let url = etcd_url();
    let p = Prefixes::new("lateleftover", &url);
    let mut etcd = client(&url).await;
    let t = table("s", "t");
    let mut first = start(&p.yaml("")).await;
    first.txn(vec![insert(&t, 1, "a")], 1).await;
    first.wait_ack(&pos(1)).await;
    first.close().await.expect("clean stop");

    let mut sink = build(&p.yaml("")).await.expect("build the sink");
    let resumed = sink.checkpoint().await.expect("read the checkpoint");
    assert_eq!(resumed.map(|c| c.position), Some(pos(1)));
    move_checkpoint(&mut etcd, &p, 1, 5).await;
    let sink = run(sink);
    sink.txn(vec![insert(&t, 2, "b")], 2).await;
    assert_chain_broken(sink, &mut etcd, &p).await;
    assert_eq!(
        checkpoint_in_etcd(&mut etcd, &p).await.map(|c| c.position),
        Some(pos(5)),
        "the checkpoint did not go back"
    );
}
