"""The HTTP contract on tiny synthetic models: responses, every error code, metrics, docs."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_models import SyntheticFace, make_manifest_pack, make_pack_folder
from testimages import encode, noise_image

from service.api.errors import HTTP_STATUS
from service.errors import ErrorCode

# Two faces in detector-input pixels; test images are 640x640 so image pixels are the same.
BIG_FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.8)
SMALL_FACE = SyntheticFace.from_box((420.0, 200.0, 520.0, 320.0), score=0.95)


@pytest.fixture
def two_face_pack(tmp_path: Path) -> Path:
    return make_manifest_pack(tmp_path / "pack", [BIG_FACE, SMALL_FACE], threshold=0.5)


@pytest.fixture
def no_face_pack(tmp_path: Path) -> Path:
    return make_pack_folder(tmp_path / "empty_pack", [])


def _files(**images: bytes) -> dict:
    return {name: (f"{name}.png", data, "image/png") for name, data in images.items()}


def _error(response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return body["error"]["code"]


def test_verify_same_photo_matches_with_similarity_one(app_client, two_face_pack):
    photo = encode(noise_image(seed=1))
    with app_client(two_face_pack) as client:
        response = client.post("/verify", files=_files(image1=photo, image2=photo))
    assert response.status_code == 200
    body = response.json()
    assert body["match"] is True
    assert body["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert body["threshold"] == 0.5
    assert body["model"].startswith("synthetic@")
    assert len(body["faces"]) == 2
    assert body["faces"][0]["box"] == pytest.approx(list(BIG_FACE.box), abs=0.01)
    assert np.array(body["faces"][0]["landmarks"]) == pytest.approx(
        np.array(BIG_FACE.landmarks), abs=0.01
    )
    assert body["faces"][0]["quality"]["embedding_norm"] > 0
    assert {"decode", "detect", "align", "embed", "total"} <= set(body["timings_ms"])


def test_verify_different_photos_use_threshold_from_form(app_client, two_face_pack):
    first, second = encode(noise_image(seed=1)), encode(noise_image(seed=2))
    with app_client(two_face_pack) as client:
        default = client.post("/verify", files=_files(image1=first, image2=second)).json()
        strict = client.post(
            "/verify", files=_files(image1=first, image2=second), data={"threshold": "0.9999"}
        ).json()
        lenient = client.post(
            "/verify", files=_files(image1=first, image2=second), data={"threshold": "-1"}
        ).json()
    assert default["similarity"] < 0.9999
    assert strict["threshold"] == 0.9999 and strict["match"] is False
    assert lenient["threshold"] == -1 and lenient["match"] is True


def test_verify_face_rule_best_picks_highest_score(app_client, two_face_pack):
    photo = encode(noise_image(seed=3))
    with app_client(two_face_pack) as client:
        largest = client.post("/verify", files=_files(image1=photo, image2=photo)).json()
        best = client.post(
            "/verify", files=_files(image1=photo, image2=photo), data={"face": "best"}
        ).json()
    assert largest["faces"][0]["score"] == pytest.approx(0.8, abs=1e-3)
    assert best["faces"][0]["score"] == pytest.approx(0.95, abs=1e-3)


def test_threshold_setting_overrides_pack_threshold(app_client, two_face_pack):
    photo = encode(noise_image(seed=1))
    with app_client(two_face_pack, threshold=0.25) as client:
        body = client.post("/verify", files=_files(image1=photo, image2=photo)).json()
        ready = client.get("/readyz").json()
    assert body["threshold"] == 0.25 and ready["threshold"] == 0.25


def test_flip_changes_embedding_but_keeps_quality(app_client, two_face_pack):
    photo = encode(noise_image(seed=4))
    with app_client(two_face_pack) as client:
        plain = client.post("/embed", files=_files(image=photo)).json()["faces"][0]
        flipped = client.post("/embed", files=_files(image=photo), data={"flip": "true"}).json()
    flipped = flipped["faces"][0]
    assert plain["quality"] == flipped["quality"]
    assert not np.allclose(plain["embedding"], flipped["embedding"], atol=1e-4)
    assert np.linalg.norm(flipped["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_embed_returns_every_face_with_unit_embeddings(app_client, two_face_pack):
    with app_client(two_face_pack) as client:
        body = client.post("/embed", files=_files(image=encode(noise_image()))).json()
    assert len(body["faces"]) == 2
    for face in body["faces"]:
        assert len(face["embedding"]) == 8
        assert np.linalg.norm(face["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_detect_returns_faces_largest_first_without_quality(app_client, two_face_pack):
    with app_client(two_face_pack) as client:
        body = client.post("/detect", files=_files(image=encode(noise_image()))).json()
    assert [f["score"] for f in body["faces"]] == pytest.approx([0.8, 0.95], abs=1e-3)
    assert all(f["quality"] is None for f in body["faces"])
    assert (body["width"], body["height"]) == (640, 640)


def test_faces_below_min_size_are_dropped(app_client, two_face_pack):
    with app_client(two_face_pack, min_face_size=150) as client:
        body = client.post("/detect", files=_files(image=encode(noise_image()))).json()
    assert len(body["faces"]) == 1 and body["faces"][0]["score"] == pytest.approx(0.8, abs=1e-3)


# --- errors: every stable code, never a 500 ------------------------------------------------


def test_no_face_is_422_no_face(app_client, no_face_pack):
    photo = encode(noise_image())
    with app_client(no_face_pack) as client:
        response = client.post("/verify", files=_files(image1=photo, image2=photo))
    assert response.status_code == 422 and _error(response) == "no_face"


def test_only_small_faces_is_422_face_too_small(app_client, two_face_pack):
    photo = encode(noise_image())
    with app_client(two_face_pack, min_face_size=500) as client:
        response = client.post("/verify", files=_files(image1=photo, image2=photo))
    assert response.status_code == 422 and _error(response) == "face_too_small"


def test_garbage_upload_is_400_invalid_image(app_client, two_face_pack):
    with app_client(two_face_pack) as client:
        response = client.post("/embed", files=_files(image=b"this is not an image"))
    assert response.status_code == 400 and _error(response) == "invalid_image"
    assert "0x" not in response.json()["error"]["message"]


def test_gif_is_415_unsupported_format(app_client, two_face_pack):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="GIF")
    with app_client(two_face_pack) as client:
        response = client.post("/embed", files=_files(image=buffer.getvalue()))
    assert response.status_code == 415 and _error(response) == "unsupported_format"


def test_upload_over_byte_limit_is_413_payload_too_large(app_client, two_face_pack):
    photo = encode(noise_image())
    with app_client(two_face_pack, max_upload_bytes=len(photo) - 1) as client:
        response = client.post("/embed", files=_files(image=photo))
    assert response.status_code == 413 and _error(response) == "payload_too_large"


def test_body_far_over_limit_is_refused_before_parsing(app_client, two_face_pack):
    with app_client(two_face_pack, max_upload_bytes=1000) as client:
        response = client.post("/embed", files=_files(image=b"\0" * 500_000))
    assert response.status_code == 413 and _error(response) == "payload_too_large"


def test_streamed_body_without_length_is_cut_at_limit(app_client, two_face_pack):
    def chunks():
        for _ in range(100):
            yield b"\0" * 10_000

    with app_client(two_face_pack, max_upload_bytes=1000) as client:
        response = client.post(
            "/embed", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
        )
    assert response.status_code == 413 and _error(response) == "payload_too_large"


def test_too_many_pixels_is_413_image_too_large(app_client, two_face_pack):
    with app_client(two_face_pack, max_image_pixels=640 * 640 - 1) as client:
        response = client.post("/embed", files=_files(image=encode(noise_image())))
    assert response.status_code == 413 and _error(response) == "image_too_large"


def test_missing_image_is_422_missing_field(app_client, two_face_pack):
    with app_client(two_face_pack) as client:
        verify = client.post("/verify", files=_files(image1=encode(noise_image())))
        embed = client.post("/embed", data={"flip": "true"})
    assert verify.status_code == 422 and _error(verify) == "missing_field"
    assert embed.status_code == 422 and _error(embed) == "missing_field"


def test_verify_refuses_a_pair_mixed_with_an_identity_check(app_client, two_face_pack):
    # Found by tests/service/test_api_fuzz.py: image1 + image2 with `image` or `identity_id`
    # too answered as a pair and silently ignored the rest.
    photo = encode(noise_image())
    with app_client(two_face_pack) as client:
        mixed = client.post(
            "/verify", files=_files(image1=photo, image2=photo), data={"identity_id": "x"}
        )
        half = client.post("/verify", files=_files(image1=photo, image=photo))
    for response in (mixed, half):
        assert response.status_code == 422 and _error(response) == "validation_error"
        assert "not both" in response.json()["error"]["message"]


def test_bad_form_value_is_422_validation_error(app_client, two_face_pack):
    photo = encode(noise_image())
    with app_client(two_face_pack) as client:
        bad_threshold = client.post(
            "/verify", files=_files(image1=photo, image2=photo), data={"threshold": "high"}
        )
        bad_rule = client.post(
            "/verify", files=_files(image1=photo, image2=photo), data={"face": "nicest"}
        )
    assert bad_threshold.status_code == 422 and _error(bad_threshold) == "validation_error"
    assert bad_rule.status_code == 422 and _error(bad_rule) == "validation_error"


def test_unknown_route_is_404_json(app_client, two_face_pack):
    with app_client(two_face_pack) as client:
        response = client.get("/nowhere")
    assert response.status_code == 404 and _error(response) == "not_found"


def test_wrong_method_is_405_method_not_allowed_with_every_allowed_method(
    app_client, two_face_pack
):
    # Found by tests/service/test_api_fuzz.py: TRACE /verify answered 405 with code
    # validation_error (a 422 code) and no Allow header; OPTIONS /identities said
    # `Allow: POST` although GET /identities exists too.
    with app_client(two_face_pack) as client:
        trace = client.request("TRACE", "/verify")
        options = client.options("/identities")
        put = client.put("/identities/someone")
    assert trace.status_code == 405 and _error(trace) == "method_not_allowed"
    assert trace.headers["allow"] == "POST"
    assert options.status_code == 405 and _error(options) == "method_not_allowed"
    assert options.headers["allow"] == "GET, POST"
    assert put.status_code == 405 and put.headers["allow"] == "GET, PATCH, DELETE"
    assert "GET, PATCH, DELETE" in put.json()["error"]["message"]


def test_unparseable_body_is_422_validation_error(app_client, two_face_pack):
    # Found by tests/service/test_api_fuzz.py: a body FastAPI cannot parse answered 400 with
    # code validation_error, a status the error table does not give that code.
    with app_client(two_face_pack) as client:
        not_utf8 = client.post(
            "/identities", content=b"\xff\xfe{", headers={"content-type": "application/json"}
        )
        no_boundary = client.post(
            "/embed", content=b"xx", headers={"content-type": "multipart/form-data"}
        )
    for response in (not_utf8, no_boundary):
        assert response.status_code == 422 and _error(response) == "validation_error"
        assert "send the body the route documents" in response.json()["error"]["message"]


def test_worker_survives_a_burst_of_bad_inputs(app_client, two_face_pack):
    photo = encode(noise_image())
    bad = [b"", b"\x89PNG\r\n\x1a\n", photo[: len(photo) // 2], b"GIF89a" + b"\0" * 20]
    with app_client(two_face_pack) as client:
        statuses = [client.post("/embed", files=_files(image=data)).status_code for data in bad]
        after = client.post("/verify", files=_files(image1=photo, image2=photo))
    assert all(400 <= status < 500 for status in statuses), statuses
    assert after.status_code == 200


# --- operations ----------------------------------------------------------------------------


def test_healthz_and_readyz(app_client, two_face_pack):
    with app_client(two_face_pack) as client:
        health = client.get("/healthz")
        ready = client.get("/readyz")
    assert health.json() == {"status": "ok"}
    body = ready.json()
    assert ready.status_code == 200 and body["status"] == "ready"
    assert body["embedding_size"] == 8 and body["provider"] == "CPUExecutionProvider"


def test_readyz_is_503_before_models_load(two_face_pack):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    client = TestClient(create_app(Settings(pack_dir=two_face_pack, _env_file=None)))
    response = client.get("/readyz")  # no `with`: lifespan (model loading) never ran
    assert response.status_code == 503 and _error(response) == "not_ready"


def test_metrics_count_requests_stages_faces_and_model(app_client, two_face_pack):
    photo = encode(noise_image())
    with app_client(two_face_pack) as client:
        client.post("/verify", files=_files(image1=photo, image2=photo))
        client.post("/embed", files=_files(image=b"junk"))
        text = client.get("/metrics").text
    assert 'faceverify_requests_total{method="POST",route="/verify",status="200"} 1.0' in text
    assert 'faceverify_errors_total{code="invalid_image"} 1.0' in text
    for stage in ("decode", "detect", "align", "embed"):
        assert f'faceverify_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert 'faceverify_request_duration_seconds_count{route="/verify"} 1.0' in text
    assert "faceverify_faces_per_image_sum 4.0" in text  # two images, two faces each
    assert 'faceverify_model_info{detector="det.onnx"' in text or "faceverify_model_info{" in text
    assert 'embedding_size="8"' in text


def test_openapi_documents_routes_examples_and_errors(app_client, two_face_pack):
    with app_client(two_face_pack) as client:
        spec = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert docs.status_code == 200
    for path in ("/verify", "/embed", "/detect", "/healthz", "/readyz"):
        assert path in spec["paths"]
    verify = spec["paths"]["/verify"]["post"]
    assert {"413", "415", "422"} <= set(verify["responses"])
    assert "examples" in json.dumps(spec["components"]["schemas"]["VerifyResponse"])


def test_openapi_documents_every_error_in_the_error_shape(app_client, two_face_pack):
    # GET /identities and DELETE /identities/{id}/faces/{face_id} documented FastAPI's own
    # 422 body ({"detail": [...]}) while answering {"error": {...}}.
    with app_client(two_face_pack) as client:
        spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(spec)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (
                        method,
                        path,
                        status,
                    )


def test_openapi_error_statuses_list_only_codes_the_table_maps_to_them(app_client, two_face_pack):
    """Each documented error status names its codes, and each code is one `HTTP_STATUS` maps
    to that status: the docs and the answers come from one table."""
    with app_client(two_face_pack) as client:
        spec = client.get("/openapi.json").json()
    codes = {code.value for code in ErrorCode}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                named = set(re.findall(r"[a-z_]+", response["description"])) & codes
                assert named, (method, path, status, response["description"])
                for code in named:
                    assert HTTP_STATUS[ErrorCode(code)] == int(status), (method, path, code)
    assert "404" not in spec["paths"]["/embed"]["post"]["responses"], "embed has no id to miss"
    assert "503" in spec["paths"]["/identities"]["get"]["responses"]


def test_openapi_form_fields_and_query_parameters_are_never_null(app_client, two_face_pack):
    # Found by tests/service/test_api_fuzz.py: optional fields were documented as
    # `anyOf: [X, null]`, so a client following the schema sent the text "null" (refused) and
    # sent the optional uploads of /verify as text fields, not files (refused too).
    with app_client(two_face_pack) as client:
        spec = client.get("/openapi.json").json()
    components = spec["components"]["schemas"]
    verify_form = components["Body_verify_verify_post"]["properties"]
    for upload in ("image1", "image2", "image"):
        assert verify_form[upload]["contentMediaType"] == "application/octet-stream"
    assert verify_form["flip"]["type"] == "boolean"
    for operations in spec["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                assert "null" not in json.dumps(parameter["schema"]), parameter
            form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if form:
                body = components[form["schema"]["$ref"].rsplit("/", 1)[-1]]
                assert "null" not in json.dumps(body["properties"]), body
    assert {"type": "null"} in components["VerifyResponse"]["properties"]["face_id"]["anyOf"]
