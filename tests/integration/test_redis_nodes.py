"""Several gateway nodes sharing one Redis: one queue, exactly-once delivery in normal operation,
a killed node's deliveries taken over by the other, and one rate limit across both.

Redis is a real ``redis-server`` (tests/redisserver.py); mail goes to the real sink SMTP server
of tests/conftest.py. The SIGKILL test runs the nodes as real ``gateway serve`` processes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import signal
import smtplib
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import FakeClock
from gateway.message import DeliveryStatus
from gateway.store.base import DeliveryFilter
from tests.api.conftest import API_CONFIG, Api, _key_tables
from tests.conftest import RELAY_TO_SINK, GatewayThread, Sink, make_config, wait_until
from tests.integration.test_crash_recovery import (
    ROOT,
    GatewayProcess,
    free_port,
    live_members,
    received,
)
from tests.redisserver import RedisServer

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="process groups, SIGKILL and /proc"
)

SENDER = "app@example.com"

STORE = """
[store]
backend = "redis"
url = "{url}"
prefix = "{prefix}"
lease = "3s"
"""


def body(n: int) -> bytes:
    return (
        f"From: <{SENDER}>\r\nTo: <user{n}@example.org>\r\nSubject: node test {n}\r\n"
        f"X-Test-Seq: {n}\r\n\r\nmessage {n}\r\n"
    ).encode()


def node_config(
    tmp_path: Path, name: str, sink: Sink, server: RedisServer, prefix: str, extra: str = ""
) -> Any:
    return make_config(
        tmp_path / name,
        RELAY_TO_SINK + STORE + extra,
        port=sink.port,
        url=server.url,
        prefix=prefix,
    )


# --- normal operation ------------------------------------------------------------------------


def test_two_nodes_deliver_every_message_exactly_once(
    tmp_path: Path,
    sink: Sink,
    gateway_factory: Callable[..., GatewayThread],
    redis_server: RedisServer,
    redis_prefix: str,
) -> None:
    nodes = [
        gateway_factory(node_config(tmp_path, name, sink, redis_server, redis_prefix))
        for name in ("a", "b")
    ]
    count = 60
    clients = [smtplib.SMTP("127.0.0.1", node.port("dev"), timeout=10) for node in nodes]
    try:
        for n in range(count):  # alternate between the nodes, as a load balancer would
            clients[n % 2].sendmail(SENDER, [f"user{n}@example.org"], body(n))
    finally:
        for client in clients:
            client.quit()

    wait_until(lambda: len(received(sink)) == count, timeout=20, what="every message at the sink")
    store = nodes[0].gateway.store

    def all_recorded() -> bool:
        counts = nodes[0].call(store.counts())
        return counts[DeliveryStatus.DELIVERED] == count

    wait_until(all_recorded, timeout=20, what="every delivery recorded as delivered")
    got = received(sink)
    assert sorted(got) == list(range(count))
    assert all(len(ids) == 1 for ids in got.values()), f"duplicates: {got}"
    assert len(sink.messages) == count
    # Both nodes see the one queue: what node b accepted, node a lists, and vice versa.
    listed = nodes[1].call(nodes[1].gateway.store.list_deliveries(DeliveryFilter(limit=1000)))
    assert len(listed) == count and {d.status for d in listed} == {DeliveryStatus.DELIVERED}


# --- SIGKILL mid-delivery ----------------------------------------------------------------------

PROCESS_CONFIG = """
[gateway]
hostname = "{name}.gw.test"
data_dir = "{data}"

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


class NodeClients:
    """One thread per node sending numbered messages until stopped; a node that stops
    answering is given up (the load balancer would take it out)."""

    def __init__(self, ports: list[int], limit: int = 400) -> None:
        self.acked: list[int] = []
        self.unanswered: list[int] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._next = iter(range(1, limit + 1))
        self._threads = [
            threading.Thread(target=self._run, args=(port,), daemon=True) for port in ports
        ]

    def __enter__(self) -> NodeClients:
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

    def _run(self, port: int) -> None:
        try:
            client = smtplib.SMTP("127.0.0.1", port, timeout=10)
        except OSError:
            return
        while not self.stop.is_set():
            with self.lock:
                n = next(self._next, None)
            if n is None:
                break
            try:
                client.sendmail(SENDER, [f"user{n}@example.org"], body(n))
            except (smtplib.SMTPException, OSError):
                with self.lock:
                    self.unanswered.append(n)
                return
            with self.lock:
                self.acked.append(n)
            self.stop.wait(0.005)
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def sending_owners(server: RedisServer, prefix: str) -> dict[str, str]:
    """Message id → lease owner of every delivery ``sending`` right now."""
    p = f"{{{prefix}}}:"
    with server.client() as client:
        ids = client.smembers(p + "s:sending")
        owners = {}
        for i in ids:
            mid, own = client.hmget(p + f"d:{i.decode()}", "mid", "own")
            if mid is not None:
                owners[mid.decode()] = (own or b"").decode()
        return owners


