"""Coverage-guided fuzzing of `decode_image` with atheris (libFuzzer for Python).

Run by tests/service/test_decoder_fuzz.py in a subprocess for a bounded time, or by hand:

    python tests/service/decoder_fuzz.py -max_total_time=300 CORPUS_DIR

The target decodes each input with small limits; a `ServiceError` (any stable 4xx code) is the
expected answer to bad bytes, and anything else is a crash that the service would answer with
500. atheris instruments Pillow's Python code (plugins, EXIF/TIFF tag parsing), so mutations
that reach new branches there are kept and mutated further. `--write-seeds DIR` writes the seed
corpus: small synthetic JPEG (with EXIF), PNG, WebP and BMP files, and JPEG scan bombs
(tests/service/jpeg_bombs.py) over and under the scan and work budgets, so that mutations
probe the marker walk that guards them.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import atheris
import jpeg_bombs  # beside this file
import numpy as np

with atheris.instrument_imports():
    from PIL import Image

    from service.errors import ServiceError
    from service.faces.images import DecodeLimits, decode_image

# Small budgets keep every input fast: the fuzzer looks for crashes, not for big pictures.
FUZZ_LIMITS = DecodeLimits(max_bytes=1_000_000, max_pixels=4_000_000)


def seed_images() -> dict[str, bytes]:
    """One small picture per allowed format and colour mode, the JPEG with rich EXIF."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation
    exif[0x010F] = "Camera"
    exif[0x0132] = "2020:01:01 00:00:00"
    exif[0x8769] = {0x9003: "2020:01:01 00:00:00", 0x920A: 4.5}
    seeds = {}
    for name, image, fmt, options in (
        ("exif.jpg", rgb, "JPEG", {"quality": 90, "exif": exif.tobytes()}),
        ("grey.jpg", rgb.convert("L"), "JPEG", {}),
        ("cmyk.jpg", rgb.convert("CMYK"), "JPEG", {}),
        ("rgba.png", rgb.convert("RGBA"), "PNG", {}),
        ("palette.png", rgb.convert("P"), "PNG", {}),
        ("grey16.png", rgb.convert("I;16"), "PNG", {}),
        ("lossy.webp", rgb, "WEBP", {"quality": 50}),
        ("rgb.bmp", rgb, "BMP", {}),
    ):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        seeds[name] = buffer.getvalue()
    seeds.update(scan_bomb_seeds())
    return seeds


def scan_bomb_seeds() -> dict[str, bytes]:
    """Progressive JPEGs made of repeated end-of-block AC scans: refused under FUZZ_LIMITS for
    their scan count, refused for their block walks, and one small enough to decode."""
    return {
        "scan-bomb-count.jpg": jpeg_bombs.scan_bomb(1024, 1024, ac_scans=150),
        "scan-bomb-work.jpg": jpeg_bombs.scan_bomb(2000, 2000, ac_scans=40),
        "scan-bomb-small.jpg": jpeg_bombs.scan_bomb(64, 48, ac_scans=30),
    }


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(ServiceError):
        decode_image(data, FUZZ_LIMITS)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        folder = Path(sys.argv[2])
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seed_images().items():
            (folder / name).write_bytes(data)
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
