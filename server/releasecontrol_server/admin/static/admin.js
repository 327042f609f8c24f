// ReleaseControl admin: live updates without a reload, a ticking soak, and a live filter.
// The server renders everything; this only re-reads the page and swaps the [data-live] parts.
"use strict";
(function () {
  const status = document.getElementById("live-status");

  async function refreshLive(url) {
    const response = await fetch(url || location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    document.querySelectorAll("[data-live]").forEach(function (old) {
      const next = old.id && fresh.getElementById(old.id);
      if (next) old.replaceWith(next);
    });
    tick();
  }

  function tick() {
    const now = Date.now();
    document.querySelectorAll("[data-soak-ends]").forEach(function (el) {
      const left = Math.ceil((Date.parse(el.dataset.soakEnds) - now) / 1000);
      if (left <= 0) { el.textContent = "over"; return; }
      const h = Math.floor(left / 3600), m = Math.floor(left % 3600 / 60), s = left % 60;
      el.textContent = h ? h + "h " + m + "m" : m ? m + "m " + s + "s" : s + "s";
    });
  }
  tick();
  setInterval(tick, 1000);

  const events = document.body.dataset.events;
  if (events && window.EventSource) {
    const source = new EventSource(events);
    let connected = false;
    source.addEventListener("hello", function () {
      // After a reconnect (server restart), changes may have been missed: re-read.
      if (connected) refreshLive();
      connected = true;
      document.body.dataset.live = "connected";
    });
    source.addEventListener("error", function () { document.body.dataset.live = "reconnecting"; });
    source.addEventListener("change", function (e) {
      const c = JSON.parse(e.data);
      status.textContent = c.feature_id + ": " + c.action.replace("_", " ") + " " + c.version +
        " by " + c.actor + " (sequence " + c.sequence + "); this page is updated.";
      refreshLive();
    });
    source.addEventListener("refresh", function () {
      status.textContent = "Manifests were hot-refreshed; hosts were told to re-read the CDN.";
    });
    source.addEventListener("resync", function () { location.reload(); });
  }

  const filter = document.querySelector("form[data-live-filter]");
  if (filter) {
    let timer = null;
    filter.querySelector("input[type=search]").addEventListener("input", function (e) {
      clearTimeout(timer);
      timer = setTimeout(function () {
        const url = new URL(filter.action, location.href);
        if (e.target.value) url.searchParams.set("q", e.target.value);
        history.replaceState(null, "", url);
        refreshLive(url.href);
      }, 200);
    });
  }
}());
