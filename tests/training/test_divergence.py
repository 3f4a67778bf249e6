"""A run cannot go wrong silently: non-finite steps are skipped without trace in the weights,
logged, and too many in a row stop the run or roll it back; the last finite checkpoint is
never pruned."""

from __future__ import annotations

import copy
import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from training.checkpoint import (
    NONFINITE_MARKER,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    rank_file,
)
from training.config import TrainConfig
from training.divergence import DivergenceGuard, StepHealth, TrainingDiverged
from training.schedule import make_grad_scaler
from training.trainer import Trainer


def tiny_config(tmp_path: Path, **changes: object) -> TrainConfig:
    """Seconds on a CPU: 32 px crops, 8 synthetic identities, a 4-channel IResNet-18."""
    base = TrainConfig(
        name="guard",
        backbone="r18",
        backbone_kwargs={"width": 4},
        embedding_size=16,
        head="arcface",
        head_kwargs={"s": 16.0, "m": 0.3},
        data="synthetic",
        image_size=32,
        synthetic_identities=8,
        synthetic_images_per_identity=4,
        num_workers=0,
        batch_size=8,
        epochs=100,
        max_steps=4,
        lr=0.05,
        log_every=1,
        checkpoint_every=1000,
        output_dir=str(tmp_path / "run"),
    )
    return dataclasses.replace(base, **changes)


def poison(trainer: Trainer, bad_steps: set[int]) -> None:
    """Feed NaN images in the given (1-based) steps."""
    original = trainer._batches

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in original():
            if trainer.step + 1 in bad_steps:
                images = torch.full_like(images, float("nan"))
            yield images, labels

    trainer._batches = batches  # type: ignore[method-assign]


def state(trainer: Trainer) -> dict[str, torch.Tensor]:
    tensors = {f"backbone.{k}": v for k, v in trainer.backbone.state_dict().items()}
    tensors |= {f"classifier.{k}": v for k, v in trainer.classifier.state_dict().items()}
    return copy.deepcopy(tensors)


def test_a_nan_step_changes_no_weight_and_no_batchnorm_statistic(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tmp_path))
    batches = trainer._step_batches()
    trainer.train_step(next(batches))
    before = state(trainer)
    momentum = copy.deepcopy(trainer.optimizer.state_dict()["state"])
    images, labels = next(batches)[0]
    loss, health = trainer.train_step([(torch.full_like(images, float("nan")), labels)])
    assert not health.loss_finite and not health.finite and torch.isnan(loss)
    after = state(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before), "a NaN step changed the state"
    assert all(
        torch.equal(momentum[i]["momentum_buffer"], v["momentum_buffer"])
        for i, v in trainer.optimizer.state_dict()["state"].items()
    )
    _, health = trainer.train_step(next(batches))
    assert health.finite  # and training goes on from there


def test_nan_steps_are_logged_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tiny_config(tmp_path, max_steps=4, max_bad_steps=3)
    trainer = Trainer(config)
    poison(trainer, {2, 3})
    summary = trainer.fit()
    assert summary.steps == 4 and (Path(config.output_dir) / "model.pt").is_file()
    out = capsys.readouterr().out
    assert "step 2: non-finite loss (loss nan); update skipped (1 in a row, limit 3)" in out
    assert "step 3: non-finite loss (loss nan); update skipped (2 in a row, limit 3)" in out
    with open(Path(config.output_dir) / "train_log.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["skipped_steps"]) for row in rows] == [0, 1, 1, 0]
    assert rows[1]["loss"] == "nan" and float(rows[3]["loss"]) > 0
    assert trainer.guard.bad_total == 2


def test_too_many_bad_steps_in_a_row_stop_the_run_naming_the_last_finite_checkpoint(
    tmp_path: Path,
) -> None:
    config = tiny_config(
        tmp_path, max_steps=10, max_bad_steps=2, checkpoint_every=1, keep_checkpoints=1
    )
    trainer = Trainer(config)
    poison(trainer, set(range(3, 11)))
    with pytest.raises(TrainingDiverged, match="2 steps in a row") as error:
        trainer.fit()
    assert trainer.step == 4  # steps 3 and 4 were bad
    assert "step_00000003" in str(error.value)  # skipped steps leave the state finite
    assert not (Path(config.output_dir) / "model.pt").exists()


def test_rollback_reloads_the_weights_of_the_last_finite_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tiny_config(
        tmp_path, max_steps=6, max_bad_steps=2, checkpoint_every=3, on_divergence="rollback"
    )
    trainer = Trainer(config)
    poison(trainer, {5, 6})  # checkpoint at 3, step 4 moves the weights, steps 5-6 diverge
    summary = trainer.fit()
    assert summary.steps == 6 and trainer.guard.rollbacks == 1
    assert "step 6: rolled back to the weights of" in capsys.readouterr().out
    saved = torch.load(checkpoint_dir(Path(config.output_dir), 3) / "model.pt", weights_only=False)
    final = torch.load(Path(config.output_dir) / "model.pt", weights_only=False)
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in final["state_dict"].items())


