//! The durable event log: what makes "no accepted trip and no event is ever lost" true.
//!
//! Layout: `<data_dir>/events/<first offset, 20 digits>.log`, one file per segment; the record
//! format is in [`record`]. Offsets are consecutive across segments.
//!
//! Who does what (see `engine::writer`): with a log, the engine runs a dedicated `event-log`
//! writer thread that owns the [`EventLog`]. The dispatcher thread decides and hands each
//! command group's events and pending replies to it, in order. The writer appends everything
//! that queued up ([`appender`]), makes it durable with one fsync per group ([`EventLog::commit`],
//! group commit), then publishes the events to the bus and only then runs the replies. So an
//! acknowledged call is on disk (with `always` or `batch` fsync) before any client or subscriber
//! sees it. Without a log the dispatcher thread itself publishes and replies.
//!
//! Recovery ([`EventLog::open`], in [`recovery`]) streams every record back through a callback,
//! cutting a torn tail and refusing (or, on request, truncating at) a corrupt record.
//!
//! Readers that fall behind the in-memory ring read old events with a [`LogCursor`]
//! ([`cursor`]); `events::follow` does that for every stream.

mod appender;
mod cursor;
pub mod record;
mod recovery;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use appender::EventLog;
pub use cursor::LogCursor;
pub use record::encode_record;
pub use recovery::RecoveryReport;

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

/// What the process does once the log cannot be written (disk full, I/O error). Either way
/// health turns NOT_SERVING and every call gets UNAVAILABLE naming the cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLogFailure {
    /// Drain and exit non-zero, so an orchestrator restarts the process or fails over.
    #[default]
    Exit,
    /// Keep running, refusing every call, until an operator restarts it.
    Stay,
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
    /// A segment is closed and a new one started past this size, bytes (at most a sixteenth
    /// of `retention_bytes`, see [`LogConfig::effective_segment_bytes`]).
    pub segment_bytes: u64,
    /// Old segments (and, beyond the newest, old snapshots) are deleted while the data dir,
    /// log and snapshots together, is larger than this, bytes...
    pub retention_bytes: u64,
    /// ...or older than this; but never a segment still needed to rebuild the state.
    #[serde(with = "humantime_serde")]
    pub retention_age: Duration,
    /// Truncate at a corrupt record in the middle of the log instead of refusing to start.
    pub truncate_corrupt: bool,
    /// A snapshot of the state is written after this many events (0: not by count).
    pub snapshot_every_events: u64,
    /// ...or after this much time with new events (0: not by time).
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// Snapshots kept (beyond the newest, only while they fit in half of `retention_bytes`);
    /// the log is kept from the oldest of them. 0 turns snapshots off
    /// (recovery replays the whole log, retention keeps what the state needs).
    pub snapshot_keep: usize,
    /// What the process does once the log cannot be written.
    pub on_failure: OnLogFailure,
    /// Fault injection for tests: the commit after this many succeeded fails as a full disk
    /// would. Not a setting (never read from a file).
    #[doc(hidden)]
    #[serde(skip)]
    pub fail_after_commits: Option<u64>,
}

impl LogConfig {
    /// The smallest segment cap retention ever imposes, bytes.
    const MIN_CAPPED_SEGMENT: u64 = 64 << 10;

    /// The size a segment rolls at: `segment_bytes`, but at most a sixteenth of
    /// `retention_bytes` (never below 64 KiB), because retention deletes whole segments: with
    /// segments as large as the budget, the data dir could not stay within it.
    pub fn effective_segment_bytes(&self) -> u64 {
        let cap = (self.retention_bytes / 16).max(Self::MIN_CAPPED_SEGMENT);
        self.segment_bytes.min(cap)
    }
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
            // A restart replays at most about this much log after the newest snapshot: 15 s
            // of city load (1,000 requests/s, ~6,600 events/s) is ~100k events, a fraction of
            // a second to replay (see the README's restart figures).
            snapshot_every_events: 100_000,
            snapshot_interval: Duration::from_secs(15),
            snapshot_keep: 2,
            on_failure: OnLogFailure::Exit,
            fail_after_commits: None,
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

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One segment file as listed on disk.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    first_offset: u64,
    path: PathBuf,
    len: u64,
}

/// The events directory under a data dir.
pub fn events_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("events")
}

pub(super) fn segment_path(dir: &Path, first_offset: u64) -> PathBuf {
    dir.join(format!("{first_offset:020}.log"))
}

pub(super) fn list_segments(dir: &Path) -> Result<Vec<Segment>, LogError> {
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

#[cfg(test)]
mod tests {
    use super::LogConfig;

    #[test]
    fn segments_are_capped_at_a_sixteenth_of_retention_but_not_below_64_kib() {
        let mut c = LogConfig::default();
        assert_eq!(
            c.effective_segment_bytes(),
            64 << 20,
            "4 GiB retention: as set"
        );
        c.retention_bytes = 256 << 20;
        assert_eq!(c.effective_segment_bytes(), 16 << 20);
        c.retention_bytes = 0;
        assert_eq!(c.effective_segment_bytes(), 64 << 10);
        c.segment_bytes = 1024;
        assert_eq!(
            c.effective_segment_bytes(),
            1024,
            "smaller than the cap: as set"
        );
    }
}
