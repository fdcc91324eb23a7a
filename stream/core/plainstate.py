"""Learned state of River objects as plain data: numbers, strings, lists and arrays.

Checkpoints in changelog topics hold only what these functions return, encoded
by :func:`dumps` as JSON plus raw arrays of numbers, never a pickle: loading
one builds a fresh object from the current configuration and sets the numbers
it learned, so a forged record can at worst be refused (a wrong shape raises),
never run code. Each pair round-trips exactly: a restored object scores and
learns bit for bit as the original (tests/stream/core/test_plainstate.py).

>>> from river import drift
>>> d = drift.PageHinkley(min_instances=5)
>>> for x in (1.0, 2.0, 1.5):
...     d.update(x)
>>> state = page_hinkley_state(d)
>>> state["mean"]
[3.0, 1.5]
>>> e = drift.PageHinkley(min_instances=5)
>>> load_page_hinkley(e, loads(dumps(state)))
>>> page_hinkley_state(e) == state
True
"""

from __future__ import annotations

import math
import struct
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import orjson
from river import cluster, compose, linear_model, metrics, preprocessing, stats
from river.drift import PageHinkley

__all__ = [
    "dumps",
    "kmeans_state",
    "load_kmeans",
    "load_mean",
    "load_page_hinkley",
    "load_pipeline",
    "load_rocauc",
    "loads",
    "mean_state",
    "page_hinkley_state",
    "pipeline_state",
    "rocauc_state",
]


MAGIC = b"PLN1"  # plain state, format 1: header length, JSON header, raw arrays
#: the only array types a record may name (a dtype string is never evaluated)
DTYPES: dict[str, np.dtype[Any]] = {
    "<f8": np.dtype("<f8"),
    "<i8": np.dtype("<i8"),
    "<i4": np.dtype("<i4"),
}
_HEAD = struct.Struct("<I")


def dumps(state: Any) -> bytes:
    """A tree of dicts, lists, strings, numbers and numpy arrays as bytes.

    The tree goes to JSON (orjson); each array becomes a reference to raw
    little-endian bytes after it, and a float that JSON cannot spell (``inf``,
    ``NaN``) a one-element array, so both come back exactly.

    >>> loads(dumps({"w": np.array([0.5, 2.0]), "min": float("inf"), "n": [1, None]}))
    {'w': array([0.5, 2. ]), 'min': inf, 'n': [1, None]}
    """
    arrays: list[np.ndarray] = []

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [walk(v) for v in x]
        if isinstance(x, float) and not math.isfinite(x):
            return {"$float": _array(np.array([x]))}
        if isinstance(x, np.ndarray):
            return _array(x)
        return x

    def _array(a: np.ndarray) -> dict[str, Any]:
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        if a.dtype.str not in DTYPES:
            raise TypeError(f"arrays of {a.dtype} are not plain state ({sorted(DTYPES)})")
        arrays.append(a)
        return {"$array": len(arrays) - 1, "dtype": a.dtype.str, "shape": list(a.shape)}

    head = orjson.dumps(walk(state))
    return b"".join([MAGIC, _HEAD.pack(len(head)), head, *(a.tobytes() for a in arrays)])


def loads(data: bytes) -> Any:
    """The tree of :func:`dumps`; arrays are read-only views of ``data``.

    Only JSON and raw numbers are read: a record of another shape raises
    ``ValueError`` (or ``KeyError``, ``TypeError``), and nothing in it runs.
    """
    if not data.startswith(MAGIC):
        raise ValueError("not a plain state record")
    (size,) = _HEAD.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _HEAD.size
    head = orjson.loads(data[start : start + size])
    body = memoryview(data)[start + size :]
    offset = 0
    views: dict[int, np.ndarray] = {}

    def array(ref: dict[str, Any]) -> np.ndarray:
        nonlocal offset
        index = ref["$array"]
        if index != len(views):
            raise ValueError(f"array {index} out of order")
        dtype = DTYPES[ref["dtype"]]
        shape = tuple(int(n) for n in ref["shape"])
        count = math.prod(shape)
        end = offset + count * dtype.itemsize
        if count < 0 or end > len(body):
            raise ValueError(f"array {index} runs past the end of the record")
        views[index] = np.frombuffer(body[offset:end], dtype=dtype).reshape(shape)
        offset = end
        return views[index]

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            if "$array" in x:
                return array(x)
            if "$float" in x:
                return float(array(x["$float"])[0])
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    tree = walk(head)
    if offset != len(body):
        raise ValueError(f"{len(body) - offset} bytes after the last array")
    return tree


def _floats(pairs: Any) -> list[tuple[str, float]]:
    """``[[name, number], ...]`` checked: a forged record fails here, not later."""
    return [(str(k), float(v)) for k, v in pairs]


