"""Property-based fuzzing of the whole HTTP API: whatever a client sends, the service answers
without a 5xx, as its OpenAPI schema documents, and every 4xx is `{"error": {"code",
"message"}}` whose code maps to that very status in `service.api.errors.HTTP_STATUS`.

Why this file exists: the example-based tests in test_api.py and gallery/test_gallery_api.py
check each error code once, with inputs someone thought of. Here schemathesis derives requests
from the service's own schema (valid ones, and invalid ones: wrong types, out-of-range numbers,
missing or unknown fields, undeclared methods) and checks every answer. The schema says only
"binary" for uploads, for which schemathesis sends random text that never decodes, so
`uploads()` swaps in real synthetic photos (every accepted format and colour mode, EXIF
orientations, truncated files, refused formats, headers declaring huge sizes) and garbage.
Path and form identity ids sometimes name a live identity (one with an enrolled face, one
without), so the gallery routes get past their 404; a request refused with a 4xx must leave
that identity, and the number of identities, exactly as they were. JSON bodies that
schemathesis never writes (lone surrogates, NaN) and routes outside the schema (/metrics,
unknown paths) have their own properties below.

The app runs in-process on a tiny synthetic model pack (tests/synthetic_models.py), so the
whole pipeline runs on every decodable upload. Generation is derandomized: every run sends
the same requests.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import hypothesis.strategies as st
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from PIL import Image
from synthetic_models import SyntheticFace, make_manifest_pack
from testimages import encode, noise_image

from service.api.errors import HTTP_STATUS
from service.app import create_app
from service.errors import ErrorCode
from service.faces.images import ALLOWED_FORMATS
from service.settings import Settings

# Two faces in detector-input pixels, as in test_api.py: uploads smaller than the detector
# input shrink them, so small photos also reach `face_too_small`.
BIG_FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.8)
SMALL_FACE = SyntheticFace.from_box((420.0, 200.0, 520.0, 320.0), score=0.95)

# Limits low enough that generated photos cross them: a 300 x 300 photo is the most pixels
# accepted, and uncompressed BMPs from about 260 x 260 are too many bytes.
MAX_UPLOAD_BYTES = 200_000
MAX_IMAGE_PIXELS = 300 * 300
MAX_PHOTO_SIDE = 420

# Schemathesis test cases per operation in its fuzzing phase (its examples and coverage
# phases add their own); enough to reach every code path above, small enough to stay fast.
FUZZ_EXAMPLES = 60
VERIFY_EXAMPLES = 150
SEED = 20_240_611

IMAGE_FIELDS = ("image", "image1", "image2")

# Checks applied to every answer. Left out: positive_data_acceptance (the schema cannot say
# "an image with a face", so a schema-valid upload may rightly get invalid_image or no_face),
# the stateful ones (use_after_free, ensure_resource_availability; no stateful phase here)
# and the authentication ones (API keys are off by default; test_auth.py covers them).
# negative_data_rejection is applied through `negative_data_rejected` below.
CHECK_NAMES = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
)
CHECKS = [getattr(schemathesis.checks, name) for name in CHECK_NAMES]

# Forms carry text, so many values schemathesis generates to break a form's schema are valid
# once sent: an empty array is no part at all, an integer or an object is sent as its text
# (a valid string), 0/1 read as booleans (pydantic, like most form readers, takes 0/1, on/off,
# yes/no). negative_data_rejection fails on those, so it is applied to JSON bodies, paths and
# query strings only; form validation is tested by examples in test_api.py.
FORM_MEDIA_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")

SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# --- the app under test ----------------------------------------------------------------------


class InProcessApp:
    """The ASGI app schemathesis sends its requests to: it hands them to `target`.

    The schema is loaded when this module is imported (schemathesis' fixture-based loader,
    `schemathesis.pytest.from_fixture`, fails on pytest 9.2), so until the `live` fixture
    points it at the running app, `target` is an app whose lifespan never ran (no models):
    enough to serve the schema. Lifespan events are answered here: `live` runs the real
    lifespan and ends it with the module, while schemathesis would keep an app it started
    running until the process exits.
    """

    def __init__(self, target) -> None:
        self.target = target

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await self.target(scope, receive, send)


IN_PROCESS = InProcessApp(create_app(Settings(_env_file=None)))

schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    IN_PROCESS,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",
                "max-examples": FUZZ_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
            # A 1:1 request reaches the pipeline only with two usable photos (or a photo and
            # a live identity): it needs more cases to get there often enough.
            "operations": [
                {"include-path": "/verify", "generation": {"max-examples": VERIFY_EXAMPLES}}
            ],
        }
    ),
)


# Stand-ins the generation hooks put where an identity or face id goes; the test swaps in the
# live identities' ids just before sending (they exist only once the app runs).
LIVE_ENROLLED = "live-enrolled"
LIVE_FACELESS = "live-faceless"
LIVE_FACE = "live-face"


@dataclass
class LiveIdentity:
    identity_id: str
    face_id: str | None  # its one enrolled face; None for the faceless identity


class LiveGallery:
    """The identities fuzzed requests may name: one with one enrolled face, one with none.
    Each is created again whenever a request has erased it or changed its faces."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self._identities: dict[str, LiveIdentity] = {}

    def identity(self, marker: str) -> LiveIdentity:
        current = self._identities.get(marker)
        if current is not None and self._intact(current):
            return current
        created = self.client.post("/identities", json={"name": marker, "metadata": {"n": 1}})
        assert created.status_code == 201, created.text
        identity = LiveIdentity(created.json()["id"], None)
        if marker == LIVE_ENROLLED:
            photo = encode(noise_image(size=288, seed=7), ".jpg")
            enrolled = self.client.post(
                f"/identities/{identity.identity_id}/faces",
                files={"image": ("live.jpg", photo, "image/jpeg")},
            )
            assert enrolled.status_code == 201, enrolled.text
            identity.face_id = enrolled.json()["face_id"]
        self._identities[marker] = identity
        return identity

    def _intact(self, identity: LiveIdentity) -> bool:
        response = self.client.get(f"/identities/{identity.identity_id}")
        if response.status_code != 200:
            return False
        face_ids = [face["face_id"] for face in response.json()["faces"]]
        return face_ids == ([identity.face_id] if identity.face_id else [])

    def snapshot(self, identity: LiveIdentity) -> tuple[int, dict]:
        """What a refused request must not change: the identity count and the identity."""
        total = self.client.get("/identities", params={"limit": 1}).json()["total"]
        return total, self.client.get(f"/identities/{identity.identity_id}").json()


