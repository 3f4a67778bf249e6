"""Quality levels and reasons of real photos under controlled degradations (a measurement, not
a benchmark of speed): the table docs/quality.md quotes.

    python bench/quality_levels.py --pack ../shared/assets/models/scrfd500m_mbf128 \
        --images ../shared/assets/images deepface/id01/img1.jpg face_recognition/obama/obama.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from degradations import (
    darken,
    downscale,
    gaussian_blur,
    half_face,
    over_expose,
    rotate,
)

from service.faces.pipeline import FacePipeline, PipelineOptions
from service.packs import load_pack
from service.runtime import RuntimeOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("photos", nargs="+")
    args = parser.parse_args()
    pipeline = FacePipeline.from_pack(
        load_pack(args.pack), PipelineOptions(), RuntimeOptions(providers="cpu")
    )

    def measure(image):
        analyzed = pipeline.analyze(cv2.imencode(".png", image)[1].tobytes())
        if not analyzed.faces:
            return "no face"
        q = analyzed.faces[0].quality
        return f"{q.level.value} {','.join(q.reasons) or '-'}"

    for photo in args.photos:
        image = cv2.imread(str(args.images / photo))
        face = pipeline.analyze((args.images / photo).read_bytes()).faces[0]
        iod = face.quality.inter_ocular_px
        series = {
            "clean": [("", image)],
            "blur sigma (crop px)": [(s, gaussian_blur(image, s, iod)) for s in (1, 2, 4)],
            "darken gain": [(g, darken(image, g)) for g in (0.5, 0.35, 0.25, 0.15)],
            "over-expose gain": [(g, over_expose(image, g)) for g in (1.3, 1.6, 2.0, 2.5)],
            "downscale to iod px": [(t, downscale(image, t, iod)) for t in (40, 24, 16, 10)],
            "rotate degrees": [(d, rotate(image, d)) for d in (10, 25, 45, 70)],
            "half face keep (iod)": [
                (k, half_face(image, face.face.landmarks, k)) for k in (0.9, 0.7, 0.5)
            ],
        }
        print(f"## {photo}")
        for name, steps in series.items():
            cells = [f"{strength}: {measure(degraded)}" for strength, degraded in steps]
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
