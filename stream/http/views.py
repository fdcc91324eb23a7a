"""HTTP endpoints of a worker: collector, health, readiness, Prometheus, live page."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import ipaddress
import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import faust
import orjson
from aiohttp import ClientError, ClientTimeout, web
from aiohttp.http_exceptions import HttpProcessingError
from faust.types.web import ResourceOptions

from stream.core.collector import (
    MAX_BODY_BYTES,
    BodyResult,
    RateLimiter,
    WriteKeys,
    body_key,
    classify_items,
    classify_parsed,
    parse_body,
    presented_key,
)
from stream.core.privacy import pseudonymize
from stream.core.segment import KINDS, SEGMENT_MAX_BATCH, load_mapping, map_request
from stream.kafka.routing import owned, owner_url, partition_for
from stream.kafka.writer import KafkaUnavailable
from stream.runtime import Runtime

log = logging.getLogger(__name__)

JSON = "application/json"


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON, headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(status, {"error": message}, headers)


class BodyTooLarge(Exception):
    """The request body is over the endpoint's limit."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, read in chunks; :class:`BodyTooLarge` past ``limit`` bytes.

    ``StreamReader.read(n)`` returns what is buffered so far, not ``n`` bytes, so
    a body split over several TCP segments must be read in a loop. At most
    ``limit + 1`` bytes are buffered, whatever the body (chunked or compressed).
    Raises ``ValueError`` when the body cannot be read (bad chunked or content
    encoding).
    """
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = await request.content.read(limit + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
    except web.HTTPException:
        raise
    except Exception as exc:  # connection lost mid-body; bad chunking or compression
        raise ValueError(type(exc).__name__) from None
    raise BodyTooLarge(size)


def _log_failure(what: str, exc: BaseException) -> None:
    """Log a handler failure without the exception message (it may quote the body)."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("%s failed with %s (message withheld)\n%s", what, type(exc).__name__, frames)


