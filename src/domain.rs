//! The ground floor: validated values every other module speaks in.
//!
//! Nothing here knows about gRPC, channels or clocks. Constructors validate, so a `LatLng` or an
//! `ExternalId` that exists is known to be good, and the layers above never re-check.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Mean Earth radius in metres (IUGG), used by every distance in the engine so that the index,
/// its brute-force oracle and the ETA model agree to the last bit.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A WGS84 position in degrees. Always finite, latitude in `-90..=90`, longitude in
/// `-180..=180`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(try_from = "(f64, f64)")]
pub struct LatLng {
    lat_deg: f64,
    lng_deg: f64,
}

impl LatLng {
    /// Validates a coordinate pair.
    ///
    /// ```
    /// use dispatch::LatLng;
    /// assert!(LatLng::new(40.7, -74.0).is_ok());
    /// assert!(LatLng::new(f64::NAN, 0.0).is_err());
    /// assert!(LatLng::new(91.0, 0.0).is_err());
    /// ```
    pub fn new(lat_deg: f64, lng_deg: f64) -> Result<Self, Error> {
        if !lat_deg.is_finite() || !lng_deg.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "coordinates must be finite numbers, got lat_deg={lat_deg}, lng_deg={lng_deg}"
            )));
        }
        if !(-90.0..=90.0).contains(&lat_deg) {
            return Err(Error::InvalidArgument(format!(
                "lat_deg must be within -90..=90, got {lat_deg}"
            )));
        }
        if !(-180.0..=180.0).contains(&lng_deg) {
            return Err(Error::InvalidArgument(format!(
                "lng_deg must be within -180..=180, got {lng_deg}"
            )));
        }
        Ok(LatLng { lat_deg, lng_deg })
    }

    /// Latitude in degrees.
    pub fn lat_deg(self) -> f64 {
        self.lat_deg
    }

    /// Longitude in degrees.
    pub fn lng_deg(self) -> f64 {
        self.lng_deg
    }

    /// Great-circle (haversine) distance in metres on a sphere of [`EARTH_RADIUS_M`].
    ///
    /// We compute it ourselves rather than through `geo` so that every caller (index, oracle,
    /// ETA) uses one formula bit for bit; the index's exactness tests depend on that.
    #[inline]
    pub fn distance_m(self, other: LatLng) -> f64 {
        let (lat1, lat2) = (self.lat_deg.to_radians(), other.lat_deg.to_radians());
        let dlat = lat2 - lat1;
        let dlng = (other.lng_deg - self.lng_deg).to_radians();
        let h = (dlat * 0.5).sin().powi(2) + lat1.cos() * lat2.cos() * (dlng * 0.5).sin().powi(2);
        2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
    }
}

impl TryFrom<(f64, f64)> for LatLng {
    type Error = Error;
    fn try_from((lat_deg, lng_deg): (f64, f64)) -> Result<Self, Error> {
        LatLng::new(lat_deg, lng_deg)
    }
}

impl Serialize for LatLng {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.lat_deg, self.lng_deg).serialize(s)
    }
}

impl fmt::Display for LatLng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:.6}, {:.6})", self.lat_deg, self.lng_deg)
    }
}

/// Longest id a caller may choose, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// A caller-chosen id (driver, rider, request, gateway): 1..=64 bytes of printable ASCII.
/// Cheap to clone (shared), so events and records can carry it freely.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExternalId(Arc<str>);

