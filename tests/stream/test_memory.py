"""The allocator settings of :mod:`stream.memory`, in fresh processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stream.memory import bound_allocator_retention

_SCRIPT = """
import sys
from stream.memory import bound_allocator_retention

def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

if sys.argv[1] == "bound":
    assert bound_allocator_retention()
big = bytearray(16 << 20)  # mapped; freeing it raises glibc's dynamic threshold
del big
before = rss_mib()
blocks = [bytearray(2 << 20) for _ in range(10)]  # 20 MiB of temporaries
pin = [bytearray(64) for _ in range(1000)]  # small objects above them on the heap
del blocks
print(round(rss_mib() - before, 1))
"""


def _retained_mib(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return float(out.stdout)


@pytest.mark.skipif(not bound_allocator_retention(), reason="glibc only")
def test_freed_temporaries_leave_rss_only_with_bounded_retention() -> None:
    assert _retained_mib("default") >= 15  # glibc keeps the freed 20 MiB in its heap
    assert _retained_mib("bound") < 2  # mapped and unmapped on their own
