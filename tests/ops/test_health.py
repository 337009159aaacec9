"""``/healthz`` and ``/readyz``: readiness flips when the store goes away and comes back."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import Sink, make_config, wait_until
from tests.ops.conftest import OPS_CONFIG, ops_config_args
from tests.redisserver import RedisServer


def ready(port: int) -> tuple[int, dict]:
    answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=20)
    return answer.status_code, {c["name"]: c for c in answer.json()["checks"]}


def test_readiness_flips_when_the_store_is_unreachable_and_recovers(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    # Our own Redis, so freezing it disturbs no other test.
    redis = RedisServer(tmp_path / "redis")
    try:
        toml = OPS_CONFIG + f'\n[store]\nbackend = "redis"\nurl = "{redis.url}"\nprefix = "ready"\n'
        gateway = gateway_factory(make_config(tmp_path, toml, **ops_config_args(sink.port)))
        port = gateway.gateway.http_port
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["status"] == "ok"
        probe = httpx.head(f"http://127.0.0.1:{port}/healthz")  # load balancers' HEAD probes
        assert probe.status_code == 200 and probe.content == b""
        status, checks = ready(port)
        assert status == 200, checks
        assert set(checks) == {"spool", "store", "persistence", "routes", "listeners"}
        assert all(c["ok"] for c in checks.values())
        assert "appendonly yes, appendfsync always" in checks["persistence"]["detail"]
        assert "RedisStore answers" in checks["store"]["detail"]
        assert "relay=closed" in checks["routes"]["detail"]
        assert f"smtp dev:{gateway.port('dev')}" in checks["listeners"]["detail"]

        redis.process.send_signal(signal.SIGSTOP)  # the server stops answering
        try:
            wait_until(lambda: ready(port)[0] == 503, 20, "readiness to fail")
            status, checks = ready(port)
            assert not checks["store"]["ok"]
            assert "no answer within" in checks["store"]["detail"]
            assert checks["spool"]["ok"] and checks["listeners"]["ok"]
            # Liveness is not readiness: the process still answers.
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        finally:
            redis.process.send_signal(signal.SIGCONT)
        wait_until(lambda: ready(port)[0] == 200, 20, "readiness to recover")
        assert ready(port)[1]["store"]["ok"]
    finally:
        redis.stop()


def test_readiness_fails_when_every_route_has_an_open_breaker(
    tmp_path: Path, sink: Sink, gateway_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    states = {"relay": "open"}
    gateway = gateway_factory(make_config(tmp_path, OPS_CONFIG, **ops_config_args(sink.port)))
    # The router's breakers open only after real failures; readiness reads breaker_states().
    monkeypatch.setattr(gateway.gateway.router, "breaker_states", lambda: dict(states))
    status, checks = ready(gateway.gateway.http_port)
    assert status == 503 and not checks["routes"]["ok"]
    assert checks["routes"]["detail"] == "every route has an open breaker (relay=open)"
    states["relay"] = "half_open"
    status, checks = ready(gateway.gateway.http_port)
    assert status == 200 and "1 of 1 routes available" in checks["routes"]["detail"]
