//! The pipeline's leadership in etcd (DESIGN §7): `{meta}/leader` created under a lease, renewed
//! at a third of its TTL, its create revision the fencing token every sink write compares.
//! Standbys poll the key and campaign when it goes; a record left by a dead predecessor of this
//! instance (same `ha.instance`, or the same host with a process that no longer runs) is cleared
//! at once instead of waiting for its lease.

use crate::client::EtcdClient;
use crate::config::Settings;
use crate::error::EtcdError;
use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use etcdsync_core::change::rfc3339;
use etcdsync_core::leadership::{Campaign, Candidate, Fence, Leadership};
use etcdsync_core::{async_trait, Result};
use std::time::{Duration, Instant, SystemTime};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Pause before retrying a lease renewal that failed.
const RENEW_RETRY: Duration = Duration::from_millis(250);

/// How often a standby looks at the leader key.
pub const STANDBY_POLL: Duration = Duration::from_millis(200);

/// Leadership won in etcd; renewed by a background task until dropped or resigned.
pub struct EtcdLeadership {
    client: EtcdClient,
    key: String,
    lease: i64,
    fence: Fence,
    keeper: JoinHandle<()>,
}

impl Drop for EtcdLeadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// The compare every write of the leader carries (DESIGN §7).
pub fn fence_guard(settings: &Settings, fence: &Fence) -> Compare {
    Compare::create_revision(settings.kv.leader_key(), CompareOp::Equal, fence.token)
}

