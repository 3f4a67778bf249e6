"""Passive liveness, measured honestly: BPCER on live photos, APCER on attack photos, the
effect of our detector's boxes, and the cost per face.

ISO/IEC 30107-3 terms: BPCER (bona fide presentation classification error rate) is the share
of live faces refused; APCER (attack presentation classification error rate) the share of
attacks accepted. Both are printed with their sample sizes: a handful of attacks gives a wide
interval, not a rate to quote.

- `--live` folders (searched recursively for photos) hold live captures only; the largest face
  of each is checked, as /verify does. `--attacks` hold presentation attacks only.
- With `--source-detector DEPLOY.prototxt MODEL.caffemodel` (the RetinaFace shipped with
  Silent-Face-Anti-Spoofing), each face is also scored on the box that detector gives, to show
  whether our SCRFD boxes shift the scores the models were trained with.
- Cost: `analyze` (decode, detect, align, embed the largest face) with and without the
  liveness stage, median over `--repeat` runs per photo.

    python -m training export-liveness --pack /tmp/pack 2.7_80x80_MiniFASNetV2.pth \
        4_0_0_80x80_MiniFASNetV1SE.pth      # a copy of a pack, with liveness models added
    python bench/liveness.py --pack /tmp/pack --live ../shared/assets/images \
        --attacks /tmp/samples/attacks --live /tmp/samples/live
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from service.errors import ServiceError
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.faces.types import DetectedFace
from service.packs import load_pack
from service.runtime import RuntimeOptions

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
# The source's detector settings (src/anti_spoof_predict.py: Detection).
SOURCE_DETECTOR_SIDE = 192
SOURCE_DETECTOR_MEAN = (104, 117, 123)
# The source's `detector_confidence`; its get_bbox keeps the best box whatever its confidence,
# which on a photo where the detector finds nothing is a meaningless corner box: those faces
# are left out of the comparison and counted.
SOURCE_DETECTOR_CONFIDENCE = 0.6


@dataclass
class Scored:
    path: Path
    score: float
    live: bool
    source_box_score: float | None = None
    box: np.ndarray | None = None
    source_box: np.ndarray | None = None


def photos_in(folders: list[Path]) -> list[Path]:
    return sorted(
        path
        for folder in folders
        for path in folder.rglob("*")
        if path.suffix.lower() in PHOTO_SUFFIXES and path.is_file()
    )


def wilson_interval(errors: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound for small samples and 0 errors)."""
    if total == 0:
        return 0.0, 1.0
    p = errors / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


class SourceDetector:
    """The RetinaFace (Caffe) the liveness models were trained with, run as the source runs
    it: the image scaled to about 192x192 pixels, the most confident box, (x, y, w, h)."""

    def __init__(self, prototxt: Path, model: Path) -> None:
        self._net = cv2.dnn.readNetFromCaffe(str(prototxt), str(model))

    def box(self, image: np.ndarray) -> np.ndarray | None:
        height, width = image.shape[:2]
        small = image
        if width * height >= SOURCE_DETECTOR_SIDE**2:
            ratio = width / height
            size = (
                int(SOURCE_DETECTOR_SIDE * math.sqrt(ratio)),
                int(SOURCE_DETECTOR_SIDE / math.sqrt(ratio)),
            )
            small = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        blob = cv2.dnn.blobFromImage(small, 1, mean=SOURCE_DETECTOR_MEAN)
        self._net.setInput(blob, "data")
        out = self._net.forward("detection_out").squeeze()
        best = out[int(np.argmax(out[:, 2]))]
        if best[2] < SOURCE_DETECTOR_CONFIDENCE:
            return None
        left, top = best[3] * width, best[4] * height
        right, bottom = best[5] * width, best[6] * height
        # The source keeps (int(left), int(top), int(right - left + 1), int(bottom - top + 1)).
        x, y = int(left), int(top)
        w, h = int(right - left + 1), int(bottom - top + 1)
        return np.array([x, y, x + w, y + h], np.float32)


def score_photos(
    pipeline: FacePipeline, photos: list[Path], source: SourceDetector | None
) -> tuple[list[Scored], list[Path]]:
    scored, faceless = [], []
    for path in photos:
        data = path.read_bytes()
        try:
            image = pipeline.analyze(data, faces="largest", liveness=True)
        except ServiceError:
            faceless.append(path)
            continue
        if not image.faces:
            faceless.append(path)
            continue
        verdict = image.faces[0].liveness
        other, source_box = None, None
        if source is not None:
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            source_box = source.box(pixels)
            if source_box is not None:
                face = DetectedFace(source_box, np.zeros((5, 2), np.float32), 1.0)
                other = float(pipeline.liveness.scores(pixels, [face])[0])
        box = image.faces[0].face.box
        scored.append(Scored(path, verdict.score, verdict.live, other, box, source_box))
    return scored, faceless


def report(label: str, scored: list[Scored], faceless: list[Path], attacks: bool) -> None:
    wrong = [s for s in scored if s.live == attacks]
    name = "APCER (attacks accepted)" if attacks else "BPCER (live faces refused)"
    low, high = wilson_interval(len(wrong), len(scored))
    rate = len(wrong) / len(scored) if scored else float("nan")
    print(f"\n{label}: {len(scored)} faces checked, {len(faceless)} photos without a face")
    print(f"  {name}: {len(wrong)}/{len(scored)} = {rate:.1%} (95% CI {low:.1%}-{high:.1%})")
    for item in sorted(scored, key=lambda s: s.score):
        mark = "  <-- wrong" if item.live == attacks else ""
        other = (
            f"  source-box {item.source_box_score:.3f}" if item.source_box_score is not None else ""
        )
        print(f"    {item.score:.3f}{other}  {item.path.parent.name}/{item.path.name}{mark}")


