"""JPEG scan bombs, written marker by marker: valid greyscale progressive JPEGs whose
decoding costs far more than their bytes.

A progressive JPEG's AC scan may code every block of the picture as one end-of-block run:
a few bytes whatever the picture's size, yet libjpeg still walks each 8x8 block once per
scan. One DC scan and thousands of such AC scans over 6000 x 6000 pixels (under the pixel
limit) make a file of a few hundred kilobytes that takes seconds to decode. Repeating a
first AC scan is a "bogus progression" to libjpeg: a warning, not an error.

Used by the decoder's tests and as seeds of its fuzz corpus (tests/service/decoder_fuzz.py).
"""

from __future__ import annotations

import struct

# Huffman tables (ITU-T T.81, annex C): DC symbol 0 (a zero difference) as the 1-bit code
# "0"; AC symbols 0x00, 0x10 ... 0xE0 (end-of-block runs of 2**r blocks plus r appended
# bits) as the 4-bit codes 0 to 14, in that order.
_DC_SYMBOLS = bytes([0x00])
_AC_SYMBOLS = bytes(range(0x00, 0xF0, 0x10))
_LONGEST_EOB_RUN_SIZE = 14  # symbol 0xE0: runs of 16,384 to 32,767 blocks


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def _huffman_table(table_class: int, code_length: int, symbols: bytes) -> bytes:
    counts = [0] * 16
    counts[code_length - 1] = len(symbols)
    return _segment(0xC4, bytes([table_class << 4]) + bytes(counts) + symbols)


class _BitWriter:
    """Entropy-coded bytes: bits most significant first, FF bytes stuffed with 00, the last
    byte padded with 1 bits."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def write(self, value: int, length: int) -> None:
        self.bits.extend((value >> shift) & 1 for shift in range(length - 1, -1, -1))

    def getvalue(self) -> bytes:
        bits = self.bits + [1] * (-len(self.bits) % 8)
        out = bytearray()
        for start in range(0, len(bits), 8):
            byte = int("".join(map(str, bits[start : start + 8])), 2)
            out.append(byte)
            if byte == 0xFF:
                out.append(0x00)
        return bytes(out)


def _eob_runs(blocks: int) -> bytes:
    """One AC scan's data: end-of-block runs that together cover `blocks` blocks."""
    writer = _BitWriter()
    while blocks > 0:
        size = min(blocks.bit_length() - 1, _LONGEST_EOB_RUN_SIZE)
        run = min(blocks, (2 << size) - 1)
        writer.write(size, 4)  # the code of symbol size << 4 is its index, `size`
        writer.write(run - (1 << size), size)
        blocks -= run
    return writer.getvalue()


def _scan_header(first: int, last: int) -> bytes:
    # One component (id 1), DC and AC table 0, spectral selection first..last, no
    # successive approximation.
    return _segment(0xDA, bytes([1, 1, 0x00, first, last, 0x00]))


def scan_bomb(width: int, height: int, ac_scans: int) -> bytes:
    """A greyscale progressive JPEG: one DC scan, then `ac_scans` copies of an AC scan that
    codes every block as end-of-block runs. Decodes to a flat grey picture."""
    blocks = -(-width // 8) * -(-height // 8)
    # Every block's DC difference is the 1-bit code "0"; the last byte is padded with 1 bits.
    dc = bytes(blocks // 8) + (bytes([0xFF >> (blocks % 8)]) if blocks % 8 else b"")
    ac_scan = _scan_header(1, 63) + _eob_runs(blocks)
    return b"".join(
        [
            b"\xff\xd8",
            _segment(0xDB, bytes([0x00]) + bytes([1] * 64)),  # quantisation table 0: all 1
            _segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])),
            _huffman_table(0, 1, _DC_SYMBOLS),
            _huffman_table(1, 4, _AC_SYMBOLS),
            _scan_header(0, 0) + dc,
            ac_scan * ac_scans,
            b"\xff\xd9",
        ]
    )
