"""Significance-tested CTR / conversion changes of a campaign against its own baseline.

Two-proportion z-test between the closed window and the pooled previous windows.

>>> c = two_proportion(successes=5, trials=1000, base_successes=300, base_trials=10_000)
>>> round(c.z, 1), round(c.relative, 2)
(-4.6, -0.83)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Change:
    rate: float
    baseline: float
    relative: float  # (rate − baseline) / baseline
    z: float
    p_value: float  # two-sided


def two_proportion(successes: int, trials: int, base_successes: int, base_trials: int) -> Change:
    """z statistic of ``successes/trials`` against ``base_successes/base_trials``."""
    p1 = successes / trials if trials else 0.0
    p0 = base_successes / base_trials if base_trials else 0.0
    # successes can exceed trials (e.g. purchases attributed to clicks of earlier windows)
    pooled = min(1.0, (successes + base_successes) / ((trials + base_trials) or 1))
    se = math.sqrt(
        pooled
        * (1 - pooled)
        * ((1 / trials if trials else 0) + (1 / base_trials if base_trials else 0))
    )
    z = (p1 - p0) / se if se > 0 else 0.0
    p_value = math.erfc(abs(z) / math.sqrt(2))
    relative = (p1 - p0) / p0 if p0 else 0.0
    return Change(p1, p0, relative, z, p_value)
