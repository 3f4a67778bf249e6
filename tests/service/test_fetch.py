"""Pack download against a local HTTP server (never the internet): verified install, refusal
of bad checksums and hostile archives, resume, and a fast, helpful failure when offline."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from synthetic_models import DETECTOR_FILE, RECOGNIZER_FILE, SyntheticFace, make_pack_folder

from service.packs import Catalogue, CatalogueEntry, CatalogueFile, load_pack
from service.packtools.fetch import FetchError, fetch_pack

PACK = "tinypack"


@dataclass
class FileServer:
    """Serves `files` over HTTP on 127.0.0.1, honouring `Range: bytes=N-` unless told not to."""

    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    bytes_sent: int = 0
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            byte_range = self.headers.get("Range")
            state.requests.append((self.path, byte_range))
            body = state.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            start = 0
            if byte_range and state.honour_range:
                start = int(byte_range.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])
            state.bytes_sent += len(body) - start

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(scope="module")
def pack_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = make_pack_folder(
        tmp_path_factory.mktemp("source"), [SyntheticFace.from_box((50.0, 60.0, 200.0, 240.0))]
    )
    return {name: (folder / name).read_bytes() for name in (DETECTOR_FILE, RECOGNIZER_FILE)}


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def catalogue_for(
    url: str | None, archive: bytes, files: dict[str, bytes], **changes: object
) -> Catalogue:
    entry = CatalogueEntry(
        name=PACK,
        url=url,
        archive_sha256=sha256(archive),
        files=[
            CatalogueFile(
                name=name,
                role="detector" if name == DETECTOR_FILE else "recognizer",
                sha256=sha256(data),
            )
            for name, data in files.items()
        ],
        embedding_size=8,
        threshold=0.5,
        threshold_source="test",
        licence="test",
    )
    return Catalogue(packs=[entry.model_copy(update=changes)])


def serve_pack(server: FileServer, files: dict[str, bytes], **changes: object) -> Catalogue:
    archive = make_zip(files)
    server.files[f"{PACK}.zip"] = archive
    return catalogue_for(server.url(f"{PACK}.zip"), archive, files, **changes)


def fetch_error(models_dir: Path, catalogue: Catalogue, name: str = PACK, **kwargs) -> str:
    with pytest.raises(FetchError) as raised:
        fetch_pack(name, models_dir, catalogue=catalogue, progress=False, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_fetch_installs_a_verified_pack_that_loads(
    server: FileServer, pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    catalogue = serve_pack(server, pack_files)

    target = fetch_pack(PACK, tmp_path / "models", catalogue=catalogue, progress=False)

    assert target == tmp_path / "models" / PACK
    assert {path.name: path.read_bytes() for path in target.iterdir()} == pack_files
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == [PACK]  # no leftovers
    assert load_pack(target, catalogue=catalogue).manifest.threshold == 0.5


def test_present_and_verified_pack_is_returned_without_downloading(
    server: FileServer, pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    catalogue = serve_pack(server, pack_files)
    fetch_pack(PACK, tmp_path, catalogue=catalogue, progress=False)
    server.requests.clear()

    assert fetch_pack(PACK, tmp_path, catalogue=catalogue, progress=False) == tmp_path / PACK
    assert server.requests == []


def test_existing_folder_with_altered_files_is_not_overwritten(
    server: FileServer, pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    catalogue = serve_pack(server, pack_files)
    (tmp_path / PACK).mkdir()
    (tmp_path / PACK / DETECTOR_FILE).write_bytes(b"something else")

    message = fetch_error(tmp_path, catalogue)

    assert "delete it and fetch again" in message
    assert (tmp_path / PACK / DETECTOR_FILE).read_bytes() == b"something else"


def test_single_top_level_folder_is_flattened(
    server: FileServer, pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    nested = {f"{PACK}/{name}": data for name, data in pack_files.items()}
    archive = make_zip(nested)
    server.files["nested.zip"] = archive
    catalogue = catalogue_for(server.url("nested.zip"), archive, pack_files)

    target = fetch_pack(PACK, tmp_path, catalogue=catalogue, progress=False)

    assert sorted(path.name for path in target.iterdir()) == sorted(pack_files)


def test_archive_with_bad_checksum_is_refused_and_nothing_is_left(
    server: FileServer, pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    catalogue = serve_pack(server, pack_files, archive_sha256="0" * 64)

    message = fetch_error(tmp_path, catalogue)

    assert "sha256" in message and "deleted" in message
    assert list(tmp_path.iterdir()) == []


def test_file_with_bad_checksum_inside_archive_is_refused_and_nothing_is_left(
    server: FileServer, pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    tampered = {**pack_files, RECOGNIZER_FILE: pack_files[RECOGNIZER_FILE] + b"\0"}
    archive = make_zip(tampered)
    server.files["tampered.zip"] = archive
    catalogue = catalogue_for(server.url("tampered.zip"), archive, pack_files)

    message = fetch_error(tmp_path, catalogue)

    assert f"{RECOGNIZER_FILE} does not match its sha256" in message
    assert list(tmp_path.iterdir()) == []


def test_partial_download_is_resumed_with_a_range_request(
    server: FileServer, pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    catalogue = serve_pack(server, pack_files)
    archive = server.files[f"{PACK}.zip"]
    half = len(archive) // 2
    (tmp_path / f".{PACK}.zip.part").write_bytes(archive[:half])

    target = fetch_pack(PACK, tmp_path, catalogue=catalogue, progress=False)

    assert server.requests == [(f"/{PACK}.zip", f"bytes={half}-")]
    assert server.bytes_sent == len(archive) - half
    assert (target / RECOGNIZER_FILE).read_bytes() == pack_files[RECOGNIZER_FILE]
    assert not (tmp_path / f".{PACK}.zip.part").exists()


def test_server_ignoring_the_range_restarts_the_download(
    server: FileServer, pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    catalogue = serve_pack(server, pack_files)
    server.honour_range = False
    (tmp_path / f".{PACK}.zip.part").write_bytes(b"stale bytes of another download")

    target = fetch_pack(PACK, tmp_path, catalogue=catalogue, progress=False)

    assert (target / DETECTOR_FILE).read_bytes() == pack_files[DETECTOR_FILE]


def test_complete_partial_file_is_verified_without_downloading_again(
    server: FileServer, pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    catalogue = serve_pack(server, pack_files)
    (tmp_path / f".{PACK}.zip.part").write_bytes(server.files[f"{PACK}.zip"])

    fetch_pack(PACK, tmp_path, catalogue=catalogue, progress=False)

    assert server.bytes_sent == 0


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_fails_at_once_saying_how_to_install_by_hand(
    pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/{PACK}.zip"
    catalogue = catalogue_for(url, b"", pack_files)

    started = time.monotonic()
    message = fetch_error(tmp_path / "models", catalogue, timeout=15.0)
    elapsed = time.monotonic() - started

    assert elapsed < 3.0
    assert "network is unreachable" in message and "refused" in message
    assert url in message and str(tmp_path / "models" / PACK) in message
    assert "FACEVERIFY_PACK_DIR" in message and "scrfd500m_mbf128" in message
    assert not (tmp_path / "models" / PACK).exists()


def test_http_error_is_reported_in_one_line(
    server: FileServer, pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    catalogue = catalogue_for(server.url("missing.zip"), b"", pack_files)

    assert "HTTP 404" in fetch_error(tmp_path, catalogue)


def test_unknown_pack_name_lists_the_known_ones(
    pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    message = fetch_error(tmp_path, catalogue_for(None, b"", pack_files), name="buffalo_xl")

    assert message == f"unknown model pack 'buffalo_xl': known packs are {PACK}"


def test_local_only_pack_says_how_to_point_at_it(
    pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    message = fetch_error(tmp_path, catalogue_for(None, b"", pack_files))

    assert "local-only" in message and "FACEVERIFY_PACK_DIR" in message


@pytest.mark.parametrize("member", ["../evil.onnx", "/abs/evil.onnx", "C:/evil.onnx"])
def test_archive_member_escaping_the_folder_is_refused(
    server: FileServer, pack_files: dict[str, bytes], tmp_path: Path, member: str
) -> None:
    models_dir = tmp_path / "models"
    catalogue = serve_pack(server, {**pack_files, member: b"payload"})

    message = fetch_error(models_dir, catalogue)

    assert "points outside the pack folder" in message
    assert not (tmp_path / "evil.onnx").exists() and not (models_dir / PACK).exists()
    assert list(models_dir.iterdir()) == []


def test_catalogue_shipped_with_the_project_refuses_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="known packs are buffalo_l, buffalo_s, antelopev2"):
        fetch_pack("no_such_pack", tmp_path, progress=False)


def test_unwritable_models_folder_is_reported_in_one_line(
    server: FileServer, pack_files: dict[str, bytes], tmp_path: Path
) -> None:
    catalogue = serve_pack(server, pack_files)
    blocker = tmp_path / "models"
    blocker.write_text("a file where the models folder should be")

    assert "cannot write the tinypack pack" in fetch_error(blocker, catalogue)
