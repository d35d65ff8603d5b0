// The tidings demo page: five hub connections with the stock @microsoft/signalr browser
// client. Transport and protocol come from the pickers (kept in the URL: ?transport=ws|sse|
// lp|poll|auto&protocol=json|messagepack&name=…), so a page can be opened in a given mode.
/* global signalR, uPlot, TidingsOT */
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const OT = TidingsOT;

// ---------------------------------------------------------------- settings
const TRANSPORTS = {
  auto: { label: "Auto", flags: undefined },
  ws: { label: "WebSockets", flags: signalR.HttpTransportType.WebSockets },
  sse: { label: "Server-Sent Events", flags: signalR.HttpTransportType.ServerSentEvents },
  lp: { label: "Long polling", flags: signalR.HttpTransportType.LongPolling },
  poll: { label: "Short polling", flags: undefined },
};
let transportChoice = TRANSPORTS[params.get("transport")] ? params.get("transport") : "auto";
let protocolChoice = params.get("protocol") === "messagepack" ? "messagepack" : "json";
if (transportChoice === "sse" && protocolChoice === "messagepack") protocolChoice = "json";

function randomName() {
  const a = ["amber", "brisk", "calm", "dusky", "eager", "fuzzy", "gentle", "hazel", "ivory", "jolly", "keen", "lunar"];
  const b = ["otter", "heron", "lynx", "panda", "finch", "koala", "orca", "ibis", "yak", "wren", "fox", "mole"];
  return `${a[Math.floor(Math.random() * a.length)]}-${b[Math.floor(Math.random() * b.length)]}`;
}
const NAME_RE = /^[\p{L}\p{N}._@-]{1,40}$/u;
let userName = params.get("name") || localStorage.getItem("tidings.name") || randomName();
if (!NAME_RE.test(userName)) userName = randomName();
localStorage.setItem("tidings.name", userName);

$("transport").value = transportChoice;
$("protocol").value = protocolChoice;
$("username").value = userName;
if (transportChoice === "sse") $("protocol").querySelector('[value="messagepack"]').disabled = true;

function reloadWith(changes) {
  const p = new URLSearchParams(location.search);
  for (const [k, v] of Object.entries(changes)) p.set(k, v);
  location.search = p.toString();
}
$("transport").addEventListener("change", (e) => {
  const t = e.target.value;
  reloadWith(t === "sse" ? { transport: t, protocol: "json" } : { transport: t });
});
$("protocol").addEventListener("change", (e) => reloadWith({ protocol: e.target.value }));
$("username").addEventListener("change", (e) => {
  const name = e.target.value.trim();
  if (!NAME_RE.test(name)) {
    toast({ title: "Invalid name", body: "1 to 40 letters, digits, '.', '_', '-', '@'", level: "warning" });
    e.target.value = userName;
    return;
  }
  localStorage.setItem("tidings.name", name);
  reloadWith({ name });
});

const hint = [];
if (transportChoice === "sse" || transportChoice === "lp") {
  hint.push("Server-Sent Events and long polling hold one HTTP/1.1 connection per hub; browsers allow six per server, so keep a single tab open in this mode.");
}
if (params.get("transport") === "sse" && params.get("protocol") === "messagepack") {
  hint.push("MessagePack is binary and SSE carries text only: this page uses JSON over SSE.");
}
if (transportChoice === "poll") {
  hint.push("Short polling: the server panel reads GET /api/metrics every second; the other hubs negotiate their transport.");
}
if (hint.length) { $("picker-hint").textContent = hint.join(" "); $("picker-hint").hidden = false; }

// ---------------------------------------------------------------- test & debug surface
const demo = (window.demo = {
  transport: transportChoice,
  protocol: protocolChoice,
  user: userName,
  snapshots: 0,
  pulses: 0,
  polls: 0,
  hubs: {},
  connections: {},
  chat: [],
  notifications: [],
  editor: null,
});

