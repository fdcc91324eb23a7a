"""The KPI report's files: PNG charts, HTML and CSV from the tables of :mod:`stream.core.report`.

matplotlib draws on an Agg canvas (no pyplot, no global backend switch).
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

from stream.core.report import kpi_tables

#: Most campaigns drawn as separate series in one chart (the rest are left out or "other").
MAX_SERIES = 10
#: Most trigger rows shown in the HTML (newest first); the summary counts them all.
MAX_TRIGGER_ROWS = 500

CHARTS = {
    "ctr": "ctr.png",
    "cvr": "cvr.png",
    "revenue": "revenue.png",
    "roas": "roas.png",
}


# -- report -------------------------------------------------------------------------------


def write_report(
    df: pd.DataFrame,
    out_dir: Path,
    title: str,
    triggers: list[dict[str, Any]] | None = None,
    *,
    source: str | None = None,
    currency: str = "",
    attribution: pd.DataFrame | None = None,
    attribution_channels: pd.DataFrame | None = None,
    offers: pd.DataFrame | None = None,
) -> Path:
    """Write ``report.html``, ``kpis.csv``, ``windows.csv`` and the PNG charts to ``out_dir``.

    The HTML has inline CSS and no scripts: it needs only the PNGs next to it.
    ``roas.png`` is drawn only when some record has spend. ``source`` (e.g. the topic
    or directory read) is shown under the title; ``currency`` (the records' reporting
    currency) labels the revenue chart; ``attribution``
    (:func:`~stream.core.report.attribution_table`) adds the models side by side and
    ``attribution.csv``, ``attribution_channels`` the same per channel
    (``attribution_channels.csv``), ``offers`` (:func:`~stream.core.report.offer_table`)
    the offered users against the holdout (``offers.csv``). Returns the path of
    ``report.html``.
    """
    tables = kpi_tables(df)  # raises EmptyReportError first: nothing is written for no data
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tables["breakdown"].to_csv(out / "kpis.csv", index=False)
    windows = df.assign(
        window_start_utc=_iso(df["window_start"]), window_end_utc=_iso(df["window_end"])
    )
    windows.to_csv(out / "windows.csv", index=False)

    charts = _write_charts(tables, out, currency)
    trig = _triggers_frame(triggers)
    if attribution is not None and not attribution.empty:
        attribution.to_csv(out / "attribution.csv", index=False)
    else:
        attribution = None
    if attribution is not None and attribution_channels is not None:
        attribution_channels.to_csv(out / "attribution_channels.csv", index=False)
    else:
        attribution_channels = None
    if offers is not None and not offers.empty:
        offers.to_csv(out / "offers.csv", index=False)
    else:
        offers = None
    page = _html(
        title, source, tables, charts, trig, triggers is not None, attribution,
        attribution_channels, offers,
    )  # fmt: skip
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _iso(ms: pd.Series) -> pd.Series:
    return pd.to_datetime(ms, unit="ms", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- charts -------------------------------------------------------------------------------


def _write_charts(
    tables: Mapping[str, pd.DataFrame], out: Path, currency: str = ""
) -> dict[str, str]:
    """Draw every chart that has data; return ``{kind: file name}`` in display order."""
    windows = tables["windows"]
    campaigns = tables["campaigns"]
    written: dict[str, str] = {}
    top_views = _top(campaigns, "views")
    for kind, label in (
        ("ctr", "CTR (clicks / views)"),
        ("cvr", "Conversion (purchases / clicks)"),
    ):
        fig = _rate_chart(windows, kind, label, top_views, len(campaigns))
        written[kind] = _save(fig, out / CHARTS[kind])
    chart = _revenue_chart(windows, campaigns, currency)
    written["revenue"] = _save(chart, out / CHARTS["revenue"])
    roas_path = out / CHARTS["roas"]
    if campaigns["spend"].notna().any():
        written["roas"] = _save(_roas_chart(campaigns), roas_path)
    else:
        roas_path.unlink(missing_ok=True)  # a stale chart from an earlier report would mislead
    return written


def _figure() -> Figure:
    fig = Figure(figsize=(10, 4.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path, format="png")
    return path.name


def _top(campaigns: pd.DataFrame, by: str, n: int = MAX_SERIES) -> list[str]:
    ranked = campaigns.sort_values([by, "campaign_id"], ascending=[False, True], kind="stable")
    return [str(c) for c in ranked["campaign_id"].head(n)]


def _times(values: pd.Series) -> Any:
    """UTC timestamps as naive ``datetime64`` values for matplotlib's date axis."""
    return pd.to_datetime(values, unit="ms").to_numpy()


def _style_time_axis(ax: Any) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel("window start (UTC)")
    ax.grid(True, alpha=0.3)


