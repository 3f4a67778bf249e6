"""Service settings, read once from `FACEVERIFY_*` environment variables (or a `.env` file).

Every knob of the service lives here so that the README's table of variables can be checked
against one class (`tests/service/test_settings.py` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
# Shorter keys can be guessed; 16 URL-safe characters carry about 96 bits.
MIN_API_KEY_LENGTH = 16


class Settings(BaseSettings):
    """All service settings; env var = `FACEVERIFY_` + field name in upper case."""

    model_config = SettingsConfigDict(env_prefix="FACEVERIFY_", env_file=".env", extra="ignore")

    # --- model pack -------------------------------------------------------------------------
    pack_dir: Path = Field(
        REPO_ROOT / "models" / "buffalo_l",
        description="Model pack folder (ours with pack.json, or an InsightFace one).",
    )
    verify_checksums: bool = Field(True, description="Check each model file's sha256 at start-up.")
    threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="Cosine threshold; default: the pack's own."
    )

    # --- onnxruntime ------------------------------------------------------------------------
    providers: str = Field(
        "auto",
        description="Comma-separated onnxruntime providers (`cuda`, `openvino`, `cpu`, or full "
        "names); `auto` = CUDA when available, else CPU.",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="onnxruntime intra-op threads per worker; 0 = auto (onnxruntime's default "
        "with one worker, the CPUs divided among several workers).",
    )
    inter_op_threads: int = Field(0, ge=0, description="onnxruntime inter-op threads; 0 = auto.")
    graph_optimization: Literal["all", "extended", "basic", "disabled"] = Field(
        "all", description="onnxruntime graph optimisation level; `all` is onnxruntime's default."
    )

    # --- pipeline ---------------------------------------------------------------------------
    det_size: int = Field(640, ge=32, le=4096, description="Detector input size (multiple of 32).")
    det_score_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Min detection score.")
    min_face_size: int = Field(20, ge=1, description="Min face box side in pixels.")
    flip: bool = Field(False, description="Flip-test by default (embed crop + its mirror).")
    max_upload_bytes: int = Field(10_000_000, ge=1, description="Max size of one uploaded file.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Max decoded width x height.")
    max_decode_bytes: int = Field(
        256 << 20,
        ge=1,
        description="Max memory one image's decoding may hold (estimated from its header).",
    )
    max_faces: int = Field(
        100, ge=1, description="Faces kept per image, largest first; smaller ones are ignored."
    )

    # --- inference scheduler ----------------------------------------------------------------
    inference_slots: int = Field(
        0,
        ge=0,
        description="Pipeline runs at once per worker; 0 = auto (the worker's CPUs divided by "
        "the intra-op threads; with both auto, one slot per CPU and one thread each).",
    )
    queue_limit: int = Field(
        64, ge=0, description="Requests that may wait for a slot; beyond, 503 `overloaded`."
    )
    batch_max_size: int = Field(
        32, ge=1, description="Most faces (or detector images) joined into one model call."
    )
    batch_max_wait_ms: float = Field(
        0.0,
        ge=0.0,
        le=1000.0,
        description="How long a model call waits for other requests' work; 0 = join only "
        "what is already queued (right on CPU; a few ms on GPU).",
    )

    # --- gallery ----------------------------------------------------------------------------
    data_dir: Path = Field(REPO_ROOT / "data", description="Where the gallery database lives.")
    index_type: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto", description="FAISS index; `auto` = flat below `approx_index_min_faces`."
    )
    approx_index_min_faces: int = Field(
        200_000, ge=1, description="Gallery size from which `auto` uses an approximate index."
    )
    require_single_face: bool = Field(
        False, description="Refuse enrolment photos with more than one face (`multiple_faces`)."
    )
    min_enrol_quality: float = Field(
        0.0, ge=0.0, description="Min embedding norm (quality) to enrol; 0 disables the check."
    )
    gallery_busy_timeout_s: float = Field(
        2.0,
        gt=0.0,
        le=60.0,
        description="How long a gallery write waits for another process's lock on the SQLite "
        "database before answering 503 `storage_busy`; shorter than `gallery_timeout_s`, "
        "or the request's own bound answers first (`gallery_unavailable`).",
    )
    gallery_allow_empty: bool = Field(
        False,
        description="Start with an empty gallery although the SQLite database is missing or "
        "empty where a previous run stored data (`gallery-marker.json`); otherwise start-up "
        "refuses.",
    )

    search_batch_rows: int = Field(
        64,
        ge=1,
        description="Query faces of concurrent /identify requests searched in one index call "
        "at most; 1 = each request searches alone.",
    )
    identify_fpir: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Default false-positive identification rate of /identify: its threshold is "
        "measured on the gallery for its current size (docs/identification.md); unset = the "
        "1:1 threshold.",
    )
    fpir_probes: int = Field(
        10_000,
        ge=10,
        description="Enrolled identities searched as strangers to measure FPIR thresholds; "
        "an FPIR needs 10 / FPIR of them (10000 supports 1e-3).",
    )

    # --- gallery backend --------------------------------------------------------------------
    gallery_backend: Literal["sqlite", "milvus"] = Field(
        "sqlite",
        description="`sqlite`: embedded (SQLite file + a FAISS index per worker); `milvus`: "
        "identities, faces and search in Milvus, shared by every replica.",
    )
    milvus_uri: str = Field(
        "http://127.0.0.1:19530", description="Milvus server (with `gallery_backend=milvus`)."
    )
    milvus_token: SecretStr | None = Field(
        None, description="Milvus token (`user:password` or an API key) for a secured cluster."
    )
    milvus_collection_prefix: str = Field(
        "faceverify",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="Prefix of the gallery's Milvus collection names (several galleries, one "
        "server).",
    )

    gallery_timeout_s: float = Field(
        5.0,
        gt=0.0,
        le=300.0,
        description="Longest wait for the gallery (each Milvus request, and each gallery call "
        "of a request); beyond, 503 `gallery_unavailable` with Retry-After.",
    )
    gallery_concurrency: int = Field(
        16,
        ge=1,
        description="Gallery calls run at once per worker, in their own threads (apart from "
        "inference); four times as many may wait, beyond that 503 `gallery_unavailable`.",
    )

    # --- quality (service/faces/quality.py, docs/quality.md) -------------------------------
    enrol_quality: Literal["off", "low", "medium", "high"] = Field(
        "medium",
        description="Lowest quality level enrolled; `medium` refuses only `low` faces (those "
        "with a reason); `off` and `low` enrol every level.",
    )
    min_embedding_norm: float = Field(
        0.0,
        ge=0.0,
        description="Embedding norm under which a face gets `low_embedding_norm` "
        "(recognizer-specific); 0 = not checked.",
    )
    liveness: Literal["off", "report", "require"] = Field(
        "off",
        description="Passive liveness check (docs/liveness.md): `off` runs it only for "
        "requests with `liveness=true`; `report` by default, adding each used face's "
        "verdict; `require` on every request, refusing attacks with 422 `liveness_failed`.",
    )

    # --- server -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=1, le=65535, description="Port to bind.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    console: bool = Field(
        True, description="Serve the browser console at /console (and redirect / there)."
    )
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys (at least 16 characters each); when set, every "
        "route but /healthz, /readyz, /metrics and the docs needs one.",
    )

    # --- keys and limits (service/keys.py, service/api/ratelimit.py) -------------------------
    api_keys_file: Path | None = Field(
        None,
        description="JSON file of hashed, named, scoped keys (`python -m service keys`); "
        "re-read when it changes.",
    )
    rate_limit: float = Field(
        0.0,
        ge=0.0,
        description="Requests per second per key (per client address without "
        "keys), per worker; 0 = no limit.",
    )
    rate_burst: int = Field(10, ge=1, description="Requests a client may send at once.")
    identify_candidate_floor: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Lowest similarity of a candidate /identify lists to a key without "
        "`gallery:read`; default: the decision threshold (FACEVERIFY_THRESHOLD, else the pack's).",
    )
    metrics_gallery_counts: bool | None = Field(
        None,
        description="Export the gallery's identity and face counts on the open /metrics; "
        "default: only when API keys are off (/status keeps them behind `gallery:read`).",
    )

    # --- the HTTP edge (service/api/hosts.py, origin.py, uploads.py; docs/security.md) -------
    allowed_hosts: str = Field(
        "",
        description="Comma-separated `Host` names (optionally with `:port`) the service answers; "
        "empty = localhost names, loopback addresses and FACEVERIFY_HOST unless it is a wildcard "
        "address; `*` = any.",
    )
    allowed_origins: str = Field(
        "",
        description="Comma-separated origins (`https://app.example.com`) whose pages may send "
        "state-changing requests besides the service's own.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated proxy addresses or networks whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; empty = none (the client address is the peer's).",
    )
    header_timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="Seconds a request's line and headers may take to arrive (from the "
        "connection's start or the previous answer); beyond, the connection is closed.",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0.0,
        description="Seconds a request's whole body may take to arrive; beyond, 408 "
        "`request_timeout`.",
    )

    @model_validator(mode="after")
    def _busy_timeout_within_the_gallery_timeout(self) -> Settings:
        if self.gallery_busy_timeout_s >= self.gallery_timeout_s:
            raise ValueError(
                f"FACEVERIFY_GALLERY_BUSY_TIMEOUT_S ({self.gallery_busy_timeout_s:g}) must be "
                f"shorter than FACEVERIFY_GALLERY_TIMEOUT_S ({self.gallery_timeout_s:g}): a "
                "locked database would otherwise answer gallery_unavailable, not storage_busy"
            )
        return self

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        keys = [key.strip() for key in value.get_secret_value().split(",")]
        if not all(keys):
            raise ValueError("an API key is empty (check the commas)")
        short = sum(len(key) < MIN_API_KEY_LENGTH for key in keys)
        if short:
            raise ValueError(
                f"{short} API key(s) shorter than {MIN_API_KEY_LENGTH} characters; "
                "make them with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return value

    def keys_enabled(self) -> bool:
        """Whether requests need a key (FACEVERIFY_API_KEYS or FACEVERIFY_API_KEYS_FILE)."""
        return self.api_keys is not None or self.api_keys_file is not None

    def metrics_gallery_counts_exported(self) -> bool:
        """Whether /metrics shows the gallery's counts: as set, else only without keys."""
        if self.metrics_gallery_counts is None:
            return not self.keys_enabled()
        return self.metrics_gallery_counts

    def api_key_list(self) -> tuple[str, ...]:
        """The API keys, or () when none are set."""
        if self.api_keys is None:
            return ()
        return tuple(key.strip() for key in self.api_keys.get_secret_value().split(","))
