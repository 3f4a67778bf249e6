"""The gallery's HTTP contract on tiny synthetic models: identity CRUD, enrolment and its
refusals, /identify with "unknown", /verify against an identity, model tagging, persistence.

Every test runs against both backends (`app_client` is parametrised): the embedded one and
Milvus (a milvus-lite server started once per session), with the same assertions.

The synthetic detector reports the same faces in every image and the synthetic recognizer
embeds a coarse average of the crop, so different noise images are different "people" (cosine
about 0 +- 0.15 at 32-d) and an image is the same person as itself (cosine 1).
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from gallery_support import backend_settings, noise_photo
from synthetic_models import SyntheticFace, make_manifest_pack

from service.app import create_app
from service.settings import Settings

BIG_FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.8)
SMALL_FACE = SyntheticFace.from_box((420.0, 200.0, 520.0, 320.0), score=0.95)
TINY_FACE = SyntheticFace.from_box((300.0, 300.0, 310.0, 312.0), score=0.9)
THRESHOLD = 0.5
EMBEDDING_SIZE = 32


@pytest.fixture(params=["sqlite", "milvus"])
def app_client(request, tmp_path: Path):
    """The suite's `app_client`, on the gallery backend of the parameter."""
    from fastapi.testclient import TestClient

    milvus_uri = request.getfixturevalue("milvus_uri") if request.param == "milvus" else None

    @contextmanager
    def make(pack_dir: Path, **overrides):
        data_dir = overrides.setdefault("data_dir", tmp_path / "data")
        # Synthetic photos are smooth noise, not faces: the default enrolment quality policy
        # would refuse them as blurry (the suite's `app_client` does the same).
        overrides.setdefault("enrol_quality", "off")
        for name, value in backend_settings(request.param, data_dir, milvus_uri).items():
            overrides.setdefault(name, value)
        settings = Settings(pack_dir=pack_dir, _env_file=None, **overrides)
        with TestClient(create_app(settings)) as client:
            yield client

    make.backend = request.param
    return make


@pytest.fixture
def one_face_pack(tmp_path: Path) -> Path:
    return make_manifest_pack(
        tmp_path / "pack", [BIG_FACE], embedding_size=EMBEDDING_SIZE, threshold=THRESHOLD
    )


@pytest.fixture
def two_face_pack(tmp_path: Path) -> Path:
    return make_manifest_pack(
        tmp_path / "pack2",
        [BIG_FACE, SMALL_FACE],
        embedding_size=EMBEDDING_SIZE,
        threshold=THRESHOLD,
    )


def photo(seed: int) -> bytes:
    return noise_photo(seed)


def image_file(data: bytes) -> dict:
    return {"image": ("photo.png", data, "image/png")}


def error_code(response) -> str:
    return response.json()["error"]["code"]


def create(client, name: str, **metadata) -> str:
    response = client.post("/identities", json={"name": name, "metadata": metadata})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def enrol(client, identity_id: str, data: bytes) -> dict:
    response = client.post(f"/identities/{identity_id}/faces", files=image_file(data))
    assert response.status_code == 201, response.text
    return response.json()


