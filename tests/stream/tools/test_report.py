"""The `pulse report` glue without a broker: backtest directories and the whole command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.core.kpis import metric_record
from stream.core.report import EmptyReportError
from stream.tools.report import records_from_dir, run_report

T0 = 1_714_564_800_000


def metrics(n: int = 3) -> list[dict[str, Any]]:
    cpc = {"cost_model": "cpc", "cost": 0.5}
    return [
        metric_record(
            "c1", "A", "web", T0 + i * 60_000, T0 + (i + 1) * 60_000, [100, 5, 1, 9.5], cpc
        )
        for i in range(n)
    ]


TRIGGER = {
    "trigger_id": "ctr_drop:c1:1",
    "action": "campaign.alert",
    "rule": "ctr_drop",
    "target": {"campaign_id": "c1"},
    "reason": "CTR fell",
    "evidence": {},
    "params": {},
    "created_at": T0,
}


def write_jsonl(path: Path, items: list[Any], extra: bytes = b"") -> None:
    path.write_bytes(b"\n".join(orjson.dumps(i) for i in items) + b"\n" + extra)


def test_records_from_dir_reads_metrics_and_triggers(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "metrics.jsonl", metrics(), extra=b"\n   \n")
    write_jsonl(tmp_path / "triggers.jsonl", [TRIGGER])
    records, triggers = records_from_dir(tmp_path)
    assert records == metrics()
    assert triggers == [TRIGGER]


def test_records_from_dir_without_triggers_and_with_bom(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_bytes(b"\xef\xbb\xbf" + orjson.dumps(metrics(1)[0]) + b"\n")
    records, triggers = records_from_dir(str(tmp_path))
    assert len(records) == 1 and triggers == []


def test_records_from_dir_reports_progress(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "metrics.jsonl", metrics())
    seen: dict[str, list[int]] = {}

    def factory(name: str, total: int | None) -> Any:
        seen[name] = [total or 0, 0]
        return lambda n: seen[name].__setitem__(1, seen[name][1] + n)

    records_from_dir(tmp_path, progress=factory)
    total, done = seen["metrics.jsonl"]
    assert total == done == (tmp_path / "metrics.jsonl").stat().st_size


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"campaign_id": "c1"}\n{broken\n', r"metrics.jsonl:2: not valid JSON"),
        (b"[1, 2]\n", r"metrics.jsonl:1: expected a JSON object"),
    ],
)
def test_records_from_dir_bad_lines_name_file_and_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "metrics.jsonl").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        records_from_dir(tmp_path)


def test_records_from_dir_wrong_paths_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        records_from_dir(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"no metrics.jsonl in it; run `pulse backtest"):
        records_from_dir(tmp_path)
    (tmp_path / "metrics.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match="pass the directory"):
        records_from_dir(tmp_path / "metrics.jsonl")


def test_run_report_from_dir(tmp_path: Path) -> None:
    src = tmp_path / "backtest"
    src.mkdir()
    write_jsonl(src / "metrics.jsonl", metrics())
    write_jsonl(src / "triggers.jsonl", [TRIGGER])
    path = run_report(None, str(src), tmp_path / "report", progress=False)
    assert path == tmp_path / "report" / "report.html"
    page = path.read_text(encoding="utf-8")
    assert str(src) in page and "ctr_drop" in page
    for name in ("ctr.png", "cvr.png", "revenue.png", "roas.png", "kpis.csv", "windows.csv"):
        assert (path.parent / name).stat().st_size > 0, name


def test_run_report_empty_backtest(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_bytes(b"")
    with pytest.raises(EmptyReportError, match=r"no closed windows found in .*metrics\.jsonl"):
        run_report(None, tmp_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_run_report_from_kafka_needs_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs settings"):
        run_report(None, None, tmp_path, progress=False)
