// The ground station's live page: renders the /api/state document, updated by server-sent events.
// Cards are created once per picture and then only updated, so nothing reloads or flickers.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { doc: null, cards: new Map(), retrying: new Map() };

// --- formatting: every number with its unit ---------------------------------------------------
const int = (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US"));
const fmt = {
  bytes: (v) => (v === null || v === undefined ? "–" : `${int(v)} B`),
  bpp: (v) => (v === null || v === undefined ? "–" : `${v.toFixed(3)} bpp`),
  seconds: (v) => (v === null || v === undefined ? "–" : v < 100 ? `${v.toFixed(1)} s` : `${int(v)} s`),
  ms: (v) => (v === null || v === undefined ? "–" : `${int(v * 1000)} ms`),
  pct: (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)} %`),
  rate: (v) => (!v ? "–" : v >= 1e6 ? `${(v / 1e6).toFixed(2)} Mbit/s` : v >= 1e3 ? `${(v / 1e3).toFixed(1)} kbit/s` : `${int(v)} bit/s`),
  clock: (t) => (t ? new Date(t * 1000).toLocaleTimeString("en-GB") : "–"),
};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function setText(id, text) {
  const e = $(id);
  if (e && e.textContent !== text) e.textContent = text;
}

function pill(id, text, kind) {
  const e = $(id);
  e.textContent = text;
  e.className = `pill pill-${kind}`;
}

// --- one picture -------------------------------------------------------------------------------
// The facts a card shows: [field, label, formatter(record)]. data-field carries the record's key.
const FACTS = [
  ["frames_total", "Frames", (r) => `${int(r.frames_total)}`],
  ["bytes_on_air", "On air", (r) => fmt.bytes(r.bytes_on_air)],
  ["bitstream_bytes", "Bitstream", (r) => fmt.bytes(r.bitstream_bytes)],
  ["bpp", "Rate", (r) => fmt.bpp(r.bpp)],
  ["latency_s", "Latency", (r) => fmt.seconds(r.timings ? r.timings.latency_s : null)],
  ["decode_s", "Decode", (r) => fmt.ms(r.timings ? r.timings.decode_s : null)],
  ["retransmissions", "Retransmitted", (r) => (r.retransmissions === null || r.retransmissions === undefined ? "–" : `${int(r.retransmissions)}`)],
  ["size", "Size", (r) => `${r.width}×${r.height} px`],
];

function factRows(dl, r) {
  dl.replaceChildren();
  for (const [field, label, f] of FACTS) {
    dl.append(el("dt", { text: label }), el("dd", { "data-field": field, text: f(r) }));
  }
}

function makeCard(r) {
  const img = el("img", { src: r.thumb_url, alt: r.source_name || `picture ${r.message_id}`, loading: "lazy" });
  const thumb = el("a", { class: "thumb", href: r.full_url, title: "full view" }, img);
  thumb.addEventListener("click", (ev) => { ev.preventDefault(); openViewer(r.message_id); });
  const title = el("h3", { "data-field": "source_name", title: r.source_name || "" });
  const badge = el("span", { class: `codec codec-${r.codec}`, "data-field": "codec" });
  const setting = el("p", { class: "setting", "data-field": "setting_text" });
  const dl = el("dl", { class: "facts" });
  const foot = el("footer", { class: "muted" });
  // A preview (decoded from the first frames of a message still arriving) says so until the complete picture.
  const preview = el("span", { class: "preview-badge", "data-field": "preview", hidden: "" });
  // Every revision the ground wrote of this picture, oldest first (r.revisions).
  const revisions = el("ol", { class: "revisions", hidden: "" });
  const card = el("article", { class: "card new", "data-id": String(r.message_id) },
    thumb, el("div", { class: "card-head" }, title, preview, badge), setting, dl, revisions, foot);
  setTimeout(() => card.classList.remove("new"), 2500);
  return card;
}

// "3 of 4 frames · 3/5 layers": how much of the message a revision was decoded from.
function revisionText(v) {
  const layers = v.layers === null || v.layers === undefined ? "" : ` · ${int(v.layers)}/${int(v.layers_total)} layers`;
  return `${int(v.frames_used)} of ${int(v.frames_data)} frames${layers}`;
}

function renderRevisions(card, r) {
  const list = card.querySelector("ol.revisions");
  const revs = r.revisions || [];
  list.hidden = revs.length < 2 && r.complete !== false;
  list.replaceChildren(...revs.map((v) => el("li", { "data-revision": String(v.revision),
    text: `${v.complete ? "complete" : "preview"} ${int(v.revision)}: ${revisionText(v)} · ${fmt.clock(v.written_at)}` })));
  const badge = card.querySelector('[data-field="preview"]');
  badge.hidden = r.complete !== false;
  badge.textContent = r.complete === false
    ? `preview ${int(r.revision)} · ${revisionText({ ...r, layers: r.layers_decoded })}` : "";
  card.classList.toggle("is-preview", r.complete === false);
  // A new revision has the same file name: its URL carries the revision, so the browser fetches it.
  const img = card.querySelector("a.thumb img");
  if (img.getAttribute("src") !== r.thumb_url) img.setAttribute("src", r.thumb_url);
  card.querySelector("a.thumb").setAttribute("href", r.full_url);
}

function updateCard(card, r) {
  renderRevisions(card, r);
  card.querySelector('[data-field="source_name"]').textContent = r.source_name || `#${r.message_id}`;
  card.querySelector('[data-field="codec"]').textContent = r.codec;
  card.querySelector('[data-field="setting_text"]').textContent = r.setting_text;
  factRows(card.querySelector("dl.facts"), r);
  const t = r.timings || {};
  card.querySelector("footer").textContent = `#${r.message_id} · landed ${fmt.clock(t.decoded_at)}`;
}

