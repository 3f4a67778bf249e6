"""`python -m service gallery enrol SOURCE`: fill the gallery from a folder of photos (one
sub-folder per person) or a CSV of `person,path[,name]`, with the service's own enrolment
rules, on all CPUs (`service.gallery.bulk`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli.common import CommandError, load_settings
from service.errors import PackError, ServiceError
from service.logs import configure_logging


def add_parser(actions: argparse._SubParsersAction) -> None:
    enrol = actions.add_parser(
        "enrol", help="enrol a folder of photos (one sub-folder per person) or a CSV"
    )
    enrol.add_argument(
        "source", type=Path, help="folder of people's folders, or CSV of person,path[,name]"
    )
    enrol.add_argument(
        "--report", type=Path, help="CSV of refused photos (default: SOURCE-refused.csv beside it)"
    )
    enrol.add_argument("--workers", type=int, default=0, help="parallel workers (0: one per CPU)")
    enrol.add_argument(
        "--pool",
        choices=["process", "thread"],
        default="thread",
        help="workers as threads (default: faster on few CPUs) or processes",
    )
    enrol.add_argument(
        "--batch-size", type=int, default=None, help="faces per store write (default 64)"
    )
    enrol.add_argument("--no-progress", action="store_true", help="no progress bar")
    enrol.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Enrol, write the report of refused photos, print the summary line."""
    from service.app import pipeline_options
    from service.cli.gallery import open_store
    from service.gallery import bulk
    from service.gallery.enrolment import enrolment_level
    from service.packs import load_pack
    from service.runtime import RuntimeOptions

    settings = load_settings()
    configure_logging(settings.log_level)
    if args.workers < 0 or (args.batch_size is not None and args.batch_size < 1):
        raise CommandError("--workers must be 0 or more and --batch-size 1 or more")
    try:
        photos, refused = bulk.find_photos(args.source)
        pack = load_pack(settings.pack_dir, verify_checksums=settings.verify_checksums)
    except (bulk.BulkError, PackError) as error:
        raise CommandError(str(error)) from error
    spec = bulk.PipelineSpec(
        pack.directory,
        pipeline_options(settings),
        # One thread per worker: the pool, not onnxruntime, spreads the work over the CPUs.
        RuntimeOptions(
            providers=settings.providers,
            intra_op_threads=1,
            inter_op_threads=1,
            graph_optimization=settings.graph_optimization,
        ),
    )
    policy = bulk.EnrolmentPolicy(
        require_single_face=settings.require_single_face,
        min_quality=settings.min_enrol_quality,
        min_level=enrolment_level(settings.enrol_quality),
    )
    report = args.report or bulk.default_report_path(args.source)
    store = open_store(settings)
    try:
        result = bulk.enrol_photos(
            store,
            photos,
            model_id=pack.model_id,
            spec=spec,
            policy=policy,
            workers=args.workers,
            pool=args.pool,
            batch_faces=args.batch_size or bulk.DEFAULT_BATCH_FACES,
            progress=not args.no_progress,
            refused=refused,
        )
    except ServiceError as error:
        raise CommandError(
            f"{error.code.value}: {error.message}; every batch written so far is complete, and "
            "a re-run skips the photos already enrolled"
        ) from error
    finally:
        store.close()
    try:
        bulk.write_report(report, result.refused)
    except OSError as error:
        raise CommandError(f"cannot write the report {report}: {error}") from error
    print(f"{result.summary()}; refused photos listed in {report}")
    return 0
