// weir's dashboard. It reads one snapshot a second from /events (server-sent events),
// keeps the last five minutes of them in the page, and works out rates and percentiles
// from the differences between snapshots: weir itself keeps only counters.
//
// Everything shown comes from requests and the config, so it is written with
// textContent, never as HTML.
"use strict";

const KEEP = 300; // snapshots kept: five minutes at one a second
const PCT_WINDOW = 10; // snapshots over which p50/p99 are worked out
const MINUTE = 60;
const REQUESTS_EVERY_MS = 2000;

const page = {
  snaps: [], // the last KEEP snapshots, oldest first
  charts: new Map(), // route name -> {rps, lat} uPlot instances
  selected: null, // the id of the request whose detail is open
  selectedRecord: null,
};

// ---- small helpers -------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fig(key, label, value, wide) {
  return el("div", { class: wide ? "wide" : null }, el("dt", {}, label), el("dd", { "data-k": key }, value));
}

function setFig(root, key, value) {
  const dd = root.querySelector(`[data-k="${key}"]`);
  if (dd && dd.textContent !== String(value)) dd.textContent = String(value);
}

async function getJson(path, init) {
  const resp = await fetch(path, Object.assign({ credentials: "same-origin" }, init || {}));
  const text = await resp.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = { error: "not_json", message: text };
  }
  return { status: resp.status, body };
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms === Infinity) return "> 30 s";
  return ms < 10 ? `≤ ${ms} ms` : `≤ ${Math.round(ms)} ms`;
}

function fmtRate(r) {
  return r >= 10 ? r.toFixed(0) : r.toFixed(1);
}

function fmtAge(s) {
  if (s === null || s === undefined) return "–";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function series(snap, family) {
  return (snap && snap.series && snap.series[family]) || [];
}

function sumWhere(snap, family, pred) {
  return series(snap, family)
    .filter(pred)
    .reduce((a, s) => a + s.value, 0);
}

// The snapshot `n` back from the newest, or the oldest there is.
function back(n) {
  const s = page.snaps;
  return s[Math.max(0, s.length - 1 - n)];
}

function routeIn(snap, name) {
  return snap ? snap.status.routes.find((r) => r.name === name) : undefined;
}

// The bucket bound below which `q` of the requests in `counts` fell.
function quantile(counts, bounds, q) {
  const n = counts.reduce((a, b) => a + b, 0);
  if (n === 0) return null;
  const rank = Math.max(1, Math.ceil(q * n));
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    seen += counts[i];
    if (seen >= rank) return bounds[i] === null ? Infinity : bounds[i];
  }
  return null;
}

function codesSince(now, then) {
  const out = {};
  for (const [code, n] of Object.entries(now.status_codes || {})) {
    const before = (then && then.status_codes && then.status_codes[code]) || 0;
    if (n - before > 0) out[code] = n - before;
  }
  return out;
}

// ---- routes ---------------------------------------------------------------------

function chart(target, title, names, colours) {
  const width = Math.max(140, target.clientWidth || 160);
  const opts = {
    width,
    height: 90,
    legend: { show: false },
    cursor: { show: false },
    axes: [
      { show: false },
      { size: 40, stroke: cssVar("--muted"), grid: { stroke: cssVar("--line"), width: 1 }, ticks: { show: false } },
    ],
    series: [{}].concat(names.map((n, i) => ({ label: n, stroke: colours[i], width: 1.5, spanGaps: true }))),
  };
  target.append(el("div", { class: "title" }, title));
  return new uPlot(opts, [[], ...names.map(() => [])], target);
}

function routeCard(r) {
  const card = el(
    "article",
    { class: "card", "data-route": r.name },
    el("h3", {}, r.name),
    el("div", { class: "sub" }, `→ ${r.upstream}`),
    el("div", { class: "sub" }, r.filters.length ? `filters: ${r.filters.join(" · ")}` : "no filters"),
    el(
      "dl",
      { class: "figures" },
      fig("rps", "req/s", "0"),
      fig("requests", "requests", "0"),
      fig("p50", "p50", "–"),
      fig("p99", "p99", "–"),
      fig("r429", "429s (1 min)", "0"),
      fig("cache", "cache hits", "–"),
    ),
    el("div", { class: "classes", "data-k": "classes" }),
    el("div", { class: "legend", "data-k": "classes-legend" }),
    el("div", { class: "errors", "data-k": "upstream-errors" }),
  );
  card.append(el("div", { class: "charts" }));
  document.getElementById("routes").append(card);
  const c = { rpsData: [[], []], latData: [[], [], []] };
  page.charts.set(r.name, c);
  drawCharts(card, c);
  return card;
}

