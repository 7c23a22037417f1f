// The operator console: one EventSource for the runs (console/api/events), one for the
// selected run's log (runs/<id>/events), a POST per Stop (runs/<id>/abort). Every value
// shown comes from Redis and is untrusted: it reaches the page as textContent only.
"use strict";

const LIVE = new Set(["starting", "running"]);
const TERMINAL = new Set(["completed", "failed", "timed_out", "aborted"]);
const MAX_ENDED = 50;
const MAX_LOG = 1000;

const runs = new Map(); // task id -> row (the server's shape)
let usage = {};
let skew = 0; // server clock - browser clock, seconds
let selected = null;
let logSource = null;

const $ = (id) => document.getElementById(id);
const now = () => Date.now() / 1000 + skew;

function fmtDuration(s) {
  if (s == null || !isFinite(s) || s < 0) return "-";
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60), h = Math.floor(m / 60);
  return h ? `${h} h ${m % 60} min` : `${m} min ${Math.floor(s % 60)} s`;
}
function fmtBytes(b) {
  if (b == null) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function fmtCpu(u) {
  if (!u || u.cpu_s == null) return "-";
  return (u.cpu_pct == null ? "" : `${u.cpu_pct.toFixed(0)}% · `) + `${u.cpu_s.toFixed(1)} s`;
}
function fmtTime(t) { return t ? new Date((t - skew) * 1000).toLocaleTimeString() : "-"; }
const short = (id) => (id.length > 14 ? id.slice(0, 12) + "…" : id);

function which(row) {
  if (LIVE.has(row.state)) return "live";
  if (row.state === "queued") return "queued";
  if (TERMINAL.has(row.state)) return "ended";
  return null;
}

function cells(row) {
  const u = usage[row.task_id] || {};
  switch (which(row)) {
    case "live":
      return [short(row.task_id), row.app, row.user_id, row.node_id, row.pid ?? u.pid,
        row.state, fmtDuration(now() - (row.started_at || row.created_at)), fmtCpu(u),
        fmtBytes(u.rss_bytes)];
    case "queued":
      return [short(row.task_id), row.app, row.user_id, row.session_id,
        row.waiting_for ? short(row.waiting_for) : "", fmtDuration(now() - row.created_at)];
    default:
      return [short(row.task_id), row.app, row.user_id, row.node_id, row.state, row.reason,
        fmtTime(row.ended_at),
        fmtDuration(row.ended_at && row.started_at ? row.ended_at - row.started_at : null)];
  }
}

function stopButton(taskId) {
  const button = document.createElement("button");
  button.className = "stop";
  button.textContent = "Stop";
  button.title = "abort the run: its whole process tree is killed";
  button.addEventListener("click", (ev) => { ev.stopPropagation(); stop(taskId, button); });
  return button;
}

function render(row) {
  const table = which(row);
  let tr = document.querySelector(`tr[data-task="${CSS.escape(row.task_id)}"]`);
  if (tr && tr.dataset.table !== table) { tr.remove(); tr = null; }
  if (!table) return;
  const values = cells(row);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.task = row.task_id;
    tr.dataset.table = table;
    tr.title = row.task_id;
    for (let i = 0; i < values.length; i++) tr.appendChild(document.createElement("td"));
    tr.firstChild.className = "task";
    if (table !== "ended") tr.appendChild(document.createElement("td")).appendChild(
      stopButton(row.task_id));
    tr.addEventListener("click", () => select(row.task_id));
    const body = $(table).tBodies[0];
    if (table === "ended") body.insertBefore(tr, body.firstChild);
    else body.appendChild(tr);
  }
  values.forEach((v, i) => { tr.cells[i].textContent = v == null || v === "" ? "" : String(v); });
  const stateCell = tr.cells[table === "live" ? 5 : table === "ended" ? 4 : -1];
  if (stateCell) stateCell.className = "state-" + row.state;
  tr.classList.toggle("selected", row.task_id === selected);
  if (table === "ended") {
    const body = $("ended").tBodies[0];
    while (body.rows.length > MAX_ENDED) {
      runs.delete(body.rows[body.rows.length - 1].dataset.task);
      body.deleteRow(-1);
    }
  }
}

function counts() {
  $("live-count").textContent = $("live").tBodies[0].rows.length;
  $("queued-count").textContent = $("queued").tBodies[0].rows.length;
}

function upsert(row) {
  const known = runs.get(row.task_id);
  // A late row must not take an ended run back to live.
  if (known && TERMINAL.has(known.state) && !TERMINAL.has(row.state)) return;
  runs.set(row.task_id, row);
  render(row);
  counts();
}

