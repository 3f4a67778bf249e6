"""Turn untrusted upload bytes into the pipeline's image: BGR uint8 (H, W, 3), C-contiguous.

Uploads are hostile until proven otherwise, so every check that can run before pixels are
decoded does: the byte count; a JPEG's marker segments, its scans and the 8x8 blocks they
would make libjpeg walk (a few bytes of end-of-block runs per scan can keep a decoder busy
for seconds), and a PNG's chunks, all before Pillow parses them; then (from the header
alone, which Pillow reads lazily) the format against an allow-list, width x height against a
pixel budget, the bytes Pillow would decode in Python, and the memory the decode path will
hold at its peak, in bytes, not pixels (an 87 KB PNG of 40 MP grey+alpha held 613 MiB).
Only then are the pixels decoded, the EXIF orientation applied, and every colour mode
reduced to 3 channels, a band of rows at a time. Any failure becomes a `ServiceError` with a
stable code; nothing here can surface as a 500. The limits, and the measurements behind
them, are described in docs/security.md ("Image decoding limits").

Pillow reads every header and decodes every format; the pixels of a whole YCbCr or grey JPEG
(nearly every photo) come from OpenCV instead, which decodes straight into BGR with the same
libjpeg-turbo (`_decode_jpeg_with_opencv`). A JPEG with corrupt scan data decodes, as in
Pillow, to whatever libjpeg makes of it; OpenCV then prints libjpeg's one-line warning
("Corrupt JPEG data: ...") on stderr.

Conversions, so a caller knows what it gets:
- transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) is composited on white,
  so transparent areas are predictable rather than whatever colour the encoder left there;
- 16-bit grey (modes I;16* and I, which older Pillow versions use for 16-bit PNG) keeps the
  high byte (65535 -> 255, 32768 -> 128), as libpng does when it strips 16 bits to 8;
- every other mode (1, L, P, CMYK, YCbCr, RGB...) goes through Pillow's `convert("RGB")`.

The orientation is read here rather than with `ImageOps.exif_transpose`, which also rewrites
the EXIF block after transposing and raises TypeError / AttributeError on malformed tags that
reading alone tolerates. EXIF is metadata: when it cannot be read, the picture is used as stored.
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import ExifTags, Image

from service.errors import ErrorCode, ServiceError


@dataclass(frozen=True)
class DecodeLimits:
    """What one upload may cost: bytes read, pixels decoded (checked from the header), and the
    memory its decoding holds at once (estimated from the header, see `decode_cost`)."""

    max_bytes: int = 10_000_000  # ~10 MB: a 12 MP phone JPEG is 3-6 MB
    max_pixels: int = 40_000_000  # 40 MP: above current phone cameras; 120 MB as BGR uint8
    # 256 MiB: a 40 MP colour JPEG decodes in 120 MB (240 MB when its EXIF turns it, or when
    # it is progressive 4:2:0); a 40 MP RGBA, LA or RGB PNG would need 280 MB (Pillow keeps
    # 4 bytes a pixel, the BGR result 3).
    max_decode_bytes: int = 256 << 20


# Pillow format names. Every other format Pillow can read is refused before its pixels are.
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "BMP"})

# Pillow reports a JPEG carrying a multi-picture index (many phone and camera photos) as
# "MPO"; its first frame is an ordinary JPEG, which is what is decoded.
_FORMAT_ALIASES = {"MPO": "JPEG"}

# Modes holding 16-bit grey samples; "I" is what older Pillow versions give for 16-bit grey PNG.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

_TRANSPARENT_BACKGROUND = (255, 255, 255, 255)  # opaque white

# How many times the detector-fitted size a reduced JPEG decode keeps. At 1 the detector input
# is resized from a 1/8 DCT decode of an 8000 px image and its landmarks move enough to lower
# a face's similarity to itself from 0.97 to 0.945; at 2 the resize again averages over
# several source pixels, as from a full decode.
DRAFT_MARGIN = 2.0

# EXIF Orientation values (TIFF 6.0 / EXIF 2.3, tag 0x0112) and the turn of the stored (H, W, 3)
# array that shows the picture upright; 1 (and any unknown value) means "as stored".
_ORIENTATION_TURNS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: cv2.flip(a, 1),  # mirrored left-right
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),  # mirrored top-bottom
    5: cv2.transpose,  # mirrored along the main diagonal
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.flip(cv2.transpose(a), -1),  # mirrored along the other diagonal
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}

# OpenCV's JPEG decode flags for each DCT scale denominator.
_OPENCV_SCALE_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}

# Pixels converted per step from Pillow's image to the BGR array (about 3 MB of RGB).
_BAND_PIXELS = 1 << 20

# What Pillow raises for data that is not a decodable image: unidentified (an OSError),
# truncated or corrupt streams (OSError, SyntaxError, EOFError, struct.error), bad values
# in headers or chunks (ValueError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


@dataclass(frozen=True)
class ReducedImage:
    """A decoded image, possibly at a reduced scale: `pixels` BGR uint8, and the `width` and
    `height` of the full-resolution (EXIF-oriented) image it stands for."""

    pixels: np.ndarray
    width: int
    height: int

    @property
    def scale_x(self) -> float:
        """Full-resolution pixels per pixel of `pixels`, along x (1.0 when not reduced)."""
        return self.width / self.pixels.shape[1]

    @property
    def scale_y(self) -> float:
        return self.height / self.pixels.shape[0]

    @property
    def reduced(self) -> bool:
        return self.pixels.shape[:2] != (self.height, self.width)


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Decode an uploaded JPEG/PNG/WebP/BMP into a BGR uint8 (H, W, 3) contiguous array.

    Raises `ServiceError` with PAYLOAD_TOO_LARGE (more than `limits.max_bytes`),
    INVALID_IMAGE (empty, not an image, truncated or corrupt), UNSUPPORTED_FORMAT (an image
    in a format outside `ALLOWED_FORMATS`), IMAGE_TOO_LARGE (more than `limits.max_pixels`,
    or a decode needing more than `limits.max_decode_bytes`) or IMAGE_TOO_COMPLEX (a JPEG
    with more than `MAX_JPEG_SCANS` scans or too many block walks), all refused before the
    pixels are decoded.
    """
    return decode_reduced(data, limits, fit_into=None).pixels


