"""Logging set-up: one line per call without a write system call per call.

Records are formatted on the calling thread (cheap) and written in batches by a
background thread every ``interval`` seconds, so a busy gateway does one ``write``
per batch instead of one per request. Errors flush at once.

``[server] log_format = "json"`` writes one JSON object per line instead: the call record
(:func:`call_record`, ``"event": "call"``) and every other record (time, level, logger,
message, exception). In both formats secrets are scrubbed from every record except the call
record, which is built only from fields that hold none: API keys (``sk-…``), bearer tokens,
and the configured upstream keys, admin token and signing secret (:func:`add_secrets`).
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson

from .redact import REDACTED as REDACTED  # re-exported: where the scrubbing used to live
from .redact import add_secrets as add_secrets
from .redact import redact

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# The scrubbing itself lives in stepplan/redact.py (error bodies use it too); re-exported here.


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and exception, stack)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": _stamp(record.created), "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        text = orjson.dumps(out).decode()
        return redact(text)


class _Seconds:
    """A time's date and time to the second, formatted once per second (not once per line)."""

    def __init__(self, fmt: str, convert: Callable[[float], time.struct_time]) -> None:
        self.fmt, self.convert = fmt, convert
        self.last: tuple[int, str] = (-1, "")

    def __call__(self, now: float) -> str:
        sec = int(now)
        if self.last[0] != sec:
            self.last = (sec, time.strftime(self.fmt, self.convert(sec)))
        return self.last[1]


_utc_second = _Seconds("%Y-%m-%dT%H:%M:%S", time.gmtime)  # JSON lines
_second = _Seconds("%Y-%m-%d %H:%M:%S", time.localtime)  # text lines


def _stamp(now: float) -> str:
    return f"{_utc_second(now)}.{int(now % 1 * 1000):03d}Z"


class BatchingHandler(logging.Handler):
    def __init__(self, stream: TextIO | None = None, interval: float = 0.2):
        super().__init__()
        self.stream = stream or sys.stderr
        self.interval = interval
        # A deque: emitters on any thread append, the writer thread pops what is there. (Swapping
        # a list could lose a line appended to the old list after the writer had read it.)
        self._buf: collections.deque[str] = collections.deque()
        self._flushing = threading.Lock()  # the writer thread and close() may flush at once
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            self._buf.append(line)
        except Exception:
            self.handleError(record)
        if record.levelno >= logging.ERROR:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        buf = self._buf
        if not buf:
            return
        with self._flushing:
            pop = buf.popleft
            text = "".join([pop() for _ in range(len(buf))])  # lines appended meanwhile wait for the next flush
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self.flush()
        super().close()


_batching: BatchingHandler | None = None
json_format = False  # [server] log_format = "json"


def call_line(logger: logging.Logger, message: str) -> None:
    """Log an INFO line on the hot path: straight into the batch, skipping LogRecord
    creation and formatting, with the same layout as every other line."""
    if _batching is None or not logger.isEnabledFor(logging.INFO):
        logger.info("%s", message)
        return
    now = time.time()
    _batching._buf.append(f"{_second(now)},{int(now % 1 * 1000):03d} INFO {logger.name} {message}\n")


def call_record(logger: logging.Logger, fields: dict[str, Any], text: str) -> None:
    """The per-call record: ``text`` as one line, or with ``log_format = "json"`` the ``fields``
    as one JSON object (``"event": "call"``). Neither is scrubbed: both hold no secret by construction."""
    if not json_format:
        call_line(logger, text)
        return
    if not logger.isEnabledFor(logging.INFO):
        return
    line = orjson.dumps({"time": _stamp(time.time()), "level": "INFO", "logger": logger.name, "event": "call",
                         **fields}).decode()
    if _batching is None:
        logger.info("%s", line)
        return
    _batching._buf.append(line + "\n")


def flush() -> None:
    """Write what the batching handler holds now. The server calls it at the end of shut-down:
    uvicorn ends a process stopped by SIGTERM by raising the signal again, so nothing at exit
    (``logging.shutdown``) would write the lines of the last 0.2 s."""
    if _batching is not None:
        _batching.flush()


def setup_logging(level: str, fmt: str = "text") -> None:
    global _batching, json_format
    root = logging.getLogger()
    root.setLevel(level.upper())
    json_format = fmt == "json"
    formatter: logging.Formatter = JSONFormatter() if json_format else RedactingFormatter(FORMAT)
    existing = [h for h in root.handlers if isinstance(h, BatchingHandler)]
    if existing:
        existing[0].setFormatter(formatter)
        return
    handler = _batching = BatchingHandler()
    handler.setFormatter(formatter)
    root.handlers[:] = [handler]
    if json_format:
        logging.captureWarnings(True)  # Python warnings become (JSON) log records too
    import atexit

    atexit.register(handler.flush)
