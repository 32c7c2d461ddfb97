//! The history check of cluster mode: each region's stream read back from JetStream and
//! checked against what clients were told. One function serves `loadgen --mode failover` and
//! the failover tests, so the figures the load generator reports and the assertions the tests
//! make mean the same thing.
//!
//! - **Lost**: an acknowledged trip (RequestTrip answered) whose `TripRequested` is not in its
//!   region's stream, or an acknowledged acceptance (RespondToOffer answered ACCEPTED) whose
//!   `TripAssigned` to that driver is not.
//! - **Double assignment**: a trip assigned twice, or a driver assigned a trip while an
//!   earlier one of theirs has not ended (completed or cancelled), in stream order.
//! - **Stale owner**: a message written before any takeover message, or by anyone but the
//!   owner named by the last takeover message before it, or one whose payload is not events.
//! - **Replay**: each region's events folded twice into fresh `DispatchState`s give the same
//!   durable digest (and the fold accepts them: no offset gap).

use std::collections::{HashMap, HashSet};

use async_nats::jetstream;
use serde::Serialize;

use super::stream_log::{existing_stream, read_messages};
use crate::config::Config;
use crate::engine::state::DispatchState;
use crate::events::{Event, EventKind};

/// One region's stream as read back.
#[derive(Debug)]
pub struct RegionHistory {
    /// The region.
    pub region: String,
    /// Messages in its stream.
    pub messages: u64,
    /// Takeover messages among them.
    pub takeovers: usize,
    /// The messages no current owner wrote (see the module docs), one line each.
    pub stale: Vec<String>,
    /// Every event, in stream order.
    pub events: Vec<Event>,
}

/// Reads region `region`'s whole stream through `js`.
pub async fn read_region(js: &jetstream::Context, region: &str) -> Result<RegionHistory, String> {
    let (stream, state) = existing_stream(js, region).await?;
    let messages =
        read_messages(&stream, region, state.first_sequence, state.last_sequence).await?;
    let mut history = RegionHistory {
        region: region.to_owned(),
        messages: state.messages,
        takeovers: 0,
        stale: Vec::new(),
        events: Vec::new(),
    };
    let mut owner: Option<String> = None;
    let mut last_writer: Option<String> = None;
    for m in messages {
        if let Ok(events) = &m.events {
            let takeover = takeover_problem(&m.takeover, &last_writer, events);
            if let Some(why) = takeover {
                history.stale.push(format!("{region} #{}: {why}", m.seq));
            }
        }
        last_writer.clone_from(&m.owner);
        if let Some(new) = m.takeover {
            owner = Some(new);
            history.takeovers += 1;
        } else if owner.is_none() {
            history
                .stale
                .push(format!("{region} #{}: written before any takeover", m.seq));
        } else if m.owner != owner {
            history.stale.push(format!(
                "{region} #{}: written by {:?} while {:?} owned the region",
                m.seq, m.owner, owner
            ));
        }
        match m.events {
            Ok(events) => history.events.extend(events),
            Err(why) => history.stale.push(why),
        }
    }
    Ok(history)
}

/// What is wrong with a message's `RegionTakenOver` events, if anything: a takeover message
/// (`takeover`: its header) holds exactly one, naming the header's owner and the writer of the
/// message before (`previous`); any other message holds none. A takeover message with no
/// events at all was written before the event existed and passes.
fn takeover_problem(
    takeover: &Option<String>,
    previous: &Option<String>,
    events: &[Event],
) -> Option<String> {
    let announced: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::RegionTakenOver {
                owner, previous, ..
            } => Some((owner, previous)),
            _ => None,
        })
        .collect();
    match (takeover, announced.as_slice()) {
        (None, []) => None,
        (None, _) => Some("a RegionTakenOver event outside a takeover message".to_owned()),
        (Some(_), []) if events.is_empty() => None,
        (Some(new), [(owner, said)]) if events.len() == 1 => {
            if *owner != new {
                Some(format!(
                    "takeover message by {new:?} whose event names {owner:?}"
                ))
            } else if said != &previous {
                Some(format!(
                    "takeover event says the previous owner was {said:?}, the stream {previous:?}"
                ))
            } else {
                None
            }
        }
        (Some(_), _) => {
            Some("a takeover message that does not hold one RegionTakenOver only".to_owned())
        }
    }
}

/// Connects to the NATS servers `nats_url` (comma-separated) and reads every region in
/// `regions`.
pub async fn read_regions(
    nats_url: &str,
    regions: &[String],
) -> Result<Vec<RegionHistory>, String> {
    let js = super::connect(nats_url).await?;
    let mut histories = Vec::with_capacity(regions.len());
    for region in regions {
        histories.push(read_region(&js, region).await?);
    }
    Ok(histories)
}

/// What a client was told about one trip.
#[derive(Clone, Debug)]
pub struct AckedTrip {
    /// The trip id RequestTrip answered.
    pub trip_id: String,
    /// The driver of an acceptance RespondToOffer answered, if one was.
    pub assigned_driver: Option<String>,
}

/// The outcome of [`check`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct Audit {
    /// Stream messages read, every region.
    pub messages: u64,
    /// Events read, every region.
    pub events: u64,
    /// Takeover messages, every region.
    pub takeovers: usize,
    /// Acknowledged trips checked.
    pub acknowledged_trips: usize,
    /// Acknowledged trips (or acceptances) missing from the streams, one line each.
    pub lost_trips: Vec<String>,
    /// Trips assigned twice and drivers holding two trips, one line each.
    pub double_assignments: Vec<String>,
    /// Messages written by no current owner, one line each.
    pub stale_owner_events: Vec<String>,
    /// Every region's two replays gave the same digest, and neither was refused.
    pub replay_state_hashes_equal: bool,
    /// Why a replay was refused or differed, one line each.
    pub replay_errors: Vec<String>,
}

