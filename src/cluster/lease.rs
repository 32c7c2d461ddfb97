//! Region leases in a JetStream KV bucket: who may write a region's stream.
//!
//! A lease is the key `<region>` in the bucket `dispatch_leases`, whose `max_age` is the lease
//! time: a key that is not rewritten within it disappears. An owner takes a lease with
//! create-if-absent and renews it about every `lease_ttl / 3` by update-with-revision (which
//! fails if anyone else took it). An owner that has not renewed for `2/3` of the lease time
//! stops the region's engine, so it stops writing before the lease can expire and a standby can
//! take it; the stream's fenced appends catch any write still in flight. A graceful stop deletes
//! the leases, so a standby takes over at once instead of after expiry.

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
    owner: String,
    revision: u64,
}

impl Lease {
    /// Takes the lease of `region` for `owner`, waiting while another owner holds it (a
    /// standby). Returns once it is ours.
    pub(crate) async fn acquire(
        store: &kv::Store,
        region: &str,
        owner: &str,
        ttl: Duration,
    ) -> Lease {
        let mut waiting_logged = false;
        loop {
            match store.create(region, Bytes::from(owner.to_owned())).await {
                Ok(revision) => {
                    tracing::info!(region, owner, revision, "region lease taken");
                    return Lease {
                        store: store.clone(),
                        region: region.to_owned(),
                        owner: owner.to_owned(),
                        revision,
                    };
                }
                Err(e) => {
                    if !waiting_logged {
                        let holder = match store.get(region).await {
                            Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                            _ => "unknown".into(),
                        };
                        tracing::info!(region, holder, reason = %e, "region leased elsewhere; standing by");
                        waiting_logged = true;
                    }
                    tokio::time::sleep(ttl / 6).await;
                }
            }
        }
    }

    /// Rewrites the lease, conditional on the revision we hold. `Err(true)`: someone else
    /// holds it now; `Err(false)`: the renewal failed otherwise (it may work next time).
    async fn renew(&mut self) -> Result<(), (bool, String)> {
        let revision = self
            .store
            .update(&self.region, Bytes::from(self.owner.clone()), self.revision)
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

/// Deletes the leases of `regions` held by `owner`, so a standby takes them at once.
pub(crate) async fn release(store: &kv::Store, regions: &[String], owner: &str) {
    for region in regions {
        let ours = matches!(store.get(region).await, Ok(Some(v)) if v == owner.as_bytes());
        if ours && let Err(e) = store.delete(region).await {
            tracing::warn!(region, error = %e, "could not hand the region lease over");
        } else if ours {
            tracing::info!(region, "region lease handed over");
        }
    }
}
