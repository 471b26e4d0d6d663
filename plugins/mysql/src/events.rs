//! What single binlog events say, independent of the stream: the dump mode, the file name a
//! ROTATE carries (with or without its checksum), and the changes of a rows event.

use crate::tablemap::{project, read_image, TableInfo};
use etcdsync_core::{Change, Value};
use mysql_async::binlog::events::{Event, RowsEventData};
use mysql_common::io::ParseBuf;

/// `LOG_EVENT_ARTIFICIAL_F`: an event the server made up for this stream (the opening ROTATE).
pub(crate) const ARTIFICIAL_EVENT: u16 = 0x0020;

/// How the dump was requested, which decides how already-applied transactions are recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    FileOffset,
    Gtid,
}

/// The file name of a ROTATE event. The fake ROTATE that opens a stream arrives before the
/// FORMAT_DESCRIPTION event, so mysql_common cannot know it carries a CRC32 and leaves the
/// 4 checksum bytes on the name: they are removed when they are the event's CRC32.
pub(crate) fn rotate_file_name(event: &Event, name: &[u8]) -> String {
    if name.len() > 4 && event.checksum().is_none() {
        let (bare, tail) = name.split_at(name.len() - 4);
        let mut header = Vec::with_capacity(19);
        let h = event.header();
        header.extend_from_slice(&h.timestamp().to_le_bytes());
        header.push(h.event_type_raw());
        header.extend_from_slice(&h.server_id().to_le_bytes());
        header.extend_from_slice(&h.event_size().to_le_bytes());
        header.extend_from_slice(&h.log_pos().to_le_bytes());
        header.extend_from_slice(&h.flags_raw().to_le_bytes());
        let data = event.data();
        let crc = crc32(&[&header, &data[..data.len() - 4]]);
        if tail == crc.to_le_bytes() {
            return String::from_utf8_lossy(bare).into_owned();
        }
    }
    String::from_utf8_lossy(name).into_owned()
}

/// CRC-32 (IEEE), as the binlog's `binlog_checksum=CRC32`.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &byte in *part {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

/// Decodes every row of a rows event into changes.
pub(crate) fn decode_rows(
    info: &TableInfo,
    rows: &RowsEventData<'_>,
) -> std::io::Result<Vec<Change>> {
    let count = usize::try_from(rows.num_columns()).unwrap_or(usize::MAX);
    let before: Option<Vec<bool>> = rows
        .columns_before_image()
        .map(|b| (0..count).map(|i| b.get(i).is_some_and(|x| *x)).collect());
    let after: Option<Vec<bool>> = rows
        .columns_after_image()
        .map(|b| (0..count).map(|i| b.get(i).is_some_and(|x| *x)).collect());
    if count != info.columns.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "rows event has {count} columns, TABLE_MAP {}",
                info.columns.len()
            ),
        ));
    }
    let mut buf = ParseBuf(rows.rows_data());
    let mut changes = Vec::new();
    while !buf.is_empty() {
        let old = match &before {
            Some(present) => Some(read_image(info, present, &mut buf)?),
            None => None,
        };
        let new = match &after {
            Some(present) => Some(read_image(info, present, &mut buf)?),
            None => None,
        };
        let schema = info.schema.clone();
        let change = match (old, new) {
            (None, Some(new)) => Change::insert(schema, project(info, new)),
            (Some(old), Some(new)) => {
                Change::update(schema, Some(project(info, old)), project(info, new))
            }
            (Some(old), None) => Change::delete(schema, project(info, old)),
            (None, None) => continue,
        };
        if let etcdsync_core::Op::Update { row, .. } | etcdsync_core::Op::Insert { row } =
            &change.op
        {
            if row.iter().any(|v| matches!(v, Value::Missing)) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the row image lacks columns: set binlog_row_image=FULL (and on MySQL \
                     binlog_row_value_options='') on the server, then re-snapshot",
                ));
            }
        }
        changes.push(change);
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_reference() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }
}
