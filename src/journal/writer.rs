//! The journal writer: a thread of its own that frames entries, conflates location reports,
//! rolls segments and enforces retention, so the dispatcher thread only converts a command and
//! `try_send`s it (never a disk write, never a wait: a full queue drops the entry, counted, and
//! the next entry written is preceded by an [`Input::Gap`] saying how many were lost).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::{Entry, Input, MAGIC, RecordConfig, list_segments, segment_path};
use crate::domain::LatLng;
use crate::events::log::record::encode_value;

/// Longest a written entry waits in the buffer before it reaches the OS.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// What the journal writer did, readable from any thread.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Entries written.
    pub written: AtomicU64,
    /// Entries dropped because the writer's queue was full.
    pub dropped: AtomicU64,
    /// Location reports left out by conflation.
    pub conflated: AtomicU64,
    /// Segments deleted by retention.
    pub deleted_segments: AtomicU64,
}

enum Msg {
    Entry(u64, Entry),
    Locations(u64, u64, Vec<(String, LatLng)>),
}

/// The dispatcher's handle to the journal writer thread.
#[derive(Debug)]
pub struct JournalWriter {
    tx: Option<Sender<Msg>>,
    /// Entries dropped since the last one that got through.
    gap: u64,
    stats: Arc<JournalStats>,
    thread: Option<JoinHandle<()>>,
}

impl JournalWriter {
    /// Starts a writer appending to the journal in `dir` (created if missing). An existing
    /// journal goes on in a new segment after its last good entry.
    pub fn start(dir: PathBuf, config: &RecordConfig) -> io::Result<JournalWriter> {
        fs::create_dir_all(&dir)?;
        let segments = list_segments(&dir)?;
        let next_entry = match segments.last() {
            Some((first, path)) => first + super::reader::count_good_entries(path)?,
            None => 0,
        };
        let stats = Arc::new(JournalStats::default());
        let mut state = State {
            segments: segments
                .into_iter()
                .map(|(first, path)| {
                    let len = fs::metadata(&path).map_or(0, |m| m.len());
                    (first, path, len)
                })
                .collect(),
            file: None,
            dir,
            next_entry,
            config: config.clone(),
            last_kept: HashMap::new(),
            scratch: Vec::with_capacity(1 << 12),
            stats: stats.clone(),
        };
        state.roll()?;
        let (tx, rx) = crossbeam_channel::bounded(config.queue.max(1));
        let thread = std::thread::Builder::new()
            .name("input-journal".into())
            .spawn(move || state.run(rx))?;
        Ok(JournalWriter {
            tx: Some(tx),
            gap: 0,
            stats,
            thread: Some(thread),
        })
    }

    /// Records one input executed at `now_ms`. Never blocks.
    pub fn record(&mut self, now_ms: u64, input: Input) {
        let msg = Msg::Entry(self.gap, Entry { now_ms, input });
        self.send(msg);
    }

    /// Records a batch of location reports (conflated on the writer thread). Never blocks.
    pub fn record_locations(&mut self, now_ms: u64, updates: Vec<(String, LatLng)>) {
        let msg = Msg::Locations(self.gap, now_ms, updates);
        self.send(msg);
    }

