"""River mini-batch ``learn_many`` against looping ``learn_one`` for the propensity model.

Records the click scores and delayed labels of one simulated run (through the
same pure stages as ``make quality``), then replays that exact sequence per
partition: each click is scored with ``predict_proba_one`` by the model as it is
at that moment; labels are learned one by one, or buffered and learned with
``learn_many`` in mini-batches. Prints learning throughput (labels/s) and the
ROC AUC after warm-up for each variant, measured in the same run.

    .venv/bin/python -m bench.propensity_batch [--quick]
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
from river import compose, metrics, preprocessing

from stream.core import propensity

BATCHES = (64, 256)


class _DiscardMany(compose.Discard):
    """``compose.Discard`` with the mini-batch methods river 0.26 lacks."""

    def learn_many(self, X: pd.DataFrame) -> None:
        pass

    def transform_many(self, X: pd.DataFrame) -> pd.DataFrame:
        return X.drop(columns=[c for c in X.columns if c in self.keys])


def batch_model(lr: float) -> compose.Pipeline:
    """The propensity pipeline with mini-batch-capable steps (every frame has all numerics)."""
    scaled = compose.Select(*propensity.NUMERIC) | preprocessing.StandardScaler()
    live = propensity.new_model(lr)
    return compose.Pipeline(
        compose.TransformerUnion(scaled, _DiscardMany(*propensity.NUMERIC)),
        live.steps[list(live.steps)[-1]],
    )


def replay(
    ops: list[tuple[Any, ...]],
    new: Callable[[], compose.Pipeline],
    batch: int,
    warmup_ts: int,
    truth: Callable[[str, int], float | None] | None = None,
) -> dict[str, float]:
    """Score and learn ``ops`` in order; ``batch`` 1 loops ``learn_one``."""
    models: dict[Any, compose.Pipeline] = {}
    pending: dict[Any, list[tuple[dict[str, float], bool]]] = {}
    scored: dict[tuple[Any, str, int], list[tuple[dict[str, float], float]]] = {}
    auc, oracle = metrics.ROCAUC(n_thresholds=1000), metrics.ROCAUC(n_thresholds=1000)
    learn_s = 0.0
    labels = 0
    for op in ops:
        owner = op[1]
        model = models.get(owner)
        if model is None:
            model = models[owner] = new()
        key = (owner, op[2], op[3])
        if op[0] == "score":
            p = float(model.predict_proba_one(op[4]).get(True, 0.0))
            scored.setdefault(key, []).append((op[4], p))
            continue
        y = op[4]
        x, p = scored[key].pop(0)  # same user, same ms: first scored, first labelled
        labels += 1
        if op[3] >= warmup_ts:
            auc.update(y, p)
            q = truth(op[2], op[3]) if truth else None
            if q is not None:
                oracle.update(y, q)
        t0 = time.perf_counter()
        if batch == 1:
            model.learn_one(x, y)
        else:
            buf = pending.setdefault(owner, [])
            buf.append((x, y))
            if len(buf) >= batch:
                frame = pd.DataFrame([b[0] for b in buf]).fillna(0.0)
                model.learn_many(frame, pd.Series([b[1] for b in buf]))
                buf.clear()
        learn_s += time.perf_counter() - t0
    return {
        "labels": labels,
        "learn_rate": labels / learn_s if learn_s else 0.0,
        "auc": float(auc.get()),
        "oracle": float(oracle.get()),
    }


def compare(
    ops: list[tuple[Any, ...]],
    warmup_ts: int,
    truth: Callable[[str, int], float | None] | None = None,
    print_: Callable[[str], None] = print,
) -> list[tuple[str, dict[str, float]]]:
    """learn_one against learn_many at a few batch sizes and step sizes, on one op log."""
    lr0 = float(inspect.signature(propensity.new_model).parameters["lr"].default)
    rows = [(f"learn_one lr={lr0:g}", replay(ops, propensity.new_model, 1, warmup_ts, truth))]
    for b, lr in [(b, lr0) for b in BATCHES] + [(BATCHES[-1], 10 * lr0)]:
        name = f"learn_many batch={b} lr={lr:g}"
        rows.append((name, replay(ops, lambda lr=lr: batch_model(lr), b, warmup_ts, truth)))
    base = rows[0][1]
    for name, r in rows:
        speed = r["learn_rate"] / base["learn_rate"]
        ratio = f" (ratio to true propensity {r['auc'] / r['oracle']:.3f})" if r["oracle"] else ""
        print_(
            f"  {name:28s} {r['learn_rate']:>9,.0f} labels/s learned ({speed:.2f}×)  "
            f"AUC {r['auc']:.4f}{ratio}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    from bench import quality  # here: quality.py imports this module (``compare``)

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    cfg = quality.SimConfig(
        duration_s=(1 if args.quick else 2) * 3600, scenario="steady", seed=args.seed, campaigns=10
    )
    run = quality.simulate(cfg, 4, quality.ATTRIBUTION_MS, lambda n: None)
    print(f"learn_one vs learn_many on {sum(op[0] == 'label' for op in run.ops):,} labels:")
    compare(run.ops, cfg.start_ms + quality.WARMUP_MS, quality.oracle_lookup(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
