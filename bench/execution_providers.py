"""The pack's models on each CPU execution provider this onnxruntime build has (the plain
`CPUExecutionProvider`, and `OpenVINOExecutionProvider` where `onnxruntime-openvino` is the
installed build), against the CPU provider in the same run: model latency, then parity on real
photos, end to end through the service's pipeline (decode, detect, align, embed).

Parity is issue 15's bar for a faster back-end: cosine >= 0.99 between the providers'
embeddings of every face, and the same decision on every deepface pair at the pack threshold.
Detection is compared too (faces found, landmark shift in pixels), since a detector that moves
landmarks moves embeddings.

    python bench/execution_providers.py --pack ../shared/assets/models/scrfd500m_mbf128 \
        --images ../shared/assets/images/deepface \
        --pairs ../shared/assets/images/deepface/master.csv

`onnxruntime-openvino` replaces the `onnxruntime` module, so run it from an environment where
it is installed instead (docs/performance.md). Rounds interleave the providers, so machine
noise hits them alike; medians over the rounds. `--threads` is each session's intra-op threads
(the service's default with one worker on this machine is 1, in one slot per CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.faces.images import decode_image
from service.faces.pipeline import AnalyzedImage, FacePipeline, PipelineOptions
from service.packs import load_pack
from service.packtools.quantize import COSINE_FLOOR, aligned_crops, read_pairs
from service.runtime import CPU, OPENVINO, RuntimeOptions

CANDIDATES = (CPU, OPENVINO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder searched for *.jpg")
    parser.add_argument("--pairs", type=Path, help="CSV of file_x,file_y (default: all pairs)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    available = ort.get_available_providers()
    providers = [p for p in CANDIDATES if p in available]
    print(f"onnxruntime {ort.__version__}: {', '.join(providers)}")
    pack = load_pack(args.pack)
    pipelines = {
        name: FacePipeline.from_pack(
            pack, PipelineOptions(), RuntimeOptions(name, intra_op_threads=args.threads)
        )
        for name in providers
    }
    photos = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    uploads = {path.name: path.read_bytes() for path in photos}

    # Latency: the detector on the letterbox the service feeds it, the recognizer at batch 1
    # and 8, each over the same inputs for every provider within a round.
    sample = decode_image(next(iter(uploads.values())))
    crops = [face.crop for face in aligned_crops(pack, photos[:8])][:8]
    timings: dict[tuple[str, str], list[float]] = {
        (name, what): [] for name in pipelines for what in ("detect", "embed 1", "embed 8")
    }
    for pipeline in pipelines.values():  # warm-up (OpenVINO compiles on first use)
        pipeline.detector.detect(sample)
        pipeline.embedder.embed(crops)
    for _ in range(args.rounds):
        for name, pipeline in pipelines.items():
            for what, call in (
                ("detect", lambda p=pipeline: p.detector.detect(sample)),
                ("embed 1", lambda p=pipeline: p.embedder.embed(crops[:1])),
                ("embed 8", lambda p=pipeline: p.embedder.embed(crops)),
            ):
                began = time.perf_counter()
                call()
                timings[(name, what)].append((time.perf_counter() - began) * 1000.0)
    print(
        f"{args.rounds} rounds, {args.threads} intra-op thread(s), detector input from a "
        f"{sample.shape[1]}x{sample.shape[0]} photo"
    )
    print("| provider | detect ms | ratio | embed 1 ms | ratio | embed 8 ms | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in pipelines:
        cells = []
        for what in ("detect", "embed 1", "embed 8"):
            base = statistics.median(timings[(CPU, what)])
            mine = statistics.median(timings[(name, what)])
            cells += [f"{mine:.2f}", f"{base / mine:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")

    # Parity, end to end on every photo.
    threshold = pack.manifest.threshold
    results = {
        name: {photo: pipeline.analyze(data) for photo, data in uploads.items()}
        for name, pipeline in pipelines.items()
    }
    pairs = read_pairs(args.pairs) if args.pairs else _all_pairs(results[CPU])
    for name in pipelines:
        if name == CPU:
            continue
        _report(name, results[CPU], results[name], pairs, threshold)


def _all_pairs(results: dict[str, AnalyzedImage]) -> list[tuple[str, str]]:
    names = sorted(name for name, result in results.items() if result.faces)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def _report(
    name: str,
    reference: dict[str, AnalyzedImage],
    candidate: dict[str, AnalyzedImage],
    pairs: list[tuple[str, str]],
    threshold: float,
) -> None:
    cosines: list[tuple[float, str]] = []
    shifts: list[float] = []
    different_counts = []
    for photo, ours in reference.items():
        theirs = candidate[photo]
        if len(ours.faces) != len(theirs.faces):
            different_counts.append(photo)
            continue
        for a, b in zip(ours.faces, theirs.faces, strict=True):
            cosines.append((float(a.embedding @ b.embedding), photo))
            shifts.append(float(np.abs(a.face.landmarks - b.face.landmarks).max()))
    changed = 0
    for x, y in pairs:
        if not (
            reference[x].faces and reference[y].faces and candidate[x].faces and candidate[y].faces
        ):
            continue
        ours = float(reference[x].faces[0].embedding @ reference[y].faces[0].embedding)
        theirs = float(candidate[x].faces[0].embedding @ candidate[y].faces[0].embedding)
        changed += (ours >= threshold) != (theirs >= threshold)
    worst, worst_photo = min(cosines)
    passed = worst >= COSINE_FLOOR and changed == 0 and not different_counts
    print(
        f"{name} vs {CPU} on {len(reference)} photos: {len(cosines)} faces, cosine min "
        f"{worst:.5f} ({worst_photo}), median {statistics.median(c for c, _ in cosines):.5f} "
        f"(floor {COSINE_FLOOR}); landmarks moved at most {max(shifts):.3f} px; "
        f"{len(different_counts)} photos with another face count; {changed} of {len(pairs)} "
        f"pair decisions changed at threshold {threshold:.3f} -> "
        f"{'passes' if passed else 'fails'}"
    )


if __name__ == "__main__":
    main()
