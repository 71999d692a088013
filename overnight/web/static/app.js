// overnight command center: live updates (one SSE stream), tiles, ledger, terminal.
// The server renders every fragment; this file only puts them in place.
(() => {
  "use strict";
  // xterm.js writes <style> elements. The page's Content-Security-Policy admits inline
  // styles only with the nonce this script was given, so each <style> made here gets it.
  const nonce = document.currentScript?.nonce;
  if (nonce) {
    const create = document.createElement.bind(document);
    document.createElement = (tag, options) => {
      const el = create(tag, options);
      if (String(tag).toLowerCase() === "style") el.nonce = nonce;
      return el;
    };
  }
  const body = document.body;
  const view = body.dataset.view;
  const lab = body.dataset.lab;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const store = {
    get(key, fallback) {
      try { return JSON.parse(localStorage.getItem(`overnight:${lab}:${key}`)) ?? fallback; }
      catch { return fallback; }
    },
    set(key, value) { localStorage.setItem(`overnight:${lab}:${key}`, JSON.stringify(value)); },
  };

  // -- every state-changing request carries the CSRF token --------------------------------
  document.addEventListener("htmx:configRequest", (e) => { e.detail.headers["X-CSRF-Token"] = csrf; });
  document.addEventListener("htmx:responseError", (e) => {
    toast(e.detail.xhr.responseText || `${e.detail.xhr.status} ${e.detail.xhr.statusText}`);
  });
  document.addEventListener("htmx:sendError", () => toast("the command center does not answer"));
  let toastTimer = 0;
  function toast(text) {
    const el = $("toast");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 8000);
  }

  // -- the panel (diffs, trial details, terminals) -----------------------------------------
  const panel = $("panel");
  let closePanel = () => {};
  function openPanel(title) {
    $("panel-title").textContent = title;
    if (!panel.open) panel.showModal();
  }
  panel.addEventListener("close", () => { closePanel(); closePanel = () => {}; $("panel-body").innerHTML = ""; });
  panel.querySelector("[data-close]").addEventListener("click", () => panel.close());
  document.addEventListener("htmx:beforeRequest", (e) => {
    const title = e.detail.elt.closest("[data-panel]")?.dataset.panel;
    if (title && e.detail.target?.id === "panel-body") {
      closePanel(); closePanel = () => {};
      $("panel-body").innerHTML = '<p class="muted">loading…</p>';
      openPanel(title);
    }
  });

  // -- ages ("working 3m") tick in the page ------------------------------------------------
  function ago(since) {
    const s = Math.max(0, Math.floor(Date.now() / 1000 - since));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m`;
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }
  function left(until) {
    const s = Math.floor(until - Date.now() / 1000);
    if (s <= 0) return null;
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }
  function tick() {
    for (const el of document.querySelectorAll("[data-since]")) {
      if (el.dataset.since) el.textContent = ago(parseFloat(el.dataset.since));
    }
    // approvals count down to their expiry; a lapsed one cannot be answered any more
    for (const el of document.querySelectorAll("[data-expires]")) {
      const rest = left(parseFloat(el.dataset.expires));
      el.textContent = rest ? `expires in ${rest}` : "expired";
      const card = el.closest("[data-approval]");
      if (!rest && card && card.dataset.status === "pending") card.dataset.status = "expired";
    }
  }
  setInterval(tick, 1000);

  // -- the grid: filter, size, hide/show ---------------------------------------------------
  const grid = $("grid");
  function hidden() { return new Set(store.get("hidden", [])); }
  function applyGrid() {
    if (!grid) return;
    const hide = hidden();
    const counts = { all: 0 };
    for (const tile of grid.querySelectorAll(".tile")) {
      const name = tile.dataset.agent;
      tile.classList.toggle("hidden", hide.has(name));
      counts.all += 1;
      counts[tile.dataset.state] = (counts[tile.dataset.state] || 0) + 1;
    }
    for (const b of document.querySelectorAll("[data-count]")) b.textContent = counts[b.dataset.count] || 0;
    const list = $("hidden-list");
    list.replaceChildren();
    for (const name of [...hide].sort()) {
      if (!document.getElementById(`tile-${name}`)) continue;
      const b = document.createElement("button");
      b.type = "button"; b.dataset.show = name; b.textContent = `show ${name}`;
      list.append(b);
    }
    $("hidden-tray").hidden = list.childElementCount === 0;
  }
  function setFilter(state) {
    grid.dataset.filter = state;
    for (const b of document.querySelectorAll("[data-filter]")) b.setAttribute("aria-pressed", String(b.dataset.filter === state));
    store.set("filter", state);
  }
  function setSize(size) {
    grid.dataset.size = size;
    for (const b of document.querySelectorAll("[data-size]")) b.setAttribute("aria-pressed", String(b.dataset.size === size));
    store.set("size", size);
    bottomAll();
  }
  function bottomAll() { for (const s of document.querySelectorAll(".screen")) s.scrollTop = s.scrollHeight; }
  if (grid) {
    setFilter(store.get("filter", "all"));
    setSize(store.get("size", "m"));
    applyGrid();
    document.addEventListener("htmx:afterSwap", (e) => { if (e.detail.target === grid) { applyGrid(); bottomAll(); } });
  }
  document.addEventListener("click", (e) => {
    const t = e.target.closest("[data-filter],[data-size],[data-hide],[data-show],[data-terminal]");
    if (!t) return;
    if (t.dataset.filter) setFilter(t.dataset.filter);
    else if (t.dataset.size) setSize(t.dataset.size);
    else if (t.dataset.hide) { const h = hidden(); h.add(t.dataset.hide); store.set("hidden", [...h]); applyGrid(); }
    else if (t.dataset.show) { const h = hidden(); h.delete(t.dataset.show); store.set("hidden", [...h]); applyGrid(); }
    else if (t.dataset.terminal) openTerminal(t.dataset.terminal);
  });

  // -- the interactive terminal ------------------------------------------------------------
  function openTerminal(name) {
    if (typeof Terminal === "undefined") { toast("the terminal (xterm.js) is not installed: run `make web-assets`"); return; }
    closePanel();
    const box = document.createElement("div");
    box.className = "term";
    $("panel-body").replaceChildren(box);
    openPanel(`${name} — terminal (tmux: Ctrl-b d detaches; Ctrl-b c opens a shell in the worktree)`);
    const term = new Terminal({ fontSize: 13, cursorBlink: true, scrollback: 5000, theme: { background: "#000000" } });
    const fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(box);
    try { fit.fit(); } catch { /* not laid out yet: the next frame fits it */ }
    requestAnimationFrame(() => { try { fit.fit(); } catch { /* closed already */ } });
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/agents/${encodeURIComponent(name)}/terminal?cols=${term.cols}&rows=${term.rows}`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (m) => {
      if (typeof m.data === "string") term.write(m.data);
      else term.write(new Uint8Array(m.data));
    };
    ws.onclose = (e) => term.write(`\r\n\x1b[2m[terminal closed${e.reason ? ": " + e.reason : ""}]\x1b[0m\r\n`);
    const input = term.onData((data) => { if (ws.readyState === 1) ws.send(JSON.stringify({ input: data })); });
    const resize = term.onResize(({ cols, rows }) => { if (ws.readyState === 1) ws.send(JSON.stringify({ resize: [cols, rows] })); });
    const onWindow = () => fit.fit();
    window.addEventListener("resize", onWindow);
    term.focus();
    window.overnightTerminal = term;  // for tests and the curious
    closePanel = () => {
      window.removeEventListener("resize", onWindow);
      input.dispose(); resize.dispose();
      ws.close(); term.dispose();
      window.overnightTerminal = null;
    };
  }

  // -- approvals: approve / deny with a note (the same REST API scripts use) --------------
  document.addEventListener("click", async (e) => {
    const button = e.target.closest("[data-answer]");
    if (!button) return;
    const card = button.closest("[data-approval]");
    const id = card.dataset.approval;
    const note = card.querySelector("input[name=note]")?.value.trim() || null;
    for (const b of card.querySelectorAll("button")) b.disabled = true;
    try {
      const r = await fetch(`/api/approvals/${encodeURIComponent(id)}/${button.dataset.answer}`, {
        method: "POST",
        headers: { "content-type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ note }),
      });
      if (!r.ok) {
        let why = `${r.status} ${r.statusText}`;
        try { why = (await r.json()).error || why; } catch { why = (await r.text()) || why; }
        toast(why);
      }
    } catch { toast("the command center does not answer"); }
    for (const b of card.querySelectorAll("button")) b.disabled = false;
    if (window.htmx) htmx.trigger(body, "ov-approvals");  // the stream brings it too
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && e.target.matches?.("[data-answer-form] input")) e.preventDefault();
  });
  document.addEventListener("submit", (e) => {
    if (e.target.matches("[data-answer-form]")) e.preventDefault();  // answered by its buttons
  });

  // -- live updates ------------------------------------------------------------------------
  const ledger = $("ledger-body");
  if (ledger) {
    document.addEventListener("htmx:afterRequest", (e) => {
      if (e.detail.elt.id === "ledger-filter") {
        const form = new FormData(e.detail.elt);
        ledger.dataset.agent = form.get("agent") || "";
        ledger.dataset.status = form.get("status") || "";
      }
    });
  }
  // A mirrored screen's exact colours come as data-fg / data-bg: style attributes would
  // need 'unsafe-inline' in the page's Content-Security-Policy, colours set from here do not.
  function paint(root) {
    for (const el of root.querySelectorAll("[data-fg], [data-bg]")) {
      if (el.dataset.fg) el.style.color = el.dataset.fg;
      if (el.dataset.bg) el.style.background = el.dataset.bg;
    }
  }
  paint(document);
  document.addEventListener("htmx:afterSwap", (e) => paint(e.detail.target));
  function place(el, html) {
    if (!el) return;
    el.innerHTML = html;
    if (window.htmx) htmx.process(el);
  }
  const handlers = {
    agent(d) {
      const tile = document.getElementById(`tile-${d.agent}`);
      if (!tile) return;
      tile.dataset.state = d.state;
      place(document.getElementById(`head-${d.agent}`), d.html);
      place(document.getElementById(`extra-${d.agent}`), d.extra);
      applyGrid();
    },
    screen(d) {
      const el = document.getElementById(`screen-${d.agent}`);
      if (!el) return;
      el.innerHTML = d.html;
      paint(el);
      el.scrollTop = el.scrollHeight;
    },
    trial(d) {
      if (!ledger) return;
      const old = document.getElementById(`trial-${d.number}`);
      const wants = (!ledger.dataset.agent || ledger.dataset.agent === d.agent) &&
                    (!ledger.dataset.status || ledger.dataset.status === d.status);
      const tpl = document.createElement("template");
      tpl.innerHTML = d.html.trim();
      const row = tpl.content.firstElementChild;
      if (old && !wants) { old.remove(); return; }
      if (!wants) return;
      if (old) { old.replaceWith(row); }
      else {
        ledger.querySelector("tr.empty")?.remove();
        row.classList.add("fresh");
        const next = [...ledger.querySelectorAll("tr.trial")].find((r) => parseInt(r.id.slice(6), 10) < d.number);
        if (next) next.before(row); else ledger.prepend(row);
      }
      if (window.htmx) htmx.process(row);
    },
    plot(d) { const el = $("plot"); if (el) el.innerHTML = d.html; },
    best(d) { place($("best"), d.html); },
    providers(d) { place($("providers"), d.html); },
    costs(d) { place($("costs"), d.html); },
    approvals(d) { place($("approvals"), d.html); tick(); },
    status(d) {
      const el = $("status");
      if (!el) return;
      el.innerHTML = d.html;
      for (const b of el.querySelectorAll("[data-badge-of]")) {
        const badge = document.querySelector(`nav [data-badge="${b.dataset.badgeOf}"]`);
        if (!badge) continue;
        badge.textContent = b.dataset.count;
        badge.hidden = b.dataset.count === "0";
      }
    },
    resync() { if (window.htmx) htmx.trigger(body, "ov-resync"); },
    notify(d) {
      // the browser sink: a desktop notification, when this browser allows them (a missed
      // one replayed on reconnect is not raised again after ten minutes)
      if (!("Notification" in window) || Notification.permission !== "granted") return;
      if (d.at && Date.now() / 1000 - d.at > 600) return;
      const n = new Notification(d.title, { body: d.body, tag: `overnight-${d.id || d.at || ""}` });
      n.onclick = () => { window.focus(); if (d.link && d.link.startsWith("/")) location.href = d.link; };
    },
  };
  function notifyState() {
    const el = $("notify-state");
    if (!el) return;
    const p = "Notification" in window ? Notification.permission : "unsupported";
    el.textContent = { granted: "allowed: this tab raises them", denied: "blocked in this browser's settings", default: "not allowed yet", unsupported: "this browser has no notifications" }[p];
    const button = document.querySelector("[data-notify-permission]");
    if (button) button.hidden = p !== "default";
  }
  notifyState();
  document.addEventListener("click", async (e) => {
    if (!e.target.closest("[data-notify-permission]") || !("Notification" in window)) return;
    await Notification.requestPermission();
    notifyState();
  });
  const conn = $("conn");
  function connect() {
    const es = new EventSource(`/events?view=${encodeURIComponent(view)}&after=${body.dataset.after}`);
    for (const [kind, fn] of Object.entries(handlers)) {
      es.addEventListener(kind, (m) => {
        try { fn(JSON.parse(m.data)); } catch (err) { console.error(kind, err); }
        if (m.lastEventId) body.dataset.after = m.lastEventId;
      });
    }
    es.onopen = () => { conn.dataset.state = "live"; conn.title = "live updates: connected"; };
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) {
        // refused (401: the command center restarted with a new token) or gone for good
        conn.dataset.state = "lost";
        conn.title = "live updates: stopped. If overnight was restarted, open the URL it printed.";
        setTimeout(connect, 5000);
      } else {
        conn.dataset.state = "lost";
        conn.title = "live updates: reconnecting…";
      }
    };
    window.overnightEvents = es;
  }
  connect();
  bottomAll();
})();
