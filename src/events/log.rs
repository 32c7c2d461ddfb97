//! The durable event log: what makes "no accepted trip and no event is ever lost" true.
//!
//! Layout: `<data_dir>/events/<first offset, 20 digits>.log`, one file per segment. A segment
//! starts with an 8-byte magic (format version) and holds records `[len: u32 LE][crc32 of
//! payload: u32 LE][payload]`, one per event, offsets consecutive across segments. The payload is
//! the event encoded with postcard (a compact serde format; event variants are only ever
//! appended, so old logs stay readable).
//!
//! Writing: the dispatcher thread appends each command group's events and calls [`commit`]
//! before publishing them or replying, so an acknowledged call is on disk (with `always` or
//! `batch` fsync). Group commit, one fsync for many commands, is the runner's job.
//!
//! Recovery ([`EventLog::open`]) streams every record back through a callback. A torn tail (a
//! half-written last record, as a crash leaves) is cut off with a warning. A bad record anywhere
//! else stops start-up with an error naming the segment and byte offset, unless the operator
//! asked to truncate there (`truncate_corrupt`), which also drops every later segment.
//!
//! Subscribers that fall behind the in-memory ring read old events with a [`LogCursor`].
//!
//! [`commit`]: EventLog::commit

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Event;

/// First bytes of every segment: "DSPLOG", format version 1.
const MAGIC: &[u8; 8] = b"DSPLOG\x00\x01";
/// `[len][crc]` before each payload.
const RECORD_HEADER: usize = 8;
/// No event encodes anywhere near this; a larger length is corruption.
const MAX_RECORD: usize = 1 << 20;

/// When appended events reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync after every command that produced events.
    Always,
    /// fsync once per group of commands, before any of them is acknowledged.
    #[default]
    Batch,
    /// Leave flushing to the OS: fastest, loses the last seconds on a power cut (not on a
    /// process crash, since writes reach the page cache before replies go out).
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "batch" => Ok(FsyncPolicy::Batch),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!(
                "fsync must be always, batch or never, got {other:?}"
            )),
        }
    }
}

/// Settings of the durable log.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Directory holding the log; `None` runs without durability (events live only in memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// When appended events reach the disk.
    pub fsync: FsyncPolicy,
    /// A segment is closed and a new one started past this size, bytes.
    pub segment_bytes: u64,
    /// Old segments are deleted while the log is larger than this, bytes...
    pub retention_bytes: u64,
    /// ...or older than this; but never a segment still needed to rebuild the state.
    #[serde(with = "humantime_serde")]
    pub retention_age: Duration,
    /// Truncate at a corrupt record in the middle of the log instead of refusing to start.
    pub truncate_corrupt: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            data_dir: None,
            fsync: FsyncPolicy::Batch,
            segment_bytes: 64 << 20,
            retention_bytes: 4 << 30,
            retention_age: Duration::from_secs(7 * 24 * 3600),
            truncate_corrupt: false,
        }
    }
}

/// Why the log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// File system trouble.
    #[error("event log I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A record that is neither valid nor a torn tail.
    #[error(
        "event log corrupt in {segment} at byte {byte}: {why}; start with --truncate-corrupt-log \
         to cut the log there (events from that point on are lost)"
    )]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte position of the bad record.
        byte: u64,
        /// What is wrong with it.
        why: String,
    },
    /// A cursor asked for an event that retention already deleted.
    #[error("event {offset} is no longer on disk (oldest kept: {oldest})")]
    Deleted {
        /// The wanted offset.
        offset: u64,
        /// The oldest offset still on disk.
        oldest: u64,
    },
    /// The replay callback refused an event.
    #[error("event log replay failed at offset {offset}: {why}")]
    Replay {
        /// The event's offset.
        offset: u64,
        /// Why.
        why: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
struct Segment {
    first_offset: u64,
    path: PathBuf,
    len: u64,
}

/// The append side of the log, owned by the dispatcher thread.
#[derive(Debug)]
pub struct EventLog {
    dir: PathBuf,
    config: LogConfig,
    segments: Vec<Segment>,
    writer: BufWriter<File>,
    next_offset: u64,
    scratch: Vec<u8>,
    dirty: bool,
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

/// The events directory under a data dir.
pub fn events_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("events")
}

fn segment_path(dir: &Path, first_offset: u64) -> PathBuf {
    dir.join(format!("{first_offset:020}.log"))
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>, LogError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let Some(first_offset) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let len = entry.metadata().map_err(io_err(&path))?.len();
        segments.push(Segment {
            first_offset,
            path,
            len,
        });
    }
    segments.sort_by_key(|s| s.first_offset);
    Ok(segments)
}

