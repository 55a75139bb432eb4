// The operations page: reads /v1/admin/overview, /v1/admin/instances and held jobs
// every 5 s with the admin token kept in sessionStorage (this tab only, never a URL).
// Every value is written with textContent: job errors and host names are not HTML.
"use strict";

const KEY = "tragwerk-admin-token";
const REFRESH_MS = 5000;
let previous = null; // the last overview, to turn job totals into rates

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = String(cell);
    tr.appendChild(td);
  }
  return tr;
}

function fill(id, rows, empty) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
  if (!rows.length && empty) {
    const tr = row([empty]);
    tr.firstChild.colSpan = 8;
    tr.firstChild.className = "muted";
    body.appendChild(tr);
  }
}

function badge(text, cls) { return el("span", text, `badge ${cls || text}`); }

function seconds(s) {
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

async function call(path, options) {
  const token = sessionStorage.getItem(KEY);
  const headers = { Authorization: `Bearer ${token}`, ...(options && options.headers) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 || response.status === 403) {
    throw new Error(response.status === 401 ? "the token was refused" :
                    "this token may not operate (needs jobs:manage)");
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function modules(map) {
  const span = el("span");
  for (const [name, value] of Object.entries(map || {})) {
    const text = typeof value === "object" ? JSON.stringify(value) : value;
    const healthy = typeof value !== "string" || value.startsWith("ok") ||
      value === "off" || value === "not used yet";
    span.appendChild(el("span", `${name}: ${text}`, `chip ${healthy ? "" : "bad"}`));
  }
  return span;
}

function showAlerts(alerts) {
  const box = document.getElementById("alerts");
  box.replaceChildren();
  if (alerts === null) {
    box.textContent = "tragwerk's own alerting is off here (TRAGWERK_ALERT_WEBHOOK_URL, " +
      "TRAGWERK_ALERT_EMAILS); with Prometheus, Alertmanager shows the alerts.";
    box.className = "muted";
    return;
  }
  if (!alerts.length) { box.appendChild(badge("none firing", "ok")); return; }
  box.className = "";
  const table = el("table");
  for (const alert of alerts) {
    const labels = Object.entries(alert.labels)
      .filter(([k]) => k !== "alertname" && k !== "severity")
      .map(([k, v]) => `${k}=${v}`).join(" ");
    table.appendChild(row([badge(alert.labels.severity), alert.labels.alertname,
                           alert.annotations.summary || "", labels,
                           `since ${new Date(alert.startsAt).toLocaleTimeString()}`]));
  }
  box.appendChild(table);
}

async function requeue(body) {
  const result = await call("/v1/admin/jobs/requeue", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  document.getElementById("status").textContent = `requeued ${result.requeued.length} job(s)`;
  await refresh();
}

async function refresh() {
  const status = document.getElementById("status");
  if (!sessionStorage.getItem(KEY)) { status.textContent = "enter an admin token"; return; }
  try {
    const [overview, instances, held] = await Promise.all([
      call("/v1/admin/overview"), call("/v1/admin/instances"),
      call("/v1/admin/jobs?state=held&limit=100"),
    ]);
    showAlerts(overview.alerts);
    fill("instances", instances.map((i) => row([
      badge(i.state), i.role, i.host, i.pid, i.address || "–", i.version,
      `${seconds(i.silent_seconds)} ago`, modules(i.modules)])), "no instance recorded");
    fill("queue", Object.entries(overview.queue).map(([band, q]) =>
      row([band, q.queued, seconds(q.oldest_seconds)])), "the queue is empty");
    const minutes = previous ? (overview.generated_at - previous.generated_at) / 60 : 0;
    fill("jobs", Object.entries(overview.jobs).map(([outcome, n]) => {
      const before = previous && previous.jobs[outcome];
      const rate = minutes > 0 && before !== undefined ? ((n - before) / minutes).toFixed(1) : "…";
      return row([outcome, n, rate]);
    }), "no job run yet");
    previous = overview;
    fill("held", held.map((job) => {
      const button = el("button", "Requeue");
      button.type = "button";
      button.dataset.jobId = job.id;
      button.addEventListener("click", () => requeue({ ids: [job.id] }));
      return row([job.id, job.kind, job.attempts, new Date(job.updated).toLocaleString(),
                  el("pre", job.last_error || ""), button]);
    }), "no held job");
    const orphans = Object.entries(overview.orphaned);
    document.getElementById("orphaned").textContent = orphans.length ?
      `orphaned (claimed by a dead worker): ${orphans.map(([k, n]) => `${k} ${n}`).join(", ")}` : "";
    fill("breakers", Object.entries(overview.breakers_open).map(([host, seen]) =>
      row([host, seen.join(", ")])), "all closed");
    fill("cache", ["reference", "principal"].map((name) => {
      const c = overview.cache[name];
      return row([name, c.hits, c.misses, `${(c.hit_ratio * 100).toFixed(1)} %`]);
    }));
    document.getElementById("feed").textContent = `change feed: ${overview.cache.feed}`;
    fill("limits", Object.entries(overview.rate_limits).map(([tier, d]) =>
      row([tier, d.allowed, d.limited, d.unavailable])), "rate limiting is off");
    fill("lanes", Object.entries(overview.lanes).map(([lane, d]) =>
      row([lane, d.admitted, d.shed])), "admission control is off");
    document.getElementById("process").textContent = overview.process;
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    status.textContent = error.message;
  }
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  if (input.value.trim()) sessionStorage.setItem(KEY, input.value.trim());
  input.value = "";
  refresh();
});
document.getElementById("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  refresh();
});
document.getElementById("requeue-all").addEventListener("click", () => requeue({ all: true }));
refresh();
setInterval(refresh, REFRESH_MS);
