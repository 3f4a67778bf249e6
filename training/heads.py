"""Margin-softmax heads: they turn cosine logits (and labels, feature norms) into the logits
that cross-entropy sees.

The normalised FC (`training.partial_fc.MarginSoftmaxClassifier`) computes cos θ_j = Ŵ_jᵀx̂
once; each head here is a small module that edits those logits (mostly only the target
column), so heads compose and every head is a few lines next to its formula.

Every `forward(cosine, labels, norms)` takes:
- `cosine`: (N, C) float32 cosine logits in [-1, 1] (raw logits Wᵀx + b for `SoftmaxHead`),
- `labels`: (N,) int64, the column of each row's class in `cosine`, or -1 when that class is
  not in this slice of classes (another rank's shard in model-parallel training): such rows
  get no margin, their target lives elsewhere,
- `norms`: (N, 1) float32 ‖x‖ of the un-normalised embeddings (SphereFace, AdaFace use it),
- `weight_norms` (only heads with `needs_weight_norms`, i.e. L-Softmax): (C,) ‖W_j‖ of the
  class centres of `cosine`'s columns.

Numerical care: angles come from `angle()`, which clamps before acos so neither the value nor
the gradient is NaN at θ = 0 or π; the classifier runs heads in float32 even under autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.distributed import ReduceOp

# Keeps acos and its gradient finite: float32 resolves 1 - 1e-7 from 1 (its spacing below 1 is
# 6e-8), and acos'(1 - 1e-7) = -1 / sqrt(2e-7) ≈ -2236 instead of -inf.
COSINE_CLAMP = 1e-7

# Scale s of the normalised heads: 64, the default of CosFace (Wang et al. 2018, sec. 4.1) and
# ArcFace (Deng et al. 2019, sec. 3.1), kept by every later paper (CurricularFace, AdaFace).
DEFAULT_SCALE = 64.0
# CosFace's additive cosine margin m = 0.35 (Wang et al. 2018, sec. 4.1).
COSFACE_MARGIN = 0.35
# ArcFace's additive angular margin m = 0.5 (Deng et al. 2019, sec. 3.1); CurricularFace too.
ARCFACE_MARGIN = 0.5
# SphereFace's multiplicative margin m = 4 and its λ annealing, from the authors' Caffe model
# (wy1iu/sphereface, sphereface_model.prototxt: base 1000, gamma 0.12, power 1, lambda_min 5).
SPHEREFACE_MARGIN = 4
SPHEREFACE_LAMBDA_BASE = 1000.0
SPHEREFACE_LAMBDA_GAMMA = 0.12
SPHEREFACE_LAMBDA_POWER = 1.0
SPHEREFACE_LAMBDA_MIN = 5.0
# L-Softmax (Liu et al. 2016) with the authors' released CIFAR-10 recipe
# (wy1iu/LargeMargin_Softmax_Loss, myexamples/cifar10/model/cifar_train_test.prototxt:
# type DOUBLE, i.e. m = 2; base 1000, gamma 0.00002, power 45; lambda_min 0, caffe.proto's default).
LSOFTMAX_MARGIN = 2
LSOFTMAX_LAMBDA_BASE = 1000.0
LSOFTMAX_LAMBDA_GAMMA = 0.00002
LSOFTMAX_LAMBDA_POWER = 45.0
LSOFTMAX_LAMBDA_MIN = 0.0
# CurricularFace's momentum for t, the EMA of the mean target cosine (Huang et al. 2020, eq. 9).
CURRICULAR_MOMENTUM = 0.01
# AdaFace (Kim et al. 2022, sec. 4 and mk-minchul/AdaFace head.py): m = 0.4, h = 0.333, norm
# statistics EMA momentum 0.01 started at mean 20 / std 100, norms clipped to [0.001, 100],
# every cosine clamped to [-1 + eps, 1 - eps] before the margin, and the margined angle kept in
# [eps, π - eps], with eps = 1e-3.
ADAFACE_MARGIN = 0.4
ADAFACE_H = 0.333
ADAFACE_MOMENTUM = 0.01
ADAFACE_INITIAL_MEAN = 20.0
ADAFACE_INITIAL_STD = 100.0
ADAFACE_NORM_RANGE = (0.001, 100.0)
ADAFACE_EPS = 1e-3
# Center loss (Wen et al. 2016, sec. 4.1 face experiments): λ = 0.003, centre rate α = 0.5.
CENTER_LOSS_WEIGHT = 0.003
CENTER_LOSS_ALPHA = 0.5


def angle(cosine: torch.Tensor) -> torch.Tensor:
    """θ = acos(cos θ), clamped away from ±1 so value and gradient stay finite."""
    return torch.acos(cosine.clamp(-1.0 + COSINE_CLAMP, 1.0 - COSINE_CLAMP))


def _target_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of the target logits present in this slice (labels >= 0)."""
    rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
    return rows, labels[rows]


