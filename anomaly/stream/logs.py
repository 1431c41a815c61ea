"""Log formats of ``anomaly serve``: JSON lines (one object per line, with an ``event`` field)
or human-readable text, both carrying the ``extra`` fields the loop attaches."""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = "".join(traceback.format_exception(*record.exc_info)).strip()
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the ``extra`` fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD_ATTRS and not k.startswith("_") and k != "event"
        )
        return f"{line} {extras}" if extras else line


class ClosedSocketRace(logging.Filter):
    """Drops kafka-python's one known false alarm: at shutdown its I/O thread may still try to
    read a socket that ``close()`` has just released (``self._sock`` is None), and it logs an
    ERROR with a traceback for a transport it already marks ``(closed)``. Nothing is lost
    there; every other kafka-python warning and error passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "kafka.net.transport" or not record.exc_info:
            return True
        closed = "(closed)" in record.getMessage()
        return not (closed and isinstance(record.exc_info[1], AttributeError))


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Route the ``anomaly`` loggers to stderr as text or JSON lines; kafka-python stays quiet."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        handler.formatter.converter = time.gmtime
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("anomaly")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    kafka_log = logging.getLogger("kafka")
    handler.addFilter(ClosedSocketRace())
    kafka_log.handlers[:] = [handler]
    kafka_log.setLevel(max(logging.WARNING, root.level))
    kafka_log.propagate = False