def decode_reduced(
    data: bytes, limits: DecodeLimits, fit_into: tuple[int, int] | None
) -> ReducedImage:
    """`decode_image`, but a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8; see
    Pillow's `Image.draft`) that still holds every pixel the image keeps once fitted into a
    `fit_into` (width, height) box: libjpeg then skips most of the inverse DCT and the
    memory of the full image. Other formats, and `fit_into=None`, decode at full size.
    """
    if not data:
        raise ServiceError(ErrorCode.INVALID_IMAGE, "The image is empty (0 bytes): send a file.")
    if len(data) > limits.max_bytes:
        raise ServiceError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"The image is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes. "
            "Send a smaller or more compressed image.",
        )
    _check_png_chunks(data)
    scans = _check_jpeg_work(data, limits)
    try:
        with Image.open(io.BytesIO(data)) as img:
            try:
                stored_size = img.size  # before a draft decode shrinks it
                pixels, orientation = _decode_stored(data, img, limits, fit_into, scans)
            finally:
                img.close()  # frees Pillow's pixels before the turn below copies the result
        bgr = _upright(pixels, orientation)
    except Image.DecompressionBombError as exc:
        # Pillow's own ceiling (2 x Image.MAX_IMAGE_PIXELS), checked inside Image.open.
        raise ServiceError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"The image is too large to decode ({exc}). "
            f"Send an image of at most {limits.max_pixels:,} pixels.",
        ) from exc
    except _DECODE_ERRORS as exc:
        raise ServiceError(
            ErrorCode.INVALID_IMAGE,
            f"The file could not be decoded as an image ({_reason(exc)}). "
            f"Send a complete, uncorrupted {_allowed_list()} file.",
        ) from exc
    return ReducedImage(bgr, *_oriented_size(stored_size, orientation))


