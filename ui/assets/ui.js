// saga-node ui script, version 2. No dependencies; the pages work without
// it (the confirmation box is checked on the server too).
//
// Version 2: an action on a saga's page is sent in the background (asking
// for a JSON answer), and its outcome shown in place, so that the page keeps following the saga (a
// signal that lets it complete shows it completing without a reload).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var live = document.getElementById("live");
  var timer = null;
  var failures = 0;
  // Refresh the live part of a running saga's page until it ends; a
  // refresh that fails (a node restarting) is tried again, up to 5 in a
  // row.
  function refresh() {
    if (!live || !live.dataset.live) return;
    fetch(live.dataset.live, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error(r.status);
      return r.text();
    }).then(function (html) {
      failures = 0;
      // The fragment is rendered and escaped by the server's templates.
      live.innerHTML = html;
      var st = document.getElementById("status");
      if (st && st.textContent !== "running") stop();
    }).catch(function () {
      if (++failures >= 5) stop();
    });
  }
  function follow() {
    if (live && live.dataset.live && timer === null) timer = setInterval(refresh, 2000);
  }
  function stop() {
    if (timer !== null) clearInterval(timer);
    timer = null;
  }
  // Say how an action went, in the page's status line.
  function say(text, failed) {
    var p = document.getElementById("action-result");
    if (!p) {
      p = document.createElement("p");
      p.id = "action-result";
      p.setAttribute("role", "status");
      document.querySelector("h1").insertAdjacentElement("afterend", p);
    }
    p.className = failed ? "message error" : "message";
    p.textContent = text;
  }
  // Ask before any action, then send it in the background, asking for
  // JSON: the server answers with the outcome ({"message"} or {"error"})
  // rather than a page to follow.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (!window.confirm(f.getAttribute("data-confirm"))) return;
      var body = new URLSearchParams(new FormData(f));
      fetch(f.action, {
        method: "POST", body: body, credentials: "same-origin",
        headers: { "Accept": "application/json" }
      }).then(function (r) {
        return r.json().then(function (res) {
          if (!r.ok) {
            say("Refused (" + r.status + "): " + (res.error || r.statusText), true);
            return;
          }
          say(res.message || "Done.", false);
          refresh();
          follow();
        });
      }).catch(function (e) { say("Not sent, or no answer: " + e, true); });
    });
  });
  follow();
});
