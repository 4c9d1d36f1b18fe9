"""The batching log handler loses no line when many threads log while it flushes."""

from __future__ import annotations

import io
import logging
import threading

from stepplan.logs import BatchingHandler


def test_no_line_is_lost_while_the_writer_flushes() -> None:
    out = io.StringIO()
    handler = BatchingHandler(out, interval=0.0005)  # the writer thread flushes constantly
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("stepplan.test.batching")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def emit(t: int) -> None:
        for i in range(5000):
            logger.info("t%d-%d", t, i)

    threads = [threading.Thread(target=emit, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    handler.close()
    logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert len(lines) == 20_000 and len(set(lines)) == 20_000
