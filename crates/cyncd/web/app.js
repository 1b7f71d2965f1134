// cyncd's page: live state from GET /api/events (Server-Sent Events), commands through the JSON
// API. Plain JavaScript, no framework, no build step; everything is served by cyncd itself.
//
// Three views, chosen by the address's #fragment: Home (the default: rooms of device cards for
// the household), Set up (names and rooms from the Cync account) and Operations (bridges,
// command traces, canary and SLOs, decode errors).
//
// Shown state comes only from the server's events: a control sends a command and marks its card
// pending, and the card changes when the device's report reaches cyncd and is pushed here.
//
// Sign-in: the API needs cyncd's token. When GET /api/session answers 401 the page shows a form;
// the token typed there (or given once in a `#token=…` link) is posted to POST /api/session, which
// sets an HttpOnly, SameSite=Strict cookie. This script never stores the token itself. Behind
// Home Assistant's ingress the proxy has signed the person in and no token is asked for.
'use strict';

const state = {
  meta: null,
  devices: new Map(), // id -> device view (as GET /api/devices)
  connections: [],
  skewMs: 0, // server clock - browser clock, from each frame's `at`
  layout: '', // signature of the rendered structure; rebuilt when it changes
  last: new Map(), // device or group key -> last command result, shown on its card
  sheet: null, // id of the device whose sheet is open
  linked: null, // id of the device a #device= link names, until its sheet opens
};

/** How long a successful command's outcome stays on its card. */
const SHOW_DONE_MS = 15000;

// ---------------------------------------------------------------- helpers

/** Creates an element: el('div', {class: 'x', text: 'y', onclick: f, 'data-a': 1}, child…). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const has = (d, cap) => Array.isArray(d.capabilities) && d.capabilities.includes(cap);
const num = (v, fallback = 0) => (typeof v === 'number' && Number.isFinite(v) ? v : fallback);
const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** Line icons (24×24, drawn with the text colour). */
const ICONS = {
  light: 'M9 18h6M10 21h4M12 3a6 6 0 0 0-3.6 10.8c.7.6 1.1 1.3 1.1 2.2v.5h5V16c0-.9.4-1.6 1.1-2.2A6 6 0 0 0 12 3z',
  plug: 'M9 3v5M15 3v5M6 8h12v3a6 6 0 0 1-12 0zM12 17v4',
  switch: 'M8 3h8a2 2 0 0 1 2 2v14a2 2 0 0 1-2 2H8a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zM10 7h4v6h-4z',
  fan: 'M12 12m-1.5 0a1.5 1.5 0 1 0 3 0a1.5 1.5 0 1 0-3 0M12 10.5C11 6 12 3 15 3c2.5 0 2.5 4-1.5 6.5M13.5 12c4.5-1 7.5 0 7.5 3 0 2.5-4 2.5-6.5-1.5M12 13.5c1 4.5 0 7.5-3 7.5-2.5 0-2.5-4 1.5-6.5M10.5 12C6 13 3 12 3 9c0-2.5 4-2.5 6.5 1.5',
  thermostat: 'M14 14.8V5a2 2 0 0 0-4 0v9.8a4 4 0 1 0 4 0zM12 9v8',
  sensor: 'M12 12m-3 0a3 3 0 1 0 6 0a3 3 0 1 0-6 0M5.6 5.6a9 9 0 0 0 0 12.8M18.4 5.6a9 9 0 0 1 0 12.8',
  sun: 'M12 12m-4 0a4 4 0 1 0 8 0a4 4 0 1 0-8 0M12 2v2M12 20v2M4.9 4.9l1.4 1.4M17.7 17.7l1.4 1.4M2 12h2M20 12h2M4.9 19.1l1.4-1.4M17.7 6.3l1.4-1.4',
  close: 'M6 6l12 12M18 6L6 18',
};

function icon(name) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('fill', 'none');
  svg.setAttribute('stroke', 'currentColor');
  svg.setAttribute('stroke-width', '2');
  svg.setAttribute('stroke-linecap', 'round');
  svg.setAttribute('stroke-linejoin', 'round');
  svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', ICONS[name] || ICONS.sensor);
  svg.append(path);
  return svg;
}

function kindIcon(d) {
  if (d.kind === 'plug' || d.kind === 'switch' || d.kind === 'fan' || d.kind === 'thermostat') return d.kind;
  return d.kind === 'light' || !d.kind ? 'light' : 'sensor';
}

function kelvinRange() {
  const k = state.meta && Array.isArray(state.meta.kelvin) ? state.meta.kelvin : [2000, 7000];
  return [num(k[0], 2000), num(k[1], 7000)];
}
function toKelvin(temp) {
  const [lo, hi] = kelvinRange();
  return Math.round(lo + ((hi - lo) * num(temp)) / 100);
}
function fromKelvin(k) {
  const [lo, hi] = kelvinRange();
  return clamp(Math.round(((k - lo) * 100) / (hi - lo)), 0, 100);
}
function fanSteps() {
  const s = state.meta && Array.isArray(state.meta.fan_steps) ? state.meta.fan_steps : null;
  return s && s.length === 5 ? s : [0, 25, 50, 75, 100];
}
/** Speed names by step (0 is off), capitalised for buttons. */
function fanNames() {
  const p = state.meta && Array.isArray(state.meta.fan_presets) ? state.meta.fan_presets : null;
  const names = p && p.length === 4 ? p : ['low', 'medium', 'high', 'max'];
  return ['Off'].concat(names.map((n) => String(n).charAt(0).toUpperCase() + String(n).slice(1)));
}
function hex(rgb) {
  if (!Array.isArray(rgb) || rgb.length !== 3) return '#ffffff';
  return '#' + rgb.map((c) => clamp(Math.round(num(c)), 0, 255).toString(16).padStart(2, '0')).join('');
}
function rgbOf(hexText) {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hexText);
  return m ? [1, 2, 3].map((i) => parseInt(m[i], 16)) : null;
}
/** The colour of white light at `k` kelvin (Tanner Helland's fit of the black-body curve). */
function kelvinRgb(k) {
  const t = clamp(k, 1000, 40000) / 100;
  const r = t <= 66 ? 255 : 329.698727446 * Math.pow(t - 60, -0.1332047592);
  const g = t <= 66 ? 99.4708025861 * Math.log(t) - 161.1195681661 : 288.1221695283 * Math.pow(t - 60, -0.0755148492);
  const b = t >= 66 ? 255 : t <= 19 ? 0 : 138.5177312231 * Math.log(t - 10) - 305.0447927307;
  return [r, g, b].map((c) => clamp(Math.round(c), 0, 255));
}
function kelvinName(k) {
  if (k <= 3200) return 'Warm white';
  if (k <= 4500) return 'Neutral white';
  if (k <= 5600) return 'Cool white';
  return 'Daylight';
}
/** A colour's everyday name, from its hue. */
function colourName(rgb) {
  const [r, g, b] = rgb.map((c) => clamp(num(c), 0, 255) / 255);
  const max = Math.max(r, g, b);
  const min = Math.min(r, g, b);
  if (max === 0) return 'Black';
  if ((max - min) / max < 0.18) return 'White';
  let h;
  if (max === r) h = ((g - b) / (max - min) + 6) % 6;
  else if (max === g) h = (b - r) / (max - min) + 2;
  else h = (r - g) / (max - min) + 4;
  h *= 60;
  const names = [[15, 'Red'], [42, 'Orange'], [68, 'Yellow'], [160, 'Green'], [195, 'Cyan'], [255, 'Blue'], [285, 'Purple'], [340, 'Pink'], [361, 'Red']];
  return (names.find(([limit]) => h < limit) || [0, 'Red'])[1];
}
const COLOURS = [
  ['Red', [255, 0, 0]], ['Orange', [255, 120, 0]], ['Yellow', [255, 210, 0]], ['Green', [0, 200, 70]],
  ['Cyan', [0, 200, 220]], ['Blue', [0, 80, 255]], ['Purple', [140, 50, 255]], ['Pink', [255, 60, 160]],
];
const WHITES = [['Warm', 2700], ['Neutral', 4000], ['Daylight', 6500]];
const rgbCss = (rgb) => `rgb(${rgb.map((c) => clamp(Math.round(num(c)), 0, 255)).join(' ')})`;

