"""InsightFace's MXNet RecordIO (`train.rec` + `train.idx`), read and written without MXNet.

The codec only: records, their image headers and the index. `training.data.RecordIODataset`
serves a RecordIO file as a training set.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# MXNet RecordIO (dmlc-core recordio.h, mxnet/recordio.py): each record is
# [magic u32][lrecord u32][payload][zero padding to 4 bytes]; lrecord's top 3 bits are the
# continuation flag (0 whole, 1 first, 2 middle, 3 last part; a payload is split wherever it
# contains the magic at a 4-byte boundary), the low 29 bits the part's length. A payload starts
# with the image header IRHeader = struct 'IfQQ' (flag, label, id, id2); when flag > 0 a
# float32 label array of `flag` values follows the header.
RECORDIO_MAGIC = 0xCED7230A
RECORDIO_LENGTH_BITS = 29
IRHEADER = struct.Struct("<IfQQ")


@dataclass(frozen=True)
class RecordHeader:
    """IRHeader of one RecordIO payload; `label` is a float or, when flag > 0, an array."""

    flag: int
    label: float | np.ndarray
    id: int = 0
    id2: int = 0


def pack_record(header: RecordHeader, payload: bytes) -> bytes:
    """IRHeader (+ label array when the label is not a scalar) + payload, as mxnet packs it."""
    if np.ndim(header.label) == 0:
        return IRHEADER.pack(0, float(header.label), header.id, header.id2) + payload
    labels = np.asarray(header.label, dtype="<f4").reshape(-1)
    return IRHEADER.pack(labels.size, 0.0, header.id, header.id2) + labels.tobytes() + payload


def unpack_record(record: bytes) -> tuple[RecordHeader, bytes]:
    """Split a RecordIO payload into its IRHeader and the rest (usually an encoded image)."""
    flag, label, record_id, record_id2 = IRHEADER.unpack_from(record)
    rest = record[IRHEADER.size :]
    if flag > 0:
        labels = np.frombuffer(rest, dtype="<f4", count=flag).copy()
        return RecordHeader(flag, labels, record_id, record_id2), rest[4 * flag :]
    return RecordHeader(flag, label, record_id, record_id2), rest


def _write_record(stream: io.BufferedWriter, payload: bytes) -> None:
    """One RecordIO record, split where the payload holds the magic at a 4-byte boundary."""
    magic = struct.pack("<I", RECORDIO_MAGIC)
    parts, start = [], 0
    for offset in range(0, len(payload) - len(payload) % 4, 4):
        if payload[offset : offset + 4] == magic:
            parts.append(payload[start:offset])
            start = offset + 4
    parts.append(payload[start:])
    for number, part in enumerate(parts):
        last = number == len(parts) - 1
        flag = 0 if len(parts) == 1 else 1 if number == 0 else 3 if last else 2
        stream.write(magic + struct.pack("<I", (flag << RECORDIO_LENGTH_BITS) | len(part)) + part)
    stream.write(b"\0" * (-len(parts[-1]) % 4))


def read_record(stream: io.BufferedReader, source: str = "record file") -> bytes:
    """Read the record at the stream's position (joining split parts)."""
    magic = struct.pack("<I", RECORDIO_MAGIC)
    chunks: list[bytes] = []
    while True:
        head = stream.read(8)
        if len(head) < 8 or head[:4] != magic:
            raise ValueError(f"{source}: no RecordIO record at offset {stream.tell() - len(head)}")
        (lrecord,) = struct.unpack("<I", head[4:])
        flag, length = lrecord >> RECORDIO_LENGTH_BITS, lrecord & ((1 << RECORDIO_LENGTH_BITS) - 1)
        chunks.append(stream.read(length))
        stream.read(-length % 4)
        if flag in (0, 3):
            return b"".join(chunks) if flag == 0 else magic.join(chunks)


def write_recordio(rec_path: Path, idx_path: Path, items: Iterable[tuple[bytes, int]]) -> int:
    """Write encoded images with integer labels as InsightFace RecordIO; returns the count.

    Layout as InsightFace's: record 0 is a header whose label array is
    (first index after the images, same again: no identity index records), images are 1 … N.
    """
    items = list(items)
    offsets: list[tuple[int, int]] = []
    with open(rec_path, "wb") as stream:
        offsets.append((0, stream.tell()))
        end = float(len(items) + 1)
        _write_record(stream, pack_record(RecordHeader(2, np.array([end, end])), b""))
        for key, (encoded, label) in enumerate(items, start=1):
            offsets.append((key, stream.tell()))
            _write_record(stream, pack_record(RecordHeader(0, float(label), key), encoded))
    idx_path.write_text("".join(f"{key}\t{offset}\n" for key, offset in offsets))
    return len(items)
