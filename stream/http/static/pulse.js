/*! pulse.js: the Pulse browser tracker, served at GET /v1/pulse.js. ES2017, no dependencies.
 * At-least-once delivery; the collector's dedup on event_id makes it exactly once.
 * Events go to this tab's localStorage queue first and leave it when the collector
 * answers 2xx, or a 4xx other than 408/429 (dropped, passed to onError). 429, 503,
 * other 5xx and network errors are retried with the same event_id, after Retry-After
 * or an exponential backoff with jitter. When the page is hidden or left, sendBeacon
 * takes the queue in 32 KB bodies until it refuses; beaconed events stay queued, marked,
 * and are re-sent by fetch 5 s later (by this page or the next), which dedup absorbs.
 * The README's "Track from a web page" tells the whole design. */
(function (window) {
  "use strict";
  if (window.Pulse && window.Pulse.init) return; // loaded twice

  const document = window.document;
  const navigator = window.navigator;
  const P = "pulse.";
  const FIELDS = ["campaign_id", "variant_id", "item_id", "order_id", "revenue", "currency",
    "items", "channel", "session_id", "previous_id", "properties"];
  const BATCH_MAX = 500; // events per request (the collector takes at most 500)
  const BODY_MAX = 500000; // bytes per request (the collector takes at most 512 KB)
  // Chrome caps the bodies of a page's beacons and keepalive fetches in flight at 64 KiB
  // in all: two beacons of 32 KB fit, and one still fits beside a keepalive send.
  const BEACON_MAX = 32000;
  const KEEPALIVE_MAX = 32000;
  const RESEND_MS = 5000; // a beaconed event is re-sent by fetch this long after
  const STALE_MS = 120000; // another tab's queue is adopted after this without a heartbeat
  const BACKOFF_MAX = 30000;
  const TIMEOUT_MS = 30000; // a send without an answer by then is retried

  const cfg = {flushInterval: 2000, batchSize: 50, maxQueue: 1000};
  const encoder = window.TextEncoder ? new window.TextEncoder() : null;
  let local = null;
  let session = null;
  try {
    local = window.localStorage;
    session = window.sessionStorage;
  } catch (e) { /* storage disabled: the queue lives in memory only */ }

  function get(key, store) {
    try { return (store || local).getItem(P + key); } catch (e) { return null; }
  }
  function set(key, value, store) {
    try {
      if (value == null) (store || local).removeItem(P + key);
      else (store || local).setItem(P + key, value);
    } catch (e) { /* full or disabled: memory still holds it */ }
  }
  function parse(text, fallback) {
    try { return JSON.parse(text) || fallback; } catch (e) { return fallback; }
  }
  function bytes(text) {
    return encoder ? encoder.encode(text).length : text.length * 3;
  }

  function uuid() {
    const c = window.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    const b = new Uint8Array(16);
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (let i = 0; i < 16; i++) b[i] = Math.random() * 256;
    b[6] = (b[6] & 15) | 64; // version 4
    b[8] = (b[8] & 63) | 128; // RFC 4122 variant
    let id = "";
    for (let i = 0; i < 16; i++) {
      id += (b[i] + 256).toString(16).slice(1) + (i > 2 && i < 10 && i % 2 ? "-" : "");
    }
    return id;
  }

  // --- identity, consent and this tab's queue -------------------------------------------
  const instance = uuid(); // this page load
  let anonymousId = get("aid");
  if (!anonymousId) set("aid", anonymousId = uuid());
  let userId = get("uid");
  let consent = parse(get("consent"), {marketing: false});
  let tab = get("tab", session) || uuid();
  let queue = []; // [{e: event, b: beacon time or 0}], oldest first

  function heartbeat(owner) {
    set("hb." + tab, (owner || instance) + " " + Date.now());
  }
  function alive(t) { // [owner, ms] of a tab's heartbeat; owner "-" once its page was left
    const hb = (get("hb." + t) || "- 0").split(" ");
    return hb[0] !== "-" && Date.now() - hb[1] < STALE_MS ? hb[0] : "";
  }
  function load(t) {
    const q = parse(get("q." + t), []);
    return Array.isArray(q) ? q.filter((x) => x && x.e && x.e.event_id) : [];
  }
  function save() {
    set("q." + tab, queue.length ? JSON.stringify(queue) : null);
  }
  function claim() {
    const owner = alive(tab);
    if (owner && owner !== instance) tab = uuid(); // a duplicated tab: the id is taken
    set("tab", tab, session);
    heartbeat();
    const known = new Set(queue.map((x) => x.e.event_id));
    for (const x of load(tab)) if (!known.has(x.e.event_id)) queue.push(x);
    save();
  }
  function adopt() { // queues of tabs that were left or died
    if (!local) return;
    const keys = [];
    try {
      for (let i = 0; i < local.length; i++) keys.push(local.key(i));
    } catch (e) { return; }
    const known = new Set(queue.map((x) => x.e.event_id));
    let found = false;
    for (const key of keys) {
      if (!key || key.indexOf(P + "q.") !== 0) continue;
      const t = key.slice(P.length + 2);
      if (t === tab || alive(t)) continue;
      for (const x of load(t)) if (!known.has(x.e.event_id)) queue.push(x);
      set("q." + t, null);
      set("hb." + t, null);
      found = true;
    }
    if (found) {
      queue.sort((a, b) => a.e.event_time - b.e.event_time);
      trim();
      save();
    }
  }
  function trim() {
    if (queue.length > cfg.maxQueue) queue.splice(0, queue.length - cfg.maxQueue);
  }
  claim();

  // --- events ---------------------------------------------------------------------------
  function context() {
    const c = {page_url: window.location.href, user_agent: navigator.userAgent,
      locale: navigator.language};
    try { c.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { /* none */ }
    const utm = {};
    let any = false;
    new URLSearchParams(window.location.search).forEach((value, name) => {
      if (name.indexOf("utm_") === 0 && name.length > 4) { utm[name.slice(4)] = value; any = true; }
    });
    if (any) c.utm = utm;
    return c;
  }

  function track(type, props) {
    props = props || {};
    const e = {event_id: uuid(), type: type, event_time: Date.now(), anonymous_id: anonymousId};
    if (userId) e.user_id = userId;
    const extra = {};
    let hasExtra = false;
    for (const name of Object.keys(props)) {
      if (FIELDS.indexOf(name) >= 0) e[name] = props[name];
      else { extra[name] = props[name]; hasExtra = true; } // unknown names go to properties
    }
    if (hasExtra) e.properties = Object.assign({}, e.properties, extra);
    e.consent = Object.assign({}, consent);
    e.context = context();
    if (bytes(JSON.stringify(e)) > BODY_MAX / 2) { // far over the collector's 32 KB
      report({status: 413, events: [e]});
      return e.event_id;
    }
    queue.push({e: e, b: 0});
    trim();
    save();
    schedule(pending(Date.now()) >= cfg.batchSize ? 0 : cfg.flushInterval);
    return e.event_id;
  }

  // --- delivery -------------------------------------------------------------------------
  let timer = 0;
  let due = 0;
  let retryAt = 0;
  let attempt = 0;
  let inflight = null; // the Promise of the send in progress
  let sending = new Set(); // entries in that send
  let keepalive = false; // whether that send outlives the page (then no beacon repeats it)

  function ready(x, now) { return !sending.has(x) && (!x.b || now - x.b >= RESEND_MS); }
  function pending(now) {
    let n = 0;
    for (const x of queue) if (ready(x, now)) n++;
    return n;
  }
  function url() {
    return cfg.endpoint + "/v1/events?key=" + encodeURIComponent(cfg.writeKey || "");
  }
  function schedule(ms) {
    if (!cfg.endpoint || !queue.length) return;
    const at = Math.max(Date.now() + ms, retryAt);
    if (timer && at >= due) return;
    clearTimeout(timer);
    due = at;
    timer = setTimeout(() => { timer = 0; send(); }, at - Date.now());
  }
  function report(info) {
    if (typeof cfg.onError === "function") {
      try { cfg.onError(info); } catch (e) { /* the page's own handler */ }
    }
  }
  function backoff(retryAfter) {
    let s = retryAfter == null ? NaN : Number(retryAfter);
    if (isNaN(s) && retryAfter) s = (Date.parse(retryAfter) - Date.now()) / 1000;
    if (s >= 0) return s * 1000 + Math.random() * 1000;
    const ms = Math.min(BACKOFF_MAX, 1000 * Math.pow(2, attempt - 1));
    return ms / 2 + Math.random() * ms / 2;
  }

  // Up to `max` bytes of ready entries as [entries, JSON texts, bytes]; sent_at stamped.
  function take(now, max) {
    const batch = [];
    const parts = [];
    let size = 2;
    for (const x of queue) {
      if (batch.length >= BATCH_MAX) break;
      if (!ready(x, now)) continue;
      x.e.sent_at = now;
      const text = JSON.stringify(x.e);
      const n = bytes(text) + 1;
      if (n + 1 > max) continue; // over 32 KB: not in a beacon (fetch sends it; the DLQ takes it)
      if (size + n > max) break;
      batch.push(x);
      parts.push(text);
      size += n;
    }
    return [batch, "[" + parts.join(",") + "]", size];
  }

  function send() {
    if (inflight) return inflight;
    const now = Date.now();
    if (!cfg.endpoint || navigator.onLine === false) return Promise.resolve(); // "online" resumes
    if (now < retryAt) { schedule(0); return Promise.resolve(); }
    const [batch, body, size] = take(now, BODY_MAX);
    if (!batch.length) {
      if (queue.length) schedule(RESEND_MS); // beaconed entries, re-sent when due
      return Promise.resolve();
    }
    sending = new Set(batch);
    keepalive = size <= KEEPALIVE_MAX;
    inflight = post(body).then((answer) => {
      const status = answer[0];
      inflight = null;
      sending = new Set();
      if (status >= 200 && status < 300 || status >= 400 && status < 500 && status !== 408 &&
          status !== 429) { // acknowledged, or refused for good: out of the queue
        const done = new Set(batch);
        queue = queue.filter((x) => !done.has(x));
        save();
        attempt = 0;
        retryAt = 0;
        const result = answer[2];
        if (status >= 400 || (result && result.rejected)) {
          report({status: status, events: batch.map((x) => x.e), response: result});
        }
        // more than one request held: the rest goes at once (a backlog drains quickly)
        const backlog = queue.some((x) => ready(x, now) && x.e.event_time <= now);
        schedule(backlog || pending(Date.now()) >= cfg.batchSize ? 0 : cfg.flushInterval);
      } else {
        attempt++;
        retryAt = Date.now() + backoff(answer[1]);
        save(); // keeps sent_at of the attempt; harmless
        schedule(0);
      }
    });
    return inflight;
  }

  function post(body) { // -> [status (0: network error), Retry-After, parsed body]
    const abort = window.AbortController ? new window.AbortController() : null;
    const timeout = abort ? setTimeout(() => abort.abort(), TIMEOUT_MS) : 0;
    return window.fetch(url(), {
      method: "POST", body: body, keepalive: keepalive, credentials: "omit", mode: "cors",
      headers: {"Content-Type": "text/plain;charset=UTF-8"}, // no preflight
      signal: abort ? abort.signal : undefined,
    }).then((r) => r.text().then((text) => [r.status, r.headers.get("Retry-After"),
      parse(text, null)]), () => [0, null, null])
      .then((answer) => { clearTimeout(timeout); return answer; });
  }

  // The page is hidden or left: hand the queue to sendBeacon, 32 KB a body, until it refuses.
  function beacon() {
    if (!cfg.endpoint || !queue.length || navigator.onLine === false) return;
    const now = Date.now();
    const skip = keepalive ? sending : new Set(); // a keepalive fetch outlives the page
    const sent = sending;
    sending = skip;
    for (;;) { // beaconed entries are no longer ready: each round takes the next ones
      const [batch, body] = take(now, BEACON_MAX);
      if (!batch.length) break;
      let ok = false;
      try {
        ok = navigator.sendBeacon ? navigator.sendBeacon(url(),
          new Blob([body], {type: "text/plain;charset=UTF-8"})) : false;
      } catch (e) { /* a refused URL */ }
      if (!ok) break; // the rest stays queued for the next send or page load
      for (const x of batch) x.b = now;
    }
    sending = sent;
    save();
  }

  // --- page lifecycle -------------------------------------------------------------------
  let started = false;
  function start() {
    started = true;
    adopt();
    setInterval(() => { heartbeat(); adopt(); schedule(cfg.flushInterval); }, 15000);
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") beacon();
      else { heartbeat(); schedule(0); }
    });
    window.addEventListener("pagehide", () => { beacon(); heartbeat("-"); });
    window.addEventListener("pageshow", (ev) => { if (ev.persisted) { claim(); schedule(0); } });
    window.addEventListener("online", () => { attempt = 0; retryAt = 0; schedule(0); });
  }

  window.Pulse = {
    init(options) {
      Object.assign(cfg, options);
      cfg.endpoint = String(cfg.endpoint || "").replace(/\/+$/, "");
      if (!started) start();
      schedule(0);
    },
    consent(flags) {
      consent = Object.assign({}, flags);
      set("consent", JSON.stringify(consent));
    },
    view: (props) => track("view", props),
    click: (props) => track("click", props),
    addToCart: (props) => track("add_to_cart", props),
    purchase: (props) => track("purchase", props),
    track: track,
    identify(id, props) {
      userId = String(id);
      set("uid", userId);
      return track("identify", props);
    },
    reset() { // logout: a new anonymous id and no user id
      userId = null;
      set("uid", null);
      set("aid", anonymousId = uuid());
    },
    flush: () => send(),
    get anonymousId() { return anonymousId; },
    get userId() { return userId; },
    get queued() { return queue.length; },
  };
})(window);