/** What a light shows now: {css, name, rgb | kelvin} for its swatch; null when its colour is
 * not known (an effect, or no report yet). */
function lightColour(d) {
  if (Array.isArray(d.rgb) && has(d, 'rgb')) return { css: rgbCss(d.rgb), name: colourName(d.rgb), rgb: d.rgb };
  if (typeof d.color_temp === 'number' && has(d, 'color_temp')) {
    const k = toKelvin(d.color_temp);
    return { css: rgbCss(kelvinRgb(k)), name: kelvinName(k), kelvin: k };
  }
  return null;
}

/** "3 s ago", "4 min ago" from an RFC 3339 time, on the server's clock. */
function ago(text) {
  if (!text) return 'never';
  const t = Date.parse(text);
  if (Number.isNaN(t)) return String(text);
  const s = Math.max(0, Math.round((Date.now() + state.skewMs - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
/** Milliseconds since the epoch with the microseconds trace times carry (Date.parse drops them). */
function preciseMs(text) {
  const t = Date.parse(text || '');
  const frac = /\.(\d+)/.exec(text || '');
  if (Number.isNaN(t) || !frac) return t;
  return t + Number(frac[1].padEnd(6, '0').slice(3, 6)) / 1000;
}
function ageSeconds(text) {
  const t = Date.parse(text || '');
  return Number.isNaN(t) ? Infinity : (Date.now() + state.skewMs - t) / 1000;
}

// ---------------------------------------------------------------- views

const VIEWS = ['home', 'setup', 'operations'];
/** Sections of the Operations view that links may name directly. */
const OPERATIONS = ['bridges', 'trace', 'canary', 'decode'];

/** Shows the view the address names (#home, #setup, #operations or one of its sections). */
function route() {
  // A device's own address (Home Assistant's "Visit" link): the home view with its sheet open.
  const device = /^#device=(.+)$/.exec(window.location.hash);
  if (device) {
    state.linked = decodeURIComponent(device[1]);
    openLinked();
  }
  const name = device ? 'home' : window.location.hash.replace(/^#/, '');
  const view = VIEWS.includes(name) ? name : OPERATIONS.includes(name) ? 'operations' : 'home';
  for (const v of $$('.view')) v.hidden = v.dataset.view !== view;
  for (const a of $$('.tabs a')) {
    if (a.dataset.tab === view) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (OPERATIONS.includes(name)) {
    const target = document.getElementById(name);
    if (target) target.scrollIntoView({ block: 'start' });
  } else {
    window.scrollTo(0, 0);
  }
  if (view === 'operations' && started) {
    loadCanary();
    loadDecodeErrors();
  }
}

// ---------------------------------------------------------------- live stream

let source = null;
let backoffMs = 1000;

function setLive(s, text) {
  const e = $('#live');
  e.dataset.state = s;
  e.textContent = text || s;
}

function connect() {
  if (source) source.close();
  setLive('connecting', 'connecting…');
  source = new EventSource('api/events');
  source.addEventListener('snapshot', (e) => {
    backoffMs = 1000;
    setLive('live', 'live');
    const frame = parse(e.data);
    if (frame) snapshot(frame);
  });
  source.addEventListener('update', (e) => {
    const frame = parse(e.data);
    if (frame) update(frame);
  });
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (401 signed out, 503 over the client cap) or gone for good: the browser will
      // not retry, we do, after checking the session.
      setLive('offline', `offline, retrying in ${Math.round(backoffMs / 1000)} s`);
      source.close();
      setTimeout(start, backoffMs);
      backoffMs = Math.min(backoffMs * 2, 30000);
    } else {
      setLive('reconnecting', 'reconnecting…');
    }
  });
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch (err) {
    console.warn('bad event', err);
    return null;
  }
}

function clock(frame) {
  const t = Date.parse(frame.at || '');
  if (!Number.isNaN(t)) state.skewMs = t - Date.now();
}

function snapshot(frame) {
  clock(frame);
  state.meta = frame.meta || {};
  $('#version').textContent = `cyncd ${state.meta.version || ''}`;
  state.devices = new Map((frame.devices || []).map((d) => [d.id, d]));
  state.connections = Array.isArray(frame.connections) ? frame.connections : [];
  renderHomes();
  renderBridges();
  refreshSheet();
  openLinked();
}

/** Opens the sheet a #device= link asked for, once that device is known. */
function openLinked() {
  if (!state.linked || !state.devices.has(state.linked)) return;
  const id = state.linked;
  state.linked = null;
  openSheet(id);
}

function update(frame) {
  clock(frame);
  for (const d of frame.devices || []) state.devices.set(d.id, d);
  for (const id of frame.removed || []) state.devices.delete(id);
  if (frame.meta && typeof frame.meta === 'object') {
    // New homes were saved: names, rooms and groups may all have changed.
    state.meta = frame.meta;
    state.layout = '';
  }
  if (Array.isArray(frame.connections)) state.connections = frame.connections;
  if (layoutKey() !== state.layout) {
    renderHomes();
  } else {
    for (const d of frame.devices || []) for (const card of cardsOf(d.id)) fill(card, d);
    countRooms();
  }
  if (Array.isArray(frame.connections)) renderBridges();
  refreshSheet();
}

// ---------------------------------------------------------------- home: rooms of device cards

/** What decides the structure: which devices, in which home and room, with which controls. */
function layoutKey() {
  const parts = [];
  for (const d of state.devices.values()) {
    parts.push([d.id, d.name, d.room || '', d.kind, (d.capabilities || []).join(','),
      Array.isArray(d.outlets) ? d.outlets.map((o) => o.name).join(',') : '', Array.isArray(d.sensors)].join('|'));
  }
  return parts.sort().join(';');
}

function cardsOf(id) {
  return $$('article.card[data-device]').filter((c) => c.dataset.device === id);
}

const byName = (a, b) => String(a.name).localeCompare(String(b.name)) || num(a.mesh_id) - num(b.mesh_id);
const unnamed = (d) => d.name === `device ${d.mesh_id}`;

/** Devices by home, then by room (rooms as the account or the configuration give them), each
 * room with its controls; devices in no room under "Other"; other groups as a row of chips. */
function renderHomes() {
  state.layout = layoutKey();
  const root = $('#homes');
  const homes = new Map(); // name -> {groups, devices}
  const known = (state.meta && Array.isArray(state.meta.homes)) ? state.meta.homes : [];
  for (const h of known) homes.set(h.name, { groups: Array.isArray(h.groups) ? h.groups : [], devices: [] });
  for (const d of state.devices.values()) {
    if (!homes.has(d.home)) homes.set(d.home, { groups: [], devices: [] });
    homes.get(d.home).devices.push(d);
  }
  $('#setup-hint').hidden = !([...state.devices.values()].some(unnamed) || known.length === 0);
  const titled = homes.size > 1 || (homes.size === 1 && !homes.has('default'));
  const out = [];
  for (const [name, home] of [...homes.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
    home.devices.sort(byName);
    const section = el('section', { class: 'home', 'data-home': name, 'aria-label': name === 'default' ? 'Home' : name },
      titled ? el('h2', { class: 'home-title', text: name === 'default' ? 'Home' : name }) : null);
    const rooms = home.groups.filter((g) => g.room !== false);
    const others = home.groups.filter((g) => g.room === false);
    if (others.length > 0) {
      section.append(el('div', { class: 'groups', role: 'group', 'aria-label': 'Groups' }, others.map((g) => {
        const target = groupTarget(name, g);
        const label = g.name || `Group ${g.id}`;
        return el('div', { class: 'group-chip', 'data-group': target.id },
          el('span', { class: 'group-name', text: label }),
          el('button', { type: 'button', text: 'On', 'data-action': 'group-on', 'aria-label': `${label} on`, onclick: () => send(target, { on: true }) }),
          el('button', { type: 'button', text: 'Off', 'data-action': 'group-off', 'aria-label': `${label} off`, onclick: () => send(target, { on: false }) }));
      })));
    }
    const placed = new Set();
    for (const g of rooms) {
      const roomName = g.name || `Room ${g.id}`;
      const members = home.devices.filter((d) => d.room === roomName && !placed.has(d.id));
      if (members.length === 0) continue;
      members.forEach((d) => placed.add(d.id));
      section.append(room(roomName, members, groupTarget(name, g)));
    }
    const rest = home.devices.filter((d) => !placed.has(d.id));
    if (rest.length > 0) section.append(room(placed.size > 0 ? 'Other' : 'Devices', rest, null));
    if (home.devices.length === 0) section.append(el('p', { class: 'empty', text: 'No device has reported yet.' }));
    out.push(section);
  }
  root.replaceChildren(...(out.length > 0 ? out : [el('p', { class: 'empty', text: 'No device has reported yet.' })]));
  for (const [key, result] of state.last) showLast(key, result);
  countRooms();
}

function groupTarget(home, g) {
  return { kind: 'group', id: `${home}:${g.id}`, key: `group:${home}:${g.id}`, name: g.name || `Group ${g.id}` };
}

/** A room: its name, how many of its devices are on, its controls (when it is a group), and
 * its devices' cards. */
function room(name, members, target) {
  const dimmable = members.some((d) => has(d, 'brightness'));
  const switchable = members.some((d) => has(d, 'on_off'));
  const controls = [];
  if (target && switchable) {
    controls.push(
      el('button', { type: 'button', 'data-action': 'group-on', text: 'All on', 'aria-label': `${name}: all on`, onclick: () => send(target, { on: true }) }),
      el('button', { type: 'button', 'data-action': 'group-off', text: 'All off', 'aria-label': `${name}: all off`, onclick: () => send(target, { on: false }) }));
    if (dimmable) {
      controls.push(slider({
        ctl: 'group-brightness', label: `${name} brightness`, glyph: 'sun', min: 1, max: 100, step: 1, value: 100,
        show: (v) => `${v} %`, commit: (v) => send(target, { brightness: v }),
      }));
    }
  }
  return el('section', { class: 'room group', 'data-group': target ? target.id : null, 'data-room': name, 'aria-label': name },
    el('div', { class: 'room-head' },
      el('div', { class: 'room-title' },
        el('h3', { text: name }),
        el('span', { class: 'count', 'data-members': JSON.stringify(members.map((d) => d.id)) }),
        target ? el('span', { class: 'last', 'data-last': target.key }) : null),
      controls.length > 0 ? el('div', { class: 'room-controls' }, controls) : null),
    el('div', { class: 'tiles' }, members.map(card)));
}

/** "3 of 5 on" beside each room's name; a room's brightness follows its lights that are on. */
function countRooms() {
  for (const span of $$('.count[data-members]')) {
    // Device ids hold home names, which may hold spaces: the list is JSON.
    let ids = [];
    try { ids = JSON.parse(span.dataset.members || '[]'); } catch (err) { ids = []; }
    const devices = ids.map((id) => state.devices.get(id)).filter(Boolean);
    const switchable = devices.filter((d) => has(d, 'on_off') || Array.isArray(d.outlets));
    const on = switchable.filter((d) => d.on).length;
    const unseen = devices.filter((d) => !d.last_seen).length;
    const offline = devices.filter((d) => d.last_seen && !d.online).length;
    const parts = [switchable.length > 0 ? `${on} of ${switchable.length} on` : plural(devices.length, 'device')];
    if (offline > 0) parts.push(`${offline} offline`);
    if (unseen > 0) parts.push(`${unseen} not seen yet`);
    span.textContent = parts.join(', ');
    const bright = $('[data-ctl="group-brightness"]', span.closest('.room'));
    const lit = devices.filter((d) => d.on && has(d, 'brightness') && typeof d.brightness === 'number');
    if (bright && !bright.dataset.editing && lit.length > 0) {
      setSlider(bright, Math.round(lit.reduce((s, d) => s + d.brightness, 0) / lit.length), (v) => `${v} %`);
    }
  }
}

/** A slider with a glyph or a label, and its value beside it (`show`) or not (`shown`: false);
 * `moving` runs while it is dragged, `commit` when it is let go. */
function slider({ ctl, label, glyph, text, min, max, step, value, show, commit, kelvin, shown = true, moving }) {
  const input = el('input', { type: 'range', min, max, step, value, 'data-ctl': ctl, 'aria-label': label,
    'aria-valuetext': show(value), class: kelvin ? 'kelvin' : null });
  const out = shown ? el('output', { text: show(value) }) : null;
  input.addEventListener('input', () => {
    input.dataset.editing = '1';
    const v = Number(input.value);
    input.setAttribute('aria-valuetext', show(v));
    if (out) out.textContent = show(v);
    if (moving) moving(v);
    paintFill(input);
  });
  input.addEventListener('change', () => {
    Promise.resolve(commit(Number(input.value))).finally(() => delete input.dataset.editing);
  });
  paintFill(input);
  return el('label', { class: 'slider' },
    glyph ? el('span', { class: 'glyph' }, icon(glyph)) : null,
    text ? el('span', { class: 'label', text }) : null,
    input, out);
}

function paintFill(input) {
  const lo = Number(input.min);
  const hi = Number(input.max);
  const pct = hi > lo ? ((Number(input.value) - lo) * 100) / (hi - lo) : 0;
  input.style.setProperty('--fill', `${clamp(pct, 0, 100)}%`);
}

function setSlider(input, value, show) {
  if (!input || input.dataset.editing) return;
  input.value = value;
  input.setAttribute('aria-valuetext', show(value));
  paintFill(input);
  const out = input.parentElement && $('output', input.parentElement);
  if (out) out.textContent = show(value);
}

function deviceTarget(d) {
  return { kind: 'device', id: d.id, key: `device:${d.id}`, name: d.name };
}

function powerSwitch(d, label) {
  const target = deviceTarget(d);
  const sw = el('button', { type: 'button', class: 'switch', role: 'switch', 'aria-checked': 'false', 'data-ctl': 'power', 'aria-label': label || d.name });
  sw.addEventListener('click', () => {
    const now = state.devices.get(d.id);
    send(target, { on: !(now && now.on) });
  });
  return sw;
}

function outletRows(d) {
  const target = deviceTarget(d);
  return el('div', { class: 'outlets' }, d.outlets.map((o) => {
    const sw = el('button', { type: 'button', class: 'switch', role: 'switch', 'aria-checked': 'false',
      'data-ctl': 'outlet', 'data-outlet': o.outlet, 'aria-label': `${d.name}: ${o.name}` });
    sw.addEventListener('click', () => {
      const now = state.devices.get(d.id);
      const cur = now && Array.isArray(now.outlets) ? now.outlets.find((x) => x.outlet === o.outlet) : null;
      send(target, { outlet: o.outlet, on: !(cur && cur.on) });
    });
    return el('div', { class: 'outlet' }, el('span', { class: 'outlet-name', text: o.name }), sw);
  }));
}

/** The brightness slider; on a card it has no number beside it: the card's state line shows
 * the value, also while it moves. */
function brightnessSlider(d, onCard) {
  const target = deviceTarget(d);
  return slider({
    ctl: 'brightness', label: `${d.name} brightness`, glyph: 'sun', min: 0, max: 100, step: 1,
    value: num(d.brightness), show: (v) => `${v} %`, commit: (v) => send(target, { brightness: v }),
    shown: !onCard, moving: (v) => previewState(d.id, { on: true, brightness: v }),
  });
}

/** The fan's speed as a four-stop slider (Low to Max); the sheet has a button for each. */
function fanSlider(d) {
  const target = deviceTarget(d);
  const steps = fanSteps();
  const names = fanNames();
  return slider({
    ctl: 'fan', label: `${d.name} speed`, glyph: 'fan', min: 1, max: 4, step: 1, value: clamp(num(d.fan_speed, 1), 1, 4),
    show: (v) => names[v] || String(v), commit: (v) => send(target, { fan_speed: steps[v] }),
    shown: false, moving: (v) => previewState(d.id, { on: true, fan_speed: v }),
  });
}

/** Shows on a device's cards what a control being dragged will make of it. */
function previewState(id, change) {
  const d = state.devices.get(id);
  if (!d) return;
  for (const c of cardsOf(id)) for (const s of $$('[data-ctl="state"]', c)) s.textContent = stateText({ ...d, ...change });
}

function fanButtons(d) {
  const target = deviceTarget(d);
  const steps = fanSteps();
  const names = fanNames();
  return el('div', { class: 'segmented fan', role: 'group', 'aria-label': `${d.name} speed` },
    [1, 2, 3, 4].map((i) => el('button', { type: 'button', 'data-step': i, 'aria-pressed': 'false', text: names[i],
      onclick: () => send(target, { fan_speed: steps[i] }) })));
}

function readingsList(d) {
  return el('ul', { class: 'readings', 'data-ctl': 'readings', 'aria-label': `${d.name} readings` });
}

/** A device's card: what it is and its state at a glance, with its everyday controls; the
 * rest (colour, white, effects, details) in its sheet. */
function card(d) {
  const outlets = Array.isArray(d.outlets) && d.outlets.length > 0;
  const open = el('button', { type: 'button', class: 'open', 'data-ctl': 'open', 'aria-label': `${d.name}: all controls and details`, onclick: () => openSheet(d.id) },
    el('span', { class: 'icon' }, icon(kindIcon(d))),
    el('span', { class: 'title' },
      el('span', { class: 'name', text: d.name }),
      el('span', { class: 'state', 'data-ctl': 'state' })));
  const body = [];
  if (outlets) body.push(outletRows(d));
  if (Array.isArray(d.sensors)) body.push(readingsList(d));
  const row = [];
  if (has(d, 'brightness')) row.push(brightnessSlider(d, true));
  if (has(d, 'fan_speed')) row.push(fanSlider(d));
  if (has(d, 'rgb') || has(d, 'color_temp')) {
    row.push(el('button', { type: 'button', class: 'swatch-open', 'data-ctl': 'colour', onclick: () => openSheet(d.id) },
      el('span', { class: 'swatch' })));
  }
  if (row.length > 0) body.push(el('div', { class: 'card-row' }, row));
  const c = el('article', { class: 'card', 'data-device': d.id, 'data-kind': d.kind || 'light' },
    el('div', { class: 'card-head' }, open, has(d, 'on_off') && !outlets ? powerSwitch(d) : null),
    body.length > 0 ? el('div', { class: 'card-body' }, body) : null,
    el('p', { class: 'last', 'data-last': `device:${d.id}` }));
  fill(c, d);
  return c;
}

/** "80 % · Warm white" (a light), "Medium" (a fan), "On", "Off", "Offline", "String Lights on ·
 * Fountain off", "71.6 °F" (a thermostat). */
function stateText(d) {
  if (!d.last_seen) return 'Not seen yet';
  if (!d.online) return 'Offline';
  if (Array.isArray(d.outlets) && d.outlets.length > 0) {
    return d.outlets.map((o) => `${o.name} ${o.on ? 'on' : 'off'}`).join(' · ');
  }
  if (Array.isArray(d.sensors)) {
    const own = d.sensors.find((r) => r.kind === 'internal') || d.sensors[0];
    return own && typeof own.temperature === 'number' ? `${own.temperature} °${own.unit || ''}` : 'No reading yet';
  }
  if (!has(d, 'on_off')) return 'Takes no command';
  if (!d.on) return 'Off';
  const parts = [];
  if (has(d, 'brightness')) parts.push(`${num(d.brightness)} %`);
  if (has(d, 'fan_speed') && typeof d.fan_speed === 'number' && d.fan_speed > 0) parts.push(fanNames()[d.fan_speed] || String(d.fan_speed));
  const colour = lightColour(d);
  if (colour) parts.push(colour.name);
  return parts.length > 0 ? parts.join(' · ') : 'On';
}

/** Shows a device's state in a card or its sheet (every control carries data-ctl); leaves
 * alone a control the user is moving. */
function fill(root, d) {
  root.dataset.on = String(!!d.on);
  root.dataset.online = String(!!d.online);
  const colour = lightColour(d);
  // The icon and the chip show the light's colour; other things glow amber when on.
  root.style.setProperty('--swatch', colour ? colour.css : 'var(--on)');
  for (const sw of $$('[data-ctl="power"]', root)) sw.setAttribute('aria-checked', String(!!d.on));
  for (const sw of $$('[data-ctl="outlet"]', root)) {
    const o = Array.isArray(d.outlets) ? d.outlets.find((x) => x.outlet === Number(sw.dataset.outlet)) : null;
    sw.setAttribute('aria-checked', String(!!(o && o.on)));
  }
  for (const s of $$('[data-ctl="state"]', root)) s.textContent = stateText(d);
  for (const i of $$('[data-ctl="brightness"]', root)) setSlider(i, num(d.brightness), (v) => `${v} %`);
  for (const i of $$('[data-ctl="fan"]', root)) setSlider(i, clamp(num(d.fan_speed, 1), 1, 4), (v) => fanNames()[v] || String(v));
  for (const i of $$('[data-ctl="kelvin"]', root)) {
    if (typeof d.color_temp === 'number') setSlider(i, toKelvin(d.color_temp), (v) => `${v} K`);
    else if (!i.dataset.editing) $('output', i.parentElement).textContent = '—';
  }
  for (const b of $$('[data-ctl="colour"]', root)) {
    // Not known (an effect, or no report yet): every colour, or every white.
    $('.swatch', b).classList.toggle('mixed', !colour && has(d, 'rgb'));
    $('.swatch', b).classList.toggle('whites', !colour && !has(d, 'rgb'));
    const what = colour ? (colour.kelvin ? `${colour.name}, ${colour.kelvin} K` : colour.name) : 'not known';
    b.setAttribute('aria-label', `${d.name} colour: ${what}`);
    b.title = what;
  }
  for (const b of $$('[data-rgb]', root)) {
    b.setAttribute('aria-pressed', String(!!(colour && colour.rgb && hex(colour.rgb) === b.dataset.rgb)));
  }
  for (const b of $$('[data-kelvin]', root)) {
    b.setAttribute('aria-pressed', String(!!(colour && colour.kelvin && Math.abs(colour.kelvin - Number(b.dataset.kelvin)) <= 60)));
  }
  for (const p of $$('[data-ctl="rgb-custom"]', root)) {
    if (!p.dataset.editing && colour && colour.rgb) p.value = hex(colour.rgb);
  }
  for (const b of $$('.fan button', root)) b.setAttribute('aria-pressed', String(!!d.on && Number(b.dataset.step) === d.fan_speed));
  for (const list of $$('[data-ctl="readings"]', root)) fillReadings(list, d);
  for (const dl of $$('[data-ctl="details"]', root)) fillDetails(dl, d);
}

function fillReadings(list, d) {
  const readings = Array.isArray(d.sensors) ? d.sensors : [];
  list.replaceChildren(...(readings.length > 0 ? readings.map((r) => {
    const label = r.kind === 'internal' ? 'Here' : (r.kind || `Sensor ${r.slot}`);
    const extra = [];
    if (typeof r.humidity === 'number') extra.push(`${r.humidity} % humidity`);
    if (typeof r.battery_volts === 'number') extra.push(`battery ${r.battery_volts} V`);
    return el('li', { 'data-slot': r.slot },
      el('span', { class: 'value', text: typeof r.temperature === 'number' ? `${r.temperature} °${r.unit || ''}` : '—' }),
      el('span', { class: 'reading-label', text: `${label}${r.active ? ' (in use)' : ''}` }),
      extra.length > 0 ? el('span', { class: 'extra', text: extra.join(' · ') }) : null);
  }) : [el('li', { class: 'empty', text: 'no reading yet' })]));
}

/** A bridge's name for people: its own device's name, else its id. */
function bridgeName(c) {
  const own = c.device ? state.devices.get(c.device) : null;
  if (c.name) return c.name;
  if (own && !unnamed(own)) return own.name;
  return `Bridge ${c.conn_id}`;
}

// ---------------------------------------------------------------- a device's sheet

let sheetOpener = null;

/** Opens the dialog with every control and the details of a device. */
function openSheet(id) {
  const d = state.devices.get(id);
  const dialog = $('#sheet');
  if (!d) return;
  sheetOpener = document.activeElement;
  state.sheet = id;
  dialog.replaceChildren(...sheetContent(d));
  dialog.dataset.device = id;
  fill(dialog, d);
  if (!dialog.open) dialog.showModal();
  const first = $('.sheet-body button, .sheet-body input, .sheet-body select', dialog);
  if (first) first.focus();
}

function closeSheet() {
  const dialog = $('#sheet');
  if (dialog.open) dialog.close();
}

/** Keeps an open sheet in step with its device; closes it when the device is gone. */
function refreshSheet() {
  if (!state.sheet) return;
  const d = state.devices.get(state.sheet);
  if (!d) {
    closeSheet();
    return;
  }
  fill($('#sheet'), d);
}

function section(title, ...children) {
  return el('div', { class: 'sheet-section' }, el('h3', { text: title }), children);
}

function sheetContent(d) {
  const target = deviceTarget(d);
  const outlets = Array.isArray(d.outlets) && d.outlets.length > 0;
  const parts = [];
  if (has(d, 'on_off') && !outlets) {
    parts.push(el('div', { class: 'sheet-row' }, el('span', { text: 'Power' }), powerSwitch(d, `${d.name} power`)));
  }
  if (outlets) parts.push(section('Outlets', outletRows(d)));
  if (Array.isArray(d.sensors)) parts.push(section('Readings', readingsList(d)));
  if (has(d, 'brightness')) parts.push(section('Brightness', brightnessSlider(d)));
  if (has(d, 'fan_speed')) parts.push(section('Speed', fanButtons(d)));
  if (has(d, 'color_temp')) {
    const [lo, hi] = kelvinRange();
    const whites = WHITES.filter(([, k]) => k >= lo && k <= hi).map(([name, k]) => {
      const b = el('button', { type: 'button', class: 'swatch-button', 'data-kelvin': k, 'aria-pressed': 'false',
        'aria-label': `${name} white, ${k} K`, text: name, onclick: () => send(target, { color_temp: fromKelvin(k) }) });
      b.style.setProperty('--swatch', rgbCss(kelvinRgb(k)));
      return b;
    });
    parts.push(section('White',
      slider({
        ctl: 'kelvin', label: `${d.name} white temperature in kelvin`, min: lo, max: hi, step: 50, value: Math.round((lo + hi) / 2),
        show: (v) => `${v} K`, commit: (v) => send(target, { color_temp: fromKelvin(v) }), kelvin: true,
      }),
      el('div', { class: 'swatches whites' }, whites)));
  }
  if (has(d, 'rgb')) {
    const swatches = COLOURS.map(([name, rgb]) => {
      const b = el('button', { type: 'button', class: 'swatch-button', 'data-rgb': hex(rgb), 'aria-pressed': 'false',
        'aria-label': name, title: name, onclick: () => send(target, { rgb }) });
      b.style.setProperty('--swatch', rgbCss(rgb));
      return b;
    });
    const pick = el('input', { type: 'color', value: '#ff7800', 'data-ctl': 'rgb-custom', 'aria-label': `${d.name}: another colour` });
    pick.addEventListener('input', () => { pick.dataset.editing = '1'; });
    pick.addEventListener('change', () => {
      const rgb = rgbOf(pick.value);
      if (rgb) send(target, { rgb }).finally(() => delete pick.dataset.editing);
    });
    swatches.push(el('label', { class: 'custom-colour' }, el('span', { class: 'swatch mixed' }), pick, 'Other…'));
    parts.push(section('Colour', el('div', { class: 'swatches' }, swatches)));
  }
  if (has(d, 'effects')) {
    const effects = state.meta && Array.isArray(state.meta.effects) ? state.meta.effects : [];
    const sel = el('select', { 'data-ctl': 'effect', 'aria-label': `${d.name} effect` },
      el('option', { value: '', text: 'Run an effect…' }),
      effects.map((e) => el('option', { value: e, text: String(e).charAt(0).toUpperCase() + String(e).slice(1).replace(/_/g, ' ') })));
    sel.addEventListener('change', () => {
      if (sel.value) send(target, { effect: sel.value }).finally(() => { sel.value = ''; });
    });
    parts.push(section('Effect', sel));
  }
  parts.push(section('About', el('dl', { class: 'details', 'data-ctl': 'details' })));
  parts.push(el('p', { class: 'last', 'data-last': target.key }));
  return [
    el('div', { class: 'sheet-head' },
      el('span', { class: 'icon' }, icon(kindIcon(d))),
      el('div', { class: 'title' },
        el('h2', { id: 'sheet-title', text: d.name }),
        el('span', { class: 'state', 'data-ctl': 'state' })),
      el('button', { type: 'button', class: 'close', 'aria-label': 'Close', onclick: closeSheet }, icon('close'))),
    el('div', { class: 'sheet-body' }, parts),
  ];
}

function fillDetails(dl, d) {
  const via = (Array.isArray(d.bridges) ? d.bridges : []).map((b) => {
    const c = state.connections.find((x) => x.conn_id === b);
    return c ? bridgeName(c) : `Bridge ${b}`;
  });
  const rows = [
    ['Room', d.room || 'No room'],
    ['Product', d.model || (typeof d.type === 'number' ? `type ${d.type}` : 'unknown')],
    ['Status', !d.last_seen ? 'not seen yet' : `${d.online ? 'online' : 'offline'}, last report ${ago(d.last_seen)}`],
    ['Through', via.length > 0 ? via.join(', ') : '—'],
    ['Firmware', d.firmware || '—'],
    ['Id', d.id],
  ];
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]));
}

// ---------------------------------------------------------------- commands

const pending = new Map(); // key -> count of commands in flight

/** Sends a state body to a device or group and shows the outcome; resolves when done. */
async function send(target, body) {
  const path = target.kind === 'group'
    ? `api/groups/${encodeURIComponent(target.id)}/state`
    : `api/devices/${encodeURIComponent(target.id)}/state`;
  mark(target, +1);
  let result;
  try {
    const response = await fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (response.status === 401) showLogin('Signed out: sign in again.');
    const answer = await response.json().catch(() => ({}));
    result = response.ok ? answer : { error: answer.error || `HTTP ${response.status}` };
  } catch (err) {
    result = { error: 'could not reach cyncd' };
  } finally {
    mark(target, -1);
  }
  result.shown = Date.now();
  state.last.set(target.key, result);
  showLast(target.key, result);
  if (!ok(result)) toast(`${target.name}: ${describe(result)}`, result.command_id);
  return result;
}

function ok(r) {
  return !r.error && r.outcome === 'applied';
}

function mark(target, delta) {
  const n = (pending.get(target.key) || 0) + delta;
  if (n > 0) pending.set(target.key, n); else pending.delete(target.key);
  const nodes = target.kind === 'group'
    ? $$('[data-group]').filter((g) => g.dataset.group === target.id)
    : cardsOf(target.id);
  for (const node of nodes) node.classList.toggle('pending', n > 0);
}

/** "Done in 12 ms", "No answer after 3 tries (3012 ms)". */
function describe(r) {
  if (r.error) return r.error;
  const ms = Math.round(num(r.latency_ms));
  if (r.outcome === 'applied') return `Done in ${ms} ms`;
  const n = num(r.attempts);
  if (r.outcome === 'no_ack') return `No answer after ${n} ${n === 1 ? 'try' : 'tries'} (${ms} ms)`;
  return `${String(r.outcome || 'unknown').replace(/_/g, ' ')} after ${plural(n, 'attempt')} (${ms} ms)`;
}

function traceLink(id) {
  return el('button', { type: 'button', class: 'link', 'data-command': id, text: 'details', 'aria-label': `details of command ${id}`, onclick: () => openTrace(id) });
}

/** The outcome under a card or room: a success for a while, a failure until the next command. */
function showLast(key, r) {
  const fresh = !ok(r) || Date.now() - num(r.shown) < SHOW_DONE_MS;
  for (const p of $$('[data-last]').filter((n) => n.dataset.last === key)) {
    if (!fresh) {
      p.replaceChildren();
      continue;
    }
    p.replaceChildren(el('span', { class: ok(r) ? 'outcome-applied' : 'outcome-bad', text: describe(r) }),
      r.command_id ? ' · ' : '', r.command_id ? traceLink(r.command_id) : '');
  }
  if (ok(r)) {
    setTimeout(() => {
      if (state.last.get(key) === r) showLast(key, r);
    }, SHOW_DONE_MS + 50);
  }
}

function toast(message, commandId) {
  const t = el('div', { class: 'toast bad', role: 'status' },
    el('span', { text: message }),
    commandId ? el('button', { type: 'button', class: 'link', text: 'details', onclick: () => { openTrace(commandId); t.remove(); } }) : null);
  $('#toasts').append(t);
  setTimeout(() => t.remove(), 10000);
  while ($('#toasts').childElementCount > 4) $('#toasts').firstElementChild.remove();
}

// ---------------------------------------------------------------- operations: bridges

function renderBridges() {
  const root = $('#bridge-list');
  if (state.connections.length === 0) {
    root.replaceChildren(el('p', { class: 'empty', text: 'No bridge connected.' }));
    return;
  }
  const heartbeat = num(state.meta && state.meta.heartbeat_secs, 20);
  const shown = state.connections.map((c) => [bridgeName(c), c]).sort((a, b) => a[0].localeCompare(b[0]));
  root.replaceChildren(...shown.map(([name, c]) => {
    const age = ageSeconds(c.last_packet);
    const health = age <= heartbeat * 1.5 ? ['up', 'healthy'] : ['late', `quiet for ${Math.round(age)} s`];
    const fw = c.firmware && typeof c.firmware === 'object'
      ? Object.entries(c.firmware).map(([k, v]) => `${k} ${v}`).join(', ') : '';
    const outcomes = c.commands && typeof c.commands === 'object'
      ? Object.entries(c.commands).filter(([, n]) => num(n) > 0).map(([k, n]) => `${k} ${n}`) : [];
    const sent = outcomes.length > 0 ? outcomes.join(' · ') : 'none yet';
    return el('article', { class: 'bridge', 'data-conn': c.conn_id },
      el('h3', { text: name }),
      el('div', { class: 'sub' }, el('span', { class: 'dot ' + health[0] }), ` ${health[1]} · id ${c.conn_id} · ${c.peer}`),
      el('dl', { class: 'kv' },
        el('dt', { text: 'home' }), el('dd', { text: c.home === 'default' ? 'Home' : c.home }),
        el('dt', { text: 'connected' }), el('dd', { text: ago(c.since) }),
        el('dt', { text: 'last packet' }), el('dd', { text: ago(c.last_packet) }),
        el('dt', { text: 'packets' }), el('dd', { text: `${num(c.packets_in)} in · ${num(c.packets_out)} out` }),
        el('dt', { text: 'decode errors' }), el('dd', { text: String(num(c.errors)) }),
        el('dt', { text: 'firmware' }), el('dd', { text: fw || 'not reported' }),
        el('dt', { text: 'mesh' }), el('dd', { text: plural(Array.isArray(c.mesh) ? c.mesh.length : 0, 'device') }),
        el('dt', { text: 'commands' }), el('dd', { class: 'commands', text: sent })));
  }));
}

// ---------------------------------------------------------------- operations: decode errors

/** `tcp_comm_decode_errors_total` by reason, from /metrics. */
async function loadDecodeErrors() {
  const out = $('#decode-out');
  let text = '';
  try {
    const r = await fetch('metrics');
    if (!r.ok) {
      out.replaceChildren(el('p', { class: 'empty', text: `metrics: HTTP ${r.status}` }));
      return;
    }
    text = await r.text();
  } catch (err) {
    out.replaceChildren(el('p', { class: 'empty', text: 'could not reach cyncd' }));
    return;
  }
  const rows = [];
  for (const line of text.split('\n')) {
    const m = /^tcp_comm_decode_errors_total\{reason="([^"]*)"\} ([0-9.e+]+)$/.exec(line.trim());
    if (m && Number(m[2]) > 0) rows.push([m[1].replace(/_/g, ' '), Number(m[2])]);
  }
  rows.sort((a, b) => b[1] - a[1]);
  out.replaceChildren(rows.length === 0
    ? el('p', { class: 'empty', 'data-decode': 'none', text: 'None: every packet could be read.' })
    : el('div', { class: 'table-wrap' }, el('table', { 'data-decode': 'reasons' },
      el('thead', {}, el('tr', {}, el('th', { text: 'reason' }), el('th', { text: 'packets' }))),
      el('tbody', {}, rows.map(([reason, n]) => el('tr', {}, el('td', { text: reason }), el('td', { class: 'num', text: String(n) })))))));
}

