// The live stream and applying its ticks to what the page holds (map.js opens it after each
// snapshot, for that snapshot's viewport and point budget). A tick carries the
// changes between two published views, cut to the page's viewport (see /api/map/stream in
// docs/map-api.md): drivers that changed as [lng, lat, state, id] ("upsert") and the ids of
// those no longer shown ("gone"), or the changed cells (count 0 = empty now); trips and offers
// the same way by id; the surge list only when it changed. Gone first, then upserts. When
// the drivers in view cross the point budget the server switches mode and that tick carries
// the whole set ("full"), as a snapshot would. Beyond the point budget trips and offers come
// as the drivers do: counted into the same cells ("trip_cells": [lng, lat, open, searching,
// offered, accepted, arrived, in_progress, offers]) instead of one by one.
'use strict';

// Points held as growable arrays plus id -> index, so a delta is O(changes): a gone driver's
// slot takes the last driver (swap-remove).
function pointsFrom(list) {
  const p = { x: [], y: [], st: [], ids: [], at: new Map() };
  for (const q of list) putPoint(p, q);
  return p;
}
function putPoint(p, q) {
  let i = p.at.get(q[3]);
  if (i === undefined) { i = p.ids.length; p.at.set(q[3], i); p.ids.push(q[3]); }
  p.x[i] = q[0]; p.y[i] = mercY(q[1]); p.st[i] = q[2];
}
function dropPoint(p, id) {
  const i = p.at.get(id);
  if (i === undefined) return;
  const last = p.ids.length - 1;
  if (i !== last) {
    p.x[i] = p.x[last]; p.y[i] = p.y[last]; p.st[i] = p.st[last]; p.ids[i] = p.ids[last];
    p.at.set(p.ids[i], i);
  }
  p.x.pop(); p.y.pop(); p.st.pop(); p.ids.pop(); p.at.delete(id);
}
function applyPoints(p, d) {
  for (const id of d.gone || []) dropPoint(p, id);
  for (const q of d.upsert || []) putPoint(p, q);
}

// Cells held by "lng,lat" (their centres, as sent), the list rebuilt after each change.
function cellsFrom(deg, list) {
  const byKey = new Map(list.map((c) => [`${c[0]},${c[1]}`, c]));
  return { deg, list, byKey };
}
// A snapshot's drivers, or a tick's whole set after the stream changed mode ("full").
function setDrivers(d) {
  if (d.mode === 'points') {
    S.pts = pointsFrom(d.points); S.cells = null;
  } else if (d.mode === 'cells') {
    S.cells = cellsFrom(d.cell_deg, d.cells); S.pts = null;
  }
}
// A cell whose counts are all zero is empty now.
function applyCells(cells, changed) {
  for (const c of changed) {
    const k = `${c[0]},${c[1]}`;
    if (c.every((v, i) => i < 2 || v === 0)) cells.byKey.delete(k); else cells.byKey.set(k, c);
  }
  if (changed.length) cells.list = [...cells.byKey.values()];
}

// Trips and offers counted per cell (zoomed out), or null when they come one by one; with
// cells the page holds no trip and no offer of its own.
function setTripCells(tc) {
  S.tripCells = tc ? cellsFrom(tc.cell_deg, tc.cells) : null;
  if (tc) { S.trips = new Map(); if (S.snap) S.snap.offers = []; }
}

// Offers (a list on the snapshot) by their id.
function applyOffers(list, d) {
  const gone = new Set([...(d.gone || []), ...(d.upsert || []).map((o) => o.offer)]);
  return list.filter((o) => !gone.has(o.offer)).concat(d.upsert || []);
}