// ---------------------------------------------------------------- utilities
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}
function fmtRate(v) {
  if (v == null || Number.isNaN(v)) return "–";
  if (v >= 1000) return `${(v / 1000).toFixed(1)}k`;
  if (v >= 100) return v.toFixed(0);
  return v.toFixed(1);
}
function fmtBytes(b) {
  if (b == null) return "–";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(i && b < 10 ? 1 : 0)} ${u[i]}`;
}
function fmtDuration(s) {
  if (s == null) return "–";
  s = Math.floor(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}
function hue(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}
function clock(ts) {
  return new Date(ts || Date.now()).toLocaleTimeString([], { hourCycle: "h23", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
function toast({ title, body, level = "info" }) {
  const t = el("div", { class: `toast lvl-${level}` }, el("div", { class: "title", text: title }), body ? el("div", { class: "body", text: body }) : null);
  $("toasts").prepend(t);
  setTimeout(() => t.remove(), 5000);
  while ($("toasts").children.length > 4) $("toasts").lastChild.remove();
}
function errorText(err) {
  const m = String(err && err.message ? err.message : err);
  const i = m.indexOf("HubException: ");
  return i >= 0 ? m.slice(i + 14) : m;
}

// ---------------------------------------------------------------- connections
const retryPolicy = {
  // Never give up: 0 s, then 1, 2, 4 s… capped at 5 s, with a little jitter.
  nextRetryDelayInMilliseconds: (ctx) =>
    ctx.previousRetryCount === 0 ? 0 : Math.min(5000, 500 * 2 ** ctx.previousRetryCount) + Math.random() * 300,
};

const hubs = {};
function hubTransport(name) {
  // Short polling applies to the server panel only; the other hubs negotiate.
  return transportChoice === "poll" ? undefined : TRANSPORTS[transportChoice].flags;
}

function makeHub(key, label, url, { onConnected } = {}) {
  const options = {};
  const flags = hubTransport(key);
  if (flags !== undefined) options.transport = flags;
  let builder = new signalR.HubConnectionBuilder()
    .withUrl(url, options)
    .withAutomaticReconnect(retryPolicy)
    .configureLogging(signalR.LogLevel.Warning);
  if (protocolChoice === "messagepack") {
    builder = builder.withHubProtocol(new signalR.protocols.msgpack.MessagePackHubProtocol());
  }
  const connection = builder.build();
  const hub = { key, label, url, connection, state: "connecting", transport: null, connectionId: null, error: null, onConnected };
  hubs[key] = hub;
  demo.hubs[key] = { state: "connecting", transport: null };
  demo.connections[key] = connection;

  const setState = (state, error) => {
    hub.state = state;
    if (error !== undefined) hub.error = error;
    demo.hubs[key].state = state;
    renderConnections();
  };
  const afterConnect = async () => {
    try {
      const info = await connection.invoke("GetConnectionInfo");
      hub.transport = info.transport;
      hub.connectionId = info.connectionId;
      demo.hubs[key].transport = info.transport;
      demo.hubs[key].connectionId = info.connectionId;
    } catch (e) {
      hub.error = errorText(e);
    }
    setState("connected", null);
    if (onConnected) {
      try { await onConnected(connection, hub); } catch (e) { console.warn(key, e); }
    }
  };
  connection.onreconnecting((err) => setState("reconnecting", err ? errorText(err) : hub.error));
  connection.onreconnected(() => afterConnect());
  connection.onclose((err) => {
    setState("disconnected", err ? errorText(err) : hub.error);
    // Automatic reconnect gave up, or the first start failed: keep trying.
    setTimeout(() => start(), 2000);
  });
  const start = async () => {
    if (connection.state !== signalR.HubConnectionState.Disconnected) return;
    setState("connecting");
    try {
      await connection.start();
      await afterConnect();
    } catch (e) {
      setState("disconnected", errorText(e));
      setTimeout(start, 2000);
    }
  };
  hub.start = start;
  return hub;
}

const PROTOCOL_LABEL = { json: "JSON", messagepack: "MessagePack" };
function renderConnections() {
  const list = $("conn-list");
  list.replaceChildren();
  let connected = 0, total = 0, reconnecting = false;
  for (const hub of Object.values(hubs)) {
    total++;
    if (hub.state === "connected") connected++;
    if (hub.state === "reconnecting" || hub.state === "connecting") reconnecting = true;
    const li = el("li", { "data-state": hub.state, "data-hub": hub.key },
      el("span", { class: "dot" }),
      el("span", { class: "hub", text: hub.label }),
      el("span", { class: "state", text: hub.state }),
      el("span", { class: "meta", text: hub.state === "connected"
        ? `${hub.transport || "?"} · ${PROTOCOL_LABEL[protocolChoice]} · ${hub.connectionId ? hub.connectionId.slice(0, 8) : ""}`
        : hub.url }),
      hub.error ? el("span", { class: "err", text: hub.error }) : null);
    list.append(li);
  }
  const pill = $("status-pill");
  const state = connected === total ? "connected" : reconnecting ? "reconnecting" : "disconnected";
  pill.dataset.state = state;
  $("status-text").textContent =
    state === "connected" ? `Connected · ${connected}/${total} hubs` :
    state === "reconnecting" ? `Reconnecting… ${connected}/${total}` : `Offline · ${connected}/${total}`;
  const m = hubs.metrics;
  if (transportChoice === "poll") {
    $("metrics-transport").textContent = "Short polling · GET /api/metrics";
  } else if (m) {
    $("metrics-transport").textContent = m.state === "connected" ? (m.transport || "…") : m.state;
  }
  $("metrics-protocol").textContent = transportChoice === "poll" ? "JSON over HTTP" : PROTOCOL_LABEL[protocolChoice];
  $("doc-sync").textContent = hubs.collab ? hubs.collab.state : "…";
}

// ---------------------------------------------------------------- charts
const css = getComputedStyle(document.documentElement);
const color = (v) => css.getPropertyValue(v).trim();
function makeChart(container, series, { points, yLabel }) {
  const data = [[], ...series.map(() => [])];
  const opts = {
    width: container.clientWidth || 600,
    height: 190,
    cursor: { show: true, points: { show: false } },
    legend: { show: false },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.15)] } },
    axes: [
      { stroke: color("--muted"), grid: { stroke: "rgba(139,151,179,.08)" }, ticks: { stroke: "rgba(139,151,179,.15)" }, font: "11px system-ui",
        space: 64,
        values: (u, splits) => splits.map((s) => new Date(s * 1000).toLocaleTimeString([], { hourCycle: "h23", hour: "2-digit", minute: "2-digit", second: "2-digit" })) },
      { stroke: color("--muted"), grid: { stroke: "rgba(139,151,179,.08)" }, ticks: { stroke: "rgba(139,151,179,.15)" }, font: "11px system-ui", size: 46, label: yLabel, labelFont: "11px system-ui", labelSize: 14 },
    ],
    series: [{}, ...series.map((s) => ({
      label: s.label, stroke: s.color, width: 2,
      fill: s.fill, points: { show: false },
    }))],
  };
  const plot = new uPlot(opts, data, container);
  new ResizeObserver(() => plot.setSize({ width: container.clientWidth, height: 190 })).observe(container);
  return {
    push(t, values) {
      data[0].push(t);
      values.forEach((v, i) => data[i + 1].push(v));
      if (data[0].length > points) data.forEach((d) => d.shift());
      plot.setData(data);
    },
  };
}
const ratesChart = makeChart($("chart-rates"), [
  { label: "out/s", color: color("--accent"), fill: "rgba(56,189,248,.10)" },
  { label: "in/s", color: color("--accent2") },
  { label: "invocations/s", color: color("--green") },
], { points: 120, yLabel: "per second" });
const pulseChart = makeChart($("chart-pulse"), [
  { label: "out/s", color: color("--accent"), fill: "rgba(56,189,248,.10)" },
], { points: 150, yLabel: "msgs out/s" });

// ---------------------------------------------------------------- server metrics
function setTile(id, text) {
  const v = $(id);
  if (v.textContent !== text) {
    v.textContent = text;
    const tile = v.closest(".tile");
    tile.classList.remove("flash");
    void tile.offsetWidth;
    tile.classList.add("flash");
  }
}
function showSnapshot(s) {
  if (!s || s.status === "starting") return;
  const c = s.connections;
  setTile("m-conns", String(c.total));
  $("m-conns-split").textContent = `WS ${c.webSockets} · SSE ${c.serverSentEvents} · LP ${c.longPolling}`;
  setTile("m-in", fmtRate(s.messagesInPerSecond));
  setTile("m-out", fmtRate(s.messagesOutPerSecond));
  setTile("m-inv", fmtRate(s.invocationsPerSecond));
  setTile("m-cpu", s.cpuPercent == null ? "–" : `${s.cpuPercent.toFixed(1)}%`);
  setTile("m-rss", fmtBytes(s.residentMemoryBytes));
  setTile("m-backplane", s.backplane);
  $("m-uptime").textContent = `up ${fmtDuration(s.uptimeSeconds)}`;
  ratesChart.push(s.timestampMs / 1000, [s.messagesOutPerSecond, s.messagesInPerSecond, s.invocationsPerSecond]);
  demo.lastSnapshot = s;
}

let pulseTimes = [];
function onMetrics(stream, value) {
  if (stream === "server") {
    demo.snapshots++;
    $("metrics-updates").textContent = `${demo.snapshots} updates`;
    showSnapshot(value);
  } else if (stream === "pulse") {
    demo.pulses++;
    const now = performance.now();
    pulseTimes.push(now);
    pulseChart.push(value.timestampMs / 1000, [value.messagesOutPerSecond]);
  }
}
setInterval(() => {
  const now = performance.now();
  pulseTimes = pulseTimes.filter((t) => now - t < 3000);
  const rate = pulseTimes.length / 3;
  demo.pulseRate = rate;
  $("pulse-received").textContent = `${rate.toFixed(1)} / s received`;
}, 500);

async function subscribePulse(connection) {
  const v = $("pulse-rate").value;
  const max = v === "" ? null : Number(v);
  const sub = await connection.invoke("Subscribe", "pulse", max);
  demo.pulseSubscription = sub;
}
$("pulse-rate").addEventListener("change", () => {
  pulseTimes = [];
  const m = hubs.metrics;
  if (m && m.state === "connected") subscribePulse(m.connection).catch((e) => toast({ title: "Subscribe failed", body: errorText(e), level: "error" }));
});

if (transportChoice === "poll") {
  $("pulse-rate").disabled = true;
  const poll = async () => {
    try {
      const res = await fetch("/api/metrics", { cache: "no-store" });
      const s = await res.json();
      demo.polls++;
      demo.snapshots++;
      $("metrics-updates").textContent = `${demo.snapshots} polls`;
      showSnapshot(s);
    } catch (e) {
      $("metrics-transport").textContent = "Short polling · server unreachable";
    }
  };
  poll();
  setInterval(poll, 1000);
} else {
  const m = makeHub("metrics", "MetricsHub", "/hubs/metrics", {
    onConnected: async (connection) => {
      await connection.invoke("Subscribe", "server", null);
      await subscribePulse(connection);
    },
  });
  m.connection.on("ReceiveMetrics", onMetrics);
}

// ---------------------------------------------------------------- chat
const chat = makeHub("chat", "ChatHub", "/hubs/chat", {
  onConnected: async (connection) => {
    for (const room of rooms) if (room !== "everyone") await connection.invoke("JoinRoom", room, userName);
  },
});
const rooms = ["everyone"];
let currentRoom = "everyone";
function renderRooms() {
  const box = $("rooms");
  box.replaceChildren(...rooms.map((r) => {
    const b = el("button", { type: "button", class: r === currentRoom ? "active" : "", text: r === "everyone" ? "# everyone" : `# ${r}` });
    b.onclick = () => { currentRoom = r; renderRooms(); $("chat-text").focus(); };
    return b;
  }));
  $("chat-text").placeholder = currentRoom === "everyone" ? "Say something to everyone…" : `Message #${currentRoom}…`;
}
renderRooms();
function addChat(user, text, room) {
  demo.chat.push({ user, text, room: room || null });
  const list = $("chat-messages");
  const initials = user.replace(/[^\p{L}\p{N}]/gu, "").slice(0, 2).toUpperCase() || "?";
  const li = el("li", { class: user === userName ? "mine" : "" },
    el("span", { class: "avatar", style: `background: hsl(${hue(user)} 70% 65%)`, text: initials }),
    el("div", { class: "bubble" },
      el("div", { class: "who" }, user, room ? el("span", { class: "room", text: `#${room}` }) : null, el("time", { text: clock() })),
      el("div", { class: "text", text })));
  list.querySelector(".empty")?.remove();
  list.append(li);
  while (list.children.length > 200) list.firstChild.remove();
  list.scrollTop = list.scrollHeight;
}
function addChatEvent(text) {
  $("chat-messages").querySelector(".empty")?.remove();
  $("chat-messages").append(el("li", { class: "event", text }));
  $("chat-messages").scrollTop = $("chat-messages").scrollHeight;
}
chat.connection.on("ReceiveMessage", (user, text) => addChat(user, text, null));
chat.connection.on("ReceiveRoomMessage", (room, user, text) => addChat(user, text, room));
chat.connection.on("RoomEvent", (room, user, what) => addChatEvent(`${user} ${what} #${room}`));
$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("chat-text").value;
  if (!text.trim()) return;
  try {
    if (currentRoom === "everyone") await chat.connection.invoke("SendMessage", userName, text);
    else await chat.connection.invoke("SendToRoom", currentRoom, userName, text);
    $("chat-text").value = "";
  } catch (err) {
    toast({ title: "Message not sent", body: errorText(err), level: "error" });
  }
});
$("room-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const room = $("room-name").value.trim();
  if (!room || rooms.includes(room)) return;
  try {
    await chat.connection.invoke("JoinRoom", room, userName);
    rooms.push(room);
    currentRoom = room;
    renderRooms();
    $("room-name").value = "";
  } catch (err) {
    toast({ title: "Cannot join", body: errorText(err), level: "error" });
  }
});

