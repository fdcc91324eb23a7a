"""Model and trigger quality against the simulator's ground truth, without Kafka.

Runs simulated traffic through the same pure stages as ``pulse backtest``
(:class:`~stream.core.pipeline.PartitionStage`, :class:`~stream.core.pipeline.MergeStage`)
and scores the outcome against :attr:`stream.core.simulator.Simulator.truth`:

* delay from the injected CTR drop (scenario ``ctr-drop``) to the first adverse
  trigger of that campaign, in windows (goal ≤ 2);
* adverse triggers on steady campaigns per 24 campaign-hours (goal ≤ 1);
* propensity ROC AUC after warm-up, relative to the AUC of the simulator's true
  purchase propensities on the same labels (goal ≥ 0.95);
* the bandit's weight for the truly best variant, and windows until it reaches 90 %
  (the simulator does not act on the weights, so the SRM rail is off here);
* River ``learn_many`` mini-batches against ``learn_one`` on the same labels
  (``bench/propensity_batch.py``; ``--no-batch`` skips it);
* identity stitching on simulated logins (:mod:`stream.core.logins`: devices,
  cross-device people, shared computers, placeholder user ids): pairwise precision
  (goal ≥ 0.99) and recall (goal ≥ 0.95), and the post-login purchases credited to
  pre-login clicks;
* next-item recommendations (``bench/reco_quality.py``): HR@20 and MRR@20 of POP,
  S-POP and Pulse on the Diginetica sample and the shopper simulator, printed as a
  ``RECO`` line after the ``QUALITY`` line.

Runs: one steady run (2 simulated hours, 10 campaigns) and three ``ctr-drop``
runs (40 min, seeds 42–44); ``--quick`` (``make quality QUICK=1``): 1 hour with
5 campaigns and one drop run. Prints one ``QUALITY`` line with PASS/MISS per goal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from river import metrics

from stream.core.fx import FxRates
from stream.core.ingest import RawRecord
from stream.core.logins import LoginSim, run_logins, stitch_quality
from stream.core.pipeline import CLOSE_ALL, Pipeline, PipelineConfig
from stream.core.propensity import PropensityModel
from stream.core.simulator import SimConfig, SimTruth, Simulator, sim_rates
from stream.tools.backtest import partition_for

ADVERSE = {"campaign.decrease_bid", "campaign.pause", "campaign.alert"}
WINDOW_MS = 60_000
GRACE_MS = 30_000
#: Labels wait 15 min (over 99 % of simulated purchases come within 15 min of their click), not
#: the live 24 h default, so that a run of a few simulated hours yields enough of them.
ATTRIBUTION_MS = 900_000
#: Labels are scored only for clicks after this much simulated time: a model needs one
#: attribution window before its first negative label, and a second one to learn from them.
WARMUP_MS = 2 * ATTRIBUTION_MS


Op = tuple[Any, ...]  # ("score", model, user, ts, x) or ("label", model, user, ts, y, p)


class Recording(PropensityModel):
    """A propensity model that logs every click it scores and every label it learns from."""

    ops: list[Op]

    def features(self, user: str, event: dict[str, Any]) -> dict[str, float]:
        x = super().features(user, event)
        if event["type"] == "click":
            self.ops.append(("score", id(self), user, event["ts"], x))
        return x

    def _learn(self, ts: int, user: str, x: dict[str, float], p: float, y: bool) -> None:
        self.ops.append(("label", id(self), user, ts, y, p))
        super()._learn(ts, user, x, p, y)


@dataclass
class RunResult:
    truth: SimTruth
    cfg: SimConfig
    triggers: list[dict[str, Any]] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    held: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule, rail) -> count
    clicks: dict[tuple[str, int], str] = field(default_factory=dict)  # (user, ts) -> event_id
    events: int = 0
    elapsed_s: float = 0.0


def simulate(
    cfg: SimConfig,
    partitions: int,
    attribution_ms: int,
    advance: Callable[[int], None],
) -> RunResult:
    """Run one simulation through the pure stages; collect triggers and labels."""
    ops: list[Op] = []

    class RunRecording(Recording):
        pass

    RunRecording.ops = ops
    fx = FxRates("USD")  # the simulator's rates, as `pulse demo` sets them
    for currency, rate in sim_rates("USD").items():
        fx.set(currency, rate, 0)
    config = PipelineConfig.load(
        fx=fx,
        window_ms=WINDOW_MS,
        grace_ms=GRACE_MS,
        attribution_ms=attribution_ms,
        partitions=partitions,
        # The simulator keeps its 50/50 split whatever the weights say, so the SRM rail would
        # rightly hold every move after the first: off here, to see where the weights converge.
        srm_alpha=0.0,
    )
    stage, merge = Pipeline(config, model_type=RunRecording).stages()
    sim = Simulator(cfg, click_truth=True)
    result = RunResult(sim.truth, cfg, ops=ops)
    offsets = [count() for _ in range(partitions)]
    rr = count()
    started = time.perf_counter()
    for batch in sim.batches(batch_ms=1000):
        received = cfg.start_ms + batch.at_ms
        raws: list[RawRecord] = []
        for item in batch.items:
            p = partition_for(item.key, partitions, next(rr))
            raws.append((item.key, item.value, p, next(offsets[p]), received))
        out = stage.process(raws, None)
        for _, ev in out.counted:
            if ev["type"] == "click":
                user = ev.get("user_id") or ev.get("anonymous_id") or ""
                result.clicks[(user, ev["ts"])] = ev["event_id"]
        merged = merge.add(stage.close(out.touched), None)
        result.triggers.extend(merged.triggers)
        result.held.update(merged.held)
        result.events += len(raws)
        advance(len(raws))
    merged = merge.add(stage.close(range(partitions), CLOSE_ALL), None)
    result.triggers.extend(merged.triggers)
    result.held.update(merged.held)
    result.truth = sim.truth
    result.elapsed_s = time.perf_counter() - started
    return result


# -- figures ---------------------------------------------------------------------------


def drop_delay(run: RunResult) -> float | None:
    """Windows from the drop's start to the end of the window of the first adverse trigger."""
    truth = run.truth
    cid, start = truth.drop_campaign, truth.drop_start_ms
    if cid is None or start is None:
        return None
    start_abs = run.cfg.start_ms + start
    fired = [
        t["evidence"]["window_end"]
        for t in run.triggers
        if t["action"] in ADVERSE
        and t["target"].get("campaign_id") == cid
        and t["evidence"]["window_end"] > start_abs
    ]
    return (min(fired) - start_abs) / WINDOW_MS if fired else None


