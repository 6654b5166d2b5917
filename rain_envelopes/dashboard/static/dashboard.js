// The RAIN dashboard page: served by `rain dashboard`, written for it, no build step.
//
// Theory of operation. One websocket to the dashboard (/ws, same origin; the access token
// travels in the HttpOnly cookie the first load set). The dashboard first sends a "hello"
// holding every server, its parameters and their last samples, then events in batches (a
// JSON array per websocket message): "state" (a server's connection), "params" (its list
// changed), "sample", "set-result", "page-dropped" (updates the dashboard dropped because
// this page read too slowly). The page keeps the last minutes of each numeric parameter in
// memory (trimmed by age, so a page open for hours stays the same size) and draws them on
// small canvases at most once per animation frame.
//
// Everything a server sends (names, units, descriptions, values, reasons) goes on the page
// through textContent or attribute values, never as HTML; the Content-Security-Policy the
// dashboard sends would stop inline script anyway.
"use strict";

(() => {
  const COLORS = ["#1d5fbf", "#b3261e", "#1f7a3a", "#a05a00", "#6b3fa0", "#00838f", "#c2185b", "#546e7a"];
  const MAX_EVENTS = 50;
  const MAX_LATENCIES = 20000;

  const page = {
    ws: null,
    open: false,
    windowSeconds: 300,
    servers: new Map(),     // id -> {view, el, params: Map(name -> card)}
    series: new Map(),      // "id\u0000name" -> {points: [], head: 0, lines: n}
    pending: new Map(),     // set id -> output element
    nextId: 1,
    pageDropped: 0,
    linkReconnects: 0,
    latencies: [],          // ms from a sample's timestamp to the frame that drew it
    latencyHead: 0,
    dirty: new Set(),
    fresh: new Map(),       // key -> newest sample timestamp not yet drawn
    frameRequested: false,
  };

  // ------------------------------------------------------------------ small DOM helpers

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function showValue(value) {
    if (typeof value === "string") return value;
    if (value === undefined) return "";
    return JSON.stringify(value);
  }

  function clock(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false });
  }

  function keyOf(serverId, name) {
    return serverId + "\u0000" + name;
  }

  function numericLines(value) {
    if (typeof value === "number" && Number.isFinite(value)) return [value];
    if (Array.isArray(value) && value.length > 0 && value.length <= COLORS.length * 4 &&
        value.every((v) => typeof v === "number" && Number.isFinite(v))) return value;
    return null;
  }

  // ------------------------------------------------------------------ the page's own link

  function setLink(state, text) {
    const badge = document.getElementById("page-link");
    badge.className = "badge state-" + state;
    badge.textContent = text;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(scheme + "//" + location.host + "/ws");
    page.ws = ws;
    ws.onopen = () => {
      page.open = true;
      setLink("open", "dashboard: live" + (page.linkReconnects ? " (reconnected " + page.linkReconnects + "×)" : ""));
    };
    ws.onmessage = (message) => {
      let batch;
      try { batch = JSON.parse(message.data); } catch (e) { return; }
      if (!Array.isArray(batch)) batch = [batch];
      for (const event of batch) handle(event);
    };
    ws.onclose = () => {
      page.open = false;
      page.ws = null;
      for (const output of page.pending.values()) result(output, false, "the link to the dashboard was lost before an answer came");
      page.pending.clear();
      setLink("lost", "dashboard: link lost, retrying…");
      page.linkReconnects += 1;
      setTimeout(connect, 1000 + Math.random() * 1000);
    };
  }

  // ------------------------------------------------------------------ events

  function handle(event) {
    if (!event || typeof event !== "object") return;
    switch (event.t) {
      case "hello": onHello(event); break;
      case "state": onState(event.s); break;
      case "params": onParams(event.s); break;
      case "sample": onSample(event); break;
      case "set-result": onSetResult(event); break;
      case "page-dropped":
        page.pageDropped += Number(event.n) || 0;
        showPageDropped();
        break;
      default: break;
    }
  }

  function onHello(event) {
    if (typeof event.window === "number" && event.window > 0) page.windowSeconds = event.window;
    const main = document.getElementById("servers");
    main.replaceChildren();
    page.servers.clear();
    for (const view of event.servers || []) {
      onState(view);
      onParams(view);
      for (const sample of view.last || []) onSample(sample, true);
    }
  }

  function serverEntry(view) {
    let entry = page.servers.get(view.id);
    if (entry) return entry;
    const section = el("section", "server");
    section.setAttribute("data-server", String(view.id));
    const header = el("header");
    const title = el("h2", "node");
    const endpoint = el("span", "endpoint");
    const state = el("span", "badge state");
    const reconnects = el("span", "reconnects");
    const reason = el("span", "reason");
    const restarted = el("span", "restarted");
    const error = el("span", "server-error");
    header.append(title, endpoint, state, reconnects, reason, restarted, error);
    const params = el("div", "params");
    section.append(header, params);
    document.getElementById("servers").append(section);
    entry = { view, section, title, endpoint, state, reconnects, reason, restarted, error, paramsEl: params, params: new Map() };
    page.servers.set(view.id, entry);
    return entry;
  }

  function onState(view) {
    if (!view || typeof view !== "object") return;
    const entry = serverEntry(view);
    entry.view = Object.assign(entry.view, view);
    entry.title.textContent = view.node || "(server)";
    entry.endpoint.textContent = view.endpoint || "";
    let text = String(view.state || "");
    if (view.state === "retrying" && typeof view.delay === "number") text += " (next try in " + view.delay.toFixed(1) + " s)";
    entry.state.textContent = text;
    entry.state.className = "badge state state-" + String(view.state || "");
    entry.reconnects.textContent = "reconnects: " + String(view.reconnects || 0);
    entry.reason.textContent = view.state === "established" ? "" : String(view.reason || "");
    entry.error.textContent = String(view.error || "");
  }

  function onParams(view) {
    if (!view || typeof view !== "object") return;
    const entry = serverEntry(view);
    const seen = new Set();
    for (const desc of view.params || []) {
      if (!desc || typeof desc.name !== "string") continue;
      seen.add(desc.name);
      const old = entry.params.get(desc.name);
      if (old && JSON.stringify(old.desc) === JSON.stringify(desc)) continue;
      const card = paramCard(view.id, desc);
      if (old) old.article.replaceWith(card.article); else entry.paramsEl.append(card.article);
      if (old && old.last) applySample(card, old.last, true);
      entry.params.set(desc.name, card);
    }
    for (const [name, card] of entry.params) {
      if (!seen.has(name)) { card.article.remove(); entry.params.delete(name); }
    }
    if (view.dropped) {
      for (const [name, n] of Object.entries(view.dropped)) {
        const card = entry.params.get(name);
        if (card) showDropped(card, n);
      }
    }
  }

  // ------------------------------------------------------------------ one parameter

  function paramCard(serverId, desc) {
    const article = el("article", "param");
    article.setAttribute("data-param", desc.name);
    const head = el("div", "head");
    const name = el("span", "name", desc.name);
    const value = el("span", "value", "…");
    const unit = el("span", "unit", desc.unit || "");
    const dropped = el("span", "dropped");
    const time = el("span", "time");
    head.append(name, value, unit, dropped, time);
    article.append(head);
    if (desc.description) article.append(el("p", "description", desc.description));
    const access = el("p", "access");
    access.append(document.createTextNode("you may: "));
    for (const method of desc.methods || []) access.append(el("span", "tag", method));
    if (typeof desc.interval === "number") access.append(document.createTextNode(" · every " + desc.interval + " s"));
    else access.append(document.createTextNode(" · published when it changes"));
    article.append(access);
    const card = { serverId, desc, article, value, time, dropped, plot: null, legend: null, last: null, form: null };
    if ((desc.methods || []).includes("set")) {
      card.form = setForm(serverId, desc);
      article.append(card.form);
    }
    return card;
  }

  function ensurePlot(card, lines) {
    if (card.plot) return;
    card.plot = el("canvas", "plot");
    card.plot.setAttribute("aria-label", "the last minutes of " + card.desc.name);
    const head = card.article.querySelector(".head");
    head.after(card.plot);
    if (lines > 1) {
      card.legend = el("div", "legend");
      for (let i = 0; i < lines; i += 1) {
        const item = el("span", null, "[" + i + "]");
        item.style.color = COLORS[i % COLORS.length];
        card.legend.append(item);
      }
      card.plot.after(card.legend);
    }
  }

  function showDropped(card, n) {
    card.dropped.textContent = n > 0 ? "dropped: " + n : "";
  }

  function onSample(sample, fromHello) {
    const entry = page.servers.get(sample.s);
    if (!entry) return;
    const card = entry.params.get(sample.n);
    if (!card) return;
    applySample(card, sample, Boolean(fromHello));
    if (sample.restarted && !fromHello) { // (a page opened later did not see it happen)
      const when = clock(Date.now());
      entry.restarted.textContent = "server restarted at " + when;
      addEvent(when, (entry.view.node || entry.view.endpoint) + ": server restarted", "");
    }
    const triggered = !sample.snapshot && !fromHello && typeof card.desc.interval !== "number";
    if (triggered) {
      card.article.classList.add("event");
      card.article.classList.remove("flash");
      void card.article.offsetWidth; // restart the animation
      card.article.classList.add("flash");
      addEvent(clock(Date.now()), (entry.view.node || entry.view.endpoint) + " " + card.desc.name, showValue(sample.v));
    }
  }

  function applySample(card, sample, quiet) {
    card.last = sample;
    card.value.textContent = showValue(sample.v);
    const stamp = Date.parse(sample.ts);
    card.time.textContent = Number.isFinite(stamp) ? clock(stamp) : "";
    card.time.title = String(sample.ts || "");
    showDropped(card, Number(sample.dropped) || 0);
    if (card.form && card.form.follow) card.form.follow(sample.v);
    const lines = numericLines(sample.v);
    if (!lines) return;
    const key = keyOf(card.serverId, card.desc.name);
    let series = page.series.get(key);
    if (!series || series.lines !== lines.length) {
      series = { points: [], head: 0, lines: lines.length };
      page.series.set(key, series);
    }
    series.points.push([Date.now(), lines]);
    ensurePlot(card, lines.length);
    page.dirty.add(key);
    if (!quiet && Number.isFinite(stamp)) page.fresh.set(key, stamp);
    requestFrame();
  }

  function trim(series, now) {
    const oldest = now - page.windowSeconds * 1000;
    // Keep the last point before the window: the line enters from the left edge, and a value
    // that has not changed for longer than the window still shows.
    while (series.head + 1 < series.points.length && series.points[series.head + 1][0] < oldest) series.head += 1;
    if (series.head >= 256) { // drop what scrolled out, in small steps: memory stays flat
      series.points.splice(0, series.head);
      series.head = 0;
    }
  }

  // ------------------------------------------------------------------ drawing

  function requestFrame() {
    if (page.frameRequested) return;
    page.frameRequested = true;
    requestAnimationFrame(drawDirty);
  }

  function drawDirty() {
    page.frameRequested = false;
    const now = Date.now();
    for (const key of page.dirty) {
      const [serverId, name] = key.split("\u0000");
      const entry = page.servers.get(serverId);
      const card = entry && entry.params.get(name);
      const series = page.series.get(key);
      // A parameter published when it changes holds its value until the next one: steps.
      if (card && card.plot && series) draw(card.plot, series, now, typeof card.desc.interval !== "number");
    }
    page.dirty.clear();
    for (const stamp of page.fresh.values()) recordLatency(now - stamp);
    page.fresh.clear();
  }

  function recordLatency(ms) {
    if (page.latencies.length < MAX_LATENCIES) page.latencies.push(ms);
    else { page.latencies[page.latencyHead] = ms; page.latencyHead = (page.latencyHead + 1) % MAX_LATENCIES; }
  }

  function draw(canvas, series, now, step) {
    trim(series, now);
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(100, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(40, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    const points = series.points;
    let low = Infinity, high = -Infinity;
    for (let i = series.head; i < points.length; i += 1) {
      for (const v of points[i][1]) { if (v < low) low = v; if (v > high) high = v; }
    }
    const pad = 14 * ratio;
    ctx.strokeStyle = "#d9dde3";
    ctx.lineWidth = 1;
    ctx.strokeRect(0.5, 0.5, width - 1, height - 1);
    ctx.fillStyle = "#5d6675";
    ctx.font = (10 * ratio) + "px system-ui, sans-serif";
    const span = page.windowSeconds * 1000;
    ctx.fillText("−" + Math.round(page.windowSeconds / 60 * 10) / 10 + " min", 4 * ratio, height - 4 * ratio);
    ctx.textAlign = "right";
    ctx.fillText("now", width - 4 * ratio, height - 4 * ratio);
    ctx.textAlign = "left";
    if (!(low <= high)) return;
    if (low === high) { low -= 1; high += 1; }
    ctx.fillText(String(Number(high.toPrecision(6))), 4 * ratio, 11 * ratio);
    ctx.fillText(String(Number(low.toPrecision(6))), 4 * ratio, height - 16 * ratio);
    const x = (t) => (1 - (now - t) / span) * width;
    const y = (v) => pad + (1 - (v - low) / (high - low)) * (height - 2 * pad);
    ctx.lineWidth = 1.5 * ratio;
    for (let line = 0; line < series.lines; line += 1) {
      ctx.strokeStyle = COLORS[line % COLORS.length];
      ctx.beginPath();
      let started = false, lastY = 0;
      for (let i = series.head; i < points.length; i += 1) {
        const px = x(points[i][0]), py = y(points[i][1][line]);
        if (!started) { ctx.moveTo(px, py); started = true; }
        else { if (step) ctx.lineTo(px, lastY); ctx.lineTo(px, py); }
        lastY = py;
      }
      if (step && started) ctx.lineTo(width, lastY);
      else if (points.length - series.head === 1) ctx.arc(x(points[series.head][0]), y(points[series.head][1][line]), 2 * ratio, 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  // Slide every plot's time axis once a second, even when nothing new came.
  setInterval(() => { for (const key of page.series.keys()) page.dirty.add(key); requestFrame(); }, 1000);

  // ------------------------------------------------------------------ events list

  function addEvent(when, what, value) {
    const list = document.getElementById("event-list");
    document.getElementById("no-events").hidden = true;
    const item = el("li");
    item.append(el("span", "when", when), el("span", "what", what), el("span", "event-value", value));
    list.prepend(item);
    while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  }

  function showPageDropped() {
    const node = document.getElementById("page-dropped");
    node.hidden = page.pageDropped === 0;
    node.textContent = page.pageDropped + " updates dropped on the way to this page (it read too slowly)";
  }

  // ------------------------------------------------------------------ set forms

  function setForm(serverId, desc) {
    const schema = (desc.schema && typeof desc.schema === "object") ? desc.schema : {};
    const form = el("form", "set");
    form.noValidate = true; // the server checks the schema and says why it refuses
    let input, read;
    if (Array.isArray(schema.enum)) {
      input = el("select");
      schema.enum.forEach((choice, index) => {
        const option = el("option", null, showValue(choice));
        option.value = String(index);
        input.append(option);
      });
      read = () => ({ ok: true, value: schema.enum[Number(input.value)] });
      // A choice shows the current value until the user picks another.
      form.follow = (value) => {
        const index = schema.enum.findIndex((choice) => JSON.stringify(choice) === JSON.stringify(value));
        if (index >= 0 && document.activeElement !== input) input.value = String(index);
      };
    } else if (schema.type === "boolean") {
      input = el("select");
      for (const choice of ["true", "false"]) {
        const option = el("option", null, choice);
        option.value = choice;
        input.append(option);
      }
      read = () => ({ ok: true, value: input.value === "true" });
      form.follow = (value) => {
        if (typeof value === "boolean" && document.activeElement !== input) input.value = String(value);
      };
    } else if (schema.type === "number" || schema.type === "integer") {
      input = el("input");
      input.type = "number";
      input.step = schema.type === "integer" ? "1" : "any";
      read = () => {
        const text = input.value.trim();
        const number = Number(text);
        if (text === "" || !Number.isFinite(number)) return { ok: false, reason: "a number is needed" };
        return { ok: true, value: number };
      };
    } else if (schema.type === "string") {
      input = el("input");
      input.type = "text";
      read = () => ({ ok: true, value: input.value });
    } else {
      input = el("input");
      input.type = "text";
      input.placeholder = "JSON, or text";
      read = () => {
        try { return { ok: true, value: JSON.parse(input.value) }; } catch (e) { return { ok: true, value: input.value }; }
      };
    }
    input.className = "set-input";
    input.setAttribute("aria-label", "new value of " + desc.name);
    const button = el("button", null, "Set");
    button.type = "submit";
    form.append(input, button);
    const limits = [];
    if (typeof schema.minimum === "number") limits.push("≥ " + schema.minimum);
    if (typeof schema.maximum === "number") limits.push("≤ " + schema.maximum);
    if (limits.length) form.append(el("span", "limits", limits.join(", ")));
    const output = el("output", "result");
    form.append(output);
    form.addEventListener("submit", (submit) => {
      submit.preventDefault();
      const value = read();
      if (!value.ok) { result(output, false, value.reason); return; }
      if (!page.open) { result(output, false, "not connected to the dashboard"); return; }
      const id = page.nextId;
      page.nextId += 1;
      page.pending.set(id, output);
      output.className = "result pending";
      output.textContent = "setting " + showValue(value.value) + "…";
      page.ws.send(JSON.stringify({ t: "set", id, s: serverId, n: desc.name, v: value.value }));
    });
    return form;
  }

  function onSetResult(event) {
    const output = page.pending.get(event.id);
    if (!output) return;
    page.pending.delete(event.id);
    if (event.ok) result(output, true, "applied: " + showValue(event.value));
    else result(output, false, "refused" + (event.code !== null && event.code !== undefined ? " (" + event.code + ")" : "") + ": " + String(event.reason || "no reason given"));
  }

  function result(output, ok, text) {
    output.className = "result " + (ok ? "ok" : "refused");
    output.textContent = text;
  }

  // ------------------------------------------------------------------ for tests and measurements

  window.rainDashboard = {
    latencies: () => page.latencies.slice(),
    pageDropped: () => page.pageDropped,
    points: () => { let n = 0; for (const s of page.series.values()) n += s.points.length - s.head; return n; },
  };

  connect();
})();
