"""Make docs/console.png, the README's picture of the console, from synthetic material only.

Two drawn faces (no photo of anyone) are compared on the Verify page of a real service that
runs the test suite's tiny synthetic models (tests/synthetic_models.py): the synthetic detector
reports the face where it is drawn, so the boxes and landmarks land on it. The screenshot is
quantised to a small palette PNG. Needs the `dev` extra and Debian's Chromium:

    .venv/bin/python scripts/console_screenshot.py [--out docs/console.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service.settings import Settings  # noqa: E402
from tests.service.web.browser_support import CHROMIUM, CHROMIUM_ARGS, live_service  # noqa: E402
from tests.synthetic_models import SyntheticFace, make_manifest_pack  # noqa: E402

SIDE = 640  # the synthetic detector's input size: photo pixels are detector pixels
FACE_BOX = (236.0, 170.0, 404.0, 380.0)
VIEWPORT = {"width": 1100, "height": 1000}
PALETTE_COLOURS = 192


def drawn_face(background: tuple[int, int, int], shirt: tuple[int, int, int]) -> np.ndarray:
    """A BGR picture of a simple drawn face whose eyes, nose and mouth corners sit where
    SyntheticFace.from_box(FACE_BOX) puts the five landmarks."""
    face = SyntheticFace.from_box(FACE_BOX)
    image = np.zeros((SIDE, SIDE, 3), np.uint8)
    for row in range(SIDE):  # soft vertical gradient
        image[row] = np.array(background) * (0.75 + 0.25 * row / SIDE)
    x1, y1, x2, y2 = FACE_BOX
    cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
    cv2.ellipse(image, (cx, SIDE + 60), (230, 260), 0, 180, 360, shirt, -1, cv2.LINE_AA)
    cv2.rectangle(image, (cx - 38, int(y2) - 20), (cx + 38, int(y2) + 50), (150, 185, 225), -1)
    cv2.ellipse(image, (cx, cy), (int((x2 - x1) / 2), int((y2 - y1) / 2)), 0, 0, 360,
                (160, 195, 235), -1, cv2.LINE_AA)  # fmt: skip
    cv2.ellipse(image, (cx, int(y1) + 30), (92, 62), 0, 180, 360, (40, 50, 70), -1, cv2.LINE_AA)
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = (
        (int(x), int(y)) for x, y in face.landmarks
    )
    for ex, ey in ((lx, ly), (rx, ry)):
        cv2.ellipse(image, (ex, ey), (15, 9), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(image, (ex, ey), 6, (70, 60, 40), -1, cv2.LINE_AA)
        cv2.line(image, (ex - 16, ey - 18), (ex + 14, ey - 21), (40, 50, 70), 4, cv2.LINE_AA)
    cv2.line(image, (nx, ny - 22), (nx - 6, ny + 2), (120, 150, 200), 3, cv2.LINE_AA)
    cv2.ellipse(image, ((mlx + mrx) // 2, (mly + mry) // 2 - 4), ((mrx - mlx) // 2, 10), 0, 0,
                180, (70, 70, 170), 4, cv2.LINE_AA)  # fmt: skip
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "console.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pack = make_manifest_pack(
            folder / "pack", [SyntheticFace.from_box(FACE_BOX)], name="demo", threshold=0.5
        )
        photos = []
        for name, background, shirt in (
            ("ada-1.png", (200, 170, 120), (120, 70, 40)),
            ("ada-2.png", (150, 190, 160), (60, 60, 140)),
        ):
            cv2.imwrite(str(folder / name), drawn_face(background, shirt))
            photos.append(folder / name)
        settings = Settings(pack_dir=pack, data_dir=folder / "data", _env_file=None)
        with live_service(settings) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"{url}/console/#verify")
            page.set_input_files("#verify-file-1", photos[0])
            page.set_input_files("#verify-file-2", photos[1])
            page.get_by_test_id("decision").wait_for(timeout=30_000)
            page.screenshot(path=folder / "shot.png", full_page=True)
            browser.close()
        shot = Image.open(folder / "shot.png").convert("RGB")
        small = shot.quantize(colors=PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        small.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB, {shot.width}x{shot.height})")


if __name__ == "__main__":
    main()
