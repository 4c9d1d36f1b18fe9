"""Logging set-up: one line per call without a write system call per call.

Records are formatted on the calling thread (cheap) and written in batches by a
background thread every ``interval`` seconds, so a busy gateway does one ``write``
per batch instead of one per request. Errors flush at once.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


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


def call_line(logger: logging.Logger, message: str) -> None:
    """Log an INFO line on the hot path: straight into the batch, skipping LogRecord
    creation and formatting, with the same layout as every other line."""
    if _batching is None or not logger.isEnabledFor(logging.INFO):
        logger.info("%s", message)
        return
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    _batching._buf.append(f"{stamp},{int(now % 1 * 1000):03d} INFO {logger.name} {message}\n")


def setup_logging(level: str) -> None:
    global _batching
    root = logging.getLogger()
    root.setLevel(level.upper())
    if any(isinstance(h, BatchingHandler) for h in root.handlers):
        return
    handler = _batching = BatchingHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    root.handlers[:] = [handler]
    import atexit

    atexit.register(handler.flush)
