// The Tsunagi dashboard: polls the dashboard server's JSON and draws it. No framework, no
// CDN: Cytoscape.js is vendored in /static/vendor. The session cookie authenticates fetches.
"use strict";

const COLORS = { healthy: "#3f9c35", degraded: "#f0ab00", failure: "#c9190b", idle: "#8a8d90" };
const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);
let current = "graph";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "onclick") e.onclick = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function getJSON(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

function windowSeconds() { return Number($("window").value); }

function setStatus(text) { $("status").textContent = text; }

// ------------------------------------------------------------------ graph

const cy = cytoscape({
  container: $("graph"),
  wheelSensitivity: 0.3,
  style: [
    { selector: "node", style: {
        "label": "data(label)", "font-size": 12, "text-valign": "bottom", "text-margin-y": 4,
        "background-color": "#fff", "border-width": 3, "border-color": "data(color)",
        "width": 34, "height": 34 } },
    { selector: "node[type = 'service']", style: { "shape": "triangle" } },
    { selector: "node[type = 'unknown']", style: { "shape": "diamond" } },
    { selector: "edge", style: {
        "width": 2, "curve-style": "bezier", "target-arrow-shape": "triangle",
        "line-color": "data(color)", "target-arrow-color": "data(color)",
        "label": "data(label)", "font-size": 10, "text-rotation": "autorotate",
        "text-background-color": "#fff", "text-background-opacity": 0.85,
        "text-background-padding": 2 } },
  ],
  layout: { name: "preset" },
});
window.tsunagiGraph = cy;  // for people (and tests) who want to inspect what is drawn

function edgeLabel(e) {
  const p99 = e.p99_ms == null ? "–" : `${e.p99_ms} ms`;
  return `${e.rate} rps · ${e.error_pct}% · p99 ${p99}`;
}

function drawGraph(g) {
  const nodes = g.nodes.map((n) => ({ group: "nodes", data: { ...n, color: COLORS[n.health] || COLORS.idle } }));
  const edges = g.edges.map((e) => ({
    group: "edges", data: { ...e, color: COLORS[e.health] || COLORS.idle, label: edgeLabel(e) } }));
  const wanted = new Set([...nodes, ...edges].map((x) => x.data.id));
  const had = new Set(cy.elements().map((x) => x.id()));
  const changed = wanted.size !== had.size || [...wanted].some((id) => !had.has(id));
  cy.batch(() => {
    cy.elements().filter((x) => !wanted.has(x.id())).remove();
    for (const x of [...nodes, ...edges]) {
      const found = cy.getElementById(x.data.id);
      if (found.nonempty()) found.data(x.data); else cy.add(x);
    }
  });
  if (changed) {
    // Left to right, as Kiali draws it: callers on the left, horizontal edge labels.
    cy.layout({ name: "breadthfirst", directed: true, spacingFactor: 1.1, padding: 40,
                roots: cy.nodes().filter((n) => n.indegree() === 0),
                transform: (node, pos) => ({ x: pos.y * 1.8, y: pos.x * 0.7 }) }).run();
  }
  $("graph-empty").textContent = g.nodes.length ? "" :
    "No traffic in this window yet. Sidecars report metrics once traffic flows; " +
    "the graph shows calls seen in the window chosen above.";
  document.body.dataset.graphNodes = String(g.nodes.length);
}

cy.on("tap", "node", (ev) => {
  const d = ev.target.data();
  if (d.type === "service") selectTarget(`service/${d.namespace}/${d.service}`);
  else if (d.workload && d.workload !== "unknown") selectTarget(`workload/${d.namespace}/${d.workload}`);
});

// ------------------------------------------------------------------ metrics panels

let targets = [];

function updateTargets(g) {
  const seen = new Set();
  for (const n of g.nodes) {
    if (n.type === "service") seen.add(`service/${n.namespace}/${n.service}`);
    else if (n.workload && n.workload !== "unknown") seen.add(`workload/${n.namespace}/${n.workload}`);
  }
  const next = [...seen].sort();
  if (next.join() === targets.join()) return;
  const select = $("metrics-target");
  const keep = select.value;
  targets = next;
  select.replaceChildren(...targets.map((t) => el("option", { value: t }, t.replace("/", ": "))));
  if (targets.includes(keep)) select.value = keep;
}

function selectTarget(t) {
  if (!targets.includes(t)) { targets.push(t); $("metrics-target").append(el("option", { value: t }, t)); }
  $("metrics-target").value = t;
  show("metrics");
}

function chart(svg, times, series, yMax) {
  const W = svg.clientWidth || 400, H = svg.clientHeight || 200, L = 44, B = 18;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const all = series.flatMap((s) => s.values.filter((v) => v != null));
  const top = yMax ?? Math.max(1e-9, ...all) * 1.1;
  const x = (i) => L + (W - L - 6) * (times.length > 1 ? i / (times.length - 1) : 0);
  const y = (v) => H - B - (H - B - 6) * (v / top);
  const parts = [];
  for (const f of [0, 0.5, 1]) {
    parts.push(`<line x1="${L}" x2="${W - 6}" y1="${y(top * f)}" y2="${y(top * f)}" stroke="#e4e4e4"/>`);
    parts.push(`<text x="${L - 4}" y="${y(top * f) + 4}" font-size="10" text-anchor="end">${(top * f).toPrecision(3)}</text>`);
  }
  if (times.length) {
    const fmt = (t) => new Date(t * 1000).toLocaleTimeString();
    parts.push(`<text x="${L}" y="${H - 4}" font-size="10">${fmt(times[0])}</text>`);
    parts.push(`<text x="${W - 6}" y="${H - 4}" font-size="10" text-anchor="end">${fmt(times[times.length - 1])}</text>`);
  }
  for (const s of series) {
    let d = "", pen = false;
    s.values.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`; pen = true;
    });
    parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"/>`);
    // A point between gaps (no requests before or after) would draw no line: mark it.
    s.values.forEach((v, i) => {
      if (v != null && s.values[i - 1] == null && s.values[i + 1] == null) {
        parts.push(`<circle cx="${x(i).toFixed(1)}" cy="${y(v).toFixed(1)}" r="3" fill="${s.color}"/>`);
      }
    });
  }
  svg.innerHTML = parts.join("");
  svg.dataset.points = String(all.length);
}

