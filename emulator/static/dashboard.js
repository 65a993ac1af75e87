// The emulator's live dashboard: listens to the server's events and swaps in each region's
// new HTML. The server renders (and escapes) everything; this script only places it.
"use strict";
(function () {
  // The status is announced (role=status) only when the connection changes; the time of the
  // last update sits beside it, outside the live region, so updates are not read out 4 times
  // a second.
  const status = document.getElementById("live-status");
  const updated = document.getElementById("updated");
  const regions = new Map(
    Array.from(document.querySelectorAll("[data-region]"), (el) => [el.dataset.region, el])
  );

  function setStatus(text, state) {
    if (status.textContent !== text) status.textContent = text;
    status.className = state;
  }

  // Replacing a region would drop keyboard focus from a link in it: put it back on the same
  // link (same href) if the new HTML still has one.
  function replace(region, html) {
    const active = document.activeElement;
    const href = active && region.contains(active) ? active.getAttribute("href") : null;
    region.innerHTML = html;
    if (href !== null) {
      const again = region.querySelector('a[href="' + CSS.escape(href) + '"]');
      if (again) again.focus();
    }
  }

  const source = new EventSource("/_emulator/dashboard/events" + window.location.search);
  source.addEventListener("open", () => setStatus("Live", "live"));
  source.addEventListener("update", (event) => {
    const update = JSON.parse(event.data);
    for (const [name, html] of Object.entries(update.regions)) {
      const region = regions.get(name);
      if (region) replace(region, html);
    }
    setStatus("Live", "live");
    updated.textContent = "· updated " + new Date().toLocaleTimeString();
  });
  // EventSource reconnects by itself (the server asks for 2 s); just say so meanwhile.
  source.addEventListener("error", () => setStatus("Disconnected · reconnecting…", "down"));
  window.addEventListener("pagehide", () => source.close());
})();
