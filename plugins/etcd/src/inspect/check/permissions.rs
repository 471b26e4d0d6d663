//! The permission lines of `check`: what the user may read and write under the meta and data
//! prefixes, read from the user's etcd roles, or probed with `--write-probe`.

use super::*;

impl EtcdInspector {
    /// `permissions on sink.meta_prefix`: read the checkpoint key; write from the roles, or with
    /// `--write-probe` by putting and deleting a probe key.
    pub(super) async fn meta_permission_check(
        &self,
        client: &EtcdClient,
        writes: Writes,
        roles: &mut Option<Result<Roles, String>>,
    ) -> CheckResult {
        let name = "permissions on sink.meta_prefix";
        let meta = self.settings.kv.meta_prefix.clone();
        let fail = |failed: Failed| {
            let fix = if failed.detail.contains("permission denied") {
                self.grant_fix("sink.meta_prefix", &meta)
            } else {
                failed.fix
            };
            CheckResult::fail(name, failed.detail, fix)
        };
        let checkpoint = self.settings.kv.checkpoint_key();
        if let Err(failed) = self
            .bounded(client.get(
                "read the checkpoint key",
                checkpoint.as_str(),
                Some(GetOptions::new().with_count_only()),
                None,
                Some(1),
            ))
            .await
        {
            return fail(failed);
        }
        if writes != Writes::Probe {
            return self
                .write_permission(client, name, "sink.meta_prefix", &meta, writes, roles)
                .await;
        }
        let probe = self.probe_key();
        let put = client.retry(
            "put a probe key under sink.meta_prefix",
            None,
            Some(1),
            |mut kv| {
                let key = probe.clone();
                async move { kv.put(key, "etcdsync check probe", None).await }
            },
        );
        if let Err(failed) = self.bounded(put).await {
            return fail(failed);
        }
        let delete = client.retry("delete the probe key", None, Some(1), |mut kv| {
            let key = probe.clone();
            async move { kv.delete(key, None).await }
        });
        if let Err(failed) = self.bounded(delete).await {
            return fail(Failed {
                detail: format!(
                    "{} (the probe key `{probe}` may remain; delete it)",
                    failed.detail
                ),
                fix: failed.fix,
            });
        }
        CheckResult::pass(
            name,
            format!("read permitted; put and delete probed under `{meta}` (wrote and deleted `{probe}`)"),
        )
    }

    /// `permissions on sink.prefix`: a count-only read; write from the roles, or with
    /// `--write-probe` by a never-applied put and delete-range.
    pub(super) async fn data_permission_check(
        &self,
        client: &EtcdClient,
        writes: Writes,
        roles: &mut Option<Result<Roles, String>>,
    ) -> CheckResult {
        let name = "permissions on sink.prefix";
        let data = self.settings.kv.data_prefix.clone();
        let fail = |failed: Failed| {
            let fix = if failed.detail.contains("permission denied") {
                self.grant_fix("sink.prefix", &data)
            } else {
                failed.fix
            };
            CheckResult::fail(name, failed.detail, fix)
        };
        let read = client.get(
            "count the keys under sink.prefix",
            data.as_str(),
            Some(
                GetOptions::new()
                    .with_range(prefix_range_end(&data))
                    .with_count_only(),
            ),
            None,
            Some(1),
        );
        let keys = match self.bounded(read).await {
            Ok(response) => response.count(),
            Err(failed) => return fail(failed),
        };
        if writes != Writes::Probe {
            let mut result = self
                .write_permission(client, name, "sink.prefix", &data, writes, roles)
                .await;
            if result.ok {
                result.detail = format!("{keys} keys under `{data}`; {}", result.detail);
            }
            return result;
        }
        let probe = format!("{data}etcdsync-check-probe");
        let txn = Self::never_applied(
            &probe,
            vec![
                TxnOp::put(probe.as_str(), "", None),
                TxnOp::delete(
                    format!("{probe}/"),
                    Some(DeleteOptions::new().with_prefix()),
                ),
            ],
        );
        if let Err(failed) = self
            .bounded(Self::probe_txn(
                client,
                "probe write permission on sink.prefix",
                txn,
            ))
            .await
        {
            return fail(failed);
        }
        CheckResult::pass(
            name,
            format!("read ({keys} keys under `{data}`), put and delete permitted (probed with a transaction etcd checks but never applies)"),
        )
    }

