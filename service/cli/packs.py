"""Pack commands: `fetch-models NAME`, `check-pack [DIR]`, `batch-detector SRC DST --photos DIR`
and `quantize-recognizer SRC_PACK DST_PACK --photos DIR`; the tools themselves live in
`service.packtools`."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli.common import CommandError, load_settings
from service.errors import PackError
from service.logs import configure_logging
from service.settings import REPO_ROOT

DEFAULT_MODELS_DIR = REPO_ROOT / "models"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    fetch = commands.add_parser("fetch-models", help="download a catalogue pack, checksum-verified")
    fetch.add_argument("name", help="pack name, e.g. buffalo_l (see models/catalogue.json)")
    fetch.add_argument("--dir", type=Path, default=DEFAULT_MODELS_DIR, help="models folder")
    fetch.set_defaults(run=fetch_models)
    check = commands.add_parser("check-pack", help="verify a pack folder and print its manifest")
    check.add_argument("directory", type=Path, nargs="?", help="default: FACEVERIFY_PACK_DIR")
    check.set_defaults(run=check_pack)
    batch = commands.add_parser("batch-detector", help=batch_detector.__doc__)
    batch.add_argument("source", type=Path, help="SCRFD detector with its batch fixed at 1")
    batch.add_argument("target", type=Path, help="where to write the batched detector")
    batch.add_argument("--photos", type=Path, required=True, help="folder of photos to compare")
    batch.set_defaults(run=batch_detector)
    quantize = commands.add_parser("quantize-recognizer", help=quantize_recognizer.__doc__)
    quantize.add_argument("source", type=Path, help="pack folder with an FP32 recognizer")
    quantize.add_argument("target", type=Path, help="new pack folder to write")
    quantize.add_argument("--photos", type=Path, required=True, help="folder of face photos")
    quantize.add_argument("--fp32-stem", type=int, default=3, help="first Conv nodes kept FP32")
    quantize.add_argument("--fp32-head", type=int, default=20, help="last nodes kept FP32")
    quantize.add_argument("--pairs", type=Path, help="CSV of file_x,file_y pairs (default: all)")
    quantize.set_defaults(run=quantize_recognizer)


def fetch_models(args: argparse.Namespace) -> int:
    from service.packtools.fetch import FetchError, fetch_pack

    configure_logging("info")
    try:
        path = fetch_pack(args.name, args.dir)
    except FetchError as exc:
        raise CommandError(str(exc)) from exc
    print(path)
    return 0


def check_pack(args: argparse.Namespace) -> int:
    from service.packs import load_pack

    settings = load_settings()
    configure_logging(settings.log_level)
    try:
        pack = load_pack(args.directory or settings.pack_dir)
    except PackError as exc:
        raise CommandError(str(exc)) from exc
    print(pack.manifest.model_dump_json(indent=2))
    return 0


def _photos(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    if not images:
        raise CommandError(f"no .jpg/.jpeg/.png photos under {folder}")
    return images


def batch_detector(args: argparse.Namespace) -> int:
    """give an SCRFD detector a dynamic batch axis and check it against the original"""
    from service.packtools.batch_axis import add_batch_axis, check_batch_parity

    # Pack tools print their own report; the service's INFO lines (sessions opened on which
    # provider) would only bury it.
    configure_logging("warning")
    images = _photos(args.photos)
    try:
        add_batch_axis(args.source, args.target)
        worst = check_batch_parity(args.source, args.target, images)
    except ValueError as exc:
        args.target.unlink(missing_ok=True)
        raise CommandError(str(exc)) from exc
    print(
        f"{args.target}: batched outputs equal the batch-1 model's within {worst:.1e} "
        f"on {len(images)} photos"
    )
    return 0


def quantize_recognizer(args: argparse.Namespace) -> int:
    """write a pack with an INT8 recognizer, only if it decides as the FP32 one does"""
    from service.packtools.quantize import (
        Fp32Layers,
        QuantizeError,
        quantize_recognizer_pack,
        read_pairs,
    )

    configure_logging("warning")
    images = _photos(args.photos)
    try:
        pairs = read_pairs(args.pairs) if args.pairs else None
        layers = Fp32Layers(args.fp32_stem, args.fp32_head)
        report = quantize_recognizer_pack(args.source, args.target, images, layers, pairs)
    except (QuantizeError, PackError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    print(f"{args.target}: INT8 recognizer passes parity: {report.describe()}")
    return 0
