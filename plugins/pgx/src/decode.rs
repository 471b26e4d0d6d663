//! pgoutput protocol v1 messages (Begin, Commit, Origin, Relation, Type, Insert, Update, Delete,
//! Truncate, Message) decoded from the XLogData payloads of the replication stream. Pure and
//! bounds-checked: malformed input is an error, never a panic.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin {
        final_lsn: u64,
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    Origin {
        lsn: u64,
        name: String,
    },
    Relation(RelationMessage),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relid: u32,
        new: Vec<TupleValue>,
    },
    Update {
        relid: u32,
        old: Option<OldTuple>,
        new: Vec<TupleValue>,
    },
    Delete {
        relid: u32,
        old: OldTuple,
    },
    Truncate {
        options: u8,
        relids: Vec<u32>,
    },
    /// `pg_logical_emit_message`; we ignore its content.
    Message {
        transactional: bool,
        lsn: u64,
        prefix: String,
    },
}

/// A table description; sent before the first change of a table in a session and after its
/// schema changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationMessage {
    pub relid: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key) when set.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// One column of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    Null,
    /// An unchanged TOASTed value that was not sent.
    Unchanged,
    Text(Bytes),
    Binary(Bytes),
}

/// The old row of an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple {
    /// `true` for `O` (the whole old row, REPLICA IDENTITY FULL); `false` for `K` (only the key
    /// columns carry values, the others are sent as NULL).
    pub full: bool,
    pub values: Vec<TupleValue>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed pgoutput message ({what})")]
pub struct DecodeError {
    pub what: String,
}

fn err(what: impl Into<String>) -> DecodeError {
    DecodeError { what: what.into() }
}

struct Reader {
    data: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize, what: &str) -> Result<Bytes, DecodeError> {
        if self.data.len() - self.pos < n {
            return Err(err(format!("truncated {what}")));
        }
        let out = self.data.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self, what: &str) -> Result<i32, DecodeError> {
        Ok(self.u32(what)? as i32)
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }

    fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        Ok(self.u64(what)? as i64)
    }

    fn cstr(&mut self, what: &str) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| err(format!("unterminated {what}")))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<TupleValue>, DecodeError> {
        let n = self.u16("tuple column count")?;
        let mut values = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            values.push(match self.u8("tuple column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::Unchanged,
                b't' => {
                    let len = self.i32("value length")?;
                    let len = usize::try_from(len).map_err(|_| err("negative value length"))?;
                    TupleValue::Text(self.take(len, "text value")?)
                }
                b'b' => {
                    let len = self.i32("value length")?;
                    let len = usize::try_from(len).map_err(|_| err("negative value length"))?;
                    TupleValue::Binary(self.take(len, "binary value")?)
                }
                other => {
                    return Err(err(format!(
                        "unknown tuple column kind {:?}",
                        other as char
                    )))
                }
            });
        }
        Ok(values)
    }

    fn expect_new(&mut self) -> Result<Vec<TupleValue>, DecodeError> {
        match self.u8("tuple tag")? {
            b'N' => self.tuple(),
            other => Err(err(format!(
                "expected new tuple 'N', got {:?}",
                other as char
            ))),
        }
    }
}