    /// The write half of a permission check without writing: from etcd's authentication state
    /// and the user's roles (read once per check into `roles`).
    pub(super) async fn write_permission(
        &self,
        client: &EtcdClient,
        name: &str,
        what: &str,
        prefix: &str,
        writes: Writes,
        roles: &mut Option<Result<Roles, String>>,
    ) -> CheckResult {
        let not_probed = |why: String| {
            CheckResult::pass(
                name,
                format!("read permitted; write not probed ({why}; `etcdsync check --write-probe` probes it)"),
            )
        };
        if writes == Writes::Refused {
            return CheckResult::pass(
                name,
                "read permitted; write not probed (etcd refuses writes while an alarm is raised)",
            );
        }
        let Some((user, _)) = &self.settings.credentials else {
            return CheckResult::pass(
                name,
                "read permitted; write permitted: etcd authentication is off (nothing written to check)",
            );
        };
        if roles.is_none() {
            *roles = Some(self.read_roles(client, user).await);
        }
        let roles = match roles {
            Some(Ok(roles)) => roles,
            Some(Err(why)) => return not_probed(why.clone()),
            None => return not_probed("the user's roles were not read".into()),
        };
        let names = if roles.names.is_empty() {
            "none".to_string()
        } else {
            roles.names.join(", ")
        };
        if roles.root {
            CheckResult::pass(
                name,
                format!("read permitted; write permitted: user `{user}` has the root role (nothing written to check)"),
            )
        } else if covers(&roles.write_ranges, prefix) {
            CheckResult::pass(
                name,
                format!("read permitted; write granted on `{prefix}` by the roles of user `{user}` ({names}; read from etcd, nothing written)"),
            )
        } else {
            CheckResult::fail(
                name,
                format!(
                    "the roles of user `{user}` ({names}) do not grant write on all of `{prefix}`"
                ),
                self.grant_fix(what, prefix),
            )
        }
    }

    /// The user's roles and the key ranges they may write (`UserGet` of itself and `RoleGet` of
    /// its roles, which etcd lets a user read without the root role).
    pub(super) async fn read_roles(
        &self,
        client: &EtcdClient,
        user: &str,
    ) -> Result<Roles, String> {
        let mut auth = client.inner().auth_client();
        let read = async {
            let names = auth
                .user_get(user)
                .await
                .map_err(|e| format!("user `{user}`: {e}"))?
                .roles()
                .to_vec();
            let mut roles = Roles {
                root: names.iter().any(|r| r == "root"),
                names,
                write_ranges: Vec::new(),
            };
            if roles.root {
                return Ok::<_, String>(roles);
            }
            for role in roles.names.clone() {
                let permissions = auth
                    .role_get(role.as_str())
                    .await
                    .map_err(|e| format!("role `{role}`: {e}"))?
                    .permissions();
                roles.write_ranges.extend(
                    permissions
                        .iter()
                        .filter(|p| {
                            p.get_type() == PermissionType::Write as i32
                                || p.get_type() == PermissionType::Readwrite as i32
                        })
                        .filter_map(|p| KeyRange::of_permission(p.key(), p.range_end())),
                );
            }
            Ok(roles)
        };
        match tokio::time::timeout(self.check_timeout(), read).await {
            Ok(Ok(roles)) => Ok(roles),
            Ok(Err(error)) => Err(format!("the user's roles could not be read: {error}")),
            Err(_) => Err(format!(
                "the user's roles could not be read within {:?}",
                self.check_timeout()
            )),
        }
    }
}

/// The check user's roles, as far as write permission goes.
#[derive(Debug, Default)]
pub(super) struct Roles {
    names: Vec<String>,
    /// The user has etcd's `root` role: every permission.
    root: bool,
    write_ranges: Vec<KeyRange>,
}

/// A key range a role may write: `from` up to `to` (exclusive; `None`: no end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyRange {
    from: Vec<u8>,
    to: Option<Vec<u8>>,
}

impl KeyRange {
    /// The range of an etcd permission: an empty `range_end` is the single key (`None`: it
    /// cannot cover a prefix), `[0]` every key from `key` on.
    pub(super) fn of_permission(key: &[u8], range_end: &[u8]) -> Option<Self> {
        match range_end {
            [] => None,
            [0] => Some(Self {
                from: key.to_vec(),
                to: None,
            }),
            end => Some(Self {
                from: key.to_vec(),
                to: Some(end.to_vec()),
            }),
        }
    }
}

/// Whether `ranges` together hold every key that starts with `prefix`.
pub(super) fn covers(ranges: &[KeyRange], prefix: &str) -> bool {
    let end = prefix_range_end(prefix);
    let mut sorted: Vec<&KeyRange> = ranges.iter().collect();
    sorted.sort_by(|a, b| a.from.cmp(&b.from));
    // Everything from `prefix` up to `reached` is covered.
    let mut reached = prefix.as_bytes().to_vec();
    for range in sorted {
        if range.from > reached {
            break;
        }
        match &range.to {
            None => return true,
            Some(to) if *to > reached => reached.clone_from(to),
            Some(_) => {}
        }
    }
    // `[0]` is prefix_range_end's "no end" (a prefix of only 0xff bytes).
    end != [0] && reached >= end
}
