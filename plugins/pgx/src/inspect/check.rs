//! `etcdsync check` for PostgreSQL: every prerequisite as a [`CheckResult`] with its fix —
//! server settings, privileges, the selection, keys, the publication and the slot.

use crate::config::Valid;
use crate::error::pg;
use crate::prereq::{server_facts, slot_state, Problem, SlotState};
use crate::publication::publication_tables;
use crate::relations::{quote_ident, quote_table, resolve_key, selected_by_persistence};
use etcdsync_core::inspect::{plural, table_list, CheckResult};
use etcdsync_core::{Error, Result, TableId};
use std::collections::BTreeSet;
use tokio_postgres::Client;

pub(super) fn result(
    name: &str,
    problem: Option<Problem>,
    ok: impl FnOnce() -> String,
) -> CheckResult {
    match problem {
        Some(p) => CheckResult::fail(name, p.detail, p.fix),
        None => CheckResult::pass(name, ok()),
    }
}

/// A query failed while checking: report it where the check would have been.
pub(super) fn failed_query(name: &str, error: &Error) -> CheckResult {
    CheckResult::fail(
        name,
        format!("cannot check: {error}"),
        "grant the role read access to the PostgreSQL catalog (pg_catalog views), or run `etcdsync check` as a role that has it",
    )
}

/// Everything `check` reports about one server, in order.
pub(super) async fn check_all(
    client: &Client,
    valid: &Valid,
    out: &mut Vec<CheckResult>,
) -> Result<()> {
    let facts = match server_facts(client).await {
        Ok(facts) => facts,
        Err(error) => {
            out.push(failed_query("postgres settings", &error));
            return Ok(());
        }
    };
    out.push(result("postgres version", facts.version_problem(), || {
        format!("PostgreSQL {}", facts.version)
    }));
    if facts.version_problem().is_some() {
        return Ok(());
    }
    out.push(result("wal_level", facts.wal_level_problem(), || {
        facts.wal_level.clone()
    }));
    out.push(result("replication role", facts.role_problem(), || {
        let what = if facts.superuser {
            "SUPERUSER"
        } else {
            "REPLICATION"
        };
        format!("role {} has {what}", facts.user)
    }));
    out.push(result(
        "synchronous_standby_names",
        facts.sync_standby_problem(&valid.application_name),
        || {
            if let Some(risk) = facts.sync_standby_risk(&valid.application_name) {
                format!("warning: {risk}")
            } else if facts.synchronous_standby_names.is_empty() {
                "empty: commits wait for no standby".to_string()
            } else {
                format!(
                    "'{}' does not name etcdsync ({})",
                    facts.synchronous_standby_names, valid.application_name
                )
            }
        },
    ));

    let slot = slot_state(client, &valid.slot).await?;
    let streaming_here = slot
        .as_ref()
        .is_some_and(|s| s.active && s.busy_problem(valid).is_none());
    // A temporary `_copy` slot and its walsender copy tables that appear while running.
    let copies = i64::from(valid.manage_publication);
    let slots_needed = i64::from(slot.is_none()) + copies;
    let senders_needed = i64::from(!streaming_here) + copies;
    out.push(result(
        "max_replication_slots",
        facts.slots_problem(slots_needed),
        || {
            format!(
                "{}, {} in use, etcdsync needs {slots_needed} more{}",
                facts.max_replication_slots,
                facts.replication_slots,
                needs(slot.is_none(), valid.manage_publication, "its slot")
            )
        },
    ));
    out.push(result(
        "max_wal_senders",
        facts.senders_problem(senders_needed),
        || {
            format!(
                "{}, {} in use, etcdsync needs {senders_needed} more{}",
                facts.max_wal_senders,
                facts.wal_senders,
                needs(!streaming_here, valid.manage_publication, "its stream")
            )
        },
    ));

    let (tables, unlogged) = selected_by_persistence(client, &valid.tables).await?;
    check_selection(valid, &tables, out);
    if !unlogged.is_empty() {
        let problem = crate::relations::unlogged_problem(&unlogged);
        out.push(CheckResult::fail(
            "unlogged tables",
            problem.detail,
            problem.fix,
        ));
    }
    check_select_privilege(client, &facts.user, &tables, out).await?;
    check_keys(client, valid, &tables, out).await?;
    check_publication(client, valid, &facts.user, &tables, out).await?;
    out.push(slot_check(valid, slot.as_ref()));
    Ok(())
}

/// Why `check` asks for that many slots or walsenders.
pub(super) fn needs(own: bool, copies: bool, what: &str) -> String {
    match (own, copies) {
        (true, true) => format!(" ({what}, and one while copying tables added later)"),
        (true, false) => format!(" ({what})"),
        (false, true) => " (one while copying tables added later)".to_string(),
        (false, false) => String::new(),
    }
}

