//! Character sets of binlog text → UTF-8, by collation id (TABLE_MAP) or charset name
//! (information_schema), converting exactly as the server converts for a utf8mb4 client (the
//! snapshot's session), so snapshot and stream agree byte for byte (DESIGN §3). A charset that
//! cannot be converted exactly is [`Charset::Unsupported`] and refused at start, never decoded
//! lossily. What "exactly" means is checked against a live MariaDB byte by byte
//! (`tests/tests/mysql_types.rs`, every charset the server ships).

use encoding_rs::Encoding;

/// How the text of one column is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// utf8mb3 / utf8mb4: the bytes are UTF-8 already (the server sends them unconverted).
    Utf8,
    /// MySQL's `latin1`: Windows-1252 with its five undefined bytes as the C1 controls.
    Latin1,
    /// ASCII; the server has no mapping for bytes 0x80–0xFF (`?`).
    Ascii,
    /// A legacy single- or multi-byte charset, decoded with `encoding_rs` one character at a
    /// time (the server's character boundaries), with the server's own table where it differs.
    Legacy(Legacy),
    /// UCS-2, big-endian.
    Ucs2,
    /// UTF-16, big-endian.
    Utf16,
    /// UTF-16, little-endian.
    Utf16Le,
    /// UTF-32, big-endian.
    Utf32,
    /// Not converted exactly by etcdsync: refused at start (see [`unsupported_fix`]).
    Unsupported(Unsupported),
}

/// What is not supported: a charset (by name) or a collation id nobody knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    Charset(&'static str),
    Collation(u16),
}

/// A legacy charset: its name, its `encoding_rs` encoding and how the server splits bytes into
/// characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Legacy {
    pub name: &'static str,
    encoding: &'static Encoding,
    layout: Layout,
    /// Where the server's table differs from `encoding_rs` (read from MariaDB 10.11).
    server: ServerTable,
}

/// How the server's conversion table differs from `encoding_rs`'s: byte sequences (big-endian
/// as one number, sorted) it has no Unicode mapping for (it sends `?`), sequences it maps to
/// another character, and whole ranges it leaves unmapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServerTable {
    unmapped: &'static [u32],
    remapped: &'static [(u32, char)],
    /// Two-byte characters with these lead bytes have no mapping.
    unmapped_leads: &'static [(u8, u8)],
    /// Characters `encoding_rs` maps into the Private Use Area have none on the server.
    unmapped_private_use: bool,
    /// Bytes 0x80–0x9F are the C1 controls U+0080–U+009F (ISO 8859 style, not Windows).
    c1_controls: bool,
}

const SAME: ServerTable = ServerTable {
    unmapped: &[],
    remapped: &[],
    unmapped_leads: &[],
    unmapped_private_use: false,
    c1_controls: false,
};

/// The server's latin5 is ISO 8859-9 proper; `encoding_rs` has it as Windows-1254.
const ISO_C1: ServerTable = ServerTable {
    c1_controls: true,
    ..SAME
};

const fn differs(unmapped: &'static [u32], remapped: &'static [(u32, char)]) -> ServerTable {
    ServerTable {
        unmapped,
        remapped,
        unmapped_leads: &[],
        unmapped_private_use: false,
        c1_controls: false,
    }
}

/// How the server splits a charset's bytes into characters (its well-formedness rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One byte per character.
    Single,
    /// A lead byte in `lead` starts a two-byte character whose trail byte is in `trail`.
    Double {
        lead: (u8, u8),
        trail: &'static [(u8, u8)],
    },
    /// Shift-JIS (sjis, cp932): lead bytes 0x81–0x9F and 0xE0–0xFC, trail 0x40–0x7E and
    /// 0x80–0xFC; 0xA1–0xDF are single-byte katakana.
    Sjis,
}

const GBK_TRAIL: &[(u8, u8)] = &[(0x40, 0x7e), (0x80, 0xfe)];
const GB2312_TRAIL: &[(u8, u8)] = &[(0xa1, 0xfe)];
const EUCKR_TRAIL: &[(u8, u8)] = &[(0x41, 0x5a), (0x61, 0x7a), (0x81, 0xfe)];

