//! One writer per pipeline (DESIGN §7): the `ha:` configuration, who this instance is, and the
//! contract between the pipeline and a sink that can elect a leader in its own store. The
//! pipeline campaigns before it builds anything that writes; the sink turns the won
//! leadership's [`Fence`] into a guard on every write; a lost fence stops all writing at once.

use crate::error::{Error, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Shortest and longest `ha.lease_ttl`.
pub const LEASE_TTL_RANGE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(60));

/// `ha:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// `false`: a second instance of a running pipeline refuses to start; `true`: it waits as a
    /// hot standby and takes over when the leader goes.
    #[serde(default)]
    pub enabled: bool,
    /// How long a leader that stopped renewing keeps leadership (2s..60s, whole seconds).
    #[serde(default = "default_lease_ttl", with = "crate::duration")]
    pub lease_ttl: Duration,
    /// This instance's name in the leader record; default `host:pid`. Must differ between
    /// instances that run at the same time (a pod name, say).
    #[serde(default)]
    pub instance: Option<String>,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            lease_ttl: default_lease_ttl(),
            instance: None,
        }
    }
}

impl HaConfig {
    pub fn validate(&self) -> Result<()> {
        let (min, max) = LEASE_TTL_RANGE;
        if self.lease_ttl < min || self.lease_ttl > max || self.lease_ttl.subsec_nanos() != 0 {
            return Err(Error::config(format!(
                "at `ha.lease_ttl`: `{}` must be whole seconds from 2s to 60s (etcd leases count seconds); \
                 write e.g. `10s`",
                humantime::format_duration(self.lease_ttl)
            )));
        }
        if let Some(instance) = &self.instance {
            if instance.trim().is_empty() || instance.len() > 128 {
                return Err(Error::config(
                    "at `ha.instance`: must be 1–128 characters (e.g. the pod name: `${POD_NAME}`), \
                     or left out for `host:pid`",
                ));
            }
        }
        Ok(())
    }
}

/// Who is campaigning: the leader record's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// `ha.instance`, else `host:pid`.
    pub instance: String,
    pub host: String,
    pub pid: u32,
    /// RFC 3339, UTC: when this instance won (set by the store when the record is written).
    pub since: String,
    /// The kernel's boot id and this process's PID namespace: a pid names a process only
    /// within both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<String>,
    /// Whether `instance` was configured (`ha.instance`) rather than derived.
    #[serde(skip)]
    pub named: bool,
}

impl Candidate {
    /// This process, named by `ha.instance` when set.
    pub fn this_process(ha: &HaConfig) -> Self {
        let host = hostname();
        let pid = std::process::id();
        Self {
            instance: ha
                .instance
                .clone()
                .unwrap_or_else(|| format!("{host}:{pid}")),
            host,
            pid,
            since: crate::change::rfc3339(SystemTime::now()),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_string()),
            pid_namespace: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .map(|ns| ns.to_string_lossy().into_owned()),
            named: ha.instance.is_some(),
        }
    }

    /// Whether `holder` is certainly a dead predecessor of this instance, so its record may be
    /// cleared before its lease runs out: the same configured instance name (a restarted pod;
    /// names must be unique among running instances), or a process of the same kernel and PID
    /// namespace that no longer runs (kill -9, then a restart). Anything else waits for the
    /// lease. A wrong guess costs availability, never data: the old leader's writes carry its
    /// token, which clearing its record invalidates.
    pub fn succeeds(&self, holder: &Candidate) -> bool {
        if self.named && holder.instance == self.instance {
            return true;
        }
        let same_namespace = self.boot_id.is_some()
            && self.pid_namespace.is_some()
            && holder.boot_id == self.boot_id
            && holder.pid_namespace == self.pid_namespace;
        same_namespace && (holder.pid == self.pid || !process_alive(holder.pid))
    }
}

