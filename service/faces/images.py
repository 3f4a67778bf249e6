"""Turn untrusted upload bytes into the pipeline's image: BGR uint8 (H, W, 3), C-contiguous.

Uploads are hostile until proven otherwise, so every check that can run before pixels are
decoded does: the byte count, then (from the header alone, which Pillow reads lazily) the
format against an allow-list and width x height against a pixel budget. Only then are the
pixels decoded, the EXIF orientation applied, and every colour mode reduced to 3 channels.
Any failure becomes a `ServiceError` with a stable code; nothing here can surface as a 500.

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
import struct
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import ExifTags, Image

from service.errors import ErrorCode, ServiceError


@dataclass(frozen=True)
class DecodeLimits:
    """What one upload may cost: bytes read, and pixels decoded (checked from the header)."""

    max_bytes: int = 10_000_000  # ~10 MB: a 12 MP phone JPEG is 3-6 MB
    max_pixels: int = 40_000_000  # 40 MP: above current phone cameras; 120 MB as BGR uint8


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
    in a format outside `ALLOWED_FORMATS`) or IMAGE_TOO_LARGE (more than `limits.max_pixels`,
    refused before the pixels are decoded).
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
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_header(img, limits)
            jpeg = img.format in ("JPEG", "MPO")  # its EXIF comes with the header
            if not jpeg:
                # Pixels first: reading a PNG's EXIF loads them, and a decode error must not be
                # taken for unreadable EXIF (which only costs the rotation).
                img.load()
            orientation = _orientation(img)
            full_size = _oriented_size(img.size, orientation)
            wanted = None
            if jpeg and fit_into is not None:
                wanted = _reduced_size(img.size, full_size, fit_into)
            pixels = _decode_jpeg_with_opencv(data, img, wanted) if jpeg else None
            if pixels is None:
                if wanted is not None:
                    img.draft("RGB", wanted)
                img.load()
                pixels = _to_bgr_array(img)
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
    return ReducedImage(bgr, *full_size)


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
    if img.mode not in ("RGB", "L"):
        return None
    # Entropy-coded data never holds FF D9 (FF bytes there are stuffed or restart markers),
    # so an end-of-image marker after the last start-of-scan means the last scan is whole.
    if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
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


def _to_bgr_array(img: Image.Image) -> np.ndarray:
    """Any decoded mode -> BGR uint8 (H, W, 3), by the rules in the module docstring."""
    if img.mode in _SIXTEEN_BIT_MODES:
        grey16 = np.clip(np.asarray(img), 0, 0xFFFF).astype(np.uint16)
        grey8 = (grey16 >> 8).astype(np.uint8)
        return np.repeat(grey8[:, :, np.newaxis], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or img.has_transparency_data:
        background = Image.new("RGBA", img.size, _TRANSPARENT_BACKGROUND)
        img = Image.alpha_composite(background, img.convert("RGBA"))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return _rgb_to_bgr_in_bands(img)


def _rgb_to_bgr_in_bands(img: Image.Image) -> np.ndarray:
    """Copy an RGB image into a new BGR array a band of rows at a time.

    `np.asarray(img)` goes through `tobytes`, which holds the pixels twice more (its chunks and
    their join) before the array exists, and the BGR swap then needs one more full copy: a
    40 MP JPEG peaked at +537 MiB. Band by band, the only full-size buffers are Pillow's and
    the result (measured: +280 MiB).
    """
    width, height = img.size
    bgr = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        band = np.asarray(img.crop((0, top, width, bottom)))
        cv2.cvtColor(band, cv2.COLOR_RGB2BGR, dst=bgr[top:bottom])  # SIMD, no temporary
    return bgr


def _allowed_list() -> str:
    return ", ".join(sorted(ALLOWED_FORMATS))
