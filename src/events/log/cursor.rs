//! Reading committed events back in order from any offset, across segments, while the writer
//! keeps appending: how a follower that fell out of the in-memory ring catches up.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::record::{Decoded, MAGIC, MAX_RECORD, RECORD_HEADER, decode_record};
use super::{LogError, io_err, list_segments};
use crate::events::Event;

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
