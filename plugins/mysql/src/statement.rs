//! The SQL of binlog query events, read for what it means to the synced tables: DDL that
//! changes rows or names without row events (truncate, drop, rename, partition and tablespace
//! operations, `CREATE OR REPLACE`, column changes), statement-format DML, savepoints and XA.
//!
//! Tokens follow MySQL's lexer where it matters: `'…'` and `"…"` strings (identifiers under
//! `ANSI_QUOTES`), `` `…` `` names, `--`/`#`/`/*…*/` comments, and executable comments
//! (`/*!50100 …*/`, `/*M!100100 …*/`) whose text counts. Clauses are split at top-level
//! commas, so `COMMENT 'rename soon'` or a column named `rename` is never taken for a rename.

use etcdsync_core::TableId;

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

/// How names in statements compare with the names row events carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dialect {
    /// `sql_mode` has `ANSI_QUOTES`: `"…"` is a name, not a string.
    pub ansi_quotes: bool,
    /// `lower_case_table_names` ≠ 0: the server stores and compares names in lower case.
    pub lower_case_names: bool,
    /// `sql_mode` has `NO_BACKSLASH_ESCAPES`: `\` in a string is an ordinary character.
    pub no_backslash_escapes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Name(String),
    Str(Vec<u8>),
    /// `X'…'` / `0x…`: bytes.
    Hex(Vec<u8>),
    Dot,
    Comma,
    Open,
    Close,
    Semicolon,
    Other,
}