/// Read from the borrowed text where the format allows (postcard does): one allocation per
/// id, not a `String` first and then the shared copy; recovery decodes millions of them.
impl<'de> Deserialize<'de> for ExternalId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ExternalId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id: 1 to 64 bytes of printable ASCII")
            }
            fn visit_str<E: serde::de::Error>(self, raw: &str) -> Result<ExternalId, E> {
                ExternalId::new("id", raw).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Serialized as the plain string, without copying it first.
impl Serialize for ExternalId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl TryFrom<String> for ExternalId {
    type Error = Error;
    fn try_from(raw: String) -> Result<Self, Error> {
        ExternalId::new("id", &raw)
    }
}

impl ExternalId {
    /// Validates an id; `what` names the field in the error ("driver_id").
    pub fn new(what: &str, raw: &str) -> Result<Self, Error> {
        if raw.is_empty() {
            return Err(Error::InvalidArgument(format!("{what} must not be empty")));
        }
        if raw.len() > MAX_ID_LEN {
            return Err(Error::InvalidArgument(format!(
                "{what} is {} bytes long; the limit is {MAX_ID_LEN}",
                raw.len()
            )));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidArgument(format!(
                "{what} must be printable ASCII without spaces, got {raw:?}"
            )));
        }
        Ok(ExternalId(Arc::from(raw)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ExternalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ExternalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ExternalId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The engine's dense handle for a driver: an index into its driver table and the key the
/// spatial index stores. Dense small integers let the index map driver -> slot with a `Vec`
/// instead of a hash table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DriverKey(pub u32);

macro_rules! engine_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// Parses the wire form (`
            #[doc = $prefix]
            /// <n>`); `None` for anything the engine cannot have issued.
            pub fn parse(raw: &str) -> Option<Self> {
                let digits = raw.strip_prefix($prefix)?;
                if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                digits.parse().ok().map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

engine_id!(
    /// A trip id issued by the engine, `trip-<n>` on the wire.
    TripId,
    "trip-"
);
engine_id!(
    /// An offer id issued by the engine, `offer-<n>` on the wire.
    OfferId,
    "offer-"
);

/// Vehicle classes; a trip for a class is only offered to drivers of that class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum VehicleClass {
    /// On a trip: any class. On a driver: unspecified (matches only "any class" trips).
    #[default]
    Any,
    /// Standard cars.
    Economy,
    /// Newer, roomier cars.
    Comfort,
    /// Six seats or more.
    Xl,
}

impl VehicleClass {
    /// Whether a driver of class `self` may serve a trip that asks for `wanted`.
    pub fn serves(self, wanted: VehicleClass) -> bool {
        wanted == VehicleClass::Any || wanted == self
    }
}

/// A driver's average rating, validated to `1.0..=5.0`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(try_from = "f64")]
pub struct Rating(f64);

impl Serialize for Rating {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl TryFrom<f64> for Rating {
    type Error = Error;
    fn try_from(value: f64) -> Result<Self, Error> {
        Rating::new(value)
    }
}

impl Rating {
    /// Validates a rating.
    pub fn new(value: f64) -> Result<Self, Error> {
        if !value.is_finite() || !(1.0..=5.0).contains(&value) {
            return Err(Error::InvalidArgument(format!(
                "rating must be within 1.0..=5.0, got {value}"
            )));
        }
        Ok(Rating(value))
    }

    /// The rating value.
    pub fn get(self) -> f64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latlng_refuses_bad_coordinates() {
        for (lat, lng) in [
            (f64::NAN, 0.0),
            (0.0, f64::NAN),
            (f64::INFINITY, 0.0),
            (0.0, f64::NEG_INFINITY),
            (90.0001, 0.0),
            (-90.0001, 0.0),
            (0.0, 180.0001),
            (0.0, -180.0001),
        ] {
            assert!(LatLng::new(lat, lng).is_err(), "{lat},{lng} accepted");
        }
        assert!(LatLng::new(90.0, 180.0).is_ok());
        assert!(LatLng::new(-90.0, -180.0).is_ok());
    }

    #[test]
    fn distance_is_symmetric_and_plausible() {
        let a = LatLng::new(40.7128, -74.0060).unwrap();
        let b = LatLng::new(40.7306, -73.9352).unwrap();
        let d = a.distance_m(b);
        assert!((d - a.distance_m(b)).abs() < 1e-9);
        assert!((6_000.0..6_300.0).contains(&d), "{d}");
        // Across the antimeridian the short way round is a few hundred metres.
        let e = LatLng::new(0.0, 179.999).unwrap();
        let w = LatLng::new(0.0, -179.999).unwrap();
        assert!(e.distance_m(w) < 300.0);
    }

    #[test]
    fn ids_are_validated() {
        assert!(ExternalId::new("driver_id", "").is_err());
        assert!(ExternalId::new("driver_id", &"x".repeat(65)).is_err());
        assert!(ExternalId::new("driver_id", "a b").is_err());
        assert!(ExternalId::new("driver_id", "d-42").is_ok());
        assert_eq!(TripId::parse("trip-7"), Some(TripId(7)));
        assert_eq!(TripId::parse("trip-"), None);
        assert_eq!(TripId::parse("offer-7"), None);
        assert_eq!(TripId(7).to_string(), "trip-7");
        assert_eq!(OfferId::parse("offer-99999999999999999999999"), None);
    }
}
