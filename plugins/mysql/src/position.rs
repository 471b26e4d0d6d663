//! The source position (DESIGN §1, §5): binlog file and offset, plus the GTID state when the
//! server has one, serialised as the opaque text stored in the checkpoint:
//! `mysql-bin.000003:1234`, MariaDB `mysql-bin.000003:1234 gtid=0-1-42,1-7-3` (last
//! `domain-server-sequence` per domain) or MySQL `binlog.000003:1234 gtid=3e11fa47-…:1-5:7`
//! (the executed `uuid:interval` set). The file/offset part is always valid on the server that
//! wrote it; the GTID part, when present, is what streaming resumes from.

use mysql_common::packets::{GnoInterval, Sid};
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

/// MariaDB GTID position: the last `domain-server-sequence` seen per replication domain, the
/// form `@@gtid_binlog_pos`, `BINLOG_GTID_POS()` and `@slave_connect_state` use.
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

    /// True when transaction `domain-…-seq` is at or before this position: sequence numbers
    /// grow within a domain, whichever server wrote them.
    pub fn covers(&self, domain: u32, seq: u64) -> bool {
        self.domains
            .get(&domain)
            .is_some_and(|&(_, last)| seq <= last)
    }

    /// Parses `0-1-42,1-7-3` (empty text = empty position; whitespace is ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let mut pos = GtidPos::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.splitn(3, '-');
            let domain = it.next()?.parse().ok()?;
            let server = it.next()?.parse().ok()?;
            let seq = it.next()?.parse().ok()?;
            if pos.domains.contains_key(&domain) {
                return None;
            }
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

/// MySQL GTID set: per source (`uuid`, or `uuid:tag` on MySQL ≥ 8.4) the executed transaction
/// numbers as sorted, merged, inclusive intervals — `@@gtid_executed`'s form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet {
    sources: BTreeMap<String, Vec<(u64, u64)>>,
}

impl GtidSet {
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Adds transaction `gno` of `source` (`uuid` or `uuid:tag`, lower case).
    pub fn add(&mut self, source: &str, gno: u64) {
        self.add_interval(source, gno, gno);
    }

    fn add_interval(&mut self, source: &str, start: u64, end: u64) {
        let intervals = self.sources.entry(source.to_string()).or_default();
        intervals.push((start, end));
        intervals.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
        for &(s, e) in intervals.iter() {
            match merged.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *intervals = merged;
    }

    /// True when transaction `gno` of `source` is in the set.
    pub fn contains(&self, source: &str, gno: u64) -> bool {
        self.sources
            .get(source)
            .is_some_and(|iv| iv.iter().any(|&(s, e)| s <= gno && gno <= e))
    }

    /// Parses `uuid:1-5:7,uuid2:1-3` and MySQL 8.4's `uuid:tag:1-3` (also `uuid:1-5:tag:1-3`);
    /// whitespace and newlines (as `@@gtid_executed` prints them) are ignored.
    pub fn parse(text: &str) -> Option<Self> {
        let mut set = GtidSet::default();
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        for entry in compact.split(',').filter(|e| !e.is_empty()) {
            let mut parts = entry.split(':');
            let uuid = parts.next()?.to_ascii_lowercase();
            if !is_uuid(&uuid) {
                return None;
            }
            let mut source = uuid.clone();
            let mut intervals = 0;
            for part in parts {
                if part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
                    if !part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    {
                        return None;
                    }
                    source = format!("{uuid}:{part}");
                    continue;
                }
                let (start, end) = match part.split_once('-') {
                    Some((s, e)) => (s.parse().ok()?, e.parse().ok()?),
                    None => {
                        let n = part.parse().ok()?;
                        (n, n)
                    }
                };
                if start == 0 || end < start {
                    return None;
                }
                set.add_interval(&source, start, end);
                intervals += 1;
            }
            if intervals == 0 {
                return None;
            }
        }
        Some(set)
    }

