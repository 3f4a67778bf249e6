"""Recognizer latency by CPU back-end: FP32 at each onnxruntime graph optimisation level, and
the INT8 (QDQ) recognizers `python -m service quantize-recognizer` builds (stem and head kept
FP32, its default, and every layer INT8), against FP32 at
onnxruntime's default level (`all`) in the same run. Also prints the INT8 parity figures
(the tool refuses a pack below cosine 0.99).

Rounds interleave the back-ends, so machine noise hits them alike; medians over the rounds.

    python bench/recognizer_backends.py --pack ../shared/assets/models/scrfd500m_mbf128 \
        --images ../shared/assets/images/deepface \
        --pairs ../shared/assets/images/deepface/master.csv --rounds 30
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from service.faces.embedder import Embedder
from service.packs import load_pack
from service.packtools.quantize import (
    Fp32Layers,
    aligned_crops,
    check_parity,
    quantize_model,
    read_pairs,
)
from service.runtime import GRAPH_OPTIMIZATION_LEVELS, RuntimeOptions, create_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder searched for *.jpg")
    parser.add_argument("--pairs", type=Path, help="CSV of file_x,file_y (default: all pairs)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    pack = load_pack(args.pack)
    photos = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    crops = aligned_crops(pack, photos)
    spec = pack.manifest.recognizer
    embedders: dict[str, Embedder] = {}
    for level in GRAPH_OPTIMIZATION_LEVELS:
        runtime = RuntimeOptions("cpu", args.threads, graph_optimization=level)
        embedders[f"fp32 {level}"] = Embedder(create_session(pack.recognizer_path, runtime), spec)
    with tempfile.TemporaryDirectory() as scratch:
        for name, fp32 in (("int8 mixed", Fp32Layers()), ("int8 every layer", Fp32Layers(0, 0))):
            int8 = Path(scratch) / f"{name}.onnx"
            reference = embedders["fp32 all"]
            quantize_model(pack.recognizer_path, int8, reference, [c.crop for c in crops], fp32)
            runtime = RuntimeOptions("cpu", args.threads)
            embedders[name] = Embedder(create_session(int8, runtime), spec)
    pairs = read_pairs(args.pairs) if args.pairs else None
    threshold = pack.manifest.threshold
    reports = {
        name: check_parity(embedders["fp32 all"], embedders[name], crops, threshold, pairs)
        for name in ("int8 mixed", "int8 every layer")
    }

    images = [c.crop for c in crops]
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in embedders for b in (1, 8)}
    for embedder in embedders.values():  # warm-up
        embedder.raw_embeddings(images[:8])
    for round_index in range(args.rounds):
        start = (round_index * 8) % max(1, len(images) - 8)
        for batch in (1, 8):
            chunk = images[start : start + batch]
            for name, embedder in embedders.items():
                began = time.perf_counter()
                embedder.raw_embeddings(chunk)
                times[(name, batch)].append((time.perf_counter() - began) * 1000.0)

    print(
        f"{len(crops)} crops from {len(photos)} photos, {args.threads} intra-op thread(s), "
        f"{args.rounds} rounds"
    )
    print("| recognizer | batch 1 ms | ratio | batch 8 ms | ratio |")
    print("| --- | --- | --- | --- | --- |")
    base = {b: statistics.median(times[("fp32 all", b)]) for b in (1, 8)}
    for name in embedders:
        cells = []
        for batch in (1, 8):
            median = statistics.median(times[(name, batch)])
            cells += [f"{median:.2f}", f"{base[batch] / median:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, report in reports.items():
        print(f"{name} parity: {report.describe()} -> {'passes' if report.passed else 'refused'}")


if __name__ == "__main__":
    main()
