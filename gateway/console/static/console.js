// The Kamiwaza gateway console: signs in with an admin credential (kept in this
// tab's sessionStorage, sent as a bearer credential to /console/api), then
// draws what the API returns. Every value goes into the page as text, never
// as HTML.
"use strict";

const KEY_SLOT = "kamiwaza-console-key";
const REFRESH_MS = 10000;
const state = { key: null, tab: "overview", charts: {}, timer: null, selected: null };

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("data")) node.setAttribute(name.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase()), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// -- formatting ---------------------------------------------------------------

const fmtInt = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"));
const fmtMs = (n) => (n === null || n === undefined ? "-" : Number(n).toFixed(1));
const fmtPct = (x) => (x === null || x === undefined ? "-" : (100 * x).toFixed(1) + "%");
const fmtUsd = (x) => Number(x || 0).toFixed(6);
const fmtTime = (t) => (t ? String(t).replace("T", " ").replace("Z", "") : "-");

function statusCell(status) {
  return el("td", { class: "n " + (status >= 400 ? "status-bad" : "status-ok") }, status);
}

function fillTable(id, rows, cells, rowAttrs) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  if (!rows.length) {
    const width = $(id).querySelectorAll("thead th").length;
    body.append(el("tr", {}, el("td", { colspan: width, class: "muted" }, "none in this window")));
    return;
  }
  for (const row of rows) {
    const tr = el("tr", rowAttrs ? rowAttrs(row) : {});
    for (const cell of cells(row)) tr.append(cell instanceof Node ? cell : el("td", {}, cell));
    body.append(tr);
  }
}

const num = (value) => el("td", { class: "n" }, value);

// -- the API ------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || "HTTP " + status);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

async function api(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value) url.searchParams.set(name, value);
  }
  const response = await fetch(url, { headers: { Authorization: "Bearer " + state.key }, cache: "no-store" });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function query() {
  const form = new FormData($("controls"));
  const params = {};
  for (const [name, value] of form.entries()) params[name] = String(value).trim();
  return params;
}

// -- sign in ------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  try {
    const who = await api("/console/api/whoami");
    sessionStorage.setItem(KEY_SLOT, key);
    $("who-name").textContent = `${who.tenant}${who.user ? " / " + who.user : ""} (${who.roles.join(", ")})`;
    $("who").hidden = false;
    $("signin").hidden = true;
    $("app").hidden = false;
    $("signin-error").hidden = true;
    await refresh();
    schedule();
  } catch (err) {
    state.key = null;
    sessionStorage.removeItem(KEY_SLOT);
    const error = $("signin-error");
    error.textContent = err.status === 401 ? "That key is not valid (unknown, revoked or malformed): " + err.message
      : err.status === 403 ? "Refused: " + err.message
      : "Cannot reach the console: " + err.message;
    error.hidden = false;
  }
}

function signOut() {
  sessionStorage.removeItem(KEY_SLOT);
  window.location.reload();
}

function schedule() {
  clearInterval(state.timer);
  if ($("auto").checked) state.timer = setInterval(() => refresh().catch(() => {}), REFRESH_MS);
}

// -- loading ------------------------------------------------------------------

async function refresh() {
  $("error").hidden = true;
  try {
    if (state.tab === "overview") await loadOverview();
    else if (state.tab === "requests") await loadRequests();
    else await loadPolicy();
  } catch (err) {
    $("error").textContent = err.message;
    $("error").hidden = false;
    if (err.status === 401 || err.status === 403) clearInterval(state.timer);
  }
}

function provenance(doc, what) {
  const where = doc.sources.join(" + ");
  const partial = doc.complete ? "" : " (the HTTP collector cannot be read back: spooled records only)";
  const bad = doc.bad_lines ? `, ${doc.bad_lines} unreadable line(s) skipped` : "";
  $("status").textContent = `${what}, from ${where}${partial}${bad}; updated ${new Date().toLocaleTimeString()}`;
}

