"""Fuzz the HTTP collector of a real worker with hostile bodies, headers and framing.

Whatever arrives: never a 5xx, the worker keeps running, and its log never
quotes a write key or a user id from the requests. Bounded to a few hundred
examples (about a minute on the 2-core machine).
"""

from __future__ import annotations

import gzip
import socket
import string
import time
import zlib
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from schemas import load_schema
from tests.strategies import json_values

pytestmark = pytest.mark.integration

KEY = "fuzz-write-key-Q7Z9"
MARK = "fuzzuser-"  # every generated user id starts with it: the log must never show it
EXAMPLES = 1500
RAW_EXAMPLES = 120
OK_STATUSES = {202, 400, 401, 413, 429}

user_ids = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=20).map(
    lambda s: MARK + s
)
FIELDS = [*load_schema("event")["properties"], "unknown"]  # every schema field, and one more


@st.composite
def events(draw: Any) -> dict[str, Any]:
    """A valid event, then a few fields replaced, removed or added at random."""
    e: dict[str, Any] = {
        "event_id": draw(st.text(max_size=70)),
        "type": draw(st.sampled_from(["view", "click", "purchase", "hover"])),
        "event_time": draw(
            st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(max_size=30)
        ),
        "user_id": draw(user_ids),
        "campaign_id": "c-fuzz",
        "context": {"ip": draw(st.ip_addresses().map(str) | st.text(max_size=40))},
    }
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        if draw(st.booleans()):
            e.pop(field, None)
        else:
            e[field] = draw(json_values)
    if "user_id" in e and not isinstance(e["user_id"], str):
        e["user_id"] = draw(user_ids)
    return e


def nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    inner = b'{"p":' * depth + b"1" + b"}" * depth
    return (
        b'{"event_id":"n","type":"view","event_time":1,"user_id":"'
        + MARK.encode()
        + (b'deep","campaign_id":"c","properties":' + inner + b"}")
    )


LITERALS = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1" * 400, b"-0", b"1e-999"]


@st.composite
def bodies(draw: Any) -> bytes:
    kind = draw(
        st.sampled_from(
            ["event", "array", "bytes", "nested", "literal", "utf8", "many", "limit", "scalar"]
        )
    )
    if kind == "event":
        return orjson.dumps(draw(events()))
    if kind == "array":
        return orjson.dumps(draw(st.lists(events(), max_size=5)))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "nested":
        return nested(
            draw(st.integers(min_value=200, max_value=3000)),
            draw(st.sampled_from(["array", "props"])),
        )
    if kind == "literal":
        lit = draw(st.sampled_from(LITERALS))
        field = draw(st.sampled_from(["revenue", "event_time", "sent_at", "event_id"]))
        return (
            b'{"event_id":"l","type":"purchase","event_time":1,"user_id":"'
            + MARK.encode()
            + b'lit","currency":"EUR","revenue":1,"'
            + field.encode()
            + b'":'
            + lit
            + b"}"
        )
    if kind == "utf8":
        bad = draw(
            st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\\ud800", b"\x00"])
        )
        return (
            b'{"event_id":"u","type":"view","event_time":1,"user_id":"'
            + MARK.encode()
            + bad
            + b'"}'
        )
    if kind == "many":
        n = draw(st.sampled_from([0, 1, 500, 501, 2000]))
        item = draw(st.sampled_from([b"1", b"{}", b"[]", b'{"user_id":"' + MARK.encode() + b'x"}']))
        return b"[" + b",".join([item] * n) + b"]"
    if kind == "limit":
        size = draw(st.sampled_from([512 * 1024 - 1, 512 * 1024, 512 * 1024 + 1, 2 * 1024 * 1024]))
        head = (
            b'[{"event_id":"big","type":"view","event_time":1,"user_id":"'
            + MARK.encode()
            + b'b","properties":{"x":"'
        )
        return head + b"a" * max(0, size - len(head) - 4) + b'"}}]'
    return draw(st.sampled_from([b"", b"null", b"42", b'"x"', b"true", b"[]", b"{}", b" "]))


