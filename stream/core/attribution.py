"""Multi-touch attribution: how a conversion's credit splits over the touches before it.

Rule-based models weigh a user's touches (time-ordered) inside the attribution
window: ``last_click`` (all to the last; the default, as the windows count it),
``first_click``, ``linear`` (equal per touch), ``time_decay`` (weight halves
every ``half_life_ms`` of age at the conversion) and ``position`` (40 % first,
40 % last, 20 % over the middle; one touch takes all, two split 50/50).

>>> weights(3, "position")
[0.4, 0.2, 0.4]
>>> weights(2, "time_decay", ages_ms=[2 * DAY_MS * 7, 0])
[0.2, 0.8]
>>> path_credit(["search", "email", "search"], "linear")
{'search': 0.6666666666666666, 'email': 0.3333333333333333}

Data-driven credit is the removal effect of a first-order Markov chain over the
journeys (Anderl et al. 2016, "Mapping the customer journey"): states are the
channels between ``start`` and the absorbing ``conversion`` / ``null``; a
channel's effect is the share of conversion probability lost when it is removed
(its visits end the journey), normalised over channels. Computed exactly by
solving the absorbing chain, not by simulation.

>>> shares = removal_shares([(["a", "b"], 1, 0), (["b"], 0, 1)])  # without b: nothing
>>> {c: round(s, 3) for c, s in shares.items()}
{'a': 0.333, 'b': 0.667}
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "DAY_MS",
    "MODELS",
    "heuristic_credit",
    "journey_transitions",
    "path_credit",
    "removal_shares",
    "transition_shares",
    "weights",
    "with_nulls",
]

DAY_MS = 86_400_000
#: the rule-based models, in the order window records and the report list them
MODELS = ("last_click", "first_click", "linear", "time_decay", "position")
DEFAULT_HALF_LIFE_MS = 7 * DAY_MS

Journey = tuple[Sequence[str], float, float]  # channels in order, conversions, nulls


def weights(
    n: int,
    model: str,
    ages_ms: Sequence[float] | None = None,
    half_life_ms: float = DEFAULT_HALF_LIFE_MS,
) -> list[float]:
    """The credit of each of ``n`` touches (oldest first) under ``model``; they sum to 1.

    ``ages_ms``: each touch's age at the conversion (``time_decay`` only; without
    them the touches count as equally old).
    """
    if n <= 0:
        return []
    if model == "last_click":
        return [0.0] * (n - 1) + [1.0]
    if model == "first_click":
        return [1.0] + [0.0] * (n - 1)
    if model == "linear":
        return [1.0 / n] * n
    if model == "position":
        if n == 1:
            return [1.0]
        if n == 2:
            return [0.5, 0.5]
        middle = 0.2 / (n - 2)
        return [0.4] + [middle] * (n - 2) + [0.4]
    if model == "time_decay":
        ages = list(ages_ms) if ages_ms is not None else [0.0] * n
        if len(ages) != n:
            raise ValueError(f"{len(ages)} ages for {n} touches")
        raw = [0.5 ** (max(0.0, a) / half_life_ms) for a in ages]
        total = sum(raw)
        return [w / total for w in raw]
    raise ValueError(f"unknown attribution model {model!r}: use one of {', '.join(MODELS)}")


def path_credit(
    path: Sequence[str],
    model: str,
    ages_ms: Sequence[float] | None = None,
    half_life_ms: float = DEFAULT_HALF_LIFE_MS,
) -> dict[str, float]:
    """One conversion's credit per channel (or campaign) of ``path``, in first-touch order."""
    out: dict[str, float] = {}
    for name, w in zip(path, weights(len(path), model, ages_ms, half_life_ms), strict=True):
        out[name] = out.get(name, 0.0) + w
    return out


def heuristic_credit(paths: Iterable[tuple[Sequence[str], float]], model: str) -> dict[str, float]:
    """Conversions credited per channel over ``(path, conversions)`` aggregates.

    >>> heuristic_credit([(["a", "b"], 2), (["b"], 1)], "first_click")
    {'a': 2.0, 'b': 1.0}
    """
    out: dict[str, float] = defaultdict(float)
    for path, conversions in paths:
        if not conversions or not path:
            continue
        for name, share in path_credit(path, model).items():
            out[name] += share * conversions
    return dict(out)