def _legend(ax: Any, count: int) -> None:
    if count:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def _rate_chart(
    windows: pd.DataFrame, kind: str, label: str, top: Sequence[str], total: int
) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    wide = windows.pivot_table(
        index="window_start", columns="campaign_id", values=kind, aggfunc="first", dropna=False
    )
    marker = "o" if len(wide.index) <= 60 else None
    x = _times(pd.Series(wide.index))
    drawn = 0
    for campaign in top:
        if campaign in wide.columns and wide[campaign].notna().any():
            ax.plot(x, wide[campaign].to_numpy(), marker=marker, markersize=3, label=campaign)
            drawn += 1
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=1))
    ax.set_ylim(bottom=0)
    suffix = f" — top {len(top)} of {total} campaigns by views" if total > len(top) else ""
    ax.set_title(f"{label} per window{suffix}")
    ax.set_ylabel(label.split(" (")[0])
    if not drawn:
        ax.text(0.5, 0.5, "no data (zero denominators)", ha="center", transform=ax.transAxes)
    _style_time_axis(ax)
    _legend(ax, drawn)
    return fig


def _revenue_chart(windows: pd.DataFrame, campaigns: pd.DataFrame, currency: str = "") -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    top = _top(campaigns, "revenue", MAX_SERIES - 1 if len(campaigns) > MAX_SERIES else MAX_SERIES)
    series = windows.assign(
        group=windows["campaign_id"].where(windows["campaign_id"].isin(top), "other")
    )
    wide = series.pivot_table(
        index="window_start", columns="group", values="revenue", aggfunc="sum", fill_value=0.0
    )
    order = [c for c in top if c in wide.columns] + (["other"] if "other" in wide.columns else [])
    starts = wide.index.to_numpy(dtype="int64")
    lengths = (windows["window_end"] - windows["window_start"]).to_numpy()
    length_ms = float(np.median(lengths)) if len(lengths) else 60_000.0
    width = max(length_ms, 1.0) / 86_400_000 * 0.85  # matplotlib date units are days
    x = _times(pd.Series(starts + length_ms / 2))
    bottom = np.zeros(len(wide.index))
    for group in order:
        values = wide[group].to_numpy(dtype="float64")
        ax.bar(x, values, width=width, bottom=bottom, label=group, align="center")
        bottom += values
    ax.set_title("Revenue per window, stacked by campaign")
    ax.set_ylabel(f"revenue ({currency})" if currency else "revenue")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    if not bottom.any():
        ax.text(0.5, 0.5, "no revenue yet", ha="center", transform=ax.transAxes)
    _style_time_axis(ax)
    _legend(ax, len(order))
    return fig


