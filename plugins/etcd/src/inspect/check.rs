//! `etcdsync check` on the etcd side (DESIGN §2, §4): one [`CheckResult`] per probe, each failure
//! with the exact fix. Without `--write-probe` ([`CheckOptions::write_probe`]) it sends no write
//! request at all — only reads, maintenance status, the alarm list and the user's own roles — so
//! no key, revision or raft entry changes. The probes, in order:
//! - `etcd reachable (URL)` per endpoint: maintenance Status without credentials (version,
//!   member, leader, db size);
//! - `etcd version`: at least 3.4 on every endpoint;
//! - `etcd authentication`: `sink.username`/`password` accepted (or, without a user, that etcd
//!   does not require one);
//! - `etcd alarms`: no NOSPACE (or CORRUPT) alarm; while one is raised nothing is written even
//!   with `--write-probe` (etcd refuses every write, so the probes would only repeat it);
//! - `sink.prefix / sink.meta_prefix`: the prefixes do not overlap;
//! - `permissions on sink.meta_prefix` and `permissions on sink.prefix`: a count-only read of
//!   the checkpoint key and of the data prefix; write permission from the user's roles
//!   (`UserGet` of itself, `RoleGet` of its roles: etcd lets a user read both) — granted when
//!   authentication is off, when the user has the `root` role, or when the roles' write ranges
//!   cover the whole prefix. With `--write-probe`: a put and a delete of a probe key
//!   `{meta}/check/{host}-{pid}-{n}` (the one write check makes; watchers of the meta prefix see
//!   it), and for the data prefix a transaction whose compare can never hold (`version < 0`)
//!   carrying a put and a delete-range under it: etcd checks permission for every operation of
//!   both branches before evaluating the compare, so nothing is written. When the meta prefix
//!   cannot be read, the limit probes and `checkpoint` are skipped;
//! - `sink.max_txn_ops`: a read-only transaction of `max_txn_ops` count-only reads of distinct
//!   meta-prefix keys (etcd checks the count of every transaction before serving it); when
//!   refused, a binary search finds what etcd accepts;
//! - `sink.max_request_bytes`: only with `--write-probe` (etcd checks the size of write requests
//!   only): the never-true transaction with one put as large as the sink's largest request (it
//!   writes no key but passes once through etcd's raft log); when refused, a binary search (to
//!   1 KiB) finds a setting etcd accepts. Without it the line says it was not probed;
//! - `checkpoint`: informational (absent → the first run snapshots); fails when malformed or
//!   written by another source type.

use super::{first_values, EtcdInspector, READ_ATTEMPTS};
use crate::batch::{OP_OVERHEAD, TXN_OVERHEAD};
use crate::checkpoint::{decode_checkpoint, SnapshotMarker, SnapshotState};
use crate::client::{classify, connect_options, EtcdClient};
use crate::config::{MIN_REQUEST_BYTES, MIN_TXN_OPS};
use crate::error::EtcdError;
use etcd_client::{
    AlarmAction, AlarmType, Client, Compare, CompareOp, DeleteOptions, GetOptions, PermissionType,
    Txn, TxnOp,
};
use etcdsync_core::encode::key::{escape_component, prefix_range_end, prefixes_overlap};
use etcdsync_core::inspect::{CheckOptions, CheckResult};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The oldest etcd release the sink supports.
pub const MIN_VERSION: (u32, u32) = (3, 4);

/// The result of probing one endpoint.
struct EndpointStatus {
    version: String,
    member: u64,
    leader: u64,
    db_size: i64,
}

/// A failed probe: what was found and the fix.
struct Failed {
    detail: String,
    fix: String,
}