// ---------------------------------------------------------------- notifications
const notif = makeHub("notifications", "NotificationsHub", `/hubs/notifications?user=${encodeURIComponent(userName)}`, {
  onConnected: async (connection, hub) => {
    for (const g of notifGroups) await connection.invoke("JoinGroup", g);
    $("notif-user").textContent = `user ${hub.connectionId ? userName : "–"}`;
  },
});
const notifGroups = [];
$("notif-user").textContent = `user ${userName}`;
function renderNotifGroups() {
  $("notif-groups").replaceChildren(...notifGroups.map((g) => el("span", { class: "chip", text: `group ${g}` })));
}
notif.connection.on("ReceiveNotification", (n) => {
  demo.notifications.push(n);
  const list = $("notif-list");
  list.querySelector(".empty")?.remove();
  const target = n.user ? `→ ${n.user}` : n.group ? `→ group ${n.group}` : "→ everyone";
  list.prepend(el("li", { class: `notif lvl-${n.level}` },
    el("span", { class: "bar" }),
    el("span", { class: "title", text: n.title }),
    el("span", { class: "when", text: `${target} · ${clock(n.timestampMs)}` }),
    n.body ? el("span", { class: "body", text: n.body }) : null));
  while (list.children.length > 50) list.lastChild.remove();
  toast(n);
});
function curlExample() {
  const body = { title: "Deploy finished", body: "v2 is live", level: "success" };
  const t = $("notif-target").value;
  if (t !== "all") body[t] = $("notif-target-name").value.trim() || (t === "user" ? userName : "ops");
  $("notif-curl").textContent = `curl -X POST ${location.origin}/api/notifications -H 'content-type: application/json' -d '${JSON.stringify(body)}'`;
}
curlExample();
$("notif-target").addEventListener("change", () => {
  const t = $("notif-target").value;
  $("notif-target-name").disabled = t === "all";
  $("notif-target-name").placeholder = t === "user" ? userName : t === "group" ? "ops" : "";
  curlExample();
});
$("notif-target-name").disabled = true;
$("notif-target-name").addEventListener("input", curlExample);
$("notif-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { title: $("notif-title").value, body: $("notif-body").value, level: $("notif-level").value };
  const t = $("notif-target").value;
  if (t !== "all") body[t] = $("notif-target-name").value.trim() || (t === "user" ? userName : "");
  try {
    const res = await fetch("/api/notifications", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const answer = await res.json();
    if (!res.ok) throw new Error(answer.error || res.statusText);
    $("notif-title").value = "";
    $("notif-body").value = "";
  } catch (err) {
    toast({ title: "Not sent", body: errorText(err), level: "error" });
  }
});
$("notif-group-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const g = $("notif-group").value.trim();
  if (!g || notifGroups.includes(g)) return;
  try {
    await notif.connection.invoke("JoinGroup", g);
    notifGroups.push(g);
    renderNotifGroups();
    $("notif-group").value = "";
  } catch (err) {
    toast({ title: "Cannot join", body: errorText(err), level: "error" });
  }
});