@dataclass
class Live:
    client: TestClient
    gallery: LiveGallery


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The service on a synthetic two-face pack, with the upload limits above."""
    root = tmp_path_factory.mktemp("fuzz")
    pack = make_manifest_pack(root / "pack", [BIG_FACE, SMALL_FACE], threshold=0.5)
    settings_ = Settings(
        pack_dir=pack,
        data_dir=root / "data",
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_image_pixels=MAX_IMAGE_PIXELS,
        enrol_quality="off",  # the enrolled photo is smooth noise, not a face
        _env_file=None,
    )
    app = create_app(settings_)
    schema_only = IN_PROCESS.target
    with TestClient(app) as client:
        IN_PROCESS.target = app
        try:
            yield Live(client=client, gallery=LiveGallery(client))
        finally:
            IN_PROCESS.target = schema_only


# --- what every error answer must look like ------------------------------------------------


def assert_error_shape(status: int, content: bytes) -> ErrorCode:
    """`{"error": {"code", "message"}}` with a known code whose table status is `status`."""
    body = json.loads(content)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, body
    assert isinstance(error["message"], str) and error["message"], body
    code = ErrorCode(error["code"])
    assert HTTP_STATUS[code] == status, f"{code} is {HTTP_STATUS[code]} in the table, not {status}"
    return code


def negative_data_rejected(ctx, response, case) -> bool | None:
    """Schemathesis' negative_data_rejection, for every case but a form body (see above). A
    413 `payload_too_large` is a rejection too: a JSON body over the non-multipart limit (an
    embedding far beyond its maxItems, say) is refused before it is parsed."""
    if case.media_type in FORM_MEDIA_TYPES:
        return None
    if response.status_code == 413:
        assert_error_shape(response.status_code, response.content)
        return True
    return schemathesis.checks.negative_data_rejection(ctx, response, case)


def error_shape(ctx, response, case) -> bool | None:
    """Schemathesis check: a 4xx answer is the project's error shape with a stable code."""
    if not 400 <= response.status_code < 500:
        return None
    assert_error_shape(response.status_code, response.content)
    return True


# --- uploads -------------------------------------------------------------------------------

