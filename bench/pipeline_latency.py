"""Per-stage latency of the face pipeline, against insightface's own path in the same run.

Baseline: what a user of the `insightface` package does by hand — `SCRFD.detect`, then
`face_align.norm_crop` and `ArcFaceONNX.get_feat` one face at a time. Ours: `FacePipeline`
(decode with limits, detect, align, batched embed). Both use the same ONNX files and
onnxruntime settings, so the ratio isolates pipeline overhead and batching.

    python bench/pipeline_latency.py --pack ../shared/assets/models/scrfd500m_mbf128 \
        --images ../shared/assets/images/deepface --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from service.faces.detector import DetectorOptions
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.packs import load_pack
from service.runtime import RuntimeOptions, create_session


def _insightface_path(pack, runtime: RuntimeOptions, det_size: int):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD
    from insightface.utils import face_align

    detector = SCRFD(
        session=create_session(pack.detector_path, runtime), static_shape_sessions=False
    )
    detector.prepare(0, input_size=(det_size, det_size), det_thresh=0.5)
    recognizer = ArcFaceONNX(
        str(pack.recognizer_path), session=create_session(pack.recognizer_path, runtime)
    )

    def run(data: bytes) -> int:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        boxes, keypoints = detector.detect(image, input_size=(det_size, det_size))
        for points in keypoints:
            recognizer.get_feat(face_align.norm_crop(image, points))
        return len(boxes)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder searched for *.jpg/png")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--det-size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    pack = load_pack(args.pack)
    runtime = RuntimeOptions(providers="auto", intra_op_threads=args.threads)
    options = PipelineOptions(detector=DetectorOptions(input_size=args.det_size))
    ours = FacePipeline.from_pack(pack, options, runtime)
    baseline = _insightface_path(pack, runtime, args.det_size)
    photos = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    payloads = [p.read_bytes() for p in photos]
    ours.analyze(payloads[0]), baseline(payloads[0])  # warm-up

    stages: dict[str, list[float]] = {}
    ours_ms, base_ms, faces = [], [], 0
    for _ in range(args.repeat):
        for data in payloads:
            start = time.perf_counter()
            result = ours.analyze(data)
            ours_ms.append((time.perf_counter() - start) * 1000)
            for stage, ms in result.timings_ms.items():
                stages.setdefault(stage, []).append(ms)
            faces += len(result.faces)
            start = time.perf_counter()
            baseline(data)
            base_ms.append((time.perf_counter() - start) * 1000)

    print(f"{len(photos)} photos x {args.repeat}, provider {ours.provider}, det {args.det_size}")
    print(f"{'stage':<10}{'median ms':>12}{'p90 ms':>10}")
    for stage, values in stages.items():
        p90 = np.percentile(values, 90)
        print(f"{stage:<10}{statistics.median(values):>12.2f}{p90:>10.2f}")
    ours_median, base_median = statistics.median(ours_ms), statistics.median(base_ms)
    print(f"{'total':<10}{ours_median:>12.2f}{np.percentile(ours_ms, 90):>10.2f}")
    print(f"insightface by hand: median {base_median:.2f} ms per photo")
    print(f"ratio ours / insightface: {ours_median / base_median:.3f}")


if __name__ == "__main__":
    main()
