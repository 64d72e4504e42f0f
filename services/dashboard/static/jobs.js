// geoetl dashboard: the jobs list (filters: status, type, time window) and the job page (stage
// progress, outputs, tasks, cancel / retry).
"use strict";

(function () {
  const D = window.Dashboard;
  const { el, clear, api } = D;
  const PAGE = 100;
  const MAX_PAGES = 5;
  const CANCELLABLE = ["queued", "processing"];
  const RETRYABLE = ["failed", "completed_with_errors", "cancelled"];
  const enc = encodeURIComponent;

  function jobActions(job) {
    const buttons = [];
    if (CANCELLABLE.includes(job.status)) {
      buttons.push(D.actionButton("Cancel", async () => {
        const body = await api("POST", `/jobs/${enc(job.job_id)}/cancel`);
        return `Job ${D.shortId(job.job_id)} is ${body.status}`;
      }, { danger: true, action: "cancel", confirm: `Cancel job ${job.job_id}?` }));
    }
    if (RETRYABLE.includes(job.status)) {
      buttons.push(D.actionButton("Retry", async () => {
        const body = await api("POST", `/jobs/${enc(job.job_id)}/retry`);
        return `Job ${D.shortId(job.job_id)} re-queued: ${body.status} at stage ${body.stage}`;
      }, { action: "retry" }));
    }
    return buttons;
  }

  let typesLoaded = false;
  async function loadJobTypes() {
    if (typesLoaded) return;
    const body = await api("GET", "/job-types");
    const select = document.getElementById("filter-type");
    for (const type of body.job_types || []) {
      select.append(el("option", { value: type.job_type, title: type.description || "" }, type.job_type));
    }
    typesLoaded = true;
  }

  async function fetchJobs() {
    const status = document.getElementById("filter-status").value;
    const type = document.getElementById("filter-type").value;
    const windowSeconds = Number(document.getElementById("filter-window").value);
    const cutoff = windowSeconds > 0 ? Date.now() - windowSeconds * 1000 : null;
    const jobs = [];
    let cursor = "";
    let more = false;
    for (let page = 0; page < MAX_PAGES; page += 1) {
      const query = new URLSearchParams({ limit: String(PAGE) });
      if (status) query.set("status", status);
      if (type) query.set("job_type", type);
      if (cursor) query.set("cursor", cursor);
      const body = await api("GET", "/jobs?" + query.toString());
      let reachedCutoff = false;
      for (const job of body.jobs || []) {  // newest first
        if (cutoff !== null && new Date(job.created_at).getTime() < cutoff) {
          reachedCutoff = true;
          break;
        }
        jobs.push(job);
      }
      cursor = body.next_cursor || "";
      if (reachedCutoff || !cursor) break;
      more = page === MAX_PAGES - 1;
    }
    return { jobs, more };
  }

  async function refreshJobs() {
    const { jobs, more } = await fetchJobs();
    const tbody = document.querySelector("#jobs tbody");
    D.renderIfChanged(tbody, jobs, () => {
      clear(tbody);
      if (!jobs.length) D.emptyRow(tbody, 8, "No jobs match these filters.");
      for (const job of jobs) {
        tbody.append(el("tr", { dataset: { jobId: job.job_id, status: job.status } },
          el("td", {}, D.jobLink(job.job_id)),
          el("td", { text: job.job_type }),
          el("td", { class: "status-cell" }, D.statusBadge(job.status)),
          el("td", { class: "num", text: `${job.stage}/${job.total_stages}` }),
          el("td", { text: D.fmtTime(job.created_at) }),
          el("td", { class: "num", text: D.fmtDuration(job.started_at, job.completed_at) }),
          el("td", { class: "error", title: job.error || null, text: D.truncate(job.error, 160) }),
          el("td", { class: "actions" }, ...jobActions(job))));
      }
    });
    D.sectionNote("jobs-note", `${jobs.length} job(s)` + (more ? `; showing the newest ${jobs.length} only` : ""));
  }

  // Blob outputs: any {container, blob} object in the result (process_raster: result.outputs.cogs,
  // stac_collection, stac_items, mosaic_vrt), named by where it sits in the result.
  function findOutputs(value, path, found) {
    if (Array.isArray(value)) {
      value.forEach((item, index) => findOutputs(item, `${path}[${index}]`, found));
    } else if (value && typeof value === "object") {
      if (typeof value.container === "string" && typeof value.blob === "string") {
        found.push({ path, container: value.container, blob: value.blob, bytes: value.bytes });
        return found;
      }
      for (const [name, item] of Object.entries(value)) findOutputs(item, path ? `${path}.${name}` : name, found);
    } else if (typeof value === "string" && /^https?:\/\//i.test(value)) {
      found.push({ path, url: value });
    }
    return found;
  }

  function outputItem(output) {
    const detail = document.getElementById("output-detail");
    if (output.url) {
      return el("li", {}, el("span", { class: "muted" }, output.path + ": "),
        el("a", { href: output.url, rel: "noopener noreferrer", target: "_blank" }, output.url));
    }
    const href = `${D.apiBase}/containers/${enc(output.container)}/blobs?prefix=${enc(output.blob)}`;
    const link = el("a", { href, class: "output-link mono", title: "show this blob's listing entry" }, `${output.container}/${output.blob}`);
    link.addEventListener("click", async (event) => {
      event.preventDefault();  // fetched with the key header instead of following the link
      try {
        const listing = await api("GET", `/containers/${enc(output.container)}/blobs?prefix=${enc(output.blob)}&limit=5`);
        const blob = (listing.blobs || []).find((b) => b.name === output.blob) || listing;
        detail.textContent = JSON.stringify(blob, null, 2);
      } catch (err) {
        detail.textContent = `Could not read ${output.container}/${output.blob}: ${err.message}`;
      }
      detail.hidden = false;
    });
    const size = typeof output.bytes === "number" ? ` (${output.bytes.toLocaleString()} bytes)` : "";
    return el("li", {}, el("span", { class: "muted" }, output.path + ": "), link, size);
  }

  function stageBar(stage) {
    const total = stage.task_count || 0;
    const counts = stage.tasks || {};
    const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": (counts.completed || 0) + (counts.failed || 0) + (counts.skipped || 0) });
    for (const part of ["completed", "failed", "skipped", "processing"]) {
      if (!total || !counts[part]) continue;
      const fill = el("div", { class: `fill-${part}`, title: `${counts[part]} ${part}` });
      fill.style.width = `${(100 * counts[part]) / total}%`;
      bar.append(fill);
    }
    const summary = total
      ? ["completed", "failed", "skipped", "processing", "queued", "held"].filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`).join(", ")
      : "not planned yet";
    const avg = stage.avg_task_seconds !== null && stage.avg_task_seconds !== undefined ? `, avg ${D.fmtSeconds(stage.avg_task_seconds)}/task` : "";
    return el("div", { class: "stage", dataset: { stage: stage.stage, state: stage.state } },
      el("div", { class: "stage-label" },
        el("span", {}, el("strong", { text: `${stage.stage}. ${stage.name}` }), ` — ${stage.state}`),
        el("span", { class: "muted", text: `${summary}${total ? ` of ${total}` : ""}${avg}` })),
      bar);
  }

  function renderJob(job) {
    document.getElementById("job-title").textContent = job.job_id;
    clear(document.getElementById("job-actions")).append(...jobActions(job));
    const summary = clear(document.getElementById("job-summary"));
    const progress = job.progress || {};
    const rows = [
      ["Type", job.job_type], ["Status", D.statusBadge(job.status)], ["Stage", `${job.stage} of ${job.total_stages}`],
      ["Progress", `${progress.percent ?? ""}%` + (progress.eta_seconds ? `, about ${D.fmtSeconds(progress.eta_seconds)} left` : "")],
      ["Priority", job.priority], ["Created", D.fmtTime(job.created_at)], ["Started", D.fmtTime(job.started_at)],
      ["Completed", D.fmtTime(job.completed_at)], ["Duration", D.fmtDuration(job.started_at, job.completed_at)],
    ];
    if (job.depends_on && job.depends_on.length) rows.push(["Depends on", el("span", {}, ...job.depends_on.map((id) => D.jobLink(id)))]);
    if (job.error) rows.push(["Error", el("span", { class: "error", id: "job-error", text: job.error })]);
    for (const [name, value] of rows) summary.append(el("dt", { text: name }), el("dd", {}, value));
    summary.dataset.status = job.status;
    clear(document.getElementById("job-stages")).append(...(progress.stages || []).map(stageBar));
    const outputs = job.result ? findOutputs(job.result, "", []) : [];
    const list = clear(document.getElementById("job-outputs"));
    if (outputs.length) list.append(...outputs.map(outputItem));
    else list.append(el("li", { class: "muted", text: job.result ? "No blob outputs in the result." : "No result yet." }));
    document.getElementById("job-parameters").textContent = JSON.stringify(job.parameters, null, 2);
    document.getElementById("job-result").textContent = job.result ? JSON.stringify(job.result, null, 2) : "(none)";
    const stageSelect = document.getElementById("filter-task-stage");
    if (stageSelect.options.length - 1 !== (progress.stages || []).length) {
      const chosen = stageSelect.value;
      clear(stageSelect).append(el("option", { value: "" }, "any"));
      for (const stage of progress.stages || []) stageSelect.append(el("option", { value: stage.stage }, `${stage.stage}. ${stage.name}`));
      stageSelect.value = chosen;
    }
  }

  const taskPaging = { jobId: null, cursors: [""], next: null };

  function renderTasks(page) {
    const tbody = document.querySelector("#tasks tbody");
    D.renderIfChanged(tbody, page.tasks, () => {
      clear(tbody);
      if (!page.tasks.length) D.emptyRow(tbody, 8, "No tasks match.");
      for (const task of page.tasks) {
        tbody.append(el("tr", { dataset: { taskId: task.task_id, status: task.status } },
          el("td", { class: "mono", title: task.task_id, text: task.task_key }),
          el("td", { class: "num", text: task.stage }),
          el("td", {}, D.statusBadge(task.status)),
          el("td", { class: "num attempts", text: task.attempts }),
          el("td", { text: task.error_category || "" }),
          el("td", { class: "num", text: D.fmtDuration(task.started_at, task.completed_at) }),
          el("td", { text: D.fmtTime(task.started_at) }),
          el("td", { class: "error", title: task.error || null, text: D.truncate(task.error, 240) })));
      }
    });
    document.getElementById("tasks-next").disabled = !page.next_cursor;
    document.getElementById("tasks-first").disabled = taskPaging.cursors.length <= 1;
    D.sectionNote("tasks-note", `page ${taskPaging.cursors.length}, ${page.tasks.length} task(s) shown`);
  }

  async function refreshJob(jobId) {
    if (taskPaging.jobId !== jobId) Object.assign(taskPaging, { jobId, cursors: [""], next: null });
    const query = new URLSearchParams({ limit: "50" });
    const stage = document.getElementById("filter-task-stage").value;
    const status = document.getElementById("filter-task-status").value;
    if (stage) query.set("stage", stage);
    if (status) query.set("status", status);
    const cursor = taskPaging.cursors[taskPaging.cursors.length - 1];
    if (cursor) query.set("cursor", cursor);
    const [job, tasks] = await Promise.all([
      api("GET", `/jobs/${enc(jobId)}`),
      api("GET", `/jobs/${enc(jobId)}/tasks?${query.toString()}`),
    ]);
    D.renderIfChanged(document.getElementById("job-summary"), job, () => renderJob(job));
    taskPaging.next = tasks.next_cursor;
    renderTasks(tasks);
  }

  function resetTaskPaging() {
    taskPaging.cursors = [""];
    D.refresh();
  }

  function wire() {
    for (const id of ["filter-status", "filter-type", "filter-window"]) document.getElementById(id).addEventListener("change", () => D.refresh());
    for (const id of ["filter-task-stage", "filter-task-status"]) document.getElementById(id).addEventListener("change", resetTaskPaging);
    document.getElementById("tasks-first").addEventListener("click", resetTaskPaging);
    document.getElementById("tasks-next").addEventListener("click", () => {
      if (taskPaging.next) taskPaging.cursors.push(taskPaging.next);
      D.refresh();
    });
  }

  D.jobs = { loadJobTypes, refreshJobs, refreshJob, wire };
})();
