"""The face-verification protocol: embed image pairs, score them by cosine similarity, report.

Reported per set (`VerificationResult`):
- 10-fold accuracy as in LFW's protocol: for each fold, the threshold with the best accuracy
  on the other nine folds is applied to it; mean and standard deviation over the folds. Two
  protocols choose that threshold:
  - "insightface", as insightface's `recognition/arcface_torch/eval/verification.py` (the
    numbers of papers and of arcface_torch's logs): squared L2 distance of the unit
    embeddings, d = 2 − 2·cos, thresholds 0, 0.01, …, 3.99, a match when d < threshold,
    the first best threshold (np.argmax); contiguous folds as sklearn's KFold(10);
  - "exact": the best threshold over all cosine midpoints, a match when cos ≥ threshold
    (the service's rule); it can differ from insightface's by a few hundredths of a point.
  The default ("auto") is insightface for `.bin` sets, exact for the others,
- TAR at FAR 1e-1 … 1e-6, for each FAR that the number of mismatched pairs can resolve
  (at least 1/FAR of them),
- the similarity threshold at a target FAR (what a deployment should use),
- the ROC curve, saved as PNG by `plot_roc`.

The same code evaluates a PyTorch backbone (`TorchEmbedder`) and an ONNX recognizer of a
model pack (`OnnxEmbedder`), with or without flip-test (embedding of the image plus that of
its mirror image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from service.packs.verification_sets import false_matches_allowed, threshold_at_fmr
from training.data import IMAGE_SIZE, to_batch
from training.embeddings import l2_normalize
from training.verification import (
    VerificationSet,
    load_bin,
    load_pairs,
    synthetic_verification_set,
)

# LFW's protocol: 10 folds (Huang et al. 2007, "View 2").
NUM_FOLDS = 10
# insightface verification.py `evaluate`: thresholds on the squared L2 distance of unit
# embeddings, np.arange(0, 4, 0.01).
INSIGHTFACE_DISTANCE_THRESHOLDS = np.arange(0, 4, 0.01)
PROTOCOLS = ("auto", "insightface", "exact")
# FARs at which TAR is reported (IJB-B/C style), where the pair count allows.
REPORTED_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
DEFAULT_TARGET_FAR = 1e-3
# Images per forward pass when embedding an evaluation set.
if TYPE_CHECKING:
    from service.faces.embedder import Embedder
    from service.packs import RecognizerSpec

EMBED_BATCH = 64
# Seed of the synthetic evaluation identities: far from any training seed, so unseen identities.
SYNTHETIC_EVAL_SEED = 1_000

# Turns BGR uint8 crops (N, H, W, 3) into raw (un-normalised) embeddings (N, D).
RawEmbedder = Callable[[np.ndarray], np.ndarray]


class TorchEmbedder:
    """Raw embeddings from a PyTorch backbone, with the training pre-processing."""

    def __init__(
        self, backbone: nn.Module, device: str | torch.device = "cpu", batch_size: int = EMBED_BATCH
    ) -> None:
        self.backbone, self.device, self.batch_size = backbone, torch.device(device), batch_size
        self.input_size = int(getattr(backbone, "input_size", IMAGE_SIZE))

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            outputs = [
                self.backbone(to_batch(images[i : i + self.batch_size]).to(self.device))
                .float()
                .cpu()
                for i in range(0, len(images), self.batch_size)
            ]
        finally:
            self.backbone.train(was_training)
        return torch.cat(outputs).numpy()


class OnnxEmbedder:
    """Raw embeddings from an ONNX recognizer, pre-processed exactly as the service does
    (`service.faces.embedder.Embedder`: colour order, mean and std from the pack)."""

    def __init__(
        self,
        onnx_path: Path,
        color_order: str = "RGB",
        mean: float = 127.5,
        std: float = 127.5,
        providers: Sequence[str] | None = None,
    ) -> None:
        from service.packs import RecognizerSpec

        spec = RecognizerSpec(
            file=Path(onnx_path).name,
            color_order=color_order,
            mean=mean,
            std=std,
            input_size=IMAGE_SIZE,
            embedding_size=0,  # read from the model
        )
        self._embedder = _service_embedder(Path(onnx_path), spec, providers)

    @classmethod
    def from_pack(cls, pack_dir: Path, providers: Sequence[str] | None = None) -> OnnxEmbedder:
        """Any pack the service loads: ours (pack.json) or an InsightFace folder."""
        from service.packs import load_pack

        pack = load_pack(Path(pack_dir))
        embedder = cls.__new__(cls)
        embedder._embedder = _service_embedder(
            pack.recognizer_path, pack.manifest.recognizer, providers
        )
        return embedder

    @property
    def input_size(self) -> int:
        return self._embedder.input_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._embedder.raw_embeddings(list(images))


def _service_embedder(
    path: Path, spec: RecognizerSpec, providers: Sequence[str] | None
) -> Embedder:
    from service.faces.embedder import Embedder
    from service.runtime import RuntimeOptions, create_session

    runtime = RuntimeOptions(providers=",".join(providers) if providers else "cpu")
    return Embedder(create_session(path, runtime), spec)


def embed(embedder: RawEmbedder, images: np.ndarray, flip: bool = False) -> torch.Tensor:
    """Unit embeddings (N, D); with `flip`, of the sum of the image's and its mirror's."""
    raw = torch.from_numpy(embedder(images))
    if flip:
        raw = raw + torch.from_numpy(embedder(np.ascontiguousarray(images[:, :, ::-1])))
    return l2_normalize(raw.float())


def pair_scores(embeddings: torch.Tensor) -> np.ndarray:
    """Cosine similarity of each pair (rows 2i and 2i + 1) of unit embeddings."""
    return (embeddings[0::2] * embeddings[1::2]).sum(dim=1).numpy().astype(np.float64)


def _best_threshold(scores: np.ndarray, issame: np.ndarray) -> float:
    """The threshold (accept when score ≥ threshold) with the highest accuracy on these pairs."""
    order = np.argsort(scores)
    sorted_scores, sorted_same = scores[order], issame[order]
    # Threshold just below position k accepts pairs k … n-1: correct are the mismatched pairs
    # below k plus the matched ones from k on.
    negatives_below = np.concatenate([[0], np.cumsum(~sorted_same)])
    positives_from = np.concatenate([np.cumsum(sorted_same[::-1])[::-1], [0]])
    correct = negatives_below + positives_from
    k = int(np.argmax(correct))
    if k == 0:
        return float(sorted_scores[0]) - 1e-6
    if k == len(scores):
        return float(sorted_scores[-1]) + 1e-6
    return float(sorted_scores[k - 1] + sorted_scores[k]) / 2.0


def kfold_accuracy(
    scores: np.ndarray, issame: np.ndarray, num_folds: int = NUM_FOLDS
) -> tuple[float, float, float]:
    """(mean accuracy, std, mean threshold) over contiguous folds; each fold is scored with
    the best threshold of the others."""
    num_folds = max(2, min(num_folds, len(scores)))
    folds = np.array_split(np.arange(len(scores)), num_folds)
    accuracies, thresholds = [], []
    for fold in folds:
        train = np.setdiff1d(np.arange(len(scores)), fold)
        threshold = _best_threshold(scores[train], issame[train])
        accuracies.append(float(np.mean((scores[fold] >= threshold) == issame[fold])))
        thresholds.append(threshold)
    return float(np.mean(accuracies)), float(np.std(accuracies)), float(np.mean(thresholds))


def insightface_kfold_accuracy(
    scores: np.ndarray, issame: np.ndarray, num_folds: int = NUM_FOLDS
) -> tuple[float, float, float]:
    """(mean accuracy, std, mean threshold as a cosine) as insightface's verification.py
    computes them: d = ‖a − b‖² = 2 − 2·cos of the unit embeddings, thresholds 0 … 3.99 step
    0.01, a match when d < threshold, per fold the first threshold with the best accuracy on
    the other folds. The threshold is reported as the cosine 1 − d/2 (a match is then
    cos > threshold)."""
    distances = 2.0 - 2.0 * np.asarray(scores, dtype=np.float64)
    thresholds = INSIGHTFACE_DISTANCE_THRESHOLDS
    num_folds = max(2, min(num_folds, len(scores)))
    folds = np.array_split(np.arange(len(scores)), num_folds)  # = KFold(n, shuffle=False)
    accuracies, chosen = [], []
    for fold in folds:
        train = np.setdiff1d(np.arange(len(scores)), fold)
        predicted = distances[train][None, :] < thresholds[:, None]
        train_accuracy = (predicted == issame[train][None, :]).mean(axis=1)
        best = thresholds[int(np.argmax(train_accuracy))]
        accuracies.append(float(np.mean((distances[fold] < best) == issame[fold])))
        chosen.append(1.0 - best / 2.0)
    return float(np.mean(accuracies)), float(np.std(accuracies)), float(np.mean(chosen))


def resolve_protocol(protocol: str, source_format: str) -> str:
    """ "auto" → "insightface" for `.bin` sets, "exact" otherwise; others as given."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}: use {', '.join(PROTOCOLS)}")
    if protocol == "auto":
        return "insightface" if source_format == "bin" else "exact"
    return protocol


