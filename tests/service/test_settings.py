"""Settings: one env prefix, and the README documents every variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_env_vars_with_prefix_are_read(monkeypatch, tmp_path):
    monkeypatch.setenv("FACEVERIFY_PACK_DIR", str(tmp_path))
    monkeypatch.setenv("FACEVERIFY_THRESHOLD", "0.33")
    monkeypatch.setenv("FACEVERIFY_DET_SIZE", "320")
    settings = Settings(_env_file=None)
    assert settings.pack_dir == tmp_path
    assert settings.threshold == 0.33 and settings.det_size == 320


def test_readme_table_lists_every_setting_and_no_other():
    text = README.read_text(encoding="utf-8")
    documented = {
        line.split("`")[1] for line in text.splitlines() if line.startswith("| `FACEVERIFY_")
    }
    expected = {f"FACEVERIFY_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_a_busy_timeout_not_shorter_than_the_gallery_timeout_is_refused() -> None:
    defaults = Settings(_env_file=None)
    assert defaults.gallery_busy_timeout_s < defaults.gallery_timeout_s
    with pytest.raises(ValidationError, match="must be shorter than FACEVERIFY_GALLERY_TIMEOUT_S"):
        Settings(_env_file=None, gallery_busy_timeout_s=5, gallery_timeout_s=5)
