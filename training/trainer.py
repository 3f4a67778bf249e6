"""The training loop: one `Trainer` from a laptop CPU to many GPUs under torchrun.

    python -m training train --config training/configs/r50_arcface_casia.py
    torchrun --nproc_per_node=8 -m training train --config ...        # one node, 8 GPUs
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 -m training train ...

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK set), the backbone is data-parallel (DDP) and
the class centres model-parallel (`MarginSoftmaxClassifier` shards them). On CUDA the
backbone runs under autocast (float16 with a gradient scaler, or bfloat16) except its output
FC and BatchNorm1d, which run in float32 as in arcface_torch; the margin heads always run in
float32. A step may sum several micro-batches (`gradient_accumulation`); steps with a
non-finite loss or gradients are skipped, and too many in a row stop the run (or roll it back,
see `training.divergence`). Checkpoints hold everything needed to continue exactly where a run
stopped: weights, optimizer, scheduler, scaler, step, position in the data and RNG states.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.backbones import create_backbone
from training.checkpoint import (
    BACKBONE_FILE,
    NONFINITE_MARKER,
    checkpoint_dir,
    latest_checkpoint,
    prune_checkpoints,
    rank_file,
    restore_rng_state,
    rng_state,
    save_backbone,
)
from training.config import TrainConfig
from training.data import ResumableSampler, check_num_classes, make_loader, open_dataset
from training.distributed import (
    DdpCommunication,
    DistributedContext,
    data_parallel,
    init_distributed,
)
from training.divergence import (
    DivergenceGuard,
    StepHealth,
    TrainingDiverged,
    all_finite,
    step_health,
)
from training.evaluate import TorchEmbedder, evaluate_set, load_verification_set
from training.heads import CenterLoss, create_head
from training.partial_fc import MarginSoftmaxClassifier
from training.runlog import RunLogger
from training.schedule import (
    GRAD_SCALER_BACKOFF,
    LrSchedule,
    make_grad_scaler,
    scale_learning_rate,
)


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
        self.num_classes = check_num_classes(self.dataset, config.num_classes, str(config.data))
        self.sampler = ResumableSampler(
            len(self.dataset), config.seed, context.rank, context.world_size, flip=config.flip
        )
        self.samples_per_step = config.batch_size * config.gradient_accumulation  # per rank
        self.steps_per_epoch = self.sampler.per_rank // self.samples_per_step
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {config.batch_size} x gradient_accumulation "
                f"{config.gradient_accumulation} exceeds the {self.sampler.per_rank} images per "
                "rank: lower them"
            )
        self.total_steps = config.max_steps or round(config.epochs * self.steps_per_epoch)
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
            communication = DdpCommunication(
                fp16_compress=config.ddp_fp16_compress,
                bucket_cap_mb=config.ddp_bucket_cap_mb,
                static_graph=config.ddp_static_graph,
            )
            self.model = data_parallel(self.backbone, context, communication)

    def _build_optimization(self) -> None:
        config = self.config
        parameters = [p for p in self.backbone.parameters() if p.requires_grad]
        parameters += list(self.classifier.parameters())
        self.global_batch = self.samples_per_step * self.context.world_size
        self.lr, self.lr_note = scale_learning_rate(
            config.lr, self.global_batch, config.recipe_global_batch, config.lr_scaling
        )
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                parameters, lr=self.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        elif config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(
                parameters, lr=self.lr, weight_decay=config.weight_decay
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
        self.scaler = make_grad_scaler(
            self.device.type, enabled=self.use_amp and self.autocast_dtype == torch.float16
        )
        self.guard = DivergenceGuard(config.max_bad_steps)
        self._buffer_snapshot: list[torch.Tensor] = []
        self._synchronised_once = False  # see train_step

    # --- the loop ---------------------------------------------------------------------------

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Micro-batches from the current position on, epoch after epoch."""
        while True:
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.samples_per_step)
            yield from self.loader

    def _step_batches(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """The micro-batches of each optimizer step (`gradient_accumulation` of them)."""
        batches = self._batches()
        while True:
            yield [next(batches) for _ in range(self.config.gradient_accumulation)]

    def _gradient_norms(self) -> list[torch.Tensor]:
        """Norms of the backbone's and the class centres' gradients (unscaled); clips the
        backbone's to `grad_clip_norm` on the way, as arcface_torch does."""
        backbone = [p for p in self.backbone.parameters() if p.grad is not None]
        backbone_norm = nn.utils.get_total_norm([p.grad for p in backbone])
        if self.config.grad_clip_norm:
            nn.utils.clip_grads_with_norm_(backbone, self.config.grad_clip_norm, backbone_norm)
        centres = [p.grad for p in self.classifier.parameters() if p.grad is not None]
        return [backbone_norm, nn.utils.get_total_norm(centres)]

    def _buffers(self) -> list[torch.Tensor]:
        """Every buffer a forward pass changes: BatchNorm statistics, head and centre state."""
        modules: list[nn.Module] = [self.backbone, self.classifier]
        if self.center_loss is not None:
            modules.append(self.center_loss)
        return [buffer for module in modules for buffer in module.buffers()]

    def train_step(
        self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, StepHealth]:
        """One optimisation step over one or more micro-batches (their gradients averaged);
        returns the (detached) mean loss and whether the step was finite. A non-finite step
        changes nothing: no update, and the buffers its forward passes moved (BatchNorm
        running statistics would otherwise keep a NaN forever) are restored."""
        self.model.train()
        self.classifier.train()
        buffers = self._buffers()
        if len(buffers) != len(self._buffer_snapshot):
            self._buffer_snapshot = [buffer.detach().clone() for buffer in buffers]
        else:
            torch._foreach_copy_(self._buffer_snapshot, buffers)  # one fused copy
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for index, (images, labels) in enumerate(batches):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            # DDP all-reduces the backbone's gradients once per step, on the last micro-batch;
            # with static_graph also on the process's first backward, because DDP must record
            # one synchronised iteration before any no_sync (the extra all-reduce averages
            # gradients that are then equal on every rank, which leaves them as they are).
            first = self.config.ddp_static_graph and not self._synchronised_once
            synchronise = index == len(batches) - 1 or first
            no_sync = getattr(self.model, "no_sync", None)
            sync = contextlib.nullcontext() if synchronise or no_sync is None else no_sync()
            with sync:
                with torch.autocast(
                    self.device.type, dtype=self.autocast_dtype, enabled=self.use_amp
                ):
                    embeddings = self.model(images)
                loss = self.classifier(embeddings, labels)
                if self.center_loss is not None:
                    loss = loss + self.center_loss(embeddings, labels)
                self.scaler.scale(loss / len(batches)).backward()
            total += loss.detach()
            self._synchronised_once = True
        loss = total / len(batches)
        self.scaler.unscale_(self.optimizer)
        health = step_health(loss, self._gradient_norms(), self.context.distributed)
        if health.finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                torch._foreach_copy_(buffers, self._buffer_snapshot)
            # A float16 overflow (finite loss) lowers the scale as the scaler would itself.
            scale = self.scaler.get_scale()
            overflow = health.loss_finite and self.scaler.is_enabled()
            self.scaler.update(scale * GRAD_SCALER_BACKOFF if overflow else scale)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": skipped
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self._advance()
        return loss, health

    def _advance(self) -> None:
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _handle_bad_step(self, loss: torch.Tensor, health: StepHealth) -> None:
        """Log a skipped step; stop or roll back after `max_bad_steps` of them in a row."""
        guard = self.guard
        diverged = guard.record(health)
        lone_overflow = health.loss_finite and self.scaler.is_enabled() and guard.bad_in_a_row == 1
        if self.context.is_main and not lone_overflow:
            tqdm.write(
                f"step {self.step}: {health.describe()} (loss {float(loss):.4g}); update skipped "
                f"({guard.bad_in_a_row} in a row, limit {self.config.max_bad_steps})"
            )
        if not diverged:
            return
        last_good = latest_checkpoint(self.output_dir, finite_only=True)
        roll_back = self.config.on_divergence == "rollback" and guard.may_roll_back
        if roll_back and last_good is not None:
            self._load_checkpoint(last_good, restore_position=False)
            guard.rolled_back()
            if self.context.is_main:
                tqdm.write(
                    f"step {self.step}: rolled back to the weights of {last_good} "
                    f"(rollback {guard.rollbacks}); training goes on with the next batches"
                )
            return
        where = f"last finite checkpoint: {last_good}" if last_good else "no finite checkpoint"
        raise TrainingDiverged(
            f"training diverged: {guard.bad_in_a_row} steps in a row with a non-finite loss or "
            f"gradients (up to step {self.step}); {where}. Resume from it with a lower lr "
            f"(--resume latest takes it), or raise max_bad_steps"
        )

    def fit(self) -> TrainSummary:
        """Train until `total_steps`, logging, evaluating and checkpointing on the way."""
        config = self.config
        losses: list[tuple[int, float]] = []
        evaluation: dict[str, dict[str, object]] = {}
        progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.context.is_main,
            desc=config.name or "train",
            unit="step",
            dynamic_ncols=True,
        )
        running, count, window_start = torch.zeros((), device=self.device), 0, time.perf_counter()
        steps_in_window, skipped = 0, 0
        batches = self._step_batches()
        while self.step < self.total_steps:
            loss, health = self.train_step(next(batches))
            steps_in_window += 1
            if health.finite:
                running += loss
                count += 1
            else:
                skipped += 1
                self._handle_bad_step(loss, health)
            progress.update(1)
            if self.step % config.log_every == 0 or self.step == self.total_steps:
                elapsed = time.perf_counter() - window_start
                mean_loss = float(running) / count if count else math.nan
                row = {
                    "step": self.step,
                    "epoch": self.epoch,
                    "loss": mean_loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "samples_per_s": steps_in_window * self.global_batch / max(elapsed, 1e-9),
                    "skipped_steps": skipped,
                    "loss_scale": self.scaler.get_scale() if self.scaler.is_enabled() else 1.0,
                }
                losses.append((self.step, mean_loss))
                self.logger.train(row)
                progress.set_postfix(
                    loss=f"{mean_loss:.3f}",
                    lr=f"{row['lr']:.2e}",
                    sps=f"{row['samples_per_s']:.0f}",
                    skipped=self.guard.bad_total,
                )
                running.zero_()
                count, steps_in_window, skipped = 0, 0, 0
                window_start = time.perf_counter()
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
                protocol=self.config.eval_protocol,
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

    def state_is_finite(self) -> bool:
        """Whether weights and buffers (BatchNorm statistics, head state) hold no NaN/inf."""
        tensors = list(self.backbone.state_dict().values())
        tensors += list(self.classifier.state_dict().values())
        return all_finite(tensors, self.context.distributed)

    def save_model(self) -> Path:
        if not self.backbone_is_finite():
            raise TrainingDiverged(
                f"the final backbone holds NaN/inf values; not writing {BACKBONE_FILE}. The "
                f"last finite checkpoint is {latest_checkpoint(self.output_dir, finite_only=True)}"
            )
        return save_backbone(self.output_dir / BACKBONE_FILE, self.backbone, self.model_metadata())

    def backbone_is_finite(self) -> bool:
        return all_finite(list(self.backbone.state_dict().values()), distributed=False)

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
        finite = self.state_is_finite()
        if self.context.is_main:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
        self._barrier()
        temporary.mkdir(parents=True, exist_ok=True)  # other nodes, if storage is not shared
        torch.save(self.training_state(), temporary / rank_file(self.context.rank))
        if self.context.is_main:
            save_backbone(temporary / BACKBONE_FILE, self.backbone, self.model_metadata())
            if not finite:
                (temporary / NONFINITE_MARKER).write_text(
                    f"step {self.step}: weights or buffers hold NaN/inf; do not resume from here\n"
                )
                tqdm.write(f"step {self.step}: checkpoint holds NaN/inf values (marked)")
        self._barrier()
        if self.context.is_main:
            shutil.rmtree(final, ignore_errors=True)
            temporary.rename(final)
            prune_checkpoints(self.output_dir, self.config.keep_checkpoints)
        self._barrier()
        return final

    def resume(self, path: Path | str) -> None:
        """Continue from a checkpoint folder (`latest`: the newest finite one of this run)."""
        folder = (
            latest_checkpoint(self.output_dir, finite_only=True)
            if str(path) == "latest"
            else Path(path)
        )
        if folder is None:
            raise FileNotFoundError(f"no finite checkpoint under {self.output_dir} to resume from")
        self._load_checkpoint(folder, restore_position=True)

    def _load_checkpoint(self, folder: Path, restore_position: bool) -> None:
        """Weights, class centres, head state, optimizer and scaler from `folder`; with
        `restore_position` also the step, schedule, data position and RNG states (a resume),
        without it they go on from here (a rollback after divergence)."""
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
        self.scaler.load_state_dict(state["scaler"])
        if not restore_position:
            for group in self.optimizer.param_groups:  # keep the schedule's current lr
                group["lr"] = self.scheduler.get_last_lr()[0]
            return
        self.scheduler.load_state_dict(state["scheduler"])
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
    plan = (
        f"{c.name}: {c.backbone} + {c.head} on {len(trainer.dataset)} images / "
        f"{trainer.num_classes} classes, {trainer.total_steps} steps of "
        f"{c.batch_size} x {trainer.context.world_size} rank(s) x {c.gradient_accumulation} "
        f"micro-batch(es) = {trainer.global_batch} on {trainer.device}, lr {trainer.lr:g}; "
        f"{math.ceil(trainer.total_steps / trainer.steps_per_epoch)} epoch(s)"
    )
    return plan if trainer.lr_note is None else f"{plan}\n{trainer.lr_note}"