/// Checks the regions' `histories` against the `acked` trips; `config` shapes the replayed
/// states (the dispatch settings the servers ran with).
pub fn check(config: &Config, histories: &[RegionHistory], acked: &[AckedTrip]) -> Audit {
    let mut audit = Audit {
        acknowledged_trips: acked.len(),
        replay_state_hashes_equal: true,
        ..Audit::default()
    };
    let mut requested: HashSet<String> = HashSet::new();
    let mut assigned: HashMap<String, String> = HashMap::new();
    for h in histories {
        audit.messages += h.messages;
        audit.events += h.events.len() as u64;
        audit.takeovers += h.takeovers;
        audit.stale_owner_events.extend(h.stale.iter().cloned());
        // A driver's live trip, per region (a driver changes region only while free).
        let mut live: HashMap<String, String> = HashMap::new();
        for e in &h.events {
            match &e.kind {
                EventKind::TripRequested { trip, .. } => {
                    requested.insert(trip.to_string());
                }
                EventKind::TripAssigned { trip, driver, .. } => {
                    let (trip, driver) = (trip.to_string(), driver.to_string());
                    if let Some(first) = assigned.insert(trip.clone(), driver.clone()) {
                        audit.double_assignments.push(format!(
                            "{trip} assigned to {first}, then to {driver} (offset {})",
                            e.offset
                        ));
                    }
                    if let Some(other) = live.insert(driver.clone(), trip.clone()) {
                        audit.double_assignments.push(format!(
                            "{driver} assigned {trip} while still on {other} (offset {})",
                            e.offset
                        ));
                    }
                }
                EventKind::TripCompleted { driver, .. } => {
                    live.remove(driver.as_str());
                }
                // A driver on a trip stays with the trip's region until it ends.
                EventKind::DriverLeftRegion { driver, to } => {
                    if let Some(trip) = live.get(driver.as_str()) {
                        audit.double_assignments.push(format!(
                            "{driver} left {} for {to} while on {trip} (offset {})",
                            h.region, e.offset
                        ));
                    }
                }
                EventKind::TripCancelled {
                    driver: Some(driver),
                    ..
                } => {
                    live.remove(driver.as_str());
                }
                _ => {}
            }
        }
        match (replay(config, &h.events), replay(config, &h.events)) {
            (Ok(a), Ok(b)) if a == b => {}
            (Ok(_), Ok(_)) => {
                audit.replay_state_hashes_equal = false;
                audit
                    .replay_errors
                    .push(format!("{}: two replays differ", h.region));
            }
            (Err(e), _) | (_, Err(e)) => {
                audit.replay_state_hashes_equal = false;
                audit.replay_errors.push(format!("{}: {e}", h.region));
            }
        }
    }
    for trip in acked {
        if !requested.contains(&trip.trip_id) {
            audit.lost_trips.push(format!(
                "{}: acknowledged, not in the streams",
                trip.trip_id
            ));
        } else if let Some(driver) = &trip.assigned_driver
            && assigned.get(&trip.trip_id) != Some(driver)
        {
            audit.lost_trips.push(format!(
                "{}: acceptance by {driver} acknowledged, the streams assign {:?}",
                trip.trip_id,
                assigned.get(&trip.trip_id)
            ));
        }
    }
    audit
}

/// `events` folded into a fresh state; its durable digest.
fn replay(config: &Config, events: &[Event]) -> Result<String, String> {
    let first = events.first().map_or(0, |e| e.offset);
    let mut state = DispatchState::new(config, crate::index::default_index(), first);
    for e in events {
        state.replay(e).map_err(|e| e.to_string())?;
    }
    Ok(state.durable_digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn takeover(owner: &str, previous: Option<&str>) -> Event {
        Event {
            offset: 7,
            at_ms: 1,
            kind: EventKind::RegionTakenOver {
                owner: owner.into(),
                previous: previous.map(Into::into),
                replayed: 7,
                from_snapshot: None,
            },
        }
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn a_takeover_message_holds_one_event_naming_both_owners() {
        let good = [takeover("b", Some("a"))];
        assert_eq!(takeover_problem(&some("b"), &some("a"), &good), None);
        // Written before the event existed: an empty takeover message.
        assert_eq!(takeover_problem(&some("b"), &some("a"), &[]), None);
        // A plain message of events holds none.
        let offline = Event {
            offset: 8,
            at_ms: 1,
            kind: EventKind::DriverOffline {
                driver: crate::domain::ExternalId::new("driver_id", "d").unwrap(),
            },
        };
        assert_eq!(
            takeover_problem(&None, &some("b"), std::slice::from_ref(&offline)),
            None
        );

        let wrong = [
            (
                some("c"),
                some("a"),
                vec![takeover("b", Some("a"))],
                "names",
            ),
            (
                some("b"),
                some("z"),
                vec![takeover("b", Some("a"))],
                "previous owner",
            ),
            (None, some("a"), vec![takeover("b", Some("a"))], "outside"),
            (
                some("b"),
                some("a"),
                vec![takeover("b", Some("a")), offline],
                "one",
            ),
        ];
        for (header, previous, events, says) in wrong {
            let why = takeover_problem(&header, &previous, &events);
            assert!(why.as_deref().is_some_and(|w| w.contains(says)), "{why:?}");
        }
    }
}
