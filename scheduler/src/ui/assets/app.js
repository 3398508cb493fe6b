// Kiln dashboard: live values over Server-Sent Events. Elements with data-live="key" show the
// value of that key in each event; the node line says which node answered and how fresh it is.
// Only textContent is written, so nothing the server sends is ever parsed as HTML.
"use strict";
(function () {
  if (!window.EventSource) return;
  var node = document.getElementById("node");
  var chart = document.querySelector("img.chart");
  var lastMinute = null;
  var source = new EventSource("/ui/events");
  source.addEventListener("snapshot", function (e) {
    var data;
    try { data = JSON.parse(e.data); } catch (err) { return; }
    var values = data.values || {};
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var key = el.getAttribute("data-live");
      if (Object.prototype.hasOwnProperty.call(values, key)) el.textContent = values[key];
    });
    document.querySelectorAll("[data-live-value]").forEach(function (el) {
      var key = el.getAttribute("data-live-value");
      if (Object.prototype.hasOwnProperty.call(values, key)) el.value = Number(values[key]);
    });
    if (node && data.node) { node.textContent = data.node; node.classList.remove("stale"); }
    if (chart && data.minute !== lastMinute) {
      if (lastMinute !== null) chart.src = "/ui/chart.svg?m=" + encodeURIComponent(data.minute);
      lastMinute = data.minute;
    }
  });
  source.onerror = function () {
    if (node) { node.classList.add("stale"); node.textContent = "Live updates interrupted; reconnecting… " + node.textContent.replace(/^Live updates interrupted; reconnecting… /, ""); }
  };
})();
