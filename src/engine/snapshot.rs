//! Snapshots: the durable state at an offset, on disk, so recovery replays only the log after
//! it and retention may delete the segments before it.
//!
//! Layout: `<data_dir>/snapshots/<next offset, 20 digits>.snap`, one file per snapshot:
//! `[magic "DSPSNAP" + format version: 8 bytes][next offset: u64 LE][payload length: u64 LE]
//! [crc32 of offset and payload: u32 LE][payload]`, the payload a [`StateImage`] encoded with
//! postcard (the format the log's records use) in the format the version names
//! (`engine::state` `wire.rs`: version 2 is written, 1 and 2 are read; another version is
//! refused with a message naming it and the ones this build reads). A file is written to a
//! `.tmp` name, fsynced, renamed into place and the directory fsynced, so a crash leaves either
//! the whole snapshot or none (a stray `.tmp` is ignored and deleted later).
//!
//! Who does what: the dispatcher thread copies the state at a group boundary ([`StateImage`],
//! no encoding) and hands it to the log writer after that group's events; the writer passes it
//! on once everything before it is durable, so a snapshot never runs ahead of the log; the
//! [`Snapshotter`] thread (at a lower priority: [`SNAPSHOT_NICE`]) encodes, writes and prunes
//! it. Recovery (`engine::recovery`) takes the newest snapshot that decodes and fits, warning
//! about each one it skips.
//!
//! Without a local log (cluster mode) the same thread hands the images to a [`SnapshotSink`]
//! instead, with the log position each was taken at (`remote.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Receiver;

use super::latest::Latest;
use super::state::StateImage;
use crate::events::LogError;

mod remote;
pub use remote::SnapshotSink;
pub(super) use remote::start_remote;

/// First bytes of every snapshot file: "DSPSNAP", then the format version (a byte).
const MAGIC: &[u8; 7] = b"DSPSNAP";
/// Magic, offset, length, crc.
const HEADER: usize = 8 + 8 + 8 + 4;
/// Added to the snapshot thread's nice value: encoding and writing a snapshot is background
/// work, and on a machine whose cores the gRPC workers, the dispatcher and the log writer share
/// it should give way to them (in the city run the snapshot thread encodes 8-16 MB every 15 s;
/// without snapshots the request->offer p99 was ~0.9x).
const SNAPSHOT_NICE: i32 = 10;
/// No floor yet: retention falls back to what the state itself needs.
pub(super) const NO_FLOOR: u64 = u64::MAX;

/// The snapshots directory under a data dir.
pub fn snapshots_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

/// Encodes an image as a whole snapshot file (format [`StateImage::FORMAT`]).
pub fn encode(image: &StateImage) -> Vec<u8> {
    frame(image, StateImage::FORMAT, |out| image.encode_into(out))
}

/// Encodes an image as a format 1 snapshot file, as builds before format 2 wrote them (for the
/// tests and the bench comparing the formats; snapshots are written by [`encode`]).
#[doc(hidden)]
pub fn encode_format_1(image: &StateImage) -> Vec<u8> {
    frame(image, 1, |out| image.encode_format_1(out))
}

/// The header around a payload `write` appends.
fn frame(image: &StateImage, version: u8, write: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 64 * image.driver_count());
    out.extend_from_slice(MAGIC);
    out.push(version);
    out.extend_from_slice(&image.next_offset().to_le_bytes());
    out.extend_from_slice(&[0; 12]);
    let mut out = write(out);
    let len = (out.len() - HEADER) as u64;
    out[16..24].copy_from_slice(&len.to_le_bytes());
    let crc = checksum(&out[8..16], &out[HEADER..]);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a snapshot file; says what is wrong with one that is not whole and valid.
