"""What the quality assessment costs: `FacePipeline.analyze` with it, against the same call with
the assessment replaced by a constant, interleaved in one run (ratio > 1 = slower).

    python bench/quality_overhead.py --pack ../shared/assets/models/scrfd500m_mbf128 \
        --images ../shared/assets/images/deepface --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from unittest import mock

import service.faces.pipeline as pipeline_module
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.packs import load_pack
from service.runtime import RuntimeOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pipeline = FacePipeline.from_pack(
        load_pack(args.pack), PipelineOptions(), RuntimeOptions(providers="cpu")
    )
    photos = [path.read_bytes() for path in sorted(args.images.glob("id*/*.jpg"))]
    stub = pipeline.analyze(photos[0]).faces[0].quality
    with_quality, without = [], []
    for _ in range(args.repeat):
        for photo in photos:
            start = time.perf_counter()
            pipeline.analyze(photo)
            with_quality.append(time.perf_counter() - start)
            with mock.patch.object(pipeline_module, "assess_quality", return_value=stub):
                start = time.perf_counter()
                pipeline.analyze(photo)
                without.append(time.perf_counter() - start)
    base, ours = statistics.median(without), statistics.median(with_quality)
    print(f"analyze median without quality {base * 1000:.1f} ms, with {ours * 1000:.1f} ms")
    print(f"ratio with/without: {ours / base:.3f}")


if __name__ == "__main__":
    main()