    /// The set as COM_BINLOG_DUMP_GTID wants it.
    pub fn to_sids(&self) -> Result<Vec<Sid<'static>>, String> {
        self.sources
            .iter()
            .map(|(source, intervals)| {
                let text = format!("{source}:{}", format_intervals(intervals));
                text.parse::<Sid<'static>>()
                    .map_err(|e| format!("GTID set entry `{text}`: {e}"))
            })
            .collect()
    }

    /// The intervals of one source as mysql_common's half-open `GnoInterval`s (tests).
    pub fn intervals(&self, source: &str) -> Vec<GnoInterval> {
        self.sources
            .get(source)
            .map(|iv| {
                iv.iter()
                    .map(|&(s, e)| GnoInterval::new(s, e + 1))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn format_intervals(intervals: &[(u64, u64)]) -> String {
    intervals
        .iter()
        .map(|&(s, e)| {
            if s == e {
                s.to_string()
            } else {
                format!("{s}-{e}")
            }
        })
        .collect::<Vec<_>>()
        .join(":")
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Formats a 16-byte server UUID as MySQL prints it.
pub fn uuid_text(bytes: &[u8; 16]) -> String {
    let hex = etcdsync_core::value::hex(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (source, intervals)) in self.sources.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{source}:{}", format_intervals(intervals))?;
        }
        Ok(())
    }
}

/// The GTID part of a position: none (GTIDs unknown or off), MariaDB's or MySQL's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Gtids {
    #[default]
    None,
    MariaDb(GtidPos),
    MySql(GtidSet),
}

impl Gtids {
    pub fn is_empty(&self) -> bool {
        match self {
            Gtids::None => true,
            Gtids::MariaDb(pos) => pos.is_empty(),
            Gtids::MySql(set) => set.is_empty(),
        }
    }

    /// Parses either flavour: MySQL sets contain `:`, MariaDB positions never do.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() {
            Some(Gtids::None)
        } else if text.contains(':') {
            GtidSet::parse(text).map(Gtids::MySql)
        } else {
            GtidPos::parse(text).map(Gtids::MariaDb)
        }
    }
}

impl fmt::Display for Gtids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gtids::None => Ok(()),
            Gtids::MariaDb(pos) => pos.fmt(f),
            Gtids::MySql(set) => set.fmt(f),
        }
    }
}

/// What the checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    pub binlog: BinlogPos,
    pub gtid: Gtids,
}

const GTID_MARK: &str = " gtid=";

impl SourcePosition {
    pub fn new(binlog: BinlogPos) -> Self {
        Self {
            binlog,
            gtid: Gtids::None,
        }
    }

    pub fn with_gtid(mut self, gtid: Gtids) -> Self {
        self.gtid = gtid;
        self
    }

