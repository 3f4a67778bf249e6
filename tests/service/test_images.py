"""Tests for service.faces.images: limits, allow-list, corrupt input, EXIF, every colour mode."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import jpeg_bombs  # tests/service/jpeg_bombs.py
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from service.errors import ErrorCode, ServiceError
from service.faces import images
from service.faces.images import ALLOWED_FORMATS, DecodeLimits, decode_image, decode_reduced

RED_BGR = [0, 0, 255]
WHITE_BGR = [255, 255, 255]
EXIF_ORIENTATION_TAG = 0x0112  # EXIF 2.3, tag 274 "Orientation"


# ---- builders for synthetic images ---------------------------------------------------------


def encode(img: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, image_format, **options)
    return buffer.getvalue()


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG written by hand, so the header can say things the pixel data does not back up."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def gradient_rgb(width: int = 64, height: int = 48) -> np.ndarray:
    """A smooth, colourful RGB test card: red ramps left to right, green top to bottom."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, width).astype(np.uint8)[np.newaxis, :]
    rgb[..., 1] = np.linspace(0, 255, height).astype(np.uint8)[:, np.newaxis]
    rgb[..., 2] = 64
    return rgb


def decode_error(data: bytes, limits: DecodeLimits | None = None) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        decode_image(data, limits or DecodeLimits())
    return caught.value


def is_near(pixel: np.ndarray, colour: list[int], tolerance: int = 10) -> bool:
    return bool(np.abs(pixel.astype(int) - colour).max() <= tolerance)


def assets_dir() -> Path:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "assets"
    return Path(os.environ.get("FACEVERIFY_TEST_ASSETS", default))


# ---- output contract ------------------------------------------------------------------------


def test_pure_red_png_decodes_to_bgr_red() -> None:
    out = decode_image(encode(Image.new("RGB", (5, 3), (255, 0, 0)), "PNG"))
    assert out.shape == (3, 5, 3)
    assert (out == RED_BGR).all()


def test_output_is_a_writable_contiguous_uint8_array() -> None:
    out = decode_image(encode(Image.fromarray(gradient_rgb()), "PNG"))
    assert out.dtype == np.uint8
    assert out.shape == (48, 64, 3)
    assert out.flags.c_contiguous
    assert out.flags.writeable


@pytest.mark.parametrize("image_format", sorted(ALLOWED_FORMATS))
def test_every_allowed_format_round_trips(image_format: str) -> None:
    options = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}, "PNG": {}, "BMP": {}}
    max_mean_error = {"JPEG": 2.0, "WEBP": 2.0, "PNG": 0.0, "BMP": 0.0}  # lossless are exact
    rgb = gradient_rgb()
    out = decode_image(encode(Image.fromarray(rgb), image_format, **options[image_format]))
    error = np.abs(out.astype(np.int16) - rgb[..., ::-1].astype(np.int16))
    assert out.shape == rgb.shape
    assert error.mean() <= max_mean_error[image_format]
    assert error.max() <= 16


def test_multi_picture_jpeg_is_accepted_as_jpeg() -> None:
    first = Image.new("RGB", (8, 8), (255, 0, 0))
    second = Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"  # what Pillow calls many phone photos
    out = decode_image(data)
    assert is_near(out, RED_BGR, tolerance=8)


# ---- byte and format checks -----------------------------------------------------------------


def test_empty_upload_is_an_invalid_image() -> None:
    assert decode_error(b"").code == ErrorCode.INVALID_IMAGE


def test_upload_over_the_byte_limit_names_limit_and_size() -> None:
    error = decode_error(b"x" * 1_234, DecodeLimits(max_bytes=1_000))
    assert error.code == ErrorCode.PAYLOAD_TOO_LARGE
    assert "1,234" in error.message
    assert "1,000" in error.message


def test_upload_exactly_at_the_byte_limit_is_accepted() -> None:
    data = encode(Image.new("RGB", (4, 4)), "PNG")
    assert decode_image(data, DecodeLimits(max_bytes=len(data))).shape == (4, 4, 3)


@pytest.mark.parametrize("image_format", ["GIF", "TIFF", "ICO", "PPM", "TGA"])
def test_real_image_in_another_format_is_unsupported(image_format: str) -> None:
    error = decode_error(encode(Image.new("RGB", (16, 16), (10, 20, 30)), image_format))
    assert error.code == ErrorCode.UNSUPPORTED_FORMAT
    assert image_format in error.message
    assert all(allowed in error.message for allowed in ALLOWED_FORMATS)


def test_unsupported_format_is_refused_before_its_pixels_are_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = spy_on_pixel_decoding(monkeypatch)
    error = decode_error(encode(Image.new("RGB", (16, 16)), "GIF"))
    assert error.code == ErrorCode.UNSUPPORTED_FORMAT
    assert loads == []


# ---- not an image, truncated, corrupt -------------------------------------------------------


def jpeg_bytes() -> bytes:
    return encode(Image.fromarray(gradient_rgb()), "JPEG", quality=95)


