//! Regions: the named polygons a city is cut into, and which one a point, a trip id or an
//! offer id belongs to.
//!
//! A region is a GeoJSON `Polygon` or `MultiPolygon` (inline in the config or in a file),
//! tested with `geo`'s point-in-polygon. Regions are numbered by their order in the config
//! (1, 2, ...): region `n` issues event offsets, and so trip and offer ids (which are offsets),
//! from `n * REGION_ID_SPAN`, so an id names its region and is unique across the cluster. Every
//! process of a cluster must list the regions in the same order; appending a region is safe,
//! reordering or removing one is not.

use std::path::PathBuf;

use geo::{Closest, ClosestPoint, Contains, Intersects, MultiPolygon, Point};
use serde::{Deserialize, Serialize};

use crate::domain::LatLng;
use crate::error::Error;

/// Event offsets (and so trip and offer ids) each region may issue: region `n` uses
/// `n * REGION_ID_SPAN .. (n + 1) * REGION_ID_SPAN`. 10^12 keeps the region readable in the
/// decimal id (`trip-2000000000041` is region 2's) and lasts 30 years at 1000 events/s.
pub const REGION_ID_SPAN: u64 = 1_000_000_000_000;

/// One region as configured (`[[regions]]` in TOML).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Its name: letters, digits, `-` and `_`; used in logs, data directories and subjects.
    pub name: String,
    /// The area as inline GeoJSON: a `Polygon` or `MultiPolygon` geometry, or a `Feature` or
    /// `FeatureCollection` of them (coordinates are `[lng, lat]`, degrees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geojson: Option<String>,
    /// The same, read from this file (exactly one of `geojson` and `geojson_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geojson_file: Option<PathBuf>,
}

/// A region ready for lookups.
#[derive(Clone, Debug)]
pub struct Region {
    /// Its configured name.
    pub name: String,
    /// Its number: 1 for the first configured region.
    pub number: u64,
    area: MultiPolygon<f64>,
}

impl Region {
    /// The first event offset (and id) this region issues.
    pub fn first_offset(&self) -> u64 {
        self.number * REGION_ID_SPAN
    }

    /// Whether `point` is inside this region (or on its border).
    pub fn covers(&self, point: LatLng) -> bool {
        let p = Point::new(point.lng_deg(), point.lat_deg());
        self.area.contains(&p) || self.area.intersects(&p)
    }

    /// Great-circle metres from `point` to this region: 0 inside or on its border, else to
    /// the nearest boundary point (nearest in degrees, which is within a few per cent of the
    /// nearest in metres at city scale: good enough for a hysteresis margin and a search
    /// radius).
    pub fn distance_m(&self, point: LatLng) -> f64 {
        if self.covers(point) {
            return 0.0;
        }
        let p = Point::new(point.lng_deg(), point.lat_deg());
        match self.area.closest_point(&p) {
            Closest::Intersection(_) => 0.0,
            Closest::SinglePoint(q) => LatLng::new(q.y(), q.x())
                .map(|q| point.distance_m(q))
                .unwrap_or(f64::INFINITY),
            Closest::Indeterminate => f64::INFINITY,
        }
    }
}

/// The configured regions, in config order.
#[derive(Clone, Debug, Default)]
pub struct RegionMap {
    regions: Vec<Region>,
}