def box_shift(scored: list[Scored], threshold: float) -> None:
    both = [s for s in scored if s.source_box is not None and s.box is not None]
    missed = [s.path.name for s in scored if s.source_box is None]
    if not both:
        return
    ours = np.array([s.score for s in both])
    theirs = np.array([s.source_box_score for s in both])
    flips = int(np.sum((ours >= threshold) != (theirs >= threshold)))
    print(
        f"\nSCRFD vs source RetinaFace boxes, {len(both)} faces (RetinaFace found none in "
        f"{len(missed)}: {', '.join(missed) or '-'}): |score difference| median "
        f"{np.median(np.abs(ours - theirs)):.3f}, max {np.max(np.abs(ours - theirs)):.3f}; "
        f"mean score {ours.mean():.3f} (SCRFD) vs {theirs.mean():.3f} (RetinaFace); "
        f"decisions that differ: {flips}"
    )
    a = np.array([s.box for s in both])
    b = np.array([s.source_box for s in both])
    aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    inter = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None) * np.clip(
        np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None
    )
    iou = inter / (aw * ah + bw * bh - inter)
    centre_dy = ((b[:, 1] + b[:, 3]) - (a[:, 1] + a[:, 3])) / 2 / ah
    print(
        f"  box shapes (medians): height/width {np.median(ah / aw):.2f} (SCRFD) vs "
        f"{np.median(bh / bw):.2f} (RetinaFace); RetinaFace width x{np.median(bw / aw):.2f}, "
        f"height x{np.median(bh / ah):.2f}, centre {np.median(centre_dy):+.3f} of the SCRFD "
        f"height lower; IoU median {np.median(iou):.2f}, min {iou.min():.2f}"
    )


def cost(pipeline: FacePipeline, photos: list[Path], repeat: int) -> None:
    with_ms, without_ms, stage_ms = [], [], []
    for path in photos:
        data = path.read_bytes()
        pipeline.analyze(data, faces="largest", liveness=True)  # warm-up
        for _ in range(repeat):
            start = time.perf_counter()
            pipeline.analyze(data, faces="largest")
            without_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            image = pipeline.analyze(data, faces="largest", liveness=True)
            with_ms.append((time.perf_counter() - start) * 1000)
            stage_ms.append(image.timings_ms.get("liveness", 0.0))
    base, checked = statistics.median(without_ms), statistics.median(with_ms)
    print(
        f"\ncost, {len(photos)} photos x {repeat}: analyze (largest face) median "
        f"{base:.1f} ms without liveness, {checked:.1f} ms with (+{checked - base:.1f} ms, "
        f"{(checked - base) / base:+.0%}); liveness stage alone median "
        f"{statistics.median(stage_ms):.2f} ms per face (both models at 80x80)"
    )


def crowd_cost(pipeline: FacePipeline, photos: list[Path], repeat: int) -> None:
    """Every face of the photo with the most faces: the two model calls are shared by all."""
    crowd = max(photos, key=lambda path: len(pipeline.detect(path.read_bytes()).faces))
    data = crowd.read_bytes()
    faces = len(pipeline.analyze(data, liveness=True).faces)
    without, stage = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        pipeline.analyze(data)
        without.append((time.perf_counter() - start) * 1000)
        stage.append(pipeline.analyze(data, liveness=True).timings_ms.get("liveness", 0.0))
    per_face = statistics.median(stage) / faces
    print(
        f"crowd, {crowd.name} ({faces} faces) x {repeat}: analyze (every face) median "
        f"{statistics.median(without):.1f} ms; liveness stage {statistics.median(stage):.1f} ms "
        f"= {per_face:.2f} ms per face"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True, help="a pack with liveness models")
    parser.add_argument("--live", type=Path, action="append", default=[], help="live photos")
    parser.add_argument("--attacks", type=Path, action="append", default=[], help="attacks")
    parser.add_argument("--source-detector", type=Path, nargs=2, metavar=("PROTOTXT", "CAFFEMODEL"))
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per photo (cost)")
    parser.add_argument("--cost-photos", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    pack = load_pack(args.pack)
    if pack.manifest.liveness is None:
        parser.error(
            f"{args.pack} has no liveness models: run `python -m training export-liveness`"
        )
    runtime = RuntimeOptions(providers="cpu", intra_op_threads=args.threads)
    pipeline = FacePipeline.from_pack(pack, PipelineOptions(), runtime)
    source = SourceDetector(*args.source_detector) if args.source_detector else None
    threshold = pack.manifest.liveness.threshold
    print(f"pack {pack.model_id}, liveness {pipeline.liveness.model}, threshold {threshold}")

    live_photos, attack_photos = photos_in(args.live), photos_in(args.attacks)
    live, live_faceless = score_photos(pipeline, live_photos, source)
    attacks, attack_faceless = score_photos(pipeline, attack_photos, source)
    if live_photos:
        report("live photos", live, live_faceless, attacks=False)
    if attack_photos:
        report("attack photos", attacks, attack_faceless, attacks=True)
    box_shift(live + attacks, threshold)
    if live_photos and args.repeat > 0:
        cost(pipeline, [s.path for s in live][: args.cost_photos], args.repeat)
        crowd_cost(pipeline, live_photos, args.repeat)


if __name__ == "__main__":
    main()
