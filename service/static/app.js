// framewire's live page: polls /api/status every second, keeps the server's
// 15-minute history (/api/history) and draws it as plain SVG. No library, no
// network beyond this server, no build step.
"use strict";

const SPAN_SECONDS = 15 * 60;
const MIN_SPAN_SECONDS = 120;
const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
// Okabe-Ito: told apart by people with colour-blind eyes too.
const PALETTE = ["#56b4e9", "#e69f00", "#009e73", "#f0e442", "#cc79a7", "#d55e00", "#0072b2", "#bbbbbb"];

const page = { samples: [], latest: null, colors: new Map() };

// ------------------------------------------------------------------ formatting

function isNumber(v) {
  return typeof v === "number" && Number.isFinite(v);
}

function compact(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function bytes(v) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v >= 100 ? 0 : 1)) + " " + units[i];
}

function fmt(v, unit) {
  if (!isNumber(v)) return "–";
  switch (unit) {
    case "bytes": return bytes(v);
    case "%": return v.toFixed(v < 10 ? 1 : 0) + "%";
    case "ms": return Math.abs(v) >= 1000 ? (v / 1000).toFixed(1) + " s" : compact(v) + " ms";
    case "W": return v.toFixed(0) + " W";
    case "C": return v.toFixed(0) + " °C";
    case "MHz": return v.toFixed(0) + " MHz";
    case "count": return Math.abs(v) >= 1e4 ? compact(v) : String(Math.round(v));
    default: return compact(v);
  }
}

