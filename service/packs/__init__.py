"""Model packs: find, verify and load a detector + recognizer pair and its metadata.

A pack is a folder. Ours carry `pack.json` (schema: `PackManifest`); InsightFace packs
(buffalo_l, buffalo_s, antelopev2, ...) are plain folders of ONNX files and load as-is: the
detector and the recognizer are told apart by their ONNX signatures (graph inputs and outputs,
read without loading the weights into a runtime), and a manifest is synthesised for them with
InsightFace's preprocessing conventions and the threshold of the matching catalogue entry.

The catalogue (`models/catalogue.json`, schema: `Catalogue`) lists the packs this project knows:
where to download them, their checksums, licence and recommended threshold.

One room per concept: `manifest` (the pack.json models and the loaded pack), `catalogue`,
`checksums`, `signatures` (ONNX signature reading), `loading`, `thresholds` (calibrated
thresholds by false match rate). Every name is re-exported here,
so `from service.packs import X` works whichever room X lives in.
"""

from service.packs.catalogue import (
    CATALOGUE_PATH,
    SHA256_PATTERN,
    Catalogue,
    CatalogueEntry,
    CatalogueFile,
    load_catalogue,
)
from service.packs.checksums import HASH_CHUNK_BYTES, first_error, sha256_file
from service.packs.loading import FETCH_HINT, load_pack
from service.packs.manifest import (
    DEFAULT_THRESHOLD,
    MANIFEST_NAME,
    DetectorSpec,
    LivenessModelSpec,
    LivenessSpec,
    ModelFileSpec,
    ModelPack,
    PackManifest,
    RecognizerSpec,
)
from service.packs.signatures import (
    ModelRole,
    OnnxSignature,
    TensorSignature,
    arcface_input_normalisation,
    classify_model,
    detector_has_keypoints,
    is_detector,
    is_recognizer,
    read_onnx_signature,
    recognizer_embedding_size,
    square_input_side,
)
from service.packs.thresholds import SIDECAR_NAME, Calibration, FmrThreshold, save_calibration

__all__ = [
    "CATALOGUE_PATH",
    "DEFAULT_THRESHOLD",
    "FETCH_HINT",
    "HASH_CHUNK_BYTES",
    "MANIFEST_NAME",
    "SHA256_PATTERN",
    "SIDECAR_NAME",
    "Calibration",
    "Catalogue",
    "CatalogueEntry",
    "CatalogueFile",
    "DetectorSpec",
    "FmrThreshold",
    "LivenessModelSpec",
    "LivenessSpec",
    "ModelFileSpec",
    "ModelPack",
    "ModelRole",
    "OnnxSignature",
    "PackManifest",
    "RecognizerSpec",
    "TensorSignature",
    "arcface_input_normalisation",
    "classify_model",
    "detector_has_keypoints",
    "first_error",
    "is_detector",
    "is_recognizer",
    "load_catalogue",
    "load_pack",
    "read_onnx_signature",
    "recognizer_embedding_size",
    "save_calibration",
    "sha256_file",
    "square_input_side",
]