const fn single(name: &'static str, encoding: &'static Encoding, server: ServerTable) -> Charset {
    Charset::Legacy(Legacy {
        name,
        encoding,
        layout: Layout::Single,
        server,
    })
}

/// Charsets MariaDB or MySQL ship that etcdsync does not convert: no `encoding_rs` encoding,
/// or one whose table differs from the server's in hundreds of places (big5, ujis, eucjpms),
/// or not verifiable here (MySQL's gb18030).
pub const UNSUPPORTED: &[&str] = &[
    "armscii8", "big5", "cp850", "cp852", "dec8", "eucjpms", "gb18030", "geostd8", "hp8",
    "keybcs2", "macce", "swe7", "ujis",
];

impl Charset {
    /// From a charset name (`information_schema.COLUMNS.CHARACTER_SET_NAME`).
    pub fn from_name(name: &str) -> Charset {
        use encoding_rs as e;
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "utf8mb4" | "utf8mb3" | "utf8" => Charset::Utf8,
            "latin1" => Charset::Latin1,
            "ucs2" => Charset::Ucs2,
            "utf16" => Charset::Utf16,
            "utf16le" => Charset::Utf16Le,
            "utf32" => Charset::Utf32,
            "ascii" => Charset::Ascii,
            "latin2" => single("latin2", e::ISO_8859_2, SAME),
            "cp1250" => single("cp1250", e::WINDOWS_1250, differs(UNMAPPED_CP1250, &[])),
            "cp1251" => single("cp1251", e::WINDOWS_1251, differs(UNMAPPED_CP1251, &[])),
            "cp1256" => single("cp1256", e::WINDOWS_1256, differs(UNMAPPED_CP1256, &[])),
            "cp1257" => single("cp1257", e::WINDOWS_1257, differs(UNMAPPED_CP1257, &[])),
            "cp866" => single("cp866", e::IBM866, differs(&[], REMAPPED_CP866)),
            "koi8r" => single("koi8r", e::KOI8_R, SAME),
            "koi8u" => single("koi8u", e::KOI8_U, differs(&[], REMAPPED_KOI8U)),
            "greek" => single(
                "greek",
                e::ISO_8859_7,
                differs(UNMAPPED_GREEK, REMAPPED_GREEK),
            ),
            "hebrew" => single("hebrew", e::ISO_8859_8, differs(&[], REMAPPED_HEBREW)),
            "latin5" => single("latin5", e::WINDOWS_1254, ISO_C1),
            "latin7" => single("latin7", e::ISO_8859_13, SAME),
            "tis620" => single(
                "tis620",
                e::WINDOWS_874,
                ServerTable {
                    c1_controls: true,
                    ..differs(&[], REMAPPED_TIS620)
                },
            ),
            "macroman" => single("macroman", e::MACINTOSH, SAME),
            "gbk" => double(
                "gbk",
                e::GBK,
                (0x81, 0xfe),
                GBK_TRAIL,
                ServerTable {
                    unmapped_private_use: true,
                    ..differs(UNMAPPED_GBK, &[])
                },
            ),
            "gb2312" => double(
                "gb2312",
                e::GBK,
                (0xa1, 0xf7),
                GB2312_TRAIL,
                ServerTable {
                    unmapped_private_use: true,
                    ..differs(UNMAPPED_GB2312, REMAPPED_GB2312)
                },
            ),
            "euckr" => double("euckr", e::EUC_KR, (0x81, 0xfe), EUCKR_TRAIL, SAME),
            "sjis" => sjis(
                "sjis",
                ServerTable {
                    unmapped_leads: &[(0x87, 0x87), (0xed, 0xee), (0xf0, 0xfc)],
                    ..differs(&[], REMAPPED_SJIS)
                },
            ),
            "cp932" => sjis("cp932", SAME),
            other => Charset::Unsupported(Unsupported::Charset(
                UNSUPPORTED
                    .iter()
                    .find(|n| **n == other)
                    .copied()
                    .unwrap_or("(unknown)"),
            )),
        }
    }

    /// From a collation id of the TABLE_MAP optional metadata (MariaDB's ids first, then
    /// MySQL 8's).
    pub fn from_collation(id: u16) -> Charset {
        match charset_of_collation(id) {
            Some(name) => Charset::from_name(name),
            None => Charset::Unsupported(Unsupported::Collation(id)),
        }
    }

    /// False for [`Charset::Unsupported`].
    pub fn is_supported(self) -> bool {
        !matches!(self, Charset::Unsupported(_))
    }

    /// The charset's name, for messages.
    pub fn name(self) -> String {
        match self {
            Charset::Utf8 => "utf8mb4".into(),
            Charset::Latin1 => "latin1".into(),
            Charset::Ascii => "ascii".into(),
            Charset::Legacy(legacy) => legacy.name.into(),
            Charset::Ucs2 => "ucs2".into(),
            Charset::Utf16 => "utf16".into(),
            Charset::Utf16Le => "utf16le".into(),
            Charset::Utf32 => "utf32".into(),
            Charset::Unsupported(Unsupported::Charset(name)) => name.into(),
            Charset::Unsupported(Unsupported::Collation(id)) => format!("collation id {id}"),
        }
    }

    /// The text as the server sends it to a utf8mb4 client: characters it has no Unicode
    /// mapping for become `?` (as in the snapshot). [`Charset::Unsupported`] never reaches
    /// here (refused at start and when a table map names it); it falls back to UTF-8.
    pub fn decode(self, bytes: &[u8]) -> String {
        match self {
            Charset::Utf8 | Charset::Unsupported(_) => String::from_utf8_lossy(bytes).into_owned(),
            Charset::Latin1 => bytes.iter().map(|&b| cp1252(b)).collect(),
            Charset::Ascii => bytes
                .iter()
                .map(|&b| if b < 0x80 { char::from(b) } else { '?' })
                .collect(),
            Charset::Legacy(legacy) => legacy.decode(bytes),
            Charset::Ucs2 => code_points(
                bytes
                    .chunks_exact(2)
                    .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))),
            ),
            Charset::Utf16 => utf16(bytes, u16::from_be_bytes),
            Charset::Utf16Le => utf16(bytes, u16::from_le_bytes),
            Charset::Utf32 => code_points(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
    }
}

