// cyncd's page: live state from GET /api/events (Server-Sent Events), commands through the JSON
// API. Plain JavaScript, no framework, no build step; everything is served by cyncd itself.
//
// Shown state comes only from the server's events: a control sends a command and marks its card
// pending, and the card changes when the device's report reaches cyncd and is pushed here.
//
// Sign-in: the API needs cyncd's token. When GET /api/session answers 401 the page shows a form;
// the token typed there (or given once in a `#token=…` link) is posted to POST /api/session, which
// sets an HttpOnly, SameSite=Strict cookie. This script never stores the token itself.
'use strict';

const state = {
  meta: null,
  devices: new Map(), // id -> device view (as GET /api/devices)
  connections: [],
  skewMs: 0, // server clock - browser clock, from each frame's `at`
  layout: '', // signature of the rendered structure; rebuilt when it changes
  last: new Map(), // device or group key -> last command result, shown on its card
};

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
  return Math.max(0, Math.min(100, Math.round(((k - lo) * 100) / (hi - lo))));
}
function fanSteps() {
  const s = state.meta && Array.isArray(state.meta.fan_steps) ? state.meta.fan_steps : null;
  return s && s.length === 5 ? s : [0, 25, 50, 75, 100];
}
function fanNames() {
  const p = state.meta && Array.isArray(state.meta.fan_presets) ? state.meta.fan_presets : null;
  return ['off'].concat(p && p.length === 4 ? p : ['low', 'medium', 'high', 'max']);
}
function hex(rgb) {
  if (!Array.isArray(rgb) || rgb.length !== 3) return '#ffffff';
  return '#' + rgb.map((c) => Math.max(0, Math.min(255, num(c))).toString(16).padStart(2, '0')).join('');
}
function rgbOf(hexText) {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hexText);
  return m ? [1, 2, 3].map((i) => parseInt(m[i], 16)) : null;
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
  renderDevices();
  renderBridges();
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
  if (layoutKey() !== state.layout) {
    renderDevices();
  } else {
    for (const d of frame.devices || []) for (const card of cardsOf(d.id)) fillCard(card, d);
    countGroups();
  }
  if (Array.isArray(frame.connections)) {
    state.connections = frame.connections;
    renderBridges();
  }
}

// ---------------------------------------------------------------- devices

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

/** Devices by home, then by room (rooms as the account or the configuration give them), with
 * each room's group controls; devices in no room under "Other"; subgroups as a row of controls. */
