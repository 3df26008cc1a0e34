"""Helpers for the typed settings of each component: env defaults, environments, masking."""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import timedelta
from enum import StrEnum
from typing import Any

from backbeat.core.timeline import milliseconds

#: Field names that hold secrets: printed masked. Identifiers (``key_id``, ``role_id``,
#: ``node_id``) are not secrets, but an AppRole ``secret_id`` is a credential.
_SECRET_NAME = re.compile(r"(token|password|secret|key)(?!_id)|(^|_)secret_id$", re.IGNORECASE)
#: The userinfo of a URL (``user:password@``, ``token@``), wherever URLs appear in a text.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<info>[^/@\s]+)@", re.IGNORECASE)
#: Query parameters that carry credentials (``?password=…``, ``&token=…``).
_URL_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:[a-z0-9_.-]*(?:password|passwd|pwd|token|secret|auth|key)[a-z0-9_.-]*)=)"
    r"(?P<value>[^&#\s]*)",
    re.IGNORECASE,
)


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


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["info"].partition(":")
    # user:password keeps the user name (not a secret); a lone token is all secret.
    return f"{match['scheme']}{user}:***@" if colon else f"{match['scheme']}***@"


def mask_url(text: str) -> str:
    """Every credential in the URLs of ``text`` masked: ``redis://user:pw@host`` ->
    ``redis://user:***@host``, ``nats://token@host`` -> ``nats://***@host``,
    ``?password=x`` -> ``?password=***``. Safe on any text (log lines, error messages)."""
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    return _URL_SECRET_PARAM.sub(lambda m: f"{m['name']}***", text)


def url_has_credentials(url: str) -> bool:
    """Whether ``url`` carries a user, password or token (userinfo or query parameter)."""
    return mask_url(url) != url


def masked(settings: Any) -> dict[str, Any]:
    """A settings dataclass as a dict, with secrets and URL passwords masked, for start-up logs;
    a duration ``x`` is logged as ``x_ms``."""
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
        elif isinstance(value, timedelta):  # logged in ms, as the flags take them
            out[f"{field.name}_ms"] = milliseconds(value)
        else:
            out[field.name] = value
    return out