impl EtcdInspector {
    /// Every probe in order (the module docs list them).
    pub(super) async fn run_checks(&mut self, options: CheckOptions) -> Vec<CheckResult> {
        let mut out = Vec::new();
        let endpoints = self.settings.endpoints.clone();
        let mut versions = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            let name = format!("etcd reachable ({endpoint})");
            match self.endpoint_status(i, endpoint).await {
                Ok(status) => {
                    out.push(CheckResult::pass(
                        name,
                        format!(
                            "etcd {}, member {:x}, leader {:x}, db {} KiB",
                            status.version,
                            status.member,
                            status.leader,
                            status.db_size / 1024
                        ),
                    ));
                    versions.push((endpoint.clone(), status.version));
                }
                Err(failed) => out.push(CheckResult::fail(name, failed.detail, failed.fix)),
            }
        }
        if versions.is_empty() {
            // Nothing else can be checked; the failures above name the fix.
            return out;
        }
        out.push(Self::version_check(&versions));
        let reachable = versions.iter().map(|(e, _)| e.clone()).collect();
        let (auth, client) = self.auth_check(reachable).await;
        let auth_ok = auth.ok;
        out.push(auth);
        let Some(client) = client.filter(|_| auth_ok) else {
            return out;
        };
        let alarms = self.alarm_check(&client).await;
        // Under an alarm etcd refuses every write: a write probe would only repeat it.
        let writes = if !options.write_probe {
            Writes::NotAsked
        } else if alarms.ok {
            Writes::Probe
        } else {
            Writes::Refused
        };
        out.push(alarms);
        out.push(self.prefix_check());
        let mut roles = None;
        let meta = self
            .meta_permission_check(&client, writes, &mut roles)
            .await;
        let meta_ok = meta.ok;
        out.push(meta);
        out.push(
            self.data_permission_check(&client, writes, &mut roles)
                .await,
        );
        // The limit probes and the checkpoint read use meta-prefix keys: without permission
        // there they would only repeat that failure.
        if meta_ok {
            out.push(self.txn_ops_check(&client).await);
            out.push(self.request_bytes_check(&client, writes).await);
            out.push(self.checkpoint_check(&client).await);
        }
        out
    }

    /// Maintenance Status of one endpoint, connected without credentials.
    async fn endpoint_status(&self, i: usize, endpoint: &str) -> Result<EndpointStatus, Failed> {
        let mut one = (*self.settings).clone();
        one.endpoints = vec![endpoint.to_string()];
        let unreachable = |detail: String, hint: Option<&str>| Failed {
            detail,
            fix: match hint {
                Some(hint) => hint.to_string(),
                None => format!(
                    "start etcd or make it listen on `{endpoint}` (etcd's --listen-client-urls and \
                     --advertise-client-urls), or correct sink.endpoints[{i}]"
                ),
            },
        };
        let options = connect_options(&one, false).map_err(|e| Failed {
            detail: e.to_string(),
            fix: "check the files named in sink.tls".into(),
        })?;
        let probe = async {
            let mut client = Client::connect([endpoint], Some(options))
                .await
                .map_err(|e| classify(&format!("connect to {endpoint}"), e, None))?;
            client
                .status()
                .await
                .map_err(|e| classify(&format!("status of {endpoint}"), e, None))
        };
        match tokio::time::timeout(self.check_timeout(), probe).await {
            Ok(Ok(status)) => Ok(EndpointStatus {
                version: status.version().to_string(),
                member: status.header().map(|h| h.member_id()).unwrap_or_default(),
                leader: status.leader(),
                db_size: status.db_size(),
            }),
            Ok(Err(error)) => Err(unreachable(error.detail(), error.hint())),
            Err(_) => Err(unreachable(
                format!("no answer within {:?}", self.check_timeout()),
                None,
            )),
        }
    }

    /// `etcd version`: every reachable endpoint runs at least [`MIN_VERSION`].
    fn version_check(versions: &[(String, String)]) -> CheckResult {
        let name = "etcd version";
        let list = versions
            .iter()
            .map(|(endpoint, version)| format!("{version} on {endpoint}"))
            .collect::<Vec<_>>()
            .join(", ");
        match versions
            .iter()
            .find(|(_, version)| parse_version(version).is_none_or(|v| v < MIN_VERSION))
        {
            None => CheckResult::pass(name, list),
            Some((endpoint, version)) => CheckResult::fail(
                name,
                list,
                format!(
                    "upgrade etcd on {endpoint} (version `{version}`) to {}.{} or later",
                    MIN_VERSION.0, MIN_VERSION.1
                ),
            ),
        }
    }

    /// `etcd authentication`: connects with the configured credentials to `endpoints` (the
    /// reachable ones, so that later probes do not fail on a dead endpoint already reported).
    async fn auth_check(&mut self, endpoints: Vec<String>) -> (CheckResult, Option<EtcdClient>) {
        let name = "etcd authentication";
        let mut reachable = (*self.settings).clone();
        reachable.endpoints = endpoints;
        let connect =
            tokio::time::timeout(self.check_timeout(), EtcdClient::connect(&reachable)).await;
        let client = match connect {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                let fix = match (&self.settings.credentials, error.hint()) {
                    (Some((user, _)), Some(hint)) if hint.contains("sink.password") => format!(
                        "etcd refused user `{user}`: check sink.username and sink.password \
                         (etcdctl user get {user}; etcdctl user passwd {user})"
                    ),
                    (_, Some(hint)) => hint.to_string(),
                    (_, None) => "check sink.username, sink.password and sink.tls".into(),
                };
                return (CheckResult::fail(name, error.detail(), fix), None);
            }
            Err(_) => {
                return (
                    CheckResult::fail(
                        name,
                        format!("no answer within {:?}", self.check_timeout()),
                        "check that every endpoint in sink.endpoints belongs to the same, healthy etcd cluster",
                    ),
                    None,
                )
            }
        };
        self.client = Some(client.clone());
        let result = match &self.settings.credentials {
            Some((user, _)) => CheckResult::pass(name, format!("user `{user}` accepted")),
            None => {
                // Without a user, find out whether etcd wants one.
                let key = self.settings.kv.checkpoint_key();
                let read = self
                    .bounded(client.get(
                        "read the checkpoint key",
                        key.as_str(),
                        Some(GetOptions::new().with_count_only()),
                        None,
                        Some(1),
                    ))
                    .await;
                match read {
                    Err(failed) if failed.detail.to_lowercase().contains("user name is empty") => {
                        CheckResult::fail(
                            name,
                            "etcd has authentication enabled and sink.username is not set",
                            "set sink.username and sink.password (password: \"${ETCD_PASSWORD}\") to an etcd user \
                             with readwrite on sink.prefix and sink.meta_prefix",
                        )
                    }
                    _ => CheckResult::pass(
                        name,
                        "not used (no sink.username; etcd accepts requests without authentication)",
                    ),
                }
            }
        };
        (result, Some(client))
    }

    /// Runs an etcd request within the check timeout; a failure becomes what was found and the
    /// error's own fix (or a generic one).
    async fn bounded<T>(
        &self,
        request: impl Future<Output = Result<T, EtcdError>>,
    ) -> Result<T, Failed> {
        match tokio::time::timeout(self.check_timeout(), request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Failed {
                detail: error.detail(),
                fix: error.hint().map(str::to_string).unwrap_or_else(|| {
                    "check etcd's health (etcdctl endpoint health) and retry".into()
                }),
            }),
            Err(_) => Err(Failed {
                detail: format!("no answer within {:?}", self.check_timeout()),
                fix: "check etcd's health (etcdctl endpoint health) and retry".into(),
            }),
        }
    }

    /// `etcd alarms`: none raised (a NOSPACE alarm makes etcd refuse every write).
    async fn alarm_check(&self, client: &EtcdClient) -> CheckResult {
        let name = "etcd alarms";
        let mut inner = client.inner().clone();
        let request = async {
            inner
                .alarm(AlarmAction::Get, AlarmType::None, None)
                .await
                .map_err(|e| classify("list alarms", e, None))
        };
        let response = match self.bounded(request).await {
            Ok(response) => response,
            Err(failed) => {
                return CheckResult::fail(name, failed.detail, failed.fix);
            }
        };
        let mut raised: Vec<String> = Vec::new();
        let mut nospace = false;
        for member in response.alarms() {
            let alarm = member.alarm();
            if alarm == AlarmType::None {
                continue;
            }
            nospace |= alarm == AlarmType::Nospace;
            raised.push(format!("{alarm:?} on member {:x}", member.member_id()));
        }
        if raised.is_empty() {
            CheckResult::pass(name, "none raised")
        } else if nospace {
            CheckResult::fail(
                name,
                format!(
                    "{} (nothing is written to probe permissions and limits while etcd refuses writes)",
                    raised.join(", ")
                ),
                "etcd's NOSPACE alarm is raised and etcd refuses writes: free space (etcdctl compact REVISION; \
                 etcdctl defrag) or raise etcd's --quota-backend-bytes, then etcdctl alarm disarm",
            )
        } else {
            CheckResult::fail(
                name,
                format!(
                    "{} (nothing is written to probe permissions and limits while it is raised)",
                    raised.join(", ")
                ),
                "etcd reports data corruption: restore the member from a healthy one (see etcd's disaster-recovery \
                 guide), then etcdctl alarm disarm",
            )
        }
    }

    /// `sink.prefix / sink.meta_prefix`: the two prefixes do not overlap.
    fn prefix_check(&self) -> CheckResult {
        let name = "sink.prefix / sink.meta_prefix";
        let (data, meta) = (&self.settings.kv.data_prefix, &self.settings.kv.meta_prefix);
        if prefixes_overlap(data, meta) {
            CheckResult::fail(
                name,
                format!("`{data}` and `{meta}` overlap"),
                "choose prefixes where neither begins with the other, e.g. prefix: /etcdsync and meta_prefix: /etcdsync-meta/NAME",
            )
        } else {
            CheckResult::pass(
                name,
                format!("data under `{data}`, metadata under `{meta}`; they do not overlap"),
            )
        }
    }

    /// A key under the meta prefix no one else uses: `{meta}/check/{host}-{pid}-{n}`.
    fn probe_key(&self) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!(
            "{}check/{}-{}-{nanos:x}-{}",
            self.settings.kv.meta_prefix,
            escape_component(host.trim()),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A transaction whose compare never holds (`version(key) < 0`): etcd validates it (op count,
    /// size, permissions of both branches) and then writes nothing.
    fn never_applied(compare_key: &str, ops: Vec<TxnOp>) -> Txn {
        Txn::new()
            .when(vec![Compare::version(compare_key, CompareOp::Less, 0)])
            .and_then(ops)
    }

    /// Sends a never-applied transaction once.
    async fn probe_txn(client: &EtcdClient, op: &str, txn: Txn) -> Result<(), EtcdError> {
        let response = client
            .retry(op, None, Some(1), |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        if response.succeeded() {
            // Impossible: version is never negative.
            return Err(EtcdError::Task(format!(
                "{op}: a compare that can never hold held"
            )));
        }
        Ok(())
    }

    /// `sink.max_txn_ops`: etcd accepts transactions of that many operations (probed with
    /// count-only reads: etcd checks the count of every transaction).
    async fn txn_ops_check(&self, client: &EtcdClient) -> CheckResult {
        let name = "sink.max_txn_ops";
        let configured = self.settings.kv.max_txn_ops;
        let base = self.probe_key();
        let probe = |n: usize| {
            let ops = (0..n)
                .map(|i| {
                    TxnOp::get(
                        format!("{base}/{i}"),
                        Some(GetOptions::new().with_count_only()),
                    )
                })
                .collect::<Vec<_>>();
            async move {
                client
                    .retry("probe etcd's --max-txn-ops", None, Some(1), |mut kv| {
                        let txn = Txn::new().and_then(ops.clone());
                        async move { kv.txn(txn).await }
                    })
                    .await
                    .map(|_| ())
            }
        };
        let too_many = |e: &EtcdError| e.to_string().contains("too many operations");
        match self.bounded(probe(configured)).await {
            Ok(()) => {
                return CheckResult::pass(
                    name,
                    format!(
                        "etcd accepts transactions of {configured} operations (probed with reads)"
                    ),
                )
            }
            Err(failed) if !failed.detail.contains("too many operations") => {
                return CheckResult::fail(name, failed.detail, failed.fix)
            }
            Err(_) => {}
        }
        // Binary search for the largest count etcd accepts: `good` accepted, `bad` refused.
        let (mut good, mut bad) = (0, configured);
        while bad - good > 1 {
            let mid = good + (bad - good) / 2;
            match tokio::time::timeout(self.check_timeout(), probe(mid)).await {
                Ok(Ok(())) => good = mid,
                Ok(Err(e)) if too_many(&e) => bad = mid,
                _ => break,
            }
        }
        let detail = format!(
            "sink.max_txn_ops is {configured} but etcd refuses transactions of more than {good} operations"
        );
        let fix = if good >= MIN_TXN_OPS {
            format!(
                "set sink.max_txn_ops: {good} (etcd's --max-txn-ops), or raise etcd's --max-txn-ops to {configured}"
            )
        } else {
            format!(
                "raise etcd's --max-txn-ops to at least {MIN_TXN_OPS} (etcd's default is 128) and set sink.max_txn_ops to match"
            )
        };
        CheckResult::fail(name, detail, fix)
    }

    /// `sink.max_request_bytes`: etcd accepts a request as large as the sink's largest (only
    /// with `--write-probe`: etcd checks the size of write requests only).
    async fn request_bytes_check(&self, client: &EtcdClient, writes: Writes) -> CheckResult {
        let name = "sink.max_request_bytes";
        let configured = self.settings.kv.max_request_bytes;
        match writes {
            Writes::Probe => {}
            Writes::NotAsked => {
                return CheckResult::pass(
                    name,
                    format!(
                        "{configured}, not probed (etcd checks the size of write requests only; `etcdsync check \
                         --write-probe` sends one it checks but never applies); keep it at or below etcd's \
                         --max-request-bytes (default 1572864)"
                    ),
                )
            }
            Writes::Refused => {
                return CheckResult::pass(
                    name,
                    format!("{configured}, not probed (etcd refuses writes while an alarm is raised)"),
                )
            }
        }
        let key = self.probe_key();
        let probe = |max_request_bytes: usize| {
            // The sink's data ops fill at most max_request_bytes - TXN_OVERHEAD, counted with
            // OP_OVERHEAD per op (more than protobuf needs); the compare takes about a key's size.
            let value_len =
                max_request_bytes.saturating_sub(TXN_OVERHEAD + 2 * key.len() + 2 * OP_OVERHEAD);
            let txn = Self::never_applied(
                &key,
                vec![TxnOp::put(key.as_str(), vec![b'x'; value_len], None)],
            );
            let bytes = value_len + key.len();
            async move {
                Self::probe_txn(client, "probe etcd's --max-request-bytes", txn).await?;
                Ok::<usize, EtcdError>(bytes)
            }
        };
        let too_large = |text: &str| {
            let text = text.to_lowercase();
            text.contains("too large") || text.contains("larger than max")
        };
        let failed = match self.bounded(probe(configured)).await {
            Ok(bytes) => {
                return CheckResult::pass(
                    name,
                    format!(
                        "etcd accepts a {bytes}-byte request, the largest the sink sends with sink.max_request_bytes = {configured} (probed without writing)"
                    ),
                )
            }
            Err(failed) if too_large(&failed.detail) => failed,
            Err(failed) => return CheckResult::fail(name, failed.detail, failed.fix),
        };
        // Binary search (to 1 KiB) for the largest setting whose requests etcd accepts:
        // `good` accepted (or the smallest setting the sink allows), `bad` refused.
        let (mut good, mut bad) = (MIN_REQUEST_BYTES, configured);
        let mut lowest_refused = false;
        while bad - good > 1024 {
            let mid = good + (bad - good) / 2;
            match tokio::time::timeout(self.check_timeout(), probe(mid)).await {
                Ok(Ok(_)) => good = mid,
                Ok(Err(e)) if too_large(&e.to_string()) => {
                    bad = mid;
                    lowest_refused = mid - MIN_REQUEST_BYTES <= 1024;
                }
                _ => break,
            }
        }
        let accepted = good / 1024 * 1024;
        let fix = if lowest_refused {
            format!(
                "start etcd with --max-request-bytes={configured} (etcd's default is 1572864): it refuses even \
                 the smallest requests the sink may send"
            )
        } else {
            format!(
                "set sink.max_request_bytes: {accepted} (about what etcd's --max-request-bytes allows), or start \
                 etcd with --max-request-bytes={configured} or more"
            )
        };
        CheckResult::fail(
            name,
            format!(
                "sink.max_request_bytes is {configured} but etcd refuses a request that large: {}",
                failed.detail
            ),
            fix,
        )
    }

    /// `checkpoint`: informational; fails when it cannot be used.
    async fn checkpoint_check(&self, client: &EtcdClient) -> CheckResult {
        let name = "checkpoint";
        let key = self.settings.kv.checkpoint_key();
        let snapshot_key = self.settings.kv.snapshot_key();
        let read = async {
            let response = client
                .retry(
                    "read the checkpoint and snapshot keys",
                    None,
                    Some(READ_ATTEMPTS),
                    |mut kv| {
                        let txn = Txn::new().and_then(vec![
                            TxnOp::get(key.as_str(), None),
                            TxnOp::get(snapshot_key.as_str(), None),
                        ]);
                        async move { kv.txn(txn).await }
                    },
                )
                .await?;
            Ok::<_, EtcdError>(first_values(response.op_responses()))
        };
        let values = match self.bounded(read).await {
            Ok(values) => values,
            Err(failed) => return CheckResult::fail(name, failed.detail, failed.fix),
        };
        let snapshot = values
            .get(1)
            .and_then(|v| v.as_deref())
            .and_then(|v| serde_json::from_slice::<SnapshotMarker>(v).ok());
        let interrupted = match &snapshot {
            Some(marker) if marker.state == SnapshotState::Running => format!(
                "; the snapshot started at {} is not finished (if no `etcdsync run` is running it, the next run starts it over)",
                marker.at
            ),
            _ => String::new(),
        };
        let Some(Some(value)) = values.first() else {
            return CheckResult::pass(
                name,
                format!(
                    "none under `{key}`: the first `etcdsync run` snapshots the selected tables{interrupted}"
                ),
            );
        };
        match decode_checkpoint(&key, value) {
            Err(error) => CheckResult::fail(
                name,
                format!("`{key}` holds a malformed checkpoint"),
                error.to_string(),
            ),
            Ok(checkpoint) if !self.is_own_source(&checkpoint.source) => CheckResult::fail(
                name,
                format!(
                    "`{key}` was written by source `{}` but this config's source is `{}`",
                    checkpoint.source, self.source_type
                ),
                format!(
                    "give this pipeline another `name` (or sink.meta_prefix), or delete the old checkpoint to start over \
                     with a snapshot (etcdctl del '{key}')"
                ),
            ),
            Ok(checkpoint) => CheckResult::pass(
                name,
                format!(
                    "source {} at position {}, committed {}, applied {}{interrupted}",
                    checkpoint.source,
                    checkpoint.position,
                    checkpoint.committed_at.as_deref().unwrap_or("(unknown)"),
                    checkpoint.applied_at
                ),
            ),
        }
    }
}

/// What check may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// No `--write-probe`: read-only.
    NotAsked,
    /// `--write-probe` and etcd accepts writes.
    Probe,
    /// `--write-probe`, but an alarm makes etcd refuse writes.
    Refused,
}

/// `3.4.23` → `(3, 4)`.
fn parse_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((major, minor))
}

mod permissions;

#[cfg(test)]
mod tests;
