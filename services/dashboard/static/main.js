// geoetl dashboard: which view is shown (the overview, or one job: #/jobs/<id>, or the page
// /dashboard/jobs/<id>), and the refresh loop (every 5 s while auto-refresh is on).
"use strict";

(function () {
  const D = window.Dashboard;
  const INTERVAL_MS = 5000;
  const JOB_ID = /^[0-9a-f]{64}$/;
  const pageJobId = document.body.dataset.jobId || "";

  function currentJobId() {
    const match = /^#\/jobs\/([^/?#]+)$/.exec(window.location.hash);
    if (match) {
      const id = decodeURIComponent(match[1]);
      return JOB_ID.test(id) ? id : null;
    }
    if (window.location.hash === "#/" || window.location.hash === "#/jobs") return null;
    return JOB_ID.test(pageJobId) ? pageJobId : null;
  }

  function showView(jobId) {
    document.getElementById("overview").hidden = Boolean(jobId);
    document.getElementById("job-view").hidden = !jobId;
    document.title = jobId ? `job ${jobId.slice(0, 12)} · geoetl` : "geoetl dashboard";
  }

  // One section's failure is shown in its note and in the banner; the other sections still refresh.
  async function guarded(name, noteId, run) {
    try {
      await run();
      return null;
    } catch (err) {
      const message = `${name}: ${err && err.message ? err.message : err}`;
      if (noteId) D.sectionNote(noteId, `unavailable — ${message}`);
      return message;
    }
  }

  let running = null;
  let timer = null;

  async function refreshOnce() {
    const jobId = currentJobId();
    showView(jobId);
    let tasks;
    if (jobId) {
      tasks = [guarded("job", "tasks-note", () => D.jobs.refreshJob(jobId))];
    } else {
      tasks = [
        guarded("job types", "jobs-note", D.jobs.loadJobTypes),
        guarded("jobs", "jobs-note", D.jobs.refreshJobs),
        guarded("queues", "queues-note", D.operations.refreshQueues),
        guarded("dead letters", "dead-letters-note", D.operations.refreshDeadLetters),
        guarded("failures", "failures-note", D.operations.refreshFailures),
        guarded("throughput", "throughput-summary", D.operations.refreshThroughput),
      ];
    }
    const problems = (await Promise.all(tasks)).filter(Boolean);
    const banner = document.getElementById("error-banner");
    banner.textContent = problems.join(" · ");
    banner.hidden = problems.length === 0;
    const stamp = new Date();
    document.getElementById("last-refresh").textContent = `updated ${D.fmtTime(stamp.toISOString()).slice(11)}`;
    document.body.dataset.refreshedAt = String(stamp.getTime());
  }

  // Refreshes never overlap: a request made while one runs is served by one more run after it.
  let again = false;
  function refresh() {
    if (timer) {
      clearTimeout(timer);
      timer = null;
    }
    if (running) {
      again = true;
      return running;
    }
    running = refreshOnce().finally(() => {
      running = null;
      if (again) {
        again = false;
        refresh();
      } else {
        schedule();
      }
    });
    return running;
  }

  // While the tab is hidden nothing is fetched; showing it again refreshes at once.
  function tick() {
    if (document.hidden) {
      timer = null;
      return;
    }
    refresh();
  }

  function schedule() {
    if (timer) clearTimeout(timer);
    timer = document.getElementById("auto-refresh").checked ? setTimeout(tick, INTERVAL_MS) : null;
  }

  D.refresh = refresh;

  document.addEventListener("DOMContentLoaded", () => {
    D.jobs.wire();
    D.operations.wire();
    document.getElementById("refresh-now").addEventListener("click", refresh);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !timer && !running && document.getElementById("auto-refresh").checked) refresh();
    });
    document.getElementById("auto-refresh").addEventListener("change", () => (running ? null : schedule()));
    window.addEventListener("hashchange", () => {
      document.getElementById("output-detail").hidden = true;
      refresh();
    });
    refresh();
  });
})();