function duration(seconds) {
  seconds = Math.floor(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  if (h) return `${h}h${String(m).padStart(2, "0")}m`;
  return `${m}m${String(s).padStart(2, "0")}s`;
}

function sum(values) {
  return values.filter(isNumber).reduce((a, b) => a + b, 0);
}

// ------------------------------------------------------------------ DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name === "data") Object.assign(node.dataset, value);
    // Through the CSSOM: the page's Content-Security-Policy refuses inline style attributes.
    else if (name === "style") for (const [prop, v] of Object.entries(value)) node.style.setProperty(prop, v);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function replace(id, ...children) {
  document.getElementById(id).replaceChildren(...children);
}

function colorOf(key) {
  if (!page.colors.has(key)) page.colors.set(key, PALETTE[page.colors.size % PALETTE.length]);
  return page.colors.get(key);
}

function figure(label, value, unit, name) {
  const attrs = { class: "figure" };
  const valueNode = el("div", { class: "value" }, fmt(value, unit));
  if (name) {
    valueNode.dataset.figure = name;
    valueNode.dataset.value = isNumber(value) ? String(value) : "";
  }
  return el("div", attrs, el("div", { class: "label" }, label), valueNode);
}

function table(headers, rows, numeric) {
  const head = el("tr", {}, ...headers.map((h, i) => el("th", numeric[i] ? { class: "num" } : {}, h)));
  const body = rows.map((row) => el("tr", {}, ...row.map((cell, i) => el("td", numeric[i] ? { class: "num" } : {}, cell))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function meter(fraction, hot) {
  const width = Math.max(0, Math.min(1, isNumber(fraction) ? fraction : 0)) * 100;
  return el("div", { class: "meter" + (hot ? " hot" : "") }, el("div", { style: { width: `${width.toFixed(1)}%` } }));
}

// ------------------------------------------------------------------ charts

function niceCeiling(v) {
  if (!(v > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(v)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= v) return step * power;
  return 10 * power;
}

// The time axis: the history held, at least 2 minutes, at most 15.
function timeSpan(now) {
  const first = page.samples.length ? page.samples[0].time : now;
  return Math.min(SPAN_SECONDS, Math.max(MIN_SPAN_SECONDS, now - first));
}

function ago(seconds) {
  if (seconds <= 0) return "now";
  return seconds >= 120 ? `-${Math.round(seconds / 60)}m` : `-${Math.round(seconds)}s`;
}

// Lines over time. `lines`: [{label, color, dash, points: [[time, value|null], ...]}].
function lineChart(name, lines, unit, options = {}) {
  const W = 460, H = 170, left = 56, right = 10, top = 10, bottom = 20;
  const now = page.latest ? page.latest.time : Date.now() / 1000;
  const span = timeSpan(now);
  const start = now - span;
  const values = lines.flatMap((l) => l.points.filter(([t, v]) => t >= start && isNumber(v)).map(([, v]) => v));
  const ymax = options.max || niceCeiling(Math.max(options.atLeast || 0, ...values, 0));
  const x = (t) => left + ((t - start) / span) * (W - left - right);
  const y = (v) => top + (1 - Math.min(v, ymax) / ymax) * (H - top - bottom);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": name });
  root.dataset.chart = name;
  for (const fraction of [0, 0.5, 1]) {
    const v = ymax * fraction;
    root.append(svg("line", { class: "grid", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
    const label = svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" });
    label.textContent = fmt(v, unit);
    root.append(label);
  }
  for (const fraction of [1, 2 / 3, 1 / 3, 0]) {
    const anchor = fraction === 1 ? "start" : fraction ? "middle" : "end";
    const label = svg("text", { x: x(now - span * fraction), y: H - 4, "text-anchor": anchor });
    label.textContent = ago(span * fraction);
    root.append(label);
  }
  let drawn = 0;
  for (const line of lines) {
    let d = "", pen = "M";
    for (const [t, v] of line.points) {
      if (t < start || !isNumber(v)) { pen = "M"; continue; }
      d += `${pen}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = "L";
      drawn += 1;
    }
    if (!d) continue;
    const path = svg("path", { d, class: "series", stroke: line.color });
    if (line.dash) path.setAttribute("stroke-dasharray", "6 4");
    const title = svg("title", {});
    title.textContent = line.label;
    path.append(title);
    root.append(path);
  }
  root.dataset.points = String(drawn);
  const legend = el("div", { class: "legend" },
    ...lines.filter((l) => !l.hideLegend).map((l) => el("span", { style: { "--swatch": l.color } }, l.label)));
  return [root, legend];
}

// Bars for [[batch size, batches], ...].
function batchChart(name, pairs) {
  const W = 320, H = 130, left = 8, right = 8, top = 16, bottom = 20;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart bars", role: "img", "aria-label": name });
  root.dataset.chart = name;
  root.dataset.bars = String(pairs.length);
  const most = Math.max(1, ...pairs.map(([, n]) => n));
  const slot = Math.min(56, (W - left - right) / Math.max(1, pairs.length));
  pairs.forEach(([size, n], i) => {
    const h = (n / most) * (H - top - bottom);
    const bx = left + i * slot + slot * 0.15;
    root.append(svg("rect", { class: "bar", x: bx, y: H - bottom - h, width: slot * 0.7, height: Math.max(h, 1), fill: PALETTE[0] }));
    const count = svg("text", { x: bx + slot * 0.35, y: H - bottom - h - 3, "text-anchor": "middle" });
    count.textContent = fmt(n, "count");
    const label = svg("text", { x: bx + slot * 0.35, y: H - 5, "text-anchor": "middle" });
    label.textContent = String(size);
    root.append(count, label);
  });
  return root;
}

function modelSeries(field, dash) {
  const keys = new Set();
  for (const s of page.samples) for (const key of Object.keys(s.models || {})) keys.add(key);
  return [...keys].sort().map((key) => ({
    label: key.replace(/:(\d+)$/, " v$1") + (dash === undefined ? "" : dash ? " p99" : " p50"),
    color: colorOf(key),
    dash: Boolean(dash),
    hideLegend: Boolean(dash),
    points: page.samples.map((s) => [s.time, s.models && s.models[key] ? s.models[key][field] : null]),
  }));
}

function serverSeries(field, label, color, dash) {
  return { label, color, dash, points: page.samples.map((s) => [s.time, s[field]]) };
}

function gpuSeries(index, field, label, color) {
  return { label, color, points: page.samples.map((s) => [s.time, s.gpus && s.gpus[index] ? s.gpus[index][field] : null]) };
}

// ------------------------------------------------------------------ sections

function renderHeader(doc) {
  const s = doc.server;
  document.getElementById("server-version").textContent = s.version;
  const parts = [
    s.serving ? "serving" : "not serving",
    "up " + duration(s.uptime_seconds),
    `${s.devices.join(", ")} (${s.dtype})`,
    s.grpc_port ? `gRPC :${s.grpc_port}` : null,
    `host: ${doc.host.cpu_count} CPUs` + (isNumber(doc.host.memory_available_bytes)
      ? `, ${bytes(doc.host.memory_available_bytes)} of ${bytes(doc.host.memory_total_bytes)} memory free` : ""),
    "updated " + new Date(doc.time * 1000).toLocaleTimeString(),
  ];
  const line = parts.filter(Boolean).join(" · ") + (s.device_fallback_reason ? ` — running on the CPU: ${s.device_fallback_reason}` : "");
  document.getElementById("server-line").textContent = line;
}

function tile(label, value, unit, name) {
  const node = el("div", { class: "tile" }, el("div", { class: "label" }, label), el("div", { class: "value" }, fmt(value, unit)));
  node.dataset.tile = name;
  node.dataset.value = isNumber(value) ? String(value) : "";
  return node;
}

function renderSummary(doc) {
  const models = doc.models;
  const now = (field) => sum(models.map((m) => m.now[field]));
  const tiles = [
    tile("Images/s (5 s)", now("images_per_second"), "", "images"),
    tile("Requests/s (5 s)", now("requests_per_second"), "", "requests"),
    tile("Errors/s (5 s)", now("errors_per_second"), "", "errors"),
    tile("Worst p99 (1 min)", Math.max(0, ...models.map((m) => m.minute.latency_p99_ms).filter(isNumber)), "ms", "p99"),
    tile("Queued images", sum(models.map((m) => m.queue_depth)), "count", "queue"),
    tile("Server CPU (of one core)", doc.server.cpu_percent, "%", "cpu"),
    tile("Host CPU", doc.host.cpu_percent, "%", "host-cpu"),
    tile("Server memory (PSS)", doc.server.pss_bytes, "bytes", "memory"),
  ];
  if (doc.gpus.length) {
    tiles.push(tile("GPU utilisation", sum(doc.gpus.map((g) => g.utilization_percent)) / doc.gpus.length, "%", "gpu"));
  }
  replace("summary", ...tiles);
}

function renderCharts() {
  replace("chart-images", ...lineChart("images", modelSeries("images_per_second"), ""));
  replace("chart-latency", ...lineChart("latency", [...modelSeries("latency_p50_ms", false), ...modelSeries("latency_p99_ms", true)], "ms"));
  const queue = modelSeries("queue_ms").map((l) => ({ ...l, label: l.label + " queue" }));
  const compute = modelSeries("compute_ms").map((l) => ({ ...l, label: l.label + " compute", dash: true, hideLegend: true }));
  replace("chart-times", ...lineChart("times", [...queue, ...compute], "ms"));
  replace("chart-queue", ...lineChart("queue", modelSeries("queue_depth"), "count", { atLeast: 2 }));
  replace("chart-errors", ...lineChart("errors", modelSeries("errors_per_second"), "", { atLeast: 1 }));
  replace("chart-cpu", ...lineChart("cpu", [
    serverSeries("server_cpu_percent", "server", PALETTE[0]),
    serverSeries("host_cpu_percent", "host", PALETTE[1], true),
  ], "%", { atLeast: 100 }));
  replace("chart-memory", ...lineChart("memory", [
    serverSeries("server_pss_bytes", "PSS", PALETTE[2]),
    serverSeries("server_rss_bytes", "RSS", PALETTE[4], true),
  ], "bytes"));
}

function renderGpus(doc) {
  if (!doc.gpus.length) {
    replace("gpus", el("div", { class: "no-gpu", data: { gpu: "none" } }, doc.gpu_note || "no GPU"));
    return;
  }
  const cards = doc.gpus.map((g) => {
    const index = String(g.index);
    const memory = isNumber(g.memory_total_bytes) && g.memory_total_bytes ? g.memory_used_bytes / g.memory_total_bytes : null;
    const power = isNumber(g.power_limit_watts) && g.power_limit_watts ? g.power_watts / g.power_limit_watts : null;
    const [utilChart, utilLegend] = lineChart(`gpu${index}-utilization`, [gpuSeries(index, "utilization_percent", "utilisation", PALETTE[2])], "%", { max: 100 });
    const [memChart] = lineChart(`gpu${index}-memory`, [gpuSeries(index, "memory_used_bytes", "memory used", PALETTE[0])], "bytes",
      { max: g.memory_total_bytes || undefined });
    const [powerChart] = lineChart(`gpu${index}-power`, [gpuSeries(index, "power_watts", "power", PALETTE[1])], "W",
      { max: g.power_limit_watts || undefined });
    const [tempChart] = lineChart(`gpu${index}-temperature`, [gpuSeries(index, "temperature_celsius", "temperature", PALETTE[5])], "C", { atLeast: 90 });
    utilLegend.remove();
    return el("article", { class: "card", data: { gpu: index } },
      el("div", { class: "model-head" }, el("h3", {}, `GPU ${index}: ${g.name}`), el("span", { class: "muted" }, g.uuid)),
      el("div", { class: "figures" },
        figure("Utilisation", g.utilization_percent, "%", "utilization_percent"),
        figure("Memory used", g.memory_used_bytes, "bytes", "memory_used_bytes"),
        figure("of", g.memory_total_bytes, "bytes"),
        figure("framewire's", g.process_memory_bytes, "bytes"),
        figure("Power", g.power_watts, "W", "power_watts"),
        figure("limit", g.power_limit_watts, "W"),
        figure("Temperature", g.temperature_celsius, "C", "temperature_celsius"),
        figure("SM clock", g.sm_clock_mhz, "MHz")),
      el("div", { class: "subtitle" }, "Utilisation"), meter((g.utilization_percent || 0) / 100, g.utilization_percent >= 95),
      el("div", { class: "subtitle" }, "Memory"), meter(memory, memory >= 0.9),
      el("div", { class: "subtitle" }, "Power"), meter(power, power >= 0.95),
      el("div", { class: "split wide" },
        el("div", {}, el("div", { class: "subtitle" }, "Utilisation, %"), utilChart),
        el("div", {}, el("div", { class: "subtitle" }, "Memory used"), memChart),
        el("div", {}, el("div", { class: "subtitle" }, "Power"), powerChart),
        el("div", {}, el("div", { class: "subtitle" }, "Temperature"), tempChart)));
  });
  replace("gpus", el("div", { class: "gpu-list" }, ...cards));
}

function signerText(artifact) {
  if (!artifact.signer) return "unsigned";
  return `key ${artifact.signer}` + (artifact.signature_checked ? " (verified)" : " (not checked: no --trusted-keys)");
}

function renderModel(m) {
  const key = `${m.model}:${m.version}`;
  const codes = Object.entries(m.requests_by_code || {}).filter(([code]) => code !== "OK").sort((a, b) => b[1] - a[1]);
  const head = el("div", { class: "model-head" },
    el("h3", { data: { name: m.model } }, `${m.model} v${m.version}`),
    el("span", { class: `state ${m.state}`, data: { state: m.state } }, m.state),
    el("span", { class: "muted" }, [m.task, m.device].filter(Boolean).join(" on ")));
  const figures = el("div", { class: "figures" },
    figure("Images/s (5 s)", m.now.images_per_second, "", "images_per_second"),
    figure("Images/s (1 min)", m.minute.images_per_second, "", "images_per_second_minute"),
    figure("Requests/s (5 s)", m.now.requests_per_second, "", "requests_per_second"),
    figure("Errors/s (5 s)", m.now.errors_per_second, "", "errors_per_second"),
    figure("p50 (1 min)", m.minute.latency_p50_ms, "ms", "latency_p50_ms"),
    figure("p99 (1 min)", m.minute.latency_p99_ms, "ms", "latency_p99_ms"),
    figure("Queue time (1 min)", m.minute.queue_ms, "ms", "queue_ms"),
    figure("Compute time (1 min)", m.minute.compute_ms, "ms", "compute_ms"),
    figure("Avg batch (1 min)", m.minute.average_batch_size, "", "average_batch_size"),
    figure("Queued images", m.queue_depth, "count", "queue_depth"),
    figure("Queue capacity", m.queue_capacity, "count", "queue_capacity"),
    figure("Images since load", m.totals.images, "count", "images"));
  const batches = m.batch_sizes.length
    ? batchChart(`batch-sizes-${key}`, m.batch_sizes)
    : el("div", { class: "empty" }, "no batches yet");
  const errors = codes.length
    ? table(["status", "requests"], codes.map(([code, n]) => [code, n]), [false, true])
    : el("div", { class: "empty", data: { errors: "none" } }, "no errors or refusals");
  const workers = table(["instance", "pid", "state", "restarts", "device"],
    m.workers.map((w) => [`#${w.instance}`, w.pid || "–", w.state, w.restarts, w.device]), [false, true, false, true, false]);
  return el("article", { class: "card", data: { model: m.model, version: String(m.version) } },
    head,
    m.reason ? el("p", { class: "reason", data: { reason: "" } }, m.reason) : null,
    figures,
    el("div", { class: "split" },
      el("div", {}, el("div", { class: "subtitle" }, "Batch sizes since load (batches)"), batches),
      el("div", {}, el("div", { class: "subtitle" }, `Errors and refusals by status (${m.model}, any version)`), errors)),
    el("div", { class: "subtitle" }, "Workers"), workers,
    el("div", { class: "subtitle" }, "Artifact"),
    el("div", { class: "digest", title: m.artifact.path }, m.artifact.weights_sha256 ? `sha256 ${m.artifact.weights_sha256}` : "–"),
    el("div", { class: "muted" }, "signer: " + signerText(m.artifact)));
}

function renderModels(doc) {
  const cards = doc.models.map(renderModel);
  const unknown = doc.requests_by_code._unknown;
  if (unknown) {
    cards.push(el("article", { class: "card", data: { model: "_unknown" } },
      el("h3", {}, "Requests for models this server does not have"),
      table(["status", "requests"], Object.entries(unknown), [false, true])));
  }
  replace("models", ...(cards.length ? cards : [el("div", { class: "empty" }, "no models loaded")]));
}

function renderProcesses(doc) {
  const rows = doc.processes.map((p) => [
    p.role, p.role === "worker" ? `${p.model} v${p.version} #${p.instance}` : "gRPC, decoding, batching",
    p.pid, fmt(p.cpu_percent, "%"), fmt(p.rss_bytes, "bytes"), fmt(p.pss_bytes, "bytes")]);
  rows.push(["all", "", "", fmt(doc.server.cpu_percent, "%"), fmt(doc.server.rss_bytes, "bytes"), fmt(doc.server.pss_bytes, "bytes")]);
  replace("processes", el("div", { class: "card" },
    table(["process", "does", "pid", "CPU (of one core)", "RSS", "PSS"], rows, [false, false, true, true, true, true])));
}

function render() {
  const doc = page.latest;
  if (!doc) return;
  renderHeader(doc);
  renderSummary(doc);
  renderCharts();
  renderGpus(doc);
  renderModels(doc);
  renderProcesses(doc);
  document.body.dataset.updated = String(doc.time);
}

// ------------------------------------------------------------------ polling

function problem(text) {
  const node = document.getElementById("problem");
  node.hidden = !text;
  node.textContent = text || "";
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function add(sample) {
  const last = page.samples[page.samples.length - 1];
  if (!sample || (last && sample.time <= last.time)) return;
  page.samples.push(sample);
  const horizon = sample.time - SPAN_SECONDS;
  while (page.samples.length && page.samples[0].time < horizon) page.samples.shift();
}

async function poll() {
  try {
    const doc = await getJson("/api/status");
    if (doc.schema !== 1) throw new Error(`status schema ${doc.schema} is not the one this page reads (1)`);
    page.latest = doc;
    add(doc.sample);
    problem("");
    render();
  } catch (error) {
    problem(`cannot read the server's status (${error.message}); retrying every second`);
  }
  setTimeout(poll, POLL_MS);
}

async function start() {
  try {
    const history = await getJson("/api/history");
    history.samples.forEach(add);
  } catch (error) {
    problem(`no history yet (${error.message})`);
  }
  poll();
}

start();
