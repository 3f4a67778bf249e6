"""Pack loading: find, verify and load a detector + recognizer pair and its metadata, from a
folder with `pack.json` or an InsightFace folder of ONNX files (manifest synthesised with
InsightFace's conventions and the threshold of the matching catalogue entry)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from service.errors import PackError
from service.packs.catalogue import Catalogue, load_catalogue
from service.packs.checksums import first_error, sha256_file
from service.packs.manifest import (
    DEFAULT_THRESHOLD,
    MANIFEST_NAME,
    DetectorSpec,
    LivenessSpec,
    ModelPack,
    PackManifest,
    RecognizerSpec,
)
from service.packs.signatures import (
    MIN_RECOGNIZER_SIDE,
    SCRFD_INPUT_SIZE,
    SCRFD_MEAN,
    SCRFD_OUTPUTS_WITH_KEYPOINTS,
    SCRFD_STD,
    ModelRole,
    OnnxSignature,
    arcface_input_normalisation,
    classify_model,
    detector_has_keypoints,
    format_shape,
    image_input,
    is_detector,
    is_recognizer,
    read_onnx_signature,
    recognizer_embedding_size,
    square_input_side,
)
from service.packs.thresholds import read_sidecar, usable

FETCH_HINT = (
    "run `python -m service fetch-models buffalo_l` or set FACEVERIFY_PACK_DIR to a folder "
    "holding a detector and a recognizer ONNX"
)


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
        reason = first_error(exc)
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
    liveness, liveness_paths = _load_liveness(directory, manifest, manifest_path, verify_checksums)
    manifest = manifest.model_copy(
        update={
            "detector": manifest.detector.model_copy(update={"sha256": detector_sha}),
            "recognizer": manifest.recognizer.model_copy(update={"sha256": recognizer_sha}),
            "thresholds": usable(manifest.thresholds, recognizer_sha, manifest_path),
            "liveness": liveness,
        }
    )
    return ModelPack(
        manifest.name,
        directory,
        manifest,
        detector_path,
        recognizer_path,
        liveness_paths=liveness_paths,
    )


def _load_liveness(
    directory: Path, manifest: PackManifest, manifest_path: Path, verify_checksums: bool
) -> tuple[LivenessSpec | None, tuple[Path, ...]]:
    """The pack's optional liveness models: present, intact, and shaped as the manifest says."""
    spec = manifest.liveness
    if spec is None:
        return None, ()
    models, paths = [], []
    for model in spec.models:
        path = _pack_file(directory, model.file, manifest_path)
        sha = _checked_sha256(path, model.sha256, verify_checksums, str(manifest_path))
        signature = read_onnx_signature(path)
        side = square_input_side(signature)
        outputs = signature.outputs[0].shape[-1:] if len(signature.outputs) == 1 else ()
        if side != model.input_size or tuple(outputs) != (spec.num_classes,):
            raise PackError(
                f"{path} is named as a liveness model in {manifest_path} but takes or gives "
                f"something else ({signature.describe()}; expected a {model.input_size}x"
                f"{model.input_size} image and {spec.num_classes} class scores): name the "
                "right file or fix the manifest"
            )
        models.append(model.model_copy(update={"sha256": sha}))
        paths.append(path)
    return spec.model_copy(update={"models": models}), tuple(paths)


def _check_detector(signature: OnnxSignature, spec: DetectorSpec, manifest_path: Path) -> None:
    if not is_detector(signature):
        raise PackError(
            f"{signature.path} is named as the detector in {manifest_path} but does not look like "
            f"an SCRFD detector ({signature.describe()}): name the right file"
        )
    if not detector_has_keypoints(signature):
        raise PackError(_no_keypoints_message(signature))
    image = image_input(signature)
    fixed = [dim for dim in (image.shape[2:] if image else ()) if isinstance(dim, int)]
    if any(dim != spec.input_size for dim in fixed):
        raise PackError(
            f"{signature.path} takes a fixed {format_shape(image.shape if image else ())} input "
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
        thresholds=read_sidecar(directory, recognizer_sha),
    )
    ignored = tuple(
        path.name for path in signatures if path not in (detector.path, recognizer.path)
    )
    return ModelPack(manifest.name, directory, manifest, detector.path, recognizer.path, ignored)


def _detector_input_size(signature: OnnxSignature) -> int:
    """The fixed square input of a detector exported at one size, else InsightFace's 640."""
    image = image_input(signature)
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