# Formats and the colour modes each can store; GIF and TIFF must be refused (415). Formats
# outside ALLOWED_FORMATS are only sent by `photos()` without `decodable`.
FORMAT_MODES = {
    "PNG": ("RGB", "L", "RGBA", "I;16", "P"),
    "JPEG": ("RGB", "L", "CMYK"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("RGB", "L", "P"),
    "GIF": ("RGB", "L"),
    "TIFF": ("RGB", "L"),
}
EXIF_ORIENTATION_TAG = 0x0112
MAGIC_PREFIXES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"BM",
    b"GIF89a",
    b"II*\x00",
)


def _smooth_photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (max(height // 32, 1), max(width // 32, 1), 3), dtype=np.uint8)
    return Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC)


ACCEPTED_FORMATS = tuple(sorted(ALLOWED_FORMATS))
# Sides of a photo that decodes: even an uncompressed BMP stays under MAX_UPLOAD_BYTES and
# MAX_IMAGE_PIXELS. Both faces are found from 64 px up; under about 53 px both fall below the
# minimum face size (20 px once scaled from the 640 px detector input).
FACES_FOUND_SIDES = (64, 250)
FACES_TOO_SMALL_SIDES = (24, 52)


@st.composite
def photos(draw, *, decodable: bool = False) -> bytes:
    """A real image file in any format, mode and size, sometimes EXIF-rotated or truncated;
    with `decodable`, one the service decodes (allowed format, within limits, complete)."""
    image_format = draw(st.sampled_from(ACCEPTED_FORMATS if decodable else sorted(FORMAT_MODES)))
    mode = draw(st.sampled_from(FORMAT_MODES[image_format]))
    if decodable:
        low, high = draw(st.sampled_from([FACES_FOUND_SIDES] * 4 + [FACES_TOO_SMALL_SIDES]))
    else:
        low, high = 8, MAX_PHOTO_SIDE
    width, height = draw(st.integers(low, high)), draw(st.integers(low, high))
    image = _smooth_photo(width, height, draw(st.integers(0, 1000)))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)
    elif mode == "P":
        image = image.quantize(64)
    else:
        image = image.convert(mode)
    options = {}
    if image_format in ("JPEG", "WEBP") and draw(st.booleans()):
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = draw(st.integers(1, 8))
        options["exif"] = exif
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    data = buffer.getvalue()
    if not decodable and draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


@st.composite
def declared_size_pngs(draw) -> bytes:
    """A PNG whose header declares any size (up to 2^31 - 1 a side) but carries no pixels."""
    width, height = draw(st.integers(1, 2**31 - 1)), draw(st.integers(1, 2**31 - 1))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )


def garbage() -> st.SearchStrategy[bytes]:
    """Bytes that are not an image, some starting like one."""
    return st.one_of(
        st.binary(max_size=2048),
        st.builds(bytes.__add__, st.sampled_from(MAGIC_PREFIXES), st.binary(max_size=512)),
    )


KEEP = object()  # leave schemathesis' own value in place


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, picked in proportion to its weight (`st.one_of` gives every
    distinct branch the same chance)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


def uploads() -> st.SearchStrategy:
    """What goes in an upload field: mostly photos that decode (a 1:1 request needs two to
    reach the pipeline), else any photo, a huge declared size, garbage or the generated text."""
    return weighted(
        (5, photos(decodable=True)),
        (1, photos()),
        (1, declared_size_pngs()),
        (1, garbage()),
        (1, st.just(KEEP)),
    )


# --- the schemathesis-driven property ------------------------------------------------------

# What an identity id may be replaced with (KEEP: the generated id, most likely unknown).
LIVE_IDENTITIES = [KEEP, LIVE_ENROLLED, LIVE_ENROLLED, LIVE_FACELESS]


@schema.hook("flatmap_body")
def real_uploads_and_live_identity(context, body):
    """Upload fields (text as generated) become photos or garbage, and a form `identity_id`
    may name a live identity. Only values the schema accepts are replaced, so a case
    generated to break the schema still does."""
    if not isinstance(body, dict):
        return st.just(body)
    choices = {name: uploads() for name in IMAGE_FIELDS if isinstance(body.get(name), str)}
    if isinstance(body.get("identity_id"), str):
        choices["identity_id"] = st.sampled_from(LIVE_IDENTITIES)
    return st.fixed_dictionaries(choices).map(
        lambda drawn: body | {name: value for name, value in drawn.items() if value is not KEEP}
    )


