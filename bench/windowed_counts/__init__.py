"""Windowed campaign counts: Pulse vs a raw aiokafka consumer vs Quix Streams, one broker.

    make bench            # 1,000,000 events
    make bench QUICK=1    # 200,000 events, shorter live phase: a few minutes
    .venv/bin/python -m bench.windowed_counts --help   # the same, from the repo root

Everything runs on one local Kafka (``KafkaBroker`` from the Maven jars):

1. Generate N events (80/18/2 % view/click/purchase, 100k Zipf-distributed users,
   200 campaigns × 2 variants, 6 channels, event time ordered over 20 minutes
   with ±1 s jitter) and the exact ground truth per campaign × variant ×
   channel × 60 s window. Write them to ``bench.events`` (4 partitions, key =
   user id, partition = crc32(user id) % 4) and copies to ``quix.events`` and
   ``quix-g5.events``.
2. (a) raw: an ``AIOKafkaConsumer`` drains ``bench.events`` with
   ``getmany(max_records=10000)`` + ``orjson.loads`` + dict counting.
3. (c) Quix Streams 3.28.1 (``bench/quix_app.py`` in ``bench/.venv-quix``)
   drains a copy: group_by campaign × variant × channel, tumbling 60 s windows
   on ``event_time``, final windows to a topic. The drain ends when its
   consumer group has committed the input and repartition topics to their
   ends; then flush records close the last windows (Quix has no wall-clock
   close) and its results are compared. Two runs: ``quix`` with a grace that
   covers the whole replay (so no event can be late, whatever order the
   partitions are read in: the summary line's figure) and ``quix_g5`` with
   Pulse's grace of 5 s. Quix keeps one stream time per repartition
   partition, and a backlog is read partition chunk by partition chunk, so
   with a short grace it drops events as late (reported, not hidden).
4. (b) one ``pulse worker`` (``PULSE_TOPIC_PREFIX=bench.``, window 60 s, grace
   5 s) drains ``bench.events``: from ``/readyz`` == 200 until the group's
   committed offsets reach the end offsets. The last windows close when the
   partitions have been idle for window + grace on the wall clock; then the
   ``bench.metrics`` records are compared with the ground truth.
5. Live latency: the same worker gets steady traffic (``--live-rate`` ev/s,
   event time = now). For every window closed by the watermark while traffic
   flows: Pulse = when its ``bench.metrics`` record is read back; raw = when
   the raw consumer reads the first event past window end + grace. Latency is
   that time minus the create time of the window's last event (the contract's
   "event → its window's metrics visible"); "visible" latency is that time
   minus the window end.

Nothing is hard-coded: every figure comes from this run. A part that fails
prints FAILED with the reason and the others go on. A JSON copy of the results
goes to ``bench/results/`` (git-ignored).
"""