function renderImages(images) {
  const grid = $("images");
  const seen = new Set();
  let prev = null;
  for (const r of images) {
    const id = r.message_id;
    seen.add(id);
    let card = state.cards.get(id);
    if (!card) {
      card = makeCard(r);
      state.cards.set(id, card);
    }
    updateCard(card, r);
    // newest first: each card right after the previous one
    const want = prev ? prev.nextSibling : grid.firstChild;
    if (want !== card) grid.insertBefore(card, want);
    prev = card;
  }
  for (const [id, card] of state.cards) {
    if (!seen.has(id)) { card.remove(); state.cards.delete(id); }
  }
  $("empty").hidden = images.length > 0;
  setText("image-count", images.length ? `${images.length}` : "");
}

// --- panels ------------------------------------------------------------------------------------
function renderLink(link) {
  const s = link.state || "unknown";
  pill("link-state", s === "up" ? "up" : s === "outage" ? "in outage" : "unknown", s === "up" ? "ok" : s === "outage" ? "warn" : "unknown");
  setText("link-util", fmt.pct(link.utilization));
  $("link-util-bar").style.width = `${Math.round((link.utilization || 0) * 100)}%`;
  setText("link-loss", link.loss === null || link.loss === undefined ? "–" : `${fmt.pct(link.loss)} (${link.loss_source})`);
  const ts = link.time_scale && link.time_scale !== 1 ? ` · ×${link.time_scale} time` : "";
  setText("link-rate", `${fmt.rate(link.rate_bps)}${ts}`);
  setText("link-next", link.next_change_s === null || link.next_change_s === undefined ? "none scheduled" : `in ${fmt.seconds(link.next_change_s)}`);
  const src = { link: "the link's control socket", ground: "the ground station's view" }[link.source];
  setText("link-note", src ? `From ${src}; rates over the last ${link.window_s} s.` : "No daemon answers: link state unknown.");
}

// The fault board of a daemon's status (disk full, read-only, a file deleted): "none", or each resource and why.
function renderFaults(id, reachable, faults) {
  const e = $(id);
  const list = Object.entries(faults || {});
  const text = !reachable ? "–" : list.length ? list.map(([r, f]) => `${r.replace("_", " ")}: ${f.error}`).join("; ") : "none";
  if (e.textContent !== text) e.textContent = text;
  e.classList.toggle("bad", reachable && list.length > 0);
}

function renderGround(g) {
  const c = g.counts || {};
  for (const k of ["done", "receiving", "assembled", "failed"]) setText(`g-${k}`, int(c[k] || 0));
  $("g-failed").parentElement.classList.toggle("bad", (c.failed || 0) > 0);
  const n = g.counters || {};
  pill("ground-reach", g.reachable ? "running" : g.asked ? "not answering" : "files only", g.reachable ? "ok" : "unknown");
  setText("g-frames", g.reachable ? int(n.frames_in || 0) : "–");
  setText("g-crc", g.reachable ? int(n.bad_CRCError || 0) : "–");
  setText("g-auth", g.reachable ? int(n.bad_AuthError || 0) : "–");
  setText("g-dup", g.reachable ? int(n.duplicate || 0) : "–");
  const pv = g.previews || {};
  setText("g-previews", !g.reachable ? "–" : pv.enabled === false ? "off"
    : `${int(pv.written || 0)}${pv.queued ? ` (${int(pv.queued)} due)` : ""}`);
  renderFaults("g-faults", g.reachable, g.faults);
  state.retrying = new Map((g.retrying || []).map((r) => [r.id, r]));
}

