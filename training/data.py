"""Face data for training: one pre-processing, every on-disk training-set format, the loader.

Training sets (each item: an aligned face and an integer identity label):
- `ImageFolderDataset`: one folder per identity (`root/<identity>/<image>`),
- `LabelListDataset`: a `label.txt` of `path<TAB>label` lines, paths relative to its folder
  (the layout of InsightFace's small test sets),
- `RecordIODataset`: InsightFace's MXNet RecordIO (`train.rec` + `train.idx`, codec in
  `training.recordio`),
- `SyntheticFaceDataset`: generated identities for tests, demos and speed measurements.
`ResumableSampler` and `make_loader` serve them in a data order that survives a restart.
Verification sets (image pairs) live in `training.verification`.

Images are handled as BGR uint8 (OpenCV's order, as in the service) until `to_tensor`, the one
place that flips, converts to RGB and normalises to (x/255 − 0.5)/0.5.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.recordio import read_record, unpack_record

# Aligned face crops are 112x112 (InsightFace's ArcFace alignment template).
IMAGE_SIZE = 112
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Probability of a horizontal flip per training sample (standard for face recognition:
# arcface_torch dataset.py RandomHorizontalFlip()).
FLIP_PROBABILITY = 0.5


# --- pre-processing ------------------------------------------------------------------------


def decode_image(encoded: bytes | np.ndarray, source: str = "image") -> np.ndarray:
    """Decode JPEG/PNG bytes (or a uint8 array of them) to a BGR uint8 (H, W, 3) array."""
    buffer = np.frombuffer(encoded, np.uint8) if isinstance(encoded, bytes | bytearray) else encoded
    image = cv2.imdecode(np.ascontiguousarray(buffer, dtype=np.uint8).reshape(-1), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode {source}: not a JPEG/PNG/BMP/WebP image")
    return image


def read_image(path: Path) -> np.ndarray:
    """Read an image file as BGR uint8."""
    return decode_image(path.read_bytes(), source=str(path))


def fit_to_size(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize to size x size when needed (the crops are meant to be aligned already)."""
    if image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def to_tensor(image_bgr: np.ndarray, flip: bool = False) -> torch.Tensor:
    """BGR uint8 (H, W, 3) → RGB float32 (3, H, W) in [-1, 1], mirrored when `flip`."""
    image = image_bgr[:, ::-1] if flip else image_bgr
    rgb = np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1))
    return (torch.from_numpy(rgb).float() / 255.0 - 0.5) / 0.5


def to_batch(images_bgr: Sequence[np.ndarray] | np.ndarray, flip: bool = False) -> torch.Tensor:
    """A batch of BGR uint8 crops → (N, 3, H, W) float32, as `to_tensor` does for one."""
    return torch.stack([to_tensor(image, flip) for image in images_bgr])


# --- training datasets ---------------------------------------------------------------------


class FaceDataset(Dataset):
    """Aligned faces with identity labels 0 … num_classes − 1.

    Items are addressed by `index` or by `(index, flip)`; the sampler passes the flip decision
    so that augmentation is part of the (resumable) data order, not of a worker's RNG.
    """

    num_classes: int
    image_size: int = IMAGE_SIZE  # side of the tensors served (images are resized if needed)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """The BGR uint8 image and label of item `index`."""
        raise NotImplementedError

    def locate(self, index: int) -> str:
        """Where item `index` comes from (file, line or record), for error messages."""
        return f"{type(self).__name__} item {index}"

    def label_outside(self, num_classes: int) -> str | None:
        """The first item whose label is outside [0, num_classes), as 'where: label L', when
        the labels are known without reading every image; else None."""
        return None

    def __getitem__(self, item: int | tuple[int, bool]) -> tuple[torch.Tensor, int]:
        index, flip = item if isinstance(item, tuple) else (item, False)
        image, label = self.load(int(index))
        if not 0 <= label < self.num_classes:
            raise ValueError(
                f"{self.locate(int(index))}: label {label} is outside [0, {self.num_classes}), "
                f"the {self.num_classes} classes of this data set"
            )
        return to_tensor(fit_to_size(image, self.image_size), bool(flip)), label


def _first_label_outside(samples: Sequence[tuple[str, int]], num_classes: int) -> str | None:
    for where, label in samples:
        if not 0 <= label < num_classes:
            return f"{where}: label {label}"
    return None


def check_num_classes(dataset: FaceDataset, expected: int | None, source: str) -> int:
    """The class count of a training run: the data set's, or `expected` (a recipe's value)
    when it agrees with the data set's. A disagreement is refused, naming the data (and a
    label outside the expected range when the labels are known), because a label ≥ C would
    otherwise be dropped silently by the sharded classifier, and C > the data's wastes
    centres that never see a sample."""
    actual = dataset.num_classes
    if expected is None or expected == actual:
        return actual
    hint = "set num_classes=None (--set num_classes=None) to take the count from the data"
    if expected < actual:
        example = dataset.label_outside(expected)
        where = f"; e.g. {example}" if example else ""
        raise ValueError(
            f"num_classes={expected} in the config, but the training data {source} has "
            f"{actual} classes (labels up to {actual - 1}){where}: {hint}, or fix the data"
        )
    raise ValueError(
        f"num_classes={expected} in the config, but the training data {source} has only "
        f"{actual} classes (labels 0…{actual - 1}): {hint}"
    )


class ImageFolderDataset(FaceDataset):
    """`root/<identity>/<image>`: identities are the sorted folder names, labels their ranks."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        identities = sorted(entry for entry in self.root.iterdir() if entry.is_dir())
        self.samples: list[tuple[Path, int]] = [
            (path, label)
            for label, folder in enumerate(identities)
            for path in sorted(folder.iterdir())
            if path.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if not self.samples:
            raise ValueError(
                f"no images under {self.root}/<identity>/ (expected one folder per identity)"
            )
        self.identities = [folder.name for folder in identities]
        self.num_classes = len(identities)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        return read_image(path), label

    def locate(self, index: int) -> str:
        return str(self.samples[index][0])


class LabelListDataset(FaceDataset):
    """A `label.txt` of `relative/path<TAB>label` lines (paths relative to its folder)."""

    def __init__(self, label_file: Path) -> None:
        self.label_file = Path(label_file)
        self.samples: list[tuple[Path, int]] = []
        self.line_numbers: list[int] = []
        for number, line in enumerate(self.label_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) != 2:
                raise ValueError(
                    f"{self.label_file}:{number}: expected 'path<TAB>label', got {line!r}"
                )
            try:
                label = int(fields[1])
            except ValueError:
                label = -1
            if label < 0:
                raise ValueError(
                    f"{self.label_file}:{number}: label {fields[1]!r} is not an integer ≥ 0"
                )
            self.samples.append((self.label_file.parent / fields[0], label))
            self.line_numbers.append(number)
        if not self.samples:
            raise ValueError(f"{self.label_file} lists no images")
        self.num_classes = max(label for _, label in self.samples) + 1

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        return read_image(path), label

    def locate(self, index: int) -> str:
        return f"{self.label_file}:{self.line_numbers[index]} ({self.samples[index][0].name})"

    def label_outside(self, num_classes: int) -> str | None:
        return _first_label_outside(
            [(self.locate(i), label) for i, (_, label) in enumerate(self.samples)], num_classes
        )


class RecordIODataset(FaceDataset):
    """InsightFace RecordIO (`train.rec` + `train.idx`, as in ms1m-retinaface-t1/), no MXNet.

    Record 0 may be InsightFace's header (flag > 0, label = [one past the last image, one past
    the last identity record]); then images are records 1 … label[0] − 1, else every record in
    the index is an image. The class count, read on first use, comes from `property`
    (`num_classes,112,112`) when present, else from the header's identity records, else from
    a scan of every label.
    """

    def __init__(self, rec_path: Path, idx_path: Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self.offsets: dict[int, int] = {}
        for line in self.idx_path.read_text().splitlines():
            if line.strip():
                key, offset = line.split("\t")
                self.offsets[int(key)] = int(offset)
        self._stream: io.BufferedReader | None = None
        self._stream_pid = -1
        header, _ = unpack_record(self._read(0)) if 0 in self.offsets else (None, b"")
        self._identity_records = 0
        if header is not None and header.flag > 0:
            bounds = [int(value) for value in np.asarray(header.label).reshape(-1)]
            first_identity, end = bounds[0], bounds[1] if len(bounds) > 1 else bounds[0]
            self.keys = list(range(1, first_identity))
            self._identity_records = max(0, end - first_identity)
        else:
            self.keys = sorted(self.offsets)

    @functools.cached_property
    def num_classes(self) -> int:  # type: ignore[override]
        properties = self.rec_path.parent / "property"
        if properties.is_file():
            return int(properties.read_text().split(",")[0])
        if self._identity_records:
            return self._identity_records
        return max(self._label(key) for key in self.keys) + 1

    def _read(self, key: int) -> bytes:
        # One file handle per process: DataLoader workers must not share the parent's offset.
        if self._stream is None or self._stream_pid != os.getpid():
            self._stream = open(self.rec_path, "rb")  # noqa: SIM115 - kept open across reads
            self._stream_pid = os.getpid()
        self._stream.seek(self.offsets[key])
        return read_record(self._stream, str(self.rec_path))

    def _label(self, key: int) -> int:
        header, _ = unpack_record(self._read(key))
        return int(np.asarray(header.label).reshape(-1)[0])

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_stream": None, "_stream_pid": -1}

    def __len__(self) -> int:
        return len(self.keys)

    def locate(self, index: int) -> str:
        return f"{self.rec_path} record {self.keys[index]}"

    def load(self, index: int) -> tuple[np.ndarray, int]:
        key = self.keys[index]
        header, encoded = unpack_record(self._read(key))
        label = int(np.asarray(header.label).reshape(-1)[0])
        return decode_image(encoded, f"{self.rec_path} record {key}"), label


class SyntheticFaceDataset(FaceDataset):
    """Generated "faces": each identity is a smooth random colour pattern, each image of it
    that pattern shifted by a few pixels, with a brightness change and pixel noise.

    Identities are separable but not trivially so, and a network trained on some identities
    learns a similarity that carries over to unseen ones (a different `seed`), which is what
    face verification needs. Deterministic: the same (seed, index) gives the same image.
    """

    def __init__(
        self,
        num_identities: int,
        images_per_identity: int,
        seed: int = 0,
        noise: float = 40.0,
        image_size: int = IMAGE_SIZE,
    ) -> None:
        self.num_identities, self.images_per_identity = num_identities, images_per_identity
        self.seed, self.noise, self.image_size = seed, noise, image_size
        self.num_classes = num_identities
        # Shifts and pattern grid scale with the image: 6 px of 112.
        self.max_shift = max(1, round(6 * image_size / IMAGE_SIZE))

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    def prototype(self, identity: int) -> np.ndarray:
        """The identity's pattern: a 4x4 random colour grid upsampled smoothly."""
        rng = np.random.default_rng([self.seed, identity])
        grid = rng.normal(0.0, 1.0, (4, 4, 3)).astype(np.float32)
        pattern = cv2.resize(
            grid, (self.image_size, self.image_size), interpolation=cv2.INTER_CUBIC
        )
        return 128.0 + 50.0 * pattern

    def load(self, index: int) -> tuple[np.ndarray, int]:
        identity, sample = divmod(index, self.images_per_identity)
        rng = np.random.default_rng([self.seed, identity, sample, 1])
        shift = rng.integers(-self.max_shift, self.max_shift + 1, size=2)
        image = np.roll(self.prototype(identity), tuple(shift), axis=(0, 1))
        image = image + rng.normal(0.0, 20.0) + rng.normal(0.0, self.noise, image.shape)
        return np.clip(image, 0, 255).astype(np.uint8), identity


