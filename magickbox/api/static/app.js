// magickbox web UI: live log, confirmations, auto-refresh.  No libraries.
"use strict";

function followLog(pre) {
  const url = pre.dataset.events;
  const state = document.getElementById("log-state");
  const badge = document.getElementById("status");
  let started = false;
  const source = new EventSource(url);
  const atBottom = () => pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 30;
  source.addEventListener("log", (ev) => {
    const stick = atBottom();
    if (!started) { pre.textContent = ""; started = true; }
    pre.textContent += ev.data + "\n";
    if (stick) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("status", (ev) => {
    const s = JSON.parse(ev.data);
    if (badge && badge.textContent !== s.status) {
      badge.textContent = s.status;
      badge.className = "pill big st-" + s.status;
    }
    if (state && pre.dataset.final !== "yes") state.textContent = "live · " + s.status;
  });
  source.addEventListener("end", (ev) => {
    source.close();
    if (!started) pre.textContent = "(the job wrote no log)";
    if (state) state.textContent = "complete";
    // the job finished while we watched: reload once for its result, buttons and files
    if (pre.dataset.final !== "yes") window.setTimeout(() => window.location.reload(), 800);
  });
  source.onerror = () => { if (state) state.textContent = "reconnecting…"; };
}

document.addEventListener("DOMContentLoaded", () => {
  const pre = document.getElementById("log");
  if (pre && pre.dataset.events) followLog(pre);

  document.querySelectorAll("form.confirm").forEach((form) => {
    form.addEventListener("submit", (ev) => {
      if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
    });
  });

  // a whole job row opens the job (the #id link still works with the keyboard)
  document.querySelectorAll("tr.row[data-job]").forEach((row) => {
    row.addEventListener("click", (ev) => {
      if (ev.target.closest("a")) return;
      window.location.href = "/ui/jobs/" + row.dataset.job;
    });
  });

  const live = document.querySelector("[data-autorefresh]");
  if (live) {
    const timer = window.setTimeout(() => window.location.reload(), 1000 * Number(live.dataset.autorefresh));
    const stop = document.getElementById("stop-refresh");
    if (stop) stop.addEventListener("click", () => { window.clearTimeout(timer); live.textContent = "Auto-refresh stopped."; });
  }
});