START, CONVERSION, NULL = "(start)", "(conversion)", "(null)"
Transitions = dict[tuple[str, str], float]  # (from, to) -> journeys that took the step


def journey_transitions(journeys: Iterable[Journey]) -> Transitions:
    """The steps of a first-order chain counted over ``journeys``.

    ``journeys``: ``(channels, conversions, nulls)``: how many journeys of that
    path converted and how many did not.

    >>> steps = journey_transitions([(["a", "b"], 1, 2)])
    >>> [steps[s] for s in (("(start)", "a"), ("a", "b"), ("b", CONVERSION), ("b", NULL))]
    [3.0, 3.0, 1.0, 2.0]
    """
    counts: Transitions = defaultdict(float)
    for path, conversions, nulls in journeys:
        weight = float(conversions) + float(nulls)
        if not path or weight <= 0:
            continue
        previous = START
        for name in path:
            counts[(previous, name)] += weight
            previous = name
        if conversions:
            counts[(previous, CONVERSION)] += float(conversions)
        if nulls:
            counts[(previous, NULL)] += float(nulls)
    return dict(counts)


def with_nulls(steps: Mapping[tuple[str, str], float]) -> Transitions:
    """Streamed steps completed with their ``(null)`` ends: each visit of a state that
    neither moved on nor converted ended its journey there.

    A stream counts a step when it happens (a click after a click, a purchase after
    a click) but never sees a journey end without a purchase; the visits into a
    state less the steps out of it are those ends. Journeys still open count as
    ended, so once every journey is over this equals :func:`journey_transitions`.

    >>> with_nulls({("(start)", "a"): 3, ("a", "b"): 1, ("b", "(conversion)"): 1})[("a", "(null)")]
    2.0
    """
    counts: Transitions = defaultdict(float)
    into: dict[str, float] = defaultdict(float)
    out: dict[str, float] = defaultdict(float)
    for (src, dst), n in steps.items():
        if n <= 0 or dst == NULL:
            continue
        counts[(src, dst)] += float(n)
        into[dst] += float(n)
        out[src] += float(n)
    for state, n in into.items():
        if state != CONVERSION and n > out[state]:
            counts[(state, NULL)] += n - out[state]
    return dict(counts)


def removal_shares(journeys: Iterable[Journey]) -> dict[str, float]:
    """Each channel's share of the first-order Markov removal effects (sum 1).

    ``journeys``: ``(channels, conversions, nulls)``. Repeats of a channel in a row
    are self-loops, which change no absorption probability.
    """
    return transition_shares(journey_transitions(journeys))


def transition_shares(counts: Mapping[tuple[str, str], float]) -> dict[str, float]:
    """:func:`removal_shares` from the chain's step counts (nulls included)."""
    channels = {s for step in counts for s in step} - {START, CONVERSION, NULL}
    names = sorted(channels)
    if not names:
        return {}
    index = {c: i for i, c in enumerate(names)}
    k = len(names)
    q = np.zeros((k, k))  # channel -> channel
    start = np.zeros(k)
    conv = np.zeros(k)  # channel -> conversion
    out_total = np.zeros(k)
    for (src, _dst), n in counts.items():
        if src != START:
            out_total[index[src]] += n
    start_total = sum(n for (src, _), n in counts.items() if src == START)
    if start_total <= 0:
        return {c: 0.0 for c in names}
    for (src, dst), n in counts.items():
        if src == START:
            start[index[dst]] += n / start_total
        elif dst == CONVERSION:
            conv[index[src]] += n / out_total[index[src]]
        elif dst != NULL:
            q[index[src], index[dst]] += n / out_total[index[src]]

    def p_convert(removed: int | None) -> float:
        qq, rr = q.copy(), conv.copy()
        if removed is not None:  # visiting the channel ends the journey without conversion
            qq[removed, :] = 0.0
            rr[removed] = 0.0
        reach = np.linalg.solve(np.eye(k) - qq, rr)  # P(conversion | at channel)
        return float(start @ reach)

    base = p_convert(None)
    if base <= 0:
        return {c: 0.0 for c in names}
    effects = np.array([1.0 - p_convert(i) / base for i in range(k)])
    total = float(effects.sum())
    return {c: float(effects[i] / total) if total > 0 else 0.0 for c, i in index.items()}