async function loadOverview() {
  const doc = await api("/console/api/overview", query());
  const s = doc.summary;
  provenance(doc, `${fmtInt(s.requests)} requests from ${fmtTime(s.window.since)} to ${fmtTime(s.window.until)} UTC`);
  $("tab-overview").querySelector('[data-testid="kpi-requests"]').textContent = fmtInt(s.requests);
  document.querySelector('[data-testid="kpi-error-rate"]').textContent = fmtPct(s.error_rate);
  document.querySelector('[data-testid="kpi-errors"]').textContent = `${fmtInt(s.errors)} error${s.errors === 1 ? "" : "s"} (status >= 400)`;
  const cost = s.tenants.reduce((sum, t) => sum + t.cost_usd, 0);
  const tokensIn = s.tenants.reduce((sum, t) => sum + t.input_tokens, 0);
  const tokensOut = s.tenants.reduce((sum, t) => sum + t.output_tokens, 0);
  document.querySelector('[data-testid="kpi-cost"]').textContent = fmtUsd(cost);
  document.querySelector('[data-testid="kpi-tokens"]').textContent = `${fmtInt(tokensIn)} / ${fmtInt(tokensOut)}`;
  document.querySelector('[data-testid="kpi-revision"]').textContent = doc.policy_revision || "-";

  const states = Object.fromEntries(doc.endpoints.map((e) => [e.endpoint, e]));
  const names = [...new Set([...doc.endpoints.map((e) => e.endpoint), ...s.endpoints.map((e) => e.endpoint)])].sort();
  const byName = Object.fromEntries(s.endpoints.map((e) => [e.endpoint, e]));
  fillTable("endpoints", names, (name) => {
    const row = byName[name] || { requests: 0, errors: 0, error_rate: 0, failovers: 0 };
    return [name, stateCell(states[name], name), num(fmtInt(row.requests)), num(fmtInt(row.errors)), num(fmtPct(row.error_rate)),
      num(fmtMs(row.p50_ms)), num(fmtMs(row.p95_ms)), num(fmtMs(row.p99_ms)),
      num(fmtMs(row.ttft_p50_ms)), num(fmtMs(row.ttft_p95_ms)), num(fmtMs(row.ttft_p99_ms)), num(fmtInt(row.failovers))];
  }, (name) => ({ "data-endpoint": name }));
  fillTable("tenants", s.tenants, (t) => [t.tenant, num(fmtInt(t.requests)), num(fmtInt(t.input_tokens)),
    num(fmtInt(t.output_tokens)), num(fmtUsd(t.cost_usd))], (t) => ({ "data-tenant": t.tenant }));
  fillTable("rules", s.rules, (r) => [r.rule, num(fmtInt(r.requests)), num(fmtPct(r.share)), num(fmtInt(r.input_tokens)),
    num(fmtInt(r.output_tokens)), num(fmtUsd(r.cost_usd))], (r) => ({ "data-rule": r.rule }));
  fillTable("models", s.models, (m) => [m.endpoint, m.model, num(fmtInt(m.requests)), num(fmtInt(m.input_tokens)),
    num(fmtInt(m.output_tokens)), num(fmtUsd(m.cost_usd))]);
  fillTable("failovers", s.failovers, (f) => [f.endpoint, f.reason, num(fmtInt(f.count))]);
  const a = doc.audit;
  $("audit").textContent = `sink ${a.sink}, stream ${a.stream}: ${fmtInt(a.written)} records spooled since start, `
    + `${fmtInt(a.shipped)} entries shipped, ${fmtInt(a.depth)} waiting (oldest ${a.lag_s}s), `
    + `${fmtInt(a.ship_failures)} failed uploads, ${fmtInt(a.dropped)} dropped`;
  drawCharts(doc, s);
}

function stateCell(endpointState, name) {
  if (!endpointState) {
    return el("td", { class: "muted" }, name === "none" ? "refused before routing" : "not in the registry");
  }
  if (endpointState.unavailable) {
    return el("td", { class: "state-unavailable", title: endpointState.unavailable }, "unavailable");
  }
  const label = endpointState.breaker === "half_open" ? "half-open" : endpointState.breaker;
  const wait = endpointState.retry_after_s ? ` (${endpointState.retry_after_s}s)` : "";
  return el("td", { class: "state-" + endpointState.breaker, "data-breaker": endpointState.breaker }, `circuit ${label}${wait}`);
}

// -- charts ---------------------------------------------------------------------

const COLORS = ["#2f5bd3", "#e0883c", "#1f8a4c", "#c0352b", "#7b5cc4", "#2a9fb0", "#b7791f", "#667085"];

function chart(id, config) {
  if (!window.Chart) return;
  if (state.charts[id]) state.charts[id].destroy();
  config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
  state.charts[id] = new window.Chart($(id), config);
}

function bars(labels, datasets, extra) {
  return {
    type: "bar",
    data: { labels, datasets: datasets.map((d, i) => Object.assign({ backgroundColor: COLORS[i % COLORS.length] }, d)) },
    options: Object.assign({ plugins: { legend: { display: datasets.length > 1 } } }, extra || {}),
  };
}

