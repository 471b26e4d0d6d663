//! Replacing a deposed instance's binlog connection (DESIGN §7). A new binlog connection with
//! the same server_id makes the server kill the old dump thread, but a thread blocked writing to
//! a frozen client (SIGSTOP, a network partition) stays in `Killed` / `Writing to net` until
//! `net_write_timeout`, and the new dump does not start before it is gone. A second
//! `KILL CONNECTION` ends it at once; only threads the server already killed are touched.

use crate::connect::connect;
use mysql_async::prelude::*;
use mysql_async::Opts;
use std::time::Duration;

/// How long the new stream waits for its first event before looking for a stuck dump thread.
pub const FIRST_EVENT_GRACE: Duration = Duration::from_secs(1);

/// Looks for this user's killed-but-stuck threads and ends them, every 2 s, until dropped (the
/// caller drops it when the stream's first event arrives).
pub async fn end_stuck_dumps(opts: &Opts) {
    tokio::time::sleep(FIRST_EVENT_GRACE).await;
    for _ in 0..30 {
        if let Err(error) = end_killed_threads(opts).await {
            tracing::debug!(error = %error, "could not look for a stuck binlog dump thread");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    std::future::pending::<()>().await
}

async fn end_killed_threads(opts: &Opts) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut conn = connect(opts).await?;
    // Without the PROCESS privilege the list holds this user's threads only.
    let stuck: Vec<(u64, Option<String>)> = conn
        .query(
            "SELECT ID, STATE FROM information_schema.PROCESSLIST \
             WHERE COMMAND = 'Killed' AND USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1) \
               AND ID <> CONNECTION_ID()",
        )
        .await?;
    for (id, state) in stuck {
        tracing::warn!(
            thread = id,
            state = state.as_deref().unwrap_or(""),
            "a killed binlog connection of a previous instance is stuck (its client is frozen?); ending it"
        );
        if let Err(error) = conn.query_drop(format!("KILL CONNECTION {id}")).await {
            tracing::debug!(error = %error, thread = id, "KILL CONNECTION failed (already gone?)");
        }
    }
    let _ = conn.disconnect().await;
    Ok(())
}
