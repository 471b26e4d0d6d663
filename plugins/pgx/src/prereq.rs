//! What the source needs from the server (issue 3; issue 6 §1): facts read from the catalog and
//! pure judgements on them, each failure a [`Problem`] naming the exact fix. `build` refuses to
//! start on a problem; `etcdsync check` (`inspect.rs`) reports every one, from the same code.

use crate::config::Valid;
use crate::error::pg;
use crate::relations::quote_ident;
use etcdsync_core::{Error, Result};
use pgwire_replication::Lsn;
use tokio_postgres::Client;

pub use crate::error::Problem;

/// Server settings and capacity as one catalog query reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// `server_version_num`, e.g. 150004.
    pub version_num: i32,
    /// `server_version`, e.g. `15.4 (Debian 15.4-1)`.
    pub version: String,
    pub wal_level: String,
    pub user: String,
    pub superuser: bool,
    pub replication: bool,
    pub max_replication_slots: i64,
    /// Slots that exist (each takes one of `max_replication_slots`).
    pub replication_slots: i64,
    pub max_wal_senders: i64,
    /// Running walsender processes (each takes one of `max_wal_senders`).
    pub wal_senders: i64,
    /// `synchronous_standby_names` as set (empty when commits wait for no standby).
    pub synchronous_standby_names: String,
    /// `synchronous_commit` (`off` and `local` wait for no standby).
    pub synchronous_commit: String,
    /// The server is a standby (its walsenders are never synchronous standbys).
    pub in_recovery: bool,
}

pub async fn server_facts(client: &Client) -> Result<ServerFacts> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, current_setting('server_version'), \
                    current_setting('wal_level'), current_user::text, \
                    coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false), \
                    coalesce((SELECT rolreplication FROM pg_roles WHERE rolname = current_user), false), \
                    current_setting('max_replication_slots')::int8, \
                    (SELECT count(*) FROM pg_replication_slots), \
                    current_setting('max_wal_senders')::int8, \
                    (SELECT count(*) FROM pg_stat_replication), \
                    current_setting('synchronous_standby_names'), \
                    current_setting('synchronous_commit'), pg_is_in_recovery()",
            &[],
        )
        .await
        .map_err(pg("checking server settings"))?;
    Ok(ServerFacts {
        version_num: row.get(0),
        version: row.get(1),
        wal_level: row.get(2),
        user: row.get(3),
        superuser: row.get(4),
        replication: row.get(5),
        max_replication_slots: row.get(6),
        replication_slots: row.get(7),
        max_wal_senders: row.get(8),
        wal_senders: row.get(9),
        synchronous_standby_names: row.get(10),
        synchronous_commit: row.get(11),
        in_recovery: row.get(12),
    })
}

impl ServerFacts {
    /// pgoutput needs PostgreSQL 10.
    pub fn version_problem(&self) -> Option<Problem> {
        (self.version_num < 100_000).then(|| {
            Problem::new(
                format!(
                    "PostgreSQL {} (server_version_num {}); pgoutput logical replication needs PostgreSQL 10 or later",
                    self.version, self.version_num
                ),
                "upgrade the server to PostgreSQL 10 or later (e.g. with pg_upgrade)",
            )
        })
    }

    pub fn wal_level_problem(&self) -> Option<Problem> {
        (self.wal_level != "logical").then(|| {
            Problem::new(
                format!(
                    "wal_level = {}; logical replication needs wal_level = logical",
                    self.wal_level
                ),
                "run ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL",
            )
        })
    }

    /// Replication connections need the REPLICATION attribute (or superuser).
    pub fn role_problem(&self) -> Option<Problem> {
        (!(self.replication || self.superuser)).then(|| {
            Problem::new(
                format!(
                    "role {} has neither REPLICATION nor SUPERUSER, so it may not open replication connections",
                    self.user
                ),
                format!(
                    "run ALTER ROLE {} REPLICATION; as a superuser",
                    quote_ident(&self.user)
                ),
            )
        })
    }

    /// `needed` more slots than exist must fit under `max_replication_slots`.
    pub fn slots_problem(&self, needed: i64) -> Option<Problem> {
        let want = self.replication_slots + needed;
        (want > self.max_replication_slots).then(|| {
            Problem::new(
                format!(
                    "max_replication_slots = {}, {} in use, etcdsync needs {needed} more",
                    self.max_replication_slots, self.replication_slots
                ),
                format!(
                    "run ALTER SYSTEM SET max_replication_slots = {want}; and restart PostgreSQL, \
                     or drop slots nobody uses any more with SELECT pg_drop_replication_slot('name');"
                ),
            )
        })
    }

