// eventwire console: the page's script. Plain DOM; every /api/ call carries the operator token,
// kept in sessionStorage for this tab only.
'use strict';

const $ = (sel, root) => (root || document).querySelector(sel);
const el = (tag, text, cls) => {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
};
const token = () => sessionStorage.getItem('ewctl-console-token') || '';

class Unauthorized extends Error {}

async function api(path, opts) {
  const o = Object.assign({headers: {}}, opts || {});
  o.headers.Authorization = 'Bearer ' + token();
  const r = await fetch(path, o);
  if (r.status === 401) { showLogin('The operator token was refused.'); throw new Unauthorized(); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || ('HTTP ' + r.status));
  return body;
}

function fmtTime(iso) { return iso ? iso.replace('T', ' ').replace(/\.(\d{3})\d*Z$/, '.$1') : ''; }
function shortTime(iso) { return iso ? iso.slice(11, 23) : ''; }
function ms(a, b) {
  if (!a || !b) return '';
  const d = Date.parse(b) - Date.parse(a);
  return d < 1000 ? d + ' ms' : (d / 1000).toFixed(1) + ' s';
}
function traceId(ev) { return ev.traceparent ? ev.traceparent.split('-')[1] : ''; }
function pretty(v) { return JSON.stringify(v, null, 2); }
// An event's data, its encrypted fields (personal data and secrets, "ewenc1.SUBJECT.…" on the
// wire: docs/encryption.md) shown as such: the console holds no key.
function prettyData(v) {
  return JSON.stringify(v, (k, x) => typeof x === 'string' && x.startsWith('ewenc1.') ? '[encrypted]' : x, 2);
}

// ---- login ----

function showLogin(message) {
  stopLive();
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message || '';
}

async function enter() {
  try {
    const info = await api('/api/info');
    $('#login').hidden = true;
    $('#app').hidden = false;
    $('#status').textContent = 'bus ' + info.bus + ' · store ' + info.store;
    show(location.hash.startsWith('#view=') ? location.hash.slice(6) : 'live');
  } catch (e) {
    if (!(e instanceof Unauthorized)) showLogin('The console does not answer: ' + e.message);
  }
}

$('#login-form').addEventListener('submit', ev => {
  ev.preventDefault();
  sessionStorage.setItem('ewctl-console-token', $('#token').value.trim());
  enter();
});
$('#logout').addEventListener('click', () => {
  sessionStorage.removeItem('ewctl-console-token');
  showLogin('');
});

// ---- views ----

let current = null;
const views = {live: startLive, timeline: () => {}, dlq: loadDlq, sagas: loadSagas, groups: loadGroups, charts: loadCharts};
let refresher = null;

function show(name) {
  if (!views[name]) name = 'live';
  current = name;
  document.querySelectorAll('header nav button').forEach(b => b.classList.toggle('active', b.dataset.view === name));
  document.querySelectorAll('.view').forEach(v => { v.hidden = v.id !== 'view-' + name; });
  clearInterval(refresher);
  refresher = null;
  if (name !== 'live') stopLive();
  views[name]();
  const every = {dlq: 2000, sagas: 2000, groups: 2000, charts: 3000}[name];
  if (every) refresher = setInterval(() => views[name](true), every);
}
document.querySelectorAll('header nav button').forEach(b => b.addEventListener('click', () => show(b.dataset.view)));

// ---- live ----

const LIVE_ROWS = 500;
let source = null, paused = false, liveCount = 0, pending = [], frame = 0;
const liveEvents = new Map();

function liveQuery() {
  const p = new URLSearchParams({token: token()});
  new FormData($('#live-filters')).forEach((v, k) => { if (v.trim()) p.set(k, v.trim()); });
  return p.toString();
}

function stopLive() { if (source) { source.close(); source = null; } delete document.body.dataset.live; }

function startLive() {
  stopLive();
  $('#live-table tbody').textContent = '';
  liveEvents.clear();
  liveCount = 0;
  source = new EventSource('/api/stream?' + liveQuery());
  source.onopen = () => { document.body.dataset.live = 'open'; };
  source.onmessage = m => { pending.push(JSON.parse(m.data)); schedule(); };
  source.addEventListener('skipped', m => { pending.push({skipped: JSON.parse(m.data).skipped}); schedule(); });
  source.onerror = () => {
    if (source && source.readyState === EventSource.CLOSED) {
      // a refusal (401) closes it for good: ask whether the token still works
      api('/api/info').then(() => setTimeout(() => current === 'live' && startLive(), 1000)).catch(() => {});
    }
  };
}