def open_dataset(spec: str | Path, image_size: int = IMAGE_SIZE, **synthetic: int) -> FaceDataset:
    """The training set at `spec`, its format told by its shape on disk:
    `synthetic` | a `.rec` file or a folder with `train.rec` | a `label.txt` (or a folder with
    one) | a folder of identity folders. `synthetic` keywords: `num_identities`,
    `images_per_identity`, `seed`."""
    dataset = _open_dataset(spec, image_size, synthetic)
    dataset.image_size = image_size
    return dataset


def _open_dataset(spec: str | Path, image_size: int, synthetic: dict[str, int]) -> FaceDataset:
    if str(spec) == "synthetic":
        return SyntheticFaceDataset(
            synthetic.get("num_identities", 16),
            synthetic.get("images_per_identity", 8),
            seed=synthetic.get("seed", 0),
            image_size=image_size,
        )
    path = Path(spec)
    if path.suffix == ".rec":
        return RecordIODataset(path)
    if path.is_dir() and (path / "train.rec").is_file():
        return RecordIODataset(path / "train.rec")
    if path.is_file():
        return LabelListDataset(path)
    if path.is_dir() and (path / "label.txt").is_file():
        return LabelListDataset(path / "label.txt")
    if path.is_dir():
        return ImageFolderDataset(path)
    raise FileNotFoundError(
        f"training data {path} not found: give a folder of identity folders, a label.txt, "
        "a train.rec (with train.idx beside it) or 'synthetic'"
    )


