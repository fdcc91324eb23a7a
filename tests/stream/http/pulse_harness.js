// Runs stream/http/static/pulse.js in Node with a fake page (storage, fetch, sendBeacon,
// events) and checks one scenario: `node pulse_harness.js <scenario>`. Exit code 0 when
// the scenario holds; an assertion error and exit code 1 otherwise.
"use strict";
const assert = require("assert");
const fs = require("fs");
const path = require("path");
const vm = require("vm");

const SOURCE = fs.readFileSync(
  path.join(__dirname, "..", "..", "..", "stream", "http", "static", "pulse.js"), "utf8");
const UUID4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function storage(map) {
  return {
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => { map.set(k, String(v)); },
    removeItem: (k) => { map.delete(k); },
    key: (i) => [...map.keys()][i] || null,
    get length() { return map.size; },
  };
}

// One page load. `shared` is the origin's localStorage (a Map), `session` the tab's.
function page(opts) {
  const o = Object.assign({shared: new Map(), session: new Map(), answers: []}, opts);
  const listeners = {};
  const requests = [];
  const beacons = [];
  const timers = [];
  const on = (target) => (name, fn) => {
    (listeners[target + name] = listeners[target + name] || []).push(fn);
  };
  const win = {
    localStorage: storage(o.shared),
    sessionStorage: storage(o.session),
    navigator: {
      onLine: true, userAgent: "node-harness", language: "de-DE",
      sendBeacon: (url, blob) => {
        beacons.push({url, blob});
        return o.beaconOk ? o.beaconOk(beacons.length) : true;
      },
    },
    location: {href: "https://shop.example/p?utm_source=news&utm_medium=email&x=1",
      search: "?utm_source=news&utm_medium=email&x=1"},
    document: {visibilityState: "visible", addEventListener: on("doc:")},
    addEventListener: on("win:"),
    crypto: o.noCrypto ? undefined : o.noRandomUUID
      ? {getRandomValues: (a) => require("crypto").getRandomValues(a)}
      : require("crypto").webcrypto,
    TextEncoder, AbortController,
    fetch: async (url, init) => {
      const req = {url, init, at: Date.now(), body: JSON.parse(init.body)};
      requests.push(req);
      const answer = o.answers.length ? o.answers.shift() : 202;
      if (answer === "network") throw new TypeError("Failed to fetch");
      const [status, retryAfter] = Array.isArray(answer) ? answer : [answer, null];
      const body = status === 202
        ? {accepted: req.body.length, rejected: 0, errors: []} : {error: "x"};
      return {
        status,
        headers: {get: (h) => (h.toLowerCase() === "retry-after" ? retryAfter : null)},
        text: async () => JSON.stringify(body),
      };
    },
  };
  const context = {
    window: win, Blob, URLSearchParams, Intl, encodeURIComponent,
    setTimeout: (fn, ms) => { const t = setTimeout(fn, ms); timers.push(t); return t; },
    clearTimeout, setInterval: () => 0,
  };
  vm.runInNewContext(SOURCE, context);
  const fire = (name, ev) => { for (const fn of listeners[name] || []) fn(ev || {}); };
  return {
    Pulse: win.Pulse, win, requests, beacons, shared: o.shared, session: o.session,
    hide() { win.document.visibilityState = "hidden"; fire("doc:visibilitychange"); },
    leave() { this.hide(); fire("win:pagehide", {persisted: false}); },
    online(up) { win.navigator.onLine = up; if (up) fire("win:online"); },
    close() { for (const t of timers) clearTimeout(t); },
  };
}

async function until(cond, ms, what) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new assert.AssertionError({message: "timed out: " + what});
    await sleep(5);
  }
}

const view = (i) => ({campaign_id: "c1", variant_id: "A", item_id: "sku-" + i});
const INIT = {endpoint: "https://collector.example/", writeKey: "wk_1", flushInterval: 50};