pub fn decode(bytes: &[u8]) -> Result<StateImage, String> {
    if bytes.len() < HEADER {
        return Err(format!("{} bytes, shorter than the header", bytes.len()));
    }
    if bytes[..7] != MAGIC[..] {
        return Err("not a snapshot file (bad magic)".into());
    }
    let version = bytes[7];
    if !StateImage::READS.contains(&version) {
        return Err(format!(
            "snapshot format version {version}; this build reads versions {:?}",
            StateImage::READS
        ));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let (offset, len) = (word(8), word(16));
    let crc = u32::from_le_bytes(bytes[24..28].try_into().unwrap_or([0; 4]));
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(format!(
            "payload of {} bytes where the header says {len} (torn write?)",
            payload.len()
        ));
    }
    if checksum(&bytes[8..16], payload) != crc {
        return Err("checksum mismatch".into());
    }
    let image = StateImage::decode_from(version, payload)?;
    if image.next_offset() != offset {
        return Err(format!(
            "header offset {offset} but the state is at {}",
            image.next_offset()
        ));
    }
    Ok(image)
}

fn checksum(offset: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(offset);
    h.update(payload);
    h.finalize()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The snapshot files of one data dir.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    /// The store under `data_dir` (created on first write).
    pub fn new(data_dir: &Path) -> Self {
        SnapshotStore {
            dir: snapshots_dir(data_dir),
        }
    }

    /// The path of the snapshot at `offset`.
    pub fn path(&self, offset: u64) -> PathBuf {
        self.dir.join(format!("{offset:020}.snap"))
    }

    /// Every snapshot file, by offset, oldest first (none if the directory does not exist).
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, LogError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err(&self.dir))?.path();
            let offset = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".snap"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(offset) = offset {
                out.push((offset, path));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads and decodes one snapshot file.
    pub fn load(&self, path: &Path) -> Result<StateImage, String> {
        let bytes = fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
        decode(&bytes)
    }

    /// Writes `image` atomically (temp file, fsync, rename, fsync of the directory); returns
    /// the file size, bytes.
    pub fn write(&self, image: &StateImage) -> Result<u64, LogError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let bytes = encode(image);
        let path = self.path(image.next_offset());
        let tmp = path.with_extension("snap.tmp");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(&bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(bytes.len() as u64)
    }

    /// Deletes every snapshot (and stray temp file) except the offsets in `keep`.
    pub fn prune(&self, keep: &[u64]) -> Result<usize, LogError> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        let mut deleted = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let offset = name
                .strip_suffix(".snap")
                .and_then(|n| n.parse::<u64>().ok());
            let stray = name.ends_with(".snap.tmp");
            if stray || offset.is_some_and(|o| !keep.contains(&o)) {
                fs::remove_file(&path).map_err(io_err(&path))?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// The snapshot writer thread: encodes and writes the images the log writer passes on, keeps
/// the newest `keep` that fit in half the retention budget (always the newest one), and
/// publishes the oldest kept offset (the retention floor) and the bytes the snapshots take.
/// (A remote [`SnapshotSink`] gets the same thread, with its own loop: `remote.rs`.)
pub(super) struct Snapshotter {
    /// One waiting image at most, and the newest wins: it replaces an older one still
    /// waiting, so once the dispatcher goes quiet its last image is always written.
    slot: Latest<Job>,
    thread: JoinHandle<()>,
}

/// An image and the log's position when it was taken ([`super::CommitLog::position`]).
pub(super) type Job = (Box<StateImage>, u64);

impl Snapshotter {
    /// Starts the thread. `known` are the snapshots already on disk known to be good (the one
    /// recovery used), oldest first; `floor` gets the oldest kept offset.
    pub(super) fn start(
        store: SnapshotStore,
        keep: Keep,
        known: Vec<u64>,
        floor: Arc<AtomicU64>,
    ) -> Snapshotter {
        if let Some(oldest) = known.first() {
            floor.store(*oldest, Ordering::Relaxed);
        }
        Snapshotter::spawn(move |rx| run(store, keep, known, floor, rx))
    }

    /// Starts the thread running `body` over the images handed over.
    pub(super) fn spawn(body: impl FnOnce(Receiver<Job>) + Send + 'static) -> Snapshotter {
        let (slot, rx) = Latest::new();
        let thread = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                lower_priority();
                body(rx)
            })
            .expect("spawning the snapshot thread needs only memory");
        Snapshotter { slot, thread }
    }

    /// Hands an image over. While one is being written, this one waits in place of any older
    /// image still waiting (which is dropped: the newer one holds more). False if the thread
    /// is gone.
    pub(super) fn offer(&self, image: Box<StateImage>, position: u64) -> bool {
        let (taken, replaced) = self.slot.offer((image, position));
        if replaced {
            tracing::debug!("snapshot image replaced by a newer one while waiting");
        }
        taken
    }

    /// Writes what it was given, then waits for the thread.
    pub(super) fn finish(self) {
        drop(self.slot);
        // A panic on the snapshot thread was already reported by the panic hook.
        let _ = self.thread.join();
    }
}

