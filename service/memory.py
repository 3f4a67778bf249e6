"""Bound the serving process's glibc heap arenas.

glibc gives each thread that allocates its first own heap arena (up to 8 per core) and seldom
returns fragmented memory from them. Pipeline runs, uploads and gallery calls hop between the
server's threads, so a worker's RSS grew with the thread count: 10 minutes of mixed traffic at
concurrency 16 (`bench/vs_naive.py --soak 10`) went from 599 to 701 MiB with glibc's default
and stayed at 456-463 MiB with two arenas. The image and `scripts/serve.sh` set
`MALLOC_ARENA_MAX=2`; `limit_heap_arenas` sets the same bound from inside the process
(`mallopt`), so every way of starting the service gets it. An operator's own
`MALLOC_ARENA_MAX` wins, and other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import os

# glibc's malloc.h: the mallopt parameter for the maximum number of arenas.
M_ARENA_MAX = -8
DEFAULT_HEAP_ARENAS = 2


def limit_heap_arenas(count: int = DEFAULT_HEAP_ARENAS) -> bool:
    """Cap glibc's heap arenas at `count` for threads that allocate from now on; True if set."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc only)
        return bool(libc.mallopt(M_ARENA_MAX, count))
    except (OSError, AttributeError):
        return False
