"""SIGKILL durability: every message the gateway answered ``250`` to is delivered after a restart.

The gateway runs as a real ``gateway serve`` subprocess relaying to the sink in this process.
Client threads stream messages at it; partway through, the gateway is killed with SIGKILL (no
shutdown code runs), started again on the same spool, and the sink must end up with every
acknowledged message. A duplicate is allowed only for a message whose delivery was ``sending``
at the kill (perhaps handed over, not yet recorded): at-least-once, never at-most-once.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.message import DeliveryStatus
from gateway.store.base import DeliveryFilter
from gateway.store.sqlite import SqliteStore
from tests.conftest import Sink, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="process groups, SIGKILL and /proc"
)

ROOT = Path(__file__).resolve().parents[2]
SEQ = re.compile(rb"^X-Test-Seq: (\d+)\r$", re.MULTILINE)
GATEWAY_ID = re.compile(rb"^\tby (?:[a-z]+\.)?gw\.test with ESMTP id ([0-9a-f]+);", re.MULTILINE)
MAX_MESSAGES = 300
CLIENT_SECONDS = 20.0
SENDER = "app@example.com"

CONFIG = """
[gateway]
hostname = "gw.test"
data_dir = "{data}"
workers = {workers}

[smtp]
listeners = [{{ name = "dev", port = {port}, tls = "none", insecure_auth = true }}]