def _roas_chart(campaigns: pd.DataFrame) -> Figure:
    priced = campaigns[campaigns["spend"].notna()].copy()
    priced["roas_value"] = priced["roas"].fillna(0.0)
    priced = priced.sort_values(["roas_value", "campaign_id"], ascending=[True, False])
    fig = Figure(figsize=(10, max(2.6, 0.45 * len(priced) + 1.4)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = priced["campaign_id"].astype(str).to_list()
    values = priced["roas_value"].to_numpy(dtype="float64")
    colors = ["#2e7d32" if v >= 1.0 else "#c62828" for v in values]
    bars = ax.barh(names, values, color=colors)
    labels = [
        f"{v:.2f}" if pd.notna(r) else "n/a" for v, r in zip(values, priced["roas"], strict=True)
    ]
    ax.bar_label(bars, labels=labels, padding=3, fontsize="small")
    ax.axvline(1.0, color="#555555", linestyle="--", linewidth=1)
    ax.set_xlabel("ROAS (revenue / spend); dashed line = break-even")
    ax.set_title("ROAS by campaign (campaigns with a cost model)")
    ax.set_xlim(0, max(1.2, float(values.max(initial=0.0)) * 1.15))
    ax.grid(True, axis="x", alpha=0.3)
    return fig


# -- HTML ---------------------------------------------------------------------------------


def _triggers_frame(triggers: Sequence[Mapping[str, Any]] | None) -> pd.DataFrame:
    columns = ["created_at", "action", "rule", "campaign_id", "user_id", "reason"]
    rows = []
    seen: set[str] = set()
    for t in triggers or []:
        if not isinstance(t, Mapping):
            continue
        tid = t.get("trigger_id")
        if isinstance(tid, str):
            if tid in seen:  # trigger_id is the idempotency key
                continue
            seen.add(tid)
        target: Mapping[str, Any] = t["target"] if isinstance(t.get("target"), Mapping) else {}
        rows.append(
            {
                "created_at": t.get("created_at"),
                "action": t.get("action"),
                "rule": t.get("rule"),
                "campaign_id": target.get("campaign_id"),
                "user_id": target.get("user_id"),
                "reason": t.get("reason"),
            }
        )
    frame = pd.DataFrame(rows, columns=columns)
    created = pd.to_numeric(frame["created_at"], errors="coerce")
    frame = frame.assign(_order=created).sort_values("_order", ascending=False, kind="stable")
    frame["created_at"] = [
        _fmt_time(v) if pd.notna(v) else "—" for v in frame.pop("_order").to_list()
    ]
    if frame["user_id"].isna().all():
        frame = frame.drop(columns="user_id")
    return frame.reset_index(drop=True)


def _fmt_time(ms: float) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_int(v: Any) -> str:
    return "—" if pd.isna(v) else f"{int(v):,}"


def _fmt_money(v: Any) -> str:
    return "—" if pd.isna(v) else f"{float(v):,.2f}"


def _fmt_pct(v: Any) -> str:
    return "—" if pd.isna(v) else f"{float(v):.2%}"


def _fmt_ratio(v: Any) -> str:
    return "—" if pd.isna(v) else f"{float(v):.2f}"


def _fmt_text(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


_FORMATTERS = {
    "windows": _fmt_int,
    "views": _fmt_int,
    "clicks": _fmt_int,
    "purchases": _fmt_int,
    "revenue": _fmt_money,
    "spend": _fmt_money,
    "ctr": _fmt_pct,
    "cvr": _fmt_pct,
    "roas": _fmt_ratio,
    "campaign_id": _fmt_text,
    "variant_id": _fmt_text,
    "channel": _fmt_text,
    "users": _fmt_int,
    "converted": _fmt_int,
    "conversion": _fmt_pct,
    "conversion_low": _fmt_pct,
    "conversion_high": _fmt_pct,
    "revenue_per_user": _fmt_money,
    "revenue_low": _fmt_money,
    "revenue_high": _fmt_money,
}
_HEADERS = {
    "campaign_id": "campaign",
    "variant_id": "variant",
    "ctr": "CTR",
    "cvr": "CVR",
    "roas": "ROAS",
    "created_at": "created (UTC)",
    "user_id": "user",
}


def _formatter(column: str) -> Any:
    """A column's cell format; attribution columns (``linear_revenue``) as their kind."""
    if column in _FORMATTERS:
        return _FORMATTERS[column]
    if column.endswith("_revenue"):
        return _fmt_money
    if column.endswith("_purchases"):
        return lambda v: f"{v:,.2f}"
    return _fmt_text


def _table(frame: pd.DataFrame, css: str = "kpi") -> str:
    formatters = {c: _formatter(c) for c in frame.columns}
    shown = frame.rename(columns=_HEADERS)
    formatters = {_HEADERS.get(c, c): f for c, f in formatters.items()}
    return str(
        shown.to_html(
            index=False, border=0, classes=css, formatters=formatters, escape=True, na_rep="—"
        )
    )


def _summary(tables: Mapping[str, pd.DataFrame], trig: pd.DataFrame, n_triggers: bool) -> str:
    total = tables["totals"].iloc[0]
    windows = tables["windows"]
    campaigns = tables["campaigns"]
    first = _fmt_time(float(windows["window_start"].min()))
    last = _fmt_time(float(windows["window_end"].max()))
    items = [
        f"Period: {first} → {last} UTC, {int(total['windows']):,} windows, "
        f"{len(campaigns):,} campaigns, {len(tables['variants']):,} campaign × variant arms, "
        f"{len(tables['channels']):,} channels.",
        f"Totals: {_fmt_int(total['views'])} views, {_fmt_int(total['clicks'])} clicks "
        f"(CTR {_fmt_pct(total['ctr'])}), {_fmt_int(total['purchases'])} purchases "
        f"(CVR {_fmt_pct(total['cvr'])}), revenue {_fmt_money(total['revenue'])}.",
    ]
    if pd.notna(total["spend"]):
        items.append(
            f"Spend {_fmt_money(total['spend'])}, ROAS {_fmt_ratio(total['roas'])} "
            "(revenue of priced windows / spend)."
        )
    else:
        items.append("No spend: no campaign has a cost model (set one with `pulse campaign set`).")
    ranked = campaigns.dropna(subset=["ctr"]).sort_values("ctr", ascending=False)
    if len(ranked) > 1:
        best, worst = ranked.iloc[0], ranked.iloc[-1]
        items.append(
            f"Highest CTR: {best['campaign_id']} ({_fmt_pct(best['ctr'])}); "
            f"lowest: {worst['campaign_id']} ({_fmt_pct(worst['ctr'])})."
        )
    top_revenue = campaigns.sort_values("revenue", ascending=False).iloc[0]
    if top_revenue["revenue"] > 0:
        share = top_revenue["revenue"] / total["revenue"]
        items.append(
            f"Top revenue: {top_revenue['campaign_id']} "
            f"({_fmt_money(top_revenue['revenue'])}, {share:.0%} of the total)."
        )
    if n_triggers:
        if trig.empty:
            items.append("Triggers: none.")
        else:
            counts = trig.groupby("action").size().sort_values(ascending=False)
            parts = ", ".join(f"{action} × {n}" for action, n in counts.items())
            items.append(f"Triggers: {len(trig):,} ({parts}).")
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1f2328; }
h1 { margin-bottom: 0.2rem; } .meta { color: #57606a; margin-top: 0; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.3rem; margin-top: 2rem; }
table.kpi { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0; }
table.kpi th, table.kpi td { padding: 0.3rem 0.7rem; border-bottom: 1px solid #e5e7eb; }
table.kpi th { background: #f6f8fa; text-align: left; }
table.kpi td { text-align: right; font-variant-numeric: tabular-nums; }
table.kpi td:first-child, table.text td { text-align: left; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #e5e7eb; }
.note { color: #57606a; font-size: 0.85rem; }
"""


def _html(
    title: str,
    source: str | None,
    tables: Mapping[str, pd.DataFrame],
    charts: Mapping[str, str],
    trig: pd.DataFrame,
    has_triggers: bool,
    attribution: pd.DataFrame | None = None,
    attribution_channels: pd.DataFrame | None = None,
    offers: pd.DataFrame | None = None,
) -> str:
    esc = html.escape
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    meta = f"Generated {generated}" + (f" from {esc(source)}" if source else "")
    captions = {
        "ctr": "CTR over time per campaign",
        "cvr": "Conversion rate over time per campaign",
        "revenue": "Revenue per window, stacked by campaign",
        "roas": "ROAS by campaign",
    }
    figures = "".join(
        f'<figure><img src="{esc(name)}" alt="{esc(captions[kind])}">'
        f"<figcaption>{esc(captions[kind])}</figcaption></figure>"
        for kind, name in charts.items()
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1><p class='meta'>{meta}</p>",
        "<h2>Summary</h2>",
        _summary(tables, trig, has_triggers),
        "<h2>Charts</h2>",
        figures,
        "<h2>Campaigns</h2>",
        _table(tables["campaigns"]),
        "<h2>Campaign × variant</h2>",
        _table(tables["variants"]),
        "<h2>Channels</h2>",
        _table(tables["channels"]),
    ]
    if attribution is not None:
        parts += [
            "<h2>Attribution models</h2>",
            "<p class='note'>Purchases and revenue each campaign is credited with by each "
            "model over the users' clicks inside the attribution window: last click (as "
            "counted above), first click, linear, time decay and position-based (40/20/40); "
            "and data-driven: the Markov chain's removal effect over the users' click "
            "journeys (Anderl et al. 2016), its share of the purchases that ended one. "
            'Data: <a href="attribution.csv">attribution.csv</a>.</p>',
            _table(attribution),
        ]
    if attribution_channels is not None:
        parts += [
            "<h3>Per channel</h3>",
            "<p class='note'>The same models over channels (the Markov chain's states "
            'are then the channels). Data: <a href="attribution_channels.csv">'
            "attribution_channels.csv</a>.</p>",
            _table(attribution_channels),
        ]
    if offers is not None:
        parts += [
            "<h2>Offers against the holdout</h2>",
            "<p class='note'>Users eligible for a <code>user.send_offer</code>: the offered "
            "ones and the holdout (PULSE_OFFER_HOLDOUT, chosen by a fixed hash of the id, "
            "sent nothing), each followed for the attribution window after the offer: the "
            "share who purchased and the revenue per user, with 95 % confidence intervals; "
            "the last row is what an offer adds. "
            'Data: <a href="offers.csv">offers.csv</a>.</p>',
            _table(offers),
        ]
    if has_triggers:
        parts.append("<h2>Triggers</h2>")
        if trig.empty:
            parts.append("<p>No triggers.</p>")
        else:
            if len(trig) > MAX_TRIGGER_ROWS:
                parts.append(
                    f"<p class='note'>Newest {MAX_TRIGGER_ROWS:,} of {len(trig):,} triggers.</p>"
                )
            parts.append(_table(trig.head(MAX_TRIGGER_ROWS), css="kpi text"))
    parts += [
        "<p class='note'>Rates are computed from summed counts, never averaged: "
        "CTR = clicks / views, CVR = purchases / clicks, ROAS = revenue / spend over "
        "windows with a cost model; — means no denominator. Times are UTC. "
        'Data: <a href="kpis.csv">kpis.csv</a> (campaign × variant × channel totals), '
        '<a href="windows.csv">windows.csv</a> (every window record).</p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