class RedactBadRequests(logging.Filter):
    """Log malformed HTTP requests as one warning line, without aiohttp's details.

    aiohttp logs a request it cannot parse at ERROR with the offending line
    quoted, which can be an ``Authorization`` header (a write key) or body
    bytes; the client already gets that detail in its 400 response.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | ConnectionError):
            record.msg = "rejected a malformed or broken HTTP request (%s; details withheld)"
            record.args = (type(exc).__name__,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


FORWARDED = "X-Pulse-Forwarded"  # a request one worker passed to another
SERVED_BY = "X-Pulse-Served-By"  # on a forwarded answer: the worker that made it
MAX_HOPS = 2  # a request forwarded to the id's worker, then to its identity's
MAX_K = 100
FORWARD_TIMEOUT = ClientTimeout(total=5)


def reco_query(query: Any) -> tuple[int, bool, str | None] | str:
    """``k``, ``exclude=seen`` and ``campaign_id`` of a recommendations request, or what is
    wrong with them.

    >>> reco_query({}), reco_query({"k": "5", "exclude": "seen", "campaign_id": "c"})
    ((20, False, None), (5, True, 'c'))
    >>> reco_query({"k": "0"})
    'k must be a whole number from 1 to 100, got 0'
    """
    raw = query.get("k", "20")
    try:
        k = int(raw)
    except ValueError:
        k = 0
    if not 1 <= k <= MAX_K:
        return f"k must be a whole number from 1 to {MAX_K}, got {raw}"
    exclude = query.get("exclude")
    if exclude not in (None, "seen"):
        return f"exclude={exclude!r} is not known: use exclude=seen or leave it out"
    return k, exclude == "seen", query.get("campaign_id") or None


def is_loopback(remote: str | None) -> bool:
    """Whether a peer address is this host's loopback (IPv4, IPv6 or IPv4-mapped).

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("::ffff:127.0.0.5")
    (True, True, True)
    >>> is_loopback("10.0.0.7"), is_loopback(None), is_loopback("unix")
    (False, False, False)
    """
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def register(app: faust.App, rt: Runtime) -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, RedactBadRequests) for f in server_log.filters):
        server_log.addFilter(RedactBadRequests())
    keys = WriteKeys(rt.settings.write_keys)
    read_keys = WriteKeys(rt.settings.read_keys)
    metrics_key = WriteKeys([rt.settings.metrics_key]) if rt.settings.metrics_key else None
    if not rt.settings.read_keys:
        log.warning(
            "PULSE_READ_KEYS is empty: the read side (/v1/campaigns, /v1/models, the live "
            "page's data) answers on loopback only; set read keys to serve it to other hosts"
        )

    def may_read(request: web.Request) -> web.Response | None:
        """None when ``request`` may use the read side, else the refusal."""
        if rt.settings.read_keys:
            if read_keys.match(request.headers.get("Authorization")) is not None:
                return None
            return _error(
                401,
                "missing or unknown read key: send 'Authorization: Bearer <key>' with a key "
                "from PULSE_READ_KEYS (write keys do not read)",
                {"WWW-Authenticate": 'Bearer realm="pulse-read"'},
            )
        if is_loopback(request.remote):
            return None
        return _error(
            403,
            "the read side answers on loopback only while PULSE_READ_KEYS is empty: set "
            "read keys on the worker and send one as 'Authorization: Bearer <key>'",
        )

    def may_scrape(request: web.Request) -> web.Response | None:
        """None when ``request`` may read /metrics (open unless PULSE_METRICS_KEY is set)."""
        if metrics_key is None or metrics_key.match(request.headers.get("Authorization")):
            return None
        return _error(
            401,
            "GET /metrics needs 'Authorization: Bearer <PULSE_METRICS_KEY>' "
            "(Prometheus: authorization.credentials in the scrape config)",
            {"WWW-Authenticate": 'Bearer realm="pulse-metrics"'},
        )

    limiter = RateLimiter(rt.settings.rate_limit)
    metrics = rt.metrics
    events_topic = rt.settings.topic("events")
    dlq_topic = rt.settings.topic("events.dlq")

    def too_many(wait: float) -> web.Response:
        return _error(
            429,
            f"rate limit of {rt.settings.rate_limit:g} events/s for this key exceeded; "
            "retry after the Retry-After seconds",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )

    def unauthorized() -> web.Response:
        return _error(
            401,
            "missing or unknown write key: send a key from PULSE_WRITE_KEYS as "
            "'Authorization: Bearer <key>', as HTTP Basic user name, as ?key=<key> "
            "or as a writeKey field of the body",
            {"WWW-Authenticate": 'Bearer realm="pulse"'},
        )

    async def accept(
        request: web.Request,
        classify: Callable[[Any, int, bytes], BodyResult],
        reply: Callable[[BodyResult], web.Response],
        limit: int = MAX_BODY_BYTES,
    ) -> web.Response:
        """The collector's common path: key, rate, body, classification, Kafka ack.

        ``classify`` turns the parsed body into events and DLQ records; ``reply``
        answers once Kafka acknowledged them all. A key outside the body is checked
        before the body is read; a ``writeKey`` in the body after parsing it.
        """
        token = presented_key(request.headers.get("Authorization"), request.query.get("key"))
        key = keys.match_key(token) if token is not None else None
        if token is not None and key is None:
            return unauthorized()
        if key is not None and (wait := limiter.exhausted(key)) > 0:
            return too_many(wait)
        length = request.content_length
        if length is not None and length > limit:
            return _error(413, f"body is {length} bytes; send at most {limit} per request")
        try:
            body = await read_body(request, limit)
        except BodyTooLarge:
            return _error(
                413,
                f"body is over {limit} bytes (after decompression); send at most that per request",
            )
        except ValueError as exc:
            return _error(
                400,
                f"the request body could not be read ({exc}): send plain or gzip-encoded "
                "JSON with a correct Content-Length or chunked encoding",
            )
        parsed = parse_body(body, limit)
        if isinstance(parsed, BodyResult):
            return _error(parsed.status, parsed.message)
        if key is None:
            key = keys.match_key(body_key(parsed))
            if key is None:
                return unauthorized()
            if (wait := limiter.exhausted(key)) > 0:
                return too_many(wait)
        received_ms = int(time.time() * 1000)
        try:
            result = classify(parsed, received_ms, body)
        except Exception as exc:  # a bug must not become a 500 that quotes the body in the log
            _log_failure("classifying a collector request", exc)
            return _error(
                400, "the body could not be processed: send events as described by the schema"
            )
        if result.status >= 300:
            return _error(result.status, result.message)
        wait = limiter.take(key, len(result.accepted) + len(result.dlq))
        if wait > 0:
            return too_many(wait)
        if not rt.writer.started:
            return _error(503, "not connected to Kafka yet; retry shortly", {"Retry-After": "2"})
        try:
            async with asyncio.timeout(rt.settings.collector_ack_timeout_s):
                if result.accepted:
                    await rt.writer.send_many(
                        result.accepted, events_topic, timestamp_ms=received_ms
                    )
                if result.dlq:
                    await rt.writer.send_many(result.dlq, dlq_topic, timestamp_ms=received_ms)
        except (KafkaUnavailable, TimeoutError) as exc:
            log.warning("collector write failed: %s", exc or "no acknowledgement in time")
            return _error(
                503,
                f"Kafka did not acknowledge the events within "
                f"{rt.settings.collector_ack_timeout_s:g} s; retry after the Retry-After "
                "seconds (events already written are deduplicated by event_id)",
                {"Retry-After": "5"},
            )
        metrics.count_invalid(result.reasons)
        metrics.count_segment_unmapped(result.unmapped)
        return reply(result)

    def accepted(result: BodyResult) -> web.Response:
        return _json(
            202,
            {
                "accepted": len(result.accepted),
                "rejected": len(result.errors),
                "errors": result.errors,
            },
        )

    async def collect(request: web.Request) -> web.Response:
        return await accept(request, classify_parsed, accepted)

    segment_mapping = load_mapping(rt.settings.segment_mapping or None)

    def segment_handler(kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        """Segment's Tracking API at ``/v1/{kind}``: 200 ``{"success": true}`` once Kafka
        acknowledged the mapped events and the DLQ records of rejected messages."""

        def classify(parsed: Any, received_ms: int, body: bytes) -> BodyResult:
            mapped = map_request(parsed, kind, segment_mapping, received_ms)
            if isinstance(mapped, str):
                return BodyResult(400, mapped)
            result = classify_items(mapped.events, received_ms, body)
            for index, reason, detail, raw in mapped.rejected:
                result.reject(index, reason, detail, raw, received_ms)
            result.unmapped = mapped.unmapped
            return result

        async def segment(request: web.Request) -> web.Response:
            return await accept(request, classify, segment_ok, SEGMENT_MAX_BATCH)

        segment.__name__ = f"segment_{kind}"
        return segment

    def segment_ok(result: BodyResult) -> web.Response:
        return _json(200, {"success": True})

    async def healthz(request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = {
            "kafka_writer": rt.writer.started,
            "partitions_assigned": rt.assigned,
            "state_restored": rt.recovered,  # once, at start: later rebalances keep it
        }
        ready = all(checks.values())
        return _json(200 if ready else 503, {"ready": ready, "checks": checks})

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    async def campaigns(request: web.Request) -> web.Response:
        body = rt.campaigns.summary()
        body.update(generated_at=int(time.time() * 1000), window_ms=rt.size_ms)
        return _json(200, body)

    async def campaign(request: web.Request) -> web.Response:
        cid = request.match_info["campaign_id"]
        found = rt.campaigns.campaign(cid, detail=True)
        if found is None:
            return _error(404, f"no closed window for campaign {cid!r} yet: check the id")
        found["settings"] = rt.campaign_settings.get(cid)
        return _json(200, found)

    async def attribution(request: web.Request) -> web.Response:
        """Credit per campaign and channel by each attribution model over ``pulse.metrics``."""
        body = rt.attribution.summary()
        body["generated_at"] = int(time.time() * 1000)
        return _json(200, body)

    async def recommendations(request: web.Request) -> web.Response:
        """Next items for a user, from the worker that holds the user's partition (a
        request reaching another worker is forwarded to it once). An id merged into an
        identity (a login) is answered with the identity's items."""
        user = request.match_info["user_id"]
        asked = reco_query(request.query)
        if isinstance(asked, str):
            return _error(400, asked)
        k, exclude_seen, campaign = asked
        s = rt.settings
        p = partition_for(user.encode(), s.partitions)
        if p not in owned(app, s.topic("events")):
            return await forward(request, p, str(request.rel_url))
        held = pseudonymize(user, s.pseudonymize_salt) if s.pseudonymize_salt else user
        book = rt.stage.identities.get(p)
        identity = book.canonical(held) if book is not None else held
        if identity != held and not s.pseudonymize_salt:  # logged in: the identity's items
            p = partition_for(identity.encode(), s.partitions)
            if p not in owned(app, s.topic("events")):
                path = f"/v1/users/{quote(identity, safe='')}/recommendations"
                got = await forward(request, p, f"{path}?{request.query_string}")
                if got.status != 200 or got.body is None:
                    return got
                body = orjson.loads(bytes(got.body))  # type: ignore[arg-type]
                return _json(200, {**body, "user_id": user}, {SERVED_BY: got.headers[SERVED_BY]})
            held = identity
        reco = rt.stage.recommenders.get(p)
        items, policy = reco.recommend(held, k, exclude_seen, campaign) if reco else ([], "popular")
        return _json(
            200,
            {
                "user_id": user,
                "items": [{"item_id": i, "score": score} for i, score in items],
                "policy": policy,
                "generated_at": int(time.time() * 1000),
            },
        )

    async def forward(request: web.Request, p: int, path: str) -> web.Response:
        """Pass ``request`` (as ``path``) to the worker holding partition ``p``: at most two
        hops (to the id's partition, then to its identity's)."""
        events = rt.settings.topic("events")
        url = owner_url(app, events, p)
        came = request.headers.get(FORWARDED, "0")
        hops = int(came) if came.isdigit() else MAX_HOPS
        if hops >= MAX_HOPS or url is None:
            return _error(
                503,
                f"partition {p} of {events} is moving between workers: retry shortly",
                {"Retry-After": "2"},
            )
        headers = {FORWARDED: str(hops + 1)}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        try:
            target = url.rstrip("/") + path
            async with app.http_client.get(target, headers=headers, timeout=FORWARD_TIMEOUT) as got:
                body = await got.read()
                headers = {SERVED_BY: url}
                return web.Response(
                    status=got.status, body=body, content_type=JSON, headers=headers
                )
        except (TimeoutError, OSError, ClientError) as exc:
            return _error(
                503, f"the worker holding this user ({url}) did not answer ({exc!r}): retry"
            )

    page = (Path(__file__).parent / "static" / "index.html").read_text()

    async def models(request: web.Request) -> web.Response:
        stage = rt.stage
        return _json(
            200,
            {
                "propensity": {
                    str(p): {
                        "labels": m.labels,
                        "rocauc": float(m.rocauc.get()),
                        "logloss": float(m.logloss.get()),
                        "users": len(m.users),
                        "pending_labels": len(m.pending),
                    }
                    for p, m in sorted(stage.models.items())
                }
            },
        )

    async def score(request: web.Request) -> web.Response:
        try:
            x = orjson.loads(await read_body(request, 64 * 1024))
            if not isinstance(x, dict) or not all(
                type(v) in (int, float) and math.isfinite(v) for v in x.values()
            ):
                raise ValueError
        except (ValueError, BodyTooLarge):
            return _error(
                400, "send a JSON object (at most 64 KB) of feature name -> finite number"
            )
        return _json(
            200,
            {
                str(p): float(m.model.predict_proba_one(x).get(True, 0.0))
                for p, m in sorted(rt.stage.models.items())
            },
        )

    page_asking = page.replace('<body data-read="open">', '<body data-read="key">', 1)

    async def index(request: web.Request) -> web.Response:
        """The live page; it asks for a read key (kept in sessionStorage) when one is
        needed: read keys are configured, or the page is not loaded over loopback."""
        needs_key = bool(rt.settings.read_keys) or not is_loopback(request.remote)
        return web.Response(text=page_asking if needs_key else page, content_type="text/html")

    tracker = (Path(__file__).parent / "static" / "pulse.js").read_bytes()
    tracker_gz = gzip.compress(tracker, 9, mtime=0)
    tracker_tag = hashlib.sha256(tracker).hexdigest()[:32]

    async def pulse_js(request: web.Request) -> web.Response:
        """The browser tracker: cacheable for 5 minutes, strong ETag, 304 when unchanged."""
        gz = "gzip" in request.headers.get("Accept-Encoding", "").lower()
        etag = f'"{tracker_tag}-gz"' if gz else f'"{tracker_tag}"'  # one tag per encoding
        headers = {"Cache-Control": "public, max-age=300", "ETag": etag, "Vary": "Accept-Encoding"}
        asked = request.headers.get("If-None-Match", "")
        tags = {t.strip().removeprefix("W/") for t in asked.split(",")}
        if etag in tags or "*" in tags:
            return web.Response(status=304, headers=headers)
        if gz:
            headers["Content-Encoding"] = "gzip"
        return web.Response(
            body=tracker_gz if gz else tracker,
            headers=headers,
            content_type="application/javascript",
            charset="utf-8",
        )

    def view(handler: Any, guard: Callable[[web.Request], web.Response | None] | None) -> Any:
        """A Faust view method that checks ``guard`` first and counts the response status."""

        async def wrapped(self: Any, request: web.Request, **kw: Any) -> web.Response:
            refused = guard(request) if guard is not None else None
            response = refused if refused is not None else await handler(request)
            metrics.count_http(response.status)
            return response

        return wrapped

    # Pages on other origins may post events (the collector only; the read side stays
    # same-origin). Retry-After is exposed so that a tracker can honour it.
    collector_cors = {
        origin: ResourceOptions(
            allow_credentials=False,
            expose_headers=("Retry-After",),
            allow_headers=("Authorization", "Content-Type", "Content-Encoding"),
            max_age=86400,
            allow_methods=("POST",),
        )
        for origin in rt.settings.cors_origins
    }
    routes: list[tuple[str, str, Any, Any, Any]] = [
        # path, method, handler, CORS options, guard
        ("/v1/events", "post", collect, collector_cors, None),
        *((f"/v1/{kind}", "post", segment_handler(kind), collector_cors, None) for kind in KINDS),
        ("/healthz", "get", healthz, None, None),
        ("/readyz", "get", readyz, None, None),
        ("/metrics", "get", prometheus, None, may_scrape),
        ("/v1/campaigns", "get", campaigns, None, may_read),
        ("/v1/models", "get", models, None, may_read),
        ("/v1/models/propensity/score", "post", score, None, may_read),
        ("/v1/campaigns/{campaign_id}", "get", campaign, None, may_read),
        ("/v1/attribution", "get", attribution, None, may_read),
        ("/v1/users/{user_id}/recommendations", "get", recommendations, None, may_read),
        ("/", "get", index, None, None),
        ("/v1/pulse.js", "get", pulse_js, None, None),
    ]
    for path, method, handler, cors, guard in routes:
        cls = type(f"View_{handler.__name__}", (faust.web.View,), {method: view(handler, guard)})
        app.page(path, name=f"pulse-{handler.__name__}", cors_options=cors)(cls)
