"""The training loop: it learns, it resumes exactly, it logs and checkpoints, and its command
line (alone and under torchrun) works."""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.__main__ import main
from training.checkpoint import list_checkpoints, load_backbone
from training.config import CONFIG_DIR, TrainConfig, apply_overrides, load_config
from training.evaluate import TorchEmbedder, evaluate_set, load_verification_set
from training.schedule import LrSchedule
from training.trainer import Trainer, describe_plan

REPO_ROOT = Path(__file__).resolve().parents[2]
# Small enough for seconds on two CPU cores: 48 px crops, IResNet-18 with 4 channels in its
# first stage, 16 separable synthetic identities.
IMAGE_SIZE = 48


def tiny_config(tmp_path: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        name="tiny",
        backbone="r18",
        backbone_kwargs={"width": 4},
        embedding_size=32,
        head="arcface",
        head_kwargs={"s": 16.0, "m": 0.3},
        data="synthetic",
        image_size=IMAGE_SIZE,
        synthetic_identities=16,
        synthetic_images_per_identity=8,
        num_workers=0,
        batch_size=32,
        epochs=100,
        max_steps=20,
        lr=0.1,
        log_every=5,
        checkpoint_every=1000,
        output_dir=str(tmp_path / "run"),
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("head", "head_kwargs"),
    [("arcface", {"s": 16.0, "m": 0.3}), ("cosface", {"s": 16.0, "m": 0.2})],
)
def test_training_lowers_the_loss_and_beats_the_untrained_network_on_unseen_identities(
    tmp_path: Path, head: str, head_kwargs: dict[str, float]
) -> None:
    trainer = Trainer(tiny_config(tmp_path, head=head, head_kwargs=head_kwargs))
    unseen = load_verification_set("synthetic", IMAGE_SIZE)  # identities not in training
    before = evaluate_set(TorchEmbedder(trainer.backbone), unseen).accuracy
    summary = trainer.fit()
    after = evaluate_set(TorchEmbedder(trainer.backbone), unseen).accuracy
    first_loss, last_loss = summary.losses[0][1], summary.losses[-1][1]
    assert last_loss < 0.5 * first_loss
    assert after >= 0.8 and after >= before + 0.15, (before, after)


@pytest.mark.slow
def test_lsoftmax_training_raises_held_out_accuracy(tmp_path: Path) -> None:
    # λ annealed from 100 to about 0.2 within the run, so the margin (m = 2) acts in its second
    # half; the loss is not compared, as the margin makes later losses larger.
    config = tiny_config(
        tmp_path,
        head="lsoftmax",
        head_kwargs={"m": 2, "base": 100.0, "gamma": 2.0, "power": 2.0, "lambda_min": 0.0},
        max_steps=12,
        log_every=4,
    )
    trainer = Trainer(config)
    unseen = load_verification_set("synthetic", IMAGE_SIZE)
    before = evaluate_set(TorchEmbedder(trainer.backbone), unseen).accuracy
    summary = trainer.fit()
    after = evaluate_set(TorchEmbedder(trainer.backbone), unseen).accuracy
    assert all(math.isfinite(loss) for _, loss in summary.losses)
    assert after >= before + 0.1, (before, after)
    assert trainer.head.current_lambda() < 1.0


