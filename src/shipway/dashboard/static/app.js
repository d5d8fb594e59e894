// Shipway dashboard: polls dashboard/api/summary every 2 s and draws it with uPlot.
// Every value from the server goes into the page as text (textContent), never as HTML.
"use strict";

(function () {
  const POLL_MS = 2000;
  const KEY_STORE = "shipway.dashboard.key";
  const WINDOW_STORE = "shipway.dashboard.window";
  const PALETTE = ["#3b82f6", "#f59e0b", "#ef4444", "#10b981", "#8b5cf6", "#06b6d4",
    "#ec4899", "#84cc16", "#f97316", "#64748b"];

  const $ = (id) => document.getElementById(id);
  const charts = {};  // chart id → {plot, names}
  let timer = null;
  let lastOk = 0;

  // -- formatting ---------------------------------------------------------------------------
  const num = (v, digits = 2) => {
    if (v === null || v === undefined) return "–";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (Number.isInteger(v)) return String(v);
    if (a < 0.01) return String(Number(v.toPrecision(2)));  // a fraction of a cent is news
    return v.toFixed(a >= 100 ? 0 : digits);
  };
  // Axis ticks: as many decimals as the tick step needs, so 0.0002, 0.0004 stay distinct.
  const tick = (v, step) => {
    if (Number.isInteger(step) || v === 0) return num(v);
    let decimals = 0;
    while (decimals < 10 && Math.abs(Math.round(step * 10 ** decimals) - step * 10 ** decimals) > 1e-9) decimals++;
    return v.toFixed(decimals);
  };
  const ms = (s) => {
    if (s === null || s === undefined) return "–";
    if (s >= 10) return s.toFixed(1) + " s";
    if (s >= 1) return s.toFixed(2) + " s";
    return (s * 1000).toFixed(s >= 0.1 ? 0 : 1) + " ms";
  };
  const pct = (v) => (v * 100).toFixed(v > 0 && v < 0.01 ? 2 : 1) + "%";
  const money = (v, currency) => {
    const digits = v !== 0 && Math.abs(v) < 0.01 ? 6 : 2;
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency,
        minimumFractionDigits: 2, maximumFractionDigits: digits }).format(v);
    } catch (_) {  // not an ISO 4217 code: the label is free text (telemetry.currency)
      return v.toFixed(digits) + " " + currency;
    }
  };

  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  // -- data -----------------------------------------------------------------------------------
  function headers() {
    const key = sessionStorage.getItem(KEY_STORE);
    return key ? { Authorization: "Bearer " + key } : {};
  }

  async function poll() {
    clearTimeout(timer);
    const windowS = $("window").value;
    try {
      const response = await fetch("dashboard/api/summary?window=" + encodeURIComponent(windowS),
        { headers: headers(), cache: "no-store", credentials: "omit" });
      if (response.status === 401 || response.status === 403) {
        askForKey(response.status);
        return;  // no polling until a key is given
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      lastOk = Date.now();
      setStatus("live", "live");
    } catch (err) {
      const ago = lastOk ? " (last update " + Math.round((Date.now() - lastOk) / 1000) + " s ago)" : "";
      setStatus("error", "server unreachable, retrying" + ago);
    }
    timer = setTimeout(poll, POLL_MS);
  }

  function setStatus(state, text) {
    const status = $("status");
    status.dataset.state = state;
    status.textContent = text;
  }

  function askForKey(status) {
    const hadKey = sessionStorage.getItem(KEY_STORE) !== null;
    $("key-message").textContent = status === 403 && hadKey
      ? "That key is not an admin key: the dashboard needs one."
      : hadKey ? "The key was refused (revoked or expired?). Enter an admin key."
        : "This server has API keys: the dashboard needs an admin key.";
    $("key-form").hidden = false;
    $("content").hidden = true;
    $("forget-key").hidden = !hadKey;
    setStatus("locked", "admin key needed");
    $("key-input").focus();
  }

  // -- rendering --------------------------------------------------------------------------------
  function render(data) {
    $("key-form").hidden = true;
    $("content").hidden = false;
    $("forget-key").hidden = sessionStorage.getItem(KEY_STORE) === null;
    for (const option of $("window").options) option.disabled = Number(option.value) > data.history_s;
    renderCards(data);
    renderAlerts(data.alerts);
    renderCharts(data);
    renderModels(data);
    const when = new Date(data.server_time * 1000).toLocaleTimeString();
    $("footer").textContent = "server time " + when + " · window " + data.window_s + " s · one point per "
      + data.series.step_s + " s · refreshed every " + POLL_MS / 1000 + " s";
  }

  function renderCards(data) {
    const t = data.totals;
    const cards = [
      ["requests-per-s", "Requests / s", num(t.requests_per_s), num(t.requests) + " in the window"],
      ["error-rate", "Error rate", pct(t.error_rate), num(t.errors) + " errors"],
      ["latency", "Latency p50", ms(t.latency_p50_s), "p95 " + ms(t.latency_p95_s) + " · p99 " + ms(t.latency_p99_s)],
      ["ttft", "TTFT p50", ms(t.ttft_p50_s), "p95 " + ms(t.ttft_p95_s)],
      ["tokens", "Tokens", num(t.prompt_tokens + t.completion_tokens),
        num(t.prompt_tokens) + " in · " + num(t.completion_tokens) + " out"],
      ["cost", "Cost", money(t.cost, data.currency), money(t.cost_per_hour, data.currency) + " / hour at this rate"],
      ["alerts", "Alerts firing", String(data.alerts.length), data.alerts.length ? "see below" : "all clear"],
    ];
    const box = $("cards");
    box.replaceChildren(...cards.map(([id, label, value, sub]) => {
      const card = el("div", "card");
      card.dataset.card = id;
      card.append(el("div", "card-label", label), el("div", "card-value", value), el("div", "card-sub", sub));
      if (id === "alerts" && data.alerts.length) card.classList.add("firing");
      if (id === "error-rate" && t.error_rate > 0.05) card.classList.add("warn");
      return card;
    }));
  }

  function renderAlerts(alerts) {
    $("alert-count").textContent = String(alerts.length);
    $("alerts-panel").classList.toggle("firing", alerts.length > 0);
    const list = $("alerts");
    if (!alerts.length) {
      list.replaceChildren(el("li", "none", "No alert is firing."));
      return;
    }
    list.replaceChildren(...alerts.map((a) => {
      const item = el("li", "alert sev-" + String(a.severity || "warning"));
      item.append(el("span", "sev", String(a.severity || "")), el("strong", "", String(a.rule || "")));
      if (a.model) item.append(el("span", "model", String(a.model)));
      item.append(el("span", "summary", String(a.summary || "")));
      if (a.since) item.append(el("span", "since", "since " + new Date(typeof a.since === "number"
        ? a.since * 1000 : a.since).toLocaleTimeString()));
      return item;
    }));
  }

  function renderModels(data) {
    const body = $("models").tBodies[0];
    body.replaceChildren(...data.models.map((m) => {
      const row = el("tr");
      row.dataset.model = m.model;
      const workers = Object.entries(m.workers).map(([s, n]) => n + " " + s).join(", ")
        || (m.slots !== null && m.slots !== undefined ? m.slots + " upstream places" : "–");
      const state = el("td");
      state.append(el("span", "state state-" + m.state, m.state));
      const cells = [
        el("td", "model-name", m.model), state,
        el("td", "", workers + (m.restarts ? " (" + m.restarts + " restarts)" : "")),
        el("td", "num", m.waiting === null ? "–" : num(m.waiting) + " / " + num(m.max_waiting)),
        el("td", "num", m.busy === null ? "–" : num(m.busy) + " / " + num(m.slots)),
        el("td", "num", num(m.requests)), el("td", "num", num(m.requests_per_s)),
        el("td", "num" + (m.error_rate > 0.05 ? " bad" : ""), m.errors ? num(m.errors) + " (" + pct(m.error_rate) + ")" : "0"),
        el("td", "num", ms(m.latency_p50_s)), el("td", "num", ms(m.latency_p95_s)),
        el("td", "num", ms(m.latency_p99_s)), el("td", "num", ms(m.ttft_p50_s)),
        el("td", "num", num(m.prompt_tokens) + " / " + num(m.completion_tokens)),
        el("td", "num", money(m.cost, data.currency)),
      ];
      row.append(...cells);
      return row;
    }));
  }

  // -- charts ---------------------------------------------------------------------------------
  const toMs = (values) => values.map((v) => (v === null ? null : v * 1000));

  function renderCharts(data) {
    const s = data.series;
    $("cost-caption").textContent = "Cost (" + data.currency + "), cumulative over the window";
    draw("chart-requests", s.t, { "requests/s": s.requests_per_s });
    draw("chart-errors", s.t, s.errors_per_s);
    draw("chart-latency", s.t, { p50: toMs(s.latency_s.p50), p95: toMs(s.latency_s.p95), p99: toMs(s.latency_s.p99) });
    draw("chart-ttft", s.t, { p50: toMs(s.ttft_s.p50), p95: toMs(s.ttft_s.p95) });
    draw("chart-tokens", s.t, { prompt: s.tokens_per_s.prompt, completion: s.tokens_per_s.completion });
    draw("chart-cost", s.t, { [data.currency]: s.cost_cumulative });
    draw("chart-queue", s.t, s.queue_waiting);
    draw("chart-busy", s.t, s.busy_slots);
  }

  // 24-hour clock times only (uPlot's default adds the date under some ticks, which then
  // collide); seconds only where a tick falls inside a minute.
  function timeTicks(u, ticks) {
    return ticks.map((t) => {
      const d = new Date(t * 1000);
      const hm = String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
      return d.getSeconds() ? hm + ":" + String(d.getSeconds()).padStart(2, "0") : hm;
    });
  }

  // A value with no neighbour (one busy second between idle ones) has no line to be part of:
  // draw it as a dot. When uPlot shows every point anyway (sparse data) this changes nothing.
  function isolatedPoints(u, seriesIdx, show) {
    if (show) return null;
    const data = u.data[seriesIdx];
    const idx = [];
    for (let i = 0; i < data.length; i++) {
      if (data[i] !== null && (i === 0 || data[i - 1] === null)
        && (i === data.length - 1 || data[i + 1] === null)) idx.push(i);
    }
    return idx.length ? idx : null;
  }

  function themeColor(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function draw(id, t, byName) {
    const figure = $(id);
    const names = Object.keys(byName);
    const values = names.map((n) => byName[n]);
    // What the tests (and a reader) look for: how many points carry a non-zero value.
    const points = values.reduce((sum, v) => sum + v.filter((x) => x !== null && x !== 0).length, 0);
    figure.dataset.points = String(points);
    figure.classList.toggle("empty", points === 0);
    const key = names.join("\u0000");
    let chart = charts[id];
    if (chart && chart.key !== key) {
      chart.plot.destroy();
      chart = null;
    }
    const plotBox = figure.querySelector(".plot");
    if (!chart) {
      const axis = { stroke: themeColor("--muted"), grid: { stroke: themeColor("--grid"), width: 1 },
        ticks: { stroke: themeColor("--grid"), width: 1 } };
      const opts = {
        width: Math.max(plotBox.clientWidth, 200),
        height: 180,
        legend: { show: true, live: true },
        cursor: { drag: { x: false, y: false } },
        scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
        axes: [{ ...axis, space: 70, values: timeTicks }, { ...axis, size: 60,
          values: (u, ticks, axisIdx, space, step) => ticks.map((v) => tick(v, step)) }],
        series: [{}, ...names.map((n, i) => ({ label: n, stroke: PALETTE[i % PALETTE.length], width: 1.5,
          fill: names.length === 1 ? PALETTE[0] + "22" : undefined, spanGaps: false,
          points: { size: 5, filter: isolatedPoints },
          value: (u, v) => (v === null ? "–" : num(v, 3)) }))],
      };
      plotBox.replaceChildren();
      chart = charts[id] = { key, plot: new uPlot(opts, [t, ...values], plotBox) };
    } else {
      chart.plot.setData([t, ...values]);
    }
  }

  function resizeCharts() {
    for (const id of Object.keys(charts)) {
      const box = $(id).querySelector(".plot");
      charts[id].plot.setSize({ width: Math.max(box.clientWidth, 200), height: 180 });
    }
  }

  // -- wiring -----------------------------------------------------------------------------------
  function start() {
    const saved = sessionStorage.getItem(WINDOW_STORE);
    if (saved && [...$("window").options].some((o) => o.value === saved)) $("window").value = saved;
    $("window").addEventListener("change", () => {
      sessionStorage.setItem(WINDOW_STORE, $("window").value);
      poll();
    });
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORE, key);
      $("key-input").value = "";
      poll();
    });
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORE);
      poll();
    });
    // Axis colours are read when a chart is made: a theme switch makes them again.
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
      for (const id of Object.keys(charts)) {
        charts[id].plot.destroy();
        delete charts[id];
      }
      poll();
    });
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(resizeCharts, 100);
    });
    poll();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
