"""The classification layer: full FC, Partial FC sampling, and model-parallel sharding (two
Gloo processes) giving the same loss and gradients as one process with every class, refusing
labels outside the classes on every rank, and agreeing on skipping a non-finite step."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn import functional as F

from training.divergence import StepHealth, step_health
from training.embeddings import l2_normalize
from training.heads import (
    AdaFaceHead,
    ArcFaceHead,
    CosFaceHead,
    CurricularFaceHead,
    LSoftmaxHead,
    NormFaceHead,
    SoftmaxHead,
)
from training.partial_fc import MarginSoftmaxClassifier, shard_range, softmax_cross_entropy


def test_full_fc_loss_is_cross_entropy_of_the_head_on_normalised_cosines() -> None:
    torch.manual_seed(0)
    classifier = MarginSoftmaxClassifier(CosFaceHead(s=16.0, m=0.2), 6, num_classes=5)
    embeddings, labels = torch.randn(4, 6), torch.tensor([0, 4, 2, 2])
    cosine = l2_normalize(embeddings) @ l2_normalize(classifier.weight).T
    expected = F.cross_entropy(16.0 * (cosine - 0.2 * F.one_hot(labels, 5)), labels)
    assert classifier(embeddings, labels).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("in_place_backward", [True, False])
def test_one_buffer_cross_entropy_matches_torch_forward_and_backward(
    in_place_backward: bool,
) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(16, 300, generator=generator) * 20).requires_grad_(True)
    labels = torch.randint(0, 300, (16,), generator=generator)
    upstream = torch.tensor(0.7)
    expected = F.cross_entropy(logits, labels)
    (expected_grad,) = torch.autograd.grad(expected * upstream, logits)
    consumed = logits.detach().clone().requires_grad_(True)
    loss = softmax_cross_entropy(consumed * 1.0, labels, in_place_backward=in_place_backward)
    (loss * upstream).backward()
    assert abs(loss.item() - expected.item()) < 1e-6
    assert torch.allclose(consumed.grad, expected_grad, rtol=0, atol=1e-6)


def test_one_buffer_cross_entropy_keeps_no_other_logits_sized_tensor() -> None:
    logits = torch.randn(8, 1000).requires_grad_(True)
    scaled = logits * 2.0  # a head's output: its buffer becomes the probabilities, then the grad
    loss = softmax_cross_entropy(scaled, torch.arange(8))
    probabilities, _ = loss.grad_fn.saved_tensors
    assert probabilities.data_ptr() == scaled.data_ptr()
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(8))


def test_one_buffer_cross_entropy_refuses_a_second_backward_instead_of_a_wrong_gradient() -> None:
    logits = torch.randn(4, 10).requires_grad_(True)
    loss = softmax_cross_entropy(logits * 1.0, torch.tensor([1, 2, 3, 4]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward runs once per forward"):
        loss.backward()


@pytest.mark.parametrize("name", ["arcface", "curricularface", "adaface", "softmax", "lsoftmax"])
def test_classifier_loss_and_gradients_match_plain_cross_entropy_for_every_head(
    name: str,
) -> None:
    factories = {
        "arcface": lambda: ArcFaceHead(s=8.0),
        "curricularface": lambda: CurricularFaceHead(s=8.0),
        "adaface": lambda: AdaFaceHead(s=8.0),
        "softmax": SoftmaxHead,
        "lsoftmax": lambda: LSoftmaxHead(m=2, base=5.0),
    }
    torch.manual_seed(0)
    classifier = MarginSoftmaxClassifier(factories[name](), 6, num_classes=9)
    embeddings, labels = torch.randn(5, 6) * 3, torch.tensor([0, 8, 3, 3, 5])
    state = {key: value.clone() for key, value in classifier.state_dict().items()}
    x = embeddings.clone().requires_grad_(True)
    loss = classifier(x, labels)
    loss.backward()
    weight_grad, classifier.weight.grad = classifier.weight.grad, None
    classifier.load_state_dict(state)  # the heads' step counters and EMAs as before
    reference_x = embeddings.clone().requires_grad_(True)
    logits, _ = classifier.head_logits(reference_x, labels)
    reference = F.cross_entropy(logits, labels)
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-6
    assert torch.allclose(x.grad, reference_x.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(weight_grad, classifier.weight.grad, rtol=1e-5, atol=1e-6)


def test_shards_cover_all_classes_once() -> None:
    ranges = [shard_range(10, rank, 4) for rank in range(4)]
    assert ranges == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_partial_fc_samples_the_rate_and_always_keeps_the_batch_classes() -> None:
    torch.manual_seed(0)
    classifier = MarginSoftmaxClassifier(NormFaceHead(s=1.0), 8, num_classes=100, sample_rate=0.1)
    embeddings = torch.randn(4, 8)
    labels = torch.tensor([3, 57, 57, 99])
    logits, remapped = classifier.head_logits(embeddings, labels)
    assert logits.shape == (4, 10)
    expected = (l2_normalize(embeddings) * l2_normalize(classifier.weight[labels])).sum(1)
    assert torch.allclose(logits[torch.arange(4), remapped], expected, atol=1e-6)


def test_partial_fc_updates_only_the_sampled_centres() -> None:
    torch.manual_seed(1)
    classifier = MarginSoftmaxClassifier(ArcFaceHead(), 8, num_classes=50, sample_rate=0.2)
    classifier(torch.randn(6, 8), torch.tensor([1, 2, 3, 4, 5, 6])).backward()
    touched = (classifier.weight.grad.abs().sum(1) > 0).sum().item()
    assert touched == 10
    assert bool((classifier.weight.grad[1:7].abs().sum(1) > 0).all())


def test_partial_fc_uses_every_centre_outside_training() -> None:
    classifier = MarginSoftmaxClassifier(ArcFaceHead(), 8, num_classes=50, sample_rate=0.2).eval()
    logits, _ = classifier.head_logits(torch.randn(2, 8), torch.tensor([0, 1]))
    assert logits.shape == (2, 50)


def test_labels_outside_the_classes_are_refused_by_one_process() -> None:
    classifier = MarginSoftmaxClassifier(ArcFaceHead(), 8, num_classes=10)
    with pytest.raises(ValueError, match=r"label\(s\) 11, 12 outside \[0, 10\)"):
        classifier(torch.randn(3, 8), torch.tensor([11, 3, 12]))
    with pytest.raises(ValueError, match=r"label\(s\) -1 outside"):
        classifier(torch.randn(1, 8), torch.tensor([-1]))


def test_invalid_sample_rate_is_rejected() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        MarginSoftmaxClassifier(ArcFaceHead(), 8, num_classes=5, sample_rate=0.0)


# --- model parallelism ---------------------------------------------------------------------

WORLD_SIZE = 2
SPAWN_TIMEOUT_S = 180
NUM_CLASSES, EMBEDDING, LOCAL_BATCH = 7, 6, 3
HEAD_FACTORIES = {
    "arcface": lambda: ArcFaceHead(s=8.0),
    "curricularface": lambda: CurricularFaceHead(s=8.0),
    "adaface": lambda: AdaFaceHead(s=8.0),
    "softmax": SoftmaxHead,
    "lsoftmax": lambda: LSoftmaxHead(m=2, base=5.0),
}


def _reference(name: str, weight: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor):
    """Loss and gradients of one process holding every class."""
    classifier = MarginSoftmaxClassifier(HEAD_FACTORIES[name](), EMBEDDING, NUM_CLASSES)
    with torch.no_grad():
        classifier.weight.copy_(weight)
    embeddings = embeddings.clone().requires_grad_(True)
    loss = classifier(embeddings, labels)
    loss.backward()
    return loss.detach(), classifier.weight.grad, embeddings.grad


def _sharded_worker(rank: int, init_file: str, results_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE
    )
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(NUM_CLASSES, EMBEDDING, generator=generator)
    embeddings = torch.randn(WORLD_SIZE * LOCAL_BATCH, EMBEDDING, generator=generator) * 5
    labels = torch.tensor([0, 6, 3, 3, 5, 1])
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    outcome = {}
    for name, factory in HEAD_FACTORIES.items():
        classifier = MarginSoftmaxClassifier(
            factory(), EMBEDDING, NUM_CLASSES, rank=rank, world_size=WORLD_SIZE
        )
        start, end = classifier.class_start, classifier.class_end
        with torch.no_grad():
            classifier.weight.copy_(weight[start:end])
        local = embeddings[rows].clone().requires_grad_(True)
        loss = classifier(local, labels[rows])
        loss.backward()
        ref_loss, ref_weight_grad, ref_embedding_grad = _reference(name, weight, embeddings, labels)
        outcome[name] = {
            "loss": (loss.item(), ref_loss.item()),
            "weight_grad": torch.allclose(
                classifier.weight.grad, ref_weight_grad[start:end], atol=1e-5
            ),
            # ×world size: DDP averages the backbone's gradients over ranks afterwards
            "embedding_grad": torch.allclose(
                local.grad, WORLD_SIZE * ref_embedding_grad[rows], atol=1e-5
            ),
        }
    extras = {
        "out_of_range": _out_of_range_labels(rank),
        # only rank 1's class-centre shard has an overflowing gradient
        "health": step_health(
            torch.tensor(2.0),
            [torch.tensor(1.0), torch.tensor(float("inf") if rank == 1 else 3.0)],
            distributed=True,
        ),
    }
    torch.save((outcome, extras), Path(results_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _out_of_range_labels(rank: int) -> str:
    """The issue's case: labels 11, 12, 15 with 10 classes over two ranks."""
    classifier = MarginSoftmaxClassifier(
        ArcFaceHead(s=8.0), EMBEDDING, 10, rank=rank, world_size=WORLD_SIZE
    )
    labels = torch.tensor([[11, 12, 3], [15, 0, 1]])[rank]
    try:
        loss = classifier(torch.randn(LOCAL_BATCH, EMBEDDING), labels)
    except ValueError as error:
        return f"refused: {error}"
    return f"trained silently: loss {loss.item():.2f}"


