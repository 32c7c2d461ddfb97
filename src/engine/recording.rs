//! The runner's side of input recording (`record.enabled`): turns each command the dispatcher
//! thread executes into a journal [`Input`] and hands it, with its `now`, to the journal writer
//! thread. Reads that cannot change state (GetTrip, Stats, ...) are not recorded.

use super::command::Command;
use super::dispatcher::TripAction;
use crate::config::Config;
use crate::domain::LatLng;
use crate::events::LogError;
use crate::journal::{Input, JournalWriter, Step, journal_dir};

/// The dispatcher thread's handle to the journal.
pub(super) struct Recorder {
    writer: JournalWriter,
}

impl Recorder {
    /// Starts the journal writer if recording is on, and records the start: the first event
    /// offset and the config (without auth tokens and TLS paths).
    pub(super) fn start(
        config: &Config,
        first_offset: u64,
        now_ms: u64,
    ) -> Result<Option<Recorder>, LogError> {
        let Some(dir) = journal_dir(config) else {
            return Ok(None);
        };
        let mut writer =
            JournalWriter::start(dir.clone(), &config.record).map_err(|source| LogError::Io {
                path: dir.clone(),
                source,
            })?;
        let mut recorded = config.clone();
        recorded.auth = Default::default();
        recorded.tls = Default::default();
        // A config of plain data always serializes.
        let config_toml = toml::to_string(&recorded).unwrap_or_default();
        writer.record(
            now_ms,
            Input::Start {
                first_offset,
                config_toml,
            },
        );
        tracing::info!(dir = %dir.display(), "recording the engine's inputs");
        Ok(Some(Recorder { writer }))
    }

    /// Before the loop fires deadlines at `now_ms`: recorded when one is due.
    pub(super) fn fire(&mut self, now_ms: u64, next_deadline_ms: Option<u64>) {
        if next_deadline_ms.is_some_and(|at| at <= now_ms) {
            self.writer.record(now_ms, Input::Fire);
        }
    }

    /// A location batch, after it was applied.
    pub(super) fn locations(&mut self, now_ms: u64, updates: Vec<(String, LatLng)>) {
        self.writer.record_locations(now_ms, updates);
    }

    /// A command about to be executed at `now_ms`.
    pub(super) fn command(&mut self, now_ms: u64, cmd: &Command) {
        let input = match cmd {
            Command::GoOnline(req, _) => Input::GoOnline {
                driver: req.driver.clone(),
                position: req.position,
                rating: req.rating,
                class: req.class,
                gateway: req.gateway.clone(),
            },
            Command::GoOffline(driver, _) => Input::GoOffline {
                driver: driver.clone(),
            },
            Command::UpdateLocation(driver, position, _) => {
                // Unlike a batch, a single update is a command: deadlines fire before it.
                self.writer.record(now_ms, Input::Fire);
                self.writer
                    .record_locations(now_ms, vec![(driver.as_str().to_string(), *position)]);
                return;
            }
            Command::RequestTrip(req, _) => Input::RequestTrip {
                rider: req.rider.clone(),
                request_id: req.request_id.clone(),
                pickup: req.pickup,
                dropoff: req.dropoff,
                class: req.class,
            },
            Command::Respond {
                offer,
                driver,
                accept,
                ..
            } => Input::Respond {
                offer: *offer,
                driver: driver.clone(),
                accept: *accept,
            },
            Command::TripAction {
                trip,
                driver,
                action,
                ..
            } => Input::TripAction {
                trip: *trip,
                driver: driver.clone(),
                step: match action {
                    TripAction::Arrive => Step::Arrive,
                    TripAction::Start => Step::Start,
                    TripAction::Complete => Step::Complete,
                    TripAction::Cancel => Step::Cancel,
                },
            },
            Command::CancelTrip { trip, rider, .. } => Input::CancelTrip {
                trip: *trip,
                rider: rider.clone(),
            },
            // Fires due deadlines at `now`, as every command does first.
            Command::Tick(_) => Input::Fire,
            Command::LeaveRegion(driver, to, _) => Input::LeaveRegion {
                driver: driver.clone(),
                to: to.clone(),
            },
            Command::JoinRegion(join, _) => Input::JoinRegion(join.as_ref().clone()),
            Command::GetTrip(..) | Command::Stats(_) | Command::PendingOffers(..) => return,
        };
        self.writer.record(now_ms, input);
    }

    /// Writes what is queued and stops the journal writer.
    pub(super) fn finish(self) {
        self.writer.finish();
    }
}
