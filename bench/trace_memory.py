"""Where an open stream's memory goes: run the gateway under tracemalloc, snapshot, attribute.

1. Start the gateway under tracemalloc (SIGUSR1 writes a snapshot to SNAP_DIR/snap-N.pickle)::

       SNAP_DIR=/tmp/snaps python bench/trace_memory.py serve --config CONFIG --port 18502

2. Send SIGUSR1 once idle, open N slow streams (``bench/open_streams.py ... --hold 30``), send
   SIGUSR1 again while they are held, then attribute the growth per stream::

       python bench/trace_memory.py report /tmp/snaps/snap-1.pickle /tmp/snaps/snap-2.pickle N

The report groups each allocation by the innermost frame that belongs to a known package
(the upstream HTTP client, uvicorn, starlette, or a stepplan module). Tracing slows the gateway
several-fold, so open the streams with a generous ``--batch-timeout``.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import tracemalloc
from typing import Any

GROUPS = (("/aiohttp/", "aiohttp"), ("/multidict/", "aiohttp"), ("/yarl/", "aiohttp"), ("/uvicorn/", "uvicorn"),
          ("httptools", "uvicorn"), ("/starlette/", "starlette"))


def _group(tb: tracemalloc.Traceback) -> str:
    for frame in reversed(list(tb)):  # innermost first
        name = frame.filename
        if "/stepplan/" in name:
            return "stepplan:" + name.split("/stepplan/")[-1]
        for needle, label in GROUPS:
            if needle in name:
                return label
    return "other:" + tb[-1].filename.rsplit("/", 1)[-1]


def report(before: str, after: str, streams: int) -> None:
    a, b = tracemalloc.Snapshot.load(before), tracemalloc.Snapshot.load(after)
    size: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for stat in b.compare_to(a, "traceback"):
        key = _group(stat.traceback)
        size[key] += stat.size_diff
        count[key] += stat.count_diff
    total = sum(size.values())
    print(f"traced growth {total / 1e6:.1f} MB = {total / streams / 1e3:.1f} KB per stream")
    for key, v in size.most_common(25):
        print(f"{v / streams:8.0f} B/stream {count[key] / streams:6.1f} objects  {key}")


def serve(argv: list[str]) -> int:
    tracemalloc.start(int(os.environ.get("TRACE_DEPTH", "12")))
    snap_dir = os.environ.get("SNAP_DIR", ".")
    taken = [0]

    def dump(signum: int, frame: Any) -> None:
        taken[0] += 1
        path = os.path.join(snap_dir, f"snap-{taken[0]}.pickle")
        tracemalloc.take_snapshot().dump(path)
        print(f"tracemalloc snapshot written to {path}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGUSR1, dump)
    from stepplan.cli.main import main

    sys.argv = ["stepplan", *argv]
    main()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[1:]))
    else:
        sys.exit(__doc__)