// ---------------------------------------------------------------- shared dashboard metrics
const dash = makeHub("dashboard", "DashboardHub", "/hubs/dashboard", {
  onConnected: async (connection) => {
    if (joinedDashboard) await connection.invoke("JoinDashboard", joinedDashboard);
  },
});
let joinedDashboard = null;
const metricValues = new Map();
function renderBars() {
  const list = $("dash-bars");
  if (!metricValues.size) return;
  const max = Math.max(100, ...[...metricValues.values()].map((m) => Math.abs(m.value)));
  list.replaceChildren(...[...metricValues.entries()].map(([key, m]) =>
    el("li", { class: "metric" },
      el("span", { class: "label", text: m.name }, m.dashboard ? el("small", { text: `@${m.dashboard}` }) : null),
      el("span", { class: "track" }, el("span", { class: "fill", style: `width:${(Math.abs(m.value) / max) * 100}%` })),
      el("span", { class: "val", text: Number.isInteger(m.value) ? String(m.value) : m.value.toFixed(2) }))));
}
dash.connection.on("ReceiveMetric", (name, value) => {
  metricValues.set(`*:${name}`, { name, value, dashboard: null });
  renderBars();
});
dash.connection.on("ReceiveDashboardMetric", (id, name, value) => {
  metricValues.set(`${id}:${name}`, { name, value, dashboard: id });
  renderBars();
});
$("dash-value").addEventListener("input", (e) => { $("dash-value-out").textContent = e.target.value; });
$("dash-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("dash-name").value.trim();
  const value = Number($("dash-value").value);
  try {
    if ($("dash-only").checked && joinedDashboard) await dash.connection.invoke("SendToDashboard", joinedDashboard, name, value);
    else await dash.connection.invoke("SendMetric", name, value);
  } catch (err) {
    toast({ title: "Not published", body: errorText(err), level: "error" });
  }
});
$("dash-join-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = $("dash-id").value.trim();
  try {
    if (joinedDashboard) await dash.connection.invoke("LeaveDashboard", joinedDashboard);
    await dash.connection.invoke("JoinDashboard", id);
    joinedDashboard = id;
    $("dash-joined").textContent = `dashboard ${id}`;
  } catch (err) {
    toast({ title: "Cannot join", body: errorText(err), level: "error" });
  }
});

