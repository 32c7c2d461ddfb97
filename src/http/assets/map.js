// The operator's live map: plain JS on a <canvas>, no library, no build step, no network but
// dispatchd's own API (see /api/map/* in the README). Why it is built this way:
// - The server publishes a conflated view ~4 times a second and aggregates drivers into cells
//   when more than max_points are in the viewport, so the page asks only for what it shows and
//   never holds 100k DOM nodes: drivers are rectangles on one canvas, drawn in three batched
//   paths (one per state), and only when something changed (requestAnimationFrame + dirty flag).
// - The page fetches a whole snapshot on load and after a pan or zoom (debounced); between
//   them it applies the stream's ticks, which carry only what changed in its viewport since
//   the view it holds (live.js). A tick it cannot apply (it missed a view) means a snapshot.
// - Zoomed out (more than MAX_POINTS drivers in view) the server sends cells, on the stream
//   too (once a second, trips and offers with the ticks only), and trips and offers come
//   counted into the same cells: rings sized by the riders waiting there, no trip list.
// - Counters come from the stream's tick (the same numbers GetStats reports at that publish);
//   trip changes also arrive as events, so a new trip shows at once.
// - Every error is caught and shown in the header instead of thrown; window.mapErrors keeps
//   any uncaught one (tests read it) and window.mapPerf the frame times.
'use strict';

window.mapErrors = [];
window.addEventListener('error', (e) => window.mapErrors.push(String(e.message || e.type)), true);
window.addEventListener('unhandledrejection', (e) => window.mapErrors.push(String(e.reason)));

const COLOURS = ['#2e9e44', '#e39b00', '#3563c9']; // by driver state: available, offered, on trip
const STATE_NAMES = ['available', 'offered', 'on trip'];
const RIDER = '#b4308f';
const OPEN_WAITING = new Set(['TRIP_STATUS_SEARCHING', 'TRIP_STATUS_OFFERED',
  'TRIP_STATUS_ACCEPTED', 'TRIP_STATUS_ARRIVED']);
const TERMINAL = new Set(['TRIP_STATUS_COMPLETED', 'TRIP_STATUS_CANCELLED', 'TRIP_STATUS_NO_DRIVERS']);
const MAX_LIST = 200;           // trip list rows kept in the DOM (newest first)
const SNAPSHOT_DEBOUNCE_MS = 150; // after the last pan or zoom step; one request in flight
// Beyond this many drivers in view the server sends cells (`?max_points=N` in the page's
// address sets another budget, e.g. a small one to see the aggregates on a small city).
const MAX_POINTS = Math.max(1, Math.min(200000,
  Number(new URLSearchParams(location.search).get('max_points')) || 20000));

const $ = (id) => document.getElementById(id);
const canvas = $('map');
const ctx = canvas.getContext('2d');

// ---- projection: Web Mercator; world x = lng in degrees, world y = mercator y in degrees.
const mercY = (lat) => Math.log(Math.tan(Math.PI / 4 + lat * Math.PI / 360)) * 180 / Math.PI;
const latOf = (y) => Math.atan(Math.exp(y * Math.PI / 180)) * 360 / Math.PI - 90;
// scale: px per degree; fitted once the view was set (from the drivers' bounds or by the user)
const view = { x: 0, y: 0, scale: 4, w: 1, h: 1, fitted: false, touched: false };
const sx = (lng) => (lng - view.x) * view.scale + view.w / 2;
const sy = (lat) => (view.y - mercY(lat)) * view.scale + view.h / 2;
const lngAt = (px) => (px - view.w / 2) / view.scale + view.x;
const latAt = (py) => latOf(view.y - (py - view.h / 2) / view.scale);
function viewBbox() {
  const clamp = (v) => Math.max(-85, Math.min(85, v));
  return [Math.max(-180, lngAt(0)), clamp(latAt(view.h)), Math.min(180, lngAt(view.w)), clamp(latAt(0))];
}

