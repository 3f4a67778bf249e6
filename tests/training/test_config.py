"""The training config is validated at the edge: a recipe, `--set` overrides and the command
line refuse a bad value or an unknown key before anything trains, with one message per bad key
naming it and what it accepts (a "did you mean" for a misspelt key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.__main__ import main
from training.config import ConfigError, TrainConfig, apply_overrides, load_config


def test_a_misspelt_lr_schedule_is_refused_naming_the_schedules() -> None:
    with pytest.raises(
        ConfigError, match=r"lr_schedule='cosine': Input should be 'poly' or 'step'"
    ):
        apply_overrides(TrainConfig(), ["lr_schedule=cosine"])


def test_a_bad_amp_dtype_is_refused_at_load_not_deep_in_the_trainer() -> None:
    with pytest.raises(
        ConfigError, match=r"amp_dtype='float8': Input should be 'float16' or 'bfloat16'"
    ):
        load_config("synthetic_smoke", ["amp_dtype=float8"])


def test_an_unknown_key_gets_a_did_you_mean() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key 'lr_shedule' \(did you mean 'lr_schedule'\?\)"
    ):
        apply_overrides(TrainConfig(), ["lr_shedule=step"])


def test_every_bad_key_gets_its_own_message() -> None:
    with pytest.raises(ConfigError) as error:
        apply_overrides(TrainConfig(), ["batch_size=0", "backbone=r51", "sample_rate=1.5"])
    message = str(error.value)
    assert "batch_size=0: Input should be greater than or equal to 1" in message
    assert "backbone='r51': unknown backbone 'r51': use one of r18, r34, r50" in message
    assert "sample_rate=1.5: Input should be less than or equal to 1" in message


def test_a_recipe_with_a_misspelt_key_is_refused_naming_the_file(tmp_path: Path) -> None:
    recipe = tmp_path / "typo.py"
    recipe.write_text(
        "from training.config import TrainConfig\n"
        "config = TrainConfig(head='arcface', lr_shedule='step')\n"
    )
    with pytest.raises(ConfigError, match=r"typo\.py: unknown key 'lr_shedule' \(did you mean"):
        load_config(recipe)


def test_overrides_are_typed_by_the_config(tmp_path: Path) -> None:
    config = apply_overrides(
        TrainConfig(), ["lr_milestones=[8, 12]", "lr=1", "num_classes=None", "ddp_bucket_cap_mb=50"]
    )
    assert config.lr_milestones == (8.0, 12.0) and isinstance(config.lr, float)
    assert config.num_classes is None and config.ddp_bucket_cap_mb == 50


def test_the_command_line_refuses_a_bad_config_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["train", "--config", "synthetic_smoke", "--output-dir", str(tmp_path),
         "--set", "lr_schedule=cosine"]
    )  # fmt: skip
    assert status == 2
    assert "lr_schedule='cosine'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained
