// Live updates for the agentfsm inbox. Every page works without this script: it only
// listens to the page's event stream (data-events on <body>) and, when something happened,
// fetches the same page again and swaps in the parts whose data-version changed. The HTML
// comes from the server, escaped there; nothing here builds markup from event data.
"use strict";

(function () {
  const source = document.body.dataset.events;
  if (!source || !window.EventSource || !window.fetch || !window.DOMParser) {
    return;
  }
  const status = document.getElementById("live-status");
  let pending = null;
  let busy = false;
  let again = false;

  function say(text) {
    if (status) {
      status.textContent = text;
    }
  }

  function byId(container) {
    const found = new Map();
    for (const child of container.querySelectorAll(":scope > [data-id]")) {
      found.set(child.dataset.id, child);
    }
    return found;
  }

  function reconcileList(current, fresh) {
    const old = byId(current);
    const wanted = byId(fresh);
    for (const [id, node] of old) {
      if (!wanted.has(id)) {
        node.remove();
      }
    }
    let previous = null;
    for (const [id, node] of wanted) {
      let here = old.get(id);
      if (!here || here.dataset.version !== node.dataset.version) {
        const copy = document.importNode(node, true);
        if (here) {
          here.replaceWith(copy);
        } else if (previous) {
          previous.after(copy);
        } else {
          current.prepend(copy);
        }
        here = copy;
      } else if (previous && previous.nextElementSibling !== here) {
        previous.after(here);
      }
      previous = here;
    }
    const empty = current.querySelector(":scope > .empty");
    if (wanted.size > 0 && empty) {
      empty.remove();
    } else if (wanted.size === 0 && !empty) {
      const note = document.createElement("p");
      note.className = "empty";
      note.textContent = current.dataset.empty || "";
      current.append(note);
    }
  }

  function reconcile(fresh) {
    for (const section of document.querySelectorAll("[data-live]")) {
      const name = section.dataset.live;
      const replacement = fresh.querySelector(`[data-live="${CSS.escape(name)}"]`);
      if (replacement && replacement.dataset.version !== section.dataset.version) {
        section.replaceWith(document.importNode(replacement, true));
      }
    }
    for (const list of document.querySelectorAll("[data-live-list]")) {
      const name = list.dataset.liveList;
      const replacement = fresh.querySelector(`[data-live-list="${CSS.escape(name)}"]`);
      if (replacement) {
        reconcileList(list, replacement);
      }
    }
  }

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
      if (response.ok) {
        const text = await response.text();
        reconcile(new DOMParser().parseFromString(text, "text/html"));
        document.body.dataset.refreshed = String(Date.now());
      }
    } catch (error) {
      say("live updates paused: " + error);
    } finally {
      busy = false;
      if (again) {
        again = false;
        schedule();
      }
    }
  }

  function schedule() {
    if (pending === null) {
      pending = window.setTimeout(function () {
        pending = null;
        refresh();
      }, 100);
    }
  }

  const events = new EventSource(source, { withCredentials: true });
  events.onopen = function () {
    say("live");
    document.body.dataset.live = "open";
  };
  events.onerror = function () {
    say("reconnecting…");
  };
  for (const kind of [
    "approval_requested",
    "approval_decided",
    "status_changed",
    "item_added",
    "run_finished",
    "reset",
  ]) {
    events.addEventListener(kind, schedule);
  }
  events.addEventListener("run_finished", function () {
    if (document.querySelector("[data-live=transcript]")) {
      events.close();
      say("the run has ended");
    }
  });
})();
