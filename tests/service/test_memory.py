"""The serving process tunes glibc's heap (`service.memory`): threads share two arenas instead
of one each, the mmap threshold is fixed instead of drifting up with the traffic, and freed
memory at the top of the heap is kept for the next request instead of trimmed at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Starts 12 threads that each make their first C allocation, then prints glibc's arena count.
ARENAS_AFTER_THREADS = textwrap.dedent(
    """
    import ctypes, sys, threading
    from service.memory import tune_heap
    limited = tune_heap().arenas if sys.argv[1] == "tune" else False
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    barrier = threading.Barrier(12)
    def allocate():
        barrier.wait()
        libc.malloc(4096)
    threads = [threading.Thread(target=allocate) for _ in range(12)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    sys.stderr.flush()
    libc.malloc_stats()
    print(limited)
    """
)

# glibc's malloc, free and mallinfo2 (heap statistics) through ctypes, for the scripts below.
MALLINFO = textwrap.dedent(
    """
    import ctypes
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = MallInfo2
    """
)

# Frees one 20 MiB block (which raises glibc's dynamic threshold to 20 MiB), then allocates
# 8 MiB blocks and prints how many of them got an mmap of their own, and what tune_heap set.
MMAPPED_BLOCKS = MALLINFO + textwrap.dedent(
    """
    import sys
    from service.memory import tune_heap
    tuned = False
    if sys.argv[1] == "tune":
        tuned = tune_heap(mmap_threshold=int(sys.argv[2])).mmap_threshold
    libc.free(libc.malloc(20 << 20))
    before = libc.mallinfo2().hblks
    blocks = [libc.malloc(8 << 20) for _ in range(3)]
    print(libc.mallinfo2().hblks - before, tuned)
    """
)

# Frees an 8 MiB heap block at the top of the main heap, then prints whether the heap kept it
# (mallinfo2's keepcost: free memory at the top) and what tune_heap set.
KEPT_AT_TOP = MALLINFO + textwrap.dedent(
    """
    from service.memory import tune_heap
    tuned = tune_heap().trim_threshold
    libc.free(libc.malloc(8 << 20))
    print(libc.mallinfo2().keepcost >= 8 << 20, tuned)
    """
)


def _run(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60, env=env
    )
    assert run.returncode == 0, run.stderr
    return run


def _arenas(mode: str, env: dict[str, str]) -> tuple[int, str]:
    run = _run(ARENAS_AFTER_THREADS, [mode], env)
    return run.stderr.count("Arena "), run.stdout.strip()


def _mmapped(mode: str, threshold: int, env: dict[str, str]) -> tuple[int, str]:
    count, tuned = _run(MMAPPED_BLOCKS, [mode, str(threshold)], env).stdout.split()
    return int(count), tuned


def _glibc() -> bool:
    import ctypes

    return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


def _clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    }


@pytest.mark.skipif(not _glibc(), reason="heap arenas are a glibc feature")
def test_threads_share_two_arenas_and_an_operator_setting_wins():
    env = _clean_env()
    default, _ = _arenas("default", env)
    limited, answer = _arenas("tune", env)
    _, operator = _arenas("tune", {**env, "MALLOC_ARENA_MAX": "4"})
    assert default > 2  # the premise: without the bound, threads get arenas of their own
    assert limited <= 2 and answer == "True"
    assert operator == "False"


@pytest.mark.skipif(not _glibc(), reason="the mmap threshold is a glibc feature")
def test_the_mmap_threshold_stays_where_it_is_set_and_an_operator_setting_wins():
    env = _clean_env()
    # glibc's default: the freed 20 MiB block raised the threshold, so 8 MiB comes from the heap.
    assert _mmapped("default", 0, env) == (0, "False")
    # Fixed at 1 MiB, the threshold does not drift: every 8 MiB block gets its own mmap.
    assert _mmapped("tune", 1 << 20, env) == (3, "True")
    # The operator's variable wins (glibc reads it at start; tune_heap leaves it alone).
    assert _mmapped("tune", 1 << 20, {**env, "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}) == (
        0,
        "False",
    )


@pytest.mark.skipif(not _glibc(), reason="the trim threshold is a glibc feature")
def test_freed_memory_at_the_top_of_the_heap_is_kept_and_an_operator_setting_wins():
    env = _clean_env()
    assert _run(KEPT_AT_TOP, [], env).stdout.split() == ["True", "True"]
    # With glibc's 128 KiB (what a fixed mmap threshold leaves) the heap is trimmed at once.
    trimmed = _run(KEPT_AT_TOP, [], {**env, "MALLOC_TRIM_THRESHOLD_": str(128 << 10)})
    assert trimmed.stdout.split() == ["False", "False"]