# --- sampling and loading ------------------------------------------------------------------


class ResumableSampler(Sampler[tuple[int, bool]]):
    """The data order of an epoch as (index, flip) pairs, identical after a restart.

    Epoch e is a permutation drawn from seed + e (padded by wrapping round to a multiple of the
    world size, then dealt rank by rank like `DistributedSampler`), with a flip decision per
    position. `set_epoch(e, start)` resumes epoch e after its first `start` items.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        flip: bool = True,
    ) -> None:
        self.num_samples, self.seed, self.rank, self.world_size = (
            num_samples,
            seed,
            rank,
            world_size,
        )
        self.shuffle, self.flip = shuffle, flip
        self.per_rank = math.ceil(num_samples / world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> list[tuple[int, bool]]:
        """This rank's full (index, flip) sequence for `epoch`."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if self.shuffle:
            indices = torch.randperm(self.num_samples, generator=generator)
        else:
            indices = torch.arange(self.num_samples)
        total = self.per_rank * self.world_size
        indices = indices.repeat(math.ceil(total / self.num_samples))[:total]
        flips = torch.rand(total, generator=generator) < FLIP_PROBABILITY
        flips &= self.flip
        return list(
            zip(
                indices[self.rank :: self.world_size].tolist(),
                flips[self.rank :: self.world_size].tolist(),
                strict=True,
            )
        )

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        return iter(self.order(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


def make_loader(
    dataset: FaceDataset,
    sampler: ResumableSampler,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
) -> DataLoader:
    """Batches in the sampler's order; incomplete last batches are dropped (BatchNorm and the
    step count both want full batches). The loader draws its worker seeds from its own
    generator, not the global one, so starting an epoch leaves the training RNG untouched.

    Workers leave OpenCV's thread count alone: `cv2.setNumThreads` in a forked worker waits
    forever on the parent's thread pool when the parent has used it."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=False,
        # Workers start from a clean process, not a fork of one that already runs OpenCV,
        # onnxruntime or CUDA threads (a fork can inherit their locks held, and hang).
        multiprocessing_context="forkserver" if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
