"""SIGKILL during a campaign: ``gateway serve`` as a process, killed three times while it fans
out and delivers a campaign; restarted each time on the same spool and audience database.

Every recipient gets the mail; a recipient gets it twice only when the kill caught its delivery
in flight (at-least-once), and those duplicates are counted; the campaign ends ``sent`` with
every recipient's send row final and the totals equal to the audience."""

from __future__ import annotations

import collections
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.tenants import generate_api_key, hash_api_key
from tests.conftest import Sink, wait_until
from tests.integration.test_crash_recovery import (
    GatewayProcess,
    accepts_connections,
    free_port,
    live_members,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups")

RECIPIENTS = 2000
KILLS = 3
API_KEY = generate_api_key()

CONFIG = """
[gateway]
hostname = "gw.test"
data_dir = "{data}"

[smtp]
listeners = [{{ name = "dev", port = {port}, tls = "none", insecure_auth = true }}]

[http]
enabled = true
port = {http_port}
rate_limit = 0

[tenants.acme]
sending_domains = ["acme.test"]

[[tenants.acme.api_keys]]
name = "admin"
key_hash = "{key_hash}"
scopes = ["admin"]

[tenants.acme.streams.news]
kind = "broadcast"

[delivery]
providers = ["relay"]
retry_schedule = ["1s"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {sink_port}
tls = "none"
timeout = 10

[plugins.audience]
keys = {{ k1 = "{page_key}" }}
base_url = "http://127.0.0.1"
mail_from = "news@acme.test"

[plugins.campaigns]
postal_addresses = {{ acme = "Acme Inc., 1 Main Street, Springfield" }}
require_verified_domain = false
page_size = 100
lease = 5
poll_interval = 0.2
reconcile_after = 2
"""


@pytest.fixture
def gateway_process(tmp_path: Path, sink: Sink) -> Iterator[tuple[GatewayProcess, int]]:
    port, http_port = free_port(), free_port()
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        CONFIG.format(
            data=tmp_path / "data",
            port=port,
            http_port=http_port,
            sink_port=sink.port,
            key_hash=hash_api_key(API_KEY),
            page_key=secrets.token_urlsafe(32),
        )
    )
    process = GatewayProcess(config_file, tmp_path, port, workers=1)
    try:
        yield process, http_port
    finally:
        process.kill_all()
        for proc in process.runs:
            assert live_members(proc.pid) == [], "a gateway process outlived the test"


def test_three_sigkills_during_a_campaign_lose_nothing(
    gateway_process: tuple[GatewayProcess, int], sink: Sink
) -> None:
    gw, http_port = gateway_process
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{http_port}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )

    def start() -> None:
        gw.start()
        wait_until(lambda: accepts_connections(http_port), 15, "the HTTP API")

    def stats() -> dict[str, Any]:
        found: dict[str, Any] = client.get(f"/v1/campaigns/{campaign}/stats").json()
        return found

    with client:
        start()
        members = client.post("/v1/lists", json={"name": "Members"}).json()["id"]
        csv = "email\n" + "".join(f"user{i}@example.org\n" for i in range(RECIPIENTS))
        started = client.post(
            f"/v1/lists/{members}/imports",
            params={
                "attested_by": "ops@acme.test",
                "statement": "Yes, send me the news.",
                "statement_version": "1",
                "collected_at": "2026-01-05T10:00:00Z",
                "collected_where": "signup-form",
            },
            content=csv.encode(),
            headers={"content-type": "text/csv"},
        )
        assert started.status_code == 202, started.text
        imported = started.json()["id"]
        wait_until(
            lambda: client.get(f"/v1/imports/{imported}").json()["status"] == "done", 60, "import"
        )
        template = client.post(
            "/v1/templates",
            json={"name": "t", "subject": "Hello {{ contact.email }}", "html": "<p>Hi</p>"},
        ).json()["id"]
        campaign = client.post(
            "/v1/campaigns",
            json={
                "name": "Big",
                "template_id": template,
                "list_ids": [members],
                "from": "news@acme.test",
                "stream": "news",
            },
        ).json()["id"]
        assert client.post(f"/v1/campaigns/{campaign}/send").status_code == 200

        # Kill at different stages: during the fan-out, then while delivering.
        for kill, planned in enumerate((300, 900, 1500)):
            wait_until(
                lambda p=planned: stats()["runs"][0]["planned"] >= p or len(sink.messages) >= p,
                60,
                f"kill {kill + 1}",
            )
            gw.kill_all()
            start()
        wait_until(lambda: stats()["status"] == "sent", 180, "the campaign to end sent")
        final = stats()

    per_address = collections.Counter(r for m in sink.messages for r in m.rcpt_tos)
    expected = {f"user{i}@example.org" for i in range(RECIPIENTS)}
    assert set(per_address) == expected, f"missing: {sorted(expected - set(per_address))[:5]}"
    duplicates = sum(n - 1 for n in per_address.values())
    print(f"{KILLS} SIGKILLs, {RECIPIENTS} recipients: {duplicates} duplicate deliveries")
    # Only deliveries in flight at a kill repeat: at most the dispatcher's concurrency each.
    assert duplicates <= KILLS * 200, duplicates
    assert final["totals"]["recipients"] == RECIPIENTS
    assert final["totals"]["delivered"] == RECIPIENTS, final["totals"]
    assert all(r["status"] == "done" for r in final["runs"])