const fn double(
    name: &'static str,
    encoding: &'static Encoding,
    lead: (u8, u8),
    trail: &'static [(u8, u8)],
    server: ServerTable,
) -> Charset {
    Charset::Legacy(Legacy {
        name,
        encoding,
        layout: Layout::Double { lead, trail },
        server,
    })
}

const fn sjis(name: &'static str, server: ServerTable) -> Charset {
    Charset::Legacy(Legacy {
        name,
        encoding: encoding_rs::SHIFT_JIS,
        layout: Layout::Sjis,
        server,
    })
}

impl Legacy {
    /// The length of the character starting at `bytes[0]`, and whether its bytes are a well-formed
    /// sequence (lead and trail bytes in range). An ill-formed lead byte counts as one byte.
    fn char_len(&self, bytes: &[u8]) -> (usize, bool) {
        let in_ranges =
            |b: u8, ranges: &[(u8, u8)]| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&b));
        let b0 = bytes[0];
        match self.layout {
            Layout::Single => (1, true),
            Layout::Double { lead, trail } => {
                if !(lead.0..=lead.1).contains(&b0) {
                    return (1, true);
                }
                match bytes.get(1) {
                    Some(&b1) if in_ranges(b1, trail) => (2, true),
                    _ => (1, false),
                }
            }
            Layout::Sjis => {
                if !matches!(b0, 0x81..=0x9f | 0xe0..=0xfc) {
                    return (1, true);
                }
                match bytes.get(1) {
                    Some(&b1) if in_ranges(b1, &[(0x40, 0x7e), (0x80, 0xfc)]) => (2, true),
                    _ => (1, false),
                }
            }
        }
    }

    /// One character as the server maps it; `None` when it has no mapping.
    fn server_char(&self, seq: &[u8]) -> Option<char> {
        let table = &self.server;
        let key = seq.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        if table.unmapped.binary_search(&key).is_ok() {
            return None;
        }
        if let Ok(i) = table.remapped.binary_search_by_key(&key, |(k, _)| *k) {
            return Some(table.remapped[i].1);
        }
        if table.c1_controls && (0x80..=0x9f).contains(&key) {
            return char::from_u32(key);
        }
        if seq.len() == 2
            && table
                .unmapped_leads
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&seq[0]))
        {
            return None;
        }
        // One character into a stack buffer: no allocation per character.
        let mut decoder = self.encoding.new_decoder_without_bom_handling();
        let mut buf = [0u8; 8];
        let (result, read, written) =
            decoder.decode_to_utf8_without_replacement(seq, &mut buf, true);
        if result != encoding_rs::DecoderResult::InputEmpty || read != seq.len() {
            return None;
        }
        let mut chars = std::str::from_utf8(&buf[..written]).ok()?.chars();
        let c = chars.next()?;
        if chars.next().is_some()
            || (table.unmapped_private_use && ('\u{e000}'..='\u{f8ff}').contains(&c))
        {
            return None;
        }
        Some(c)
    }

    fn decode(&self, bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let rest = &bytes[i..];
            // Every supported legacy charset is ASCII below 0x80, on the server too.
            if rest[0] < 0x80 {
                out.push(char::from(rest[0]));
                i += 1;
                continue;
            }
            let (len, well_formed) = self.char_len(rest);
            if !well_formed {
                // The server skips one byte of an ill-formed sequence and sends `?`.
                out.push('?');
                i += 1;
                continue;
            }
            let seq = &rest[..len];
            match self.server_char(seq) {
                Some(c) => out.push(c),
                None => out.push('?'),
            }
            i += len;
        }
        out
    }
}

