//! The SQL of binlog query events, read for what it means to the synced tables: DDL that
//! changes rows or names without row events (truncate, drop, rename, partition and tablespace
//! operations, `CREATE OR REPLACE`, column changes), statement-format DML, savepoints and XA.
//!
//! Tokens follow MySQL's lexer where it matters: `'…'` and `"…"` strings (identifiers under
//! `ANSI_QUOTES`), `` `…` `` names, `--`/`#`/`/*…*/` comments, and executable comments
//! (`/*!50100 …*/`, `/*M!100100 …*/`) whose text counts. Clauses are split at top-level
//! commas, so `COMMENT 'rename soon'` or a column named `rename` is never taken for a rename.

use etcdsync_core::TableId;
use tokens::{tokenize, Token};

mod tokens;

/// What a query event means for the synced tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// Rows removed without row events: `TRUNCATE`.
    Truncate(Vec<TableId>),
    /// Tables gone: `DROP TABLE`.
    Drop(Vec<TableId>),
    /// Every table of a schema gone: `DROP DATABASE`.
    DropSchema(String),
    /// Names changed, in statement order (`RENAME TABLE a TO a_old, a_new TO a`).
    Rename(Vec<(TableId, TableId)>),
    /// Rows or columns changed without row events: the tables must be copied again (column
    /// changes, key changes, partition truncate/drop/exchange, tablespace import,
    /// `CREATE OR REPLACE TABLE`, an `ALTER` clause not known to leave rows alone).
    Recopy(Vec<TableId>),
    /// Statement-format row changes (or `LOAD DATA`) naming these tables anywhere.
    Dml(Vec<TableId>),
    Savepoint(String),
    RollbackTo(String),
    /// A group ends with `ROLLBACK` (MariaDB logs it when a non-transactional change was made).
    Rollback,
    XaStart(Xid),
    XaEnd,
    XaCommit(Xid),
    XaRollback(Xid),
    /// Nothing the synced tables' rows depend on (other DDL, `GRANT`, index changes, …).
    Neutral,
}

/// An XA transaction id: format id, global transaction id, branch qualifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Xid {
    pub format: u64,
    pub gtrid: Vec<u8>,
    pub bqual: Vec<u8>,
}

impl std::fmt::Display for Xid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
        write!(
            f,
            "X'{}',X'{}',{}",
            hex(&self.gtrid),
            hex(&self.bqual),
            self.format
        )
    }
}

impl Statement {
    /// The statement with the names of existing tables as the server stores them. Under
    /// `lower_case_table_names=2` a statement may name a table in any case, while row events,
    /// the selection and etcd keys carry the stored one: a name equal (ignoring case) to one of
    /// `known` (tables seen mapped, copied or listed, in that order of preference) becomes that
    /// name. New names — rename
    /// targets, and rename sources that are targets earlier in the same statement — stay as
    /// given, as the server stores them. Other settings: unchanged.
    pub fn with_stored_names(self, case: NameCase, known: &[TableId]) -> Statement {
        if case != NameCase::Insensitive {
            return self;
        }
        // An exact match first, then the first equal ignoring case: `known` lists the tables
        // mapped most recently first, so a table dropped and created again in another case is
        // named as it is now.
        let stored = |t: TableId| {
            known
                .iter()
                .find(|k| **k == t)
                .or_else(|| known.iter().find(|k| case.same_table(k, &t)))
                .cloned()
                .unwrap_or(t)
        };
        let all = |tables: Vec<TableId>| tables.into_iter().map(stored).collect();
        match self {
            Statement::Truncate(tables) => Statement::Truncate(all(tables)),
            Statement::Drop(tables) => Statement::Drop(all(tables)),
            Statement::Recopy(tables) => Statement::Recopy(all(tables)),
            Statement::Dml(tables) => Statement::Dml(all(tables)),
            Statement::Rename(pairs) => {
                let mut out: Vec<(TableId, TableId)> = Vec::with_capacity(pairs.len());
                for (from, to) in pairs {
                    let earlier = out
                        .iter()
                        .map(|(_, t)| t)
                        .find(|t| case.same_table(t, &from));
                    let from = match earlier {
                        Some(t) => t.clone(),
                        None => stored(from),
                    };
                    out.push((from, to));
                }
                Statement::Rename(out)
            }
            other => other,
        }
    }
}

