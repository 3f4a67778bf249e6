"""Bulk enrolment from photos: a folder of people (or a CSV) becomes gallery identities.

`python -m service gallery enrol DIR` (service/cli/gallery_enrol.py) runs this job; it is kept
apart from the command line so tests and other callers run it as code. The job:

1. **finds** the photos (`find_photos`): one sub-folder per person, whose name is the person's
   external id (and name), or a CSV of `person,path[,name]`. Ids obey the gallery's id rule
   (`valid_id`); a photo of a bad id is refused, never renamed;
2. **plans** (`plan`): each photo's sha256 against the faces the identity already has with the
   loaded model, so a photo already enrolled (by an earlier run, or through the API) costs no
   inference and adds nothing;
3. **runs** decode → detect → embed in a pool of workers, each with its own onnxruntime
   sessions, and applies the enrolment policy of `POST /identities/{id}/faces`
   (`choose_enrolment_face`: single-face rule, quality levels, minimum quality);
4. **writes** in batches, one store call each (`GalleryStore.import_batch`: one SQLite
   transaction): an identity is created in the same write as its first face, so a photo whose
   person has no usable photo never leaves an empty identity behind. Face ids are a hash of
   identity, model and photo sha256, so a batch written twice (a run killed after its commit,
   then re-run) stores each face once; with Milvus (no transaction across collections) a
   re-run adds any face a kill left out;
5. **reports** every refused photo with the service's stable error code (`BulkResult`).
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError
from tqdm import tqdm

from service.errors import ErrorCode, ServiceError
from service.faces.pipeline import FacePipeline, PipelineOptions
from service.faces.quality import QualityLevel
from service.gallery.enrolment import choose_enrolment_face
from service.gallery.interface import ID_PATTERN, GalleryStore, NewFace, valid_id
from service.gallery.records import IdentityCreate
from service.runtime import RuntimeOptions

# What a photo may be: the formats the service decodes (service/faces/images.py).
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
# Faces per store write: one SQLite transaction (one fsync) or one Milvus insert. Small enough
# that a kill loses little work, large enough that the fsync is not the bottleneck.
DEFAULT_BATCH_FACES = 64
# Photos handed out to the pool but not yet written: bounds memory on a million-photo folder.
MAX_IN_FLIGHT_PER_WORKER = 8

PoolKind = Literal["process", "thread"]


class BulkError(Exception):
    """The job cannot run (no such folder, an unreadable CSV); the message says what to do."""


@dataclass(frozen=True)
class Photo:
    """One photo to enrol for one person: `person` is the identity's external id."""

    person: str
    name: str
    path: Path


@dataclass(frozen=True)
class Refusal:
    """A photo that was not enrolled, with the service's stable code and a message."""

    path: Path
    person: str
    code: ErrorCode
    message: str


@dataclass(frozen=True)
class EnrolmentPolicy:
    """The rules of `POST /identities/{id}/faces` (FACEVERIFY_REQUIRE_SINGLE_FACE,
    FACEVERIFY_MIN_ENROL_QUALITY, FACEVERIFY_ENROL_QUALITY)."""

    require_single_face: bool = False
    min_quality: float = 0.0
    min_level: QualityLevel | None = None


@dataclass(frozen=True)
class PipelineSpec:
    """What a worker needs to open its own pipeline (picklable: workers may be processes)."""

    pack_dir: Path
    options: PipelineOptions
    runtime: RuntimeOptions


@dataclass(frozen=True)
class Plan:
    """The photos to run, and what was settled without inference."""

    todo: list[tuple[Photo, str]]  # (photo, sha256 of its bytes)
    already_there: int
    refused: list[Refusal]


@dataclass
class BulkResult:
    photos: int = 0
    enrolled: int = 0
    already_there: int = 0
    identities_created: int = 0
    refused: list[Refusal] = field(default_factory=list)
    seconds: float = 0.0

    def refused_by_code(self) -> dict[str, int]:
        return dict(sorted(Counter(r.code.value for r in self.refused).items()))

    def summary(self) -> str:
        """One line: photos, enrolled, already there, refused by reason, identities, time."""
        reasons = ", ".join(f"{code} {n}" for code, n in self.refused_by_code().items())
        refused = f"refused {len(self.refused)}" + (f" ({reasons})" if reasons else "")
        return (
            f"photos {self.photos}, enrolled {self.enrolled}, already there "
            f"{self.already_there}, {refused}, identities created {self.identities_created}, "
            f"{self.seconds:.1f} s"
        )


# --- finding photos --------------------------------------------------------------------------


def find_photos(source: Path) -> tuple[list[Photo], list[Refusal]]:
    """The photos of a folder (one sub-folder per person) or a CSV, and those refused for a bad
    id or name. Files of other types are skipped; sub-folders of a person's folder count."""
    if source.is_dir():
        return _photos_of_folder(source)
    if source.is_file():
        return _photos_of_csv(source)
    raise BulkError(f"no folder or CSV file {source}")


