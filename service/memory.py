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
- **Trim threshold.** Fixing the mmap threshold also stops glibc's matching adjustment of the
  trim threshold (twice the mmap threshold when it drifts), which then stays at 128 KiB: each
  time a decoded photo or a model input at the top of the heap was freed, the heap shrank, and
  the next request page-faulted the memory back in. That made a JPEG decode 40 % slower
  (mean 20.5 -> 28.5 ms over the benchmark photos), and every other large buffer paid the same
  way. Keeping up to 16 MiB free at the top (`MALLOC_TRIM_THRESHOLD_`) restores the
  speed (18.5 ms; 32 MiB: 16.3 ms). In the 10-minute soak, 16 MiB gave per-minute medians of
  359-377 MiB (+1.6 % from minute 2 to 10) and 32 MiB 350-409 MiB (+8.2 %, a step at minute
  6), at the same request rate.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

# glibc's malloc.h: mallopt parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
DEFAULT_HEAP_ARENAS = 2
# glibc's ceiling for the threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX: 4 * 1 MiB * 8).
DEFAULT_MMAP_THRESHOLD = 32 * 1024 * 1024
# Free memory kept at the top of a heap: a decoded photo or a detector input or two.
DEFAULT_TRIM_THRESHOLD = 16 * 1024 * 1024


@dataclass(frozen=True)
class HeapTuning:
    """What `tune_heap` set (False where the environment or the C library decided)."""

    arenas: bool
    mmap_threshold: bool
    trim_threshold: bool


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc only)
        return libc
    except (OSError, AttributeError):
        return None


def tune_heap(
    arenas: int = DEFAULT_HEAP_ARENAS,
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
    trim_threshold: int = DEFAULT_TRIM_THRESHOLD,
) -> HeapTuning:
    """Cap glibc's heap arenas at `arenas` (for threads that allocate from now on), fix the
    mmap threshold at `mmap_threshold` bytes and keep up to `trim_threshold` bytes free at the
    top of a heap, each unless its environment variable is set."""
    libc = _glibc()
    if libc is None:
        return HeapTuning(False, False, False)

    def set_unless_operator_did(variable: str, parameter: int, value: int) -> bool:
        return not os.environ.get(variable) and bool(libc.mallopt(parameter, value))

    return HeapTuning(
        arenas=set_unless_operator_did("MALLOC_ARENA_MAX", M_ARENA_MAX, arenas),
        mmap_threshold=set_unless_operator_did(
            "MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, mmap_threshold
        ),
        trim_threshold=set_unless_operator_did(
            "MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, trim_threshold
        ),
    )
