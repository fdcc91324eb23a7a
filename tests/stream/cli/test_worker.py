"""``pulse worker`` with a bad rules file stops at start, before it needs Kafka."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_a_bad_rules_file_stops_the_worker_at_start(tmp_path: Path) -> None:
    rules = tmp_path / "bad-rules.yaml"
    shipped = (ROOT / "stream" / "rules.yaml").read_text()
    rules.write_text(shipped.replace("metric: ctr\n", "metric: ctrr\n", 1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(
        PULSE_RULES=str(rules),
        PULSE_KAFKA_BOOTSTRAP="127.0.0.1:1",  # nothing listens: reaching Kafka would hang
        PULSE_DATA_DIR=str(tmp_path / "data"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("pulse worker: rules file "), done.stderr
    assert str(rules) in done.stderr and "'ctr_drop'" in done.stderr
    assert "field 'metric'" in done.stderr and "'ctrr'" in done.stderr
    assert "Traceback" not in done.stderr