def test_create_identity_answers_201_with_no_faces(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        response = client.post("/identities", json={"name": "Ada", "metadata": {"team": "x"}})
        assert response.status_code == 201
        body = response.json()
        assert body["name"] == "Ada" and body["metadata"] == {"team": "x"}
        assert body["faces"] == [] and len(body["id"]) == 32
        assert client.get(f"/identities/{body['id']}").json()["name"] == "Ada"


def test_identity_requests_are_validated(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        assert error_code(client.post("/identities", json={})) == "missing_field"
        assert error_code(client.post("/identities", json={"name": "  "})) == "validation_error"
        huge = {"name": "Ada", "metadata": {"notes": "x" * 20_000}}
        assert client.post("/identities", json=huge).status_code == 422
        assert client.get("/identities", params={"limit": 0}).status_code == 422


def test_identities_are_paged_in_creation_order(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        ids = [create(client, f"person {i}") for i in range(5)]
        first = client.get("/identities", params={"limit": 2}).json()
        second = client.get("/identities", params={"limit": 2, "offset": 2}).json()
        last = client.get("/identities", params={"limit": 2, "offset": 4}).json()
    assert first["total"] == 5 and first["limit"] == 2 and first["offset"] == 0
    assert [i["id"] for i in first["items"] + second["items"] + last["items"]] == ids
    assert first["items"][0]["face_count"] == 0


def test_page_offset_past_sqlite_integers_is_422_not_500(app_client, one_face_pack):
    # Found by tests/service/test_api_fuzz.py: SQLite cannot bind this OFFSET (OverflowError).
    with app_client(one_face_pack) as client:
        create(client, "Ada")
        too_far = client.get("/identities", params={"offset": 32147482173365542912})
        last = client.get("/identities", params={"offset": 2**63 - 1})
    assert too_far.status_code == 422 and error_code(too_far) == "validation_error"
    assert last.status_code == 200 and last.json()["items"] == [] and last.json()["total"] == 1


# Metadata JSON that Python parses but no JSON answer can carry: an unpaired surrogate (in a
# value or a key) and the non-numbers NaN and Infinity (1e400 reads as Infinity).
UNREPRESENTABLE_METADATA = [
    b'{"note": "\\udfff"}',
    b'{"\\ud800": 1}',
    b'{"ratio": NaN}',
    b'{"ratio": -Infinity}',
    b'{"ratio": 1e400}',
]


@pytest.mark.parametrize("metadata", UNREPRESENTABLE_METADATA)
def test_metadata_json_cannot_carry_is_422_and_leaves_the_gallery_readable(
    app_client, one_face_pack, metadata
):
    # Found by tests/service/test_api_fuzz.py: a lone surrogate was stored, then every answer
    # naming that identity (GET /identities included) failed to encode: 500 until deleted;
    # NaN and Infinity were stored and came back as null.
    headers = {"content-type": "application/json"}
    with app_client(one_face_pack) as client:
        identity_id = create(client, "Ada", team="x")
        before = client.get(f"/identities/{identity_id}").json()
        created = client.post(
            "/identities",
            content=b'{"name": "Bob", "metadata": ' + metadata + b"}",
            headers=headers,
        )
        patched = client.patch(
            f"/identities/{identity_id}",
            content=b'{"metadata": ' + metadata + b"}",
            headers=headers,
        )
        listed = client.get("/identities")
        after = client.get(f"/identities/{identity_id}").json()
    assert created.status_code == 422 and error_code(created) == "validation_error"
    assert patched.status_code == 422 and error_code(patched) == "validation_error"
    assert listed.status_code == 200 and listed.json()["total"] == 1
    assert after == before


def test_patch_renames_and_search_shows_new_name(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        identity_id = create(client, "Ada", born=1815)
        enrol(client, identity_id, photo(1))
        patched = client.patch(f"/identities/{identity_id}", json={"name": "Ada Lovelace"})
        assert patched.status_code == 200
        assert patched.json()["name"] == "Ada Lovelace"
        assert patched.json()["metadata"] == {"born": 1815}
        found = client.post("/identify", files=image_file(photo(1))).json()
        assert found["results"][0]["identity"]["name"] == "Ada Lovelace"
        assert error_code(client.patch("/identities/nobody", json={"name": "x"})) == "not_found"


def test_enrolment_answers_201_with_face_id_quality_and_box(app_client, one_face_pack):
    data = photo(1)
    with app_client(one_face_pack) as client:
        identity_id = create(client, "Ada")
        body = enrol(client, identity_id, data)
        details = client.get(f"/identities/{identity_id}").json()
        model = client.get("/readyz").json()["model"]
    assert body["quality"]["embedding_norm"] > 0 and body["identity_id"] == identity_id
    assert body["box"] == pytest.approx(list(BIG_FACE.box), abs=0.01)
    assert body["model"] == model
    assert [f["face_id"] for f in details["faces"]] == [body["face_id"]]
    assert details["face_count"] == 1
    stored = details["faces"][0]
    assert stored["current_model"] is True and stored["model"] == model
    assert "embedding" not in stored
    assert stored["image_sha256"] == hashlib.sha256(data).hexdigest()


def test_enrolment_refusals_have_reason_codes(app_client, tmp_path, two_face_pack):
    no_face = make_manifest_pack(tmp_path / "none", [], embedding_size=EMBEDDING_SIZE)
    tiny = make_manifest_pack(tmp_path / "tiny", [TINY_FACE], embedding_size=EMBEDDING_SIZE)
    with app_client(no_face, data_dir=tmp_path / "d1") as client:
        identity_id = create(client, "Ada")
        assert (
            error_code(client.post(f"/identities/{identity_id}/faces", files=image_file(photo(1))))
            == "no_face"
        )
        assert error_code(client.post(f"/identities/{identity_id}/faces")) == "missing_field"
    with app_client(tiny, data_dir=tmp_path / "d2") as client:
        identity_id = create(client, "Ada")
        response = client.post(f"/identities/{identity_id}/faces", files=image_file(photo(1)))
        assert response.status_code == 422 and error_code(response) == "face_too_small"
    with app_client(two_face_pack, data_dir=tmp_path / "d3", require_single_face=True) as client:
        identity_id = create(client, "Ada")
        response = client.post(f"/identities/{identity_id}/faces", files=image_file(photo(1)))
        assert response.status_code == 422 and error_code(response) == "multiple_faces"
    with app_client(two_face_pack, data_dir=tmp_path / "d4", min_enrol_quality=1e9) as client:
        identity_id = create(client, "Ada")
        response = client.post(f"/identities/{identity_id}/faces", files=image_file(photo(1)))
        assert response.status_code == 422 and error_code(response) == "low_quality"
        assert client.get(f"/identities/{identity_id}").json()["faces"] == []


def test_enrolling_into_unknown_identity_is_404(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        response = client.post("/identities/nobody/faces", files=image_file(photo(1)))
        assert response.status_code == 404 and error_code(response) == "not_found"


def test_two_face_enrolment_takes_the_largest_face(app_client, two_face_pack):
    with app_client(two_face_pack) as client:
        body = enrol(client, create(client, "Ada"), photo(2))
    assert body["box"] == pytest.approx(list(BIG_FACE.box), abs=0.01)


def test_identify_finds_enrolled_person_and_calls_strangers_unknown(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        ada = create(client, "Ada")
        bob = create(client, "Bob")
        ada_face = enrol(client, ada, photo(1))
        enrol(client, bob, photo(2))
        known = client.post("/identify", files=image_file(photo(1)))
        stranger = client.post("/identify", files=image_file(photo(3)))
    assert known.status_code == 200
    body = known.json()
    assert body["threshold"] == THRESHOLD and body["model"].startswith("synthetic@")
    [result] = body["results"]
    assert result["identity"] == {"id": ada, "name": "Ada"}
    assert result["candidates"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert result["candidates"][0]["face_id"] == ada_face["face_id"]
    assert [c["identity_id"] for c in result["candidates"]] == [ada, bob]
    assert result["face"]["box"] == pytest.approx(list(BIG_FACE.box), abs=0.01)
    assert {"decode", "detect", "embed", "search", "total"} <= set(body["timings_ms"])
    [unknown] = stranger.json()["results"]
    assert unknown["candidates"][0]["similarity"] < THRESHOLD  # the fixture's premise
    assert unknown["identity"] is None
    assert len(unknown["candidates"]) == 2  # candidates are listed even when unknown


def test_identify_top_k_and_threshold_from_form_or_query(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        ids = [create(client, f"p{i}") for i in range(4)]
        for seed, identity_id in enumerate(ids, start=10):
            enrol(client, identity_id, photo(seed))
        query = photo(10)
        form = client.post("/identify", files=image_file(query), data={"top_k": "2"}).json()
        by_query = client.post("/identify", params={"top_k": 3}, files=image_file(query)).json()
        strict = client.post("/identify", files=image_file(query), params={"threshold": 1.0}).json()
        lenient = client.post(
            "/identify", files=image_file(photo(99)), data={"threshold": "-1"}
        ).json()
        bad = client.post("/identify", files=image_file(query), data={"top_k": "0"})
    assert len(form["results"][0]["candidates"]) == 2
    assert len(by_query["results"][0]["candidates"]) == 3
    assert strict["threshold"] == 1.0
    top = strict["results"][0]["candidates"][0]["similarity"]
    assert (strict["results"][0]["identity"] is None) == (top < 1.0)
    assert lenient["threshold"] == -1 and lenient["results"][0]["identity"] is not None
    assert bad.status_code == 422


def test_identify_all_faces_answers_for_each_face(app_client, two_face_pack):
    with app_client(two_face_pack) as client:
        enrol(client, create(client, "Ada"), photo(1))
        largest = client.post("/identify", files=image_file(photo(1))).json()
        every = client.post("/identify", files=image_file(photo(1)), data={"all_faces": "true"})
    assert len(largest["results"]) == 1
    faces = every.json()["results"]
    assert [f["face"]["box"] for f in faces] == [
        pytest.approx(list(BIG_FACE.box), abs=0.01),
        pytest.approx(list(SMALL_FACE.box), abs=0.01),
    ]
    assert faces[0]["identity"]["name"] == "Ada"


def test_identify_on_empty_gallery_is_unknown_and_without_face_is_422(
    app_client, tmp_path, one_face_pack
):
    with app_client(one_face_pack) as client:
        body = client.post("/identify", files=image_file(photo(1))).json()
        assert body["results"][0]["identity"] is None and body["results"][0]["candidates"] == []
        assert error_code(client.post("/identify")) == "missing_field"
    no_face = make_manifest_pack(tmp_path / "none", [], embedding_size=EMBEDDING_SIZE)
    with app_client(no_face, data_dir=tmp_path / "d2") as client:
        assert error_code(client.post("/identify", files=image_file(photo(1)))) == "no_face"


def test_deleted_identity_and_face_never_come_back(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        ada, bob = create(client, "Ada"), create(client, "Bob")
        enrol(client, ada, photo(1))
        bob_faces = [enrol(client, bob, photo(s))["face_id"] for s in (2, 3)]
        assert client.delete(f"/identities/{ada}").status_code == 204
        assert error_code(client.get(f"/identities/{ada}")) == "not_found"
        assert client.delete(f"/identities/{ada}").status_code == 404
        after = client.post("/identify", files=image_file(photo(1)), data={"top_k": 10}).json()
        assert ada not in {c["identity_id"] for c in after["results"][0]["candidates"]}

        assert client.delete(f"/identities/{bob}/faces/{bob_faces[0]}").status_code == 204
        assert client.delete(f"/identities/{bob}/faces/{bob_faces[0]}").status_code == 404
        [result] = client.post("/identify", files=image_file(photo(2))).json()["results"]
        assert result["candidates"][0]["face_id"] == bob_faces[1]
        assert [f["face_id"] for f in client.get(f"/identities/{bob}").json()["faces"]] == [
            bob_faces[1]
        ]
        assert client.get("/identities").json()["total"] == 1


def test_verify_against_identity_uses_its_best_face(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        ada = create(client, "Ada")
        enrol(client, ada, photo(5))
        best = enrol(client, ada, photo(1))
        same = client.post("/verify", files=image_file(photo(1)), data={"identity_id": ada})
        other = client.post("/verify", files=image_file(photo(3)), data={"identity_id": ada})
        missing = client.post("/verify", files=image_file(photo(1)), data={"identity_id": "nobody"})
        empty = create(client, "No faces")
        faceless = client.post("/verify", files=image_file(photo(1)), data={"identity_id": empty})
    body = same.json()
    assert same.status_code == 200 and body["match"] is True
    assert body["identity"] == {"id": ada, "name": "Ada"} and body["face_id"] == best["face_id"]
    assert body["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert other.json()["match"] is False
    assert missing.status_code == 404
    assert faceless.status_code == 409 and error_code(faceless) == "identity_has_no_faces"


def test_fresh_app_on_same_data_dir_sees_every_identity(app_client, one_face_pack, tmp_path):
    with app_client(one_face_pack) as client:
        ids = [create(client, f"p{i}") for i in range(3)]
        for seed, identity_id in enumerate(ids, start=1):
            enrol(client, identity_id, photo(seed))
    with app_client(one_face_pack) as client:
        listed = client.get("/identities").json()
        found = client.post("/identify", files=image_file(photo(2))).json()
    assert [i["id"] for i in listed["items"]] == ids
    assert found["results"][0]["identity"]["id"] == ids[1]


def test_gallery_from_another_model_answers_409_with_how_to_re_enrol(
    app_client, tmp_path, one_face_pack
):
    other_pack = make_manifest_pack(
        tmp_path / "other", [BIG_FACE], embedding_size=16, name="other", threshold=THRESHOLD
    )
    with app_client(other_pack) as client:
        ada = create(client, "Ada")
        old_face = enrol(client, ada, photo(1))["face_id"]
    with app_client(one_face_pack) as client:
        mismatch = client.post("/identify", files=image_file(photo(1)))
        assert mismatch.status_code == 409 and error_code(mismatch) == "model_mismatch"
        assert "re-enrol" in mismatch.json()["error"]["message"].lower()
        verify = client.post("/verify", files=image_file(photo(1)), data={"identity_id": ada})
        assert verify.status_code == 409
        faces = client.get(f"/identities/{ada}").json()["faces"]
        assert [f["current_model"] for f in faces] == [False]
        # The documented way out: enrol again with the loaded model, delete the old face.
        enrol(client, ada, photo(1))
        assert client.delete(f"/identities/{ada}/faces/{old_face}").status_code == 204
        healed = client.post("/identify", files=image_file(photo(1)))
        assert healed.status_code == 200
        assert healed.json()["results"][0]["identity"]["id"] == ada


def test_metrics_show_gallery_size_index_and_search(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        enrol(client, create(client, "Ada"), photo(1))
        create(client, "Bob")
        client.post("/identify", files=image_file(photo(1)))
        text = client.get("/metrics").text
    assert "faceverify_gallery_identities 2.0" in text
    assert "faceverify_gallery_faces 1.0" in text
    index_info = {"sqlite": 'device="cpu",type="flat"', "milvus": 'device="remote",type="milvus"'}
    assert f"faceverify_index_info{{{index_info[app_client.backend]}}} 1.0" in text
    assert "faceverify_search_duration_seconds_count 1.0" in text
    assert 'faceverify_best_match_similarity_bucket{le="1.0"} 1.0' in text


def test_parallel_enrol_and_identify_requests_all_succeed(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        ids = [create(client, f"p{i}") for i in range(4)]
        enrol(client, ids[0], photo(100))
        failures: list[str] = []
        wrong: list[str] = []

        def enrol_many(identity_id: str, seeds: range) -> None:
            for seed in seeds:
                response = client.post(
                    f"/identities/{identity_id}/faces", files=image_file(photo(seed))
                )
                if response.status_code != 201:
                    failures.append(response.text)

        def identify_many() -> None:
            for _ in range(8):
                response = client.post("/identify", files=image_file(photo(100)))
                if response.status_code != 200:
                    failures.append(response.text)
                elif response.json()["results"][0]["identity"]["id"] != ids[0]:
                    wrong.append(response.text)

        threads = [
            threading.Thread(target=enrol_many, args=(ids[i], range(10 * i, 10 * i + 6)))
            for i in range(1, 4)
        ] + [threading.Thread(target=identify_many) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == [] and wrong == []
        counts = [client.get(f"/identities/{i}").json()["face_count"] for i in ids]
    assert counts == [1, 6, 6, 6]


def test_enrolment_from_an_embedding_is_found_and_checks_model_size_and_values(
    app_client, one_face_pack
):
    with app_client(one_face_pack) as client:
        model = client.get("/readyz").json()["model"]
        embedding = client.post("/embed", files=image_file(photo(7))).json()["faces"][0]
        vector = embedding["embedding"]
        ada = create(client, "Ada")

        def post(body, identity_id=ada):
            return client.post(f"/identities/{identity_id}/embeddings", json=body)

        enrolled = post({"model": model, "embedding": [2 * v for v in vector]})
        other = post({"model": "othermodel@ba9876543210", "embedding": vector})
        short = post({"model": model, "embedding": vector[:-1]})
        missing = post({"embedding": vector})
        unknown = post({"model": model, "embedding": vector}, identity_id="nobody")
        not_finite = client.post(
            f"/identities/{ada}/embeddings",
            content=b'{"model": "%s", "embedding": [NaN%s]}'
            % (model.encode(), b", 0.1" * (len(vector) - 1)),
            headers={"content-type": "application/json"},
        )
        found = client.post("/identify", files=image_file(photo(7))).json()
        faces = client.get(f"/identities/{ada}").json()["faces"]
    assert enrolled.status_code == 201, enrolled.text
    body = enrolled.json()
    assert body["model"] == model and body["current_model"] is True
    assert body["det_score"] == 0.0
    assert [f["face_id"] for f in faces] == [body["face_id"]]
    [result] = found["results"]
    assert result["identity"]["id"] == ada
    assert result["candidates"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert other.status_code == 409 and error_code(other) == "model_mismatch"
    assert "othermodel@ba9876543210" in other.json()["error"]["message"]
    assert short.status_code == 422 and error_code(short) == "validation_error"
    assert missing.status_code == 422 and error_code(missing) == "missing_field"
    assert unknown.status_code == 404 and error_code(unknown) == "not_found"
    assert not_finite.status_code == 422 and error_code(not_finite) == "validation_error"


def _enrol_random_embeddings(client, count: int, seed: int) -> list[str]:
    model = client.get("/readyz").json()["model"]
    rng = np.random.default_rng(seed)
    ids = []
    for number in range(count):
        identity_id = create(client, f"r{number}")
        vector = rng.standard_normal(EMBEDDING_SIZE).tolist()
        answer = client.post(
            f"/identities/{identity_id}/embeddings", json={"model": model, "embedding": vector}
        )
        assert answer.status_code == 201, answer.text
        ids.append(identity_id)
    return ids


def test_identify_target_fpir_uses_a_threshold_measured_on_the_gallery(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        _enrol_random_embeddings(client, 100, seed=5)
        by_form = client.post("/identify", files=image_file(photo(3)), data={"target_fpir": "0.1"})
        by_query = client.post("/identify", params={"target_fpir": 0.1}, files=image_file(photo(3)))
        both = client.post(
            "/identify", files=image_file(photo(3)), data={"target_fpir": "0.1", "threshold": "0.3"}
        )
        too_rare = client.post(
            "/identify", files=image_file(photo(3)), data={"target_fpir": "0.001"}
        )
        plain = client.post("/identify", files=image_file(photo(3))).json()
    assert by_form.status_code == 200, by_form.text
    body = by_form.json()
    assert body["threshold_source"] == "fpir:0.1@n=100"
    fpir = body["fpir"]
    assert fpir["method"] == "leave-one-out" and fpir["probes"] == 100
    assert fpir["estimate"] <= 0.1 and fpir["interval"][0] <= fpir["estimate"]
    assert fpir["interval"][1] >= fpir["estimate"]
    # 100 random 32-d identities: the best of 99 impostor scores sits far above the 1:1 default
    assert body["threshold"] > THRESHOLD - 0.2
    assert by_query.json()["threshold"] == body["threshold"]
    assert both.status_code == 422 and "at most one" in both.json()["error"]["message"]
    assert too_rare.status_code == 422
    assert "needs 10000 enrolled identities" in too_rare.json()["error"]["message"]
    assert plain["threshold_source"] == "pack default" and plain["fpir"] is None


def test_identify_fpir_setting_is_the_default_and_an_explicit_threshold_still_wins(
    app_client, one_face_pack
):
    with app_client(one_face_pack, identify_fpir=0.2) as client:
        _enrol_random_embeddings(client, 50, seed=6)
        default = client.post("/identify", files=image_file(photo(4))).json()
        explicit = client.post("/identify", files=image_file(photo(4)), data={"threshold": "0.9"})
    assert default["threshold_source"] == "fpir:0.2@n=50"
    assert explicit.json()["threshold_source"] == "request"
    assert explicit.json()["fpir"] is None


def test_status_and_metrics_show_the_fpir_thresholds_once_measured(app_client, one_face_pack):
    with app_client(one_face_pack) as client:
        _enrol_random_embeddings(client, 100, seed=7)
        before = client.get("/status").json()["identify_fpir"]
        client.post("/identify", files=image_file(photo(3)), data={"target_fpir": "0.1"})
        after = client.get("/status").json()["identify_fpir"]
        metrics = client.get("/metrics").text
    assert before == {"default_target": None, "measured": None, "error": None}
    measured = after["measured"]
    assert measured["gallery_size"] == 100 and measured["probes"] == 100
    assert measured["thresholds"]["0.1"]["method"] == "leave-one-out"
    assert "needs 1000 enrolled identities" in measured["thresholds"]["0.01"]["unsupported"]
    threshold = measured["thresholds"]["0.1"]["threshold"]
    [exported] = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('faceverify_identify_fpir_threshold{target="0.1"}')
    ]
    assert exported == pytest.approx(threshold, abs=1e-6)
    assert 'faceverify_identify_fpir_threshold{target="0.01"} NaN' in metrics
    assert "faceverify_identify_fpir_probes 100.0" in metrics
