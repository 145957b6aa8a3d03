// Weir console: the live parts. Every page works without this script;
// with it the runs list refreshes itself, a run's page follows the run's
// event stream, and the SQL editor numbers its lines.
"use strict";

const REFRESH_MS = 2000;
const MAX_LOG_LINES = 2000;

// Fetches a fragment of the page; a session that ended reloads the page,
// which then asks to sign in.
async function fragment(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
  if (response.redirected || response.status === 401) {
    window.location.reload();
    return null;
  }
  return response.ok ? response.text() : null;
}

function liveRuns() {
  const body = document.querySelector("tbody[data-live]");
  if (!body) return;
  const url = body.dataset.live;
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const html = await fragment(url);
      if (html !== null && html !== body.innerHTML) body.innerHTML = html;
    } catch (_) {
      // The server restarting: the next tick tries again.
    } finally {
      busy = false;
    }
  }, REFRESH_MS);
}

function liveRun() {
  const panel = document.querySelector("#panel[data-events]");
  if (!panel) return;
  const log = document.getElementById("log");
  let pending = null;
  let ended = false;

  const refresh = () => {
    if (pending) return;
    pending = setTimeout(async () => {
      try {
        const html = await fragment(panel.dataset.panel);
        if (html !== null) panel.innerHTML = html;
      } finally {
        pending = null;
        if (isEnded()) finish();
      }
    }, 250);
  };
  const isEnded = () => {
    const state = panel.querySelector("#state");
    return state && state.dataset.ended === "true";
  };
  const finish = () => {
    const cancel = document.getElementById("cancel");
    if (cancel) cancel.remove();
  };

  const events = new EventSource(panel.dataset.events);
  events.addEventListener("log", (e) => {
    const line = JSON.parse(e.data);
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    const item = document.createElement("li");
    item.className = line.level;
    item.textContent = `${line.at.slice(11, 23)} ${line.level.padEnd(5)} ${line.message}`;
    log.appendChild(item);
    while (log.childElementCount > MAX_LOG_LINES) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  });
  events.addEventListener("execution", refresh);
  events.addEventListener("end", () => {
    ended = true;
    events.close();
    refresh();
  });
  events.addEventListener("error", () => {
    // The browser reconnects by itself, resuming after the last line; a
    // run that has ended has nothing more to say.
    if (ended) events.close();
  });
}

function sqlEditor() {
  const text = document.getElementById("sql");
  if (!text) return;
  const gutter = text.parentElement.querySelector(".gutter");
  const errorLine = Number(text.dataset.line || 0);
  const number = () => {
    const lines = text.value.split("\n").length;
    if (gutter.childElementCount === lines) return;
    const items = [];
    for (let n = 1; n <= lines; n++) {
      items.push(`<li${n === errorLine ? ' class="error"' : ""}>${n}</li>`);
    }
    gutter.innerHTML = items.join("");
  };
  text.addEventListener("input", number);
  text.addEventListener("scroll", () => {
    gutter.scrollTop = text.scrollTop;
  });
  number();
  if (errorLine > 0) {
    // The caret goes where the error is.
    const lines = text.value.split("\n");
    let at = 0;
    for (let n = 1; n < errorLine && n <= lines.length; n++) at += lines[n - 1].length + 1;
    at += Math.max(0, Number(text.dataset.column || 1) - 1);
    text.focus();
    text.setSelectionRange(at, at);
    const lineHeight = parseFloat(getComputedStyle(text).lineHeight) || 19;
    text.scrollTop = Math.max(0, (errorLine - 3) * lineHeight);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  liveRuns();
  liveRun();
  sqlEditor();
});
