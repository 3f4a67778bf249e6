"""Model packs: find, verify and load a detector + recognizer pair and its metadata.

A pack is a folder. Ours carry `pack.json` (schema: `PackManifest`); InsightFace packs
(buffalo_l, buffalo_s, antelopev2, ...) are plain folders of ONNX files and load as-is: the
detector and the recognizer are told apart by their ONNX signatures (graph inputs and outputs,
read without loading the weights into a runtime), and a manifest is synthesised for them with
InsightFace's preprocessing conventions and the threshold of the matching catalogue entry.

The catalogue (`models/catalogue.json`, schema: `Catalogue`) lists the packs this project knows:
where to download them, their checksums, licence and recommended threshold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from pydantic import BaseModel, Field, ValidationError, model_validator

from service.errors import PackError

MANIFEST_NAME = "pack.json"
CATALOGUE_PATH = Path(__file__).resolve().parent / "catalogue.json"  # -> models/catalogue.json

# Conservative default for ArcFace-family cosine similarities (of L2-normalised embeddings),
# used when neither a manifest nor the catalogue gives a threshold. It is not measured for any
# particular model: calibrate on your own pairs and override with FACEVERIFY_THRESHOLD.
DEFAULT_THRESHOLD = 0.35

# Read files in 1 MiB chunks when hashing: a 170 MB recognizer hashes in ~0.1 s, in constant memory.
HASH_CHUNK_BYTES = 1 << 20

FETCH_HINT = (
    "run `python -m service fetch-models buffalo_l` or set FACEVERIFY_PACK_DIR to a folder "
    "holding a detector and a recognizer ONNX"
)

# --- InsightFace conventions, for packs without a manifest ------------------------------------
# insightface python-package model_zoo/scrfd.py: input_mean 127.5, input_std 128.0, RGB
# (blobFromImage swapRB=True); FaceAnalysis prepares the detector at det_size 640 x 640.
SCRFD_INPUT_SIZE = 640
SCRFD_MEAN = 127.5
SCRFD_STD = 128.0
# model_zoo/arcface_onnx.py: RGB, (x - 127.5) / 127.5 unless the graph normalises itself.
ARCFACE_MEAN = 127.5
ARCFACE_STD = 127.5
# arcface_onnx.py looks at the first 8 graph nodes for Sub/Mul normalisation nodes.
NORMALISATION_NODE_WINDOW = 8
# SCRFD exports have 6 (no keypoints) or 9 (keypoints) outputs with 3 strides, 10 or 15 with 5.
SCRFD_OUTPUTS_WITH_KEYPOINTS = (9, 15)
# model_zoo.py ModelRouter: >= 5 outputs is a detector (SCRFD).
MIN_DETECTOR_OUTPUTS = 5
# A face detector's input is dynamic or at least this many pixels per side (SCRFD runs at
# 128-1280; smaller fixed inputs are classifiers).
MIN_DETECTOR_SIDE = 128
# ModelRouter: 192 px square input = landmark model (2d106det, 1k3d68); 96 px = attribute
# model (genderage); 2 inputs at 128 px = face swapper (inswapper_128).
LANDMARK_INPUT_SIDE = 192
ATTRIBUTE_INPUT_SIDE = 96
SWAPPER_INPUT_SIDE = 128
# ModelRouter: a recognizer's square input is >= 112 px and a multiple of 16.
MIN_RECOGNIZER_SIDE = 112
RECOGNIZER_SIDE_MULTIPLE = 16

ModelRole = Literal["detector", "recognizer", "landmark", "attribute", "swapper", "unknown"]
Dim = int | str | None  # fixed size, symbolic name, or unknown


class ModelFileSpec(BaseModel):
    """One ONNX file of a pack."""

    file: str = Field(description="File name inside the pack folder.")
    sha256: str | None = Field(None, description="Hex sha256 of the file; checked at load.")


class DetectorSpec(ModelFileSpec):
    """Face detector (SCRFD family: boxes, scores and 5 landmarks)."""

    kind: Literal["scrfd"] = "scrfd"
    input_size: int = 640
    color_order: Literal["RGB", "BGR"] = "RGB"
    mean: float = 127.5
    std: float = 128.0


class RecognizerSpec(ModelFileSpec):
    """Face recognizer: aligned square crop in, embedding out."""

    input_size: int = 112
    color_order: Literal["RGB", "BGR"] = "RGB"
    mean: float = 127.5
    std: float = 127.5
    embedding_size: int


class PackManifest(BaseModel):
    """Contents of `pack.json`; `training.export` writes it, the service reads it."""

    schema_version: int = 1
    name: str
    detector: DetectorSpec
    recognizer: RecognizerSpec
    threshold: float = Field(description="Recommended cosine threshold for verification.")
    source: str = Field("", description="Where the weights come from (URL, training run).")
    licence: str = ""
    training: dict[str, object] | None = Field(
        None, description="Backbone, head, margins, data, evaluation results, target FAR."
    )


@dataclass(frozen=True)
class ModelPack:
    """A pack that exists on disk, verified and ready to load into onnxruntime."""

    name: str
    directory: Path
    manifest: PackManifest
    detector_path: Path
    recognizer_path: Path
    ignored_files: tuple[str, ...] = ()  # other ONNX files of the folder (landmarks, ...)

    @property
    def model_id(self) -> str:
        """Identifies the embedding space: name plus the recognizer's sha256 prefix."""
        digest = (self.manifest.recognizer.sha256 or "")[:12]
        return f"{self.name}@{digest}" if digest else self.name


