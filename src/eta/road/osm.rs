//! Reading an OpenStreetMap `.osm.pbf` into the car-drivable ways and their node positions.
//!
//! It exists so that the rules of "what a car may drive, in which direction, how fast" live in
//! one place, apart from the graph algorithms: highway classes, `oneway` (with `-1`), implied
//! one-ways (roundabouts, motorways), access restrictions, and `maxspeed` where tagged, else a
//! speed per class. The speeds follow the ones OSRM's car profile uses, so our routed times are
//! comparable with the reference router out of the box.

use std::path::Path;

use osmpbf::{Element, ElementReader};
use rustc_hash::FxHashMap;

/// How a way may be driven, relative to the order of its nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    /// Both ways.
    Both,
    /// In node order only.
    Forward,
    /// Against node order only (`oneway=-1`).
    Backward,
}

/// A drivable way: its node ids in order, how it may be driven, and its speed.
#[derive(Clone, Debug)]
pub(super) struct Way {
    pub(super) nodes: Vec<i64>,
    pub(super) direction: Direction,
    pub(super) speed_mps: f64,
}

/// Everything the graph builder needs from the file.
#[derive(Debug, Default)]
pub(super) struct OsmRoads {
    pub(super) ways: Vec<Way>,
    /// Positions (lat, lng degrees) of every node in the file.
    pub(super) nodes: FxHashMap<i64, (f64, f64)>,
}

/// Free-flow car speed of a highway class, km/h (OSRM car profile defaults); `None` for ways a
/// car may not use.
fn class_speed_kmh(highway: &str) -> Option<f64> {
    Some(match highway {
        "motorway" => 90.0,
        "motorway_link" => 45.0,
        "trunk" => 85.0,
        "trunk_link" => 40.0,
        "primary" => 65.0,
        "primary_link" => 30.0,
        "secondary" => 55.0,
        "secondary_link" => 25.0,
        "tertiary" => 40.0,
        "tertiary_link" => 20.0,
        "unclassified" | "residential" | "road" => 25.0,
        "living_street" => 10.0,
        "service" => 15.0,
        _ => return None,
    })
}

/// OSRM drives at 80 % of a tagged speed limit: nobody holds the limit through a city.
const MAXSPEED_FACTOR: f64 = 0.8;

/// A `maxspeed` value in km/h: `50`, `30 mph`, `FR:urban`-style zone names; `None` otherwise.
fn parse_maxspeed_kmh(value: &str) -> Option<f64> {
    let v = value.trim();
    if let Some(mph) = v.strip_suffix("mph") {
        return mph.trim().parse::<f64>().ok().map(|x| x * 1.609_344);
    }
    if let Ok(x) = v.parse::<f64>() {
        return (x > 0.0).then_some(x);
    }
    let zone = v.rsplit(':').next().unwrap_or(v);
    match zone {
        "urban" => Some(50.0),
        "rural" => Some(80.0),
        "motorway" => Some(130.0),
        "living_street" => Some(20.0),
        "walk" => Some(10.0),
        _ => None,
    }
}

/// The tags of one way that decide whether and how a car drives it.
#[derive(Default)]
struct WayTags<'a> {
    highway: Option<&'a str>,
    oneway: Option<&'a str>,
    junction: Option<&'a str>,
    maxspeed: Option<&'a str>,
    access: Option<&'a str>,
    vehicle: Option<&'a str>,
    motor_vehicle: Option<&'a str>,
    motorcar: Option<&'a str>,
    area: Option<&'a str>,
}

impl<'a> WayTags<'a> {
    fn read(tags: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let mut t = WayTags::default();
        for (k, v) in tags {
            match k {
                "highway" => t.highway = Some(v),
                "oneway" => t.oneway = Some(v),
                "junction" => t.junction = Some(v),
                "maxspeed" => t.maxspeed = Some(v),
                "access" => t.access = Some(v),
                "vehicle" => t.vehicle = Some(v),
                "motor_vehicle" => t.motor_vehicle = Some(v),
                "motorcar" => t.motorcar = Some(v),
                "area" => t.area = Some(v),
                _ => {}
            }
        }
        t
    }

