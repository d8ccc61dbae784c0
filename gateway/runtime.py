"""Process-level tuning that `kamiwaza serve` applies before it starts serving."""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# mallopt(3) parameter number, from glibc's <malloc.h>.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (AttributeError, ValueError, OSError):  # not glibc, or not a POSIX confstr
        return False


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Keep glibc returning large freed buffers to the OS; True if applied.

    The audit shipper reads, compresses and hashes batches of up to
    `audit_batch_max_bytes` in worker threads. glibc serves such buffers with
    mmap at first, but raises its mmap threshold after each one is freed; later
    ones then come from the threads' own heaps, which keep their peak for good,
    so the gateway's RSS climbs in steps under sustained load (79 -> 173 MiB over
    six minutes in the soak benchmark, 77 MiB flat with the threshold pinned).
    Setting the threshold explicitly turns that adjustment off. An operator's
    `MALLOC_MMAP_THRESHOLD_` wins; on other C libraries this does nothing.
    """
    if MMAP_THRESHOLD_ENV in os.environ or not _glibc():
        return False
    # The process's own symbols include libc's (no library search at start-up).
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD) failed; memory may grow in steps under load")
        return False
    return True
