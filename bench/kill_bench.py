"""Kill benchmark: SIGKILLs of the whole gateway and of single workers under SMTP load, plus
Redis restarts for the Redis backend; counts what a sink received against what was
acknowledged. ``lost`` must be 0: every ``250`` is a promise.

Per setup, on loopback only: a sink (aiosmtpd, in this process, answering each DATA after
``--sink-delay`` so deliveries are in flight at every fault), a private ``redis-server``
(AOF on, ``appendfsync always``) for Redis setups, and the gateway as real ``gateway serve``
processes relaying to the sink. Client threads send numbered messages (``X-Bench-Seq``),
reconnecting after any error; a message counts as acknowledged only once its ``250`` arrived.
Faults are spread over the load, one every ``--every`` acknowledged messages:

* ``gateway kill``: SIGKILL of a node's whole process group (supervisor and workers), then the
  node is started again on the same data directory;
* ``worker kill`` (``workers`` ≥ 2): SIGKILL of one worker; the supervisor replaces it;
* ``redis restart`` (Redis setups): SIGKILL of ``redis-server``, started again on its files.

Setups: ``sqlite1`` (one node, one worker), ``sqlite2`` (one node, two workers), ``redis2`` (two
nodes of one worker on one Redis, lease 5 s). Afterwards the harness waits until every
acknowledged message reached the sink (bounded), then reports acknowledged, delivered (distinct
acknowledged messages at the sink), lost (acknowledged, never delivered), duplicated (copies
beyond the first) and unacknowledged-but-delivered (the client lost the ``250``, the gateway
had the message: allowed). Duplicates come from deliveries in flight at a kill: sent, outcome
not yet recorded (at-least-once, ``docs/durability.md``); their bound is the deliveries that
can be in flight in the processes killed (``delivery.concurrency`` = 20 each). The run fails
(exit 1) when anything is lost or the duplicates pass that bound.

Usage::

    .venv/bin/python bench/kill_bench.py [--setups sqlite1,sqlite2,redis2] [--kills 3]
        [--worker-kills 3] [--redis-restarts 3] [--messages 1500] [--sessions 4]
        [--every 60] [--sink-delay 0.01] [--seconds 90]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SEQ = re.compile(rb"^X-Bench-Seq: (\d+)\r?$", re.MULTILINE)
SENDER = "bench@example.com"
LEASE = "5s"
CONCURRENCY = 20
SETUPS = {"sqlite1": ("sqlite", 1, 1), "sqlite2": ("sqlite", 1, 2), "redis2": ("redis", 2, 1)}
"""name → (backend, nodes, workers per node)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


# --- the sink ---------------------------------------------------------------------------------


class Sink:
    """An aiosmtpd server on loopback counting copies by ``X-Bench-Seq``."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.copies: collections.Counter[int] = collections.Counter()
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        sink = self

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
                await asyncio.sleep(sink.delay)
                found = SEQ.search(envelope.original_content or b"")
                if found:
                    with sink.lock:
                        sink.copies[int(found.group(1))] += 1
                return "250 2.0.0 OK"

        async def listen() -> asyncio.Server:
            return await self.loop.create_server(
                lambda: SMTP(Handler(), hostname="sink.bench", loop=self.loop), "127.0.0.1", 0
            )

        self.server = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def received(self) -> dict[int, int]:
        with self.lock:
            return dict(self.copies)

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# --- servers ------------------------------------------------------------------------------------


class Redis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        directory.mkdir()
        self.command = [
            REDIS_SERVER,
            *("--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(directory)),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
            *("--logfile", str(directory / "redis.log"), "--daemonize", "no"),
        ]
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        wait_for(self._answers, 20, "redis-server to answer")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


CONFIG = """
[gateway]
hostname = "{name}.gw.bench"
data_dir = "{data}"
workers = {workers}
log_level = "warning"
shutdown_grace = "5s"

[smtp]
listeners = [{{ name = "dev", port = {port}, tls = "none", insecure_auth = true }}]

[tenants.bench]
smtp_networks = ["127.0.0.1/32"]

[delivery]
providers = ["relay"]
retry_schedule = ["1s"]
concurrency = {concurrency}

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {sink}
tls = "none"
timeout = 10
"""


class Node:
    """One ``gateway serve`` (a supervisor when workers ≥ 2) in its own process group."""

    def __init__(self, directory: Path, name: str, workers: int, sink: int, store: str) -> None:
        directory.mkdir()
        self.directory = directory
        self.port = free_port()
        self.workers = workers
        self.config = directory / "gateway.toml"
        self.config.write_text(
            CONFIG.format(
                name=name,
                data=directory / "data",
                workers=workers,
                port=self.port,
                sink=sink,
                concurrency=CONCURRENCY,
            )
            + store
        )
        self.runs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        log = open(self.directory / f"run-{len(self.runs) + 1}.log", "wb")
        env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "-c", str(self.config), "serve"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.runs.append(process)
        wait_for(lambda: process.poll() is not None or self._listens(), 30, "the gateway")
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited: see {self.directory}")

    def _listens(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5):
                return True
        except OSError:
            return False

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.runs[-1]

    def kill(self) -> None:
        """SIGKILL the whole process group: supervisor and workers at once."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def kill_worker(self) -> int:
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        victim = int(children[0])
        os.kill(victim, signal.SIGKILL)
        return victim

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        for run in self.runs:
            try:
                os.killpg(run.pid, signal.SIGKILL)  # nothing of ours outlives the run
            except ProcessLookupError:
                pass


# --- load ---------------------------------------------------------------------------------------