function schedule() { if (!frame) frame = requestAnimationFrame(flush); }

// DOM work once per frame, however many events came: a busy bus costs one batch per frame.
function flush() {
  frame = 0;
  if (paused) return;
  const body = $('#live-table tbody');
  let batch = pending;
  pending = [];
  if (batch.length > LIVE_ROWS) {
    batch = [{skipped: batch.length - LIVE_ROWS}].concat(batch.slice(-LIVE_ROWS));
  }
  const frag = document.createDocumentFragment();
  for (const item of batch) {
    const tr = el('tr');
    if (item.skipped !== undefined) {
      tr.className = 'summary';
      const td = el('td', item.skipped + ' events not shown: they came faster than the page shows them');
      td.colSpan = 5;
      tr.appendChild(td);
    } else {
      const ev = item.event;
      liveCount++;
      liveEvents.set(String(item.seq), item);
      tr.dataset.seq = item.seq;
      tr.dataset.type = ev.type;
      tr.dataset.subject = ev.subject || '';
      tr.append(el('td', shortTime(ev.time), 'mono'), el('td', ev.type), el('td', ev.source),
                el('td', ev.subject || '', 'mono'), el('td', (ev.correlationid || '').slice(0, 13), 'mono'));
    }
    frag.prepend(tr);
  }
  body.prepend(frag);
  while (body.rows.length > LIVE_ROWS) {
    const last = body.rows[body.rows.length - 1];
    liveEvents.delete(last.dataset.seq);
    last.remove();
  }
  $('#live-count').textContent = liveCount + ' events';
}

$('#live-filters').addEventListener('submit', ev => { ev.preventDefault(); startLive(); });
$('#live-pause').addEventListener('click', () => {
  paused = !paused;
  $('#live-pause').textContent = paused ? 'Resume' : 'Pause';
  if (!paused) schedule();
});
$('#live-table tbody').addEventListener('click', ev => {
  const tr = ev.target.closest('tr');
  if (!tr || !tr.dataset.seq) return;
  document.querySelectorAll('#live-table tr.selected').forEach(r => r.classList.remove('selected'));
  tr.classList.add('selected');
  showEvent($('#detail'), liveEvents.get(tr.dataset.seq));
});

function showEvent(box, item) {
  box.textContent = '';
  if (!item) return;
  const ev = item.event;
  const envelope = Object.assign({}, ev);
  delete envelope.data;
  box.append(el('h3', ev.type));
  const links = el('p');
  if (ev.correlationid) links.append(link('timeline of this correlation', () => openTimeline('correlation_id', ev.correlationid)), ' ');
  if (traceId(ev)) links.append(link('timeline of this trace', () => openTimeline('trace_id', traceId(ev))));
  box.append(links, el('h4', 'envelope'), el('pre', pretty(envelope)));
  box.append(el('h4', 'data'));
  box.append(el('pre', item.too_big ? 'The event is ' + item.too_big + ' bytes: too large for the live view (ewctl store stream shows it).' : prettyData(ev.data)));
  box.lastChild.id = 'detail-data';
}

function link(text, fn) {
  const a = el('a', text);
  a.href = '#';
  a.addEventListener('click', e => { e.preventDefault(); fn(); });
  return a;
}

// ---- timeline ----

function openTimeline(kind, value) {
  const f = $('#timeline-form');
  f.correlation_id.value = kind === 'correlation_id' ? value : '';
  f.trace_id.value = kind === 'trace_id' ? value : '';
  show('timeline');
  loadTimeline();
}

$('#timeline-form').addEventListener('submit', ev => { ev.preventDefault(); loadTimeline(); });