/// Code points (UCS-2, UTF-32) → text. The server sends a lone surrogate (which ucs2 and utf32
/// columns can hold) as its three-byte pseudo-UTF-8 form, which a UTF-8 reader — the snapshot —
/// turns into three U+FFFD; a code point beyond U+10FFFF cannot be stored.
fn code_points(units: impl Iterator<Item = u32>) -> String {
    let mut out = String::new();
    for unit in units {
        match char::from_u32(unit) {
            Some(c) => out.push(c),
            None if (0xd800..=0xdfff).contains(&unit) => out.push_str("\u{fffd}\u{fffd}\u{fffd}"),
            None => out.push('?'),
        }
    }
    out
}

/// UTF-16 code units (big- or little-endian) → text; an unpaired surrogate becomes `?`, a
/// trailing odd byte is dropped (the server stores neither).
fn utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> String {
    let units = bytes.chunks_exact(2).map(|c| unit([c[0], c[1]]));
    char::decode_utf16(units)
        .map(|c| c.unwrap_or('?'))
        .collect()
}

/// MySQL `latin1` (cp1252; its five undefined bytes map to the C1 controls).
fn cp1252(b: u8) -> char {
    const HIGH: [u16; 32] = [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
        0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
    ];
    match b {
        0x80..=0x9f => char::from_u32(u32::from(HIGH[usize::from(b - 0x80)])).unwrap_or('?'),
        _ => char::from(b),
    }
}

/// The charset of a collation id: MariaDB 10.11's ids (read from its
/// `information_schema.COLLATION_CHARACTER_SET_APPLICABILITY`; `_nopad` collations are the
/// padded id + 1024, the `uca1400` family 2048 + 256 per charset), then MySQL 8's.
pub fn charset_of_collation(id: u16) -> Option<&'static str> {
    if let Some(name) = mariadb_collation(id) {
        return Some(name);
    }
    use mysql_common::collations::{Collation, CollationId};
    match Collation::resolve(CollationId::from(id)).charset() {
        "" | "unknown" => None,
        "utf8mb4" => Some("utf8mb4"),
        "utf8mb3" | "utf8" => Some("utf8mb3"),
        "gb18030" => Some("gb18030"),
        name => UNSUPPORTED
            .iter()
            .find(|n| **n == name)
            .copied()
            .or_else(|| {
                // Any other MySQL charset name is one MariaDB has too.
                KNOWN.iter().find(|n| **n == name).copied()
            }),
    }
}

