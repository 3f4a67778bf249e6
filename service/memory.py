"""Keep the serving process's glibc heap bounded and flat under mixed traffic.

Two glibc malloc settings, made from inside the process (`mallopt`) so every way of starting
the service gets them; an operator's own environment variable for either wins, and other C
libraries (musl, macOS) are left alone.

- **Arenas.** glibc gives each thread that allocates its first own heap arena (up to 8 per
  core) and seldom returns fragmented memory from them. Pipeline runs, uploads and gallery
  calls hop between the server's threads, so a worker's RSS grew with the thread count: 10
  minutes of mixed traffic at concurrency 16 (`bench/vs_naive.py --soak 10`) went from 599 to
  701 MiB with glibc's default and stayed at 456-463 MiB with two arenas
  (`MALLOC_ARENA_MAX`; the image and `scripts/serve.sh` also set it).
- **mmap threshold.** glibc serves a block above the threshold (128 KiB at first) with its own
  mmap, and each time such a block is freed it raises the threshold to that block's size, up
  to 32 MiB. Uploads, decoded photos and detector inputs are 1-30 MiB, so over the first
  minutes more and more of them moved into the heap, whose high-water mark then rose in steps
  as larger ones met: in the 10-minute soak the per-minute median RSS went from 403 MiB at
  minute 2 to 458 at minute 10 (+13.6 %). With the threshold fixed at its maximum from the
  start (a fixed threshold does not drift), those blocks live in the heap from the first
  requests: 402 MiB at minute 2, 417 at minute 10 (+3.9 %, peak median 428), at the same
  request rate. A low fixed threshold kept RSS lower but cost request rate in page faults:
  4 MiB about 20 %, 256 KiB about 35 % (`MALLOC_MMAP_THRESHOLD_`).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

# glibc's malloc.h: mallopt parameters.
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
DEFAULT_HEAP_ARENAS = 2
# glibc's ceiling for the threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX: 4 * 1 MiB * 8).
DEFAULT_MMAP_THRESHOLD = 32 * 1024 * 1024


@dataclass(frozen=True)
class HeapTuning:
    """What `tune_heap` set (False where the environment or the C library decided)."""

    arenas: bool
    mmap_threshold: bool


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc only)
        return libc
    except (OSError, AttributeError):
        return None


def tune_heap(
    arenas: int = DEFAULT_HEAP_ARENAS, mmap_threshold: int = DEFAULT_MMAP_THRESHOLD
) -> HeapTuning:
    """Cap glibc's heap arenas at `arenas` (for threads that allocate from now on) and fix the
    mmap threshold at `mmap_threshold` bytes, each unless its environment variable is set."""
    libc = _glibc()
    if libc is None:
        return HeapTuning(False, False)
    return HeapTuning(
        arenas=not os.environ.get("MALLOC_ARENA_MAX") and bool(libc.mallopt(M_ARENA_MAX, arenas)),
        mmap_threshold=not os.environ.get("MALLOC_MMAP_THRESHOLD_")
        and bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)),
    )
