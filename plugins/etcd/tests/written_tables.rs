//! `Sink::written_tables` of the etcd sink against a real etcd: the tables whose marker the
//! sink wrote, less those of a copy that did not finish (a source copies those again).
#![cfg(feature = "integration-tests")]

mod common;

use common::*;
use etcdsync_core::{Message, TableId};

#[tokio::test]
async fn a_copy_that_did_not_finish_leaves_its_tables_unwritten() {
    let p = Prefixes::new("written", &etcd_url());
    let yaml = p.yaml("");
    let streamed = table("s", "streamed");
    let copied = table("s", "copied");

    // A streamed table, then a copy of another table that stops after its first rows.
    let running = start(&yaml).await;
    running.txn(vec![insert(&streamed, 1, "a")], 1).await;
    running
        .send(Message::SnapshotStarted {
            tables: vec![copied.id.clone()],
        })
        .await;
    running
        .send(Message::Changes(vec![insert(&copied, 1, "x")]))
        .await;
    // Its marker is written before its first row.
    let marker = format!("{}/tables/s/copied", p.meta);
    let mut etcd = client(&etcd_url()).await;
    for _ in 0..200 {
        if get(&mut etcd, &marker).await.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        get(&mut etcd, &marker).await.is_some(),
        "no marker at {marker}"
    );
    running.handle.abort();

    let mut sink = build(&yaml).await.expect("sink");
    let written = sink.written_tables().await.expect("read").expect("known");
    assert!(
        written.contains(&TableId::new("s", "streamed")),
        "{written:?}"
    );
    assert!(
        !written.contains(&TableId::new("s", "copied")),
        "a table of an unfinished copy counts as written: {written:?}"
    );

    // Once a copy finishes, its tables count.
    let running = run(sink);
    running
        .send(Message::SnapshotStarted {
            tables: vec![copied.id.clone()],
        })
        .await;
    running
        .send(Message::Changes(vec![insert(&copied, 1, "x")]))
        .await;
    running
        .send(Message::SnapshotFinished { position: pos(2) })
        .await;
    let mut running = running;
    running.wait_ack(&pos(2)).await;
    running.close().await.expect("clean stop");
    let mut sink = build(&yaml).await.expect("sink");
    let written = sink.written_tables().await.expect("read").expect("known");
    assert!(
        written.contains(&TableId::new("s", "copied")),
        "{written:?}"
    );
}
