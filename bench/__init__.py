"""Benchmarks and measurements (not part of the tests). Run from the repo root as modules:

    .venv/bin/python -m bench.windowed_counts [--quick]   # make bench [QUICK=1]
    .venv/bin/python -m bench.soak --minutes 10           # make soak
    .venv/bin/python -m bench.ingest_rate --rates 1000,2000
    .venv/bin/python -m bench.state_memory --store memory
    .venv/bin/python -m bench.propensity_batch [--quick]

``bench.common`` holds what they share (consumer-lag probe, topic reader, CPU/RSS).
This file must import nothing: ``python -m bench.quix_app`` runs it in the Quix venv
(``bench/.venv-quix``), which has no Pulse and none of its dependencies.
"""