def _photos_of_folder(root: Path) -> tuple[list[Photo], list[Refusal]]:
    photos: list[Photo] = []
    refused: list[Refusal] = []
    for entry in sorted(root.iterdir()):
        if entry.is_file() and entry.suffix.lower() in PHOTO_SUFFIXES:
            refused.append(
                Refusal(
                    entry,
                    "",
                    ErrorCode.VALIDATION_ERROR,
                    "a photo beside the people's folders belongs to nobody; move it into the "
                    "folder of its person",
                )
            )
        if not entry.is_dir():
            continue
        for path in _photo_files(entry):
            photos.append(Photo(entry.name, entry.name, path))
    return _checked(photos, refused)


def _photo_files(folder: Path) -> Iterator[Path]:
    """Photo files under `folder`, links followed, each real folder walked once (a link to a
    folder above it would otherwise loop for ever)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in PHOTO_SUFFIXES:
                yield Path(dirpath) / name


def _photos_of_csv(path: Path) -> tuple[list[Photo], list[Refusal]]:
    """Rows of `person,path[,name]`; paths relative to the CSV's folder; an optional header."""
    photos: list[Photo] = []
    refused: list[Refusal] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BulkError(f"cannot read the CSV {path}: {error}") from None
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["person", "path"]:
        rows = rows[1:]
    for number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if len(cells) not in (2, 3) or not cells[1]:
            raise BulkError(
                f"{path} row {number}: expected `person,path[,name]`, got {len(cells)} column(s)"
            )
        photo = path.parent / cells[1]
        name = cells[2] if len(cells) == 3 and cells[2] else cells[0]
        photos.append(Photo(cells[0], name, photo))
    return _checked(photos, refused)


def _checked(photos: list[Photo], refused: list[Refusal]) -> tuple[list[Photo], list[Refusal]]:
    """Refuse the photos of an id the gallery cannot hold, or of a name the API would refuse."""
    kept: list[Photo] = []
    for photo in photos:
        problem = _identity_problem(photo)
        if problem is None:
            kept.append(photo)
        else:
            refused.append(Refusal(photo.path, photo.person, ErrorCode.VALIDATION_ERROR, problem))
    return kept, refused


def _identity_problem(photo: Photo) -> str | None:
    if not valid_id(photo.person):
        return (
            f"{photo.person!r} is not a valid identity id ({ID_PATTERN}: letters, digits and "
            "_.:@-, starting with a letter or digit, at most 128); rename the folder"
        )
    try:
        IdentityCreate(name=photo.name)
    except ValidationError as error:
        return f"name {photo.name!r}: {error.errors()[0]['msg']}"
    return None


# --- planning --------------------------------------------------------------------------------


def photo_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def plan(
    store: GalleryStore,
    photos: Iterable[Photo],
    model_id: str,
    max_bytes: int,
    on_photo: Callable[[], object] = lambda: None,
) -> Plan:
    """Skip each photo whose sha256 the identity already has a face of with `model_id` (and
    repeats within the input); refuse files over `max_bytes` (the upload limit) unread; the
    rest are to run. `on_photo` is called as each photo is read (a progress bar)."""
    enrolled: dict[str, set[str]] = {}
    todo: list[tuple[Photo, str]] = []
    already, refused = 0, []
    for photo in photos:
        on_photo()
        try:
            size = photo.path.stat().st_size
            if size > max_bytes:
                refused.append(_too_large(photo, size, max_bytes))
                continue
            sha = photo_sha256(photo.path)
        except OSError as error:
            refused.append(_unreadable(photo, error))
            continue
        known = enrolled.get(photo.person)
        if known is None:
            known = enrolled[photo.person] = {
                face.image_sha256
                for face in store.faces_of(photo.person)
                if face.model_id == model_id
            }
        if sha in known:
            already += 1
            continue
        known.add(sha)
        todo.append((photo, sha))
    return Plan(todo, already, refused)


def _too_large(photo: Photo, size: int, limit: int) -> Refusal:
    return Refusal(
        photo.path,
        photo.person,
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"the file is {size:,} bytes; the limit is {limit:,} bytes (FACEVERIFY_MAX_UPLOAD_BYTES)",
    )


def _unreadable(photo: Photo, error: OSError) -> Refusal:
    return Refusal(
        photo.path,
        photo.person,
        ErrorCode.INVALID_IMAGE,
        f"cannot read the file: {error.strerror or error}",
    )


def face_id_of(person: str, model_id: str, image_sha256: str) -> str:
    """The same face id every time the same photo is enrolled for the same person and model."""
    return hashlib.sha256(f"{person}\0{model_id}\0{image_sha256}".encode()).hexdigest()[:32]


# --- workers ---------------------------------------------------------------------------------

# One pipeline per worker: a process's own global, or a thread's own attribute. Never shared.
_local = threading.local()


@dataclass(frozen=True)
class Embedded:
    """The face a worker chose for enrolment, ready for the store."""

    embedding: np.ndarray
    quality: float
    det_score: float


def _open_pipeline(spec: PipelineSpec, policy: EnrolmentPolicy) -> None:
    from service.packs import load_pack

    pack = load_pack(spec.pack_dir, verify_checksums=False)  # checked once by the caller
    _local.pipeline = FacePipeline.from_pack(pack, spec.options, spec.runtime)
    _local.policy = policy


