"""Structured logs: ``text``, ``json`` or ``logfmt`` lines, with the message and delivery ids.

The dispatcher runs each delivery in its own task inside :func:`delivery_context`; a context
variable carries the message id and delivery id from there to every record logged in that task
— the dispatcher's and the providers' alike — so every delivery line names both, whatever
logger wrote it. Formatters write only the fields listed here plus the message text, and scrub
anything that looks like a credential; message bodies are never handed to a logger.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
from collections.abc import Iterator
from typing import Any, Literal

LogFormat = Literal["text", "json", "logfmt"]

_delivery: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "gateway_delivery", default=None
)

_SECRETS = re.compile(
    r"(?i)(authorization:\s*(?:bearer|basic)\s+|(?:password|secret|api[_-]?key|token)"
    r"[\"']?\s*[=:]\s*[\"']?|whsec_|gwk_)[^\s\"',;]+"
)
"""Credential-shaped text: ``Authorization: Bearer x``, ``password=x``, ``whsec_…``."""


def redact(text: str) -> str:
    """``text`` with credential-shaped substrings replaced by ``[redacted]``."""
    return _SECRETS.sub(lambda m: m.group(1) + "[redacted]", text)


@contextlib.contextmanager
def delivery_context(message_id: str, delivery_id: int) -> Iterator[None]:
    """Records logged inside carry ``message_id`` and ``delivery_id``."""
    token = _delivery.set((message_id, delivery_id))
    try:
        yield
    finally:
        _delivery.reset(token)


class DeliveryFields(logging.Filter):
    """Adds ``message_id`` / ``delivery_id`` from :func:`delivery_context` (or ``extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _delivery.get()
        if current is not None:
            if not getattr(record, "message_id", None):
                record.message_id = current[0]
            if not getattr(record, "delivery_id", None):
                record.delivery_id = current[1]
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": redact(record.getMessage()),
    }
    for key in ("message_id", "delivery_id"):
        value = getattr(record, key, None)
        if value:
            fields[key] = value
    if record.exc_info:
        fields["error"] = redact(logging.Formatter().formatException(record.exc_info))
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False, default=str)


_BARE = re.compile(r"^[^\s=\"\\]+$")


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and _BARE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    """``key=value`` pairs, quoted where needed (the format Heroku and Grafana Loki read)."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class TextFormatter(logging.Formatter):
    """For people: time, level, logger, text, then the ids."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        ids = [
            f"{key}={getattr(record, key)}"
            for key in ("message_id", "delivery_id")
            if getattr(record, key, None) and f"{key}=" not in line
        ]
        return " ".join([line, *ids])


FORMATTERS: dict[str, type[logging.Formatter]] = {
    "text": TextFormatter,
    "json": JsonFormatter,
    "logfmt": LogfmtFormatter,
}


_installed: logging.StreamHandler[Any] | None = None


def configure_logging(level: str, log_format: LogFormat, stream: Any = None) -> logging.Handler:
    """Replace the root logger's handlers with one writing ``log_format`` to ``stream``
    (stderr by default); return that handler. (Process-wide, like logging itself.)"""
    global _installed
    handler = logging.StreamHandler(stream)
    _installed = handler
    handler.setFormatter(FORMATTERS[log_format]())
    handler.addFilter(DeliveryFields())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiosmtpd logs every command at INFO; one line per message state change is ours to write.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # uvicorn's access log would print request lines (and their query strings) per request.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    return handler


def reconfigure_logging(level: str, log_format: LogFormat) -> None:
    """After a reload: new level and format on the stream ``configure_logging`` set up (when
    it was called: a gateway embedded in tests leaves its host's logging alone)."""
    if _installed is not None:
        configure_logging(level, log_format, _installed.stream)