def _number(x: Any) -> Any:
    """``x`` if an int or float (kept as it was: River starts some at ``-1``), else raise."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(f"expected a number, found {x!r}")
    return x


def mean_state(m: stats.Mean) -> list[float]:
    return [m.n, m._mean]


def load_mean(m: stats.Mean, state: Any) -> None:
    m.n, m._mean = float(state[0]), float(state[1])


def pipeline_state(model: compose.Pipeline) -> dict[str, Any]:
    """The scaler's moments and the logistic regression's weights of ``new_model()``."""
    scaler = _scaler(model)
    lr = _regression(model)
    return {
        "scaler": [[k, scaler.counts[k], scaler.means[k], scaler.vars[k]] for k in scaler.counts],
        "weights": list(lr._weights.to_dict().items()),
        "intercept": lr.intercept,
        "steps": lr.optimizer.n_iterations,
    }


def load_pipeline(model: compose.Pipeline, state: dict[str, Any]) -> None:
    """Set :func:`pipeline_state` into a fresh pipeline of the same construction."""
    scaler = _scaler(model)
    lr = _regression(model)
    counts: Counter[str] = Counter()
    means: defaultdict[str, float] = defaultdict(float)
    variances: defaultdict[str, float] = defaultdict(float)
    for k, n, mean, var in state["scaler"]:
        counts[str(k)] = int(n)
        means[str(k)] = float(mean)
        variances[str(k)] = float(var)
    scaler.counts, scaler.means, scaler.vars = counts, means, variances
    weights = lr._weights
    weights.clear()
    for k, w in _floats(state["weights"]):
        weights[k] = w
    lr.intercept = float(state["intercept"])
    lr.optimizer.n_iterations = int(state["steps"])


def _scaler(model: compose.Pipeline) -> preprocessing.StandardScaler:
    union = next(iter(model.steps.values()))
    scaled = next(iter(union.transformers.values()))
    scaler = list(scaled.steps.values())[-1]
    if not isinstance(scaler, preprocessing.StandardScaler):
        raise TypeError(f"expected a StandardScaler, found {type(scaler).__name__}")
    return scaler


def _regression(model: compose.Pipeline) -> linear_model.LogisticRegression:
    lr = list(model.steps.values())[-1]
    if not isinstance(lr, linear_model.LogisticRegression):
        raise TypeError(f"expected a LogisticRegression, found {type(lr).__name__}")
    return lr


def kmeans_state(k: cluster.KMeans) -> dict[str, Any]:
    """Centers (feature -> coordinate) and the random generator that draws new ones."""
    version, internal, gauss = k._rng.getstate()
    return {
        "centers": [[i, list(c.items())] for i, c in k.centers.items()],
        "rng": [version, list(internal), gauss],
    }


def load_kmeans(k: cluster.KMeans, state: dict[str, Any]) -> None:
    for i, coords in state["centers"]:
        center = k.centers[int(i)]
        center.clear()
        center.update(_floats(coords))
    version, internal, gauss = state["rng"]
    k._rng.setstate(
        (int(version), tuple(int(x) for x in internal), None if gauss is None else float(gauss))
    )


def rocauc_state(m: metrics.ROCAUC) -> list[dict[str, Any]]:
    """One entry per threshold's confusion matrix (labels are booleans)."""
    return [
        {
            "data": [[t, p, w] for t, row in cm.data.items() for p, w in row.items()],
            "rows": list(cm.sum_row.items()),
            "cols": list(cm.sum_col.items()),
            "classes": sorted(cm._init_classes),
            "n": cm.n_samples,
            "weight": cm.total_weight,
            "tp": cm._total_true_positives,
        }
        for cm in m.cms
    ]


def load_rocauc(m: metrics.ROCAUC, state: list[dict[str, Any]]) -> None:
    if len(state) != len(m.cms):
        raise ValueError(f"{len(state)} confusion matrices for {len(m.cms)} thresholds")
    for cm, s in zip(m.cms, state, strict=True):
        for t, p, w in s["data"]:
            cm.data[bool(t)][bool(p)] = float(w)
        for t, w in s["rows"]:
            cm.sum_row[bool(t)] = float(w)
        for p, w in s["cols"]:
            cm.sum_col[bool(p)] = float(w)
        cm._init_classes = {bool(c) for c in s["classes"]}
        cm.n_samples = int(s["n"])
        cm.total_weight = _number(s["weight"])
        cm._total_true_positives = float(s["tp"])


def page_hinkley_state(d: PageHinkley) -> dict[str, Any]:
    """A drift detector's running sums; JSON-safe on its own (merger snapshots are JSON)."""
    return {
        "drift": d._drift_detected,
        "mean": [_spell(v) for v in mean_state(d._x_mean)],
        "sums": [_spell(d._sum_increase), _spell(d._sum_decrease)],
        "extremes": [_spell(d._min_increase), _spell(d._max_decrease)],
    }


def load_page_hinkley(d: PageHinkley, state: dict[str, Any]) -> None:
    d._drift_detected = bool(state["drift"])
    load_mean(d._x_mean, [_read(v) for v in state["mean"]])
    d._sum_increase, d._sum_decrease = (float(_read(x)) for x in state["sums"])
    d._min_increase, d._max_decrease = (_read(x) for x in state["extremes"])


def _spell(x: Any) -> Any:
    """``x``, or its name when JSON has no number for it (a detector starts at ``inf``)."""
    return x if not isinstance(x, float) or math.isfinite(x) else repr(x)


def _read(x: Any) -> Any:
    return float(x) if x in ("inf", "-inf", "nan") else _number(x)
