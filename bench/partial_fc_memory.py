"""Peak CPU memory of one Partial FC training step, by how the softmax cross-entropy is computed.

The setting of Partial FC's paper (An et al. 2022): 1,000,000 classes, sample rate 0.1, a batch
of 128 embeddings of 512 (ArcFace head). Each variant runs in its own child process: the class
centres are built, the peak-RSS mark of the process is reset (Linux `/proc/self/clear_refs`,
5), one forward + backward runs, and the step's peak is the high-water mark (VmHWM) above the
resident size just before the step; the same is measured for the cross-entropy alone, from
given logits to their gradient. tracemalloc would not see torch's allocations; RSS does.

Variants:
- `torch`: the head's logits into `F.cross_entropy` (log-softmax saved, its gradient and the
  logits' gradient allocated in backward): what one process ran before;
- `one-buffer`: `MarginSoftmaxClassifier` as it is, `softmax_cross_entropy` computing the
  probabilities and then the gradient in the logits' own buffer (arcface_torch's way).

    python bench/partial_fc_memory.py                      # both variants, < 1 min on 2 cores
    python bench/partial_fc_memory.py --classes 100000     # smaller
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

from training.heads import ArcFaceHead
from training.partial_fc import MarginSoftmaxClassifier, softmax_cross_entropy

# Partial FC's setting (An et al. 2022): 1M identities, 10% of the centres per step.
CLASSES = 1_000_000
SAMPLE_RATE = 0.1
BATCH = 128
EMBEDDING = 512
VARIANTS = ("torch", "one-buffer")
MIB = 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status (Linux only)")


def measure(variant: str, classes: int, sample_rate: float, batch: int, embedding: int) -> dict:
    """One step of `variant` in this process; returns the step's peak above its start."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    classifier = MarginSoftmaxClassifier(ArcFaceHead(), embedding, classes, sample_rate)
    embeddings = torch.randn(batch, embedding, requires_grad=True)
    labels = torch.randint(0, classes, (batch,))
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start_kib = _status_kib("VmRSS")
    if variant == "torch":
        logits, remapped = classifier.head_logits(embeddings, labels)
        loss = F.cross_entropy(logits, remapped)
    else:
        loss = classifier(embeddings, labels)
    loss.backward()
    step_peak_kib = _status_kib("VmHWM") - start_kib
    # The loss alone: from given logits to their gradient.
    logits = torch.randn(batch, max(int(sample_rate * classes), 1)) * 10
    logits.requires_grad_(True)
    targets = torch.randint(0, logits.shape[1], (batch,))
    Path("/proc/self/clear_refs").write_text("5")
    start_kib = _status_kib("VmRSS")
    if variant == "torch":
        F.cross_entropy(logits, targets).backward()
    else:
        softmax_cross_entropy(logits, targets).backward()
    loss_peak_kib = _status_kib("VmHWM") - start_kib
    return {
        "variant": variant,
        "loss": round(loss.item(), 4),
        "step_peak_mib": round(step_peak_kib / 1024, 1),
        "loss_peak_mib": round(loss_peak_kib / 1024, 1),
        "logits_buffer_mib": round(logits.numel() * 4 / MIB, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=CLASSES)
    parser.add_argument("--sample-rate", type=float, default=SAMPLE_RATE)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--embedding", type=int, default=EMBEDDING)
    parser.add_argument("--variant", choices=VARIANTS, help="measure one in this process")
    args = parser.parse_args()
    sizes = (args.classes, args.sample_rate, args.batch, args.embedding)
    if args.variant:
        print(json.dumps(measure(args.variant, *sizes)))
        return 0
    print(
        f"Partial FC step, C={args.classes:,}, sample rate {args.sample_rate}, batch "
        f"{args.batch}, embedding {args.embedding}, CPU (peak RSS above the step's start)"
    )
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--variant", variant]
        command += ["--classes", str(args.classes), "--sample-rate", str(args.sample_rate)]
        command += ["--batch", str(args.batch), "--embedding", str(args.embedding)]
        result = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
        print(
            f"  {variant:10s} step peak {result['step_peak_mib']:8.1f} MiB, cross-entropy alone "
            f"{result['loss_peak_mib']:6.1f} MiB (one logits buffer "
            f"{result['logits_buffer_mib']} MiB; loss {result['loss']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
