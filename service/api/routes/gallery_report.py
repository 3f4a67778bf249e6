"""GET /gallery/report (JSON) and GET /gallery/report.png (FPIR against threshold): the gallery
report of `service.gallery.report` over HTTP, for the console's Gallery page. Scope
`gallery:read`. Each call reads the whole store once and searches up to `max_faces` faces:
an operator's check, not a request to poll."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import Services, get_gallery, get_services
from service.api.errors import documented
from service.errors import ServiceError
from service.gallery import Gallery
from service.gallery.fpir import FpirEstimate
from service.gallery.report import GalleryReport, ReportOptions, build_report

router = APIRouter(tags=["gallery"])

# The most faces one request may search for duplicates (the CLI has no such bound).
MAX_FACES_PER_REQUEST = 100_000

MinScore = Annotated[
    float | None,
    Query(
        ge=-1.0,
        le=1.0,
        description="Score from which two identities are suspected duplicates (default: the "
        "pack's threshold at FMR 1e-5 when calibrated that low, else the 1:1 threshold + 0.15).",
    ),
]
MaxFaces = Annotated[
    int,
    Query(
        ge=1,
        le=MAX_FACES_PER_REQUEST,
        description="Faces searched for duplicates; a random sample of this many beyond.",
    ),
]


def _report(
    services: Services, gallery: Gallery, min_score: float | None, max_faces: int
) -> tuple[GalleryReport, FpirEstimate | None]:
    estimate = None
    if services.fpir is not None:
        try:  # the calibrator's last measurement when there is one: no second measurement
            estimate = services.fpir.current()
        except ServiceError:
            estimate = None  # build_report says why in the report
    return build_report(
        gallery,
        threshold_1to1=services.threshold,
        calibration=services.pack.manifest.thresholds,
        options=ReportOptions(
            min_score=min_score, max_faces=max_faces, fpir_probes=services.settings.fpir_probes
        ),
        estimate=estimate,
    )


@router.get(
    "/gallery/report",
    response_model=GalleryReport,
    responses=documented({422: "validation_error"}),
)
async def gallery_report(
    services: Annotated[Services, Depends(get_services)],
    gallery: Annotated[Gallery, Depends(get_gallery)],
    min_score: MinScore = None,
    max_faces: MaxFaces = ReportOptions.max_faces,
) -> GalleryReport:
    """Identities, faces per identity and per model, stored face quality, suspected duplicate
    identities (pairs whose faces match above a strict threshold, with scores and face ids),
    the impostor score tail and the thresholds at FPIR 1e-1, 1e-2 and 1e-3 for the current
    gallery size (docs/identification.md)."""
    report, _ = await run_in_threadpool(_report, services, gallery, min_score, max_faces)
    return report


@router.get(
    "/gallery/report.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "FPIR against threshold"},
        **documented({422: "validation_error"}),
    },
)
async def gallery_report_png(
    services: Annotated[Services, Depends(get_services)],
    gallery: Annotated[Gallery, Depends(get_gallery)],
    min_score: MinScore = None,
    max_faces: MaxFaces = ReportOptions.max_faces,
) -> Response:
    """FPIR against threshold (log scale): the share of enrolled identities, searched as
    strangers, whose best score against the others reaches each threshold; the 1:1 threshold,
    the FPIR thresholds and the duplicate threshold are marked."""
    from service.gallery.report_plot import fpir_curve_png

    def draw() -> bytes:
        report, estimate = _report(services, gallery, min_score, max_faces)
        scores = estimate.stranger_scores if estimate is not None else []
        return fpir_curve_png(report, scores)

    png = await run_in_threadpool(draw)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