    /// Parses the checkpoint text; `None` when it is not a position this source wrote.
    pub fn parse(text: &str) -> Option<Self> {
        let (binlog, gtid) = match text.rsplit_once(GTID_MARK) {
            Some((binlog, gtid)) => (binlog, Gtids::parse(gtid)?),
            None => (text, Gtids::None),
        };
        let (file, offset) = binlog.rsplit_once(':')?;
        if file.is_empty() || file.contains(char::is_whitespace) {
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

    const U1: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const U2: &str = "00000000-0000-0000-0000-0000000000aa";

    #[test]
    fn round_trips_with_and_without_mariadb_gtid() {
        let mut pos = SourcePosition::new(BinlogPos::new("mysql-bin.000003", 1234));
        assert_eq!(pos.to_string(), "mysql-bin.000003:1234");
        assert_eq!(
            SourcePosition::parse("mysql-bin.000003:1234"),
            Some(pos.clone())
        );
        let mut gtid = GtidPos::default();
        gtid.advance(1, 7, 3);
        gtid.advance(0, 1, 42);
        gtid.advance(0, 1, 43);
        pos.gtid = Gtids::MariaDb(gtid);
        let text = pos.to_string();
        assert_eq!(text, "mysql-bin.000003:1234 gtid=0-1-43,1-7-3");
        assert_eq!(SourcePosition::parse(&text), Some(pos));
        assert_eq!(SourcePosition::parse("0/16B3748"), None);
        assert_eq!(SourcePosition::parse(":12"), None);
        assert_eq!(SourcePosition::parse("f.1:x"), None);
        assert_eq!(SourcePosition::parse("f.1:4 gtid=0-1"), None);
        assert_eq!(SourcePosition::parse("f.1:4 gtid=0-1-2,0-2-3"), None);
    }

    #[test]
    fn mariadb_gtid_coverage_is_per_domain() {
        let pos = GtidPos::parse(" 0-1-42, 3-9-7 ").expect("parse");
        assert_eq!(pos.to_string(), "0-1-42,3-9-7");
        assert!(pos.covers(0, 42));
        assert!(pos.covers(0, 1));
        assert!(!pos.covers(0, 43));
        assert!(pos.covers(3, 7));
        assert!(!pos.covers(1, 1), "an unknown domain is not covered");
        assert_eq!(GtidPos::parse(""), Some(GtidPos::default()));
        assert_eq!(GtidPos::parse("a-1-2"), None);
    }

    #[test]
    fn mysql_gtid_sets_parse_merge_and_format() {
        let text = format!("{U1}:1-5:7:6,\n{}:1-3", U2.to_uppercase());
        let set = GtidSet::parse(&text).expect("parse");
        assert_eq!(set.to_string(), format!("{U2}:1-3,{U1}:1-7"));
        assert!(set.contains(U1, 6) && set.contains(U2, 3));
        assert!(!set.contains(U2, 4) && !set.contains(U1, 0));

        let mut set = GtidSet::default();
        set.add(U1, 3);
        set.add(U1, 1);
        assert_eq!(set.to_string(), format!("{U1}:1:3"));
        set.add(U1, 2);
        assert_eq!(set.to_string(), format!("{U1}:1-3"));
        set.add(U1, 10);
        set.add(&format!("{U1}:blue"), 4);
        assert_eq!(set.to_string(), format!("{U1}:1-3:10,{U1}:blue:4"));
        assert_eq!(GtidSet::parse(&set.to_string()), Some(set.clone()));
        // MySQL 8.4 groups tags after the untagged intervals of the same uuid.
        assert_eq!(
            GtidSet::parse(&format!("{U1}:1-3:10:blue:4")),
            Some(set.clone())
        );

        for bad in [
            "x:1",
            U1,
            &format!("{U1}:0"),
            &format!("{U1}:5-3"),
            &format!("{U1}:Blue:1"),
        ] {
            assert_eq!(GtidSet::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn mysql_gtid_sets_become_dump_request_sids() {
        let set = GtidSet::parse(&format!("{U1}:1-5:7,{U1}:blue:2")).expect("parse");
        let sids = set.to_sids().expect("sids");
        assert_eq!(sids.len(), 2);
        assert_eq!(sids[0].to_string(), format!("{U1}:1-5:7"));
        assert_eq!(sids[0].intervals(), set.intervals(U1).as_slice());
        assert_eq!(sids[0].intervals()[0].end(), 6, "half-open on the wire");
        assert_eq!(sids[1].to_string(), format!("{U1}:blue:2"));
    }

    #[test]
    fn positions_of_both_flavours_round_trip() {
        let text = format!("binlog.000012:157 gtid={U1}:1-9");
        let pos = SourcePosition::parse(&text).expect("mysql");
        assert!(matches!(pos.gtid, Gtids::MySql(_)));
        assert_eq!(pos.binlog, BinlogPos::new("binlog.000012", 157));
        assert_eq!(pos.to_string(), text);
        let pos = SourcePosition::parse("mysql-bin.000001:4 gtid=0-1-1").expect("mariadb");
        assert!(matches!(pos.gtid, Gtids::MariaDb(_)));
        let empty = SourcePosition::parse("mysql-bin.000001:4 gtid=").expect("empty");
        assert_eq!(empty.gtid, Gtids::None);
        assert_eq!(empty.to_string(), "mysql-bin.000001:4");
        assert_eq!(
            uuid_text(&[
                0x3e, 0x11, 0xfa, 0x47, 0x71, 0xca, 0x11, 0xe1, 0x9e, 0x33, 0xc8, 0x0a, 0xa9, 0x42,
                0x95, 0x62
            ]),
            U1
        );
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
