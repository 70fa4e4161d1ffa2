// The inspector page: reads the JSON API under ./api/ and keeps the view
// live. Every value shown comes from a sender nobody trusts, so text goes in
// with textContent only, never as HTML.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};
const deliveries = new Map(); // seq -> delivery
let version = 0;
let capacity = 500;
let openSeq = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options) {
  const response = await fetch("api/" + path, { headers, cache: "no-store", ...options });
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "–";
}

function duration(secs) {
  if (secs === null || secs === undefined) return "–";
  const sign = secs < 0 ? "-" : "";
  secs = Math.abs(Math.round(secs));
  const h = Math.floor(secs / 3600), m = Math.floor((secs % 3600) / 60), s = secs % 60;
  return sign + (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
}

function fate(item) {
  const f = item.fate;
  const label = { deadLettered: "dead-lettered", notStored: "not stored" }[f.state] || f.state;
  const parts = [el("span", { class: "fate " + f.state }, label)];
  if (f.state === "rejected") parts.push(" ", el("span", { class: "reason" }, f.reason));
  if (f.state === "retrying") parts.push(" attempt " + f.attempt + ": ", el("span", { class: "reason" }, f.error));
  if (f.state === "deadLettered") parts.push(" ", el("span", { class: "reason" }, f.reason));
  if (f.state === "deferred") parts.push(" ", f.why);
  return parts;
}

function summary(delivery) {
  const counts = {};
  const reasons = {};
  for (const item of delivery.items) {
    const state = item.fate.state;
    counts[state] = (counts[state] || 0) + 1;
    if (item.fate.reason) (reasons[state] = reasons[state] || new Set()).add(item.fate.reason);
  }
  const parts = Object.entries(counts).map(([state, n]) => el("span", { class: "fate " + state },
    n + " " + state + (reasons[state] ? ": " + [...reasons[state]].join(", ") : "")));
  if (delivery.moreItems) parts.push(" +" + delivery.moreItems + " not kept");
  return parts.flatMap((p, i) => (i ? [" ", p] : [p]));
}

function wanted(delivery) {
  const subscription = document.getElementById("filter-subscription").value.trim();
  const state = document.getElementById("filter-state").value;
  return delivery.items.some(i => (!subscription || i.subscriptionId === subscription) && (!state || i.fate.state === state))
    || (!subscription && !state);
}

function renderDeliveries() {
  const body = document.querySelector("#deliveries tbody");
  const rows = [];
  const sorted = [...deliveries.values()].sort((a, b) => b.seq - a.seq).filter(wanted);
  for (const d of sorted) {
    rows.push(el("tr", { class: "delivery", "data-seq": d.seq, onclick: () => { openSeq = openSeq === d.seq ? null : d.seq; renderDeliveries(); } },
      el("td", {}, time(d.at)), el("td", {}, d.path), el("td", { class: "num" }, d.items.length + d.moreItems),
      el("td", { class: "num" }, d.status ?? "–"), el("td", { class: "num" }, d.ackMs === null ? "–" : d.ackMs.toFixed(1) + " ms"),
      el("td", { class: "outcome" }, ...summary(d))));
    if (openSeq === d.seq) rows.push(itemsRow(d));
  }
  body.replaceChildren(...rows);
  document.getElementById("no-deliveries").hidden = sorted.length > 0;
}

function itemsRow(delivery) {
  const rows = delivery.items.map((item, index) => el("tr", { class: "item" },
    el("td", { class: "mono" }, item.subscriptionId || "–"),
    el("td", {}, item.changeType || item.lifecycleEvent || "–"),
    el("td", { class: "mono" }, item.resource || "–"),
    el("td", {}, ...fate(item), item.fate.hint ? el("div", { class: "hint" }, item.fate.hint) : null),
    el("td", {}, el("button", { type: "button", onclick: e => { e.stopPropagation(); showItem(delivery, index); } }, "detail"))));
  const table = el("table", {}, el("thead", {}, el("tr", {}, ...["subscription", "change", "resource", "fate", ""].map(h => el("th", {}, h)))), el("tbody", {}, ...rows));
  return el("tr", { class: "items" }, el("td", { colspan: 6 }, table));
}

function showItem(delivery, index) {
  const item = delivery.items[index];
  document.getElementById("detail").textContent = JSON.stringify({ delivery: delivery.seq, at: delivery.at, ...item }, null, 2);
  document.getElementById("detail-section").hidden = false;
}

async function follow() {
  // The first read answers at once; later ones wait for something new.
  for (let wait = 0; ; wait = 20) {
    try {
      const page = await api("deliveries?wait=" + wait + "&since=" + version);
      for (const d of page.deliveries) deliveries.set(d.seq, d);
      version = page.version;
      const seqs = [...deliveries.keys()].sort((a, b) => a - b);
      while (seqs.length > capacity) deliveries.delete(seqs.shift());
      setLive(true);
      renderDeliveries();
    } catch (e) {
      setLive(false, e);
      await new Promise(r => setTimeout(r, 2000));
    }
  }
}

function setLive(ok, error) {
  const live = document.getElementById("live");
  live.className = "badge " + (ok ? "live" : "down");
  live.textContent = ok ? "live" : "disconnected" + (error ? ": " + error.message : "");
}

function renderHealth(health) {
  capacity = health.capacity;
  const inbox = health.inbox;
  document.getElementById("inbox").textContent = !inbox ? "–" : inbox.error ? "unavailable"
    : inbox.depth + " waiting" + (inbox.oldestAgeSecs ? ", oldest " + duration(inbox.oldestAgeSecs) : "");
  const dead = health.deadLetters;
  document.getElementById("dead-count").textContent = dead === null ? "not kept" : dead.error ? "unavailable" : dead;
  const t = health.throttle;
  const words = {
    ok: "ok", nearing: "nearing Graph's limits",
    delayed: "over 10 % slower than 3 s: Graph delays new notifications 10 minutes",
    dropping: "over 15 % slower than 10 s: Graph drops notifications for 10 minutes",
  };
  const throttle = document.getElementById("throttle");
  throttle.className = "risk-" + t.risk;
  throttle.textContent = words[t.risk] + " — " + (100 * t.slowShare).toFixed(1) + " % / " + (100 * t.verySlowShare).toFixed(1) + " % of " + t.answers + " answers";
  chart(health.throttleSlots);
  const quiet = document.getElementById("quiet");
  quiet.replaceChildren(...health.quiet.map(q => el("li", {}, el("span", { class: "mono" }, q.subscriptionId),
    " silent for " + duration(q.silentSecs) + ", usually every " + duration(q.usualGapSecs))));
  document.getElementById("quiet-card").hidden = health.quiet.length === 0;
}

function chart(slots) {
  const svg = document.getElementById("throttle-chart");
  const ns = "http://www.w3.org/2000/svg";
  const max = Math.max(1, ...slots.map(s => s.answers));
  const width = 600 / 60;
  const bars = [];
  slots.forEach((slot, i) => {
    const x = (60 - slots.length + i) * width;
    for (const [cls, n] of [["answers", slot.answers], ["slow", slot.slow], ["very-slow", slot.verySlow]]) {
      if (!n) continue;
      const rect = document.createElementNS(ns, "rect");
      const h = 58 * n / max;
      rect.setAttribute("class", cls);
      rect.setAttribute("x", x + 1); rect.setAttribute("width", width - 2);
      rect.setAttribute("y", 60 - h); rect.setAttribute("height", h);
      bars.push(rect);
    }
  });
  svg.replaceChildren(...bars);
}

function renderSubscriptions(list) {
  const rows = list.subscriptions.map(s => {
    const traffic = s.traffic || {};
    const lifecycle = (traffic.lifecycle || []).map(([event, at]) => event + " " + time(at)).join(", ");
    return el("tr", { "data-id": s.id },
      el("td", { class: "mono" }, s.id), el("td", { class: "mono" }, s.resource || "–"), el("td", {}, s.changeType || "–"),
      el("td", { class: "num expires", "data-expires": s.expiresAt || "" }, s.expiresAt ? duration((new Date(s.expiresAt) - Date.now()) / 1000) : "–"),
      el("td", {}, time(s.renewedAt)), el("td", {}, lifecycle || "–"),
      el("td", {}, s.lastResync ? s.lastResync.reason + " " + time(s.lastResync.at) : "–"),
      el("td", { class: "num" }, traffic.items || 0), el("td", {}, time(traffic.lastAt)));
  });
  document.querySelector("#subscriptions tbody").replaceChildren(...rows);
  document.getElementById("no-subscriptions").hidden = rows.length > 0;
}

function renderDeadLetters(list) {
  const rows = list.deadLetters.map(d => el("tr", {},
    el("td", { class: "mono" }, d.id), el("td", { class: "reason" }, d.reason), el("td", { class: "num" }, d.attempts),
    el("td", { class: "mono" }, d.item.resource || "–"), el("td", {}, time(d.deadAt)),
    el("td", {}, el("button", { type: "button", class: "replay", onclick: () => replay(d.id) }, "replay"))));
  document.querySelector("#dead-letters tbody").replaceChildren(...rows);
  document.getElementById("no-dead-letters").hidden = rows.length > 0;
}

async function replay(id) {
  if (!confirm("Move dead letter " + id + " back into the inbox, to be handled again?")) return;
  try {
    await api("dead-letters/replay?id=" + encodeURIComponent(id), {
      method: "POST", headers: { ...headers, "x-inspector-action": "replay" },
    });
  } catch (e) {
    alert("replay failed: " + e.message);
  }
  refresh();
}

async function refresh() {
  const [health, subscriptions, dead] = await Promise.allSettled([api("health"), api("subscriptions"), api("dead-letters")]);
  if (health.status === "fulfilled") renderHealth(health.value);
  if (subscriptions.status === "fulfilled") renderSubscriptions(subscriptions.value);
  if (dead.status === "fulfilled") renderDeadLetters(dead.value);
}

function tick() {
  for (const cell of document.querySelectorAll("td.expires")) {
    const at = cell.getAttribute("data-expires");
    if (at) cell.textContent = duration((new Date(at) - Date.now()) / 1000);
  }
}

document.getElementById("filters").addEventListener("input", renderDeliveries);
document.getElementById("filters").addEventListener("submit", e => e.preventDefault());
document.getElementById("detail-close").addEventListener("click", () => { document.getElementById("detail-section").hidden = true; });
refresh();
setInterval(refresh, 2000);
setInterval(tick, 1000);
follow();
