"""`python -m service gallery report`: the gallery report (`service.gallery.report`) in the
terminal, as JSON with `--json`, and FPIR against threshold as a PNG with `--png PATH`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from tqdm import tqdm

from service.api.deps import default_threshold
from service.cli.common import CommandError, load_settings
from service.errors import PackError
from service.gallery.report import ReportOptions, build_report, format_text
from service.logs import configure_logging


def add_parser(actions: argparse._SubParsersAction) -> None:
    """`report` under `gallery` (`actions` is its sub-command set)."""
    report = actions.add_parser(
        "report",
        help="identities, faces, suspected duplicate identities, impostor tail, FPIR thresholds",
    )
    report.set_defaults(run=run)
    report.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="score from which two identities are suspected duplicates (default: the pack's "
        "threshold at FMR 1e-5 when calibrated that low, else the 1:1 threshold + 0.15)",
    )
    report.add_argument(
        "--max-faces",
        type=int,
        default=ReportOptions.max_faces,
        help="faces searched for duplicates; a random sample beyond (default %(default)s)",
    )
    report.add_argument(
        "--max-pairs", type=int, default=ReportOptions.max_pairs, help="pairs listed at most"
    )
    report.add_argument(
        "--fpir-probes",
        type=int,
        default=None,
        help="identities searched as strangers (default: FACEVERIFY_FPIR_PROBES)",
    )
    report.add_argument("--png", type=Path, help="write FPIR against threshold to this PNG")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Open the configured gallery with the configured pack's model, report, close."""
    from service.gallery import open_gallery
    from service.packs import load_pack

    settings = load_settings()
    configure_logging(settings.log_level)
    if args.max_faces < 1 or args.max_pairs < 0:
        raise CommandError("--max-faces must be at least 1 and --max-pairs at least 0")
    if args.min_score is not None and not -1.0 <= args.min_score <= 1.0:
        raise CommandError("--min-score is a cosine similarity: between -1 and 1")
    if args.png is not None and not args.png.parent.is_dir():
        raise CommandError(f"no folder {args.png.parent} for --png")
    try:
        pack = load_pack(settings.pack_dir, verify_checksums=False)
    except PackError as error:
        raise CommandError(str(error)) from error
    threshold, _ = default_threshold(settings, pack)  # the 1:1 default, as the service's
    options = ReportOptions(
        min_score=args.min_score,
        max_faces=args.max_faces,
        max_pairs=args.max_pairs,
        fpir_probes=args.fpir_probes or settings.fpir_probes,
    )
    bars: dict[str, tqdm] = {}

    def progress(stage: str, advanced: int, total: int) -> None:
        if args.no_progress:
            return
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = tqdm(total=total, unit="face", desc=stage, file=sys.stderr)
        bars[stage].update(advanced)

    gallery = open_gallery(settings, pack)
    try:
        report, estimate = build_report(
            gallery,
            threshold_1to1=threshold,
            calibration=pack.manifest.thresholds,
            options=options,
            progress=progress,
        )
    finally:
        for bar in bars.values():
            bar.close()
        gallery.close()
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        sys.stdout.write(format_text(report))
    if args.png is not None:
        from service.gallery.report_plot import fpir_curve_png

        scores = estimate.stranger_scores if estimate is not None else []
        args.png.write_bytes(fpir_curve_png(report, scores))
        print(f"wrote {args.png}", file=sys.stderr)
    return 0
