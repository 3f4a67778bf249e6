"""The audit trail: every gallery change is one log line (time, key name, action, identity) and
one count by action and key; no names, metadata or embeddings in it."""

from __future__ import annotations

import json
import logging

import pytest
from synthetic_models import SyntheticFace, make_manifest_pack
from testimages import encode, noise_image

from service.keys import create_key


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.entries: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(json.loads(record.getMessage().removeprefix("audit ")))


@pytest.fixture
def audit_lines():
    logger = logging.getLogger("service.audit")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.entries
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_gallery_changes_are_logged_by_key_and_counted_without_it(
    app_client, tmp_path, audit_lines
):
    pack = make_manifest_pack(
        tmp_path / "pack", [SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.9)]
    )
    keys = tmp_path / "keys.json"
    _, secret = create_key(keys, "enroller", ["gallery:write"])
    headers = {"X-API-Key": secret}
    photo = {"image": ("a.png", encode(noise_image(640, seed=3), ".png"), "image/png")}
    with app_client(pack, api_keys_file=keys) as client:
        body = {"name": "Secret Person", "metadata": {"employee": "e-42"}}
        identity = client.post("/identities", json=body, headers=headers).json()["id"]
        client.patch(f"/identities/{identity}", json={"name": "Other"}, headers=headers)
        face = client.post(f"/identities/{identity}/faces", files=photo, headers=headers)
        face_id = face.json()["face_id"]
        client.delete(f"/identities/{identity}/faces/{face_id}", headers=headers)
        client.delete(f"/identities/{identity}", headers=headers)
        metrics = client.get("/metrics").text
    actions = [entry["action"] for entry in audit_lines]
    assert actions == [
        "identity_create",
        "identity_update",
        "face_add",
        "face_delete",
        "identity_delete",
    ]
    assert all(e["key"] == "enroller" and e["identity_id"] == identity for e in audit_lines)
    assert audit_lines[2]["face_id"] == face_id and "time" in audit_lines[0]
    text = json.dumps(audit_lines)
    assert "Secret Person" not in text and "e-42" not in text and "embedding" not in text
    # The open scrape counts changes but never names a key.
    assert 'faceverify_gallery_changes_total{action="face_add"} 1.0' in metrics
    assert "enroller" not in metrics


def test_without_keys_changes_are_audited_as_anonymous(app_client, tmp_path, audit_lines):
    with app_client(make_manifest_pack(tmp_path / "pack")) as client:
        client.post("/identities", json={"name": "a"})
        refused = client.delete("/identities/unknown")
        assert refused.status_code == 404
    assert [(e["key"], e["action"]) for e in audit_lines] == [("anonymous", "identity_create")]