def _decode_stored(
    data: bytes,
    img: Image.Image,
    limits: DecodeLimits,
    fit_into: tuple[int, int] | None,
    scans: JpegScans | None,
) -> tuple[np.ndarray, int]:
    """The stored (not yet turned) BGR pixels and the EXIF orientation of an opened upload,
    each budget checked before the decoding it guards (`scans`: what its JPEG marker walk
    found, None when it does not start as a JPEG)."""
    _check_header(img, limits)
    jpeg = img.format in ("JPEG", "MPO")  # its EXIF comes with the header
    if not jpeg:
        # Pixels first: reading a PNG's EXIF loads them, and a decode error must not be
        # taken for unreadable EXIF (which only costs the rotation). Its turn is not known
        # yet, so the budget assumes one.
        _check_python_decoding(data, img)
        _check_decode_bytes(img, _pillow_decode_bytes(img, None, turned=True), limits)
        img.load()
        return _to_bgr_array(img), _orientation(img)
    assert scans is not None  # Pillow opens as JPEG only what starts as _JPEG_SIGNATURE
    orientation = _orientation(img)
    turned = orientation in _ORIENTATION_TURNS
    wanted = None
    if fit_into is not None:
        wanted = _reduced_size(img.size, _oriented_size(img.size, orientation), fit_into)
    if _opencv_reads_as_pillow(data, img):
        scale = _dct_scale(img.size, wanted)
        _check_decode_bytes(img, _opencv_decode_bytes(img.size, scale, scans), limits)
    pixels = _decode_jpeg_with_opencv(data, img, wanted)
    if pixels is None:
        if wanted is not None:
            img.draft("RGB", wanted)
        _check_decode_bytes(img, _pillow_decode_bytes(img, scans, turned), limits)
        img.load()
        pixels = _to_bgr_array(img)
    return pixels, orientation


