"""Log formats (Triton's ``--log-format default|ISO8601``, plus ``json``) and lifecycle events.

A lifecycle event (model load, unload, load failure, drain, worker start and exit, the metrics endpoint)
is one log line with a fixed ``event`` name and fields, written through :func:`event`, so an operator can
alert on ``event=model_load_failed`` in json and still read the same line in the default format.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

LOG_FORMATS = ("default", "ISO8601", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def event(logger: logging.Logger, name: str, message: str, *args: Any, level: int = logging.INFO,
          **fields: Any) -> None:
    """Log lifecycle event ``name``: ``message % args`` for people, ``fields`` for machines (json)."""
    logger.log(level, message, *args, extra={"event": name, "fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, event and its fields."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if self.worker is not None:
            line["worker"] = self.worker
        name = getattr(record, "event", None)
        if name:
            line["event"] = name
            line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _EventFormatter(logging.Formatter):
    """The text formats, with an event's name and fields appended as ``event=... key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        name = getattr(record, "event", None)
        if name:
            fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
            text += f" [event={name}{' ' + fields if fields else ''}]"
        return text


def configure_logging(log_format: str, level: str, worker: int | None = None) -> None:
    """Set the root logger's handler for ``tensorwire serve`` (and each worker process)."""
    tag = f"[worker {worker}] " if worker is not None else ""
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter(worker)
    elif log_format == "ISO8601":
        formatter = _EventFormatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        formatter.converter = time.gmtime
    else:
        formatter = _EventFormatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