    /// `needed` more walsenders than run must fit under `max_wal_senders`.
    pub fn senders_problem(&self, needed: i64) -> Option<Problem> {
        let want = self.wal_senders + needed;
        (want > self.max_wal_senders).then(|| {
            Problem::new(
                format!(
                    "max_wal_senders = {}, {} in use, etcdsync needs {needed} more",
                    self.max_wal_senders, self.wal_senders
                ),
                format!("run ALTER SYSTEM SET max_wal_senders = {want}; and restart PostgreSQL"),
            )
        })
    }

    /// The synchronous standby names that could make etcdsync's replication connection a
    /// synchronous standby; none when commits wait for no standby.
    fn standby_names_for(&self, application_name: &str) -> Vec<String> {
        if self.in_recovery || matches!(self.synchronous_commit.as_str(), "off" | "local") {
            return Vec::new();
        }
        // The server keeps the first 63 bytes of an application_name.
        let mut end = application_name.len().min(63);
        while !application_name.is_char_boundary(end) {
            end -= 1;
        }
        let ours = &application_name[..end];
        standby_names(&self.synchronous_standby_names)
            .into_iter()
            .filter(|name| name == "*" || name.eq_ignore_ascii_case(ours))
            .collect()
    }

    /// `synchronous_standby_names` naming etcdsync's replication connection: every commit on
    /// the server would wait for etcdsync (and stall while it is stopped), and a row etcdsync
    /// reads for a commit would wait for the commit — neither moves.
    pub fn sync_standby_problem(&self, application_name: &str) -> Option<Problem> {
        let named = self
            .standby_names_for(application_name)
            .into_iter()
            .find(|name| name != "*")?;
        Some(Problem::new(
            format!(
                "synchronous_standby_names = '{}' names `{named}`, etcdsync's replication connection \
                 (application_name {application_name}): commits would wait for etcdsync, and etcdsync \
                 waits for commits to become visible",
                self.synchronous_standby_names
            ),
            "list only the real synchronous standbys, e.g. ALTER SYSTEM SET synchronous_standby_names = \
             'FIRST 1 (replica1)'; SELECT pg_reload_conf();",
        ))
    }

    /// A `*` in `synchronous_standby_names` lets the server pick etcdsync as a synchronous
    /// standby when the standbys before it are not connected: said, not refused.
    pub fn sync_standby_risk(&self, application_name: &str) -> Option<String> {
        self.standby_names_for(application_name)
            .iter()
            .any(|name| name == "*")
            .then(|| {
                format!(
                    "synchronous_standby_names = '{}' has `*`, which also matches etcdsync's replication \
                     connection (application_name {application_name}): if the server picks it, commits wait \
                     for etcdsync while etcdsync waits for them; list the standbys by name",
                    self.synchronous_standby_names
                )
            })
    }

    /// The first problem that keeps the source from starting at all.
    pub fn start_problem(&self) -> Option<Problem> {
        self.version_problem()
            .or_else(|| self.wal_level_problem())
            .or_else(|| self.role_problem())
    }
}

/// The standby names of a `synchronous_standby_names` value (`name, …`, `[FIRST] n (name, …)`,
/// `ANY n (name, …)`), unquoted; `*` stays `*`.
fn standby_names(setting: &str) -> Vec<String> {
    let list = match (setting.find('('), setting.rfind(')')) {
        (Some(open), Some(close)) if open < close => &setting[open + 1..close],
        _ => setting,
    };
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            name.strip_prefix('"')
                .and_then(|n| n.strip_suffix('"'))
                .map_or_else(|| name.to_string(), |n| n.replace("\"\"", "\""))
        })
        .collect()
}

/// The slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active: bool,
    /// The process holding the slot, and its `application_name`.
    pub active_pid: Option<i32>,
    pub holder: Option<String>,
    pub confirmed_flush: Option<Lsn>,
    pub restart_lsn: Option<String>,
    /// WAL bytes the slot keeps on the server (current WAL position minus `restart_lsn`).
    pub retained_bytes: Option<i64>,
    /// PostgreSQL 13+: `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
}

pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>> {
    let row = client
        .query_opt(
            "SELECT s.plugin::text, s.database::text, s.active, s.confirmed_flush_lsn::text, s.active_pid, \
                    a.application_name::text, s.restart_lsn::text, \
                    CASE WHEN pg_is_in_recovery() THEN NULL \
                         ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::int8 END, \
                    to_jsonb(s) ->> 'wal_status' \
             FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg("looking up the replication slot"))?;
    Ok(row.map(|r| SlotState {
        plugin: r.get(0),
        database: r.get(1),
        active: r.get(2),
        confirmed_flush: r
            .get::<_, Option<String>>(3)
            .and_then(|t| Lsn::parse(&t).ok()),
        active_pid: r.get(4),
        holder: r.get(5),
        restart_lsn: r.get(6),
        retained_bytes: r.get(7),
        wal_status: r.get(8),
    }))
}

impl SlotState {
    /// A slot of that name that is not a pgoutput slot of our database cannot be ours.
    pub fn foreign_problem(&self, valid: &Valid) -> Option<Problem> {
        let database = valid.pg.get_dbname().unwrap_or_default();
        (self.plugin.as_deref() != Some("pgoutput") || self.database.as_deref() != Some(database))
            .then(|| {
                Problem::new(
                    format!(
                        "replication slot `{}` exists but is not a pgoutput slot of database {database} (plugin {}, database {})",
                        valid.slot,
                        self.plugin.as_deref().unwrap_or("none"),
                        self.database.as_deref().unwrap_or("none")
                    ),
                    "set `source.slot` to another name",
                )
            })
    }

    /// Held by a session of this pipeline (its `application_name`).
    pub fn held_by_us(&self, valid: &Valid) -> bool {
        self.active && self.holder.as_deref() == Some(valid.application_name.as_str())
    }

    /// Held by a process that is not this pipeline (another etcdsync, or a stale session).
    pub fn busy_problem(&self, valid: &Valid) -> Option<Problem> {
        if !self.active || self.holder.as_deref() == Some(valid.application_name.as_str()) {
            return None;
        }
        let pid = self
            .active_pid
            .map_or_else(|| "?".to_string(), |p| p.to_string());
        Some(Problem::new(
            format!(
                "replication slot `{}` is in use by process {pid} (application_name {})",
                valid.slot,
                self.holder.as_deref().unwrap_or("unknown")
            ),
            format!(
                "stop the program that holds it, or end that session with SELECT pg_terminate_backend({pid}); \
                 or set `source.slot` to another name"
            ),
        ))
    }

    /// PostgreSQL removed WAL the slot still needed: it can never stream again.
    pub fn lost_problem(&self, valid: &Valid) -> Option<Problem> {
        (self.wal_status.as_deref() == Some("lost")).then(|| {
            Problem::new(
                format!(
                    "replication slot `{}` has lost WAL it needed (wal_status = lost, max_slot_wal_keep_size exceeded)",
                    valid.slot
                ),
                format!(
                    "run SELECT pg_drop_replication_slot('{}'); and delete the checkpoint key under the sink's meta prefix, \
                     so the next start takes a fresh snapshot",
                    valid.slot
                ),
            )
        })
    }

    /// What `check` shows for a usable slot.
    pub fn describe(&self) -> String {
        let mut out = if self.active {
            format!(
                "exists, in use by this pipeline (process {})",
                self.active_pid.unwrap_or_default()
            )
        } else {
            "exists, inactive".to_string()
        };
        match self.confirmed_flush {
            Some(lsn) => out.push_str(&format!(", confirmed_flush_lsn {}", lsn.to_pg_string())),
            None => out.push_str(", confirmed_flush_lsn none"),
        }
        if let Some(bytes) = self.retained_bytes {
            out.push_str(&format!(", retains {bytes} bytes of WAL"));
        }
        if let Some(status) = &self.wal_status {
            out.push_str(&format!(" (wal_status {status})"));
        }
        out
    }
}

/// The SQLSTATE of the PostgreSQL error inside `error`, if any.
pub fn sqlstate(error: &Error) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
            return pg.code().map(|c| c.code().to_string());
        }
        current = e.source();
    }
    None
}

