// The scan viewer: fit, 1:1 (one image pixel per screen pixel), zoom at the cursor, drag to pan, and the views
// (the converted window, the heat map, the quality gate's reasons) and the map's boxes (B). inspectorViewer.attach() binds it to the
// page's #viewer (again after the queue swaps in the next electrode); inspectorViewer.current is the live one.
(function () {
  "use strict";
  const MAX_SCALE = 32;

  function Viewer(viewer) {
    const stage = viewer.querySelector(".stage");
    const base = document.getElementById("img-window");
    const heat = document.getElementById("img-heat");
    const gate = document.getElementById("gate-panel");
    const boxes = document.getElementById("img-boxes");
    const problem = document.getElementById("viewer-problem");
    const level = document.getElementById("zoom-level");
    let scale = 1, x = 0, y = 0, fitted = true, view = "window";

    function size() { return [base.naturalWidth, base.naturalHeight]; }
    function fitScale() {
      const [w, h] = size(), r = viewer.getBoundingClientRect();
      return w && h ? Math.min(r.width / w, r.height / h) : 1;
    }
    function apply() {
      stage.style.transform = "translate(" + x + "px," + y + "px) scale(" + scale + ")";
      stage.classList.toggle("pixelated", scale * window.devicePixelRatio >= 2);
      const pct = Math.round(scale * window.devicePixelRatio * 100);
      level.textContent = fitted ? "fit (" + pct + "%)" : pct + "%";
    }
    function sizeBoxes() {  // the outlines are in the original image's pixels, as the window image is
      const [w, h] = size();
      if (!boxes || !w || !h) return;
      boxes.setAttribute("viewBox", "0 0 " + w + " " + h);
      boxes.setAttribute("width", w);
      boxes.setAttribute("height", h);
    }
    function toggleBoxes() {
      if (!boxes) return;
      boxes.hidden = !boxes.hidden;
      document.querySelectorAll("[data-boxes]").forEach(function (b) { b.classList.toggle("on", !boxes.hidden); });
    }
    function fit() {
      sizeBoxes();
      const [w, h] = size(), r = viewer.getBoundingClientRect();
      scale = fitScale();
      x = (r.width - w * scale) / 2;
      y = (r.height - h * scale) / 2;
      fitted = true;
      apply();
    }
    function zoomTo(next, cx, cy) {
      next = Math.max(Math.min(fitScale(), 1) / 2, Math.min(MAX_SCALE, next));
      x = cx - (cx - x) * next / scale;
      y = cy - (cy - y) * next / scale;
      scale = next;
      fitted = false;
      apply();
    }
    function center() { const r = viewer.getBoundingClientRect(); return [r.width / 2, r.height / 2]; }
    function zoomBy(factor) { const [cx, cy] = center(); zoomTo(scale * factor, cx, cy); }
    function oneToOne() { const [cx, cy] = center(); zoomTo(1 / window.devicePixelRatio, cx, cy); }
    function show(which) {
      if ((which === "heat" && !heat) || (which === "gate" && !gate)) return;
      view = which;
      if (heat) heat.hidden = which !== "heat";
      if (gate) gate.hidden = which !== "gate";
      document.querySelectorAll("[data-view]").forEach(function (b) { b.classList.toggle("on", b.dataset.view === which); });
    }
    function unavailable(img, what) {
      fetch(img.src, { headers: { Accept: "text/plain" } }).then(function (r) { return r.text(); }).then(function (text) {
        problem.textContent = what + ": " + text.trim();
        problem.hidden = false;
      }).catch(function () { problem.textContent = what + " could not be loaded"; problem.hidden = false; });
    }

    viewer.addEventListener("wheel", function (e) {
      e.preventDefault();
      const r = viewer.getBoundingClientRect();
      zoomTo(scale * (e.deltaY < 0 ? 1.25 : 0.8), e.clientX - r.left, e.clientY - r.top);
    }, { passive: false });
    let drag = null;
    viewer.addEventListener("pointerdown", function (e) {
      if (e.button !== 0) return;
      drag = { px: e.clientX, py: e.clientY, x: x, y: y };
      viewer.setPointerCapture(e.pointerId);
      viewer.classList.add("dragging");
    });
    viewer.addEventListener("pointermove", function (e) {
      if (!drag) return;
      x = drag.x + e.clientX - drag.px;
      y = drag.y + e.clientY - drag.py;
      fitted = false;
      apply();
    });
    function endDrag() { drag = null; viewer.classList.remove("dragging"); }
    viewer.addEventListener("pointerup", endDrag);
    viewer.addEventListener("pointercancel", endDrag);
    viewer.addEventListener("dblclick", function (e) {
      const r = viewer.getBoundingClientRect();
      if (fitted) zoomTo(1 / window.devicePixelRatio, e.clientX - r.left, e.clientY - r.top); else fit();
    });
    base.addEventListener("load", fit);
    base.addEventListener("error", function () { unavailable(base, "The scan cannot be shown"); });
    if (heat) heat.addEventListener("error", function () { unavailable(heat, "The heat map cannot be shown"); });
    if (base.complete && base.naturalWidth) fit();
    document.querySelectorAll("[data-view]").forEach(function (b) {
      b.addEventListener("click", function () { show(b.dataset.view); });
    });
    document.querySelectorAll("[data-boxes]").forEach(function (b) { b.addEventListener("click", toggleBoxes); });
    document.querySelectorAll("[data-zoom]").forEach(function (b) {
      b.addEventListener("click", function () {
        ({ fit: fit, one: oneToOne, in: function () { zoomBy(1.25); }, out: function () { zoomBy(0.8); } })[b.dataset.zoom]();
      });
    });
    return { fit: fit, oneToOne: oneToOne, zoomBy: zoomBy, show: show, toggleBoxes: toggleBoxes,
             refit: function () { if (fitted) fit(); },
             state: function () { return { scale: scale, x: x, y: y, fitted: fitted, view: view }; } };
  }

  const api = {
    current: null,
    attach: function () {
      const viewer = document.getElementById("viewer");
      api.current = viewer ? Viewer(viewer) : null;
      return api.current;
    },
  };
  window.inspectorViewer = api;
  window.addEventListener("resize", function () { if (api.current) api.current.refit(); });
  // Keys that only look, on every page with a viewer (queue.js adds the decisions).
  document.addEventListener("keydown", function (e) {
    const v = api.current;
    if (!v || e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
    if (e.target.closest && e.target.closest("input, textarea, select")) return;
    if (document.querySelector("#abnormal-panel[open]")) return;  // its keys pick anomaly types (queue.js)
    const act = { w: function () { v.show("window"); }, h: function () { v.show("heat"); },
                  r: function () { v.show("gate"); }, b: v.toggleBoxes, f: v.fit, "1": v.oneToOne, "+": function () { v.zoomBy(1.25); },
                  "=": function () { v.zoomBy(1.25); }, "-": function () { v.zoomBy(0.8); } }[e.key.toLowerCase()];
    if (act) { e.preventDefault(); act(); }
  });
  api.attach();
})();
