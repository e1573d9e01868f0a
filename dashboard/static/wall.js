// The chute wall: one EventSource on /events; each message is the line's figures, the alarms
// and the chutes whose tile changed (the layout when the plan's chutes change). Messages are
// applied once per animation frame (only the latest figures, every changed tile), touching
// only the tiles that changed. window.wallStats counts messages, frames and update lag (server
// time of the model to the frame that shows it) for the browser test.
"use strict";

const REASON_COLOURS = {
  sorted: "#2e8b57", no_read: "#d4a017", invalid: "#e67e22", conflict: "#8e44ad",
  unknown_destination: "#2980b9", recirculate: "#16a085", overflow: "#c0392b",
  late: "#7f8c8d", malformed: "#e84393",
};
const STATE_TEXT = { available: "AVAILABLE", full: "FULL", disabled: "DISABLED" };

const stats = window.wallStats = {
  messages: 0, applied: 0, frames: 0, lastLagMs: null, maxLagMs: 0, lagsMs: [],
  tileUpdates: 0, longFrames: 0,
};

const tiles = new Map();          // chute -> {el, state, dest, count, bar, fill, data}
let control = false;
let pending = null;               // {model, chutes: Map} waiting for the next frame

const $ = (id) => document.getElementById(id);

function fmt(v, digits) {
  return v === null || v === undefined ? "-" : v.toFixed(digits);
}

function buildWall(layout) {
  const wall = $("wall");
  const frag = document.createDocumentFragment();
  tiles.clear();
  for (const [chute, label] of layout) {
    const el = document.createElement("div");
    el.className = "tile available";
    el.dataset.chute = chute;
    el.tabIndex = 0;
    el.innerHTML = '<div class="num"></div><div class="dest"></div><div class="state"></div>' +
      '<div class="count"></div><div class="bar" hidden><span></span></div>';
    el.querySelector(".num").textContent = chute;
    const dest = el.querySelector(".dest");
    dest.textContent = label;
    dest.title = label;
    const t = {
      el, label, state: el.querySelector(".state"), count: el.querySelector(".count"),
      bar: el.querySelector(".bar"), fill: el.querySelector(".bar span"), data: null,
    };
    el.addEventListener("click", () => openChute(chute));
    tiles.set(chute, t);
    frag.appendChild(el);
  }
  wall.replaceChildren(frag);
  $("chutecount").textContent = `${layout.length} chutes`;
}

function applyTile(chute, state, since, fill, decisions) {
  const t = tiles.get(chute);
  if (!t) return;
  const old = t.data;
  t.data = { state, since, fill, decisions };
  if (!old || old.state !== state) {
    t.el.className = "tile " + state;
    t.state.textContent = STATE_TEXT[state] || state.toUpperCase();
    t.el.dataset.state = state;
  }
  if (!old || old.since !== since) t.count.textContent = `${since} parcels`;
  if (fill === null || fill === undefined) {
    if (!t.bar.hidden) t.bar.hidden = true;
  } else {
    if (t.bar.hidden) t.bar.hidden = false;
    t.fill.style.width = `${Math.round(fill * 100)}%`;
    t.bar.title = `fill ${Math.round(fill * 100)}%`;
  }
  t.el.title = `chute ${chute}: ${t.label}, ${state}, ${since} since emptied, ` +
    `${decisions} decisions in all` + (fill === null ? "" : `, fill ${Math.round(fill * 100)}%`);
  stats.tileUpdates++;
}

function applyLine(model) {
  const conn = $("connection");
  conn.dataset.state = model.engine === "up" ? "live" : "engine unreachable";
  conn.textContent = model.engine === "up" ? "live" : "engine unreachable";
  const line = model.line;
  if (line) {
    $("plan").textContent = `plan ${line.plan_name || "-"} ${line.plan_version || ""}`;
    $("scans_per_s").textContent = fmt(line.scans_per_s, 0);
    $("decisions_per_s").textContent = fmt(line.decisions_per_s, 0);
    $("read_rate").textContent = line.read_rate === null ? "-" : `${(line.read_rate * 100).toFixed(1)}%`;
    $("p50_ms").textContent = line.p50_ms === null ? "-" : `${line.p50_ms.toFixed(2)} ms`;
    $("p99_ms").textContent = line.p99_ms === null ? "-" : `${line.p99_ms.toFixed(2)} ms`;
    $("events").textContent = line.events;
    applyMix(line);
  }
  applyAlarms(model.alarms || []);
}

function applyMix(line) {
  const recent = line.reasons_recent;
  const total = Object.values(recent).reduce((a, b) => a + b, 0);
  const bar = $("mixbar"), legend = $("mixlegend");
  const spans = [], items = [];
  for (const [reason, n] of Object.entries(line.reasons)) {
    const share = total ? recent[reason] / total : 0;
    if (share > 0) {
      spans.push(`<span style="width:${(share * 100).toFixed(2)}%;background:${REASON_COLOURS[reason] || "#999"}" title="${reason}"></span>`);
    }
    if (n > 0 || recent[reason] > 0) {
      items.push(`<li data-reason="${reason}"><i style="background:${REASON_COLOURS[reason] || "#999"}"></i>${reason} ` +
        `<b>${n}</b> (${(share * 100).toFixed(1)}% of 10 s)</li>`);
    }
  }
  bar.innerHTML = spans.join("");
  legend.innerHTML = items.join("");
}

