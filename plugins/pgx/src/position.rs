//! PostgreSQL positions (DESIGN §1, §5): an LSN as PostgreSQL prints it (`0/16B3748`). The
//! checkpoint of a streamed transaction is its commit end LSN; of a snapshot, the slot's
//! consistent point; of a heartbeat, a keepalive's `wal_end`. All compare as plain LSNs.

use etcdsync_core::{Error, Position};
use pgwire_replication::Lsn;

/// Parses a checkpoint position written by this plugin.
pub fn parse(position: &Position) -> Result<Lsn, Error> {
    Lsn::parse(position.as_str()).map_err(|e| {
        Error::config(format!(
            "the checkpoint position `{position}` is not a PostgreSQL LSN ({e}); it was not written by the pgx source: \
             give this pipeline another `name`, or delete the checkpoint key to start over with a snapshot"
        ))
    })
}

/// The position text of an LSN (`X/Y`, uppercase hex, as `pg_lsn` prints it).
pub fn format(lsn: Lsn) -> Position {
    Position::new(lsn.to_pg_string())
}

/// A commit or keepalive timestamp (microseconds since 2000-01-01 UTC) as `SystemTime`.
pub fn pg_time(micros: i64) -> Option<std::time::SystemTime> {
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    let epoch = std::time::UNIX_EPOCH + std::time::Duration::from_secs(PG_EPOCH_UNIX_SECS);
    if micros >= 0 {
        epoch.checked_add(std::time::Duration::from_micros(micros.unsigned_abs()))
    } else {
        epoch.checked_sub(std::time::Duration::from_micros(micros.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_pg_text() {
        let lsn = parse(&Position::new("0/16B3748")).expect("parse");
        assert_eq!(lsn.as_u64(), 0x16B3748);
        assert_eq!(format(lsn).as_str(), "0/16B3748");
        assert_eq!(format(Lsn::from_u64(0x1_0000_00FF)).as_str(), "1/FF");
        assert!(parse(&Position::new("mysql-bin.000001:4")).is_err());
    }

    #[test]
    fn pg_epoch() {
        let t = pg_time(0).expect("time");
        assert_eq!(
            etcdsync_core::change::rfc3339(t),
            "2000-01-01T00:00:00.000000Z"
        );
        let t = pg_time(1_500_000).expect("time");
        assert_eq!(
            etcdsync_core::change::rfc3339(t),
            "2000-01-01T00:00:01.500000Z"
        );
    }
}