/// Decodes one pgoutput message.
pub fn decode(data: Bytes) -> Result<LogicalMessage, DecodeError> {
    let mut r = Reader { data, pos: 0 };
    let tag = r.u8("message tag")?;
    Ok(match tag {
        b'B' => LogicalMessage::Begin {
            final_lsn: r.u64("begin lsn")?,
            commit_time: r.i64("begin time")?,
            xid: r.u32("xid")?,
        },
        b'C' => LogicalMessage::Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.u64("commit lsn")?,
            end_lsn: r.u64("commit end lsn")?,
            commit_time: r.i64("commit time")?,
        },
        b'O' => LogicalMessage::Origin {
            lsn: r.u64("origin lsn")?,
            name: r.cstr("origin name")?,
        },
        b'R' => {
            let relid = r.u32("relation id")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let n = r.u16("column count")?;
            let mut columns = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                columns.push(RelationColumn {
                    is_key: flags & 1 == 1,
                    name: r.cstr("column name")?,
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            LogicalMessage::Relation(RelationMessage {
                relid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => LogicalMessage::Type {
            oid: r.u32("type oid")?,
            namespace: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => {
            let relid = r.u32("relation id")?;
            LogicalMessage::Insert {
                relid,
                new: r.expect_new()?,
            }
        }
        b'U' => {
            let relid = r.u32("relation id")?;
            let (old, new) = match r.u8("tuple tag")? {
                tag @ (b'K' | b'O') => {
                    let old = OldTuple {
                        full: tag == b'O',
                        values: r.tuple()?,
                    };
                    (Some(old), r.expect_new()?)
                }
                b'N' => (None, r.tuple()?),
                other => {
                    return Err(err(format!(
                        "unexpected update tuple tag {:?}",
                        other as char
                    )))
                }
            };
            LogicalMessage::Update { relid, old, new }
        }
        b'D' => {
            let relid = r.u32("relation id")?;
            let full = match r.u8("tuple tag")? {
                b'K' => false,
                b'O' => true,
                other => {
                    return Err(err(format!(
                        "unexpected delete tuple tag {:?}",
                        other as char
                    )))
                }
            };
            LogicalMessage::Delete {
                relid,
                old: OldTuple {
                    full,
                    values: r.tuple()?,
                },
            }
        }
        b'T' => {
            let n = r.u32("relation count")?;
            let options = r.u8("truncate options")?;
            let mut relids = Vec::new();
            for _ in 0..n {
                relids.push(r.u32("relation id")?);
            }
            LogicalMessage::Truncate { options, relids }
        }
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.u64("message lsn")?;
            let prefix = r.cstr("message prefix")?;
            let len = r.u32("message length")?;
            r.take(len as usize, "message content")?;
            LogicalMessage::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
            }
        }
        other => return Err(err(format!("unknown message type {:?}", other as char))),
    })
}

#[cfg(test)]
pub(crate) mod build {
    //! Hand-built pgoutput messages for tests.

    pub struct Msg(pub Vec<u8>);

    impl Msg {
        pub fn new(tag: u8) -> Self {
            Msg(vec![tag])
        }
        pub fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        pub fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub fn cstr(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        pub fn text(mut self, s: &str) -> Self {
            self.0.push(b't');
            self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        pub fn bytes(self) -> bytes::Bytes {
            bytes::Bytes::from(self.0)
        }
    }

    /// A Relation message: columns as (is_key, name, type oid).
    pub fn relation(
        relid: u32,
        ns: &str,
        name: &str,
        ident: u8,
        cols: &[(bool, &str, u32)],
    ) -> bytes::Bytes {
        let mut m = Msg::new(b'R')
            .u32(relid)
            .cstr(ns)
            .cstr(name)
            .u8(ident)
            .u16(cols.len() as u16);
        for (key, col, oid) in cols {
            m = m.u8(u8::from(*key)).cstr(col).u32(*oid).u32(u32::MAX);
        }
        m.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn begin_commit_origin() {
        let m = Msg::new(b'B').u64(0x16B3748).u64(5).u32(77).bytes();
        assert_eq!(
            decode(m),
            Ok(LogicalMessage::Begin {
                final_lsn: 0x16B3748,
                commit_time: 5,
                xid: 77
            })
        );
        let m = Msg::new(b'C').u8(0).u64(10).u64(20).u64(30).bytes();
        assert_eq!(
            decode(m),
            Ok(LogicalMessage::Commit {
                flags: 0,
                commit_lsn: 10,
                end_lsn: 20,
                commit_time: 30
            })
        );
        let m = Msg::new(b'O').u64(9).cstr("node1").bytes();
        assert_eq!(
            decode(m),
            Ok(LogicalMessage::Origin {
                lsn: 9,
                name: "node1".into()
            })
        );
    }

    #[test]
    fn relation_and_type() {
        let m = relation(
            16384,
            "public",
            "users",
            b'd',
            &[(true, "id", 23), (false, "name", 25)],
        );
        let LogicalMessage::Relation(rel) = decode(m).expect("decode") else {
            panic!("not a relation")
        };
        assert_eq!(rel.relid, 16384);
        assert_eq!(
            (
                rel.namespace.as_str(),
                rel.name.as_str(),
                rel.replica_identity
            ),
            ("public", "users", b'd')
        );
        assert_eq!(rel.columns.len(), 2);
        assert!(rel.columns[0].is_key && !rel.columns[1].is_key);
        assert_eq!(
            (
                rel.columns[1].name.as_str(),
                rel.columns[1].type_oid,
                rel.columns[1].type_modifier
            ),
            ("name", 25, -1)
        );
        let m = Msg::new(b'Y')
            .u32(16400)
            .cstr("public")
            .cstr("mood")
            .bytes();
        assert_eq!(
            decode(m),
            Ok(LogicalMessage::Type {
                oid: 16400,
                namespace: "public".into(),
                name: "mood".into()
            })
        );
    }

    #[test]
    fn insert_with_all_tuple_kinds() {
        let m = Msg::new(b'I')
            .u32(1)
            .u8(b'N')
            .u16(4)
            .text("42")
            .u8(b'n')
            .u8(b'u');
        let m = m.u8(b'b').u32(2).u8(0xAB).u8(0xCD).bytes();
        assert_eq!(
            decode(m),
            Ok(LogicalMessage::Insert {
                relid: 1,
                new: vec![
                    t("42"),
                    TupleValue::Null,
                    TupleValue::Unchanged,
                    TupleValue::Binary(Bytes::from_static(&[0xAB, 0xCD]))
                ]
            })
        );
    }

    #[test]
    fn updates_with_and_without_old_rows() {
        let m = Msg::new(b'U').u32(1).u8(b'N').u16(1).text("a").bytes();
        assert_eq!(
            decode(m),
            Ok(LogicalMessage::Update {
                relid: 1,
                old: None,
                new: vec![t("a")]
            })
        );
        let m = Msg::new(b'U')
            .u32(1)
            .u8(b'K')
            .u16(2)
            .text("1")
            .u8(b'n')
            .u8(b'N')
            .u16(2)
            .text("2")
            .text("x")
            .bytes();
        assert_eq!(
            decode(m),
            Ok(LogicalMessage::Update {
                relid: 1,
                old: Some(OldTuple {
                    full: false,
                    values: vec![t("1"), TupleValue::Null]
                }),
                new: vec![t("2"), t("x")]
            })
        );
        let m = Msg::new(b'U')
            .u32(1)
            .u8(b'O')
            .u16(1)
            .text("o")
            .u8(b'N')
            .u16(1)
            .text("n")
            .bytes();
        let LogicalMessage::Update { old: Some(old), .. } = decode(m).expect("decode") else {
            panic!()
        };
        assert!(old.full);
    }

    #[test]
    fn delete_and_truncate() {
        let m = Msg::new(b'D').u32(3).u8(b'K').u16(1).text("7").bytes();
        assert_eq!(
            decode(m),
            Ok(LogicalMessage::Delete {
                relid: 3,
                old: OldTuple {
                    full: false,
                    values: vec![t("7")]
                }
            })
        );
        let m = Msg::new(b'T').u32(2).u8(1).u32(5).u32(6).bytes();
        assert_eq!(
            decode(m),
            Ok(LogicalMessage::Truncate {
                options: 1,
                relids: vec![5, 6]
            })
        );
    }

    #[test]
    fn logical_message() {
        let m = Msg::new(b'M')
            .u8(1)
            .u64(4)
            .cstr("app")
            .u32(3)
            .u8(1)
            .u8(2)
            .u8(3)
            .bytes();
        assert_eq!(
            decode(m),
            Ok(LogicalMessage::Message {
                transactional: true,
                lsn: 4,
                prefix: "app".into()
            })
        );
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(decode(Bytes::new()).is_err());
        assert!(decode(
            Msg::new(b'I')
                .u32(1)
                .u8(b'N')
                .u16(1)
                .u8(b't')
                .u32(10)
                .bytes()
        )
        .is_err());
        assert!(decode(
            Msg::new(b'I')
                .u32(1)
                .u8(b'N')
                .u16(1)
                .u8(b't')
                .u32(u32::MAX)
                .bytes()
        )
        .is_err());
        assert!(decode(Msg::new(b'R').u32(1).cstr("ns").bytes()).is_err());
        assert!(decode(Msg::new(b'Z').bytes()).is_err());
        assert!(decode(Msg::new(b'D').u32(1).u8(b'N').bytes()).is_err());
    }
}