def png_bytes() -> bytes:
    return encode(Image.fromarray(gradient_rgb()), "PNG")


def corrupt_png_idat() -> bytes:
    data = bytearray(png_bytes())
    idat_body = data.index(b"IDAT") + 4
    data[idat_body + 10 : idat_body + 20] = b"\xff" * 10
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"this is not an image", id="text"),
        pytest.param(np.random.default_rng(0).bytes(4096), id="random-bytes"),
        pytest.param(b"\x89PNG\r\n\x1a\n", id="png-signature-only"),
        pytest.param(b"\xff\xd8\xff", id="jpeg-signature-only"),
        pytest.param(jpeg_bytes()[: len(jpeg_bytes()) // 2], id="jpeg-cut-in-half"),
        pytest.param(jpeg_bytes()[:-10], id="jpeg-missing-its-last-bytes"),
        pytest.param(png_bytes()[: len(png_bytes()) // 2], id="png-cut-in-half"),
        pytest.param(corrupt_png_idat(), id="png-corrupt-pixel-data"),
        pytest.param(encode(Image.new("RGB", (8, 8)), "BMP")[:40], id="bmp-header-only"),
    ],
)
def test_broken_or_non_image_data_is_an_invalid_image(data: bytes) -> None:
    error = decode_error(data)
    assert error.code == ErrorCode.INVALID_IMAGE
    assert "BMP, JPEG, PNG, WEBP" in error.message


# ---- pixel budget ---------------------------------------------------------------------------


def spy_on_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every full pixel decode (ImageFile.load) made while the test runs."""
    loads: list[str] = []
    original_load = ImageFile.ImageFile.load

    def recording_load(self: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        loads.append(f"{self.format} {self.size}")
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    return loads


def test_pixel_decoding_spy_sees_an_ordinary_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = spy_on_pixel_decoding(monkeypatch)
    decode_image(png_bytes())
    assert loads
    assert all(load == "PNG (64, 48)" for load in loads)


def test_header_claiming_too_many_pixels_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 8000 x 8000 = 64 MP: over the 40 MP default, under Pillow's own 89 MP warning threshold.
    # The IDAT holds a few hundred bytes, not the 64 MB the header promises.
    data = raw_png(8000, 8000, bit_depth=8, color_type=0, idat=zlib.compress(b"\x00" * 8001))
    assert len(data) < 500
    loads = spy_on_pixel_decoding(monkeypatch)
    started = time.perf_counter()
    error = decode_error(data)
    elapsed = time.perf_counter() - started
    assert error.code == ErrorCode.IMAGE_TOO_LARGE
    assert "8000x8000" in error.message
    assert "40,000,000" in error.message
    assert loads == []
    assert elapsed < 0.5


def test_pixel_limit_is_inclusive() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert decode_image(data, DecodeLimits(max_pixels=10_000)).shape == (100, 100, 3)
    assert decode_error(data, DecodeLimits(max_pixels=9_999)).code == ErrorCode.IMAGE_TOO_LARGE


def test_pillow_decompression_bomb_error_becomes_image_too_large() -> None:
    # 20000 x 20000 = 400 MP trips Pillow's own ceiling (2 x Image.MAX_IMAGE_PIXELS) inside
    # Image.open, before our budget is consulted, even when our budget is set far higher.
    assert 2 * Image.MAX_IMAGE_PIXELS < 20_000 * 20_000
    data = raw_png(20_000, 20_000, bit_depth=8, color_type=0, idat=zlib.compress(b"\x00" * 64))
    error = decode_error(data, DecodeLimits(max_pixels=10**12))
    assert error.code == ErrorCode.IMAGE_TOO_LARGE


# ---- EXIF orientation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "marker_row", "marker_col"),
    [
        # Orientation 6: display rotated 90° clockwise, so the stored top-left lands top-right.
        (6, "top", "right"),
        # Orientation 8: display rotated 90° counter-clockwise: stored top-left -> bottom-left.
        (8, "bottom", "left"),
    ],
)
def test_exif_orientation_is_applied(orientation: int, marker_row: str, marker_col: str) -> None:
    stored = np.full((40, 60, 3), 255, np.uint8)  # 60 wide, 40 tall, white
    stored[:16, :16] = (255, 0, 0)  # red marker in the stored top-left corner
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    out = decode_image(encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes()))

    assert out.shape == (60, 40, 3)  # width and height swapped
    rows = {"top": 8, "bottom": 60 - 8}
    cols = {"left": 8, "right": 40 - 8}
    opposite_rows = {"top": 60 - 8, "bottom": 8}
    assert is_near(out[rows[marker_row], cols[marker_col]], RED_BGR)
    assert is_near(out[opposite_rows[marker_row], cols[marker_col]], WHITE_BGR)


# ---- JPEG through OpenCV, everything else through Pillow ------------------------------------


def textured_rgb(width: int = 512, height: int = 384) -> np.ndarray:
    """The gradient card with noise on it, so every DCT block has detail to lose."""
    noise = np.random.default_rng(1).integers(-40, 40, (height, width, 3))
    return np.clip(gradient_rgb(width, height).astype(int) + noise, 0, 255).astype(np.uint8)


def opencv_spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, for each JPEG decode, whether OpenCV produced the pixels."""
    used: list[bool] = []
    original = images._decode_jpeg_with_opencv

    def recording(*args):  # type: ignore[no-untyped-def]
        pixels = original(*args)
        used.append(pixels is not None)
        return pixels

    monkeypatch.setattr(images, "_decode_jpeg_with_opencv", recording)
    return used


def decode_with_pillow_only(
    monkeypatch: pytest.MonkeyPatch, data: bytes, fit_into: tuple[int, int] | None
) -> images.ReducedImage:
    with monkeypatch.context() as patch:
        patch.setattr(images, "_decode_jpeg_with_opencv", lambda *args: None)
        return decode_reduced(data, DecodeLimits(), fit_into)


def assert_same_decode(fast: images.ReducedImage, slow: images.ReducedImage) -> None:
    assert (fast.width, fast.height) == (slow.width, slow.height)
    assert fast.pixels.shape == slow.pixels.shape
    assert fast.pixels.flags.c_contiguous and fast.pixels.flags.writeable
    # The same libjpeg-turbo runs under both: identical so far; 1 allows a rounding change
    # between the copies bundled with two wheel versions, far below what a wrong channel
    # order, turn or scale would give.
    assert np.abs(fast.pixels.astype(int) - slow.pixels).max() <= 1


@pytest.mark.parametrize(
    "fit_into", [None, (128, 128), (64, 64), (32, 32)], ids=["full", "half", "quarter", "eighth"]
)
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"quality": 90}, id="baseline"),
        pytest.param({"quality": 90, "progressive": True}, id="progressive"),
        pytest.param({"quality": 95, "subsampling": 0}, id="no-chroma-subsampling"),
        pytest.param({"quality": 90, "mode": "L"}, id="grey"),
    ],
)
def test_opencv_decodes_jpeg_pixels_as_pillow_does_at_every_scale(
    monkeypatch: pytest.MonkeyPatch, options: dict, fit_into: tuple[int, int] | None
) -> None:
    options = dict(options)
    picture = Image.fromarray(textured_rgb()).convert(options.pop("mode", "RGB"))
    data = encode(picture, "JPEG", **options)
    used = opencv_spy(monkeypatch)
    fast = decode_reduced(data, DecodeLimits(), fit_into)
    assert used == [True]
    scale = {None: 1, (128, 128): 2, (64, 64): 4, (32, 32): 8}[fit_into]
    assert fast.pixels.shape == (384 // scale, 512 // scale, 3)
    assert_same_decode(fast, decode_with_pillow_only(monkeypatch, data, fit_into))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_opencv_path_turns_each_exif_orientation_as_pillow_does(
    monkeypatch: pytest.MonkeyPatch, orientation: int
) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    data = encode(Image.fromarray(textured_rgb(64, 40)), "JPEG", quality=95, exif=exif.tobytes())
    used = opencv_spy(monkeypatch)
    out = decode_image(data)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert used == [True]
    assert out.shape == (upright.height, upright.width, 3)
    assert np.abs(out.astype(int) - np.asarray(upright)[..., ::-1]).max() <= 1


def test_multi_picture_jpeg_decodes_its_first_picture_through_opencv(monkeypatch) -> None:
    first = Image.fromarray(textured_rgb(48, 32))
    data = encode(first, "MPO", save_all=True, append_images=[Image.new("RGB", (48, 32))])
    used = opencv_spy(monkeypatch)
    fast = decode_reduced(data, DecodeLimits(), None)
    assert used == [True]
    assert_same_decode(fast, decode_with_pillow_only(monkeypatch, data, None))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(jpeg_bytes()[:-2], id="no-end-of-image-marker"),
        pytest.param(jpeg_bytes()[: len(jpeg_bytes()) * 3 // 4], id="cut-in-the-scan"),
        pytest.param(
            encode(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "JPEG", quality=95), id="cmyk"
        ),
    ],
)
def test_jpegs_opencv_would_read_differently_go_to_pillow(
    monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    """A truncated JPEG (OpenCV fills the missing rows with grey; Pillow says it is truncated)
    and a CMYK one (the two convert CMYK differently) are decoded by Pillow, as before."""
    used = opencv_spy(monkeypatch)
    with contextlib.suppress(ServiceError):
        decode_image(data)
    assert used == [False]


@pytest.mark.assets
def test_real_photos_decode_the_same_through_opencv_and_pillow(monkeypatch) -> None:
    photos = sorted((assets_dir() / "images").rglob("*.jpg"))[::4]
    if not photos:
        pytest.skip(f"no photos under {assets_dir() / 'images'} (FACEVERIFY_TEST_ASSETS)")
    used = opencv_spy(monkeypatch)
    for photo in photos:
        data = photo.read_bytes()
        for fit_into in (None, (640, 640)):
            fast = decode_reduced(data, DecodeLimits(), fit_into)
            assert_same_decode(fast, decode_with_pillow_only(monkeypatch, data, fit_into))
    assert all(used) and len(used) == 2 * len(photos)


# ---- colour modes ---------------------------------------------------------------------------


def test_grey_l_becomes_three_equal_channels() -> None:
    out = decode_image(encode(Image.new("L", (4, 4), 100), "PNG"))
    assert (out == [100, 100, 100]).all()


def test_bilevel_becomes_black_and_white() -> None:
    img = Image.new("1", (8, 2), 0)
    img.paste(1, (4, 0, 8, 2))
    out = decode_image(encode(img, "PNG"))
    assert (out[:, :4] == 0).all()
    assert (out[:, 4:] == 255).all()


def test_grey_with_alpha_is_composited_on_white() -> None:
    img = Image.new("LA", (4, 1), (100, 255))
    img.putpixel((1, 0), (100, 0))  # fully transparent
    img.putpixel((2, 0), (0, 128))  # half-transparent black
    out = decode_image(encode(img, "PNG"))
    assert (out[0, 0] == 100).all()
    assert (out[0, 1] == 255).all()
    assert np.abs(out[0, 2].astype(int) - 127).max() <= 1


def test_rgba_is_composited_on_white() -> None:
    img = Image.new("RGBA", (3, 1), (0, 0, 255, 255))  # opaque blue
    img.putpixel((1, 0), (255, 0, 0, 0))  # fully transparent red: must not show
    img.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black over white: mid grey
    out = decode_image(encode(img, "PNG"))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == WHITE_BGR
    assert np.abs(out[0, 2].astype(int) - 127).max() <= 1


def test_palette_with_transparent_index_is_composited_on_white() -> None:
    img = Image.new("P", (2, 1), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * (3 * 254))  # index 0 red, 1 green
    img.putpixel((1, 0), 1)
    data = encode(img, "PNG", transparency=1)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_image(data)
    assert out[0, 0].tolist() == RED_BGR
    assert out[0, 1].tolist() == WHITE_BGR


def test_palette_without_transparency_keeps_its_colours() -> None:
    img = Image.new("P", (2, 1), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * (3 * 254))
    img.putpixel((1, 0), 1)
    out = decode_image(encode(img, "PNG"))
    assert out[0].tolist() == [RED_BGR, [0, 255, 0]]


def test_rgb_with_transparent_colour_key_is_composited_on_white() -> None:
    img = Image.new("RGB", (2, 1), (255, 0, 0))
    img.putpixel((1, 0), (0, 0, 255))
    out = decode_image(encode(img, "PNG", transparency=(0, 0, 255)))
    assert out[0].tolist() == [RED_BGR, WHITE_BGR]


def test_cmyk_jpeg_pure_cyan_becomes_bgr_cyan() -> None:
    data = encode(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    assert is_near(out, [255, 255, 0], tolerance=8)


def test_sixteen_bit_grey_png_is_scaled_not_clipped() -> None:
    grey16 = np.array([[0, 32768, 65535, 257 * 100]], dtype=np.uint16)
    data = encode(Image.fromarray(grey16), "PNG")
    assert Image.open(io.BytesIO(data)).mode in {"I;16", "I"}
    out = decode_image(data)
    assert out[0, :, 0].tolist() == [0, 128, 255, 100]
    assert (out[..., 0] == out[..., 1]).all()
    assert (out[..., 0] == out[..., 2]).all()


def test_thirty_two_bit_integer_mode_is_read_as_sixteen_bit_grey() -> None:
    # Current Pillow opens 16-bit grey PNG as I;16, older releases as I; no allowed format
    # yields mode I here, so the conversion is exercised directly.
    img = Image.fromarray(np.array([[-5, 0, 32768, 65535, 70_000]], dtype=np.int32))
    assert img.mode == "I"
    bgr = images._to_bgr_array(img)
    assert bgr[0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_sixteen_bit_rgb_png_keeps_colour_and_full_range() -> None:
    row = struct.pack(">HHH", 65535, 0, 32768) * 2
    data = raw_png(2, 1, bit_depth=16, color_type=2, idat=zlib.compress(b"\x00" + row))
    out = decode_image(data)
    assert out[0].tolist() == [[128, 0, 255], [128, 0, 255]]


# ---- real file ------------------------------------------------------------------------------


@pytest.mark.assets
def test_real_32_bit_rgba_png_decodes_to_its_colours() -> None:
    path = assets_dir() / "images" / "face_recognition" / "_misc" / "32bit.png"
    if not path.is_file():
        pytest.skip(f"test asset {path} absent: set FACEVERIFY_TEST_ASSETS to the assets folder")
    with Image.open(path) as reference:
        assert reference.mode == "RGBA"
        rgba = np.asarray(reference)
    out = decode_image(path.read_bytes())
    assert out.shape == (*rgba.shape[:2], 3)
    opaque = rgba[..., 3] == 255
    assert opaque.any()
    assert (out[opaque] == rgba[..., 2::-1][opaque]).all()


# Reads the peak resident memory of this process (VmHWM): unlike getrusage's ru_maxrss, which
# a child inherits from the parent it was forked from (pytest, holding the test's pictures),
# it starts afresh at exec.
PEAK_RSS = """
def peak_rss():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
"""


def forty_megapixel_upload(tmp_path: Path, picture: str) -> Path:
    upload = tmp_path / picture
    if picture == "la.png":
        upload.write_bytes(flat_png(4, 2))
    elif picture == "rgb.webp":  # 19.6 MP, 1.5 KB: WebP is measured at half the size
        upload.write_bytes(encode(Image.new("RGB", (4000, 4900), (10, 200, 30)), "WEBP"))
    else:
        gradient = np.linspace(0, 255, 7744, dtype=np.uint8)
        image = np.ascontiguousarray(np.broadcast_to(gradient[None, :, None], (5164, 7744, 3)))
        upload.write_bytes(cv2.imencode(upload.suffix, image)[1].tobytes())
    return upload


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("picture", "peak_limit"),
    [
        # OpenCV decodes into the result and, at its peak, a second copy of it.
        pytest.param("rgb.jpg", 2.2, id="jpeg-through-opencv"),
        # Pillow's pixels (4 bytes a pixel) plus the BGR result (3), copied band by band.
        pytest.param("rgb.png", 2.7, id="png-through-pillow"),
        # The same, composited on white band by band (whole-image conversions: 5.4).
        pytest.param("la.png", 2.7, id="grey-alpha-png-through-pillow"),
        # libwebp's canvases and the frame it hands to Pillow: 16 bytes a pixel.
        pytest.param("rgb.webp", 5.6, id="webp-through-pillow"),
    ],
)
def test_decode_peak_memory_is_bounded_and_within_its_estimate(
    tmp_path: Path, picture: str, peak_limit: float
) -> None:
    """Peak memory of one decode, in a fresh process, in units of the result's size, and
    against the estimate the memory budget is checked with. Converting through `tobytes` and
    a swapped copy peaked at 4.7x."""
    upload = forty_megapixel_upload(tmp_path, picture)
    # The JPEG decodes within the default memory budget; the others need more than it.
    budget = "" if picture.endswith(".jpg") else ", max_decode_bytes=1 << 40"
    script = (
        PEAK_RSS
        + f"""
from pathlib import Path
from service.faces import images
estimates = []
check = images._check_decode_bytes
images._check_decode_bytes = lambda img, needed, limits: (
    estimates.append(needed), check(img, needed, limits))
data = Path({str(upload)!r}).read_bytes()
before = peak_rss()
out = images.decode_image(data, images.DecodeLimits(max_bytes=len(data){budget}))
grown = peak_rss() - before
print(grown / out.nbytes, grown <= max(estimates))
"""
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    ratio, within_estimate = done.stdout.split()
    assert 0.9 < float(ratio) < peak_limit  # the result itself, at least
    assert within_estimate == "True"


def test_small_large_webp_over_the_memory_budget_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 39 MP in 1.5 KB: decoding it through Pillow held 604 MiB.
    data = encode(Image.new("RGB", (8000, 4900), (10, 200, 30)), "WEBP", lossless=True)
    assert len(data) < 5_000
    loads = spy_on_pixel_decoding(monkeypatch)
    error = decode_error(data)
    assert error.code == ErrorCode.IMAGE_TOO_LARGE
    assert "8000x4900 WEBP image" in error.message
    assert loads == []


def test_webp_photo_of_twelve_megapixels_fits_the_memory_budget() -> None:
    picture = Image.fromarray(gradient_rgb(4000, 3000))
    assert decode_image(encode(picture, "WEBP", quality=80)).shape == (3000, 4000, 3)


# ---- decode work budget: JPEG scans ---------------------------------------------------------


def opencv_decode_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every OpenCV decode (cv2.imdecode) made while the test runs."""
    calls: list[str] = []
    original = cv2.imdecode

    def recording(*args):  # type: ignore[no-untyped-def]
        calls.append("imdecode")
        return original(*args)

    monkeypatch.setattr(images.cv2, "imdecode", recording)
    return calls


@pytest.mark.parametrize("fit_into", [None, (640, 640)], ids=["full", "service-path"])
def test_jpeg_scan_bomb_is_refused_fast_before_decoding(
    monkeypatch: pytest.MonkeyPatch, fit_into: tuple[int, int] | None
) -> None:
    # 6000 x 6000 grey (under the pixel limit), one DC scan and 5,000 AC scans of end-of-block
    # runs: 0.43 MB that kept libjpeg walking 562,500 blocks per scan for 10 s and more.
    data = jpeg_bombs.scan_bomb(6000, 6000, ac_scans=5000)
    assert len(data) < 500_000
    loads, decodes = spy_on_pixel_decoding(monkeypatch), opencv_decode_spy(monkeypatch)
    started = time.perf_counter()
    with pytest.raises(ServiceError) as caught:
        decode_reduced(data, DecodeLimits(), fit_into)
    elapsed = time.perf_counter() - started
    assert caught.value.code == ErrorCode.IMAGE_TOO_COMPLEX
    assert f"more than {images.MAX_JPEG_SCANS} scans" in caught.value.message
    assert loads == [] and decodes == []
    assert elapsed < 0.3


def test_jpeg_under_the_scan_limit_is_refused_by_the_work_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 61 scans (under the scan limit) over 562,500 blocks each: 34 million block visits,
    # past the budget of 32 passes over a grey 40 MP picture (20 million).
    data = jpeg_bombs.scan_bomb(6000, 6000, ac_scans=60)
    loads, decodes = spy_on_pixel_decoding(monkeypatch), opencv_decode_spy(monkeypatch)
    error = decode_error(data)
    assert error.code == ErrorCode.IMAGE_TOO_COMPLEX
    assert "61 scans" in error.message and "34,312,500 8x8 blocks" in error.message
    assert "20,000,000" in error.message
    assert loads == [] and decodes == []


def test_work_budget_follows_the_pixel_limit() -> None:
    data = jpeg_bombs.scan_bomb(640, 480, ac_scans=40)  # 41 scans x 4,800 blocks = 196,800
    assert decode_image(data, DecodeLimits(max_pixels=400_000)).shape == (480, 640, 3)
    error = decode_error(data, DecodeLimits(max_pixels=390_000))  # budget 195,000 blocks
    assert error.code == ErrorCode.IMAGE_TOO_COMPLEX


@pytest.mark.parametrize("ac_scans", [1, 60])
def test_scan_bomb_files_are_valid_jpegs_that_decode_when_small(ac_scans: int) -> None:
    """The refusals above are the budget's doing: the same construction over a small picture
    is a valid progressive JPEG that both decoders read (a flat mid-grey picture)."""
    data = jpeg_bombs.scan_bomb(320, 240, ac_scans)
    assert images.jpeg_scans(data).scans == 1 + ac_scans
    with Image.open(io.BytesIO(data)) as img:
        assert (img.format, img.mode, img.info.get("progressive")) == ("JPEG", "L", 1)
        img.load()
    out = decode_image(data)
    assert out.shape == (240, 320, 3) and (out == 128).all()


@pytest.mark.parametrize(
    ("mode", "subsampling", "scans", "passes"),
    [
        # libjpeg's progressive scripts (jcparam.c jpeg_simple_progression); a pass is one
        # walk over the luma (or grey) blocks.
        pytest.param("L", 0, 6, 6, id="grey"),
        pytest.param("RGB", 2, 10, 8, id="4:2:0"),
        pytest.param("RGB", 0, 10, 14, id="4:4:4"),
    ],
)
def test_scan_walk_counts_the_scans_and_blocks_libjpeg_decodes(
    mode: str, subsampling: int, scans: int, passes: int
) -> None:
    # Noise makes FF bytes (stuffed with 00) in the scans; a restart marker every MCU puts
    # RST0-7 in them; an APP segment carrying a whole JPEG and the second picture of a
    # multi-picture file hold start-of-scan markers that are not decoded. None may count.
    noise = np.random.default_rng(3).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    picture = Image.fromarray(noise).convert(mode)
    data = encode(
        picture, "JPEG", progressive=True, subsampling=subsampling, restart_marker_blocks=1
    )
    assert b"\xff\x00" in data and b"\xff\xd0" in data
    thumbnail = encode(picture.resize((32, 24)), "JPEG")
    app = b"\xff\xe5" + struct.pack(">H", len(thumbnail) + 2) + thumbnail
    data = data[:2] + app + data[2:] + thumbnail  # a trailing picture, as in an MPO file
    assert data.count(b"\xff\xda") == scans + 2

    found = images.jpeg_scans(data)
    assert found.scans == scans
    assert found.blocks_walked == passes * (320 // 8) * (256 // 8)
    assert decode_image(data).shape == (256, 320, 3)


def test_baseline_jpeg_is_one_scan_without_a_coefficient_buffer() -> None:
    found = images.jpeg_scans(encode(Image.fromarray(textured_rgb()), "JPEG"))
    assert (found.scans, found.coefficient_bytes) == (1, 0)
    assert found.blocks_walked == (512 // 16) * (384 // 16) * 6  # 4:2:0 MCUs of 6 blocks


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff\xd8", id="only-start-of-image"),
        pytest.param(b"\xff\xd8\xff\xc2\x00", id="cut-in-a-length"),
        pytest.param(b"\xff\xd8\xff\xda\x00\x02", id="scan-without-frame"),
        pytest.param(b"\xff\xd8\xff\xc2\x00\x03\x08", id="frame-too-short"),
        pytest.param(b"\xff\xd8" + b"\x00" * 100, id="no-markers"),
    ],
)
def test_scan_walk_survives_malformed_streams(data: bytes) -> None:
    assert images.jpeg_scans(data).scans <= 1


def jpeg_with_comments(comments: int) -> bytes:
    """A small grey JPEG with `comments` empty comment segments after its start-of-image."""
    data = encode(Image.new("L", (64, 48), 100), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * comments + data[2:]


def test_jpeg_of_many_marker_segments_is_refused_before_pillow_parses_them() -> None:
    # 9.6 MB of empty comments: Pillow spent 1.7 s of CPU opening the file, segment by segment.
    data = jpeg_with_comments(2_400_000)
    started = time.process_time()
    error = decode_error(data)
    assert time.process_time() - started < 0.2
    assert error.code == ErrorCode.IMAGE_TOO_COMPLEX
    assert f"more than {images.MAX_JPEG_SEGMENTS:,} marker segments" in error.message


def test_jpeg_of_as_many_segments_as_a_photo_has_decodes() -> None:
    data = jpeg_with_comments(images.MAX_JPEG_SEGMENTS - 10)
    assert images.jpeg_scans(data).segments <= images.MAX_JPEG_SEGMENTS
    assert is_near(decode_image(data), [100, 100, 100], tolerance=2)


@pytest.mark.assets
def test_real_photos_fit_the_scan_and_work_budgets() -> None:
    photos = sorted(p for p in (assets_dir() / "images").rglob("*.jp*g"))
    if not photos:
        pytest.skip(f"no photos under {assets_dir() / 'images'} (FACEVERIFY_TEST_ASSETS)")
    progressive = 0
    for photo in photos:
        data = photo.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            progressive += bool(img.info.get("progressive"))
        out = decode_reduced(data, DecodeLimits(), (640, 640))
        assert out.pixels.ndim == 3, photo
    assert progressive >= 20  # the deepface set holds many progressive photos (up to 14 scans)


def test_large_pillow_progressive_photo_fits_the_work_budget() -> None:
    # 24 MP, 4:4:4: libjpeg's most block-hungry script for an ordinary photo.
    picture = Image.fromarray(gradient_rgb(6000, 4000))
    data = encode(picture, "JPEG", progressive=True, subsampling=0, quality=90)
    found = images.jpeg_scans(data)
    assert found.blocks_walked == 14 * 750 * 500
    assert found.blocks_walked < images.JPEG_WORK_PASSES * DecodeLimits().max_pixels // 64
    assert decode_reduced(data, DecodeLimits(), (640, 640)).width == 6000


# ---- decode memory budget -------------------------------------------------------------------

FORTY_MP = (7744, 5164)  # 39.99 MP: just under the default pixel limit


def flat_png(mode_code: int, channels: int, size: tuple[int, int] = FORTY_MP) -> bytes:
    """A valid PNG of one flat colour, compressed the way an attacker would (zlib level 9):
    a 40 MP grey+alpha picture is about 80 KB."""
    width, height = size
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * (width * channels)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return raw_png(width, height, bit_depth=8, color_type=mode_code, idat=idat)


@pytest.mark.parametrize(
    ("mode", "mode_code", "channels"),
    [("LA", 4, 2), ("RGBA", 6, 4), ("RGB", 2, 3)],
)
def test_small_forty_megapixel_png_over_the_memory_budget_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch, mode: str, mode_code: int, channels: int
) -> None:
    # Pillow keeps 4 bytes a pixel for these modes and the result takes 3: 280 MB for a file
    # of 80-170 KB (the whole-image conversions of an LA picture took 613 MiB).
    data = flat_png(mode_code, channels)
    assert len(data) < 200_000
    loads = spy_on_pixel_decoding(monkeypatch)
    error = decode_error(data)
    assert error.code == ErrorCode.IMAGE_TOO_LARGE
    assert f"7744x5164 PNG image ({mode})" in error.message
    assert "the decode budget is 256 MiB" in error.message
    assert loads == []


def test_grey_forty_megapixel_png_fits_the_memory_budget() -> None:
    out = decode_image(flat_png(0, 1))  # 1 byte a pixel in Pillow, 3 in the result
    assert out.shape == (5164, 7744, 3) and (out == 128).all()


def test_memory_budget_counts_the_coefficients_a_progressive_jpeg_keeps() -> None:
    # 4:4:4 at 1024 x 768: the BGR result and OpenCV's copy of it take 4.7 MB either way; a
    # progressive file also keeps 6 bytes of coefficients a pixel until its last scan.
    picture = Image.fromarray(gradient_rgb(1024, 768))
    baseline = encode(picture, "JPEG", subsampling=0)
    progressive = encode(picture, "JPEG", subsampling=0, progressive=True)
    limits = DecodeLimits(max_decode_bytes=(8 << 20) + 6_000_000)
    assert decode_image(baseline, limits).shape == (768, 1024, 3)
    assert decode_error(progressive, limits).code == ErrorCode.IMAGE_TOO_LARGE
    assert decode_image(progressive, DecodeLimits()).shape == (768, 1024, 3)


def test_memory_budget_is_checked_for_the_reduced_decode_the_service_makes() -> None:
    # A 40 MP baseline JPEG decoded at 1/8 scale needs about 1/64 of the memory.
    picture = Image.fromarray(gradient_rgb(4096, 3072))
    data = encode(picture, "JPEG")
    tight = DecodeLimits(max_decode_bytes=(8 << 20) + 2_000_000)
    assert decode_error(data, tight).code == ErrorCode.IMAGE_TOO_LARGE
    assert decode_reduced(data, tight, (256, 256)).pixels.shape == (384, 512, 3)


def test_decode_budget_setting_reaches_the_pipeline() -> None:
    from service.app import pipeline_options
    from service.settings import Settings

    limits = pipeline_options(Settings(max_decode_bytes=123 << 20)).limits
    assert limits.max_decode_bytes == 123 << 20
    assert Settings().max_decode_bytes == DecodeLimits().max_decode_bytes


def varied_picture(mode: str) -> Image.Image:
    """A 37 x 90 picture of noise in `mode`, transparency included where the mode has it."""
    rng = np.random.default_rng(5)
    if mode in ("I;16", "I"):
        values = rng.integers(0, 70_000, (90, 37))
        return Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))
    rgba = Image.fromarray(rng.integers(0, 256, (90, 37, 4), dtype=np.uint8), "RGBA")
    if mode == "P+transparency":
        picture = rgba.convert("RGB").quantize(16)
        picture.info["transparency"] = 3
        return picture
    if mode == "RGB+transparency":
        picture = rgba.convert("RGB")
        picture.info["transparency"] = picture.getpixel((0, 0))
        return picture
    return rgba.convert(mode)


@pytest.mark.parametrize(
    "mode",
    [
        "RGBA",
        "LA",
        "PA",
        "P+transparency",
        "RGB+transparency",
        "1",
        "L",
        "CMYK",
        "YCbCr",
        "I;16",
        "I",
    ],
)
def test_band_by_band_conversion_equals_the_whole_image_conversion(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    img = varied_picture(mode)
    reference = images._to_bgr_array(img)  # one band: the whole picture at once
    monkeypatch.setattr(images, "_BAND_PIXELS", 37 * 4)  # bands of 4 rows, the last of 2
    banded = images._to_bgr_array(img)
    assert (banded == reference).all()
    assert len(np.unique(reference.reshape(-1, 3), axis=0)) > 1  # not a flat picture


# ---- decode work budget: what Pillow decodes in Python --------------------------------------


def png_with_empty_chunks(chunks: int, tag: bytes) -> bytes:
    """A valid 100 x 100 grey PNG followed (IDAT) or preceded (an ancillary chunk) by
    `chunks` empty chunks, each of which Pillow handles in Python."""
    idat = zlib.compress(b"".join(b"\x00" + b"\x80" * 100 for _ in range(100)))
    empty = png_chunk(tag, b"") * chunks
    header = struct.pack(">IIBBBBB", 100, 100, 8, 0, 0, 0, 0)
    before, after = (empty, b"") if tag != b"IDAT" else (b"", empty)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + before
        + png_chunk(b"IDAT", idat)
        + after
        + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("tag", [b"IDAT", b"prVt"], ids=["image-data", "ancillary"])
def test_png_of_many_tiny_chunks_is_refused_before_pillow_parses_them(tag: bytes) -> None:
    # 10 MB of empty chunks: Pillow spent 1.5 s of CPU reading them one by one.
    data = png_with_empty_chunks(830_000, tag)
    started = time.process_time()
    error = decode_error(data)
    assert time.process_time() - started < 0.2
    assert error.code == ErrorCode.IMAGE_TOO_COMPLEX
    assert f"more than {images.MAX_PNG_CHUNKS:,} chunks" in error.message


def test_png_of_as_many_chunks_as_an_encoder_writes_decodes() -> None:
    data = png_with_empty_chunks(images.MAX_PNG_CHUNKS - 3, b"IDAT")  # IHDR, IDAT, IEND
    assert images.png_chunks(data) == images.MAX_PNG_CHUNKS
    assert (decode_image(data) == 128).all()


def rle8_bmp(width: int, height: int) -> bytes:
    """A grey BMP compressed as RLE8 in runs of one pixel: 2 bytes a pixel, the worst case
    for Pillow's run-length decoder, which is written in Python."""
    rows = (b"\x01\x80" * width + b"\x00\x00") * height + b"\x00\x01"  # end of line, of file
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows


def test_run_length_encoded_bmp_over_the_python_decoding_budget_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 10 MB of 1-pixel runs took Pillow 1.2 s of CPU; this is 2.4 MB.
    data = rle8_bmp(1200, 1000)
    loads = spy_on_pixel_decoding(monkeypatch)
    error = decode_error(data)
    assert error.code == ErrorCode.IMAGE_TOO_COMPLEX
    assert f"at most {images.MAX_PYTHON_DECODED_BYTES:,} bytes" in error.message
    assert loads == []


def test_small_run_length_encoded_bmp_decodes() -> None:
    data = rle8_bmp(600, 400)
    assert len(data) < images.MAX_PYTHON_DECODED_BYTES
    assert (decode_image(data) == 128).all()