def status_counts(server: RedisServer, prefix: str) -> dict[str, int]:
    with server.client() as client:
        counts = {s.value: int(client.scard(f"{{{prefix}}}:s:{s.value}")) for s in DeliveryStatus}
    return {s: n for s, n in counts.items() if n}


@pytest.fixture
def start_nodes(
    tmp_path: Path, sink: Sink, redis_server: RedisServer, redis_prefix: str
) -> Iterator[Callable[..., list[GatewayProcess]]]:
    """Two ``gateway serve`` processes, ``a`` and ``b``, on one Redis; ``extra`` is appended
    to both configurations. Both are SIGKILLed (by process group) when the test ends."""
    started: list[GatewayProcess] = []

    def start(extra: str = "") -> list[GatewayProcess]:
        for name in ("a", "b"):
            directory = tmp_path / name
            directory.mkdir()
            port = free_port()
            config_file = directory / "gateway.toml"
            config_file.write_text(
                PROCESS_CONFIG.format(
                    name=name, data=directory / "data", port=port, sink_port=sink.port
                )
                + STORE.format(url=redis_server.url, prefix=redis_prefix)
                + extra
            )
            started.append(GatewayProcess(config_file, directory, port, workers=1))
        return started

    try:
        yield start
    finally:
        for node in started:
            node.kill_all()
            for proc in node.runs:
                assert live_members(proc.pid) == [], "a gateway process outlived the test"


@pytest.fixture
def nodes(start_nodes: Callable[..., list[GatewayProcess]]) -> list[GatewayProcess]:
    return start_nodes()


def test_two_gateway_processes_deliver_a_stream_exactly_once(
    nodes: list[GatewayProcess], sink: Sink, redis_server: RedisServer, redis_prefix: str
) -> None:
    """A stream of messages spread over two real nodes (one client per node, as a load
    balancer would): each is delivered exactly once, and both nodes record it in one queue."""
    a, b = nodes
    a.start(), b.start()
    count = 200
    with NodeClients([a.port, b.port], limit=count) as clients:
        wait_until(lambda: clients.acked_count() == count, timeout=30, what="all acknowledged")
    assert not clients.unanswered
    wait_until(lambda: len(received(sink)) == count, timeout=30, what="every message delivered")
    wait_until(
        lambda: status_counts(redis_server, redis_prefix) == {"delivered": count},
        timeout=20,
        what=f"{count} deliveries recorded as delivered",
    )
    got = received(sink)
    assert sorted(got) == list(range(1, count + 1))
    duplicated = {n: ids for n, ids in got.items() if len(ids) > 1}
    assert not duplicated, f"delivered more than once: {duplicated}"
    assert len(sink.messages) == count
    accepted_by = collections.Counter(
        node for m in sink.messages for node in "ab" if f"by {node}.gw.test".encode() in m.data
    )
    assert min(accepted_by.values()) > count // 4, f"both nodes took a share: {accepted_by}"


