"""The KPI report's numbers: ``pulse.metrics`` records → pandas tables.

Pure: pandas, no files, no Kafka (:mod:`stream.tools.report_files` draws and writes them).
Every rate is computed from summed counts, never by averaging per-window rates:
CTR = clicks / views, CVR = purchases / clicks, ROAS = revenue / spend, where ROAS
only counts revenue of windows that had a cost model (spend), so a campaign whose
cost model was set midway is not flattered by earlier, unpriced revenue.

>>> rec = {"campaign_id": "c1", "variant_id": "A", "channel": "web", "window_start": 0,
...        "window_end": 60_000, "views": 100, "clicks": 10, "purchases": 1,
...        "revenue": 20.0, "spend": 5.0, "ctr": 0.1, "cvr": 0.1, "roas": 4.0}
>>> df = metrics_frame([rec, {**rec, "window_start": 60_000, "window_end": 120_000,
...                          "views": 300, "clicks": 10}])
>>> row = kpi_tables(df)["campaigns"].iloc[0]
>>> float(row["ctr"]), float(row["roas"])  # 20 / 400, not the mean of 0.1 and 0.033
(0.05, 4.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from stream.core.credit import ALL_MODELS, attribution_summary
from stream.core.errors import PulseError

#: Fields of a ``pulse.metrics`` record, in schema order.
FIELDS = (
    "campaign_id",
    "variant_id",
    "channel",
    "window_start",
    "window_end",
    "views",
    "clicks",
    "carts",
    "purchases",
    "revenue",
    "spend",
    "ctr",
    "cvr",
    "roas",
)
KEYS = ("campaign_id", "variant_id", "channel", "window_start", "window_end")
COUNTS = ("views", "clicks", "carts", "purchases")
MONEY = ("revenue", "spend")
RATES = ("ctr", "cvr", "roas")
#: Columns of every KPI table after its group keys.
KPI_COLUMNS = ("windows", *COUNTS, *MONEY, *RATES)

EMPTY_MESSAGE = (
    "no closed windows found: let the worker run past PULSE_WINDOW + PULSE_GRACE "
    "or check the topic prefix (PULSE_TOPIC_PREFIX)"
)


class EmptyReportError(PulseError, ValueError):
    """There is nothing to report (no ``pulse.metrics`` records)."""


# -- frames -------------------------------------------------------------------------------


def metrics_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per closed window record, typed, deduplicated and sorted.

    Counts become integers (missing: 0), revenue a float (missing: 0.0), spend and the
    rates floats with NaN for null. A record delivered twice (same campaign, variant,
    channel and window: Kafka is at-least-once) counts once, the last copy wins.
    An empty input gives an empty frame with the columns; :func:`kpi_tables` and
    :func:`write_report` refuse it with :class:`EmptyReportError`.
    """
    rows = [r for r in records if isinstance(r, Mapping)]
    if not rows:
        return _empty_frame()
    df = pd.DataFrame.from_records(rows)
    missing = [c for c in ("campaign_id", "window_start", "window_end") if c not in df.columns]
    if missing:
        raise ValueError(
            f"metrics records lack {', '.join(missing)}: pass pulse.metrics records "
            f"(fields {', '.join(FIELDS)})"
        )
    for column in FIELDS:
        if column not in df.columns:
            df[column] = None
    df = df[list(FIELDS)].copy()
    df = df[df["campaign_id"].notna()]
    df["campaign_id"] = df["campaign_id"].astype(str)
    df["variant_id"] = pd.Series(
        [None if _missing(v) or v == "" else str(v) for v in df["variant_id"].to_list()],
        index=df.index,
        dtype="object",
    )
    df["channel"] = df["channel"].fillna("web").astype(str)
    for column in ("window_start", "window_end"):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    df = df.dropna(subset=["window_start", "window_end"])
    for column in ("window_start", "window_end", *COUNTS):
        df[column] = pd.to_numeric(df[column], errors="coerce").fillna(0).astype("int64")
    df["revenue"] = pd.to_numeric(df["revenue"], errors="coerce").fillna(0.0).astype("float64")
    for column in ("spend", *RATES):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype("float64")
    if df.empty:
        return _empty_frame()
    df = df.drop_duplicates(subset=list(KEYS), keep="last", ignore_index=True)
    order = ["window_start", "campaign_id", "variant_id", "channel"]
    return df.sort_values(order, na_position="first", kind="stable", ignore_index=True)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _empty_frame() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="object") for c in FIELDS})
    for column in ("window_start", "window_end", *COUNTS):
        df[column] = df[column].astype("int64")
    for column in (*MONEY, *RATES):
        df[column] = df[column].astype("float64")
    return df


def kpi_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """KPI tables from a :func:`metrics_frame`, every rate computed from sums.

    ``totals`` (one row), ``campaigns``, ``variants`` (campaign × variant), ``channels``,
    ``breakdown`` (campaign × variant × channel, the ``kpis.csv`` content) and
    ``windows`` (campaign × window: the time series behind the charts, with
    ``time`` = window start as a UTC timestamp). Each has ``windows`` (distinct
    windows), views, clicks, purchases, revenue, spend (NaN without any cost model),
    ctr, cvr and roas (NaN where the denominator is zero or missing).
    """
    if df.empty:
        raise EmptyReportError(EMPTY_MESSAGE)
    work = df.assign(_paid_revenue=df["revenue"].where(df["spend"].notna(), 0.0))
    tables = {
        "totals": _totals(work, []),
        "campaigns": _totals(work, ["campaign_id"]),
        "variants": _totals(work, ["campaign_id", "variant_id"]),
        "channels": _totals(work, ["channel"]),
        "breakdown": _totals(work, ["campaign_id", "variant_id", "channel"]),
    }
    windows = _totals(work, ["campaign_id", "window_start", "window_end"]).drop(columns="windows")
    windows.insert(0, "time", pd.to_datetime(windows["window_start"], unit="ms", utc=True))
    tables["windows"] = windows.sort_values(["window_start", "campaign_id"], ignore_index=True)
    return tables


