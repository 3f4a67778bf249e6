"""bench/faults.py, the campaign's table, runs against this checkout and reports what the suite
asserts: two of its quick rows (an aborted upload, the master killed under two workers) are run
end to end, as an operator runs it, and their cells are read back from the printed table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the campaign reads /proc")
def test_campaign_prints_one_table_row_per_scenario_with_this_checkouts_answers():
    finished = subprocess.run(
        [sys.executable, "bench/faults.py", "--only", "aborted_upload,master_killed"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    header = "| fault | answer | time to answer | time to recover | lost acknowledged writes |"
    rows = lines[lines.index(header) + 2 :]
    assert len(rows) == 2, finished.stdout
    aborted, killed = (row.split(" | ") for row in rows)
    assert aborted[1] == "counted as client_disconnected × 3", rows
    assert killed[1] == "orphans left: no; port free: yes", rows
    assert killed[2].endswith(" s") and not killed[2].startswith("none"), rows