// (Re)makes a card's charts with the colours of the current scheme, and the data so far.
function drawCharts(card, c) {
  const box = card.querySelector(".charts");
  const rpsBox = el("div", { class: "chart" });
  const latBox = el("div", { class: "chart" });
  box.replaceChildren(rpsBox, latBox);
  c.rps = chart(rpsBox, "req/s", ["req/s"], [cssVar("--chart-1")]);
  c.lat = chart(latBox, "p50 / p99 ms", ["p50", "p99"], [cssVar("--chart-1"), cssVar("--chart-2")]);
  c.rps.setData(c.rpsData);
  c.lat.setData(c.latData);
}

// Light and dark mode: uPlot draws on a canvas with the colours it was given, so the
// charts are made again when the scheme changes.
function redrawAllCharts() {
  for (const [name, c] of page.charts) {
    c.rps.destroy();
    c.lat.destroy();
    const card = document.querySelector(`#routes [data-route="${CSS.escape(name)}"]`);
    if (card) drawCharts(card, c);
  }
}

function drawRoutes(snap) {
  const prev = back(1);
  const older = back(PCT_WINDOW);
  const minuteAgo = back(MINUTE);
  const names = new Set(snap.status.routes.map((r) => r.name));
  for (const card of document.querySelectorAll("#routes [data-route]")) {
    if (!names.has(card.dataset.route)) {
      const c = page.charts.get(card.dataset.route);
      c.rps.destroy();
      c.lat.destroy();
      card.remove();
      page.charts.delete(card.dataset.route);
    }
  }
  const routeSelect = document.getElementById("filter-route");
  for (const r of snap.status.routes) {
    const card = document.querySelector(`#routes [data-route="${CSS.escape(r.name)}"]`) || routeCard(r);
    if (![...routeSelect.options].some((o) => o.value === r.name)) {
      routeSelect.append(el("option", { value: r.name }, r.name));
    }
    const p = routeIn(prev, r.name);
    const dt = prev && prev !== snap ? (snap.at_ms - prev.at_ms) / 1000 : 0;
    const rps = p && dt > 0 ? Math.max(0, (r.requests - p.requests) / dt) : 0;
    const o = routeIn(older, r.name);
    const window = r.latency_buckets.map((n, i) => n - (o && o !== r ? o.latency_buckets[i] : 0));
    const p50 = quantile(window, snap.latency_bounds_ms, 0.5);
    const p99 = quantile(window, snap.latency_bounds_ms, 0.99);
    const m = routeIn(minuteAgo, r.name);
    const lastMinute = codesSince(r, m === r ? undefined : m);
    setFig(card, "rps", fmtRate(rps));
    setFig(card, "requests", r.requests);
    setFig(card, "p50", fmtMs(p50));
    setFig(card, "p99", fmtMs(p99));
    setFig(card, "r429", lastMinute["429"] || 0);
    const hits = sumWhere(snap, "weir_filter_cache_responses_total", (s) => s.route === r.name && s.result === "hit");
    const lookups = sumWhere(snap, "weir_filter_cache_responses_total", (s) => s.route === r.name);
    setFig(card, "cache", lookups ? `${Math.round((100 * hits) / lookups)} % of ${lookups}` : "–");
    drawClasses(card, r.status_codes || {});
    const errs = series(snap, "weir_upstream_errors_total").filter((s) => s.upstream === r.upstream_name && s.value > 0);
    card.querySelector('[data-k="upstream-errors"]').textContent = errs.length
      ? "upstream errors: " + errs.map((s) => `${s.kind} ${s.value}`).join(" · ")
      : "";
    const c = page.charts.get(r.name);
    if (c) {
      const t = snap.at_ms / 1000;
      push(c.rpsData, [t, rps]);
      push(c.latData, [t, p50 === Infinity ? null : p50, p99 === Infinity ? null : p99]);
      c.rps.setData(c.rpsData);
      c.lat.setData(c.latData);
    }
  }
}

