#!/usr/bin/env bash
# Start the service. Without FACEVERIFY_PACK_DIR it serves models/buffalo_l, downloading it
# (checksum-verified) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# Two glibc heap arenas instead of one per thread: pipeline runs hop between the server's
# worker threads and each arena keeps its fragmented memory (see docs/performance.md).
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"

if [ -z "${FACEVERIFY_PACK_DIR:-}" ]; then
  export FACEVERIFY_PACK_DIR="$PWD/models/buffalo_l"
  if [ ! -d "$FACEVERIFY_PACK_DIR" ]; then
    # On failure fetch-models prints one line saying how to provide a pack by hand.
    "$PY" -m service fetch-models buffalo_l --dir models || exit 1
  fi
fi
exec "$PY" -m service serve
