"""The fault campaign as one table: what a client gets when the gallery's dependencies fail.

Starts its own stack on 127.0.0.1 — `python -m service` of a checkout (`--service-root`, default
this repository) on the synthetic model pack (or `--pack`), and a milvus-lite server for the
Milvus rows — breaks one thing per row, and prints one markdown table:

    fault | answer | time to answer | time to recover | lost acknowledged writes

- answer: what a client gets during the fault (status and stable code, or what it observed);
- time to answer: how long that answer took (or, for start-up faults, until the process said
  so: exit or ready);
- time to recover: from the fault's end (Milvus back, lock released, space freed, file put
  back) until a gallery write succeeds again, without restarting the service;
- lost acknowledged writes: identities and faces answered 201 during the scenario that the
  service does not hold afterwards, and after a restart on the same data ("of N" acknowledged).

Each row is bounded (--row-limit, 75 s) and ends every process it started by pid (process
groups); every file it damages is its own, under a temporary folder. The same script runs an
older checkout: settings it does not know (FACEVERIFY_GALLERY_TIMEOUT_S, ...) are ignored by its
pydantic settings. Tmpfs rows need root; otherwise the row says so.

    nice -n 10 python bench/faults.py
    git worktree add /tmp/before 9142732
    nice -n 10 python bench/faults.py --service-root /tmp/before
    nice -n 10 python bench/faults.py --only milvus_frozen,sqlite_locked --freeze-s 30
    nice -n 10 python bench/faults.py --pack ../shared/assets/models/scrfd500m_mbf128 \
        --photos ../shared/assets/images/deepface --only index_swapped

A real pack finds no face in the synthetic noise photos: give it `--photos`, a folder of
one-face photos (sub-folders are taken in turn, so consecutive uploads are different people).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from faults_support import (
    DELETE_SCRIPT,
    IS_ROOT,
    SEED_SCRIPT,
    Acknowledged,
    Answer,
    Photos,
    Service,
    alive,
    ask,
    children,
    embedding_of,
    files_holding,
    fill_disk,
    metric_lines,
    port_free,
    run_in_checkout,
    running,
    signal_group,
    small_tmpfs,
    wait_until,
)

REPO = Path(__file__).resolve().parents[1]
DATABASE = "gallery.sqlite3"
# A client's patience: a request without an answer by then is reported as "no answer".
CLIENT_TIMEOUT_S = 20.0
# How long a recovery is waited for before the row says "none in N s".
RECOVERY_LIMIT_S = 20.0
SAVED_INDEX_FACES = 50_000  # the service saves its index at start-up from this many faces


class RowTimeout(Exception):
    pass


@dataclass
class Row:
    fault: str
    answer: str
    to_answer: str = "—"
    to_recover: str = "—"
    lost: str = "—"


@dataclass
class Campaign:
    root: Path
    pack: Path
    work: Path
    freeze_s: float
    photos: Photos
    # Everything a row started, ended after the row whatever happened in it.
    started: list = field(default_factory=list)

    def service(self, data_dir: Path, **settings: object) -> Service:
        service = Service(self.root, self.pack, data_dir, **settings)
        self.started.append(service)
        return service

    def end_all(self) -> None:
        while self.started:
            with contextlib.suppress(Exception):
                self.started.pop().stop()

    def folder(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))
        return path


def seconds(value: float | None, limit_s: float | None = None) -> str:
    if value is None:
        return f"none in {limit_s:.0f} s" if limit_s is not None else "—"
    return f"{value:.1f} s"


def lost_text(acked: Acknowledged, live: int | None, restarted: int | None) -> str:
    def one(value: int | None) -> str:
        return "?" if value is None else str(value)

    if live == restarted:
        return f"{one(live)} of {acked.count}"
    return f"{one(live)} of {acked.count} (after a restart: {one(restarted)})"


def missing_after_restart(campaign: Campaign, data_dir: Path, acked: Acknowledged, **settings):
    """Acknowledged writes a freshly started service on `data_dir` does not hold (None: it
    never became ready)."""
    with running(campaign.service(data_dir, **settings)) as service:
        if service.wait_ready(RECOVERY_LIMIT_S) is None:
            return None
        with httpx.Client(base_url=service.url) as client:
            return acked.missing(client)


def never_ready(service: Service) -> str:
    """A row's answer when its service did not start: with the last line it wrote."""
    lines = [line for line in service.output().splitlines() if line.strip()]
    return "service never ready" + (f": `{lines[-1][-120:]}`" if lines else "")


