/*
 * trimesh live dashboard: polls GET v1/overview every 2 s and renders it.
 *
 * Every piece of text from the answer (service names come from the network)
 * reaches the page through textContent / setAttribute only, never as markup,
 * so nothing in it can become an element or run. Sparklines are kept here,
 * one point per successful poll.
 *
 * The shape of GET /v1/overview. Every key may be missing or null: the page
 * renders what is there ("—" otherwise).
 *
 * {
 *   "identity": {
 *     "service": str, "version": str, "app": str, "instance": str,
 *     "listeners": {"outbound": "host:port", "inbound": "host:port", "admin": "host:port"},
 *     "registry": {"type": str, "registered": bool, "error": str | null},
 *     "draining": bool
 *   },
 *   "services": {
 *     NAME: {
 *       "instances": [{"id": str, "address": "host:port", "version": str,
 *                      "status": "UP" | "DOWN" | ..., "lease_age": seconds}],
 *       "live": {"rps": req/s, "success_rate": fraction 0..1, "p50_ms": ms,
 *                "p99_ms": ms, "requests": count},          (over the last minute)
 *       "policies": {
 *         "circuit_breaker": {"state": "closed" | "open" | "half-open",
 *                             "error_percentage": %, "retry_after": seconds, ...},
 *         "outlier": {"host:port": {"ejected_until": seconds of ejection left, ...}},
 *         "in_flight": int, "max_concurrent": int | null, "rate_limited": count
 *       }
 *     }
 *   },
 *   "errors": [{"ts": unix seconds, "direction": "outbound" | "inbound", "service": str,
 *               "status": int, "error": x-trimesh-error kind or "", "path": str}]
 * }
 *
 * Errors may come in any order; the page shows the newest MAX_ERRORS first.
 */
"use strict";