    fn send(&mut self, msg: Msg) {
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(msg) {
            Ok(()) => self.gap = 0,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.gap += 1;
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The writer's counters.
    pub fn stats(&self) -> &Arc<JournalStats> {
        &self.stats
    }

    /// Writes what was queued, flushes and syncs, and stops the thread.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            // A panic on the writer thread was already reported by the panic hook.
            let _ = thread.join();
        }
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

struct State {
    dir: PathBuf,
    /// (first entry, path, bytes), oldest first; the last is the one being written.
    segments: Vec<(u64, PathBuf, u64)>,
    file: Option<BufWriter<File>>,
    next_entry: u64,
    config: RecordConfig,
    /// Engine time of each driver's last kept location report.
    last_kept: HashMap<String, u64>,
    scratch: Vec<u8>,
    stats: Arc<JournalStats>,
}

impl State {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut last_flush = Instant::now();
        loop {
            match rx.recv_timeout(FLUSH_EVERY) {
                Ok(msg) => {
                    if let Err(e) = self.handle(msg) {
                        tracing::error!(error = %e, dir = %self.dir.display(),
                            "input journal write failed; recording stops");
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                last_flush = Instant::now();
                if let Some(file) = &mut self.file {
                    let _ = file.flush();
                }
            }
        }
        if let Some(mut file) = self.file.take() {
            let synced = file.flush().and_then(|()| file.get_ref().sync_data());
            if let Err(e) = synced {
                tracing::warn!(error = %e, "input journal: final flush failed");
            }
        }
    }

    fn handle(&mut self, msg: Msg) -> io::Result<()> {
        let (gap, entry) = match msg {
            Msg::Entry(gap, entry) => (gap, entry),
            Msg::Locations(gap, now_ms, mut updates) => {
                self.conflate(now_ms, &mut updates);
                if updates.is_empty() && gap == 0 {
                    return Ok(());
                }
                let input = Input::Locations { updates };
                (gap, Entry { now_ms, input })
            }
        };
        if gap > 0 {
            let lost = Entry {
                now_ms: entry.now_ms,
                input: Input::Gap { lost: gap },
            };
            self.write(&lost)?;
        }
        self.write(&entry)
    }

    fn conflate(&mut self, now_ms: u64, updates: &mut Vec<(String, LatLng)>) {
        let interval = self.config.location_interval.as_millis() as u64;
        if interval == 0 {
            return;
        }
        let before = updates.len();
        updates.retain(
            |(driver, _)| match self.last_kept.get_mut(driver.as_str()) {
                Some(at) if now_ms < at.saturating_add(interval) => false,
                Some(at) => {
                    *at = now_ms;
                    true
                }
                None => {
                    self.last_kept.insert(driver.clone(), now_ms);
                    true
                }
            },
        );
        let left_out = (before - updates.len()) as u64;
        self.stats.conflated.fetch_add(left_out, Ordering::Relaxed);
    }

    fn write(&mut self, entry: &Entry) -> io::Result<()> {
        self.scratch.clear();
        encode_value(entry, &mut self.scratch);
        let file = self
            .file
            .as_mut()
            .expect("a segment is open while the writer runs");
        file.write_all(&self.scratch)?;
        self.next_entry += 1;
        self.stats.written.fetch_add(1, Ordering::Relaxed);
        let active = self
            .segments
            .last_mut()
            .expect("the active segment is listed");
        active.2 += self.scratch.len() as u64;
        if active.2 >= self.config.segment_bytes {
            self.roll()?;
        }
        Ok(())
    }

    /// Closes the active segment (if any), starts the next, and applies retention.
    fn roll(&mut self) -> io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush()?;
        }
        let path = segment_path(&self.dir, self.next_entry);
        let mut file = BufWriter::with_capacity(1 << 16, File::create(&path)?);
        file.write_all(MAGIC)?;
        self.file = Some(file);
        self.segments
            .push((self.next_entry, path, MAGIC.len() as u64));
        self.enforce_retention();
        Ok(())
    }

    fn enforce_retention(&mut self) {
        let mut total: u64 = self.segments.iter().map(|s| s.2).sum();
        while total > self.config.retention_bytes && self.segments.len() > 1 {
            let (_, path, len) = self.segments.remove(0);
            total -= len;
            match fs::remove_file(&path) {
                Ok(()) => {
                    self.stats.deleted_segments.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => warn_remove(&path, &e),
            }
        }
    }
}

fn warn_remove(path: &Path, e: &io::Error) {
    tracing::warn!(error = %e, segment = %path.display(), "input journal retention failed");
}
