"""Command line: `python -m service [serve]`, `python -m service fetch-models NAME`,
`python -m service check-pack [DIR]`, `python -m service gallery export|import|migrate`,
`python -m service keys create|list|revoke`,
`python -m service calibrate --pack DIR --pairs SOURCE`,
`python -m service batch-detector SRC DST --photos DIR`,
`python -m service quantize-recognizer SRC_PACK DST_PACK --photos DIR`."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.calibration_cli import add_calibrate_parser, run_calibrate
from service.errors import PackError
from service.gallery import transfer
from service.keys_cli import add_keys_parser, run_keys
from service.logs import configure_logging, logging_config
from service.settings import REPO_ROOT, Settings
from service.workers import shared_ready_dir

DEFAULT_MODELS_DIR = REPO_ROOT / "models"


def _fail(message: str) -> int:
    print(f"faceverify: {message}", file=sys.stderr)
    return 2


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's proxy options: `X-Forwarded-For` and `X-Forwarded-Proto` are believed only from
    FACEVERIFY_TRUSTED_PROXIES; with none (the default) they are ignored, since anything on
    the path (a loopback sidecar included) could let each client pick its address and with it
    its rate-limit bucket (docs/security.md)."""
    proxies = [item.strip() for item in settings.trusted_proxies.split(",") if item.strip()]
    for item in proxies:
        if item != "*":
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"FACEVERIFY_TRUSTED_PROXIES: {item!r} is not an address or network"
                ) from None
    if not proxies:
        return {"proxy_headers": False, "forwarded_allow_ips": ""}
    # uvicorn reads `*` as "trust every peer" only when it stands alone.
    return {
        "proxy_headers": True,
        "forwarded_allow_ips": "*" if "*" in proxies else ",".join(proxies),
    }


def serve(settings: Settings) -> int:
    import uvicorn

    from service.api.connections import header_timeout_protocol
    from service.api.hosts import HostAllowList
    from service.api.origin import parse_allowed_origins
    from service.packs import load_pack

    try:  # fail fast, in one line, before any worker starts
        load_pack(settings.pack_dir, verify_checksums=settings.verify_checksums)
        HostAllowList.from_settings(settings)
        parse_allowed_origins(settings.allowed_origins)
        proxies = proxy_options(settings)
    except (PackError, ValueError) as exc:
        return _fail(str(exc))
    if settings.api_keys_file is not None:
        from service.keys import KeysFileError, read_keys_file

        try:
            read_keys_file(settings.api_keys_file)
        except KeysFileError as exc:
            return _fail(str(exc))
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="faceverify-metrics-")
    with shared_ready_dir(settings.workers):
        uvicorn.run(
            "service.app:create_served_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=logging_config(settings.log_level),
            http=header_timeout_protocol(settings.header_timeout_s),
            **proxies,
        )
    return 0


def fetch_models(name: str, models_dir: Path) -> int:
    from service.fetch import FetchError, fetch_pack

    try:
        path = fetch_pack(name, models_dir)
    except FetchError as exc:
        return _fail(str(exc))
    print(path)
    return 0


def check_pack(directory: Path) -> int:
    from service.packs import load_pack

    try:
        pack = load_pack(directory)
    except PackError as exc:
        return _fail(str(exc))
    print(pack.manifest.model_dump_json(indent=2))
    return 0


