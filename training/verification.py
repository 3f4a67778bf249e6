"""Verification sets for evaluation: image pairs with same/different flags, as aligned crops.

`load_bin` (InsightFace `.bin`) and `load_pairs` (LFW-style `pairs.txt` + image folder) read
through the service's readers (`service.packs.verification_sets`, shared with threshold
calibration) and bring every crop to the training pre-processing's size;
`synthetic_verification_set` draws pairs of synthetic identities.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.packs.verification_sets import read_bin, read_pairs_list
from training.data import IMAGE_SIZE, SyntheticFaceDataset, fit_to_size, read_image


@dataclass(frozen=True)
class VerificationSet:
    """Image pairs for verification: images (2N, H, W, 3) BGR uint8, where images 2i and
    2i + 1 form pair i, and `issame` (N,) bool. `source_format` says where they come from
    ("bin", "pairs" or "synthetic"): evaluation picks its default protocol by it."""

    name: str
    images: np.ndarray
    issame: np.ndarray
    source_format: str = ""

    def __post_init__(self) -> None:
        if len(self.images) != 2 * len(self.issame):
            raise ValueError(f"{self.name}: {len(self.images)} images for {len(self.issame)} pairs")


def load_bin(path: Path, image_size: int = IMAGE_SIZE) -> VerificationSet:
    """An InsightFace verification `.bin` (lfw.bin, cfp_fp.bin, agedb_30.bin): a pickle of
    (encoded images, issame list); each encoded image may be `bytes` or a uint8 numpy array."""
    contents = read_bin(Path(path))
    images = np.stack([fit_to_size(image, image_size) for image in contents.images])
    return VerificationSet(contents.name, images, contents.issame, "bin")


def load_pairs(
    pairs_file: Path, images_root: Path, image_size: int = IMAGE_SIZE
) -> VerificationSet:
    """An LFW-style `pairs.txt` over aligned crops in `images_root/<name>/<name>_NNNN.jpg`."""
    pairs = read_pairs_list(Path(pairs_file), Path(images_root))
    images = [
        fit_to_size(read_image(path), image_size)
        for pair in pairs
        for path in (pair.first, pair.second)
    ]
    issame = np.asarray([pair.same for pair in pairs], dtype=bool)
    return VerificationSet(Path(pairs_file).stem, np.stack(images), issame, "pairs")


def synthetic_verification_set(
    num_identities: int = 20,
    images_per_identity: int = 4,
    seed: int = 1_000,
    num_pairs: int = 200,
    image_size: int = IMAGE_SIZE,
) -> VerificationSet:
    """Half matched, half mismatched pairs of synthetic identities; use a `seed` other than
    the training set's to get identities the network has never seen."""
    dataset = SyntheticFaceDataset(num_identities, images_per_identity, seed, image_size=image_size)
    rng = np.random.default_rng(seed)
    images, issame = [], []
    for pair in range(num_pairs):
        same = pair % 2 == 0
        first = int(rng.integers(num_identities))
        second = first if same else int((first + rng.integers(1, num_identities)) % num_identities)
        a, b = (
            rng.choice(images_per_identity, size=2, replace=False)
            if same
            else rng.integers(images_per_identity, size=2)
        )
        images.append(dataset.load(first * images_per_identity + int(a))[0])
        images.append(dataset.load(second * images_per_identity + int(b))[0])
        issame.append(same)
    return VerificationSet(f"synthetic-{seed}", np.stack(images), np.asarray(issame), "synthetic")
