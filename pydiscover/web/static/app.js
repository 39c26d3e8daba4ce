// The monitor's page: renders the snapshots /api/events streams.  Everything from the
// network goes into the page as text (textContent), never as HTML.
"use strict";
(function () {
  const token = new URLSearchParams(window.location.search).get("token");
  const query = token ? "?token=" + encodeURIComponent(token) : "";
  const SVG = "http://www.w3.org/2000/svg";
  const LANES = { join: 0, leave: 1, promotion: 2, demotion: 3 };
  // A node first heard already master (at the monitor's start, after a partition): the promotion lane.
  const LANE_OF = Object.assign({ master: LANES.promotion }, LANES);
  const LABEL = { master: "seen as master" };
  const byId = (id) => document.getElementById(id);
  let source = null;

  byId("api-nodes").href = "api/nodes" + query;
  byId("api-metrics").href = "metrics" + query;

  function setStatus(text, live) {
    const el = byId("status");
    el.textContent = text;
    el.className = "status " + (live ? "live" : "down");
  }

  function ago(seconds) {
    return seconds < 10 ? seconds.toFixed(1) + " s" : Math.round(seconds) + " s";
  }

  function clock(t) {
    return new Date(t * 1000).toLocaleTimeString();
  }

  function cell(row, index, text, className) {
    let td = row.cells[index];
    if (!td) {
      td = row.insertCell(index);
      if (className) td.className = className;
    }
    if (td.textContent !== text) td.textContent = text;
    return td;
  }

  function renderNodes(nodes) {
    const body = byId("nodes").tBodies[0];
    const rows = new Map();
    for (const row of Array.from(body.rows)) rows.set(row.dataset.nodeId, row);
    nodes.forEach((node, position) => {
      let row = rows.get(node.id);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.nodeId = node.id;
      }
      rows.delete(node.id);
      if (body.rows[position] !== row) body.insertBefore(row, body.rows[position] || null);
      if (node.is_master) row.dataset.master = "true";
      else delete row.dataset.master;
      const advert = node.advertisement === null ? "" : JSON.stringify(node.advertisement);
      cell(row, 0, node.id.slice(0, 8), "id").title = node.id;
      cell(row, 1, node.hostname);
      cell(row, 2, node.address + ":" + node.port);
      cell(row, 3, String(node.weight));
      cell(row, 4, node.is_master ? "MASTER" : "");
      cell(row, 5, node.is_master_eligible ? "yes" : "no");
      cell(row, 6, advert, "advert").title = advert;
      cell(row, 7, ago(node.last_seen_ago) + " ago");
      cell(row, 8, node.hello_rate.toFixed(1));
    });
    for (const stale of rows.values()) stale.remove();
    byId("no-nodes").hidden = nodes.length > 0;
  }

  function renderSummary(snap) {
    byId("node-count").textContent = String(snap.totals.nodes);
    const masters = snap.nodes.filter((n) => n.is_master).map((n) => n.hostname + " " + n.id.slice(0, 8));
    byId("masters").textContent = masters.length ? masters.join(", ") : "none";
    const rate = snap.nodes.reduce((sum, n) => sum + n.hello_rate, 0);
    byId("hello-rate").textContent = rate.toFixed(1);
    byId("channel-messages").textContent = String(snap.totals.channel_messages);
    byId("packets-in").textContent = String(snap.stats.packets_in);
  }

  function renderDrops(dropped) {
    const body = byId("drops").tBodies[0];
    const reasons = Object.keys(dropped).sort();
    body.replaceChildren(...reasons.map((reason) => {
      const row = document.createElement("tr");
      row.dataset.reason = reason;
      cell(row, 0, reason);
      cell(row, 1, String(dropped[reason]));
      return row;
    }));
    byId("no-drops").hidden = reasons.length > 0;
  }

  function svg(name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function renderTimeline(snap) {
    const chart = byId("timeline");
    const width = 900, left = 70, right = 10, top = 10, laneHeight = 18, countTop = 90, countHeight = 60;
    const end = snap.now, start = end - snap.timeline_seconds;
    const x = (t) => left + ((t - start) / (end - start)) * (width - left - right);
    const parts = [];
    Object.entries(LANES).forEach(([kind, lane]) => {
      const y = top + lane * laneHeight + laneHeight / 2;
      parts.push(svg("line", { class: "axis", x1: left, x2: width - right, y1: y, y2: y }));
      parts.push(svg("text", { x: 4, y: y + 3 }, kind));
    });
    const entries = snap.timeline;
    const most = Math.max(1, snap.totals.nodes, ...entries.map((e) => e.nodes));
    const yCount = (n) => countTop + countHeight - (n / most) * countHeight;
    parts.push(svg("line", { class: "axis", x1: left, x2: width - right, y1: countTop + countHeight,
                             y2: countTop + countHeight }));
    parts.push(svg("text", { x: 4, y: countTop + 8 }, most + " nodes"));
    for (let minute = 0; minute <= 15; minute += 5) {
      const t = start + minute * 60;
      parts.push(svg("text", { x: x(t) - (minute === 15 ? 20 : 0), y: 166 },
                     minute === 15 ? "now" : "-" + (15 - minute) + " min"));
    }
    let path = "";
    let previous = null;
    for (const entry of entries) {
      const lane = LANE_OF[entry.kind];
      if (lane === undefined) continue;
      const dot = svg("circle", { class: entry.kind, cx: x(entry.t), cy: top + lane * laneHeight + laneHeight / 2,
                                  r: 4 });
      dot.appendChild(svg("title", {}, clock(entry.t) + " " + (LABEL[entry.kind] || entry.kind) + " " +
                                       entry.hostname + " " + entry.id));
      parts.push(dot);
      path += (previous === null ? "M" + x(entry.t) + "," + yCount(entry.nodes)
                                 : " H" + x(entry.t) + " V" + yCount(entry.nodes));
      previous = entry;
    }
    if (previous !== null) {
      path += " H" + x(end) + " V" + yCount(snap.totals.nodes);
      parts.push(svg("path", { class: "count", d: path }));
    }
    chart.replaceChildren(...parts);

    const list = byId("events");
    const recent = entries.slice(-30).reverse();
    list.replaceChildren(...recent.map((entry) => {
      const item = document.createElement("li");
      item.className = entry.kind;
      item.textContent = clock(entry.t) + "  " + (LABEL[entry.kind] || entry.kind).padEnd(9) + " " + entry.hostname + " " +
        entry.id.slice(0, 8) + "  (" + entry.nodes + " nodes)";
      return item;
    }));
  }

  function render(snap) {
    renderNodes(snap.nodes);
    renderSummary(snap);
    renderDrops(snap.stats.dropped);
    renderTimeline(snap);
    document.body.dataset.updated = String(snap.now);
  }

  function connect() {
    source = new EventSource("api/events" + query);
    source.addEventListener("open", () => setStatus("live", true));
    source.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (a wrong token) or the server is gone: try again, slowly.
        setStatus("disconnected", false);
        setTimeout(connect, 3000);
      } else {
        setStatus("reconnecting\u2026", false);
      }
    });
  }

  connect();
})();
