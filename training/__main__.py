"""Command line: `python -m training {train,evaluate,export}` (also `faceverify-train`).

    python -m training train --config training/configs/synthetic_smoke.py [--device cuda]
    torchrun --nproc_per_node=8 -m training train --config training/configs/r50_arcface_casia.py
    python -m training evaluate --checkpoint runs/NAME --bin data/lfw.bin --flip --roc roc.png
    python -m training export --checkpoint runs/NAME --detector det_10g.onnx --out models/NAME \
        --bin data/lfw.bin --target-far 1e-3
    python -m training export-liveness --pack models/NAME 2.7_80x80_MiniFASNetV2.pth \
        4_0_0_80x80_MiniFASNetV1SE.pth
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EVAL_SPEC_HELP = "evaluation set: FILE.bin, PAIRS.txt@IMAGES_DIR or 'synthetic' (repeatable)"


def _eval_specs(args: argparse.Namespace) -> list[str]:
    specs = list(args.eval or []) + list(args.bin or [])
    if getattr(args, "pairs", None):
        if not args.images:
            raise ValueError("--pairs needs --images DIR (the folder of aligned crops it names)")
        specs.append(f"{args.pairs}@{args.images}")
    return specs


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval", action="append", metavar="SPEC", help=EVAL_SPEC_HELP)
    parser.add_argument("--bin", action="append", metavar="FILE", help="InsightFace .bin set")
    parser.add_argument("--target-far", type=float, default=1e-3, help="FAR for the threshold")
    parser.add_argument("--flip", action="store_true", help="flip-test: add the mirror's embedding")
    parser.add_argument(
        "--protocol",
        choices=("auto", "insightface", "exact"),
        default="auto",
        help="accuracy protocol: insightface (verification.py), exact (best cosine midpoint), "
        "auto (default: insightface for .bin sets, exact otherwise)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a backbone (torchrun-ready)")
    train.add_argument("--config", required=True, help="config file, or a name in training/configs")
    train.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    train.add_argument("--resume", metavar="CHECKPOINT", help="checkpoint folder, or 'latest'")
    train.add_argument("--output-dir", help="where logs, checkpoints and model.pt go")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set max_steps=100 (repeatable)",
    )

    evaluate = commands.add_parser("evaluate", help="verification accuracy, TAR@FAR, ROC")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="model.pt, run folder or checkpoint folder")
    source.add_argument("--pack", type=Path, help="model pack folder with pack.json")
    source.add_argument("--onnx", type=Path, help="recognizer ONNX (RGB, (x-127.5)/127.5)")
    _add_eval_arguments(evaluate)
    evaluate.add_argument("--pairs", type=Path, help="LFW-style pairs.txt (with --images)")
    evaluate.add_argument("--images", type=Path, help="folder of the aligned crops of --pairs")
    evaluate.add_argument("--roc", type=Path, help="write the ROC curves to this PNG")
    evaluate.add_argument("--json", type=Path, help="write the results to this JSON file")
    evaluate.add_argument("--device", default="auto", help="for --checkpoint: auto, cpu or cuda")

    export = commands.add_parser("export", help="ONNX + parity check + model pack")
    export.add_argument("--checkpoint", type=Path, required=True, help="model.pt or run folder")
    export.add_argument("--detector", type=Path, required=True, help="SCRFD ONNX to pack with it")
    export.add_argument("--out", type=Path, required=True, help="pack folder to write")
    export.add_argument("--name", help="pack name (default: the folder name)")
    export.add_argument("--threshold", type=float, help="recommended threshold (else measured)")
    export.add_argument("--licence", default="", help="licence of the weights, for pack.json")
    _add_eval_arguments(export)

    liveness = commands.add_parser(
        "export-liveness", help="MiniFASNet checkpoints → ONNX + parity check → into a pack"
    )
    liveness.add_argument("checkpoints", type=Path, nargs="+", help="<scale>_80x80_<variant>.pth")
    liveness.add_argument("--pack", type=Path, required=True, help="pack folder to add them to")
    liveness.add_argument("--threshold", type=float, help="live when score >= this (default 0.5)")
    liveness.add_argument(
        "--parity-images", type=Path, help="folder of photos whose crops join the parity check"
    )
    return parser


def run_train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.trainer import train

    overrides = list(args.set)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    config = load_config(args.config, overrides)
    summary = train(config, device=args.device, resume=args.resume)
    if summary.model_path is not None:
        print(f"done: {summary.steps} steps; backbone saved to {summary.model_path}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import (
        OnnxEmbedder,
        TorchEmbedder,
        evaluate_set,
        load_verification_set,
        plot_roc,
    )

    specs = _eval_specs(args)
    if not specs:
        raise ValueError("nothing to evaluate on: give --bin, --eval or --pairs/--images")
    if args.checkpoint:
        from training.checkpoint import load_backbone
        from training.distributed import select_device

        device = select_device(args.device)
        backbone, _ = load_backbone(args.checkpoint, device)
        embedder = TorchEmbedder(backbone, device)
    elif args.pack:
        embedder = OnnxEmbedder.from_pack(args.pack)
    else:
        embedder = OnnxEmbedder(args.onnx)
    results = [
        evaluate_set(
            embedder,
            load_verification_set(spec, embedder.input_size),
            flip=args.flip,
            target_far=args.target_far,
            protocol=args.protocol,
        )
        for spec in specs
    ]
    for result in results:
        print(result.summary())
    if args.roc:
        print(f"ROC curves: {plot_roc(results, args.roc)}")
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from training.export import export_pack

    result = export_pack(
        args.checkpoint,
        args.out,
        args.detector,
        name=args.name,
        eval_sets=_eval_specs(args),
        target_far=args.target_far,
        flip=args.flip,
        threshold=args.threshold,
        licence=args.licence,
        protocol=args.protocol,
    )
    print(f"pack written to {result.pack_dir} (threshold {result.manifest.threshold:.4f})")
    return 0


def run_export_liveness(args: argparse.Namespace) -> int:
    from training.liveness.export import (
        DEFAULT_LIVENESS_THRESHOLD,
        centre_crops,
        export_liveness,
    )

    threshold = DEFAULT_LIVENESS_THRESHOLD if args.threshold is None else args.threshold
    crops = centre_crops(args.parity_images) if args.parity_images else None
    result = export_liveness(args.checkpoints, args.pack, threshold=threshold, crops=crops)
    for name, difference in result.max_abs_diff.items():
        print(f"{name}: ONNX parity, max |softmax difference| = {difference:.3g}")
    print(f"liveness models added to {result.pack_dir} (threshold {threshold:g})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from service.errors import PackError
    from training.divergence import TrainingDiverged
    from training.export import ParityError

    runners = {
        "train": run_train,
        "evaluate": run_evaluate,
        "export": run_export,
        "export-liveness": run_export_liveness,
    }
    try:
        return runners[args.command](args)
    except (FileNotFoundError, ValueError, ParityError, PackError, TrainingDiverged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
