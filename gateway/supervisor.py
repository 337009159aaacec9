"""The supervisor of ``gateway.workers = N``: forks the workers, replaces one that dies.

A worker that exits without being told to (SIGKILLed by the OOM killer, a segfault in a C
extension, an error nothing caught) is forked again in its slot: the same index, so the same
spool shard, whose deliveries left ``sending`` its replacement's ``recover`` returns to the
queue. A shard is never left without a worker while the supervisor runs. The wait before a
restart doubles with each quick death of the slot (``RESTART_FIRST_SECONDS`` up to
``RESTART_MAX_SECONDS``) and starts over once a worker has lived ``STABLE_SECONDS``. Every
restart is logged and counted in ``<data_dir>/run/worker-restarts.json``, which each worker's
``/metrics`` reports as ``gateway_worker_restarts``. A slot that dies quickly
``CRASH_LOOP_LIMIT`` times in a row (a worker that cannot start) stops the whole gateway
with status 1, so the service manager sees the failure.

SIGTERM and SIGINT are forwarded as SIGTERM, SIGHUP as SIGHUP; after a stop signal nothing is
restarted and the exit status is the first non-zero one of the workers (0 after a clean stop).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from gateway import durable

log = logging.getLogger("gateway.supervisor")

RESTART_FIRST_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
STABLE_SECONDS = 60.0
CRASH_LOOP_LIMIT = 5
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def restarts_file(data_dir: Path) -> Path:
    return Path(data_dir) / "run" / "worker-restarts.json"


def read_restarts(data_dir: Path) -> dict[int, int]:
    """Restarts per worker slot since the supervisor started (empty without a supervisor)."""
    try:
        raw = restarts_file(data_dir).read_bytes()
    except OSError:
        return {}
    try:
        return msgspec.json.decode(raw, type=dict[int, int])
    except msgspec.DecodeError:
        return {}


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


class Supervisor:
    """Runs ``run_worker(index)`` in ``workers`` forked processes until a stop signal.

    :param run_worker: what a forked child runs; its return value is the child's exit code.
    :param data_dir: where the restart counts are written.
    """

    def __init__(self, workers: int, run_worker: Callable[[int], int], data_dir: Path) -> None:
        self.workers = workers
        self.run_worker = run_worker
        self.data_dir = data_dir
        self.pid = os.getpid()
        self.children: dict[int, tuple[int, float]] = {}
        """pid → (slot, when it was forked)."""
        self.restarts = dict.fromkeys(range(workers), 0)
        self._quick_deaths = dict.fromkeys(range(workers), 0)
        self.stopping = False
        self.status = 0

    def run(self) -> int:
        self._write_restarts()
        for index in range(self.workers):
            self._fork(index)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._forward)
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            if self.stopping:
                self.status = self.status or os.waitstatus_to_exitcode(status)
                continue
            self._replace(slot[0], pid, status, time.monotonic() - slot[1])
        return self.status

    def _fork(self, index: int) -> None:
        # A SIGTERM arriving while a worker is still starting must wait for its handler, not
        # kill it: blocked across the fork; the worker unblocks once its loop handles it.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(index)
            self.children[pid] = (index, time.monotonic())
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _child(self, index: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        # Until the worker's loop installs its handlers, a SIGHUP must not kill it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        code = 1
        try:
            _die_with_parent()
            if os.getppid() != self.pid:  # the supervisor died before prctl took effect
                os._exit(1)
            code = self.run_worker(index)
        except BaseException:
            log.exception("worker %d crashed", index)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _replace(self, index: int, pid: int, status: int, lived: float) -> None:
        quick = self._quick_deaths[index] + 1 if lived < STABLE_SECONDS else 1
        self._quick_deaths[index] = quick
        if quick > CRASH_LOOP_LIMIT:
            log.error(
                "worker %d (pid %d) %s; it died %d times in a row within %gs of starting:"
                " stopping the gateway",
                index,
                pid,
                describe_exit(status),
                quick - 1,
                STABLE_SECONDS,
            )
            self.status = 1
            self._forward(signal.SIGTERM, None)
            return
        wait = min(RESTART_FIRST_SECONDS * 2 ** (quick - 1), RESTART_MAX_SECONDS)
        self.restarts[index] += 1
        log.error(
            "worker %d (pid %d) %s unexpectedly; restarting it in %.1fs (restart %d of this"
            " worker)",
            index,
            pid,
            describe_exit(status),
            wait,
            self.restarts[index],
        )
        self._write_restarts()
        deadline = time.monotonic() + wait
        while not self.stopping and time.monotonic() < deadline:
            # Short naps so a stop signal during the wait is seen at once.
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if not self.stopping:
            self._fork(index)

    def _write_restarts(self) -> None:
        try:
            durable.write_file(restarts_file(self.data_dir), msgspec.json.encode(self.restarts))
        except OSError as e:
            log.warning("cannot write the worker restart counts: %s", e)

    def _forward(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            self.stopping = True
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM)


def _die_with_parent() -> None:
    """Workers get SIGKILL when the supervisor dies, so no orphan keeps a port or a shard."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
