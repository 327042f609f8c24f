// ReleaseControl admin: live updates without a reload, ticking soaks, steps and approval
// expiries, a live filter.
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
    // A change form is re-read only when what it offers changed (a canary came or went,
    // a version was published) and nothing was typed into it: typing is never lost.
    document.querySelectorAll("form[data-live-form]").forEach(function (old) {
      const next = fresh.getElementById(old.id);
      if (next && next.dataset.shape !== old.dataset.shape && !edited(old)) old.replaceWith(next);
    });
    tick();
  }

  function edited(form) {
    return Array.prototype.some.call(form.elements, function (el) {
      if (el.type === "hidden" || !el.name) return false;
      if (el.options) {  // a select starts on its `selected` option, else on its first
        let initial = 0;
        Array.prototype.forEach.call(el.options, function (o, i) { if (o.defaultSelected) initial = i; });
        return el.selectedIndex !== initial;
      }
      if (el.type === "checkbox" || el.type === "radio") return el.checked !== el.defaultChecked;
      return el.value !== el.defaultValue;
    });
  }

  function countdown(el, at, over, prefix) {
    const left = Math.ceil((Date.parse(at) - Date.now()) / 1000);
    if (left <= 0) { el.textContent = over; return; }
    const h = Math.floor(left / 3600), m = Math.floor(left % 3600 / 60), s = left % 60;
    el.textContent = prefix + (h ? h + "h " + m + "m" : m ? m + "m " + s + "s" : s + "s");
  }

  function tick() {
    document.querySelectorAll("[data-soak-ends]").forEach(function (el) {
      countdown(el, el.dataset.soakEnds, "over", "");
    });
    // The server moves a due step within a second; its change event then re-reads the page.
    document.querySelectorAll("[data-step-due]").forEach(function (el) {
      countdown(el, el.dataset.stepDue, "due now", "in ");
    });
    document.querySelectorAll("[data-expires]").forEach(function (el) {
      countdown(el, el.dataset.expires, "expired", "in ");
    });
  }
  tick();
  setInterval(tick, 1000);

  // What arrives without a change event (hosts' beacons, a new approval request) is
  // re-read every data-poll seconds while the page is visible.
  const poll = Number(document.body.dataset.poll || 0);
  if (poll > 0) {
    setInterval(function () { if (!document.hidden) refreshLive(); }, poll * 1000);
  }

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
        " by " + c.actor + " (sequence " + c.sequence + ")" +
        (c.canary ? "; canary " + c.canary : "") + "; this page is updated.";
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