def in_time(answer: Answer) -> str:
    if answer.status == 0:
        return f"{answer.describe(CLIENT_TIMEOUT_S)} after {answer.seconds:.1f} s"
    return f"{answer.status} in {answer.seconds:.1f} s"


def readiness(client: httpx.Client, within_s: float = 3.0) -> str:
    """What /readyz says during a fault: its first non-200 status within `within_s` (its
    answer may be cached for a second), else 200; and its slowest answer when slow."""
    seen: list = []

    def not_ready() -> bool:
        seen.append(ask(client, "GET", "/readyz", CLIENT_TIMEOUT_S))
        return seen[-1].status != 200

    waited = wait_until(not_ready, within_s)
    if waited is None:
        text = f"200 for {within_s:.0f} s"
    else:
        text = seen[-1].describe(CLIENT_TIMEOUT_S).split(" (Retry-After")[0]
    slowest = max(answer.seconds for answer in seen)
    return text + (f" (one took {slowest:.1f} s)" if slowest > 1.0 else "")


def recover(client: httpx.Client, identity: str, acked: Acknowledged, seed: int) -> float | None:
    """Seconds until an enrolment is acknowledged again."""
    started = time.monotonic()
    done = wait_until(
        lambda: acked.enrol(client, identity, seed, 5.0).status == 201, RECOVERY_LIMIT_S, 0.5
    )
    return None if done is None else time.monotonic() - started


# --- Milvus ----------------------------------------------------------------------------------


def milvus_settings(milvus) -> dict[str, object]:
    return {"gallery_backend": "milvus", "milvus_uri": milvus.uri}


@contextlib.contextmanager
def milvus_stack(campaign: Campaign, *, start_milvus: bool = True):
    from milvus_server import MilvusLiteServer

    milvus = MilvusLiteServer(campaign.folder("milvus"), start=start_milvus)
    campaign.started.append(milvus)
    try:
        data_dir = campaign.folder("data")
        with running(campaign.service(data_dir, **milvus_settings(milvus))) as service:
            yield milvus, service, data_dir
    finally:
        milvus.stop()


class Writer:
    """Enrols faces one after another in a thread while a fault lasts; records the 201s."""

    def __init__(self, url: str, identity: str, acked: Acknowledged) -> None:
        self.stop = threading.Event()
        self.statuses: dict[int, int] = {}
        self._thread = threading.Thread(target=self._run, args=(url, identity, acked), daemon=True)
        self._thread.start()

    def _run(self, url: str, identity: str, acked: Acknowledged) -> None:
        seed = 1000
        with httpx.Client(base_url=url) as client:
            while not self.stop.is_set():
                seed += 1
                status = acked.enrol(client, identity, seed, CLIENT_TIMEOUT_S).status
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status != 201:
                    time.sleep(0.2)

    def end(self) -> None:
        self.stop.set()
        self._thread.join(timeout=CLIENT_TIMEOUT_S + 5)


def gallery_answer(client: httpx.Client, identity: str):
    return ask(client, "GET", f"/identities/{identity}", CLIENT_TIMEOUT_S)


