// The atasks dashboard: polls /api/overview, follows /api/events (server-sent events) for the
// call tree, lists /api/dead and replays through POST /api/dead/replay. No framework, no build.
"use strict";

const POLL_MS = 2000;
const MAX_ROOTS = 300; // top-level calls kept on the page
const calls = new Map(); // call id -> its <li>
let deadCount = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : String(child ?? ""));
  }
  return node;
}

function cell(value, numeric) {
  return el("td", numeric ? { class: "num" } : {}, value ?? "-");
}

function short(name) {
  const i = (name || "").lastIndexOf(".");
  return i >= 0 ? name.slice(i + 1) : name;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 1) return (seconds * 1000).toFixed(1) + "ms";
  if (seconds < 120) return seconds.toFixed(2) + "s";
  const m = Math.floor(seconds / 60);
  const h = Math.floor(m / 60);
  return h ? `${h}h${String(m % 60).padStart(2, "0")}m` : `${m}m${String(Math.floor(seconds % 60)).padStart(2, "0")}s`;
}

function fill(table, rows) {
  const body = document.querySelector(`#${table} tbody`);
  body.replaceChildren(...rows);
}

function status(text, isError) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.classList.toggle("error", Boolean(isError));
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// ---- servers, queues, schedules ----

function showOverview(view) {
  document.getElementById("namespace").textContent = view.namespace;
  fill("servers", view.servers.map((s) => el("tr", { "data-server": s.server },
    cell(s.server), cell(s.scheduler ? "scheduler" : ""),
    cell(s.slots.concurrency, true), cell(s.slots.running, true), cell(s.slots.parked, true),
    cell(s.slots.waiting, true), cell(s.succeeded, true), cell(s.failed, true),
    cell(s.retried, true), cell(s.events ? "on" : "off"), cell(duration(s.uptime)),
    cell(s.atasks.map(short).join(", ")))));
  document.getElementById("no-servers").hidden = view.servers.length > 0;
  fill("queues", view.queues.map((q) => el("tr", { "data-atask": q.atask },
    cell(q.atask), cell(q.queue === null ? "(gone)" : q.queue),
    cell(q.messages, true), cell(q.consumers, true), cell(q.servers, true))));
  document.getElementById("scheduler").textContent =
    view.scheduler ? `held by ${view.scheduler}` : "(no server holds the scheduler role)";
  fill("schedules", view.schedules.map((s) => el("tr", { "data-schedule": s.name },
    cell(s.name), cell(s.when), cell(s.next_due), cell(s.last_fired), cell(result(s.result)))));
  const count = view.dead_letters.count;
  document.getElementById("dead-count").textContent = `${count} in ${view.dead_letters.queue}`;
  if (count !== deadCount) {
    deadCount = count;
    loadDead();
  }
}

function result(found) {
  if (!found) return "-";
  return found.ok ? `ok (${found.due})` : `failed (${found.due}): ${found.error}`;
}

async function poll() {
  try {
    showOverview(await getJSON("api/overview"));
    status(`updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    status(String(error.message || error), true);
  }
  setTimeout(poll, POLL_MS);
}

// ---- dead letters ----

async function loadDead() {
  try {
    const found = await getJSON("api/dead");
    document.getElementById("dead-count").textContent = `${found.count} in ${found.queue}`;
    fill("dead", found.dead_letters.map((d) => {
      const button = el("button", { type: "button", class: "replay" }, "Replay");
      button.addEventListener("click", () => replay(d.call_id, button));
      return el("tr", { "data-call-id": d.call_id, "data-atask": d.atask },
        cell(d.atask), el("td", { class: "mono" }, d.call_id), cell(d.reason),
        cell(d.age === null ? "?" : duration(d.age) + " ago"),
        el("td", { class: "error-text" }, d.error || "-"), el("td", {}, button));
    }));
  } catch (error) {
    status(String(error.message || error), true);
  }
}

async function replay(callId, button) {
  if (button) button.disabled = true;
  try {
    const done = await getJSON("api/dead/replay", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(callId === null ? {} : { call_id: callId }),
    });
    const left = done.left.map((l) => `${l.call_id}: ${l.why}`).join("; ");
    status(`replayed ${done.replayed.length}` + (left ? `; left ${left}` : ""), Boolean(left));
  } catch (error) {
    status(String(error.message || error), true);
  }
  deadCount = null; // list again on the next poll, and now
  await loadDead();
}

// ---- the call tree ----

function callLabel(node) {
  const meta = [node.state];
  if (node.duration !== null) meta.push(duration(node.duration));
  if (node.attempt) meta.push(`attempt ${node.attempt}`);
  if (node.progress) {
    const p = node.progress;
    meta.push(p.total != null ? `${p.done}/${p.total}` : String(p.done));
    if (p.note) meta.push(p.note);
  }
  const label = el("span", { class: "label", title: `${node.call_id} on ${node.server}` },
    el("span", { class: "atask" }, short(node.atask)), el("span", { class: "meta" }, meta.join(" · ")));
  if (node.error) label.append(el("span", { class: "meta error-text" }, node.error));
  return label;
}

function showCall(node) {
  let item = calls.get(node.call_id);
  if (!item) {
    item = el("li", { class: "call", "data-call-id": node.call_id }, el("span"), el("ul"));
    calls.set(node.call_id, item);
  }
  item.setAttribute("data-atask", node.atask);
  item.setAttribute("data-state", node.state);
  item.firstElementChild.replaceWith(callLabel(node));
  const parent = node.parent ? calls.get(node.parent) : null;
  const home = parent ? parent.lastElementChild : document.getElementById("calls");
  if (item.parentNode !== home) {
    if (parent) home.append(item);
    else home.prepend(item); // newest top-level call first
  }
}

function forget(item) {
  for (const inner of item.querySelectorAll("li.call")) calls.delete(inner.dataset.callId);
  calls.delete(item.dataset.callId);
  item.remove();
}

function showCalls(nodes) {
  for (const node of nodes) showCall(node);
  const roots = document.getElementById("calls");
  while (roots.children.length > MAX_ROOTS) forget(roots.lastElementChild);
  document.getElementById("no-calls").hidden = calls.size > 0;
}

function follow() {
  const source = new EventSource("api/events");
  const note = document.getElementById("calls-note");
  source.addEventListener("snapshot", (message) => {
    calls.clear();
    document.getElementById("calls").replaceChildren();
    showCalls(JSON.parse(message.data));
    note.textContent = "live";
  });
  source.addEventListener("calls", (message) => showCalls(JSON.parse(message.data)));
  source.addEventListener("reset", () => { source.close(); follow(); });
  source.onerror = () => { note.textContent = "reconnecting…"; };
}

document.getElementById("replay-all").addEventListener("click", () => replay(null, null));
document.getElementById("dead-refresh").addEventListener("click", loadDead);
follow();
poll();
