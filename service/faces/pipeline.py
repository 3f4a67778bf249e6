"""The whole face pipeline in one object: bytes → decoded image → faces → embeddings.

Routes (verify, embed, detect, identify, enrol) call `analyze` or `detect`; each stage is timed
and reported to Prometheus when metrics are attached.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from service.errors import ErrorCode, ServiceError
from service.faces.alignment import align_face, similarity_matrix, warp_face
from service.faces.batching import BatchingOptions, MicroBatcher
from service.faces.detector import DetectorOptions, FaceDetector
from service.faces.embedder import Embedder
from service.faces.images import DecodeLimits, ReducedImage, decode_image, decode_reduced
from service.faces.liveness import FaceCrops, LivenessChecker
from service.faces.quality import QualityLimits, assess_quality
from service.faces.types import DetectedFace, EmbeddedFace
from service.metrics import Metrics
from service.packs import ModelPack
from service.runtime import RuntimeOptions, active_provider, create_session

FaceRule = Literal["largest", "best"]
Crop = tuple[np.ndarray, bool]  # an aligned crop and whether to flip-test it
Embedded = tuple[np.ndarray, float]  # unit embedding and the raw embedding's norm
# Which faces `analyze` embeds: the one face a rule picks, or every face (up to max_faces).
FacesToEmbed = Literal["largest", "best", "all"]


@dataclass(frozen=True)
class PipelineOptions:
    """Per-request behaviour of the pipeline (from Settings)."""

    limits: DecodeLimits = field(default_factory=DecodeLimits)
    detector: DetectorOptions = field(default_factory=DetectorOptions)
    min_face_size: int = 20
    flip: bool = False
    # Faces kept per image, largest first; a crowd photo gave 400 detections, and each one
    # kept costs an alignment and a recognizer run.
    max_faces: int = 100
    quality: QualityLimits = field(default_factory=QualityLimits)


@dataclass
class DetectedImage:
    """Faces found in one image (largest first, at most `max_faces`) and those dropped as too
    small."""

    faces: list[DetectedFace]
    too_small: int
    width: int
    height: int
    timings_ms: dict[str, float]


@dataclass
class AnalyzedImage:
    """Embedded faces of one image (largest first) and those dropped as too small. When
    `analyze` was asked for one face, `faces` holds only that one."""

    faces: list[EmbeddedFace]
    too_small: int
    width: int
    height: int
    timings_ms: dict[str, float]


def chosen_face(faces: Sequence[DetectedFace], rule: FaceRule) -> int:
    """Index of the face a 1:1 request is about, among detections sorted largest first: the
    largest box, or the highest detection score. The one face-choice rule."""
    if rule == "best":
        return max(range(len(faces)), key=lambda i: faces[i].score)
    return 0


def select_face(image: AnalyzedImage, rule: FaceRule = "largest") -> EmbeddedFace:
    """The face a 1:1 request is about (`chosen_face`), or no_face / face_too_small."""
    if not image.faces:
        if image.too_small:
            raise ServiceError(
                ErrorCode.FACE_TOO_SMALL,
                f"{image.too_small} face(s) found but all are smaller than the minimum face size; "
                "send a larger or closer photo",
            )
        raise ServiceError(ErrorCode.NO_FACE, "no face found in the image")
    return image.faces[chosen_face([embedded.face for embedded in image.faces], rule)]


class FacePipeline:
    """decode → detect → align → embed (→ liveness, when asked) for one loaded model pack."""

    def __init__(
        self,
        detector: FaceDetector,
        embedder: Embedder,
        options: PipelineOptions,
        metrics: Metrics | None = None,
        liveness: LivenessChecker | None = None,
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.options = options
        self._metrics = metrics
        self.liveness = liveness  # None: the pack has no liveness models
        self.provider = "unknown"
        self._embed_batcher: MicroBatcher[Crop, Embedded] | None = None
        self._detect_batcher: MicroBatcher[np.ndarray, list[DetectedFace]] | None = None
        self._liveness_batcher: MicroBatcher[FaceCrops, float] | None = None

    def enable_batching(self, options: BatchingOptions) -> None:
        """Join the recognizer crops of concurrent runs (and their detector inputs, when the
        detector takes a batch, and their liveness crops) into shared model calls; see
        `service.faces.batching`."""
        self.close()
        self._embed_batcher = MicroBatcher(self._embed_items, options, "recognizer-batcher")
        if self.detector.batches_images:
            self._detect_batcher = MicroBatcher(
                self.detector.detect_many, options, "detector-batcher"
            )
        if self.liveness is not None:
            self._liveness_batcher = MicroBatcher(
                self.liveness.score_crops, options, "liveness-batcher"
            )

    def warm_up(self) -> None:
        """One detector and one recognizer run on blank input, so that onnxruntime's first-run
        cost (memory arena growth, kernel selection) is paid before the service says it is
        ready rather than by the first request."""
        width, height = self.detector.input_size
        self.detector.detect(np.zeros((height, width, 3), dtype=np.uint8))
        side = self.embedder.input_size
        self.embedder.embed([np.zeros((side, side, 3), dtype=np.uint8)])

    def close(self) -> None:
        """Stop the batching threads, if any."""
        for batcher in (self._embed_batcher, self._detect_batcher, self._liveness_batcher):
            if batcher is not None:
                batcher.close()
        self._embed_batcher = self._detect_batcher = self._liveness_batcher = None

    @classmethod
    def from_pack(
        cls,
        pack: ModelPack,
        options: PipelineOptions,
        runtime: RuntimeOptions,
        metrics: Metrics | None = None,
    ) -> FacePipeline:
        detector_session = create_session(pack.detector_path, runtime)
        recognizer_session = create_session(pack.recognizer_path, runtime)
        liveness = None
        if pack.manifest.liveness is not None and pack.liveness_paths:
            sessions = [create_session(path, runtime) for path in pack.liveness_paths]
            liveness = LivenessChecker(sessions, pack.manifest.liveness)
        pipeline = cls(
            FaceDetector(detector_session, pack.manifest.detector, options.detector),
            Embedder(recognizer_session, pack.manifest.recognizer),
            options,
            metrics,
            liveness,
        )
        pipeline.provider = active_provider(recognizer_session)
        return pipeline

    @contextmanager
    def _stage(self, name: str, timings: dict[str, float]) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            timings[name] = timings.get(name, 0.0) + elapsed * 1000.0
            if self._metrics is not None:
                self._metrics.stage_duration.labels(name).observe(elapsed)

    def _decode(self, data: bytes, timings: dict[str, float]) -> ReducedImage:
        """Decode at the smallest JPEG scale that keeps twice the detector input's pixels."""
        with self._stage("decode", timings):
            return decode_reduced(data, self.options.limits, self.detector.input_size)

    def detect(self, data: bytes) -> DetectedImage:
        """Decode and detect; faces under the minimum size are dropped and counted."""
        timings: dict[str, float] = {}
        image = self._decode(data, timings)
        faces, too_small = self._detect(image, timings)
        return DetectedImage(faces, too_small, image.width, image.height, timings)

    def _detect(
        self, image: ReducedImage, timings: dict[str, float]
    ) -> tuple[list[DetectedFace], int]:
        """Faces in full-resolution pixels, whatever scale the image was decoded at."""
        with self._stage("detect", timings):
            if self._detect_batcher is not None:
                found = self._detect_batcher.submit([image.pixels])[0]
            else:
                found = self.detector.detect(image.pixels)
            if image.reduced:
                found = [_rescaled(face, image.scale_x, image.scale_y) for face in found]
        minimum = self.options.min_face_size
        faces = [f for f in found if min(f.width, f.height) >= minimum]
        faces = faces[: self.options.max_faces]
        if self._metrics is not None:
            self._metrics.faces_per_image.observe(len(faces))
            self._metrics.faces_detected.inc(len(faces))
        too_small = sum(min(f.width, f.height) < minimum for f in found)
        return faces, too_small

    def analyze(
        self,
        data: bytes,
        *,
        flip: bool | None = None,
        faces: FacesToEmbed = "all",
        liveness: bool = False,
    ) -> AnalyzedImage:
        """Decode, detect, align and embed the faces of an uploaded image: every face, or only
        the one a 1:1 request is about (`largest` or `best`, the rules of `select_face`).
        With `liveness`, each embedded face also carries its liveness verdict."""
        timings: dict[str, float] = {}
        image = self._decode(data, timings)
        found, too_small = self._detect(image, timings)
        if faces != "all" and found:
            found = [found[chosen_face(found, faces)]]
        crops, full = self._align_from(image, data, found, timings)
        embedded = self._embed(crops, found, flip, timings)
        if liveness and embedded:
            embedded = self._check_liveness(image, data, full, embedded, timings)
        return AnalyzedImage(embedded, too_small, image.width, image.height, timings)

    def _check_liveness(
        self,
        image: ReducedImage,
        data: bytes,
        full: np.ndarray | None,
        faces: list[EmbeddedFace],
        timings: dict[str, float],
    ) -> list[EmbeddedFace]:
        """The faces with their liveness verdicts. Crops come from the reduced decode when it
        holds them at the models' resolution, else from the full-resolution decode (`full`,
        made now unless alignment made it): print and screen artefacts are fine texture that a
        downscaled decode would blur away."""
        if self.liveness is None:
            raise ServiceError(
                ErrorCode.LIVENESS_UNAVAILABLE,
                "the model pack has no liveness models: add them with `python -m training "
                "export-liveness`, or send the request without liveness",
            )
        detected = [face.face for face in faces]
        pixels, scale = image.pixels, (image.scale_x, image.scale_y)
        if image.reduced and not self.liveness.crops_fit(detected, max(scale)):
            if full is None:
                with self._stage("decode", timings):
                    full = decode_image(data, self.options.limits)
            pixels, scale = full, (1.0, 1.0)
        with self._stage("liveness", timings):
            crops = self.liveness.crops(pixels, detected, scale)
            if self._liveness_batcher is not None:
                scores = self._liveness_batcher.submit(crops)
            else:
                scores = self.liveness.score_crops(crops)
            verdicts = [self.liveness.verdict(score) for score in scores]
        if self._metrics is not None:
            for verdict in verdicts:
                self._metrics.liveness_score.observe(verdict.score)
        return [
            replace(face, liveness=verdict) for face, verdict in zip(faces, verdicts, strict=True)
        ]

    def _align_from(
        self,
        image: ReducedImage,
        data: bytes,
        faces: list[DetectedFace],
        timings: dict[str, float],
    ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Aligned crops, and the full-resolution decode if one was made. A face is aligned
        from the reduced decode when the crop would not enlarge it there (so no detail is
        lost); smaller faces from a full-resolution decode, made once and only when needed."""
        size = self.embedder.input_size
        with self._stage("align", timings):
            matrices: list[np.ndarray | None] = [None] * len(faces)
            if image.reduced:
                scales = np.array([image.scale_x, image.scale_y], np.float32)
                for index, face in enumerate(faces):
                    matrix = similarity_matrix(face.landmarks / scales, size)
                    if _crop_scale(matrix) <= 1.0:
                        matrices[index] = matrix
        full = image.pixels if not image.reduced else None
        if full is None and any(matrix is None for matrix in matrices):
            with self._stage("decode", timings):
                full = decode_image(data, self.options.limits)
        with self._stage("align", timings):
            crops = [
                warp_face(image.pixels, matrix, size)
                if matrix is not None
                else align_face(full, face.landmarks, size)
                for face, matrix in zip(faces, matrices, strict=True)
            ]
        return crops, full if image.reduced else None

    def embed_faces(
        self,
        image: np.ndarray,
        faces: list[DetectedFace],
        *,
        flip: bool | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[EmbeddedFace]:
        """Align and embed already detected faces of a decoded BGR image, in one model call."""
        timings = {} if timings is None else timings
        with self._stage("align", timings):
            size = self.embedder.input_size
            crops = [align_face(image, face.landmarks, size) for face in faces]
        return self._embed(crops, faces, flip, timings)

    def _embed(
        self,
        crops: list[np.ndarray],
        faces: list[DetectedFace],
        flip: bool | None,
        timings: dict[str, float],
    ) -> list[EmbeddedFace]:
        """One recognizer call for the aligned crops of `faces` (same order)."""
        if not faces:
            return []
        use_flip = self.options.flip if flip is None else flip
        items = [(crop, use_flip) for crop in crops]
        with self._stage("embed", timings):
            if self._embed_batcher is not None:
                embedded = self._embed_batcher.submit(items)
            else:
                embedded = self._embed_items(items)
        limits = self.options.quality
        return [
            EmbeddedFace(face, embedding, assess_quality(face, crop, norm, limits))
            for face, crop, (embedding, norm) in zip(faces, crops, embedded, strict=True)
        ]

    def _embed_items(self, items: list[Crop]) -> list[Embedded]:
        """(embedding, norm) per (crop, flip); one recognizer call per flip setting."""
        results: list[Embedded | None] = [None] * len(items)
        for flip in (False, True):
            indices = [i for i, (_, item_flip) in enumerate(items) if item_flip is flip]
            if not indices:
                continue
            batch = self.embedder.embed([items[i][0] for i in indices], flip=flip)
            for row, index in enumerate(indices):
                results[index] = (batch.embeddings[row], float(batch.norms[row]))
        return results  # type: ignore[return-value]  # every index was filled


def _rescaled(face: DetectedFace, scale_x: float, scale_y: float) -> DetectedFace:
    """A detection in a reduced decode, in full-resolution pixels."""
    scales = np.array([scale_x, scale_y], np.float32)
    return DetectedFace(
        box=face.box * np.tile(scales, 2), landmarks=face.landmarks * scales, score=face.score
    )


def _crop_scale(matrix: np.ndarray) -> float:
    """How much a 2x3 similarity transform enlarges the image (> 1: upsampling)."""
    return float(np.hypot(matrix[0, 0], matrix[0, 1]))