pub(super) fn check_selection(
    valid: &Valid,
    tables: &[(u32, TableId, String)],
    out: &mut Vec<CheckResult>,
) {
    if tables.is_empty() {
        out.push(CheckResult::fail(
            "table selection",
            format!(
                "no table of database {} matches include {:?} exclude {:?}",
                valid.pg.get_dbname().unwrap_or_default(),
                valid.tables.include,
                valid.tables.exclude
            ),
            "create the tables, or change `source.tables.include` to `schema.table` globs that match them (e.g. \"public.*\")",
        ));
    } else {
        out.push(CheckResult::pass(
            "table selection",
            format!(
                "{}: {}",
                plural(tables.len(), "table"),
                table_list(tables.iter().map(|t| &t.1))
            ),
        ));
    }
}

pub(super) async fn check_select_privilege(
    client: &Client,
    user: &str,
    tables: &[(u32, TableId, String)],
    out: &mut Vec<CheckResult>,
) -> Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    let oids: Vec<u32> = tables.iter().map(|t| t.0).collect();
    let denied: BTreeSet<u32> = client
        .query(
            "SELECT o FROM unnest($1::oid[]) AS u(o) WHERE NOT has_table_privilege(o, 'SELECT')",
            &[&oids],
        )
        .await
        .map_err(pg("checking SELECT privileges"))?
        .into_iter()
        .map(|r| r.get::<_, u32>(0))
        .collect();
    for (_, id, _) in tables.iter().filter(|t| denied.contains(&t.0)) {
        out.push(CheckResult::fail(
            format!("SELECT on {id}"),
            format!("role {user} may not read {id}, so the snapshot cannot copy it"),
            format!(
                "run GRANT SELECT ON {} TO {};",
                quote_table(id),
                quote_ident(user)
            ),
        ));
    }
    if denied.len() < tables.len() {
        out.push(CheckResult::pass(
            "SELECT privilege",
            format!(
                "on {} of {} selected tables",
                tables.len() - denied.len(),
                tables.len()
            ),
        ));
    }
    Ok(())
}

pub(super) async fn check_keys(
    client: &Client,
    valid: &Valid,
    tables: &[(u32, TableId, String)],
    out: &mut Vec<CheckResult>,
) -> Result<()> {
    let mut usable = 0;
    for (oid, id, replident) in tables {
        let name = format!("key of {id}");
        match resolve_key(
            client,
            *oid,
            id,
            replident,
            &valid.key_columns,
            &valid.tables,
        )
        .await
        {
            Ok(Ok(_)) => usable += 1,
            Ok(Err(issue)) => {
                let problem = issue.into_problem();
                out.push(CheckResult::fail(name, problem.detail, problem.fix))
            }
            Err(error) => out.push(failed_query(&name, &error)),
        }
    }
    if usable > 0 {
        out.push(CheckResult::pass(
            "table keys",
            format!(
                "{usable} of {} selected tables have a usable key",
                tables.len()
            ),
        ));
    }
    Ok(())
}

