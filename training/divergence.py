"""Guarding a training run against NaN/inf: what counts as a bad step, how many in a row are
tolerated, and what happens then.

A step is bad when its loss or any gradient (backbone or class centres, after unscaling) is
not finite. The trainer skips the update of a bad step; under float16 the gradient scaler
also lowers its scale, which is how isolated float16 overflows are meant to be handled
(they are logged, not fatal). Only `max_bad_steps` bad steps *in a row* mean divergence:
the run then stops with `TrainingDiverged`, or rolls back to the last finite checkpoint.
In multi-process runs every rank takes the same decision: the flags are all-reduced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed import ReduceOp

# Rollbacks allowed per run before a divergence stops it anyway: a run that diverges again
# and again from the same weights needs a lower learning rate, not more retries.
MAX_ROLLBACKS = 3


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradients."""


@dataclass(frozen=True)
class StepHealth:
    """Whether a step's loss and gradients are finite (the same on every rank)."""

    loss_finite: bool
    gradients_finite: bool

    @property
    def finite(self) -> bool:
        return self.loss_finite and self.gradients_finite

    def describe(self) -> str:
        if not self.loss_finite:
            return "non-finite loss"
        return "non-finite gradients"


def step_health(
    loss: torch.Tensor, gradient_norms: list[torch.Tensor], distributed: bool
) -> StepHealth:
    """Check loss and gradient norms with one device→host copy (and one all-reduce)."""
    norms = torch.stack([norm.float().reshape(()) for norm in gradient_norms])
    flags = torch.stack(
        [(~torch.isfinite(loss.float())).float(), (~torch.isfinite(norms)).any().float()]
    )
    if distributed:
        torch.distributed.all_reduce(flags, op=ReduceOp.MAX)
    loss_bad, gradients_bad = flags.tolist()
    return StepHealth(loss_finite=not loss_bad, gradients_finite=not gradients_bad)


def all_finite(tensors: list[torch.Tensor], distributed: bool) -> bool:
    """True when every floating-point tensor is finite (on every rank)."""
    checks = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    flag = torch.stack(checks).all().float() if checks else torch.ones(())
    if distributed:
        torch.distributed.all_reduce(flag, op=ReduceOp.MIN)
    return bool(flag.item())


@dataclass
class DivergenceGuard:
    """Counts bad steps in a row and says when the run has diverged."""

    max_bad_steps: int
    bad_in_a_row: int = 0
    bad_total: int = 0
    rollbacks: int = 0

    def __post_init__(self) -> None:
        if self.max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be at least 1, got {self.max_bad_steps}")

    def record(self, health: StepHealth) -> bool:
        """Count a step; True when it makes `max_bad_steps` bad steps in a row."""
        if health.finite:
            self.bad_in_a_row = 0
            return False
        self.bad_in_a_row += 1
        self.bad_total += 1
        return self.bad_in_a_row >= self.max_bad_steps

    def rolled_back(self) -> None:
        self.rollbacks += 1
        self.bad_in_a_row = 0

    @property
    def may_roll_back(self) -> bool:
        return self.rollbacks < MAX_ROLLBACKS