/// Encodes one record (header + payload) onto `out`.
pub fn encode_record(event: &Event, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    // Serializing plain data into a Vec cannot fail.
    let payload = postcard::to_extend(event, std::mem::take(out))
        .expect("postcard encodes events into a Vec");
    *out = payload;
    let len = (out.len() - start - RECORD_HEADER) as u32;
    let crc = crc32fast::hash(&out[start + RECORD_HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What a record at some position turned out to be.
enum Decoded {
    /// A good event and the record's total size.
    Event(Event, usize),
    /// The bytes end before the record does (a torn write, if at the end of the log).
    Truncated,
    /// The record is complete but wrong.
    Bad(String),
}

fn decode_record(bytes: &[u8]) -> Decoded {
    if bytes.len() < RECORD_HEADER {
        return Decoded::Truncated;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len == 0 || len > MAX_RECORD {
        return Decoded::Bad(format!("impossible record length {len}"));
    }
    let Some(payload) = bytes.get(RECORD_HEADER..RECORD_HEADER + len) else {
        return Decoded::Truncated;
    };
    if crc32fast::hash(payload) != crc {
        return Decoded::Bad("checksum mismatch".into());
    }
    match postcard::from_bytes::<Event>(payload) {
        Ok(event) => Decoded::Event(event, RECORD_HEADER + len),
        Err(e) => Decoded::Bad(format!("undecodable event: {e}")),
    }
}

impl EventLog {
    /// Opens (creating if needed) the log under `config.data_dir` and replays every event
    /// through `replay`, in offset order. See the module docs for torn tails and corruption.
    pub fn open(
        config: &LogConfig,
        data_dir: &Path,
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
                        replay(event).map_err(|why| LogError::Replay { offset, why })?;
                        report.events += 1;
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

        let next_offset = next_offset.unwrap_or(0);
        if segments.is_empty() {
            segments.push(new_segment(&dir, next_offset)?);
        }
        let active = segments.last().expect("at least one segment exists here");
        let file = OpenOptions::new()
            .append(true)
            .open(&active.path)
            .map_err(io_err(&active.path))?;
        Ok((
            EventLog {
                dir,
                config: config.clone(),
                segments,
                writer: BufWriter::with_capacity(1 << 16, file),
                next_offset,
                scratch: Vec::with_capacity(1 << 16),
                dirty: false,
            },
            report,
        ))
    }

    /// The offset the next appended event must have.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends events (buffered; call [`commit`](Self::commit) before acknowledging them).
    pub fn append(&mut self, events: &[Event]) -> Result<(), LogError> {
        for event in events {
            debug_assert_eq!(event.offset, self.next_offset);
            self.scratch.clear();
            encode_record(event, &mut self.scratch);
            let path = &self
                .segments
                .last()
                .expect("an active segment always exists")
                .path;
            self.writer.write_all(&self.scratch).map_err(io_err(path))?;
            if let Some(active) = self.segments.last_mut() {
                active.len += self.scratch.len() as u64;
            }
            self.next_offset = event.offset + 1;
            self.dirty = true;
        }
        Ok(())
    }

    /// Makes everything appended so far durable per the fsync policy, then rolls to a new
    /// segment if the active one is full.
    pub fn commit(&mut self) -> Result<(), LogError> {
        if !self.dirty {
            return Ok(());
        }
        let path = self
            .segments
            .last()
            .expect("an active segment always exists")
            .path
            .clone();
        self.writer.flush().map_err(io_err(&path))?;
        if self.config.fsync != FsyncPolicy::Never {
            self.writer.get_ref().sync_data().map_err(io_err(&path))?;
        }
        self.dirty = false;
        if self
            .segments
            .last()
            .is_some_and(|s| s.len >= self.config.segment_bytes)
        {
            self.roll()?;
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<(), LogError> {
        let segment = new_segment(&self.dir, self.next_offset)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&segment.path)
            .map_err(io_err(&segment.path))?;
        self.writer = BufWriter::with_capacity(1 << 16, file);
        self.segments.push(segment);
        Ok(())
    }

    /// Deletes old segments beyond the size or age limits, but never the active segment nor
    /// any segment holding an event at or after `keep_from` (events still needed to rebuild the
    /// state). Returns how many segments were deleted.
    pub fn enforce_retention(&mut self, keep_from: u64) -> Result<usize, LogError> {
        let now = SystemTime::now();
        let mut total: u64 = self.segments.iter().map(|s| s.len).sum();
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let next_first = self.segments[1].first_offset;
            if next_first > keep_from {
                break;
            }
            let too_big = total > self.config.retention_bytes;
            let too_old = fs::metadata(&oldest.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > self.config.retention_age);
            if !too_big && !too_old {
                break;
            }
            fs::remove_file(&oldest.path).map_err(io_err(&oldest.path))?;
            total -= oldest.len;
            self.segments.remove(0);
            deleted += 1;
        }
        Ok(deleted)
    }

    /// The first offset still on disk.
    pub fn first_offset(&self) -> u64 {
        self.segments
            .first()
            .map_or(self.next_offset, |s| s.first_offset)
    }
}

fn new_segment(dir: &Path, first_offset: u64) -> Result<Segment, LogError> {
    let path = segment_path(dir, first_offset);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.write_all(MAGIC).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))?;
    // Make the new file's directory entry durable too.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(Segment {
        first_offset,
        path,
        len: MAGIC.len() as u64,
    })
}