// ---------------------------------------------------------------- operations: trace

function openTrace(id) {
  closeSheet();
  $('#trace-id').value = id;
  showTrace(id);
  if (window.location.hash === '#trace') route();
  else window.location.hash = '#trace';
}
async function showTrace(id) {
  const out = $('#trace-out');
  id = String(id).trim().toLowerCase();
  if (!/^[0-9a-f]{16}$/.test(id)) {
    out.replaceChildren(el('p', { class: 'empty', text: 'A command id is 16 hex digits.' }));
    return;
  }
  out.replaceChildren(el('p', { class: 'empty', text: 'Loading…' }));
  let answer;
  try {
    const response = await fetch(`api/trace/${id}`);
    answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      out.replaceChildren(el('p', { class: 'empty', text: answer.error || `HTTP ${response.status}` }));
      return;
    }
  } catch (err) {
    out.replaceChildren(el('p', { class: 'empty', text: 'could not reach cyncd' }));
    return;
  }
  const events = Array.isArray(answer.events) ? answer.events : [];
  const t0 = events.length > 0 ? preciseMs(events[0].at) : NaN;
  const rows = events.map((e) => {
    const t = preciseMs(e.at);
    const detail = Object.entries(e).filter(([k]) => k !== 'at' && k !== 'event')
      .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' ');
    return el('tr', { 'data-event': e.event },
      el('td', { class: 'num', text: Number.isNaN(t) || Number.isNaN(t0) ? '' : `+${(t - t0).toFixed(1)} ms` }),
      el('td', { text: e.event }),
      el('td', { class: 'detail', text: detail }));
  });
  out.replaceChildren(
    el('p', { class: 'sub', text: `command ${id}: ${events.length} event${events.length === 1 ? '' : 's'}, first at ${events.length > 0 ? events[0].at : '—'}` }),
    el('div', { class: 'table-wrap' }, el('table', { id: 'trace-table' },
      el('thead', {}, el('tr', {}, el('th', { text: 'at' }), el('th', { text: 'event' }), el('th', { text: 'details' }))),
      el('tbody', {}, rows))));
}

