"""The catalogue (`models/catalogue.json`, schema `Catalogue`): the packs this project knows,
where to download them, their checksums, licence and recommended threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from service.errors import PackError
from service.packs.checksums import first_error

# service/catalogue.json is a link to models/catalogue.json (packaged with the service).
CATALOGUE_PATH = Path(__file__).resolve().parents[1] / "catalogue.json"


SHA256_PATTERN = r"^[0-9a-f]{64}$"


class CatalogueFile(BaseModel):
    """One file inside a catalogued pack."""

    name: str
    role: Literal["detector", "recognizer", "other"]
    sha256: str | None = Field(None, pattern=SHA256_PATTERN)
    size: int | None = Field(None, ge=0, description="Bytes.")


class CatalogueEntry(BaseModel):
    """A known pack: where it comes from, what is inside, how to use it."""

    name: str
    url: str | None = Field(None, description="Zip archive to download; None = local-only.")
    archive_sha256: str | None = Field(None, pattern=SHA256_PATTERN)
    archive_size: int | None = Field(None, ge=0, description="Bytes.")
    files: list[CatalogueFile]
    embedding_size: int = Field(gt=0)
    threshold: float = Field(ge=-1.0, le=1.0, description="Recommended cosine threshold.")
    threshold_source: str = Field(description="How the threshold was obtained.")
    licence: str
    note: str = ""

    def file_with_role(self, role: Literal["detector", "recognizer"]) -> CatalogueFile | None:
        return next((item for item in self.files if item.role == role), None)


class Catalogue(BaseModel):
    """Contents of `models/catalogue.json`."""

    schema_version: int = 1
    packs: list[CatalogueEntry]

    @model_validator(mode="after")
    def _names_are_unique(self) -> Catalogue:
        names = self.names()
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"pack names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def names(self) -> list[str]:
        return [entry.name for entry in self.packs]

    def get(self, name: str) -> CatalogueEntry | None:
        return next((entry for entry in self.packs if entry.name == name), None)

    def match_recognizer(
        self, recognizer_sha256: str, detector_sha256: str | None = None
    ) -> CatalogueEntry | None:
        """The entry whose recognizer has this hash; one whose detector also matches first."""
        matches = [
            entry
            for entry in self.packs
            if (spec := entry.file_with_role("recognizer")) and spec.sha256 == recognizer_sha256
        ]
        for entry in matches:
            detector = entry.file_with_role("detector")
            if detector is not None and detector.sha256 == detector_sha256:
                return entry
        return matches[0] if matches else None


def load_catalogue(path: Path | None = None) -> Catalogue:
    """Read the pack catalogue (default: `<repo>/models/catalogue.json`)."""
    path = Path(path) if path is not None else CATALOGUE_PATH
    try:
        return Catalogue.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise PackError(f"cannot read the pack catalogue {path}: {exc.strerror}") from exc
    except ValidationError as exc:
        raise PackError(
            f"the pack catalogue {path} is invalid ({first_error(exc)}): fix the file"
        ) from exc