def _replace(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor):
    """A copy of `logits` with [rows, cols] set to `values` (autograd-friendly)."""
    return logits.index_put((rows, cols), values)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def multiplicative_psi(theta: torch.Tensor, m: int) -> torch.Tensor:
    """ψ(θ) = (−1)^k·cos(m·θ) − 2k for θ ∈ [kπ/m, (k+1)π/m], k ∈ {0, …, m−1}: cos(mθ) made
    monotonically decreasing over [0, π] (L-Softmax eq. 6, SphereFace eq. 7)."""
    k = torch.floor(m * theta / math.pi).clamp(0, m - 1)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * torch.cos(m * theta) - 2.0 * k


@dataclass(frozen=True)
class LambdaAnnealing:
    """λ = max(λ_min, base·(1 + γ·iter)^(−power)), the weight of the plain logit in the
    annealed target (λ·cos θ_y + ψ(θ_y)) / (1 + λ) of L-Softmax and SphereFace.

    As in the authors' Caffe layers (LargeMarginInnerProduct, MarginInnerProduct: `iter_ += 1`
    before λ is computed), a head counts a training step *before* using λ, so the first step
    has iter = 1 (SphereFace: λ = 1000 / 1.12 ≈ 892.9, not 1000).
    """

    base: float
    gamma: float
    power: float
    lambda_min: float

    def at(self, iteration: int) -> float:
        """λ at a given value of the step counter."""
        decayed = self.base * (1.0 + self.gamma * float(iteration)) ** (-self.power)
        return max(self.lambda_min, decayed)

    def describe(self) -> dict[str, object]:
        return {
            "lambda_base": self.base,
            "lambda_gamma": self.gamma,
            "lambda_power": self.power,
            "lambda_min": self.lambda_min,
        }


class MarginHead(nn.Module):
    """Base of all heads: cosine logits, labels and feature norms in, final logits out."""

    name: ClassVar[str] = ""
    # False: the FC hands this head raw logits Wᵀx + b (no normalisation, with a bias).
    uses_cosine: ClassVar[bool] = True
    # True: in model-parallel training the FC passes `target_cosine`, cos θ_y of every row,
    # because the head edits non-target logits based on the target's value.
    needs_target_of_every_row: ClassVar[bool] = False
    # True: the FC passes `weight_norms`, ‖W_j‖ of each column's class centre (L-Softmax's
    # un-normalised logits ‖W_j‖‖x‖cos θ_j); the centres are then learnt without a bias.
    needs_weight_norms: ClassVar[bool] = False

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """Head name and hyperparameters, as recorded in checkpoints and the pack manifest."""
        return {"head": self.name}


class SoftmaxHead(MarginHead):
    """Softmax (the baseline): logit_j = W_jᵀx + b_j, no normalisation and no margin."""

    name = "softmax"
    uses_cosine = False

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        return cosine