/// Campaigns for `{meta}/leader`. With `ha.enabled` waits until won (returns `Ok(None)` if
/// `shutdown` comes first); without, fails naming the holder when another instance leads.
pub async fn campaign(
    client: &EtcdClient,
    settings: &Settings,
    pipeline: &str,
    campaign: &Campaign,
    shutdown: &CancellationToken,
) -> Result<Option<EtcdLeadership>, EtcdError> {
    let key = settings.kv.leader_key();
    let ttl = campaign.ha.lease_ttl;
    let me = &campaign.candidate;
    let mut standing_by_for: Option<i64> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let current = client
            .get(
                "read the leader key",
                key.as_str(),
                None,
                Some(shutdown),
                None,
            )
            .await?;
        let Some(holder_kv) = current.kvs().first() else {
            if let Some(won) = try_create(client, &key, me, ttl, shutdown).await? {
                let token = won.token;
                let leadership = EtcdLeadership::start(client.clone(), key.clone(), won, ttl);
                if standing_by_for.is_some() {
                    tracing::warn!(pipeline, instance = %me.instance, token, "took over the pipeline's leadership");
                } else {
                    tracing::info!(pipeline, instance = %me.instance, token, "took the pipeline's leadership");
                }
                return Ok(Some(leadership));
            }
            continue;
        };
        let holder = Holder::read(holder_kv);
        if holder.record.as_ref().is_some_and(|h| me.succeeds(h)) {
            tracing::warn!(
                pipeline,
                holder = %holder.describe(),
                "clearing the leader record of a previous run of this instance that is gone"
            );
            clear(client, &key, holder_kv, shutdown).await?;
            continue;
        }
        if holder_kv.lease() == 0 {
            return Err(EtcdError::AlreadyRunning(format!(
                "`{key}` exists without a lease (written by hand?), so it would never expire and no \
                 instance could lead pipeline `{pipeline}`: delete it (etcdctl del '{key}') once no \
                 instance runs"
            )));
        }
        if !campaign.ha.enabled {
            return Err(EtcdError::AlreadyRunning(format!(
                "pipeline `{pipeline}` is already running {}; stop it first, or set `ha.enabled: true` to run \
                 this instance as its hot standby. If that process is gone, its lease ends within {} \
                 and this instance can start then",
                holder.describe(),
                humantime::format_duration(ttl)
            )));
        }
        if standing_by_for != Some(holder_kv.create_revision()) {
            tracing::info!(pipeline, leader = %holder.describe(), "standing by: another instance leads this pipeline");
            standing_by_for = Some(holder_kv.create_revision());
        }
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// A won election: the lease, the fencing token, and when the lease was asked for (it cannot
/// expire before that plus its TTL).
struct Won {
    lease: i64,
    token: i64,
    granted_at: Instant,
}

/// Grants a lease and creates the key under it if nobody holds it.
async fn try_create(
    client: &EtcdClient,
    key: &str,
    me: &Candidate,
    ttl: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<Won>, EtcdError> {
    let granted_at = Instant::now();
    let lease = grant(client, ttl, shutdown).await?;
    let record = Candidate {
        since: rfc3339(SystemTime::now()),
        ..me.clone()
    };
    let value = serde_json::to_string(&record).unwrap_or_default();
    let attempt = client
        .retry(
            "campaign for the leader key",
            Some(shutdown),
            None,
            |mut kv| {
                let txn = Txn::new()
                    .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
                    .and_then(vec![TxnOp::put(
                        key,
                        value.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                async move { kv.txn(txn).await }
            },
        )
        .await;
    let response = match attempt {
        Ok(response) => response,
        // Retries outlasted the fresh lease (etcd was slow or away): campaign again.
        Err(error) if error.to_string().contains("lease not found") => return Ok(None),
        Err(error) => {
            revoke(client, lease).await;
            return Err(error);
        }
    };
    if !response.succeeded() {
        revoke(client, lease).await;
        return Ok(None);
    }
    let token = response
        .header()
        .map(|h| h.revision())
        .ok_or_else(|| EtcdError::Task("etcd answered the campaign without a header".into()))?;
    Ok(Some(Won {
        lease,
        token,
        granted_at,
    }))
}

async fn grant(
    client: &EtcdClient,
    ttl: Duration,
    shutdown: &CancellationToken,
) -> Result<i64, EtcdError> {
    let seconds = i64::try_from(ttl.as_secs()).unwrap_or(60);
    let leases = client.inner().lease_client();
    client
        .retry("grant the leader lease", Some(shutdown), None, |_| {
            let mut leases = leases.clone();
            async move { leases.grant(seconds, None).await.map(|r| r.id()) }
        })
        .await
}

/// Revokes a lease (deleting the keys under it); failures only delay a standby by the TTL.
async fn revoke(client: &EtcdClient, lease: i64) {
    let mut leases = client.inner().lease_client();
    if let Err(error) = leases.revoke(lease).await {
        tracing::debug!(error = %error, lease, "could not revoke the leader lease; it expires by itself");
    }
}

/// Deletes the holder's record if it is still that very record, and revokes its lease.
async fn clear(
    client: &EtcdClient,
    key: &str,
    holder: &KeyValue,
    shutdown: &CancellationToken,
) -> Result<(), EtcdError> {
    let created = holder.create_revision();
    client
        .retry(
            "clear a stale leader key",
            Some(shutdown),
            None,
            |mut kv| {
                let txn = Txn::new()
                    .when(vec![Compare::create_revision(
                        key,
                        CompareOp::Equal,
                        created,
                    )])
                    .and_then(vec![TxnOp::delete(key, None)]);
                async move { kv.txn(txn).await }
            },
        )
        .await?;
    if holder.lease() != 0 {
        revoke(client, holder.lease()).await;
    }
    Ok(())
}

/// The current leader record, as far as it can be read.
struct Holder {
    record: Option<Candidate>,
    raw: String,
}

impl Holder {
    fn read(kv: &KeyValue) -> Self {
        Self {
            record: serde_json::from_slice(kv.value()).ok(),
            raw: String::from_utf8_lossy(kv.value()).into_owned(),
        }
    }

    fn describe(&self) -> String {
        match &self.record {
            Some(h) => format!(
                "on host {}, pid {} (instance {}, leading since {})",
                h.host, h.pid, h.instance, h.since
            ),
            None => format!("(leader record `{}`)", self.raw),
        }
    }
}

impl EtcdLeadership {
    fn start(client: EtcdClient, key: String, won: Won, ttl: Duration) -> Self {
        let Won {
            lease,
            token,
            granted_at,
        } = won;
        let fence = Fence::new(token);
        fence.renewed_until(granted_at + ttl);
        let keeper = tokio::spawn(keep(
            client.clone(),
            key.clone(),
            lease,
            fence.clone(),
            ttl,
            granted_at,
        ));
        Self {
            client,
            key,
            lease,
            fence,
            keeper,
        }
    }
}

/// Renews the lease every third of its TTL and checks the record is still ours; cancels the
/// fence when the lease is gone, the record was replaced, or the lease runs out locally (the last
/// renewal that got through plus the TTL: etcd cannot expire it earlier, so the fence is never
/// valid past the point where another instance could win).
async fn keep(
    client: EtcdClient,
    key: String,
    lease: i64,
    fence: Fence,
    ttl: Duration,
    granted_at: Instant,
) {
    let interval = ttl / 3;
    let mut deadline = granted_at + ttl;
    let lose = |why: &str| {
        tracing::error!(
            token = fence.token,
            "lost the pipeline's leadership: {why}; writing stops now"
        );
        fence.lost.cancel();
    };
    // After a failed attempt (an etcd member gone, a leader election) retry soon, each attempt
    // bounded, so one request stuck on a dead endpoint does not use up the lease.
    let retry = RENEW_RETRY.min(interval);
    let mut wait = interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = fence.lost.cancelled() => return,
            _ = tokio::time::sleep_until(deadline.into()) => {
                return lose("no lease renewal got through for a whole lease TTL");
            }
        }
        let sent = Instant::now();
        let attempt_until = deadline.min(sent + interval);
        let renewal = tokio::select! {
            renewal = renew_and_check(&client, &key, lease, fence.token) => renewal,
            _ = tokio::time::sleep_until(attempt_until.into()) => {
                if attempt_until >= deadline {
                    return lose("no lease renewal got through for a whole lease TTL");
                }
                tracing::warn!(timeout = ?interval, "renewing the leader lease timed out; retrying");
                wait = retry;
                continue;
            }
        };
        wait = retry;
        match renewal {
            Ok(Renewal::Held) => {
                deadline = sent + ttl;
                fence.renewed_until(deadline);
                wait = interval;
            }
            Ok(Renewal::Lost(why)) => return lose(why),
            Err(error) if error.to_string().contains("lease not found") => {
                return lose("the leader lease expired");
            }
            Err(error) => {
                tracing::warn!(error = %error, "could not renew the leader lease; retrying");
            }
        }
    }
}

enum Renewal {
    Held,
    Lost(&'static str),
}

async fn renew_and_check(
    client: &EtcdClient,
    key: &str,
    lease: i64,
    token: i64,
) -> Result<Renewal, etcd_client::Error> {
    let mut leases = client.inner().lease_client();
    let (mut keeper, mut responses) = leases.keep_alive(lease).await?;
    keeper.keep_alive().await?;
    match responses.message().await? {
        Some(response) if response.ttl() > 0 => {}
        _ => return Ok(Renewal::Lost("the leader lease expired")),
    }
    let mut kv = client.inner().kv_client();
    let current = kv.get(key, None).await?;
    Ok(match current.kvs().first() {
        Some(kv) if kv.create_revision() == token && kv.lease() == lease => Renewal::Held,
        Some(_) => Renewal::Lost("another instance holds the leader key"),
        None => Renewal::Lost("the leader key was deleted"),
    })
}

#[async_trait]
impl Leadership for EtcdLeadership {
    fn fence(&self) -> Fence {
        self.fence.clone()
    }

    async fn confirm(&self) -> Result<()> {
        let current = self
            .client
            .get(
                "confirm the leadership",
                self.key.as_str(),
                None,
                None,
                Some(3),
            )
            .await?;
        match current.kvs().first() {
            Some(kv) if kv.create_revision() == self.fence.token => Ok(()),
            _ => Err(self
                .fence
                .deposed("confirming the leadership before (re)starting")),
        }
    }

    async fn resign(self: Box<Self>) {
        self.keeper.abort();
        revoke(&self.client, self.lease).await;
        tracing::info!(
            token = self.fence.token,
            "resigned the pipeline's leadership"
        );
    }
}

impl From<EtcdLeadership> for Box<dyn Leadership> {
    fn from(leadership: EtcdLeadership) -> Self {
        Box::new(leadership)
    }
}
