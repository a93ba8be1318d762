// The review queue's keys: N normal, A abnormal (then 1-0 and - pick anomaly types, Enter records, Esc cancels),
// S skip, Z undo. One decision per page: a second key press while the first is on its way does nothing.
(function () {
  "use strict";
  const normal = document.getElementById("form-normal");
  const abnormal = document.getElementById("form-abnormal");
  const panel = document.getElementById("abnormal-panel");
  const skip = document.getElementById("btn-skip");
  const undo = document.getElementById("form-undo");
  let busy = false;

  function submit(form) {
    if (form && !busy) form.requestSubmit();
  }
  [normal, abnormal, undo].forEach(function (form) {
    if (!form) return;
    form.addEventListener("submit", function (e) {
      if (busy) { e.preventDefault(); return; }  // a decision is on its way already
      busy = true;
      window.setTimeout(function () { form.querySelectorAll("button").forEach(function (b) { b.disabled = true; }); }, 0);
    });
  });
  function openPanel() {
    panel.open = true;
    const first = panel.querySelector("input[type=checkbox]");
    if (first) first.focus();
  }
  function closePanel() { panel.open = false; document.activeElement.blur(); }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || busy) return;
    const t = e.target;
    const typing = t.matches && t.matches("input[type=text], input:not([type]), textarea, select");
    if (panel && panel.open) {
      if (e.key === "Escape") { e.preventDefault(); closePanel(); return; }
      if (e.key === "Enter" && !typing) { e.preventDefault(); submit(abnormal); return; }
      if (typing) return;
      const box = panel.querySelector('input[data-key="' + CSS.escape(e.key) + '"]');
      if (box) { e.preventDefault(); box.checked = !box.checked; box.focus(); return; }
      if (e.key.toLowerCase() === "a") { e.preventDefault(); return; }
    }
    if (typing) return;
    switch (e.key.toLowerCase()) {
      case "n": if (normal) { e.preventDefault(); submit(normal); } break;
      case "a": if (panel) { e.preventDefault(); openPanel(); } break;
      case "s": if (skip) { e.preventDefault(); busy = true; window.location.href = skip.href; } break;
      case "z": if (undo) { e.preventDefault(); submit(undo); } break;
    }
  });
})();