const scenarios = {
  async event_shape() {
    const p = page();
    p.Pulse.init(INIT);
    p.Pulse.consent({marketing: true});
    p.Pulse.view(Object.assign(view(1),
      {channel: "email", session_id: "s1", properties: {a: 1}, extra: 2}));
    p.Pulse.identify("u-42");
    p.Pulse.purchase({order_id: "o1", revenue: 9.5, currency: "EUR",
      items: [{item_id: "sku-1", quantity: 1, price: 9.5}]});
    await until(() => p.requests.length === 1, 1000, "one request");
    const req = p.requests[0];
    assert.strictEqual(req.url, "https://collector.example/v1/events?key=wk_1");
    assert.strictEqual(req.init.method, "POST");
    assert.strictEqual(req.init.headers["Content-Type"], "text/plain;charset=UTF-8");
    assert.strictEqual(req.init.credentials, "omit");
    assert.strictEqual(req.init.keepalive, true);
    const [v, ident, buy] = req.body;
    assert.deepStrictEqual([v.type, ident.type, buy.type], ["view", "identify", "purchase"]);
    for (const e of req.body) {
      assert.match(e.event_id, UUID4);
      assert.strictEqual(e.anonymous_id, p.Pulse.anonymousId);
      assert.deepStrictEqual(e.consent, {marketing: true});
      assert.ok(e.sent_at >= e.event_time && e.event_time > 1.7e12);
      assert.deepStrictEqual(e.context.utm, {source: "news", medium: "email"});
      assert.strictEqual(e.context.locale, "de-DE");
      assert.ok(e.context.timezone && e.context.page_url.startsWith("https://shop.example/"));
    }
    assert.strictEqual(v.user_id, undefined);
    assert.deepStrictEqual([v.channel, v.session_id, v.item_id], ["email", "s1", "sku-1"]);
    assert.deepStrictEqual(v.properties, {a: 1, extra: 2});
    assert.deepStrictEqual([ident.user_id, buy.user_id], ["u-42", "u-42"]);
    assert.deepStrictEqual(buy.items, [{item_id: "sku-1", quantity: 1, price: 9.5}]);
    await until(() => p.Pulse.queued === 0, 1000, "acknowledged");
    p.close();
    // identity and consent persist across page loads
    const again = page({shared: p.shared, session: p.session});
    assert.strictEqual(again.Pulse.anonymousId, p.Pulse.anonymousId);
    assert.strictEqual(again.Pulse.userId, "u-42");
    again.Pulse.init(INIT);
    again.Pulse.click(view(2));
    await until(() => again.requests.length === 1, 1000, "request");
    assert.deepStrictEqual(again.requests[0].body[0].consent, {marketing: true});
    again.Pulse.reset();
    assert.strictEqual(again.Pulse.userId, null);
    assert.notStrictEqual(again.Pulse.anonymousId, p.Pulse.anonymousId);
    again.close();
  },

  async batch_size_triggers_a_send() {
    const p = page();
    p.Pulse.init(Object.assign({}, INIT, {flushInterval: 60000, batchSize: 5}));
    for (let i = 0; i < 4; i++) p.Pulse.view(view(i));
    await sleep(30);
    assert.strictEqual(p.requests.length, 0);
    p.Pulse.view(view(4));
    await until(() => p.requests.length === 1, 1000, "a send at batchSize");
    assert.strictEqual(p.requests[0].body.length, 5);
    p.close();
  },

  async retry_after_is_honoured_with_the_same_ids() {
    const p = page({answers: [[503, "1"], [429, "1"], 202]});
    p.Pulse.init(INIT);
    p.Pulse.view(view(1));
    p.Pulse.click(view(1));
    await until(() => p.Pulse.queued === 0, 5000, "delivered");
    const [a, b, c] = p.requests;
    assert.strictEqual(p.requests.length, 3);
    assert.ok(b.at - a.at >= 1000 && c.at - b.at >= 1000, [a.at, b.at, c.at].join(" "));
    const ids = (r) => r.body.map((e) => e.event_id).join();
    assert.strictEqual(ids(a), ids(b));
    assert.strictEqual(ids(b), ids(c));
    assert.ok(c.body[0].sent_at > a.body[0].sent_at, "sent_at is stamped per attempt");
    assert.strictEqual(c.body[0].event_time, a.body[0].event_time);
    p.close();
  },

  async network_errors_back_off_then_deliver() {
    const p = page({answers: ["network", "network", 503, 202]});
    p.Pulse.init(INIT);
    p.Pulse.view(view(1));
    await until(() => p.Pulse.queued === 0, 10000, "delivered");
    const gaps = p.requests.slice(1).map((r, i) => r.at - p.requests[i].at);
    assert.strictEqual(p.requests.length, 4);
    // backoff with jitter: 0.5-1 s, then 1-2 s, then 2-4 s (no Retry-After given)
    assert.ok(gaps[0] >= 490 && gaps[1] >= 990 && gaps[2] >= 1990, gaps.join(" "));
    p.close();
  },

  async refused_batches_are_dropped_and_reported() {
    for (const status of [400, 401, 413]) {
      const errors = [];
      const p = page({answers: [status]});
      p.Pulse.init(Object.assign({}, INIT, {onError: (info) => errors.push(info)}));
      p.Pulse.view(view(1));
      await until(() => p.Pulse.queued === 0, 1000, "dropped");
      await sleep(120);
      assert.strictEqual(p.requests.length, 1, "never retried");
      assert.strictEqual(errors.length, 1);
      assert.strictEqual(errors[0].status, status);
      assert.strictEqual(errors[0].events.length, 1);
      p.close();
    }
  },

  async offline_waits_for_online() {
    const p = page();
    p.online(false);
    p.Pulse.init(INIT);
    for (let i = 0; i < 3; i++) p.Pulse.view(view(i));
    await sleep(200);
    assert.strictEqual(p.requests.length, 0);
    p.hide(); // no beacon offline either
    assert.strictEqual(p.beacons.length, 0);
    p.win.document.visibilityState = "visible";
    p.online(true);
    await until(() => p.Pulse.queued === 0, 1000, "sent when online");
    assert.strictEqual(p.requests.length, 1);
    assert.strictEqual(p.requests[0].body.length, 3);
    p.close();
  },

  async queue_is_capped_oldest_dropped() {
    const p = page();
    p.Pulse.init(Object.assign({}, INIT, {maxQueue: 5, flushInterval: 60000, batchSize: 100}));
    const ids = [];
    for (let i = 0; i < 8; i++) ids.push(p.Pulse.view(view(i)));
    assert.strictEqual(p.Pulse.queued, 5);
    const stored = JSON.parse(p.shared.get("pulse.q." + p.session.get("pulse.tab")));
    assert.deepStrictEqual(stored.map((x) => x.e.event_id), ids.slice(3));
    p.close();
  },

  async requests_stay_under_500_events_and_500_kb() {
    const p = page();
    p.Pulse.init(Object.assign({}, INIT, {maxQueue: 2000, flushInterval: 60000, batchSize: 5000}));
    for (let i = 0; i < 1200; i++) {
      p.Pulse.view(Object.assign(view(i), {properties: {pad: "x".repeat(i < 600 ? 10 : 1500)}}));
    }
    await p.Pulse.flush();
    await until(() => p.Pulse.queued === 0, 5000, "drained");
    const sizes = p.requests.map((r) => Buffer.byteLength(r.init.body));
    const counts = p.requests.map((r) => r.body.length);
    assert.ok(counts.every((n) => n <= 500), counts.join());
    assert.ok(sizes.every((n) => n <= 500000), sizes.join());
    const sent = new Set(p.requests.flatMap((r) => r.body.map((e) => e.event_id)));
    assert.strictEqual(sent.size, 1200);
    assert.ok(p.requests.every((r, i) => r.init.keepalive === sizes[i] <= 32000));
    p.close();
  },

  async hidden_page_beacons_in_parts_and_the_next_load_resends() {
    const shared = new Map();
    const session = new Map();
    const p = page({shared, session, noRandomUUID: true, beaconOk: (n) => n <= 2});
    p.Pulse.init(Object.assign({}, INIT, {flushInterval: 60000, batchSize: 1000}));
    const ids = [];
    for (let i = 0; i < 200; i++) {
      ids.push(p.Pulse.view(Object.assign(view(i), {properties: {pad: "é".repeat(300)}})));
    }
    assert.ok(ids.every((id) => UUID4.test(id)), "getRandomValues ids are UUID v4");
    p.leave(); // visibilitychange: two beacons accepted, the third refused; pagehide: refused
    assert.strictEqual(p.beacons.length, 4);
    const texts = await Promise.all(p.beacons.map((b) => b.blob.text()));
    const sizes = texts.map((t) => Buffer.byteLength(t));
    assert.ok(sizes.every((n) => n <= 32000), sizes.join());
    assert.ok(p.beacons.every((b) => b.url === "https://collector.example/v1/events?key=wk_1"));
    assert.ok(p.beacons.every((b) => b.blob.type === "text/plain;charset=utf-8"));
    const beaconed = [];
    for (const t of texts.slice(0, 2)) beaconed.push(...JSON.parse(t).map((e) => e.event_id));
    assert.deepStrictEqual(beaconed, ids.slice(0, beaconed.length), "oldest first");
    assert.strictEqual(p.Pulse.queued, 200, "beaconed events stay queued");
    p.close();

    // the next page load of the same tab: the unbeaconed rest at once, the beaconed 5 s later
    const next = page({shared, session});
    next.Pulse.init(INIT);
    await until(() => next.requests.length === 1, 1000, "first send");
    const first = next.requests[0].body.map((e) => e.event_id);
    assert.deepStrictEqual(first, ids.slice(beaconed.length));
    assert.strictEqual(next.Pulse.queued, beaconed.length);
    await until(() => next.Pulse.queued === 0, 8000, "beaconed ones re-sent");
    assert.deepStrictEqual(next.requests[1].body.map((e) => e.event_id), beaconed);
    next.close();
  },

  async a_left_tab_is_adopted_by_another() {
    const shared = new Map();
    const a = page({shared, answers: ["network", "network", "network"]});
    a.Pulse.init(Object.assign({}, INIT, {flushInterval: 60000}));
    const ids = [a.Pulse.view(view(1)), a.Pulse.view(view(2))];
    a.online(false);
    a.leave(); // offline: no beacon; the queue is released
    a.close();
    const b = page({shared}); // another tab: its own session storage
    b.Pulse.init(INIT);
    await until(() => b.Pulse.queued === 0 && b.requests.length === 1, 2000, "adopted and sent");
    assert.deepStrictEqual(b.requests[0].body.map((e) => e.event_id), ids);
    const mine = "pulse.hb." + b.session.get("pulse.tab");
    const left = [...shared.keys()].filter((k) => /^pulse\.(q|hb)\./.test(k) && k !== mine);
    assert.deepStrictEqual(left, [], "the left tab's keys are gone");
    b.close();
  },

  async a_live_tab_keeps_its_queue() {
    const shared = new Map();
    const session = new Map();
    const a = page({shared, session});
    a.Pulse.init(Object.assign({}, INIT, {flushInterval: 60000}));
    a.Pulse.view(view(1));
    const b = page({shared, session: new Map(session)}); // a duplicated tab: same tab id
    b.Pulse.init(INIT);
    await sleep(100);
    assert.strictEqual(b.requests.length, 0, "not adopted: its heartbeat is fresh");
    assert.notStrictEqual(b.session.get("pulse.tab"), session.get("pulse.tab"));
    a.close();
    b.close();
  },

  async an_event_no_request_could_carry_is_refused_at_once() {
    const errors = [];
    const p = page();
    p.Pulse.init(Object.assign({}, INIT, {onError: (info) => errors.push(info)}));
    p.Pulse.view(Object.assign(view(1), {properties: {pad: "x".repeat(300000)}}));
    p.Pulse.view(view(2));
    assert.strictEqual(p.Pulse.queued, 1);
    assert.deepStrictEqual(errors.map((e) => [e.status, e.events.length]), [[413, 1]]);
    p.close();
  },

  async no_crypto_at_all_still_gives_uuid4() {
    const p = page({noCrypto: true});
    assert.match(p.Pulse.anonymousId, UUID4);
    assert.match(p.Pulse.view(view(1)), UUID4);
    p.close();
  },
};

const name = process.argv[2];
if (!scenarios[name]) {
  console.log(Object.keys(scenarios).join("\n"));
  process.exit(name ? 2 : 0);
}
scenarios[name]().then(() => process.exit(0), (err) => {
  console.error(err && err.stack || err);
  process.exit(1);
});