// ---------------------------------------------------------------- collaborative editor
// confirmed: the server's text at `version`; pending: our one edit in flight (relative to
// confirmed); anything typed since is the diff between confirmed+pending and the textarea.
const ed = {
  docId: params.get("doc") || "welcome",
  version: 0,
  confirmed: "",
  pending: null,
  inFlight: false,
  joined: false,
  early: [],
  edits: [],
};
demo.editor = ed;
$("doc-id").value = ed.docId;
const area = $("doc-text");
const collab = makeHub("collab", "CollaborationHub", "/hubs/collaboration", {
  onConnected: () => joinDocument(ed.docId),
});

function setArea(text, mapOp) {
  const [s, e] = [area.selectionStart, area.selectionEnd];
  const focused = document.activeElement === area;
  area.value = text;
  if (focused && mapOp) area.setSelectionRange(OT.mapCaret(s, mapOp), OT.mapCaret(e, mapOp));
  else if (focused) area.setSelectionRange(Math.min(s, text.length), Math.min(e, text.length));
}
function renderDoc() {
  $("doc-version").textContent = `v${ed.version}`;
  $("doc-history").href = `/api/documents/${encodeURIComponent(ed.docId)}/history`;
  $("doc-edits").replaceChildren(...ed.edits.slice(-8).reverse().map((u) =>
    el("li", { class: u.clientId === collab.connectionId ? "mine" : "", title: JSON.stringify(u.op),
      text: `v${u.version} ${u.user || "?"}: ${u.op.del ? `−${u.op.del}` : ""}${u.op.ins ? `+“${u.op.ins.slice(0, 24)}”` : ""}` })));
}
function note(text, level) {
  $("doc-note").textContent = text;
  if (level) toast({ title: "Document", body: text, level });
}

