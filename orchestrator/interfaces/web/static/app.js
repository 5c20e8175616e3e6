// The control room's page: cards and panels drawn from the JSON API, kept live by server-sent events.
// No framework, no inline script (the Content-Security-Policy forbids it), nothing fetched from elsewhere.
"use strict";

const state = { csrf: "", role: "viewer", cards: {}, selected: null, graph: null, pending: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (response.status === 401) { window.location = "/"; throw new Error("logged out"); }
  const body = response.headers.get("content-type", "").includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error((body && body.error) || response.statusText);
  return body;
}

function post(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf },
                     body: JSON.stringify(body || {}) });
}

// -- the grid ------------------------------------------------------------------------------------------

function uptime(seconds, up) {
  if (!up) return "-";
  const s = Math.floor(seconds), d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d}d${h}h` : h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(s % 60).padStart(2, "0")}s` : `${s % 60}s`;
}

function bytes(value) {
  if (value === null || value === undefined) return "-";
  return value >= 1 << 30 ? (value / (1 << 30)).toFixed(1) + " GiB" : (value / (1 << 20)).toFixed(1) + " MiB";
}

function card(c) {
  const up = ["RUNNING", "STARTING", "BACKOFF"].includes(c.state);
  const bar = el("div", { class: "bar" }, el("div", { class: "fill" }));
  const score = c.score === null ? 0 : c.score;
  bar.firstChild.style.width = score + "%";
  bar.title = (c.penalties || []).map((p) => `-${p.points} ${p.cause}: ${p.detail}`).join("\n") || "no penalty";
  const actions = el("div", { class: "actions operator-only" },
    ...["start", "stop", "restart"].map((a) => el("button", { "data-action": a, "data-agent": c.agent, class: "small" }, a)));
  const alerts = (c.alerts || []).map((a) => el("li", { class: "alert " + String(a.level).toLowerCase() }, a.summary));
  return el("article", { class: "card " + c.color, id: "card-" + c.agent, "data-color": c.color, "data-agent": c.agent },
    el("h2", {}, el("button", { class: "link", "data-open": c.agent }, c.agent), el("span", { class: "state" }, c.state)),
    el("dl", {},
      el("dt", {}, "pid"), el("dd", { class: "pid", "data-pid": c.pid || "" }, c.pid || "-"),
      el("dt", {}, "uptime"), el("dd", {}, uptime(c.uptime_seconds, up)),
      el("dt", {}, "cpu"), el("dd", {}, c.cpu_percent === null ? "-" : c.cpu_percent.toFixed(1) + " %"),
      el("dt", {}, "memory"), el("dd", {}, bytes(c.memory_rss_bytes)),
      el("dt", {}, "restarts"), el("dd", {}, c.restarts),
      el("dt", {}, "health"), el("dd", { class: "health" }, c.health)),
    el("div", { class: "score" }, "score ", c.score === null ? "-" : c.score, bar),
    el("ul", { class: "alerts" }, ...alerts),
    c.reason && !up ? el("p", { class: "reason" }, c.reason) : "",
    actions);
}

function drawAgents(snapshot) {
  const grid = $("grid");
  grid.replaceChildren(...snapshot.agents.map(card));
  state.cards = Object.fromEntries(snapshot.agents.map((c) => [c.agent, c]));
  $("version").textContent = snapshot.version === null ? "nothing applied" : `live version ${snapshot.version}`;
  const latch = $("latch");
  latch.hidden = !snapshot.latch;
  latch.textContent = snapshot.latch ? snapshot.latch.text : "";
  $("clear-latch").hidden = !snapshot.latch;
  const error = $("board-error");
  error.hidden = !snapshot.error;
  error.textContent = snapshot.error || "";
  drawGraph();
  if (state.selected) drawDetail();
}

// -- the graph by waves ----------------------------------------------------------------------------------

function drawGraph() {
  if (!state.graph) return;
  const waves = state.graph.waves.map((wave, i) => el("div", { class: "wave" }, el("h3", {}, `wave ${i + 1}`),
    ...wave.map((name) => {
      const c = state.cards[name];
      const deps = state.graph.depends_on[name] || [];
      return el("div", { class: "node " + (c ? c.color : "red"), "data-node": name }, name,
        deps.length ? el("small", {}, "needs " + deps.join(", ")) : "");
    })));
  $("graph").replaceChildren(...waves);
}