function push(data, values) {
  values.forEach((v, i) => data[i].push(v));
  if (data[0].length > KEEP) data.forEach((col) => col.shift());
}

function drawClasses(card, codes) {
  const classes = { 2: 0, 3: 0, 4: 0, 5: 0 };
  for (const [code, n] of Object.entries(codes)) {
    const c = Math.floor(Number(code) / 100);
    if (c in classes) classes[c] += n;
  }
  const total = Object.values(classes).reduce((a, b) => a + b, 0);
  const bar = card.querySelector('[data-k="classes"]');
  bar.replaceChildren(
    ...Object.entries(classes)
      .filter(([, n]) => n > 0)
      .map(([c, n]) => {
        const s = el("span", { class: `c${c}`, title: `${c}xx: ${n}` });
        s.style.width = `${(100 * n) / total}%`;
        return s;
      }),
  );
  card
    .querySelector('[data-k="classes-legend"]')
    .replaceChildren(
      ...Object.entries(classes).map(([c, n]) => el("span", { "data-class": `${c}xx` }, `${c}xx ${n}`)),
    );
}

// ---- breakers, limiters, jobs, config ------------------------------------------------

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
  document.querySelector(`[data-for="${id}"]`).hidden = rows.length > 0;
}

function drawBreakers(snap) {
  fillTable(
    "breakers",
    snap.status.breakers.map((b) =>
      el(
        "tr",
        { "data-key": b.key, "data-route": b.route },
        el("td", {}, b.route),
        el("td", {}, b.filter),
        el("td", {}, el("code", {}, b.key)),
        el("td", { class: "state" }, el("span", { class: "pill", "data-state": b.state || "unknown" }, b.state || "?")),
        el("td", {}, b.failure_rate === null || b.failure_rate === undefined ? "–" : `${Math.round(b.failure_rate)} %`),
      ),
    ),
  );
}

function drawLimiters(snap) {
  const minuteAgo = back(MINUTE);
  fillTable(
    "limiters",
    snap.status.limiters.map((l) => {
      const r = routeIn(snap, l.route);
      const m = routeIn(minuteAgo, l.route);
      const rejected = r ? codesSince(r, m === r ? undefined : m)["429"] || 0 : 0;
      return el(
        "tr",
        { "data-key": l.key, "data-route": l.route },
        el("td", {}, l.route),
        el("td", {}, l.filter),
        el("td", {}, el("code", {}, l.key)),
        el("td", { "data-k": "tokens" }, Math.floor(l.tokens)),
        el("td", { "data-k": "rejected" }, rejected),
      );
    }),
  );
}

let deadJobs = null;

function drawJobs(snap) {
  const jobs = snap.status.jobs;
  const section = document.getElementById("jobs-section");
  section.hidden = !jobs;
  if (!jobs) return;
  const events = (e) => sumWhere(snap, "weir_jobs_total", (s) => s.event === e);
  const dl = document.getElementById("jobs");
  const figs = jobs.error
    ? [fig("error", "store error", jobs.error)]
    : [
        fig("store", "store", jobs.store),
        fig("pending", "queued", jobs.pending),
        fig("oldest", "oldest queued", fmtAge(jobs.oldest_pending_seconds)),
        fig("accepting", "accepting", jobs.accepting ? "yes" : "no"),
        fig("dead", "dead now", deadJobs === null ? "–" : deadJobs),
        fig("succeeded", "succeeded", events("succeeded")),
        fig("failed", "failed", events("failed")),
      ];
  dl.replaceChildren(...figs);
}

async function refreshDeadJobs() {
  const last = back(0);
  if (!last || !last.status.jobs) return;
  const { status, body } = await getJson("/jobs/dead");
  deadJobs = status === 200 ? body.jobs.length : "?";
}