// ---------------------------------------------------------------- operations: canary and SLOs

async function getJSON(path) {
  try {
    const r = await fetch(path, { headers: { Accept: 'application/json' } });
    const body = await r.json().catch(() => null);
    return { status: r.status, body };
  } catch (err) {
    return { status: 0, body: null };
  }
}

function text(v) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function percent(v) {
  if (typeof v !== 'number') return text(v);
  return `${(v <= 1 ? v * 100 : v).toFixed(v <= 1 ? 3 : 1)} %`;
}

async function loadCanary() {
  const out = $('#canary-out');
  const [canary, slo] = await Promise.all([getJSON('api/canary'), getJSON('api/slo')]);
  if (canary.status === 404 && slo.status === 404) {
    out.replaceChildren(el('p', { class: 'empty', 'data-canary': 'unavailable', text: 'canary routing not available' }));
    return;
  }
  const parts = [];
  if (canary.status === 200 && canary.body && typeof canary.body === 'object') {
    const c = canary.body;
    const conns = c.connections && typeof c.connections === 'object'
      ? `${text(c.connections.legacy)} legacy · ${text(c.connections.reliable)} reliable` : '—';
    parts.push(el('dl', { class: 'kv', 'data-canary': 'routing' },
      el('dt', { text: 'mode' }), el('dd', { text: text(c.mode) }),
      el('dt', { text: 'percentage' }), el('dd', { text: typeof c.percent === 'number' ? `${c.percent} %` : text(c.percent) }),
      el('dt', { text: 'kill switch' }), el('dd', { text: c.kill === undefined ? '—' : (c.kill ? 'on' : 'off') }),
      el('dt', { text: 'rolled back' }), el('dd', { text: c.latched === undefined ? '—' : (c.latched ? 'yes (latched until re-enabled)' : 'no') }),
      el('dt', { text: 'connections' }), el('dd', { text: conns })));
  } else {
    parts.push(el('p', { class: 'empty', text: canary.status === 404 ? 'canary routing not available' : `canary: ${canary.status ? `HTTP ${canary.status}` : 'unreachable'}` }));
  }
  if (slo.status === 200 && slo.body && typeof slo.body === 'object') {
    const s = slo.body;
    const slos = Array.isArray(s.slos) ? s.slos : [];
    parts.push(el('div', { class: 'table-wrap' }, el('table', { 'data-canary': 'slo' },
      el('thead', {}, el('tr', {}, el('th', { text: 'SLO' }), el('th', { text: 'cohort' }), el('th', { text: 'compliance' }), el('th', { text: 'budget left' }), el('th', { text: 'events' }))),
      el('tbody', {}, slos.length > 0 ? slos.map((x) => el('tr', {},
        el('td', { text: text(x && x.name) }),
        el('td', { text: text(x && x.cohort) }),
        el('td', { class: 'num', text: percent(x && x.compliance) }),
        el('td', { class: 'num', text: percent(x && x.budget_remaining) }),
        el('td', { class: 'num', text: text(x && x.events) })))
        : el('tr', {}, el('td', { colspan: 5, text: 'no SLOs defined' }))))));
    const rollback = (r) => (r && typeof r === 'object' && r.reason)
      ? `${text(r.at)}: ${text(r.slo)} (${text(r.rule)}) ${text(r.reason)}` : text(r);
    parts.push(el('dl', { class: 'kv' },
      el('dt', { text: 'last rollback' }), el('dd', { text: s.last_rollback ? rollback(s.last_rollback) : 'none' })));
    // Newest first.
    const decisions = Array.isArray(s.decisions) ? s.decisions.slice(0, 5) : [];
    const decision = (d) => (d && typeof d === 'object' && d.decision)
      ? `${text(d.at)} ${d.decision}${d.reason ? `: ${d.reason}` : ''}${d.decision === 'policy' ? `: ${text(d.mode)} ${text(d.percent)} %` : ''}`
      : text(d);
    if (decisions.length > 0) {
      parts.push(el('p', { class: 'sub', text: 'recent decisions' }),
        el('ul', { class: 'sub' }, decisions.map((d) => el('li', { text: decision(d) }))));
    }
  } else if (slo.status !== 404) {
    parts.push(el('p', { class: 'empty', text: `SLOs: ${slo.status ? `HTTP ${slo.status}` : 'unreachable'}` }));
  }
  out.replaceChildren(...parts);
}

