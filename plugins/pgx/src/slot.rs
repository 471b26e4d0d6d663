//! The answer of `CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT` on a replication session, shared by
//! the initial snapshot (`source`) and the copy of tables selected while streaming
//! (`replication`).

use etcdsync_core::{Error, Result};
use pgwire_replication::Lsn;

/// The consistent point and snapshot name of a `CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT`
/// answer (columns slot_name, consistent_point, snapshot_name, output_plugin).
pub fn slot_answer(rows: &[Vec<Option<bytes::Bytes>>]) -> Result<(Lsn, String)> {
    let text = |i: usize| {
        rows.first()
            .and_then(|row| row.get(i))
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let (Some(point), Some(snapshot)) = (text(1), text(2)) else {
        return Err(Error::fatal(
            "CREATE_REPLICATION_SLOT returned no consistent point or snapshot name",
        ));
    };
    let point = Lsn::parse(&point)
        .map_err(|e| Error::fatal(format!("slot consistent point `{point}`: {e}")))?;
    Ok((point, snapshot))
}