function drawConfig(snap) {
  const c = snap.status.config;
  document.getElementById("config-hash").textContent = c.hash;
  const reloads = series(snap, "weir_reloads_total")
    .map((s) => `${s.result} ${s.value}`)
    .join(" · ");
  document
    .getElementById("config")
    .replaceChildren(
      fig("path", "file", c.path),
      fig("hash", "hash", c.hash),
      fig("loaded", "loaded at", c.loaded_at),
      fig("reloads", "reloads", reloads || "–"),
      fig("reload-error", "last reload error", c.last_reload_error ? `${c.last_reload_error.at}: ${c.last_reload_error.message}` : "none"),
      fig("restart", "needs a restart", c.needs_restart && c.needs_restart.length ? c.needs_restart.join(", ") : "nothing"),
    );
  const st = snap.status.state;
  const pill = document.getElementById("state-backend");
  pill.textContent = `${st.backend} ${st.healthy ? "up" : "down"}`;
  pill.dataset.state = st.healthy ? "up" : "down";
}

function drawBanners(snap) {
  const list = [];
  for (const b of snap.status.breakers) {
    if (b.state === "open") list.push(["", `Breaker open: ${b.key} (route ${b.route})`]);
  }
  const c = snap.status.config;
  if (c.last_reload_error) list.push(["", `The last reload failed: ${c.last_reload_error.message}`]);
  if (c.needs_restart && c.needs_restart.length) list.push(["warn", `Restart weir to apply: ${c.needs_restart.join(", ")}`]);
  if (!snap.status.state.healthy) {
    list.push(["", `State backend ${snap.status.state.backend} is down: ${snap.status.state.last_error || ""}`]);
  }
  document
    .getElementById("banners")
    .replaceChildren(...list.map(([kind, text]) => el("div", { class: `banner ${kind}`, "data-k": "banner" }, text)));
}

// ---- recent requests ------------------------------------------------------------------

function requestQuery() {
  const q = new URLSearchParams({ limit: "100" });
  const route = document.getElementById("filter-route").value;
  const status = document.getElementById("filter-status").value;
  if (route) q.set("route", route);
  if (status) q.set("status", status);
  if (document.getElementById("filter-errors").checked) q.set("errors", "true");
  return q.toString();
}

async function refreshRequests() {
  const { status, body } = await getJson(`/requests?${requestQuery()}`);
  if (status !== 200) return;
  const rows = body.requests.map((r) => {
    const tr = el(
      "tr",
      { "data-id": r.id, class: r.id === page.selected ? "selected" : null },
      el("td", {}, r.at.slice(11, 23)),
      el("td", {}, r.route || "(none)"),
      el("td", {}, `${r.method} ${r.path}`),
      el("td", { class: `status-${Math.floor(r.status / 100)}`, "data-k": "status" }, r.error ? `${r.status} ${r.error}` : r.status),
      el("td", {}, r.duration_ms.toFixed(1)),
      el("td", {}, r.attempts),
    );
    tr.addEventListener("click", () => openDetail(r.id));
    return tr;
  });
  document.querySelector("#requests tbody").replaceChildren(...rows);
}

function headerList(headers) {
  return el("pre", {}, headers.map(([n, v]) => `${n}: ${v}`).join("\n") || "(none)");
}

function outcome(prefix, status, error, body) {
  return el(
    "dl",
    { class: "figures" },
    fig(`${prefix}status`, "status", status),
    fig(`${prefix}error`, "error", error || "none"),
    el("div", { style: "grid-column: 1 / -1" }, el("dt", {}, "body"), el("dd", {}, el("pre", { "data-k": `${prefix}body` }, body ?? "(not kept)"))),
  );
}