auth_headers = (
    st.just(f"Bearer {KEY}")
    | st.sampled_from(
        [
            None,
            f"Bearer {KEY}",
            f"bearer {KEY}",
            f"BEARER  {KEY}",
            f"Basic {KEY}",
            f"Token {KEY}",
            f"Bearer{KEY}",
            "Bearer ",
            "Bearer wrong-key-" + "z" * 5000,
            f"Bearer {KEY}\u00ff",
            f"Bearer {KEY[:-1]}",
        ]
    )
    | st.text(max_size=60).map(lambda t: "Bearer " + t)
)
content_types = st.sampled_from(
    [
        None,
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/json; charset=latin-1",
        "garbage/\u00e9",
    ]
)


@st.composite
def requests(draw: Any) -> tuple[dict[str, str] | list[tuple[str, str]], bytes, bool]:
    body = draw(bodies())
    headers: list[tuple[str, str]] = []
    auth = draw(auth_headers)
    if auth is not None:
        headers.append(("Authorization", auth))
    if draw(st.integers(0, 4)) == 0:  # duplicate Authorization, wrong one first or second
        headers.insert(draw(st.integers(0, len(headers))), ("Authorization", "Bearer other-key"))
    ctype = draw(content_types)
    if ctype is not None:
        headers.append(("Content-Type", ctype))
    extra = draw(st.sampled_from(["none", "giant", "many", "gzip", "gzip-bad", "br", "deflate"]))
    if extra == "giant":
        headers.append(("X-Giant", "g" * draw(st.sampled_from([4000, 9000, 70000]))))
    elif extra == "many":
        headers.extend((f"X-H{i}", "v") for i in range(draw(st.sampled_from([50, 150]))))
    elif extra == "gzip":
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    elif extra == "gzip-bad":
        headers.append(("Content-Encoding", "gzip"))
    elif extra == "br":
        headers.append(("Content-Encoding", "br"))
    elif extra == "deflate":
        body = zlib.compress(body)
        headers.append(("Content-Encoding", "deflate"))
    chunked = draw(st.booleans())
    return headers, body, chunked


def assert_alive(worker: Any) -> None:
    assert worker.proc.poll() is None, f"worker died; log:\n{worker.tail()}"


def test_collector_fuzz_http(make_worker) -> None:
    worker = make_worker(PULSE_WRITE_KEYS=KEY, PULSE_RATE_LIMIT="0", PULSE_LOG_LEVEL="info")
    statuses: dict[int, int] = {}
    # a fresh connection per request: the server may close one after refusing a request
    client = httpx.Client(
        base_url=worker.url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)
    )
    hangups = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(req=requests())
    def run(req: tuple[list[tuple[str, str]], bytes, bool]) -> None:
        headers, body, chunked = req
        content: Any = body
        if chunked:  # no Content-Length: the server must stop reading at the limit itself
            content = iter([body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""])
        raw_headers = [(k.encode(), v.encode()) for k, v in headers]
        try:
            r = client.post("/v1/events", content=content, headers=raw_headers)
        except httpx.LocalProtocolError:  # a header h11 refuses to send (control characters)
            assume(False)
            return
        except httpx.TransportError as exc:  # a server may hang up on a request it refuses
            hangups.append(type(exc).__name__)
            assert_alive(worker)
            return
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code in OK_STATUSES, (r.status_code, r.text[:300], headers[:3], body[:200])
        if r.status_code == 202:
            payload = r.json()
            assert payload["accepted"] + payload["rejected"] >= 1

    started = time.monotonic()
    run()
    client.close()
    took = time.monotonic() - started
    print(f"\nfuzz: {EXAMPLES} requests in {took:.0f}s: {statuses}, hang-ups {len(hangups)}")
    assert_alive(worker)
    assert httpx.get(f"{worker.url}/readyz", timeout=10).status_code == 200
    assert statuses.get(202) and statuses.get(401) and statuses.get(400)
    time.sleep(2)  # let the worker ingest what was accepted
    assert_alive(worker)
    log = worker.log_path.read_text(errors="replace")
    assert KEY not in log and "wrong-key" not in log and "other-key" not in log
    assert MARK not in log, [line for line in log.splitlines() if MARK in line][:5]


# --- malformed HTTP framing, on a raw socket -------------------------------------------------


