// Live updates for ieum's pages. The pages are complete without this script; it only
// keeps them current: on each event from the server's stream (and every 15 s, for
// signals) it fetches the same page again and swaps every element marked data-live by id,
// and it keeps relative times and uptimes ticking between fetches.
(function () {
  "use strict";
  var body = document.body;
  var status = document.getElementById("live");

  function fmt(s) {
    s = Math.max(0, Math.floor(s));
    var d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24,
        m = Math.floor(s / 60) % 60, x = s % 60;
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    if (m > 0) return m + "m " + x + "s";
    return x + "s";
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-rel]").forEach(function (t) {
      var at = Date.parse(t.getAttribute("datetime"));
      if (isNaN(at)) return;
      var s = (now - at) / 1000;
      t.textContent = s < 0 ? "in " + fmt(-s) : s < 5 ? "just now" : fmt(s) + " ago";
    });
    document.querySelectorAll("[data-since]").forEach(function (c) {
      var at = Date.parse(c.getAttribute("data-since"));
      if (!isNaN(at)) c.textContent = fmt((now - at) / 1000);
    });
  }

  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { headers: { "Accept": "text/html" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (old) {
          var fresh = doc.getElementById(old.id);
          if (!fresh) return;
          var seen = {};
          old.querySelectorAll("[data-id]").forEach(function (e) { seen[e.getAttribute("data-id")] = 1; });
          fresh.querySelectorAll("[data-id]").forEach(function (e) {
            if (!seen[e.getAttribute("data-id")] && Object.keys(seen).length) e.classList.add("new");
          });
          old.replaceWith(document.importNode(fresh, true));
        });
        tick();
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; setTimeout(refresh, 500); }
      });
  }

  var timer = null;
  function soon() {
    if (timer) return;
    timer = setTimeout(function () { timer = null; refresh(); }, 400);
  }

  var stream = body.getAttribute("data-stream");
  if (stream && window.EventSource) {
    var es = new EventSource(stream);
    var kinds = (body.getAttribute("data-kinds") || "").split(" ");
    kinds.forEach(function (k) { if (k) es.addEventListener(k, soon); });
    es.onmessage = soon;
    es.onopen = function () { if (status) status.textContent = "● live"; };
    es.onerror = function () { if (status) status.textContent = "○ reconnecting"; };
  }
  setInterval(tick, 5000);
  setInterval(function () { if (!document.hidden) refresh(); }, 15000);
})();