async function loadTimeline() {
  const f = $('#timeline-form');
  const p = new URLSearchParams();
  if (f.correlation_id.value.trim()) p.set('correlation_id', f.correlation_id.value.trim());
  if (f.trace_id.value.trim()) p.set('trace_id', f.trace_id.value.trim());
  const box = $('#timeline');
  box.textContent = 'loading…';
  let r;
  try { r = await api('/api/timeline?' + p); } catch (e) { box.textContent = e.message; return; }
  box.textContent = '';
  if (!r.events.length) { box.append(el('p', 'No event with that id in the newest part of the log.', 'muted')); return; }
  const t0 = Date.parse(r.events[0].event.time), t1 = Date.parse(r.events[r.events.length - 1].event.time);
  const span = Math.max(t1 - t0, 1);
  box.append(el('p', r.events.length + ' events over ' + ms(r.events[0].event.time, r.events[r.events.length - 1].event.time) +
                (r.truncated ? ' (the first ' + r.events.length + ' only)' : ''), 'muted'));
  // one lane per service (the event's source), events placed by their time
  const lanes = new Map();
  for (const e of r.events) {
    if (!lanes.has(e.event.source)) lanes.set(e.event.source, []);
    lanes.get(e.event.source).push(e);
  }
  const chart = el('div', null, 'lanes');
  for (const [svc, evs] of lanes) {
    const lane = el('div', null, 'lane');
    const track = el('div', null, 'lane-track');
    for (const e of evs) {
      const d = el('span', null, 'dot');
      d.style.left = (2 + 96 * (Date.parse(e.event.time) - t0) / span) + '%';
      d.title = e.event.type + ' at +' + (Date.parse(e.event.time) - t0) + ' ms';
      track.append(d);
    }
    lane.append(el('strong', svc), track);
    chart.append(lane);
  }
  box.append(chart);
  const table = el('table');
  table.id = 'timeline-table';
  const head = el('tr');
  ['+ms', 'service', 'type', 'subject', 'position', 'trace'].forEach(h => head.append(el('th', h)));
  table.append(el('thead'), el('tbody'));
  table.tHead.append(head);
  const detail = el('aside', null, 'detail');
  for (const e of r.events) {
    const tr = el('tr');
    tr.append(el('td', Date.parse(e.event.time) - t0, 'mono'), el('td', e.event.source), el('td', e.event.type),
              el('td', e.event.subject || '', 'mono'), el('td', e.position), el('td', traceId(e.event).slice(0, 8), 'mono'));
    tr.addEventListener('click', () => showEvent(detail, {event: e.event}));
    table.tBodies[0].append(tr);
  }
  const split = el('div', null, 'split');
  const scroll = el('div', null, 'scroll');
  scroll.append(table);
  split.append(scroll, detail);
  box.append(split);
}

// ---- dead letters ----

$('#dlq-form').addEventListener('submit', ev => { ev.preventDefault(); loadDlq(); });

async function loadDlq() {
  const status = $('#dlq-form').status.value;
  let r;
  try { r = await api('/api/dlq' + (status ? '?status=' + status : '')); } catch (e) { return; }
  const body = $('#dlq-table tbody');
  body.textContent = '';
  for (const d of r.dead_letters) {
    const tr = el('tr');
    tr.dataset.id = d.id;
    tr.dataset.status = d.status;
    const st = el('td');
    st.append(el('span', d.status, 'badge ' + d.status));
    const act = el('td');
    if (d.status === 'pending' || d.status === 'retried') {
      const retry = el('button', 'Retry', 'small retry');
      retry.addEventListener('click', e => { e.stopPropagation(); dlqAction(d.id, 'retry'); });
      act.append(retry);
    }
    if (d.status === 'pending' || d.status === 'retried') {
      const discard = el('button', 'Discard', 'small discard');
      discard.addEventListener('click', e => { e.stopPropagation(); if (confirm('Discard dead letter ' + d.id + '?')) dlqAction(d.id, 'discard'); });
      act.append(' ', discard);
    }
    tr.append(el('td', d.id), el('td', d.event_name), el('td', d.handler), el('td', d.subscriber_group),
              el('td', d.error), el('td', d.attempts), el('td', fmtTime(d.last_failed_at)), st, act);
    tr.addEventListener('click', () => showDeadLetter(d.id));
    body.append(tr);
  }
}

