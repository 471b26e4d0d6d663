//! Both passes against in-memory inspectors: paging across many pages, each kind of drift,
//! and repair converging.
use super::*;
use etcdsync_core::change::{Checkpoint, Column, Position, Row};
use etcdsync_core::encode::key::{row_key, unescape_component};
use etcdsync_core::inspect::{CheckOptions, CheckResult, SourceLag};
use etcdsync_core::{async_trait, Result};

const PREFIX: &str = "/p";

fn schema() -> Arc<TableSchema> {
    Arc::new(TableSchema::new(
        TableId::new("s", "t"),
        vec![Column::new("id", "int8"), Column::new("v", "text")],
        vec![0],
    ))
}

struct Source {
    rows: BTreeMap<i64, String>,
    largest_page: usize,
    /// The selection matches no table.
    none_selected: bool,
}

#[async_trait]
impl SourceInspector for Source {
    async fn check(&mut self) -> Vec<CheckResult> {
        Vec::new()
    }
    async fn tables(&mut self) -> Result<Vec<Arc<TableSchema>>> {
        Ok(if self.none_selected {
            Vec::new()
        } else {
            vec![schema()]
        })
    }
    async fn scan(
        &mut self,
        _table: &TableSchema,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Row>> {
        let after = match after {
            Some([Value::Int(id)]) => *id,
            None => i64::MIN,
            other => panic!("bad after {other:?}"),
        };
        self.largest_page = self.largest_page.max(limit);
        Ok(self
            .rows
            .range(after + 1..)
            .take(limit)
            .map(|(id, v)| vec![Value::Int(*id), Value::Text(v.clone())])
            .collect())
    }
    async fn existing_keys(
        &mut self,
        _table: &TableSchema,
        keys: &[Vec<String>],
    ) -> Result<Vec<Vec<String>>> {
        assert!(keys.len() <= PAGE);
        Ok(keys
            .iter()
            .filter(|k| {
                k.len() == 1
                    && k[0]
                        .parse::<i64>()
                        .is_ok_and(|id| self.rows.contains_key(&id))
            })
            .cloned()
            .collect())
    }
    async fn lag(&mut self, _position: &Position) -> Result<SourceLag> {
        Ok(SourceLag::default())
    }
}

struct Sink {
    kv: BTreeMap<String, Vec<u8>>,
    written: Option<HashSet<TableId>>,
}

impl Default for Sink {
    fn default() -> Self {
        Sink {
            kv: BTreeMap::new(),
            written: Some(HashSet::from([
                TableId::new("s", "t"),
                TableId::new("s", "gone"),
            ])),
        }
    }
}

#[async_trait]
impl SinkInspector for Sink {
    async fn check(&mut self, _options: CheckOptions) -> Vec<CheckResult> {
        Vec::new()
    }
    async fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        Ok(None)
    }
    async fn metadata(&mut self) -> Result<BTreeMap<String, serde_json::Value>> {
        Ok(BTreeMap::new())
    }
    fn row_key(&self, table: &TableId, key: &[Value]) -> String {
        row_key(PREFIX, table, key)
    }
    fn route_key(&self, route_key: &str) -> String {
        format!("{PREFIX}/{route_key}")
    }
    async fn get(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(keys.iter().map(|k| self.kv.get(k).cloned()).collect())
    }
    async fn scan(&mut self, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let start = after.map_or(String::new(), |a| format!("{a}\0"));
        Ok(self
            .kv
            .range(start..)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    async fn owner(&mut self, key: &str) -> Result<Option<(TableId, Vec<String>)>> {
        let parts: Vec<&str> = key.trim_start_matches("/p/").split('/').collect();
        Ok(match parts.as_slice() {
            [schema, table, pk] => Some((
                TableId::new(*schema, *table),
                vec![unescape_component(pk).unwrap_or_default()],
            )),
            _ => None,
        })
    }
    async fn count(&mut self, _table: &TableId) -> Result<u64> {
        Ok(self.kv.len() as u64)
    }
    async fn written_tables(&mut self) -> Result<Option<HashSet<TableId>>> {
        Ok(self.written.clone())
    }
    async fn repair(&mut self, puts: Vec<(String, Vec<u8>)>, deletes: Vec<String>) -> Result<()> {
        for (k, v) in puts {
            self.kv.insert(k, v);
        }
        for k in deletes {
            self.kv.remove(&k);
        }
        Ok(())
    }
}

fn value(id: i64, v: &str) -> Vec<u8> {
    encode_row(&schema(), &[Value::Int(id), Value::Text(v.into())]).expect("encode")
}

fn key(id: i64) -> String {
    row_key(PREFIX, &TableId::new("s", "t"), &[Value::Int(id)])
}

async fn verify(source: &mut Source, sink: &mut Sink, repair: bool) -> Report {
    let options = Options {
        repair,
        delete_unselected: true,
        max_report: 3,
        json: false,
    };
    run(&[], source, sink, options).await.expect("verify")
}

#[tokio::test]
async fn finds_each_kind_of_drift_across_pages_and_repair_converges() {
    let n = 3 * PAGE as i64 + 17;
    let mut source = Source {
        rows: (1..=n).map(|id| (id, format!("v{id}"))).collect(),
        largest_page: 0,
        none_selected: false,
    };
    let mut sink = Sink::default();
    for id in 1..=n {
        sink.kv.insert(key(id), value(id, &format!("v{id}")));
    }
    let clean = verify(&mut source, &mut sink, false).await;
    assert_eq!(clean.drift(), 0, "{clean:?}");
    assert_eq!(clean.source_rows, n as u64);
    assert_eq!(clean.sink_keys, n as u64);
    assert_eq!(source.largest_page, PAGE);

    for id in [1, PAGE as i64, PAGE as i64 + 1, n] {
        sink.kv.remove(&key(id));
    }
    sink.kv.insert(key(7), value(7, "changed"));
    sink.kv.insert(key(n + 5), value(n + 5, "planted"));
    // Another pipeline's table and a key no layout explains: not ours, never deleted; a
    // table this pipeline wrote and no longer selects: extra.
    sink.kv.insert("/p/s/other/1".into(), b"x".to_vec());
    sink.kv.insert("/p/stray".into(), b"x".to_vec());
    sink.kv.insert("/p/s/gone/1".into(), b"x".to_vec());
    let found = verify(&mut source, &mut sink, false).await;
    assert_eq!(found.missing.count, 4);
    assert_eq!(found.missing.keys.len(), 3, "--max-report caps the list");
    assert_eq!(found.missing.keys[0].key, key(1));
    assert_eq!(found.different.count, 1);
    assert_eq!(found.different.keys[0].key, key(7));
    assert_eq!(
        found.different.keys[0].found.as_deref(),
        Some("{\"id\":7,\"v\":\"changed\"}")
    );
    assert_eq!(found.extra.count, 2);
    let mut extra: Vec<&str> = found.extra.keys.iter().map(|e| e.key.as_str()).collect();
    extra.sort_unstable();
    let planted = key(n + 5);
    assert_eq!(extra, vec!["/p/s/gone/1", planted.as_str()]);
    let mut not_ours: Vec<&str> = found.not_ours.keys.iter().map(|e| e.key.as_str()).collect();
    not_ours.sort_unstable();
    assert_eq!(not_ours, vec!["/p/s/other/1", "/p/stray"]);
    assert!(
        render(&found).contains("… and 1 more"),
        "{}",
        render(&found)
    );

    // Without --delete-unselected the table this pipeline no longer selects is only listed.
    let cautious = Options {
        repair: false,
        delete_unselected: false,
        max_report: 3,
        json: false,
    };
    let listed = run(&[], &mut source, &mut sink, cautious)
        .await
        .expect("verify");
    assert_eq!(
        (listed.extra.count, listed.unselected.count),
        (1, 1),
        "{listed:?}"
    );

    let repaired = verify(&mut source, &mut sink, true).await;
    let done = repaired.repaired.as_ref().expect("repaired");
    assert_eq!((done.written, done.deleted), (5, 2));
    let after = verify(&mut source, &mut sink, false).await;
    assert_eq!(after.drift(), 0, "{after:?}");
    assert_eq!(
        sink.kv.len(),
        n as usize + 2,
        "the keys that are not ours stay"
    );
    assert_eq!(sink.kv.get(&key(7)), Some(&value(7, "v7")));
    assert!(sink.kv.contains_key("/p/s/other/1"));

    // A selection that matches nothing: repair refuses and writes nothing.
    let mut empty = Source {
        rows: BTreeMap::new(),
        largest_page: 0,
        none_selected: true,
    };
    let options = Options {
        repair: true,
        delete_unselected: false,
        max_report: 3,
        json: false,
    };
    let before = sink.kv.clone();
    let error = run(&[], &mut empty, &mut sink, options)
        .await
        .expect_err("an empty selection");
    assert!(error.to_string().contains("matches no table"), "{error}");
    assert_eq!(sink.kv, before);
}

#[tokio::test]
async fn a_row_whose_key_has_an_empty_component_is_not_expected_in_the_sink() {
    let template: Box<dyn TransformConfig> =
        serde_yaml::from_str("type: key_template\ntables: [\"s.t\"]\ntemplate: \"s/t/{v}\"\n")
            .expect("a key_template config");
    let mut source = Source {
        rows: [(1, "1".to_string()), (2, String::new())].into(),
        largest_page: 0,
        none_selected: false,
    };
    let mut sink = Sink::default();
    sink.kv.insert(key(1), value(1, "1"));
    let options = Options {
        repair: false,
        delete_unselected: false,
        max_report: 3,
        json: false,
    };
    let report = run(&[template], &mut source, &mut sink, options)
        .await
        .expect("verify");
    assert_eq!(report.source_rows, 2);
    // Row 2 maps to `s/t/`, which the sink never stores: not missing.
    assert_eq!(report.drift(), 0, "{report:?}");
}