// -- one agent: charts, penalties, alerts, log -------------------------------------------------------------

function line(svg, points, field, scale) {
  const values = points.map((p) => p[field]).filter((v) => v !== null);
  const top = Math.max(scale, ...values) * 1.25 || 1;
  const span = points.length > 1 ? points[points.length - 1].at - points[0].at : 1;
  const coords = points.filter((p) => p[field] !== null).map((p) =>
    `${((p.at - points[0].at) / (span || 1) * 300).toFixed(1)},${(78 - p[field] / top * 74).toFixed(1)}`);
  const path = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  path.setAttribute("points", coords.join(" "));
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "2"); label.setAttribute("y", "10");
  label.textContent = field === "cpu_percent" ? `max ${top.toFixed(1)} %` : `max ${bytes(top)}`;
  svg.replaceChildren(path, label);
}

async function drawDetail() {
  const name = state.selected;
  const [agent, log] = await Promise.all([api(`/api/agents/${encodeURIComponent(name)}`),
    api(`/api/agents/${encodeURIComponent(name)}/logs?lines=60&stream=${$("log-stream").value}`)]);
  $("detail").hidden = false;
  $("detail-title").textContent = `${name}: ${agent.state}`;
  line($("chart-cpu"), agent.chart, "cpu_percent", 5);
  line($("chart-mem"), agent.chart, "memory_rss_bytes", 1 << 20);
  $("detail-penalties").replaceChildren(...(agent.penalties.length ? agent.penalties.map((p) =>
    el("li", {}, `-${p.points} ${p.cause}: ${p.detail}`)) : [el("li", {}, "none")]));
  $("detail-alerts").replaceChildren(...(agent.alerts.length ? agent.alerts.map((a) => el("li", {}, a.summary)) : [el("li", {}, "none")]));
  $("detail-log").textContent = log.lines.join("\n");
}

// -- actions: confirmation from the server, then a POST; progress and results come on the stream -----------------

function ask(confirmation, extra) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-text").textContent = confirmation.text;
    $("confirm-plan").replaceChildren(extra || "");
    $("confirm-word-label").hidden = !confirmation.word;
    $("confirm-word-shown").textContent = confirmation.word || "";
    $("confirm-word").value = "";
    dialog.onclose = () => resolve(dialog.returnValue === "ok" ? { word: $("confirm-word").value } : null);
    dialog.showModal();
  });
}

async function act(action, agent) {
  try {
    const query = new URLSearchParams({ action, agent: agent || "" });
    const confirmation = await api(`/api/confirm?${query}`);
    const answer = await ask(confirmation);
    if (!answer) return;
    const body = agent ? { agent } : {};
    if (confirmation.word) body.word = answer.word;
    await post(`/api/actions/${action}`, body);
  } catch (error) {
    progress({ type: "error", text: `${action}${agent ? " " + agent : ""}: ${error.message}` });
  }
}

async function rollback(version) {
  try {
    const plan = await api(`/api/rollback?version=${encodeURIComponent(version)}`);
    const shown = el("pre", { class: "diff" }, [...plan.plan, "", ...plan.files.map((f) => f.diff.join("\n"))].join("\n"));
    const answer = await ask({ text: `Roll back from version ${plan.live} to version ${plan.version}? The plan:`, word: null }, shown);
    if (answer) await post("/api/actions/rollback", { version: plan.version, plan: plan.digest });
  } catch (error) {
    progress({ type: "error", text: `rollback to ${version}: ${error.message}` });
  }
}

function progress(step) {
  const list = $("progress");
  list.prepend(el("li", { class: "step " + (step.type || "") + " " + (step.result || step.step || "") }, step.text));
  while (list.children.length > 200) list.lastChild.remove();
}

// -- configuration and audit --------------------------------------------------------------------------------

async function drawHistory() {
  const rows = await api("/api/history");
  $("history").tBodies[0].replaceChildren(...rows.slice().reverse().map((r) => el("tr", { class: r.live ? "live" : "" },
    el("td", {}, r.number + (r.live ? " (live)" : "")), el("td", {}, r.semver || "-"), el("td", {}, r.time),
    el("td", {}, r.user || "-"), el("td", {}, r.command || "-"), el("td", {}, r.status), el("td", {}, r.message || ""),
    el("td", {}, el("button", { class: "small plain", "data-diff": r.number }, "diff"),
      r.live ? "" : el("button", { class: "small operator-only", "data-rollback": r.number }, "roll back")))));
}

