"""FPIR against threshold as a PNG, drawn with OpenCV (which the service already has), so the
service and its route need no plotting library.

The curve is the survival function of the strangers' best scores (each enrolled identity
searched as a stranger against the others, `service.gallery.fpir`): at threshold t, the share
of strangers whose best score is >= t, on a log axis. Marked: the 1:1 default threshold, the
thresholds at the reported FPIRs, and the duplicate search's strict threshold.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from service.gallery.report import GalleryReport

WIDTH, HEIGHT = 820, 520
LEFT, RIGHT, TOP, BOTTOM = 80, 30, 50, 70
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)
# BGR
CURVE, ONE_TO_ONE, FPIR_MARK, DUPLICATE = (160, 60, 20), (40, 40, 220), (30, 140, 30), (130, 0, 130)
FONT = cv2.FONT_HERSHEY_SIMPLEX
CURVE_POINTS = 600


def survival(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Share of `scores` >= each threshold."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    if len(ordered) == 0:
        return np.zeros(len(thresholds))
    below = np.searchsorted(ordered, thresholds, side="left")
    return (len(ordered) - below) / len(ordered)


def _text(
    image: np.ndarray, text: str, at: tuple[int, int], colour=BLACK, scale=0.45, box=False
) -> None:
    if box:  # a white box behind the text, so lines under it do not hide it
        (width, height), base = cv2.getTextSize(text, FONT, scale, 1)
        corner = (at[0] + width + 2, at[1] + base)
        cv2.rectangle(image, (at[0] - 2, at[1] - height - 2), corner, WHITE, -1)
    cv2.putText(image, text, at, FONT, scale, colour, 1, cv2.LINE_AA)


def _dashed(image: np.ndarray, x: int, top: int, bottom: int, colour) -> None:
    for y in range(top, bottom, 10):
        cv2.line(image, (x, y), (x, min(y + 5, bottom)), colour, 2, cv2.LINE_AA)


def fpir_curve_png(report: GalleryReport, stranger_scores: np.ndarray) -> bytes:
    """The PNG's bytes."""
    image = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    scores = np.asarray(stranger_scores, dtype=np.float64)
    n = len(scores)
    title = (
        f"FPIR against threshold: {report.fpir.gallery_size} identities, "
        f"{n} searched as strangers (model {report.model_id})"
    )
    _text(image, title[:110], (LEFT, 28), scale=0.5)
    marks = [
        (report.threshold_1to1, f"1:1 {report.threshold_1to1:.3f}", ONE_TO_ONE),
        (report.duplicates.min_score, f"duplicates {report.duplicates.min_score:.3f}", DUPLICATE),
    ]
    marks += [
        (row.threshold, f"FPIR {row.target_fpir:g}: {row.threshold:.3f}", FPIR_MARK)
        for row in report.fpir.thresholds
        if row.threshold is not None
    ]
    xs_of_interest = [value for value, _, _ in marks] + (list(scores) if n else [0.0, 1.0])
    low = max(-1.0, math.floor((min(xs_of_interest) - 0.05) * 10) / 10)
    high = min(1.0, math.ceil((max(xs_of_interest) + 0.05) * 10) / 10)
    decades = max(1, math.ceil(math.log10(max(n, 10))))  # y from 10^-decades to 1

    def px(value: float) -> int:
        return round(x0 + (value - low) / (high - low) * (x1 - x0))

    def py(rate: float) -> int:
        fraction = (math.log10(rate) + decades) / decades
        return round(y1 - fraction * (y1 - y0))

    # grid and axes
    tick = low
    while tick <= high + 1e-9:
        x = px(tick)
        cv2.line(image, (x, y0), (x, y1), GREY, 1)
        _text(image, f"{tick:.1f}", (x - 12, y1 + 18))
        tick = round(tick + 0.1, 10)
    for power in range(decades + 1):
        y = py(10.0**-power)
        cv2.line(image, (x0, y), (x1, y), GREY, 1)
        _text(image, "1" if power == 0 else f"1e-{power}", (x0 - 45, y + 5))
    cv2.rectangle(image, (x0, y0), (x1, y1), BLACK, 1)
    _text(image, "threshold (cosine)", ((x0 + x1) // 2 - 60, HEIGHT - 25))
    _text(image, "FPIR", (10, (y0 + y1) // 2))

    if n:
        grid = np.linspace(low, high, CURVE_POINTS)
        rates = survival(scores, grid)
        points = [(px(t), py(r)) for t, r in zip(grid, rates, strict=True) if r > 0]
        if len(points) > 1:
            cv2.polylines(image, [np.array(points, np.int32)], False, CURVE, 2, cv2.LINE_AA)
    else:
        _text(image, "no stranger scores: the gallery is too small", (x0 + 20, y0 + 40))

    for row, (value, label, colour) in enumerate(marks):
        x = px(value)
        _dashed(image, x, y0, y1, colour)
        _text(image, label, (min(x + 4, x1 - 150), y0 + 18 + 18 * row), colour, box=True)

    ok, encoded = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("OpenCV could not encode the plot as PNG")
    return encoded.tobytes()