function drawCharts(doc, s) {
  $("charts-missing").hidden = Boolean(window.Chart);
  if (!window.Chart) return;
  const points = doc.series.points;
  chart("chart-series", bars(points.map((p) => fmtTime(p.t).slice(5, 16)), [
    { label: "ok", data: points.map((p) => p.requests - p.errors), backgroundColor: "#2f5bd3" },
    { label: "errors", data: points.map((p) => p.errors), backgroundColor: "#c0352b" },
  ], { scales: { x: { stacked: true, ticks: { maxTicksLimit: 16 } },
    y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } } }));
  const served = s.endpoints.filter((e) => e.requests > 0);
  chart("chart-latency", bars(served.map((e) => e.endpoint), [
    { label: "p50", data: served.map((e) => e.p50_ms) },
    { label: "p95", data: served.map((e) => e.p95_ms) },
    { label: "p99", data: served.map((e) => e.p99_ms) },
  ]));
  const streamed = s.endpoints.filter((e) => e.ttft_p50_ms !== null);
  chart("chart-ttft", bars(streamed.map((e) => e.endpoint), [
    { label: "p50", data: streamed.map((e) => e.ttft_p50_ms) },
    { label: "p95", data: streamed.map((e) => e.ttft_p95_ms) },
    { label: "p99", data: streamed.map((e) => e.ttft_p99_ms) },
  ]));
  chart("chart-cost", bars(s.tenants.map((t) => t.tenant), [{ label: "USD", data: s.tenants.map((t) => t.cost_usd) }],
    { indexAxis: "y" }));
  chart("chart-rules", {
    type: "doughnut",
    data: { labels: s.rules.map((r) => r.rule), datasets: [{ data: s.rules.map((r) => r.requests), backgroundColor: COLORS }] },
    options: { plugins: { legend: { position: "right" } } },
  });
  chart("chart-models", bars(s.models.map((m) => `${m.endpoint} · ${m.model}`), [
    { label: "tokens in", data: s.models.map((m) => m.input_tokens) },
    { label: "tokens out", data: s.models.map((m) => m.output_tokens) },
  ], { indexAxis: "y", scales: { x: { stacked: true }, y: { stacked: true } } }));
}

// -- requests -------------------------------------------------------------------

async function loadRequests() {
  const params = Object.assign(query(), { q: $("search").value.trim(), limit: "200" });
  const doc = await api("/console/api/requests", params);
  provenance(doc, `${fmtInt(doc.total)} requests from ${fmtTime(doc.window.since)} to ${fmtTime(doc.window.until)} UTC`);
  $("requests-count").textContent = doc.total > doc.requests.length
    ? `the newest ${doc.requests.length} of ${doc.total}` : `${doc.total} request(s)`;
  fillTable("requests", doc.requests, (r) => [
    el("td", { class: "mono" }, fmtTime(r.timestamp)), el("td", { class: "mono" }, r.request_id), r.tenant, r.data_class,
    r.rule, r.endpoint, statusCell(r.status), num(fmtMs(r.latency_ms)),
    num(`${fmtInt(r.input_tokens)} / ${fmtInt(r.output_tokens)}`), num(fmtUsd(r.cost_usd)),
  ], (r) => ({ "data-request-id": r.request_id, class: r.request_id === state.selected ? "selected" : null }));
}