// ---------------------------------------------------------------- setup from the Cync account

/** A JSON request to cyncd (a POST always carries a JSON body, as cyncd requires). */
async function call(method, path, body) {
  const payload = method === 'GET' ? undefined : JSON.stringify(body === undefined ? {} : body);
  try {
    const r = await fetch(path, {
      method,
      headers: payload === undefined ? { Accept: 'application/json' } : { 'Content-Type': 'application/json' },
      body: payload,
    });
    if (r.status === 401) showLogin('Signed out: sign in again.');
    return { status: r.status, body: await r.json().catch(() => ({})) };
  } catch (err) {
    return { status: 0, body: { error: 'could not reach cyncd' } };
  }
}

function setupMessage(text, bad) {
  const m = $('#setup-message');
  m.textContent = text;
  m.classList.toggle('bad', !!bad);
}

function setupStep(...steps) {
  for (const node of $$('#setup [data-step]')) node.hidden = !steps.includes(node.dataset.step);
}

/** Shows what cyncd has (homes file, Cync login) and the next step. */
async function loadSetup() {
  const { status, body } = await call('GET', 'api/account');
  if (status !== 200) return;
  const f = body.homes_file || {};
  const file = f.present
    ? (f.error ? `The homes file cannot be read: ${f.error}`
      : `Homes file: ${f.homes} home(s), ${f.devices} device(s), ${f.rooms} room(s), from ${f.source}, written ${f.written}.`)
    : 'No homes file yet: devices behind a bridge show as "device N".';
  const login = body.logged_in ? `Logged in to Cync as ${body.email} until ${body.expires}.` : 'Not logged in to Cync.';
  $('#setup-status').replaceChildren(el('p', { text: file }), el('p', { text: login }));
  if (body.logged_in) setupStep('read', ...(body.pending ? ['save'] : []));
  else setupStep('email');
}