def _totals(work: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    values = [*COUNTS, *MONEY, "_paid_revenue"]
    if keys:
        grouped = work.groupby(keys, dropna=False, sort=True)
        sums = grouped[values].sum(min_count=1)
        sums["windows"] = grouped["window_start"].nunique()
        out = sums.reset_index()
    else:
        sums = work[values].sum(min_count=1)
        out = pd.DataFrame([sums.to_dict()])
        out["windows"] = work["window_start"].nunique()
    for column in COUNTS:
        out[column] = out[column].fillna(0).astype("int64")
    out["windows"] = out["windows"].astype("int64")
    out["revenue"] = out["revenue"].fillna(0.0).astype("float64").round(6)
    out["spend"] = out["spend"].astype("float64").round(6)
    out["ctr"] = _ratio(out["clicks"], out["views"])
    out["cvr"] = _ratio(out["purchases"], out["clicks"])
    out["roas"] = _ratio(out["_paid_revenue"], out["spend"])
    return out[[*keys, *KPI_COLUMNS]]


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    num = num.astype("float64")
    den = den.astype("float64")
    return (num / den.where(den > 0)).astype("float64")


def attribution_table(records: Iterable[Mapping[str, Any]], by: str = "campaign") -> pd.DataFrame:
    """Purchases and revenue credited per campaign (or ``by="channel"``) by each
    attribution model, side by side.

    One row per campaign, columns ``<model>_purchases`` and ``<model>_revenue`` for
    the rule-based :data:`~stream.core.attribution.MODELS` and ``markov`` (the
    removal effect over the records' journeys, :mod:`stream.core.credit`); empty
    when no record carries credit.

    >>> rec = {"campaign_id": "c", "channel": "web",
    ...        "attributed": {"linear": {"purchases": 0.5, "revenue": 5}}}
    >>> attribution_table([rec, rec])[["campaign_id", "linear_purchases", "linear_revenue"]]
      campaign_id  linear_purchases  linear_revenue
    0           c               1.0            10.0
    """
    table = attribution_summary(records)[f"{by}s"]
    columns = [f"{m}_{w}" for m in ALL_MODELS for w in ("purchases", "revenue")]
    label = "campaign_id" if by == "campaign" else by
    return pd.DataFrame(
        [{label: name,
          **{f"{m}_{w}": row[m][w] for m in ALL_MODELS for w in ("purchases", "revenue")}}
         for name, row in table.items()],
        columns=[label, *columns],
    )  # fmt: skip


Z95 = 1.959964  # two-sided 95 % normal quantile
OFFER_COLUMNS = (
    "group",
    "users",
    "converted",
    "conversion",
    "conversion_low",
    "conversion_high",
    "revenue_per_user",
    "revenue_low",
    "revenue_high",
)


def offer_table(outcomes: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Offer conversion and revenue per user of the offered users against the holdout,
    with 95 % confidence intervals, and the difference (offer − holdout).

    Outcomes are ``pulse.offers`` records (one per offered or held-out user once the
    attribution window passed; a repeat of a ``trigger_id`` after a restart counts
    once). Intervals are normal approximations (Wald) of a proportion, a mean, and
    the difference of two independent ones.

    >>> rows = [{"trigger_id": f"t{n}", "group": "offer" if n % 2 else "holdout",
    ...          "converted": n % 3 == 0, "revenue": 10.0 * (n % 3 == 0)} for n in range(60)]
    >>> table = offer_table(rows + rows[:5])
    >>> table["group"].tolist(), table["users"].tolist(), table["converted"].tolist()
    (['offer', 'holdout', 'offer − holdout'], [30, 30, <NA>], [10, 10, <NA>])
    >>> float(table["conversion"].iloc[2])
    0.0
    """
    latest = {o["trigger_id"]: o for o in outcomes if o.get("group") in ("offer", "holdout")}
    stats: dict[str, tuple[int, float, float, float, float]] = {}
    rows: list[tuple[Any, ...]] = []
    for group in ("offer", "holdout"):
        mine = [o for o in latest.values() if o["group"] == group]
        n = len(mine)
        if not n:
            continue
        conv = np.array([bool(o.get("converted")) for o in mine], float)
        rev = np.array([float(o.get("revenue") or 0.0) for o in mine])
        p, m = float(conv.mean()), float(rev.mean())
        var_p, var_m = p * (1 - p) / n, float(rev.var(ddof=1)) / n if n > 1 else 0.0
        stats[group] = (n, p, var_p, m, var_m)
        rows.append((group, n, int(conv.sum()), p, *_interval(p, var_p), m, *_interval(m, var_m)))
    if len(stats) == 2:
        (_, p1, v1, m1, w1), (_, p0, v0, m0, w0) = stats["offer"], stats["holdout"]
        rows.append(
            ("offer − holdout", None, None, p1 - p0, *_interval(p1 - p0, v1 + v0),
             m1 - m0, *_interval(m1 - m0, w1 + w0))
        )  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(OFFER_COLUMNS))
    return frame.astype({"users": "Int64", "converted": "Int64"})


def _interval(value: float, variance: float) -> tuple[float, float]:
    half = Z95 * float(np.sqrt(max(variance, 0.0)))
    return value - half, value + half