async function showDiff(number) {
  const diff = await api(`/api/diff?b=${number}`).catch((error) => ({ error: error.message }));
  const box = $("diff");
  box.hidden = false;
  box.textContent = diff.error ? diff.error : [`${diff.from} -> ${diff.to}`,
    ...diff.agents.map((a) => `${a.change} ${a.agent}: ${a.effect}` + a.fields.map((f) => `\n    ${f.field}: ${f.old} -> ${f.new}`).join("")),
    "", ...diff.files.map((f) => f.diff.join("\n"))].join("\n");
}

function when(at) { return new Date(at * 1000).toISOString().replace("T", " ").slice(0, 19); }

function auditRow(e) {
  return el("tr", { class: e.result }, el("td", {}, when(e.at)), el("td", {}, `${e.user} (${e.role})`), el("td", {}, e.action),
    el("td", {}, e.target), el("td", {}, e.result), el("td", {}, e.detail));
}

async function drawAudit() {
  $("audit").tBodies[0].replaceChildren(...(await api("/api/audit")).map(auditRow));
}

// -- the live stream ------------------------------------------------------------------------------------------

let lastEventId = "";

function connect() {
  // the browser reconnects by itself (sending Last-Event-ID) while the server answers; when the stream is closed for
  // good (the server restarted, or refused it), the page opens a new one, saying where it was
  const source = new EventSource("/api/events" + (lastEventId ? "?last=" + encodeURIComponent(lastEventId) : ""));
  const connection = $("connection");
  const seen = (e) => { if (e.lastEventId) lastEventId = e.lastEventId; };
  source.onopen = () => { connection.textContent = "live"; connection.className = "connection up"; };
  source.onerror = () => {
    connection.textContent = "disconnected: reconnecting…";
    connection.className = "connection down";
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(() => api("/api/session").then(connect, () => setTimeout(connect, 2000)), 1000);
    }
  };
  source.addEventListener("agents", (e) => drawAgents(JSON.parse(e.data)));
  source.addEventListener("progress", (e) => { seen(e); progress(JSON.parse(e.data)); });
  source.addEventListener("result", (e) => {
    seen(e);
    const r = JSON.parse(e.data);
    progress({ type: "result", result: r.result, text: `${r.action} ${r.target}: ${r.result}${r.detail ? " (" + r.detail + ")" : ""}` });
    if (r.action === "rollback") drawHistory();
  });
  source.addEventListener("audit", (e) => { seen(e); $("audit").tBodies[0].prepend(auditRow(JSON.parse(e.data))); });
}

document.addEventListener("DOMContentLoaded", async () => {
  const initial = JSON.parse($("initial").textContent);   // the picture the page came with
  const session = initial.session;
  state.csrf = session.csrf;
  state.role = session.role;
  document.body.classList.toggle("viewer", session.role !== "operator");
  state.graph = initial.graph;
  drawAgents(initial.agents);
  document.body.dataset.drawnAt = performance.now().toFixed(1);   // for the benchmark: navigation to a drawn grid
  document.addEventListener("click", (event) => {
    const target = event.target.closest("button, a");
    if (!target) return;
    if (target.dataset.action) act(target.dataset.action, target.dataset.agent);
    else if (target.dataset.bulk) act(target.dataset.bulk, "");
    else if (target.dataset.open) { state.selected = target.dataset.open; drawDetail(); }
    else if (target.dataset.diff) showDiff(target.dataset.diff);
    else if (target.dataset.rollback) rollback(target.dataset.rollback);
  });
  $("log-stream").addEventListener("change", () => state.selected && drawDetail());
  $("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": state.csrf }, credentials: "same-origin" });
    window.location = "/";
  });
  const linked = /^#agent=(.+)$/.exec(window.location.hash);   // a Grafana panel's link to one agent's card
  if (linked) { state.selected = decodeURIComponent(linked[1]); drawDetail().catch(() => { state.selected = null; }); }
  connect();
  drawHistory();
  drawAudit();
  setInterval(() => state.selected && drawDetail(), 5000);
});