async function openDetail(id) {
  const { status, body: r } = await getJson(`/requests/${encodeURIComponent(id)}`);
  const detail = document.getElementById("detail");
  if (status !== 200) {
    document.getElementById("detail-title").textContent = `${id}: ${r.message || status}`;
    document.getElementById("detail-body").replaceChildren();
    detail.hidden = false;
    return;
  }
  page.selected = id;
  page.selectedRecord = r;
  for (const tr of document.querySelectorAll("#requests tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.id === id);
  }
  document.getElementById("detail-title").textContent = `${r.method} ${r.path} → ${r.status}`;
  document.getElementById("replay-compare").hidden = true;
  const filters = el(
    "table",
    {},
    el("thead", {}, el("tr", {}, el("th", {}, "filter"), el("th", {}, "phase"), el("th", {}, "try"), el("th", {}, "µs"))),
    el(
      "tbody",
      {},
      ...r.timings.filters.map((f) => el("tr", {}, el("td", {}, f.filter), el("td", {}, f.phase), el("td", {}, f.attempt), el("td", {}, f.us.toFixed(0)))),
    ),
  );
  const parts = [
    el(
      "dl",
      { class: "figures" },
      fig("id", "id", r.id, true),
      fig("route", "route", r.route || "(none)"),
      fig("attempts", "tries", r.attempts),
      fig("total", "total", `${r.timings.total_ms.toFixed(1)} ms`),
      fig("upstream", "upstream head", r.timings.upstream_ms.map((m) => `${m.toFixed(1)} ms`).join(", ") || "–"),
      fig("connect", "connect", r.timings.connect_ms.map((m) => `${m.toFixed(1)} ms`).join(", ") || "reused"),
      fig("trace", "trace id", r.trace_id, true),
      fig("url", "sent to", r.upstream_url || "–", true),
    ),
    outcome("", r.status, r.error, r.response.body ? r.response.body.kept : null),
    r.filter_failures.length ? el("p", { class: "errors" }, "filter failures: " + r.filter_failures.map((f) => `${f.filter}: ${f.error}`).join("; ")) : null,
    el("h4", {}, "filter calls"),
    r.timings.filters.length ? filters : el("p", { class: "empty" }, "none"),
    el("h4", {}, "request headers"),
    headerList(r.request.headers),
    el("h4", {}, "response headers"),
    headerList(r.response.headers),
  ];
  document.getElementById("detail-body").replaceChildren(...parts.filter((p) => p !== null));
  detail.hidden = false;
}

async function replay() {
  const old = page.selectedRecord;
  if (!old) return;
  const button = document.getElementById("replay");
  button.disabled = true;
  try {
    const { status, body } = await getJson(`/requests/${encodeURIComponent(old.id)}/replay`, { method: "POST" });
    const compare = document.getElementById("replay-compare");
    document.getElementById("replay-old").replaceChildren(outcome("old-", old.status, old.error, old.response.body ? old.response.body.kept : null));
    document
      .getElementById("replay-new")
      .replaceChildren(
        status === 200
          ? outcome("new-", body.status, null, body.body)
          : outcome("new-", `replay refused (${status})`, body.error, body.message),
      );
    compare.hidden = false;
    compare.dataset.replayId = body.id || "";
    refreshRequests();
  } finally {
    button.disabled = false;
  }
}

// ---- the stream -------------------------------------------------------------------------

function onSnapshot(snap) {
  page.snaps.push(snap);
  if (page.snaps.length > KEEP) page.snaps.shift();
  drawRoutes(snap);
  drawBreakers(snap);
  drawLimiters(snap);
  drawJobs(snap);
  drawConfig(snap);
  drawBanners(snap);
}

function connect() {
  const live = document.getElementById("live");
  const events = new EventSource("/events");
  events.addEventListener("snapshot", (e) => {
    live.textContent = "live";
    live.dataset.state = "live";
    onSnapshot(JSON.parse(e.data));
  });
  events.addEventListener("error", () => {
    live.textContent = "reconnecting…";
    live.dataset.state = "lost";
  });
}

function every(ms, f) {
  f();
  setInterval(() => {
    if (!document.hidden) f();
  }, ms);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("replay").addEventListener("click", replay);
  document.getElementById("close-detail").addEventListener("click", () => {
    document.getElementById("detail").hidden = true;
    page.selected = null;
    page.selectedRecord = null;
  });
  for (const id of ["filter-route", "filter-status", "filter-errors"]) {
    document.getElementById(id).addEventListener("change", refreshRequests);
  }
  document.getElementById("refresh-requests").addEventListener("click", refreshRequests);
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", redrawAllCharts);
  connect();
  every(REQUESTS_EVERY_MS, refreshRequests);
  every(5000, refreshDeadJobs);
});
