//! Pickup ETAs from a road graph: the `road` ETA model and the constructor that picks the
//! model named in the config.
//!
//! [`road`] holds the graph itself (OpenStreetMap reading, contraction hierarchies, snapping,
//! many-to-one queries); it knows nothing of the dispatcher and is also what a simulator uses
//! to drive on the same streets.

pub mod road;
