// ccied-p2p dashboard: one EventSource to this node, inline SVG drawn here. No CDN, no framework.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const HISTORY = 300; // samples kept (one a second: five minutes)
  const COLORS = { alive: "#2e9d57", suspect: "#e0a020", dead: "#d33c3c", left: "#8a8f98" };
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const query = token ? "?token=" + encodeURIComponent(token) : "";

  let history = [];
  let lastMessage = 0;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function html(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function fmtInt(n) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let v = Math.abs(n);
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return (n < 0 ? "-" : "") + (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }

  function fmtMs(v) {
    if (v === null || v === undefined) return "–";
    return v < 1 ? v.toFixed(3) : v < 10 ? v.toFixed(2) : v.toFixed(1);
  }

  function fmtPct(v) {
    return v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%";
  }

  function fmtAgo(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return "now";
    if (s < 90) return s.toFixed(0) + " s ago";
    return (s / 60).toFixed(1) + " min ago";
  }

  // A sparkline into an existing <svg viewBox="0 0 W H">; null values leave gaps.
  function spark(svg, values, opts) {
    clear(svg);
    const vb = svg.viewBox.baseVal;
    const w = vb && vb.width ? vb.width : 120;
    const h = vb && vb.height ? vb.height : 26;
    const color = (opts && opts.color) || "#3b6fd8";
    const n = values.length;
    const finite = values.filter((v) => v !== null && v !== undefined && isFinite(v));
    if (!finite.length) {
      svg.appendChild(el("line", { x1: 0, y1: h - 1, x2: w, y2: h - 1, stroke: "#e3e6ea", "stroke-width": 1 }));
      return;
    }
    const lo = opts && opts.min !== undefined ? opts.min : Math.min(...finite);
    let hi = opts && opts.max !== undefined ? opts.max : Math.max(...finite);
    if (hi <= lo) hi = lo + 1;
    const slots = Math.max(n, (opts && opts.slots) || n);
    const x = (i) => (slots <= 1 ? w : (w * (i + slots - n)) / (slots - 1));
    const y = (v) => h - 2 - ((h - 4) * (v - lo)) / (hi - lo);
    let pts = [];
    const flush = () => {
      if (pts.length === 1) {
        const [px, py] = pts[0].split(",");
        svg.appendChild(el("circle", { cx: px, cy: py, r: 1.5, fill: color }));
      } else if (pts.length > 1) {
        svg.appendChild(el("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 1.5, "vector-effect": "non-scaling-stroke" }));
      }
      pts = [];
    };
    values.forEach((v, i) => {
      if (v === null || v === undefined || !isFinite(v)) flush();
      else pts.push(x(i).toFixed(2) + "," + y(v).toFixed(2));
    });
    flush();
  }

  function nodeSeries(name, key) {
    return history.map((s) => (s.nodes && s.nodes[name] ? s.nodes[name][key] : null));
  }

  function renderCards(st) {
    const req = st.requests;
    const kinds = req.by_kind || {};
    $("requests").textContent = fmtInt(req.total);
    $("requests-sub").textContent =
      "cache " + fmtInt(kinds.cache) + " · local " + fmtInt(kinds.local) + " · peers " + fmtInt(kinds.peer) +
      (req.failed ? " · failed " + fmtInt(req.failed) : "");
    const hits = kinds.cache || 0;
    $("hits").textContent = fmtInt(hits);
    $("hits").setAttribute("data-value", String(hits));
    const rate = req.total ? hits / req.total : null;
    const cache = st.cache;
    $("hit-rate").textContent = "hit rate " + fmtPct(rate) + (cache && cache.recent_hit_rate !== null ? " · recent " + fmtPct(cache.recent_hit_rate) : "");
    const lat = req.latency_ms || {};
    $("latency").textContent = fmtMs(lat.p50) + " / " + fmtMs(lat.p99);
    $("latency-sub").textContent = "ms, last " + fmtInt(lat.window) + " requests";
    const b = st.bytes;
    $("bytes-saved").textContent = fmtBytes(b.saved);
    $("bytes-sub").textContent =
      "sent " + fmtBytes(b.activation_sent) + " of " + fmtBytes(b.activation_raw) + " raw" +
      (b.compression ? " · ×" + b.compression.toFixed(1) + " smaller when sent" : "");
    const bar = $("bytes-bar");
    clear(bar);
    const frac = b.activation_raw ? Math.min(1, b.activation_sent / b.activation_raw) : 0;
    bar.appendChild(el("rect", { x: 0, y: 0, width: 100, height: 8, fill: "#e3f4e9" }));
    bar.appendChild(el("rect", { x: 0, y: 0, width: (100 * frac).toFixed(2), height: 8, fill: "#3b6fd8" }));
    const states = (st.gossip && st.gossip.states) || {};
    $("peers-count").textContent = fmtInt(states.alive || 0) + " / " + fmtInt(st.peers.length);
    $("peers-sub").textContent =
      ["suspect", "dead", "left"].filter((k) => states[k]).map((k) => states[k] + " " + k).join(" · ") || "all alive";
    if (cache) {
      $("cache-entries").textContent = fmtInt(cache.entries);
      const fb = cache.false_hit_budget || {};
      $("cache-sub").textContent =
        "threshold " + (fb.threshold === null ? "–" : Number(fb.threshold).toPrecision(3)) + " · k " + fb.k + " · votes " + fb.votes +
        " · evicted " + fmtInt(cache.evictions);
    }
  }

  function nodesOf(st) {
    const me = st.node;
    const out = [{
      name: me.name, self: true, state: "alive", address: me.address, load: me.load,
      cache: st.cache ? { entries: st.cache.entries, hit_rate: st.cache.recent_hit_rate } : null,
      last_heard_s: 0, link: true, latency: st.requests.latency_ms,
    }];
    for (const p of st.peers) {
      out.push({
        name: p.name, id: p.id, self: false, state: p.state, address: p.address, load: p.load, cache: p.cache,
        last_heard_s: p.last_heard_s, link: p.link !== null, latency: p.latency_ms, compatible: p.compatible,
      });
    }
    return out;
  }

  function renderTopology(nodes) {
    const svg = $("topology");
    clear(svg);
    const cx = 260, cy = 158, radius = 112;
    const peers = nodes.filter((n) => !n.self);
    const pos = new Map();
    pos.set(nodes[0], [cx, cy]);
    peers.forEach((p, i) => {
      // Offset by half a step so no peer sits straight above the centre, where its label meets the edge.
      const a = -Math.PI / 2 + Math.PI / Math.max(1, peers.length) + (2 * Math.PI * i) / Math.max(1, peers.length);
      pos.set(p, [cx + radius * 1.45 * Math.cos(a), cy + radius * Math.sin(a)]);
    });
    const edges = el("g", { class: "edges" });
    for (const p of peers) {
      const [x, y] = pos.get(p);
      const line = el("line", {
        x1: cx, y1: cy, x2: x.toFixed(1), y2: y.toFixed(1), stroke: COLORS[p.state] || "#999",
        "stroke-width": p.link ? 2 : 1.2, "stroke-opacity": p.link ? 0.8 : 0.5,
      });
      if (!p.link) line.setAttribute("stroke-dasharray", "5 4");
      edges.appendChild(line);
    }
    svg.appendChild(edges);
    for (const n of nodes) {
      const [x, y] = pos.get(n);
      const g = el("g", { class: "node" + (n.self ? " self" : ""), "data-name": n.name, "data-state": n.state, transform: "translate(" + x.toFixed(1) + "," + y.toFixed(1) + ")" });
      const title = el("title", {}, n.name + " (" + n.state + ") " + n.address);
      g.appendChild(title);
      g.appendChild(el("circle", { r: n.self ? 30 : 26, fill: COLORS[n.state] || "#999", stroke: n.self ? "#1d232b" : "#fff", "stroke-width": n.self ? 3 : 2 }));
      const gone = n.state === "dead" || n.state === "left";
      const hr = gone ? "✕" : n.cache && n.cache.hit_rate !== null && n.cache.hit_rate !== undefined ? Math.round(100 * n.cache.hit_rate) + "%" : "–";
      g.appendChild(el("text", { class: "inner", "text-anchor": "middle", dy: 4 }, hr));
      const below = n.self ? 46 : 42;
      g.appendChild(el("text", { "text-anchor": "middle", y: below }, n.name + (n.self ? " (this node)" : "")));
      const load = gone ? "last heard " + fmtAgo(n.last_heard_s) : n.load ? "q " + n.load.queue_depth + " · " + fmtMs(n.load.tail_ms) + " ms · " + (n.load.service_rate || 0).toFixed(1) + "/s" : "no load report";
      g.appendChild(el("text", { class: "small", "text-anchor": "middle", y: below + 14 }, load));
      const entries = n.cache ? fmtInt(n.cache.entries) + " cached" : "";
      g.appendChild(el("text", { class: "small", "text-anchor": "middle", y: below + 27 }, n.state === "alive" ? entries : n.state));
      svg.appendChild(g);
    }
  }

  function renderNodes(nodes) {
    const body = $("nodes").querySelector("tbody");
    clear(body);
    for (const n of nodes) {
      const tr = html("tr", { "data-name": n.name, "data-state": n.state, class: n.self ? "self" : "" });
      tr.appendChild(html("td", {}, n.name + (n.self ? " (this node)" : "")));
      const stateCell = html("td");
      stateCell.appendChild(html("span", { class: "state", "data-state": n.state }, n.state));
      tr.appendChild(stateCell);
      tr.appendChild(html("td", { class: "addr" }, n.address));
      tr.appendChild(html("td", {}, n.load ? String(n.load.queue_depth) : "–"));
      const cells = [
        ["rate", (v) => (v === null || v === undefined ? "–" : v.toFixed(1)), { min: 0, color: "#7a5cc7" }],
        ["hit_rate", fmtPct, { min: 0, max: 1, color: "#2e9d57" }],
        ["latency_ms", fmtMs, { min: 0, color: "#3b6fd8" }],
      ];
      for (const [key, fmt, opts] of cells) {
        const series = nodeSeries(n.name, key);
        const td = html("td");
        let current = series.length ? series[series.length - 1] : null;
        if (current === null && key === "latency_ms" && n.latency) current = n.latency.p50;
        td.appendChild(html("span", { class: "num" }, fmt(current)));
        const svg = el("svg", { class: "spark", viewBox: "0 0 120 26", preserveAspectRatio: "none" });
        td.appendChild(svg);
        spark(svg, series.slice(-120), { ...opts, slots: 120 });
        tr.appendChild(td);
      }
      tr.appendChild(html("td", {}, n.cache ? fmtInt(n.cache.entries) : "–"));
      tr.appendChild(html("td", {}, n.self ? "–" : fmtAgo(n.last_heard_s)));
      body.appendChild(tr);
    }
  }

  function renderSources(st) {
    const body = $("sources").querySelector("tbody");
    clear(body);
    for (const [src, v] of Object.entries(st.requests.by_source)) {
      const tr = html("tr", { "data-source": src });
      tr.appendChild(html("td", {}, src));
      tr.appendChild(html("td", {}, fmtInt(v.count)));
      for (const k of ["p50", "p90", "p99"]) tr.appendChild(html("td", {}, fmtMs(v.latency_ms[k])));
      body.appendChild(tr);
    }
  }

  function renderCharts() {
    const rps = history.map((s) => s.requests);
    const hit = history.map((s) => s.hit_rate);
    const lat = history.map((s) => s.latency_ms);
    const saved = history.map((s) => s.bytes_raw - s.bytes_sent);
    spark($("chart-rps"), rps, { min: 0, color: "#7a5cc7", slots: HISTORY });
    spark($("chart-hit"), hit, { min: 0, max: 1, color: "#2e9d57", slots: HISTORY });
    spark($("chart-lat"), lat, { min: 0, color: "#3b6fd8", slots: HISTORY });
    spark($("chart-saved"), saved, { min: 0, color: "#c7715c", slots: HISTORY });
    const last = history.length ? history[history.length - 1] : null;
    $("rps-now").textContent = last ? String(last.requests) : "–";
    $("hit-now").textContent = last ? fmtPct(last.hit_rate) : "–";
    $("lat-now").textContent = last && last.latency_ms !== null ? fmtMs(last.latency_ms) + " ms" : "–";
    $("saved-now").textContent = last ? fmtBytes(last.bytes_raw - last.bytes_sent) : "–";
    $("window").textContent = history.length ? "(" + Math.round(history.length / 60 * 10) / 10 + " min)" : "";
  }

  function render(st) {
    const me = st.node;
    $("node-name").textContent = me.name + (me.cpu_quota ? " (CPU quota " + Math.round(me.cpu_quota * 100) + "% of a core)" : "");
    document.title = "ccied-p2p · " + me.name;
    $("node-meta").textContent =
      me.address + " · fingerprint " + me.fingerprint.slice(0, 12) + " · split " + me.split + " · up " + Math.round(me.uptime_s) + " s" +
      (me.secure ? "" : " · INSECURE");
    renderCards(st);
    const nodes = nodesOf(st);
    renderTopology(nodes);
    renderNodes(nodes);
    renderSources(st);
    renderCharts();
  }

  function addSample(sample) {
    if (!sample) return;
    const last = history.length ? history[history.length - 1] : null;
    if (last && sample.seq <= last.seq) return;
    history.push(sample);
    if (history.length > HISTORY) history = history.slice(-HISTORY);
  }

  function setConn(state, text) {
    const c = $("conn");
    c.setAttribute("data-state", state);
    c.textContent = text;
  }

  const source = new EventSource("/events" + query);
  source.addEventListener("hello", (ev) => {
    const data = JSON.parse(ev.data);
    history = (data.history || []).slice(-HISTORY);
    lastMessage = Date.now();
    setConn("live", "live");
    render(data.status);
  });
  source.addEventListener("snapshot", (ev) => {
    const data = JSON.parse(ev.data);
    addSample(data.sample);
    lastMessage = Date.now();
    setConn("live", "live");
    render(data.status);
  });
  source.onerror = () => setConn("reconnecting", "reconnecting…");
  setInterval(() => {
    if (lastMessage && Date.now() - lastMessage > 5000 && source.readyState !== EventSource.CLOSED) {
      setConn("stale", "no update for " + Math.round((Date.now() - lastMessage) / 1000) + " s");
    }
  }, 1000);
})();