def micro_batch_reference_gradients(
    trainer: Trainer, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """Gradients of the mean loss over micro-batches, computed on copies of the models."""
    backbone = copy.deepcopy(trainer.backbone).train()
    classifier = copy.deepcopy(trainer.classifier).train()
    for images, labels in batches:
        (classifier(backbone(images), labels) / len(batches)).backward()
    parameters = [p for p in backbone.parameters() if p.requires_grad]
    return [p.grad.clone() for p in parameters + list(classifier.parameters())]


def test_gradient_accumulation_takes_one_step_with_the_mean_micro_batch_gradient(
    tmp_path: Path,
) -> None:
    config = tiny_config(tmp_path, batch_size=16, gradient_accumulation=2, grad_clip_norm=None)
    trainer = Trainer(config)
    assert trainer.global_batch == 32 and trainer.steps_per_epoch == 128 // 32
    batches = next(trainer._step_batches())
    assert len(batches) == 2 and not torch.equal(batches[0][1], batches[1][1])
    expected = micro_batch_reference_gradients(trainer, batches)
    captured: list[list[torch.Tensor]] = []
    step = trainer.optimizer.step

    def capturing_step(*args: object, **kwargs: object) -> object:
        captured.append(
            [p.grad.clone() for g in trainer.optimizer.param_groups for p in g["params"]]
        )
        return step(*args, **kwargs)

    trainer.optimizer.step = capturing_step  # type: ignore[method-assign]
    trainer.train_step(batches)
    assert len(captured) == 1 and trainer.step == 1
    for actual, reference in zip(captured[0], expected, strict=True):
        assert torch.allclose(actual, reference, rtol=1e-4, atol=1e-6)
    assert trainer.batch_in_epoch == 1


def test_lr_scales_linearly_with_the_global_batch_or_warns(tmp_path: Path) -> None:
    scaled = Trainer(tiny_config(tmp_path, batch_size=16, recipe_global_batch=64, lr=0.1))
    assert scaled.lr == pytest.approx(0.025)
    assert scaled.optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.025)
    assert "0.1 x 16/64 = 0.025" in describe_plan(scaled)
    matched = Trainer(
        tiny_config(tmp_path, batch_size=16, gradient_accumulation=4, recipe_global_batch=64)
    )
    assert matched.lr == pytest.approx(0.1) and matched.lr_note is None
    warned = Trainer(
        tiny_config(tmp_path, batch_size=16, recipe_global_batch=64, lr_scaling="warn")
    )
    assert warned.lr == pytest.approx(0.1)
    assert warned.lr_note is not None and warned.lr_note.startswith("WARNING: global batch 16")


def test_num_classes_that_disagree_with_the_data_stop_the_run_before_training(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="num_classes=10 in the config, but the training data"):
        Trainer(tiny_config(tmp_path, num_classes=10))  # the synthetic set has 16


def test_resume_gives_the_same_next_losses_as_an_uninterrupted_run(tmp_path: Path) -> None:
    # Partial FC sampling (global RNG), flips (data order) and CurricularFace's t (head
    # state) must all be restored for the losses to match.
    config = tiny_config(
        tmp_path,
        head="curricularface",
        head_kwargs={"s": 16.0, "m": 0.3},
        sample_rate=0.5,
        max_steps=6,
        log_every=1,
        checkpoint_every=3,
        batch_size=24,  # 128 images: an epoch of 5 steps, so the resume crosses an epoch
    )
    uninterrupted = Trainer(config).fit()
    resumed_trainer = Trainer(dataclasses.replace(config, output_dir=str(tmp_path / "again")))
    resumed_trainer.resume(Path(config.output_dir) / "checkpoints" / "step_00000003")
    assert (resumed_trainer.step, resumed_trainer.epoch, resumed_trainer.batch_in_epoch) == (
        3,
        0,
        3,
    )
    resumed = resumed_trainer.fit()
    expected = [loss for step, loss in uninterrupted.losses if step > 3]
    assert [step for step, _ in resumed.losses] == [4, 5, 6]
    assert [loss for _, loss in resumed.losses] == pytest.approx(expected, rel=1e-6)


def test_training_writes_logs_checkpoints_and_a_loadable_model(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path,
        max_steps=4,
        log_every=2,
        checkpoint_every=1,
        keep_checkpoints=2,
        eval_sets=("synthetic",),
        eval_every=4,
        center_loss_weight=0.01,
    )
    summary = Trainer(config).fit()
    run = Path(config.output_dir)
    with open(run / "train_log.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["step"]) for row in rows] == [2, 4]
    assert set(rows[0]) == {
        "step", "epoch", "loss", "lr", "samples_per_s", "skipped_steps", "loss_scale"
    }  # fmt: skip
    assert float(rows[0]["samples_per_s"]) > 0
    assert (run / "eval_log.csv").read_text().startswith("step,set,accuracy")
    assert summary.evaluation["synthetic-1000"]["accuracy"] > 0.5
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003", "step_00000004"]
    if (run / "tensorboard").exists():  # tensorboard is optional
        assert any((run / "tensorboard").iterdir())
    backbone, metadata = load_backbone(run)
    assert metadata["head"] == {"head": "arcface", "s": 16.0, "m": 0.3, "easy_margin": False}
    assert metadata["data"]["num_classes"] == 16
    assert backbone(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)).shape == (2, 32)