async function refreshMetrics() {
  const t = $("metrics-target").value;
  if (!t) return;
  const [kind, namespace, name] = t.split("/");
  const w = Math.min(3600, Math.max(300, windowSeconds() * 5));  // the API allows 1 h
  const p = await getJSON(`/api/panel?kind=${kind}&namespace=${encodeURIComponent(namespace)}` +
    `&name=${encodeURIComponent(name)}&window=${w}&step=${Math.max(5, w / 60)}`);
  chart($("chart-rps"), p.times, [{ values: p.rps, color: "#06c" }]);
  chart($("chart-success"), p.times, [{ values: p.success_pct, color: "#3f9c35" }], 100);
  chart($("chart-latency"), p.times, [
    { values: p.p50_ms, color: "#06c" }, { values: p.p90_ms, color: "#f0ab00" },
    { values: p.p99_ms, color: "#c9190b" }]);
}
$("metrics-target").onchange = () => refreshMetrics().catch(report);

// ------------------------------------------------------------------ traces

async function searchTraces() {
  const service = $("trace-service").value;
  const r = await getJSON(`/api/traces?service=${encodeURIComponent(service)}&limit=30`);
  $("trace-note").textContent = r.enabled ? "" : "tracing is not enabled on this control plane";
  const select = $("trace-service");
  const have = new Set([...select.options].map((o) => o.value));
  for (const s of r.services) if (!have.has(s)) select.append(el("option", { value: s }, s));
  const rows = r.traces.map((t) => el("tr", { class: "clickable", "data-trace": t.trace_id,
      onclick: () => showTrace(t.trace_id).catch(report) },
    el("td", {}, t.root), el("td", {}, t.services.join(", ")), el("td", {}, t.spans),
    el("td", {}, `${(t.duration_us / 1000).toFixed(2)} ms`),
    el("td", {}, new Date(t.start_us / 1000).toLocaleTimeString())));
  $("trace-list").tBodies[0].replaceChildren(...rows);
}