function snapshot(data) {
  skew = data.now - Date.now() / 1000;
  usage = data.usage || {};
  runs.clear();
  for (const id of ["live", "queued", "ended"]) $(id).tBodies[0].replaceChildren();
  for (const row of [...data.ended].reverse()) upsert(row);
  for (const row of [...data.live, ...data.queued]) upsert(row);
  nodes(data.nodes);
}

function nodes(list) {
  const bar = $("nodes-bar");
  bar.replaceChildren(document.createTextNode(list.length ? "Nodes: " : "No nodes yet"));
  for (const n of list) {
    const span = document.createElement("span");
    span.className = "node" + (n.alive ? "" : " dead");
    span.textContent = `${n.node_id} (${n.alive ? `${n.tasks} runs` : "no heartbeat"})`;
    bar.appendChild(span);
  }
}

function tick() {
  for (const row of runs.values()) if (!TERMINAL.has(row.state)) render(row);
}

async function stop(taskId, button) {
  button.disabled = true;
  const reason = $("stop-reason").value.trim() || "stopped from the console";
  try {
    const reply = await fetch(`runs/${encodeURIComponent(taskId)}/abort`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ reason }),
    });
    if (!reply.ok && reply.status !== 409) {
      notice(`Stop ${taskId}: ${reply.status} ${await reply.text()}`);
      button.disabled = false;
    }
  } catch (err) {
    notice(`Stop ${taskId}: ${err}`);
    button.disabled = false;
  }
}

function notice(text) { $("notice").textContent = text; }

function logLine(text, cls) {
  const log = $("log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  const li = document.createElement("li");
  li.textContent = text;
  if (cls) li.className = cls;
  log.appendChild(li);
  while (log.childElementCount > MAX_LOG) log.firstChild.remove();
  if (atEnd) log.scrollTop = log.scrollHeight;
}

function describeEvent(ev) {
  const parts = (ev.content && Array.isArray(ev.content.parts)) ? ev.content.parts : [];
  const said = parts.map((p) => {
    if (typeof p.text === "string") return p.text;
    if (p.functionCall) return `${p.functionCall.name}(${JSON.stringify(p.functionCall.args ?? {})})`;
    if (p.functionResponse) return `${p.functionResponse.name} -> ${JSON.stringify(p.functionResponse.response ?? {})}`;
    return Object.keys(p).join(",");
  }).join(" ");
  return `${ev.author ?? "?"}${ev.partial ? " (partial)" : ""}: ${said}`;
}

function select(taskId) {
  if (logSource) logSource.close();
  selected = taskId;
  for (const tr of document.querySelectorAll("tr.selected")) tr.classList.remove("selected");
  const tr = document.querySelector(`tr[data-task="${CSS.escape(taskId)}"]`);
  if (tr) tr.classList.add("selected");
  $("log-task").textContent = taskId;
  $("log").replaceChildren();
  const source = new EventSource(`runs/${encodeURIComponent(taskId)}/events`);
  logSource = source;
  source.addEventListener("event", (e) => logLine(describeEvent(JSON.parse(e.data))));
  source.addEventListener("state", (e) => {
    const s = JSON.parse(e.data);
    const reason = s.detail && s.detail.reason ? ` (${s.detail.reason})` : "";
    logLine(`[${s.state}]${reason}`, TERMINAL.has(s.state) && s.state !== "completed" ? "state fail" : "state");
    if (TERMINAL.has(s.state)) source.close(); // the stream ends here; no reconnect
  });
  source.addEventListener("error", (e) => {
    if (e.data) logLine(`[error] ${JSON.parse(e.data).error}`, "fail");
    else if (source.readyState === EventSource.CLOSED) logLine("[log unavailable]", "fail");
  });
}

function connect() {
  const source = new EventSource("console/api/events");
  const link = $("link");
  source.addEventListener("open", () => { link.textContent = "live"; link.className = "link up"; notice(""); });
  source.addEventListener("snapshot", (e) => snapshot(JSON.parse(e.data)));
  source.addEventListener("run", (e) => upsert(JSON.parse(e.data)));
  source.addEventListener("usage", (e) => {
    const data = JSON.parse(e.data);
    usage = data.usage || {};
    nodes(data.nodes || []);
    tick();
  });
  source.addEventListener("lost", (e) => notice(`Redis: ${JSON.parse(e.data).error}`));
  source.addEventListener("error", () => { link.textContent = "reconnecting…"; link.className = "link down"; });
}

connect();
setInterval(tick, 1000);
