"""Milvus failing under a running service: killed, restarted on its data, frozen, started late.

Each scenario runs `python -m service` on a milvus-lite server of its own (the synthetic model
pack, short gallery bounds: `milvus_support`) and breaks the server by pid. What a client sees
is asserted (status, stable code, `Retry-After`, time to answer), what `/readyz` and `/healthz`
say meanwhile, that `/verify` of two photos (no gallery) is not held up, recovery without
restarting the service, and that no acknowledged enrolment is lost. Also here: the rule for
identity ids (one for both backends) and the bounded gallery calls behind every route.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from milvus_support import (
    GALLERY_CONCURRENCY,
    GALLERY_TIMEOUT_S,
    MARGIN_S,
    PROBE_LIMIT_S,
    MilvusLiteServer,
    backend_settings,
    milvus_prefix,
    photo,
    service_on,
    status_of,
    timed,
    two_photos,
    wait_for,
)
from synthetic_models import SyntheticFace, make_manifest_pack

from service.api.gallery_calls import GALLERY_WAITING_PER_THREAD, GalleryCalls
from service.errors import ErrorCode, ServiceError
from service.gallery.interface import new_id, valid_id

pytest.importorskip("pymilvus", reason="the Milvus fault tests need the dev extra (pymilvus)")
pytest.importorskip("milvus_lite", reason="the Milvus fault tests need the dev extra (milvus-lite)")

FACE = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.8)
EMBEDDING_SIZE = 32
# An answer bounded by the gallery timeout, as a client measures it.
BOUNDED_S = GALLERY_TIMEOUT_S + MARGIN_S
# Concurrent gallery requests sent at a frozen Milvus: more than may run and wait at once.
FLOOD = GALLERY_CONCURRENCY * (1 + GALLERY_WAITING_PER_THREAD) + 10
# Time a recovery may take: the reconnect pause (at most 5 s) plus loading the collections.
RECOVERY_S = 20.0


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return make_manifest_pack(tmp_path / "pack", [FACE], embedding_size=EMBEDDING_SIZE)


@pytest.fixture
def milvus(tmp_path: Path):
    server = MilvusLiteServer(tmp_path / "milvus")
    try:
        yield server
    finally:
        server.stop()


def assert_unavailable(answer, within_s: float = BOUNDED_S) -> None:
    assert answer.response.status_code == 503, answer.response.text
    assert answer.code == ErrorCode.GALLERY_UNAVAILABLE
    assert int(answer.response.headers["Retry-After"]) >= 1
    assert answer.seconds < within_s, f"answered after {answer.seconds:.1f} s"


def enrolled(client: httpx.Client, name: str, seeds: list[int]) -> tuple[str, set[str]]:
    identity = client.post("/identities", json={"name": name}).json()["id"]
    faces = set()
    for seed in seeds:
        response = client.post(f"/identities/{identity}/faces", files=photo(seed))
        assert response.status_code == 201, response.text
        faces.add(response.json()["face_id"])
    return identity, faces


def face_ids(client: httpx.Client, identity: str) -> set[str]:
    response = client.get(f"/identities/{identity}")
    assert response.status_code == 200, response.text
    return {face["face_id"] for face in response.json()["faces"]}


# --- Milvus killed -------------------------------------------------------------------------


def test_killed_milvus_answers_gallery_unavailable_in_bounded_time_and_probes_stay_fast(
    tmp_path, pack, milvus
):
    with (
        service_on(pack, tmp_path / "data", milvus) as service,
        httpx.Client(base_url=service.url, timeout=30) as client,
    ):
        identity, _ = enrolled(client, "Ada", [1])
        milvus.kill()
        for method, path, kwargs in [
            ("GET", f"/identities/{identity}", {}),
            ("GET", "/identities", {}),
            ("POST", "/identities", {"json": {"name": "Bob"}}),
            ("DELETE", f"/identities/{identity}", {}),
            ("POST", "/identify", {"files": photo(1)}),
            ("POST", f"/identities/{identity}/faces", {"files": photo(2)}),
            ("POST", "/verify", {"files": photo(1), "data": {"identity_id": identity}}),
        ]:
            assert_unavailable(timed(client, method, path, **kwargs))
        wait_for(lambda: status_of(client, "/readyz") == 503, 5)
        ready = timed(client, "GET", "/readyz")
        assert ready.response.json()["error"]["code"] == "not_ready"
        assert "gallery" in ready.response.json()["error"]["message"]
        assert ready.seconds < GALLERY_TIMEOUT_S
        health = timed(client, "GET", "/healthz")
        assert health.response.status_code == 200 and health.seconds < PROBE_LIMIT_S
        pair = timed(client, "POST", "/verify", files=two_photos())
        assert pair.response.status_code == 200, pair.response.text
        # One line per failure in the log, not pymilvus's traceback of each one.
        assert "Traceback" not in service.output()


# --- Milvus restarted on its data ----------------------------------------------------------


def test_restarted_milvus_recovers_without_a_service_restart_and_keeps_every_acknowledged_face(
    tmp_path, pack, milvus
):
    acknowledged: set[str] = set()
    stop = threading.Event()
    with (
        service_on(pack, tmp_path / "data", milvus) as service,
        httpx.Client(base_url=service.url, timeout=30) as client,
    ):
        identity, faces = enrolled(client, "Ada", [1, 2])
        acknowledged |= faces

        def enrol_meanwhile() -> None:
            with httpx.Client(base_url=service.url, timeout=30) as writer:
                seed = 100
                while not stop.is_set():
                    seed += 1
                    response = writer.post(f"/identities/{identity}/faces", files=photo(seed))
                    if response.status_code == 201:
                        acknowledged.add(response.json()["face_id"])
                    else:
                        assert response.status_code == 503, response.text
                        time.sleep(0.1)

        writer = threading.Thread(target=enrol_meanwhile)
        writer.start()
        try:
            time.sleep(1.0)
            milvus.restart()  # SIGKILL, then a new server on the same port and data folder
            recovered = wait_for(lambda: status_of(client, "/readyz") == 200, RECOVERY_S)
            time.sleep(1.0)
        finally:
            stop.set()
            writer.join(timeout=60)
        assert face_ids(client, identity) >= acknowledged
        found = client.post("/identify", files=photo(1)).json()["results"][0]["identity"]
        assert found is not None and found["id"] == identity
        assert client.post(f"/identities/{identity}/faces", files=photo(7)).status_code == 201
        assert recovered < RECOVERY_S
    # A service started on a restarted Milvus (its collections released) becomes ready.
    milvus.restart()
    with (
        service_on(pack, tmp_path / "data", milvus) as service,
        httpx.Client(base_url=service.url, timeout=30) as client,
    ):
        assert face_ids(client, identity) >= acknowledged


# --- Milvus frozen -------------------------------------------------------------------------


def test_frozen_milvus_gives_bounded_answers_and_does_not_hold_up_probes_or_verify(
    tmp_path, pack, milvus
):
    with (
        service_on(pack, tmp_path / "data", milvus) as service,
        httpx.Client(base_url=service.url, timeout=60) as client,
    ):
        identity, faces = enrolled(client, "Ada", [1])
        milvus.freeze()
        try:
            with ThreadPoolExecutor(FLOOD + 1) as pool:
                stuck = [
                    pool.submit(timed, client, "GET", f"/identities/{identity}")
                    for _ in range(FLOOD)
                ]
                probing = pool.submit(timed, client, "GET", "/readyz")
                time.sleep(0.2)  # the flood is in: every gallery thread waits on Milvus
                health = timed(client, "GET", "/healthz")
                pair = timed(client, "POST", "/verify", files=two_photos())
                # The readiness answer is reused for up to a second, then re-checked.
                wait_for(lambda: status_of(client, "/readyz") == 503, 5)
                ready = timed(client, "GET", "/readyz")
                answers = [future.result() for future in stuck]
            for answer in answers:
                assert_unavailable(answer)
            assert health.response.status_code == 200 and health.seconds < PROBE_LIMIT_S
            assert ready.response.status_code == 503 and ready.seconds < GALLERY_TIMEOUT_S
            assert probing.result().seconds < GALLERY_TIMEOUT_S
            assert pair.response.status_code == 200, pair.response.text
            assert pair.seconds < BOUNDED_S
        finally:
            milvus.thaw()
        wait_for(lambda: status_of(client, "/readyz") == 200, RECOVERY_S)
        assert face_ids(client, identity) == faces


# --- Milvus started after the service --------------------------------------------------------


def test_service_started_before_milvus_becomes_ready_when_milvus_is_up(tmp_path, pack):
    milvus = MilvusLiteServer(tmp_path / "milvus", start=False)
    try:
        with (
            service_on(pack, tmp_path / "data", milvus) as service,
            httpx.Client(base_url=service.url, timeout=30) as client,
        ):
            health = timed(client, "GET", "/healthz")
            assert health.response.status_code == 200 and health.seconds < PROBE_LIMIT_S

            def says_gallery() -> bool:  # once the models are loaded, the gallery is the reason
                answer = client.get("/readyz")
                return answer.status_code == 503 and "gallery" in answer.json()["error"]["message"]

            wait_for(says_gallery, 30)
            ready = timed(client, "GET", "/readyz")
            assert ready.response.status_code == 503 and ready.seconds < GALLERY_TIMEOUT_S
            assert_unavailable(timed(client, "GET", "/identities"))
            milvus.start()
            wait_for(lambda: status_of(client, "/readyz") == 200, RECOVERY_S)
            identity, faces = enrolled(client, "Ada", [1])
            assert face_ids(client, identity) == faces
    finally:
        milvus.stop()


# --- identity ids: one rule for both backends ---------------------------------------------


@pytest.mark.parametrize(
    "identity_id",
    [new_id(), "emp-1001", "a", "jane.doe@example.org", "team:42_b", "A" * 128],
)
def test_id_rule_accepts_generated_and_imported_ids(identity_id):
    assert valid_id(identity_id)


@pytest.mark.parametrize(
    "identity_id",
    ["", "é", "caf\u00e9", "\U0001f600", "a\x00b", "\xff", "a/b", "-lead", "a b", "A" * 129],
)
def test_id_rule_refuses_what_no_backend_can_hold_as_an_id(identity_id):
    assert not valid_id(identity_id)


@pytest.mark.parametrize("backend", ["sqlite", "milvus"])
@pytest.mark.parametrize("raw", ["%C3%A9", "%F0%9F%98%80", "a%00b", "%FF", "caf%C3%A9"])
def test_non_ascii_ids_are_refused_with_validation_error_on_both_backends(
    tmp_path, app_client, backend, raw, request
):
    settings = {"gallery_timeout_s": 5.0}
    if backend == "milvus":
        uri = request.getfixturevalue("milvus_uri")
        settings |= backend_settings("milvus", tmp_path / "data", uri)
    pack = make_manifest_pack(tmp_path / "pack", [FACE], embedding_size=EMBEDDING_SIZE)
    with app_client(pack, **settings) as client:
        identity = client.post("/identities", json={"name": "Ada"}).json()["id"]
        answers = [
            client.get(f"/identities/{raw}"),
            client.patch(f"/identities/{raw}", json={"name": "x"}),
            client.delete(f"/identities/{raw}"),
            client.post(f"/identities/{raw}/faces", files=photo(1)),
            client.get(f"/identities/{identity}/faces/{raw}"),
            client.delete(f"/identities/{identity}/faces/{raw}"),
            client.post("/verify", files=photo(1), data={"identity_id": unquote(raw)}),
        ]
        for answer in answers:
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["code"] == "validation_error"
        assert client.get(f"/identities/{identity}").status_code == 200


# --- bounded gallery calls (both backends go through them) ---------------------------------


def test_gallery_call_beyond_the_timeout_answers_gallery_unavailable_with_retry_after():
    calls = GalleryCalls(timeout_s=0.2, concurrency=2)
    try:
        started = time.perf_counter()
        with pytest.raises(ServiceError) as caught:
            asyncio.run(calls.run(time.sleep, 2.0))
        assert time.perf_counter() - started < 1.0
        assert caught.value.code is ErrorCode.GALLERY_UNAVAILABLE
        assert caught.value.headers == {"Retry-After": "1"}
    finally:
        calls.close()


def test_gallery_calls_beyond_the_limit_are_refused_at_once_and_admitted_again_after():
    calls = GalleryCalls(timeout_s=5.0, concurrency=1)
    release = threading.Event()

    async def flood() -> list[object]:
        waiting = [
            asyncio.ensure_future(calls.run(release.wait, 5.0))
            for _ in range(1 + GALLERY_WAITING_PER_THREAD)
        ]
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        with pytest.raises(ServiceError) as refused:
            await calls.run(release.wait, 5.0)
        assert time.perf_counter() - started < 0.1
        assert refused.value.code is ErrorCode.GALLERY_UNAVAILABLE
        release.set()
        done = await asyncio.gather(*waiting)
        done.append(await calls.run(lambda: "again"))
        return done

    try:
        assert asyncio.run(flood()) == [True] * (1 + GALLERY_WAITING_PER_THREAD) + ["again"]
    finally:
        calls.close()


def test_milvus_store_looks_up_any_printable_id_and_refuses_control_characters(
    tmp_path, milvus_uri
):
    from service.gallery.milvus import MilvusStore

    store = MilvusStore(milvus_uri, prefix=milvus_prefix(tmp_path))
    try:
        store.create_identity("Ada", {}, identity_id="emp-1001")
        for unknown in ["é", "caf\u00e9", "\U0001f600", 'a"b', "a\\b", "\ufffd"]:
            assert store.get_identity(unknown) is None
            assert store.faces_of(unknown) == []
            assert store.delete_identity(unknown) is None
        assert store.get_identity("emp-1001").name == "Ada"
        with pytest.raises(ServiceError) as refused:
            store.get_identity("a\x00b")
        assert refused.value.code is ErrorCode.VALIDATION_ERROR
    finally:
        store.close()


def test_stalled_sqlite_gallery_answers_503_in_bounded_time_and_leaves_verify_its_threads(
    tmp_path, app_client, monkeypatch
):
    """The same bounded calls serve the embedded backend: 50 requests stuck on the store get
    503 `gallery_unavailable` within the timeout, and `/verify` of two photos meanwhile is
    answered at once (before, they held every thread of the pool inference uses)."""
    from service.gallery.store import SqliteStore

    pack = make_manifest_pack(tmp_path / "pack", [FACE], embedding_size=EMBEDDING_SIZE)
    stall = threading.Event()

    def stalled(self, identity_id):
        stall.wait(10.0)
        return None

    with app_client(
        pack, gallery_timeout_s=1.0, gallery_busy_timeout_s=0.5, gallery_concurrency=2
    ) as client:
        identity = client.post("/identities", json={"name": "Ada"}).json()["id"]
        monkeypatch.setattr(SqliteStore, "get_identity", stalled)
        try:
            with ThreadPoolExecutor(51) as pool:
                stuck = [
                    pool.submit(timed, client, "GET", f"/identities/{identity}") for _ in range(50)
                ]
                time.sleep(0.3)
                pair = timed(client, "POST", "/verify", files=two_photos())
                answers = [future.result() for future in stuck]
        finally:
            stall.set()
        assert pair.response.status_code == 200, pair.response.text
        assert pair.seconds < 1.0, f"/verify waited {pair.seconds:.1f} s behind the gallery"
        for answer in answers:
            assert_unavailable(answer, within_s=1.0 + MARGIN_S)