/// The host name (`/etc/hostname` semantics: the kernel's node name), `unknown` when unreadable.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Whether a process with this id runs in our PID namespace. Without `/proc`, assume it does.
fn process_alive(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Proof of leadership, handed to the sink (and to the source, for its takeover steps).
#[derive(Debug, Clone)]
pub struct Fence {
    /// A number that changes with every election won (etcd: the leader key's create revision).
    /// The sink makes each write conditional on the store still holding exactly this token.
    pub token: i64,
    /// Cancelled the moment leadership is known lost (lease gone, record replaced, a guarded
    /// write refused). Whoever holds the fence stops writing and acknowledges nothing more.
    pub lost: CancellationToken,
    /// Until when the store cannot have given leadership to anyone else, as far as this process
    /// knows (its last lease renewal plus the TTL); `None`: no such bound.
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl Fence {
    pub fn new(token: i64) -> Self {
        Self {
            token,
            lost: CancellationToken::new(),
            valid_until: Arc::new(Mutex::new(None)),
        }
    }

    /// Records a renewal: nobody else can lead before `until`.
    pub fn renewed_until(&self, until: Instant) {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }

    /// `Ok` while this instance certainly still leads: not lost, and within its last renewal's
    /// lease. Sources call it right before a step that would disturb another instance (ending a
    /// session that holds the replication slot, dropping or creating the slot).
    pub fn check(&self, before: &str) -> Result<()> {
        if self.lost.is_cancelled() {
            return Err(self.deposed(before));
        }
        let until = *self.valid_until.lock().unwrap_or_else(|p| p.into_inner());
        match until {
            Some(until) if Instant::now() >= until => {
                self.lost.cancel();
                Err(self.deposed(before))
            }
            _ => Ok(()),
        }
    }

    /// The error a stage returns when a guarded write was refused: leadership is gone.
    pub fn deposed(&self, what: &str) -> Error {
        self.lost.cancel();
        Error::fenced(format!(
            "{what}: this instance is no longer the pipeline's leader (leadership token {} was replaced \
             or its lease ran out); it stops writing",
            self.token
        ))
    }
}

/// A won election, held until dropped or resigned.
#[async_trait]
pub trait Leadership: Send + Sync {
    fn fence(&self) -> Fence;

    /// Confirms with the store that this instance still leads; an error of kind `Fenced` when
    /// not (and the fence is then cancelled).
    async fn confirm(&self) -> Result<()>;

    /// Gives leadership up after a clean stop, so a standby takes over at once.
    async fn resign(self: Box<Self>);
}

/// What the pipeline asks of the sink's store.
#[derive(Debug, Clone)]
pub struct Campaign {
    pub candidate: Candidate,
    pub ha: HaConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha(ttl: Duration) -> HaConfig {
        HaConfig {
            lease_ttl: ttl,
            ..HaConfig::default()
        }
    }

    #[test]
    fn lease_ttl_is_whole_seconds_from_2_to_60() {
        for ok in [2, 10, 60] {
            ha(Duration::from_secs(ok)).validate().expect("valid");
        }
        for bad in [
            Duration::from_secs(1),
            Duration::from_secs(61),
            Duration::from_millis(2500),
        ] {
            let error = ha(bad).validate().expect_err("invalid").to_string();
            assert!(error.contains("at `ha.lease_ttl`"), "{error}");
        }
        let empty = HaConfig {
            instance: Some(" ".into()),
            ..HaConfig::default()
        };
        assert!(empty
            .validate()
            .expect_err("empty instance")
            .to_string()
            .contains("at `ha.instance`"));
    }

    #[test]
    fn the_default_instance_name_is_host_and_pid() {
        let me = Candidate::this_process(&HaConfig::default());
        assert_eq!(me.instance, format!("{}:{}", me.host, std::process::id()));
        let named = Candidate::this_process(&HaConfig {
            instance: Some("pod-1".into()),
            ..HaConfig::default()
        });
        assert_eq!(named.instance, "pod-1");
    }

    #[test]
    fn only_a_certainly_dead_predecessor_is_succeeded() {
        let me = Candidate::this_process(&HaConfig::default());
        let holder = |instance: &str, host: &str, pid: u32| Candidate {
            instance: instance.into(),
            host: host.into(),
            pid,
            since: "2026-01-01T00:00:00Z".into(),
            ..me.clone()
        };
        // The same derived name (host:pid) in another PID namespace is another process.
        let elsewhere = Candidate {
            pid_namespace: Some("pid:[1]".into()),
            ..holder(&me.instance, &me.host, me.pid)
        };
        assert!(!me.succeeds(&elsewhere));
        // The same configured name: a restarted pod.
        let pod = Candidate::this_process(&HaConfig {
            instance: Some("pod-1".into()),
            ..HaConfig::default()
        });
        assert!(pod.succeeds(&holder("pod-1", "elsewhere", 1)));
        // The same host, a process that has exited.
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let gone = child.id();
        child.wait().expect("wait");
        assert!(me.succeeds(&holder("other", &me.host, gone)));
        // The same host, a live process (this test's own parent shell or init stays alive).
        let live = std::os::unix::process::parent_id();
        assert!(!me.succeeds(&holder("other", &me.host, live)));
        // Another kernel: never judged from here.
        let other_kernel = Candidate {
            boot_id: Some("another-boot".into()),
            ..holder("other", "another-host", gone)
        };
        assert!(!me.succeeds(&other_kernel));
    }
}