impl RegionMap {
    /// Reads and checks the configured regions: names unique and well-formed, each area
    /// readable GeoJSON with at least one polygon. Errors name the region and the key.
    pub fn from_config(configs: &[RegionConfig]) -> Result<RegionMap, String> {
        let mut regions: Vec<Region> = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let valid_name = !c.name.is_empty()
                && c.name.len() <= 64
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                return Err(format!(
                    "regions[{i}].name {:?}: use 1-64 letters, digits, `-` or `_`",
                    c.name
                ));
            }
            if regions.iter().any(|r| r.name == c.name) {
                return Err(format!("regions[{i}].name {:?} is listed twice", c.name));
            }
            let text = match (&c.geojson, &c.geojson_file) {
                (Some(text), None) => text.clone(),
                (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                    format!("region {:?}: geojson_file {}: {e}", c.name, path.display())
                })?,
                _ => {
                    return Err(format!(
                        "region {:?}: set exactly one of `geojson` (inline) and `geojson_file`",
                        c.name
                    ));
                }
            };
            let area = parse_area(&text).map_err(|why| format!("region {:?}: {why}", c.name))?;
            regions.push(Region {
                name: c.name.clone(),
                number: i as u64 + 1,
                area,
            });
        }
        Ok(RegionMap { regions })
    }

    /// Whether any region is configured (otherwise the engine runs as one implicit region).
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The regions, in config order (index `i` is region number `i + 1`).
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The index of the first region (config order) covering `point`; `what` names the point
    /// in the INVALID_ARGUMENT error when none does.
    pub fn locate(&self, what: &str, point: LatLng) -> Result<usize, Error> {
        self.regions
            .iter()
            .position(|r| r.covers(point))
            .ok_or_else(|| {
                let names: Vec<&str> = self.regions.iter().map(|r| r.name.as_str()).collect();
                Error::InvalidArgument(format!(
                    "{what} (lat {}, lng {}) is outside every region this cluster serves ({}); \
                     only points inside a region can be dispatched",
                    point.lat_deg(),
                    point.lng_deg(),
                    names.join(", ")
                ))
            })
    }

    /// The index of the region that issued an id (or offset) `n`, if any did.
    pub fn of_id(&self, n: u64) -> Option<usize> {
        let number = n / REGION_ID_SPAN;
        (number >= 1 && number as usize <= self.regions.len()).then(|| number as usize - 1)
    }

    /// The index of the region named `name`.
    pub fn by_name(&self, name: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.name == name)
    }

    /// The region names, comma-separated (for messages).
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.regions.iter().map(|r| r.name.as_str()).collect();
        names.join(", ")
    }
}

/// The polygons of a GeoJSON text: a geometry, a feature or a feature collection.
fn parse_area(text: &str) -> Result<MultiPolygon<f64>, String> {
    let json: geojson::GeoJson = text.parse().map_err(|e| format!("not GeoJSON: {e}"))?;
    let geometries: Vec<geojson::Geometry> = match json {
        geojson::GeoJson::Geometry(g) => vec![g],
        geojson::GeoJson::Feature(f) => f.geometry.into_iter().collect(),
        geojson::GeoJson::FeatureCollection(fc) => {
            fc.features.into_iter().filter_map(|f| f.geometry).collect()
        }
    };
    let mut polygons = Vec::new();
    for g in geometries {
        match geo::Geometry::<f64>::try_from(g).map_err(|e| format!("bad geometry: {e}"))? {
            geo::Geometry::Polygon(p) => polygons.push(p),
            geo::Geometry::MultiPolygon(mp) => polygons.extend(mp.0),
            other => {
                return Err(format!(
                    "only Polygon and MultiPolygon areas are accepted, got {}",
                    kind(&other)
                ));
            }
        }
    }
    if polygons.is_empty() {
        return Err("the GeoJSON holds no polygon".into());
    }
    Ok(MultiPolygon(polygons))
}

