"""The classification layer of margin-softmax training: normalised FC → head → cross-entropy.

One module owns the class centres W (C, D) and turns a batch of embeddings and labels into the
loss. It scales to very many identities in two ways:
- Partial FC (An et al. 2022): each step uses only a random subset of the class centres,
  `sample_rate` of them, always keeping the batch's positive classes;
- model parallelism when the world size is > 1: each rank holds a contiguous shard of the
  classes; embeddings and labels are all-gathered, every rank computes the logits of its
  shard for the whole global batch, and a distributed softmax cross-entropy combines them.
  Nothing of size C crosses the network, only (N, D) embeddings and (N,) reductions.

All of it runs in float32 with autocast disabled: the margins act on cosines near ±1, where
half precision has no resolution left.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed import ReduceOp
from torch.nn import functional as F

from training.embeddings import l2_normalize
from training.heads import MarginHead

# Class centres start as N(0, 0.01²) (insightface arcface_torch partial_fc_v2.py); their scale
# does not matter to heads that normalise them.
WEIGHT_INIT_STD = 0.01
# Heads whose logits keep ‖W_j‖ (softmax, L-Softmax) start from Caffe's "msra" filler,
# N(0, 2 / fan_in), as the L-Softmax authors' prototxts do: 0.01 would leave every logit near 0
# and the softmax near uniform for many steps.
UNNORMALISED_WEIGHT_GAIN = 2.0


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 → float32; float32 and float64 (gradient checks) stay as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of the classes held by `rank`; the first C mod W ranks hold one more."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _GatherEmbeddings(torch.autograd.Function):
    """All-gather along the batch; backward sums every rank's gradient for the local rows.

    Each rank's loss term covers only its class shard, so the gradient of the global loss for
    a row is the sum over ranks. It is also multiplied by the world size, because DDP then
    averages the backbone's gradients over ranks where this global-batch loss needs their sum.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world_size = torch.distributed.get_world_size()
        parts = [torch.empty_like(local) for _ in range(world_size)]
        torch.distributed.all_gather(parts, local.contiguous())
        ctx.batch = local.shape[0]
        ctx.rank = torch.distributed.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad, op=ReduceOp.SUM)
        start = ctx.rank * ctx.batch
        return grad[start : start + ctx.batch] * torch.distributed.get_world_size()


def _gather_labels(labels: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(labels) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, labels.contiguous())
    return torch.cat(parts)


class _DistributedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over logits whose classes are sharded across ranks.

    Rows with label -1 have their target on another rank. The max, the sum of exponentials
    and the target logit are all-reduced, so every rank gets the same loss; the gradient of
    the local logits is (softmax − one-hot) / N.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        row_max = logits.detach().max(dim=1, keepdim=True).values
        torch.distributed.all_reduce(row_max, op=ReduceOp.MAX)
        shifted = logits.detach() - row_max
        exp = shifted.exp()
        sum_exp = exp.sum(dim=1, keepdim=True)
        torch.distributed.all_reduce(sum_exp, op=ReduceOp.SUM)
        rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
        target = torch.zeros(logits.shape[0], device=logits.device, dtype=logits.dtype)
        target[rows] = shifted[rows, labels[rows]]
        torch.distributed.all_reduce(target, op=ReduceOp.SUM)
        ctx.save_for_backward(exp / sum_exp, labels)
        return (sum_exp.squeeze(1).log() - target).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        probabilities, labels = ctx.saved_tensors
        rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
        probabilities = probabilities.clone()
        probabilities[rows, labels[rows]] -= 1.0
        return probabilities * (grad / probabilities.shape[0]), None