/// Every charset name etcdsync knows besides [`UNSUPPORTED`].
const KNOWN: &[&str] = &[
    "big5", "latin2", "latin1", "koi8r", "ascii", "ujis", "sjis", "cp1251", "hebrew", "tis620",
    "euckr", "latin7", "koi8u", "gb2312", "greek", "cp1250", "gbk", "cp1257", "latin5", "utf8mb3",
    "ucs2", "cp866", "macroman", "utf8mb4", "utf16", "utf16le", "cp1256", "utf32", "binary",
    "cp932", "eucjpms",
];

fn mariadb_collation(id: u16) -> Option<&'static str> {
    const UCA1400: [&str; 5] = ["utf8mb3", "utf8mb4", "ucs2", "utf16", "utf32"];
    match id {
        0 => None,
        1..=1023 => MARIADB_IDS
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&id))
            .map(|(_, _, name)| *name),
        1024..=2047 => mariadb_collation(id - 1024),
        2048..=3327 => UCA1400.get(usize::from((id - 2048) / 256)).copied(),
        _ => None,
    }
}

/// MariaDB 10.11's collation ids below 1024, as runs `(first, last, charset)`.
const MARIADB_IDS: &[(u16, u16, &str)] = &[
    (1, 1, "big5"),
    (2, 2, "latin2"),
    (3, 3, "dec8"),
    (4, 4, "cp850"),
    (5, 5, "latin1"),
    (6, 6, "hp8"),
    (7, 7, "koi8r"),
    (8, 8, "latin1"),
    (9, 9, "latin2"),
    (10, 10, "swe7"),
    (11, 11, "ascii"),
    (12, 12, "ujis"),
    (13, 13, "sjis"),
    (14, 14, "cp1251"),
    (15, 15, "latin1"),
    (16, 16, "hebrew"),
    (18, 18, "tis620"),
    (19, 19, "euckr"),
    (20, 20, "latin7"),
    (21, 21, "latin2"),
    (22, 22, "koi8u"),
    (23, 23, "cp1251"),
    (24, 24, "gb2312"),
    (25, 25, "greek"),
    (26, 26, "cp1250"),
    (27, 27, "latin2"),
    (28, 28, "gbk"),
    (29, 29, "cp1257"),
    (30, 30, "latin5"),
    (31, 31, "latin1"),
    (32, 32, "armscii8"),
    (33, 33, "utf8mb3"),
    (34, 34, "cp1250"),
    (35, 35, "ucs2"),
    (36, 36, "cp866"),
    (37, 37, "keybcs2"),
    (38, 38, "macce"),
    (39, 39, "macroman"),
    (40, 40, "cp852"),
    (41, 42, "latin7"),
    (43, 43, "macce"),
    (44, 44, "cp1250"),
    (45, 46, "utf8mb4"),
    (47, 49, "latin1"),
    (50, 52, "cp1251"),
    (53, 53, "macroman"),
    (54, 55, "utf16"),
    (56, 56, "utf16le"),
    (57, 57, "cp1256"),
    (58, 59, "cp1257"),
    (60, 61, "utf32"),
    (62, 62, "utf16le"),
    (63, 63, "binary"),
    (64, 64, "armscii8"),
    (65, 65, "ascii"),
    (66, 66, "cp1250"),
    (67, 67, "cp1256"),
    (68, 68, "cp866"),
    (69, 69, "dec8"),
    (70, 70, "greek"),
    (71, 71, "hebrew"),
    (72, 72, "hp8"),
    (73, 73, "keybcs2"),
    (74, 74, "koi8r"),
    (75, 75, "koi8u"),
    (77, 77, "latin2"),
    (78, 78, "latin5"),
    (79, 79, "latin7"),
    (80, 80, "cp850"),
    (81, 81, "cp852"),
    (82, 82, "swe7"),
    (83, 83, "utf8mb3"),
    (84, 84, "big5"),
    (85, 85, "euckr"),
    (86, 86, "gb2312"),
    (87, 87, "gbk"),
    (88, 88, "sjis"),
    (89, 89, "tis620"),
    (90, 90, "ucs2"),
    (91, 91, "ujis"),
    (92, 93, "geostd8"),
    (94, 94, "latin1"),
    (95, 96, "cp932"),
    (97, 98, "eucjpms"),
    (99, 99, "cp1250"),
    (101, 124, "utf16"),
    (128, 151, "ucs2"),
    (159, 159, "ucs2"),
    (160, 183, "utf32"),
    (192, 215, "utf8mb3"),
    (223, 223, "utf8mb3"),
    (224, 247, "utf8mb4"),
    (576, 578, "utf8mb3"),
    (608, 610, "utf8mb4"),
    (640, 642, "ucs2"),
    (672, 674, "utf16"),
    (736, 738, "utf32"),
];

