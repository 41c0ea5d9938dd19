"""One JSON object per log line, carrying the event id so a purchase can be traced end to end."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from .config import Settings, secret_values

# The password of any URL with credentials (a MONGODB_URI in a client's error message, say).
URL_PASSWORD = re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s/?#]+@")
REDACTED = "***"
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)  # built once, not per line


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Text safe for a log line: passwords in URLs and every known secret value replaced."""
    if "://" in text:  # the common line has no URL: skip the regex
        text = URL_PASSWORD.sub(rf"\g<keep>{REDACTED}@", text)
    for secret in secrets:
        text = text.replace(secret, REDACTED)  # no match: one scan, the same string back
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, secrets: tuple[str, ...] = ()):
        super().__init__()
        self.service = service
        self.secrets = secrets
        self._second: tuple[int, str] = (-1, "")  # the last second's text, reused by its other lines

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    @secrets.setter
    def secrets(self, values: tuple[str, ...]) -> None:
        self._secrets = tuple(values)
        # As they appear inside a JSON string too (a quote or backslash is escaped there).
        escaped = {json.dumps(s, ensure_ascii=False)[1:-1] for s in values}
        self._hidden = tuple(sorted({*values, *escaped}, key=len, reverse=True))

    def _time(self, created: float) -> str:
        """ISO 8601 UTC to the millisecond, as datetime.isoformat(timespec="milliseconds") gives it."""
        second = int(created)
        micro = round((created - second) * 1e6)  # rounded to the microsecond first, as datetime does
        if micro == 1_000_000:
            second, micro = second + 1, 0
        cached_second, text = self._second
        if second != cached_second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{micro // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        # Secrets never reach a log line, whatever a client library put into its message.
        return redact(_LINE_ENCODER.encode(entry), self._hidden)


def get_logger(service: str, settings: Settings) -> logging.Logger:
    """The service's JSON logger at the settings' level, hiding the settings' secrets."""
    logger = logging.getLogger(f"purchase.{service}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(service, secret_values(settings)))
        logger.addHandler(handler)
        logger.setLevel(settings.log_level.upper())
        logger.propagate = False
    return logger


def log(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """One JSON line with these fields. The record is made here rather than by Logger.log, which
    walks the stack for a caller's file and line no line shows, at twice the cost of the rest of a
    line, and buy writes one per purchase (bench/README.md)."""
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(logger.name, level, "", 0, msg, (), None, extra={"fields": fields}))
