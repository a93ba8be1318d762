// The review queue's keys: N normal, A abnormal (then 1-0 and - tick anomaly types, Enter records, Esc cancels),
// S skip, Z undo. A decision is posted in the background and the next electrode, whose scan this page has
// already fetched and decoded, is swapped in place: no page load between two electrodes. Without fetch (or on
// any surprise) the forms and links work as plain HTML. One decision at a time: a key pressed while one is on
// its way does nothing.
(function () {
  "use strict";
  let busy = false;
  let ahead = null;  // the next electrode's scan, decoded in advance

  function el(id) { return document.getElementById(id); }
  function panel() { return el("abnormal-panel"); }

  function readAhead() {
    const link = document.querySelector('link[rel="prefetch"][data-next-scan]');
    ahead = null;
    if (!link) return;
    ahead = new Image();
    ahead.src = link.href;
    if (ahead.decode) ahead.decode().catch(function () {});
  }

  function problem(text) {
    let box = document.querySelector(".flashes");
    if (!box) {
      box = document.createElement("div");
      box.className = "flashes";
      document.querySelector("main").before(box);
    }
    const p = document.createElement("p");
    p.className = "flash error";
    p.setAttribute("role", "alert");
    p.textContent = text;
    box.replaceChildren(p);
  }

  function swapIn(doc, url) {
    const main = doc.querySelector("main");
    document.querySelector("main").replaceWith(main);
    const old = document.querySelector(".flashes"), fresh = doc.querySelector(".flashes");
    if (old) old.remove();
    if (fresh) main.before(fresh);
    document.title = doc.title;
    document.querySelectorAll('link[rel="prefetch"]').forEach(function (l) { l.remove(); });
    doc.querySelectorAll('link[rel="prefetch"]').forEach(function (l) { document.head.appendChild(l); });
    history.replaceState(null, "", url);
    if (window.inspectorViewer) window.inspectorViewer.attach();
    wire();
    readAhead();
  }

  // Post a form (or GET a link) and show the queue page it answers with; an error page's message is shown
  // over the current electrode, which stays.
  function go(url, init) {
    if (busy) return;
    busy = true;
    fetch(url, Object.assign({ credentials: "same-origin", headers: { Accept: "text/html" } }, init || {}))
      .then(function (r) {
        return r.text().then(function (html) {
          const doc = new DOMParser().parseFromString(html, "text/html");
          if (r.ok && doc.getElementById("queue-root")) {
            swapIn(doc, r.url);
          } else if (r.ok) {
            window.location.assign(r.url);  // somewhere else (the login page): go there for real
          } else {
            const msg = doc.getElementById("error-message");
            problem(msg ? msg.textContent : "The station answered " + r.status + ".");
          }
        });
      })
      .catch(function (err) {
        problem("The station did not answer (" + err.message + "); the decision may not be recorded: reload the page.");
      })
      .finally(function () { busy = false; });
  }

  function submit(form) {
    if (!form || busy) return;
    if (!window.fetch || !window.DOMParser) { busy = true; form.submit(); return; }
    go(form.action, { method: "POST", body: new FormData(form) });
  }

  function wire() {
    ["form-normal", "form-abnormal", "form-undo"].forEach(function (id) {
      const form = el(id);
      if (form) form.addEventListener("submit", function (e) { e.preventDefault(); submit(form); });
    });
    const skip = el("btn-skip");
    if (skip) skip.addEventListener("click", function (e) { e.preventDefault(); go(skip.href); });
  }

  function openPanel() {
    panel().open = true;
    const first = panel().querySelector("input[type=checkbox]");
    if (first) first.focus();
  }

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || busy || !el("queue-root")) return;
    const t = e.target;
    const typing = t.matches && t.matches("input[type=text], input:not([type]), textarea, select");
    const p = panel();
    if (p && p.open) {
      if (e.key === "Escape") { e.preventDefault(); p.open = false; document.activeElement.blur(); return; }
      if (e.key === "Enter" && !typing) { e.preventDefault(); submit(el("form-abnormal")); return; }
      if (typing) return;
      const box = p.querySelector('input[data-key="' + CSS.escape(e.key) + '"]');
      if (box) { e.preventDefault(); box.checked = !box.checked; box.focus(); return; }
      if (e.key.toLowerCase() === "a") { e.preventDefault(); return; }
    }
    if (typing) return;
    switch (e.key.toLowerCase()) {
      case "n": if (el("form-normal")) { e.preventDefault(); submit(el("form-normal")); } break;
      case "a": if (p) { e.preventDefault(); openPanel(); } break;
      case "s": if (el("btn-skip")) { e.preventDefault(); go(el("btn-skip").href); } break;
      case "z": if (el("form-undo")) { e.preventDefault(); submit(el("form-undo")); } break;
    }
  });
  wire();
  readAhead();
})();