/// Quotes an identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `` `db`.`table` ``.
pub fn quote_table(id: &TableId) -> String {
    format!("{}.{}", quote_ident(&id.schema), quote_ident(&id.table))
}

/// How the server stores and compares database and table names (`lower_case_table_names`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NameCase {
    /// 0: stored as given, compared exactly.
    #[default]
    Sensitive,
    /// 1: stored and compared in lower case (statements' names are lowercased here too).
    Lower,
    /// 2: stored as given (row events carry that case), compared case-insensitively: a
    /// statement may name an existing table in any case.
    Insensitive,
}

impl NameCase {
    /// From the value of `@@lower_case_table_names`.
    pub fn from_setting(value: u8) -> Self {
        match value {
            0 => NameCase::Sensitive,
            1 => NameCase::Lower,
            _ => NameCase::Insensitive,
        }
    }

    /// Whether two database (or two table) names name the same thing on this server.
    pub fn same(self, a: &str, b: &str) -> bool {
        match self {
            NameCase::Sensitive => a == b,
            NameCase::Lower | NameCase::Insensitive => {
                a == b || a.to_lowercase() == b.to_lowercase()
            }
        }
    }

    /// Whether two tables are the same table on this server.
    pub fn same_table(self, a: &TableId, b: &TableId) -> bool {
        self.same(&a.schema, &b.schema) && self.same(&a.table, &b.table)
    }
}

/// How names in statements compare with the names row events carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dialect {
    /// `sql_mode` has `ANSI_QUOTES`: `"…"` is a name, not a string.
    pub ansi_quotes: bool,
    /// `lower_case_table_names`.
    pub names: NameCase,
    /// `sql_mode` has `NO_BACKSLASH_ESCAPES`: `\` in a string is an ordinary character.
    pub no_backslash_escapes: bool,
}

/// Reads what a query event's SQL means; `schema` is the event's default database.
pub fn classify(sql: &str, schema: &str, dialect: Dialect) -> Statement {
    let tokens = tokenize(sql, dialect);
    let parser = Parser {
        tokens: &tokens,
        schema,
        dialect,
    };
    parser.statement().unwrap_or(Statement::Neutral)
}

struct Parser<'a> {
    tokens: &'a [Token],
    schema: &'a str,
    dialect: Dialect,
}

