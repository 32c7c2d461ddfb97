//! Region leases in a JetStream KV bucket: who may write a region's stream.
//!
//! A lease is the key `<region>` in the bucket `dispatch_leases`, whose `max_age` is the lease
//! time: a key that is not rewritten within it disappears. An owner takes a lease with
//! create-if-absent and renews it about every `lease_ttl / 3` by update-with-revision (which
//! fails if anyone else took it). An owner that has not renewed for `2/3` of the lease time
//! stops the region's engine, so it stops writing before the lease can expire and a standby can
//! take it; the stream's fenced appends catch any write still in flight. A graceful stop deletes
//! the leases, so another process takes over at once instead of after expiry. A lease's value
//! names its holder and the holder's gRPC address ([`Holder`]), where other processes forward
//! the region's calls.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use crate::engine::Engine;

/// The KV bucket holding one key per region.
pub(crate) const BUCKET: &str = "dispatch_leases";

/// The lease bucket on `js` (created if absent), keys expiring after `ttl`. Processes starting
/// together race to create it and JetStream may time one out: retried for up to 30 s.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, String> {
    let started = Instant::now();
    loop {
        if let Ok(store) = js.get_key_value(BUCKET).await {
            return Ok(store);
        }
        let created = js
            .create_key_value(kv::Config {
                bucket: BUCKET.into(),
                history: 1,
                max_age: ttl,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await;
        match created {
            Ok(store) => return Ok(store),
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                return Err(format!("the lease bucket {BUCKET}: {e}"));
            }
            Err(e) => {
                tracing::debug!(error = %e, "creating the lease bucket; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// A lease this process holds.
#[derive(Debug)]
pub(crate) struct Lease {
    store: kv::Store,
    region: String,
    /// The lease's value: our [`Holder`].
    value: Bytes,
    revision: u64,
}

/// Who holds a lease, as its value says: `<owner>\n<gRPC address>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The holder's member id (see `members`).
    pub(crate) owner: String,
    /// Where it serves gRPC (`host:port`): calls for the region are forwarded there.
    pub(crate) addr: String,
}

impl Holder {
    fn encode(&self) -> Bytes {
        Bytes::from(format!("{}\n{}", self.owner, self.addr))
    }

    /// The holder named by a lease value (an address-less value names no address).
    pub(crate) fn decode(value: &[u8]) -> Holder {
        let text = String::from_utf8_lossy(value);
        let (owner, addr) = text.split_once('\n').unwrap_or((&text, ""));
        Holder {
            owner: owner.to_owned(),
            addr: addr.to_owned(),
        }
    }
}

/// The current holder of `region`'s lease and the lease's revision; `None` when it is free.
pub(crate) async fn holder(
    store: &kv::Store,
    region: &str,
) -> Result<Option<(Holder, u64)>, String> {
    match store.entry(region).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
            Ok(Some((Holder::decode(&entry.value), entry.revision)))
        }
        Ok(_) => Ok(None),
        Err(e) => Err(format!("reading the lease of region {region}: {e}")),
    }
}

impl Lease {
    /// Takes the free lease of `region` for `me` (create-if-absent); `None` when someone else
    /// holds it or took it first.
    pub(crate) async fn take(store: &kv::Store, region: &str, me: &Holder) -> Option<Lease> {
        match store.create(region, me.encode()).await {
            Ok(revision) => {
                tracing::info!(region, owner = %me.owner, revision, "region lease taken");
                Some(Lease {
                    store: store.clone(),
                    region: region.to_owned(),
                    value: me.encode(),
                    revision,
                })
            }
            Err(e) => {
                tracing::debug!(region, reason = %e, "region lease not taken");
                None
            }
        }
    }

    /// Rewrites the lease, conditional on the revision we hold. `Err(true)`: someone else
    /// holds it now; `Err(false)`: the renewal failed otherwise (it may work next time).
    async fn renew(&mut self) -> Result<(), (bool, String)> {
        let revision = self
            .store
            .update(&self.region, self.value.clone(), self.revision)
            .await
            .map_err(|e| {
                (
                    e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                    e.to_string(),
                )
            })?;
        self.revision = revision;
        Ok(())
    }

    /// Keeps renewing until a renewal has failed for `2/3` of `ttl`; then stops `engine` and
    /// returns. Runs as a task per region.
    pub(crate) async fn keep(mut self, ttl: Duration, engine: Arc<OnceLock<Engine>>) {
        let deadline_after = ttl * 2 / 3;
        let mut renewed_at = Instant::now();
        loop {
            tokio::time::sleep(ttl / 3).await;
            let attempt = tokio::time::timeout(ttl / 3, self.renew()).await;
            let taken = match attempt {
                Ok(Ok(())) => {
                    renewed_at = Instant::now();
                    false
                }
                Ok(Err((taken, why))) => {
                    tracing::warn!(region = %self.region, %why, "lease renewal failed");
                    taken
                }
                Err(_) => {
                    tracing::warn!(region = %self.region, "lease renewal timed out");
                    false
                }
            };
            if taken || renewed_at.elapsed() >= deadline_after {
                tracing::error!(
                    region = %self.region,
                    "region lost: its lease could not be renewed in time; this process stops serving it"
                );
                if let Some(engine) = engine.get().cloned() {
                    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
                }
                return;
            }
        }
    }
}

/// Deletes `region`'s lease if `owner` holds it, so another process takes it at once.
pub(crate) async fn release(store: &kv::Store, region: &str, owner: &str) {
    let held = match holder(store, region).await {
        Ok(Some((h, revision))) if h.owner == owner => revision,
        _ => return,
    };
    match store.delete_expect_revision(region, Some(held)).await {
        Ok(()) => tracing::info!(region, "region lease handed over"),
        Err(e) => tracing::warn!(region, error = %e, "could not hand the region lease over"),
    }
}
