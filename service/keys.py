"""API keys that can be held to account: named, scoped, stored hashed, revocable.

A keys file (`FACEVERIFY_API_KEYS_FILE`, JSON) holds one record per key: its name, the SHA-256
of its secret (never the secret), its scopes, when it was created and, once revoked, when.
`python -m service keys create|list|revoke` edits it (atomically: write a sibling file, then
rename), and the service re-reads it when it changes (see `KeyRing.current`).

Secrets are 256 random bits, so a plain SHA-256 is enough: a slow password hash protects
guessable secrets, and these are not guessable. A presented key is hashed and compared with
every stored digest in constant time, without stopping at the first match.

Keys given in `FACEVERIFY_API_KEYS` (the simple setup) get every scope and the name
`env-<first 8 hex digits of their SHA-256>`, stable across restarts and safe to log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

# The scopes a key can hold; `admin` implies every other one.
SCOPES = ("verify", "identify", "gallery:read", "gallery:write", "admin")
ADMIN_SCOPE = "admin"
SECRET_PREFIX = "fv_"
# 32 random bytes = 256 bits (secrets.token_urlsafe: 43 characters).
SECRET_BYTES = 32
HASH_PREFIX = "sha256:"
# How often (seconds) a worker looks at the keys file's modification time.
RELOAD_INTERVAL_S = 1.0
FILE_VERSION = 1


class KeysFileError(ValueError):
    """The keys file cannot be read, is not valid JSON, or a record is malformed."""


def hash_secret(secret: str) -> str:
    return HASH_PREFIX + hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: never the secret, only its digest."""

    name: str
    hash: str
    scopes: tuple[str, ...]
    created: str = field(default_factory=_now)
    revoked: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def allows(self, scope: str) -> bool:
        return ADMIN_SCOPE in self.scopes or scope in self.scopes


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, de-duplicated in a stable order; raises ValueError naming unknown ones."""
    wanted = [s.strip() for s in scopes if s.strip()]
    unknown = sorted(set(wanted) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}")
    if not wanted:
        raise ValueError(f"a key needs at least one scope: {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in wanted)


def env_key(secret: str) -> ApiKey:
    """A key from FACEVERIFY_API_KEYS: every scope."""
    digest = hash_secret(secret)
    name = "env-" + digest.removeprefix(HASH_PREFIX)[:8]
    return ApiKey(name=name, hash=digest, scopes=SCOPES, created="")


def read_keys_file(path: Path) -> list[ApiKey]:
    """Every record of a keys file (revoked ones too); a missing file is an error."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise KeysFileError(
            f"keys file {path} not found; create it with `python -m service keys create "
            f"--file {path} --name NAME --scopes SCOPE,...`"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeysFileError(f"keys file {path} cannot be read: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise KeysFileError(f'keys file {path} must be a JSON object {{"keys": [...]}}')
    keys = []
    for index, record in enumerate(raw["keys"]):
        try:
            digest = record["hash"]
            if not (isinstance(digest, str) and digest.startswith(HASH_PREFIX)):
                raise ValueError(f"hash must start with {HASH_PREFIX}")
            keys.append(
                ApiKey(
                    name=str(record["name"]),
                    hash=digest,
                    scopes=check_scopes(record["scopes"]),
                    created=str(record.get("created", "")),
                    revoked=record.get("revoked"),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeysFileError(f"keys file {path}: record {index} is invalid: {exc}") from exc
    names = [key.name for key in keys]
    if len(set(names)) != len(names):
        raise KeysFileError(f"keys file {path}: key names must be unique")
    return keys


def write_keys_file(path: Path, keys: Sequence[ApiKey]) -> None:
    """Replace the file atomically (readers see the old or the new file, never half of one);
    the file is made readable by its owner only."""
    records = [{**asdict(key), "scopes": list(key.scopes)} for key in keys]
    body = json.dumps({"version": FILE_VERSION, "keys": records}, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def create_key(path: Path, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]:
    """Add a key to the file (created when missing); returns it and its secret, which is
    stored nowhere."""
    name = name.strip()
    if not name:
        raise ValueError("a key needs a name")
    keys = read_keys_file(path) if path.exists() else []
    if any(key.name == name for key in keys):
        raise ValueError(f"a key named {name!r} exists already (names stay unique, revoked too)")
    secret = new_secret()
    key = ApiKey(name=name, hash=hash_secret(secret), scopes=check_scopes(scopes))
    write_keys_file(path, [*keys, key])
    return key, secret


def revoke_key(path: Path, name: str) -> ApiKey:
    """Mark a key revoked (the record stays, so audit lines keep a meaning)."""
    keys = read_keys_file(path)
    for index, key in enumerate(keys):
        if key.name == name:
            if not key.active:
                raise ValueError(f"key {name!r} was revoked already at {key.revoked}")
            revoked = ApiKey(key.name, key.hash, key.scopes, key.created, _now())
            keys[index] = revoked
            write_keys_file(path, keys)
            return revoked
    raise ValueError(f"no key named {name!r} in {path}")


def find_key(presented: str, keys: Sequence[ApiKey]) -> ApiKey | None:
    """The active key whose digest matches, compared in constant time against every key (no
    early exit, so the time does not tell which record, or whether any, matched)."""
    digest = hash_secret(presented).encode()
    found = None
    for key in keys:
        if hmac.compare_digest(digest, key.hash.encode()) and key.active:
            found = key
    return found


class KeyRing:
    """The keys a worker accepts: FACEVERIFY_API_KEYS plus the keys file, re-read when the
    file's modification time or size changes (checked at most every RELOAD_INTERVAL_S).

    A file that becomes unreadable or invalid is logged and the last good set is kept, so a
    typo does not lock every client out; fix the file and the next check picks it up.
    """

    def __init__(
        self,
        env_secrets: Sequence[str] = (),
        path: Path | None = None,
        *,
        reload_interval_s: float = RELOAD_INTERVAL_S,
    ) -> None:
        self._env = [env_key(secret) for secret in env_secrets]
        self.path = path
        self._interval = reload_interval_s
        self._lock = threading.Lock()
        self._signature: tuple[int, int] | None = None
        self._checked = 0.0
        self._file_keys: list[ApiKey] = []
        if path is not None:  # fail at start-up on a bad file
            self._file_keys = read_keys_file(path)
            self._signature = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)  # type: ignore[arg-type]
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def current(self) -> list[ApiKey]:
        if self.path is not None and time.monotonic() - self._checked >= self._interval:
            with self._lock:
                self._checked = time.monotonic()
                signature = self._stat()
                if signature != self._signature:
                    try:
                        self._file_keys = read_keys_file(self.path)
                        self._signature = signature
                        log.info("keys file %s re-read: %d key(s)", self.path, self.count())
                    except KeysFileError as exc:
                        log.error("%s; keeping the %d key(s) read before", exc, self.count())
        return [*self._env, *self._file_keys]

    def count(self) -> int:
        return len(self._env) + sum(key.active for key in self._file_keys)

    def authenticate(self, presented: str) -> ApiKey | None:
        return find_key(presented, self.current())