impl Parser<'_> {
    fn at(&self, i: usize) -> Option<&Token> {
        self.tokens.get(i)
    }

    fn is(&self, i: usize, keyword: &str) -> bool {
        self.at(i).is_some_and(|t| t.is(keyword))
    }

    fn name_text(&self, text: &str) -> String {
        match self.dialect.names {
            NameCase::Lower => text.to_lowercase(),
            NameCase::Sensitive | NameCase::Insensitive => text.to_string(),
        }
    }

    /// `name` or `schema.name` at `*i`.
    fn table(&self, i: &mut usize) -> Option<TableId> {
        let first = self.at(*i)?.name()?.to_string();
        *i += 1;
        if self.at(*i) == Some(&Token::Dot) {
            let second = self.at(*i + 1)?.name()?.to_string();
            *i += 2;
            Some(TableId::new(
                self.name_text(&first),
                self.name_text(&second),
            ))
        } else {
            Some(TableId::new(
                self.name_text(self.schema),
                self.name_text(&first),
            ))
        }
    }

    /// `IF EXISTS` / `IF NOT EXISTS` at `*i`, skipped.
    fn skip_if_exists(&self, i: &mut usize) {
        if self.is(*i, "IF") {
            let mut j = *i + 1;
            if self.is(j, "NOT") {
                j += 1;
            }
            if self.is(j, "EXISTS") {
                *i = j + 1;
            }
        }
    }

    fn statement(&self) -> Option<Statement> {
        let mut i = 0;
        let first = self.at(0)?;
        if first.is("TRUNCATE") {
            i += 1;
            if self.is(i, "TABLE") {
                i += 1;
            }
            return Some(Statement::Truncate(vec![self.table(&mut i)?]));
        }
        if first.is("DROP") {
            return self.drop();
        }
        if first.is("RENAME") {
            return self.rename();
        }
        if first.is("ALTER") {
            return self.alter();
        }
        if first.is("CREATE") {
            return self.create();
        }
        if first.is("SAVEPOINT") {
            return Some(Statement::Savepoint(self.at(1)?.name()?.to_string()));
        }
        if first.is("ROLLBACK") && (self.at(1).is_none() || self.at(1) == Some(&Token::Semicolon)) {
            return Some(Statement::Rollback);
        }
        if first.is("ROLLBACK") && self.is(1, "TO") {
            let at = if self.is(2, "SAVEPOINT") { 3 } else { 2 };
            return Some(Statement::RollbackTo(self.at(at)?.name()?.to_string()));
        }
        if first.is("XA") {
            return self.xa();
        }
        if ["INSERT", "REPLACE", "UPDATE", "DELETE", "LOAD", "WITH"]
            .iter()
            .any(|k| first.is(k))
        {
            return Some(Statement::Dml(self.referenced_tables()));
        }
        Some(Statement::Neutral)
    }

    fn drop(&self) -> Option<Statement> {
        let mut i = 1;
        if self.is(i, "DATABASE") || self.is(i, "SCHEMA") {
            i += 1;
            self.skip_if_exists(&mut i);
            let name = self.at(i)?.name()?;
            return Some(Statement::DropSchema(self.name_text(name)));
        }
        if self.is(i, "TEMPORARY") {
            return Some(Statement::Neutral);
        }
        if !self.is(i, "TABLE") && !self.is(i, "TABLES") {
            return Some(Statement::Neutral);
        }
        i += 1;
        self.skip_if_exists(&mut i);
        let mut tables = vec![self.table(&mut i)?];
        while self.at(i) == Some(&Token::Comma) {
            i += 1;
            tables.push(self.table(&mut i)?);
        }
        Some(Statement::Drop(tables))
    }

    /// `RENAME TABLE[S] [IF EXISTS] a [WAIT n | NOWAIT] TO b, …`
    fn rename(&self) -> Option<Statement> {
        let mut i = 1;
        if !self.is(i, "TABLE") && !self.is(i, "TABLES") {
            return Some(Statement::Neutral);
        }
        i += 1;
        let mut pairs = Vec::new();
        loop {
            self.skip_if_exists(&mut i);
            let from = self.table(&mut i)?;
            if self.is(i, "WAIT") {
                i += 2;
            } else if self.is(i, "NOWAIT") {
                i += 1;
            }
            if !self.is(i, "TO") {
                return None;
            }
            i += 1;
            let to = self.table(&mut i)?;
            pairs.push((from, to));
            if self.at(i) == Some(&Token::Comma) {
                i += 1;
            } else {
                break;
            }
        }
        Some(Statement::Rename(pairs))
    }

    /// `ALTER [ONLINE] [IGNORE] TABLE [IF EXISTS] t [WAIT n|NOWAIT] clause, clause …`
    fn alter(&self) -> Option<Statement> {
        let mut i = 1;
        while self.is(i, "ONLINE") || self.is(i, "IGNORE") {
            i += 1;
        }
        if !self.is(i, "TABLE") {
            return Some(Statement::Neutral);
        }
        i += 1;
        self.skip_if_exists(&mut i);
        let table = self.table(&mut i)?;
        if self.is(i, "WAIT") {
            i += 2;
        } else if self.is(i, "NOWAIT") {
            i += 1;
        }
        let mut recopy = vec![];
        let mut renamed = None;
        for clause in self.clauses(i) {
            match self.alter_clause(clause) {
                Clause::Neutral => {}
                Clause::Recopy(with) => {
                    if recopy.is_empty() {
                        recopy.push(table.clone());
                    }
                    recopy.extend(with);
                }
                Clause::Rename(to) => renamed = Some(to),
            }
        }
        if let Some(to) = renamed {
            // The table is copied under its new name: column changes come with that copy.
            let mut others: Vec<TableId> = recopy.into_iter().skip(1).collect();
            others.retain(|t| *t != table && *t != to);
            if others.is_empty() {
                return Some(Statement::Rename(vec![(table, to)]));
            }
            // An exchange with another table and a rename in one statement: copy all three.
            let mut all = vec![table, to];
            all.extend(others);
            return Some(Statement::Recopy(all));
        }
        if recopy.is_empty() {
            return Some(Statement::Neutral);
        }
        Some(Statement::Recopy(recopy))
    }

    /// Token ranges of the clauses from `start`, split at commas outside parentheses.
    fn clauses(&self, start: usize) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut depth = 0usize;
        let mut from = start;
        for (i, token) in self.tokens.iter().enumerate().skip(start) {
            match token {
                Token::Open => depth += 1,
                Token::Close => depth = depth.saturating_sub(1),
                Token::Comma if depth == 0 => {
                    out.push(from..i);
                    from = i + 1;
                }
                Token::Semicolon if depth == 0 => {
                    out.push(from..i);
                    return out.into_iter().filter(|r| !r.is_empty()).collect();
                }
                _ => {}
            }
        }
        out.push(from..self.tokens.len());
        out.into_iter().filter(|r| !r.is_empty()).collect()
    }

    fn alter_clause(&self, clause: std::ops::Range<usize>) -> Clause {
        let s = clause.start;
        let word = |k: usize| self.at(s + k).filter(|_| s + k < clause.end);
        let is = |k: usize, keyword: &str| word(k).is_some_and(|t| t.is(keyword));
        if is(0, "RENAME") {
            if is(1, "COLUMN") || is(1, "INDEX") || is(1, "KEY") {
                return if is(1, "COLUMN") {
                    Clause::Recopy(vec![])
                } else {
                    Clause::Neutral
                };
            }
            let mut j = s + 1;
            if is(1, "TO") || is(1, "AS") {
                j += 1;
            }
            return match self.table(&mut j) {
                Some(to) => Clause::Rename(to),
                None => Clause::Recopy(vec![]),
            };
        }
        // Clauses that leave every row's values and the key as they are.
        let neutral_first = [
            "COMMENT",
            "AUTO_INCREMENT",
            "ALGORITHM",
            "LOCK",
            "FORCE",
            "ORDER",
            "ROW_FORMAT",
            "KEY_BLOCK_SIZE",
            "STATS_PERSISTENT",
            "STATS_AUTO_RECALC",
            "STATS_SAMPLE_PAGES",
            "PAGE_CHECKSUM",
            "PAGE_COMPRESSED",
            "PAGE_COMPRESSION_LEVEL",
            "TRANSACTIONAL",
            "CHECKSUM",
            "DELAY_KEY_WRITE",
            "PACK_KEYS",
            "MAX_ROWS",
            "MIN_ROWS",
            "AVG_ROW_LENGTH",
            "INSERT_METHOD",
            "ENCRYPTED",
            "ENCRYPTION",
            "ENCRYPTION_KEY_ID",
            "COMPRESSION",
            "DATA",
            "INDEX",
            "TABLESPACE",
            "SECONDARY_ENGINE",
            "SEQUENCE",
            "WITH",
            "WITHOUT",
            "ENABLE",
            "DISABLE",
            "VALIDATION",
            "ANALYZE",
            "CHECK",
            "OPTIMIZE",
            "REBUILD",
            "REPAIR",
            "COALESCE",
            "REORGANIZE",
            "REMOVE",
            "PARTITION",
            "PARTITIONS",
            "SUBPARTITION",
            "UPGRADE",
        ];
        if is(0, "ADD") {
            // ADD [COLUMN] c …, ADD PRIMARY KEY, ADD UNIQUE, ADD INDEX/KEY/…, ADD PARTITION.
            let k = if is(1, "CONSTRAINT") {
                // ADD CONSTRAINT [name] PRIMARY KEY | UNIQUE | FOREIGN KEY | CHECK
                if is(2, "PRIMARY") || is(2, "UNIQUE") || is(2, "FOREIGN") || is(2, "CHECK") {
                    2
                } else {
                    3
                }
            } else {
                1
            };
            if is(k, "PRIMARY") || is(k, "UNIQUE") {
                return Clause::Recopy(vec![]);
            }
            if [
                "INDEX",
                "KEY",
                "FULLTEXT",
                "SPATIAL",
                "FOREIGN",
                "CHECK",
                "PARTITION",
                "VECTOR",
            ]
            .iter()
            .any(|w| is(k, w))
            {
                return Clause::Neutral;
            }
            return Clause::Recopy(vec![]);
        }
        if is(0, "DROP") {
            if is(1, "PRIMARY") {
                return Clause::Recopy(vec![]);
            }
            if is(1, "PARTITION") {
                return Clause::Recopy(vec![]);
            }
            if is(1, "INDEX") || is(1, "KEY") {
                // A unique index may be the table's key (MySQL takes the first UNIQUE NOT NULL
                // index as the key of a table without a primary key).
                return Clause::Recopy(vec![]);
            }
            // DROP CONSTRAINT may drop a unique or the primary key; DROP SYSTEM VERSIONING
            // changes the key the binlog reports: both copy again.
            if is(1, "FOREIGN") || is(1, "CHECK") {
                return Clause::Neutral;
            }
            return Clause::Recopy(vec![]);
        }
        if is(0, "ALTER") {
            // ALTER [COLUMN] c SET/DROP DEFAULT, SET [IN]VISIBLE; ALTER INDEX i [IN]VISIBLE.
            let k = if is(1, "COLUMN") { 3 } else { 2 };
            if is(1, "INDEX") || is(1, "KEY") || is(1, "CONSTRAINT") || is(1, "CHECK") {
                return Clause::Neutral;
            }
            if is(k, "SET") || is(k, "DROP") {
                return Clause::Neutral;
            }
            return Clause::Recopy(vec![]);
        }
        if is(0, "TRUNCATE") && is(1, "PARTITION") {
            return Clause::Recopy(vec![]);
        }
        if is(0, "EXCHANGE") && is(1, "PARTITION") {
            // EXCHANGE PARTITION p WITH TABLE t2 [WITH|WITHOUT VALIDATION]
            let mut j = s + 2;
            while j < clause.end && !self.is(j, "TABLE") {
                j += 1;
            }
            j += 1;
            return Clause::Recopy(self.table(&mut j).into_iter().collect());
        }
        if is(0, "DISCARD") || is(0, "IMPORT") {
            return Clause::Recopy(vec![]);
        }
        if is(0, "CONVERT") && (is(1, "PARTITION") || is(1, "TABLE")) {
            // CONVERT PARTITION p TO TABLE x / CONVERT TABLE x TO PARTITION p …: rows move
            // between the two tables without row events.
            let mut j = if is(1, "TABLE") {
                s + 2
            } else {
                let mut j = s + 2;
                while j < clause.end && !self.is(j, "TABLE") {
                    j += 1;
                }
                j + 1
            };
            return Clause::Recopy(self.table(&mut j).into_iter().collect());
        }
        if is(0, "ENGINE") {
            // A BLACKHOLE table keeps no rows.
            let blackhole = (s + 1..clause.end).any(|j| self.is(j, "BLACKHOLE"));
            return if blackhole {
                Clause::Recopy(vec![])
            } else {
                Clause::Neutral
            };
        }
        if is(0, "CONVERT") || is(0, "CHARACTER") || is(0, "CHARSET") || is(0, "COLLATE") {
            // CONVERT TO CHARACTER SET re-encodes values; a default charset alone does not.
            return if is(0, "CONVERT") {
                Clause::Recopy(vec![])
            } else {
                Clause::Neutral
            };
        }
        if is(0, "DEFAULT") {
            return Clause::Neutral;
        }
        if is(0, "CHANGE") || is(0, "MODIFY") {
            return Clause::Recopy(vec![]);
        }
        if neutral_first.iter().any(|w| is(0, w)) {
            return Clause::Neutral;
        }
        // Unknown: copying again is always right.
        Clause::Recopy(vec![])
    }

    /// `CREATE OR REPLACE TABLE t …` replaces a table's rows without row events for the old ones.
    fn create(&self) -> Option<Statement> {
        if !(self.is(1, "OR") && self.is(2, "REPLACE")) {
            return Some(Statement::Neutral);
        }
        let mut i = 3;
        if self.is(i, "TEMPORARY") {
            return Some(Statement::Neutral);
        }
        if !self.is(i, "TABLE") {
            return Some(Statement::Neutral);
        }
        i += 1;
        Some(Statement::Recopy(vec![self.table(&mut i)?]))
    }

    fn xa(&self) -> Option<Statement> {
        let verb = self.at(1)?;
        if verb.is("END") {
            return Some(Statement::XaEnd);
        }
        let xid = self.xid(2)?;
        if verb.is("START") || verb.is("BEGIN") {
            return Some(Statement::XaStart(xid));
        }
        if verb.is("COMMIT") {
            return Some(Statement::XaCommit(xid));
        }
        if verb.is("ROLLBACK") {
            return Some(Statement::XaRollback(xid));
        }
        Some(Statement::Neutral)
    }

    /// `gtrid [, bqual [, format]]`, each a string or `X'…'`.
    fn xid(&self, start: usize) -> Option<Xid> {
        let bytes = |t: &Token| match t {
            Token::Str(b) | Token::Hex(b) => Some(b.clone()),
            Token::Word(w) | Token::Name(w) => Some(w.as_bytes().to_vec()),
            _ => None,
        };
        let gtrid = bytes(self.at(start)?)?;
        let mut xid = Xid {
            format: 1,
            gtrid,
            bqual: Vec::new(),
        };
        if self.at(start + 1) == Some(&Token::Comma) {
            xid.bqual = bytes(self.at(start + 2)?)?;
            if self.at(start + 3) == Some(&Token::Comma) {
                if let Some(Token::Word(n)) = self.at(start + 4) {
                    xid.format = n.parse().ok()?;
                }
            }
        }
        Some(xid)
    }

    /// Every table a DML statement names: after FROM, JOIN, UPDATE, INTO, USING, TABLE, and in
    /// the comma lists that follow them.
    fn referenced_tables(&self) -> Vec<TableId> {
        let openers = [
            "FROM",
            "JOIN",
            "STRAIGHT_JOIN",
            "UPDATE",
            "INTO",
            "USING",
            "TABLE",
            // `INSERT t …` / `REPLACE t …` without INTO.
            "INSERT",
            "REPLACE",
        ];
        let mut out: Vec<TableId> = Vec::new();
        let mut i = 0;
        while i < self.tokens.len() {
            if !openers.iter().any(|k| self.is(i, k)) {
                i += 1;
                continue;
            }
            i += 1;
            // UPDATE LOW_PRIORITY IGNORE t; INSERT INTO t; DELETE QUICK FROM t.
            while [
                "LOW_PRIORITY",
                "IGNORE",
                "QUICK",
                "DELAYED",
                "HIGH_PRIORITY",
                "ONLY",
                "TABLE",
                "INTO",
            ]
            .iter()
            .any(|k| self.is(i, k))
            {
                i += 1;
            }
            loop {
                if self.at(i) == Some(&Token::Open) {
                    break;
                }
                let Some(table) = self.table(&mut i) else {
                    break;
                };
                if !out.contains(&table) {
                    out.push(table);
                }
                // An alias: [AS] name.
                if self.is(i, "AS") {
                    i += 2;
                } else if matches!(self.at(i), Some(Token::Word(w)) if !is_keyword(w))
                    || matches!(self.at(i), Some(Token::Name(_)))
                {
                    i += 1;
                }
                if self.at(i) == Some(&Token::Comma) {
                    i += 1;
                } else {
                    break;
                }
            }
        }
        out
    }
}

enum Clause {
    Neutral,
    /// The table is copied again, with these other tables.
    Recopy(Vec<TableId>),
    Rename(TableId),
}

/// Words that end a table reference (so they are not taken for an alias).
fn is_keyword(word: &str) -> bool {
    [
        "WHERE",
        "SET",
        "ON",
        "USING",
        "JOIN",
        "INNER",
        "LEFT",
        "RIGHT",
        "CROSS",
        "NATURAL",
        "STRAIGHT_JOIN",
        "VALUES",
        "VALUE",
        "SELECT",
        "PARTITION",
        "ORDER",
        "LIMIT",
        "GROUP",
        "HAVING",
        "UNION",
        "FROM",
        "RETURNING",
        "DUPLICATE",
        "FIELDS",
        "COLUMNS",
        "LINES",
        "CHARACTER",
        "IGNORE",
        "REPLACE",
        "FOR",
        "WINDOW",
        "INTO",
        "USE",
        "FORCE",
        "OUTER",
    ]
    .iter()
    .any(|k| word.eq_ignore_ascii_case(k))
}

#[cfg(test)]
mod tests;