async function showRequest(requestId) {
  state.selected = requestId;
  for (const row of $("requests").querySelectorAll("tbody tr")) {
    row.classList.toggle("selected", row.dataset.requestId === requestId);
  }
  const record = await api("/console/api/requests/" + encodeURIComponent(requestId), { since: "7d" });
  const detail = $("detail");
  const rule = record.rule || {};
  const latency = record.latency_ms || {};
  const dl = (pairs) => el("dl", {}, ...pairs.flatMap(([k, v, testid]) => [el("dt", {}, k), el("dd", { "data-testid": testid }, v ?? "-")]));
  const conditions = record.conditions || [];
  const attempts = record.attempts || [];
  detail.replaceChildren(
    el("h2", { "data-testid": "detail-request-id", class: "mono" }, record.request_id),
    dl([
      ["time", fmtTime(record.timestamp)], ["tenant", record.tenant], ["user", record.user],
      ["data class", record.data_class, "detail-data-class"], ["operation", record.operation],
      ["status", record.status, "detail-status"], ["endpoint", record.endpoint, "detail-endpoint"],
      ["model", record.model], ["error", record.error ? `${record.error.code}: ${record.error.message}` : null, "detail-error"],
    ]),
    el("h3", {}, "Decision"),
    dl([
      ["rule", rule.name ? `${rule.name} (${rule.source})` : (record.overridden_by ? "override" : null), "detail-rule"],
      ["override", record.overridden_by], ["route to", record.route_to, "detail-route-to"],
      ["fallback", (record.fallback || []).join(", ") || null, "detail-fallback"],
      ["decision id", record.decision_id], ["policy revision", record.policy_revision],
    ]),
    el("h3", {}, "Conditions"),
    conditions.length ? table(["field", "op", "expected", "actual", "result"], conditions.map((c) => [
      c.field, c.op, JSON.stringify(c.expected), JSON.stringify(c.actual ?? null),
      el("td", { class: c.result ? "pass" : "fail" }, c.result ? "holds" : "fails"),
    ]), "detail-conditions") : el("p", { class: "muted" }, "no conditions (a default rule, an override, or no decision)"),
    el("h3", {}, "Refusals (guards and overrides)"),
    (record.deny || []).length ? el("ul", { "data-testid": "detail-deny" }, ...record.deny.map((d) => el("li", {}, d)))
      : el("p", { class: "muted", "data-testid": "detail-deny" }, "none"),
    el("h3", {}, "Attempts"),
    attempts.length ? table(["#", "endpoint", "status", "error", "latency ms"], attempts.map((a, i) => [
      i + 1, a.endpoint, a.status ?? "-", a.error ?? "ok", num(fmtMs(a.latency_ms)),
    ]), "detail-attempts") : el("p", { class: "muted", "data-testid": "detail-attempts" }, "nothing was sent upstream"),
    el("h3", {}, "Latency, tokens, cost"),
    dl([
      ["total ms", fmtMs(latency.total)], ["policy ms", fmtMs(latency.policy)], ["upstream ms", fmtMs(latency.upstream)],
      ["first token ms", fmtMs(latency.ttft)],
      ["tokens in / out", `${fmtInt((record.tokens || {}).input)} / ${fmtInt((record.tokens || {}).output)}`, "detail-tokens"],
      ["cost (USD)", fmtUsd(record.cost_usd), "detail-cost"],
    ]),
  );
  detail.hidden = false;
  if (detail.getBoundingClientRect().top > window.innerHeight) detail.scrollIntoView({ block: "start" });
}

function table(headers, rows, testid) {
  return el("table", { "data-testid": testid },
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => (c instanceof Node ? c : el("td", {}, c)))))));
}

// -- policy -----------------------------------------------------------------------

async function loadPolicy() {
  const doc = await api("/console/api/policy");
  $("status").textContent = `policy revision ${doc.revision || "-"}; updated ${new Date().toLocaleTimeString()}`;
  $("policy-revision").textContent = doc.revision || "";
  $("policy-path").textContent = doc.policy_path;
  $("policy-yaml").textContent = doc.policy_yaml || "(the policy file cannot be read)";
  $("registry-path").textContent = doc.registry_path;
  const states = Object.fromEntries(doc.states.map((e) => [e.endpoint, e]));
  fillTable("registry", doc.endpoints, (e) => [
    e.name, e.type, e.in_vpc ? "yes" : "no", stateCell(states[e.name]), el("td", { class: "mono" }, e.base_url || "-"),
    e.model || "-", e.operations.join(", "),
    el("td", { class: "mono pre" }, Object.entries(e.auth).map(([k, v]) => `${k}: ${v}`).join("\n") || "none"),
    `${e.pricing.input_per_1k}, ${e.pricing.output_per_1k}`,
    `connect ${e.timeouts.connect_ms}, first token ${e.timeouts.first_token_ms}, total ${e.timeouts.total_ms}`,
  ], (e) => ({ "data-endpoint": e.name }));
}

// -- wiring -----------------------------------------------------------------------

function selectTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll(".tabs button")) button.classList.toggle("active", button.dataset.tab === tab);
  for (const section of document.querySelectorAll(".tab")) section.hidden = section.id !== "tab-" + tab;
  $("controls").hidden = tab === "policy";  // the policy has no window
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("key").value.trim());
  });
  $("signout").addEventListener("click", signOut);
  $("controls").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  $("window").addEventListener("change", () => refresh());
  $("auto").addEventListener("change", schedule);
  $("search-form").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  for (const button of document.querySelectorAll(".tabs button")) {
    button.addEventListener("click", () => selectTab(button.dataset.tab));
  }
  $("requests").addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-request-id]");
    if (row) showRequest(row.dataset.requestId).catch((err) => { $("error").textContent = err.message; $("error").hidden = false; });
  });
  const saved = sessionStorage.getItem(KEY_SLOT);
  if (saved) signIn(saved);
});