def _fake_checkpoint(output_dir: Path, step: int, finite: bool) -> Path:
    folder = checkpoint_dir(output_dir, step)
    folder.mkdir(parents=True)
    (folder / rank_file(0)).write_bytes(b"")
    if not finite:
        (folder / NONFINITE_MARKER).write_text("NaN\n")
    return folder


def test_pruning_never_deletes_the_last_finite_checkpoint(tmp_path: Path) -> None:
    for step, finite in ((1, True), (2, True), (3, False), (4, False)):
        _fake_checkpoint(tmp_path, step, finite)
    prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004"]
    assert latest_checkpoint(tmp_path, finite_only=True).name == "step_00000002"
    assert latest_checkpoint(tmp_path).name == "step_00000004"


def test_a_checkpoint_of_nan_weights_is_marked_and_not_resumed_from(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, max_steps=1, checkpoint_every=1)
    trainer = Trainer(config)
    trainer.fit()
    with torch.no_grad():
        trainer.backbone.features.running_mean.fill_(float("nan"))
    trainer.step = 2
    marked = trainer.save_checkpoint()
    assert (marked / NONFINITE_MARKER).is_file()
    resumed = Trainer(config)
    resumed.resume("latest")
    assert resumed.step == 1  # the finite one
    with pytest.raises(TrainingDiverged, match="NaN/inf"):
        trainer.save_model()


def test_float16_overflow_is_skipped_lowers_the_scale_and_is_logged(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, max_steps=2)
    trainer = Trainer(config)
    # The trainer's scaler on the CPU, started at a scale that overflows the gradients (the
    # loss stays finite), as float16 gradients overflow on a GPU.
    trainer.scaler = make_grad_scaler("cpu", enabled=True, init_scale=1e38)
    assert trainer.scaler.get_growth_interval() == 100  # arcface_torch's, not PyTorch's 2000
    batches = trainer._step_batches()
    before = state(trainer)
    loss, health = trainer.train_step(next(batches))
    assert health == StepHealth(loss_finite=True, gradients_finite=False)
    assert torch.isfinite(loss)
    assert trainer.scaler.get_scale() == pytest.approx(0.5e38)
    after = state(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)
    trainer.scaler = make_grad_scaler("cpu", enabled=True, init_scale=1e38)
    summary = trainer.fit()
    with open(Path(config.output_dir) / "train_log.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert int(rows[-1]["skipped_steps"]) == 1 and float(rows[-1]["loss_scale"]) < 1e38
    assert summary.steps == 2


def test_guard_counts_bad_steps_in_a_row_only() -> None:
    guard = DivergenceGuard(max_bad_steps=2)
    bad, good = StepHealth(False, False), StepHealth(True, True)
    assert [guard.record(h) for h in (bad, good, bad, bad)] == [False, False, False, True]
    assert guard.bad_total == 3
    with pytest.raises(ValueError, match="max_bad_steps"):
        DivergenceGuard(max_bad_steps=0)
