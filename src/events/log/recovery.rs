//! Recovery: on start the whole log is scanned, each record verified (length, checksum,
//! consecutive offsets) and replayed through a callback. A torn tail (a half-written last record,
//! as a crash leaves) is cut off with a warning. A bad record anywhere else stops start-up with
//! an error naming the segment and byte offset, unless the operator asked to truncate there
//! (`truncate_corrupt`), which also drops every later segment.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::record::{Decoded, Frame, MAGIC, decode_record, decode_value, record_reaches_end};
use super::{EventLog, LogConfig, LogError, events_dir, io_err, list_segments};
use crate::events::Event;

/// The first field of a logged [`Event`], read alone from a record a snapshot already holds.
#[derive(serde::Deserialize)]
struct RecordOffset {
    offset: u64,
}

/// What recovery found besides the events.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Events replayed.
    pub events: u64,
    /// Segments read.
    pub segments: usize,
    /// Problems repaired (torn tail cut, corrupt tail truncated on request).
    pub warnings: Vec<String>,
}

impl EventLog {
    /// Opens (creating if needed) the log under `config.data_dir` and replays every event
    /// through `replay`, in offset order. See the module docs for torn tails and corruption.
    pub fn open(
        config: &LogConfig,
        data_dir: &Path,
        replay: impl FnMut(Event) -> Result<(), String>,
    ) -> Result<(EventLog, RecoveryReport), LogError> {
        EventLog::open_from(config, data_dir, 0, 0, replay)
    }

    /// As [`EventLog::open`], but replays only the events from offset `from` on (recovery
    /// from a snapshot): segments that end before it are not even read, so their records are
    /// not verified either. An empty log starts at `first_offset` (a region's first id, see
    /// `cluster::regions`).
    pub fn open_from(
        config: &LogConfig,
        data_dir: &Path,
        from: u64,
        first_offset: u64,
        mut replay: impl FnMut(Event) -> Result<(), String>,
    ) -> Result<(EventLog, RecoveryReport), LogError> {
        let dir = events_dir(data_dir);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut segments = list_segments(&dir)?;
        let mut report = RecoveryReport::default();
        let mut next_offset: Option<u64> = None;
        let mut i = 0;
        while i < segments.len() {
            let last = i + 1 == segments.len();
            if !last && segments[i + 1].first_offset <= from {
                // Wholly before `from`: the snapshot already holds its events.
                i += 1;
                continue;
            }
            let seg = segments[i].clone();
            let bytes = fs::read(&seg.path).map_err(io_err(&seg.path))?;
            report.segments += 1;
            let mut cut: Option<(u64, String, bool)> = None; // (byte, why, torn)
            if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
                cut = Some((
                    0,
                    "missing segment header".into(),
                    last && bytes.len() < MAGIC.len(),
                ));
            }
            if let Some(expected) = next_offset
                && cut.is_none()
                && seg.first_offset != expected
            {
                return Err(LogError::Corrupt {
                    segment: seg.path.clone(),
                    byte: 0,
                    why: format!(
                        "segment starts at offset {} but {expected} was expected",
                        seg.first_offset
                    ),
                });
            }
            let mut pos = MAGIC.len();
            let mut expected = next_offset.unwrap_or(seg.first_offset);
            while cut.is_none() && pos < bytes.len() {
                if expected < from
                    && let Frame::Value(r, size) = decode_value::<RecordOffset>(&bytes[pos..])
                    && r.offset == expected
                {
                    // A snapshot holds this event: verified (length, checksum, offset) but not
                    // decoded. Anything else falls through to the full decode and its errors.
                    expected += 1;
                    pos += size;
                    continue;
                }
                match decode_record(&bytes[pos..]) {
                    Decoded::Event(event, size) => {
                        if event.offset != expected {
                            cut = Some((
                                pos as u64,
                                format!(
                                    "event offset {} where {expected} was expected",
                                    event.offset
                                ),
                                false,
                            ));
                            break;
                        }
                        let offset = event.offset;
                        if offset >= from {
                            replay(event).map_err(|why| LogError::Replay { offset, why })?;
                            report.events += 1;
                        }
                        expected += 1;
                        pos += size;
                    }
                    Decoded::Truncated => cut = Some((pos as u64, "record cut short".into(), last)),
                    Decoded::Bad(why) => {
                        // A bad record that reaches exactly the end of the last segment is a
                        // torn write of the final record too.
                        let torn = last && record_reaches_end(&bytes[pos..]);
                        cut = Some((pos as u64, why, torn));
                    }
                }
            }
            next_offset = Some(expected);
            if let Some((byte, why, torn)) = cut {
                if !torn && !config.truncate_corrupt {
                    return Err(LogError::Corrupt {
                        segment: seg.path.clone(),
                        byte,
                        why,
                    });
                }
                let what = if torn {
                    "torn tail"
                } else {
                    "corrupt record (truncated on request)"
                };
                report.warnings.push(format!(
                    "{what} in {} at byte {byte} ({why}); log cut there, next offset {expected}",
                    seg.path.display()
                ));
                let keep = byte.max(MAGIC.len() as u64);
                let file = OpenOptions::new()
                    .write(true)
                    .open(&seg.path)
                    .map_err(io_err(&seg.path))?;
                if byte < MAGIC.len() as u64 {
                    file.set_len(0).map_err(io_err(&seg.path))?;
                    (&file).write_all(MAGIC).map_err(io_err(&seg.path))?;
                } else {
                    file.set_len(keep).map_err(io_err(&seg.path))?;
                }
                file.sync_all().map_err(io_err(&seg.path))?;
                segments[i].len = keep;
                for later in segments.drain(i + 1..) {
                    report
                        .warnings
                        .push(format!("dropped later segment {}", later.path.display()));
                    fs::remove_file(&later.path).map_err(io_err(&later.path))?;
                }
                break;
            }
            segments[i].len = bytes.len() as u64;
            i += 1;
        }

        let next_offset = next_offset.unwrap_or(first_offset);
        Ok((
            EventLog::resume(dir, config, segments, next_offset)?,
            report,
        ))
    }
}
