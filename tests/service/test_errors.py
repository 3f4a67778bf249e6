"""The error table: every stable code is documented in the README with the status it answers."""

from __future__ import annotations

from pathlib import Path

from service.api.errors import HTTP_STATUS
from service.errors import ErrorCode

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_error_table_lists_every_code_with_its_status():
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[1].isdigit():
            rows[cells[0].strip("`")] = int(cells[1])
    documented = {code: status for code, status in rows.items() if code in set(ErrorCode)}
    assert documented == {code.value: status for code, status in HTTP_STATUS.items()}
    assert set(HTTP_STATUS) == set(ErrorCode)
