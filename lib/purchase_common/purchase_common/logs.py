"""One JSON object per log line, carrying the event id so a purchase can be traced end to end."""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys

from .config import secret_values, settings

# The password of any URL with credentials (a MONGODB_URI in a client's error message, say).
URL_PASSWORD = re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s/?#]+@")
REDACTED = "***"


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Text safe for a log line: passwords in URLs and every known secret value replaced."""
    text = URL_PASSWORD.sub(rf"\g<keep>{REDACTED}@", text)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service
        # As they appear inside a JSON string too (a quote or backslash is escaped there).
        self.secrets = secret_values(settings())

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        # Secrets never reach a log line, whatever a client library put into its message.
        secrets = self.secrets + tuple(json.dumps(s, ensure_ascii=False)[1:-1] for s in self.secrets)
        return redact(json.dumps(entry, ensure_ascii=False, default=str), secrets)


def get_logger(service: str) -> logging.Logger:
    logger = logging.getLogger(f"purchase.{service}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(service))
        logger.addHandler(handler)
        logger.setLevel(settings().log_level.upper())
        logger.propagate = False
    return logger


def log(logger: logging.Logger, level: int, msg: str, **fields) -> None:
    logger.log(level, msg, extra={"fields": fields})