// ---- state
const S = {
  snap: null, snapLocalMs: 0,   // last snapshot and performance.now() when it arrived
  pts: null, cells: null,        // projected drivers (typed arrays) or aggregated cells
  trips: new Map(),              // trip id -> {trip, status, driver, pickup, offset}
  tripCells: null,               // zoomed out: trips and offers counted per cell, else null
  stats: null, statsOffset: -1,
  roads: null, noRoads: false, roadsKey: '',
  selected: null, detailTimer: 0,
  dirty: true, fetching: false, wantSnap: false,
  seq: 0,                        // the view the page holds (snapshot plus the ticks applied)
  es: null, streamUrl: '', pending: [], // the stream; ticks that arrived during a fetch
  loads: 0, deltas: 0,           // snapshots fetched, ticks applied (window.mapState, tests)
};
window.mapState = S;

// ---- fetching
async function api(path) {
  const r = await fetch(path, { headers: { Accept: 'application/json' } });
  if (r.status === 401) { location.href = '/login'; throw new Error('login needed'); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { const e = new Error(body.error || `HTTP ${r.status}`); e.status = r.status; throw e; }
  return body;
}
function setConn(text, cls) { const c = $('conn'); c.textContent = text; c.className = 'conn ' + cls; }

function requestSnapshot() {
  S.wantSnap = true;
  if (S.fetching) return;
  S.wantSnap = false; S.fetching = true;
  const box = S.snap && view.fitted ? viewBbox().map((v) => v.toFixed(5)).join(',') : '';
  api(`/api/map/snapshot?${box ? `bbox=${box}&` : ''}max_points=${MAX_POINTS}`)
    .then((snap) => onSnapshot(snap, box))
    .catch((e) => setConn(`snapshot failed: ${e.message}`, 'down'))
    .finally(() => {
      S.fetching = false;
      if (S.wantSnap) requestSnapshot();
      else { const ticks = S.pending; S.pending = []; ticks.forEach(applyTick); }
    });
}
let snapTimer = 0;
function snapshotSoon() { clearTimeout(snapTimer); snapTimer = setTimeout(requestSnapshot, SNAPSHOT_DEBOUNCE_MS); }

function onSnapshot(snap, box) {
  S.snap = snap; S.snapLocalMs = performance.now(); S.seq = snap.seq; S.loads++;
  if (!view.fitted && !view.touched && snap.bounds) { fit(snap.bounds); requestSnapshot(); }
  setDrivers(snap.drivers || {});
  // The stream follows the snapshot's viewport and point budget; the server picks the mode.
  // Naming the view it holds, so the first tick leads from it.
  connect(`/api/map/stream?${box ? `bbox=${box}&` : ''}max_points=${MAX_POINTS}&seq=${snap.seq}`);
  setStats(snap.stats, snap.offset);
  // The view's trips replace the list, except trips an event told us about after that view.
  const next = new Map();
  for (const t of snap.trips || []) {
    next.set(t.trip, { ...t, offset: snap.offset, order: t.requested_at_ms || 0 });
  }
  for (const [id, t] of S.trips) {
    if (!snap.trip_cells && t.offset >= snap.offset && !TERMINAL.has(t.status)) next.set(id, { ...next.get(id), ...t });
  }
  S.trips = next;
  setTripCells(snap.trip_cells);
  renderTrips();
  S.dirty = true;
  maybeRoads();
}

function setStats(stats, offset) {
  if (!stats || offset < S.statsOffset) return;
  S.stats = stats; S.statsOffset = offset;
  const show = { 'drivers-online': stats.drivers_online, 'drivers-available': stats.drivers_available,
    'drivers-offered': stats.drivers_offered, 'drivers-on-trip': stats.drivers_on_trip,
    'trips-open': stats.trips_open, 'pending-offers': stats.pending_offers };
  for (const [id, v] of Object.entries(show)) {
    const text = String(v ?? '–');
    if ($(id).textContent !== text) $(id).textContent = text;
  }
}

function maybeRoads() {
  if (S.noRoads || !view.fitted) return;
  const [a, b, c, d] = viewBbox();
  const pad = [(c - a) / 2, (d - b) / 2];
  const box = [a - pad[0], b - pad[1], c + pad[0], d + pad[1]].map((v) => v.toFixed(3)).join(',');
  if (box === S.roadsKey) return;
  S.roadsKey = box;
  api(`/api/map/roads?bbox=${box}`)
    .then((r) => { S.roads = r.segments || []; S.dirty = true; })
    // No road map loaded: a lat/lng grid instead, for the life of this page.
    .catch((e) => { if (e.status === 404) { S.noRoads = true; S.roads = null; S.dirty = true; } });
}

// ---- the trip list and the detail panel
function el(tag, attrs, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') n.className = v; else n.setAttribute(k, v);
  }
  for (const k of kids) n.append(k instanceof Node ? k : String(k ?? ''));
  return n;
}
const shortStatus = (s) => (s || '').replace('TRIP_STATUS_', '').toLowerCase().replace('_', ' ');

