//! The source position (DESIGN §1, §5): binlog file and offset, plus the MariaDB GTID position
//! when the server sends GTIDs, serialised as the opaque text stored in the checkpoint:
//! `mysql-bin.000003:1234` or `mysql-bin.000003:1234 gtid=0-1-42,1-7-3`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// A position in the server's binlog: the offset is the end of the last event consumed (the
/// start of the next one), which is what COM_BINLOG_DUMP resumes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BinlogPos {
    pub file: String,
    pub offset: u64,
}

impl BinlogPos {
    pub fn new(file: impl Into<String>, offset: u64) -> Self {
        Self {
            file: file.into(),
            offset,
        }
    }

    /// Orders positions by the numeric suffix of the file name, then the offset. Files of
    /// different base names are not comparable.
    pub fn compare(&self, other: &BinlogPos) -> Option<Ordering> {
        let (base_a, n_a) = split_file(&self.file)?;
        let (base_b, n_b) = split_file(&other.file)?;
        if base_a != base_b {
            return None;
        }
        Some(n_a.cmp(&n_b).then(self.offset.cmp(&other.offset)))
    }
}

fn split_file(file: &str) -> Option<(&str, u64)> {
    let (base, number) = file.rsplit_once('.')?;
    Some((base, number.parse().ok()?))
}

impl fmt::Display for BinlogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.offset)
    }
}

/// MariaDB GTID position: the last `domain-server-sequence` seen per replication domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos {
    domains: BTreeMap<u32, (u32, u64)>,
}

impl GtidPos {
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Records that transaction `domain-server-seq` has been seen.
    pub fn advance(&mut self, domain: u32, server: u32, seq: u64) {
        self.domains.insert(domain, (server, seq));
    }

    /// Parses `0-1-42,1-7-3` (empty text = empty position).
    pub fn parse(text: &str) -> Option<Self> {
        let mut pos = GtidPos::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.splitn(3, '-');
            let domain = it.next()?.parse().ok()?;
            let server = it.next()?.parse().ok()?;
            let seq = it.next()?.parse().ok()?;
            pos.advance(domain, server, seq);
        }
        Some(pos)
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (domain, (server, seq))) in self.domains.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{domain}-{server}-{seq}")?;
        }
        Ok(())
    }
}

/// What the checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    pub binlog: BinlogPos,
    pub gtid: GtidPos,
}

const GTID_MARK: &str = " gtid=";

impl SourcePosition {
    pub fn new(binlog: BinlogPos) -> Self {
        Self {
            binlog,
            gtid: GtidPos::default(),
        }
    }

    /// Parses the checkpoint text; `None` when it is not a position this source wrote.
    pub fn parse(text: &str) -> Option<Self> {
        let (binlog, gtid) = match text.rsplit_once(GTID_MARK) {
            Some((binlog, gtid)) => (binlog, GtidPos::parse(gtid)?),
            None => (text, GtidPos::default()),
        };
        let (file, offset) = binlog.rsplit_once(':')?;
        if file.is_empty() {
            return None;
        }
        Some(Self {
            binlog: BinlogPos::new(file, offset.parse().ok()?),
            gtid,
        })
    }
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.binlog)?;
        if !self.gtid.is_empty() {
            write!(f, "{GTID_MARK}{}", self.gtid)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_gtid() {
        let mut pos = SourcePosition::new(BinlogPos::new("mysql-bin.000003", 1234));
        assert_eq!(pos.to_string(), "mysql-bin.000003:1234");
        assert_eq!(
            SourcePosition::parse("mysql-bin.000003:1234"),
            Some(pos.clone())
        );
        pos.gtid.advance(1, 7, 3);
        pos.gtid.advance(0, 1, 42);
        pos.gtid.advance(0, 1, 43);
        let text = pos.to_string();
        assert_eq!(text, "mysql-bin.000003:1234 gtid=0-1-43,1-7-3");
        assert_eq!(SourcePosition::parse(&text), Some(pos));
        assert_eq!(SourcePosition::parse("0/16B3748"), None);
        assert_eq!(SourcePosition::parse(":12"), None);
        assert_eq!(SourcePosition::parse("f.1:x"), None);
    }

    #[test]
    fn orders_by_file_number_then_offset() {
        let a = BinlogPos::new("mysql-bin.000009", 900);
        let b = BinlogPos::new("mysql-bin.000010", 4);
        assert_eq!(a.compare(&b), Some(Ordering::Less));
        assert_eq!(b.compare(&a), Some(Ordering::Greater));
        assert_eq!(a.compare(&a.clone()), Some(Ordering::Equal));
        assert_eq!(a.compare(&BinlogPos::new("other.000001", 4)), None);
    }
}
