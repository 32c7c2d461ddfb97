//! Region snapshots in cluster mode, so a takeover does not replay a region's whole stream.
//!
//! A region's snapshots live in JetStream, next to its stream: the object store bucket
//! [`BUCKET`] (replicated like the streams), one object per snapshot named
//! `<region>.<next offset, 20 digits>.<stream sequence, 20 digits>`, holding a snapshot file
//! (`engine::snapshot::encode`: magic, format version, CRC) of the state that the stream's
//! messages up to that sequence build. The owner's snapshot thread stores one on the engine's
//! schedule (`log.snapshot_every_events`, `log.snapshot_interval`), keeps the newest
//! `log.snapshot_keep`, and with `cluster.trim_stream` purges the stream's messages up to the
//! oldest kept one: the stream stays bounded, and a takeover reads the newest snapshot that
//! decodes plus the messages after it, so its time no longer grows with the region's uptime.
//!
//! Why this is safe with two writers (an old owner's snapshot thread may still finish an image
//! after a takeover): an image is handed over only after its messages are acknowledged, so
//! every stored snapshot is true of the stream up to its sequence, whoever stored it; deletion
//! always keeps the newest, and the purge never passes the oldest kept, so the newest snapshot
//! always has every message after it, and so does the one before it, which the loader falls
//! back to when the newest does not decode.

use async_nats::jetstream::{self, object_store};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;

use super::stream_log::stream_name;
use crate::engine::SnapshotSink;
use crate::engine::snapshot;
use crate::engine::state::StateImage;

/// The object store bucket holding every region's snapshots.
pub(crate) const BUCKET: &str = "DISPATCH_SNAPSHOTS";

/// Opens (creating if absent) the snapshot bucket with `replicas` copies.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<object_store::ObjectStore, String> {
    if let Ok(store) = js.get_object_store(BUCKET).await {
        return Ok(store);
    }
    let created = js
        .create_object_store(object_store::Config {
            bucket: BUCKET.into(),
            description: Some("dispatchd region snapshots".into()),
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another process created it first.
        Err(first) => js
            .get_object_store(BUCKET)
            .await
            .map_err(|e| format!("the snapshot bucket {BUCKET}: {first}; then: {e}")),
    }
}

/// One stored snapshot of a region.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stored {
    /// The offset of the first event the snapshot does not hold.
    pub(crate) offset: u64,
    /// The last stream sequence whose messages it holds.
    pub(crate) seq: u64,
}

impl Stored {
    fn name(&self, region: &str) -> String {
        format!("{region}.{:020}.{:020}", self.offset, self.seq)
    }