/// The fix printed when a column's charset is refused.
pub fn unsupported_fix(table: &str, column: &str) -> String {
    format!(
        "convert it to a charset etcdsync reads exactly: ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 \
         (or only this column: ALTER TABLE {table} MODIFY {column} <its type> CHARACTER SET utf8mb4), \
         or leave the column out with source.tables.exclude_columns"
    )
}

// The server's table where it differs from `encoding_rs`, read from MariaDB 10.11 by converting
// every byte sequence (see the charset test in tests/tests/mysql_types.rs).
const UNMAPPED_CP1250: &[u32] = &[0x81, 0x83, 0x88, 0x90, 0x98];
const UNMAPPED_CP1251: &[u32] = &[0x98];
const UNMAPPED_CP1256: &[u32] = &[0x8A, 0x8F, 0x98, 0x9A, 0x9F, 0xAA, 0xC0, 0xFF];
const UNMAPPED_CP1257: &[u32] = &[0x81, 0x83, 0x88, 0x8A, 0x8C, 0x90, 0x98, 0x9A, 0x9C, 0x9F];
const REMAPPED_CP866: &[(u32, char)] = &[(0xFC, '\u{207F}'), (0xFD, '\u{00B2}')];
const UNMAPPED_GREEK: &[u32] = &[0xA4, 0xA5, 0xAA];
const REMAPPED_GREEK: &[(u32, char)] = &[(0xA1, '\u{02BD}'), (0xA2, '\u{02BC}')];
const REMAPPED_HEBREW: &[(u32, char)] = &[(0xAF, '\u{203E}')];
const REMAPPED_KOI8U: &[(u32, char)] =
    &[(0x95, '\u{2022}'), (0xAE, '\u{255D}'), (0xBE, '\u{256C}')];