function renderPreview(p) {
  const homes = Array.isArray(p.homes) ? p.homes : [];
  const unknown = (d) => (typeof d.type === 'number' ? ` (type ${d.type}, not known to cyncd yet)` : ' (no type in the account)');
  const device = (d) => el('li', { 'data-device': d.id, text: `${d.name} — ${d.model}${d.known ? '' : unknown(d)}` });
  $('#setup-preview').replaceChildren(
    el('p', { text: `${homes.length} home(s), ${num(p.devices)} device(s), ${num(p.rooms)} room(s):` }),
    ...homes.map((h) => el('div', { class: 'preview-home', 'data-home': h.name },
      el('h3', { text: h.name }),
      ...(h.rooms || []).map((r) => el('div', { class: 'preview-room', 'data-room': r.name },
        el('h4', { text: r.name }), el('ul', {}, (r.devices || []).map(device)))),
      (h.other || []).length > 0 ? el('div', { class: 'preview-room', 'data-room': '' },
        el('h4', { text: 'In no room' }), el('ul', {}, h.other.map(device))) : null,
      (h.groups || []).length > 0 ? el('p', { class: 'sub', text: `Groups: ${h.groups.map((g) => g.name).join(', ')}` }) : null)),
    (p.notes || []).length > 0 ? el('ul', { class: 'preview-notes' }, p.notes.map((n) => el('li', { text: n }))) : null);
}

