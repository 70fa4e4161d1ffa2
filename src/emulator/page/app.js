// The emulator's page: polls the control API (/emulator/…) once a second
// and posts its forms to it. Text goes in with textContent only: resources
// and URLs are whatever a client sent.
"use strict";

let emulatedNow = null; // Date of the emulator's clock at the last poll
let polledAt = Date.now();
let scale = 1;

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

async function call(path, body) {
  const options = body === undefined ? { cache: "no-store" }
    : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
  if (!response.ok) throw new Error(json && json.error ? json.error.message : response.status + " " + text);
  return json;
}

function duration(secs) {
  const sign = secs < 0 ? "-" : "";
  secs = Math.abs(Math.round(secs));
  const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600), m = Math.floor((secs % 3600) / 60);
  return sign + (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (secs % 60) + "s";
}

function emulatedClock() {
  if (!emulatedNow) return null;
  return new Date(emulatedNow.getTime() + (Date.now() - polledAt) * scale);
}

function time(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

function renderSubscriptions(list) {
  const rows = list.value.map(s => el("tr", { "data-id": s.id },
    el("td", { class: "mono" }, s.id), el("td", { class: "mono" }, s.resource), el("td", {}, s.changeType),
    el("td", { class: "num expires", "data-expires": s.expirationDateTime }, ""),
    el("td", { class: "mono" }, s.notificationUrl), el("td", {}, s.includeResourceData ? "yes" : "no"),
    el("td", { class: "mono" }, s.lifecycleNotificationUrl || "–")));
  document.querySelector("#subscriptions tbody").replaceChildren(...rows);
  document.getElementById("no-subscriptions").hidden = rows.length > 0;
  document.getElementById("subscription-count").textContent = rows.length;
  const select = document.getElementById("lifecycle-subscription");
  const chosen = select.value;
  select.replaceChildren(...list.value.map(s => el("option", { value: s.id }, s.id + " (" + s.resource + ")")));
  if (list.value.some(s => s.id === chosen)) select.value = chosen;
  tick();
}

function renderQuotas(list) {
  const rows = list.value.map(q => el("tr", {},
    el("td", {}, q.quota), el("td", { class: "mono" }, q.scope), el("td", { class: "num" }, q.used + " of " + q.limit)));
  document.querySelector("#quotas tbody").replaceChildren(...rows);
  document.getElementById("no-quotas").hidden = rows.length > 0;
}

function renderEndpoints(list) {
  const rows = list.value.map(e => el("tr", {},
    el("td", { class: "mono" }, e.url), el("td", {}, el("span", { class: "state " + e.state }, e.state)),
    el("td", { class: "num" }, e.windowOverFirstTimeout + " / " + e.windowOverRetryTimeout + " / " + e.windowResponses),
    el("td", { class: "num" }, e.queued),
    el("td", {}, e.history.map(h => h.state + " at " + time(h.time)).join(" → ") || "–")));
  document.querySelector("#endpoints tbody").replaceChildren(...rows);
  document.getElementById("no-endpoints").hidden = rows.length > 0;
}

function renderDeliveries(list) {
  const rows = [...list.value].reverse().slice(0, 200).map(d => el("tr", {
      class: "delivery", "data-sequence": d.sequence, onclick: () => showBody(d),
    },
    el("td", { class: "num" }, d.sequence), el("td", {}, time(d.time)), el("td", {}, d.kind),
    el("td", { class: "mono" }, d.url), el("td", { class: "num" }, d.items), el("td", { class: "num" }, d.attempt),
    el("td", { class: "num" }, d.status ?? "–"), el("td", {}, el("span", { class: "outcome " + d.outcome }, d.outcome)),
    el("td", { class: "num" }, d.latencyMs === null || d.latencyMs === undefined ? "–" : d.latencyMs.toFixed(1) + " ms")));
  document.querySelector("#deliveries tbody").replaceChildren(...rows);
  document.getElementById("no-deliveries").hidden = rows.length > 0;
}

async function showBody(delivery) {
  const pre = document.getElementById("body");
  pre.hidden = false;
  if (!delivery.bodyKept) {
    pre.textContent = "No body kept for delivery " + delivery.sequence + " (only POSTs of notifications, the newest 200).";
    return;
  }
  try {
    const body = await call("deliveries/" + delivery.sequence + "/body");
    pre.textContent = "Delivery " + delivery.sequence + " to " + delivery.url + "\n\n" + JSON.stringify(body, null, 2);
  } catch (e) {
    pre.textContent = e.message;
  }
}

function tick() {
  const now = emulatedClock();
  if (!now) return;
  document.getElementById("now").textContent = now.toLocaleString();
  for (const cell of document.querySelectorAll("td.expires")) {
    cell.textContent = duration((new Date(cell.getAttribute("data-expires")) - now) / 1000);
  }
}

async function poll() {
  try {
    const [clock, subscriptions, quotas, endpoints, deliveries] = await Promise.all(
      ["clock", "subscriptions", "quotas", "endpoints", "deliveries"].map(p => call(p)));
    emulatedNow = new Date(clock.now);
    polledAt = Date.now();
    scale = clock.timeScale;
    document.getElementById("scale").textContent = scale === 1 ? "real time" : scale + "× real time";
    renderSubscriptions(subscriptions);
    renderQuotas(quotas);
    renderEndpoints(endpoints);
    renderDeliveries(deliveries);
    setLive(true);
  } catch (e) {
    setLive(false, e);
  }
}

function setLive(ok, error) {
  const live = document.getElementById("live");
  live.className = "badge " + (ok ? "live" : "down");
  live.textContent = ok ? "live" : "disconnected" + (error ? ": " + error.message : "");
}

function action(form, send) {
  document.getElementById(form).addEventListener("submit", async event => {
    event.preventDefault();
    const result = document.getElementById("actions-result");
    try {
      result.textContent = JSON.stringify(await send());
    } catch (e) {
      result.textContent = "refused: " + e.message;
    }
    poll();
  });
}

action("fire", () => {
  const data = document.getElementById("fire-data").value.trim();
  const change = {
    resource: document.getElementById("fire-resource").value.trim(),
    changeType: document.getElementById("fire-change").value,
  };
  if (data) change.data = JSON.parse(data);
  return call("changes", change);
});
action("lifecycle", () => call("lifecycle", {
  subscriptionId: document.getElementById("lifecycle-subscription").value,
  lifecycleEvent: document.getElementById("lifecycle-event").value,
}));
action("advance", () => call("clock", { advanceSeconds: Number(document.getElementById("advance-seconds").value) }));

poll();
setInterval(poll, 1000);
setInterval(tick, 1000);