# --- catalogue ---------------------------------------------------------------------------------

SHA256_PATTERN = r"^[0-9a-f]{64}$"


class CatalogueFile(BaseModel):
    """One file inside a catalogued pack."""

    name: str
    role: Literal["detector", "recognizer", "other"]
    sha256: str | None = Field(None, pattern=SHA256_PATTERN)
    size: int | None = Field(None, ge=0, description="Bytes.")


class CatalogueEntry(BaseModel):
    """A known pack: where it comes from, what is inside, how to use it."""

    name: str
    url: str | None = Field(None, description="Zip archive to download; None = local-only.")
    archive_sha256: str | None = Field(None, pattern=SHA256_PATTERN)
    archive_size: int | None = Field(None, ge=0, description="Bytes.")
    files: list[CatalogueFile]
    embedding_size: int = Field(gt=0)
    threshold: float = Field(ge=-1.0, le=1.0, description="Recommended cosine threshold.")
    threshold_source: str = Field(description="How the threshold was obtained.")
    licence: str
    note: str = ""

    def file_with_role(self, role: Literal["detector", "recognizer"]) -> CatalogueFile | None:
        return next((item for item in self.files if item.role == role), None)


class Catalogue(BaseModel):
    """Contents of `models/catalogue.json`."""

    schema_version: int = 1
    packs: list[CatalogueEntry]

    @model_validator(mode="after")
    def _names_are_unique(self) -> Catalogue:
        names = self.names()
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"pack names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def names(self) -> list[str]:
        return [entry.name for entry in self.packs]

    def get(self, name: str) -> CatalogueEntry | None:
        return next((entry for entry in self.packs if entry.name == name), None)

    def match_recognizer(
        self, recognizer_sha256: str, detector_sha256: str | None = None
    ) -> CatalogueEntry | None:
        """The entry whose recognizer has this hash; one whose detector also matches first."""
        matches = [
            entry
            for entry in self.packs
            if (spec := entry.file_with_role("recognizer")) and spec.sha256 == recognizer_sha256
        ]
        for entry in matches:
            detector = entry.file_with_role("detector")
            if detector is not None and detector.sha256 == detector_sha256:
                return entry
        return matches[0] if matches else None


def load_catalogue(path: Path | None = None) -> Catalogue:
    """Read the pack catalogue (default: `<repo>/models/catalogue.json`)."""
    path = Path(path) if path is not None else CATALOGUE_PATH
    try:
        return Catalogue.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise PackError(f"cannot read the pack catalogue {path}: {exc.strerror}") from exc
    except ValidationError as exc:
        raise PackError(
            f"the pack catalogue {path} is invalid ({_first_error(exc)}): fix the file"
        ) from exc


# --- file helpers ------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed in `HASH_CHUNK_BYTES` chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"]) or "document"
    return f"{location}: {error['msg']}"


