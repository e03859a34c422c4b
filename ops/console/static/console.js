// Live sections: every element with data-refresh is re-fetched from that URL every 3 s and
// replaced with the server's rendering (the server escapes everything it renders).
"use strict";
function refresh(section) {
  fetch(section.dataset.refresh, { headers: { Accept: "text/html" } })
    .then((response) => (response.ok ? response.text() : Promise.reject(response.status)))
    .then((html) => {
      // Keep open <details> open across refreshes.
      const open = new Set([...section.querySelectorAll("details[open]")].map((d) => d.closest("[data-group]")?.dataset.group));
      section.innerHTML = html;
      section.querySelectorAll("[data-group]").forEach((row) => {
        if (open.has(row.dataset.group)) row.querySelector("details")?.setAttribute("open", "");
      });
      section.classList.remove("stale");
    })
    .catch(() => section.classList.add("stale"));
}
function localTimes(root) {
  root.querySelectorAll("time[data-unix]").forEach((t) => {
    t.textContent = new Date(Number(t.dataset.unix) * 1000).toLocaleTimeString();
  });
}
document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  document.querySelectorAll("[data-refresh]").forEach((section) => {
    setInterval(() => {
      refresh(section);
      localTimes(section);
    }, 3000);
  });
});
