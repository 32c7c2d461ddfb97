//! Borders between regions: an available driver that crossed into another region moves there,
//! and a pickup near a border sees the drivers across it.
//!
//! A move is the dispatcher's two-event primitive (`engine::dispatcher::moves`): the old
//! region logs DriverLeftRegion (only for an available driver; the driver is offline there from
//! then on), then the new region logs DriverJoinedRegion with the driver's profile and scoring
//! counters. Leave first, then join: if the join fails (the new region stopped, its queue is
//! full), the driver is in no region, offline; its gateway sees its location reports counted as
//! `driver_offline` and must call GoOnline again. A driver is never in two regions.
//!
//! - **Crossing.** A location report of a driver held by region A at a point of region B more
//!   than `cluster.border_margin_m` outside A's polygon moves the driver to B when it is
//!   available (read from A's read view first, so a busy driver's reports cost no command). A
//!   driver with an offer or a trip stays in A, and its position updates there.
//! - **Candidates across a border.** Before a trip request goes to its pickup's region B, each
//!   other region A whose polygon is within `dispatch.search_radius_m` of the pickup is asked
//!   (its read view, the NearbyDrivers path) for its nearest available drivers of the class;
//!   those nearer to the pickup than B's own nearest available driver, up to
//!   `cluster.border_pull`, nearest first over all such regions, move to B. A pickup whose
//!   region has the nearest driver moves nobody.
//!   Because the margin is at least the search radius, their next report leaves them in B.
//!
//! In cluster mode a crossing between regions owned by different processes is decided by A's
//! owner, which logs the leave and calls JoinRegion at B's owner (`route_border`). Drawing
//! drivers across a border owned by another process: B's owner asks A's owner
//! (RegionService.PullDrivers, with what the budget left after B's own neighbours), which picks
//! its nearest and moves each the same way. Both calls carry `cluster.peer_token`.

use tonic::Status;

use super::router::RegionRouter;
use crate::domain::{ExternalId, LatLng, VehicleClass};
use crate::engine::{Driver, DriverStatus};
use crate::events::RegionJoin;
use crate::grpc::status;

impl RegionRouter {
    /// The region a location report of `driver` (held by region `home`) at `position` goes
    /// to: `home`, or the region it moved to because the report crossed the border by more
    /// than the margin.
    pub(crate) async fn crossing(
        &self,
        home: usize,
        driver: &str,
        position: LatLng,
        metadata: &tonic::metadata::MetadataMap,
    ) -> usize {
        let regions = self.map().regions();
        if regions[home].distance_m(position) <= self.config().cluster.border_margin_m {
            return home;
        }
        let Ok(to) = self.map().locate("location", position) else {
            return home;
        };
        let Some(from_shard) = self.local(home) else {
            return home;
        };
        let Ok(id) = ExternalId::new("driver_id", driver) else {
            return home;
        };
        match from_shard.engine.driver(id.clone()).await {
            Ok(d) if d.status == DriverStatus::Available => {}
            _ => return home,
        }
        let moved = match self.local(to) {
            Some(_) => self
                .move_driver(home, to, &id, Some(position))
                .await
                .map(drop),
            None => self.move_remote(home, to, &id, position, metadata).await,
        };
        match moved {
            Ok(()) => to,
            // Not available after all (an offer came first): it stays. A failed join left it
            // offline in `home`, where the report is counted as such.
            Err(_) => home,
        }
    }

    /// Moves an available driver from region `from` to region `to` (both served here): leave,
    /// then join, at `position` (default: where `from` has it). The driver's home here follows.
    pub(crate) async fn move_driver(
        &self,
        from: usize,
        to: usize,
        driver: &ExternalId,
        position: Option<LatLng>,
    ) -> Result<Driver, Status> {
        let regions = self.map().regions();
        let (Some(a), Some(b)) = (self.local(from), self.local(to)) else {
            return Err(Status::unavailable(format!(
                "moving driver {driver} from region {} to {} needs both served here",
                regions[from].name, regions[to].name
            )));
        };
        // A region known to have stopped could not take the driver: it stays where it is.
        if !b.engine.is_serving() {
            return Err(Status::unavailable(format!(
                "region {} has stopped; driver {driver} stays in {}",
                regions[to].name, regions[from].name
            )));
        }
        let before = a
            .engine
            .leave_region(driver.clone(), regions[to].name.clone())
            .await
            .map_err(status)?;
        let join = RegionJoin {
            driver: driver.clone(),
            from: regions[from].name.clone(),
            position: position.unwrap_or(before.position),
            rating: before.rating,
            class: before.class,
            gateway: before.gateway.clone(),
            acceptance_rate: before.acceptance_rate,
            trips_today: before.trips_today,
            trips_day: before.trips_day,
            free_since_ms: before.free_since_ms,
        };
        match b.engine.join_region(join).await {
            Ok(d) => {
                self.remember(driver.as_str(), to);
                Ok(d)
            }
            Err(e) => {
                tracing::warn!(%driver, from = %regions[from].name, to = %regions[to].name,
                    error = %e, "a driver left its region but could not join the next: it is \
                    offline until its gateway calls GoOnline again");
                Err(status(e))
            }
        }
    }

    /// Before a request with its pickup in region `to`: moves into `to` up to
    /// `cluster.border_pull` available drivers of `class` of the neighbouring regions, that
    /// are within the search radius of `pickup` and nearer to it (straight line) than every
    /// available driver `to` has: those of the regions served here first, nearest first over
    /// them, then (with what the budget has left) those of each region served by another
    /// process, which moves its nearest itself (RegionService.PullDrivers). So a pickup whose
    /// own region has the nearest driver moves nobody. Returns how many moved.
    pub(crate) async fn pull_across(
        &self,
        to: usize,
        pickup: LatLng,
        class: VehicleClass,
        metadata: &tonic::metadata::MetadataMap,
    ) -> usize {
        let pull = self.config().cluster.border_pull;
        let radius_m = self.config().dispatch.search_radius_m;
        let Some(own) = self.local(to) else {
            return 0;
        };
        if pull == 0 || !own.engine.is_serving() {
            return 0;
        }
        let neighbours: Vec<usize> = (self.map().regions().iter().enumerate())
            .filter(|(i, region)| *i != to && region.distance_m(pickup) <= radius_m)
            .map(|(i, _)| i)
            .collect();
        if neighbours.is_empty() {
            return 0;
        }
        let own_nearest_m = match own.engine.nearby(pickup, radius_m, 1, class).await {
            Ok(found) => found.first().map_or(f64::INFINITY, |d| d.distance_m),
            Err(_) => return 0,
        };
        let mut near: Vec<(f64, usize, ExternalId, LatLng)> = Vec::new();
        let mut remote = Vec::new();
        for &i in &neighbours {
            let Some(shard) = self.local(i) else {
                remote.push(i);
                continue;
            };
            if let Ok(found) = shard.engine.nearby(pickup, radius_m, pull, class).await {
                near.extend(
                    found
                        .into_iter()
                        .map(|d| (d.distance_m, i, d.id, d.position)),
                );
            }
        }
        near.retain(|d| d.0 < own_nearest_m);
        near.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut moved = 0;
        for (_, from, id, position) in near.into_iter().take(pull) {
            if self
                .move_driver(from, to, &id, Some(position))
                .await
                .is_ok()
            {
                moved += 1;
            }
        }
        for from in remote {
            if moved >= pull {
                break;
            }
            let budget = (own_nearest_m, pull - moved);
            moved += (self.pull_remote((from, to), pickup, class, budget, metadata)).await;
        }
        moved
    }
}