let listKey = '';
function renderTrips() {
  const trips = [...S.trips.values()].sort((a, b) => (b.order || 0) - (a.order || 0));
  const shown = trips.slice(0, MAX_LIST);
  const key = shown.map((t) => t.trip + t.status + (t.trip === S.selected)).join('|') + trips.length;
  const counted = S.tripCells ? S.tripCells.list.reduce((n, c) => n + c[2], 0) : -1;
  if (key + counted === listKey) return; // nothing visible changed: leave the DOM alone
  listKey = key + counted;
  if (counted >= 0) { // zoomed out: trips are counted per cell
    $('trip-count').textContent = `(${counted})`;
    $('trip-list').replaceChildren(el('li', { class: 'more' }, `${counted} open trips in view, counted per cell: zoom in to list them`));
    return;
  }
  $('trip-count').textContent = `(${trips.length})`;
  const rows = shown.map((t) => el('li', { 'data-trip': t.trip, class: t.trip === S.selected ? 'selected' : '' },
    el('span', {}, t.trip, t.driver ? ` → ${t.driver}` : ''), el('span', { class: 'status' }, shortStatus(t.status))));
  if (trips.length > MAX_LIST) rows.push(el('li', { class: 'more' }, `+${trips.length - MAX_LIST} more`));
  $('trip-list').replaceChildren(...rows);
}

function select(trip) {
  S.selected = trip; listKey = '';
  renderTrips();
  $('trip-detail').hidden = !trip;
  S.dirty = true;
  if (trip) refreshDetail();
}

function refreshDetail() {
  // Several events for one trip arrive together: one request for all of them.
  clearTimeout(S.detailTimer);
  S.detailTimer = setTimeout(() => {
    const id = S.selected;
    if (!id) return;
    api(`/api/trips/${encodeURIComponent(id)}`)
      .then((d) => { if (S.selected === id) renderDetail(d); })
      .catch((e) => { if (S.selected === id) $('detail-summary').textContent = e.message; });
  }, 50);
}