def test_a_killed_nodes_deliveries_are_taken_over_by_the_other(
    nodes: list[GatewayProcess], sink: Sink, redis_server: RedisServer, redis_prefix: str
) -> None:
    a, b = nodes
    proc_a, proc_b = a.start(), b.start()
    owner_a = f":{proc_a.pid}:"
    with NodeClients([a.port, b.port]) as clients:
        wait_until(lambda: clients.acked_count() >= 30, timeout=15, what="30 acknowledged")
        # Freeze the sink (its handlers take ``sink.lock``): deliveries started now hang in
        # ``sending``, so the kill certainly lands mid-delivery.
        with sink.lock:
            wait_until(
                lambda: owner_a in "".join(sending_owners(redis_server, redis_prefix).values()),
                timeout=15,
                what="node a to hold deliveries in flight",
            )
            wait_until(lambda: clients.acked_count() >= 80, timeout=15, what="80 acknowledged")
            os.killpg(proc_a.pid, signal.SIGKILL)
            proc_a.wait(10)
            wait_until(lambda: not live_members(proc_a.pid), timeout=10, what="node a to die")
            in_flight_a = {
                mid
                for mid, owner in sending_owners(redis_server, redis_prefix).items()
                if owner_a in owner
            }
        wait_until(
            lambda: clients.acked_count() >= 120, timeout=15, what="node b to go on accepting"
        )
    with clients.lock:
        acked, unanswered = set(clients.acked), set(clients.unanswered)

    try:
        wait_until(lambda: acked <= set(received(sink)), timeout=30, what="every acked message")
    except AssertionError:
        pass  # the assertions below say what is missing
    got = received(sink)
    missing = sorted(acked - set(got))
    duplicated = {n: ids for n, ids in got.items() if len(ids) > 1}
    summary = (
        f"{len(acked)} acknowledged, {len(unanswered)} unanswered, {len(got)} distinct at the "
        f"sink in {sum(map(len, got.values()))} copies; node a had {len(in_flight_a)} in "
        f"flight at the kill; duplicates {duplicated}; missing {missing[:20]}; "
        f"store {status_counts(redis_server, redis_prefix)}"
    )
    assert in_flight_a, f"the kill interrupted none of node a's deliveries: {summary}"
    assert not missing, f"acknowledged mail was lost: {summary}\n{b.stderr(1)}"
    assert set(got) <= acked | unanswered, f"the sink got messages nobody sent: {summary}"
    for ids in duplicated.values():
        # Sent by node a as the sink froze (the sink had the bytes), then again by node b.
        assert len(ids) == 2 and ids[0] == ids[1] and ids[0] in in_flight_a, summary
    log_b = (b.logs / "gateway-1.err").read_text(errors="replace")
    assert "took over" in log_b, "node b's log says it took node a's deliveries over"

    wait_until(
        lambda: status_counts(redis_server, redis_prefix).get("delivered", 0) == len(got),
        timeout=20,
        what="every delivery recorded",
    )
    counts = status_counts(redis_server, redis_prefix)
    assert set(counts) <= {"delivered", "queued", "deferred"}, summary
    assert "sending" not in counts, f"node a's leases were all taken over: {summary}"
    proc_b.send_signal(signal.SIGTERM)
    assert proc_b.wait(20) == 0, f"node b did not stop cleanly:\n{b.stderr(1)}"


# --- one rate limit across nodes ----------------------------------------------------------------


RATE_LIMIT = """
[routing.limits.relay]
per_second = {rate}
"""


def test_a_rate_limit_holds_across_two_gateway_nodes(
    start_nodes: Callable[..., list[GatewayProcess]], sink: Sink
) -> None:
    """``[routing.limits.relay] per_second = N``, on two ``gateway serve``
    processes sharing one Redis: together they relay no more than N messages per second."""
    rate, count = 15, 60
    nodes = start_nodes(RATE_LIMIT.format(rate=rate))
    for node in nodes:
        node.start()
    clients = [smtplib.SMTP("127.0.0.1", node.port, timeout=10) for node in nodes]
    try:
        for n in range(count):
            clients[n % 2].sendmail(SENDER, [f"user{n}@example.org"], body(n))
    finally:
        for client in clients:
            client.quit()
    wait_until(lambda: len(sink.messages) == count, timeout=30, what="every message at the sink")
    with sink.lock:
        arrivals = [m.at for m in sink.messages]
    per_second = collections.Counter(int(t) for t in arrivals)
    # Windows are clock seconds; a send permitted at the very end of one may arrive just after.
    assert max(per_second.values()) <= rate + 2, (
        f"arrivals per second: {sorted(per_second.items())}"
    )
    span = max(arrivals) - min(arrivals)
    assert span >= count / rate - 2, f"{count} at {rate}/s took only {span:.1f}s"
    got = received(sink)
    assert sorted(got) == list(range(count)) and all(len(ids) == 1 for ids in got.values())


# --- the counter itself, hammered from two processes ----------------------------------------------

