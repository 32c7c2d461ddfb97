//! Reading a journal back, entry by entry across its segments. A record that is cut short or
//! fails its checksum is reported with its segment file and byte position; the reader stops
//! there, or with `skip_corrupt` notes it and goes on (past the record when its length is
//! believable, else at the next segment).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Entry, MAGIC, list_segments};
use crate::events::log::record::{Frame, MAX_RECORD, RECORD_HEADER, decode_value};

/// Why a journal could not be read (further).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// File system trouble.
    #[error("input journal I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A record that is wrong, or that the file ends inside of.
    #[error(
        "input journal {what} in {segment} at byte {byte}{why}; replay stops here \
         (--skip-corrupt goes on past it)"
    )]
    Corrupt {
        /// `corrupt` or `truncated`.
        what: &'static str,
        /// The segment file.
        segment: PathBuf,
        /// Byte position of the bad record in it.
        byte: u64,
        /// What is wrong with it (empty for a truncation).
        why: String,
    },
    /// The directory holds no journal.
    #[error("no input journal segments (*.jnl) in {0}")]
    Empty(PathBuf),
}

/// The entries of a journal, oldest first.
#[derive(Debug)]
pub struct JournalReader {
    segments: Vec<(u64, PathBuf)>,
    next_segment: usize,
    current: Option<PathBuf>,
    bytes: Vec<u8>,
    pos: usize,
    skip_corrupt: bool,
    done: bool,
    /// What `skip_corrupt` went past, in order.
    pub skipped: Vec<JournalError>,
}

impl JournalReader {
    /// Opens the journal in `dir`.
    pub fn open(dir: &Path, skip_corrupt: bool) -> Result<JournalReader, JournalError> {
        let segments = list_segments(dir).map_err(|source| JournalError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if segments.is_empty() {
            return Err(JournalError::Empty(dir.to_path_buf()));
        }
        Ok(JournalReader {
            segments,
            next_segment: 0,
            current: None,
            bytes: Vec::new(),
            pos: 0,
            skip_corrupt,
            done: false,
            skipped: Vec::new(),
        })
    }

    /// Index of the first entry still on disk (retention may have deleted older ones).
    pub fn first_entry(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.0)
    }

    /// Loads the next segment; false when there is none.
    fn load_next(&mut self) -> Result<bool, JournalError> {
        let Some((_, path)) = self.segments.get(self.next_segment).cloned() else {
            return Ok(false);
        };
        self.next_segment += 1;
        self.bytes = fs::read(&path).map_err(|source| JournalError::Io {
            path: path.clone(),
            source,
        })?;
        self.current = Some(path);
        self.pos = MAGIC.len();
        if !self.bytes.starts_with(MAGIC) {
            self.pos = self.bytes.len();
            let why = if self.bytes.len() >= MAGIC.len() && self.bytes[..7] == MAGIC[..7] {
                format!(
                    "journal format version {}, this build reads version {} (record it again \
                     with this build)",
                    self.bytes[7], MAGIC[7]
                )
            } else {
                "not a journal segment (bad magic)".into()
            };
            return Err(self.corrupt("corrupt", 0, why));
        }
        Ok(true)
    }

    fn corrupt(&self, what: &'static str, byte: usize, why: String) -> JournalError {
        JournalError::Corrupt {
            what,
            segment: self.current.clone().unwrap_or_default(),
            byte: byte as u64,
            why: if why.is_empty() {
                why
            } else {
                format!(": {why}")
            },
        }
    }

    /// The next entry, or the error that ends (or, skipped, interrupts) the journal.
    fn step(&mut self) -> Option<Result<Entry, JournalError>> {
        loop {
            if self.current.is_none() || self.pos >= self.bytes.len() {
                match self.load_next() {
                    Ok(true) => continue,
                    Ok(false) => return None,
                    Err(e) => return Some(Err(e)),
                }
            }
            let at = self.pos;
            match decode_value::<Entry>(&self.bytes[at..]) {
                Frame::Value(entry, size) => {
                    self.pos += size;
                    return Some(Ok(entry));
                }
                Frame::Truncated => {
                    self.pos = self.bytes.len();
                    return Some(Err(self.corrupt("truncated", at, String::new())));
                }
                Frame::Bad(why) => {
                    let len = u32::from_le_bytes(
                        self.bytes[at..at + 4]
                            .try_into()
                            .expect("a header is 8 bytes"),
                    ) as usize;
                    // A believable length lets the reader go on at the next record; a wrong
                    // one leaves nothing to trust in this segment.
                    self.pos = if len > 0 && len <= MAX_RECORD {
                        at + RECORD_HEADER + len
                    } else {
                        self.bytes.len()
                    };
                    return Some(Err(self.corrupt("corrupt", at, why)));
                }
            }
        }
    }
}

impl Iterator for JournalReader {
    type Item = Result<Entry, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            match self.step()? {
                Ok(entry) => return Some(Ok(entry)),
                Err(e @ JournalError::Corrupt { .. }) if self.skip_corrupt => {
                    tracing::warn!(error = %e, "input journal: skipping a bad record");
                    self.skipped.push(e);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// How many good entries a segment holds before its end or its first bad record.
pub(crate) fn count_good_entries(path: &Path) -> io::Result<u64> {
    let bytes = fs::read(path)?;
    if !bytes.starts_with(MAGIC) {
        return Ok(0);
    }
    let mut pos = MAGIC.len();
    let mut n = 0;
    while let Frame::Value(_, size) = decode_value::<Entry>(&bytes[pos..]) {
        pos += size;
        n += 1;
    }
    Ok(n)
}