def false_adverse(run: RunResult) -> tuple[int, float]:
    """Adverse triggers on steady campaigns and the campaign-hours they were observed over.

    In a ``ctr-drop`` run the dropped campaign counts only until its drop begins.
    """
    hours = run.cfg.duration_s / 3600
    steady_hours = run.cfg.campaigns * hours
    start = run.truth.drop_start_ms
    if run.truth.drop_campaign and start is not None:
        steady_hours -= hours - start / 3_600_000
    n = sum(1 for t in run.triggers if t["action"] in ADVERSE and not _is_drop(run, t))
    return n, steady_hours


def auc(pairs: Iterator[tuple[bool, float]]) -> float:
    m = metrics.ROCAUC(n_thresholds=1000)
    for y, p in pairs:
        m.update(y, p)
    return float(m.get())


def propensity_quality(run: RunResult, warmup_ms: int) -> dict[str, float]:
    """Model and oracle ROC AUC on the same labels, for clicks after warm-up."""
    truth = run.truth.click_propensity
    cutoff = run.cfg.start_ms + warmup_ms
    rows = []
    for op in run.ops:
        if op[0] != "label":
            continue
        _, _, user, ts, y, p = op
        eid = run.clicks.get((user, ts))
        if ts >= cutoff and eid is not None and eid in truth:
            rows.append((y, p, truth[eid]))
    model = auc((y, p) for y, p, _ in rows)
    oracle = auc((y, q) for y, _, q in rows)
    return {
        "labels": len(rows),
        "positives": sum(1 for r in rows if r[0]),
        "model_auc": model,
        "oracle_auc": oracle,
        "ratio": model / oracle if oracle else 0.0,
    }