function renderDevices() {
  state.layout = layoutKey();
  const root = $('#homes');
  const homes = new Map(); // name -> {groups, devices}
  const known = (state.meta && Array.isArray(state.meta.homes)) ? state.meta.homes : [];
  for (const h of known) homes.set(h.name, { groups: Array.isArray(h.groups) ? h.groups : [], devices: [] });
  for (const d of state.devices.values()) {
    if (!homes.has(d.home)) homes.set(d.home, { groups: [], devices: [] });
    homes.get(d.home).devices.push(d);
  }
  const unnamed = [...state.devices.values()].some((d) => d.name === `device ${d.mesh_id}`);
  $('#setup-hint').hidden = !(unnamed || known.length === 0);
  const out = [];
  for (const [name, home] of [...homes.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
    home.devices.sort(byName);
    const section = el('div', { class: 'home', 'data-home': name },
      el('h3', { text: homes.size > 1 || name !== 'default' ? `Home: ${name}` : 'Home' }));
    const rooms = home.groups.filter((g) => g.room !== false);
    const subgroups = home.groups.filter((g) => g.room === false);
    if (subgroups.length > 0) {
      section.append(el('div', { class: 'subgroups', 'aria-label': 'Groups' }, subgroups.map((g) => {
        const target = { kind: 'group', id: `${name}:${g.id}`, key: `group:${name}:${g.id}` };
        return el('div', { class: 'subgroup', 'data-group': target.id },
          el('span', { text: g.name || `group ${g.id}` }),
          el('button', { type: 'button', text: 'On', onclick: () => send(target, { on: true }) }),
          el('button', { type: 'button', text: 'Off', onclick: () => send(target, { on: false }) }));
      })));
    }
    const placed = new Set();
    for (const g of rooms) {
      const roomName = g.name || `group ${g.id}`;
      const members = home.devices.filter((d) => d.room === roomName && !placed.has(d.id));
      if (members.length === 0) continue;
      members.forEach((d) => placed.add(d.id));
      section.append(el('div', { class: 'group room', 'data-group': `${name}:${g.id}`, 'data-room': roomName },
        el('div', { class: 'group-head' },
          el('h4', { text: roomName }),
          el('span', { class: 'count', 'data-members': JSON.stringify(members.map((d) => d.id)) }),
          groupControls(name, g)),
        el('p', { class: 'last', 'data-last': `group:${name}:${g.id}` }),
        el('div', { class: 'grid' }, members.map(card))));
    }
    const rest = home.devices.filter((d) => !placed.has(d.id));
    if (rest.length > 0 || placed.size === 0) {
      section.append(el('div', { class: 'group', 'data-group': `${name}:other` },
        el('div', { class: 'group-head' }, el('h4', { text: placed.size > 0 ? 'Other' : 'Devices' }),
          el('span', { class: 'count', text: `${rest.length} device${rest.length === 1 ? '' : 's'}` })),
        rest.length > 0 ? el('div', { class: 'grid' }, rest.map(card)) : el('p', { class: 'empty', text: 'No device has reported yet.' })));
    }
    out.push(section);
  }
  root.replaceChildren(...(out.length > 0 ? out : [el('p', { class: 'empty', text: 'No device has reported yet.' })]));
  for (const [key, result] of state.last) showLast(key, result);
  countGroups();
}

/** "12 devices, 3 on" under each room's name. */
function countGroups() {
  for (const span of $$('.count[data-members]')) {
    // Device ids hold home names, which may hold spaces: the list is JSON.
    let ids = [];
    try { ids = JSON.parse(span.dataset.members || '[]'); } catch (err) { ids = []; }
    const devices = ids.map((id) => state.devices.get(id)).filter(Boolean);
    const on = devices.filter((d) => d.on).length;
    const unseen = devices.filter((d) => !d.last_seen).length;
    span.textContent = `${ids.length} device${ids.length === 1 ? '' : 's'}, ${on} on${unseen > 0 ? `, ${unseen} not seen yet` : ''}`;
  }
}

function groupControls(home, g) {
  const target = { kind: 'group', id: `${home}:${g.id}`, key: `group:${home}:${g.id}` };
  const bright = el('input', { type: 'range', min: 0, max: 100, value: 100, 'aria-label': `${g.name} brightness` });
  const shown = el('output', { text: '100 %' });
  bright.addEventListener('input', () => { shown.textContent = `${bright.value} %`; });
  bright.addEventListener('change', () => send(target, { brightness: Number(bright.value) }));
  return el('div', { class: 'group-controls' },
    el('button', { type: 'button', 'data-action': 'group-on', text: 'All on', onclick: () => send(target, { on: true }) }),
    el('button', { type: 'button', 'data-action': 'group-off', text: 'All off', onclick: () => send(target, { on: false }) }),
    el('label', { class: 'group-bright' }, 'Brightness', bright, shown));
}

function card(d) {
  const target = { kind: 'device', id: d.id, key: `device:${d.id}` };
  const controls = [];
  if (Array.isArray(d.outlets) && d.outlets.length > 0) {
    // A multi-outlet plug: one switch per outlet.
    controls.push(el('div', { class: 'outlets' }, d.outlets.map((o) => {
      const sw = el('button', { type: 'button', class: 'switch', role: 'switch', 'aria-checked': 'false',
        'data-outlet': o.outlet, 'aria-label': `${d.name} ${o.name}` });
      sw.addEventListener('click', () => {
        const now = state.devices.get(d.id);
        const cur = now && Array.isArray(now.outlets) ? now.outlets.find((x) => x.outlet === o.outlet) : null;
        send(target, { outlet: o.outlet, on: !(cur && cur.on) });
      });
      return el('div', { class: 'outlet' }, sw, el('span', { class: 'name', text: o.name }));
    })), el('span', { class: 'state' }));
  } else if (has(d, 'on_off')) {
    const power = el('button', { type: 'button', class: 'switch', role: 'switch', 'aria-checked': 'false', 'aria-label': `${d.name} power` });
    power.addEventListener('click', () => {
      const now = state.devices.get(d.id);
      send(target, { on: !(now && now.on) });
    });
    controls.push(el('div', { class: 'power' }, power, el('span', { class: 'state' })));
  } else {
    controls.push(el('span', { class: 'state' }));
  }
  if (Array.isArray(d.sensors)) controls.push(el('ul', { class: 'readings', 'aria-label': `${d.name} readings` }));
  if (has(d, 'brightness')) controls.push(slider(target, 'Brightness', 'brightness', 0, 100, 1, (v) => `${v} %`, (v) => ({ brightness: v })));
  if (has(d, 'color_temp')) {
    const [lo, hi] = kelvinRange();
    controls.push(slider(target, 'White', 'kelvin', lo, hi, 50, (v) => `${v} K`, (v) => ({ color_temp: fromKelvin(v) })));
  }
  if (has(d, 'rgb')) {
    const pick = el('input', { type: 'color', value: '#ffffff', 'data-ctl': 'rgb', 'aria-label': `${d.name} colour` });
    pick.addEventListener('input', () => { pick.dataset.editing = '1'; });
    pick.addEventListener('change', () => {
      const rgb = rgbOf(pick.value);
      if (rgb) send(target, { rgb }).finally(() => delete pick.dataset.editing);
    });
    controls.push(el('label', { class: 'ctl' }, 'Colour', pick));
  }
  if (has(d, 'effects')) {
    const effects = state.meta && Array.isArray(state.meta.effects) ? state.meta.effects : [];
    const sel = el('select', { 'data-ctl': 'effect', 'aria-label': `${d.name} effect` },
      el('option', { value: '', text: 'Run an effect…' }), effects.map((e) => el('option', { value: e, text: e })));
    sel.addEventListener('change', () => {
      if (sel.value) send(target, { effect: sel.value }).finally(() => { sel.value = ''; });
    });
    controls.push(el('label', { class: 'ctl' }, 'Effect', sel));
  }
  if (has(d, 'fan_speed')) {
    const steps = fanSteps();
    controls.push(el('div', { class: 'fan', role: 'group', 'aria-label': `${d.name} fan speed` },
      fanNames().map((n, i) => el('button', { type: 'button', 'data-step': i, 'aria-pressed': 'false', text: n,
        onclick: () => send(target, { fan_speed: steps[i] }) }))));
  }
  const c = el('article', { class: 'card', 'data-device': d.id },
    el('div', { class: 'card-head' }, el('h5', { text: d.name }), el('span', { class: 'badge', text: d.kind || 'light' })),
    el('div', { class: 'sub' }, el('span', { class: 'dot' }), ' ', el('span', { class: 'online' }),
      d.model ? ` · ${d.model}` : '', ` · ${d.id}`),
    el('div', { class: 'controls' }, controls),
    el('p', { class: 'last', 'data-last': target.key }));
  fillCard(c, d);
  return c;
}

function slider(target, label, ctl, min, max, step, show, body) {
  const input = el('input', { type: 'range', min, max, step, 'data-ctl': ctl, 'aria-label': label });
  const out = el('output');
  if (ctl === 'kelvin') input.classList.add('kelvin');
  input.addEventListener('input', () => {
    input.dataset.editing = '1';
    out.textContent = show(Number(input.value));
  });
  input.addEventListener('change', () => {
    send(target, body(Number(input.value))).finally(() => delete input.dataset.editing);
  });
  return el('label', { class: 'ctl' }, label, input, out);
}

/** Shows a device's state on one of its cards; leaves alone a control the user is moving. */
function fillCard(c, d) {
  c.dataset.on = String(!!d.on);
  c.dataset.online = String(!!d.online);
  const power = $('.power .switch', c);
  if (power) power.setAttribute('aria-checked', String(!!d.on));
  for (const sw of $$('.outlet .switch', c)) {
    const o = Array.isArray(d.outlets) ? d.outlets.find((x) => x.outlet === Number(sw.dataset.outlet)) : null;
    sw.setAttribute('aria-checked', String(!!(o && o.on)));
  }
  $('.dot', c).classList.toggle('up', !!d.online);
  $('.online', c).textContent = d.online ? 'online' : (d.last_seen ? 'offline' : 'not seen yet');
  const readings = $('.readings', c);
  if (readings) {
    const list = Array.isArray(d.sensors) ? d.sensors : [];
    readings.replaceChildren(...(list.length > 0 ? list.map((r) => {
      const label = r.kind === 'internal' ? 'Here' : (r.kind || `sensor ${r.slot}`);
      const parts = [];
      if (typeof r.temperature === 'number') parts.push(`${r.temperature} °${r.unit || ''}`);
      if (typeof r.humidity === 'number') parts.push(`${r.humidity} %`);
      if (typeof r.battery_volts === 'number') parts.push(`battery ${r.battery_volts} V`);
      return el('li', { 'data-slot': r.slot }, `${label}${r.active ? ' (followed)' : ''}: `,
        el('span', { class: 'value', text: parts.join(' · ') || '—' }));
    }) : [el('li', { class: 'empty', text: 'no reading yet' })]));
  }
  if (!has(d, 'on_off') && !(Array.isArray(d.outlets) && d.outlets.length > 0)) {
    $('.state', c).textContent = Array.isArray(d.sensors) ? '' : 'takes no command';
    return;
  }
  if (Array.isArray(d.outlets) && d.outlets.length > 0) {
    $('.state', c).textContent = d.outlets.map((o) => `${o.name} ${o.on ? 'on' : 'off'}`).join(' · ');
    return;
  }
  const parts = [d.on ? 'On' : 'Off'];
  if (d.on && has(d, 'brightness')) parts.push(`${num(d.brightness)} %`);
  if (d.on && has(d, 'color_temp') && typeof d.color_temp === 'number') parts.push(`${toKelvin(d.color_temp)} K`);
  if (d.on && has(d, 'rgb') && Array.isArray(d.rgb)) parts.push(hex(d.rgb));
  if (has(d, 'fan_speed') && typeof d.fan_speed === 'number') parts.push(`fan ${fanNames()[d.fan_speed] || d.fan_speed}`);
  $('.state', c).textContent = parts.join(' · ');
  const set = (ctl, value, text) => {
    const input = $(`[data-ctl="${ctl}"]`, c);
    if (!input || input.dataset.editing) return;
    if (value !== undefined) input.value = value;
    const out = input.parentElement && $('output', input.parentElement);
    if (out && text !== undefined) out.textContent = text;
  };
  set('brightness', num(d.brightness), `${num(d.brightness)} %`);
  if (typeof d.color_temp === 'number') set('kelvin', toKelvin(d.color_temp), `${toKelvin(d.color_temp)} K`);
  else set('kelvin', undefined, '—');
  if (Array.isArray(d.rgb)) set('rgb', hex(d.rgb));
  for (const b of $$('.fan button', c)) b.setAttribute('aria-pressed', String(Number(b.dataset.step) === d.fan_speed));
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
  state.last.set(target.key, result);
  showLast(target.key, result);
  toast(result);
  return result;
}

function mark(target, delta) {
  const n = (pending.get(target.key) || 0) + delta;
  if (n > 0) pending.set(target.key, n); else pending.delete(target.key);
  const nodes = target.kind === 'group'
    ? $$('.group[data-group]').filter((g) => g.dataset.group === target.id)
    : cardsOf(target.id);
  for (const node of nodes) node.classList.toggle('pending', n > 0);
}

/** "applied in 12 ms", "no_ack after 3 attempts". */
function describe(r) {
  if (r.error) return r.error;
  const ms = Math.round(num(r.latency_ms));
  if (r.outcome === 'applied') return `applied in ${ms} ms`;
  const n = num(r.attempts);
  return `${r.outcome || 'unknown'} after ${n} attempt${n === 1 ? '' : 's'} (${ms} ms)`;
}

function traceLink(id) {
  return el('button', { type: 'button', class: 'link', 'data-command': id, text: id, onclick: () => openTrace(id) });
}

function showLast(key, r) {
  for (const p of $$('[data-last]').filter((n) => n.dataset.last === key)) {
    p.replaceChildren(el('span', { class: r.outcome === 'applied' ? 'outcome-applied' : 'outcome-bad', text: describe(r) }),
      r.command_id ? ' · trace ' : '', r.command_id ? traceLink(r.command_id) : '');
  }
}

function toast(r) {
  const bad = !!r.error || r.outcome !== 'applied';
  const t = el('div', { class: `toast${bad ? ' bad' : ''}`, role: 'status' },
    el('span', { text: describe(r) }),
    r.command_id ? el('button', { type: 'button', class: 'link', text: 'trace', onclick: () => { openTrace(r.command_id); t.remove(); } }) : null);
  $('#toasts').append(t);
  setTimeout(() => t.remove(), bad ? 10000 : 5000);
  while ($('#toasts').childElementCount > 4) $('#toasts').firstElementChild.remove();
}

// ---------------------------------------------------------------- bridges

function renderBridges() {
  const root = $('#bridge-list');
  if (state.connections.length === 0) {
    root.replaceChildren(el('p', { class: 'empty', text: 'No bridge connected.' }));
    return;
  }
  const heartbeat = num(state.meta && state.meta.heartbeat_secs, 20);
  root.replaceChildren(...state.connections.map((c) => {
    const age = ageSeconds(c.last_packet);
    const health = age <= heartbeat * 1.5 ? ['up', 'healthy'] : ['late', `quiet for ${Math.round(age)} s`];
    const fw = c.firmware && typeof c.firmware === 'object'
      ? Object.entries(c.firmware).map(([k, v]) => `${k} ${v}`).join(', ') : '';
    const outcomes = c.commands && typeof c.commands === 'object'
      ? Object.entries(c.commands).filter(([, n]) => num(n) > 0).map(([k, n]) => `${k} ${n}`) : [];
    const sent = outcomes.length > 0 ? outcomes.join(' · ') : 'none yet';
    return el('article', { class: 'card bridge', 'data-conn': c.conn_id },
      el('div', { class: 'card-head' }, el('h5', { text: c.conn_id }), el('span', { class: 'badge', text: c.home })),
      el('div', { class: 'sub' }, el('span', { class: `dot ${health[0]}` }), ` ${health[1]} · ${c.peer}`),
      el('dl', { class: 'kv' },
        el('dt', { text: 'connected' }), el('dd', { text: ago(c.since) }),
        el('dt', { text: 'last packet' }), el('dd', { text: ago(c.last_packet) }),
        el('dt', { text: 'packets' }), el('dd', { text: `${num(c.packets_in)} in · ${num(c.packets_out)} out` }),
        el('dt', { text: 'errors' }), el('dd', { text: String(num(c.errors)) }),
        el('dt', { text: 'firmware' }), el('dd', { text: fw || 'not reported' }),
        el('dt', { text: 'mesh' }), el('dd', { text: `${Array.isArray(c.mesh) ? c.mesh.length : 0} devices` }),
        el('dt', { text: 'commands' }), el('dd', { class: 'commands', text: sent })));
  }));
}

// ---------------------------------------------------------------- trace

function openTrace(id) {
  $('#trace-id').value = id;
  showTrace(id);
  $('#trace').scrollIntoView({ behavior: 'smooth', block: 'start' });
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

// ---------------------------------------------------------------- canary and SLOs

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
  loadSetup();
  if (!started) {
    started = true;
    setInterval(() => { if (document.visibilityState === 'visible' && $('#login').hidden) loadCanary(); }, 60000);
  }
}

// ---------------------------------------------------------------- start

document.addEventListener('DOMContentLoaded', async () => {
  $('#trace-form').addEventListener('submit', (e) => {
    e.preventDefault();
    showTrace($('#trace-id').value);
  });
  $('#canary-refresh').addEventListener('click', loadCanary);
  setupEvents();
  $('#login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = $('#login-token');
    const ok = await signIn(input.value.trim());
    input.value = '';
    if (ok) start(); else showLogin('Wrong token.');
  });
  // A login link (`cyncd demo` prints one): use the token once, then drop it from the address.
  const link = /^#token=([^&]+)$/.exec(window.location.hash);
  if (link) {
    history.replaceState(null, '', window.location.pathname + window.location.search);
    await signIn(decodeURIComponent(link[1]));
  }
  start();
  // Local only (no request): ages and bridge health move on between server events.
  setInterval(renderBridges, 5000);
});