async function showDeadLetter(id) {
  const box = $('#dlq-detail');
  const d = await api('/api/dlq/' + id);
  box.textContent = '';
  box.append(el('h3', 'dead letter ' + d.id), el('p', d.error));
  let ev = d.event;
  try { ev = JSON.parse(d.event); } catch (e) { /* shown as stored */ }
  box.append(el('h4', 'event'), el('pre', typeof ev === 'string' ? ev : pretty(ev)));
}

async function dlqAction(id, what) {
  try { await api('/api/dlq/' + id + '/' + what, {method: 'POST'}); } catch (e) { alert(e.message); }
  loadDlq();
}

// ---- sagas ----

$('#sagas-form').addEventListener('submit', ev => { ev.preventDefault(); loadSagas(); });
let sagaShown = null;

async function loadSagas(again) {
  const status = $('#sagas-form').status.value;
  let r;
  try { r = await api('/api/sagas' + (status ? '?status=' + status : '')); } catch (e) { return; }
  const body = $('#sagas-table tbody');
  body.textContent = '';
  for (const s of r.sagas) {
    const tr = el('tr');
    tr.dataset.id = s.id;
    tr.dataset.key = s.correlation_key || '';
    const st = el('td');
    st.append(el('span', s.status, 'badge ' + s.status));
    tr.append(el('td', s.type), st, el('td', s.step || ''), el('td', s.correlation_key || '', 'mono'),
              el('td', fmtTime(s.started_at)), el('td', ms(s.started_at, s.finished_at || s.updated_at)));
    tr.addEventListener('click', () => showSaga(s.id));
    body.append(tr);
  }
  if (again && sagaShown) showSaga(sagaShown);
}

async function showSaga(id) {
  sagaShown = id;
  const s = await api('/api/sagas/' + encodeURIComponent(id));
  const box = $('#saga-detail');
  box.textContent = '';
  const h = el('h3', s.type + ' ');
  h.append(el('span', s.status, 'badge ' + s.status));
  h.id = 'saga-title';
  box.append(h);
  const facts = el('table');
  [['id', s.id], ['correlation key', s.correlation_key], ['correlation id', s.correlation_id], ['step', s.step || '—'],
   ['steps done', (s.steps_done || []).join(', ')], ['started', fmtTime(s.started_at)], ['finished', fmtTime(s.finished_at)],
   ['took', ms(s.started_at, s.finished_at || s.updated_at)], ['deadline', fmtTime(s.deadline_at)], ['reason', s.reason || '']]
    .forEach(([k, v]) => { const tr = el('tr'); tr.append(el('th', k), el('td', v)); facts.append(tr); });
  box.append(facts);
  if (s.correlation_id) box.append(el('p'), link('timeline of its events', () => openTimeline('correlation_id', s.correlation_id)));
  box.lastChild.id = 'saga-timeline-link';
  box.append(el('h4', 'transitions'));
  const t = el('table');
  t.id = 'saga-transitions';
  const head = el('tr');
  ['+ms', 'status', 'step', 'event', 'note'].forEach(x => head.append(el('th', x)));
  t.append(head);
  for (const x of s.transitions) {
    const tr = el('tr');
    tr.append(el('td', Date.parse(x.at) - Date.parse(s.started_at), 'mono'),
              el('td', (x.from_status || '∅') + ' → ' + x.to_status),
              el('td', (x.from_step || '∅') + ' → ' + (x.to_step || '∅')), el('td', x.event_type || '(deadline)'),
              el('td', x.note || ''));
    t.append(tr);
  }
  box.append(t, el('h4', 'data'), el('pre', pretty(s.data)));
}

// ---- groups ----

