"""What every command shares: one way to fail, and the settings read once, in one line on error."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from service.settings import Settings


class CommandError(Exception):
    """A command cannot go on; `main` prints the message as one line and exits 2."""


def fail(message: str) -> int:
    """Print `faceverify: message` on stderr; the exit status of a failed command."""
    print(f"faceverify: {message}", file=sys.stderr)
    return 2


def settings_errors(error: ValidationError) -> str:
    """A validation error of `Settings` in one line, by environment variable. Values of secret
    settings (API keys) are never repeated."""
    prefix = Settings.model_config.get("env_prefix", "")
    secret = {
        name
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    parts = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"])
        value = "<hidden>" if name in secret else repr(item["input"])
        parts.append(f"{prefix}{name.upper()}={value}: {item['msg']}")
    return "; ".join(parts)


def load_settings() -> Settings:
    """Settings from the environment, or `CommandError` naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise CommandError(f"invalid settings: {settings_errors(exc)}") from exc
