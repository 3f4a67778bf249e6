"""The decoder never answers anything but a ServiceError: crash inputs kept as regression cases,
and a bounded coverage-guided fuzzing run (atheris) over mutated JPEG/PNG/WebP/BMP bytes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service.errors import ServiceError
from service.faces.images import decode_image

# Pillow warns about each malformed EXIF tag it skips; skipping them is what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.*")

HERE = Path(__file__).parent
REGRESSIONS = HERE / "data" / "decoder_regressions"
# Long enough to pass the seeds' EXIF mutations (the crashes kept in REGRESSIONS were found
# within seconds); short enough for the suite's budget on 2 cores.
FUZZ_SECONDS = int(os.environ.get("FACEVERIFY_FUZZ_SECONDS", "25"))


@pytest.mark.parametrize("path", sorted(REGRESSIONS.iterdir()), ids=lambda p: p.name)
def test_decoder_regression_input_decodes_or_is_refused_with_a_code(path: Path) -> None:
    try:
        image = decode_image(path.read_bytes())
    except ServiceError as exc:
        assert exc.code.value in {
            "invalid_image",
            "unsupported_format",
            "image_too_large",
            "image_too_complex",
        }
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("scan-bomb-count.jpg", "image_too_complex"),
        ("scan-bomb-work.jpg", "image_too_complex"),
        ("scan-bomb-small.jpg", "decoded"),
    ],
)
def test_scan_bomb_seeds_are_answered_fast_under_the_fuzz_limits(name: str, answer: str) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (dev extra)")
    import decoder_fuzz

    data = decoder_fuzz.scan_bomb_seeds()[name]
    assert len(data) < 65536  # the fuzzing run's -max_len
    started = time.perf_counter()
    try:
        decode_image(data, decoder_fuzz.FUZZ_LIMITS)
        outcome = "decoded"
    except ServiceError as exc:
        outcome = exc.code.value
    assert outcome == answer
    assert time.perf_counter() - started < 0.2


def test_malformed_exif_keeps_the_orientation_it_could_read() -> None:
    # The EXIF of these files says "rotate 270" and holds a tag that cannot be rewritten.
    image = decode_image((REGRESSIONS / "exif-rewrite-0.jpg").read_bytes())
    assert image.shape == (48, 64, 3)  # stored 48 wide x 64 high, shown turned


@pytest.mark.slow
def test_coverage_guided_fuzzing_finds_no_crash(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (dev extra)")
    target = HERE / "decoder_fuzz.py"
    corpus, artifacts = tmp_path / "corpus", tmp_path / "crashes"
    artifacts.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), str(HERE.parent)])}
    subprocess.run([sys.executable, str(target), "--write-seeds", str(corpus)], env=env, check=True)
    for path in REGRESSIONS.iterdir():
        (corpus / path.name).write_bytes(path.read_bytes())
    run = subprocess.run(
        [
            sys.executable,
            str(target),
            f"-max_total_time={FUZZ_SECONDS}",
            "-max_len=65536",
            "-rss_limit_mb=3072",
            "-timeout=20",
            f"-artifact_prefix={artifacts}/",
            str(corpus),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 120,
    )
    crashes = sorted(p.name for p in artifacts.iterdir())
    assert run.returncode == 0 and not crashes, (
        f"decoder crashed on {crashes} (kept in {artifacts}); copy them into {REGRESSIONS} as "
        f"regression cases and fix the decoder. Fuzzer output:\n{run.stderr[-4000:]}"
    )
    assert "Done" in run.stderr and "#" in run.stderr  # it really ran
