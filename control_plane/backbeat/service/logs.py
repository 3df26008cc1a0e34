"""Structured logs: JSON lines in production, readable lines in development.

Every line carries the bound context (cluster, node, term, beat_index, window_id, ...) and,
when a span is active, its trace_id/span_id. ``LOG_LEVEL`` sets the threshold.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog
from opentelemetry import trace

from backbeat.service.settings import mask_url

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR}  # fmt: skip


def _add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", f"{context.trace_id:032x}")
        event.setdefault("span_id", f"{context.span_id:016x}")
    return event


def _mask_url_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Mask the credentials of every URL in a log line's text values (messages, fields,
    formatted exceptions): one rule, whatever the caller remembered to mask."""
    for key, value in event.items():
        if isinstance(value, str) and ("://" in value or "=" in value):
            event[key] = mask_url(value)
    return event


class _MaskUrlSecrets(logging.Filter):
    """The same masking for the standard library's log records (NATS, Redis, aiohttp...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_url(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def parse_level(level: str | None) -> int:
    name = (level or os.environ.get("LOG_LEVEL") or "info").strip().lower()
    if name not in _LEVELS:
        raise ValueError(f"log level {name!r} is not one of {', '.join(sorted(_LEVELS))}")
    return _LEVELS[name]


def configure_logging(level: str | None = None, *, json: bool | None = None) -> None:
    """Configure structlog (and the stdlib root logger, for libraries) once per process.

    ``json`` defaults to True when BACKBEAT_ENV=production or stderr is not a terminal.
    """
    threshold = parse_level(level)
    if json is None:
        json = os.environ.get("BACKBEAT_ENV") == "production" or not sys.stderr.isatty()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_ids,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        _mask_url_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(threshold, logging.WARNING), stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_MaskUrlSecrets())


def get_logger(**context: Any) -> Any:
    """A structlog logger with ``context`` bound (e.g. component, cluster, node)."""
    return structlog.get_logger().bind(**context)
