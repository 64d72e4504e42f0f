// geoetl dashboard: queue depths (with poison queues), dead letters (requeue / delete), recent
// failures grouped by error, and throughput over the last hour as an inline SVG chart.
"use strict";

(function () {
  const D = window.Dashboard;
  const { el, clear, api } = D;
  const enc = encodeURIComponent;
  const SVG = "http://www.w3.org/2000/svg";

  function poisonActions(queue) {
    const detail = document.getElementById("poison-detail");
    const peek = el("button", { type: "button", dataset: { action: "peek" } }, "Peek");
    peek.addEventListener("click", async () => {
      try {
        const body = await api("GET", `/poison/${enc(queue.name)}`);
        detail.textContent = `${body.queue}: ${body.messages.length} message(s)\n` + JSON.stringify(body.messages, null, 2);
      } catch (err) {
        detail.textContent = `Could not peek ${queue.name}: ${err.message}`;
      }
      detail.hidden = false;
    });
    return [
      peek,
      D.actionButton("Requeue all", async () => {
        const r = await api("POST", `/poison/${enc(queue.name)}/requeue`);
        return `${r.queue}: ${r.requeued} message(s) moved back to ${r.source_queue}` + (r.failed ? `, ${r.failed} failed` : "");
      }, { action: "requeue-poison", confirm: `Move every message of ${queue.name} back to its queue?` }),
      D.actionButton("Purge", async () => {
        const r = await api("DELETE", `/poison/${enc(queue.name)}`);
        return `${r.queue}: ${r.deleted} message(s) deleted` + (r.failed ? `, ${r.failed} failed` : "");
      }, { danger: true, action: "purge-poison", confirm: `Delete every message of ${queue.name}? This cannot be undone.` }),
    ];
  }

  async function refreshQueues() {
    const body = await api("GET", "/queues");
    const queues = body.queues || [];
    const tbody = document.querySelector("#queues tbody");
    D.renderIfChanged(tbody, queues, () => {
      clear(tbody);
      for (const queue of queues) {
        const oldest = queue.oldest_message_age_seconds;
        tbody.append(el("tr", { dataset: { queue: queue.name, poison: queue.poison ? "true" : "false" }, class: queue.poison ? "poison" : null },
          el("td", { class: "mono", text: queue.name }),
          el("td", { text: queue.role + (queue.poison ? " (poison)" : "") }),
          el("td", { class: "num messages", text: queue.approximate_messages }),
          el("td", { class: "num", text: oldest === null || oldest === undefined ? "—" : D.fmtSeconds(oldest) }),
          el("td", { class: "actions" }, ...(queue.poison && queue.approximate_messages > 0 ? poisonActions(queue) : []))));
      }
      if (!queues.length) D.emptyRow(tbody, 5, "No queues.");
    });
    const poisoned = queues.filter((q) => q.poison).reduce((n, q) => n + (q.approximate_messages || 0), 0);
    D.sectionNote("queues-note", poisoned ? `${poisoned} message(s) in poison queues` : "poison queues are empty");
  }

  function deadLetterActions(letter) {
    const buttons = [];
    if (letter.status !== "requeued") {
      buttons.push(D.actionButton("Requeue", async () => {
        const r = await api("POST", `/dead-letters/${enc(letter.id)}/requeue`);
        const what = r.action === "job_retried" ? `job ${D.shortId(r.job_id)} retried (${r.job_status})` : `message re-sent to ${r.queue}`;
        return `Dead letter ${r.id} requeued: ${what}`;
      }, { action: "requeue" }));
    }
    buttons.push(D.actionButton("Delete", async () => {
      await api("DELETE", `/dead-letters/${enc(letter.id)}`);
      return `Dead letter ${letter.id} deleted`;
    }, { danger: true, action: "delete", confirm: `Delete dead letter ${letter.id}? This cannot be undone.` }));
    return buttons;
  }

  async function refreshDeadLetters() {
    const query = new URLSearchParams({ limit: "100" });
    const status = document.getElementById("filter-dead-letter-status").value;
    if (status) query.set("status", status);
    const body = await api("GET", "/dead-letters?" + query.toString());
    const letters = body.dead_letters || [];
    const tbody = document.querySelector("#dead-letters tbody");
    D.renderIfChanged(tbody, letters, () => {
      clear(tbody);
      if (!letters.length) D.emptyRow(tbody, 7, "No dead letters.");
      for (const letter of letters) {
        const owner = el("td", {});
        if (letter.job_id) owner.append(D.jobLink(letter.job_id));
        if (letter.task_id) owner.append(el("div", { class: "mono muted", title: letter.task_id, text: String(letter.task_id).slice(65) || letter.task_id }));
        const state = letter.status === "requeued" ? el("div", { class: "muted", text: `requeued ${D.fmtTime(letter.requeued_at)}` }) : null;
        tbody.append(el("tr", { dataset: { deadLetterId: letter.id, status: letter.status || "open" } },
          el("td", { class: "num", text: letter.id }),
          el("td", { class: "mono", text: letter.queue }),
          el("td", { class: "reason", title: letter.reason }, D.truncate(letter.reason, 240), state),
          owner,
          el("td", { text: D.fmtTime(letter.created_at) }),
          el("td", {}, el("details", {}, el("summary", {}, D.truncate(letter.body, 40)), el("pre", { text: letter.body }))),
          el("td", { class: "actions" }, ...deadLetterActions(letter))));
      }
    });
    D.sectionNote("dead-letters-note", `${letters.length} dead letter(s)`);
  }

  async function refreshFailures() {
    const body = await api("GET", "/stats/failures?hours=24");
    const groups = body.groups || [];
    const tbody = document.querySelector("#failures tbody");
    D.renderIfChanged(tbody, groups, () => {
      clear(tbody);
      if (!groups.length) D.emptyRow(tbody, 5, "No failures in the last 24 hours.");
      for (const group of groups) {
        const jobs = el("td", {}, ...(group.job_ids || []).map((id) => el("div", {}, D.jobLink(id))));
        tbody.append(el("tr", {},
          el("td", { text: group.error_category || "—" }),
          el("td", { class: "reason", title: group.reason }, D.truncate(group.reason, 300)),
          el("td", { class: "num", text: group.count }),
          el("td", { text: D.fmtTime(group.last_at) }),
          jobs));
      }
    });
    const total = groups.reduce((n, g) => n + (g.count || 0), 0);
    D.sectionNote("failures-note", `${total} failed task(s) in ${groups.length} group(s)`);
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  // One stacked bar per minute (completed under failed) over the last `minutes` minutes.
  function drawThroughput(buckets, minutes) {
    const width = 640, height = 180, left = 34, right = 8, top = 10, bottom = 22;
    const plotW = width - left - right, plotH = height - top - bottom;
    const now = new Date();
    now.setSeconds(0, 0);
    const start = now.getTime() - (minutes - 1) * 60000;
    const slots = Array.from({ length: minutes }, (_, i) => ({ at: new Date(start + i * 60000), completed: 0, failed: 0 }));
    for (const bucket of buckets) {
      const index = Math.round((new Date(bucket.minute).getTime() - start) / 60000);
      if (index >= 0 && index < minutes) {
        slots[index].completed += bucket.completed || 0;
        slots[index].failed += bucket.failed || 0;
      }
    }
    const peak = Math.max(1, ...slots.map((s) => s.completed + s.failed));
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "tasks finished per minute, last hour" });
    chart.append(svg("title", {}, "Tasks finished per minute"));
    chart.append(svg("line", { class: "axis", x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH }));
    chart.append(svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: top + plotH }));
    chart.append(svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, peak));
    chart.append(svg("text", { x: left - 4, y: top + plotH, "text-anchor": "end" }, 0));
    const step = plotW / minutes;
    slots.forEach((slot, i) => {
      const x = left + i * step + 0.5;
      const w = Math.max(1, step - 1);
      const hc = (plotH * slot.completed) / peak;
      const hf = (plotH * slot.failed) / peak;
      const label = `${pad(slot.at.getHours())}:${pad(slot.at.getMinutes())} — ${slot.completed} completed, ${slot.failed} failed`;
      if (slot.completed) {
        const bar = svg("rect", { class: "bar-completed", x, y: top + plotH - hc, width: w, height: hc });
        bar.append(svg("title", {}, label));
        chart.append(bar);
      }
      if (slot.failed) {
        const bar = svg("rect", { class: "bar-failed", x, y: top + plotH - hc - hf, width: w, height: hf });
        bar.append(svg("title", {}, label));
        chart.append(bar);
      }
      if (i % 15 === 0 || i === minutes - 1) {
        const text = i === minutes - 1 ? "now" : `-${minutes - 1 - i} min`;
        chart.append(svg("text", { x: x + w / 2, y: height - 6, "text-anchor": "middle" }, text));
      }
    });
    return { chart, completed: slots.reduce((n, s) => n + s.completed, 0), failed: slots.reduce((n, s) => n + s.failed, 0) };
  }

  async function refreshThroughput() {
    const minutes = 60;
    const body = await api("GET", `/stats/throughput?minutes=${minutes}`);
    const buckets = body.buckets || [];
    const holder = document.getElementById("throughput-chart");
    const minute = new Date().getMinutes();  // redraw at least once a minute: the axis moves
    D.renderIfChanged(holder, { buckets, minute }, () => {
      const { chart, completed, failed } = drawThroughput(buckets, minutes);
      clear(holder).append(chart);
      holder.dataset.completed = completed;
      holder.dataset.failed = failed;
      D.sectionNote("throughput-summary", `${completed} task(s) completed, ${failed} failed in the last hour`);
    });
  }

  function wire() {
    const select = document.getElementById("filter-dead-letter-status");
    for (const status of ["open", "requeued"]) select.append(el("option", { value: status }, status));
    select.value = "open";
    select.addEventListener("change", () => D.refresh());
  }

  D.operations = { refreshQueues, refreshDeadLetters, refreshFailures, refreshThroughput, wire };
})();
