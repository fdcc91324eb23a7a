"""Variant allocation by Thompson sampling over Beta posteriors of CTR, with rails.

Weights are the probability that each variant has the best CTR, estimated by
sampling the Beta(clicks + 1, views − clicks + 1) posteriors with a generator
seeded from campaign and window (so a replay gives the same weights). Rails: a
weight floor, a minimum sample per variant before the first move, a move only
when some weight changes materially (or a variant newly reaches the cap), and a
sample-ratio-mismatch (SRM) check of the observed split against the weights in force.

>>> b = Allocator(min_views=100, samples=2000)
>>> w, why = b.propose("c", 0, {"A": (1000, 20), "B": (1000, 60)})
>>> why, w["B"] > 0.9
(None, True)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def srm_p_value(observed: Mapping[str, int], weights: Mapping[str, float]) -> float:
    """Chi-square goodness of fit of the observed split to the weights (p-value)."""
    total = sum(observed.values())
    if total == 0 or len(observed) < 2:
        return 1.0
    chi2 = 0.0
    for v, n in observed.items():
        expected = total * weights.get(v, 0.0)
        if expected > 0:
            chi2 += (n - expected) ** 2 / expected
    dof = len(observed) - 1
    # survival function of chi-square via the regularized upper incomplete gamma
    return _gammaincc(dof / 2, chi2 / 2)


def _gammaincc(a: float, x: float) -> float:
    if x <= 0:
        return 1.0
    if x < a + 1:  # series for the lower function
        term = total = 1.0 / a
        n = a
        for _ in range(500):
            n += 1
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-12:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - math.lgamma(a)))
    # continued fraction for the upper function
    b, c, d = x + 1 - a, 1e300, 1 / (x + 1 - a)
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-12:
            break
    return min(1.0, math.exp(-x + a * math.log(x) - math.lgamma(a)) * h)


class Allocator:
    def __init__(
        self,
        floor: float = 0.05,
        min_views: int = 1000,
        min_change: float = 0.1,
        srm_alpha: float = 0.001,
        samples: int = 4000,
    ) -> None:
        self.floor = floor
        self.min_views = min_views
        self.min_change = min_change
        self.srm_alpha = srm_alpha
        self.samples = samples
        self.weights: dict[str, dict[str, float]] = {}  # campaign -> weights in force
        self.totals: dict[str, dict[str, list[int]]] = {}  # campaign -> variant -> [views, clicks]

    def observe(self, campaign: str, variant: str, views: int, clicks: int) -> None:
        acc = self.totals.setdefault(campaign, {}).setdefault(variant, [0, 0])
        acc[0] += views
        acc[1] += clicks

    def thompson(
        self, campaign: str, window_start: int, stats: Mapping[str, tuple[int, int]]
    ) -> dict[str, float]:
        seed = hashlib.sha256(f"{campaign}|{window_start}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(seed[:16], "big"))
        names = sorted(stats)
        draws = np.stack(  # one row of posterior samples per variant, all at once
            [rng.beta(stats[v][1] + 1, stats[v][0] - stats[v][1] + 1, self.samples) for v in names]
        )
        wins = np.bincount(draws.argmax(axis=0), minlength=len(names))
        raw = {v: float(wins[i]) / self.samples for i, v in enumerate(names)}
        floored = {v: max(self.floor, w) for v, w in raw.items()}
        total = sum(floored.values())
        return {v: round(w / total, 4) for v, w in floored.items()}

    def propose(
        self, campaign: str, window_start: int, stats: Mapping[str, tuple[int, int]]
    ) -> tuple[dict[str, float], str | None]:
        """New weights from cumulative (views, clicks) per variant, or why not to move."""
        if len(stats) < 2:
            return {}, "single_variant"
        if min(v for v, _ in stats.values()) < self.min_views:
            return {}, "min_sample"
        current = self.weights.get(campaign) or {v: 1 / len(stats) for v in stats}
        weights = self.thompson(campaign, window_start, stats)
        moved = max(abs(weights[v] - current.get(v, 0.0)) for v in weights)
        if moved < self.min_change and not self._settles(weights, current):
            return weights, "no_material_change"
        return weights, None

    def _settles(self, weights: Mapping[str, float], current: Mapping[str, float]) -> bool:
        """True when a variant newly reaches the cap (all others at the floor).

        Without this, a leader stuck within ``min_change`` of the cap never gets there.
        """
        cap = 1 / (1 + self.floor * (len(weights) - 1)) - 0.01
        return max(weights.values()) >= cap > max(current.values(), default=0.0)

    def srm(self, campaign: str, window_views: Mapping[str, int]) -> float:
        current = self.weights.get(campaign) or {v: 1 / len(window_views) for v in window_views}
        return srm_p_value(window_views, current)

    def to_state(self) -> dict[str, Any]:
        return {"weights": self.weights, "totals": self.totals}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.weights = {c: dict(w) for c, w in state.get("weights", {}).items()}
        self.totals = {
            c: {v: list(t) for v, t in d.items()} for c, d in state.get("totals", {}).items()
        }
