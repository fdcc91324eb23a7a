"""State records on a real broker: a forged checkpoint stops the restore, never executed."""

from __future__ import annotations

import base64
import os
import pickle
import re
import time
from pathlib import Path

import orjson
import pytest

from stream.core.sealing import StateKey
from tests.integration.helpers import produce, topic

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]


class _Exploit:
    """Unpickling this creates a directory: what a forged checkpoint could run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (self.path,)


@pytest.mark.parametrize(
    ("key", "refusal"),
    [("k3y", "not sealed"), ("", "not a plain-data checkpoint .* could run code")],
    ids=["with-state-key", "default"],
)
async def test_a_forged_model_checkpoint_stops_the_restore_unexecuted(
    make_worker, worker_env, kafka, tmp_path: Path, key: str, refusal: str
) -> None:
    """With PULSE_STATE_KEY an unsealed pickle is refused; without one, a pickle sealed
    with the app id's key (a forger who knows the app id) is refused all the same."""
    first = make_worker(PULSE_STATE_KEY=key)
    e = {
        "event_id": "a",
        "type": "view",
        "event_time": int(time.time() * 1000),
        "user_id": "u1",
        "campaign_id": "cmp-1",
    }
    await produce(kafka.bootstrap, topic(worker_env, "events"), [(b"u1", orjson.dumps(e))])
    first.wait_metric("pulse_events_total", 1)
    first.stop()
    target = tmp_path / "pwned"
    exploit = pickle.dumps(_Exploit(str(target)))
    if not key:
        exploit = StateKey("", worker_env["PULSE_APP_ID"]).seal(exploit)
    forged = base64.b64encode(exploit).decode()
    changelog = f"{worker_env['PULSE_APP_ID']}-models-changelog"
    await produce(
        kafka.bootstrap, changelog, [(orjson.dumps("0"), orjson.dumps(forged))], partition=0
    )
    # it stops instead of loading or skipping the record: exits with an error, no hang
    with pytest.raises(AssertionError, match=r"exited with code [1-9]"):
        make_worker(PULSE_STATE_KEY=key, PULSE_DATA_DIR=str(tmp_path / "fresh"))
    assert not target.exists(), "the forged pickle was executed"
    log = (tmp_path / "worker-1.log").read_text(errors="replace")
    assert re.search(rf"{changelog} partition 0 offset \d+ \(key '0'\): .*{refusal}", log), log[
        -4000:
    ]