async function showTrace(id) {
  const r = await getJSON(`/api/traces/${encodeURIComponent(id)}`);
  const spans = r.spans;
  const start = Math.min(...spans.map((s) => s.timestamp || Infinity));
  const end = Math.max(...spans.map((s) => (s.timestamp || 0) + (s.duration || 0)));
  const total = Math.max(1, end - start);
  const children = new Map();
  for (const s of spans) {
    const k = s.parentId && spans.some((p) => p.id === s.parentId) ? s.parentId : "";
    if (!children.has(k)) children.set(k, []);
    children.get(k).push(s);
  }
  const rows = [el("div", { class: "hint" }, `trace ${id} · ${(total / 1000).toFixed(2)} ms`)];
  const walk = (parent, depth) => {
    for (const s of (children.get(parent) || []).sort((a, b) => (a.timestamp || 0) - (b.timestamp || 0))) {
      const svc = (s.localEndpoint && s.localEndpoint.serviceName) || "?";
      const bar = el("div", { class: "span-bar" + (s.tags && s.tags.error ? " error" : "") });
      bar.style.left = `${(100 * ((s.timestamp || start) - start)) / total}%`;
      bar.style.width = `${(100 * (s.duration || 0)) / total}%`;
      const name = el("div", { class: "span-name" }, `${"\u00a0".repeat(depth * 3)}${svc}: ${s.name || ""}`);
      rows.push(el("div", { class: "span-row", "data-span": s.id }, name,
        el("div", { class: "span-track" }, bar),
        el("div", { class: "span-dur" }, `${((s.duration || 0) / 1000).toFixed(2)} ms`)));
      walk(s.id, depth + 1);
    }
  };
  walk("", 0);
  $("waterfall").replaceChildren(...rows);
}
$("trace-search").onclick = () => searchTraces().catch(report);

// ------------------------------------------------------------------ config

async function refreshConfig() {
  const [c, p] = await Promise.all([getJSON("/api/config"), getJSON("/api/proxies")]);
  $("config-list").tBodies[0].replaceChildren(...c.items.map((i) => el("tr", {},
    el("td", {}, i.kind), el("td", {}, i.namespace), el("td", {}, i.name), el("td", {}, i.revision),
    el("td", {}, ...(i.errors.map((e) => el("div", { class: "err" }, e))),
      ...(i.warnings.map((w) => el("div", { class: "warn" }, w))),
      ...(i.errors.length + i.warnings.length ? [] : [el("span", { class: "ok" }, "ok")])))));
  $("proxy-list").tBodies[0].replaceChildren(...p.proxies.map((x) => el("tr", {},
    el("td", {}, x.id), el("td", {}, x.service), el("td", {}, x.namespace), el("td", {}, x.revision),
    el("td", { class: x.nacked ? "err" : x.synced ? "ok" : "warn" },
      x.nacked ? "NACKED" : x.synced ? "SYNCED" : "STALE"),
    el("td", {}, x.message || ""))));
}

// ------------------------------------------------------------------ plumbing

function report(e) { setStatus(String(e.message || e)); console.error(e); }

function show(view) {
  current = view;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.view === view);
  for (const s of document.querySelectorAll(".view")) s.classList.toggle("active", s.id === `view-${view}`);
  if (view === "graph") cy.resize();
  refresh();
}
for (const b of document.querySelectorAll("#tabs button")) b.onclick = () => show(b.dataset.view);
$("window").onchange = () => refresh();

async function refresh() {
  try {
    const g = await getJSON(`/api/graph?window=${windowSeconds()}`);
    drawGraph(g);
    updateTargets(g);
    if (current === "metrics") await refreshMetrics();
    if (current === "traces" && !$("trace-list").tBodies[0].rows.length) await searchTraces();
    if (current === "config") await refreshConfig();
    setStatus(`updated ${new Date().toLocaleTimeString()}`);
  } catch (e) { report(e); }
}

refresh();
setInterval(refresh, REFRESH_MS);