function renderSender(s) {
  pill("sender-reach", s.reachable ? "reachable" : s.asked ? "not answering" : "not configured", s.reachable ? "ok" : "unknown");
  const c = s.counts || {};
  for (const k of ["accepted", "encoded", "in_flight", "delivered"]) setText(`s-${k}`, s.reachable ? int(c[k] || 0) : "–");
  renderFaults("s-faults", s.reachable, s.faults);
  const body = $("sender-queue");
  body.replaceChildren();
  for (const m of s.queue || []) {
    body.append(el("tr", { "data-id": String(m.id) },
      el("td", { text: m.source_name || `#${m.id}`, title: `#${m.id} · ${m.codec} · priority ${m.priority}` }),
      el("td", { text: m.state.replace("_", " ") }),
      el("td", { text: m.n ? `${int(m.acked || 0)}/${int(m.n)}` : "–" }),
      el("td", { text: int(m.sent || 0) }),
      el("td", { text: int(m.retransmitted || 0) })));
  }
  setText("sender-note", !s.reachable ? (s.asked ? "The sender does not answer (out of reach, or stopped)." : "Start satgw web with --sender ENDPOINT to see its queue.")
    : (s.queue || []).length ? "" : "Queue empty: everything sent has been delivered.");
}

function renderArriving(list) {
  $("arriving-section").hidden = list.length === 0;
  const ul = $("arriving");
  ul.replaceChildren();
  for (const m of list) {
    const pct = Math.min(100, Math.round((100 * m.received) / Math.max(1, m.k)));
    // assembled: every frame is in (the sender holds the job); a decode the host made fail is retried
    const retry = m.state === "assembled" && state.retrying ? state.retrying.get(m.id) : undefined;
    const label = retry ? `decode retry in ${fmt.seconds(retry.retry_in_s)}: ${retry.reason}`
      : m.state === "assembled" ? "decoding…" : `${m.received}/${m.k} frames`;
    const bar = el("span");
    bar.style.width = `${pct}%`; // CSSOM, not a style attribute: the page's CSP allows no inline styles
    ul.append(el("li", { "data-id": String(m.id) },
      el("span", { class: "name", text: m.name || `#${m.id}` }),
      el("span", { class: "meter small" }, bar),
      el("span", { class: "muted", text: label })));
  }
}

function renderFailed(list) {
  $("failed-section").hidden = list.length === 0;
  const ul = $("failed");
  ul.replaceChildren();
  for (const m of list) {
    ul.append(el("li", {}, el("b", { text: m.name || `#${m.id}` }), ` #${m.id} · ${fmt.clock(m.done_at)} · `,
      el("span", { class: "reason", text: m.reason || "no reason recorded" })));
  }
}

function render(doc) {
  state.doc = doc;
  renderLink(doc.link || {});
  renderGround(doc.ground || {});
  renderSender(doc.sender || {});
  renderArriving(doc.arriving || []);
  renderFailed(doc.failed || []);
  renderImages(doc.images || []);
  setText("updated", `updated ${fmt.clock(doc.generated_at)}`);
  document.body.dataset.version = String(doc.version);
}

// --- full view ---------------------------------------------------------------------------------
function openViewer(id) {
  const r = (state.doc.images || []).find((x) => x.message_id === id);
  if (!r) return;
  $("viewer-title").textContent = `${r.source_name || "#" + id} · ${r.codec} ${r.setting_text}`;
  $("viewer-img").src = r.full_url;
  $("viewer-img").alt = r.source_name || `picture ${id}`;
  $("viewer-open").href = r.full_url;
  factRows($("viewer-facts"), r);
  $("viewer").showModal();
}

// --- live updates ------------------------------------------------------------------------------
function live(ok, text) {
  const c = $("conn");
  c.textContent = text;
  c.className = `conn ${ok ? "conn-ok" : "conn-wait"}`;
}

function poll() {
  fetch("/api/state", { cache: "no-store" })
    .then((r) => r.json()).then((doc) => { render(doc); live(true, "live (polling)"); })
    .catch(() => live(false, "reconnecting…"))
    .finally(() => setTimeout(poll, 2000));
}

function connect() {
  if (!window.EventSource) { poll(); return; }
  const es = new EventSource("/api/events");
  es.addEventListener("state", (e) => { render(JSON.parse(e.data)); live(true, "live"); });
  es.onerror = () => live(false, "reconnecting…"); // EventSource retries by itself
}

document.addEventListener("DOMContentLoaded", () => {
  $("viewer").addEventListener("click", (e) => { if (e.target === $("viewer")) $("viewer").close(); });
  connect();
});