def threshold_at_far(scores: np.ndarray, issame: np.ndarray, far: float) -> float | None:
    """The lowest threshold accepting (score >= threshold, as `service.matching.decide` does)
    at most a `far` fraction of mismatched pairs (`threshold_at_fmr`, edges included); None
    when the mismatched pairs are too few to show one false match at that rate."""
    impostor = scores[~issame]
    if false_matches_allowed(len(impostor), far) < 1:
        return None
    return threshold_at_fmr(impostor, far)


def roc_curve(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, TAR) at every distinct threshold, FAR increasing."""
    order = np.argsort(-scores, kind="stable")
    same = issame[order]
    tar = np.cumsum(same) / max(int(same.sum()), 1)
    far = np.cumsum(~same) / max(int((~same).sum()), 1)
    return np.concatenate([[0.0], far]), np.concatenate([[0.0], tar])


@dataclass
class VerificationResult:
    """Everything measured on one verification set."""

    name: str
    num_pairs: int
    num_matched: int
    accuracy: float
    accuracy_std: float
    best_threshold: float
    target_far: float
    threshold_at_target_far: float | None
    tar_at_far: dict[float, float] = field(default_factory=dict)
    protocol: str = "exact"
    flip: bool = False
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    issame: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly summary (no per-pair arrays)."""
        return {
            "name": self.name,
            "num_pairs": self.num_pairs,
            "num_matched": self.num_matched,
            "protocol": self.protocol,
            "flip_test": self.flip,
            "accuracy": round(self.accuracy, 6),
            "accuracy_std": round(self.accuracy_std, 6),
            "best_threshold": round(self.best_threshold, 6),
            "target_far": self.target_far,
            "threshold_at_target_far": None
            if self.threshold_at_target_far is None
            else round(self.threshold_at_target_far, 6),
            "tar_at_far": {f"{far:g}": round(tar, 6) for far, tar in self.tar_at_far.items()},
        }

    def summary(self) -> str:
        tars = ", ".join(f"TAR@FAR={far:g}: {tar:.4f}" for far, tar in self.tar_at_far.items())
        threshold = (
            "n/a (too few mismatched pairs)"
            if self.threshold_at_target_far is None
            else f"{self.threshold_at_target_far:.4f}"
        )
        flip = ", flip-test" if self.flip else ""
        return (
            f"{self.name}: accuracy {self.accuracy:.4f} ± {self.accuracy_std:.4f} "
            f"({self.protocol} protocol{flip}, {self.num_pairs} pairs); "
            f"{tars or 'TAR@FAR: n/a'}; "
            f"threshold at FAR {self.target_far:g}: {threshold}"
        )