    /// The way as a car sees it, or `None` when a car may not use it.
    fn car_way(&self) -> Option<(Direction, f64)> {
        let highway = self.highway?;
        let class_kmh = class_speed_kmh(highway)?;
        if self.area == Some("yes") {
            return None;
        }
        // The most specific access tag wins (motorcar over motor_vehicle over vehicle over
        // access), as in OSM's access hierarchy.
        let access = self
            .motorcar
            .or(self.motor_vehicle)
            .or(self.vehicle)
            .or(self.access);
        if matches!(
            access,
            Some("no" | "private" | "agricultural" | "forestry" | "delivery" | "emergency")
        ) {
            return None;
        }
        let implied_oneway =
            matches!(self.junction, Some("roundabout" | "circular")) || highway == "motorway";
        let direction = match self.oneway {
            Some("yes" | "1" | "true") => Direction::Forward,
            Some("-1" | "reverse") => Direction::Backward,
            Some("no" | "false" | "0") => Direction::Both,
            // `reversible` and `alternating` change by the hour: a car cannot count on them.
            Some("reversible" | "alternating") => return None,
            _ if implied_oneway => Direction::Forward,
            _ => Direction::Both,
        };
        let kmh = self
            .maxspeed
            .and_then(parse_maxspeed_kmh)
            .map(|limit| limit * MAXSPEED_FACTOR)
            .unwrap_or(class_kmh);
        Some((direction, kmh / 3.6))
    }
}

/// Reads the drivable ways and all node positions of `path`.
pub(super) fn read(path: &Path) -> Result<OsmRoads, osmpbf::Error> {
    let mut out = OsmRoads::default();
    ElementReader::from_path(path)?.for_each(|element| match element {
        Element::DenseNode(n) => {
            out.nodes.insert(n.id(), (n.lat(), n.lon()));
        }
        Element::Node(n) => {
            out.nodes.insert(n.id(), (n.lat(), n.lon()));
        }
        Element::Way(w) => {
            if let Some((direction, speed_mps)) = WayTags::read(w.tags()).car_way() {
                let nodes: Vec<i64> = w.refs().collect();
                if nodes.len() >= 2 {
                    out.ways.push(Way {
                        nodes,
                        direction,
                        speed_mps,
                    });
                }
            }
        }
        Element::Relation(_) => {}
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn way(tags: &[(&'static str, &'static str)]) -> Option<(Direction, f64)> {
        WayTags::read(tags.iter().copied()).car_way()
    }

    #[test]
    fn directions_follow_the_tags() {
        let d = |tags| way(tags).map(|(d, _)| d);
        assert_eq!(d(&[("highway", "residential")]), Some(Direction::Both));
        let oneway = [("highway", "residential"), ("oneway", "yes")];
        assert_eq!(d(&oneway), Some(Direction::Forward));
        let reverse = [("highway", "residential"), ("oneway", "-1")];
        assert_eq!(d(&reverse), Some(Direction::Backward));
        let roundabout = [("highway", "primary"), ("junction", "roundabout")];
        assert_eq!(d(&roundabout), Some(Direction::Forward));
        assert_eq!(d(&[("highway", "motorway")]), Some(Direction::Forward));
        let two_way_motorway = [("highway", "motorway"), ("oneway", "no")];
        assert_eq!(d(&two_way_motorway), Some(Direction::Both));
    }

    #[test]
    fn non_car_ways_are_dropped() {
        assert!(way(&[("highway", "footway")]).is_none());
        assert!(way(&[("highway", "service"), ("access", "private")]).is_none());
        let allowed = [
            ("highway", "service"),
            ("access", "no"),
            ("motorcar", "yes"),
        ];
        assert!(way(&allowed).is_some());
        assert!(way(&[("building", "yes")]).is_none());
    }

    #[test]
    fn maxspeed_wins_over_the_class_speed() {
        let (_, class) = way(&[("highway", "primary")]).unwrap();
        assert!((class - 65.0 / 3.6).abs() < 1e-9);
        let (_, tagged) = way(&[("highway", "primary"), ("maxspeed", "30")]).unwrap();
        assert!((tagged - 30.0 * 0.8 / 3.6).abs() < 1e-9);
        assert!((parse_maxspeed_kmh("20 mph").unwrap() - 32.186_88).abs() < 1e-6);
        assert_eq!(parse_maxspeed_kmh("FR:urban"), Some(50.0));
        assert_eq!(parse_maxspeed_kmh("none"), None);
    }
}