const fmt = (v, digits = 3) => (typeof v === 'number' ? v.toFixed(digits) : String(v ?? '–'));
function renderDetail(d) {
  const t = d.trip || {};
  $('detail-trip').textContent = t.trip || S.selected;
  $('detail-summary').textContent = `${shortStatus(t.status)}${t.ended ? ' (ended)' : ''} · rider ${t.rider || '–'}` +
    ` · driver ${t.driver || 'none yet'}`;
  // Before an offer is accepted, the pending one shows why that driver is being asked.
  const pending = (d.offers || []).filter((o) => o.state === 'SENT').pop();
  const w = d.winning_offer || pending;
  $('detail-why-title').textContent = d.winning_offer ? 'Why this driver' : 'Why this driver is asked';
  if (w) {
    const order = ['eta', 'rating', 'acceptance', 'fairness'];
    const rank = (k) => (order.includes(k) ? order.indexOf(k) : order.length);
    const rows = Object.entries(w.score || {}).filter(([k]) => k !== 'total')
      .sort(([a], [b]) => rank(a) - rank(b) || a.localeCompare(b))
      .map(([k, v]) => el('tr', {}, el('td', {}, k), el('td', {}, fmt(v))));
    rows.push(el('tr', { class: 'total' }, el('td', {}, 'total'), el('td', {}, fmt((w.score || {}).total))));
    $('detail-why').replaceChildren(
      el('p', {}, `${w.driver}: pickup in ${fmt(w.pickup_eta_s, 0)} s, ${fmt(w.pickup_distance_m, 0)} m away`),
      el('table', { class: 'score' }, ...rows));
  } else $('detail-why').replaceChildren(el('p', { class: 'status' }, 'no offer won yet'));
  $('detail-offers').replaceChildren(...(d.offers || []).map((o) => el('li', {},
    `${o.offer} → ${o.driver}: ${(o.state || '').toLowerCase()}, score ${fmt((o.score || {}).total)}`)));
  $('detail-events').replaceChildren(...(d.events || []).map((e) => el('li', { 'data-kind': e.kind },
    el('time', {}, new Date(e.at_ms).toISOString().slice(11, 23)), el('span', { class: 'kind' }, e.kind), ' ', e.text)));
}

// ---- drawing
function fit(b) {
  const [x0, y0, x1, y1] = [b[0], mercY(b[1]), b[2], mercY(b[3])];
  view.x = (x0 + x1) / 2; view.y = (y0 + y1) / 2;
  view.scale = Math.min(2e6, 0.9 * Math.min(view.w / Math.max(x1 - x0, 1e-4), view.h / Math.max(y1 - y0, 1e-4)));
  view.fitted = true; S.dirty = true;
}

function drawGrid() {
  const spanDeg = view.w / view.scale;
  let step = Math.pow(10, Math.floor(Math.log10(spanDeg / 8)));
  if (spanDeg / step > 20) step *= 5; else if (spanDeg / step > 10) step *= 2;
  const [a, b, c, d] = viewBbox();
  ctx.strokeStyle = '#e6e8ec'; ctx.lineWidth = 1; ctx.fillStyle = '#9aa1ad';
  ctx.font = '10px system-ui, sans-serif';
  ctx.beginPath();
  const digits = Math.max(0, -Math.floor(Math.log10(step)));
  for (let lng = Math.ceil(a / step) * step; lng <= c; lng += step) {
    const x = Math.round(sx(lng)) + 0.5; ctx.moveTo(x, 0); ctx.lineTo(x, view.h);
    ctx.fillText(lng.toFixed(digits), x + 2, view.h - 4);
  }
  for (let lat = Math.ceil(b / step) * step; lat <= d; lat += step) {
    const y = Math.round(sy(lat)) + 0.5; ctx.moveTo(0, y); ctx.lineTo(view.w, y);
    ctx.fillText(lat.toFixed(digits), 2, y - 2);
  }
  ctx.stroke();
}

function drawRoads() {
  ctx.strokeStyle = '#d4d7dd'; ctx.lineWidth = 1; ctx.beginPath();
  for (const s of S.roads) { ctx.moveTo(sx(s[0]), sy(s[1])); ctx.lineTo(sx(s[2]), sy(s[3])); }
  ctx.stroke();
}