async function joinDocument(docId) {
  ed.joined = false;
  ed.early = [];
  const snap = await collab.connection.invoke("JoinDocument", docId);
  const local = area.value;
  const hadLocal = ed.docId === docId && (ed.pending || local !== ed.confirmed);
  ed.docId = docId;
  ed.confirmed = snap.text;
  ed.version = snap.version;
  ed.pending = null;
  ed.inFlight = false;
  ed.joined = true;
  ed.edits = [];
  setArea(snap.text);
  area.disabled = false;
  if (hadLocal && local !== snap.text) note(`Reloaded “${docId}” at v${snap.version}; unsent local changes were discarded.`, "warning");
  else note(`Editing “${docId}” with everyone who has it open.`);
  const early = ed.early.sort((a, b) => a.version - b.version);
  ed.early = [];
  for (const u of early) onUpdate(docId, u);
  renderDoc();
}

function flush() {
  if (!ed.joined || ed.inFlight || collab.state !== "connected") return;
  const op = OT.diff(ed.confirmed, area.value);
  if (!op) return;
  const opId = Math.random().toString(36).slice(2, 12);
  ed.pending = { op, opId };
  ed.inFlight = true;
  collab.connection
    .invoke("UpdateDocument", ed.docId, { baseVersion: ed.version, op, opId, user: userName })
    .then(() => {
      ed.inFlight = false;
      flush();
    })
    .catch((err) => {
      ed.inFlight = false;
      if (ed.pending && ed.pending.opId === opId) {
        // Rejected (or lost with the connection): back to the server's text.
        ed.pending = null;
        setArea(ed.confirmed);
      }
      if (collab.state === "connected") note(`Edit rejected: ${errorText(err)}`, "warning");
      flush();
    });
}
area.addEventListener("input", flush);