def raw_request(port: int, data: bytes, shut: bool = False) -> int | None:
    """Send bytes, return the response status (None: no response, e.g. still awaiting a body).

    The socket is not half-closed: Faust's server drops a half-closed connection unanswered.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            return None
    if not reply.startswith(b"HTTP/"):
        return None
    return int(reply.split(b" ", 2)[1])


def head(extra: bytes, auth: bytes = f"Bearer {KEY}".encode()) -> bytes:
    return b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + b"\r\n" + extra


EVENT = orjson.dumps(
    {"event_id": "r1", "type": "view", "event_time": 1, "user_id": MARK + "raw", "campaign_id": "c"}
)
FRAMINGS = [
    head(b"Content-Length: 500\r\n\r\n" + EVENT),  # shorter than announced, then EOF
    head(b"Content-Length: -1\r\n\r\n" + EVENT),
    head(b"Content-Length: abc\r\n\r\n" + EVENT),
    head(b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n" + EVENT),
    head(b"Transfer-Encoding: chunked\r\nContent-Length: 10\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    head(b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    head(b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloEXTRA\r\n0\r\n\r\n"),
    head(b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nx\r\n"),
    head(b"Transfer-Encoding: chunked\r\n\r\n" + b"10000\r\n" + b"a" * 65536 + b"\r\n" * 1),
    head(b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    head(b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello"),
    head(b"Content-Length: 4\r\n\r\nnull", auth=b"Bearer \xff\xfe" + KEY.encode()),
    head(b"Content-Length: 4\r\n\r\nnull", auth=b"Bearer " + KEY.encode() + b"\x00"),
    head(b"X-Bad\xff: 1\r\nContent-Length: 2\r\n\r\n{}"),
    head(b"X-Long: " + b"h" * 20000 + b"\r\nContent-Length: 2\r\n\r\n{}"),
    b"POST /v1/events HTTP/1.0\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n" + EVENT,
    b"POST /v1/events HTTP/9.9\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS hello
]


def test_collector_fuzz_framing(make_worker) -> None:
    worker = make_worker(PULSE_WRITE_KEYS=KEY, PULSE_RATE_LIMIT="0", PULSE_LOG_LEVEL="info")
    port = int(worker.url.rsplit(":", 1)[1])
    seen = []
    for data in FRAMINGS:
        status = raw_request(port, data)
        seen.append(status)
        assert status is None or status < 500, (status, data[:120])
        assert_alive(worker)

    # chunked bodies over the limit, in random chunk sizes: 413 without buffering them all
    @settings(max_examples=RAW_EXAMPLES // 4, deadline=None, database=None)
    @given(
        sizes=st.lists(st.integers(1, 200_000), min_size=1, max_size=12),
        total=st.sampled_from([600_000, 3_000_000]),
    )
    def chunked(sizes: list[int], total: int) -> None:
        body = bytearray()
        out = [head(b"Transfer-Encoding: chunked\r\n\r\n")]
        i = 0
        while len(body) < total:
            n = sizes[i % len(sizes)]
            i += 1
            out.append(b"%x\r\n" % n + b"a" * n + b"\r\n")
            body += b"a" * n
        out.append(b"0\r\n\r\n")
        status = raw_request(port, b"".join(out))
        assert status in (413, None), status
        big.append(status)
        assert_alive(worker)

    big: list[int | None] = []
    chunked()
    assert 413 in big, big

    # the model scoring endpoint takes a feature object: anything else is a 400
    for body in [b'{"a": "x"}', b'{"a": null}', b'{"a": [1]}', b'{"a": 1e308}', b"[1]", b"{"]:
        r = httpx.post(f"{worker.url}/v1/models/propensity/score", content=body, timeout=30)
        assert r.status_code in (200, 400), (r.status_code, body)
    r = httpx.post(f"{worker.url}/v1/models/propensity/score", content=b" " * 70_000, timeout=30)
    assert r.status_code == 400
    assert httpx.get(f"{worker.url}/readyz", timeout=10).status_code == 200
    log = worker.log_path.read_text(errors="replace")
    assert KEY not in log and MARK not in log
    print(f"\nframing statuses: {seen}; chunked over the limit: {big}")