function drawSurge() {
  for (const c of (S.snap && S.snap.surge) || []) {
    if (!c.boundary || c.boundary.length < 3) continue;
    ctx.beginPath();
    c.boundary.forEach((p, i) => (i ? ctx.lineTo(sx(p[0]), sy(p[1])) : ctx.moveTo(sx(p[0]), sy(p[1]))));
    ctx.closePath();
    ctx.fillStyle = `rgba(220, 60, 40, ${Math.min(0.45, 0.1 + (c.multiplier - 1) * 0.25)})`;
    ctx.fill();
    ctx.strokeStyle = 'rgba(220, 60, 40, 0.5)'; ctx.stroke();
    if (view.scale > 3000) {
      const p = c.boundary[0];
      ctx.fillStyle = '#8b2a1a'; ctx.fillText(`×${c.multiplier.toFixed(1)}`, sx(p[0]) + 4, sy(p[1]) + 12);
    }
  }
}

function drawDrivers() {
  const r = view.scale > 20000 ? 3 : 2, w = 2 * r;
  if (S.pts) {
    const { x, y, st } = S.pts, n = st.length;
    for (let s = 0; s < 3; s++) {
      ctx.fillStyle = COLOURS[s];
      for (let i = 0; i < n; i++) {
        if (st[i] !== s) continue;
        const px = (x[i] - view.x) * view.scale + view.w / 2, py = (view.y - y[i]) * view.scale + view.h / 2;
        if (px < -w || py < -w || px > view.w + w || py > view.h + w) continue; // not visible
        ctx.fillRect(Math.round(px) - r, Math.round(py) - r, w, w); // whole pixels: no anti-aliasing
      }
    }
  } else if (S.cells) {
    const half = S.cells.deg / 2;
    const max = Math.max(1, ...S.cells.list.map((c) => c[2]));
    for (const [lng, lat, count, avail] of S.cells.list) {
      const x0 = sx(lng - half), x1 = sx(lng + half), y0 = sy(lat + half), y1 = sy(lat - half);
      if (x1 < 0 || y1 < 0 || x0 > view.w || y0 > view.h) continue;
      const share = count ? avail / count : 0; // green when most are free, blue when busy
      ctx.fillStyle = `rgba(${Math.round(53 - 7 * share)}, ${Math.round(99 + 59 * share)}, ${Math.round(201 - 133 * share)},` +
        ` ${(0.25 + 0.65 * Math.log1p(count) / Math.log1p(max)).toFixed(2)})`;
      ctx.fillRect(x0, y0, Math.max(1, x1 - x0), Math.max(1, y1 - y0));
    }
  }
}

function drawOffers() {
  const snap = S.snap;
  const nowMs = snap.at_ms + (performance.now() - S.snapLocalMs); // engine time, by our clock
  ctx.setLineDash([5, 4]); ctx.strokeStyle = COLOURS[1]; ctx.lineWidth = 1.5;
  ctx.fillStyle = '#6d4a00'; ctx.font = '11px system-ui, sans-serif';
  const taken = new Set(); // label slots of 36x14 px already used: overlapping countdowns skip
  for (const o of snap.offers || []) {
    const [x0, y0, x1, y1] = [sx(o.from[0]), sy(o.from[1]), sx(o.to[0]), sy(o.to[1])];
    ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
    const [lx, ly] = [(x0 + x1) / 2 + 3, (y0 + y1) / 2 - 3];
    const slot = `${Math.floor(lx / 36)},${Math.floor(ly / 14)}`;
    if (taken.has(slot)) continue;
    taken.add(slot);
    const left = Math.max(0, Math.ceil((o.expires_at_ms - nowMs) / 1000));
    ctx.fillText(`${left}s`, lx, ly);
  }
  ctx.setLineDash([]);
}

// Zoomed out: a ring per cell sized by the riders waiting there (searching, offered,
// accepted, arrived), their number written when the cell is wide enough.
function drawTripCells() {
  const half = S.tripCells.deg / 2, wide = (sx(half) - sx(-half)) > 28;
  ctx.lineWidth = 1.5; ctx.strokeStyle = RIDER; ctx.fillStyle = RIDER; ctx.font = '10px system-ui, sans-serif';
  for (const c of S.tripCells.list) {
    const waiting = c[3] + c[4] + c[5] + c[6];
    if (!waiting) continue;
    const x = sx(c[0]), y = sy(c[1]);
    if (x < -20 || y < -20 || x > view.w + 20 || y > view.h + 20) continue;
    ctx.beginPath(); ctx.arc(x, y, 2.5 + 1.5 * Math.log2(1 + waiting), 0, 2 * Math.PI); ctx.stroke();
    if (wide) ctx.fillText(String(waiting), x + 6, y - 4);
  }
}

