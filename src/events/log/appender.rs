//! The append side: buffered appends to the active segment, commit (flush + fsync per policy),
//! rolling to a new segment when full, and retention. Owned by one thread: the engine's
//! `event-log` writer thread when the log is on (see the [`super`] docs).

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::record::{MAGIC, encode_record};
use super::{FsyncPolicy, LogConfig, LogError, Segment, io_err, segment_path};
use crate::events::Event;

/// The append side of the log, owned by the engine's log writer thread.
#[derive(Debug)]
pub struct EventLog {
    dir: PathBuf,
    config: LogConfig,
    segments: Vec<Segment>,
    writer: BufWriter<File>,
    next_offset: u64,
    scratch: Vec<u8>,
    dirty: bool,
    commits: u64,
}

impl EventLog {
    /// The appender over what recovery found: `segments` (never empty is made sure of here),
    /// the last of which is the active one, and the offset the next event gets.
    pub(super) fn resume(
        dir: PathBuf,
        config: &LogConfig,
        mut segments: Vec<Segment>,
        next_offset: u64,
    ) -> Result<EventLog, LogError> {
        if segments.is_empty() {
            segments.push(new_segment(&dir, next_offset)?);
        }
        let active = segments.last().expect("at least one segment exists here");
        let file = OpenOptions::new()
            .append(true)
            .open(&active.path)
            .map_err(io_err(&active.path))?;
        Ok(EventLog {
            dir,
            config: config.clone(),
            segments,
            writer: BufWriter::with_capacity(1 << 16, file),
            next_offset,
            scratch: Vec::with_capacity(1 << 16),
            dirty: false,
            commits: 0,
        })
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
        if self.config.fail_after_commits == Some(self.commits) {
            let injected = std::io::Error::from_raw_os_error(28); // ENOSPC
            return Err(io_err(&path)(injected));
        }
        self.commits += 1;
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
        self.enforce_retention_beside(keep_from, 0)
    }

    /// [`enforce_retention`](Self::enforce_retention) when `beside` bytes of the same data
    /// dir's budget are taken by something else (the snapshots): the log may then use only
    /// `retention_bytes - beside`.
    pub fn enforce_retention_beside(
        &mut self,
        keep_from: u64,
        beside: u64,
    ) -> Result<usize, LogError> {
        let limit = self.config.retention_bytes.saturating_sub(beside);
        let now = SystemTime::now();
        let mut total: u64 = self.segments.iter().map(|s| s.len).sum();
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let next_first = self.segments[1].first_offset;
            if next_first > keep_from {
                break;
            }
            let too_big = total > limit;
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