/// Whether a record's declared length reaches at least the end of `bytes`.
fn record_reaches_end(bytes: &[u8]) -> bool {
    if bytes.len() < RECORD_HEADER {
        return true;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    RECORD_HEADER + len >= bytes.len()
}

/// Reads committed events in order from some offset on, across segments: how a subscriber
/// that fell out of the in-memory ring catches up. Blocking I/O: run it off the async
/// executor (`spawn_blocking`).
#[derive(Debug)]
pub struct LogCursor {
    dir: PathBuf,
    next_offset: u64,
    reader: Option<(u64, BufReader<File>)>,
    buf: Vec<u8>,
}

impl LogCursor {
    /// A cursor that will yield events from `from` on.
    pub fn new(dir: PathBuf, from: u64) -> Self {
        LogCursor {
            dir,
            next_offset: from,
            reader: None,
            buf: Vec::new(),
        }
    }

    /// The offset of the next event this cursor yields.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Appends up to `max` events to `out`. Returns `Ok(false)` when the log holds nothing
    /// more right now, and an error if the wanted offset was deleted by retention.
    pub fn read(&mut self, max: usize, out: &mut Vec<Event>) -> Result<bool, LogError> {
        let mut got = 0;
        while got < max {
            if self.reader.is_none() && !self.open_segment()? {
                return Ok(got > 0);
            }
            let (seg_first, reader) = self.reader.as_mut().expect("opened above");
            let seg_first = *seg_first;
            let mut header = [0u8; RECORD_HEADER];
            match reader.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    // End of this segment: move on if a later one exists, else wait.
                    let later = list_segments(&self.dir)?
                        .iter()
                        .any(|s| s.first_offset > seg_first && s.first_offset <= self.next_offset);
                    // Either way drop the reader: a partial header may have been consumed, and
                    // reopening skips to `next_offset` again.
                    self.reader = None;
                    if later {
                        continue;
                    }
                    return Ok(got > 0);
                }
                Err(e) => {
                    return Err(LogError::Io {
                        path: self.dir.clone(),
                        source: e,
                    });
                }
            }
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            self.buf.clear();
            self.buf.extend_from_slice(&header);
            self.buf.resize(RECORD_HEADER + len.min(MAX_RECORD), 0);
            if reader.read_exact(&mut self.buf[RECORD_HEADER..]).is_err() {
                self.reader = None;
                return Ok(got > 0);
            }
            match decode_record(&self.buf) {
                Decoded::Event(event, _) => {
                    if event.offset >= self.next_offset {
                        self.next_offset = event.offset + 1;
                        out.push(event);
                        got += 1;
                    }
                }
                _ => {
                    // An incomplete record being written right now; retry later from scratch.
                    self.reader = None;
                    return Ok(got > 0);
                }
            }
        }
        Ok(true)
    }

    /// Opens the segment holding `next_offset` and skips to it. `Ok(false)`: not written yet.
    fn open_segment(&mut self) -> Result<bool, LogError> {
        let segments = list_segments(&self.dir)?;
        let Some(seg) = segments
            .iter()
            .rev()
            .find(|s| s.first_offset <= self.next_offset)
        else {
            return Err(LogError::Deleted {
                offset: self.next_offset,
                oldest: segments.first().map_or(0, |s| s.first_offset),
            });
        };
        let mut file = File::open(&seg.path).map_err(io_err(&seg.path))?;
        file.seek(SeekFrom::Start(MAGIC.len() as u64))
            .map_err(io_err(&seg.path))?;
        self.reader = Some((seg.first_offset, BufReader::with_capacity(1 << 16, file)));
        Ok(true)
    }
}