// ---- the live stream, reopened when the viewport or the mode changes.
function connect(url) {
  if (S.es && S.streamUrl === url && S.es.readyState !== EventSource.CLOSED) return;
  if (S.es) S.es.close();
  const es = new EventSource(url);
  S.es = es; S.streamUrl = url;
  es.onopen = () => setConn('live', 'live');
  es.onerror = () => {
    if (es !== S.es) return;
    if (es.readyState === EventSource.CLOSED) {
      setConn('stream closed, retrying', 'down');
      // A closed stream may mean the login expired: api() sends us to /login on a 401. What
      // the stream missed meanwhile comes with the snapshot, which reopens the stream.
      setTimeout(() => { if (es === S.es) requestSnapshot(); }, 2000);
    } else setConn('reconnecting…', 'down');
  };
  es.addEventListener('tick', (m) => {
    const t = JSON.parse(m.data);
    // During a fetch, ticks wait for the snapshot they may follow (a few at most).
    if (S.fetching) { S.pending.push(t); if (S.pending.length > 16) S.pending.shift(); } else applyTick(t);
  });
  // 'lagged': some trip/offer events were skipped; the next tick brings their end state.
  es.addEventListener('trip', (m) => {
    const e = JSON.parse(m.data);
    if (S.tripCells) return; // zoomed out: trips are counted per cell, not listed
    if (TERMINAL.has(e.status)) S.trips.delete(e.trip);
    else {
      const old = S.trips.get(e.trip) || { trip: e.trip, order: Date.now() };
      S.trips.set(e.trip, { ...old, status: e.status, driver: e.driver, offset: e.offset });
    }
    renderTrips();
    S.dirty = true;
    if (e.trip === S.selected) refreshDetail();
  });
  es.addEventListener('offer', (m) => {
    const e = JSON.parse(m.data);
    // An answered, expired or withdrawn offer leaves the map now, not at the next tick.
    if (e.state !== 'SENT' && S.snap && S.snap.offers) {
      S.snap.offers = S.snap.offers.filter((o) => o.offer !== e.offer);
      S.dirty = true;
    }
    if (e.trip === S.selected) refreshDetail();
  });
}

// One tick: the counters always; the changes when they apply to the view the page holds,
// else a snapshot (the page missed a view).
function applyTick(t) {
  setStats(t.stats, t.offset);
  $('lag').textContent = `view ${Math.max(0, Date.now() - t.at_ms)} ms behind the engine clock`;
  if (!S.snap || t.seq <= S.seq) return; // no snapshot yet, or it already shows this view
  const d = t.drivers;
  const fits = d && (d.full || (d.mode === 'points' ? S.pts && !S.tripCells
    : S.cells && S.cells.deg === d.cell_deg && S.tripCells && S.tripCells.deg === d.cell_deg));
  if (t.base !== S.seq || !fits) { requestSnapshot(); return; }
  S.seq = t.seq; S.deltas++;
  S.snap.at_ms = t.at_ms; S.snap.offset = t.offset; S.snapLocalMs = performance.now();
  if (d.full) setDrivers(d); // the server switched between points and cells
  else if (d.mode === 'points') applyPoints(S.pts, d);
  else applyCells(S.cells, d.cells);
  const tc = t.trip_cells;
  if (tc && tc.full) setTripCells(tc);
  else if (tc) applyCells(S.tripCells, tc.cells);
  if (t.trips && t.trips.full) { S.tripCells = null; S.trips = new Map(); S.snap.offers = []; }
  if (t.trips) {
    for (const id of t.trips.gone) S.trips.delete(id);
    for (const trip of t.trips.upsert) {
      const old = S.trips.get(trip.trip);
      // An event newer than this view keeps its status.
      const newer = old && old.offset >= t.offset ? { status: old.status, driver: old.driver, offset: old.offset } : {};
      S.trips.set(trip.trip, { ...trip, offset: t.offset, order: trip.requested_at_ms || 0, ...newer });
    }
  }
  if (t.offers) S.snap.offers = applyOffers(S.snap.offers || [], t.offers);
  if (t.surge) S.snap.surge = t.surge;
  // A cells stream has no trip events: the selected trip's changes come with the ticks.
  if (S.selected && t.trips && (t.trips.gone.includes(S.selected) || t.trips.upsert.some((x) => x.trip === S.selected))) refreshDetail();
  renderTrips();
  S.dirty = true;
}