def milvus_killed(campaign: Campaign) -> Row:
    acked = Acknowledged(campaign.photos)
    with milvus_stack(campaign) as (milvus, service, data_dir):
        if service.wait_ready(60) is None:
            return Row("Milvus killed", never_ready(service))
        with httpx.Client(base_url=service.url) as client:
            ada = acked.identity(client, "Ada")
            acked.enrol(client, ada, 1, CLIENT_TIMEOUT_S)
            writer = Writer(service.url, ada, acked)
            try:
                time.sleep(0.5)
                milvus.kill()
                killed = time.monotonic()
                answer = gallery_answer(client, ada)
                with httpx.Client(base_url=service.url) as probe:  # a connection of its own
                    health = ask(probe, "GET", "/healthz", CLIENT_TIMEOUT_S)
                    ready = readiness(probe)
                time.sleep(max(0.0, 3.0 - (time.monotonic() - killed)))
                milvus.start()
                recovered = recover(client, ada, acked, 1)
            finally:
                writer.end()
            live = acked.missing(client)
        service.stop()
        restarted = missing_after_restart(campaign, data_dir, acked, **milvus_settings(milvus))
    text = f"{answer.describe(CLIENT_TIMEOUT_S)}; /readyz {ready}, /healthz {in_time(health)}"
    return Row(
        "Milvus killed (SIGKILL), started again 3 s later",
        text,
        seconds(answer.seconds),
        seconds(recovered, RECOVERY_LIMIT_S),
        lost_text(acked, live, restarted),
    )


def milvus_restarted(campaign: Campaign) -> Row:
    acked = Acknowledged(campaign.photos)
    with milvus_stack(campaign) as (milvus, service, data_dir):
        if service.wait_ready(60) is None:
            return Row("Milvus restarted on its data", never_ready(service))
        with httpx.Client(base_url=service.url) as client:
            ada = acked.identity(client, "Ada")
            acked.enrol(client, ada, 1, CLIENT_TIMEOUT_S)
            milvus.restart()  # SIGKILL, then a new server on the same port and data
            back = time.monotonic()
            answer = gallery_answer(client, ada)
            done = wait_until(
                lambda: acked.enrol(client, ada, 2, 5.0).status == 201, RECOVERY_LIMIT_S, 0.5
            )
            recovered = None if done is None else time.monotonic() - back
            live = acked.missing(client)
        service.stop()
        restarted = missing_after_restart(campaign, data_dir, acked, **milvus_settings(milvus))
    text = f"first request after the restart: {answer.describe(CLIENT_TIMEOUT_S)}"
    if restarted is None:
        text += "; a restarted service never becomes ready"
    return Row(
        "Milvus restarted on its data",
        text,
        seconds(answer.seconds),
        seconds(recovered, RECOVERY_LIMIT_S),
        lost_text(acked, live, restarted),
    )


def milvus_frozen(campaign: Campaign) -> Row:
    acked = Acknowledged(campaign.photos)
    freeze_s = campaign.freeze_s
    with milvus_stack(campaign) as (milvus, service, _):
        if service.wait_ready(60) is None:
            return Row("Milvus frozen", never_ready(service))
        with httpx.Client(base_url=service.url) as client:
            ada = acked.identity(client, "Ada")
            acked.enrol(client, ada, 1, CLIENT_TIMEOUT_S)
            milvus.freeze()
            try:
                frozen_at = time.monotonic()
                results: dict[str, object] = {}
                gallery = threading.Thread(
                    target=lambda: results.update(g=gallery_answer(client, ada)), daemon=True
                )
                # A probe in flight while /healthz and /verify are asked, as an orchestrator's.
                probe = threading.Thread(
                    target=lambda: ask(client, "GET", "/readyz", CLIENT_TIMEOUT_S), daemon=True
                )
                gallery.start()
                probe.start()
                time.sleep(0.5)
                health = ask(client, "GET", "/healthz", freeze_s + 5)
                pair = ask(
                    client,
                    "POST",
                    "/verify",
                    freeze_s + 5,
                    files={
                        "image1": campaign.photos.upload(1),
                        "image2": campaign.photos.upload(2),
                    },
                )
                ready = readiness(client)
                time.sleep(max(0.0, freeze_s - (time.monotonic() - frozen_at)))
            finally:
                milvus.thaw()
            thawed = time.monotonic()
            gallery.join(CLIENT_TIMEOUT_S + 5)
            probe.join(CLIENT_TIMEOUT_S + 5)
            done = wait_until(
                lambda: acked.enrol(client, ada, 2, 5.0).status == 201, RECOVERY_LIMIT_S, 0.5
            )
            recovered = None if done is None else time.monotonic() - thawed
            live = acked.missing(client)
    answer = results["g"]
    text = (
        f"{answer.describe(CLIENT_TIMEOUT_S)}; meanwhile /readyz {ready}, "
        f"/healthz {in_time(health)}, /verify of 2 photos {in_time(pair)}"
    )
    return Row(
        f"Milvus frozen (SIGSTOP) for {freeze_s:.0f} s",
        text,
        seconds(answer.seconds),
        seconds(recovered, RECOVERY_LIMIT_S),
        lost_text(acked, live, live),
    )