[delivery]
providers = ["relay"]
retry_schedule = ["1s"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {sink_port}
tls = "none"
timeout = 10
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _stat(path: Path) -> list[str] | None:
    """``state ppid pgrp ...`` from a ``/proc`` stat file (``comm`` may hold spaces)."""
    try:
        return path.read_text().rpartition(")")[2].split()
    except OSError:
        return None


def live_members(group: int) -> list[int]:
    """PIDs in process group ``group`` with a thread still running.

    A killed multi-threaded process shows its main thread as a zombie while its other threads
    are still exiting, and its sockets stay open until the last one is gone: check them all.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(entry / "stat")
        if fields is None or int(fields[2]) != group:
            continue
        try:
            threads = list((entry / "task").iterdir())
        except OSError:
            continue
        states = [f[0] for f in map(_stat, (t / "stat" for t in threads)) if f is not None]
        if any(state != "Z" for state in states):
            found.append(int(entry.name))
    return found


class GatewayProcess:
    """``python -m gateway serve`` in its own session (so its process group is ours to kill)."""

    def __init__(self, config_file: Path, logs: Path, port: int, workers: int) -> None:
        self.config_file = config_file
        self.workers = workers
        self.logs = logs
        self.port = port
        self.runs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        run = len(self.runs) + 1
        env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
        with (
            open(self.logs / f"gateway-{run}.out", "wb") as out,
            open(self.logs / f"gateway-{run}.err", "wb") as err,
        ):
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "-c", str(self.config_file), "serve"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.runs.append(proc)
        wait_until(
            lambda: proc.poll() is not None or accepts_connections(self.port),
            timeout=15,
            what=f"gateway run {run} to listen",
        )
        assert proc.poll() is None, f"gateway run {run} exited early:\n{self.stderr(run)}"
        return proc

    def stderr(self, run: int) -> str:
        path = self.logs / f"gateway-{run}.err"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill_all(self) -> None:
        for proc in self.runs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


class Clients:
    """Threads sending one message per transaction, each tagged ``X-Test-Seq: N``; they
    reconnect every few messages (so SO_REUSEPORT spreads them over workers) and after errors."""

    def __init__(self, port: int, threads: int = 2) -> None:
        self.port = port
        self.acked: list[int] = []
        self.unanswered: list[int] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._numbers = itertools.count(1)
        self._deadline = time.monotonic() + CLIENT_SECONDS
        self._threads = [
            threading.Thread(target=self._run, name=f"client-{i}", daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(15)
        assert not any(t.is_alive() for t in self._threads), "a client thread is stuck"

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def _next(self) -> int | None:
        with self.lock:
            n = next(self._numbers)
        return n if n <= MAX_MESSAGES else None

    def _run(self) -> None:
        client: smtplib.SMTP | None = None
        sent_on_connection = 0
        while not self.stop.is_set() and time.monotonic() < self._deadline:
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
                    sent_on_connection = 0
            except OSError:
                self.stop.wait(0.02)  # the gateway is down: back off, then reconnect
                continue
            n = self._next()
            if n is None:
                break
            body = (
                f"From: <{SENDER}>\r\nTo: <user{n}@example.org>\r\nSubject: crash test {n}\r\n"
                f"X-Test-Seq: {n}\r\n\r\nmessage {n}\r\n"
            ).encode()
            try:
                client.sendmail(SENDER, [f"user{n}@example.org"], body)
            except (smtplib.SMTPException, OSError):
                with self.lock:
                    self.unanswered.append(n)
                _close(client)
                client = None
                continue
            with self.lock:
                self.acked.append(n)
            sent_on_connection += 1
            if sent_on_connection == 5:
                _close(client)
                client = None
        if client is not None:
            _close(client)


def _close(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def received(sink: Sink) -> dict[int, list[str]]:
    """Gateway message ids of the copies the sink received, by ``X-Test-Seq``."""
    with sink.lock:
        data = [m.data for m in sink.messages]
    copies: dict[int, list[str]] = collections.defaultdict(list)
    for raw in data:
        seq, gateway_id = SEQ.search(raw), GATEWAY_ID.search(raw)
        assert seq and gateway_id, f"a message the test did not send: {raw[:300]!r}"
        copies[int(seq.group(1))].append(gateway_id.group(1).decode())
    return copies


async def _spool_state(spool: Path) -> tuple[dict[DeliveryStatus, int], set[str]]:
    """Delivery counts by status, and the ids of messages with a delivery ``sending``."""
    store = SqliteStore(spool, all_shards=True)
    await store.open()
    try:
        counts = {status: n for status, n in (await store.counts()).items() if n}
        where = DeliveryFilter(statuses=[DeliveryStatus.SENDING], limit=100_000)
        return counts, {d.message_id for d in await store.list_deliveries(where)}
    finally:
        await store.close()


def spool_state(gw: GatewayProcess) -> tuple[dict[DeliveryStatus, int], set[str]]:
    return asyncio.run(_spool_state(gw.config_file.parent / "data" / "spool"))


@pytest.fixture
def gateway_process(
    tmp_path: Path, sink: Sink, request: pytest.FixtureRequest
) -> Iterator[GatewayProcess]:
    port = free_port()
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        CONFIG.format(data=tmp_path / "data", workers=request.param, port=port, sink_port=sink.port)
    )
    process = GatewayProcess(config_file, tmp_path, port, workers=request.param)
    try:
        yield process
    finally:
        process.kill_all()  # whatever happened, nothing we started outlives the test
        for proc in process.runs:
            assert live_members(proc.pid) == [], "a gateway process outlived the test"


@pytest.mark.parametrize("gateway_process", [1, 2], indirect=True, ids=["1-worker", "2-workers"])
def test_sigkill_loses_no_acknowledged_message(gateway_process: GatewayProcess, sink: Sink) -> None:
    gw = gateway_process
    # A few recipients answer 451 first, so some mail waits ``deferred`` when the kill comes.
    for n in range(3, MAX_MESSAGES, 7):
        sink.script(f"user{n}@example.org", "RCPT", ["451 4.3.0 try later"])

    first = gw.start()
    with Clients(gw.port) as clients:
        wait_until(lambda: clients.acked_count() >= 30, timeout=15, what="30 acknowledged")
        # Freeze the sink: its handlers take ``sink.lock``, so while the test holds it the
        # sink's event loop stands still and every delivery started now hangs in ``sending``.
        # The kill then certainly interrupts deliveries, not just queued mail.
        with sink.lock:
            wait_until(lambda: clients.acked_count() >= 60, timeout=15, what="60 acknowledged")
            if gw.workers == 1:
                os.killpg(first.pid, signal.SIGKILL)
            else:
                # Only the supervisor: its workers must die with it (PR_SET_PDEATHSIG), or
                # they would keep serving the port and writing their spool shards.
                os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
            wait_until(lambda: not live_members(first.pid), timeout=10, what="workers to die")
            assert not accepts_connections(gw.port), "nothing may still listen after the kill"
        acked_at_kill = clients.acked_count()
        _, in_flight = spool_state(gw)  # what ``recover`` will have to return to the queue

        second = gw.start()
        wait_until(
            lambda: clients.acked_count() >= acked_at_kill + 40 or clients.stop.is_set(),
            timeout=15,
            what="the restarted gateway to accept mail",
        )
    with clients.lock:
        acked, unanswered = set(clients.acked), set(clients.unanswered)

    try:
        wait_until(
            lambda: acked <= set(received(sink)),
            timeout=20,
            what="every acknowledged message at the sink",
        )
    except AssertionError:
        pass  # the assertions below say what is missing, with the counts
    got = received(sink)
    missing = sorted(acked - set(got))
    duplicated = {n: ids for n, ids in got.items() if len(ids) > 1}
    summary = (
        f"workers={gw.workers}: {len(acked)} acknowledged ({acked_at_kill} before the kill), "
        f"{len(unanswered)} unanswered, {len(got)} distinct at the sink in "
        f"{sum(map(len, got.values()))} copies, {len(in_flight)} in flight at the kill; "
        f"duplicates (seq: gateway ids) {duplicated}; missing {missing[:20]}"
    )
    assert not missing, f"acknowledged mail was lost: {summary}\n{gw.stderr(2)}"
    assert set(got) <= acked | unanswered, f"the sink got messages nobody sent: {summary}"
    for ids in duplicated.values():
        assert len(ids) == 2 and ids[0] == ids[1] and ids[0] in in_flight, (
            f"only mail in flight at the kill may arrive twice, as the same message: {summary}"
        )
    assert acked_at_kill >= 60 and len(acked) > acked_at_kill, summary
    assert in_flight, f"the kill interrupted no delivery, so recovery went untested: {summary}"

    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0, f"the restarted gateway did not stop cleanly:\n{gw.stderr(2)}"
    # Every record agrees with the sink: one ``delivered`` per distinct message that arrived;
    # anything else can only be mail whose 250 the client never saw, still waiting to retry.
    counts, _ = spool_state(gw)
    final = received(sink)
    assert counts.pop(DeliveryStatus.DELIVERED, 0) == len(final), f"{counts}: {summary}"
    assert set(counts) <= {DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED}, f"{counts}: {summary}"
    assert sum(counts.values()) <= len(unanswered - set(final)), f"{counts}: {summary}"