function drawRiders() {
  if (S.tripCells) { drawTripCells(); return; }
  for (const t of S.trips.values()) {
    if (!t.pickup || !OPEN_WAITING.has(t.status)) continue;
    const x = sx(t.pickup[0]), y = sy(t.pickup[1]);
    if (x < -10 || y < -10 || x > view.w + 10 || y > view.h + 10) continue;
    ctx.beginPath(); ctx.arc(x, y, 4.5, 0, 2 * Math.PI);
    ctx.fillStyle = '#fff'; ctx.fill(); ctx.lineWidth = 2; ctx.strokeStyle = RIDER; ctx.stroke();
  }
  const t = S.trips.get(S.selected);
  if (t && t.pickup) {
    const x = sx(t.pickup[0]), y = sy(t.pickup[1]);
    ctx.beginPath(); ctx.arc(x, y, 10, 0, 2 * Math.PI); ctx.strokeStyle = '#1d2330'; ctx.lineWidth = 2; ctx.stroke();
    if (t.dropoff) {
      ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(sx(t.dropoff[0]), sy(t.dropoff[1]));
      ctx.strokeStyle = 'rgba(29, 35, 48, 0.6)'; ctx.lineWidth = 1.5; ctx.stroke();
    }
  }
}

const perf = { firstFrameMs: null, frames: 0, drawMs: [] };
function draw() {
  const t0 = performance.now();
  ctx.clearRect(0, 0, view.w, view.h);
  if (S.roads && S.roads.length) drawRoads(); else drawGrid();
  if (S.snap) { drawSurge(); drawDrivers(); drawOffers(); drawRiders(); }
  const t1 = performance.now();
  perf.frames++; perf.drawMs.push(t1 - t0); if (perf.drawMs.length > 240) perf.drawMs.shift();
  if (perf.firstFrameMs === null && S.snap) perf.firstFrameMs = t1; // since navigation start
  const [a, b, c, d] = viewBbox();
  $('view-info').textContent = `${((b + d) / 2).toFixed(4)}, ${((a + c) / 2).toFixed(4)} · ` +
    (S.pts ? `${S.pts.st.length} drivers drawn` : S.cells ? `${S.cells.list.length} cells of ${S.cells.deg}°` : 'no drivers') +
    (S.tripCells ? ` · trips in ${S.tripCells.list.length} cells` : '') +
    ` · ${((S.snap && S.snap.surge) || []).length} surge cells`;
  $('frame-time').textContent = `draw ${median(perf.drawMs).toFixed(1)} ms`;
}
const median = (xs) => { if (!xs.length) return 0; const s = [...xs].sort((p, q) => p - q); return s[s.length >> 1]; };

let lastCountdown = 0;
function frame(now) {
  // Offer countdowns tick on their own: redraw a few times a second while any is shown.
  if (S.snap && (S.snap.offers || []).length && now - lastCountdown > 250) { lastCountdown = now; S.dirty = true; }
  if (S.dirty) { S.dirty = false; draw(); }
  requestAnimationFrame(frame);
}

// For measurements (tests, the README figures): redraw every frame for `n` frames and report
// the median draw time and the median interval between frames, in ms.
perf.run = (n) => new Promise((done) => {
  const draws = [], gaps = []; let last = null;
  const step = (now) => {
    if (last !== null) gaps.push(now - last);
    last = now;
    const t0 = performance.now(); draw(); draws.push(performance.now() - t0);
    if (draws.length < n) requestAnimationFrame(step);
    else done({ drawMedianMs: median(draws), frameIntervalMedianMs: median(gaps), frames: n });
  };
  requestAnimationFrame(step);
});
window.mapPerf = perf;

