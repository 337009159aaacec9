"""Transactional mail while a broadcast drains: accept-to-delivered latency of password resets.

    .venv/bin/python bench/priority_bench.py [--store sqlite|redis] [--broadcast 50000]
        [--transactional 200] [--sink-delay-ms 20] [--same-lane]

1. A slow SMTP sink (aiosmtpd in its own thread; every DATA waits ``--sink-delay-ms`` before
   answering 250) stands for a remote server that throttles.
2. One gateway worker (in this process, its own event loop thread) on SQLite or on a private
   ``redis-server``, relaying to the sink through one ``smtp`` provider (pool of 10 sessions,
   ``delivery.concurrency`` 100). ``--broadcast`` deliveries are accepted on the tenant's
   broadcast stream ``newsletter`` (messages of 100 recipients); they start draining at once.
3. Delivery starts; once the broadcast is draining, ``--transactional`` single-recipient
   messages are submitted over real SMTP, at 20 a second. Each one's latency is from the
   ``250`` of its submission to the sink's ``250`` for it.

With ``--same-lane`` the broadcast is accepted as ``transactional`` too: the case streams and
lanes exist for (the resets wait behind the whole backlog; the run gives up after 60 s).
Printed: the command, the latencies (p50, p95, max), and how many broadcast deliveries reached
the sink meanwhile. The run is bounded: it stops when every reset has arrived or after 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import smtp_bench as sb  # noqa: E402
from aiosmtpd.smtp import SMTP, Envelope, Session  # noqa: E402

from gateway.config import parse_config  # noqa: E402
from gateway.ingress import Submission  # noqa: E402
from gateway.server import Gateway  # noqa: E402

GIVE_UP_SECONDS = 60.0
PER_MESSAGE = 100

CONFIG = """
[gateway]
hostname = "gw.bench"
data_dir = "{data}"

[store]
backend = "{backend}"
url = "{redis_url}"

[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[tenants.default]
smtp_networks = ["127.0.0.1/32"]

[tenants.default.streams.newsletter]
kind = "broadcast"

[delivery]
providers = ["relay"]
concurrency = 100
retry_schedule = ["5m"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
pool_size = 10
"""


class SlowSink:
    """Answers every DATA after a delay; records when each recipient's copy was accepted."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.arrived: dict[str, float] = {}
        self.broadcast = 0
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        sink = self

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session, env: Envelope) -> str:
                await asyncio.sleep(sink.delay)
                now = time.monotonic()
                with sink.lock:
                    for rcpt in env.rcpt_tos:
                        if rcpt.startswith("reset"):
                            sink.arrived[rcpt] = now
                        else:
                            sink.broadcast += 1
                return "250 2.0.0 OK"

        async def listen() -> asyncio.Server:
            return await self.loop.create_server(
                lambda: SMTP(Handler(), hostname="sink.bench", loop=self.loop), "127.0.0.1", 0
            )

        self.server = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Worker:
    """One gateway in its own event loop thread."""

    def __init__(self, config: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway: Gateway = self.call(self._build(config))

    async def _build(self, config: Any) -> Gateway:
        return Gateway(config)

    def call(self, coro: Any, timeout: float = 600) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.gateway.stop(grace=2))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def accept_broadcast(gateway: Gateway, total: int, stream: str) -> None:
    raw = (
        b"From: news@example.com\r\nTo: readers@example.org\r\nSubject: This week\r\n"
        b"Precedence: bulk\r\n\r\n" + b"Newsletter body line.\r\n" * 100
    )
    pending = []
    for start in range(0, total, PER_MESSAGE):
        recipients = [f"r{i}@example.org" for i in range(start, min(total, start + PER_MESSAGE))]
        pending.append(
            gateway.ingress.accept(
                Submission(
                    tenant="default",
                    mail_from="news@example.com",
                    recipients=recipients,
                    raw=raw,
                    default_stream=stream,
                )
            )
        )
        if len(pending) == 50:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--broadcast", type=int, default=50_000)
    parser.add_argument("--transactional", type=int, default=200)
    parser.add_argument("--sink-delay-ms", type=float, default=20.0)
    parser.add_argument("--same-lane", action="store_true")
    args = parser.parse_args()
    print("$ .venv/bin/python bench/priority_bench.py " + shlex.join(sys.argv[1:]))

    work = Path(tempfile.mkdtemp(prefix="priority-bench-"))
    redis: subprocess.Popen[bytes] | None = None
    redis_url = "redis://127.0.0.1:1/0"
    if args.store == "redis":
        port = sb.free_port()
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        redis = subprocess.Popen(
            [
                *(server, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(work)),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        sb.wait_listening(port, 1, redis, "redis-server")
        redis_url = f"redis://127.0.0.1:{port}/0"
    sink = SlowSink(args.sink_delay_ms / 1000)
    config = parse_config(
        CONFIG.format(data=work / "data", backend=args.store, redis_url=redis_url, port=sink.port)
    )
    worker = Worker(config)
    try:
        stream = "transactional" if args.same_lane else "newsletter"
        worker.call(worker.gateway.start(deliver=True))
        started = time.monotonic()
        worker.call(accept_broadcast(worker.gateway, args.broadcast, stream))
        print(
            f"accepted {args.broadcast} broadcast deliveries ({stream!r}) in "
            f"{time.monotonic() - started:.1f} s; store {args.store}, sink delay "
            f"{args.sink_delay_ms:.0f} ms, pool 10, concurrency 100"
        )
        port = worker.gateway.smtp_ports["dev"]
        while sink.broadcast < 500:  # the broadcast is draining
            time.sleep(0.05)
        accepted: dict[str, float] = {}
        began = time.monotonic()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            for i in range(args.transactional):
                rcpt = f"reset{i}@example.org"
                message = (
                    f"From: auth@example.com\r\nTo: {rcpt}\r\nSubject: Reset {i}\r\n\r\n"
                    "Your code is 123456.\r\n"
                )
                client.sendmail("auth@example.com", [rcpt], message.encode())
                accepted[rcpt] = time.monotonic()
                pause = began + (i + 1) / 20 - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while len(sink.arrived) < len(accepted) and time.monotonic() < deadline:
            time.sleep(0.05)
        with sink.lock:
            latencies = [sink.arrived[r] - t for r, t in accepted.items() if r in sink.arrived]
            drained = sink.broadcast
        print(
            f"transactional delivered: {len(latencies)} of {len(accepted)}; broadcast delivered "
            f"meanwhile: {drained} of {args.broadcast}"
        )
        if latencies:
            ms = [x * 1000 for x in latencies]
            print(
                f"accept-to-delivered ms: p50 {statistics.median(ms):.0f}  "
                f"p95 {percentile(ms, 0.95):.0f}  max {max(ms):.0f}"
            )
    finally:
        worker.stop()
        sink.stop()
        if redis is not None:
            sb.stop_process(redis, grace=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
