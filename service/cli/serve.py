"""`python -m service [serve]`: check the pack and keys file, then run uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import os
import tempfile
from typing import Any

from service.cli.common import CommandError, load_settings
from service.errors import PackError
from service.logs import configure_logging, logging_config
from service.settings import Settings
from service.workers import shared_ready_dir


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve", help="run the HTTP service (default); settings from FACEVERIFY_*"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)
    return serve(settings)


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
        raise CommandError(str(exc)) from exc
    if settings.api_keys_file is not None:
        from service.keys import KeysFileError, read_keys_file

        try:
            read_keys_file(settings.api_keys_file)
        except KeysFileError as exc:
            raise CommandError(str(exc)) from exc
    if settings.gallery_backend == "sqlite":
        from service.gallery.store_files import GalleryStoreError, check_data_dir

        try:  # read-only folder, or data a previous run stored gone: exit for the operator
            check_data_dir(settings.data_dir, allow_empty=settings.gallery_allow_empty)
        except GalleryStoreError as exc:
            raise CommandError(str(exc)) from exc
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
