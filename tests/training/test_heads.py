"""Every margin head against values computed by hand from its formula, plus gradient checks
and numerical safety at θ = 0 and θ = π."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from training.heads import (
    HEADS,
    AdaFaceHead,
    ArcFaceHead,
    CenterLoss,
    CombinedMarginHead,
    CosFaceHead,
    CurricularFaceHead,
    LSoftmaxHead,
    NormFaceHead,
    SoftmaxHead,
    SphereFaceHead,
    create_head,
)
from training.partial_fc import MarginSoftmaxClassifier


def one_row(target: float, others: tuple[float, ...] = (0.2, -0.1)) -> tuple[torch.Tensor, ...]:
    """A single row whose label is column 0 with cosine `target`."""
    cosine = torch.tensor([[target, *others]])
    return cosine, torch.tensor([0]), torch.ones(1, 1)


def test_softmax_head_passes_raw_logits_through_and_asks_for_a_biased_fc() -> None:
    logits = torch.tensor([[3.0, -2.0]])
    head = SoftmaxHead()
    assert torch.equal(head(logits, torch.tensor([0]), torch.ones(1, 1)), logits)
    classifier = MarginSoftmaxClassifier(head, embedding_size=4, num_classes=3)
    assert classifier.bias is not None and classifier.bias.shape == (3,)


def test_normface_scales_every_cosine_without_margin() -> None:
    cosine, labels, norms = one_row(0.6)
    assert torch.allclose(NormFaceHead(s=30.0)(cosine, labels, norms), 30.0 * cosine)


def test_cosface_subtracts_m_from_the_target_cosine_only() -> None:
    cosine, labels, norms = one_row(0.6)
    logits = CosFaceHead(s=64.0, m=0.35)(cosine, labels, norms)
    assert logits[0, 0].item() == pytest.approx(64.0 * 0.25, abs=1e-4)
    assert torch.allclose(logits[0, 1:], 64.0 * cosine[0, 1:])


def test_arcface_adds_the_angular_margin_to_the_target() -> None:
    # cos(acos(0.6) + 0.5) = 0.6·cos 0.5 − 0.8·sin 0.5 = 0.143009
    cosine, labels, norms = one_row(0.6)
    logits = ArcFaceHead(s=64.0, m=0.5)(cosine, labels, norms)
    assert logits[0, 0].item() == pytest.approx(64.0 * 0.143009, abs=1e-3)
    assert torch.allclose(logits[0, 1:], 64.0 * cosine[0, 1:])


def test_arcface_falls_back_to_cos_minus_m_sin_m_when_theta_plus_m_passes_pi() -> None:
    # acos(−0.95) = 2.824 rad, + 0.5 > π: target = −0.95 − 0.5·sin 0.5 = −1.189713
    cosine, labels, norms = one_row(-0.95)
    logits = ArcFaceHead(s=1.0, m=0.5)(cosine, labels, norms)
    assert logits[0, 0].item() == pytest.approx(-1.189713, abs=1e-5)


def test_arcface_easy_margin_leaves_obtuse_targets_alone() -> None:
    head = ArcFaceHead(s=1.0, m=0.5, easy_margin=True)
    obtuse = head(*one_row(-0.3))
    acute = head(*one_row(0.6))
    assert obtuse[0, 0].item() == pytest.approx(-0.3, abs=1e-6)
    assert acute[0, 0].item() == pytest.approx(0.143009, abs=1e-5)


def combined_by_hand(cosine: float, m1: float, m2: float, m3: float) -> float:
    theta = math.acos(cosine)
    limit = (math.pi - m2) / m1
    if theta <= limit:
        return math.cos(m1 * theta + m2) - m3
    return cosine - (math.pi - limit) * math.sin(limit) - m3


@pytest.mark.parametrize(
    ("m1", "m2", "m3"), list(itertools.product((1.0, 1.35), (0.0, 0.3), (0.0, 0.2)))
)
def test_combined_margin_applies_every_combination_of_m1_m2_m3(
    m1: float, m2: float, m3: float
) -> None:
    targets = (0.95, 0.6, 0.1, -0.5, -0.9, -0.99)
    head = CombinedMarginHead(s=1.0, m1=m1, m2=m2, m3=m3)
    cosine = torch.tensor([[t, 0.0] for t in targets])
    logits = head(cosine, torch.zeros(len(targets), dtype=torch.long), torch.ones(len(targets), 1))
    expected = torch.tensor([combined_by_hand(t, m1, m2, m3) for t in targets])
    assert torch.allclose(logits[:, 0], expected, atol=1e-5)


def test_combined_margin_keeps_m2_when_m3_is_set() -> None:
    # cos(acos(0.6) + 0.3) − 0.2 = 0.136786: neither the ArcFace nor the CosFace part is dropped
    logits = CombinedMarginHead(s=1.0, m1=1.0, m2=0.3, m3=0.2)(*one_row(0.6))
    assert logits[0, 0].item() == pytest.approx(0.136786, abs=1e-5)


def test_combined_margin_reduces_to_arcface_and_to_cosface() -> None:
    cosine = torch.tensor([[0.9, 0.1], [0.3, -0.2], [-0.8, 0.4], [-0.97, 0.0]])
    labels, norms = torch.tensor([0, 0, 1, 0]), torch.ones(4, 1)
    arc = CombinedMarginHead(s=64.0, m1=1.0, m2=0.5, m3=0.0)(cosine, labels, norms)
    assert torch.allclose(arc, ArcFaceHead(s=64.0, m=0.5)(cosine, labels, norms))
    cos = CombinedMarginHead(s=64.0, m1=1.0, m2=0.0, m3=0.35)(cosine, labels, norms)
    assert torch.allclose(cos, CosFaceHead(s=64.0, m=0.35)(cosine, labels, norms), atol=1e-4)


@pytest.mark.parametrize(
    ("theta", "psi"),
    [(0.5, math.cos(2.0)), (1.0, -1.346356), (2.0, -4.145500), (3.0, -6.843854)],
)
def test_sphereface_psi_matches_the_piecewise_formula(theta: float, psi: float) -> None:
    # m = 4: k = floor(4θ/π); ψ = (−1)^k cos(4θ) − 2k
    assert SphereFaceHead(m=4).psi(torch.tensor(theta)).item() == pytest.approx(psi, abs=1e-5)


def test_sphereface_psi_decreases_monotonically_over_zero_to_pi() -> None:
    theta = torch.linspace(0.0, math.pi, 2001, dtype=torch.float64)
    values = SphereFaceHead(m=4).psi(theta)
    assert bool((values[1:] <= values[:-1] + 1e-9).all())
    assert values[-1].item() == pytest.approx(-7.0, abs=1e-6)  # ψ(π) = −cos 4π − 6


def test_sphereface_lambda_anneals_from_base_to_lambda_min() -> None:
    head = SphereFaceHead()  # base 1000, γ 0.12, power 1, λ_min 5
    assert head.current_lambda() == pytest.approx(1000.0)
    head.iteration.fill_(100)
    assert head.current_lambda() == pytest.approx(1000.0 / 13.0)
    head.iteration.fill_(100_000)
    assert head.current_lambda() == pytest.approx(5.0)


def test_sphereface_first_training_step_uses_iteration_one_like_the_authors_caffe_layer() -> None:
    # MarginInnerProduct increments iter_ before computing λ: 1000 / (1 + 0.12) = 892.857
    head = SphereFaceHead(m=4)
    cosine, labels = torch.tensor([[math.cos(1.0), 0.3]]), torch.tensor([0])
    logits = head(cosine, labels, torch.ones(1, 1))
    lam = 1000.0 / 1.12
    psi = -math.cos(4.0) - 2.0  # k = 1 for θ = 1
    assert logits[0, 0].item() == pytest.approx((lam * math.cos(1.0) + psi) / (1 + lam), abs=1e-6)
    assert int(head.iteration) == 1 and head.current_lambda() == pytest.approx(lam)


def test_sphereface_target_is_norm_times_annealed_psi_and_counts_training_steps() -> None:
    head = SphereFaceHead(m=4)
    head.iteration.fill_(100_000)  # λ = λ_min = 5
    cosine = torch.tensor([[math.cos(1.0), 0.3]])
    norms = torch.tensor([[2.0]])
    logits = head(cosine, torch.tensor([0]), norms)
    # 2·(5·cos 1 + ψ(1)) / 6 with ψ(1) = −cos 4 − 2
    assert logits[0, 0].item() == pytest.approx(0.451718, abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(0.6, abs=1e-6)
    assert int(head.iteration) == 100_001
    head.eval()
    head(cosine, torch.tensor([0]), norms)
    assert int(head.iteration) == 100_001


def lsoftmax_by_hand(cosine: float, w_norm: float, x_norm: float, m: int, lam: float) -> float:
    theta = math.acos(cosine)
    k = min(math.floor(m * theta / math.pi), m - 1)
    psi = (-1) ** k * math.cos(m * theta) - 2 * k
    return w_norm * x_norm * (lam * cosine + psi) / (1 + lam)


@pytest.mark.parametrize(
    ("m", "cosine"), [(2, 0.8), (2, -0.3), (3, 0.2), (4, 0.95), (4, -0.9)], ids=str
)
def test_lsoftmax_target_is_weight_norm_times_feature_norm_times_annealed_psi(
    m: int, cosine: float
) -> None:
    head = LSoftmaxHead(m=m, base=3.0, gamma=0.5, power=1.0, lambda_min=0.0)
    logits = head(
        torch.tensor([[cosine, 0.4, -0.6]]),
        torch.tensor([0]),
        torch.tensor([[2.5]]),
        weight_norms=torch.tensor([1.5, 0.5, 3.0]),
    )
    lam = 3.0 / (1 + 0.5 * 1)  # first training step: iteration 1
    assert logits[0, 0].item() == pytest.approx(lsoftmax_by_hand(cosine, 1.5, 2.5, m, lam), 1e-5)
    # others: ‖W_j‖‖x‖cos θ_j = W_jᵀx
    assert logits[0, 1].item() == pytest.approx(0.5 * 2.5 * 0.4, abs=1e-6)
    assert logits[0, 2].item() == pytest.approx(3.0 * 2.5 * -0.6, abs=1e-6)


def test_lsoftmax_hand_values_for_m2() -> None:
    # m = 2, θ = acos(0.8): ψ = cos 2θ = 2·0.64 − 1 = 0.28; λ_min = 0 after annealing
    head = LSoftmaxHead(m=2, base=1000.0, gamma=1.0, power=45.0, lambda_min=0.0).eval()
    head.iteration.fill_(1000)  # λ = 1000·1001^−45 ≈ 0
    logits = head(torch.tensor([[0.8, 0.1]]), torch.tensor([0]), torch.tensor([[2.0]]),
                  weight_norms=torch.tensor([3.0, 1.0]))  # fmt: skip
    assert logits[0, 0].item() == pytest.approx(3.0 * 2.0 * 0.28, abs=1e-5)
    # θ > π/2, k = 1: ψ = −cos 2θ − 2 = −(2·0.09 − 1) − 2 = −1.18 for cos θ = −0.3
    logits = head(torch.tensor([[-0.3, 0.1]]), torch.tensor([0]), torch.ones(1, 1),
                  weight_norms=torch.ones(2))  # fmt: skip
    assert logits[0, 0].item() == pytest.approx(-1.18, abs=1e-5)


def test_lsoftmax_lambda_follows_the_authors_annealing_and_counts_training_steps() -> None:
    head = LSoftmaxHead()  # m 2, base 1000, γ 0.00002, power 45, λ_min 0 (CIFAR-10 prototxt)
    assert head.describe() == {
        "head": "lsoftmax", "m": 2, "lambda_base": 1000.0, "lambda_gamma": 0.00002,
        "lambda_power": 45.0, "lambda_min": 0.0,
    }  # fmt: skip
    cosine, labels, norms = torch.tensor([[0.5, 0.1]]), torch.tensor([0]), torch.ones(1, 1)
    head(cosine, labels, norms, weight_norms=torch.ones(2))
    assert head.current_lambda() == pytest.approx(1000.0 * (1 + 0.00002) ** -45)
    head.iteration.fill_(20_000)
    assert head.current_lambda() == pytest.approx(1000.0 * 1.4**-45)
    head.eval()(cosine, labels, norms, weight_norms=torch.ones(2))
    assert int(head.iteration) == 20_000  # no count outside training


def test_lsoftmax_classifier_uses_unnormalised_centres_without_bias() -> None:
    torch.manual_seed(0)
    head = LSoftmaxHead(m=2, base=0.0, lambda_min=0.0)  # λ = 0: pure ψ
    classifier = MarginSoftmaxClassifier(head, embedding_size=5, num_classes=4)
    assert classifier.bias is None
    with torch.no_grad():
        classifier.weight.mul_(100.0)  # norms around 0.2: make them unequal and O(1)
        classifier.weight[2].mul_(3.0)
    embeddings, labels = torch.randn(3, 5), torch.tensor([2, 0, 3])
    logits, _ = classifier.head_logits(embeddings, labels)
    raw = embeddings @ classifier.weight.T  # W_jᵀx
    target = torch.zeros(3, 4, dtype=torch.bool)
    target[torch.arange(3), labels] = True
    assert torch.allclose(logits[~target], raw[~target], atol=1e-5)
    w_norms, x_norms = classifier.weight.norm(dim=1), embeddings.norm(dim=1)
    for row, label in enumerate(labels.tolist()):
        cosine = (raw[row, label] / (w_norms[label] * x_norms[row])).item()
        expected = lsoftmax_by_hand(cosine, w_norms[label].item(), x_norms[row].item(), 2, 0.0)
        assert logits[row, label].item() == pytest.approx(expected, rel=1e-4)


def test_lsoftmax_classifier_passes_gradcheck_in_float64() -> None:
    head = LSoftmaxHead(m=3, base=2.0, gamma=0.0, lambda_min=0.0).eval()
    classifier = MarginSoftmaxClassifier(
        head, embedding_size=5, num_classes=4, in_place_backward=False
    ).double()
    classifier = classifier.eval()
    with torch.no_grad():
        classifier.weight.mul_(50.0)
    embeddings = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 1])
    assert torch.autograd.gradcheck(lambda x: classifier(x, labels), (embeddings,))
    assert torch.autograd.gradcheck(
        lambda w: torch.nn.functional.cross_entropy(
            head(torch.nn.functional.normalize(embeddings.detach(), dim=1)
                 @ torch.nn.functional.normalize(w, dim=1).T,
                 labels, embeddings.detach().norm(dim=1, keepdim=True),
                 weight_norms=w.norm(dim=1)),
            labels,
        ),
        (classifier.weight.detach().clone().requires_grad_(True),),
    )  # fmt: skip


def test_curricularface_updates_t_then_reweights_hard_negatives_only() -> None:
    head = CurricularFaceHead(s=1.0, m=0.5)
    cosine = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.0, -0.5]])
    logits = head(cosine, torch.tensor([0, 0]), torch.ones(2, 1))
    # t = 0.99·0 + 0.01·mean(0.6, 0.2) = 0.004
    assert head.t.item() == pytest.approx(0.004)
    # row 0: cos(θ_y + m) = 0.143009; 0.3 is hard → 0.3·(t + 0.3), 0.1 is not
    assert logits[0, 0].item() == pytest.approx(0.143009, abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(0.3 * (0.004 + 0.3), abs=1e-6)
    assert logits[0, 2].item() == pytest.approx(0.1, abs=1e-6)


def test_curricularface_hard_negatives_weigh_more_as_t_grows() -> None:
    head = CurricularFaceHead(s=1.0, m=0.5).eval()
    head.t.fill_(0.5)
    logits = head(*one_row(0.6, others=(0.3,)))
    assert logits[0, 1].item() == pytest.approx(0.3 * 0.8, abs=1e-6)
    assert head.t.item() == pytest.approx(0.5)  # no update outside training


def test_curricularface_uses_the_given_target_when_classes_are_sharded() -> None:
    head = CurricularFaceHead(s=1.0, m=0.5).eval()
    cosine = torch.tensor([[0.3, 0.1]])  # this row's target (0.6) lives on another shard
    logits = head(cosine, torch.tensor([-1]), torch.ones(1, 1), target_cosine=torch.tensor([0.6]))
    assert logits[0, 0].item() == pytest.approx(0.3 * 0.3, abs=1e-6)  # t = 0: c·(0 + c)
    with pytest.raises(ValueError, match="target_cosine"):
        head(cosine, torch.tensor([-1]), torch.ones(1, 1))


def test_adaface_tracks_batch_norm_statistics_with_momentum() -> None:
    head = AdaFaceHead()
    cosine = torch.tensor([[0.5, 0.1], [0.4, 0.2]])
    head(cosine, torch.tensor([0, 1]), torch.tensor([[10.0], [30.0]]))
    # mean 20, sample std √200 = 14.1421; EMA from (20, 100) with momentum 0.01
    assert head.batch_mean.item() == pytest.approx(20.0)
    assert head.batch_std.item() == pytest.approx(0.99 * 100.0 + 0.01 * math.sqrt(200.0))


def test_adaface_margin_follows_the_norm_from_arcface_to_cosface_to_negative_angle() -> None:
    head = AdaFaceHead(s=1.0, m=0.4, h=0.333).eval()
    head.batch_mean.fill_(20.0)
    head.batch_std.fill_(1.0)
    cosine = torch.tensor([[0.6, 0.0]] * 3)
    norms = torch.tensor([[5.0], [20.0], [35.0]])  # z = −1, 0, +1 (clipped)
    logits = head(cosine, torch.zeros(3, dtype=torch.long), norms)
    theta = math.acos(0.6)
    assert logits[0, 0].item() == pytest.approx(math.cos(theta + 0.4), abs=1e-5)  # ArcFace
    assert logits[1, 0].item() == pytest.approx(0.6 - 0.4, abs=1e-5)  # CosFace
    assert logits[2, 0].item() == pytest.approx(math.cos(theta - 0.4) - 0.8, abs=1e-5)
    assert head.batch_mean.item() == 20.0  # eval mode: statistics frozen


def test_adaface_clamps_every_cosine_to_one_minus_eps_like_the_authors_head() -> None:
    # mk-minchul/AdaFace head.py: cosine.clamp(-1 + eps, 1 - eps) with eps = 1e-3 on all columns
    head = AdaFaceHead(s=1.0, m=0.4, h=0.333).eval()
    head.batch_mean.fill_(20.0)
    head.batch_std.fill_(1.0)
    cosine = torch.tensor([[1.0, 0.9999, -1.0]])
    logits = head(cosine, torch.tensor([0]), torch.tensor([[20.0]]))  # z = 0: CosFace-like
    assert logits[0, 1].item() == pytest.approx(1.0 - 1e-3, abs=1e-6)
    assert logits[0, 2].item() == pytest.approx(-1.0 + 1e-3, abs=1e-6)
    assert logits[0, 0].item() == pytest.approx((1.0 - 1e-3) - 0.4, abs=1e-6)


def test_adaface_scaler_is_h_times_standardised_norm() -> None:
    head = AdaFaceHead(h=0.333).eval()
    head.batch_mean.fill_(20.0)
    head.batch_std.fill_(10.0)
    z = head.margin_scaler(torch.tensor([[23.0]]))
    assert z.item() == pytest.approx(0.333 * 3.0 / (10.0 + 1e-3), rel=1e-6)


def test_center_loss_value_and_centre_update_match_the_paper() -> None:
    center = CenterLoss(num_classes=2, embedding_size=2, weight=0.1, alpha=0.5)
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    loss = center(embeddings, torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(0.1 / 2 * (1.0 + 4.0) / 2)
    # Δc_0 = Σ(c − x)/(1 + 2) = −(1, 2)/3; c_0 ← c_0 − 0.5·Δc_0
    assert torch.allclose(center.centers[0], torch.tensor([1 / 6, 1 / 3]))
    assert torch.equal(center.centers[1], torch.zeros(2))
    loss.backward()
    # dL/dx = λ·(x − c_old)/N
    assert torch.allclose(embeddings.grad, 0.1 * embeddings.detach() / 2)


def test_factory_builds_every_head_and_rejects_unknown_names() -> None:
    for name in HEADS:
        assert create_head(name).name == name
    with pytest.raises(ValueError, match="known heads: adaface, arcface"):
        create_head("largemargin")


def _heads_for_numerics() -> list[torch.nn.Module]:
    return [
        NormFaceHead(),
        CosFaceHead(),
        ArcFaceHead(),
        ArcFaceHead(easy_margin=True),
        CombinedMarginHead(m1=1.2, m2=0.3, m3=0.2),
        SphereFaceHead(),
        LSoftmaxHead(m=3, base=2.0),
        CurricularFaceHead(),
        AdaFaceHead(),
    ]


def call_head(
    head: torch.nn.Module, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor
) -> torch.Tensor:
    """A head's logits; L-Softmax also gets class-centre norms (2, 1, 0.5, …)."""
    if getattr(head, "needs_weight_norms", False):
        weight_norms = 2.0 ** -torch.arange(cosine.shape[1], dtype=cosine.dtype)
        return head(cosine, labels, norms, weight_norms=weight_norms)
    return head(cosine, labels, norms)