    fn parse(region: &str, name: &str) -> Option<Stored> {
        let rest = name.strip_prefix(region)?.strip_prefix('.')?;
        let (offset, seq) = rest.split_once('.')?;
        Some(Stored {
            offset: offset.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// `region`'s stored snapshots, oldest first.
pub(crate) async fn list(
    store: &object_store::ObjectStore,
    region: &str,
) -> Result<Vec<Stored>, String> {
    let mut objects = store
        .list()
        .await
        .map_err(|e| format!("region {region}: listing its snapshots: {e}"))?;
    let mut out = Vec::new();
    while let Some(info) = objects.next().await {
        let info = info.map_err(|e| format!("region {region}: listing its snapshots: {e}"))?;
        if let Some(stored) = Stored::parse(region, &info.name).filter(|_| !info.deleted) {
            out.push(stored);
        }
    }
    out.sort();
    Ok(out)
}

/// The newest snapshot of `region` that reads and decodes, with the stream sequence it
/// covers; each newer one that does not is skipped with a warning. `None`: it has none.
/// Newer ones that were read but do not decode (or hold another offset than their name says)
/// are deleted once an older one is found usable: left there, such an object would always
/// sort newest and keep one of the `log.snapshot_keep` slots, so with one slot every good
/// snapshot stored after it would be deleted in its favour. One that could not be read (the
/// store did not answer) is left alone: it may be fine.
pub(crate) async fn newest(
    store: &object_store::ObjectStore,
    region: &str,
) -> Result<Option<(StateImage, u64)>, String> {
    let mut undecodable: Vec<String> = Vec::new();
    for stored in list(store, region).await?.into_iter().rev() {
        let name = stored.name(region);
        let mut bytes = Vec::new();
        let read = match store.get(&name).await {
            Ok(mut object) => object
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let was_read = read.is_ok();
        let decoded = match read {
            Ok(_) => tokio::task::spawn_blocking(move || snapshot::decode(&bytes))
                .await
                .unwrap_or_else(|e| Err(e.to_string())),
            Err(e) => Err(format!("cannot read it: {e}")),
        };
        match decoded {
            Ok(image) if image.next_offset() == stored.offset => {
                for junk in undecodable {
                    match store.delete(junk.as_str()).await {
                        Ok(()) => tracing::warn!(region, snapshot = %junk,
                            "deleted an unusable snapshot newer than the one restored"),
                        Err(e) => tracing::warn!(region, snapshot = %junk, error = %e,
                            "could not delete an unusable snapshot"),
                    }
                }
                return Ok(Some((image, stored.seq)));
            }
            Ok(image) => {
                tracing::warn!(
                    region,
                    snapshot = %name,
                    "snapshot unusable (its name says offset {} but it holds {}); trying an older one",
                    stored.offset,
                    image.next_offset()
                );
                undecodable.push(name);
            }
            Err(why) => {
                tracing::warn!(
                    region,
                    snapshot = %name,
                    "snapshot unusable ({why}); trying an older one"
                );
                if was_read {
                    undecodable.push(name);
                }
            }
        }
    }
    Ok(None)
}

/// The snapshot sink of one region's engine (runs on its snapshot thread).
pub(crate) struct RegionSnapshots {
    js: jetstream::Context,
    store: object_store::ObjectStore,
    region: String,
    /// `log.snapshot_keep` (at least 1).
    keep: usize,
    /// `cluster.trim_stream`.
    trim: bool,
    /// The server's runtime: the snapshot thread is a plain thread and blocks on it.
    runtime: Handle,
}

impl RegionSnapshots {
    /// The sink for `region`, storing in `store`; call on the runtime.
    pub(crate) fn new(
        js: &jetstream::Context,
        store: &object_store::ObjectStore,
        region: &str,
        keep: usize,
        trim: bool,
    ) -> Self {
        RegionSnapshots {
            js: js.clone(),
            store: store.clone(),
            region: region.to_owned(),
            keep: keep.max(1),
            trim,
            runtime: Handle::current(),
        }
    }

    async fn put(&self, bytes: Vec<u8>, stored: Stored) -> Result<u64, String> {
        let region = &self.region;
        let name = stored.name(region);
        self.store
            .put(name.as_str(), &mut bytes.as_slice())
            .await
            .map_err(|e| format!("region {region}: storing snapshot {name}: {e}"))?;
        let kept = list(&self.store, region).await?;
        let excess = kept.len().saturating_sub(self.keep);
        for old in &kept[..excess] {
            if let Err(e) = self.store.delete(old.name(region)).await {
                tracing::warn!(region = %region, error = %e, "deleting an old snapshot failed");
            }
        }
        if self.trim
            && let Some(oldest) = kept.get(excess)
        {
            self.trim_before(oldest.seq + 1).await?;
        }
        Ok(bytes.len() as u64)
    }

    /// Purges the region's stream messages before sequence `seq`.
    async fn trim_before(&self, seq: u64) -> Result<(), String> {
        let region = &self.region;
        let stream = self
            .js
            .get_stream(stream_name(region))
            .await
            .map_err(|e| format!("region {region}: opening its stream to trim it: {e}"))?;
        let purged = stream
            .purge()
            .sequence(seq)
            .await
            .map_err(|e| format!("region {region}: trimming its stream before {seq}: {e}"))?;
        if purged.purged > 0 {
            tracing::info!(region = %region, messages = purged.purged, before = seq, "stream trimmed");
        }
        Ok(())
    }
}

impl SnapshotSink for RegionSnapshots {
    fn store(&mut self, image: &StateImage, position: u64) -> Result<u64, String> {
        let stored = Stored {
            offset: image.next_offset(),
            seq: position,
        };
        let bytes = snapshot::encode(image);
        let runtime = self.runtime.clone();
        runtime.block_on(self.put(bytes, stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_offset_and_belong_to_one_region() {
        let a = Stored { offset: 9, seq: 40 };
        let b = Stored {
            offset: 10,
            seq: 41,
        };
        assert_eq!(Stored::parse("east", &a.name("east")), Some(a.clone()));
        assert_eq!(Stored::parse("eas", &a.name("east")), None);
        assert_eq!(Stored::parse("east", &a.name("east2")), None);
        assert_eq!(Stored::parse("east", "east.x.1"), None);
        assert!(a.name("east") < b.name("east"), "names sort as offsets do");
        assert!(a < b);
    }
}