async function loadGroups() {
  let r;
  try { r = await api('/api/groups'); } catch (e) { return; }
  const box = $('#groups');
  box.textContent = '';
  const from = {backend: 'every group the ' + r.bus + ' bus knows',
                services: 'the services\' and sagas\' groups the ' + r.bus + ' bus knows (it cannot list its groups)'}[r.groups_from] || '';
  box.append(el('p', 'Consumer lag: the events published to a group and not yet acknowledged by it, as the ' + r.bus +
                ' bus records it; ' + from + '.' + (r.head !== undefined ? ' The log\'s head is at position ' + r.head + '.' : ''), 'muted'));
  const pos = {};
  for (const p of r.positions || []) pos[p.group] = p;
  const t = el('table');
  t.id = 'groups-table';
  const head = el('tr');
  const cols = r.positions ? ['group', 'lag', 'position', 'owner', 'updated'] : ['group', 'lag'];
  cols.forEach(x => head.append(el('th', x)));
  t.append(head);
  for (const g of r.groups) {
    const tr = el('tr');
    tr.append(el('td', g.group), el('td', g.lag === null ? '—' : g.lag));
    if (r.positions) {
      const p = pos[g.group] || {};
      tr.append(el('td', p.position ?? '—'), el('td', p.owner || '—'), el('td', p.updated_at ? fmtTime(p.updated_at) : '—'));
    }
    t.append(tr);
  }
  box.append(t);
}

// ---- charts ----

async function loadCharts() {
  let all;
  try { all = await api('/api/metrics'); } catch (e) { return; }
  const r = all.scraped;
  chart($('#chart-bus'), all.bus, [['rate', '#0891b2']]);
  const up = r.services.filter(s => s.up).length;
  $('#charts-services').textContent = r.services.length
    ? up + ' of ' + r.services.length + ' services answer /metrics (scraped every ' + r.interval_ms / 1000 + ' s): ' + r.services.map(s => s.url + (s.up ? '' : ' (down)')).join(', ')
    : 'No services to scrape: start ewctl console with --services, or beside ewctl up.';
  const s = r.samples;
  document.body.dataset.samples = s.length;
  chart($('#chart-publish'), s, [['publish_rate', '#2563eb']]);
  chart($('#chart-handle'), s, [['handle_rate', '#059669']]);
  chart($('#chart-latency'), s, [['p50_ms', '#7c3aed'], ['p99_ms', '#db2777']]);
  chart($('#chart-errors'), s, [['error_rate', '#dc2626']]);
}

function chart(canvas, samples, series) {
  const g = canvas.getContext('2d'), W = canvas.width, H = canvas.height, L = 44, B = 20;
  g.clearRect(0, 0, W, H);
  g.font = '11px sans-serif';
  g.fillStyle = '#6b7280';
  if (samples.length < 1) { g.fillText('waiting for two scrapes…', L, H / 2); return; }
  let max = 0;
  for (const p of samples) for (const [k] of series) if (p[k] !== null && p[k] > max) max = p[k];
  max = max > 0 ? max * 1.1 : 1;
  const t0 = samples[0].t, t1 = Math.max(samples[samples.length - 1].t, t0 + 1);
  const x = t => L + (W - L - 8) * (t - t0) / (t1 - t0), y = v => H - B - (H - B - 8) * v / max;
  g.strokeStyle = '#e5e7eb';
  for (let i = 0; i <= 4; i++) {
    const v = max * i / 4;
    g.beginPath(); g.moveTo(L, y(v)); g.lineTo(W - 8, y(v)); g.stroke();
    g.fillText(v < 10 ? v.toFixed(1) : Math.round(v), 2, y(v) + 4);
  }
  g.fillText(new Date(t0).toLocaleTimeString(), L, H - 4);
  g.fillText(new Date(t1).toLocaleTimeString(), W - 70, H - 4);
  for (const [k, color] of series) {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    let on = false;
    for (const p of samples) {
      if (p[k] === null) { on = false; continue; }
      if (on) g.lineTo(x(p.t), y(p[k])); else g.moveTo(x(p.t), y(p[k]));
      on = true;
    }
    g.stroke();
    g.lineWidth = 1;
    g.fillStyle = color; // points too: a lone figure between gaps draws no line
    for (const p of samples) if (p[k] !== null) g.fillRect(x(p.t) - 1.5, y(p[k]) - 1.5, 3, 3);
  }
  let lx = L + 4;
  for (const [k, color] of series) { g.fillStyle = color; g.fillText(k, lx, 12); lx += 70; }
}

// ---- start ----

if (location.hash.startsWith('#token=')) {
  sessionStorage.setItem('ewctl-console-token', decodeURIComponent(location.hash.slice(7)));
  history.replaceState(null, '', '/');
}
if (token()) enter(); else showLogin('');
