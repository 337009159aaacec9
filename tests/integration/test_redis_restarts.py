"""Redis killed and restarted under load with one gateway node up: nothing acknowledged is
stranded. A delivery whose outcome could not be written while Redis was down is recorded once
Redis is back, within one lease period, and none is left ``sending`` by the live node.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Sink, wait_until
from tests.integration.test_crash_recovery import (
    Clients,
    GatewayProcess,
    free_port,
    live_members,
    received,
)
from tests.integration.test_redis_nodes import PROCESS_CONFIG, STORE, status_counts
from tests.redisserver import RedisServer

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="process groups, SIGKILL and /proc"
)

LEASE = 5.0
RESTARTS = 3
PREFIX = "restarts"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")  # ours alone: restarting it disturbs no other test
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def node(tmp_path: Path, sink: Sink, own_redis: RedisServer) -> Iterator[GatewayProcess]:
    directory = tmp_path / "a"
    directory.mkdir()
    port = free_port()
    config_file = directory / "gateway.toml"
    config_file.write_text(
        PROCESS_CONFIG.format(name="a", data=directory / "data", port=port, sink_port=sink.port)
        + STORE.format(url=own_redis.url, prefix=PREFIX).replace('"3s"', f'"{LEASE:g}s"')
    )
    process = GatewayProcess(config_file, directory, port, workers=1)
    try:
        yield process
    finally:
        process.kill_all()
        for proc in process.runs:
            assert live_members(proc.pid) == [], "a gateway process outlived the test"


def log(node: GatewayProcess) -> str:
    return (node.logs / "gateway-1.err").read_text(errors="replace")


def test_redis_restarted_three_times_under_load_strands_nothing(
    node: GatewayProcess, sink: Sink, own_redis: RedisServer
) -> None:
    node.start()
    with Clients(node.port) as clients:
        for restart in range(RESTARTS):
            goal = clients.acked_count() + 20
            wait_until(lambda g=goal: clients.acked_count() >= g, 20, "20 more acknowledged")
            # Hold the sink (its handlers take ``sink.lock``) so deliveries are in flight,
            # kill Redis, then let the sends finish: their outcomes cannot be written.
            with sink.lock:
                wait_until(
                    lambda: status_counts(own_redis, PREFIX).get("sending", 0) > 0,
                    20,
                    f"restart {restart}: deliveries in flight",
                )
                failed = log(node).count("recording delivery")
                own_redis.kill()
            wait_until(
                lambda f=failed: log(node).count("recording delivery") > f,
                20,
                f"restart {restart}: an outcome write to fail while Redis is down",
            )
            own_redis.start()
        back = time.monotonic()
    with clients.lock:
        acked = set(clients.acked)

    def settled() -> bool:
        return acked <= set(received(sink)) and "sending" not in status_counts(own_redis, PREFIX)

    try:
        wait_until(settled, LEASE + 5, "every acknowledged message delivered, none sending")
    except AssertionError:
        pass  # the assertions below say what is wrong
    got = received(sink)
    counts = status_counts(own_redis, PREFIX)
    summary = (
        f"{len(acked)} acknowledged, {len(got)} distinct at the sink, store {counts},"
        f" {time.monotonic() - back:.1f}s after Redis came back"
    )
    assert not sorted(acked - set(got)), f"acknowledged mail undelivered: {summary}"
    assert "sending" not in counts, f"deliveries stranded in sending: {summary}"
    assert "recorded delivery" in log(node), "an outcome written after failed tries"