/// What the publication needs and whether the role can provide it.
pub(super) async fn check_publication(
    client: &Client,
    valid: &Valid,
    user: &str,
    tables: &[(u32, TableId, String)],
    out: &mut Vec<CheckResult>,
) -> Result<()> {
    let name = format!("publication {}", valid.publication);
    let quoted = quote_ident(&valid.publication);
    let wanted: BTreeSet<TableId> = tables.iter().map(|t| t.1.clone()).collect();
    let published = publication_tables(client, &valid.publication).await?;
    let row = client
        .query_opt(
            "SELECT puballtables, pg_has_role(pubowner, 'USAGE') FROM pg_publication WHERE pubname = $1",
            &[&valid.publication],
        )
        .await
        .map_err(pg("looking up the publication"))?;
    let (all_tables, owned) = row.map_or((false, true), |r| (r.get(0), r.get(1)));
    let may_create: bool = client
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await
        .map_err(pg("checking the CREATE privilege"))?
        .get(0);
    let will_write = match &published {
        None => true,
        Some(current) => valid.manage_publication && *current != wanted,
    };
    // with a managed publication, tables found while running wait in a second one
    let pending = valid.pending_publication();
    let pending_missing =
        valid.manage_publication && publication_tables(client, &pending).await?.is_none();
    let mut problems = Vec::new();
    if (published.is_none() || pending_missing) && !may_create {
        let missing = match (published.is_none(), pending_missing) {
            (true, true) => format!("it and {pending} do not exist"),
            (true, false) => "does not exist".to_string(),
            _ => format!("{pending} (for tables created later) does not exist"),
        };
        problems.push(Problem::new(
            format!("{missing}, and role {user} may not create publications"),
            format!(
                "run GRANT CREATE ON DATABASE {} TO {}; or create it as the tables' owner: CREATE PUBLICATION {quoted} FOR TABLE …; \
                 and set `source.manage_publication: false`",
                quote_ident(valid.pg.get_dbname().unwrap_or_default()),
                quote_ident(user)
            ),
        ));
    }
    if published.is_some() && valid.manage_publication && all_tables {
        problems.push(Problem::new(
            "is FOR ALL TABLES, so etcdsync cannot set its tables",
            format!("run DROP PUBLICATION {quoted}; (etcdsync creates it with the selected tables), or set `source.manage_publication: false`"),
        ));
    } else if published.is_some() && will_write && !owned {
        problems.push(Problem::new(
            format!("belongs to another role, so {user} cannot change its tables"),
            format!(
                "run ALTER PUBLICATION {quoted} OWNER TO {};",
                quote_ident(user)
            ),
        ));
    }
    if will_write && !tables.is_empty() {
        let oids: Vec<u32> = tables.iter().map(|t| t.0).collect();
        let foreign: BTreeSet<u32> = client
            .query(
                "SELECT c.oid FROM pg_class c WHERE c.oid = ANY($1::oid[]) AND NOT pg_has_role(c.relowner, 'USAGE')",
                &[&oids],
            )
            .await
            .map_err(pg("checking table ownership"))?
            .into_iter()
            .map(|r| r.get::<_, u32>(0))
            .collect();
        if !foreign.is_empty() {
            let names: Vec<&TableId> = tables
                .iter()
                .filter(|t| foreign.contains(&t.0))
                .map(|t| &t.1)
                .collect();
            let alter = names
                .iter()
                .map(|id| {
                    format!(
                        "ALTER TABLE {} OWNER TO {};",
                        quote_table(id),
                        quote_ident(user)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            problems.push(Problem::new(
                format!(
                    "role {user} does not own {}, and only a table's owner may add it to a publication",
                    table_list(names.iter().copied())
                ),
                format!(
                    "run {alter} or, as their owner, CREATE PUBLICATION {quoted} FOR TABLE {}; and set `source.manage_publication: false`",
                    wanted.iter().map(quote_table).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    if let Some(current) = published.as_ref().filter(|_| !valid.manage_publication) {
        let server_version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await
            .map_err(pg("reading the server version"))?
            .get(0);
        let listed: Vec<TableId> = current.iter().cloned().collect();
        for drift in crate::publication::drift(client, &valid.publication, server_version).await? {
            problems.push(Problem::new(
                drift.detail(&valid.publication),
                format!("run {};", drift.fix(&valid.publication, &listed)),
            ));
        }
        problems.extend(crate::publication::unpublished(
            &valid.publication,
            &wanted,
            current,
            all_tables,
        ));
    }
    if !problems.is_empty() {
        for problem in problems {
            out.push(CheckResult::fail(&name, problem.detail, problem.fix));
        }
        return Ok(());
    }
    let detail = match &published {
        None => format!(
            "does not exist; created at start with the {} selected tables",
            wanted.len()
        ),
        Some(current) if *current == wanted => {
            format!("covers exactly the {} selected tables", wanted.len())
        }
        Some(current) => {
            let missing: Vec<&TableId> = wanted.difference(current).collect();
            let extra: Vec<&TableId> = current.difference(&wanted).collect();
            let mut text = String::new();
            if !missing.is_empty() {
                text.push_str(&format!("lacks {}", table_list(missing.into_iter())));
            }
            if !extra.is_empty() {
                if !text.is_empty() {
                    text.push_str("; ");
                }
                text.push_str(&format!("also publishes {}", table_list(extra.into_iter())));
            }
            if valid.manage_publication {
                format!("{text}; set to the selected tables at start")
            } else {
                format!("{text} (changes of unselected tables are ignored)")
            }
        }
    };
    out.push(CheckResult::pass(name, detail));
    Ok(())
}

pub(super) fn slot_check(valid: &Valid, slot: Option<&SlotState>) -> CheckResult {
    let name = format!("replication slot {}", valid.slot);
    let Some(slot) = slot else {
        return CheckResult::pass(name, "does not exist yet; created at start");
    };
    let problem = slot
        .foreign_problem(valid)
        .or_else(|| slot.busy_problem(valid))
        .or_else(|| slot.lost_problem(valid));
    result(&name, problem, || slot.describe())
}
