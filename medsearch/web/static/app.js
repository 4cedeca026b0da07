/* medsearch page behaviour: progressive key slices, the slice scroller, keyboard control.
   Everything here is an enhancement: without JavaScript the page still works through links and forms. */
"use strict";

function loadKeySlices() {
  // Thumbnails come with the page; key slices (full-resolution renders) only after they have arrived.
  document.querySelectorAll("img.key[data-src]").forEach(function (img) {
    img.src = img.getAttribute("data-src");
    img.removeAttribute("data-src");
  });
}

function setupViewer(viewer) {
  var img = document.getElementById("slice");
  var scroller = document.getElementById("scroller");
  var out = document.getElementById("slice-no");
  var region = viewer.querySelector("svg.region");
  var base = viewer.getAttribute("data-base");
  var depth = parseInt(viewer.getAttribute("data-depth"), 10);
  var key = parseInt(viewer.getAttribute("data-key"), 10);
  var win = viewer.getAttribute("data-window") || "lung";
  var windowForm = document.getElementById("windows");
  var cache = {};

  function url(i) { return base + i + ".png?window=" + encodeURIComponent(win); }
  function prefetch(i) {
    if (i < 0 || i >= depth) return;
    var u = url(i);
    if (!cache[u]) { cache[u] = new Image(); cache[u].src = u; }
  }
  function show(i) {
    i = Math.max(0, Math.min(depth - 1, i));
    scroller.value = String(i);
    out.textContent = String(i);
    img.src = url(i);
    img.alt = img.alt.replace(/\d+$/, String(i));
    if (region) region.classList.toggle("hidden", i !== key);
    windowForm.querySelector("input[name=slice]").value = String(i);
    prefetch(i + 1); prefetch(i - 1);
  }
  function setWindow(w) {
    win = w;
    windowForm.querySelectorAll("input[name=window]").forEach(function (r) { r.checked = (r.value === w); });
    show(parseInt(scroller.value, 10));
  }
  scroller.addEventListener("input", function () { show(parseInt(scroller.value, 10)); });
  windowForm.addEventListener("change", function (ev) {
    if (ev.target.name === "window") setWindow(ev.target.value);
  });
  windowForm.addEventListener("submit", function (ev) { ev.preventDefault(); });
  img.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    show(parseInt(scroller.value, 10) + (ev.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if (t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type !== "range" && t.type !== "radio"))) return;
    if (ev.altKey || ev.ctrlKey || ev.metaKey) return;
    var i = parseInt(scroller.value, 10);
    if (t !== scroller && (ev.key === "ArrowRight" || ev.key === "ArrowDown")) { show(i + 1); ev.preventDefault(); }
    else if (t !== scroller && (ev.key === "ArrowLeft" || ev.key === "ArrowUp")) { show(i - 1); ev.preventDefault(); }
    else if (ev.key === "PageDown") { show(i + 10); ev.preventDefault(); }
    else if (ev.key === "PageUp") { show(i - 10); ev.preventDefault(); }
    else if (ev.key === "Home") { show(0); ev.preventDefault(); }
    else if (ev.key === "End") { show(depth - 1); ev.preventDefault(); }
    else if (ev.key === "l" || ev.key === "L") setWindow("lung");
    else if (ev.key === "m" || ev.key === "M") setWindow("mediastinum");
    else if (ev.key === "k" || ev.key === "K") show(key);
  });
  prefetch(key + 1); prefetch(key - 1);
}

document.addEventListener("DOMContentLoaded", function () {
  var viewer = document.getElementById("viewer");
  if (viewer) setupViewer(viewer);
  var breakglass = document.getElementById("breakglass");
  if (breakglass) breakglass.addEventListener("toggle", function () {
    if (breakglass.open) document.getElementById("reason").focus();
  });
});
if (document.readyState === "complete") loadKeySlices(); else window.addEventListener("load", loadKeySlices);