def test_lr_schedule_warms_up_then_decays_polynomially_or_in_steps() -> None:
    poly = LrSchedule(total_steps=110, warmup_steps=10, power=2.0)
    assert poly(0) == pytest.approx(0.1) and poly(9) == pytest.approx(1.0)
    assert poly(10) == pytest.approx(1.0)
    assert poly(60) == pytest.approx(0.25)  # (1 − 50/100)²
    assert poly(110) == 0.0
    step = LrSchedule(total_steps=100, kind="step", milestones=(30, 60), gamma=0.1)
    assert [step(29), step(30), step(60)] == pytest.approx([1.0, 0.1, 0.01])


def test_config_overrides_are_parsed_and_unknown_keys_refused() -> None:
    config = apply_overrides(TrainConfig(), ["max_steps=7", "data=/tmp/x", "eval_sets=('a.bin',)"])
    assert (config.max_steps, config.data, config.eval_sets) == (7, "/tmp/x", ("a.bin",))
    with pytest.raises(ValueError, match=r"unknown key 'learning_rate'"):
        apply_overrides(TrainConfig(), ["learning_rate=0.1"])


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.py")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_names_known_parts(path: Path) -> None:
    from training.backbones import BACKBONES
    from training.heads import HEADS

    config = load_config(path)
    assert config.name == path.stem
    assert config.backbone in BACKBONES and config.head in HEADS


def test_command_line_trains_and_resumes_the_smoke_config(tmp_path: Path) -> None:
    common = [
        "--config", "synthetic_smoke", "--output-dir", str(tmp_path),
        "--set", f"image_size={IMAGE_SIZE}", "--set", "eval_sets=()",
        "--set", "checkpoint_every=2",
    ]  # fmt: skip
    assert main(["train", *common, "--set", "max_steps=2"]) == 0
    assert main(["train", *common, "--set", "max_steps=4", "--resume", "latest"]) == 0
    with open(tmp_path / "train_log.csv") as stream:
        steps = [int(row["step"]) for row in csv.DictReader(stream)]
    assert steps[-1] == 4
    assert (tmp_path / "model.pt").is_file()


def test_command_line_reports_an_unknown_config_in_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--config", "no_such_recipe"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: config no_such_recipe not found")
    assert "synthetic_smoke" in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_asking_for_cuda_without_a_gpu_says_to_use_the_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(
        ["train", "--config", "synthetic_smoke", "--device", "cuda", "--output-dir", str(tmp_path)]
    )
    assert code == 2
    assert "use --device cpu" in capsys.readouterr().err


def test_torchrun_trains_with_two_processes(tmp_path: Path) -> None:
    """DDP backbone + model-parallel class centres over Gloo, as `torchrun` launches them."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "training", "train", "--config", "synthetic_smoke", "--device", "cpu",
        "--output-dir", str(tmp_path), "--set", "image_size=32", "--set", "max_steps=3",
        "--set", "batch_size=8", "--set", "eval_sets=()", "--set", "sample_rate=0.5",
        "--set", "gradient_accumulation=2",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    finished = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=240
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    checkpoint = list_checkpoints(tmp_path)[-1]
    assert sorted(p.name for p in checkpoint.iterdir()) == ["model.pt", "rank_0.pt", "rank_1.pt"]
    shards = [torch.load(checkpoint / f"rank_{r}.pt", weights_only=False) for r in range(2)]
    assert [s["classifier"]["weight"].shape[0] for s in shards] == [8, 8]  # 16 classes split
    assert (tmp_path / "model.pt").is_file()
