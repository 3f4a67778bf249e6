"""How the learning rate and the float16 loss scale move during a run.

`LrSchedule` is the multiplier of the base learning rate at each optimizer step (warm-up, then
polynomial decay or steps); `scale_learning_rate` adapts a recipe's lr to this run's global
batch; `make_grad_scaler` is the float16 loss scaler with arcface_torch's policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# GradScaler: double the float16 loss scale after 100 overflow-free steps (arcface_torch
# train_v2.py: `GradScaler(growth_interval=100)`; PyTorch's default is 2000), halve it on an
# overflow (PyTorch's default backoff, also arcface_torch's).
GRAD_SCALER_GROWTH_INTERVAL = 100
GRAD_SCALER_BACKOFF = 0.5


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


def make_grad_scaler(
    device_type: str, enabled: bool, init_scale: float = 2.0**16
) -> torch.amp.GradScaler:
    """The float16 loss scaler of arcface_torch: growth every 100 steps, backoff 0.5."""
    return torch.amp.GradScaler(
        device_type,
        init_scale=init_scale,
        growth_interval=GRAD_SCALER_GROWTH_INTERVAL,
        backoff_factor=GRAD_SCALER_BACKOFF,
        enabled=enabled,
    )


def scale_learning_rate(
    lr: float, global_batch: int, recipe_global_batch: int | None, mode: str
) -> tuple[float, str | None]:
    """The learning rate for this run's global batch, and a note to print when it differs
    from the recipe's: linear scaling (lr × global / recipe, Goyal et al. 2017) or a warning."""
    if recipe_global_batch is None or recipe_global_batch == global_batch:
        return lr, None
    if mode == "linear":
        scaled = lr * global_batch / recipe_global_batch
        return scaled, (
            f"lr scaled linearly with the global batch: {lr:g} x {global_batch}/"
            f"{recipe_global_batch} = {scaled:g} (lr_scaling='warn' keeps {lr:g})"
        )
    if mode == "warn":
        return lr, (
            f"WARNING: global batch {global_batch} differs from the recipe's "
            f"{recipe_global_batch}, and lr {lr:g} is kept (lr_scaling='warn'); use "
            f"gradient_accumulation or more processes to match it, or lr_scaling='linear'"
        )
    raise ValueError(f"unknown lr_scaling {mode!r}: use linear or warn")