impl Token {
    fn is(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    fn name(&self) -> Option<&str> {
        match self {
            Token::Word(w) | Token::Name(w) => Some(w),
            _ => None,
        }
    }
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
        if self.dialect.lower_case_names {
            text.to_lowercase()
        } else {
            text.to_string()
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

/// Splits SQL into tokens; comments are dropped, executable comments' text is kept.
fn tokenize(sql: &str, dialect: Dialect) -> Vec<Token> {
    let escapes = !dialect.no_backslash_escapes;
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('*') {
            // `/*!NNNNN text */` and `/*M!NNNNNN text */` run `text`: keep tokenizing inside.
            let mut j = i + 2;
            if chars.get(j) == Some(&'M') && chars.get(j + 1) == Some(&'!') {
                j += 1;
            }
            if chars.get(j) == Some(&'!') {
                j += 1;
                while chars.get(j).is_some_and(|d| d.is_ascii_digit()) {
                    j += 1;
                }
                i = j;
                continue;
            }
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == '*' && next == Some('/') {
            // The end of an executable comment.
            i += 2;
        } else if c == '#'
            || (c == '-'
                && next == Some('-')
                && chars
                    .get(i + 2)
                    .is_none_or(|c| c.is_whitespace() || c.is_control()))
        {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '`' || (c == '"' && dialect.ansi_quotes) {
            let (text, end) = quoted(&chars, i, c, false);
            tokens.push(Token::Name(text));
            i = end;
        } else if c == '\'' || c == '"' {
            let (text, end) = quoted(&chars, i, c, escapes);
            tokens.push(Token::Str(text.into_bytes()));
            i = end;
        } else if (c == 'x' || c == 'X') && next == Some('\'') {
            let (text, end) = quoted(&chars, i + 1, '\'', false);
            tokens.push(Token::Hex(hex(&text)));
            i = end;
        } else if c == '0' && next == Some('x') {
            let start = i + 2;
            let mut j = start;
            while chars.get(j).is_some_and(|d| d.is_ascii_hexdigit()) {
                j += 1;
            }
            tokens.push(Token::Hex(hex(&chars[start..j].iter().collect::<String>())));
            i = j;
        } else if c == '.' {
            tokens.push(Token::Dot);
            i += 1;
        } else if c == ',' {
            tokens.push(Token::Comma);
            i += 1;
        } else if c == '(' {
            tokens.push(Token::Open);
            i += 1;
        } else if c == ')' {
            tokens.push(Token::Close);
            i += 1;
        } else if c == ';' {
            tokens.push(Token::Semicolon);
            i += 1;
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            tokens.push(Token::Other);
            i += 1;
        }
    }
    tokens
}

/// The text of a quoted token starting at `start` (the quote), and where it ends. Doubled
/// quotes, and backslash escapes when `escapes`, are unescaped.
fn quoted(chars: &[char], start: usize, quote: char, escapes: bool) -> (String, usize) {
    let mut text = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        let c = chars[i];
        if c == quote {
            if chars.get(i + 1) == Some(&quote) {
                text.push(quote);
                i += 2;
                continue;
            }
            return (text, i + 1);
        }
        if c == '\\' && escapes {
            if let Some(&escaped) = chars.get(i + 1) {
                text.push(escaped);
                i += 2;
                continue;
            }
        }
        text.push(c);
        i += 1;
    }
    (text, i)
}

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .bytes()
        .filter_map(|b| (b as char).to_digit(16).map(|d| d as u8))
        .collect();
    digits
        .chunks(2)
        .map(|p| p.iter().fold(0, |acc, d| acc * 16 + d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(schema: &str, table: &str) -> TableId {
        TableId::new(schema, table)
    }

    fn read(sql: &str) -> Statement {
        classify(sql, "app", Dialect::default())
    }

    #[test]
    fn a_corpus_of_ddl_means_what_it_says() {
        use Statement::*;
        let cases: Vec<(&str, Statement)> = vec![
            ("TRUNCATE TABLE t", Truncate(vec![t("app", "t")])),
            ("truncate `other`.`t`", Truncate(vec![t("other", "t")])),
            ("DROP TABLE IF EXISTS a, b.c /* generated by server */", Drop(vec![t("app", "a"), t("b", "c")])),
            ("DROP TEMPORARY TABLE IF EXISTS a", Neutral),
            ("DROP DATABASE IF EXISTS shop", DropSchema("shop".into())),
            ("DROP SCHEMA `shop`", DropSchema("shop".into())),
            ("RENAME TABLE a TO b", Rename(vec![(t("app", "a"), t("app", "b"))])),
            // gh-ost / pt-online-schema-change cut-over.
            (
                "RENAME TABLE `app`.`orders` TO `app`.`_orders_old`, `app`.`_orders_gho` TO `app`.`orders`",
                Rename(vec![
                    (t("app", "orders"), t("app", "_orders_old")),
                    (t("app", "_orders_gho"), t("app", "orders")),
                ]),
            ),
            ("RENAME TABLE IF EXISTS a WAIT 5 TO b", Rename(vec![(t("app", "a"), t("app", "b"))])),
            ("ALTER TABLE a RENAME TO b", Rename(vec![(t("app", "a"), t("app", "b"))])),
            ("ALTER TABLE a RENAME AS x.b", Rename(vec![(t("app", "a"), t("x", "b"))])),
            ("ALTER TABLE a RENAME b", Rename(vec![(t("app", "a"), t("app", "b"))])),
            ("ALTER TABLE t COMMENT 'rename soon'", Neutral),
            ("ALTER TABLE t COMMENT = 'RENAME TO x, DROP COLUMN y'", Neutral),
            ("ALTER TABLE t ADD INDEX rename_idx (rename)", Neutral),
            ("ALTER TABLE t RENAME INDEX a TO b", Neutral),
            ("ALTER TABLE t RENAME KEY a TO b, ALGORITHM=INPLACE, LOCK=NONE", Neutral),
            ("ALTER TABLE t RENAME COLUMN a TO b", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t ADD COLUMN c int DEFAULT 0", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t ADD c int, ADD INDEX (c)", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t DROP COLUMN c", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t DROP c", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t DROP FOREIGN KEY fk_1, DROP CHECK c1", Neutral),
            ("ALTER TABLE t DROP CONSTRAINT ua", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t DROP CONSTRAINT `PRIMARY`", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t DROP SYSTEM VERSIONING", Recopy(vec![t("app", "t")])),
            (
                "ALTER TABLE t CONVERT PARTITION p1 TO TABLE pz",
                Recopy(vec![t("app", "t"), t("app", "pz")]),
            ),
            (
                "ALTER TABLE t CONVERT TABLE pz TO PARTITION p1 VALUES LESS THAN (10)",
                Recopy(vec![t("app", "t"), t("app", "pz")]),
            ),
            ("ALTER TABLE t ENGINE = BLACKHOLE", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t ENGINE=InnoDB, ALGORITHM=COPY", Neutral),
            ("ALTER TABLE t COMMENT 'x' --not a comment\n, ADD c int", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t MODIFY c bigint NOT NULL", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t CHANGE c d int", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t ALTER COLUMN c SET DEFAULT 5", Neutral),
            ("ALTER TABLE t ALTER c DROP DEFAULT", Neutral),
            ("ALTER TABLE t ADD PRIMARY KEY (id)", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t ADD CONSTRAINT pk PRIMARY KEY (id)", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES p (id)", Neutral),
            ("ALTER TABLE t ADD UNIQUE KEY u (a)", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t DROP PRIMARY KEY, ADD PRIMARY KEY (a, b)", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t ENGINE=InnoDB", Neutral),
            ("ALTER TABLE t FORCE", Neutral),
            ("ALTER TABLE t AUTO_INCREMENT = 1000", Neutral),
            ("ALTER TABLE t CONVERT TO CHARACTER SET utf8mb4", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t DEFAULT CHARACTER SET utf8mb4", Neutral),
            ("ALTER TABLE t TRUNCATE PARTITION p0", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t DROP PARTITION p0, p1", Recopy(vec![t("app", "t")])),
            (
                "ALTER TABLE t EXCHANGE PARTITION p0 WITH TABLE t_swap WITHOUT VALIDATION",
                Recopy(vec![t("app", "t"), t("app", "t_swap")]),
            ),
            ("ALTER TABLE t ADD PARTITION (PARTITION p9 VALUES LESS THAN (900))", Neutral),
            ("ALTER TABLE t REORGANIZE PARTITION p0 INTO (PARTITION a VALUES LESS THAN (5), PARTITION b VALUES LESS THAN (10))", Neutral),
            ("ALTER TABLE t COALESCE PARTITION 2", Neutral),
            ("ALTER TABLE t PARTITION BY HASH(id) PARTITIONS 4", Neutral),
            ("ALTER TABLE t REMOVE PARTITIONING", Neutral),
            ("ALTER TABLE t DISCARD TABLESPACE", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t IMPORT TABLESPACE", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE t FROBNICATE", Recopy(vec![t("app", "t")])),
            ("ALTER ONLINE IGNORE TABLE IF EXISTS t NOWAIT ADD COLUMN x int", Recopy(vec![t("app", "t")])),
            ("ALTER TABLE a ADD COLUMN z int, RENAME TO b", Rename(vec![(t("app", "a"), t("app", "b"))])),
            ("/*!40000 ALTER TABLE `t` DISABLE KEYS */", Neutral),
            ("/*!50100 ALTER TABLE t TRUNCATE PARTITION p1 */", Recopy(vec![t("app", "t")])),
            ("/*M!100100 RENAME TABLE a TO b */", Rename(vec![(t("app", "a"), t("app", "b"))])),
            ("CREATE OR REPLACE TABLE t (id int primary key)", Recopy(vec![t("app", "t")])),
            ("CREATE OR REPLACE TABLE x.t AS SELECT * FROM y", Recopy(vec![t("x", "t")])),
            ("CREATE TABLE t (id int primary key, `rename` text)", Neutral),
            ("CREATE TABLE IF NOT EXISTS t LIKE u", Neutral),
            ("CREATE INDEX i ON t (a)", Neutral),
            ("GRANT SELECT ON app.* TO 'x'@'%'", Neutral),
            ("-- RENAME TABLE a TO b\nCREATE TABLE c (id int)", Neutral),
            ("# DROP TABLE a\nSELECT 1", Neutral),
        ];
        for (sql, expected) in cases {
            assert_eq!(read(sql), expected, "{sql}");
        }
    }

    #[test]
    fn names_follow_lower_case_table_names_and_ansi_quotes() {
        let lower = Dialect {
            lower_case_names: true,
            ..Dialect::default()
        };
        assert_eq!(
            classify("RENAME TABLE Shop.Orders TO Shop.OLD", "x", lower),
            Statement::Rename(vec![(t("shop", "orders"), t("shop", "old"))])
        );
        assert_eq!(
            classify("TRUNCATE Orders", "Shop", lower),
            Statement::Truncate(vec![t("shop", "orders")])
        );
        let ansi = Dialect {
            ansi_quotes: true,
            ..Dialect::default()
        };
        assert_eq!(
            classify("DROP TABLE \"we\"\"ird\"", "app", ansi),
            Statement::Drop(vec![t("app", "we\"ird")])
        );
        // Under NO_BACKSLASH_ESCAPES a backslash ends nothing: the clause after the string counts.
        let plain = Dialect {
            no_backslash_escapes: true,
            ..Dialect::default()
        };
        assert_eq!(
            classify(
                "ALTER TABLE t COMMENT 'a\\', ADD COLUMN c int",
                "app",
                plain
            ),
            Statement::Recopy(vec![t("app", "t")])
        );
        // Without ANSI_QUOTES a double-quoted string is not a name.
        assert_eq!(
            read("ALTER TABLE t COMMENT \"RENAME TO x\""),
            Statement::Neutral
        );
    }

    #[test]
    fn statement_dml_names_every_table_it_touches() {
        let cases: Vec<(&str, Vec<TableId>)> = vec![
            ("INSERT INTO t VALUES (1)", vec![t("app", "t")]),
            (
                "INSERT IGNORE INTO x.t (a) SELECT a FROM u",
                vec![t("x", "t"), t("app", "u")],
            ),
            ("REPLACE INTO t SET a = 1", vec![t("app", "t")]),
            (
                "UPDATE a, b SET a.x = b.x WHERE a.id = b.id",
                vec![t("app", "a"), t("app", "b")],
            ),
            (
                "UPDATE LOW_PRIORITY t AS alias SET v = 1",
                vec![t("app", "t")],
            ),
            (
                "DELETE a FROM other AS a JOIN app.t b ON a.id = b.id",
                vec![t("app", "other"), t("app", "t")],
            ),
            (
                "DELETE FROM t1, t2 USING t1 INNER JOIN t2",
                vec![t("app", "t1"), t("app", "t2")],
            ),
            (
                "UPDATE o JOIN `s`.`t` USING (id) SET o.v = 2",
                vec![t("app", "o"), t("s", "t")],
            ),
            (
                "LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t FIELDS TERMINATED BY ','",
                vec![t("app", "t")],
            ),
            (
                "DELETE FROM t WHERE id IN (SELECT id FROM u)",
                vec![t("app", "t"), t("app", "u")],
            ),
            (
                "UPDATE t SET note = 'FROM secret' WHERE 1",
                vec![t("app", "t")],
            ),
            (
                "INSERT t SELECT * FROM u",
                vec![t("app", "t"), t("app", "u")],
            ),
            ("REPLACE LOW_PRIORITY t VALUES (1)", vec![t("app", "t")]),
            (
                "UPDATE u STRAIGHT_JOIN t ON u.id = t.id SET u.v = t.v",
                vec![t("app", "u"), t("app", "t")],
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(read(sql), Statement::Dml(expected), "{sql}");
        }
    }

    #[test]
    fn savepoints_and_xa_are_recognised() {
        assert_eq!(read("ROLLBACK"), Statement::Rollback);
        assert_eq!(read("SAVEPOINT `s1`"), Statement::Savepoint("s1".into()));
        assert_eq!(read("ROLLBACK TO `s1`"), Statement::RollbackTo("s1".into()));
        assert_eq!(
            read("ROLLBACK TO SAVEPOINT s1"),
            Statement::RollbackTo("s1".into())
        );
        let xid = Xid {
            format: 1,
            gtrid: b"x1".to_vec(),
            bqual: Vec::new(),
        };
        assert_eq!(
            read("XA COMMIT X'7831',X'',1"),
            Statement::XaCommit(xid.clone())
        );
        assert_eq!(read("XA START 'x1'"), Statement::XaStart(xid.clone()));
        assert_eq!(
            read("XA ROLLBACK 'x1', '', 1"),
            Statement::XaRollback(xid.clone())
        );
        assert_eq!(read("XA END X'7831',X'',1"), Statement::XaEnd);
        assert_eq!(xid.to_string(), "X'7831',X'',1");
        assert_eq!(
            read("XA COMMIT X'61',X'62',7"),
            Statement::XaCommit(Xid {
                format: 7,
                gtrid: b"a".to_vec(),
                bqual: b"b".to_vec()
            })
        );
    }
}
