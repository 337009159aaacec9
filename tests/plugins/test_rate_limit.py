"""The rate_limit plugin: limits hold under many concurrent coroutines and across two processes
sharing one store (SQLite's tenants.db, and Redis); all or nothing across limits; over a limit
mail waits for the next window and is then delivered to a real sink; bad tables name the key;
the ``providers`` table (moved to ``[routing.limits]``) is an error that names the new key."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.config import ConfigError
from gateway.message import Defer, Delivery, DeliveryStatus, Message
from gateway.plugin_manager import call_first
from gateway.server import Gateway
from gateway.store.base import DeliveryFilter
from tests.conftest import RELAY_TO_SINK, GatewayThread, Sink, make_config

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0  # a whole minute and hour: windows start here

LIMITS = """
[plugins.rate_limit]
tenants = {{ default = {{ per_minute = 40 }} }}
domains = {{ "slow.example" = {{ per_second = 3 }}, "fast.example" = {{ per_second = 25 }}, \
"*" = {{ per_hour = 1000 }} }}
"""


def message() -> Message:
    return Message(id="m1", tenant="default", mail_from="app@a.example", raw=b"", created_at=T0)


async def permits(gateway: Gateway, recipients: list[str], route: str = "relay") -> list:
    async def one(i: int, rcpt: str) -> Defer | None:
        delivery = Delivery(id=i, message_id="m1", recipient=rcpt, status=DeliveryStatus.SENDING)
        verdict: Defer | None = await call_first(
            gateway.pm,
            "gateway_permit",
            gateway=gateway,
            message=message(),
            delivery=delivery,
            route=route,
        )
        return verdict

    return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(recipients))))


def start(tmp_path, sink: Sink, gateway_factory) -> tuple[GatewayThread, FakeClock]:
    clock = FakeClock(T0)
    config = make_config(tmp_path, RELAY_TO_SINK + LIMITS, port=sink.port)
    return gateway_factory(config, clock=clock, deliver=False), clock


def test_limits_hold_under_many_concurrent_coroutines(tmp_path, sink, gateway_factory) -> None:
    gw, clock = start(tmp_path, sink, gateway_factory)
    verdicts = gw.call(permits(gw.gateway, [f"u{i}@fast.example" for i in range(200)]))
    assert sum(v is None for v in verdicts) == 25  # the domain's 25 per second
    # Each refusal names the limit and waits for its window (the tenant's minute can look
    # full for a moment while units taken by domain refusals are being given back).
    assert {(v.reason, v.until) for v in verdicts if v is not None} <= {
        ("rate limit of domain fast.example reached: 25 per second", T0 + 1),
        ("rate limit of tenant default reached: 40 per minute", T0 + 60),
    }
    clock.advance(1)
    verdicts = gw.call(permits(gw.gateway, [f"v{i}@fast.example" for i in range(200)]))
    assert sum(v is None for v in verdicts) == 15  # then the tenant's 40 per minute
    held = [v for v in verdicts if v is not None]
    assert {v.until for v in held} == {T0 + 60}
    assert held[0].reason == "rate limit of tenant default reached: 40 per minute"


def test_a_delivery_takes_a_unit_of_every_limit_or_none(tmp_path, sink, gateway_factory) -> None:
    gw, clock = start(tmp_path, sink, gateway_factory)
    verdicts = gw.call(permits(gw.gateway, [f"u{i}@slow.example" for i in range(10)]))
    assert sum(v is None for v in verdicts) == 3
    store = gw.gateway.store
    # The 7 refused by the domain gave back what the tenant limit had counted.
    assert gw.call(store.counter(f"rl:tenant:default:60:{int(T0 // 60)}", T0)) == 3
    # Another route takes the same limits: the domain's second is still used up.
    assert gw.call(permits(gw.gateway, ["x@slow.example"], route="capture"))[0] is not None
    clock.advance(1)
    assert gw.call(permits(gw.gateway, ["x@slow.example"], route="capture")) == [None]


def test_over_the_limit_mail_waits_for_the_next_window_and_is_delivered(
    tmp_path, sink: Sink, gateway_factory
) -> None:
    import smtplib

    gw, clock = start(tmp_path, sink, gateway_factory)
    recipients = [f"r{i}@slow.example" for i in range(8)]
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail(
            "app@a.example", recipients, b"From: app@a.example\r\nSubject: rate\r\n\r\nhi\r\n"
        )
    for second, expected in enumerate((3, 6, 8)):
        gw.call(gw.gateway.dispatcher.run_once())
        assert len(sink.messages) == expected, f"second {second}"
        waiting = gw.call(
            gw.gateway.store.list_deliveries(DeliveryFilter(statuses=[DeliveryStatus.DEFERRED]))
        )
        assert {(d.next_attempt_at, d.attempts) for d in waiting} <= {(clock.now() + 1, 0)}
        clock.advance(1)
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(recipients)


WORKER = """
import asyncio, sys
from gateway.clock import FakeClock
from gateway.config import load_config
from gateway.plugin_manager import call_all
from gateway.server import Gateway, open_store
from tests.plugins.test_rate_limit import T0, permits