def verification_result(
    name: str,
    scores: np.ndarray,
    issame: np.ndarray,
    target_far: float = DEFAULT_TARGET_FAR,
    protocol: str = "exact",
    flip: bool = False,
) -> VerificationResult:
    """All metrics of one set from its pair scores; `protocol` ("insightface" or "exact")
    chooses how the 10-fold accuracy is computed."""
    issame = np.asarray(issame, dtype=bool)
    protocol = resolve_protocol(protocol, "")
    accuracy_of = insightface_kfold_accuracy if protocol == "insightface" else kfold_accuracy
    accuracy, accuracy_std, best = accuracy_of(scores, issame)
    tar_at_far = {}
    for far in REPORTED_FARS:
        threshold = threshold_at_far(scores, issame, far)
        if threshold is not None and issame.any():
            tar_at_far[far] = float(np.mean(scores[issame] >= threshold))
    return VerificationResult(
        name=name,
        num_pairs=len(scores),
        num_matched=int(issame.sum()),
        accuracy=accuracy,
        accuracy_std=accuracy_std,
        best_threshold=best,
        target_far=target_far,
        threshold_at_target_far=threshold_at_far(scores, issame, target_far),
        tar_at_far=tar_at_far,
        protocol=protocol,
        flip=flip,
        scores=scores,
        issame=issame,
    )