def _target_cosine_of_every_row(cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """cos θ_y for each row although each rank holds only some rows' targets."""
    target = torch.zeros(cosine.shape[0], device=cosine.device, dtype=cosine.dtype)
    rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
    target[rows] = cosine[rows, labels[rows]].detach()
    torch.distributed.all_reduce(target, op=ReduceOp.SUM)
    # Gradient flows through the local targets only; other ranks' rows were detached copies.
    local = torch.zeros_like(target)
    local[rows] = cosine[rows, labels[rows]]
    return local + (target - local.detach())


class MarginSoftmaxClassifier(nn.Module):
    """Class centres + a margin head + cross-entropy: `forward(embeddings, labels) -> loss`.

    With `world_size > 1` (torch.distributed initialised) this rank holds classes
    `shard_range(num_classes, rank, world_size)` and the batch is gathered from all ranks.
    With `sample_rate < 1` each training step uses a random subset of the (local) centres that
    always contains the batch's classes (Partial FC).
    """

    def __init__(
        self,
        head: MarginHead,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if num_classes < world_size:
            raise ValueError(f"{num_classes} classes cannot be split over {world_size} ranks")
        self.head = head
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.sample_rate, self.rank, self.world_size = sample_rate, rank, world_size
        self.class_start, self.class_end = shard_range(num_classes, rank, world_size)
        num_local = self.class_end - self.class_start
        normalised = head.uses_cosine and not head.needs_weight_norms
        std = (
            WEIGHT_INIT_STD if normalised else math.sqrt(UNNORMALISED_WEIGHT_GAIN / embedding_size)
        )
        self.weight = nn.Parameter(torch.normal(0.0, std, (num_local, embedding_size)))
        # Only the plain softmax baseline has a bias (L-Softmax's layer has none either).
        self.bias = None if head.uses_cosine else nn.Parameter(torch.zeros(num_local))

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    def _local_labels(self, labels: torch.Tensor) -> torch.Tensor:
        inside = (labels >= self.class_start) & (labels < self.class_end)
        return torch.where(inside, labels - self.class_start, torch.full_like(labels, -1))

    def _sample(
        self, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Centres (and biases) of this step and the labels re-indexed into them."""
        if not self.training or self.sample_rate >= 1.0:
            return self.weight, self.bias, labels
        num_local = self.weight.shape[0]
        positives = torch.unique(labels[labels >= 0])
        num_sample = max(int(self.sample_rate * num_local), positives.numel())
        scores = torch.rand(num_local, device=self.weight.device)
        scores[positives] = 2.0  # above any rand() value: positives are always picked
        index = torch.topk(scores, num_sample).indices.sort().values
        remapped = labels.clone()
        valid = labels >= 0
        remapped[valid] = torch.searchsorted(index, labels[valid])
        bias = None if self.bias is None else self.bias[index]
        return self.weight[index], bias, remapped

    def head_logits(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Head logits (N, C_step) of gathered embeddings, and the labels indexing them;
        float32 (or float64) even under autocast."""
        with torch.autocast(embeddings.device.type, enabled=False):
            return self._head_logits(embeddings, labels)

    def _head_logits(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias, labels = self._sample(labels)
        embeddings = _at_least_float32(embeddings)
        weight = weight.to(embeddings.dtype)
        norms = embeddings.norm(dim=1, keepdim=True)
        if self.head.uses_cosine:
            raw = F.linear(l2_normalize(embeddings), l2_normalize(weight))
        else:
            raw = F.linear(embeddings, weight, None if bias is None else bias.to(weight.dtype))
        if self.head.needs_weight_norms:
            return self.head(raw, labels, norms, weight_norms=weight.norm(dim=1)), labels
        if self.sharded and self.head.needs_target_of_every_row:
            target = _target_cosine_of_every_row(raw, labels)
            return self.head(raw, labels, norms, target_cosine=target), labels
        return self.head(raw, labels, norms), labels

    def check_labels(self, labels: torch.Tensor) -> None:
        """Refuse labels outside [0, num_classes): sharded, such a label would silently
        become "on another rank" on every rank and train nothing but its negatives."""
        outside = (labels < 0) | (labels >= self.num_classes)
        if bool(outside.any()):
            bad = sorted({int(label) for label in labels[outside].tolist()})
            shown = ", ".join(str(label) for label in bad[:10])
            raise ValueError(
                f"label(s) {shown} outside [0, {self.num_classes}): the classifier has "
                f"{self.num_classes} classes; check num_classes against the training data"
            )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean margin-softmax cross-entropy of the (global) batch; raises ValueError for a
        label outside [0, num_classes) (on every rank alike: the check runs on the gathered
        labels, so no rank is left waiting in a collective)."""
        if self.sharded:
            embeddings = _GatherEmbeddings.apply(embeddings)
            labels = _gather_labels(labels)
        self.check_labels(labels)
        labels = self._local_labels(labels.long())
        with torch.autocast(embeddings.device.type, enabled=False):
            logits, labels = self.head_logits(embeddings, labels)
            if self.sharded:
                return _DistributedCrossEntropy.apply(logits, labels)
            return F.cross_entropy(logits, labels)
