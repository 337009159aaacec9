"""What routing adds per delivery, in CPU time, when nothing but ``delivery.providers`` is
configured (no ``[[routes]]``, no limits): choosing the candidates and checking each one's
breaker and limits, and the timed send with its breaker and counters around a provider that
answers at once.

    .venv/bin/python bench/routing_bench.py [--deliveries 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from gateway.clock import SystemClock
from gateway.config import parse_config
from gateway.message import Delivery, DeliveryStatus, Message, SendResult
from gateway.providers.base import OutboundMessage, Provider
from gateway.routing import Router
from gateway.store.sqlite import SqliteStore

CONFIG = """
[gateway]
data_dir = "{data}"
[delivery]
providers = ["a", "b"]
[providers.a]
type = "capture"
[providers.b]
type = "capture"
"""


class Instant(Provider):
    async def send(self, message: OutboundMessage) -> SendResult:
        return SendResult.sent("ok")


async def main(count: int) -> None:
    directory = Path(tempfile.mkdtemp())
    config = parse_config(CONFIG.format(data=directory))
    store = SqliteStore(directory / "spool")
    await store.open()
    providers: dict[str, Provider] = {"a": Instant("a"), "b": Instant("b")}
    router = Router(config, providers, store=store, clock=SystemClock())
    message = Message(id="m", tenant="default", mail_from="a@example.com", raw=b"x", created_at=0)
    delivery = Delivery(
        id=1, message_id="m", recipient="x@example.org", status=DeliveryStatus.SENDING
    )
    outbound = OutboundMessage(
        message_id="m", delivery_id=1, tenant="default", mail_from="a@example.com",
        recipient="x@example.org", raw=b"x",
    )  # fmt: skip
    started = time.process_time()
    for _ in range(count):
        plan = await router.plan(message, delivery)
        for name in plan.providers:
            if router.available(name) is None and await router.reserve(name) is None:
                break
    choose = (time.process_time() - started) / count
    started = time.process_time()
    for _ in range(count):
        await providers["a"].send(outbound)
    bare = time.process_time() - started
    started = time.process_time()
    for _ in range(count):
        await router.send("a", outbound)
    timed = (time.process_time() - started - bare) / count
    await store.close()
    print(f"choosing candidates (plan, breaker, limits): {choose * 1e6:.2f} us CPU per delivery")
    print(f"Router.send around the provider: {timed * 1e6:.2f} us CPU per send")
    print(f"command: .venv/bin/python bench/routing_bench.py --deliveries {count}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().deliveries))