async def main():
    config = load_config(sys.argv[1])
    store = open_store(config, worker=int(sys.argv[2]), workers=2)
    await store.open()
    try:
        gateway = Gateway(config, clock=FakeClock(T0), store=store)
        await call_all(gateway.pm, "gateway_startup", gateway=gateway)
        print("ready", flush=True)
        sys.stdin.readline()  # start together
        allowed = 0
        for batch in range(30):  # small rounds, so the two processes' writes interleave
            verdicts = await permits(gateway, [f"w{batch}-{i}@fast.example" for i in range(5)])
            allowed += sum(v is None for v in verdicts)
        print(allowed)
    finally:
        await store.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_two_processes_sharing_one_store_keep_one_limit(tmp_path, backend: str, request) -> None:
    store = '[store]\nbackend = "sqlite"\n'
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        prefix = request.getfixturevalue("redis_prefix")
        store = f'[store]\nbackend = "redis"\nurl = "{server.url}"\nprefix = "{prefix}"\n'
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n{store}'
        '[plugins.rate_limit]\ndomains = { "*" = { per_minute = 120 } }\n'
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), str(i)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline() == "ready\n"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            outputs.append(int(out))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    # 300 tries from two processes started together, one per-minute limit. (How the 120 are
    # shared depends on who gets the store's lock first: SQLite's is not fair under load.)
    assert sum(outputs) == 120


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            "[plugins.rate_limit]\ntenants = { nobody = { per_second = 1 } }\n",
            'plugins.rate_limit.tenants."nobody": no such tenant',
        ),
        (
            "[plugins.rate_limit]\nproviders = { capture = { per_minute = 6 } }\n",
            "plugins.rate_limit.providers: provider limits moved to [routing.limits.<provider>]"
            " (per_second, per_minute, per_hour, per_day); for example [routing.limits.capture]"
            " per_minute = 6",
        ),
        (
            '[plugins.rate_limit]\ndomains = { "not a domain" = { per_second = 1 } }\n',
            "not a domain (or '*' for every domain)",
        ),
        (
            "[plugins.rate_limit]\ntenants = { default = { per_minute = -1 } }\n",
            'tenants."default".per_minute: must be 0 (no limit) or more',
        ),
        (
            "[plugins.rate_limit]\ntenants = { default = { per_day = 5 } }\n",
            "unknown key",
        ),
        ("[plugins.rate_limit]\ntenant = {}\n", "plugins.rate_limit.tenant: unknown key"),
    ],
)
def test_bad_limits_name_the_key(tmp_path, toml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Gateway(make_config(tmp_path, toml))
    assert expected in str(excinfo.value)