/// How many snapshots the thread keeps: at most `count` (at least 1), and beyond the newest
/// only while they fit in half of `budget` bytes (`log.retention_bytes`) together with the
/// next one (sized as the newest): the rest of the budget is the log's. `bytes` is published
/// for log retention: the kept snapshots plus the one being written.
#[derive(Clone, Debug)]
pub(super) struct Keep {
    /// `log.snapshot_keep`.
    pub(super) count: usize,
    /// `log.retention_bytes`.
    pub(super) budget: u64,
    /// What the snapshots take of the budget now, bytes.
    pub(super) bytes: Arc<AtomicU64>,
}

impl Keep {
    /// How many of the oldest `sizes` (kept snapshots' bytes, oldest first) to delete so the
    /// rest, plus a next snapshot of `next` bytes, keep within the count and half the budget;
    /// never the newest.
    pub(super) fn excess(&self, sizes: &[u64], next: u64) -> usize {
        let by_count = sizes.len().saturating_sub(self.count.max(1));
        let mut total: u64 = sizes[by_count..].iter().sum::<u64>() + next;
        let mut drop = by_count;
        while drop + 1 < sizes.len() && total > self.budget / 2 {
            total -= sizes[drop];
            drop += 1;
        }
        drop
    }
}

/// Lowers the calling thread's CPU priority by [`SNAPSHOT_NICE`] (Linux: a nice value is per
/// thread; at most 19). Failing to is harmless: the snapshot is written all the same.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        let lowered = getpriority_process(me)
            .and_then(|nice| setpriority_process(me, (nice + SNAPSHOT_NICE).min(19)));
        if let Err(e) = lowered {
            tracing::debug!(error = %e, "snapshot thread keeps its priority");
        }
    }
}

fn run(
    store: SnapshotStore,
    keep: Keep,
    known: Vec<u64>,
    floor: Arc<AtomicU64>,
    rx: Receiver<Job>,
) {
    // Kept snapshots, oldest first, with their sizes.
    let mut kept: Vec<(u64, u64)> = known
        .into_iter()
        .map(|o| (o, fs::metadata(store.path(o)).map_or(0, |m| m.len())))
        .collect();
    // Deletes the oldest kept snapshots beyond what `keep` allows with a next one of `next`
    // bytes coming, then publishes the floor and the bytes taken.
    let fit = |kept: &mut Vec<(u64, u64)>, next: u64| {
        let sizes: Vec<u64> = kept.iter().map(|k| k.1).collect();
        let excess = keep.excess(&sizes, next);
        if excess > 0 {
            kept.drain(..excess);
            let offsets: Vec<u64> = kept.iter().map(|k| k.0).collect();
            if let Err(e) = store.prune(&offsets) {
                tracing::warn!(error = %e, "deleting old snapshots failed");
            }
        }
        if let Some(oldest) = kept.first() {
            floor.store(oldest.0, Ordering::Relaxed);
        }
        let taken = kept.iter().map(|k| k.1).sum::<u64>() + next;
        keep.bytes.store(taken, Ordering::Relaxed);
    };
    let newest = kept.last().map_or(0, |k| k.1);
    fit(&mut kept, newest);
    while let Ok((image, _)) = rx.recv() {
        let started = Instant::now();
        let offset = image.next_offset();
        // Room for the file about to be written, sized as the newest.
        let newest = kept.last().map_or(0, |k| k.1);
        fit(&mut kept, newest);
        match store.write(&image) {
            Ok(bytes) => {
                kept.retain(|k| k.0 != offset);
                kept.push((offset, bytes));
                // Also deletes any stray temp file.
                let offsets: Vec<u64> = kept.iter().map(|k| k.0).collect();
                if let Err(e) = store.prune(&offsets) {
                    tracing::warn!(error = %e, "deleting old snapshots failed");
                }
                // Room for the next one.
                fit(&mut kept, bytes);
                tracing::info!(
                    offset,
                    bytes,
                    kept = kept.len(),
                    drivers = image.driver_count(),
                    write_ms = started.elapsed().as_millis() as u64,
                    "snapshot written"
                );
            }
            // The log still holds everything: a failed snapshot only means a longer replay.
            Err(e) => tracing::warn!(error = %e, offset, "snapshot failed"),
        }
    }
}