fn kind(g: &geo::Geometry<f64>) -> &'static str {
    match g {
        geo::Geometry::Point(_) => "a Point",
        geo::Geometry::Line(_) | geo::Geometry::LineString(_) => "a LineString",
        geo::Geometry::MultiPoint(_) => "a MultiPoint",
        geo::Geometry::MultiLineString(_) => "a MultiLineString",
        geo::Geometry::GeometryCollection(_) => "a GeometryCollection",
        _ => "another geometry",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lng/lat box as an inline GeoJSON polygon.
    pub(crate) fn square(lng0: f64, lat0: f64, lng1: f64, lat1: f64) -> String {
        format!(
            r#"{{"type":"Polygon","coordinates":[[[{lng0},{lat0}],[{lng1},{lat0}],[{lng1},{lat1}],[{lng0},{lat1}],[{lng0},{lat0}]]]}}"#
        )
    }

    fn region(name: &str, geojson: String) -> RegionConfig {
        RegionConfig {
            name: name.into(),
            geojson: Some(geojson),
            geojson_file: None,
        }
    }

    fn west_east() -> RegionMap {
        RegionMap::from_config(&[
            region("west", square(-74.1, 40.6, -74.0, 40.9)),
            region("east", square(-74.0, 40.6, -73.9, 40.9)),
        ])
        .unwrap()
    }

    #[test]
    fn a_point_belongs_to_the_region_that_covers_it() {
        let map = west_east();
        let at = |lat, lng| map.locate("pickup", LatLng::new(lat, lng).unwrap());
        assert_eq!(at(40.75, -74.05).unwrap(), 0);
        assert_eq!(at(40.75, -73.95).unwrap(), 1);
        // On the shared border: the first region in config order.
        assert_eq!(at(40.75, -74.0).unwrap(), 0);
        let err = at(41.5, -73.95).unwrap_err().to_string();
        assert!(
            err.contains("pickup (lat 41.5, lng -73.95)") && err.contains("west, east"),
            "{err}"
        );
    }

    #[test]
    fn distance_to_a_region_is_zero_inside_and_metres_to_its_edge_outside() {
        let map = west_east();
        let west = &map.regions()[0];
        assert_eq!(west.distance_m(LatLng::new(40.75, -74.05).unwrap()), 0.0);
        assert_eq!(west.distance_m(LatLng::new(40.75, -74.0).unwrap()), 0.0);
        // 0.01 degrees of longitude east of the border at 40.75 N: about 843 m.
        let d = west.distance_m(LatLng::new(40.75, -73.99).unwrap());
        assert!((d - 843.0).abs() < 10.0, "{d}");
    }

    #[test]
    fn ids_name_their_region() {
        let map = west_east();
        assert_eq!(map.regions()[1].first_offset(), 2 * REGION_ID_SPAN);
        assert_eq!(map.of_id(REGION_ID_SPAN + 7), Some(0));
        assert_eq!(map.of_id(2 * REGION_ID_SPAN), Some(1));
        assert_eq!(map.of_id(7), None);
        assert_eq!(map.of_id(3 * REGION_ID_SPAN), None);
    }

    #[test]
    fn features_and_multipolygons_are_areas_but_lines_are_not() {
        let feature = format!(
            r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{}},"geometry":{}}}]}}"#,
            square(0.0, 0.0, 1.0, 1.0)
        );
        let map = RegionMap::from_config(&[region("a", feature)]).unwrap();
        assert!(map.regions()[0].covers(LatLng::new(0.5, 0.5).unwrap()));
        let line = r#"{"type":"LineString","coordinates":[[0,0],[1,1]]}"#.to_string();
        let err = RegionMap::from_config(&[region("a", line)]).unwrap_err();
        assert!(err.contains("got a LineString"), "{err}");
    }

    #[test]
    fn bad_region_settings_are_refused_with_their_key() {
        let ok = square(0.0, 0.0, 1.0, 1.0);
        let twice = RegionMap::from_config(&[region("a", ok.clone()), region("a", ok.clone())]);
        assert!(twice.unwrap_err().contains("listed twice"));
        let bad_name = RegionMap::from_config(&[region("a b", ok)]);
        assert!(bad_name.unwrap_err().contains("regions[0].name"));
        let neither = RegionConfig {
            name: "a".into(),
            geojson: None,
            geojson_file: None,
        };
        assert!(
            RegionMap::from_config(&[neither])
                .unwrap_err()
                .contains("exactly one of")
        );
        let junk = RegionMap::from_config(&[region("a", "{".into())]);
        assert!(junk.unwrap_err().contains("not GeoJSON"));
    }
}