class Load:
    """Client threads sending numbered messages round the nodes, reconnecting after errors."""

    def __init__(self, ports: list[int], sessions: int, messages: int, seconds: float) -> None:
        self.ports = ports
        self.acked: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._numbers = iter(range(1, messages + 1))
        self._deadline = time.monotonic() + seconds
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(sessions)
        ]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def _run(self, index: int) -> None:
        client: smtplib.SMTP | None = None
        turn = index
        n: int | None = None
        while not self.stop.is_set() and time.monotonic() < self._deadline:
            if n is None:
                with self.lock:
                    n = next(self._numbers, None)
                if n is None:
                    break
            if client is None:
                port = self.ports[turn % len(self.ports)]
                turn += 1
                try:
                    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                except OSError:
                    self.stop.wait(0.05)
                    continue
            body = (
                f"From: <{SENDER}>\r\nTo: <user{n}@example.org>\r\nSubject: kill bench {n}\r\n"
                f"X-Bench-Seq: {n}\r\n\r\nmessage {n}\r\n"
            ).encode()
            try:
                client.sendmail(SENDER, [f"user{n}@example.org"], body)
            except (smtplib.SMTPException, OSError):
                try:
                    client.close()
                finally:
                    client = None
                continue  # the same number again: the client retries what got no 250
            with self.lock:
                self.acked.add(n)
            n = None
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()


# --- one setup ----------------------------------------------------------------------------------


@dataclass
class Result:
    setup: str
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    acknowledged: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    unacknowledged_delivered: int = 0
    drain_seconds: float = 0.0
    bound: int = 0
    """Most duplicates the contract allows: the deliveries that can be in flight in the
    processes killed (``delivery.concurrency`` each)."""


def run_setup(name: str, args: argparse.Namespace, work: Path) -> Result:
    backend, node_count, workers = SETUPS[name]
    result = Result(name)
    sink = Sink(args.sink_delay)
    redis: Redis | None = None
    nodes: list[Node] = []
    try:
        store = ""
        if backend == "redis":
            redis = Redis(work / "redis")
            store = (
                f'\n[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:{redis.port}/0"\n'
                f'prefix = "bench"\nlease = "{LEASE}"\n'
            )
        for i in range(node_count):
            nodes.append(Node(work / f"node{i}", f"n{i}", workers, sink.port, store))
        for node in nodes:
            node.start()
        plan: list[str] = ["gateway kill"] * args.kills
        if workers > 1:
            plan += ["worker kill"] * args.worker_kills
        if redis is not None:
            plan += ["redis restart"] * args.redis_restarts
        # Interleave the kinds, so each fault meets the aftermath of a different one.
        order = sorted(range(len(plan)), key=lambda i: (plan[:i].count(plan[i]), plan[i]))
        plan = [plan[i] for i in order]
        with Load([n.port for n in nodes], args.sessions, args.messages, args.seconds) as load:
            for step, fault in enumerate(plan):
                goal = (step + 1) * args.every
                wait_for(lambda g=goal: load.count() >= g or not load.running(), 60, "load")
                if not load.running():
                    break
                node = nodes[step % len(nodes)]
                if fault == "gateway kill":
                    node.kill()
                    node.start()
                elif fault == "worker kill":
                    node.kill_worker()
                elif redis is not None:
                    redis.kill()
                    redis.start()
                result.faults[fault] += 1
            while load.running():
                time.sleep(0.1)
        with load.lock:
            acked = set(load.acked)
        started = time.monotonic()
        try:
            wait_for(lambda: acked <= set(sink.received()), args.drain, "every acked delivered")
        except TimeoutError:
            pass
        result.drain_seconds = time.monotonic() - started
        got = sink.received()
        result.acknowledged = len(acked)
        result.delivered = len(acked & set(got))
        result.lost = len(acked - set(got))
        result.duplicated = sum(n - 1 for n in got.values())
        result.unacknowledged_delivered = len(set(got) - acked)
        killed = result.faults["gateway kill"] * workers + result.faults["worker kill"]
        result.bound = killed * CONCURRENCY
    finally:
        for node in nodes:
            node.stop()
        if redis is not None:
            redis.stop()
        sink.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default="sqlite1,sqlite2,redis2")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs of a whole node")
    parser.add_argument("--worker-kills", type=int, default=3, help="SIGKILLs of one worker")
    parser.add_argument("--redis-restarts", type=int, default=3)
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--every", type=int, default=60, help="acknowledged between faults")
    parser.add_argument("--sink-delay", type=float, default=0.01)
    parser.add_argument("--seconds", type=float, default=90, help="longest load per setup")
    parser.add_argument("--drain", type=float, default=60, help="longest wait for delivery")
    args = parser.parse_args()
    rows = []
    for name in args.setups.split(","):
        with tempfile.TemporaryDirectory(prefix=f"kill-bench-{name}-") as work:
            rows.append(run_setup(name, args, Path(work)))
    print(f"command: .venv/bin/python bench/kill_bench.py {shlex.join(sys.argv[1:])}".rstrip())
    header = (
        f"{'setup':8} {'faults':44} {'acked':>6} {'delivered':>9} {'lost':>5} "
        f"{'dup':>4} {'dup bound':>9} {'unacked+delivered':>17} {'drain s':>7}"
    )
    print(header)
    for r in rows:
        faults = ", ".join(f"{n} {kind}" for kind, n in sorted(r.faults.items())) or "-"
        print(
            f"{r.setup:8} {faults:44} {r.acknowledged:>6} {r.delivered:>9} {r.lost:>5} "
            f"{r.duplicated:>4} {r.bound:>9} {r.unacknowledged_delivered:>17} "
            f"{r.drain_seconds:>7.1f}"
        )
    return 1 if any(r.lost or r.duplicated > r.bound for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
