"""The processing pipeline as plain data in, plain data out: shared by workers and backtests.

:class:`Pipeline` — built once from a :class:`PipelineConfig` (times in ms,
rules, offer settings); gives the per-partition stage, the merge stage and
fresh windows. The worker's runtime, ``pulse backtest`` and ``bench/quality.py``
all build their stages through it, so a stage added here runs live and offline.
:class:`PartitionStage` — validate, dedup and window the records of the source
partitions it holds, and close windows into partials.
:class:`MergeStage` — merge partials into final window records and evaluate the
trigger rules on them.

The Faust agents move these results through Kafka; ``pulse backtest`` calls
the same stages directly, so live and offline make the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream.core.bandit import Allocator
from stream.core.dedup import DedupIndex, Deduplicator
from stream.core.fx import ALERT_COOLDOWN_MS, FxRates, missing_rate_alert
from stream.core.identity import IdentityBook, internal_record, is_internal
from stream.core.ingest import BatchResult, Ingestor, RawRecord, dlq_record
from stream.core.kpis import metric_record
from stream.core.merge import EmittedOutputs, WindowMerger
from stream.core.propensity import OfferOutput, PropensityModel, model_factory
from stream.core.recommend import Recommender
from stream.core.rules import Rules
from stream.core.sealing import StateKey
from stream.core.stageclock import StageClock
from stream.core.triggers import TriggerEngine, load_rules, trigger_id
from stream.core.windows import PartitionWindows, Row, RowKey

#: a watermark past every window: closes all of them (end of a backtest)
CLOSE_ALL = 2**62
#: Event types the propensity model learns from (add-to-carts and identities are not
#: features of it yet)
MODELLED = frozenset(("view", "click", "purchase"))
OFFER_ITEMS = 5  # recommended items an offer carries

Partial = tuple[int, int, list[tuple[int, dict[RowKey, Row]]]]  # partition, closed_until, windows


@dataclass
class StageOutput:
    result: BatchResult
    late: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    counted: list[tuple[RowKey, dict[str, Any]]] = field(default_factory=list)
    touched: dict[int, PartitionWindows] = field(default_factory=dict)
    offers: list[dict[str, Any]] = field(default_factory=list)
    held: list[tuple[str, str]] = field(default_factory=list)
    segments: list[tuple[int, str]] = field(default_factory=list)  # (segment, event type)
    #: link notices and handovers for ``pulse.events`` (stream.core.identity)
    internal: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    identity: list[str] = field(default_factory=list)  # link outcomes (identity.OUTCOMES)
    handovers: int = 0  # ids whose clicks were handed to their identity
    #: offered and held-out users whose attribution window passed (``pulse.offers``)
    outcomes: list[dict[str, Any]] = field(default_factory=list)


class PartitionStage:
    def __init__(
        self,
        ingestor: Ingestor,
        new_windows: Callable[[], PartitionWindows],
        new_model: Callable[[], PropensityModel] | None = None,
        new_recommender: Callable[[], Recommender] = Recommender,
    ) -> None:
        self.ingestor = ingestor
        self.clock = ingestor.clock
        self.new_windows = new_windows
        self.new_model = new_model
        self.new_recommender = new_recommender
        self.windows: dict[int, PartitionWindows] = {}
        self.models: dict[int, PropensityModel] = {}
        self.identities: dict[int, IdentityBook] = {}
        self.recommenders: dict[int, Recommender] = {}

    def recommender_state(self, partition: int) -> Recommender:
        reco = self.recommenders.get(partition)
        if reco is None:
            reco = self.recommenders[partition] = self.new_recommender()
        return reco

    def identity_state(self, partition: int) -> IdentityBook:
        book = self.identities.get(partition)
        if book is None:
            book = self.identities[partition] = IdentityBook(partition)
        return book

    def model_state(self, partition: int) -> PropensityModel | None:
        if self.new_model is None:
            return None
        model = self.models.get(partition)
        if model is None:
            model = self.models[partition] = self.new_model()
        return model

    def window_state(self, partition: int) -> PartitionWindows:
        pw = self.windows.get(partition)
        if pw is None:
            pw = self.windows[partition] = self.new_windows()
        return pw

    def process(self, records: Iterable[RawRecord], now_ms: int | None) -> StageOutput:
        """Ingest a batch and count valid events into their windows (late ones to the DLQ);
        then score and learn from the counted events in order, per partition."""
        internal: dict[int, list[RawRecord]] = {}  # per partition, in offset order
        for r in records:
            if is_internal(r[1]):  # link notices and handovers, applied in order with events
                internal.setdefault(r[2], []).append(r)
        if internal:
            records = [r for r in records if not is_internal(r[1])]
        result = self.ingestor.process(records, now_ms)
        out = StageOutput(result)
        touched = out.touched
        scored: list[tuple[int, dict[str, Any]]] = []
        with self.clock.stage("windows"):
            for event, (p, offset, key, raw) in zip(result.valid, result.sources, strict=True):
                pw = touched.get(p) or touched.setdefault(p, self.window_state(p))
                before = internal.get(p)
                while before and before[0][3] < offset:
                    self.apply_internal(before.pop(0), out)
                if offset <= pw.last_offset:
                    continue  # applied before a crash: replays are idempotent
                pw.last_offset = offset
                if "user_id" in event and ("anonymous_id" in event or "previous_id" in event):
                    for notice in self.identity_state(p).link(event):
                        out.internal.append((notice["id"].encode(), internal_record(notice)))
                status = pw.add(event)
                if status == "late":
                    out.late.append((key, late_record(event, raw, pw.closed_until)))
                    continue
                if isinstance(status, tuple):
                    out.counted.append((status, event))
                if "item_id" in event or "items" in event:
                    user = event.get("user_id") or event.get("anonymous_id") or ""
                    self.recommender_state(p).observe_event(user, event)
                if event["type"] in MODELLED:
                    scored.append((p, event))
            for rest in internal.values():
                for record in rest:
                    self.apply_internal(record, out)
            self.follow_moved(out)
        if self.new_model is None or not scored:
            return out
        with self.clock.stage("model"):
            for p, event in scored:
                model = self.models.get(p) or self.model_state(p)
                assert model is not None
                on = model.on_event(event)
                user = event.get("user_id") or event.get("anonymous_id") or ""
                out.segments.append((model.user_segment(user, event["ts"]), event["type"]))
                if on.offers:
                    self.recommend_in(p, on.offers)
                out.offers.extend(on.offers)
                out.held.extend(on.held)
                out.outcomes.extend(on.outcomes)
        return out

    def merge_user(self, p: int, pw: PartitionWindows, identity: str, body: Any) -> None:
        """Merge a handover's state into ``identity``'s on partition ``p``."""
        pw.merge_user(identity, body)
        if body.get("model") is not None:
            model = self.model_state(p)
            if model is not None:
                model.merge_user(identity, str(body["id"]), body["model"])
        if body.get("items") is not None:
            self.recommender_state(p).merge_user(identity, body["items"])

    def finish_offers(self) -> list[dict[str, Any]]:
        """Outcomes of every offered or held-out user still followed (end of a backtest)."""
        out = OfferOutput()
        for model in self.models.values():
            for user in list(model.watch):
                model.finish(user, out)
        return out.outcomes

    def recommend_in(self, partition: int, offers: list[dict[str, Any]]) -> None:
        """Offers carry the user's top items (their scores and the policy that chose them)."""
        reco = self.recommenders.get(partition)
        if reco is None:
            return
        for offer in offers:
            items, policy = reco.recommend(offer["target"]["user_id"], OFFER_ITEMS)
            offer["params"]["offer"]["items"] = [{"item_id": i, "score": s} for i, s in items]
            offer["params"]["offer"]["policy"] = policy

    def apply_internal(self, record: RawRecord, out: StageOutput) -> None:
        """A link notice (hand the id's clicks to its identity) or a handover (merge them),
        each applied once: a replay after a crash skips what the snapshot holds."""
        key, raw, p, offset, received = record
        pw = out.touched.get(p) or out.touched.setdefault(p, self.window_state(p))
        if offset <= pw.last_offset:
            return
        pw.last_offset = offset
        book = self.identity_state(p)
        try:
            body = orjson.loads(raw or b"")
            if body["pulse"] == "link":
                identity = book.on_notice(body)
                if identity is not None:
                    self.hand_over(p, str(body["id"]), identity, out)
            elif body["pulse"] == "handover":
                target = book.forward(body)
                if target is None:
                    self.merge_user(p, pw, str(body["identity"]), body)
                else:  # the identity moved on since: follow it
                    hops = int(body.get("hops", 0)) + 1
                    moved = {**body, "identity": target, "hops": hops}
                    out.internal.append((target.encode(), internal_record(moved)))
            else:
                raise KeyError(body["pulse"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            detail = (
                f"not a valid link notice or handover ({exc!r}): records starting with "
                '{"pulse": are Pulse\'s own; send events without that key first'
            )
            out.result.dlq.append((key, dlq_record("schema", detail, raw or b"", received)))
            out.result.invalid["schema"] += 1

    def hand_over(self, p: int, user: str, identity: str, out: StageOutput) -> None:
        """Send ``user``'s clicks, propensity state (features, caps, clicks awaiting a label)
        and recommendation history to ``identity``'s partition (nothing held: nothing sent)."""
        model, reco = self.models.get(p), self.recommenders.get(p)
        taken: dict[str, Any] = self.window_state(p).take_user(user) or {}
        moved = model.take_user(user) if model is not None else None
        if moved is not None:
            taken["model"] = moved
        items = reco.take_user(user) if reco is not None else None
        if items is not None:
            taken["items"] = items
        if not taken:
            return
        body = {"pulse": "handover", "id": user, "identity": identity, "hops": 0, **taken}
        out.internal.append((identity.encode(), internal_record(body)))
        out.handovers += 1

    def follow_moved(self, out: StageOutput) -> None:
        """Clicks of ids merged into an identity (e.g. after a logout) follow it; link
        outcomes are collected for the metrics."""
        for p, pw in out.touched.items():
            book = self.identities.get(p)
            if book is None:
                continue
            if pw.max_ts >= book.next_expiry:  # a pass over the records per 1/8 of their TTL
                book.expire(pw.max_ts)
            if book.outcomes:
                out.identity.extend(book.outcomes)
                book.outcomes.clear()
            if book.records:
                for user in [u for u in pw.dirty_clicks if book.canonical(u) != u]:
                    self.hand_over(p, user, book.canonical(user), out)

    def erase_user(self, user: str) -> dict[str, list[int]]:
        """Drop ``user``'s last clicks, model state, cached segment and sessions, and take
        their recent contributions back from item statistics (``pulse erase``).

        Returns the partitions that held them: ``clicks`` need a changelog
        tombstone, ``models`` and ``recommenders`` a fresh checkpoint. Window
        counts hold no users.
        """
        clicks = []
        for p, pw in self.windows.items():
            pw.earlier.pop(user, None)
            pw.converted.pop(user, None)
            if pw.last_click.pop(user, None) is not None:
                clicks.append(p)
            pw.dirty_clicks.discard(user)
        models = [p for p, m in self.models.items() if m.erase_user(user)]
        recos = [p for p, r in self.recommenders.items() if r.erase_user(user)]
        return {"clicks": sorted(clicks), "models": sorted(models), "recommenders": sorted(recos)}

    def user_ids(self) -> set[str]:
        """Every user id this stage holds state for (last clicks, model state, identities)."""
        ids: set[str] = set()
        for pw in self.windows.values():
            ids.update(pw.last_click)
        for book in self.identities.values():
            ids.update(book.records)
        for m in self.models.values():
            for per_user in (m.users, m.engaged, m.segments, m.pending_users, m.last_offer):
                ids.update(per_user)
            ids.update(m.watch)
            ids.update(m.merged_from)
        for r in self.recommenders.values():
            ids.update(r.users)
        return ids

    def model_quality(self) -> tuple[float, float, int]:
        """Label-weighted ROC AUC and log loss over this stage's partitions, and labels."""
        total = sum(m.labels for m in self.models.values())
        if not total:
            return 0.0, 0.0, 0
        auc = sum(float(m.rocauc.get()) * m.labels for m in self.models.values()) / total
        loss = sum(float(m.logloss.get()) * m.labels for m in self.models.values()) / total
        return auc, loss, total

    def close(self, partitions: Iterable[int], idle_watermark: int | None = None) -> list[Partial]:
        """Close what watermarks allow; ``idle_watermark`` advances idle partitions.

        A partial is returned only when windows closed or the partition's
        progress crossed a window boundary: the merger can finish a window only
        then, so the watermark creeping inside one window sends nothing.
        """
        partials = []
        for p in partitions:
            pw = self.window_state(p)
            before = pw.closed_until
            closed = pw.close(idle_watermark)
            size = pw.size_ms
            if closed or pw.closed_until // size > before // size:
                partials.append((p, pw.closed_until, closed))
        return partials


def late_record(event: Mapping[str, Any], raw: bytes, closed_until: int) -> bytes:
    """The DLQ record of a late event: reason ``late``, payload its original text.

    >>> import orjson
    >>> rec = orjson.loads(late_record({"ts": 5, "received_at": 9}, b'{"event_time":5}', 60))
    >>> rec["reason"], rec["payload"], rec["received_at"]
    ('late', '{"event_time":5}', 9)
    """
    detail = (
        f"event time {event['ts']} falls in a window already closed at watermark "
        f"{closed_until}: send events within PULSE_GRACE of the newest ones"
    )
    return dlq_record("late", detail, raw, event["received_at"])


@dataclass
class MergeOutput:
    records: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    held: list[tuple[str, str]] = field(default_factory=list)
    drifts: list[tuple[str, int]] = field(default_factory=list)  # (campaign, window_start)


class MergeStage:
    def __init__(
        self,
        merger: WindowMerger,
        engine: TriggerEngine,
        campaign_settings: Callable[[str], Mapping[str, Any] | None],
        allocator: Allocator | None = None,
        currency: str = "USD",
    ) -> None:
        self.merger = merger
        self.engine = engine
        self.currency = currency  # the reporting currency of revenue, spend and ROAS
        self.campaign_settings = campaign_settings
        self.allocator = allocator or Allocator()
        self.emitted = EmittedOutputs()  # sent before a crash, after the last snapshot

    def to_state(self) -> dict[str, Any]:
        return {
            **self.merger.to_state(),
            "engine": self.engine.to_state(),
            "allocator": self.allocator.to_state(),
        }

    def reallocate(
        self, cid: str, ws: int, we: int, window: Mapping[str, list[int]], now_ms: int
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Thompson-sampling weights for the campaign's variants after a closed window."""
        alloc = self.allocator
        for vid, (views, clicks) in window.items():
            alloc.observe(cid, vid, views, clicks)
        totals = {v: (t[0], t[1]) for v, t in alloc.totals.get(cid, {}).items() if v}
        if len(totals) < 2:
            return [], []
        weights, why = alloc.propose(cid, ws, totals)
        if why == "min_sample":
            return [], [("variant_allocation", "min_sample")]
        if why is not None:
            return [], []
        srm_p = alloc.srm(cid, {v: c[0] for v, c in window.items() if v})
        if srm_p < alloc.srm_alpha:
            return [], [("variant_allocation", "srm")]
        before = alloc.weights.get(cid)
        alloc.weights[cid] = weights
        best = max(weights, key=lambda v: weights[v])
        rates = {v: t[1] / t[0] for v, t in totals.items()}
        split = " / ".join(f"{v} {w:.0%}" for v, w in sorted(weights.items()))
        others = ", ".join(f"{v} {rates[v]:.2%}" for v in sorted(rates) if v != best)
        target = {"campaign_id": cid}
        return [
            {
                "trigger_id": trigger_id("variant_allocation", target, ws),
                "action": "campaign.reallocate",
                "rule": "variant_allocation",
                "target": target,
                "reason": (
                    f"Variant {best} of {cid} has the best CTR with probability "
                    f"{weights[best]:.0%} ({rates[best]:.2%} vs {others} over "
                    f"{totals[best][0]:,} views): move traffic to {split}."
                ),
                "evidence": {
                    "window_start": ws,
                    "window_end": we,
                    "variants": {
                        v: {"views": t[0], "clicks": t[1], "ctr": rates[v]}
                        for v, t in totals.items()
                    },
                    "previous_weights": before,
                    "srm_p_value": srm_p,
                },
                "params": {"weights": weights},
                "created_at": now_ms,
            }
        ], []

    def add(self, partials: Iterable[Partial], now_ms: int | None) -> MergeOutput:
        """Merge partials; return final records and the triggers of newly final windows.

        ``now_ms`` stamps ``created_at``; None (backtests) uses the window end.
        """
        merger = self.merger
        size_ms = merger.size_ms
        for partition, closed_until, windows in partials:
            merger.add_partial(partition, closed_until, windows)
        out = MergeOutput()
        for ws, rows in merger.ready():
            we = ws + size_ms
            per_campaign: dict[str, list[int]] = {}
            per_variant: dict[str, dict[str, list[int]]] = {}
            missing: dict[str, tuple[dict[str, int], dict[str, float]]] = {}
            for (cid, vid, channel), row in sorted(rows.items()):
                settings = self.campaign_settings(cid)
                out.records.append(
                    metric_record(cid, vid, channel, ws, we, row, settings, self.currency)
                )
                if row[5]:  # purchases without a rate: the campaign gets an alert
                    counts, amounts = missing.setdefault(cid, ({}, {}))
                    add_row_counts(counts, amounts, row[5], row[6])
                acc = per_campaign.setdefault(cid, [0, 0, 0])
                for i in range(3):
                    acc[i] += row[i]
                var = per_variant.setdefault(cid, {}).setdefault(vid, [0, 0])
                var[0] += row[0]
                var[1] += row[1]
            stamp = we if now_ms is None else now_ms
            for cid, (views, clicks, purchases) in per_campaign.items():
                fired, held = self.engine.evaluate(
                    cid, ws, we, views, clicks, purchases, stamp, self.campaign_settings(cid)
                )
                moved, held_moves = self.reallocate(cid, ws, we, per_variant[cid], stamp)
                out.triggers.extend(fired + moved)
                out.held.extend(held + held_moves)
            for cid, (counts, amounts) in missing.items():
                last = self.engine.last_fired.get(f"fx_missing|{cid}")
                if last is not None and ws - last < ALERT_COOLDOWN_MS:
                    out.held.append(("fx_missing", "cooldown"))
                    continue
                self.engine.last_fired[f"fx_missing|{cid}"] = ws
                out.triggers.append(
                    missing_rate_alert(cid, ws, we, counts, amounts, self.currency, stamp)
                )
        out.drifts = self.engine.drain_drifts()
        if self.emitted:  # a replay after a crash: drop what was already sent
            out.records, out.triggers = self.emitted.drop_repeats(
                out.records, out.triggers, merger.emitted_until
            )
        return out


CampaignSettings = Callable[[str], Mapping[str, Any] | None]


def add_row_counts(
    counts: dict[str, int],
    amounts: dict[str, float],
    unconverted: Mapping[str, int],
    by_currency: Mapping[str, float],
) -> None:
    """Sum a row's unconverted purchases and their amounts per currency into a campaign's."""
    for currency, n in unconverted.items():
        counts[currency] = counts.get(currency, 0) + n
        amounts[currency] = amounts.get(currency, 0.0) + by_currency.get(currency, 0.0)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the stages need, in milliseconds, with the rules loaded once.

    >>> cfg = PipelineConfig.load(window_ms=60_000, grace_ms=30_000)
    >>> cfg.partitions, sorted(cfg.rules.rules), cfg.rules.user_offer.min_labels
    (4, ['ctr_drop', 'ctr_surge', 'cvr_drop'], 200)
    """

    window_ms: int
    grace_ms: int
    attribution_ms: int = 86_400_000
    dedup_ttl_ms: int = 86_400_000
    partitions: int = 4
    rules: Rules = field(default_factory=load_rules)  # typed, validated (stream.core.rules)
    salt: str = ""  # PULSE_PSEUDONYMIZE_SALT: pseudonymise at ingest
    srm_alpha: float | None = None  # the bandit's sample-ratio-mismatch rail (None: default)
    #: seals state records (PULSE_STATE_KEY; stream.core.sealing)
    state_key: StateKey = field(default_factory=lambda: StateKey("", "pulse"))
    #: half-life of the time-decay attribution model (PULSE_ATTRIBUTION_HALF_LIFE)
    attribution_half_life_ms: int = 7 * 86_400_000
    #: views are touches too (PULSE_ATTRIBUTION_TOUCHES=views), not only clicks
    attribution_views: bool = False
    #: share of users eligible for an offer who get none (PULSE_OFFER_HOLDOUT)
    offer_holdout: float = 0.1
    #: gap that ends a user's session for recommendations (PULSE_RECO_SESSION_GAP)
    session_gap_ms: int = 1_800_000
    #: exchange rates into the reporting currency (PULSE_CURRENCY; ``pulse.fx``), shared and
    #: updated in place by the worker's follower of ``pulse.fx``
    fx: FxRates = field(default_factory=FxRates)

    @classmethod
    def load(cls, rules_file: str | Path | None = None, **kwargs: Any) -> PipelineConfig:
        """A config with the rules read from ``rules_file`` (default ``stream/rules.yaml``).

        A bad rules file raises :class:`~stream.core.rules.RulesError` here, at start.
        """
        return cls(rules=load_rules(rules_file or None), **kwargs)


class Pipeline:
    """Builds the stages of one pipeline from one :class:`PipelineConfig`.

    ``model_type`` lets a quality run swap in an instrumented propensity model.

    >>> pipe = Pipeline(PipelineConfig.load(window_ms=60_000, grace_ms=30_000))
    >>> stage, merge = pipe.partition_stage(), pipe.merge_stage()
    >>> out = stage.process([(None, b'{"event_id": "e1"}', 0, 0, 1_000)], None)
    >>> dict(out.result.invalid), merge.add(stage.close(range(4), CLOSE_ALL), None).records
    ({'schema': 1}, [])
    """

    def __init__(
        self, config: PipelineConfig, model_type: type[PropensityModel] = PropensityModel
    ) -> None:
        self.config = config
        self.model_type = model_type

    def new_windows(self) -> PartitionWindows:
        c = self.config
        return PartitionWindows(
            c.window_ms, c.grace_ms, c.attribution_ms, c.fx, c.attribution_half_life_ms,
            c.attribution_views,
        )  # fmt: skip

    def windows_from_state(self, state: Mapping[str, Any]) -> PartitionWindows:
        c = self.config
        return PartitionWindows.from_state(
            state, c.window_ms, c.grace_ms, c.attribution_ms, c.fx, c.attribution_half_life_ms,
            c.attribution_views,
        )  # fmt: skip

    def partition_stage(
        self,
        id_dir: str | Path | None = None,
        dedup: DedupIndex | None = None,
        clock: StageClock | None = None,
    ) -> PartitionStage:
        """Validate, dedup, window and score, per source partition.

        The dedup index is in memory; the full event ids it verifies fingerprint hits
        against are kept in files under ``id_dir`` (a worker's data dir), else in memory.
        ``dedup`` replaces it (``RocksDeduplicator`` with ``PULSE_STORE=rocksdb``).
        ``clock`` takes the CPU time of its stages (a new one if not given).
        """
        c = self.config
        index = dedup or Deduplicator(c.dedup_ttl_ms, id_dir)
        ingestor = Ingestor(index, salt=c.salt, clock=clock)
        models = model_factory(
            c.rules.user_offer, c.attribution_ms, c.window_ms, self.model_type, c.offer_holdout
        )
        return PartitionStage(ingestor, self.new_windows, models, self.new_recommender)

    def new_recommender(self) -> Recommender:
        return Recommender(session_gap_ms=self.config.session_gap_ms)

    def merge_stage(
        self,
        campaign_settings: CampaignSettings | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> MergeStage:
        """The merger, trigger engine and allocator, restored from a merger snapshot if given."""
        c = self.config
        merger = (
            WindowMerger.from_state(state, c.partitions, c.window_ms)
            if state
            else WindowMerger(c.partitions, c.window_ms)
        )
        engine = TriggerEngine(c.rules)
        allocator = Allocator() if c.srm_alpha is None else Allocator(srm_alpha=c.srm_alpha)
        if state and "engine" in state:
            engine.restore(state["engine"])
            allocator.restore(state.get("allocator", {}))
        return MergeStage(
            merger, engine, campaign_settings or (lambda _cid: None), allocator, c.fx.reporting
        )

    def stages(
        self, campaign_settings: CampaignSettings | None = None
    ) -> tuple[PartitionStage, MergeStage]:
        """Fresh offline stages (ids in memory): what backtests and quality runs use."""
        return self.partition_stage(), self.merge_stage(campaign_settings)