def batch_detector(source: Path, target: Path, photos: Path) -> int:
    """give an SCRFD detector a dynamic batch axis and check it against the original"""
    from service.faces.batch_axis import add_batch_axis, check_batch_parity

    images = sorted(p for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        return _fail(f"no .jpg/.jpeg/.png photos under {photos}")
    try:
        add_batch_axis(source, target)
        worst = check_batch_parity(source, target, images)
    except ValueError as exc:
        target.unlink(missing_ok=True)
        return _fail(str(exc))
    print(
        f"{target}: batched outputs equal the batch-1 model's within {worst:.1e} "
        f"on {len(images)} photos"
    )
    return 0


def quantize_recognizer(args: argparse.Namespace) -> int:
    """write a pack with an INT8 recognizer, only if it decides as the FP32 one does"""
    from service.faces.quantize import (
        Fp32Layers,
        QuantizeError,
        quantize_recognizer_pack,
        read_pairs,
    )

    source, target, photos = args.source, args.target, args.photos

    images = sorted(p for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        return _fail(f"no .jpg/.jpeg/.png photos under {photos}")
    try:
        pairs = read_pairs(args.pairs) if args.pairs else None
        layers = Fp32Layers(args.fp32_stem, args.fp32_head)
        report = quantize_recognizer_pack(source, target, images, layers, pairs)
    except (QuantizeError, PackError, OSError) as exc:
        return _fail(str(exc))
    print(f"{target}: INT8 recognizer passes parity: {report.describe()}")
    return 0


def settings_errors(error: ValidationError) -> str:
    """A validation error of `Settings` in one line, by environment variable. Values of secret
    settings (API keys) are never repeated."""
    prefix = Settings.model_config.get("env_prefix", "")
    secret = {
        name
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    parts = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"])
        value = "<hidden>" if name in secret else repr(item["input"])
        parts.append(f"{prefix}{name.upper()}={value}: {item['msg']}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faceverify", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP service (default); settings from FACEVERIFY_*")
    fetch = commands.add_parser("fetch-models", help="download a catalogue pack, checksum-verified")
    fetch.add_argument("name", help="pack name, e.g. buffalo_l (see models/catalogue.json)")
    fetch.add_argument("--dir", type=Path, default=DEFAULT_MODELS_DIR, help="models folder")
    check = commands.add_parser("check-pack", help="verify a pack folder and print its manifest")
    check.add_argument("directory", type=Path, nargs="?", help="default: FACEVERIFY_PACK_DIR")
    gallery = commands.add_parser("gallery", help="export, import or migrate the gallery")
    transfer.add_arguments(gallery)
    add_keys_parser(commands)
    add_calibrate_parser(commands)
    batch = commands.add_parser("batch-detector", help=batch_detector.__doc__)
    batch.add_argument("source", type=Path, help="SCRFD detector with its batch fixed at 1")
    batch.add_argument("target", type=Path, help="where to write the batched detector")
    batch.add_argument("--photos", type=Path, required=True, help="folder of photos to compare")
    quantize = commands.add_parser("quantize-recognizer", help=quantize_recognizer.__doc__)
    quantize.add_argument("source", type=Path, help="pack folder with an FP32 recognizer")
    quantize.add_argument("target", type=Path, help="new pack folder to write")
    quantize.add_argument("--photos", type=Path, required=True, help="folder of face photos")
    quantize.add_argument("--fp32-stem", type=int, default=3, help="first Conv nodes kept FP32")
    quantize.add_argument("--fp32-head", type=int, default=20, help="last nodes kept FP32")
    quantize.add_argument("--pairs", type=Path, help="CSV of file_x,file_y pairs (default: all)")
    args = parser.parse_args(argv)

    if args.command == "keys":
        return run_keys(args)
    if args.command == "fetch-models":
        configure_logging("info")
        return fetch_models(args.name, args.dir)
    if args.command in ("batch-detector", "quantize-recognizer"):
        # Pack tools print their own report; the service's INFO lines (sessions opened on
        # which provider) would only bury it.
        configure_logging("warning")
    if args.command == "batch-detector":
        return batch_detector(args.source, args.target, args.photos)
    if args.command == "quantize-recognizer":
        return quantize_recognizer(args)
    try:
        settings = Settings()
    except ValidationError as exc:
        return _fail(f"invalid settings: {settings_errors(exc)}")
    configure_logging(settings.log_level)
    if args.command == "calibrate":
        return run_calibrate(args, settings.pack_dir)
    if args.command == "check-pack":
        return check_pack(args.directory or settings.pack_dir)
    if args.command == "gallery":
        return transfer.run(args, settings)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
