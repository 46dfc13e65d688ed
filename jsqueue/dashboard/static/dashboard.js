// jsqueue dashboard: live tables from /api/stream, a hand-drawn SVG rate chart, action buttons.
// Everything from the system is put in the page with textContent, never as markup.
"use strict";
const jsq = (() => {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const csrf = meta("jsq-csrf");
  const readOnly = meta("jsq-read-only") === "yes";
  const SVG = "http://www.w3.org/2000/svg";
  const SERIES = ["succeeded", "failed", "retried"];
  const WINDOW = 300; // seconds shown on the chart

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  function flash(text, bad) {
    const box = document.getElementById("flash");
    box.textContent = text;
    box.className = bad ? "bad" : "good";
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Jsq-Csrf": csrf },
      body: JSON.stringify(body || {}),
      credentials: "same-origin",
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = { error: response.statusText }; }
    if (!response.ok) flash(data.error || `failed (${response.status})`, true);
    return { ok: response.ok, data };
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 90) return `${seconds.toFixed(1)}s`;
    if (seconds < 5400) return `${(seconds / 60).toFixed(0)}m`;
    return `${(seconds / 3600).toFixed(1)}h`;
  }

  function jobLink(id) {
    const cell = el("td");
    cell.appendChild(el("a", id, { href: `/jobs/${encodeURIComponent(id)}` }));
    return cell;
  }

  function initial() {
    const node = document.getElementById("initial");
    return node ? JSON.parse(node.textContent) : null;
  }

  function live(render) {
    const first = initial();
    if (first) render(first);
    const dot = document.getElementById("live");
    const source = new EventSource("/api/stream");
    source.addEventListener("overview", (event) => {
      dot.className = "live on";
      render(JSON.parse(event.data));
    });
    source.onerror = () => { dot.className = "live off"; };
    window.jsqSource = source;
  }

  function setText(id, value) {
    const node = document.getElementById(id);
    if (node) node.textContent = String(value);
  }

  function renderQueues(queues) {
    const body = document.querySelector("#queues tbody");
    body.replaceChildren();
    if (!queues.length) {
      const row = el("tr");
      row.appendChild(el("td", "no queues yet", { colspan: "10", class: "hint" }));
      body.appendChild(row);
    }
    for (const q of queues) {
      const row = el("tr", null, { "data-queue": q.queue });
      row.appendChild(el("td", q.queue, { class: "name" }));
      for (const key of ["ready", "running", "retrying", "scheduled", "dead", "workers"]) {
        row.appendChild(el("td", q[key], { class: key }));
      }
      row.appendChild(el("td", age(q.oldest_ready_age), { class: "oldest" }));
      row.appendChild(el("td", q.paused ? "PAUSED" : "active", { class: q.paused ? "state paused" : "state" }));
      if (!readOnly) {
        const cell = el("td", null, { class: "actions" });
        const toggle = el("button", q.paused ? "Resume" : "Pause", { class: q.paused ? "resume" : "pause" });
        toggle.onclick = async () => {
          const { ok } = await post(`/api/queues/${encodeURIComponent(q.queue)}/${q.paused ? "resume" : "pause"}`);
          if (ok) flash(`queue ${q.queue} ${q.paused ? "resumed" : "paused"}`);
        };
        const purge = el("button", "Purge", { class: "purge danger" });
        purge.onclick = async () => {
          if (!window.confirm(`Remove every job waiting in queue ${q.queue}? They will never run.`)) return;
          const { ok, data } = await post(`/api/queues/${encodeURIComponent(q.queue)}/purge`, { confirm: q.queue });
          if (ok) flash(`removed ${data.removed} job(s) from queue ${q.queue}`);
        };
        cell.append(toggle, purge);
        row.appendChild(cell);
      }
      body.appendChild(row);
    }
  }

  function renderChart(rates) {
    const svg = document.getElementById("rates");
    svg.replaceChildren();
    const end = rates.length ? rates[rates.length - 1].t : 0;
    const points = rates.filter((p) => p.t >= end - WINDOW);
    const span = Math.max(60, points.length ? end - points[0].t : 0);
    const top = Math.max(1, ...points.flatMap((p) => SERIES.map((s) => p[s])));
    for (const frac of [0.5, 1]) {
      const y = 160 - frac * 150;
      const grid = document.createElementNS(SVG, "line");
      for (const [k, v] of [["x1", 0], ["x2", 600], ["y1", y], ["y2", y], ["class", "grid"]]) grid.setAttribute(k, String(v));
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", "4");
      label.setAttribute("y", String(y + 12));
      label.textContent = `${(top * frac).toFixed(top * frac < 10 ? 1 : 0)}/s`;
      svg.append(grid, label);
    }
    for (const series of SERIES) {
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("class", `line ${series}`);
      line.setAttribute("points", points.map((p) =>
        `${(600 - ((end - p.t) / span) * 600).toFixed(1)},${(160 - (p[series] / top) * 150).toFixed(1)}`).join(" "));
      svg.appendChild(line);
    }
    const last = rates[rates.length - 1] || {};
    for (const series of SERIES) setText(`rate-${series}`, (last[series] || 0).toFixed(1));
  }

  function renderServer(snapshot) {
    const s = snapshot.server;
    if (s) {
      const size = s.cluster_size === null ? "unknown" : s.cluster_size;
      setText("server", `NATS ${s.version} at ${s.url}: cluster size ${size}, stream replicas ${s.replicas}, fsync ${s.sync}`);
      const warning = document.getElementById("server-warning");
      warning.hidden = !s.warning;
      warning.textContent = s.warning ? `warning: ${s.warning}` : "";
    }
    const error = document.getElementById("snapshot-error");
    error.hidden = !snapshot.error;
    error.textContent = snapshot.error ? `cannot read the system: ${snapshot.error}` : "";
  }

  function overviewPage() {
    live((snapshot) => {
      const totals = snapshot.totals || {};
      for (const key of ["ready", "running", "dead", "workers"]) setText(`total-${key}`, totals[key] || 0);
      renderQueues(snapshot.queues || []);
      renderChart(snapshot.rates || []);
      renderServer(snapshot);
    });
  }

  function renderRunning(workers, now) {
    const body = document.querySelector("#running tbody");
    body.replaceChildren();
    for (const w of workers) {
      for (const job of w.running || []) {
        const row = el("tr", null, { "data-job": job.id });
        row.appendChild(jobLink(job.id));
        row.append(el("td", job.task), el("td", job.queue), el("td", w.id), el("td", job.where || "-"));
        row.append(el("td", age(now - job.started) + (job.stuck ? " (stuck)" : "")), el("td", job.attempt));
        body.appendChild(row);
      }
    }
    if (!body.children.length) {
      const row = el("tr");
      row.appendChild(el("td", "nothing is running", { colspan: "7", class: "hint" }));
      body.appendChild(row);
    }
  }

  function workersPage() {
    live((snapshot) => {
      const now = snapshot.at || Date.now() / 1000;
      const workers = snapshot.workers || [];
      const table = document.querySelector("#workers tbody");
      if (table) {
        table.replaceChildren();
        for (const w of workers) {
          const row = el("tr", null, { "data-worker": w.id });
          row.append(el("td", w.id), el("td", `${w.hostname}:${w.pid}`), el("td", (w.queues || []).join(", ")));
          row.append(el("td", w.pool || "thread"), el("td", `${(w.running || []).length}/${w.concurrency}`));
          row.append(el("td", w.processed), el("td", w.failed), el("td", w.retried));
          const children = (w.children || []).map((c) => c.rss_mb || 0).reduce((a, b) => a + b, 0);
          const rss = w.rss_mb ? `${(w.rss_mb + children).toFixed(0)} MB` : "?";
          row.append(el("td", rss), el("td", age(now - w.started)));
          table.appendChild(row);
        }
        if (!workers.length) {
          const row = el("tr");
          row.appendChild(el("td", "no live workers", { colspan: "10", class: "hint" }));
          table.appendChild(row);
        }
      }
      renderRunning(workers, now);
    });
  }

  const FINAL = ["SUCCESS", "FAILURE", "DEAD", "EXPIRED", "REVOKED"];

  function watchJob() {
    // the state and place of the job, refreshed every 2 s without reloading the page
    const state = document.getElementById("job-state");
    if (!state) return;
    const id = document.getElementById("job-id").textContent;
    let shown = `${state.dataset.state} ${state.dataset.where}`;
    const timer = setInterval(async () => {
      const response = await fetch(`/api/jobs/${encodeURIComponent(id)}`, { credentials: "same-origin" });
      if (!response.ok) return;
      const job = await response.json();
      const now = `${job.state} ${job.where}`;
      if (now === shown) return;
      shown = now;
      state.textContent = job.state;
      state.className = `state ${job.state.toLowerCase()}`;
      setText("job-where", job.where === "running" ? `running on ${job.worker}` : job.where);
      if (FINAL.includes(job.state) && job.where !== "running") {
        for (const button of document.querySelectorAll("#revoke, #terminate")) button.remove();
        clearInterval(timer);
      }
    }, 2000);
  }

  function jobPage() {
    watchJob();
    for (const id of ["revoke", "terminate"]) {
      const button = document.getElementById(id);
      if (!button) continue;
      button.onclick = async () => {
        const terminate = button.dataset.terminate === "yes";
        const { ok, data } = await post(`/api/jobs/${encodeURIComponent(button.dataset.job)}/revoke`, { terminate });
        if (ok) flash(data.message);
      };
    }
  }

  function lettersPage() {
    for (const button of document.querySelectorAll(".replay-one")) {
      button.onclick = async () => {
        const { ok, data } = await post(`/api/dlq/${encodeURIComponent(button.dataset.job)}/replay`);
        if (!ok) return;
        flash(`replayed ${data.job_id} as ${data.new_id}`);
        const row = button.closest("tr");
        if (row) row.remove(); else button.disabled = true;
      };
    }
    const all = document.getElementById("replay-all");
    if (all) {
      all.onclick = async () => {
        const queue = all.dataset.queue || null;
        const { ok, data } = await post("/api/dlq-replay", { queue });
        if (!ok) return;
        const bar = document.getElementById("replay-progress");
        bar.hidden = false;
        bar.max = Math.max(1, data.total);
        let state = data;
        while (!state.finished) {
          bar.value = state.done;
          setText("replay-status", `${state.done} of ${state.total}`);
          await new Promise((r) => setTimeout(r, 300));
          const response = await fetch(`/api/dlq-replay/${data.id}`, { credentials: "same-origin" });
          state = await response.json();
        }
        bar.value = state.done;
        setText("replay-status", `replayed ${state.done - state.failed} of ${state.total}` +
          (state.failed ? `; ${state.failed} kept: ${state.problems.join("; ")}` : ""));
        flash(`replayed ${state.done - state.failed} dead letter(s)`, state.failed > 0);
      };
    }
    const purge = document.getElementById("purge-letters");
    if (purge) {
      purge.onclick = async () => {
        const queue = purge.dataset.queue || null;
        const what = queue ? `the dead letters of queue ${queue}` : "every dead letter";
        if (!window.confirm(`Remove ${what} for good?`)) return;
        const { ok, data } = await post("/api/dlq-purge", { queue, confirm: queue || "all" });
        if (ok) { flash(`removed ${data.removed} dead letter(s)`); setTimeout(() => window.location.reload(), 800); }
      };
    }
  }

  return { post, flash, overviewPage, workersPage, jobPage, lettersPage };
})();
