"""``GET /v1/providers``, ``POST /v1/providers/{name}/test`` and ``gateway providers``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.clock import FakeClock
from gateway.config import load_config
from gateway.routing import status_dir
from gateway.tenants import generate_api_key, hash_api_key
from tests.conftest import Sink, wait_until
from tests.integration.test_cli import gateway_cli
from tests.routing.support import TWO_RELAYS, run_once, submit

ADMIN, SENDER_KEY = generate_api_key(), generate_api_key()

API = """
[http]
enabled = true
port = 0

[tenants.default]
smtp_networks = ["127.0.0.1/32"]

[[tenants.default.api_keys]]
name = "ops"
key_hash = "{admin}"
scopes = ["admin"]

[[tenants.default.api_keys]]
name = "app"
key_hash = "{sender}"
scopes = ["send"]

[routing.breaker]
failures = 1
"""


@pytest.fixture
def second_sink() -> Iterator[Sink]:
    server = Sink()
    server.start()
    yield server
    server.stop()


def test_providers_show_breaker_state_and_counts_over_http_and_cli(
    tmp_path: Path, sink: Sink, second_sink: Sink, gateway_factory
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[gateway]\nhostname = "gw.test"\ndata_dir = "{tmp_path / "data"}"\n'
        + (TWO_RELAYS + API).format(
            primary=sink.port,
            secondary=second_sink.port,
            timeout=10,
            admin=hash_api_key(ADMIN),
            sender=hash_api_key(SENDER_KEY),
        )
    )
    config = load_config(path)
    gw = gateway_factory(config, clock=FakeClock(), deliver=False)
    sink.script("a@example.org", "RCPT", ["451 4.3.0 overloaded"])
    submit(gw, "a@example.org")
    assert run_once(gw) == 1
    url = f"http://127.0.0.1:{gw.gateway.http_port}/v1/providers"
    with httpx.Client(headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10) as admin:
        listing = admin.get(url)
        assert listing.status_code == 200
        by_name = {p["name"]: p for p in listing.json()["providers"]}
        assert by_name["primary"]["state"] == "open"
        assert by_name["primary"]["failed"] == 1 and by_name["primary"]["opened"] == 1
        assert "451 4.3.0 overloaded" in by_name["primary"]["last_error"]
        assert by_name["secondary"] | {"last_error": ""} == {
            "name": "secondary",
            "type": "smtp",
            "state": "closed",
            "sent": 1,
            "failed": 0,
            "rejected": 0,
            "timeouts": 0,
            "limited": 0,
            "opened": 0,
            "last_error": "",
        }
        check = admin.post(f"{url}/secondary/test")
        assert check.status_code == 200
        assert check.json() == {
            "name": "secondary",
            "ok": True,
            "detail": f"connected to 127.0.0.1:{second_sink.port} (plain)",
        }
        assert second_sink.messages and len(second_sink.messages) == 1  # the check sent none
        missing = admin.post(f"{url}/nowhere/test")
        assert missing.status_code == 404 and "nowhere" in missing.json()["detail"]
    with httpx.Client(headers={"Authorization": f"Bearer {SENDER_KEY}"}, timeout=10) as app:
        assert app.get(url).status_code == 403
        assert app.post(f"{url}/secondary/test").status_code == 403
    assert httpx.get(url, timeout=10).status_code == 401

    status = status_dir(config) / "worker-0.json"

    def shows_open() -> bool:
        return status.is_file() and '"open"' in status.read_text()

    wait_until(shows_open, timeout=15, what="the worker status file")
    assert json.loads(status.read_text())["providers"]["primary"]["failed"] == 1
    shown = gateway_cli("--config", str(path), "providers", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    primary_line = next(line for line in shown.stdout.splitlines() if line.startswith("primary"))
    assert primary_line.split()[:5] == ["primary", "smtp", "open", "0", "1"]
    assert "451 4.3.0 overloaded" in shown.stdout


def test_a_provider_check_that_fails_says_why(tmp_path: Path, sink: Sink, gateway_factory) -> None:
    from tests.integration.test_retry_and_bounce import closed_port

    dead = closed_port()
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
        + (TWO_RELAYS + API).format(
            primary=dead,
            secondary=sink.port,
            timeout=5,
            admin=hash_api_key(ADMIN),
            sender=hash_api_key(SENDER_KEY),
        )
    )
    gw = gateway_factory(load_config(path), clock=FakeClock(), deliver=False)
    url = f"http://127.0.0.1:{gw.gateway.http_port}/v1/providers/primary/test"
    answer = httpx.post(url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert answer.status_code == 200
    assert answer.json()["ok"] is False
    assert f"cannot connect to 127.0.0.1:{dead}" in answer.json()["detail"]


def test_the_cli_says_when_no_worker_has_written_a_status(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n')
    shown = gateway_cli("--config", str(path), "providers", cwd=tmp_path)
    assert shown.returncode == 0
    assert "no worker status yet" in shown.stderr
    assert shown.stdout.splitlines()[1].split()[:3] == ["capture", "capture", "unknown"]