def milvus_late(campaign: Campaign) -> Row:
    acked = Acknowledged(campaign.photos)
    with milvus_stack(campaign, start_milvus=False) as (milvus, service, _):
        if not service.wait_up(60):
            return Row("Milvus started after the service", "service never answered /healthz")
        with httpx.Client(base_url=service.url) as client:
            time.sleep(5.0)  # the models are loaded: the gallery is what is missing
            answer = ask(client, "GET", "/identities", CLIENT_TIMEOUT_S)
            ready = readiness(client)
            milvus.start()
            up = time.monotonic()
            done = wait_until(
                lambda: acked.identity(client, "Ada", 5.0) is not None, RECOVERY_LIMIT_S, 0.5
            )
            recovered = None if done is None else time.monotonic() - up
            live = acked.missing(client)
    return Row(
        "Milvus started after the service",
        f"GET /identities {answer.describe(CLIENT_TIMEOUT_S)}; /readyz {ready}",
        seconds(answer.seconds),
        seconds(recovered, RECOVERY_LIMIT_S),
        lost_text(acked, live, live),
    )


# --- SQLite store ----------------------------------------------------------------------------


def backup(database: Path, target: Path) -> None:
    with (
        contextlib.closing(sqlite3.connect(database)) as source,
        contextlib.closing(sqlite3.connect(target)) as copy,
    ):
        source.backup(copy)


def sqlite_deleted(campaign: Campaign) -> Row:
    acked = Acknowledged(campaign.photos)
    data_dir = campaign.folder("data")
    with running(campaign.service(data_dir)) as service:
        if service.wait_ready(60) is None:
            return Row("SQLite database deleted", never_ready(service))
        with httpx.Client(base_url=service.url) as client:
            ada = acked.identity(client, "Ada")
            for seed in range(3):
                acked.enrol(client, ada, seed, CLIENT_TIMEOUT_S)
            copy = campaign.work / f"{data_dir.name}.backup"
            backup(data_dir / DATABASE, copy)  # taken after the last write
            for path in data_dir.glob(f"{DATABASE}*"):
                path.unlink()
            answers = [acked.enrol(client, ada, 10 + n, CLIENT_TIMEOUT_S) for n in range(3)]
            ready = readiness(client)
            shutil.copyfile(copy, data_dir / DATABASE)  # the operator puts the backup back
            recovered = recover(client, ada, acked, 20)
            live = acked.missing(client)
    restarted = missing_after_restart(campaign, data_dir, acked)
    first = answers[0]
    return Row(
        "SQLite database deleted under the running service, backup put back",
        f"enrolment {first.describe(CLIENT_TIMEOUT_S)}; /readyz {ready}",
        seconds(first.seconds),
        seconds(recovered, RECOVERY_LIMIT_S),
        lost_text(acked, live, restarted),
    )


