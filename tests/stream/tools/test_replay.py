"""Reading replay files: JSONL passes through, CSV/Parquet rows become events (no broker)."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import orjson
import pandas as pd
import pytest

from stream.tools.replay import ReplayError, count_records, detect_format, iter_file_records

VIEW = (
    b'{"event_id":"e1","type":"view","event_time":1714564800000,"user_id":"u-1","campaign_id":"c1"}'
)
CLICK = (
    b'{"event_id": "e2", "type": "click", "event_time": "2024-05-01T12:00:00Z", '
    b'"anonymous_id": "dev-9", "campaign_id": "c1"}'
)


def records(path: Path) -> list[tuple[bytes | None, dict]]:
    return [(key, orjson.loads(value)) for key, value in iter_file_records(path)]


# -- JSON lines ---------------------------------------------------------------------------


def test_jsonl_lines_pass_through_untouched(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(VIEW + b"\r\n\n   \n" + CLICK + b"\n{broken\n" + b"[1,2]")
    out = list(iter_file_records(path))
    assert out == [(b"u-1", VIEW), (b"dev-9", CLICK), (None, b"{broken"), (None, b"[1,2]")]
    assert count_records(path) == 6  # physical lines, blank ones included (progress only)


def test_ndjson_gz_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + VIEW + b"\n" + CLICK + b"\n")
    assert [v for _, v in iter_file_records(path)] == [VIEW, CLICK]
    assert detect_format(path) == ("jsonl", True)


def test_json_file_with_one_array(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    path.write_bytes(b"[\n  " + VIEW + b",\n  " + CLICK + b"\n]\n")
    assert [(k, e["event_id"]) for k, e in records(path)] == [(b"u-1", "e1"), (b"dev-9", "e2")]
    lines = tmp_path / "lines.json"
    lines.write_bytes(VIEW + b"\n" + CLICK + b"\n")
    assert [v for _, v in iter_file_records(lines)] == [VIEW, CLICK]


# -- CSV ----------------------------------------------------------------------------------


HEADER = ",".join(
    [
        "event_id,type,event_time,user_id,anonymous_id,campaign_id,channel",
        "consent.marketing,context.ip,context.utm.source",
        "revenue,currency,order_id,properties,properties.items",
    ]
)
CSV = (
    HEADER
    + """
e1,view,1714564800000,007,,c1,web,true,10.0.0.1,newsletter,,,,,
e2,purchase,2024-05-01T12:00:00Z,,dev-9,,,false,,,19.90,eur,1001,"{""coupon"": ""X""}",2
e3,click,1714564800250.0,u-3,,c1,NA,,,,,,,not json,
"""
)


def test_csv_rows_become_nested_events(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(CSV)
    (k1, e1), (k2, e2), (k3, e3) = records(path)
    assert k1 == b"007" and e1 == {
        "event_id": "e1",
        "type": "view",
        "event_time": 1714564800000,
        "user_id": "007",  # ids stay text: no int conversion, leading zeros kept
        "campaign_id": "c1",
        "channel": "web",
        "consent": {"marketing": True},
        "context": {"ip": "10.0.0.1", "utm": {"source": "newsletter"}},
    }
    assert k2 == b"dev-9" and e2 == {
        "event_id": "e2",
        "type": "purchase",
        "event_time": "2024-05-01T12:00:00Z",  # RFC 3339 kept as written
        "anonymous_id": "dev-9",
        "consent": {"marketing": False},
        "revenue": 19.9,
        "currency": "eur",
        "order_id": "1001",
        "properties": {"coupon": "X", "items": 2},  # JSON cell parsed, dotted column merged
    }
    assert e3["event_time"] == 1714564800250 and isinstance(e3["event_time"], int)
    assert e3["channel"] == "NA"  # only empty cells (and null/NaN/None) count as missing
    assert e3["properties"] == "not json"  # not an object: left for the schema to reject
    assert k3 == b"u-3"
    assert count_records(path) == 3


def test_csv_event_time_is_never_rewritten(tmp_path: Path) -> None:
    times = [1, 1714564800000, 253402300799999]
    path = tmp_path / "t.csv"
    pd.DataFrame({"event_id": ["a", "b", "c"], "event_time": times}).to_csv(path, index=False)
    assert [e["event_time"] for _, e in records(path)] == times


def test_empty_csv_gives_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    assert list(iter_file_records(path)) == []


# -- Parquet ------------------------------------------------------------------------------


def test_parquet_rows_drop_missing_and_nest_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "event_id": ["p1", "p2", "p3"],
            "type": ["view", "purchase", "click"],
            "event_time": [1714564800000, 1714564801000, 1714564802000],
            "user_id": ["u-1", None, "u-3"],
            "anonymous_id": [None, "dev-2", None],
            "campaign_id": ["c1", None, "c1"],
            "revenue": [float("nan"), 42.5, float("nan")],
            "currency": [None, "EUR", None],
            "consent.marketing": [True, None, False],
            "context.ip": ["10.0.0.1", None, None],
            "context": [None, '{"locale": "de-DE"}', None],
            "sent_at": pd.to_datetime([None, "2024-05-01T12:00:01.500Z", None], utc=True),
        },
        index=[10, 11, 12],
    )
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)  # non-default index: stored as an extra column and skipped
    (k1, e1), (k2, e2), (k3, e3) = records(path)
    assert k1 == b"u-1" and e1 == {
        "event_id": "p1",
        "type": "view",
        "event_time": 1714564800000,
        "user_id": "u-1",
        "campaign_id": "c1",
        "consent": {"marketing": True},
        "context": {"ip": "10.0.0.1"},
    }
    assert k2 == b"dev-2" and e2 == {
        "event_id": "p2",
        "type": "purchase",
        "event_time": 1714564801000,
        "anonymous_id": "dev-2",
        "revenue": 42.5,
        "currency": "EUR",
        "context": {"locale": "de-DE"},
        "sent_at": 1714564801500,  # a timestamp column becomes epoch milliseconds
    }
    assert e3["consent"] == {"marketing": False} and "revenue" not in e3 and k3 == b"u-3"
    assert count_records(path) == 3
    assert detect_format(tmp_path / "events.parquet") == ("parquet", False)


def test_parquet_float_event_time_stays_integer(tmp_path: Path) -> None:
    path = tmp_path / "events.pq"
    pd.DataFrame({"event_id": ["a", "b"], "event_time": [1714564800000.0, None]}).to_parquet(
        path, index=False
    )
    (_, a), (_, b) = records(path)
    assert a == {"event_id": "a", "event_time": 1714564800000}
    assert isinstance(a["event_time"], int) and b == {"event_id": "b"}


def test_naive_timestamps_are_utc(tmp_path: Path) -> None:
    path = tmp_path / "naive.parquet"
    when = dt.datetime(2024, 5, 1, 12, 0, 0, 250_000)
    pd.DataFrame({"event_id": ["a"], "event_time": [when]}).to_parquet(path, index=False)
    assert records(path)[0][1]["event_time"] == 1714564800250


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["events.txt", "events", "events.parquet.gz", "events.xlsx"])
def test_unknown_extension_is_explained(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("x")
    with pytest.raises(ReplayError, match=r"unknown file type .*use \.jsonl.*\.csv.*\.parquet"):
        iter_file_records(path)


def test_missing_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; check the path"):
        iter_file_records(tmp_path / "nope.jsonl")


def test_directory_is_explained(tmp_path: Path) -> None:
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    with pytest.raises(ReplayError, match="is a directory"):
        iter_file_records(folder)


def test_unreadable_parquet_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ReplayError, match=r"cannot read .* as Parquet"):
        list(iter_file_records(path))