/// What to change when connecting fails, by the server's answer.
pub fn connect_fix(valid: &Valid, sqlstate: Option<&str>) -> String {
    let user = valid.pg.get_user().unwrap_or_default();
    let database = valid.pg.get_dbname().unwrap_or_default();
    match sqlstate {
        Some("28P01") | Some("28000") => format!(
            "check the user and password in `source.url`, and that pg_hba.conf lets {user} connect to {database} from this host"
        ),
        Some("3D000") => format!("create database {database}, or name an existing one in `source.url`"),
        Some(code) if code.starts_with("53") || code.starts_with("57") => {
            "the server refuses connections for now (starting up, shutting down or out of connections); retry, or raise max_connections".to_string()
        }
        _ => "check host and port in `source.url`: PostgreSQL must listen there (listen_addresses, port) and be reachable from this host; \
              match `source.sslmode` to the server's TLS setup".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ServerFacts {
        ServerFacts {
            version_num: 150_004,
            version: "15.4".into(),
            wal_level: "logical".into(),
            user: "sync".into(),
            superuser: false,
            replication: true,
            max_replication_slots: 10,
            replication_slots: 2,
            max_wal_senders: 10,
            wal_senders: 1,
            synchronous_standby_names: String::new(),
            synchronous_commit: "on".into(),
            in_recovery: false,
        }
    }

    #[test]
    fn a_synchronous_standby_name_matching_etcdsync_is_a_problem() {
        let with = |names: &str| ServerFacts {
            synchronous_standby_names: names.into(),
            ..facts()
        };
        for names in [
            "",
            "replica1",
            "FIRST 1 (replica1, replica2)",
            "ANY 2 (\"etcdsync-other\", r2)",
            "*",
            "ANY 1 (replica1, *)",
        ] {
            assert_eq!(
                with(names).sync_standby_problem("etcdsync-main"),
                None,
                "{names}"
            );
        }
        for names in [
            "etcdsync-main",
            "replica1, ETCDSYNC-MAIN",
            "FIRST 1 (replica1, etcdsync-main)",
            "2 (\"etcdsync-main\", replica1)",
            "ANY 1 (replica1,etcdsync-main)",
        ] {
            let problem = with(names)
                .sync_standby_problem("etcdsync-main")
                .unwrap_or_else(|| panic!("{names} names etcdsync"));
            assert!(
                problem.fix.contains("synchronous_standby_names"),
                "{}",
                problem.fix
            );
            assert_eq!(with(names).sync_standby_risk("etcdsync-main"), None);
        }
        // `*` is a risk, said at start and by `check`, not refused.
        assert!(with("FIRST 1 (replica1, *)")
            .sync_standby_risk("etcdsync-main")
            .is_some_and(|risk| risk.contains("list the standbys by name")));
        // Commits that wait for no standby, and a standby source, are no problem at all.
        for quiet in [
            ServerFacts {
                synchronous_commit: "local".into(),
                ..with("etcdsync-main")
            },
            ServerFacts {
                in_recovery: true,
                ..with("etcdsync-main, *")
            },
        ] {
            assert_eq!(quiet.sync_standby_problem("etcdsync-main"), None);
            assert_eq!(quiet.sync_standby_risk("etcdsync-main"), None);
        }
        // The server cuts application names at 63 bytes.
        let long = format!("etcdsync-{}", "p".repeat(70));
        assert!(with(&long[..63]).sync_standby_problem(&long).is_some());
    }

    #[test]
    fn a_good_server_has_no_problem() {
        let f = facts();
        assert_eq!(f.start_problem(), None);
        assert_eq!(f.slots_problem(2), None);
        assert_eq!(f.senders_problem(2), None);
    }

    #[test]
    fn wal_level_replica_names_the_alter_system_fix() {
        let f = ServerFacts {
            wal_level: "replica".into(),
            ..facts()
        };
        let p = f.wal_level_problem().expect("problem");
        assert!(p.detail.contains("wal_level = replica"), "{p:?}");
        assert_eq!(
            p.fix,
            "run ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL"
        );
        assert_eq!(f.start_problem(), Some(p.clone()));
        assert!(p.into_error().to_string().contains("ALTER SYSTEM"));
    }

    #[test]
    fn role_and_version() {
        let f = ServerFacts {
            replication: false,
            user: "Odd\"Name".into(),
            ..facts()
        };
        let p = f.role_problem().expect("problem");
        assert_eq!(
            p.fix,
            "run ALTER ROLE \"Odd\"\"Name\" REPLICATION; as a superuser"
        );
        let f = ServerFacts {
            replication: false,
            superuser: true,
            ..facts()
        };
        assert_eq!(f.role_problem(), None);
        let f = ServerFacts {
            version_num: 90_624,
            version: "9.6.24".into(),
            ..facts()
        };
        assert!(f.version_problem().expect("old").detail.contains("9.6.24"));
    }

    #[test]
    fn capacity_fixes_name_the_setting_to_reach() {
        let f = ServerFacts {
            max_replication_slots: 2,
            max_wal_senders: 1,
            ..facts()
        };
        let p = f.slots_problem(2).expect("slots");
        assert!(p.detail.contains("2 in use"), "{p:?}");
        assert!(
            p.fix
                .starts_with("run ALTER SYSTEM SET max_replication_slots = 4;"),
            "{p:?}"
        );
        let p = f.senders_problem(1).expect("senders");
        assert_eq!(
            p.fix,
            "run ALTER SYSTEM SET max_wal_senders = 2; and restart PostgreSQL"
        );
        assert_eq!(f.senders_problem(0), None);
    }

    fn valid() -> Valid {
        let config: crate::config::PgxConfig = serde_yaml::from_str(
            "url: postgres://u@localhost/app\ntables: { include: [\"public.*\"] }\n",
        )
        .expect("yaml");
        config.validated("demo").expect("valid")
    }

    fn slot() -> SlotState {
        SlotState {
            plugin: Some("pgoutput".into()),
            database: Some("app".into()),
            active: false,
            active_pid: None,
            holder: None,
            confirmed_flush: Some(Lsn::from_u64(0x16B3748)),
            restart_lsn: Some("0/16B3700".into()),
            retained_bytes: Some(72),
            wal_status: Some("reserved".into()),
        }
    }

    #[test]
    fn slot_of_this_pipeline_is_usable() {
        let v = valid();
        let s = slot();
        assert_eq!(s.foreign_problem(&v), None);
        assert_eq!(s.busy_problem(&v), None);
        assert_eq!(s.lost_problem(&v), None);
        assert_eq!(
            s.describe(),
            "exists, inactive, confirmed_flush_lsn 0/16B3748, retains 72 bytes of WAL (wal_status reserved)"
        );
        let running = SlotState {
            active: true,
            active_pid: Some(42),
            holder: Some("etcdsync-demo".into()),
            ..slot()
        };
        assert_eq!(running.busy_problem(&v), None);
        assert!(running
            .describe()
            .starts_with("exists, in use by this pipeline (process 42)"));
    }

    #[test]
    fn foreign_busy_and_lost_slots_name_their_fix() {
        let v = valid();
        let foreign = SlotState {
            plugin: Some("test_decoding".into()),
            ..slot()
        };
        let p = foreign.foreign_problem(&v).expect("foreign");
        assert!(p.detail.contains("plugin test_decoding"), "{p:?}");
        assert_eq!(p.fix, "set `source.slot` to another name");
        let elsewhere = SlotState {
            database: Some("other".into()),
            ..slot()
        };
        assert!(elsewhere.foreign_problem(&v).is_some());
        let busy = SlotState {
            active: true,
            active_pid: Some(42),
            holder: Some("psql".into()),
            ..slot()
        };
        let p = busy.busy_problem(&v).expect("busy");
        assert!(
            p.detail.contains("process 42 (application_name psql)"),
            "{p:?}"
        );
        assert!(p.fix.contains("SELECT pg_terminate_backend(42);"), "{p:?}");
        let lost = SlotState {
            wal_status: Some("lost".into()),
            ..slot()
        };
        let p = lost.lost_problem(&v).expect("lost");
        assert!(
            p.fix
                .starts_with("run SELECT pg_drop_replication_slot('etcdsync_demo');"),
            "{p:?}"
        );
    }

    #[test]
    fn connect_fixes_by_sqlstate() {
        let v = valid();
        assert!(connect_fix(&v, Some("28P01")).contains("user and password"));
        assert!(connect_fix(&v, Some("3D000")).starts_with("create database app"));
        assert!(connect_fix(&v, None).contains("check host and port"));
    }
}
