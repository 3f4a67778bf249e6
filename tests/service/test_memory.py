"""The serving process bounds glibc's heap arenas: threads share two instead of one each."""

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
    from service.memory import limit_heap_arenas
    limited = limit_heap_arenas() if sys.argv[1] == "limit" else False
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


def _arenas(mode: str, env: dict[str, str]) -> tuple[int, str]:
    run = subprocess.run(
        [sys.executable, "-c", ARENAS_AFTER_THREADS, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    return run.stderr.count("Arena "), run.stdout.strip()


def _glibc() -> bool:
    import ctypes

    return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


@pytest.mark.skipif(not _glibc(), reason="heap arenas are a glibc feature")
def test_limit_keeps_threads_to_two_arenas_and_an_operator_setting_wins():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    default, _ = _arenas("default", env)
    limited, answer = _arenas("limit", env)
    _, operator = _arenas("limit", {**env, "MALLOC_ARENA_MAX": "4"})
    assert default > 2  # the premise: without the bound, threads get arenas of their own
    assert limited <= 2 and answer == "True"
    assert operator == "False"
