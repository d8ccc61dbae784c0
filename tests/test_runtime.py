"""Process tuning for `kamiwaza serve`: large freed buffers go back to the OS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.runtime import MMAP_THRESHOLD_ENV, pin_mmap_threshold

ROOT = Path(__file__).resolve().parent.parent

# A fresh interpreter frees an 8 MiB buffer (which raises glibc's dynamic mmap
# threshold unless it is pinned), then says where a 4 MiB buffer lives: in a
# mapping of its own ("anon") or in the heap, and where its address is once freed.
PROBE = """
import ctypes, sys
sys.path.insert(0, {root!r})
from gateway.runtime import pin_mmap_threshold
def region(address):
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split()
            low, high = (int(v, 16) for v in fields[0].split("-"))
            if low <= address < high:
                return fields[5] if len(fields) > 5 else "anon"
    return "unmapped"
pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else False
x = bytearray(8 << 20)
del x
y = bytearray(4 << 20)
address = ctypes.addressof(ctypes.c_char.from_buffer(y))
held = region(address)
del y
print(pinned, held, region(address))
"""


def _probe(mode: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(root=str(ROOT)), mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return out.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_pinned_threshold_maps_and_unmaps_large_buffers() -> None:
    env = {k: v for k, v in os.environ.items() if k != MMAP_THRESHOLD_ENV}
    # Pinned: the buffer is a mapping of its own, gone once freed.
    assert _probe("pin", env) == ["True", "anon", "unmapped"]
    # glibc's default: after the first large free the buffer comes from the heap.
    assert _probe("default", env) == ["False", "[heap]", "[heap]"]


def test_an_operators_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MMAP_THRESHOLD_ENV, "65536")
    assert pin_mmap_threshold() is False
