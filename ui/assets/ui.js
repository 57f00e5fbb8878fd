// saga-node ui script, version 1. No dependencies; the pages work without
// it (the confirmation box is checked on the server too).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Ask before any action.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (ev) {
      if (!window.confirm(f.getAttribute("data-confirm"))) ev.preventDefault();
    });
  });
  // Refresh the live part of a running saga's page until it ends.
  var live = document.getElementById("live");
  if (!live || !live.dataset.live) return;
  var url = live.dataset.live;
  var timer = setInterval(function () {
    fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error(r.status);
      return r.text();
    }).then(function (html) {
      // The fragment is rendered and escaped by the server's templates.
      live.innerHTML = html;
      var st = document.getElementById("status");
      if (st && st.textContent !== "running") clearInterval(timer);
    }).catch(function () { clearInterval(timer); });
  }, 2000);
});