// ---- input: drag to pan, wheel or buttons to zoom, click a rider or a list row to select.
function resize() {
  const dpr = window.devicePixelRatio || 1, r = canvas.getBoundingClientRect();
  view.w = Math.max(1, r.width); view.h = Math.max(1, r.height);
  canvas.width = Math.round(view.w * dpr); canvas.height = Math.round(view.h * dpr);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  S.dirty = true;
}
function zoomAt(factor, px, py) {
  const lng = lngAt(px), y = view.y - (py - view.h / 2) / view.scale;
  view.scale = Math.max(1, Math.min(2e6, view.scale * factor));
  view.x = lng - (px - view.w / 2) / view.scale; view.y = y + (py - view.h / 2) / view.scale;
  viewChanged();
}
function viewChanged() { view.touched = true; view.fitted = true; S.dirty = true; snapshotSoon(); }

let drag = null;
canvas.addEventListener('pointerdown', (e) => {
  drag = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y, moved: false };
  canvas.setPointerCapture(e.pointerId); canvas.classList.add('dragging');
});
canvas.addEventListener('pointermove', (e) => {
  if (!drag) { hover(e.offsetX, e.offsetY); return; }
  const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
  if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
  if (drag.moved) { view.x = drag.vx - dx / view.scale; view.y = drag.vy + dy / view.scale; viewChanged(); }
});
canvas.addEventListener('pointerup', (e) => {
  canvas.classList.remove('dragging');
  if (drag && !drag.moved) clickAt(e.offsetX, e.offsetY);
  drag = null;
});
canvas.addEventListener('wheel', (e) => {
  e.preventDefault();
  zoomAt(Math.exp(-e.deltaY * 0.0015), e.offsetX, e.offsetY);
}, { passive: false });
$('zoom-in').onclick = () => zoomAt(2, view.w / 2, view.h / 2);
$('zoom-out').onclick = () => zoomAt(0.5, view.w / 2, view.h / 2);
$('zoom-fit').onclick = () => { if (S.snap && S.snap.bounds) { fit(S.snap.bounds); viewChanged(); } };
$('trip-list').addEventListener('click', (e) => {
  const li = e.target.closest('li[data-trip]');
  if (li) select(li.dataset.trip);
});
$('detail-close').onclick = () => select(null);

function nearestTrip(px, py, radius) {
  let best = null, bestD = radius * radius;
  for (const t of S.trips.values()) {
    if (!t.pickup) continue;
    const d = (sx(t.pickup[0]) - px) ** 2 + (sy(t.pickup[1]) - py) ** 2;
    if (d <= bestD) { bestD = d; best = t; }
  }
  return best;
}
function nearestDriver(px, py, radius) {
  if (!S.pts) return -1;
  let best = -1, bestD = radius * radius;
  const { x, y } = S.pts;
  for (let i = 0; i < x.length; i++) {
    const d = ((x[i] - view.x) * view.scale + view.w / 2 - px) ** 2 + ((view.y - y[i]) * view.scale + view.h / 2 - py) ** 2;
    if (d <= bestD) { bestD = d; best = i; }
  }
  return best;
}
function clickAt(px, py) {
  const t = nearestTrip(px, py, 10);
  if (t) select(t.trip);
}
function hover(px, py) {
  const t = nearestTrip(px, py, 10), i = t ? -1 : nearestDriver(px, py, 6), h = $('hover');
  if (t) h.textContent = `${t.trip}: ${shortStatus(t.status)} (click for details)`;
  else if (i >= 0) h.textContent = `${S.pts.ids[i]}: ${STATE_NAMES[S.pts.st[i]]}`;
  h.hidden = !t && i < 0;
}

new ResizeObserver(resize).observe(canvas);
resize();
requestSnapshot(); // its answer opens the stream
requestAnimationFrame(frame);