const REMAPPED_TIS620: &[(u32, char)] = &[
    (0xA0, '\u{FFFD}'),
    (0xDB, '\u{FFFD}'),
    (0xDC, '\u{FFFD}'),
    (0xDD, '\u{FFFD}'),
    (0xDE, '\u{FFFD}'),
    (0xFC, '\u{FFFD}'),
    (0xFD, '\u{FFFD}'),
    (0xFE, '\u{FFFD}'),
    (0xFF, '\u{FFFD}'),
];
const UNMAPPED_GBK: &[u32] = &[
    0xA2E3, 0xA3A0, 0xA6D9, 0xA6DA, 0xA6DB, 0xA6DC, 0xA6DD, 0xA6DE, 0xA6DF, 0xA6EC, 0xA6ED, 0xA6F3,
    0xA8BC, 0xA8BF, 0xA989, 0xA98A, 0xA98B, 0xA98C, 0xA98D, 0xA98E, 0xA98F, 0xA990, 0xA991, 0xA992,
    0xA993, 0xA994, 0xA995, 0xFE50, 0xFE54, 0xFE55, 0xFE56, 0xFE57, 0xFE58, 0xFE59, 0xFE5A, 0xFE5B,
    0xFE5C, 0xFE5D, 0xFE5E, 0xFE5F, 0xFE60, 0xFE61, 0xFE62, 0xFE63, 0xFE64, 0xFE65, 0xFE66, 0xFE67,
    0xFE68, 0xFE69, 0xFE6A, 0xFE6B, 0xFE6D, 0xFE6E, 0xFE6F, 0xFE70, 0xFE71, 0xFE72, 0xFE73, 0xFE74,
    0xFE75, 0xFE77, 0xFE78, 0xFE79, 0xFE7A, 0xFE7B, 0xFE7C, 0xFE7D, 0xFE7E, 0xFE80, 0xFE81, 0xFE82,
    0xFE83, 0xFE84, 0xFE85, 0xFE86, 0xFE87, 0xFE88, 0xFE89, 0xFE8A, 0xFE8B, 0xFE8C, 0xFE8D, 0xFE8E,
    0xFE8F, 0xFE90, 0xFE92, 0xFE93, 0xFE94, 0xFE95, 0xFE96, 0xFE97, 0xFE98, 0xFE99, 0xFE9A, 0xFE9B,
    0xFE9C, 0xFE9D, 0xFE9E, 0xFE9F, 0xFEA0,
];
const UNMAPPED_GB2312: &[u32] = &[
    0xA2A1, 0xA2A2, 0xA2A3, 0xA2A4, 0xA2A5, 0xA2A6, 0xA2A7, 0xA2A8, 0xA2A9, 0xA2AA, 0xA2E3, 0xA6D9,
    0xA6DA, 0xA6DB, 0xA6DC, 0xA6DD, 0xA6DE, 0xA6DF, 0xA6E0, 0xA6E1, 0xA6E2, 0xA6E3, 0xA6E4, 0xA6E5,
    0xA6E6, 0xA6E7, 0xA6E8, 0xA6E9, 0xA6EA, 0xA6EB, 0xA6EC, 0xA6ED, 0xA6EE, 0xA6EF, 0xA6F0, 0xA6F1,
    0xA6F2, 0xA6F3, 0xA6F4, 0xA6F5, 0xA8BB, 0xA8BC, 0xA8BD, 0xA8BE, 0xA8BF, 0xA8C0,
];
const REMAPPED_GB2312: &[(u32, char)] = &[(0xA1A4, '\u{30FB}'), (0xA1AA, '\u{2015}')];
const REMAPPED_SJIS: &[(u32, char)] = &[
    (0x815F, '\u{005C}'),
    (0x8160, '\u{301C}'),
    (0x8161, '\u{2016}'),
    (0x817C, '\u{2212}'),
    (0x8191, '\u{00A2}'),
    (0x8192, '\u{00A3}'),
    (0x81CA, '\u{00AC}'),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collation_ids_name_their_charset() {
        assert_eq!(Charset::from_collation(8), Charset::Latin1);
        assert_eq!(
            Charset::from_collation(1032),
            Charset::Latin1,
            "latin1_swedish_nopad_ci"
        );
        assert_eq!(
            Charset::from_collation(1071),
            Charset::Latin1,
            "latin1_nopad_bin"
        );
        assert_eq!(Charset::from_collation(45), Charset::Utf8);
        assert_eq!(Charset::from_collation(33), Charset::Utf8);
        assert_eq!(
            Charset::from_collation(2048),
            Charset::Utf8,
            "utf8mb3_uca1400_ai_ci"
        );
        assert_eq!(
            Charset::from_collation(2304),
            Charset::Utf8,
            "utf8mb4_uca1400_ai_ci"
        );
        assert_eq!(
            Charset::from_collation(2560),
            Charset::Ucs2,
            "ucs2_uca1400_ai_ci"
        );
        assert_eq!(Charset::from_collation(2816), Charset::Utf16);
        assert_eq!(Charset::from_collation(3072), Charset::Utf32);
        assert_eq!(Charset::from_collation(35), Charset::Ucs2);
        assert_eq!(Charset::from_collation(56), Charset::Utf16Le);
        assert_eq!(Charset::from_collation(51).name(), "cp1251");
        assert_eq!(
            Charset::from_collation(1075).name(),
            "cp1251",
            "cp1251_nopad_bin"
        );
        assert_eq!(Charset::from_collation(28).name(), "gbk");
        assert_eq!(
            Charset::from_collation(255),
            Charset::Utf8,
            "MySQL 8 utf8mb4_0900_ai_ci"
        );
        assert_eq!(
            Charset::from_collation(1),
            Charset::Unsupported(Unsupported::Charset("big5"))
        );
        assert_eq!(
            Charset::from_collation(248),
            Charset::Unsupported(Unsupported::Charset("gb18030"))
        );
        assert_eq!(
            Charset::from_collation(4000),
            Charset::Unsupported(Unsupported::Collation(4000))
        );
        assert_eq!(Charset::from_collation(4000).name(), "collation id 4000");
        assert!(!Charset::from_name("swe7").is_supported());
        assert!(!Charset::from_name("no-such").is_supported());
        assert!(Charset::from_name("CP1250").is_supported());
    }

    #[test]
    fn legacy_charsets_decode_as_the_server_does() {
        let cp1251 = Charset::from_name("cp1251");
        assert_eq!(cp1251.decode(&[0xe0, 0xe1, 0xe2, b' ', 0xc0]), "абв А");
        assert_eq!(cp1251.decode(&[0x98]), "?", "no mapping on the server");
        assert_eq!(Charset::from_name("cp1250").decode(&[0x8a, 0x81]), "Š?");
        assert_eq!(
            Charset::Latin1.decode(&[b'c', 0xe9, 0x80, 0x81]),
            "cé€\u{81}"
        );
        assert_eq!(Charset::Ascii.decode(b"a\xe9"), "a?");
        assert_eq!(
            Charset::from_name("latin5").decode(&[0x80, 0xdd]),
            "\u{80}İ"
        );
        assert_eq!(Charset::from_name("cp866").decode(&[0xfc, 0xfd]), "ⁿ²");
        let gbk = Charset::from_name("gbk");
        assert_eq!(gbk.decode(&[0xd6, 0xd0, 0xce, 0xc4, b'!']), "中文!");
        assert_eq!(
            gbk.decode(&[0xa1, 0x40]),
            "?",
            "private use: no mapping on the server"
        );
        assert_eq!(
            gbk.decode(&[0x81, 0x20]),
            "? ",
            "an ill-formed lead byte is one `?`"
        );
        let gb2312 = Charset::from_name("gb2312");
        assert_eq!(gb2312.decode(&[0xa1, 0xa4, 0xa1, 0xaa]), "・―");
        let sjis = Charset::from_name("sjis");
        assert_eq!(sjis.decode(&[0x82, 0xa0, 0x81, 0x5f, 0xb1]), "あ\\ｱ");
        assert_eq!(sjis.decode(&[0x87, 0x40]), "?");
        let cp932 = Charset::from_name("cp932");
        assert_eq!(cp932.decode(&[0x87, 0x40, 0x81, 0x5f]), "①＼");
        assert_eq!(Charset::from_name("euckr").decode(&[0xc7, 0xd1]), "한");
    }

    #[test]
    fn unicode_charsets_by_hand() {
        assert_eq!(Charset::Ucs2.decode(&[0x00, 0x61, 0x04, 0x30]), "aа");
        assert_eq!(
            Charset::Ucs2.decode(&[0xd8, 0x00]),
            "\u{fffd}\u{fffd}\u{fffd}",
            "a lone surrogate reaches the snapshot as three invalid bytes"
        );
        assert_eq!(
            Charset::Utf16.decode(&[0xd8, 0x3d, 0xde, 0x00, 0x00, 0x41]),
            "😀A"
        );
        assert_eq!(
            Charset::Utf16Le.decode(&[0x3d, 0xd8, 0x00, 0xde, 0x41, 0x00]),
            "😀A"
        );
        assert_eq!(
            Charset::Utf32.decode(&[0, 1, 0xf6, 0, 0, 0, 0, 0x41]),
            "😀A"
        );
        assert_eq!(
            Charset::Utf32.decode(&[0, 0, 0xdc, 0]),
            "\u{fffd}\u{fffd}\u{fffd}"
        );
        assert_eq!(
            Charset::Utf16.decode(&[0x00, 0x41, 0x00]),
            "A",
            "odd byte dropped"
        );
    }
}
