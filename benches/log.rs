//! Durable log append throughput: how many dispatch events per second the log commits.
//!
//! `append/<fsync>/<group>`: append `group` realistic events (an offer with its score
//! breakdown, the commonest and largest kind) and commit them with the given fsync policy. With
//! `batch` a group is what the dispatcher commits with one fsync; `always` commits every event
//! on its own (group 1). Throughput is reported in events/s.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dispatch::domain::{ExternalId, LatLng, OfferId, TripId};
use dispatch::events::{Event, EventKind, EventLog, FsyncPolicy, LogConfig, OfferDetails};
use dispatch::matching::ScoreBreakdown;

fn event(offset: u64) -> Event {
    Event {
        offset,
        at_ms: 1_700_000_000_000 + offset,
        kind: EventKind::OfferSent(Arc::new(OfferDetails {
            offer: OfferId(offset),
            trip: TripId(offset.saturating_sub(1)),
            driver: ExternalId::new("driver_id", &format!("driver-{}", offset % 100_000)).unwrap(),
            gateway: Some(ExternalId::new("gateway_id", "gw-3").unwrap()),
            pickup: LatLng::new(40.71, -74.0).unwrap(),
            dropoff: LatLng::new(40.76, -73.98).unwrap(),
            pickup_eta_s: 143.2,
            pickup_distance_m: 880.5,
            expires_at_ms: 1_700_000_015_000 + offset,
            score: ScoreBreakdown {
                eta: 0.5,
                rating: 0.09,
                acceptance: 0.12,
                fairness: 0.07,
                total: 0.78,
            },
            attempt: 1,
            surge_multiplier: 1.0,
            eta_source: dispatch::matching::EtaSource::Road,
        })),
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.measurement_time(Duration::from_secs(5));
    for (policy, name, sizes) in [
        (FsyncPolicy::Batch, "batch", &[64usize, 256, 1024][..]),
        (FsyncPolicy::Always, "always", &[1][..]),
        (FsyncPolicy::Never, "never", &[256][..]),
    ] {
        for &size in sizes {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig {
                data_dir: Some(dir.path().to_path_buf()),
                fsync: policy,
                ..LogConfig::default()
            };
            let (mut log, _) = EventLog::open(&config, dir.path(), |_| Ok(())).unwrap();
            let mut next = 0u64;
            group.throughput(Throughput::Elements(size as u64));
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter_batched(
                    || {
                        let events: Vec<Event> = (next..next + size as u64).map(event).collect();
                        next += size as u64;
                        events
                    },
                    |events| {
                        log.append(&events).unwrap();
                        log.commit().unwrap();
                    },
                    criterion::BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
