"""`python -m service calibrate --pack DIR --pairs SOURCE`: measure thresholds by target false
match rate on labelled pairs, report them (and their accuracy on another set with
`--evaluate`), draw a DET curve, and store them with the pack (service/packs/thresholds.py).
The measuring itself lives in `service.packtools.calibration`."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli.common import CommandError, load_settings
from service.errors import PackError
from service.logs import configure_logging


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "calibrate", help="thresholds by target false match rate, stored with the pack"
    )
    parser.add_argument("--pack", type=Path, help="pack folder (default: FACEVERIFY_PACK_DIR)")
    parser.add_argument(
        "--pairs",
        type=Path,
        required=True,
        help="InsightFace .bin, folder of identity sub-folders, or LFW-style pairs.txt",
    )
    parser.add_argument("--images", type=Path, help="image folder of a pairs.txt")
    parser.add_argument("--evaluate", type=Path, help="another source to report accuracy on")
    parser.add_argument("--evaluate-images", type=Path, help="image folder of --evaluate")
    parser.add_argument(
        "--fmr",
        type=float,
        nargs="+",
        help="target false match rates (default: 1e-1 down to 1e-6)",
    )
    parser.add_argument("--bootstrap", type=int, help="bootstrap rounds (default 1000)")
    parser.add_argument(
        "--max-pairs", type=int, help="impostor pairs sampled from a folder (default 200000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--det", type=Path, default=Path("det_curve.png"), help="DET plot path")
    parser.add_argument("--no-plot", action="store_true", help="skip the DET plot")
    parser.add_argument("--dry-run", action="store_true", help="report, but store nothing")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)
    # Imported here: the other commands (serve) should not pay for them.
    from service.faces.pipeline import FacePipeline, PipelineOptions
    from service.packs import MANIFEST_NAME, load_pack, save_calibration
    from service.packtools.calibration import (
        DEFAULT_BOOTSTRAP_ROUNDS,
        DEFAULT_FMRS,
        DEFAULT_MAX_IMPOSTOR_PAIRS,
        CalibrationError,
        calibrate,
        calibration_table,
        describe_scores,
        evaluation_table,
        rates_table,
        save_det_curve,
        score_source,
    )
    from service.runtime import RuntimeOptions

    try:
        pack = load_pack(args.pack or settings.pack_dir)
        pipeline = FacePipeline.from_pack(pack, PipelineOptions(), RuntimeOptions())
        pairs = score_source(
            args.pairs,
            pipeline,
            args.images,
            max_impostor_pairs=args.max_pairs or DEFAULT_MAX_IMPOSTOR_PAIRS,
            seed=args.seed,
        )
        calibration = calibrate(
            pairs,
            args.fmr or DEFAULT_FMRS,
            bootstrap_rounds=DEFAULT_BOOTSTRAP_ROUNDS if args.bootstrap is None else args.bootstrap,
            seed=args.seed,
            recognizer_sha256=pack.manifest.recognizer.sha256,
        )
        other = (
            score_source(args.evaluate, pipeline, args.evaluate_images, seed=args.seed)
            if args.evaluate
            else None
        )
        lines = [*describe_scores(pairs), *rates_table(pairs), *calibration_table(calibration)]
        if other is not None:
            lines += [*describe_scores(other), *evaluation_table(calibration, other)]
        print("\n".join(lines))
        if not args.no_plot:
            save_det_curve([pairs] + ([other] if other else []), args.det, calibration)
            print(f"DET curve: {args.det}")
    except (PackError, CalibrationError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    if not calibration.thresholds:
        raise CommandError("no target FMR is supported by these pairs; nothing stored")
    if args.dry_run:
        return 0
    written = save_calibration(pack.directory, calibration, MANIFEST_NAME)
    print(f"thresholds stored in {written}")
    return 0
