// The status page refreshes its panel by itself (short polling of /status/panel); a lost login reloads the page.
(function () {
  "use strict";
  const panel = document.getElementById("status-panel");
  if (!panel) return;
  const note = document.getElementById("status-updated");
  const seconds = Number(panel.dataset.seconds) || 5;
  function refresh() {
    fetch(panel.dataset.url, { headers: { Accept: "text/html" }, credentials: "same-origin" }).then(function (r) {
      if (r.redirected || r.status === 401) { window.location.reload(); return null; }
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }).then(function (html) {
      if (html === null) return;
      panel.innerHTML = html;
      note.textContent = "Updated " + new Date().toLocaleTimeString() + "; refreshes every " + seconds + " s.";
    }).catch(function (err) {
      note.textContent = "Could not refresh (" + err.message + "); trying again in " + seconds + " s.";
    }).finally(function () { window.setTimeout(refresh, seconds * 1000); });
  }
  window.setTimeout(refresh, seconds * 1000);
})();