/// The snapshot thread and the dispatcher's schedule for a logged engine (none when
/// `log.snapshot_keep` is 0). `recovered` is the snapshot recovery started from.
pub(super) fn start(
    config: &crate::config::Config,
    recovered: Option<u64>,
    offset: u64,
    now_ms: u64,
) -> (Option<Snapshotter>, Option<Schedule>) {
    let Some(dir) = &config.log.data_dir else {
        return (None, None);
    };
    if config.log.snapshot_keep == 0 {
        return (None, None);
    }
    let schedule = Schedule::new(&config.log, offset, now_ms);
    let keep = Keep {
        count: config.log.snapshot_keep,
        budget: config.log.retention_bytes,
        bytes: schedule.disk.clone(),
    };
    let snapshotter = Snapshotter::start(
        SnapshotStore::new(dir),
        keep,
        recovered.into_iter().collect(),
        schedule.floor.clone(),
    );
    (Some(snapshotter), Some(schedule))
}

/// When the dispatcher thread copies the state: every `every_events` events or `interval_ms`
/// of engine time, whichever comes first (0 turns either off), at a group boundary.
#[derive(Debug)]
pub(super) struct Schedule {
    every_events: u64,
    interval_ms: u64,
    last_offset: u64,
    next_at_ms: u64,
    /// The oldest kept snapshot's offset, [`NO_FLOOR`] before the first one.
    pub(super) floor: Arc<AtomicU64>,
    /// Bytes the snapshots take of the retention budget (kept ones and the next).
    pub(super) disk: Arc<AtomicU64>,
}

impl Schedule {
    /// A schedule from the log settings, counting from `offset` at `now_ms`.
    pub(super) fn new(config: &crate::events::LogConfig, offset: u64, now_ms: u64) -> Self {
        let interval_ms = config.snapshot_interval.as_millis() as u64;
        Schedule {
            every_events: config.snapshot_every_events,
            interval_ms,
            last_offset: offset,
            next_at_ms: now_ms.saturating_add(interval_ms),
            floor: Arc::new(AtomicU64::new(NO_FLOOR)),
            disk: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether a snapshot is due at `offset` (the next event's) and `now_ms`; if so, counts
    /// from here.
    pub(super) fn due(&mut self, offset: u64, now_ms: u64) -> bool {
        let new_events = offset.saturating_sub(self.last_offset);
        let by_count = self.every_events > 0 && new_events >= self.every_events;
        let by_time = self.interval_ms > 0 && now_ms >= self.next_at_ms && new_events > 0;
        if by_count || by_time {
            self.last_offset = offset;
            self.next_at_ms = now_ms.saturating_add(self.interval_ms);
        }
        by_count || by_time
    }

    /// Bytes of the retention budget the snapshots take: log retention keeps the log within
    /// the rest.
    pub(super) fn disk_bytes(&self) -> u64 {
        self.disk.load(Ordering::Relaxed)
    }

    /// Where log retention may delete up to: the oldest kept snapshot, or `needed` (what the
    /// state itself needs) before there is one.
    pub(super) fn retention_floor(&self, needed: u64) -> u64 {
        match self.floor.load(Ordering::Relaxed) {
            NO_FLOOR => needed,
            floor => floor,
        }
    }
}

#[cfg(test)]
mod tests;