# --- ONNX signatures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSignature:
    """A graph input or output: name and shape (int = fixed, str = symbolic, None = unknown)."""

    name: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class OnnxSignature:
    """What a model looks like from outside, read without loading it into a runtime."""

    path: Path
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    leading_node_names: tuple[str, ...]

    def describe(self) -> str:
        """One-line summary, e.g. `1 input [1, 3, ?, ?] -> 9 outputs`."""
        shapes = ", ".join(_format_shape(item.shape) for item in self.inputs)
        outputs = ", ".join(_format_shape(item.shape) for item in self.outputs[:3])
        more = ", ..." if len(self.outputs) > 3 else ""
        return (
            f"{len(self.inputs)} input(s) {shapes} -> {len(self.outputs)} output(s) {outputs}{more}"
        )


def _format_shape(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"


def _tensor_signature(value: onnx.ValueInfoProto) -> TensorSignature:
    dims: list[Dim] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return TensorSignature(value.name, tuple(dims))


def read_onnx_signature(path: Path) -> OnnxSignature:
    """Parse `path` as ONNX (external weights are not read) and return its signature.

    Raises `PackError` when the file is not a usable ONNX model (truncated download, wrong
    file, missing external weights).
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise PackError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}): the file is truncated "
            "or corrupt, download or export it again"
        ) from exc
    graph = model.graph
    weights = {initializer.name for initializer in graph.initializer}
    inputs = tuple(_tensor_signature(v) for v in graph.input if v.name not in weights)
    outputs = tuple(_tensor_signature(v) for v in graph.output)
    if not inputs or not outputs:
        raise PackError(
            f"{path} parses as ONNX but has no graph inputs or outputs: it is truncated or not a "
            "model, download or export it again"
        )
    for initializer in graph.initializer:
        if initializer.data_location == onnx.TensorProto.EXTERNAL:
            location = next(
                (entry.value for entry in initializer.external_data if entry.key == "location"), ""
            )
            if not (path.parent / location).is_file():
                raise PackError(
                    f"{path} keeps its weights in {location!r}, which is not next to it: copy "
                    "that file into the pack folder too"
                )
    names = tuple(node.name for node in graph.node[:NORMALISATION_NODE_WINDOW])
    return OnnxSignature(path, inputs, outputs, names)


def _image_input(signature: OnnxSignature) -> TensorSignature | None:
    """The first input if it is a 4-D NCHW image tensor."""
    first = signature.inputs[0]
    return first if len(first.shape) == 4 else None


def square_input_side(signature: OnnxSignature) -> int | None:
    """Side of a fixed square NCHW input, else None."""
    image = _image_input(signature)
    if image is None:
        return None
    height, width = image.shape[2], image.shape[3]
    return height if isinstance(height, int) and height == width else None


def is_detector(signature: OnnxSignature) -> bool:
    """SCRFD-like: at least 5 outputs and one image input whose spatial dims are dynamic or
    large enough to hold a scene (insightface's ModelRouter uses the output count alone)."""
    image = _image_input(signature)
    if len(signature.outputs) < MIN_DETECTOR_OUTPUTS or image is None:
        return False
    return all(not isinstance(dim, int) or dim >= MIN_DETECTOR_SIDE for dim in image.shape[2:])


def detector_has_keypoints(signature: OnnxSignature) -> bool:
    """SCRFD with 5-point landmarks (9 outputs for 3 strides, 15 for 5)."""
    return len(signature.outputs) in SCRFD_OUTPUTS_WITH_KEYPOINTS


def is_recognizer(signature: OnnxSignature) -> bool:
    """One image input, square, >= 112 px and a multiple of 16, and one 2-D output
    [batch, d] (insightface's ArcFaceONNX rule), excluding the 192 px landmark models."""
    side = square_input_side(signature)
    if len(signature.inputs) != 1 or len(signature.outputs) != 1 or side is None:
        return False
    if len(signature.outputs[0].shape) != 2 or side == LANDMARK_INPUT_SIDE:
        return False
    return side >= MIN_RECOGNIZER_SIDE and side % RECOGNIZER_SIDE_MULTIPLE == 0


def classify_model(signature: OnnxSignature) -> ModelRole:
    """What a model in an InsightFace folder is, in insightface ModelRouter's order."""
    if is_detector(signature):
        return "detector"
    side = square_input_side(signature)
    if side == LANDMARK_INPUT_SIDE:
        return "landmark"
    if side == ATTRIBUTE_INPUT_SIDE:
        return "attribute"
    if len(signature.inputs) == 2 and side == SWAPPER_INPUT_SIDE:
        return "swapper"
    if is_recognizer(signature):
        return "recognizer"
    return "unknown"


def arcface_input_normalisation(signature: OnnxSignature) -> tuple[float, float]:
    """(mean, std) to feed a recognizer, by insightface's arcface_onnx.py rule.

    MXNet-converted ArcFace models normalise inside the graph: among their first 8 nodes are
    ones named `Sub*`/`_minus*` and `Mul*`/`_mul*`, and they take raw pixels (mean 0, std 1).
    Any other model takes (x - 127.5) / 127.5.
    """
    names = signature.leading_node_names[:NORMALISATION_NODE_WINDOW]
    has_sub = any(name.startswith(("Sub", "_minus")) for name in names)
    has_mul = any(name.startswith(("Mul", "_mul")) for name in names)
    return (0.0, 1.0) if has_sub and has_mul else (ARCFACE_MEAN, ARCFACE_STD)


def recognizer_embedding_size(signature: OnnxSignature) -> int:
    """d of the [batch, d] output: from the graph when fixed, else by running one blank crop
    (some exporters leave d symbolic, e.g. a Reshape to [batch, -1])."""
    dim = signature.outputs[0].shape[1]
    if isinstance(dim, int):
        return dim
    return _probe_embedding_size(signature)


def _probe_embedding_size(signature: OnnxSignature) -> int:
    import onnxruntime  # imported here: only models with a symbolic output size need it

    side = square_input_side(signature)
    try:
        session = onnxruntime.InferenceSession(
            str(signature.path), providers=["CPUExecutionProvider"]
        )
        crop = np.zeros((1, 3, side, side), np.float32)
        (embedding,) = session.run(None, {signature.inputs[0].name: crop})
    except Exception as exc:  # onnxruntime raises its own exception types
        raise PackError(
            f"{signature.path} failed to run on a blank {side}x{side} crop "
            f"({type(exc).__name__}): the model is broken or not a face recognizer"
        ) from exc
    return int(np.asarray(embedding).shape[-1])


# --- loading -----------------------------------------------------------------------------------


def load_pack(
    directory: Path,
    *,
    verify_checksums: bool = True,
    catalogue: Catalogue | None = None,
) -> ModelPack:
    """Find, verify and describe the pack in `directory`; raise `PackError` (one line saying
    what is wrong and what to do) when it cannot be served."""
    directory = Path(directory)
    _check_pack_folder(directory)
    if (directory / MANIFEST_NAME).is_file():
        return _load_manifest_pack(directory, verify_checksums)
    return _load_insightface_pack(
        directory, verify_checksums, catalogue if catalogue is not None else load_catalogue()
    )


def _check_pack_folder(directory: Path) -> None:
    if not directory.exists():
        raise PackError(f"no model pack at {directory}: {FETCH_HINT}")
    if not directory.is_dir():
        raise PackError(f"{directory} is a file, not a model pack folder: {FETCH_HINT}")
    if not (directory / MANIFEST_NAME).is_file() and not any(directory.glob("*.onnx")):
        nested = sorted({path.parent for path in directory.glob("*/*.onnx")})
        if nested:  # e.g. antelopev2.zip unzipped by hand keeps its inner antelopev2/ folder
            raise PackError(
                f"the model pack folder {directory} holds no ONNX model but {nested[0]} does: "
                "point FACEVERIFY_PACK_DIR at that folder or move its files up"
            )
        raise PackError(f"the model pack folder {directory} holds no ONNX model: {FETCH_HINT}")


def _pack_file(directory: Path, name: str, manifest_path: Path) -> Path:
    path = (directory / name).resolve()
    if path.parent != directory.resolve():
        raise PackError(
            f"{manifest_path} names {name!r}, which is not a file directly inside the pack "
            "folder: use a plain file name"
        )
    if not path.is_file():
        raise PackError(
            f"{directory / name} named in {manifest_path} is missing: copy it into the pack "
            "folder, or export or fetch the pack again"
        )
    return path


def _checked_sha256(path: Path, expected: str | None, verify: bool, where: str) -> str:
    """The file's sha256: computed and compared when asked, else the expected one."""
    if expected and not verify:
        return expected.lower()
    actual = sha256_file(path)
    if expected and actual != expected.lower():
        raise PackError(
            f"{path} has sha256 {actual[:16]}... but {where} expects {expected.lower()[:16]}...: "
            "the file is corrupt or was replaced, download or export it again"
        )
    return actual


def _load_manifest(manifest_path: Path) -> PackManifest:
    try:
        return PackManifest.model_validate(json.loads(manifest_path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = f"not readable JSON: {exc}".replace("\n", " ")
    except ValidationError as exc:
        reason = _first_error(exc)
    raise PackError(
        f"{manifest_path} is not a valid pack manifest ({reason}): fix it, or delete it to load "
        "the folder as an InsightFace pack"
    )


def _load_manifest_pack(directory: Path, verify_checksums: bool) -> ModelPack:
    manifest_path = directory / MANIFEST_NAME
    manifest = _load_manifest(manifest_path)
    detector_path = _pack_file(directory, manifest.detector.file, manifest_path)
    recognizer_path = _pack_file(directory, manifest.recognizer.file, manifest_path)
    detector_sha = _checked_sha256(
        detector_path, manifest.detector.sha256, verify_checksums, str(manifest_path)
    )
    recognizer_sha = _checked_sha256(
        recognizer_path, manifest.recognizer.sha256, verify_checksums, str(manifest_path)
    )
    _check_detector(read_onnx_signature(detector_path), manifest.detector, manifest_path)
    _check_recognizer(read_onnx_signature(recognizer_path), manifest.recognizer, manifest_path)
    manifest = manifest.model_copy(
        update={
            "detector": manifest.detector.model_copy(update={"sha256": detector_sha}),
            "recognizer": manifest.recognizer.model_copy(update={"sha256": recognizer_sha}),
        }
    )
    return ModelPack(manifest.name, directory, manifest, detector_path, recognizer_path)


def _check_detector(signature: OnnxSignature, spec: DetectorSpec, manifest_path: Path) -> None:
    if not is_detector(signature):
        raise PackError(
            f"{signature.path} is named as the detector in {manifest_path} but does not look like "
            f"an SCRFD detector ({signature.describe()}): name the right file"
        )
    if not detector_has_keypoints(signature):
        raise PackError(_no_keypoints_message(signature))
    image = _image_input(signature)
    fixed = [dim for dim in (image.shape[2:] if image else ()) if isinstance(dim, int)]
    if any(dim != spec.input_size for dim in fixed):
        raise PackError(
            f"{signature.path} takes a fixed {_format_shape(image.shape if image else ())} input "
            f"but {manifest_path} says detector input_size {spec.input_size}: fix the manifest"
        )


def _no_keypoints_message(signature: OnnxSignature) -> str:
    return (
        f"{signature.path} is an SCRFD detector without landmark outputs "
        f"({len(signature.outputs)} outputs): face alignment needs the 5 landmarks of a "
        f"keypoint model ({' or '.join(map(str, SCRFD_OUTPUTS_WITH_KEYPOINTS))} outputs, e.g. "
        "det_10g.onnx or det_500m.onnx)"
    )


def _check_recognizer(signature: OnnxSignature, spec: RecognizerSpec, manifest_path: Path) -> None:
    if not is_recognizer(signature):
        raise PackError(
            f"{signature.path} is named as the recognizer in {manifest_path} but does not look "
            f"like one ({signature.describe()}; expected one square image input and one "
            "[batch, d] output): name the right file"
        )
    side = square_input_side(signature)
    if side != spec.input_size:
        raise PackError(
            f"{signature.path} takes {side}x{side} crops but {manifest_path} says recognizer "
            f"input_size {spec.input_size}: fix the manifest"
        )
    size = recognizer_embedding_size(signature)
    if size != spec.embedding_size:
        raise PackError(
            f"{signature.path} outputs {size}-d embeddings but {manifest_path} says "
            f"embedding_size {spec.embedding_size}: fix the manifest"
        )


def _describe_found(roles: dict[Path, ModelRole]) -> str:
    """E.g. `detectors: a.onnx; recognizers: none; other: 2d106det.onnx (landmark)`."""

    def files(role: ModelRole) -> str:
        return ", ".join(path.name for path, found in roles.items() if found == role) or "none"

    others = [
        f"{path.name} ({role})"
        for path, role in roles.items()
        if role not in ("detector", "recognizer")
    ]
    text = f"detectors: {files('detector')}; recognizers: {files('recognizer')}"
    return text + (f"; other: {', '.join(others)}" if others else "")


def _load_insightface_pack(
    directory: Path, verify_checksums: bool, catalogue: Catalogue
) -> ModelPack:
    signatures = {path: read_onnx_signature(path) for path in sorted(directory.glob("*.onnx"))}
    roles = {path: classify_model(signature) for path, signature in signatures.items()}
    detectors = [path for path, role in roles.items() if role == "detector"]
    recognizers = [path for path, role in roles.items() if role == "recognizer"]
    if len(detectors) != 1 or len(recognizers) != 1:
        raise PackError(
            f"{directory} must hold exactly one face detector and one recognizer ONNX, found "
            f"{_describe_found(roles)}: remove the extra files, or add a {MANIFEST_NAME} naming "
            "the two to use"
        )
    detector, recognizer = signatures[detectors[0]], signatures[recognizers[0]]
    if not detector_has_keypoints(detector):
        raise PackError(_no_keypoints_message(detector))

    detector_sha = sha256_file(detector.path)
    recognizer_sha = sha256_file(recognizer.path)
    if verify_checksums:
        _check_against_catalogue(
            directory, catalogue, {detector.path: detector_sha, recognizer.path: recognizer_sha}
        )
    entry = catalogue.match_recognizer(recognizer_sha, detector_sha)
    mean, std = arcface_input_normalisation(recognizer)
    manifest = PackManifest(
        name=entry.name if entry else directory.name,
        detector=DetectorSpec(
            file=detector.path.name,
            sha256=detector_sha,
            input_size=_detector_input_size(detector),
            mean=SCRFD_MEAN,
            std=SCRFD_STD,
        ),
        recognizer=RecognizerSpec(
            file=recognizer.path.name,
            sha256=recognizer_sha,
            input_size=square_input_side(recognizer) or MIN_RECOGNIZER_SIDE,
            mean=mean,
            std=std,
            embedding_size=recognizer_embedding_size(recognizer),
        ),
        threshold=entry.threshold if entry else DEFAULT_THRESHOLD,
        source=entry.url if entry and entry.url else str(directory),
        licence=entry.licence if entry else "",
    )
    ignored = tuple(
        path.name for path in signatures if path not in (detector.path, recognizer.path)
    )
    return ModelPack(manifest.name, directory, manifest, detector.path, recognizer.path, ignored)


def _detector_input_size(signature: OnnxSignature) -> int:
    """The fixed square input of a detector exported at one size, else InsightFace's 640."""
    image = _image_input(signature)
    height, width = image.shape[2:] if image else (None, None)
    if isinstance(height, int) and height == width:
        return height
    return SCRFD_INPUT_SIZE


def _check_against_catalogue(
    directory: Path, catalogue: Catalogue, hashes: dict[Path, str]
) -> None:
    """A folder named like a catalogued pack must hold that pack's files, byte for byte."""
    entry = catalogue.get(directory.name)
    if entry is None:
        return
    known = {item.name: item.sha256 for item in entry.files if item.sha256}
    for path, actual in hashes.items():
        expected = known.get(path.name)
        if expected and expected != actual:
            raise PackError(
                f"{path} has sha256 {actual[:16]}... but the catalogue's {entry.name} has "
                f"{expected[:16]}...: the download is corrupt or the file was replaced, delete "
                f"{directory} and fetch it again"
            )
