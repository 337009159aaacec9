"""``gateway flows list | show ID | path CONTACT_ID``: flows, their counts and a contact's
enrolment paths from a shell, on the database the config names (beside a running gateway)."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway_plugins.automation.engine import create_engine, migrate
from gateway_plugins.automation.settings import load_settings
from gateway_plugins.automation.store import AutomationStore, NotFound

from gateway.clock import SystemClock
from gateway.commands.context import load, utc

T = TypeVar("T")
EXIT_FAILED = 1


def add_commands(commands: Any) -> None:
    flows = commands.add_parser("flows", help="automation flows: list, counts, paths")
    sub = flows.add_subparsers(dest="flows_command", required=True)
    listing = sub.add_parser("list", help="every flow of a tenant")
    listing.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="a flow's counts per step and ends by reason")
    show.add_argument("flow_id", type=int, help="the flow's id")
    show.set_defaults(func=cmd_show)
    path = sub.add_parser("path", help="a contact's enrolments, step by step")
    path.add_argument("contact_id", type=int, help="the contact's id")
    path.set_defaults(func=cmd_path)
    for parser in (listing, show, path):
        parser.add_argument("--tenant", default="default", help="the tenant")


async def _with_store(
    args: argparse.Namespace, work: Callable[[AutomationStore], Awaitable[T]]
) -> T:
    settings = load_settings(load(args))
    engine = create_engine(settings.url, schema=settings.schema)
    await migrate(engine, schema=settings.schema)
    store = AutomationStore(engine, SystemClock())
    try:
        return await work(store)
    finally:
        await store.close()


def cmd_list(args: argparse.Namespace) -> int:
    for flow in asyncio.run(_with_store(args, lambda s: s.list_flows(args.tenant))):
        print(f"{flow.id}\t{flow.name}\t{flow.status}\tv{flow.version}\t{flow.trigger_event}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    try:
        stats = asyncio.run(_with_store(args, lambda s: s.stats(args.tenant, args.flow_id)))
    except NotFound as e:
        print(f"gateway flows: {e}")
        return EXIT_FAILED
    print(json.dumps(stats, indent=2))
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    async def work(store: AutomationStore) -> list[str]:
        lines = []
        for e in await store.enrolments_of(args.tenant, args.contact_id):
            lines.append(f"enrolment {e.id}\tflow {e.flow_id} v{e.version}\t{e.state}\t{e.reason}")
            for p in await store.path_of(e.id):
                lines.append(f"  {utc(p.at)}\tstep {p.step}\t{p.kind}\t{p.outcome}\t{p.message_id}")
        return lines

    for line in asyncio.run(_with_store(args, work)):
        print(line)
    return 0
