// Placeholder script until the map page lands (branch `mappage` replaces this file): keeps the
// counters current from the snapshot API.
"use strict";
async function refresh() {
  const r = await fetch("/api/map/snapshot?max_points=1");
  if (!r.ok) return;
  const s = await r.json();
  document.getElementById("drivers-online").textContent = s.stats.drivers_online;
  document.getElementById("trips-open").textContent = s.stats.trips_open;
}
new EventSource("/api/map/stream").addEventListener("tick", refresh);
refresh();
