"""`gallery enrol` killed with SIGKILL part way, then run again: the gallery ends with exactly
one face per photo, no duplicates, and no identity without faces; the second run enrols only
what the first did not write."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gallery_support import noise_photo
from synthetic_models import SyntheticFace, make_manifest_pack

from service.gallery.store import DATABASE_NAME, SqliteStore

REPO_ROOT = Path(__file__).resolve().parents[3]
PEOPLE, PHOTOS_EACH = 24, 6
KILL_WAIT_S = 60.0


def faces_written(database: Path) -> int:
    """Faces committed so far, read by a connection of the test's own (0 before the file)."""
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(database, timeout=0.2) as db:
            return int(db.execute("SELECT count(*) FROM faces").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is being created
        return 0


def enrol_command(source: Path, pool: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "service",
        "gallery",
        "enrol",
        str(source),
        "--no-progress",
        "--batch-size",
        "4",
        "--workers",
        "2",
        "--pool",
        pool,
    ]


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_a_run_killed_part_way_then_rerun_gives_exact_counts_and_no_duplicates(tmp_path, pool):
    pack = make_manifest_pack(
        tmp_path / "pack", [SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0))], embedding_size=8
    )
    source = tmp_path / "people"
    for person in range(PEOPLE):
        (source / f"p{person:03d}").mkdir(parents=True)
        for n in range(PHOTOS_EACH):
            photo = noise_photo(person * PHOTOS_EACH + n, size=480)
            (source / f"p{person:03d}" / f"{n}.png").write_bytes(photo)
    data_dir = tmp_path / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FACEVERIFY_")},
        "FACEVERIFY_PACK_DIR": str(pack),
        "FACEVERIFY_DATA_DIR": str(data_dir),
        "FACEVERIFY_ENROL_QUALITY": "off",
        "FACEVERIFY_LOG_LEVEL": "warning",
    }
    total = PEOPLE * PHOTOS_EACH
    database = data_dir / DATABASE_NAME

    # Its own session: the kill reaches the command and any worker process it started.
    first = subprocess.Popen(
        enrol_command(source, pool),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + KILL_WAIT_S
        while faces_written(database) == 0 and first.poll() is None:
            assert time.monotonic() < deadline, "the run wrote nothing in time"
            time.sleep(0.005)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed"

    store = SqliteStore.in_directory(data_dir)
    try:
        identities_before, before = store.counts()
    finally:
        store.close()
    assert 0 < before < total, f"the kill landed after {before} of {total} faces"

    second = subprocess.run(
        enrol_command(source, pool), cwd=REPO_ROOT, env=env, capture_output=True, timeout=300
    )
    assert second.returncode == 0, second.stderr.decode()
    summary = second.stdout.decode()
    assert re.search(
        rf"photos {total}, enrolled {total - before}, already there {before}, refused 0, "
        rf"identities created {PEOPLE - identities_before},",
        summary,
    ), summary

    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM identities").fetchone()[0] == PEOPLE
        assert db.execute("SELECT count(*) FROM faces").fetchone()[0] == total
        distinct = "SELECT count(DISTINCT identity_id || ':' || image_sha256) FROM faces"
        assert db.execute(distinct).fetchone()[0] == total
        per_identity = db.execute(
            "SELECT count(*) FROM identities i LEFT JOIN faces f ON f.identity_id = i.id "
            "GROUP BY i.id HAVING count(f.face_id) != ?",
            (PHOTOS_EACH,),
        ).fetchall()
        assert per_identity == []