def evaluate_set(
    embedder: RawEmbedder,
    verification_set: VerificationSet,
    flip: bool = False,
    target_far: float = DEFAULT_TARGET_FAR,
    protocol: str = "auto",
) -> VerificationResult:
    """Embed a set's images and measure it (`protocol`: see the module docstring)."""
    scores = pair_scores(embed(embedder, verification_set.images, flip))
    return verification_result(
        verification_set.name,
        scores,
        verification_set.issame,
        target_far,
        resolve_protocol(protocol, verification_set.source_format),
        flip,
    )


def evaluate_set_with_and_without_flip(
    embedder: RawEmbedder,
    verification_set: VerificationSet,
    target_far: float = DEFAULT_TARGET_FAR,
    protocol: str = "auto",
) -> dict[bool, VerificationResult]:
    """Both results, {False: plain, True: flip-test}, from one pass over the images and one
    over their mirrors (flip-test adds the two raw embeddings)."""
    raw = torch.from_numpy(embedder(verification_set.images)).float()
    mirrored = torch.from_numpy(
        embedder(np.ascontiguousarray(verification_set.images[:, :, ::-1]))
    ).float()
    protocol = resolve_protocol(protocol, verification_set.source_format)
    return {
        flip: verification_result(
            verification_set.name,
            pair_scores(l2_normalize(raw + mirrored if flip else raw)),
            verification_set.issame,
            target_far,
            protocol,
            flip,
        )
        for flip in (False, True)
    }


def pooled_threshold(results: Sequence[VerificationResult], far: float) -> float | None:
    """Threshold at `far` over the pairs of all sets together (None if they are too few)."""
    if not results:
        return None
    scores = np.concatenate([r.scores for r in results])
    issame = np.concatenate([r.issame for r in results])
    return threshold_at_far(scores, issame, far)


def load_verification_set(spec: str, image_size: int = IMAGE_SIZE) -> VerificationSet:
    """`path.bin` | `pairs.txt@images_dir` | `synthetic` (unseen synthetic identities)."""
    if spec == "synthetic":
        return synthetic_verification_set(seed=SYNTHETIC_EVAL_SEED, image_size=image_size)
    if "@" in spec:
        pairs, images = spec.split("@", 1)
        return load_pairs(Path(pairs), Path(images), image_size)
    path = Path(spec)
    if path.suffix == ".bin":
        if not path.is_file():
            raise FileNotFoundError(
                f"evaluation set {path} not found: download it with the training data, or "
                "leave it out (e.g. --set eval_sets=())"
            )
        return load_bin(path, image_size)
    raise ValueError(
        f"evaluation set {spec!r}: give an InsightFace .bin, 'pairs.txt@images_dir' or 'synthetic'"
    )


def plot_roc(results: Sequence[VerificationResult], path: Path) -> Path:
    """Save the ROC curves (TAR against FAR, log scale) of `results` as a PNG; sets without
    both matched and mismatched pairs have no curve and are left out."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for result in results:
        if result.issame.all() or not result.issame.any():
            continue
        far, tar = roc_curve(result.scores, result.issame)
        positive = far > 0
        axes.plot(far[positive], tar[positive], label=f"{result.name} (acc {result.accuracy:.4f})")
    axes.set_xscale("log")
    axes.set_xlabel("false accept rate")
    axes.set_ylabel("true accept rate")
    axes.set_ylim(0.0, 1.01)
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