def _analyze(path: Path) -> Embedded | tuple[ErrorCode, str]:
    """Run one photo in this worker: the enrolment face, or why the photo is refused."""
    pipeline: FacePipeline = _local.pipeline
    policy: EnrolmentPolicy = _local.policy
    try:
        data = path.read_bytes()
        analyzed = pipeline.analyze(data, faces="all" if policy.require_single_face else "largest")
        face = choose_enrolment_face(
            analyzed,
            require_single_face=policy.require_single_face,
            min_quality=policy.min_quality,
            min_level=policy.min_level,
        )
    except ServiceError as error:
        return error.code, error.message
    except OSError as error:
        return ErrorCode.INVALID_IMAGE, f"cannot read the file: {error.strerror or error}"
    return Embedded(
        np.asarray(face.embedding, dtype=np.float32),
        float(face.quality.embedding_norm),
        float(face.face.score),
    )


def _executor(
    kind: PoolKind, workers: int, spec: PipelineSpec, policy: EnrolmentPolicy
) -> Executor:
    if kind == "process":
        # spawn: never fork a process that may hold a Milvus client's threads.
        return ProcessPoolExecutor(
            workers,
            mp_context=get_context("spawn"),
            initializer=_open_pipeline,
            initargs=(spec, policy),
        )
    return ThreadPoolExecutor(workers, initializer=_open_pipeline, initargs=(spec, policy))


def _bounded_map(
    executor: Executor, fn: Callable[[Path], Any], items: list[Path], in_flight: int
) -> Iterator[Any]:
    """`executor.map` in input order with at most `in_flight` items handed out at once."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    for future in pending:
        yield future.result()


# --- the job ---------------------------------------------------------------------------------


def enrol_photos(
    store: GalleryStore,
    photos: list[Photo],
    *,
    model_id: str,
    spec: PipelineSpec,
    policy: EnrolmentPolicy,
    workers: int = 0,
    pool: PoolKind = "thread",
    batch_faces: int = DEFAULT_BATCH_FACES,
    progress: bool = True,
    refused: Iterable[Refusal] = (),
) -> BulkResult:
    """Enrol `photos` into `store` (see the module docstring); `refused` are refusals found
    before (bad ids), reported with the rest. `workers` 0 = one per CPU."""
    started = time.perf_counter()
    refused = list(refused)
    result = BulkResult(photos=len(photos) + len(refused), refused=refused)
    workers = workers or os.cpu_count() or 1
    batch: list[NewFace] = []
    identities: dict[str, tuple[str, str, dict[str, Any]]] = {}

    def flush() -> None:
        if batch:
            created, stored = store.import_batch(list(identities.values()), batch)
            result.identities_created += created
            result.enrolled += stored
            result.already_there += len(batch) - stored
        batch.clear()
        identities.clear()

    bar = tqdm(total=len(photos), unit="photo", disable=not progress, file=sys.stderr)
    with bar:
        # First pass: read and hash every photo (the bar counts photos read), then run.
        bar.set_description("reading")
        planned = plan(store, photos, model_id, spec.options.limits.max_bytes, bar.update)
        result.already_there = planned.already_there
        result.refused.extend(planned.refused)
        bar.reset(total=len(planned.todo))
        bar.set_description("enrolling")
        executor = _executor(pool, min(workers, max(1, len(planned.todo))), spec, policy)
        with executor:
            paths = [photo.path for photo, _ in planned.todo]
            outcomes = _bounded_map(executor, _analyze, paths, workers * MAX_IN_FLIGHT_PER_WORKER)
            for (photo, sha), outcome in zip(planned.todo, outcomes, strict=True):
                bar.update(1)
                if not isinstance(outcome, Embedded):
                    code, message = outcome
                    result.refused.append(Refusal(photo.path, photo.person, code, message))
                    continue
                identities.setdefault(photo.person, (photo.person, photo.name, {}))
                batch.append(
                    NewFace(
                        identity_id=photo.person,
                        model_id=model_id,
                        embedding=outcome.embedding,
                        quality=outcome.quality,
                        det_score=outcome.det_score,
                        image_sha256=sha,
                        face_id=face_id_of(photo.person, model_id, sha),
                    )
                )
                if len(batch) >= batch_faces:
                    flush()
            flush()
    result.seconds = time.perf_counter() - started
    return result


REPORT_COLUMNS = ("path", "person", "code", "message")


def write_report(path: Path, refused: Iterable[Refusal]) -> None:
    """The refused photos as CSV (`path,person,code,message`), a header even when none."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(REPORT_COLUMNS)
        for refusal in refused:
            writer.writerow(
                (str(refusal.path), refusal.person, refusal.code.value, refusal.message)
            )


def default_report_path(source: Path) -> Path:
    """Beside the input: `photos/` → `photos-refused.csv`, `people.csv` → `people-refused.csv`."""
    stem = source.stem if source.is_file() else source.resolve().name
    return source.resolve().parent / f"{stem}-refused.csv"