function applyAlarms(alarms) {
  const box = $("alarms");
  box.innerHTML = alarms.map((a) =>
    `<span class="alarm${a.active ? " active" : ""}" data-alarm="${a.name}" data-active="${a.active}" title="from ${a.source}">` +
    `<b>${a.active ? "ALARM " + a.title : "ok"}</b>${a.text}</span>`).join("");
}

function onMessage(ev) {
  const msg = JSON.parse(ev.data);
  stats.messages++;
  if (msg.layout) {
    control = !!msg.control;
    $("mode").textContent = control ? "chute control allowed" : "read-only";
    buildWall(msg.layout);
    pending = null;
  }
  if (!pending) pending = { model: msg, chutes: new Map() };
  pending.model = msg;
  for (const c of msg.chutes || []) pending.chutes.set(c[0], c);
  requestAnimationFrame(flush);
}

function flush() {
  if (!pending) return;
  const p = pending;
  pending = null;
  applyLine(p.model);
  for (const [chute, state, since, fill, decisions] of p.chutes.values()) {
    applyTile(chute, state, since, fill, decisions);
  }
  stats.applied++;
  const lag = Date.now() - p.model.t * 1000;
  stats.lastLagMs = lag;
  stats.maxLagMs = Math.max(stats.maxLagMs, lag);
  stats.lagsMs.push(lag);
  if (stats.lagsMs.length > 200) stats.lagsMs.shift();
}

// frame counter: frames drawn, and frames that came more than 100 ms after the previous one
let lastFrame = null;
function countFrame(ts) {
  stats.frames++;
  if (lastFrame !== null && ts - lastFrame > 100) stats.longFrames++;
  lastFrame = ts;
  requestAnimationFrame(countFrame);
}
requestAnimationFrame(countFrame);

function connect() {
  const es = new EventSource("/events");
  es.onmessage = onMessage;
  es.onopen = () => { $("connection").dataset.state = "live"; $("connection").textContent = "live"; };
  es.onerror = () => { $("connection").dataset.state = "lost"; $("connection").textContent = "connection lost, retrying"; };
}

// -- parcel search --------------------------------------------------------------------------
$("findform").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = $("findkey").value.trim();
  if (!key) return;
  const status = $("findstatus"), table = $("findresult"), body = table.querySelector("tbody");
  status.textContent = "searching ...";
  try {
    const r = await fetch(`/api/find?q=${encodeURIComponent(key)}`);
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.statusText);
    body.replaceChildren();
    for (const d of data.decisions) {
      const tr = document.createElement("tr");
      const cells = [d.ts, d.decision_seq, d.parcel_id, (d.reads || []).join(" "), d.chute,
        d.reason, d.destination ?? "-", d.plan_version, d.recirculations,
        d.latency_ns === null || d.latency_ns === undefined ? "-" : `${(d.latency_ns / 1e6).toFixed(2)} ms`];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = c === null || c === undefined ? "-" : String(c);
        tr.appendChild(td);
      }
      tr.dataset.reason = d.reason;
      body.appendChild(tr);
    }
    table.hidden = data.decisions.length === 0;
    status.textContent = data.count === 0 ? `nothing found for ${key} (sealed audit files)` :
      `${data.count} decision${data.count === 1 ? "" : "s"} for ${key}, oldest first` +
      (data.truncated ? " (the latest shown)" : "");
  } catch (e) {
    status.textContent = `search failed: ${e.message}`;
  }
});

// -- a chute's details, and enable / disable when the dashboard allows control ----------------
let dialogChute = null;
function openChute(chute) {
  const t = tiles.get(chute);
  if (!t) return;
  dialogChute = chute;
  const d = t.data || {};
  $("dlgtitle").textContent = `chute ${chute}`;
  $("dlgbody").textContent = `${t.label}: ${d.state}, ${d.since} since emptied, ${d.decisions} decisions in all` +
    (d.fill === null || d.fill === undefined ? "" : `, fill ${Math.round(d.fill * 100)}%`);
  $("dlgerror").textContent = control ? "" : "read-only: start the dashboard with --allow-control to change chutes";
  $("dlgdisable").hidden = !control;
  $("dlgenable").hidden = !control;
  $("chutedialog").showModal();
}
for (const id of ["dlgdisable", "dlgenable"]) {
  $(id).addEventListener("click", async (ev) => {
    const state = ev.target.value;
    try {
      const r = await fetch(`/api/chute/${dialogChute}`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ state }),
      });
      const data = await r.json();
      if (!r.ok || !data.ok) throw new Error(data.error || r.statusText);
      $("chutedialog").close();
    } catch (e) {
      $("dlgerror").textContent = `not changed: ${e.message}`;
    }
  });
}

connect();
