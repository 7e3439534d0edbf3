/* Bascule's live dashboard: polls the admin listener's JSON pages and the prometheus
 * plugin's metrics every 2 s and draws them. No build step; uPlot draws the plots.
 *
 * Traffic figures come from counters and histograms summed over every worker (the
 * prometheus plugin's multiprocess mode): rates and percentiles are deltas between two
 * scrapes, the plotted window keeps the last 5 minutes. The metrics are parsed loosely on
 * purpose: every label not used here is summed over, and the status is read from a `code`
 * label (a status code) or a `status_class` label (2xx...), whichever the plugin exports.
 */
(function () {
  "use strict";

  const POLL_MS = 2000;
  const WINDOW_S = 300; // samples kept for the plots and the percentiles
  const RATE_S = 10; // requests/s in the tables: over about the last 10 s
  const TOKEN_KEY = "bascule-admin-token";
  const CLASSES = ["2xx", "3xx", "4xx", "5xx"];
  const CLASS_COLORS = { "2xx": "#2e9d5b", "3xx": "#3b82c4", "4xx": "#e0a100", "5xx": "#d64545" };
  const PALETTE = ["#3b82c4", "#2e9d5b", "#d64545", "#8e5cc7", "#e0a100", "#14a3a3", "#c7568a", "#6b7a8f", "#a0522d", "#4b5bd6"];

  const $ = (id) => document.getElementById(id);
  const state = { samples: [], charts: {}, chartRoutes: "", seen: {}, polls: 0, routes: [], metricsPath: null };

  // -- the token ----------------------------------------------------------------------------

  (function tokenFromFragment() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  })();

  class AuthRequired extends Error {}

  async function get(path, type) {
    const headers = { Accept: type === "text" ? "text/plain" : "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const r = await fetch(path, { headers, cache: "no-store" });
    if (r.status === 401) throw new AuthRequired("the admin token is required");
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return type === "text" ? r.text() : r.json();
  }

  function askToken() {
    const form = $("login");
    form.hidden = false;
    $("main").hidden = true;
    $("token").focus();
  }

  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    $("login").hidden = true;
    $("main").hidden = false;
    poll();
  });

  // -- Prometheus text format ----------------------------------------------------------------

  /** [{name, labels, value}] of every sample line; comments and malformed lines skipped. */
  function parseMetrics(text) {
    const out = [];
    for (const line of text.split("\n")) {
      if (!line || line[0] === "#") continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line);
      if (!m) continue;
      let i = m[0].length;
      const labels = {};
      if (line[i] === "{") {
        i++;
        for (;;) {
          while (line[i] === " " || line[i] === ",") i++;
          if (line[i] === "}") { i++; break; }
          const k = /^([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"/.exec(line.slice(i));
          if (!k) { i = -1; break; }
          i += k[0].length;
          let v = "";
          while (i < line.length && line[i] !== '"') {
            if (line[i] === "\\") { i++; v += line[i] === "n" ? "\n" : line[i]; } else v += line[i];
            i++;
          }
          if (i >= line.length) { i = -1; break; }
          i++;
          labels[k[1]] = v;
        }
        if (i < 0) continue;
      }
      const value = parseValue(line.slice(i).trim().split(/\s+/)[0]);
      if (!Number.isNaN(value)) out.push({ name: m[1], labels, value });
    }
    return out;
  }

  function parseValue(s) {
    if (s === "+Inf" || s === "Inf") return Infinity;
    if (s === "-Inf") return -Infinity;
    return s === undefined || s === "" ? NaN : Number(s);
  }

  /** {outer: {inner: sum}} of the samples named `name`, summed over every other label. */
  function sumBy(series, name, outer, inner) {
    const out = {};
    for (const s of series) {
      if (s.name !== name) continue;
      const a = outer(s.labels), b = inner(s.labels);
      if (a === undefined || b === undefined) continue;
      const row = (out[a] = out[a] || {});
      row[b] = (row[b] || 0) + s.value;
    }
    return out;
  }

  const route = (l) => l.route;
  const statusClass = (l) => l.status_class || (l.code ? String(l.code)[0] + "xx" : undefined);

  function sample(text) {
    const series = parseMetrics(text);
    const le = (l) => (l.le === undefined ? undefined : parseValue(l.le));
    return {
      t: Date.now() / 1000,
      requests: sumBy(series, "bascule_requests_total", route, statusClass),
      duration: sumBy(series, "bascule_request_duration_seconds_bucket", route, le),
      upstream: sumBy(series, "bascule_upstream_duration_seconds_bucket", route, le),
      cache: sumBy(series, "bascule_cache_total", route, (l) => l.result),
      rateLimit: sumBy(series, "bascule_rate_limit_total", route, (l) => l.outcome),
    };
  }

  // -- arithmetic over samples -------------------------------------------------------------

  const total = (row) => Object.values(row || {}).reduce((a, b) => a + b, 0);

  /** new - old for each key; a counter that went down (a worker replaced) counts from 0. */
  function delta(newer, older) {
    const out = {};
    for (const [k, v] of Object.entries(newer || {})) {
      const d = v - ((older || {})[k] || 0);
      out[k] = d >= 0 ? d : v;
    }
    return out;
  }

  /** {le: count} summed over `routes` of a {route: {le: count}} table. */
  function mergeRoutes(table, routes) {
    const out = {};
    for (const r of routes) for (const [k, v] of Object.entries(table[r] || {})) out[k] = (out[k] || 0) + v;
    return out;
  }

  /** The q-quantile of cumulative buckets {le: count}, as Prometheus' histogram_quantile. */
  function quantile(buckets, q) {
    const les = Object.keys(buckets).map(Number).sort((a, b) => a - b);
    if (!les.length) return null;
    const count = buckets[les[les.length - 1]];
    if (!(count > 0)) return null;
    const rank = q * count;
    let prevLe = 0, prevCount = 0;
    for (const le of les) {
      const c = buckets[le];
      if (c >= rank) {
        if (le === Infinity) return prevLe;
        if (c === prevCount) return le;
        return prevLe + (le - prevLe) * ((rank - prevCount) / (c - prevCount));
      }
      prevLe = le;
      prevCount = c;
    }
    return prevLe;
  }

  /** The newest sample and the one about `seconds` before it (or the oldest kept). */
  function span(seconds) {
    const s = state.samples;
    if (s.length < 2) return null;
    const last = s[s.length - 1];
    let first = s[0];
    for (let i = s.length - 2; i >= 0; i--) {
      first = s[i];
      if (last.t - s[i].t >= seconds) break;
    }
    return [first, last];
  }

  // -- formatting ---------------------------------------------------------------------------

  function ms(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const v = seconds * 1000;
    return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + " ms";
  }
  const rate = (v) => (v === null ? "—" : v < 10 ? v.toFixed(2) : v.toFixed(1));
  const pct = (v) => (v === null ? "—" : (v * 100).toFixed(v < 0.1 ? 1 : 0) + " %");
  const clock = (d) => d.toTimeString().slice(0, 8);
  function ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    const when = clock(new Date(iso));
    if (s < 90) return when + " (" + Math.round(s) + " s ago)";
    if (s < 5400) return when + " (" + Math.round(s / 60) + " min ago)";
    return new Date(iso).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  /** An element: h("td", {class: "x"}, "text", child...). Text is always text, never HTML. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
    return el;
  }

  function table(el, head, rows) {
    el.replaceChildren(h("thead", null, h("tr", null, head.map((x) => h("th", null, x)))), h("tbody", null, rows));
  }

  /** Rebuild `el` from `data` only when `data` changed (keeps what the user opened). */
  function changed(key, data) {
    const text = JSON.stringify(data);
    if (state.seen[key] === text) return false;
    state.seen[key] = text;
    return true;
  }

  // -- panels -------------------------------------------------------------------------------

  function renderConfig(status) {
    const r = status.last_reload;
    let reload = "none since start";
    let cls = "";
    if (r) {
      reload = (r.ok ? "ok" : "rejected") + ", " + r.trigger + ", " + ago(r.at);
      cls = r.ok ? "ok" : "bad";
    }
    const items = [
      ["config", status.path, null],
      ["sha256", status.sha256 ? status.sha256.slice(0, 12) : "—", status.sha256],
      ["loaded", ago(status.loaded_at), status.loaded_at],
      ["last reload", reload, r && r.errors.length ? r.errors.join("\n") : null],
      ["workers", status.workers.length + (status.consistent ? "" : ", not all on this config"),
        status.workers.map((w) => "pid " + w.pid + ": " + (w.sha256 || "").slice(0, 12) + ", loaded " + w.loaded_at).join("\n")],
      ["bascule", status.version, null],
    ];
    const children = [];
    for (const [k, v, title] of items) {
      children.push(h("dt", null, k), h("dd", { title, class: k === "last reload" ? cls : k === "workers" && !status.consistent ? "bad" : null, "data-key": k }, v));
    }
    $("config").replaceChildren(...children);
    const errors = r && !r.ok ? r.errors : [];
    if (errors.length) $("config").append(h("dd", { class: "errors bad" }, errors.map((e) => h("div", null, e))));
  }

  function renderRoutes(routes) {
    if (!changed("routes", routes)) return;
    const rows = routes.map((r) =>
      h("tr", { "data-route": r.name },
        h("th", { scope: "row" }, r.name),
        h("td", null, r.paths.map((p) => h("code", null, p)), r.match === "exact" ? h("span", { class: "tag" }, "exact") : null),
        h("td", null, r.methods.join(" ")),
        h("td", null, r.hosts.join(" ")),
        h("td", null, r.service || h("span", { class: "muted" }, "(its plugin answers)")),
        h("td", { class: "pipeline" }, r.plugins.map((p, i) => [
          i ? h("span", { class: "arrow" }, "→") : null,
          h("details", { class: "plugin" + (p.global ? " global" : ""), "data-instance": p.instance },
            h("summary", { title: "priority " + p.priority + (p.global ? ", from [plugins." + p.instance + "]" : "") },
              p.instance, p.plugin !== p.instance ? h("span", { class: "muted" }, " (" + p.plugin + ")") : null,
              h("span", { class: "prio" }, p.priority)),
            h("pre", null, JSON.stringify(p.settings, null, 2))),
        ])),
      ),
    );
    table($("routes"), ["route", "paths", "methods", "hosts", "service", "pipeline"], rows);
  }

  function renderPlugins(plugins) {
    if (!changed("plugins", plugins)) return;
    table($("plugins"), ["plugin", "version", "distribution", "priority", "hooks"],
      plugins.map((p) => h("tr", { "data-plugin": p.name },
        h("th", { scope: "row" }, p.name), h("td", null, p.version), h("td", null, p.distribution),
        h("td", { class: "num" }, p.priority), h("td", null, p.hooks.join(", ")))));
  }

  function renderServices(upstreams, routes) {
    const win = span(WINDOW_S);
    const boxes = Object.entries(upstreams).map(([name, s]) => {
      let latency = "—";
      if (win) {
        const names = routes.filter((r) => r.service === name).map((r) => r.name);
        const b = delta(mergeRoutes(win[1].upstream, names), mergeRoutes(win[0].upstream, names));
        if (quantile(b, 0.5) !== null) latency = [0.5, 0.95, 0.99].map((q) => ms(quantile(b, q))).join(" / ");
      }
      const facts = [
        ["balance", s.balance], ["in flight", s.in_flight], ["queued", s.queued], ["refused", s.refused],
        ["retries", s.retries], ["upstream p50 / p95 / p99", latency],
      ];
      const rows = s.targets.map((t) => h("tr", null,
        h("td", null, h("code", null, t.url)), h("td", { class: "num" }, t.weight),
        h("td", null, h("span", { class: "state " + t.state }, t.state)),
        h("td", { class: "num" }, t.in_use), h("td", { class: "num" }, t.requests), h("td", { class: "num" }, t.failures),
        h("td", { class: "num" }, t.consecutive_failures), h("td", { class: "num" }, t.ejections),
        h("td", { class: "num" }, t.ejected_for ? t.ejected_for.toFixed(1) + " s" : "—")));
      const t = h("table", { class: "grid targets" });
      table(t, ["target", "weight", "health", "in use", "requests", "failures", "in a row", "ejections", "ejected for"], rows);
      return h("div", { class: "service", "data-service": name },
        h("h3", null, name, s.panic ? h("span", { class: "state ejected" }, "panic") : null),
        h("p", { class: "facts" }, facts.map(([k, v]) => h("span", null, k + " ", h("b", null, v)))), t);
    });
    $("services").replaceChildren(...boxes);
  }

  function renderTraffic() {
    const rows = [];
    const last = state.samples[state.samples.length - 1];
    const win = span(WINDOW_S);
    const recent = span(RATE_S);
    const names = new Set(state.routes.map((r) => r.name));
    for (const k of Object.keys(last.requests)) names.add(k);
    let allRate = 0, allWin = {}, winTotal = 0, win5xx = 0, hits = 0, lookups = 0, rejected = 0;
    for (const name of names) {
      const req = last.requests[name] || {};
      const r = recent ? total(delta(recent[1].requests[name], recent[0].requests[name])) / (recent[1].t - recent[0].t) : null;
      if (r !== null) allRate += r;
      let q = [null, null, null];
      if (win) {
        const b = delta(win[1].duration[name], win[0].duration[name]);
        q = [0.5, 0.95, 0.99].map((x) => quantile(b, x));
        for (const [k, v] of Object.entries(b)) allWin[k] = (allWin[k] || 0) + v;
        const d = delta(win[1].requests[name], win[0].requests[name]);
        winTotal += total(d);
        win5xx += d["5xx"] || 0;
      }
      const cache = last.cache[name] || {};
      const routeLookups = total(cache) - (cache.bypass || 0);
      hits += cache.hit || 0;
      lookups += routeLookups;
      const rl = last.rateLimit[name] || {};
      rejected += rl.rejected || 0;
      const count = total(req);
      const mix = h("div", { class: "mix" });
      for (const c of CLASSES.concat(Object.keys(req).filter((c) => !CLASSES.includes(c)))) {
        if (!req[c]) continue;
        const part = h("span", { class: "c" + c[0], title: c + ": " + req[c] });
        part.style.width = (100 * req[c]) / count + "%";
        mix.append(part);
      }
      const legend = CLASSES.filter((c) => req[c]).map((c) => c + " " + req[c]).join(" · ");
      rows.push(h("tr", { "data-route": name },
        h("th", { scope: "row" }, name),
        h("td", { class: "num rps" }, rate(r)),
        h("td", { class: "num total" }, count),
        h("td", { class: "num p50" }, ms(q[0])), h("td", { class: "num p95" }, ms(q[1])), h("td", { class: "num p99" }, ms(q[2])),
        h("td", { class: "mixcell" }, mix, h("div", { class: "legend" }, legend || "—")),
        h("td", { class: "num cache" }, routeLookups ? pct((cache.hit || 0) / routeLookups) : "—"),
        h("td", { class: "num ratelimited" }, rl.rejected || (Object.keys(rl).length ? 0 : "—")),
      ));
    }
    table($("route-traffic"),
      ["route", "req/s", "requests", "p50", "p95", "p99", "status mix (since start)", "cache hit ratio", "rate-limited"], rows);
    const cards = [
      ["requests/s", recent ? rate(allRate) : "—", "all routes, last " + RATE_S + " s"],
      ["p95 latency", win ? ms(quantile(allWin, 0.95)) : "—", "all routes, last " + Math.round(WINDOW_S / 60) + " min"],
      ["5xx", win && winTotal ? pct(win5xx / winTotal) : "—", "of responses, last " + Math.round(WINDOW_S / 60) + " min"],
      ["cache hit ratio", lookups ? pct(hits / lookups) : "—", "hits / lookups since start"],
      ["rate-limited", rejected, "requests rejected since start"],
    ];
    $("cards").replaceChildren(...cards.map(([k, v, note]) =>
      h("div", { class: "card", "data-card": k }, h("div", { class: "k" }, k), h("div", { class: "v" }, v), h("div", { class: "note" }, note))));
    renderCharts([...names]);
  }

  // -- plots ------------------------------------------------------------------------------

  function chartData(routes) {
    const s = state.samples;
    const xs = [], rps = routes.map(() => []), lat = [[], [], []], status = CLASSES.map(() => []);
    for (let i = 1; i < s.length; i++) {
      const dt = s[i].t - s[i - 1].t;
      xs.push(s[i].t);
      routes.forEach((r, j) => rps[j].push(total(delta(s[i].requests[r], s[i - 1].requests[r])) / dt));
      const b = {};
      for (const r of routes) for (const [k, v] of Object.entries(delta(s[i].duration[r], s[i - 1].duration[r]))) b[k] = (b[k] || 0) + v;
      [0.5, 0.95, 0.99].forEach((q, j) => { const v = quantile(b, q); lat[j].push(v === null ? null : v * 1000); });
      const byClass = {};
      for (const r of routes) for (const [k, v] of Object.entries(delta(s[i].requests[r], s[i - 1].requests[r]))) byClass[k] = (byClass[k] || 0) + v;
      CLASSES.forEach((c, j) => status[j].push((byClass[c] || 0) / dt));
    }
    return { rps: [xs, ...rps], latency: [xs, ...lat], status: [xs, ...status] };
  }

  function makeChart(id, series, unit) {
    const el = $(id);
    const opts = {
      width: Math.max(240, el.clientWidth),
      height: 180,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max || 0, unit === "ms" ? 1 : 0.5) * 1.1] } },
      legend: { live: false },
      axes: [
        { stroke: "#667", grid: { stroke: "#eef0f3" }, space: 70, values: (u, vals) => vals.map((v) => clock(new Date(v * 1000))) },
        { stroke: "#667", grid: { stroke: "#eef0f3" }, size: 66, values: (u, vals) => vals.map((v) => +v.toFixed(2) + (unit ? " " + unit : "")) },
      ],
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2, points: { show: false }, spanGaps: false,
        value: (u, v) => (v === null || v === undefined ? "—" : v.toFixed(2) + (unit ? " " + unit : "")) }))],
    };
    el.replaceChildren();
    return new uPlot(opts, [[]].concat(series.map(() => [])), el);
  }

  function renderCharts(routes) {
    const key = routes.join("\n");
    if (state.chartRoutes !== key) {
      state.chartRoutes = key;
      state.charts.rps = makeChart("chart-rps", routes.map((r, i) => ({ label: r, color: PALETTE[i % PALETTE.length] })), "/s");
      state.charts.latency = makeChart("chart-latency",
        [{ label: "p50", color: "#2e9d5b" }, { label: "p95", color: "#e0a100" }, { label: "p99", color: "#d64545" }], "ms");
      state.charts.status = makeChart("chart-status", CLASSES.map((c) => ({ label: c, color: CLASS_COLORS[c] })), "/s");
    }
    const data = chartData(routes);
    for (const k of ["rps", "latency", "status"]) state.charts[k].setData(data[k]);
  }

  window.addEventListener("resize", () => {
    for (const [k, c] of Object.entries(state.charts)) c.setSize({ width: Math.max(240, $("chart-" + k).clientWidth), height: 180 });
  });

  // -- the loop -----------------------------------------------------------------------------

  function setLive(text, cls) {
    const el = $("live");
    el.textContent = text;
    el.className = "pill " + cls;
  }

  async function poll() {
    clearTimeout(state.timer);
    try {
      const [routes, upstreams, plugins, status] = await Promise.all(
        ["/routes", "/upstreams", "/plugins", "/config/status"].map((p) => get(p)));
      state.routes = routes;
      // The prometheus plugin's page, where its settings put it; not asked for when it is off.
      const prom = routes.flatMap((r) => r.plugins).find((p) => p.plugin === "prometheus");
      state.metricsPath = prom ? (prom.settings && prom.settings.path) || "/metrics" : null;
      let metricsError = null;
      if (state.metricsPath) {
        try {
          state.samples.push(sample(await get(state.metricsPath, "text")));
          const cut = state.samples[state.samples.length - 1].t - WINDOW_S;
          while (state.samples.length > 2 && state.samples[0].t < cut) state.samples.shift();
        } catch (e) {
          if (e instanceof AuthRequired) throw e;
          metricsError = e.message;
        }
      }
      renderConfig(status);
      $("services-note").textContent = "health and counters of the process serving this page (pid " + status.pid +
        "); upstream latency from the metrics of every worker";
      renderRoutes(routes);
      renderPlugins(plugins);
      renderServices(upstreams, routes);
      const traffic = $("traffic");
      if (!state.metricsPath) {
        traffic.className = "off";
        $("traffic-note").textContent =
          "not available: the prometheus plugin is not enabled (add [plugins.prometheus] to the config to see requests/s, latency, status mix, cache and rate-limit figures)";
      } else if (metricsError) {
        traffic.className = "off";
        $("traffic-note").textContent = "metrics unavailable: " + metricsError;
      } else {
        traffic.className = "";
        $("traffic-note").textContent = "all workers, from " + state.metricsPath;
        renderTraffic();
      }
      state.polls++;
      document.body.dataset.polls = state.polls;
      setLive("live · " + clock(new Date()), "ok");
    } catch (e) {
      if (e instanceof AuthRequired) {
        sessionStorage.removeItem(TOKEN_KEY);
        setLive("token required", "bad");
        askToken();
        return;
      }
      setLive("unreachable · " + e.message, "bad");
    }
    state.timer = setTimeout(poll, POLL_MS);
  }

  // The metrics arithmetic, for tests (tests/test_dashboard.py) and the browser's console.
  window.BasculeDashboard = Object.freeze({ parseMetrics, sample, quantile });
  poll();
})();
