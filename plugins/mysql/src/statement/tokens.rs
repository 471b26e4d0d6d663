//! The lexer of [`super`]: MySQL's tokens where they matter — strings (`'…'`, `"…"` unless
//! `ANSI_QUOTES`), quoted names, hex literals, `--␠`/`#`/`/*…*/` comments, and executable
//! comments (`/*!50100 …*/`, `/*M!100100 …*/`) whose text counts.

use super::Dialect;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Token {
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
    pub(super) fn is(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    pub(super) fn name(&self) -> Option<&str> {
        match self {
            Token::Word(w) | Token::Name(w) => Some(w),
            _ => None,
        }
    }
}

/// Splits SQL into tokens; comments are dropped, executable comments' text is kept.
pub(super) fn tokenize(sql: &str, dialect: Dialect) -> Vec<Token> {
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