function onUpdate(docId, u) {
  if (docId !== ed.docId) return;
  if (!ed.joined) { ed.early.push(u); return; }
  if (u.version <= ed.version) return;
  if (u.version !== ed.version + 1) {
    // A gap (lost messages): take a fresh snapshot.
    joinDocument(ed.docId).catch(() => {});
    return;
  }
  ed.edits.push(u);
  if (ed.edits.length > 50) ed.edits.shift();
  if (ed.pending && u.clientId === collab.connectionId && u.opId === ed.pending.opId) {
    // Our own edit, as the server applied it: the acknowledgement.
    ed.confirmed = OT.apply(ed.confirmed, u.op);
    ed.version = u.version;
    ed.pending = null;
    renderDoc();
    return;
  }
  const R = u.op;
  const P = ed.pending && ed.pending.op;
  const afterP = P ? OT.apply(ed.confirmed, P) : ed.confirmed;
  const text = area.value;
  const B = OT.diff(afterP, text);
  const confirmed = OT.apply(ed.confirmed, R);
  ed.confirmed = confirmed;
  ed.version = u.version;
  if (P && OT.conflicts(P, R)) {
    // The server will reject our edit: it overlaps this one. Show the server's text now.
    ed.pending = null;
    setArea(confirmed);
    renderDoc();
    return;
  }
  let R1 = R;
  if (P) {
    ed.pending.op = OT.transform(P, R, false);
    R1 = OT.transform(R, P, true);
  }
  if (B && OT.conflicts(B, R1)) {
    setArea(OT.apply(afterP, R1));
    note(`${u.user || "Someone"} changed the text you were typing over; your unsent change was discarded.`, "warning");
    renderDoc();
    flush();
    return;
  }
  const R2 = B ? OT.transform(R1, B, true) : R1;
  setArea(OT.apply(text, R2), R2);
  renderDoc();
}
collab.connection.on("ReceiveUpdate", onUpdate);

$("doc-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const id = $("doc-id").value.trim();
  if (!id || id === ed.docId) return;
  try {
    const old = ed.docId;
    await collab.connection.invoke("LeaveDocument", old).catch(() => {});
    await joinDocument(id);
    const p = new URLSearchParams(location.search);
    p.set("doc", id);
    history.replaceState(null, "", `?${p}`);
  } catch (err) {
    toast({ title: "Cannot open", body: errorText(err), level: "error" });
  }
});
renderDoc();

// ---------------------------------------------------------------- go
renderConnections();
for (const hub of Object.values(hubs)) hub.start();
