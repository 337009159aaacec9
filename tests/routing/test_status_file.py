"""The router's status file (read by `gateway providers`) survives overlapping writes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from gateway.routing import _write_atomically


def test_overlapping_writes_of_the_status_file_never_fail(tmp_path: Path) -> None:
    """At stop, a write cancelled in the event loop can still run in its thread while the
    final write starts: both must complete, and the file always holds one whole status."""
    path = tmp_path / "routing" / "worker-1.json"
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        for i in range(300):
            try:
                _write_atomically(path, {"worker": worker, "i": i})
            except OSError as e:
                errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert json.loads(path.read_text())["i"] == 299