def sqlite_emptied(campaign: Campaign) -> Row:
    acked = Acknowledged(campaign.photos)
    data_dir = campaign.folder("data")
    with running(campaign.service(data_dir)) as service:
        if service.wait_ready(60) is None:
            return Row("SQLite database emptied while stopped", never_ready(service))
        with httpx.Client(base_url=service.url) as client:
            ada = acked.identity(client, "Ada")
            for seed in range(3):
                acked.enrol(client, ada, seed, CLIENT_TIMEOUT_S)
    os.truncate(data_dir / DATABASE, 0)
    with running(campaign.service(data_dir)) as service:
        outcome = wait_until(
            lambda: service.process.poll() is not None or service.status("/readyz") == 200, 60
        )
        if service.process.poll() is not None:
            lines = [x for x in service.output().splitlines() if x.startswith("faceverify:")]
            said = lines[-1].replace(str(data_dir), "DATA") if lines else "(no message)"
            said = re.sub(r"gallery [0-9a-f]{32}", "gallery …", said)
            text = f"start-up refused: exit {service.process.returncode}, `{said}`"
            lost = f"— (none served in their place; {acked.count} are in the backup)"
        elif outcome is not None:
            with httpx.Client(base_url=service.url) as client:
                total = ask(client, "GET", "/identities", CLIENT_TIMEOUT_S).body.get("total")
                missing = acked.missing(client)
            text = f"started, ready, serving an empty gallery ({total} identities)"
            lost = lost_text(acked, missing, missing)
        else:
            text, lost = "neither ready nor exited in 60 s", "?"
    return Row(
        "SQLite database emptied (0 bytes) while stopped, then started",
        text,
        seconds(outcome, 60),
        "—",
        lost,
    )