function setupEvents() {
  $('#setup-email').addEventListener('submit', async (e) => {
    e.preventDefault();
    const email = $('#setup-email-input').value.trim();
    setupMessage('Asking Cync for a code…');
    const { status, body } = await call('POST', 'api/account/code', { email });
    if (status !== 200) { setupMessage(body.error || `HTTP ${status}`, true); return; }
    setupMessage(`Cync e-mailed a code to ${email}. Enter your Cync password and the code.`);
    setupStep('login');
    $('#setup-password').focus();
  });
  $('#setup-login').addEventListener('submit', async (e) => {
    e.preventDefault();
    const password = $('#setup-password');
    const code = $('#setup-code');
    const body = { email: $('#setup-email-input').value.trim(), password: password.value, code: code.value.trim() };
    // The password leaves the page in this request only.
    password.value = '';
    setupMessage('Logging in…');
    const r = await call('POST', 'api/account/login', body);
    if (r.status !== 200) { setupMessage(r.body.error || `HTTP ${r.status}`, true); return; }
    code.value = '';
    setupMessage(`Logged in as ${r.body.email}. Read your homes, check them, then save.`);
    await loadSetup();
  });
  $('#setup-read').addEventListener('click', async () => {
    setupMessage('Reading your homes from Cync…');
    const { status, body } = await call('POST', 'api/account/preview');
    if (status !== 200) {
      setupMessage(body.error || `HTTP ${status}`, true);
      if (status === 412) await loadSetup();
      return;
    }
    renderPreview(body);
    setupMessage('Check the homes and rooms below, then save them.');
    setupStep('read', 'save');
  });
  $('#setup-save').addEventListener('click', async () => {
    setupMessage('Saving…');
    const { status, body } = await call('POST', 'api/account/save');
    if (status !== 200) { setupMessage(body.error || `HTTP ${status}`, true); return; }
    setupMessage(`Saved: ${body.homes} home(s), ${body.devices} device(s), ${body.rooms} room(s). The devices now show their names and rooms.`);
    $('#setup-preview').replaceChildren();
    await loadSetup();
  });
  $('#setup-logout').addEventListener('click', async () => {
    await call('POST', 'api/account/logout');
    setupMessage('Logged out of the Cync account.');
    await loadSetup();
  });
}


