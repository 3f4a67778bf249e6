"""The training loop: one `Trainer` from a laptop CPU to many GPUs under torchrun.

    python -m training train --config training/configs/r50_arcface_casia.py
    torchrun --nproc_per_node=8 -m training train --config ...        # one node, 8 GPUs
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 -m training train ...

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK set), the backbone is data-parallel (DDP) and
the class centres model-parallel (`MarginSoftmaxClassifier` shards them). On CUDA the
backbone runs under autocast (float16 with a gradient scaler, or bfloat16); the margin heads
always run in float32. Checkpoints hold everything needed to continue exactly where a run
stopped: weights, optimizer, scheduler, scaler, step, position in the data and RNG states.
"""

from __future__ import annotations

import csv
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training.backbones import create_backbone
from training.checkpoint import (
    BACKBONE_FILE,
    checkpoint_dir,
    latest_checkpoint,
    prune_checkpoints,
    rank_file,
    restore_rng_state,
    rng_state,
    save_backbone,
)
from training.config import TrainConfig
from training.data import ResumableSampler, make_loader, open_dataset
from training.evaluate import TorchEmbedder, evaluate_set, load_verification_set
from training.heads import CenterLoss, create_head
from training.partial_fc import MarginSoftmaxClassifier


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank, local rank, world size and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(requested: str, local_rank: int = 0) -> torch.device:
    """`auto` (CUDA when available), `cpu` or `cuda`; under torchrun, GPU = local rank."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                "--device cuda asked for, but PyTorch sees no CUDA GPU: use --device cpu"
            )
        return torch.device("cuda", local_rank if requested == "cuda" else int(requested[5:]))
    if requested != "cpu":
        raise ValueError(f"unknown device {requested!r}: use auto, cpu or cuda")
    return torch.device("cpu")


def init_distributed(requested_device: str = "auto") -> DistributedContext:
    """Read torchrun's environment; join the process group when WORLD_SIZE > 1 (NCCL on CUDA,
    Gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(requested_device, local_rank)
    if world_size > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, local_rank, world_size, device)


@dataclass
class LrSchedule:
    """Multiplier of the base learning rate at a step: linear warm-up from 0, then a
    polynomial decay to 0, (1 − progress)^power, or steps down by `gamma` at milestones."""

    total_steps: int
    warmup_steps: int = 0
    kind: str = "poly"
    power: float = 2.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "step":
            return self.gamma ** sum(step >= milestone for milestone in self.milestones)
        span = max(self.total_steps - self.warmup_steps, 1)
        return max(0.0, 1.0 - (step - self.warmup_steps) / span) ** self.power