@schema.hook("flatmap_path_parameters")
def live_identity_in_path(context, path_parameters):
    """A path `identity_id` may name a live identity, and a `face_id` its enrolled face."""
    if not path_parameters or "identity_id" not in path_parameters:
        return st.just(path_parameters)
    choices = {"identity_id": st.sampled_from(LIVE_IDENTITIES)}
    if "face_id" in path_parameters:
        choices["face_id"] = st.sampled_from([KEEP, LIVE_FACE])
    return st.fixed_dictionaries(choices).map(
        lambda drawn: (
            path_parameters | {name: value for name, value in drawn.items() if value is not KEEP}
        )
    )


def _resolve_live_identity(case, live: Live) -> LiveIdentity | None:
    """Swap the stand-ins for the live ids; the identity the request names, if live."""
    path = case.path_parameters or {}
    body = case.body if isinstance(case.body, dict) else {}
    named = None
    for values in (path, body):
        marker = values.get("identity_id")
        if marker in (LIVE_ENROLLED, LIVE_FACELESS):
            named = live.gallery.identity(marker)
            values["identity_id"] = named.identity_id
    if path.get("face_id") == LIVE_FACE and named is not None and named.face_id is not None:
        path["face_id"] = named.face_id
    return named


@schema.parametrize()
@SETTINGS
def test_every_request_is_answered_as_documented_and_never_with_5xx(case, live):
    identity = _resolve_live_identity(case, live)
    before = live.gallery.snapshot(identity) if identity else None
    response = case.call()
    case.validate_response(
        response, checks=CHECKS, additional_checks=[negative_data_rejected, error_shape]
    )
    if identity is not None and response.status_code >= 400:
        assert live.gallery.snapshot(identity) == before, "a refused request changed the gallery"


# --- JSON bodies schemathesis never writes -------------------------------------------------

# Lone surrogates are legal in JSON text ("\ud800") but are not Unicode; Python's parser also
# reads NaN and Infinity, which JSON does not have.
LONE_SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
hostile_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=12),
    st.builds(str.__add__, st.text(max_size=4), LONE_SURROGATES),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | hostile_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(hostile_text, children, max_size=3)
    ),
    max_leaves=8,
)
JSON_HEADERS = {"content-type": "application/json"}
identity_bodies = st.one_of(
    st.fixed_dictionaries(
        {"name": st.one_of(st.just("Ada"), hostile_text)},
        optional={"metadata": st.dictionaries(hostile_text, json_values, max_size=3)},
    ),
    json_values,
)


@SETTINGS
@given(body=identity_bodies, patch=st.booleans())
def test_identity_json_bodies_are_stored_intact_or_refused_with_4xx(live, body, patch):
    client = live.client
    if patch:
        path = f"/identities/{live.gallery.identity(LIVE_ENROLLED).identity_id}"
        response = client.patch(path, content=json.dumps(body), headers=JSON_HEADERS)
    else:
        response = client.post("/identities", content=json.dumps(body), headers=JSON_HEADERS)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_error_shape(response.status_code, response.content)
        return
    stored = client.get(f"/identities/{response.json()['id']}")
    listed = client.get("/identities", params={"limit": 1000})
    assert stored.status_code == 200 and listed.status_code == 200, (stored.text, listed.text)
    assert stored.json()["metadata"] == response.json()["metadata"]
    if isinstance(body, dict) and "metadata" in body:
        assert json.dumps(stored.json()["metadata"], sort_keys=True) == json.dumps(
            body["metadata"], sort_keys=True
        ), "the stored metadata is not what was sent"
    if not patch:
        assert client.delete(f"/identities/{response.json()['id']}").status_code == 204


# --- routes outside the schema -------------------------------------------------------------

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
KNOWN_PATHS = ("/metrics", "/healthz", "/readyz", "/identities", "/verify", "/docs", "/")
url_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@SETTINGS
@given(
    method=st.sampled_from(METHODS),
    path=st.one_of(
        st.sampled_from(KNOWN_PATHS), st.builds(lambda text: "/" + quote(text), url_text)
    ),
    query=st.dictionaries(url_text, url_text, max_size=3),
)
def test_any_method_on_any_path_answers_without_5xx(live, method, path, query):
    response = live.client.request(method, path, params=query)
    assert response.status_code < 500, response.text
    if path == "/metrics" and method == "GET":
        assert response.status_code == 200
        assert "faceverify_requests_total" in response.text
    if response.status_code >= 400 and method != "HEAD":
        code = assert_error_shape(response.status_code, response.content)
        if code is ErrorCode.METHOD_NOT_ALLOWED:
            assert response.headers.get("allow"), "405 without an Allow header"