// ---------------------------------------------------------------- sign-in

function showLogin(message) {
  document.body.dataset.auth = 'out';
  closeSheet();
  $('#login').hidden = false;
  $('#login-error').textContent = message || '';
  setLive('offline', 'signed out');
  $('#login-token').focus();
}

/** Posts a token to get the session cookie; true when accepted. */
async function signIn(token) {
  try {
    const r = await fetch('api/session', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token }),
    });
    return r.ok;
  } catch (err) {
    return false;
  }
}

let started = false;

/** Checks the session; shows the sign-in form or starts the live view. */
async function start() {
  let status = 0;
  try {
    status = (await fetch('api/session', { headers: { Accept: 'application/json' } })).status;
  } catch (err) {
    status = 0;
  }
  if (status === 401) {
    if (source) source.close();
    showLogin('');
    return;
  }
  if (status !== 200) {
    setLive('offline', `offline, retrying in ${Math.round(backoffMs / 1000)} s`);
    setTimeout(start, backoffMs);
    backoffMs = Math.min(backoffMs * 2, 30000);
    return;
  }
  $('#login').hidden = true;
  delete document.body.dataset.auth;
  connect();
  loadCanary();
  loadDecodeErrors();
  loadSetup();
  if (!started) {
    started = true;
    setInterval(() => {
      if (document.visibilityState === 'visible' && $('#login').hidden && !$('#view-operations').hidden) {
        loadCanary();
        loadDecodeErrors();
      }
    }, 60000);
  }
}

// ---------------------------------------------------------------- start

document.addEventListener('DOMContentLoaded', async () => {
  $('#trace-form').addEventListener('submit', (e) => {
    e.preventDefault();
    showTrace($('#trace-id').value);
  });
  $('#canary-refresh').addEventListener('click', () => { loadCanary(); loadDecodeErrors(); });
  setupEvents();
  $('#login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = $('#login-token');
    const accepted = await signIn(input.value.trim());
    input.value = '';
    if (accepted) start(); else showLogin('Wrong token.');
  });
  const sheet = $('#sheet');
  sheet.addEventListener('close', () => {
    state.sheet = null;
    if (sheetOpener && document.contains(sheetOpener)) sheetOpener.focus();
    sheetOpener = null;
  });
  // A click on the backdrop (outside the sheet's box) closes it.
  sheet.addEventListener('click', (e) => {
    if (e.target !== sheet) return;
    const r = sheet.getBoundingClientRect();
    if (e.clientX < r.left || e.clientX > r.right || e.clientY < r.top || e.clientY > r.bottom) closeSheet();
  });
  // A login link (`cyncd demo` prints one): use the token once, then drop it from the address.
  const link = /^#token=([^&]+)$/.exec(window.location.hash);
  if (link) {
    history.replaceState(null, '', window.location.pathname + window.location.search);
    await signIn(decodeURIComponent(link[1]));
  }
  window.addEventListener('hashchange', route);
  route();
  start();
  // Local only (no request): ages and bridge health move on between server events.
  setInterval(() => {
    renderBridges();
    refreshSheet();
  }, 5000);
});
