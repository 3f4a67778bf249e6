"""Training throughput (samples/s) and peak GPU memory per backbone: forward + backward +
optimizer step.

Each step is the training loop's: the backbone under autocast on CUDA (float16 + the
trainer's gradient scaler; output FC and BatchNorm1d in float32), then the normalised FC with
an ArcFace head and cross-entropy in float32, then SGD. Batches are random tensors already on
the device, so the figure is the compute ceiling that data loading has to keep up with.
Ratios are against the first row. `--partial-fc` adds, per backbone, a row with Partial FC at
1,000,000 classes and sample rate 0.1 (An et al. 2022's setting; arcface_torch reports its
throughput as samples/s per GPU in its logs, the same unit).

    python bench/train_throughput.py                                   # CPU: small batch, few steps
    python bench/train_throughput.py --device cuda --batch-size 128 --iterations 20
    python bench/train_throughput.py --device cuda --backbones r50 --partial-fc   # R50 + PFC 1M
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from training.backbones import create_backbone
from training.heads import ArcFaceHead
from training.partial_fc import MarginSoftmaxClassifier
from training.schedule import make_grad_scaler

DEFAULT_BACKBONES = ("mobilefacenet", "r18", "r34", "r50", "r100")
# Classes of the FC: CASIA-WebFace's 10,572 identities (the configs' smaller data set).
DEFAULT_CLASSES = 10_572
# Partial FC row: 1M identities, 10% of the centres per step (An et al. 2022, "Partial FC").
PARTIAL_FC_CLASSES = 1_000_000
PARTIAL_FC_SAMPLE_RATE = 0.1


@dataclass
class Measurement:
    backbone: str
    classes: int
    sample_rate: float
    parameters_m: float
    samples_per_s: float
    peak_memory_gib: float | None  # CUDA only


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    name: str,
    device: torch.device,
    batch_size: int,
    iterations: int,
    warmup: int,
    num_classes: int,
    amp: bool,
    sample_rate: float = 1.0,
) -> Measurement:
    """samples/s of `iterations` timed training steps after `warmup` untimed ones."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    backbone = create_backbone(name).to(device).train()
    classifier = MarginSoftmaxClassifier(ArcFaceHead(), 512, num_classes, sample_rate).to(device)
    parameters = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        parameters + list(classifier.parameters()), lr=0.01, momentum=0.9, weight_decay=5e-4
    )
    use_amp = amp and device.type == "cuda"
    scaler = make_grad_scaler(device.type, enabled=use_amp)
    images = torch.randn(batch_size, 3, 112, 112, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            embeddings = backbone(images)
        loss = classifier(embeddings, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    parameters_m = sum(p.numel() for p in backbone.parameters()) / 1e6
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Measurement(
        name, num_classes, sample_rate, parameters_m, batch_size * iterations / elapsed, peak
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, help="default: 128 on CUDA, 8 on CPU")
    parser.add_argument("--iterations", type=int, help="timed steps; default: 20 CUDA, 3 CPU")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--classes", type=int, default=DEFAULT_CLASSES)
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    parser.add_argument(
        "--partial-fc",
        action="store_true",
        help=f"also measure Partial FC at {PARTIAL_FC_CLASSES:,} classes, sample rate "
        f"{PARTIAL_FC_SAMPLE_RATE}",
    )
    args = parser.parse_args()

    device_name = args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    on_cuda = device.type == "cuda"
    batch_size = args.batch_size or (128 if on_cuda else 8)
    iterations = args.iterations or (20 if on_cuda else 3)
    if on_cuda:
        torch.backends.cudnn.benchmark = True
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU, {torch.get_num_threads()} threads"
    amp = "float16 autocast" if on_cuda and not args.no_amp else "float32"
    print(
        f"{where}; batch {batch_size}, {iterations} timed steps after {args.warmup}, "
        f"{args.classes} classes, {amp}, torch {torch.__version__}"
    )
    settings = [(args.classes, 1.0)]
    if args.partial_fc:
        settings.append((PARTIAL_FC_CLASSES, PARTIAL_FC_SAMPLE_RATE))
    results = [
        measure(name, device, batch_size, iterations, args.warmup, classes, not args.no_amp, rate)
        for name in args.backbones
        for classes, rate in settings
    ]
    print(
        f"{'backbone':<14}{'classes':>10}{'rate':>6}{'params (M)':>12}{'samples/s':>12}"
        f"{'peak GiB':>10}{'ratio':>8}"
    )
    for result in results:
        ratio = result.samples_per_s / results[0].samples_per_s
        peak = "n/a" if result.peak_memory_gib is None else f"{result.peak_memory_gib:.2f}"
        print(
            f"{result.backbone:<14}{result.classes:>10}{result.sample_rate:>6.2f}"
            f"{result.parameters_m:>12.1f}{result.samples_per_s:>12.1f}{peak:>10}{ratio:>8.2f}"
        )


if __name__ == "__main__":
    main()