class NormFaceHead(MarginHead):
    """NormFace / NSL: logit_j = s·cos θ_j (normalised features and weights, no margin)."""

    name = "normface"

    def __init__(self, s: float = DEFAULT_SCALE) -> None:
        super().__init__()
        self.s = s

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        return self.s * cosine

    def describe(self) -> dict[str, object]:
        return {"head": self.name, "s": self.s}


class CosFaceHead(MarginHead):
    """CosFace / LMCL: target s·(cos θ_y − m), others s·cos θ_j."""

    name = "cosface"

    def __init__(self, s: float = DEFAULT_SCALE, m: float = COSFACE_MARGIN) -> None:
        super().__init__()
        self.s, self.m = s, m

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        rows, cols = _target_index(labels)
        logits = _replace(cosine, rows, cols, cosine[rows, cols] - self.m)
        return self.s * logits

    def describe(self) -> dict[str, object]:
        return {"head": self.name, "s": self.s, "m": self.m}


class CombinedMarginHead(MarginHead):
    """Combined margin (InsightFace): target s·(cos(m1·θ_y + m2) − m3), others s·cos θ_j.

    Every combination is applied as written: m1 = 1, m3 = 0 is ArcFace, m1 = 1, m2 = 0 is
    CosFace, m2 = m3 = 0 is a SphereFace-like multiplicative margin without ψ.

    Where m1·θ_y + m2 would pass π (θ_y > θ_t = (π − m2)/m1) the cosine would turn back up and
    reward a worse angle, so the target falls back to cos θ_y − (π − θ_t)·sin θ_t − m3:
    (π − θ_t) is the angular margin at θ_t, which makes this ArcFace's cos θ − m·sin m rule
    for m1 = 1. With `easy_margin`, the margin applies only where cos θ_y > 0 and the target
    is cos θ_y − m3 elsewhere.
    """

    name = "combined"

    def __init__(
        self,
        s: float = DEFAULT_SCALE,
        m1: float = 1.0,
        m2: float = ARCFACE_MARGIN,
        m3: float = 0.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if m1 <= 0:
            raise ValueError(f"m1 must be positive (1.0 = no multiplicative margin), got {m1}")
        self.s, self.m1, self.m2, self.m3, self.easy_margin = s, m1, m2, m3, easy_margin
        self.theta_limit = (math.pi - m2) / m1
        margin_at_limit = math.pi - self.theta_limit
        self.fallback_shift = margin_at_limit * math.sin(self.theta_limit)

    def margined_target(self, target: torch.Tensor) -> torch.Tensor:
        """The target logit before scaling, from the target cosine."""
        theta = angle(target)
        margined = torch.cos(self.m1 * theta + self.m2) - self.m3
        if self.theta_limit < math.pi:
            fallback = target - self.fallback_shift - self.m3
            margined = torch.where(theta <= self.theta_limit, margined, fallback)
        if self.easy_margin:
            margined = torch.where(target > 0, margined, target - self.m3)
        return margined

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        rows, cols = _target_index(labels)
        logits = _replace(cosine, rows, cols, self.margined_target(cosine[rows, cols]))
        return self.s * logits

    def describe(self) -> dict[str, object]:
        return {
            "head": self.name,
            "s": self.s,
            "m1": self.m1,
            "m2": self.m2,
            "m3": self.m3,
            "easy_margin": self.easy_margin,
        }


class ArcFaceHead(CombinedMarginHead):
    """ArcFace: target s·cos(θ_y + m), others s·cos θ_j.

    Where θ_y + m > π the target is s·(cos θ_y − m·sin m) instead (keeps the logit decreasing
    in θ_y); with `easy_margin`, the margin applies only where cos θ_y > 0.
    """

    name = "arcface"

    def __init__(
        self, s: float = DEFAULT_SCALE, m: float = ARCFACE_MARGIN, easy_margin: bool = False
    ) -> None:
        super().__init__(s=s, m1=1.0, m2=m, m3=0.0, easy_margin=easy_margin)
        self.m = m

    def describe(self) -> dict[str, object]:
        return {"head": self.name, "s": self.s, "m": self.m, "easy_margin": self.easy_margin}


class SphereFaceHead(MarginHead):
    """SphereFace / A-Softmax: target ‖x‖·ψ(θ_y), others ‖x‖·cos θ_j, with

        ψ(θ) = (−1)^k·cos(m·θ) − 2k  for θ ∈ [kπ/m, (k+1)π/m], k ∈ {0, …, m−1},

    annealed as in the original: target = ‖x‖·(λ·cos θ_y + ψ(θ_y)) / (1 + λ), with
    λ = max(λ_min, base·(1 + γ·iter)^(−power)) and iter counting training steps, incremented
    before use as in the authors' Caffe layer (the first step has iter = 1). Outside training
    the counter stays and λ is the last training step's.
    """

    name = "sphereface"
    title: ClassVar[str] = "SphereFace"

    iteration: torch.Tensor

    def __init__(
        self,
        m: int = SPHEREFACE_MARGIN,
        base: float = SPHEREFACE_LAMBDA_BASE,
        gamma: float = SPHEREFACE_LAMBDA_GAMMA,
        power: float = SPHEREFACE_LAMBDA_POWER,
        lambda_min: float = SPHEREFACE_LAMBDA_MIN,
    ) -> None:
        super().__init__()
        if int(m) != m or m < 1:
            raise ValueError(f"{self.title}'s margin m must be a positive integer, got {m}")
        self.m = int(m)
        self.annealing = LambdaAnnealing(base, gamma, power, lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> float:
        """λ at the current value of the step counter."""
        return self.annealing.at(int(self.iteration))

    def psi(self, theta: torch.Tensor) -> torch.Tensor:
        """ψ(θ) = (−1)^k·cos(mθ) − 2k, monotonically decreasing on [0, π]."""
        return multiplicative_psi(theta, self.m)

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        if self.training:
            self.iteration += 1  # before use, as the authors' layer does
        rows, cols = _target_index(labels)
        target = cosine[rows, cols]
        lam = self.current_lambda()
        annealed = (lam * target + self.psi(angle(target))) / (1.0 + lam)
        return norms * _replace(cosine, rows, cols, annealed)

    def describe(self) -> dict[str, object]:
        return {"head": self.name, "m": self.m, **self.annealing.describe()}


class LSoftmaxHead(SphereFaceHead):
    """L-Softmax (Liu et al. 2016): SphereFace with the class centres' norms kept,

        target ‖W_y‖·‖x‖·(λ·cos θ_y + ψ(θ_y)) / (1 + λ),  others ‖W_j‖·‖x‖·cos θ_j = W_jᵀx,

    with SphereFace's ψ and λ annealing (no bias); only its defaults differ (m = 2 and the
    authors' L-Softmax schedule). W is not normalised, so the FC passes the centres' norms
    (`needs_weight_norms`).
    """

    name = "lsoftmax"
    title = "L-Softmax"
    needs_weight_norms = True

    def __init__(
        self,
        m: int = LSOFTMAX_MARGIN,
        base: float = LSOFTMAX_LAMBDA_BASE,
        gamma: float = LSOFTMAX_LAMBDA_GAMMA,
        power: float = LSOFTMAX_LAMBDA_POWER,
        lambda_min: float = LSOFTMAX_LAMBDA_MIN,
    ) -> None:
        super().__init__(m, base, gamma, power, lambda_min)

    def forward(  # type: ignore[override]
        self,
        cosine: torch.Tensor,
        labels: torch.Tensor,
        norms: torch.Tensor,
        weight_norms: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if weight_norms is None:
            raise ValueError("L-Softmax needs the class centres' norms: pass weight_norms")
        return super().forward(cosine, labels, norms * weight_norms[None, :])


class CurricularFaceHead(MarginHead):
    """CurricularFace: target s·cos(θ_y + m) (cos θ_y − m·sin m where θ_y + m > π); a hard
    negative, cos θ_j > cos(θ_y + m), becomes s·cos θ_j·(t + cos θ_j), others s·cos θ_j.

    t is an EMA of the batch's mean target cosine, t ← (1 − α)·t + α·mean(cos θ_y) with
    α = 0.01, updated before re-weighting in each training step: early on t ≈ 0 and hard
    negatives weigh less (easy samples first); as t grows they weigh more.
    """

    name = "curricularface"
    needs_target_of_every_row = True

    t: torch.Tensor

    def __init__(
        self,
        s: float = DEFAULT_SCALE,
        m: float = ARCFACE_MARGIN,
        momentum: float = CURRICULAR_MOMENTUM,
    ) -> None:
        super().__init__()
        self.s, self.m, self.momentum = s, m, momentum
        self.register_buffer("t", torch.zeros(()))

    def forward(
        self,
        cosine: torch.Tensor,
        labels: torch.Tensor,
        norms: torch.Tensor,
        target_cosine: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`target_cosine` (N,): cos θ_y of every row, for a class-sharded `cosine` whose rows
        may have their target on another rank; taken from `cosine` when None."""
        if target_cosine is None:
            if bool((labels < 0).any()):
                raise ValueError(
                    "CurricularFace needs every row's target cosine: pass target_cosine when "
                    "the classes are sharded"
                )
            target_cosine = cosine.gather(1, labels[:, None]).squeeze(1)
        theta = angle(target_cosine)
        with_margin = torch.cos(theta + self.m)
        target = torch.where(
            theta + self.m <= math.pi, with_margin, target_cosine - self.m * math.sin(self.m)
        )
        if self.training:
            with torch.no_grad():
                self.t.mul_(1.0 - self.momentum).add_(self.momentum * target_cosine.mean())
        hard = cosine > with_margin[:, None]
        logits = torch.where(hard, cosine * (self.t + cosine), cosine)
        rows, cols = _target_index(labels)
        logits = _replace(logits, rows, cols, target[rows])
        return self.s * logits

    def describe(self) -> dict[str, object]:
        return {"head": self.name, "s": self.s, "m": self.m, "momentum": self.momentum}


class AdaFaceHead(MarginHead):
    """AdaFace: a margin that adapts to image quality through the feature norm ‖x‖.

        z = clip(h·(‖x‖ − μ)/(σ + ε), −1, 1)      μ, σ: EMA of the batch mean/std of ‖x‖
        c_j = clip(cos θ_j, −1 + ε, 1 − ε)        (every cosine, as the authors' head.py)
        target = s·(cos(clip(acos c_y − m·z, ε, π − ε)) − (m + m·z)),  others s·c_j

    i.e. an angular margin g_angle = −m·z and an additive margin g_add = m + m·z: z = −1
    (low norm: a poor image) gives ArcFace's cos(θ_y + m), z = 0 CosFace's cos θ_y − m, and
    z = 1 (high norm: a clear image) cos(θ_y − m) − 2m, which pushes hard clear samples most.
    Norms enter without gradient; μ and σ update with momentum 0.01 in training steps.
    """

    name = "adaface"

    batch_mean: torch.Tensor
    batch_std: torch.Tensor

    def __init__(
        self,
        s: float = DEFAULT_SCALE,
        m: float = ADAFACE_MARGIN,
        h: float = ADAFACE_H,
        momentum: float = ADAFACE_MOMENTUM,
    ) -> None:
        super().__init__()
        self.s, self.m, self.h, self.momentum = s, m, h, momentum
        self.register_buffer("batch_mean", torch.tensor(ADAFACE_INITIAL_MEAN))
        self.register_buffer("batch_std", torch.tensor(ADAFACE_INITIAL_STD))

    def _update_statistics(self, norms: torch.Tensor) -> None:
        if norms.numel() < 2:
            return  # a standard deviation needs two samples
        self.batch_mean.mul_(1.0 - self.momentum).add_(self.momentum * norms.mean())
        self.batch_std.mul_(1.0 - self.momentum).add_(self.momentum * norms.std())

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """z for each row (N, 1), from the current statistics."""
        z = self.h * (norms - self.batch_mean) / (self.batch_std + ADAFACE_EPS)
        return z.clamp(-1.0, 1.0)

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        safe_norms = norms.detach().clamp(*ADAFACE_NORM_RANGE)
        if self.training:
            with torch.no_grad():
                self._update_statistics(safe_norms)
        z = self.margin_scaler(safe_norms).squeeze(1)
        cosine = cosine.clamp(-1.0 + ADAFACE_EPS, 1.0 - ADAFACE_EPS)
        rows, cols = _target_index(labels)
        z_rows = z[rows]
        theta = angle(cosine[rows, cols]) - self.m * z_rows
        theta = theta.clamp(ADAFACE_EPS, math.pi - ADAFACE_EPS)
        target = torch.cos(theta) - (self.m + self.m * z_rows)
        return self.s * _replace(cosine, rows, cols, target)

    def describe(self) -> dict[str, object]:
        return {"head": self.name, "s": self.s, "m": self.m, "h": self.h}


class CenterLoss(nn.Module):
    """Center loss, an auxiliary term usable beside any head:

        L_c = λ/2 · mean_i ‖x_i − c_{y_i}‖²

    Centres are not learnt by gradient but moved after each training step, as in the paper:
        c_j ← c_j − α·Δc_j,   Δc_j = Σ_{i: y_i = j} (c_j − x_i) / (1 + n_j)
    (n_j: samples of class j in the batch; summed over ranks when training is distributed).
    The mean over the batch (the paper sums) keeps λ independent of the batch size, as the
    cross-entropy beside it is a mean too.
    """

    centers: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        weight: float = CENTER_LOSS_WEIGHT,
        alpha: float = CENTER_LOSS_ALPHA,
    ) -> None:
        super().__init__()
        self.weight, self.alpha = weight, alpha
        self.register_buffer("centers", torch.zeros(num_classes, embedding_size))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = embeddings.to(self.centers.dtype)
        differences = embeddings - self.centers[labels]
        loss = 0.5 * self.weight * differences.pow(2).sum(dim=1).mean()
        if self.training:
            self._update_centers(differences.detach(), labels)
        return loss

    @torch.no_grad()
    def _update_centers(self, differences: torch.Tensor, labels: torch.Tensor) -> None:
        """Δc_j = Σ (c_j − x_i) / (1 + n_j); `differences` holds x_i − c_{y_i}."""
        sums = torch.zeros_like(self.centers).index_add_(0, labels, -differences)
        counts = torch.zeros(len(self.centers), device=labels.device).index_add_(
            0, labels, torch.ones_like(labels, dtype=torch.float32)
        )
        if _distributed():
            torch.distributed.all_reduce(sums, op=ReduceOp.SUM)
            torch.distributed.all_reduce(counts, op=ReduceOp.SUM)
        self.centers.sub_(self.alpha * sums / (1.0 + counts[:, None]))


HEADS: dict[str, type[MarginHead]] = {
    head.name: head
    for head in (
        SoftmaxHead,
        NormFaceHead,
        SphereFaceHead,
        LSoftmaxHead,
        CosFaceHead,
        ArcFaceHead,
        CombinedMarginHead,
        CurricularFaceHead,
        AdaFaceHead,
    )
}


def create_head(name: str, **kwargs: object) -> MarginHead:
    """Build a head by name (`HEADS` lists them) with its hyperparameters as keywords."""
    try:
        head_class = HEADS[name]
    except KeyError:
        raise ValueError(
            f"unknown head {name!r}; known heads: {', '.join(sorted(HEADS))}"
        ) from None
    return head_class(**kwargs)  # type: ignore[arg-type]