(function () {
  const POLL_MS = 2000;
  const FETCH_DEADLINE_MS = 1800; // one poll never overlaps the next
  const HISTORY = 60; // sparkline points: two minutes of polls
  const MAX_ERRORS = 50;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const DASH = "\u2014";

  const history = new Map(); // service name -> {rps: [], success: [], p50: [], p99: []}
  let lastGood = null;

  // --- small helpers -------------------------------------------------------

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function obj(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value) ? value : {};
  }

  function num(value) {
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }

  function text(value) {
    if (value === null || value === undefined || value === "") return DASH;
    return String(value);
  }

  function fixed(value, digits) {
    return value.toLocaleString("en-US", {
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    });
  }

  function fmtRate(v) {
    v = num(v);
    return v === null ? DASH : fixed(v, v < 10 ? 2 : 1) + "/s";
  }

  function fmtPercent(v) {
    v = num(v);
    return v === null ? DASH : fixed(v * 100, v >= 0.9995 || v === 0 ? 0 : 1) + "%";
  }

  function fmtMs(v) {
    v = num(v);
    if (v === null) return DASH;
    return fixed(v, v < 10 ? 2 : v < 100 ? 1 : 0) + " ms";
  }

  function fmtSeconds(v) {
    v = num(v);
    if (v === null) return DASH;
    if (v < 60) return fixed(v, v < 10 ? 1 : 0) + " s";
    if (v < 3600) return Math.floor(v / 60) + " m " + Math.floor(v % 60) + " s";
    return Math.floor(v / 3600) + " h " + Math.floor((v % 3600) / 60) + " m";
  }

  function fmtClock(date) {
    const two = (n) => String(n).padStart(2, "0");
    return two(date.getHours()) + ":" + two(date.getMinutes()) + ":" + two(date.getSeconds());
  }

  function headRow(labels) {
    return el("tr", null, ...labels.map((label) => el("th", null, label)));
  }

  function badge(label, tone) {
    return el("span", "badge badge-" + tone, label);
  }

  // "rest://10.0.0.5:8080" and "10.0.0.5:8080" name the same endpoint.
  function hostPort(address) {
    return typeof address === "string" ? address.replace(/^[a-z][a-z0-9+.-]*:\/\//i, "") : "";
  }

  // --- sparklines ----------------------------------------------------------

  function remember(name, live) {
    let series = history.get(name);
    if (!series) {
      series = { rps: [], success: [], p50: [], p99: [] };
      history.set(name, series);
    }
    const points = {
      rps: num(live.rps),
      success: num(live.success_rate),
      p50: num(live.p50_ms),
      p99: num(live.p99_ms),
    };
    for (const key of Object.keys(points)) {
      series[key].push(points[key]);
      if (series[key].length > HISTORY) series[key].shift();
    }
    return series;
  }

  function forget(names) {
    for (const name of Array.from(history.keys())) {
      if (!names.has(name)) history.delete(name);
    }
  }

  function sparkline(values, fixedMax, label) {
    const width = 120;
    const height = 26;
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("width", String(width));
    svg.setAttribute("height", String(height));
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    const known = values.filter((v) => v !== null);
    if (known.length === 0) return svg;
    // A fixed scale (success 0..1) shows how far from perfect; a free one shows the trend.
    let min = fixedMax !== null ? 0 : Math.min(...known);
    let max = fixedMax !== null ? fixedMax : Math.max(...known);
    if (!(max > min)) {
      min = Math.min(0, min);
      max = min + (Math.abs(max) || 1) * 2;
    }
    // Until HISTORY polls are in, the points there are stretched across the whole width.
    const step = width / (Math.max(values.length, 2) - 1);
    const offset = values.length === 1 ? width : 0;
    const coords = [];
    values.forEach((v, i) => {
      if (v === null) return;
      const y = height - 2 - ((Math.min(Math.max(v, min), max) - min) / (max - min)) * (height - 4);
      coords.push((offset + i * step).toFixed(1) + "," + y.toFixed(1));
    });
    if (coords.length > 1) {
      const line = document.createElementNS(SVG_NS, "polyline");
      line.setAttribute("points", coords.join(" "));
      svg.append(line);
    }
    if (coords.length > 0) {
      const [x, y] = coords[coords.length - 1].split(",");
      const dot = document.createElementNS(SVG_NS, "circle");
      dot.setAttribute("cx", x);
      dot.setAttribute("cy", y);
      dot.setAttribute("r", "2");
      svg.append(dot);
    }
    return svg;
  }

  // --- identity ------------------------------------------------------------

  function renderIdentity(identity) {
    const header = document.getElementById("identity");
    const listeners = obj(identity.listeners);
    const registry = obj(identity.registry);
    const title = el("h1", null, "trimesh ", el("span", "service", text(identity.service)));
    const badges = el("div", "badges");
    if (registry.type) badges.append(badge("registry: " + String(registry.type), "neutral"));
    if (registry.registered === true) badges.append(badge("registered", "good"));
    else if (registry.registered === false) badges.append(badge("not registered", "bad"));
    if (identity.draining === true) badges.append(badge("draining", "warn"));
    const facts = el("dl", "facts");
    const fact = (label, value) =>
      facts.append(el("div", null, el("dt", null, label), el("dd", null, text(value))));
    fact("version", identity.version);
    fact("app", identity.app);
    fact("instance", identity.instance);
    fact("outbound", listeners.outbound);
    fact("inbound", listeners.inbound);
    fact("admin", listeners.admin);
    const problem = registry.error ? el("p", "problem", "registry: " + String(registry.error)) : "";
    header.replaceChildren(el("div", "title-row", title, badges), facts, problem);
  }

  // --- services ------------------------------------------------------------

  function figure(label, value, svg) {
    return el("div", "figure", el("div", "label", label), el("div", "value", value), svg);
  }

  function renderLive(name, live) {
    const series = remember(name, live);
    const requests = num(live.requests);
    const row = el(
      "div",
      "figures",
      figure("requests/s", fmtRate(live.rps), sparkline(series.rps, null, "request rate")),
      figure("success", fmtPercent(live.success_rate), sparkline(series.success, 1, "success")),
      figure("p50", fmtMs(live.p50_ms), sparkline(series.p50, null, "median latency")),
      figure("p99", fmtMs(live.p99_ms), sparkline(series.p99, null, "p99 latency")),
    );
    const said = requests === null ? null : fixed(requests, 0) + " requests in the last minute";
    return [row, said === null ? null : el("p", "muted", said)];
  }

  function ejectedSet(outlier) {
    const ejected = new Map();
    for (const key of Object.keys(outlier)) {
      const left = num(obj(outlier[key]).ejected_until);
      if (left !== null && left > 0) ejected.set(key, left);
    }
    return ejected;
  }

  function breakerBadge(breaker) {
    const state = typeof breaker.state === "string" ? breaker.state : null;
    if (state === null) return null;
    const tone = state === "closed" ? "good" : state === "open" ? "bad" : "warn";
    return badge("breaker " + state, tone);
  }

  function renderPolicies(policies, ejected) {
    const breaker = obj(policies.circuit_breaker);
    const items = el("ul", "policies");
    const item = (...parts) => items.append(el("li", null, ...parts));
    if (breaker.state) {
      const detail = [];
      const errorPercentage = num(breaker.error_percentage);
      if (errorPercentage !== null) detail.push(fixed(errorPercentage, 1) + "% errors");
      const retryAfter = num(breaker.retry_after);
      if (breaker.probing === true) detail.push("probe in flight");
      else if (breaker.state === "open" && retryAfter !== null && retryAfter > 0) {
        detail.push("next probe in " + fmtSeconds(retryAfter));
      }
      const rejected = num(breaker.rejected);
      if (rejected) detail.push(fixed(rejected, 0) + " rejected");
      // The state itself is the badge in the card's heading.
      if (detail.length) item(el("b", null, "circuit breaker "), detail.join(", "));
    }
    const inFlight = num(policies.in_flight);
    const limit = num(policies.max_concurrent);
    if (inFlight !== null || limit !== null) {
      const meter = limit ? el("meter", null) : null;
      if (meter) {
        meter.max = limit;
        meter.value = inFlight || 0;
        meter.high = limit * 0.8;
      }
      const of = limit === null ? " (no limit)" : " / " + limit;
      item(el("b", null, "in flight "), text(inFlight === null ? 0 : inFlight) + of + " ", meter);
    }
    if (num(policies.rate_limited) !== null) {
      item(el("b", null, "rate limited "), fixed(policies.rate_limited, 0));
    }
    if (ejected.size > 0) {
      const names = Array.from(ejected, ([key, left]) => key + " (" + fmtSeconds(left) + " left)");
      item(el("b", null, "ejected "), names.join(", "));
    }
    return items.childElementCount ? items : null;
  }

  function renderInstances(instances, ejected) {
    if (!Array.isArray(instances) || instances.length === 0) {
      return el("p", "muted", "no instances known");
    }
    const head = headRow(["instance", "address", "version", "status", "lease age"]);
    const body = el("tbody");
    for (const raw of instances) {
      const inst = obj(raw);
      const status = text(inst.status);
      const tone = status === "UP" ? "good" : status === "DOWN" ? "bad" : "warn";
      const cell = el("td", null, badge(status, tone));
      const left = ejected.get(hostPort(inst.address));
      if (left !== undefined) cell.append(" ", badge("ejected", "warn"));
      body.append(
        el(
          "tr",
          null,
          el("td", "mono", text(inst.id)),
          el("td", "mono", text(inst.address)),
          el("td", null, text(inst.version)),
          cell,
          el("td", null, fmtSeconds(inst.lease_age)),
        ),
      );
    }
    return el("table", "instances", el("thead", null, head), body);
  }

  function renderService(name, service) {
    const policies = obj(service.policies);
    const ejected = ejectedSet(obj(policies.outlier));
    const breaker = breakerBadge(obj(policies.circuit_breaker));
    const heading = el("h3", null, el("span", "name", name), breaker);
    const card = el("article", "card", heading, ...renderLive(name, obj(service.live)));
    card.append(renderPolicies(policies, ejected) || "");
    card.append(renderInstances(service.instances, ejected));
    return card;
  }

  function renderServices(services) {
    const box = document.getElementById("services");
    const names = Object.keys(services).sort();
    forget(new Set(names));
    if (names.length === 0) {
      box.replaceChildren(el("p", "muted", "no services known yet"));
      return;
    }
    box.replaceChildren(...names.map((name) => renderService(name, obj(services[name]))));
  }

  // --- errors --------------------------------------------------------------

  function renderErrors(errors) {
    const box = document.getElementById("errors");
    const rows = (Array.isArray(errors) ? errors : []).map(obj);
    if (rows.length === 0) {
      box.replaceChildren(el("p", "muted", "no errors"));
      return;
    }
    rows.sort((a, b) => (num(b.ts) || 0) - (num(a.ts) || 0));
    const head = headRow(["time", "direction", "service", "status", "error", "path"]);
    const body = el("tbody");
    for (const e of rows.slice(0, MAX_ERRORS)) {
      const ts = num(e.ts);
      body.append(
        el(
          "tr",
          null,
          el("td", "mono", ts === null ? DASH : fmtClock(new Date(ts * 1000))),
          el("td", null, text(e.direction)),
          el("td", null, text(e.service)),
          el("td", "mono", text(e.status)),
          el("td", null, e.error ? el("code", "kind", String(e.error)) : DASH),
          el("td", "mono path", text(e.path)),
        ),
      );
    }
    box.replaceChildren(el("table", "errors", el("thead", null, head), body));
  }

  // --- polling -------------------------------------------------------------

  function render(overview) {
    renderIdentity(obj(overview.identity));
    renderServices(obj(overview.services));
    renderErrors(overview.errors);
  }

  function connected() {
    lastGood = new Date();
    document.body.classList.remove("stale");
    document.getElementById("banner").hidden = true;
    document.getElementById("status").textContent =
      "updated " + fmtClock(lastGood) + " \u00b7 refreshing every " + POLL_MS / 1000 + " s";
  }

  function disconnected(reason) {
    const banner = document.getElementById("banner");
    const since = lastGood ? "; last update " + fmtClock(lastGood) : "";
    banner.textContent =
      "Disconnected from the sidecar (" + reason + ")" + since + ". Retrying\u2026";
    banner.hidden = false;
    document.body.classList.add("stale");
  }

  async function fetchOverview() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), FETCH_DEADLINE_MS);
    try {
      const response = await fetch("v1/overview", { cache: "no-store", signal: abort.signal });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const body = await response.json();
      if (body === null || typeof body !== "object") throw new Error("not a JSON object");
      return body;
    } catch (err) {
      const timedOut = err && err.name === "AbortError";
      throw new Error(timedOut ? "no answer in time" : String((err && err.message) || err));
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    let overview = null;
    try {
      overview = await fetchOverview();
    } catch (err) {
      disconnected(err.message);
    }
    if (overview !== null) {
      connected();
      try {
        render(overview);
      } catch (err) {
        // A renderer bug must not look like a dead sidecar, nor stop the polling.
        document.getElementById("status").textContent = "could not render the answer: " + err;
      }
    }
    setTimeout(poll, POLL_MS);
  }

  poll();
})();