@pytest.mark.parametrize("head", _heads_for_numerics(), ids=lambda h: h.name)
def test_heads_pass_gradcheck_in_float64(head: torch.nn.Module) -> None:
    head = head.double().eval()  # eval: no state update between gradcheck's evaluations
    generator = torch.Generator().manual_seed(0)
    cosine = torch.rand(3, 4, generator=generator, dtype=torch.float64) * 1.6 - 0.8
    cosine.requires_grad_(True)
    labels = torch.tensor([0, 2, 3])
    norms = torch.rand(3, 1, generator=generator, dtype=torch.float64) * 20 + 5
    assert torch.autograd.gradcheck(lambda c: call_head(head, c, labels, norms), (cosine,))


def test_classifier_passes_gradcheck_through_normalisation_in_float64() -> None:
    classifier = MarginSoftmaxClassifier(
        ArcFaceHead(s=8.0), embedding_size=5, num_classes=4, in_place_backward=False
    )
    classifier = classifier.double()
    embeddings = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 1])
    assert torch.autograd.gradcheck(lambda x: classifier(x, labels), (embeddings,))


@pytest.mark.parametrize("head", _heads_for_numerics(), ids=lambda h: h.name)
def test_heads_stay_finite_at_theta_zero_and_pi(head: torch.nn.Module) -> None:
    extremes = [1.0, -1.0, 1.0 - 1e-7, -1.0 + 1e-7, 0.0]
    cosine = torch.tensor([[value, -value, 0.5] for value in extremes], requires_grad=True)
    labels = torch.zeros(len(extremes), dtype=torch.long)
    logits = call_head(head.train(), cosine, labels, torch.full((len(extremes), 1), 12.0))
    torch.nn.functional.cross_entropy(logits, labels).backward()
    assert torch.isfinite(logits).all()
    assert torch.isfinite(cosine.grad).all()


@pytest.mark.parametrize("name", sorted(HEADS))
def test_classifier_logits_stay_float32_and_finite_under_bfloat16_autocast(name: str) -> None:
    torch.manual_seed(0)
    classifier = MarginSoftmaxClassifier(create_head(name), embedding_size=8, num_classes=5)
    embeddings = torch.randn(4, 8)
    labels = torch.tensor([0, 1, 4, 4])
    reference = classifier(embeddings, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = torch.nn.functional.linear(embeddings, torch.eye(8))  # bfloat16 under autocast
        assert features.dtype == torch.bfloat16
        logits, _ = classifier.head_logits(features, labels)
        loss = classifier(features, labels)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference.item(), rel=0.05, abs=0.05)
