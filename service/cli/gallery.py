"""`python -m service gallery export|import|migrate|enrol|report`: the gallery's bulk transfers
(`service.gallery.transfer`) from the shell, with progress bars and one-line failures."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli import gallery_enrol, gallery_report
from service.cli.common import CommandError, load_settings
from service.errors import PackError
from service.gallery.interface import GalleryStore
from service.gallery.transfer import TransferError, export_to_file, import_gallery, migrate
from service.logs import configure_logging
from service.settings import Settings


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "gallery", help="export, import, migrate, enrol photos into, or report on the gallery"
    )
    parser.set_defaults(run=run)
    actions = parser.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="write the gallery as JSON Lines (embeddings)")
    export.add_argument("--out", type=Path, required=True, help="file to write")
    imported = actions.add_parser("import", help="add identities and faces from JSON Lines")
    imported.add_argument("file", type=Path, help="JSON Lines file (see docs/gallery.md)")
    move = actions.add_parser("migrate", help="copy the embedded gallery into Milvus")
    move.add_argument("--to", choices=["milvus"], required=True, help="target backend")
    for sub in (export, imported, move):
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
    gallery_report.add_parser(actions)
    gallery_enrol.add_parser(actions)  # `enrol` sets its own `run`


def open_store(settings: Settings, backend: str | None = None) -> GalleryStore:
    """The store of `backend` (default: the configured one) for the settings."""
    from service.gallery import open_milvus_store
    from service.gallery.store import SqliteStore

    if (backend or settings.gallery_backend) == "milvus":
        return open_milvus_store(settings)
    return SqliteStore.in_directory(settings.data_dir)


def run(args: argparse.Namespace) -> int:
    """Run a `gallery` subcommand; 0 on success, a one-line `CommandError` otherwise."""
    settings = load_settings()
    configure_logging(settings.log_level)
    progress = not args.no_progress
    try:
        if args.action == "export":
            store = open_store(settings)
            try:
                counts = export_to_file(store, args.out, progress=progress)
            finally:
                store.close()
            print(f"exported {counts.identities} identities, faces {counts.faces_per_model}")
        elif args.action == "import":
            from service.packs import load_pack

            if not args.file.is_file():
                raise TransferError(f"no file {args.file}")
            pack = load_pack(settings.pack_dir, verify_checksums=False)
            store = open_store(settings)
            try:
                report = import_gallery(
                    store,
                    args.file,
                    model_id=pack.model_id,
                    dim=pack.manifest.recognizer.embedding_size,
                    progress=progress,
                )
            finally:
                store.close()
            print(
                f"imported {report.lines} lines: {report.identities_created} new identities, "
                f"{report.faces_stored} new faces, {report.faces_already_there} already there"
            )
        else:
            source, target = open_store(settings, "sqlite"), open_store(settings, "milvus")
            try:
                counts = migrate(source, target, progress=progress)
            finally:
                source.close()
                target.close()
            print(
                f"migrated and verified: {counts.identities} identities, faces "
                f"{counts.faces_per_model} in Milvus at {settings.milvus_uri}"
            )
    except (TransferError, PackError) as error:
        raise CommandError(str(error)) from error
    return 0
