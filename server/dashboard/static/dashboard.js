// EndoFed dashboard: live run page (polls the JSON summary every 2 s) and case viewer.
// Hand-written, no libraries; everything it fetches comes from this dashboard.
"use strict";

function ago(epoch) {
  if (!epoch) return "never";
  const s = Math.max(0, Date.now() / 1000 - epoch);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return new Date(epoch * 1000).toISOString().slice(0, 16).replace("T", " ");
}

function fillTimes() {
  document.querySelectorAll("[data-epoch]").forEach(el => {
    el.textContent = ago(parseFloat(el.dataset.epoch));
  });
}

function setStatus(el, status) {
  el.textContent = status;
  el.className = "status " + status;
}

// A request that never answers (a dashboard restarted mid-request, a stalled proxy) must
// not freeze the page: without a timeout `busy` would stay set and polling stop for good.
const FETCH_TIMEOUT_MS = 10000;

function fetchWithTimeout(url, options = {}) {
  return fetch(url, {...options, signal: AbortSignal.timeout(FETCH_TIMEOUT_MS)});
}

function runPage(root) {
  let version = root.dataset.version;
  let busy = false;
  async function refreshLive() {
    const r = await fetchWithTimeout(root.dataset.live, {credentials: "same-origin"});
    if (r.ok) document.getElementById("live").innerHTML = await r.text();
  }
  async function poll() {
    if (busy) return;
    busy = true;
    try {
      const r = await fetchWithTimeout(root.dataset.summary, {credentials: "same-origin"});
      if (!r.ok) return;
      const s = await r.json();
      document.getElementById("round-counter").textContent = s.round;
      document.getElementById("round-total").textContent = s.total_rounds || "?";
      document.getElementById("round-bar").style.width =
        (s.total_rounds ? (100 * s.round / s.total_rounds) : 0) + "%";
      setStatus(document.getElementById("run-status"), s.status);
      document.getElementById("status-reason").textContent = s.status_reason;
      document.getElementById("progress-line").textContent = s.progress_line;
      if (s.version !== version) {  // a new round, status or event: re-render
        version = s.version;
        root.dataset.version = version;
        root.dataset.round = s.round;
        root.dataset.status = s.status;
        await refreshLive();
      }
    } catch (e) {
      // the dashboard may restart; keep polling
    } finally {
      busy = false;
    }
  }
  setInterval(poll, 2000);
}

function casePage(form) {
  const run = document.getElementById("case-run");
  run.addEventListener("change", () => {
    window.location.search = "?run=" + encodeURIComponent(run.value);
  });
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const file = document.getElementById("case-file").files[0];
    const err = document.getElementById("case-error");
    const busy = document.getElementById("case-busy");
    const out = document.getElementById("case-result");
    err.hidden = true;
    if (!file) { err.textContent = "Choose an image first."; err.hidden = false; return; }
    const model = document.getElementById("case-model").value;
    const url = form.dataset.predict + "?run=" + encodeURIComponent(run.value) +
                "&model=" + encodeURIComponent(model);
    busy.hidden = false;
    try {
      const r = await fetch(url, {method: "POST", body: file, credentials: "same-origin",
                                  headers: {"Content-Type": "application/octet-stream",
                                            "X-Filename": file.name}});
      const data = await r.json();
      if (!r.ok) throw new Error(data.detail || ("HTTP " + r.status));
      const verdict = document.getElementById("case-verdict");
      verdict.textContent = data.verdict;
      verdict.className = "verdict " + (data.lesion ? "lesion" : "clear");
      document.getElementById("case-view").src = data.view;
      const rows = [
        ["Image", file.name + " (" + data.width + " × " + data.height + " px)"],
        ["Model", data.run + " · " + data.model],
        ["Lesion probability", data.lesion_probability],
        ["Threshold (rule)", data.threshold + " (" + data.threshold_rule + ")"],
        ["Boxes", data.boxes.length ? data.boxes.map((b, i) =>
          data.labels[i] + " " + data.scores[i] + " [" + b.join(", ") + "]").join("; ") : "none"],
        ["Lesion area", (100 * data.lesion_area_fraction).toFixed(1) + " % of the image"],
        ["Latency", data.latency_ms + " ms"],
      ];
      const body = document.querySelector("#case-details tbody");
      body.innerHTML = "";
      rows.forEach(([k, v]) => {
        const tr = document.createElement("tr");
        const th = document.createElement("th"); th.textContent = k;
        const td = document.createElement("td"); td.textContent = v;
        tr.append(th, td); body.append(tr);
      });
      out.hidden = false;
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    } finally {
      busy.hidden = true;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  fillTimes();
  setInterval(fillTimes, 10000);
  const root = document.getElementById("run");
  if (root) runPage(root);
  const form = document.getElementById("case-form");
  if (form) casePage(form);
});