def sqlite_locked(campaign: Campaign) -> Row:
    acked = Acknowledged(campaign.photos)
    data_dir = campaign.folder("data")
    with running(campaign.service(data_dir)) as service:
        if service.wait_ready(60) is None:
            return Row("SQLite database locked", never_ready(service))
        with httpx.Client(base_url=service.url) as client:
            ada = acked.identity(client, "Ada")
            acked.enrol(client, ada, 0, CLIENT_TIMEOUT_S)
            holder = sqlite3.connect(data_dir / DATABASE, isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")  # another process's writer
                answer = acked.enrol(client, ada, 1, 45.0)
                ready = readiness(client)
                holder.execute("ROLLBACK")
            finally:
                holder.close()
            recovered = recover(client, ada, acked, 2)
            live = acked.missing(client)
    restarted = missing_after_restart(campaign, data_dir, acked)
    return Row(
        "SQLite database locked by another writer",
        f"enrolment {answer.describe(45.0)}; /readyz {ready}",
        seconds(answer.seconds),
        seconds(recovered, RECOVERY_LIMIT_S),
        lost_text(acked, live, restarted),
    )


def disk_full(campaign: Campaign) -> Row:
    fault = "Disk full (8 MiB tmpfs), then space freed"
    if not IS_ROOT:
        return Row(fault, "skipped: needs root")
    acked = Acknowledged(campaign.photos)
    with small_tmpfs("8m", campaign.work) as disk:
        data_dir = disk / "data"
        with running(campaign.service(data_dir)) as service:
            if service.wait_ready(60) is None:
                return Row(fault, never_ready(service))
            with httpx.Client(base_url=service.url) as client:
                ada = acked.identity(client, "Ada")
                acked.enrol(client, ada, 0, CLIENT_TIMEOUT_S)
                filler = fill_disk(disk)
                answer = acked.enrol(client, ada, 1, CLIENT_TIMEOUT_S)
                created = ask(client, "POST", "/identities", CLIENT_TIMEOUT_S, json={"name": "Cy"})
                ready = readiness(client)
                filler.unlink()
                recovered = recover(client, ada, acked, 2)
                live = acked.missing(client)
        restarted = missing_after_restart(campaign, data_dir, acked)
    return Row(
        fault,
        f"enrolment {answer.describe(CLIENT_TIMEOUT_S)}, POST /identities "
        f"{created.describe(CLIENT_TIMEOUT_S)}; /readyz {ready}",
        seconds(answer.seconds),
        seconds(recovered, RECOVERY_LIMIT_S),
        lost_text(acked, live, restarted),
    )


# --- the saved FAISS index -------------------------------------------------------------------


@dataclass
class LargeGallery:
    """A data folder of 50,002 faces whose index the service saved at start-up: identities
    `a` (photo 1) and `b` (photo 2) enrolled over HTTP, the rest filler."""

    folder: Path
    a: str
    b: str
    acked: Acknowledged


def large_gallery(campaign: Campaign, cache: dict) -> LargeGallery | str:
    if "large" in cache:
        return cache["large"]
    acked = Acknowledged(campaign.photos)
    folder = campaign.folder("large")
    with running(campaign.service(folder)) as service:
        if service.wait_ready(60) is None:
            return never_ready(service)
        with httpx.Client(base_url=service.url) as client:
            a, b = acked.identity(client, "A"), acked.identity(client, "B")
            acked.enrol(client, a, 1, CLIENT_TIMEOUT_S)
            acked.enrol(client, b, 2, CLIENT_TIMEOUT_S)
    run_in_checkout(campaign.root, SEED_SCRIPT, str(folder), str(SAVED_INDEX_FACES), "100")
    with running(campaign.service(folder)) as service:
        if service.wait_ready(90) is None:
            return "service with 50,002 faces never ready"
    if not list(folder.glob("index-*.faiss")):
        return "no saved index after a start with 50,002 faces"
    cache["large"] = LargeGallery(folder, a, b, acked)
    return cache["large"]


def identified(client: httpx.Client, photos: Photos, seed: int) -> tuple[str, float]:
    files = {"image": photos.upload(seed)}
    answer = ask(client, "POST", "/identify", CLIENT_TIMEOUT_S, files=files)
    try:
        best = answer.body["results"][0]["candidates"][0]
        return best["identity_id"], best["similarity"]
    except (KeyError, IndexError):
        return f"{answer.status} {answer.code}", 0.0


def index_swapped(campaign: Campaign, cache: dict) -> Row:
    fault = "Saved index: the vectors of two faces swapped (header untouched)"
    large = large_gallery(campaign, cache)
    if isinstance(large, str):
        return Row(fault, large)
    folder = campaign.folder("swapped")
    shutil.copytree(large.folder, folder, dirs_exist_ok=True)
    [saved] = folder.glob("index-*.faiss")
    data = bytearray(saved.read_bytes())
    va, vb = embedding_of(folder / DATABASE, large.a), embedding_of(folder / DATABASE, large.b)
    at, bt, size = data.find(va), data.find(vb), len(va)
    if at < 0 or bt < 0:
        return Row(fault, "the saved index does not hold the stored vectors verbatim")
    data[at : at + size], data[bt : bt + size] = vb, va
    saved.write_bytes(bytes(data))
    with running(campaign.service(folder)) as service:
        ready = service.wait_ready(90)
        if ready is None:
            return Row(fault, never_ready(service), lost=f"? of {large.acked.count}")
        with httpx.Client(base_url=service.url) as client:
            who, similarity = identified(client, campaign.photos, 1)
            live = large.acked.missing(client)
    rewritten = saved.read_bytes() != bytes(data)
    wrong = "yes" if who != large.a else "no"
    named = {large.a: "A", large.b: "B"}.get(who, who)
    return Row(
        fault,
        f"wrong identity answered: {wrong} (A's photo → {named},"
        f" similarity {similarity:.2f}); file rewritten: {'yes' if rewritten else 'no'}",
        f"{ready:.1f} s to ready",
        "—",
        lost_text(large.acked, live, live),
    )


def crash_after_delete(campaign: Campaign, cache: dict) -> Row:
    fault = "Crash between a delete's commit and the index save"
    large = large_gallery(campaign, cache)
    if isinstance(large, str):
        return Row(fault, large)
    folder = campaign.folder("erased")
    shutil.copytree(large.folder, folder, dirs_exist_ok=True)
    deleted = embedding_of(folder / DATABASE, large.a)
    run_in_checkout(campaign.root, DELETE_SCRIPT, str(folder), large.a)
    staged = files_holding(folder, deleted)
    with running(campaign.service(folder)) as service:
        ready = service.wait_ready(90)
        if ready is None:
            return Row(fault, never_ready(service))
        with httpx.Client(base_url=service.url) as client:
            who, _ = identified(client, campaign.photos, 1)
        holding = files_holding(folder, deleted)
    acked = Acknowledged(campaign.photos)
    acked.faces = {large.b: large.acked.faces[large.b]}
    return Row(
        fault,
        f"deleted vector still on disk: {'yes (' + ', '.join(holding) + ')' if holding else 'no'}"
        f" (staged in: {', '.join(staged) or 'nothing'}); the deleted A still answered: "
        f"{'yes' if who == large.a else 'no'}",
        f"{ready:.1f} s to ready",
        "—",
        "—",
    )


# --- processes and clients -------------------------------------------------------------------


def master_killed(campaign: Campaign) -> Row:
    fault = "uvicorn master SIGKILLed with 2 workers"
    service = campaign.service(campaign.folder("data"), workers=2)
    with running(service):
        if service.wait_ready(90) is None:
            return Row(fault, never_ready(service))
        workers = children(service.process.pid)
        os.kill(service.process.pid, signal.SIGKILL)
        service.process.wait(timeout=10)
        killed = time.monotonic()
        gone = wait_until(lambda: not any(alive(pid) for pid in workers), 15.0)
        left = [pid for pid in workers if alive(pid)]
        serving = service.status("/healthz") == 200
        free = port_free(service.port)
        signal_group(service.process.pid, signal.SIGKILL)  # the orphans, by their group
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    orphans = f"yes ({len(left)} of {len(workers)})" if left else "no"
    text = (
        f"orphans left: {orphans}"
        f"{', still serving' if serving else ''}; port free: {'yes' if free else 'no'}"
    )
    return Row(fault, text, seconds(None if gone is None else time.monotonic() - killed, 15))


def request_head(port: int, path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {length}\r\n\r\n"
        '--x\r\nContent-Disposition: form-data; name="image1"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()


SLOW_LIMIT_S = 30.0


def slow_upload(campaign: Campaign) -> Row:
    fault = "Slow upload (1 byte/s), FACEVERIFY_BODY_TIMEOUT_S=10"
    service = campaign.service(campaign.folder("data"), body_timeout_s=10)
    with running(service):
        if service.wait_ready(60) is None:
            return Row(fault, never_ready(service))
        answer, elapsed = b"", None
        with socket.create_connection(("127.0.0.1", service.port), timeout=1.0) as sock:
            sock.sendall(request_head(service.port, "/verify", 50_000))
            started = time.monotonic()
            while time.monotonic() - started < SLOW_LIMIT_S:
                try:
                    sock.sendall(b"a")
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                if not answer:
                    elapsed = time.monotonic() - started
                answer += chunk
    if answer:
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace").split(" ")[1]
        code = (
            answer.split(b'"code":"', 1)[1].split(b'"', 1)[0].decode()
            if b'"code":"' in answer
            else ""
        )
        return Row(fault, f"{status} {code}".strip(), seconds(elapsed))
    return Row(fault, f"no answer in {SLOW_LIMIT_S:.0f} s (connection held)", "—")


def aborted_upload(campaign: Campaign) -> Row:
    fault = "Upload aborted mid-body (3 clients)"
    service = campaign.service(campaign.folder("data"))
    with running(service):
        if service.wait_ready(60) is None:
            return Row(fault, never_ready(service))
        before = metric_lines(service.url, "faceverify_errors_total")
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
                sock.sendall(request_head(service.port, "/verify", 50_000) + b"a" * 1000)
                time.sleep(0.2)
        time.sleep(2.0)
        after = metric_lines(service.url, "faceverify_errors_total")
    counted = {
        name.split('code="', 1)[1].split('"', 1)[0]: value - before.get(name, 0.0)
        for name, value in after.items()
        if value - before.get(name, 0.0) > 0 and 'code="' in name
    }
    text = ", ".join(f"{code} × {value:.0f}" for code, value in counted.items()) or "not counted"
    return Row(fault, f"counted as {text}")


# ---------------------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[..., Row]] = {
    "milvus_killed": milvus_killed,
    "milvus_restarted": milvus_restarted,
    "milvus_frozen": milvus_frozen,
    "milvus_late": milvus_late,
    "sqlite_deleted": sqlite_deleted,
    "sqlite_emptied": sqlite_emptied,
    "sqlite_locked": sqlite_locked,
    "disk_full": disk_full,
    "index_swapped": index_swapped,
    "crash_after_delete": crash_after_delete,
    "master_killed": master_killed,
    "slow_upload": slow_upload,
    "aborted_upload": aborted_upload,
}
NEEDS_CACHE = {"index_swapped", "crash_after_delete"}


def synthetic_pack(folder: Path) -> Path:
    from synthetic_models import SyntheticFace, make_manifest_pack

    face = SyntheticFace.from_box((100.0, 120.0, 340.0, 400.0), score=0.8)
    return make_manifest_pack(folder / "pack", [face], embedding_size=32)


def photo_files(folder: Path) -> list[Path]:
    """The photos under `folder`, one folder (person) after another in turn, so that
    consecutive seeds are different people: `A` (seed 1) and `B` (seed 2) must not match."""
    by_folder: dict[Path, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in {".jpg", ".jpeg", ".png"} and not path.parent.name.startswith(
            "_"
        ):
            by_folder.setdefault(path.parent, []).append(path)
    turns = itertools.zip_longest(*by_folder.values())
    return [path for turn in turns for path in turn if path is not None]


def _alarm(signum, frame) -> None:
    raise RowTimeout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--service-root", type=Path, default=REPO, help="checkout to run")
    parser.add_argument("--pack", type=Path, help="a model pack (default: the synthetic one)")
    parser.add_argument(
        "--photos",
        type=Path,
        help="folder of face photos, one face each, for a real --pack (default: noise photos)",
    )
    parser.add_argument("--only", help="comma-separated scenario names: " + ", ".join(SCENARIOS))
    parser.add_argument("--freeze-s", type=float, default=15.0, help="Milvus frozen this long")
    parser.add_argument("--row-limit", type=int, default=75, help="seconds per row at most")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")

    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="faults-") as work:
        work_dir = Path(work)
        # The service runs in its checkout: relative paths are this shell's.
        pack = args.pack.resolve() if args.pack else synthetic_pack(work_dir)
        files = photo_files(args.photos) if args.photos else []
        campaign = Campaign(
            args.service_root.resolve(), pack, work_dir, args.freeze_s, Photos(files)
        )
        cache: dict = {}
        signal.signal(signal.SIGALRM, _alarm)
        for name in names:
            scenario = SCENARIOS[name]
            row_started = time.monotonic()
            signal.alarm(args.row_limit)
            try:
                row = scenario(campaign, cache) if name in NEEDS_CACHE else scenario(campaign)
            except RowTimeout:
                row = Row(name, f"row limit of {args.row_limit} s reached")
            except Exception as error:  # one broken row must not lose the table
                row = Row(name, f"bench error: {type(error).__name__}: {error}"[:160])
            finally:
                signal.alarm(0)
                campaign.end_all()
            rows.append(row)
            print(f"{name}: {time.monotonic() - row_started:.0f} s", file=sys.stderr, flush=True)
    print(f"\n{len(rows)} scenarios in {time.monotonic() - started:.0f} s on {args.service_root}\n")
    print("| fault | answer | time to answer | time to recover | lost acknowledged writes |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row.fault} | {row.answer} | {row.to_answer} | {row.to_recover} | {row.lost} |")


if __name__ == "__main__":
    main()
