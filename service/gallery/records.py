"""What an identity and an enrolled embedding may hold: one set of rules, applied to the HTTP
API's bodies (`service.api.schemas_gallery` uses these models) and to the lines of a
`gallery import` file (`service.gallery.transfer`), so the two can never disagree."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Identity names are labels for people, not documents; 200 characters covers any real name.
MAX_NAME_LENGTH = 200
# Metadata is a small JSON object of the client's own keys (employee number, notes...); the
# cap keeps one identity row small and bounded whatever a client sends.
MAX_METADATA_BYTES = 16 * 1024
# Byte size alone does not bound the cost of a document: 520 bytes of "[[[[..." nest 256
# levels, past what the JSON serialiser will write back. Metadata is a record of the
# client's own fields, so a few levels and a few hundred keys (all levels together) are ample.
MAX_METADATA_DEPTH = 10
MAX_METADATA_KEYS = 500

_NAME = Field(min_length=1, max_length=MAX_NAME_LENGTH, description="Display name.")
_METADATA_DESCRIPTION = (
    f"Free JSON object of your own: at most {MAX_METADATA_BYTES} bytes, "
    f"{MAX_METADATA_DEPTH} levels of nesting and {MAX_METADATA_KEYS} keys."
)


def metadata_shape(metadata: Any) -> tuple[int, int]:
    """(depth, keys) of a JSON value: objects and arrays nested inside the top-level object
    (the object itself is depth 1), and object keys counted over every level. Iterative, so
    any depth is measured without recursion."""
    depth, keys = 0, 0
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            keys += len(value)
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in children)
    return depth, keys


def _check_name(name: str | None) -> str | None:
    if name is not None and not name.strip():
        raise ValueError("name must not be blank")
    return None if name is None else name.strip()


def _check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """Metadata must come back as it was sent, so refuse what JSON answers cannot carry:
    unpaired surrogates ("\\ud800" is legal JSON text but not Unicode, and no UTF-8 answer
    can hold it) and NaN / Infinity (Python reads them, JSON has no such numbers)."""
    if metadata is None:
        return None
    depth, keys = metadata_shape(metadata)
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(
            f"metadata is nested {depth} levels deep; the limit is {MAX_METADATA_DEPTH}"
        )
    if keys > MAX_METADATA_KEYS:
        raise ValueError(f"metadata has {keys} keys; the limit is {MAX_METADATA_KEYS}")
    try:
        json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError as exc:
        raise ValueError(
            "metadata must be Unicode text: it holds an unpaired surrogate "
            f"({exc.object[exc.start : exc.end]!r})"
        ) from None
    except ValueError:
        raise ValueError("metadata numbers must be finite: NaN and Infinity are not JSON") from None
    if len(json.dumps(metadata).encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is over {MAX_METADATA_BYTES} bytes of JSON")
    return metadata


class IdentityCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "Ada Lovelace", "metadata": {"staff_id": 42}}]},
    )

    name: str = _NAME
    metadata: dict[str, Any] = Field(default_factory=dict, description=_METADATA_DESCRIPTION)

    _name = field_validator("name")(_check_name)
    _metadata = field_validator("metadata")(_check_metadata)


class IdentityUpdate(BaseModel):
    """Fields to change; absent fields keep their value. `metadata` replaces the whole object."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_LENGTH)
    metadata: dict[str, Any] | None = Field(None, description=_METADATA_DESCRIPTION)

    _name = field_validator("name")(_check_name)
    _metadata = field_validator("metadata")(_check_metadata)


# Longest embedding POST /identities/{id}/embeddings accepts (the largest recognizers emit 512).
MAX_EMBEDDING_VALUES = 4096


class EmbeddingEnrol(BaseModel):
    """An embedding computed by another system with the loaded model, to enrol as a face."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1, max_length=256, description="Model that made it (GET /readyz `model`)."
    )
    embedding: list[float] = Field(
        min_length=1,
        max_length=MAX_EMBEDDING_VALUES,
        description="The embedding, as the model output it (it is L2-normalised here).",
    )