def bandit_quality(run: RunResult) -> dict[str, Any]:
    """Final weight of each campaign's best variant and windows until it first reached 90 %."""
    start = run.cfg.start_ms
    per: dict[str, dict[str, Any]] = {}
    for t in run.triggers:
        if t["action"] != "campaign.reallocate":
            continue
        cid = t["target"]["campaign_id"]
        best = run.truth.best_variant(cid)
        w = t["params"]["weights"].get(best, 0.0)
        row = per.setdefault(cid, {"final": 0.0, "to90": None})
        row["final"] = w
        if w >= 0.9 and row["to90"] is None:
            row["to90"] = (t["evidence"]["window_end"] - start) / WINDOW_MS
    for cid in run.truth.campaigns:
        per.setdefault(cid, {"final": 0.0, "to90": None})
    return per


def oracle_lookup(run: RunResult) -> Callable[[str, int], float | None]:
    """The simulator's true purchase probability of the click of ``user`` at ``ts``."""
    truth = run.truth.click_propensity

    def lookup(user: str, ts: int) -> float | None:
        eid = run.clicks.get((user, ts))
        return truth.get(eid) if eid is not None else None

    return lookup


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (about a minute)")
    ap.add_argument("--rate", type=float, default=200.0, help="simulated items per second")
    ap.add_argument("--hours", type=float, default=None, help="steady run (simulated hours)")
    ap.add_argument("--campaigns", type=int, default=None, help="campaigns in the steady run")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-batch", action="store_true", help="skip the learn_many comparison")
    args = ap.parse_args(argv)

    hours = args.hours if args.hours is not None else (1.0 if args.quick else 2.0)
    campaigns = args.campaigns or (5 if args.quick else 10)
    drop_s = 1200.0 if args.quick else 2400.0
    seeds = [args.seed] if args.quick else [args.seed, args.seed + 1, args.seed + 2]
    common = {"rate": args.rate, "users": args.users}
    steady = SimConfig(
        duration_s=hours * 3600, scenario="steady", seed=args.seed, campaigns=campaigns, **common
    )
    drops = [SimConfig(duration_s=drop_s, scenario="ctr-drop", seed=s, **common) for s in seeds]

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("[bold]{task.description:18s}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    with bar:
        task = bar.add_task("steady", total=steady.expected_items())
        st = simulate(steady, args.partitions, ATTRIBUTION_MS, lambda n: bar.advance(task, n))
        drop_runs = []
        for cfg in drops:
            t = bar.add_task(f"ctr-drop seed {cfg.seed}", total=cfg.expected_items())
            drop_runs.append(
                simulate(cfg, args.partitions, ATTRIBUTION_MS, lambda n, t=t: bar.advance(t, n))
            )

    out = print
    warmup_ms = WARMUP_MS
    prop = propensity_quality(st, warmup_ms)
    adverse = [(st, t) for t in st.triggers if t["action"] in ADVERSE]
    n_false, camp_hours = false_adverse(st)
    for r in drop_runs:
        n, ch = false_adverse(r)
        n_false += n
        camp_hours += ch
        adverse += [(r, t) for t in r.triggers if t["action"] in ADVERSE and not _is_drop(r, t)]
    false_rate = n_false / camp_hours * 24 if camp_hours else 0.0
    delays = [drop_delay(r) for r in drop_runs]
    worst = max((d if d is not None else float("inf")) for d in delays)
    bandit = bandit_quality(st)
    finals = [b["final"] for b in bandit.values()]
    to90 = [b["to90"] for b in bandit.values()]
    reached = [w for w in to90 if w is not None]

    out(
        f"steady: {hours:g} simulated h, {campaigns} campaigns, {args.rate:g} items/s, "
        f"{st.events:,} items in {st.elapsed_s:.0f} s ({st.events / st.elapsed_s:,.0f}/s)"
    )
    for r, d in zip(drop_runs, delays, strict=True):
        minute = (r.truth.drop_start_ms or 0) / 60_000
        out(
            f"ctr-drop seed {r.cfg.seed}: {r.cfg.duration_s / 60:g} simulated min, "
            f"{r.truth.drop_campaign} CTR × 0.2 from minute {minute:g}: "
            f"first adverse trigger {d} windows after the drop began"
        )
    out(
        f"adverse triggers on steady campaigns: {n_false} over {camp_hours:.1f} campaign-hours "
        f"= {false_rate:.2f} per 24 campaign-hours"
    )
    for r, t in adverse:
        out(f"  seed {r.cfg.seed} {t['action']}: {t['reason']}")
    held = sum((r.held for r in (st, *drop_runs)), Counter())
    out(
        "held back by rails (all runs): "
        + (", ".join(f"{rule}/{why} {n}" for (rule, why), n in sorted(held.items())) or "none")
    )
    out(
        f"propensity after {warmup_ms / 60_000:g} min warm-up ({ATTRIBUTION_MS // 60_000} min "
        f"attribution): {prop['labels']:,} labels ({prop['positives']:,} positive), model AUC "
        f"{prop['model_auc']:.4f}, true-propensity AUC {prop['oracle_auc']:.4f}, "
        f"ratio {prop['ratio']:.3f}"
    )
    for cid, b in sorted(bandit.items()):
        out(
            f"  bandit {cid}: best variant {st.truth.best_variant(cid)} gets {b['final']:.0%}, "
            f"≥ 90 % after {b['to90'] if b['to90'] is not None else 'never'} windows"
        )
    if not args.no_batch:
        from bench.propensity_batch import compare

        n_labels = sum(1 for op in st.ops if op[0] == "label")
        out(f"learn_one vs learn_many (same run, {n_labels:,} labels, AUC after warm-up):")
        compare(st.ops, steady.start_ms + warmup_ms, oracle_lookup(st))

    sim = LoginSim(people=args.users, seed=args.seed)
    stitch_stage = Pipeline(PipelineConfig.load(window_ms=WINDOW_MS, grace_ms=GRACE_MS))
    links, unattributed = run_logins(
        sim, stitch_stage.partition_stage(), lambda k: partition_for(k, args.partitions, 0)
    )
    stitch = stitch_quality(sim, links, unattributed)
    out(
        f"identity stitching on {sim.people:,} simulated people: precision "
        f"{stitch.precision:.4f}, recall {stitch.recall:.4f} over {stitch.true_pairs:,} true "
        f"pairs; {stitch.credited}/{stitch.purchases} post-login purchases credited to "
        "pre-login clicks (the rest were bought on someone else's shared computer)"
    )

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    mean_final = statistics.fmean(finals) if finals else 0.0
    slowest = f"{max(reached):g}" if reached and len(reached) == len(to90) else "never"
    summary = [
        f"drop_delay={worst:g}w (goal ≤2) {verdict(worst <= 2)}",
        f"false_adverse={false_rate:.2f}/24 campaign-h (goal ≤1) {verdict(false_rate <= 1)}",
        f"auc_ratio={prop['ratio']:.3f} ({prop['model_auc']:.3f}/{prop['oracle_auc']:.3f}, "
        f"goal ≥0.95) {verdict(prop['ratio'] >= 0.95)}",
        f"bandit_best_share={mean_final:.2f} (mean of {len(finals)}, goal ≥0.90) "
        f"{verdict(mean_final >= 0.9)}",
        f"windows_to_90%={slowest} (slowest; {len(reached)}/{len(to90)} reached)",
        f"stitch_precision={stitch.precision:.4f} (goal ≥0.99) {verdict(stitch.precision >= 0.99)}",
        f"stitch_recall={stitch.recall:.4f} (goal ≥0.95) {verdict(stitch.recall >= 0.95)}",
        f"pre_login_credited={stitch.credited}/{stitch.purchases}",
    ]
    out("QUALITY " + " | ".join(summary))
    from bench.reco_quality import reco_quality

    out("RECO " + " | ".join(reco_quality(out)))
    return 0


def _is_drop(run: RunResult, trigger: dict[str, Any]) -> bool:
    truth = run.truth
    start = truth.drop_start_ms
    return (
        trigger["target"].get("campaign_id") == truth.drop_campaign
        and start is not None
        and trigger["evidence"]["window_end"] > run.cfg.start_ms + start
    )


if __name__ == "__main__":
    sys.exit(main())
