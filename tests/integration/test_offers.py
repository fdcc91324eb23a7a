"""User offers on a real broker: a high-intent consenting user gets one, a non-consenting never;
the propensity models survive a restart with the same predictions."""

from __future__ import annotations

import base64

import httpx
import orjson
import pytest

from stream.core import plainstate
from stream.core.propensity import PropensityModel
from stream.core.sealing import MAGIC, StateKey
from tests.integration.helpers import (
    consume_all,
    encode,
    final_click,
    history,
    offer_rules,
    produce,
    topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]


async def test_offer_needs_intent_and_consent_and_models_survive_restart(
    make_worker, worker_env, kafka, tmp_path
) -> None:
    rules = offer_rules(tmp_path, 20, 0.6)
    env = {
        "PULSE_RULES": str(rules),
        "PULSE_CHECKPOINT_INTERVAL": "0",
        "PULSE_ATTRIBUTION_WINDOW": "60s",
        "PULSE_WINDOW": "60s",
        "PULSE_GRACE": "5s",
    }
    worker = make_worker(**env)
    events = history()
    await produce(kafka.bootstrap, topic(worker_env, "events"), encode(events))
    worker.wait_metric("pulse_events_total", len(events), timeout_s=90)
    clicks = [
        final_click("buyer-0", True, 1),
        final_click("buyer-1", False, 2),
        final_click("browser-0", True, 3),
    ]
    await produce(kafka.bootstrap, topic(worker_env, "events"), encode(clicks))
    worker.wait_metric("pulse_events_total", len(events) + 3)
    assert worker.metric("pulse_model_rocauc", model="propensity") > 0.7

    triggers = [
        orjson.loads(v)
        for _, v in await consume_all(kafka.bootstrap, topic(worker_env, "triggers"))
    ]
    offers = [t for t in triggers if t["action"] == "user.send_offer"]
    assert [o["target"] for o in offers] == [{"user_id": "buyer-0", "campaign_id": "c1"}]
    assert offers[0]["evidence"]["score"] >= 0.6 and offers[0]["params"]["offer"]["campaign_id"]
    assert (
        worker.metric("pulse_triggers_suppressed_total", rule="user_offer", reason="consent") >= 1
    )

    # the checkpointed models restore after a restart: same predictions for fixed inputs
    raw = await consume_all(kafka.bootstrap, f"{worker_env['PULSE_APP_ID']}-models-changelog")
    before = {}
    key_of_app = StateKey("", worker_env["PULSE_APP_ID"])  # checkpoints are sealed
    for key, value in raw:
        if value:
            sealed = base64.b64decode(orjson.loads(value))
            assert sealed.startswith(MAGIC), "a model checkpoint was written unsealed"
            model = before[orjson.loads(key)] = PropensityModel(attribution_ms=3_600_000)
            model.load_state(plainstate.loads(key_of_app.open(sealed, "test")))
    assert before, "no model checkpoint written"
    x = {"recency_h": 2.0, "purchases": 1.2, "user_cvr": 0.7, "channel=web": 1.0}
    expected = {p: m.model.predict_proba_one(x)[True] for p, m in before.items()}
    assert worker.stop() == 0
    second = make_worker(**env)
    got = httpx.post(f"{second.url}/v1/models/propensity/score", content=orjson.dumps(x)).json()
    assert {int(p): v for p, v in got.items()} == pytest.approx(
        {int(p): v for p, v in expected.items()}
    )
