"""Shared by the peer scripts in this folder (run with the project's interpreter)."""

import json
import logging
import sys
import threading
import time

_lock = threading.Lock()


def emit(event):
    """Write one JSON event line to stdout (from any thread)."""
    line = json.dumps(event)
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class EmitLogs(logging.Handler):
    """Forwards log records as ``{"ev": "log", ...}`` events."""

    def emit(self, record):
        emit(
            {
                "ev": "log",
                "level": record.levelname,
                "logger": record.name,
                "msg": record.getMessage(),
                "exc": bool(record.exc_info),
                "t": time.monotonic(),
            }
        )
