"""Download a catalogued model pack, verify it and unpack it into the models folder.

Weights are never committed: `python -m service fetch-models NAME` calls `fetch_pack`, which
streams the pack's zip (resuming a partial download), checks the archive and every known file
against the sha256s in `models/catalogue.json`, extracts it without letting any member escape
the target folder, and moves the result into place in one rename, so `<models_dir>/<name>/`
either holds a complete, verified pack or does not exist.

Without a network it fails at once with a one-line `FetchError` that says how to provide the
pack by hand.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import requests
from tqdm import tqdm

from service.errors import PackError
from service.packs import Catalogue, CatalogueEntry, load_catalogue, sha256_file

# Stream the download in 1 MiB chunks: constant memory, progress updated a few times a second.
DOWNLOAD_CHUNK_BYTES = 1 << 20
# HTTP statuses of a ranged request (RFC 9110 §15.3.7 and §15.5.17).
PARTIAL_CONTENT = 206
RANGE_NOT_SATISFIABLE = 416
# A pack folder the service can use while the real packs are unreachable.
LOCAL_PACK_EXAMPLE = "../shared/assets/models/scrfd500m_mbf128"


class FetchError(Exception):
    """A pack could not be fetched; `str()` is one line saying why and what to do."""


def fetch_pack(
    name: str,
    models_dir: Path,
    *,
    catalogue: Catalogue | None = None,
    timeout: float = 15.0,
    progress: bool = True,
) -> Path:
    """Make `<models_dir>/<name>/` hold the verified pack `name`; return that folder."""
    if catalogue is None:
        try:
            catalogue = load_catalogue()
        except PackError as exc:
            raise FetchError(str(exc)) from exc
    entry = catalogue.get(name)
    if entry is None:
        raise FetchError(
            f"unknown model pack {name!r}: known packs are {', '.join(catalogue.names())}"
        )
    models_dir = Path(models_dir)
    target = models_dir / name
    if entry.url is None:
        raise FetchError(
            f"{name} is a local-only pack with nothing to download: set FACEVERIFY_PACK_DIR to "
            f"the folder that holds it (for example {LOCAL_PACK_EXAMPLE})"
        )
    if target.exists():
        problem = _pack_problem(target, entry)
        if problem is None:
            return target
        raise FetchError(
            f"{target} exists but is not a complete {name} pack ({problem}): delete it and "
            "fetch again"
        )

    try:
        return _fetch(entry.url, entry, models_dir, target, timeout=timeout, progress=progress)
    except OSError as exc:
        raise FetchError(
            f"cannot write the {name} pack into {models_dir} ({exc.strerror or exc}): check the "
            "folder's permissions and free space"
        ) from exc


def _fetch(
    url: str,
    entry: CatalogueEntry,
    models_dir: Path,
    target: Path,
    *,
    timeout: float,
    progress: bool,
) -> Path:
    """Download, verify and install; `fetch_pack` has checked the name and the target."""
    name = entry.name
    models_dir.mkdir(parents=True, exist_ok=True)
    archive = models_dir / f".{name}.zip.part"
    _download(url, entry, archive, target, timeout=timeout, progress=progress)
    if entry.archive_sha256:
        actual = sha256_file(archive)
        if actual != entry.archive_sha256:
            archive.unlink()
            raise FetchError(
                f"the downloaded {name} archive has sha256 {actual[:16]}... but the catalogue "
                f"expects {entry.archive_sha256[:16]}...: it was deleted; fetch again, and if "
                f"this repeats the file at {url} has changed"
            )
    try:
        _install(archive, target, entry)
    finally:
        archive.unlink(missing_ok=True)  # installed, or refused: either way not worth keeping
    return target


# --- download ----------------------------------------------------------------------------------


def _download(
    url: str, entry: CatalogueEntry, archive: Path, target: Path, *, timeout: float, progress: bool
) -> None:
    """Stream `url` into `archive`, resuming from its current size when it exists."""
    done = archive.stat().st_size if archive.exists() else 0
    headers = {"Range": f"bytes={done}-"} if done else {}
    received = 0
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
            if done and response.status_code == RANGE_NOT_SATISFIABLE:
                return  # the partial file is already whole; the checksum decides
            if response.status_code >= 400:
                raise FetchError(
                    f"downloading {url} failed with HTTP {response.status_code} "
                    f"{response.reason}: check the catalogue's URL, or {_by_hand(entry, target)}"
                )
            resumed = done > 0 and response.status_code == PARTIAL_CONTENT
            if not resumed:
                done = 0  # the server ignored the range: start over
            length = int(response.headers.get("Content-Length") or 0)
            total = done + length if length else entry.archive_size
            with (
                open(archive, "ab" if resumed else "wb") as stream,
                tqdm(
                    total=total,
                    initial=done,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=entry.name,
                    disable=not progress,
                ) as bar,
            ):
                for chunk in response.iter_content(DOWNLOAD_CHUNK_BYTES):
                    stream.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as exc:
        reason = _network_reason(exc, url, timeout)
        if received:
            raise FetchError(
                f"the download of {entry.name} was interrupted ({reason}): run the same command "
                f"again to resume from {archive}"
            ) from exc
        if isinstance(exc, requests.ConnectionError | requests.Timeout):
            raise FetchError(
                f"cannot download {entry.name}: the network is unreachable ({reason}); "
                f"{_by_hand(entry, target)}"
            ) from exc
        raise FetchError(f"downloading {url} failed ({reason}): {_by_hand(entry, target)}") from exc


def _network_reason(exc: requests.RequestException, url: str, timeout: float) -> str:
    host = urlparse(url).hostname or url
    text = str(exc)
    if isinstance(exc, requests.Timeout):
        return f"no answer from {host} within {timeout:g} s"
    if "resolve" in text or "Name or service not known" in text:
        return f"cannot resolve {host}"
    if "refused" in text:
        return f"connection to {host} refused"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect to {host}"
    return type(exc).__name__


def _by_hand(entry: CatalogueEntry, target: Path) -> str:
    return (
        f"to install it by hand, download {entry.url} and unzip its ONNX files into {target}/, "
        f"or set FACEVERIFY_PACK_DIR to an existing pack folder such as {LOCAL_PACK_EXAMPLE}"
    )


# --- unpack and verify -------------------------------------------------------------------------


def _install(archive: Path, target: Path, entry: CatalogueEntry) -> None:
    """Extract into a temporary folder next to `target`, verify, then rename into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=target.parent))
    try:
        _extract_safely(archive, staging)
        root = _single_top_folder(staging)
        problem = _pack_problem(root, entry)
        if problem is not None:
            raise FetchError(
                f"the {entry.name} archive does not hold the catalogued pack ({problem}): "
                "nothing was installed; the catalogue entry or the download is wrong"
            )
        root.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _member_parts(member: zipfile.ZipInfo) -> tuple[str, ...]:
    """The member's path parts, refusing anything that could land outside the folder."""
    name = member.filename.replace("\\", "/")
    path = PurePosixPath(name)
    mode = member.external_attr >> 16
    if (
        path.is_absolute()
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])
        or stat.S_ISLNK(mode)
    ):
        raise FetchError(
            f"the archive member {member.filename!r} points outside the pack folder: refusing "
            "to extract this archive"
        )
    return tuple(part for part in path.parts if part not in ("", "."))


def _extract_safely(archive: Path, destination: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [(member, _member_parts(member)) for member in bundle.infolist()]
            for member, parts in members:
                if not parts:
                    continue
                path = destination.joinpath(*parts)
                if member.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(member) as source, open(path, "wb") as sink:
                    shutil.copyfileobj(source, sink, DOWNLOAD_CHUNK_BYTES)
    except zipfile.BadZipFile as exc:
        archive.unlink(missing_ok=True)
        raise FetchError(
            f"{archive} is not a valid zip archive ({exc}): it was deleted, fetch again"
        ) from exc


def _single_top_folder(folder: Path) -> Path:
    """The archive's content root: its only top-level folder when it has one (antelopev2.zip
    wraps everything in `antelopev2/`), else the extraction folder itself."""
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def _pack_problem(folder: Path, entry: CatalogueEntry) -> str | None:
    """None when `folder` holds every file of `entry` with its known sha256, else why not."""
    for item in entry.files:
        path = folder / item.name
        if not path.is_file():
            return f"{item.name} is missing"
        if item.sha256 and sha256_file(path) != item.sha256:
            return f"{item.name} does not match its sha256"
    return None