# EXIF orientations (TIFF tag 0x0112) that swap width and height: the transposes and the
# 90 / 270 degree rotations.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def _oriented_size(stored: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) of a picture stored as `stored` once `orientation` is applied."""
    width, height = stored
    if orientation in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation, or 1 when there is none or it cannot be read."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF raises many types; it only ever costs the rotation
        return 1
    return value if isinstance(value, int) else 1


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The picture turned as its EXIF orientation says (the same array when upright)."""
    turn = _ORIENTATION_TURNS.get(orientation)
    return pixels if turn is None else turn(pixels)


def _reduced_size(
    stored: tuple[int, int], full_size: tuple[int, int], fit_into: tuple[int, int]
) -> tuple[int, int] | None:
    """The smallest (stored-orientation) size a JPEG decode must keep for `fit_into`, or None
    when no DCT scale would keep enough pixels."""
    width, height = full_size
    scale = DRAFT_MARGIN * min(fit_into[0] / width, fit_into[1] / height)
    if scale > 0.5:
        return None
    wanted = (math.ceil(width * scale), math.ceil(height * scale))
    return wanted if stored == full_size else wanted[::-1]


def _dct_scale(stored: tuple[int, int], wanted: tuple[int, int] | None) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) whose decode covers `wanted`: Pillow's rule
    in `JpegImageFile.draft`, so both decoders give the same size."""
    if wanted is None:
        return 1
    fits = min(stored[0] // wanted[0], stored[1] // wanted[1])
    return next(scale for scale in (8, 4, 2, 1) if fits >= scale)


def _decode_jpeg_with_opencv(
    data: bytes, img: Image.Image, wanted: tuple[int, int] | None
) -> np.ndarray | None:
    """The stored (not yet oriented) BGR pixels of a JPEG, or None to leave it to Pillow.

    OpenCV's decoder writes BGR straight into the array, where Pillow decodes RGB that is
    then copied into a BGR array: with the same libjpeg-turbo underneath, the pixels are
    identical at every DCT scale and a photo decodes about 10 ms sooner (docs/performance.md).
    It is used only where it behaves as Pillow does: YCbCr or grey JPEGs (Pillow's CMYK
    conversion differs) whose last scan is followed by an end-of-image marker, since OpenCV
    fills a truncated picture with grey where Pillow reports it truncated. Everything else,
    and anything OpenCV refuses, goes through Pillow, whose errors are the reported ones.
    """
    if not _opencv_reads_as_pillow(data, img):
        return None
    scale = _dct_scale(img.size, wanted)
    flags = _OPENCV_SCALE_FLAGS[scale] | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        return None
    expected = (-(-img.size[1] // scale), -(-img.size[0] // scale), 3)
    if pixels is None or pixels.shape != expected:
        return None
    return pixels


def _opencv_reads_as_pillow(data: bytes, img: Image.Image) -> bool:
    """Whether OpenCV decodes this JPEG as Pillow would: YCbCr or grey, and whole."""
    if img.mode not in ("RGB", "L"):
        return False
    # Entropy-coded data never holds FF D9 (FF bytes there are stuffed or restart markers),
    # so an end-of-image marker after the last start-of-scan means the last scan is whole.
    return data.rfind(b"\xff\xd9") >= data.rfind(b"\xff\xda")


def _reason(exc: Exception) -> str:
    """Pillow's error text without object reprs such as `<_io.BytesIO object at 0x...>`."""
    text = str(exc)
    if text.startswith("cannot identify image file"):
        return "not a recognised image format"
    return text or type(exc).__name__


def _check_header(img: Image.Image, limits: DecodeLimits) -> None:
    """Refuse by format and size, using only what `Image.open` read from the header."""
    image_format = _FORMAT_ALIASES.get(img.format or "", img.format)
    if image_format not in ALLOWED_FORMATS:
        raise ServiceError(
            ErrorCode.UNSUPPORTED_FORMAT,
            f"Images in {img.format} format are not accepted. "
            f"Convert it to one of: {_allowed_list()}.",
        )
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ServiceError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"The image is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {limits.max_pixels:,} pixels. Resize it and send it again.",
        )


# ---- the work and memory a decode will cost, known before it starts -------------------------

# Real progressive JPEGs have about 10 scans (libjpeg's and mozjpeg's scripts: 6 to 12);
# libjpeg-turbo's djpeg stops at 1000 by default (-maxscans). Every scan makes libjpeg walk
# each 8x8 block of its components, even when its data is a few bytes of end-of-block runs.
MAX_JPEG_SCANS = 100
# The blocks all scans of one JPEG may walk, as passes over a grey picture at the pixel limit
# (max_pixels / 64 blocks each). libjpeg's 10-scan script walks 14 such passes for a 4:4:4
# colour picture at the limit and 8 for 4:2:0; a grey scan bomb at the limit stops at 32
# scans: 60-220 ms of CPU (1.9 ms a scan through Pillow, about 7 through OpenCV, measured at
# 6000 x 6000), less than decoding an ordinary 40 MP photo takes.
JPEG_WORK_PASSES = 32
# Marker segments (APPn, COM, DQT, DHT, SOS...) in one picture: photos have tens, up to about
# 200 with an ICC profile or XMP packet split over many APPn segments. Pillow reads the ones
# before the first scan in Python while opening the file: 10 MB of empty comments took 1.7 s.
MAX_JPEG_SEGMENTS = 1_000

# JPEG markers (ITU-T T.81, table B.1): start-of-frame is every C0-CF but DHT, JPG and DAC.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_SOF_MARKERS = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOS, _EOI = 0xDA, 0xD9
_JPEG_SIGNATURE = b"\xff\xd8\xff"  # start-of-image and the next marker: what Pillow accepts
_PARAMETERLESS_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7
# Between segments, libjpeg skips any bytes up to an FF followed by a marker code (not 00,
# not more FF fill). Inside a scan's entropy-coded data an FF is followed by a stuffed 00 or
# a restart marker (RST0-7), which stay in the scan; any other marker ends the scan.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xff]")
_END_OF_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_COEFFICIENT_BYTES_PER_BLOCK = 64 * 2  # libjpeg's JCOEF is a 16-bit integer


@dataclass(frozen=True)
class JpegScans:
    """What a JPEG's marker stream says its decoding will cost, read without decoding it."""

    segments: int  # marker segments walked (at most MAX_JPEG_SEGMENTS + 1)
    size: tuple[int, int]  # (width, height) from the start-of-frame segment
    scans: int  # start-of-scan markers before the first end-of-image (at most the limit + 1)
    blocks_walked: int  # 8x8 blocks visited, summed over the scans
    coefficient_bytes: int  # the whole-image coefficient buffer a multi-scan decode keeps


def jpeg_scans(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> JpegScans:
    """Walk a JPEG's markers as libjpeg does: segments by their length, scans' entropy-coded
    data up to the marker that ends it; stop at the first end-of-image (a multi-picture file's
    later pictures are not decoded), after `stop_after` + 1 scans or after MAX_JPEG_SEGMENTS
    + 1 segments. Malformed streams end the walk; the decoder then says what is wrong."""
    components: dict[int, tuple[int, int]] = {}  # component id -> (h, v) sampling factors
    size = (0, 0)
    segments = scans = blocks = 0
    progressive = False
    position = 2  # after start-of-image
    while scans <= stop_after and segments <= MAX_JPEG_SEGMENTS:
        found = _NEXT_MARKER.search(data, position)
        if found is None:
            break
        marker, position = data[found.start() + 1], found.end()
        if marker == _EOI:
            break
        if marker in _PARAMETERLESS_MARKERS:
            continue
        if position + 2 > len(data):
            break
        segments += 1
        end = position + int.from_bytes(data[position : position + 2], "big")
        segment = data[position + 2 : end] if marker in _SOF_MARKERS or marker == _SOS else b""
        if marker in _SOF_MARKERS and not components and len(segment) >= 6:
            progressive = marker in _PROGRESSIVE_SOF_MARKERS
            height, width, count = struct.unpack(">HHB", segment[1:6])
            size = (width, height)
            for index in range(6, min(len(segment) - 2, 6 + 3 * count), 3):
                sampling = segment[index + 1]
                components[segment[index]] = (max(1, sampling >> 4), max(1, sampling & 15))
        elif marker == _SOS and segment:
            scans += 1
            blocks += _scan_blocks(size, components, segment[1 : 1 + 2 * segment[0] : 2])
            ended = _END_OF_SCAN.search(data, end)
            if ended is None:
                break
            end = ended.start()
        position = end
    coefficients = 0
    if progressive or scans > 1:  # libjpeg buffers every coefficient until the last scan
        coefficients = _scan_blocks(size, components, bytes(components)) * (
            _COEFFICIENT_BYTES_PER_BLOCK
        )
    return JpegScans(segments, size, scans, blocks, coefficients)


def _scan_blocks(
    size: tuple[int, int], components: dict[int, tuple[int, int]], in_scan: bytes
) -> int:
    """8x8 blocks a scan of the components `in_scan` walks, as libjpeg counts them: one
    component's own blocks, or whole MCUs when several are interleaved."""
    if not components:
        return 0
    width, height = size
    h_max = max(h for h, _ in components.values())
    v_max = max(v for _, v in components.values())
    sampling = [components[c] for c in in_scan if c in components]
    if len(sampling) == 1:
        ((h, v),) = sampling
        return math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(
            math.ceil(height * v / v_max) / 8
        )
    mcus = math.ceil(width / (8 * h_max)) * math.ceil(height / (8 * v_max))
    return mcus * sum(h * v for h, v in sampling)


def _check_jpeg_work(data: bytes, limits: DecodeLimits) -> JpegScans | None:
    """Refuse a JPEG whose segments Pillow would parse too long, or whose scans would make
    the decoder walk its blocks too many times: before Pillow opens it. None for other data."""
    if not data.startswith(_JPEG_SIGNATURE):
        return None
    found = jpeg_scans(data)
    if found.segments > MAX_JPEG_SEGMENTS:
        raise ServiceError(
            ErrorCode.IMAGE_TOO_COMPLEX,
            f"The JPEG has more than {MAX_JPEG_SEGMENTS:,} marker segments (photos have at "
            "most a few hundred). Save it again with any image editor.",
        )
    if found.scans > MAX_JPEG_SCANS:
        raise ServiceError(
            ErrorCode.IMAGE_TOO_COMPLEX,
            f"The JPEG has more than {MAX_JPEG_SCANS} scans (ordinary progressive JPEGs "
            "have about 10). Save it again as a baseline JPEG.",
        )
    budget = JPEG_WORK_PASSES * limits.max_pixels // 64
    if found.blocks_walked > budget:
        width, height = found.size
        raise ServiceError(
            ErrorCode.IMAGE_TOO_COMPLEX,
            f"Decoding this {width}x{height} JPEG's {found.scans} scans would walk "
            f"{found.blocks_walked:,} 8x8 blocks; the limit is {budget:,}. "
            "Save it again as a baseline JPEG, or with fewer pixels.",
        )
    return found


# Pillow reads a PNG chunk by chunk in Python, about 2 us a chunk: 10 MB of empty chunks took
# 1.5 s of CPU. Encoders write image data in chunks of 8-64 KB (libpng, Pillow), so a 10 MB
# PNG has a few thousand at most; counting up to the limit takes a few milliseconds.
MAX_PNG_CHUNKS = 20_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHUNK_FRAME_BYTES = 12  # length, type and CRC around each chunk's data

# Formats Pillow decodes in Python (`Image.DECODERS`: run-length-encoded BMP) cost about
# 0.12 us of CPU a byte, ten times libjpeg's: a 10 MB RLE8 BMP of 1-pixel runs took 1.2 s.
MAX_PYTHON_DECODED_BYTES = 1_000_000


def png_chunks(data: bytes, stop_after: int = MAX_PNG_CHUNKS) -> int:
    """The chunks of a PNG up to its IEND (at most `stop_after` + 1), by their lengths."""
    count, position = 0, len(_PNG_SIGNATURE)
    while count <= stop_after and position + 8 <= len(data):
        count += 1
        if data[position + 4 : position + 8] == b"IEND":
            break
        length = int.from_bytes(data[position : position + 4], "big")
        position += _PNG_CHUNK_FRAME_BYTES + length
    return count


def _check_png_chunks(data: bytes) -> None:
    """Refuse a PNG of more chunks than encoders write, before Pillow parses any of them
    (it reads every chunk before the image data while opening the file)."""
    if data.startswith(_PNG_SIGNATURE) and png_chunks(data) > MAX_PNG_CHUNKS:
        raise ServiceError(
            ErrorCode.IMAGE_TOO_COMPLEX,
            f"The PNG has more than {MAX_PNG_CHUNKS:,} chunks (ordinary PNGs have at most a "
            "few thousand). Save it again with any image editor.",
        )


def _check_python_decoding(data: bytes, img: Image.Image) -> None:
    """Refuse what Pillow would decode byte by byte in Python beyond a bounded cost."""
    python_decoded = any(tile.codec_name in Image.DECODERS for tile in img.tile)
    if python_decoded and len(data) > MAX_PYTHON_DECODED_BYTES:
        raise ServiceError(
            ErrorCode.IMAGE_TOO_COMPLEX,
            f"This {img.format} file's compression is decoded slowly; at most "
            f"{MAX_PYTHON_DECODED_BYTES:,} bytes of it are accepted ({len(data):,} sent). "
            "Save it as PNG or JPEG.",
        )


# Bytes a pixel takes in Pillow's memory: one byte for 1, L and P, two for 16-bit grey, and
# four for every other mode (several bands are always stored four bytes apart: RGB as RGBX).
_PILLOW_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_BGR_PIXEL_BYTES = 3
# Bytes a pixel a decoder holds beside Pillow's image while it loads: libwebp's animation
# decoder (which Pillow uses for every WebP) keeps two RGBA canvases and hands over a third
# copy as bytes (measured: a 39 MP WebP of 1.5 KB peaks at +604 MiB, 16 bytes a pixel).
_DECODER_PIXEL_BYTES = {"WEBP": 12}
# The conversion to BGR works a band of _BAND_PIXELS at a time; its temporaries (a cropped
# band, its RGBA copy, the white background, the composite, its RGB copy and array) peak at
# about 24 bytes a band pixel.
_BAND_BYTES = 24 * _BAND_PIXELS
# The decoders' own buffers (libjpeg's and zlib's working memory, OpenCV's copy of the input):
# 4-5 MiB beyond the rest in every measured decode of a 40 MP picture.
_DECODER_WORKSPACE = 8 << 20


def _opencv_decode_bytes(stored: tuple[int, int], scale: int, scans: JpegScans) -> int:
    """Memory an OpenCV JPEG decode holds at its peak: libjpeg's coefficient buffer (full
    size at every DCT scale) beside the BGR result, or the result beside a second copy, which
    OpenCV makes (measured: a 40 MP baseline JPEG peaks at +233 MiB for a 114 MiB result, a
    4:4:4 progressive one at +347 MiB) and so does the turn."""
    pixels = -(-stored[0] // scale) * -(-stored[1] // scale)
    decoding = scans.coefficient_bytes + _BGR_PIXEL_BYTES * pixels
    return _DECODER_WORKSPACE + max(decoding, 2 * _BGR_PIXEL_BYTES * pixels)


def _pillow_decode_bytes(img: Image.Image, scans: JpegScans | None, turned: bool) -> int:
    """Memory a Pillow decode holds at its peak: Pillow's pixels beside the decoder's own
    (libjpeg's coefficient buffer, libwebp's canvases), then beside the BGR result and a
    band's temporaries, then (Pillow's pixels freed) the result and its turned copy."""
    pixels = img.size[0] * img.size[1]
    decoded = _PILLOW_PIXEL_BYTES.get(img.mode, 4) * pixels
    decoding = decoded + _DECODER_PIXEL_BYTES.get(img.format or "", 0) * pixels
    if scans is not None:
        decoding += scans.coefficient_bytes
    converting = decoded + _BGR_PIXEL_BYTES * pixels + _BAND_BYTES
    turning = 2 * _BGR_PIXEL_BYTES * pixels if turned else 0
    return _DECODER_WORKSPACE + max(decoding, converting, turning)


def _check_decode_bytes(img: Image.Image, needed: int, limits: DecodeLimits) -> None:
    """Refuse a decode whose memory would exceed the budget, before it allocates any."""
    if needed > limits.max_decode_bytes:
        width, height = img.size
        raise ServiceError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"Decoding this {width}x{height} {img.format} image ({img.mode}) would take "
            f"{needed / 2**20:,.0f} MiB of memory; the decode budget is "
            f"{limits.max_decode_bytes / 2**20:,.0f} MiB. Send it with fewer pixels, "
            "or as a JPEG.",
        )


def _to_bgr_array(img: Image.Image) -> np.ndarray:
    """Any decoded mode -> BGR uint8 (H, W, 3), by the rules in the module docstring, a band
    of rows at a time.

    Whole-image conversions held several full copies at once: an LA picture became RGBA, a
    white RGBA background, their composite and its RGB copy (a 40 MP LA PNG of 77 KB took
    585 MiB), and `np.asarray(img)` goes through `tobytes`, which holds the pixels twice more.
    Band by band, the only full-size buffers are Pillow's pixels and the result.
    """
    width, height = img.size
    bgr = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        _band_to_bgr(img.crop((0, top, width, bottom)), bgr[top:bottom])
    return bgr


def _band_to_bgr(band: Image.Image, out: np.ndarray) -> None:
    """Write one band of rows, in any mode, into `out` as BGR."""
    if band.mode in _SIXTEEN_BIT_MODES:
        grey16 = np.clip(np.asarray(band), 0, 0xFFFF).astype(np.uint16)
        cv2.cvtColor((grey16 >> 8).astype(np.uint8), cv2.COLOR_GRAY2BGR, dst=out)
        return
    if band.mode in ("RGBA", "LA", "PA") or band.has_transparency_data:
        background = Image.new("RGBA", band.size, _TRANSPARENT_BACKGROUND)
        band = Image.alpha_composite(background, band.convert("RGBA"))
    if band.mode != "RGB":
        band = band.convert("RGB")
    cv2.cvtColor(np.asarray(band), cv2.COLOR_RGB2BGR, dst=out)  # SIMD, no temporary


def _allowed_list() -> str:
    return ", ".join(sorted(ALLOWED_FORMATS))