HAMMER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from gateway.store.redis import RedisStore

    async def main(url, prefix, limit, start, end):
        store = RedisStore(url, prefix=prefix)
        await store.open()
        granted = {}
        await store.consume("warm-up", 1, 1, expires_at=time.time() + 5, now=time.time())
        await asyncio.sleep(max(0.0, start - time.time()))  # both begin on one second's edge
        try:
            while (now := time.time()) < end:
                window = int(now)
                key = f"hammer:{window}"
                if await store.consume(key, 1, limit, expires_at=window + 2, now=now):
                    granted[window] = granted.get(window, 0) + 1
        finally:
            await store.close()
        print(json.dumps(granted))

    args = sys.argv[1:]
    asyncio.run(main(args[0], args[1], int(args[2]), float(args[3]), float(args[4])))
    """
)


def test_two_processes_never_take_more_than_the_limit_per_window(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """Two processes call store.consume on the current second's key as fast as they can, for
    two whole seconds: each second, together, they are granted exactly ``limit``."""
    limit = 50  # far below what two processes ask for, even on a loaded machine
    start = int(time.time()) + 2
    windows = [start, start + 1]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                HAMMER,
                redis_server.url,
                redis_prefix,
                str(limit),
                str(start),
                str(start + len(windows)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        results.append({int(w): n for w, n in json.loads(out).items()})
    totals = collections.Counter[int]()
    for granted in results:
        totals.update(granted)
    assert sorted(totals) == windows, f"per-window totals {sorted(totals.items())}"
    assert max(totals.values()) <= limit, f"the limit was exceeded: {results}"
    assert all(totals[w] == limit for w in windows), f"demand exceeded the limit: {results}"
    assert all(r.get(w) for r in results for w in windows), f"each got a share: {results}"


# --- an idempotent HTTP send retried on both nodes ---------------------------------------------


def test_an_idempotent_send_retried_on_both_nodes_queues_once(
    tmp_path: Path,
    sink: Sink,
    gateway_factory: Callable[..., GatewayThread],
    redis_server: RedisServer,
    redis_prefix: str,
) -> None:
    """Eight concurrent POSTs with one Idempotency-Key, spread over two nodes: Redis decides
    atomically, so one message is queued and every answer carries its id."""
    nodes = [
        Api(
            gateway_factory(
                make_config(
                    tmp_path / name,
                    API_CONFIG + STORE,
                    port=sink.port,
                    rate_limit=0.0,
                    rate_burst=100,
                    acme_keys=_key_tables("acme"),
                    globex_keys=_key_tables("globex"),
                    url=redis_server.url,
                    prefix=redis_prefix,
                ),
                clock=clock,
            ),
            clock,
            sink,
        )
        for name, clock in (("a", FakeClock()), ("b", FakeClock()))
    ]
    clients = [node.client(key="sender") for node in nodes]
    send = {
        "from": "app@acme.test",
        "to": ["ann@example.org", "bob@example.org"],
        "subject": "Once",
        "text": "1",
    }
    headers = {"Idempotency-Key": "order-77"}
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda n: clients[n % 2].post("/v1/messages", json=send, headers=headers),
                    range(8),
                )
            )
        assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
        (message_id,) = {a.json()["id"] for a in answers}
        replayed = [a.headers.get("Idempotent-Replayed") == "true" for a in answers]
        assert replayed.count(False) == 1, "exactly one request queued the message"
        for node in nodes:
            node.wait_delivered(message_id, count=2)  # each node sees the one queue
        wait_until(lambda: len(sink.messages) == 2, what="the two recipients")
        assert len(nodes[1].deliveries()) == 2, "queued once: one delivery per recipient"
    finally:
        for node in nodes:
            node.close()


# --- min_replicas over SMTP ------------------------------------------------------------------


def test_without_a_confirming_replica_smtp_mail_is_refused_with_451(
    tmp_path: Path,
    sink: Sink,
    gateway_factory: Callable[..., GatewayThread],
    redis_server: RedisServer,
    redis_prefix: str,
) -> None:
    """``store.min_replicas = 1`` on a Redis without replicas: the client hears 451 and keeps
    the message (it would retry); with the replica requirement off, the same mail is taken."""
    strict = gateway_factory(
        node_config(
            tmp_path,
            "strict",
            sink,
            redis_server,
            redis_prefix,
            'min_replicas = 1\nreplica_timeout = "0.1s"\n',
        )
    )
    with smtplib.SMTP("127.0.0.1", strict.port("dev"), timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(SENDER, ["user1@example.org"], body(1))
    assert refused.value.smtp_code == 451 and b"4.3.0" in refused.value.smtp_error
    relaxed = gateway_factory(node_config(tmp_path, "relaxed", sink, redis_server, redis_prefix))
    with smtplib.SMTP("127.0.0.1", relaxed.port("dev"), timeout=10) as client:
        client.sendmail(SENDER, ["user2@example.org"], body(2))
    # The refused message had reached the master all the same: it is delivered too, so a
    # client retry would make it twice (at-least-once, docs/redis.md), and nothing is lost.
    wait_until(lambda: set(received(sink)) == {1, 2}, timeout=20, what="both delivered")
