"""Readers for every data format (image folders, label lists, RecordIO, synthetic, .bin,
pairs.txt), the one pre-processing, and the resumable data order."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from training_helpers import png_bytes, solid_image

from training.data import (
    ImageFolderDataset,
    LabelListDataset,
    RecordIODataset,
    ResumableSampler,
    SyntheticFaceDataset,
    check_num_classes,
    make_loader,
    open_dataset,
    to_tensor,
)
from training.recordio import (
    RECORDIO_MAGIC,
    RecordHeader,
    _write_record,
    pack_record,
    read_record,
    unpack_record,
    write_recordio,
)
from training.verification import load_bin, load_pairs, synthetic_verification_set


def test_to_tensor_converts_bgr_to_rgb_in_minus_one_to_one() -> None:
    blue = solid_image((255, 0, 0))  # BGR
    tensor = to_tensor(blue)
    assert tensor.shape == (3, 112, 112) and tensor.dtype == torch.float32
    assert torch.all(tensor[2] == 1.0) and torch.all(tensor[0] == -1.0)  # RGB: B is channel 2
    grey = to_tensor(solid_image((127, 127, 127)))
    assert grey[0, 0, 0].item() == pytest.approx((127 / 255 - 0.5) / 0.5)


def test_to_tensor_flip_mirrors_left_and_right() -> None:
    image = np.zeros((112, 112, 3), np.uint8)
    image[:, :10] = 255
    flipped = to_tensor(image, flip=True)
    assert torch.all(flipped[:, :, -10:] == 1.0) and torch.all(flipped[:, :, :10] == -1.0)


def _write_identity_folders(root: Path) -> None:
    for identity, colour in (("alice", (0, 0, 200)), ("bob", (0, 200, 0))):
        (root / identity).mkdir(parents=True)
        for number in range(2):
            cv2.imwrite(str(root / identity / f"{number}.png"), solid_image(colour))
    (root / "bob" / "notes.txt").write_text("not an image")


def test_image_folder_dataset_labels_identities_by_sorted_folder(tmp_path: Path) -> None:
    _write_identity_folders(tmp_path)
    dataset = ImageFolderDataset(tmp_path)
    assert len(dataset) == 4 and dataset.num_classes == 2
    assert dataset.identities == ["alice", "bob"]
    image, label = dataset[3]
    assert label == 1 and image.shape == (3, 112, 112)
    assert image[1, 0, 0].item() == pytest.approx((200 / 255 - 0.5) / 0.5)  # green channel


def test_label_list_dataset_reads_paths_relative_to_the_list(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), solid_image((10, 20, 30), size=100))
    (tmp_path / "label.txt").write_text("images/a.png\t7\n\n")
    dataset = LabelListDataset(tmp_path / "label.txt")
    assert len(dataset) == 1 and dataset.num_classes == 8
    image, label = dataset[0]
    assert label == 7 and image.shape == (3, 112, 112)  # resized from 100 px


def test_label_list_dataset_names_the_bad_line(tmp_path: Path) -> None:
    (tmp_path / "label.txt").write_text("a.png\t1\nbroken line with fields\n")
    with pytest.raises(ValueError, match=r"label.txt:2"):
        LabelListDataset(tmp_path / "label.txt")


def test_label_list_dataset_reads_the_shared_small_dataset(shared_assets: Path) -> None:
    dataset = open_dataset(shared_assets / "train" / "small_dataset")
    assert isinstance(dataset, LabelListDataset)
    assert len(dataset) == 10 and dataset.num_classes == 10
    image, label = dataset[9]
    assert image.shape == (3, 112, 112) and label == 9
    assert -1.0 <= image.min().item() < image.max().item() <= 1.0


def test_record_header_round_trips_scalar_and_array_labels() -> None:
    header, rest = unpack_record(pack_record(RecordHeader(0, 5.0, 12), b"jpeg"))
    assert (header.flag, header.label, header.id, rest) == (0, 5.0, 12, b"jpeg")
    header, rest = unpack_record(pack_record(RecordHeader(0, np.array([3.0, 9.0])), b"x"))
    assert header.flag == 2 and list(header.label) == [3.0, 9.0] and rest == b"x"
    # The InsightFace layout: IRHeader is struct 'IfQQ' (24 bytes), label array after it.
    raw = pack_record(RecordHeader(0, 4.0, 1, 2), b"")
    assert struct.unpack("<IfQQ", raw) == (0, 4.0, 1, 2)


def test_records_holding_the_magic_number_are_split_and_rejoined(tmp_path: Path) -> None:
    magic = struct.pack("<I", RECORDIO_MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + b"xyz"
    path = tmp_path / "split.rec"
    with open(path, "wb") as stream:
        _write_record(stream, payload)
        _write_record(stream, b"after")
    data = path.read_bytes()
    assert data.count(magic) == 4  # 3 parts + the next record; the payload's magic removed
    assert len(data) % 4 == 0
    with open(path, "rb") as stream:
        assert read_record(stream) == payload
        assert read_record(stream) == b"after"


def test_recordio_writer_and_reader_round_trip_images_and_labels(tmp_path: Path) -> None:
    images = [solid_image((i * 40, 255 - i * 40, 7)) for i in range(5)]
    labels = [0, 0, 1, 2, 2]
    count = write_recordio(
        tmp_path / "train.rec",
        tmp_path / "train.idx",
        [(png_bytes(image), label) for image, label in zip(images, labels, strict=True)],
    )
    assert count == 5
    assert (tmp_path / "train.idx").read_text().splitlines()[0] == "0\t0"
    dataset = open_dataset(tmp_path)
    assert isinstance(dataset, RecordIODataset)
    assert len(dataset) == 5 and dataset.num_classes == 3
    for index in range(5):
        image, label = dataset.load(index)
        assert label == labels[index] and np.array_equal(image, images[index])


def test_recordio_class_count_comes_from_the_property_file(tmp_path: Path) -> None:
    item = (png_bytes(solid_image((1, 2, 3))), 0)
    write_recordio(tmp_path / "train.rec", tmp_path / "train.idx", [item])
    (tmp_path / "property").write_text("93431,112,112\n")
    assert RecordIODataset(tmp_path / "train.rec").num_classes == 93431


def test_a_recordio_label_beyond_the_class_count_is_refused_naming_record_and_label(
    tmp_path: Path,
) -> None:
    items = [(png_bytes(solid_image((9, 9, 9))), label) for label in (0, 11, 3)]
    write_recordio(tmp_path / "train.rec", tmp_path / "train.idx", items)
    (tmp_path / "property").write_text("10,112,112\n")  # says 10 classes; record 2 has 11
    dataset = RecordIODataset(tmp_path / "train.rec")
    assert dataset[0][1] == 0
    with pytest.raises(ValueError, match=r"train\.rec record 2: label 11 is outside \[0, 10\)"):
        dataset[1]


def write_label_list(folder: Path, labels: list[int]) -> Path:
    label_file = folder / "label.txt"
    label_file.write_text("".join(f"img_{i}.png\t{label}\n" for i, label in enumerate(labels)))
    return label_file


def test_num_classes_disagreeing_with_the_data_is_refused_naming_file_line_and_label(
    tmp_path: Path,
) -> None:
    label_file = write_label_list(tmp_path, [0, 3, 9, 11, 12, 15, 2])
    dataset = LabelListDataset(label_file)
    assert check_num_classes(dataset, None, str(label_file)) == 16
    assert check_num_classes(dataset, 16, str(label_file)) == 16
    with pytest.raises(ValueError) as error:
        check_num_classes(dataset, 10, str(label_file))
    message = str(error.value)
    assert "num_classes=10" in message and "16 classes" in message
    assert f"{label_file}:4 (img_3.png): label 11" in message  # the first label ≥ 10
    with pytest.raises(ValueError, match="has only 16 classes"):
        check_num_classes(dataset, 20, str(label_file))


def test_a_negative_label_in_a_label_list_is_refused_naming_the_line(tmp_path: Path) -> None:
    label_file = write_label_list(tmp_path, [0, 1, -1])
    with pytest.raises(ValueError, match=r"label\.txt:3: label '-1' is not an integer ≥ 0"):
        LabelListDataset(label_file)


def test_recordio_class_count_comes_from_insightface_identity_records(tmp_path: Path) -> None:
    # Header: images are records 1-2, identity records 3-5 (InsightFace's layout).
    with open(tmp_path / "train.rec", "wb") as stream:
        offsets = [stream.tell()]
        _write_record(stream, pack_record(RecordHeader(2, np.array([3.0, 6.0])), b""))
        for key, label in ((1, 0.0), (2, 1.0)):
            offsets.append(stream.tell())
            _write_record(
                stream, pack_record(RecordHeader(0, label, key), png_bytes(solid_image((5, 5, 5))))
            )
    (tmp_path / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets)))
    dataset = RecordIODataset(tmp_path / "train.rec")
    assert len(dataset) == 2
    assert dataset.num_classes == 3  # from the header, not from the labels seen (0 and 1)
    assert dataset.load(1)[1] == 1


def test_recordio_dataset_loads_in_worker_processes(tmp_path: Path) -> None:
    write_recordio(
        tmp_path / "train.rec",
        tmp_path / "train.idx",
        [(png_bytes(solid_image((i, i, i))), i % 2) for i in range(8)],
    )
    dataset = RecordIODataset(tmp_path / "train.rec")
    sampler = ResumableSampler(len(dataset), shuffle=False, flip=False)
    labels = torch.cat([batch[1] for batch in make_loader(dataset, sampler, 4, num_workers=2)])
    assert labels.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


def test_synthetic_dataset_is_deterministic_and_identities_differ() -> None:
    dataset = SyntheticFaceDataset(num_identities=3, images_per_identity=2, seed=5)
    again = SyntheticFaceDataset(num_identities=3, images_per_identity=2, seed=5)
    assert len(dataset) == 6 and dataset.num_classes == 3
    assert np.array_equal(dataset.load(4)[0], again.load(4)[0])
    assert dataset.load(4)[1] == 2
    same = np.abs(dataset.prototype(0) - dataset.prototype(0)).mean()
    different = np.abs(dataset.prototype(0) - dataset.prototype(1)).mean()
    assert same == 0 and different > 10


def test_open_dataset_tells_every_format_apart(tmp_path: Path) -> None:
    _write_identity_folders(tmp_path / "folders")
    assert isinstance(open_dataset(tmp_path / "folders"), ImageFolderDataset)
    assert isinstance(open_dataset("synthetic", image_size=48), SyntheticFaceDataset)
    assert open_dataset("synthetic", image_size=48)[0][0].shape == (3, 48, 48)
    with pytest.raises(FileNotFoundError, match="identity folders"):
        open_dataset(tmp_path / "missing")


def test_sampler_order_is_reproducible_per_epoch_and_resumes_mid_epoch() -> None:
    sampler = ResumableSampler(10, seed=3)
    epoch0 = sampler.order(0)
    assert epoch0 == ResumableSampler(10, seed=3).order(0)
    assert [i for i, _ in epoch0] != [i for i, _ in sampler.order(1)]
    assert sorted(i for i, _ in epoch0) == list(range(10))
    sampler.set_epoch(0, start=4)
    assert list(sampler) == epoch0[4:] and len(sampler) == 6


def test_sampler_deals_disjoint_shares_to_ranks() -> None:
    shares = [ResumableSampler(10, seed=1, rank=r, world_size=2).order(0) for r in range(2)]
    assert sorted(i for share in shares for i, _ in share) == list(range(10))
    padded = ResumableSampler(9, seed=1, rank=1, world_size=2)
    assert len(padded.order(0)) == 5  # padded by wrapping round


def test_sampler_flips_about_half_the_images_and_none_when_disabled() -> None:
    flips = [flip for _, flip in ResumableSampler(2000, seed=0).order(0)]
    assert 0.45 < sum(flips) / len(flips) < 0.55
    assert not any(flip for _, flip in ResumableSampler(50, flip=False).order(0))


def test_loader_batches_do_not_depend_on_the_number_of_workers() -> None:
    dataset = SyntheticFaceDataset(4, 4, image_size=32)
    batches = []
    for workers in (0, 2):
        sampler = ResumableSampler(len(dataset), seed=7)
        batches.append(list(make_loader(dataset, sampler, batch_size=5, num_workers=workers)))
    assert len(batches[0]) == 3  # 16 images, batches of 5, last incomplete one dropped
    for (images0, labels0), (images2, labels2) in zip(*batches, strict=True):
        assert torch.equal(images0, images2) and torch.equal(labels0, labels2)


def _write_bin(path: Path, encoded: list, issame: list[bool]) -> None:
    with open(path, "wb") as stream:
        pickle.dump((encoded, issame), stream, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize("as_array", [False, True], ids=["bytes", "numpy"])
def test_load_bin_decodes_bytes_and_numpy_encoded_images(tmp_path: Path, as_array: bool) -> None:
    images = [solid_image((i * 60, 0, 0)) for i in range(4)]
    encoded = [png_bytes(image) for image in images]
    if as_array:
        encoded = [np.frombuffer(item, np.uint8).reshape(-1, 1) for item in encoded]
    _write_bin(tmp_path / "set.bin", encoded, [True, False])
    verification = load_bin(tmp_path / "set.bin")
    assert verification.name == "set"
    assert verification.images.shape == (4, 112, 112, 3)
    assert np.array_equal(verification.images[3], images[3])
    assert verification.issame.tolist() == [True, False]


def test_load_bin_reads_the_shared_small_lfw_bin(shared_assets: Path) -> None:
    verification = load_bin(shared_assets / "bins" / "small_lfw.bin")
    assert verification.images.shape == (20, 112, 112, 3)
    assert verification.images.dtype == np.uint8
    assert verification.issame.tolist() == [True] * 10
    assert verification.images.std() > 20  # real faces, not blank decodes


def test_load_pairs_reads_lfw_style_pairs_and_folders(tmp_path: Path) -> None:
    for name, count in (("Ann_A", 2), ("Bo_B", 1)):
        (tmp_path / "lfw" / name).mkdir(parents=True)
        for number in range(1, count + 1):
            path = tmp_path / "lfw" / name / f"{name}_{number:04d}.jpg"
            cv2.imwrite(str(path), solid_image((9, 9, 9)))
    (tmp_path / "pairs.txt").write_text("1\t1\nAnn_A\t1\t2\nAnn_A\t2\tBo_B\t1\n")
    verification = load_pairs(tmp_path / "pairs.txt", tmp_path / "lfw")
    assert verification.issame.tolist() == [True, False]
    assert verification.images.shape == (4, 112, 112, 3)


def test_load_pairs_names_a_bad_line_by_its_number_in_a_list_without_header(
    tmp_path: Path,
) -> None:
    (tmp_path / "pairs.txt").write_text("Ann_A\t1\t2\tBo_B\t1\nAnn_A\t1\t2\n")
    with pytest.raises(ValueError, match=r"pairs\.txt:1: expected 3 or 4 fields"):
        load_pairs(tmp_path / "pairs.txt", tmp_path)


def test_load_pairs_names_the_missing_image(tmp_path: Path, shared_assets: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Abel_Pacheco_0001"):
        load_pairs(shared_assets / "lists" / "lfw_pairs.txt", tmp_path)


def test_synthetic_verification_set_has_half_matched_pairs_of_unseen_identities() -> None:
    verification = synthetic_verification_set(num_identities=6, num_pairs=20, image_size=32)
    assert verification.images.shape == (40, 32, 32, 3)
    assert verification.issame.sum() == 10