class RunLogger:
    """CSV logs (`train_log.csv`, `eval_log.csv`) and TensorBoard events when installed."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.enabled, self.output_dir = enabled, output_dir
        self.writer: Any = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional: CSV logs are always written
            SummaryWriter = None
        if SummaryWriter is not None:
            self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def _append(self, name: str, row: dict[str, object]) -> None:
        path = self.output_dir / name
        new = not path.exists()
        with open(path, "a", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def train(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._append("train_log.csv", row)
        if self.writer is not None:
            for key in ("loss", "lr", "samples_per_s"):
                self.writer.add_scalar(f"train/{key}", row[key], int(row["step"]))

    def evaluation(self, step: int, results: dict[str, dict[str, object]]) -> None:
        if not self.enabled:
            return
        for name, result in results.items():
            self._append(
                "eval_log.csv",
                {
                    "step": step,
                    "set": name,
                    "accuracy": result["accuracy"],
                    "accuracy_std": result["accuracy_std"],
                    "threshold_at_target_far": result["threshold_at_target_far"],
                },
            )
            if self.writer is not None:
                self.writer.add_scalar(f"eval/{name}/accuracy", result["accuracy"], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class TrainSummary:
    """What a finished run reports."""

    steps: int
    output_dir: Path
    model_path: Path | None
    losses: list[tuple[int, float]]  # (step, mean loss since the previous log row)
    evaluation: dict[str, dict[str, object]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Builds data, model, optimizer from a `TrainConfig` and runs the loop."""

    def __init__(self, config: TrainConfig, context: DistributedContext | None = None) -> None:
        self.config = config
        self.context = context or DistributedContext()
        self.device = self.context.device
        self.output_dir = config.resolved_output_dir()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 112x112 inputs: pick the fastest kernels
        seed_everything(config.seed)
        self._build_data()
        self._build_model()
        self._build_optimization()
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.logger = RunLogger(self.output_dir, enabled=self.context.is_main)
        self.eval_sets = (
            [load_verification_set(spec, config.image_size) for spec in config.eval_sets]
            if self.context.is_main
            else []
        )

    # --- construction -----------------------------------------------------------------------

    def _build_data(self) -> None:
        config, context = self.config, self.context
        self.dataset = open_dataset(
            config.data,
            image_size=config.image_size,
            num_identities=config.synthetic_identities,
            images_per_identity=config.synthetic_images_per_identity,
            seed=config.seed,
        )
        self.num_classes = config.num_classes or self.dataset.num_classes
        self.sampler = ResumableSampler(
            len(self.dataset), config.seed, context.rank, context.world_size, flip=config.flip
        )
        self.steps_per_epoch = self.sampler.per_rank // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {config.batch_size} exceeds the {self.sampler.per_rank} images per "
                "rank: lower batch_size"
            )
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.loader = make_loader(
            self.dataset,
            self.sampler,
            config.batch_size,
            config.num_workers,
            pin_memory=self.device.type == "cuda",
            seed=config.seed,
        )

    def _build_model(self) -> None:
        config, context = self.config, self.context
        self.backbone_kwargs = {"input_size": config.image_size, **config.backbone_kwargs}
        self.backbone = create_backbone(
            config.backbone, embedding_size=config.embedding_size, **self.backbone_kwargs
        ).to(self.device)
        torch.manual_seed(config.seed + context.rank)  # distinct class-centre shards per rank
        self.head = create_head(config.head, **config.head_kwargs)
        self.classifier = MarginSoftmaxClassifier(
            self.head,
            config.embedding_size,
            self.num_classes,
            config.sample_rate,
            context.rank,
            context.world_size,
        ).to(self.device)
        self.center_loss = (
            CenterLoss(
                self.num_classes, config.embedding_size, weight=config.center_loss_weight
            ).to(self.device)
            if config.center_loss_weight > 0
            else None
        )
        self.model: nn.Module = self.backbone
        if context.distributed:
            self.model = DistributedDataParallel(
                self.backbone,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )

    def _build_optimization(self) -> None:
        config = self.config
        parameters = [p for p in self.backbone.parameters() if p.requires_grad]
        parameters += list(self.classifier.parameters())
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        elif config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(
                parameters, lr=config.lr, weight_decay=config.weight_decay
            )
        else:
            raise ValueError(f"unknown optimizer {config.optimizer!r}: use sgd or adamw")
        schedule = LrSchedule(
            total_steps=self.total_steps,
            warmup_steps=round(config.warmup_epochs * self.steps_per_epoch),
            kind=config.lr_schedule,
            power=config.lr_power,
            milestones=tuple(round(e * self.steps_per_epoch) for e in config.lr_milestones),
            gamma=config.lr_gamma,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        on_cuda = self.device.type == "cuda"
        self.autocast_dtype = getattr(torch, config.amp_dtype)
        self.use_amp = config.amp and on_cuda
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.use_amp and self.autocast_dtype == torch.float16
        )

    # --- the loop ---------------------------------------------------------------------------

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from the current position on, epoch after epoch."""
        while True:
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.config.batch_size)
            yield from self.loader

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimisation step; returns the (detached) loss."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        self.model.train()
        self.classifier.train()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.use_amp):
            embeddings = self.model(images)
        loss = self.classifier(embeddings, labels)
        if self.center_loss is not None:
            loss = loss + self.center_loss(embeddings, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.backbone.parameters(), self.config.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self._advance()
        return loss.detach()

    def _advance(self) -> None:
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def fit(self) -> TrainSummary:
        """Train until `total_steps`, logging, evaluating and checkpointing on the way."""
        config = self.config
        losses: list[tuple[int, float]] = []
        evaluation: dict[str, dict[str, object]] = {}
        global_batch = config.batch_size * self.context.world_size
        progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.context.is_main,
            desc=config.name or "train",
            unit="step",
            dynamic_ncols=True,
        )
        running, count, window_start = torch.zeros((), device=self.device), 0, time.perf_counter()
        batches = self._batches()
        while self.step < self.total_steps:
            images, labels = next(batches)
            running += self.train_step(images, labels)
            count += 1
            progress.update(1)
            if self.step % config.log_every == 0 or self.step == self.total_steps:
                elapsed = time.perf_counter() - window_start
                mean_loss = float(running) / count
                row = {
                    "step": self.step,
                    "epoch": self.epoch,
                    "loss": mean_loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "samples_per_s": count * global_batch / max(elapsed, 1e-9),
                }
                losses.append((self.step, mean_loss))
                self.logger.train(row)
                progress.set_postfix(
                    loss=f"{mean_loss:.3f}",
                    lr=f"{row['lr']:.2e}",
                    sps=f"{row['samples_per_s']:.0f}",
                )
                running.zero_()
                count, window_start = 0, time.perf_counter()
            if self.eval_sets and (
                self.step % config.eval_every == 0 or self.step == self.total_steps
            ):
                evaluation = self.evaluate()
            if self.step % config.checkpoint_every == 0 or self.step == self.total_steps:
                self.save_checkpoint()
        progress.close()
        model_path = self.save_model() if self.context.is_main else None
        self.logger.close()
        return TrainSummary(self.step, self.output_dir, model_path, losses, evaluation)

    def evaluate(self) -> dict[str, dict[str, object]]:
        """Verification on the configured sets (main rank only)."""
        embedder = TorchEmbedder(self.backbone, self.device)
        results = {}
        for verification_set in self.eval_sets:
            result = evaluate_set(
                embedder,
                verification_set,
                flip=self.config.eval_flip,
                target_far=self.config.target_far,
            )
            results[result.name] = result.to_dict()
            tqdm.write(f"step {self.step}: {result.summary()}")
        self.logger.evaluation(self.step, results)
        return results

    # --- checkpoints ------------------------------------------------------------------------

    def model_metadata(self) -> dict[str, Any]:
        """What the backbone file records besides the weights."""
        return {
            "backbone": self.config.backbone,
            "backbone_kwargs": dict(self.backbone_kwargs),
            "embedding_size": self.config.embedding_size,
            "head": self.head.describe(),
            "data": {
                "source": self.config.data,
                "num_classes": self.num_classes,
                "num_images": len(self.dataset),
            },
            "step": self.step,
            "config": self.config.to_dict(),
        }

    def save_model(self) -> Path:
        return save_backbone(self.output_dir / BACKBONE_FILE, self.backbone, self.model_metadata())

    def training_state(self) -> dict[str, Any]:
        """Everything of this rank that a resume needs besides the backbone weights."""
        return {
            "world_size": self.context.world_size,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "classifier": self.classifier.state_dict(),
            "center_loss": None if self.center_loss is None else self.center_loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }

    def save_checkpoint(self) -> Path:
        """Write `checkpoints/step_N/` (atomically: a temporary folder renamed when complete)."""
        final = checkpoint_dir(self.output_dir, self.step)
        temporary = final.with_name(final.name + ".tmp")
        if self.context.is_main:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
        self._barrier()
        temporary.mkdir(parents=True, exist_ok=True)  # other nodes, if storage is not shared
        torch.save(self.training_state(), temporary / rank_file(self.context.rank))
        if self.context.is_main:
            save_backbone(temporary / BACKBONE_FILE, self.backbone, self.model_metadata())
        self._barrier()
        if self.context.is_main:
            shutil.rmtree(final, ignore_errors=True)
            temporary.rename(final)
            prune_checkpoints(self.output_dir, self.config.keep_checkpoints)
        self._barrier()
        return final

    def resume(self, path: Path | str) -> None:
        """Continue from a checkpoint folder (`latest`: the newest of this run's)."""
        folder = latest_checkpoint(self.output_dir) if str(path) == "latest" else Path(path)
        if folder is None:
            raise FileNotFoundError(f"no checkpoint under {self.output_dir} to resume from")
        # On the CPU first: RNG states must stay CPU tensors; load_state_dict moves the rest.
        state = torch.load(
            folder / rank_file(self.context.rank), map_location="cpu", weights_only=False
        )
        if state["world_size"] != self.context.world_size:
            raise ValueError(
                f"{folder} was written by {state['world_size']} ranks; resume it with the same "
                f"number of processes (the class centres are sharded per rank)"
            )
        backbone = torch.load(folder / BACKBONE_FILE, map_location="cpu", weights_only=False)
        self.backbone.load_state_dict(backbone["state_dict"])
        self.classifier.load_state_dict(state["classifier"])
        if self.center_loss is not None and state["center_loss"] is not None:
            self.center_loss.load_state_dict(state["center_loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        restore_rng_state(state["rng"])

    def _barrier(self) -> None:
        if self.context.distributed:
            torch.distributed.barrier()


def train(config: TrainConfig, device: str = "auto", resume: str | None = None) -> TrainSummary:
    """Run `config` in this process (one rank of a torchrun job, or alone)."""
    context = init_distributed(device)
    try:
        trainer = Trainer(config, context)
        if resume:
            trainer.resume(resume)
        if context.is_main:
            print(describe_plan(trainer), flush=True)
        return trainer.fit()
    finally:
        if context.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def describe_plan(trainer: Trainer) -> str:
    """One line saying what will run (printed at start)."""
    c = trainer.config
    return (
        f"{c.name}: {c.backbone} + {c.head} on {len(trainer.dataset)} images / "
        f"{trainer.num_classes} classes, {trainer.total_steps} steps of "
        f"{c.batch_size} x {trainer.context.world_size} on {trainer.device}; "
        f"{math.ceil(trainer.total_steps / trainer.steps_per_epoch)} epoch(s)"
    )
