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

  // Replacing a region would drop keyboard focus from a link (or the scrollable rows box) in
  // it, and scroll a wide rows table back to its start: keep both where the reader left them.
  function replace(region, html) {
    const active = document.activeElement;
    const inside = active && region.contains(active);
    const href = inside ? active.getAttribute("href") : null;
    const boxFocused = inside && active.classList.contains("scroll");
    const scrolls = Array.from(region.querySelectorAll(".scroll"), (box) => box.scrollLeft);
    region.innerHTML = html;
    region.querySelectorAll(".scroll").forEach((box, i) => {
      if (i < scrolls.length) box.scrollLeft = scrolls[i];
    });
    if (href !== null) {
      const again = region.querySelector('a[href="' + CSS.escape(href) + '"]');
      if (again) again.focus();
    } else if (boxFocused) {
      const box = region.querySelector(".scroll");
      if (box) box.focus();
    }
  }

  let source = null;
  function connect() {
    source = new EventSource("/_emulator/dashboard/events" + window.location.search);
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
  }
  connect();
  window.addEventListener("pagehide", () => source.close());
  // Back to the page from the back/forward cache: the closed stream is opened again.
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) connect();
  });
})();
