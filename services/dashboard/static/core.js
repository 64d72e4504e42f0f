// geoetl dashboard: shared helpers. Everything from the API is put into the page with textContent
// (never innerHTML). The function key comes from this page's ?code= and is only ever sent as the
// x-functions-key header of same-origin fetches: it is never written to the console or the page.
"use strict";

(function () {
  const apiBase = document.body.dataset.apiBase || "/api";
  const functionKey = new URLSearchParams(window.location.search).get("code") || "";

  class ApiError extends Error {
    constructor(status, message, payload) {
      super(message);
      this.status = status;
      this.payload = payload;
    }
  }

  async function api(method, path, payload) {
    const headers = { Accept: "application/json" };
    if (functionKey) headers["x-functions-key"] = functionKey;
    const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let response;
    try {
      response = await fetch(apiBase + path, init);
    } catch (err) {
      throw new ApiError(0, "the app did not answer (" + String(err && err.message ? err.message : err) + ")", null);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (err) {
        data = null;
      }
    }
    if (!response.ok) {
      const message = data && typeof data.error === "string" ? data.error : "HTTP " + response.status;
      throw new ApiError(response.status, message, data);
    }
    return data;
  }

  // el("td", {class: "num", title: "…"}, "text", childNode, …): attributes are set as attributes,
  // children that are not nodes become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtSeconds(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 90) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
    return `${Math.round(seconds / 86400)} d`;
  }

  function fmtDuration(startIso, endIso) {
    if (!startIso) return "";
    const start = new Date(startIso).getTime();
    const end = endIso ? new Date(endIso).getTime() : Date.now();
    if (Number.isNaN(start) || Number.isNaN(end)) return "";
    return fmtSeconds(Math.max(0, (end - start) / 1000)) + (endIso ? "" : " …");
  }

  function shortId(id) {
    const text = String(id || "");
    return text.length > 14 ? text.slice(0, 12) + "…" : text;
  }

  function truncate(text, max) {
    const value = String(text || "");
    return value.length > max ? value.slice(0, max - 1) + "…" : value;
  }

  function statusBadge(status) {
    const safe = String(status || "unknown").replace(/[^a-z_]/g, "");
    return el("span", { class: `status status-${safe}`, text: status });
  }

  function jobLink(jobId, label) {
    return el("a", { href: "#/jobs/" + encodeURIComponent(jobId), class: "mono job-link", title: jobId }, label || shortId(jobId));
  }

  let flashTimer = null;
  function flash(message, isError) {
    const node = document.getElementById("flash");
    node.textContent = message;
    node.className = isError ? "flash-error" : "";
    node.hidden = false;
    if (flashTimer) clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { node.hidden = true; }, 15000);
  }

  // A button running an API action: disabled while it runs, the outcome shown in the flash line,
  // then the view refreshed. A confirmation is asked for destructive actions.
  function actionButton(label, run, options) {
    const opts = options || {};
    const button = el("button", { type: "button", class: opts.danger ? "danger" : null, dataset: { action: opts.action || label.toLowerCase() } }, label);
    button.addEventListener("click", async () => {
      if (opts.confirm && !window.confirm(opts.confirm)) return;
      button.disabled = true;
      try {
        const message = await run();
        flash(message || `${label}: done`, false);
      } catch (err) {
        flash(`${label} failed: ${err && err.message ? err.message : err}`, true);
      } finally {
        button.disabled = false;
        Dashboard.refresh();
      }
    });
    return button;
  }

  // Re-render a section only when its data changed, so open <details>, focus and selections survive
  // the auto-refresh.
  const rendered = new WeakMap();
  function renderIfChanged(node, data, render) {
    const signature = JSON.stringify(data);
    if (rendered.get(node) === signature) return;
    rendered.set(node, signature);
    render();
  }

  function forget(node) {
    rendered.delete(node);
  }

  function sectionNote(id, text) {
    const node = document.getElementById(id);
    if (node) node.textContent = text || "";
  }

  function emptyRow(tbody, columns, text) {
    tbody.append(el("tr", { class: "empty" }, el("td", { colspan: columns, class: "muted", text })));
  }

  window.Dashboard = {
    apiBase, api, ApiError, el, clear, fmtTime, fmtSeconds, fmtDuration, shortId, truncate,
    statusBadge, jobLink, flash, actionButton, renderIfChanged, forget, sectionNote, emptyRow,
    refresh: () => {},
  };
})();
