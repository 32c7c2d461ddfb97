//! Replaying a recorded input journal through an in-process [`Dispatcher`], exactly as the
//! engine thread executed it: every entry at its recorded `now`, deadlines fired where the
//! loop fired them, the recorded answers given. With the recorded config this reproduces the
//! recorded event log event for event (`tests/replay_fidelity.rs` checks it over real gRPC);
//! the what-if tool (`dispatch-replay` in the `loadgen` package) replays the same journal under
//! other configs with a driver-behaviour model answering the offers the recording never saw.

use crate::config::Config;
use crate::engine::{Dispatcher, TripAction, TripRequest};
use crate::error::Error;
use crate::events::Event;
use crate::journal::{Entry, Input, JournalError, JournalReader, Step};

/// The config a journal's `Start` entry recorded.
pub fn recorded_config(config_toml: &str) -> Result<Config, String> {
    toml::from_str(config_toml).map_err(|e| format!("the journal's recorded config: {e}"))
}

/// The engine's [`TripAction`] for a recorded step.
pub fn trip_action(step: Step) -> TripAction {
    match step {
        Step::Arrive => TripAction::Arrive,
        Step::Start => TripAction::Start,
        Step::Complete => TripAction::Complete,
        Step::Cancel => TripAction::Cancel,
    }
}

/// The trip request a `RequestTrip` entry holds (`None` for any other entry).
pub fn trip_request(input: &Input) -> Option<TripRequest> {
    match input {
        Input::RequestTrip {
            rider,
            request_id,
            pickup,
            dropoff,
            class,
        } => Some(TripRequest {
            rider: rider.clone(),
            request_id: request_id.clone(),
            pickup: *pickup,
            dropoff: *dropoff,
            class: *class,
        }),
        _ => None,
    }
}

/// Executes one journal entry on `d` as the engine's runner did. A command that the engine
/// refused is refused again (that is part of reproducing it): its error is returned.
/// `Start` and `Gap` change nothing here; the caller decides what they mean.
pub fn apply(d: &mut Dispatcher, entry: &Entry) -> Result<(), Error> {
    let now = entry.now_ms;
    match &entry.input {
        Input::Start { .. } | Input::Gap { .. } => return Ok(()),
        Input::Fire => {
            d.fire_due(now);
            return Ok(());
        }
        Input::Locations { updates } => {
            for (driver, position) in updates {
                // An update the engine refused (unknown or offline driver) changed nothing.
                let _ = d.apply_location(driver, *position);
            }
            return Ok(());
        }
        _ => {}
    }
    // Every command fires due deadlines first, as `Runner::execute` does.
    d.fire_due(now);
    match &entry.input {
        Input::GoOnline {
            driver,
            position,
            rating,
            class,
            gateway,
        } => d
            .go_online(
                now,
                crate::engine::GoOnline {
                    driver: driver.clone(),
                    position: *position,
                    rating: *rating,
                    class: *class,
                    gateway: gateway.clone(),
                },
            )
            .map(drop),
        Input::GoOffline { driver } => d.go_offline(now, driver).map(drop),
        Input::RequestTrip { .. } => match trip_request(&entry.input) {
            Some(request) => d.request_trip(now, request).map(drop),
            None => Ok(()),
        },
        Input::Respond {
            offer,
            driver,
            accept,
        } => d.respond(now, *offer, driver, *accept).map(drop),
        Input::TripAction { trip, driver, step } => d
            .trip_action(now, *trip, driver, trip_action(*step))
            .map(drop),
        Input::CancelTrip { trip, rider } => d.cancel_trip(now, *trip, rider).map(drop),
        Input::LeaveRegion { driver, to } => d.leave_region(now, driver, to).map(drop),
        Input::JoinRegion(join) => d.join_region(now, join.clone()).map(drop),
        Input::Start { .. } | Input::Gap { .. } | Input::Fire | Input::Locations { .. } => Ok(()),
    }
}

/// What an exact replay of a whole journal produced.
#[derive(Debug, Default)]
pub struct ExactReplay {
    /// Every event, in order.
    pub events: Vec<Event>,
    /// Entries replayed.
    pub entries: u64,
    /// Commands refused (as the engine refused them).
    pub refused: u64,
    /// Entries the recording lost (`Gap`s): the replay is not faithful past the first.
    pub lost: u64,
    /// Why the journal ended early, if it did.
    pub stopped_by: Option<JournalError>,
}

/// Replays a journal from its first `Start` under the config it recorded (or `config`, when
/// given), with the recorded answers, collecting every event.
pub fn replay_exact(reader: JournalReader, config: Option<&Config>) -> Result<ExactReplay, String> {
    let mut out = ExactReplay::default();
    let mut d: Option<Dispatcher> = None;
    for entry in reader {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                out.stopped_by = Some(e);
                break;
            }
        };
        out.entries += 1;
        match &entry.input {
            Input::Start {
                first_offset,
                config_toml,
            } => {
                if let Some(old) = d.as_mut() {
                    out.events.extend(old.take_events());
                }
                let recorded;
                let config = match config {
                    Some(c) => c,
                    None => {
                        recorded = recorded_config(config_toml)?;
                        &recorded
                    }
                };
                let mut fresh = Dispatcher::new(config, crate::index::default_index(), 0);
                if *first_offset > 0 {
                    fresh.resume_at(*first_offset).map_err(|e| e.to_string())?;
                }
                d = Some(fresh);
                continue;
            }
            Input::Gap { lost } => out.lost += lost,
            _ => {}
        }
        let Some(d) = d.as_mut() else {
            return Err(
                "the journal does not begin with a Start entry (older segments were \
                 deleted by retention?)"
                    .into(),
            );
        };
        if apply(d, &entry).is_err() {
            out.refused += 1;
        }
        out.events.extend(d.take_events());
    }
    if let Some(d) = d.as_mut() {
        out.events.extend(d.take_events());
    }
    Ok(out)
}
