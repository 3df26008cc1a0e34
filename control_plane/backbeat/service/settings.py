"""Helpers for the typed settings of each component: env defaults, environments, masking."""

from __future__ import annotations

import dataclasses
import os
import re
from enum import StrEnum
from typing import Any

#: Field names that hold secrets: printed masked. Identifiers (``key_id``, ``role_id``,
#: ``node_id``) are not secrets, but an AppRole ``secret_id`` is a credential.
_SECRET_NAME = re.compile(r"(token|password|secret|key)(?!_id)|(^|_)secret_id$", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@]*):(?P<pw>[^@/]+)@")


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"

    @classmethod
    def from_env(cls) -> Environment:
        raw = os.environ.get("BACKBEAT_ENV", cls.DEVELOPMENT.value).strip().lower()
        try:
            return cls(raw)
        except ValueError:
            allowed = ", ".join(e.value for e in cls)
            raise ValueError(f"BACKBEAT_ENV={raw!r} is not one of {allowed}") from None


def env_default(name: str, default: str) -> str:
    """The value of environment variable ``name``, or ``default`` when unset or empty."""
    return os.environ.get(name) or default


def env_list(name: str, default: list[str]) -> list[str]:
    """A comma-separated environment variable as a list."""
    raw = os.environ.get(name, "")
    return [item.strip() for item in raw.split(",") if item.strip()] or list(default)


def mask_url(url: str) -> str:
    """``redis://user:pw@host`` -> ``redis://user:***@host``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


def masked(settings: Any) -> dict[str, Any]:
    """A settings dataclass as a dict, with secrets and URL passwords masked, for start-up logs."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if _SECRET_NAME.search(field.name) and value:
            out[field.name] = "***"
        elif isinstance(value, str):
            out[field.name] = mask_url(value)
        elif isinstance(value, list | tuple):
            out[field.name] = [mask_url(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, StrEnum):
            out[field.name] = value.value
        else:
            out[field.name] = value
    return out