@pytest.fixture(scope="module")
def sharded_outcomes() -> list[tuple[dict, dict]]:
    """What each of two Gloo processes measured (spawned once for the tests below)."""
    with tempfile.TemporaryDirectory() as folder:
        init_file = os.path.join(folder, "init")
        context = mp.spawn(_sharded_worker, args=(init_file, folder), nprocs=WORLD_SIZE, join=False)
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.terminate()
                pytest.fail(
                    f"the {WORLD_SIZE} Gloo processes did not finish in {SPAWN_TIMEOUT_S} s"
                )
        return [
            torch.load(Path(folder) / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)
        ]


def test_labels_outside_the_classes_are_refused_on_every_rank_not_dropped(
    sharded_outcomes: list[tuple[dict, dict]],
) -> None:
    for _, extras in sharded_outcomes:
        assert extras["out_of_range"].startswith("refused: label(s) 11, 12, 15 outside [0, 10)")


def test_every_rank_skips_a_step_whose_gradients_are_non_finite_on_one_rank(
    sharded_outcomes: list[tuple[dict, dict]],
) -> None:
    healths = [extras["health"] for _, extras in sharded_outcomes]
    assert healths == [StepHealth(loss_finite=True, gradients_finite=False)] * WORLD_SIZE


def test_model_parallel_classifier_matches_a_single_process_with_every_class(
    sharded_outcomes: list[tuple[dict, dict]],
) -> None:
    outcomes = [outcome for outcome, _ in sharded_outcomes]
    for rank, outcome in enumerate(outcomes):
        for name, checks in outcome.items():
            sharded, single = checks["loss"]
            assert sharded == pytest.approx(single, rel=1e-5), (rank, name)
            assert checks["weight_grad"], (rank, name)
            assert checks["embedding_grad"], (rank, name)
