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


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy in one (N, C) buffer: the logits' own (as arcface_torch's
    `DistCrossEntropyFunc`, partial_fc_v2.py).

    Forward turns the logits in place into probabilities: subtract the row max, exp, divide
    by the row sum; the loss is log Σ exp − (target − max), computed before the division.
    Backward turns the same buffer in place into the gradient, (softmax − one-hot) · g / N, so
    the loss keeps no other tensor of the logits' size. At 1 M classes that buffer is the
    memory Partial FC is about.

    Sharded (`distributed`): each rank holds some classes of every row (label -1: the target
    is on another rank); the row max, the sum of exponentials and the target logit are
    all-reduced, so every rank gets the same loss.

    The logits given are consumed: do not read them afterwards. With `in_place_backward`,
    one backward per forward (retain_graph is refused with a clear error); without it,
    backward allocates the gradient (gradient checks run backward twice).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: torch.Tensor, labels: torch.Tensor, distributed: bool, in_place_backward: bool
    ) -> torch.Tensor:
        buffer = logits.detach()  # the same storage: every step below is in place
        row_max = buffer.max(dim=1, keepdim=True).values
        if distributed:
            torch.distributed.all_reduce(row_max, op=ReduceOp.MAX)
        buffer.sub_(row_max)
        rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
        target = torch.zeros(buffer.shape[0], device=buffer.device, dtype=buffer.dtype)
        target[rows] = buffer[rows, labels[rows]]
        buffer.exp_()
        sum_exp = buffer.sum(dim=1, keepdim=True)
        if distributed:
            torch.distributed.all_reduce(target, op=ReduceOp.SUM)
            torch.distributed.all_reduce(sum_exp, op=ReduceOp.SUM)
        buffer.div_(sum_exp)
        ctx.save_for_backward(buffer, labels)
        ctx.in_place_backward, ctx.used = in_place_backward, False
        return (sum_exp.squeeze(1).log() - target).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if ctx.used and ctx.in_place_backward:
            raise RuntimeError(
                "the softmax cross-entropy computed its gradient in its forward buffer: "
                "backward runs once per forward (no retain_graph); build the classifier with "
                "in_place_backward=False to differentiate twice"
            )
        ctx.used = True
        probabilities, labels = ctx.saved_tensors
        gradient = probabilities if ctx.in_place_backward else probabilities.clone()
        rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
        gradient[rows, labels[rows]] -= 1.0
        gradient.mul_(grad / gradient.shape[0])
        return gradient, None, None, None


def softmax_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    distributed: bool = False,
    in_place_backward: bool = True,
) -> torch.Tensor:
    """`F.cross_entropy(logits, labels)` (mean over rows) in the logits' own buffer, which it
    consumes; labels -1 mark rows whose target class is on another rank (`distributed`)."""
    return _SoftmaxCrossEntropy.apply(logits, labels, distributed, in_place_backward)


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
        in_place_backward: bool = True,
    ) -> None:
        super().__init__()
        # False only for gradient checks, which run backward twice (softmax_cross_entropy).
        self.in_place_backward = in_place_backward
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
            return softmax_cross_entropy(logits, labels, self.sharded, self.in_place_backward)
