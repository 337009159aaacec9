"""The store's contract on both engines: a due step is claimed by exactly one owner, even
when several claim at once; a lease that runs out lets another owner take over, and the
owner that lost it can no longer save."""

from __future__ import annotations

import asyncio

from gateway_plugins.automation.engine import create_engine, migrate
from gateway_plugins.automation.flows import parse_flow
from gateway_plugins.automation.store import AutomationStore

from gateway.clock import FakeClock
from tests.plugins.audience.databases import Database

FLOW = {
    "name": "f",
    "trigger": {"event": "go"},
    "reentry": "always",
    "cooldown": "0s",
    "steps": [{"type": "exit"}],
}


async def test_each_due_step_is_claimed_once(audience_db: Database) -> None:
    clock = FakeClock()
    stores = []
    for _ in range(4):  # four nodes, each with its own engine (connection pool)
        engine = create_engine(audience_db.url, schema=audience_db.schema)
        await migrate(engine, schema=audience_db.schema)
        stores.append(AutomationStore(engine, clock))
    try:
        definition = parse_flow(FLOW)
        row = await stores[0].create_flow("acme", definition, FLOW)
        now = clock.now()
        for contact in range(200):
            assert await stores[0].enrol(row, definition, contact, {}, now) is not None
        clock.advance(1)

        async def drain(i: int) -> list[int]:
            mine: list[int] = []
            while claimed := await stores[i].claim_due(f"node{i}", clock.now(), 60, 7):
                mine += [e.id for e in claimed]
            return mine

        per_node = await asyncio.gather(*(drain(i) for i in range(4)))
        everything = [e for ids in per_node for e in ids]
        assert len(everything) == len(set(everything)) == 200

        # node0 dies holding its claims; after the lease, node1 takes one over
        [lost] = await stores[0].claim_due("node0", clock.now(), 60, 1) or [None]
        assert lost is None  # everything is leased now
        clock.advance(61)
        [taken] = await stores[1].claim_due("node1", clock.now(), 60, 1)
        taken.state, taken.reason = "exited", "x"
        stale = await stores[0].get_enrolment("acme", taken.id)
        assert not await stores[0].save(stale, "node0", [])  # the lease moved on
        assert await stores[1].save(taken, "node1", [])
        assert (await stores[0].get_enrolment("acme", taken.id)).state == "exited"
    finally:
        for store in stores:
            await store.close()
